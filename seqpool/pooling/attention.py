"""Learned attention pooling: a softmax over the real tokens of a learned per-token score."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from seqpool.errors import SeqpoolError
from seqpool.pooling.base import PoolerBase
from seqpool.pooling.functional import fill_padding, upcast


class AttentionPooling(PoolerBase):
    """Learned attention pooling: a softmax over real tokens of a per-token score.

    With ``hidden_dim=None`` each head scores tokens with a learned query vector
    (a linear layer); otherwise with a small MLP ``dim -> hidden_dim -> tanh -> heads``
    (Bahdanau-style additive attention). Padding is masked before the softmax; rows
    with no real token give zeros. Each head returns a weighted mean of the full
    ``dim``-wide states, and heads are concatenated: the output is ``(B, heads * dim)``
    (see :attr:`output_dim`).
    """

    config_args = ("dim", "heads", "hidden_dim", "dropout")
    config_attributes = {"dropout": "dropout.p"}
    returns_weights = True

    def __init__(self, dim: int, heads: int = 1, hidden_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        if dim < 1 or heads < 1 or (hidden_dim is not None and hidden_dim < 1):
            raise SeqpoolError(
                "AttentionPooling needs dim >= 1, heads >= 1 and hidden_dim >= 1 (or None), "
                f"got dim={dim}, heads={heads}, hidden_dim={hidden_dim}"
            )
        if not 0.0 <= dropout <= 1.0:
            raise SeqpoolError(f"AttentionPooling dropout must be between 0 and 1, got {dropout}")
        self.dim, self.heads, self.hidden_dim = dim, heads, hidden_dim
        if hidden_dim is None:
            self.score: nn.Module = nn.Linear(dim, heads)
        else:
            self.score = nn.Sequential(nn.Linear(dim, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, heads))
        self.dropout = nn.Dropout(dropout)

    @staticmethod
    def output_width(dim: int, heads: int = 1, **_: Any) -> int:
        """The heads are concatenated: ``heads * dim``."""
        return heads * dim

    def attention_weights(self, hidden_states: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """(B, heads, T) weights; each row sums to 1 over real tokens (0 if none).

        Float32 at least (float64 when the states or the module are float64).
        """
        mask = self.checked_mask(hidden_states, attention_mask)
        return self._weights(fill_padding(hidden_states, mask), mask)

    def _weights(self, filled: Tensor, mask: Tensor) -> Tensor:
        """:meth:`attention_weights` of states whose padding is already zero (``filled``)."""
        states = filled.to(self._parameter_dtype())
        dtype = torch.promote_types(upcast(filled).dtype, states.dtype)
        scores = self.score(states).to(dtype)  # (B, T, heads)
        scores = scores.masked_fill(~mask.unsqueeze(-1), torch.finfo(dtype).min)
        weights = torch.softmax(scores, dim=1) * mask.any(dim=1).to(dtype)[:, None, None]
        return weights.transpose(1, 2)

    def forward(
        self, hidden_states: Tensor, attention_mask: Tensor | None = None, return_weights: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Pool to (B, heads*dim); with ``return_weights`` also return the (B, heads, T) weights."""
        mask = self.checked_mask(hidden_states, attention_mask)
        filled = fill_padding(hidden_states, mask)  # once: it feeds both the scores and the weighted sum
        pooled, weights = self._pool(filled, mask)
        return (pooled, weights) if return_weights else pooled

    def pool_filled(self, filled: Tensor, mask: Tensor) -> Tensor:
        """:meth:`forward` of states whose padding is already zero, with a (B, T) bool mask:
        training batches are gathered that way, so the masking pass over (B, T, D) is skipped."""
        return self._pool(filled, mask)[0]

    def _pool(self, filled: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        weights = self._weights(filled, mask)
        pooled = torch.einsum("bht,btd->bhd", self.dropout(weights), filled.to(weights.dtype))
        return pooled.reshape(filled.shape[0], self.heads * self.dim).to(filled.dtype), weights

    def _parameter_dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype


def attention_token_weights(hidden_states: Tensor, attention_mask: Tensor, module: AttentionPooling) -> Tensor:
    """(B, T, heads * D) exact token weights of attention pooling (for ``explain``)."""
    attention = module.attention_weights(hidden_states, attention_mask)  # (B, heads, T)
    return attention.transpose(1, 2).repeat_interleave(hidden_states.shape[-1], dim=2)
