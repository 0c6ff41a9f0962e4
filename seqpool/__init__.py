"""seqpool: sequence summarization for transformer encoders.

Turn (batch, tokens, dim) hidden states into one vector per text, correctly on every
padding layout, and find out -- with statistics -- which pooling works best.

Every public name loads on first use (PEP 562, as transformers does): ``import seqpool``
and ``seqpool --help`` must not pay for torch, transformers or scikit-learn before a
name that needs them is touched. ``_EXPORTS`` is the one table of what lives where.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from seqpool._lazy import lazy_exports
from seqpool._version import __version__

# public name -> the module that defines it
_EXPORTS: dict[str, str] = {
    "SeqpoolError": "seqpool.errors",
    "PoolingWarning": "seqpool.errors",
    # the strategy registry (torch-free)
    "StrategySpec": "seqpool.registry",
    "get_strategy": "seqpool.registry",
    "strategy_names": "seqpool.registry",
    "register_strategy": "seqpool.registry",
    "unregister_strategy": "seqpool.registry",
    # parameter-free pooling
    "STRATEGIES": "seqpool.pooling",
    "pool": "seqpool.pooling",
    "pool_many": "seqpool.pooling",
    "masked_mean": "seqpool.pooling",
    "masked_max": "seqpool.pooling",
    "masked_mean_sqrt_len": "seqpool.pooling",
    "masked_weighted_mean": "seqpool.pooling",
    "first_token": "seqpool.pooling",
    "last_token": "seqpool.pooling",
    # learned poolers (seqpool/pooling/: one module per pooler, one base class)
    "LEARNED_STRATEGIES": "seqpool.pooling.pooler",
    "POOLER_STRATEGIES": "seqpool.pooling.pooler",
    "Pooler": "seqpool.pooling.pooler",
    "PoolerBase": "seqpool.pooling.base",
    "AttentionPooling": "seqpool.pooling.attention",
    "SqueezeExcitation": "seqpool.pooling.squeeze_excitation",
    # issue-11 operators: moments, learned poolers, layer mixing, expressions
    "masked_power_mean": "seqpool.pooling.moments",
    "masked_mean_std": "seqpool.pooling.moments",
    "GeMPooling": "seqpool.pooling.gem",
    "AttentiveStatisticsPooling": "seqpool.pooling.attentive_stats",
    "LatentAttentionPooling": "seqpool.pooling.latent_attention",
    "ScalarMix": "seqpool.pooling.scalar_mix",
    "ScalarMixPooling": "seqpool.pooling.scalar_mix",
    "parse_strategy": "seqpool.expressions",
    # encoder, token states, classifier
    "Encoder": "seqpool.encoder",
    "load_embeddings": "seqpool.io",
    "Compaction": "seqpool.quantize",
    "Embedder": "seqpool.engine",
    "TokenStates": "seqpool.states",
    "PooledClassifier": "seqpool.classifier",
    # pooling along the token axis
    "avg_pool_tokens": "seqpool.local",
    "max_pool_tokens": "seqpool.local",
    "blur_pool_tokens": "seqpool.local",
    "max_blur_pool_tokens": "seqpool.local",
    "shift_consistency": "seqpool.local",
    "ShiftConsistency": "seqpool.local",
    "segment_pool": "seqpool.local",
    "word_embeddings": "seqpool.encoder",
    "word_segment_ids": "seqpool.local",
    # evaluation, explanation, pipelines, sentence-transformers
    "evaluate": "seqpool.evaluation",
    "EvaluationSettings": "seqpool.evaluation",
    "embed_file": "seqpool.embed",
    "EvaluationResult": "seqpool.evaluation",
    "load_labelled": "seqpool.evaluation",
    "Explanation": "seqpool.explain",
    "PoolingPipeline": "seqpool.pipeline",
    "register_pipeline": "seqpool.pipeline",
    "export_sentence_transformers": "seqpool.st_export",
    "read_sentence_transformers_layout": "seqpool.st_export",
}
# submodules reachable as attributes without importing them first (``seqpool.stats.corrected_ci``)
_SUBMODULES = ("stats", "cli")

__all__ = ["__version__", *_EXPORTS, *_SUBMODULES]


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals(), _SUBMODULES)  # resolved once, then cached


if TYPE_CHECKING:  # static analysers and IDEs see the eager imports
    from seqpool import stats
    from seqpool.classifier import PooledClassifier
    from seqpool.encoder import Encoder, word_embeddings
    from seqpool.errors import PoolingWarning, SeqpoolError
    from seqpool.embed import embed_file
    from seqpool.evaluation import EvaluationResult, EvaluationSettings, evaluate, load_labelled
    from seqpool.explain import Explanation
    from seqpool.expressions import parse_strategy
    from seqpool.local import (
        ShiftConsistency,
        avg_pool_tokens,
        blur_pool_tokens,
        max_blur_pool_tokens,
        max_pool_tokens,
        segment_pool,
        shift_consistency,
        word_segment_ids,
    )
    from seqpool.io import load_embeddings
    from seqpool.pipeline import PoolingPipeline, register_pipeline
    from seqpool.pooling import (
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
    from seqpool.pooling.attention import AttentionPooling
    from seqpool.pooling.base import PoolerBase
    from seqpool.pooling.attentive_stats import AttentiveStatisticsPooling
    from seqpool.pooling.gem import GeMPooling
    from seqpool.pooling.latent_attention import LatentAttentionPooling
    from seqpool.pooling.moments import masked_mean_std, masked_power_mean
    from seqpool.pooling.pooler import LEARNED_STRATEGIES, POOLER_STRATEGIES, Pooler
    from seqpool.pooling.scalar_mix import ScalarMix, ScalarMixPooling
    from seqpool.pooling.squeeze_excitation import SqueezeExcitation
    from seqpool.registry import (
        StrategySpec,
        get_strategy,
        register_strategy,
        strategy_names,
        unregister_strategy,
    )
    from seqpool.quantize import Compaction
    from seqpool.st_export import export_sentence_transformers, read_sentence_transformers_layout
    from seqpool.states import TokenStates
