"""Multi-query latent attention pooling: k learned queries cross-attend to the real tokens.

This is the attention core of the Set Transformer's pooling by multihead attention (PMA,
Lee et al., 2019) and of NV-Embed's latent-attention pooling (Lee et al., 2024): a small set
of learned query vectors ("seeds", "latents") each takes a softmax-weighted average of the
tokens. Each query can specialise (topic words, negations, entities, ...); their results are
averaged (``mode="mean"``, width D) or concatenated (``mode="concat"``, width k*D).

Deliberately thin: no residual feed-forward block or LayerNorm after the attention (which PMA
adds). Every output is then a weighted average of the token states with weights retrievable from :meth:`LatentAttentionPooling.attention_weights`, so a
pooled vector splits *exactly* into per-token contributions for ``explain``.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from seqpool.errors import SeqpoolError
from seqpool.pooling.base import PoolerBase
from seqpool.pooling.functional import fill_padding, upcast
from seqpool.pooling.moments import masked_softmax

MODES = ("mean", "concat")


class LatentAttentionPooling(PoolerBase):
    """``num_queries`` learned queries attend over real tokens: (B, T, D) -> (B, D) or (B, k*D).

    Scores are scaled dot products ``q . (W_k x_t + b_k) / sqrt(key_dim)``; values are the
    token states themselves (no value projection, so the output stays in the encoder's space
    and decomposes exactly over tokens). Padding is masked before the softmax; rows with no
    real token give zeros.
    """

    config_args = ("dim", "num_queries", "mode", "key_dim", "dropout")
    config_attributes = {"dropout": "dropout_rate"}
    repr_args = ("dim", "num_queries", "mode", "key_dim")
    returns_weights = True

    def __init__(self, dim: int, num_queries: int = 4, mode: str = "mean", key_dim: int | None = None,
                 dropout: float = 0.0):
        super().__init__()
        if dim < 1 or num_queries < 1 or (key_dim is not None and key_dim < 1):
            raise SeqpoolError(
                "LatentAttentionPooling needs dim >= 1, num_queries >= 1 and key_dim >= 1 (or None), "
                f"got dim={dim}, num_queries={num_queries}, key_dim={key_dim}"
            )
        if mode not in MODES:
            raise SeqpoolError(f"LatentAttentionPooling mode must be one of {', '.join(MODES)}, got {mode!r}")
        if not 0.0 <= dropout <= 1.0:
            raise SeqpoolError(f"LatentAttentionPooling dropout must be between 0 and 1, got {dropout}")
        self.dim, self.num_queries, self.mode = dim, num_queries, mode
        self.key_dim = dim if key_dim is None else key_dim
        self.dropout_rate = dropout
        self.key = nn.Linear(dim, self.key_dim)
        self.queries = nn.Parameter(torch.randn(num_queries, self.key_dim) / math.sqrt(self.key_dim))
        self.dropout = nn.Dropout(dropout)

    @staticmethod
    def output_width(dim: int, num_queries: int = 4, mode: str = "mean", **_: Any) -> int:
        """The queries are averaged (``dim``) or concatenated (``num_queries * dim``)."""
        return dim if mode == "mean" else num_queries * dim

    def _states(self, hidden_states: Tensor, mask: Tensor) -> Tensor:
        dtype = torch.promote_types(upcast(hidden_states).dtype, self.queries.dtype)
        return fill_padding(hidden_states.to(dtype), mask)

    def _weights(self, states: Tensor, mask: Tensor) -> Tensor:
        """(B, T, k) softmax weights over real tokens."""
        keys = self.key(states.to(self.queries.dtype)).to(states.dtype)
        scores = keys @ self.queries.to(states.dtype).T / math.sqrt(self.key_dim)
        return masked_softmax(scores, mask)

    def attention_weights(self, hidden_states: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """(B, k, T) weights of each query; each sums to 1 over real tokens (0 if none)."""
        mask = self.checked_mask(hidden_states, attention_mask)
        return self._weights(self._states(hidden_states, mask), mask).transpose(1, 2)

    def forward(
        self, hidden_states: Tensor, attention_mask: Tensor | None = None, return_weights: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Pool to (B, output_dim); with ``return_weights`` also return the (B, k, T) weights."""
        mask = self.checked_mask(hidden_states, attention_mask)
        states = self._states(hidden_states, mask)
        weights = self._weights(states, mask).transpose(1, 2)  # (B, k, T)
        per_query = torch.einsum("bkt,btd->bkd", self.dropout(weights), states)
        pooled = per_query.mean(dim=1) if self.mode == "mean" else per_query.flatten(1)
        pooled = pooled.to(hidden_states.dtype)
        return (pooled, weights) if return_weights else pooled


def latent_attention_token_weights(hidden_states: Tensor, attention_mask: Tensor | None,
                                   module: LatentAttentionPooling) -> Tensor:
    """Exact token weights for ``explain``: (B, T) for ``mode="mean"``, (B, T, k*D) for ``"concat"``.

    ``pooled[:, j] == sum_t weights[:, t, j] * states[:, t, j % D]`` (dropout off, as in eval).
    """
    attention = module.attention_weights(hidden_states, attention_mask)  # (B, k, T)
    if module.mode == "mean":
        return attention.mean(dim=1)
    return attention.transpose(1, 2).repeat_interleave(hidden_states.shape[-1], dim=2)
