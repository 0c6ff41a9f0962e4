"""Generalized-mean (GeM) pooling with a learned exponent (Radenović et al., 2018).

GeM learns the ``p`` of a power mean: ``p = 1`` is the mean, large ``p`` approaches max
pooling. Radenović et al. pool post-ReLU CNN features and clamp them at ``eps`` first so the
power is defined. Transformer token states are signed, and that clamp would throw away every
negative channel value, so by default (``signed=True``) this module learns the ``p`` of the
*signed* power mean of :mod:`seqpool.moments` (the odd extension ``sign(x)|x|^p`` with the real
root, exact for odd ``p``); ``signed=False`` is the paper's operator, for non-negative
features. ``p`` is clamped at ``p_min`` (>= 1) in the forward pass: below 1 the power has an
infinite slope at 0 (see :mod:`seqpool.moments`).
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn

from seqpool._version import __version__
from seqpool.errors import SeqpoolError
from seqpool.moments import check_power, power_mean_of
from seqpool.pooling import fill_padding, normalize_mask, upcast
from seqpool.serialization import load_configured, save_module


class GeMPooling(nn.Module):
    """Masked GeM pooling (B, T, D) -> (B, D) with a learnable exponent.

    ``per_channel=True`` learns one ``p`` per channel (``dim`` of them) instead of one shared
    value; ``learn_p=False`` freezes ``p`` (a buffer, still saved).
    """

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

    @property
    def output_dim(self) -> int:
        return self.dim

    def exponent(self) -> Tensor:
        """The ``p`` used in the forward pass (clamped at ``p_min``)."""
        return self.p.clamp(min=self.p_min)

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        mask = normalize_mask(hidden_states, attention_mask)
        width = hidden_states.shape[-1]
        if width != self.dim:
            raise SeqpoolError(f"hidden_states have width {width} but this GeMPooling was built for dim={self.dim}; "
                               f"build a new one with dim={width}")
        p = self.exponent()
        states = upcast(hidden_states).to(torch.promote_types(upcast(hidden_states).dtype, p.dtype))
        if not self.signed:
            states = fill_padding(states, mask).clamp(min=self.eps)
        return power_mean_of(states, mask, p.to(states.dtype)).to(hidden_states.dtype)

    @property
    def config(self) -> dict[str, Any]:
        return {"seqpool_type": "GeMPooling", "seqpool_version": __version__, "dim": self.dim, "p": self.p_init,
                "eps": self.eps, "signed": self.signed, "per_channel": self.per_channel, "learn_p": self.learn_p,
                "p_min": self.p_min}

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` + ``model.safetensors`` (the learned ``p``) into ``directory``."""
        save_module(self, self.config, directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "GeMPooling":
        return load_configured(cls, directory)

    def extra_repr(self) -> str:
        return f"dim={self.dim}, p={self.p_init}, signed={self.signed}, per_channel={self.per_channel}"

