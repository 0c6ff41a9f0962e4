"""Attentive statistics pooling (Okabe et al., 2018; ECAPA-TDNN's variant in speechbrain).

Statistics pooling (:func:`seqpool.pooling.moments.masked_mean_std`) weighs every token equally.
Attentive statistics pooling learns a softmax weight per token -- per channel in ECAPA --
and returns the attention-weighted mean ⊕ the attention-weighted standard deviation, so a
classifier sees both what the important tokens say and how much they disagree.

Differences from speechbrain's ``AttentiveStatisticsPooling``, which works on (B, C, T)
speech frames with lengths: states here are (B, T, D) with an arbitrary mask (any padding
side, holes); the score network is ``Linear -> tanh -> Linear`` (no BatchNorm: batch
statistics over padded tokens would make a text's vector depend on its batch-mates); and the
standard deviation of a single token is exactly 0 (speechbrain clamps the variance at 1e-12).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from seqpool.errors import SeqpoolError
from seqpool.pooling.base import PoolerBase
from seqpool.pooling.functional import fill_padding, upcast
from seqpool.pooling.moments import masked_mean_std, masked_softmax, weighted_mean_std


class AttentiveStatisticsPooling(PoolerBase):
    """Masked attentive statistics pooling: (B, T, D) -> (B, 2D) = weighted mean ⊕ weighted std.

    ``channelwise=True`` (ECAPA) learns a separate softmax over tokens for every channel;
    ``False`` (Okabe et al.) one weight per token shared by all channels.
    ``global_context=True`` (ECAPA) feeds the scorer each token together with the row's
    unweighted mean and std, so a token's weight can depend on the whole text.
    """

    config_args = ("dim", "attention_dim", "channelwise", "global_context")
    returns_weights = True

    def __init__(self, dim: int, attention_dim: int = 128, channelwise: bool = True, global_context: bool = True):
        super().__init__()
        if dim < 1 or attention_dim < 1:
            raise SeqpoolError(
                f"AttentiveStatisticsPooling needs dim >= 1 and attention_dim >= 1, got dim={dim}, "
                f"attention_dim={attention_dim}"
            )
        self.dim, self.attention_dim = dim, attention_dim
        self.channelwise, self.global_context = channelwise, global_context
        scorer_input = 3 * dim if global_context else dim
        self.score = nn.Sequential(nn.Linear(scorer_input, attention_dim), nn.Tanh(),
                                   nn.Linear(attention_dim, dim if channelwise else 1))

    @staticmethod
    def output_width(dim: int, **_: Any) -> int:
        """Weighted mean ⊕ weighted standard deviation: ``2 * dim``."""
        return 2 * dim

    def _states(self, hidden_states: Tensor, mask: Tensor) -> Tensor:
        """The states with padding zeroed, in the dtype the math runs in (float32 at least)."""
        dtype = torch.promote_types(upcast(hidden_states).dtype, self.score[0].weight.dtype)
        return fill_padding(hidden_states.to(dtype), mask)

    def attention_weights(self, hidden_states: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """(B, C, T) weights, C = dim (channelwise) or 1; each sums to 1 over real tokens (0 if none)."""
        mask = self.checked_mask(hidden_states, attention_mask)
        return self._weights(self._states(hidden_states, mask), mask).transpose(1, 2)

    def _weights(self, states: Tensor, mask: Tensor) -> Tensor:
        scorer_input = states
        if self.global_context:
            context = masked_mean_std(states, mask).unsqueeze(1).expand(-1, states.shape[1], -1)
            scorer_input = torch.cat([states, context], dim=-1)
        parameter_dtype = self.score[0].weight.dtype
        scores = self.score(scorer_input.to(parameter_dtype)).to(states.dtype)  # (B, T, C)
        return masked_softmax(scores, mask)

    def forward(
        self, hidden_states: Tensor, attention_mask: Tensor | None = None, return_weights: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Pool to (B, 2*dim); with ``return_weights`` also return the (B, C, T) weights."""
        mask = self.checked_mask(hidden_states, attention_mask)
        states = self._states(hidden_states, mask)
        weights = self._weights(states, mask)
        mean, std = weighted_mean_std(states, mask, weights)
        pooled = torch.cat([mean, std], dim=-1).to(hidden_states.dtype)
        return (pooled, weights.transpose(1, 2)) if return_weights else pooled
