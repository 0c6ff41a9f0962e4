"""Masked moment pooling: power means and mean ⊕ standard deviation, pure functions.

Same conventions as :mod:`seqpool.pooling.functional`: ``hidden_states`` (B, T, D), ``attention_mask``
(B, T; 1 = real token), padding side read from the mask, float32 (or float64) accumulation,
output in the input dtype, a row without real tokens pools to zeros with zero gradient, and
padded values are never read arithmetically (NaN/inf there cannot leak).

**Power means on signed states.** The classical power mean ``(mean x^p)^(1/p)`` needs
``x >= 0`` unless ``p`` is an odd integer. Transformer states are signed, so -- following
Rücklé et al. (2018), who concatenate p-means with odd ``p`` and the real (signed) root --
this module uses the *odd extension* for every ``p``:

    M_p(x) = r(mean_t s(x_t)),   s(x) = sign(x) |x|^p,   r(m) = sign(m) |m|^(1/p).

For odd integer ``p`` this *is* the power mean with the real root; for non-negative states it
equals the classical power mean for every ``p``; ``p = 1`` is the mean. For even (or
fractional) ``p`` it is **not** the classical sign-less mean -- ``p = 2`` gives a signed
quadratic mean, not the RMS -- but it keeps what makes a pooling operator useful on signed
features: ``M_p(-x) = -M_p(x)``, ``min <= M_p <= max``, homogeneity ``M_p(c x) = c M_p(x)``
for ``c > 0``, and it grows toward the largest-magnitude token as ``p`` grows. ``p`` must be
at least 1: below 1, ``|x|^p`` has an infinite slope at 0 and a token exactly at zero would get
an infinite gradient.

Overflow: each (row, channel) is divided by its largest ``|x|`` over the real tokens before
powering (so every power lies in [-1, 1]) and multiplied back after the root. Because
``M_p`` is homogeneous, this is exact, and the scale is treated as a constant in the
backward pass (the gradient of ``s * M_p(x / s)`` at fixed ``s`` *is* the gradient of
``M_p``), so fp16/bf16 states near their maximum and large ``p`` neither overflow nor NaN.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from seqpool.errors import SeqpoolError
from seqpool.pooling.functional import fill_padding, masked_mean, normalize_mask, upcast


def _scale(values: Tensor) -> Tensor:
    """(B, 1, D) largest |value| over the token axis, 1 where it is 0; detached (see module doc)."""
    scale = values.detach().abs().amax(dim=1, keepdim=True)
    return torch.where(scale > 0, scale, torch.ones_like(scale))


def safe_sqrt(value: Tensor) -> Tensor:
    """``sqrt`` with an exact 0 at 0 and a zero (not infinite) gradient there.

    The true slope of sqrt at 0 is infinite; where a variance is exactly 0 (one token, or
    identical tokens) the standard deviation is 0 and has no finite gradient, so 0 is used,
    the same choice ``abs`` makes at 0.
    """
    positive = value > 0
    return torch.where(positive, torch.sqrt(torch.where(positive, value, torch.ones_like(value))),
                       torch.zeros_like(value))


def signed_root(mean: Tensor, p: Tensor | float) -> Tensor:
    """``sign(m) |m|^(1/p)`` with an exact 0 (and zero gradient) at ``m = 0``.

    ``|m|`` is floored at the dtype's smallest normal number inside the power only, so the
    backward pass never evaluates ``0^(1/p - 1)`` = inf; the forward value at 0 stays 0
    because of the ``sign`` factor.
    """
    magnitude = mean.abs().clamp_min(torch.finfo(mean.dtype).tiny)
    return torch.sign(mean) * magnitude.pow(1.0 / p)


def power_mean_of(states: Tensor, mask: Tensor, p: Tensor | float) -> Tensor:
    """The signed power mean of already upcast ``states`` (B, T, D) over ``mask`` (B, T) -> (B, D).

    ``p`` may be a float or a tensor broadcastable to (D,) (learnable, as in GeM); callers
    check ``p >= 1``. Shared by :func:`masked_power_mean` and :class:`seqpool.pooling.gem.GeMPooling`.
    """
    if states.shape[1] == 0:
        return states.sum(dim=1)
    filled = fill_padding(states, mask)
    scale = _scale(filled)
    scaled = filled / scale
    powered = torch.sign(scaled) * scaled.abs().pow(p)
    count = mask.sum(dim=1, keepdim=True, dtype=states.dtype).clamp(min=1.0)
    return signed_root(powered.sum(dim=1) / count, p) * scale.squeeze(1)


def check_power(p: float, name: str = "p") -> float:
    """``p`` as a float, or a SeqpoolError if it is not a finite number >= 1."""
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not math.isfinite(p) or p < 1:
        raise SeqpoolError(
            f"{name} must be a finite number >= 1 (1 = mean, 3 = the cubic mean of Rücklé et al.; "
            f"use 'max' for p = infinity), got {p!r}"
        )
    return float(p)


def masked_power_mean(hidden_states: Tensor, attention_mask: Tensor | None = None, p: float = 3.0) -> Tensor:
    """Signed power mean ``M_p`` over real tokens (see the module docstring for the definition).

    >>> h = torch.tensor([[[1.0], [-2.0], [0.5]]])
    >>> round(masked_power_mean(h, None, p=3).item(), 3)  # cbrt((1 - 8 + 0.125) / 3)
    -1.318
    """
    p = check_power(p)
    mask = normalize_mask(hidden_states, attention_mask)
    if p == 1.0:
        return masked_mean(hidden_states, mask)
    return power_mean_of(upcast(hidden_states), mask, p).to(hidden_states.dtype)


def masked_mean_std(hidden_states: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """Statistics pooling: (B, 2D) = masked mean ⊕ population standard deviation over real tokens.

    The deviation uses the two-pass formula ``mean((x - mean)^2)`` (no cancellation), divides by
    the number of tokens (a single token has std 0, never NaN: the sample formula would divide
    by zero), and scales each channel by its largest deviation before squaring so half-precision
    states cannot overflow. The mean half equals :func:`seqpool.pooling.functional.masked_mean` exactly.
    """
    mask = normalize_mask(hidden_states, attention_mask)
    states = upcast(hidden_states)
    count = mask.sum(dim=1, keepdim=True, dtype=states.dtype).clamp(min=1.0)
    mean = fill_padding(states, mask).sum(dim=1) / count  # the ops of masked_mean, kept unrounded
    if states.shape[1] == 0:
        return torch.cat([mean, mean], dim=-1).to(hidden_states.dtype)
    deviation = fill_padding(states - mean.unsqueeze(1), mask)
    scale = _scale(deviation)
    variance = ((deviation / scale) ** 2).sum(dim=1) / count
    std = safe_sqrt(variance) * scale.squeeze(1)
    return torch.cat([mean, std], dim=-1).to(hidden_states.dtype)


def mean_std_width(dim: int, **_: object) -> int:
    """Width of :func:`masked_mean_std` for ``dim``-wide states (the ``mean_std`` record points here)."""
    return 2 * dim


# ---------------------------------------------------------------- weighted moments (attention)


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the token axis (dim 1) of ``scores`` (B, T, H), real tokens only.

    Padded positions get weight exactly 0 (a select before the softmax, so NaN scores there
    are harmless); a row with no real token gets all-zero weights instead of a uniform spread.
    """
    filled = scores.masked_fill(~mask.unsqueeze(-1), torch.finfo(scores.dtype).min)
    return torch.softmax(filled, dim=1) * mask.any(dim=1).to(scores.dtype)[:, None, None]


def weighted_mean_std(states: Tensor, mask: Tensor, weights: Tensor) -> tuple[Tensor, Tensor]:
    """Weighted mean and standard deviation over tokens, each (B, D).

    ``states`` (B, T, D) already upcast; ``weights`` (B, T, D) or (B, T, 1), zero on padding
    and summing to 1 (or 0 for an empty row) over tokens, as from :func:`masked_softmax`.
    ``std = sqrt(sum_t w_t (x_t - mean)^2)`` with the overflow scaling and the exact-zero
    :func:`safe_sqrt` of :func:`masked_mean_std`, to which it reduces for uniform weights.
    """
    filled = fill_padding(states, mask)
    mean = (weights * filled).sum(dim=1)
    if states.shape[1] == 0:
        return mean, mean
    deviation = fill_padding(states - mean.unsqueeze(1), mask)
    scale = _scale(deviation)
    variance = (weights * (deviation / scale) ** 2).sum(dim=1)
    return mean, safe_sqrt(variance) * scale.squeeze(1)
