"""Masked global pooling over the token axis: pure functions, looked up by name in seqpool.registry.

Every function takes ``hidden_states`` (B, T, D) and a boolean-like ``attention_mask``
(B, T; 1 = real token) and returns (B, D). The padding side is read from the mask,
never assumed, so left, right, no, and even non-contiguous padding all work.

Conventions (see ``shared/design.md``):

* reductions accumulate in (at least) float32 whatever the input dtype and return the input
  dtype: half types are upcast, float64 keeps its precision (so ``gradcheck`` works);
* a row with no real token pools to zeros, never NaN/inf, and its gradient is zero
  (also when the token axis itself is empty, T = 0);
* values in padded positions are never read (not even multiplied by zero), so
  garbage, inf or NaN there cannot leak into outputs or gradients.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor

from seqpool.errors import SeqpoolError

PoolFn = Callable[[Tensor, Tensor], Tensor]


def normalize_mask(hidden_states: Tensor, attention_mask: Tensor | None) -> Tensor:
    """Validate shapes and return a (B, T) bool mask on the states' device.

    ``None`` means every token is real. Any nonzero bool/integer value counts as real; a
    float mask must hold only 0 and 1 (anything else would be a soft weight, refused).
    """
    if not isinstance(hidden_states, Tensor):
        raise SeqpoolError(f"hidden_states must be a torch.Tensor, got {type(hidden_states).__name__}")
    if hidden_states.dim() != 3:
        raise SeqpoolError(
            f"hidden_states must have shape (batch, tokens, dim), got {tuple(hidden_states.shape)}"
        )
    if not hidden_states.is_floating_point():
        raise SeqpoolError(f"hidden_states must be floating point, got {hidden_states.dtype}")
    batch, tokens, _ = hidden_states.shape
    if attention_mask is None:
        return torch.ones(batch, tokens, dtype=torch.bool, device=hidden_states.device)
    if not isinstance(attention_mask, Tensor):
        attention_mask = torch.as_tensor(attention_mask)
    if tuple(attention_mask.shape) != (batch, tokens):
        raise SeqpoolError(
            f"attention_mask must have shape (batch, tokens) = {(batch, tokens)} to match "
            f"hidden_states {tuple(hidden_states.shape)}, got {tuple(attention_mask.shape)}"
        )
    if attention_mask.is_complex() or (attention_mask.is_floating_point() and bool(
            ((attention_mask != 0) & (attention_mask != 1)).any())):
        # 0.5 or NaN is a soft weight, not "real or padding": binarising it would be a silent guess
        raise SeqpoolError(f"attention_mask must hold 0 (padding) and 1 (real token); this {attention_mask.dtype} "
                           f"mask has other values -- pass a bool or 0/1 mask")
    return attention_mask.to(device=hidden_states.device) != 0


def fill_padding(hidden_states: Tensor, mask: Tensor, fill: float = 0.0) -> Tensor:
    """States with padded positions replaced by ``fill`` (a select, not a multiply: NaN-safe)."""
    return hidden_states.masked_fill(~mask.unsqueeze(-1), fill)


def upcast(hidden_states: Tensor) -> Tensor:
    """The states in the dtype reductions run in: float32 for half types, float64 stays float64."""
    return hidden_states.to(torch.promote_types(hidden_states.dtype, torch.float32))


def _no_tokens(hidden_states: Tensor) -> Tensor:
    """(B, D) zeros for an empty token axis (T = 0), still attached to the autograd graph."""
    return hidden_states.sum(dim=1)


def _token_counts(mask: Tensor) -> Tensor:
    """(B, 1) float32 number of real tokens per row."""
    return mask.sum(dim=1, keepdim=True, dtype=torch.float32)


def _sum_and_count(hidden_states: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    """Float32 sum over real tokens (B, D) and their count (B, 1), clamped to >= 1.

    The float32 sum is what keeps fp16 inputs near +-6e4 from overflowing.
    """
    total = fill_padding(upcast(hidden_states), mask).sum(dim=1)
    return total, _token_counts(mask).clamp(min=1.0)


def masked_mean(hidden_states: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """Global average pooling over real tokens."""
    mask = normalize_mask(hidden_states, attention_mask)
    total, count = _sum_and_count(hidden_states, mask)
    return (total / count).to(hidden_states.dtype)


def masked_mean_sqrt_len(hidden_states: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """Sum over real tokens divided by sqrt(n): keeps some length signal, unlike the mean."""
    mask = normalize_mask(hidden_states, attention_mask)
    total, count = _sum_and_count(hidden_states, mask)
    return (total / count.sqrt()).to(hidden_states.dtype)


def masked_weighted_mean(hidden_states: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """Position-weighted mean (SGPT): the k-th real token gets weight k.

    Weights count real tokens only (a cumulative sum of the mask), so left and right
    padding give the same result. Useful for causal decoders, whose later tokens have
    seen more of the text.
    """
    mask = normalize_mask(hidden_states, attention_mask)
    weights = (mask.to(torch.int64).cumsum(dim=1) * mask).to(torch.float32).unsqueeze(-1)  # int: ONNX has no bool cumsum
    total = (fill_padding(upcast(hidden_states), mask) * weights).sum(dim=1)
    return (total / weights.sum(dim=1).clamp(min=1.0)).to(hidden_states.dtype)


def masked_weighted_mean_keeping_positions(hidden_states: Tensor, attention_mask: Tensor | None,
                                           kept: Tensor) -> Tensor:
    """:func:`masked_weighted_mean` over the ``kept`` tokens only, each weighing its position among
    *all* real tokens of ``attention_mask``: what sentence-transformers computes when a prompt is
    left out of the pool (``include_prompt=False``), so the first kept token does not restart at 1."""
    full = normalize_mask(hidden_states, attention_mask)
    kept = full & normalize_mask(hidden_states, kept)
    weights = (full.cumsum(dim=1) * kept).to(torch.float32).unsqueeze(-1)
    total = (upcast(hidden_states).masked_fill(~kept.unsqueeze(-1), 0.0) * weights).sum(dim=1)
    return (total / weights.sum(dim=1).clamp(min=1.0)).to(hidden_states.dtype)


def masked_max(hidden_states: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """Channel-wise max over real tokens; padding never wins, empty rows give zeros.

    Exact in any dtype, so no float32 upcast is needed.
    """
    mask = normalize_mask(hidden_states, attention_mask)
    if mask.shape[1] == 0:
        return _no_tokens(hidden_states)
    filled = fill_padding(hidden_states, mask, float("-inf"))
    pooled = filled.max(dim=1).values
    has_tokens = mask.any(dim=1, keepdim=True)
    return torch.where(has_tokens, pooled, torch.zeros_like(pooled))


def first_token_index(mask: Tensor) -> Tensor:
    """(B,) index of the first real token (0 for empty rows)."""
    # argmax returns the first maximal index, so this is the first True.
    return mask.to(torch.uint8).argmax(dim=1)


def last_token_index(mask: Tensor) -> Tensor:
    """(B,) index of the last real token (T-1 for empty rows), found by flipping the mask."""
    tokens = mask.shape[1]
    return tokens - 1 - mask.flip(dims=[1]).to(torch.uint8).argmax(dim=1)


def _gather_token(hidden_states: Tensor, mask: Tensor, token_index: Callable[[Tensor], Tensor]) -> Tensor:
    """Pick one token per row; rows with no real token give zeros."""
    if mask.shape[1] == 0:
        return _no_tokens(hidden_states)
    rows = torch.arange(hidden_states.shape[0], device=hidden_states.device)
    picked = hidden_states[rows, token_index(mask)]
    has_tokens = mask.any(dim=1, keepdim=True)
    return torch.where(has_tokens, picked, torch.zeros_like(picked))


def first_token(hidden_states: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """The first real token ([CLS] for BERT-style encoders), correct under left padding."""
    mask = normalize_mask(hidden_states, attention_mask)
    return _gather_token(hidden_states, mask, first_token_index)


def last_token(hidden_states: Tensor, attention_mask: Tensor | None = None) -> Tensor:
    """The last real token (the summary state of causal decoders), either padding side."""
    mask = normalize_mask(hidden_states, attention_mask)
    return _gather_token(hidden_states, mask, last_token_index)


# -- exact token weights (what ``explain`` decomposes a pooled vector into) ----------------------
# Each gives (B, T) weights w with pooled[:, k] == sum_t w[:, t] * states[:, t, k] (or (B, T, D)
# weights, one per channel); padded positions get 0. ``module`` is unused here: the learned
# strategies' weight functions (next to their modules in this package) take their module.


def _real_and_count(mask: Tensor) -> tuple[Tensor, Tensor]:
    real = mask.float()
    return real, real.sum(dim=1, keepdim=True).clamp(min=1.0)


def mean_token_weights(hidden_states: Tensor, attention_mask: Tensor | None = None, module: object = None) -> Tensor:
    """(B, T): 1/n on each of the n real tokens."""
    real, count = _real_and_count(normalize_mask(hidden_states, attention_mask))
    return real / count


def mean_sqrt_len_token_weights(hidden_states: Tensor, attention_mask: Tensor | None = None,
                                module: object = None) -> Tensor:
    """(B, T): 1/sqrt(n) on each of the n real tokens."""
    real, count = _real_and_count(normalize_mask(hidden_states, attention_mask))
    return real / count.sqrt()


def weighted_mean_token_weights(hidden_states: Tensor, attention_mask: Tensor | None = None,
                                module: object = None) -> Tensor:
    """(B, T): k / sum(1..n) on the k-th real token."""
    mask = normalize_mask(hidden_states, attention_mask)
    position = mask.cumsum(dim=1).float() * mask.float()
    return position / position.sum(dim=1, keepdim=True).clamp(min=1.0)


def _one_token_weights(mask: Tensor, token_index: Callable[[Tensor], Tensor]) -> Tensor:
    has_tokens = mask.any(dim=1, keepdim=True).float()
    return torch.nn.functional.one_hot(token_index(mask), mask.shape[1]).float() * has_tokens


def first_token_weights(hidden_states: Tensor, attention_mask: Tensor | None = None, module: object = None) -> Tensor:
    """(B, T): 1 on the first real token."""
    return _one_token_weights(normalize_mask(hidden_states, attention_mask), first_token_index)


def last_token_weights(hidden_states: Tensor, attention_mask: Tensor | None = None, module: object = None) -> Tensor:
    """(B, T): 1 on the last real token."""
    return _one_token_weights(normalize_mask(hidden_states, attention_mask), last_token_index)


def max_token_weights(hidden_states: Tensor, attention_mask: Tensor | None = None, module: object = None) -> Tensor:
    """(B, T, D): 1 on the token that wins each channel's max."""
    mask = normalize_mask(hidden_states, attention_mask)
    batch, tokens, dim = hidden_states.shape
    winners = hidden_states.float().masked_fill(~mask.unsqueeze(-1), float("-inf")).argmax(dim=1)  # (B, D)
    weights = torch.zeros(batch, tokens, dim, device=hidden_states.device).scatter_(1, winners.unsqueeze(1), 1.0)
    return weights * mask.any(dim=1).float()[:, None, None]
