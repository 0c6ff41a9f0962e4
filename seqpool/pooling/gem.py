"""Generalized-mean (GeM) pooling with a learned exponent (Radenović et al., 2018).

GeM learns the ``p`` of a power mean: ``p = 1`` is the mean, large ``p`` approaches max
pooling. Radenović et al. pool post-ReLU CNN features and clamp them at ``eps`` first so the
power is defined. Transformer token states are signed, and that clamp would throw away every
negative channel value, so by default (``signed=True``) this module learns the ``p`` of the
*signed* power mean of :mod:`seqpool.pooling.moments` (the odd extension ``sign(x)|x|^p`` with the real
root, exact for odd ``p``); ``signed=False`` is the paper's operator, for non-negative
features. ``p`` is clamped at ``p_min`` (>= 1) in the forward pass: below 1 the power has an
infinite slope at 0 (see :mod:`seqpool.pooling.moments`).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from seqpool.errors import SeqpoolError
from seqpool.pooling.base import PoolerBase
from seqpool.pooling.functional import fill_padding, upcast
from seqpool.pooling.moments import check_power, power_mean_of


class GeMPooling(PoolerBase):
    """Masked GeM pooling (B, T, D) -> (B, D) with a learnable exponent.

    ``per_channel=True`` learns one ``p`` per channel (``dim`` of them) instead of one shared
    value; ``learn_p=False`` freezes ``p`` (a buffer, still saved).
    """

    config_args = ("dim", "p", "eps", "signed", "per_channel", "learn_p", "p_min")
    config_attributes = {"p": "p_init"}  # ``self.p`` is the learned exponent itself
    repr_args = ("dim", "p", "signed", "per_channel")

    def __init__(self, dim: int, p: float = 3.0, eps: float = 1e-6, signed: bool = True,
                 per_channel: bool = False, learn_p: bool = True, p_min: float = 1.0):
        super().__init__()
        if dim < 1:
            raise SeqpoolError(f"GeMPooling needs dim >= 1, got dim={dim}")
        check_power(p_min, "p_min")
        if check_power(p, "p") < p_min:
            raise SeqpoolError(f"GeMPooling p must be >= p_min={p_min}, got p={p}")
        if not eps > 0:
            raise SeqpoolError(f"GeMPooling eps must be positive, got {eps}")
        self.dim, self.eps, self.signed, self.per_channel, self.learn_p = dim, float(eps), signed, per_channel, learn_p
        self.p_init, self.p_min = float(p), float(p_min)
        initial = torch.full((dim if per_channel else 1,), float(p))
        if learn_p:
            self.p = nn.Parameter(initial)
        else:
            self.register_buffer("p", initial)

    def exponent(self) -> Tensor:
        """The ``p`` used in the forward pass (clamped at ``p_min``)."""
        return self.p.clamp(min=self.p_min)

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        mask = self.checked_mask(hidden_states, attention_mask)
        p = self.exponent()
        states = upcast(hidden_states).to(torch.promote_types(upcast(hidden_states).dtype, p.dtype))
        if not self.signed:
            states = fill_padding(states, mask).clamp(min=self.eps)
        return power_mean_of(states, mask, p.to(states.dtype)).to(hidden_states.dtype)
