"""seqpool: sequence summarization for transformer encoders.

Turn (batch, tokens, dim) hidden states into one vector per text, correctly on every
padding layout, and find out -- with statistics -- which pooling works best.
"""

__version__ = "0.1.0"

from seqpool.classifier import PooledClassifier  # noqa: E402
from seqpool.encoder import Encoder  # noqa: E402
from seqpool.errors import SeqpoolError  # noqa: E402
from seqpool.layers import (  # noqa: E402
    LEARNED_STRATEGIES,
    POOLER_STRATEGIES,
    AttentionPooling,
    Pooler,
    SqueezeExcitation,
)
from seqpool.local import (  # noqa: E402
    ShiftConsistency,
    avg_pool_tokens,
    blur_pool_tokens,
    max_blur_pool_tokens,
    max_pool_tokens,
    segment_pool,
    shift_consistency,
    word_embeddings,
    word_segment_ids,
)
from seqpool.pooling import (  # noqa: E402
    STRATEGIES,
    first_token,
    last_token,
    masked_max,
    masked_mean,
    masked_mean_sqrt_len,
    masked_weighted_mean,
    pool,
    pool_many,
)
from seqpool.states import TokenStates  # noqa: E402

# Heavier parts load on first use (PEP 562), so `import seqpool` stays light: the
# evaluation stack pulls in scipy/scikit-learn/datasets, the pipeline transformers'
# pipeline machinery (importing ``seqpool.pipeline`` is also what registers the
# "seqpool" pipeline task).
_LAZY = {
    "evaluate": "seqpool.evaluation",
    "EvaluationResult": "seqpool.evaluation",
    "load_labelled": "seqpool.evaluation",
    "stats": None,
    "Explanation": "seqpool.explain",
    "PoolingPipeline": "seqpool.pipeline",
    "register_pipeline": "seqpool.pipeline",
    "export_sentence_transformers": "seqpool.st_export",
    "read_sentence_transformers_layout": "seqpool.st_export",
}


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module 'seqpool' has no attribute {name!r}")
    import importlib

    if _LAZY[name] is None:
        value = importlib.import_module(f"seqpool.{name}")
    else:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value  # resolve once
    return value


__all__ = [
    "__version__",
    "SeqpoolError",
    "STRATEGIES",
    "LEARNED_STRATEGIES",
    "POOLER_STRATEGIES",
    "pool",
    "pool_many",
    "masked_mean",
    "masked_max",
    "masked_mean_sqrt_len",
    "masked_weighted_mean",
    "first_token",
    "last_token",
    "AttentionPooling",
    "SqueezeExcitation",
    "Pooler",
    "Encoder",
    "TokenStates",
    "PooledClassifier",
    "avg_pool_tokens",
    "max_pool_tokens",
    "blur_pool_tokens",
    "max_blur_pool_tokens",
    "shift_consistency",
    "ShiftConsistency",
    "segment_pool",
    "word_embeddings",
    "word_segment_ids",
    *_LAZY,
]
