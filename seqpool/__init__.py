"""seqpool: sequence summarization for transformer encoders.

Turn (batch, tokens, dim) hidden states into one vector per text, correctly on every
padding layout, and find out -- with statistics -- which pooling works best.
"""

__version__ = "0.1.0"

from seqpool.errors import SeqpoolError  # noqa: E402
from seqpool.layers import (  # noqa: E402
    LEARNED_STRATEGIES,
    POOLER_STRATEGIES,
    AttentionPooling,
    Pooler,
    SqueezeExcitation,
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
]
