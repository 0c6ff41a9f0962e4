"""Pooling *along* the token axis: windowed, anti-aliased and segment pooling.

Global pooling collapses a sequence to one vector; these functions shorten it instead
(hierarchical summaries, token downsampling) or group it (subwords -> words, tokens ->
sentences, nodes -> clusters). All are pure, masked and differentiable.

Window alignment ("compact" semantics). Windowed functions first move each row's real
tokens, in order, to the front, and place windows on that compacted sequence: window
``j`` starts at the ``j * stride``-th *real* token. So the result depends only on the
sequence of real tokens -- left, right, no or even non-contiguous padding give identical
outputs, and appending padding never changes them. Outputs come back right-padded: the
valid windows of a row are a prefix, marked by the returned ``new_mask``, and every other
output position holds zeros.

Conventions shared with :mod:`seqpool.pooling`: float32 accumulation (float64 stays
float64) and the input dtype on return; padding values are never read; a window with no
real token is masked out and holds zeros, never NaN, with zero gradient.

Anti-aliasing follows the classic signal-processing recipe (low-pass, then subsample)
that Zhang (2019, "Making Convolutional Networks Shift-Invariant Again") applied to CNNs;
it is written here from the math for masked 1-D sequences.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from seqpool.errors import SeqpoolError
from seqpool.pooling import fill_padding, normalize_mask

#: A local pooling function: (hidden_states, attention_mask) -> (pooled, new_mask).
LocalPoolFn = Callable[[Tensor, Tensor], "tuple[Tensor, Tensor] | Tensor"]

#: How :func:`blur_pool_tokens` extends a text beyond its first and last real token.
PAD_MODES: tuple[str, ...] = ("reflect", "replicate", "zeros")
#: Reductions accepted by :func:`segment_pool`.
SEGMENT_REDUCTIONS: tuple[str, ...] = ("mean", "sum", "max")
#: Largest binomial blur filter (Zhang 2019 uses sizes 1-7).
MAX_FILTER_SIZE = 7

_TINY = 1e-12


# -- helpers --------------------------------------------------------------------------


def _accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """float32 for half types, float64 kept (gradcheck), never lower than float32."""
    return torch.promote_types(dtype, torch.float32)


def _int_arg(value: Any, name: str, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise SeqpoolError(f"{name} must be an integer, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f"at least {minimum}"
        raise SeqpoolError(f"{name} must be {bound}, got {value}")
    return int(value)


def _choice(value: str, valid: Sequence[str], name: str) -> str:
    if value not in valid:
        raise SeqpoolError(f"unknown {name} {value!r}; choose one of: {', '.join(valid)}")
    return value


def _prefix_mask(lengths: Tensor, size: int) -> Tensor:
    """(B, size) bool: True at positions below each row's length."""
    return torch.arange(size, device=lengths.device) < lengths.unsqueeze(1)


def compact_tokens(hidden_states: Tensor, attention_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Each row's real tokens moved, in order, to the front: ``(compacted (B,T,D), lengths (B,))``.

    The basis of the "compact" window alignment: after this, every row is right-padded
    (its real tokens are positions ``0 .. length-1``) and padded positions hold zeros.
    """
    mask = normalize_mask(hidden_states, attention_mask)
    order = torch.argsort((~mask).to(torch.int32), dim=1, stable=True)
    gathered = hidden_states.gather(1, order.unsqueeze(-1).expand_as(hidden_states))
    lengths = mask.sum(dim=1)
    return fill_padding(gathered, _prefix_mask(lengths, mask.shape[1])), lengths


def _window_count(lengths: Tensor, kernel_size: int, stride: int, padding: int, ceil_mode: bool) -> Tensor:
    """Number of windows ``torch.nn.functional.avg_pool1d`` gives a sequence of each length."""
    span = lengths + 2 * padding - kernel_size + (stride - 1 if ceil_mode else 0)
    count = torch.div(span, stride, rounding_mode="floor") + 1
    if ceil_mode:  # PyTorch drops a last window that would start in the right padding
        count = count - ((count - 1) * stride >= lengths + padding).long()
    return count.clamp(min=0)


def _check_window(kernel_size: int, stride: int | None, padding: int) -> tuple[int, int, int]:
    kernel_size = _int_arg(kernel_size, "kernel_size", 1)
    stride = kernel_size if stride is None else _int_arg(stride, "stride", 1)
    padding = _int_arg(padding, "padding", 0, kernel_size // 2)
    return kernel_size, stride, padding


def _windowed(
    hidden_states: Tensor, attention_mask: Tensor | None, kernel_size: int, stride: int | None,
    padding: int, ceil_mode: bool, reduce: str,
) -> tuple[Tensor, Tensor]:
    """Masked windowed mean or max over compacted rows (see the module docstring)."""
    kernel_size, stride, padding = _check_window(kernel_size, stride, padding)
    compact, lengths = compact_tokens(hidden_states, attention_mask)
    batch, tokens, dim = compact.shape
    out_tokens = int(_window_count(torch.tensor([tokens]), kernel_size, stride, padding, ceil_mode)) if tokens else 0
    if out_tokens == 0:
        return hidden_states.new_zeros(batch, 0, dim), torch.zeros(batch, 0, dtype=torch.bool, device=compact.device)
    acc = _accumulation_dtype(hidden_states.dtype)
    real = _prefix_mask(lengths, tokens)
    window = dict(kernel_size=kernel_size, stride=stride, padding=padding, ceil_mode=ceil_mode)
    # The mean of the mask over each window: > 0 iff the window holds a real token.
    mask_mean = F.avg_pool1d(real.to(acc).unsqueeze(1), count_include_pad=True, **window).squeeze(1)
    if reduce == "mean":
        value_mean = F.avg_pool1d(compact.to(acc).transpose(1, 2), count_include_pad=True, **window)
        pooled = value_mean / mask_mean.clamp(min=_TINY).unsqueeze(1)  # = sum / count of real tokens
    else:
        filled = fill_padding(compact.to(acc), real, float("-inf")).transpose(1, 2)
        pooled = F.max_pool1d(filled, **window)
    counts = _window_count(lengths, kernel_size, stride, padding, ceil_mode)
    new_mask = _prefix_mask(counts, out_tokens) & (mask_mean > 0)
    return fill_padding(pooled.transpose(1, 2), new_mask).to(hidden_states.dtype), new_mask


# -- windowed pooling -----------------------------------------------------------------


def avg_pool_tokens(
    hidden_states: Tensor, attention_mask: Tensor | None = None, kernel_size: int = 2,
    stride: int | None = None, padding: int = 0, ceil_mode: bool = False,
) -> tuple[Tensor, Tensor]:
    """Masked windowed mean along the tokens: ``(pooled (B, T', D), new_mask (B, T'))``.

    Each window averages only its real tokens. Windows are anchored at each row's first
    real token (compact semantics, see the module docstring), so row ``b`` gets exactly
    the windows ``avg_pool1d`` would give its ``L_b`` real tokens alone; ``new_mask``
    marks them. With ``padding > 0`` the implicit zero padding is not counted in the
    mean (``count_include_pad=False``). ``stride`` defaults to ``kernel_size``.

    On unpadded input this *is* ``torch.nn.functional.avg_pool1d`` over the token axis.
    """
    return _windowed(hidden_states, attention_mask, kernel_size, stride, padding, ceil_mode, "mean")


def max_pool_tokens(
    hidden_states: Tensor, attention_mask: Tensor | None = None, kernel_size: int = 2,
    stride: int | None = None, padding: int = 0, ceil_mode: bool = False,
) -> tuple[Tensor, Tensor]:
    """Masked windowed max along the tokens; padding never wins (same windows as :func:`avg_pool_tokens`).

    On unpadded input this *is* ``torch.nn.functional.max_pool1d`` over the token axis.
    """
    return _windowed(hidden_states, attention_mask, kernel_size, stride, padding, ceil_mode, "max")


# -- anti-aliased pooling -------------------------------------------------------------


def binomial_filter(size: int) -> Tensor:
    """The normalised binomial low-pass filter ``C(size-1, k) / 2**(size-1)`` (float64).

    Size 1 is the identity, 2 the box [1, 1]/2, 3 the triangle [1, 2, 1]/4, ...: a discrete
    Gaussian whose width grows with size; its coefficients are exact in binary and sum to 1.
    """
    size = _int_arg(size, "filter_size", 1, MAX_FILTER_SIZE)
    coefficients = torch.tensor([math.comb(size - 1, k) for k in range(size)], dtype=torch.float64)
    return coefficients / 2 ** (size - 1)


def _extension(lengths: Tensor, tokens: int, left: int, right: int, pad_mode: str) -> tuple[Tensor, Tensor]:
    """For positions ``-left .. tokens-1+right`` of each compacted row: the real token each
    reads, and whether it reads one at all (``zeros`` mode leaves nothing beyond the text)."""
    positions = torch.arange(-left, tokens + right, device=lengths.device).unsqueeze(0)
    length = lengths.unsqueeze(1)
    last = (length - 1).clamp(min=0)
    if pad_mode == "reflect":  # mirror about the first and last real token, repeatedly if needed
        period = (2 * last).clamp(min=1)
        folded = positions.remainder(period)
        index = torch.where(folded > last, period - folded, folded)
        exists = (length > 0).expand_as(index)
    elif pad_mode == "replicate":
        index = torch.minimum(positions.clamp(min=0), last)
        exists = (length > 0).expand_as(index)
    else:
        exists = (positions >= 0) & (positions < length)
        index = torch.minimum(positions.clamp(min=0), last)
    return index, exists


def _blur_subsample(
    compact: Tensor, lengths: Tensor, stride: int, filter_size: int, pad_mode: str, out_dtype: torch.dtype,
) -> tuple[Tensor, Tensor]:
    """Normalised binomial blur of compacted rows, evaluated every ``stride`` tokens.

    Normalised convolution: blur the (extended) values and their existence mask, divide.
    Taps outside the text are read from real tokens (reflect/replicate) or are absent
    (zeros), so padding never leaks in and edge tokens are not shrunk toward zero.
    """
    batch, tokens, dim = compact.shape
    out_tokens = -(-tokens // stride)
    new_mask = _prefix_mask(-(-lengths // stride), out_tokens)
    if tokens == 0:
        return compact.new_zeros(batch, 0, dim, dtype=out_dtype), new_mask
    acc = _accumulation_dtype(compact.dtype)
    left = (filter_size - 1) // 2
    index, exists = _extension(lengths, tokens, left, filter_size - 1 - left, pad_mode)
    extended = compact.gather(1, index.unsqueeze(-1).expand(-1, -1, dim)).to(acc)
    extended = fill_padding(extended, exists).transpose(1, 2)  # (B, D, T + filter_size - 1)
    kernel = binomial_filter(filter_size).to(device=compact.device, dtype=acc).view(1, 1, -1)
    blurred = F.conv1d(extended, kernel.expand(dim, 1, -1), stride=stride, groups=dim)
    weight = F.conv1d(exists.to(acc).unsqueeze(1), kernel, stride=stride)
    normalised = (blurred / weight.clamp(min=_TINY)).transpose(1, 2)
    return fill_padding(normalised, new_mask).to(out_dtype), new_mask


def default_filter_size(stride: int) -> int:
    """``2 * stride - 1`` capped at 7: 3 for stride 2, 7 for stride 4.

    A filter narrower than the stride leaves content above the new Nyquist rate (a size-3
    blur at stride 4 aliases more than a plain 4-token average), so the width follows it.
    """
    return min(2 * _int_arg(stride, "stride", 1) - 1, MAX_FILTER_SIZE)


def _check_blur(stride: int, filter_size: int | None, pad_mode: str) -> tuple[int, int, str]:
    stride = _int_arg(stride, "stride", 1)
    filter_size = default_filter_size(stride) if filter_size is None else filter_size
    return (stride, _int_arg(filter_size, "filter_size", 1, MAX_FILTER_SIZE),
            _choice(pad_mode, PAD_MODES, "pad_mode"))


def blur_pool_tokens(
    hidden_states: Tensor, attention_mask: Tensor | None = None, stride: int = 2, filter_size: int | None = None,
    pad_mode: str = "reflect",
) -> tuple[Tensor, Tensor]:
    """Anti-aliased downsampling: binomial low-pass, then keep every ``stride``-th token.

    Naive strided pooling folds content above the new Nyquist rate back into the output
    (aliasing), so a one-token shift of the text can change the result a lot; blurring
    first removes that content. Output ``j`` is centred on real token ``j * stride``;
    ``T' = ceil(T / stride)`` and row ``b`` has ``ceil(L_b / stride)`` valid outputs.

    ``pad_mode`` says what lies beyond each text's first and last real token (wherever
    the tensor's padding is): ``reflect`` mirrors the text, ``replicate`` repeats its end
    tokens, ``zeros`` leaves nothing there and renormalises the filter over the real taps
    (normalised convolution). ``filter_size`` (1-7; 1 is plain subsampling) defaults to
    :func:`default_filter_size` -- 3 for stride 2, 7 for stride 4.
    """
    stride, filter_size, pad_mode = _check_blur(stride, filter_size, pad_mode)
    compact, lengths = compact_tokens(hidden_states, attention_mask)
    return _blur_subsample(compact, lengths, stride, filter_size, pad_mode, hidden_states.dtype)


def _dense_max(compact: Tensor, lengths: Tensor, kernel_size: int) -> Tensor:
    """Stride-1 max over windows ``[i - (k-1)//2, i + k//2]`` of real tokens, same length."""
    if compact.shape[1] == 0:
        return compact
    real = _prefix_mask(lengths, compact.shape[1])
    filled = fill_padding(compact.to(_accumulation_dtype(compact.dtype)), real, float("-inf")).transpose(1, 2)
    left = (kernel_size - 1) // 2
    padded = F.pad(filled, (left, kernel_size - 1 - left), value=float("-inf"))
    return fill_padding(F.max_pool1d(padded, kernel_size, stride=1).transpose(1, 2), real)


def max_blur_pool_tokens(
    hidden_states: Tensor, attention_mask: Tensor | None = None, stride: int = 2, kernel_size: int | None = None,
    filter_size: int | None = None, pad_mode: str = "reflect",
) -> tuple[Tensor, Tensor]:
    """Anti-aliased max pooling: dense max (stride 1), then :func:`blur_pool_tokens`.

    The drop-in replacement for ``max_pool_tokens(kernel_size, stride)`` (``kernel_size``
    defaults to ``stride``): the max keeps its selectivity, the subsampling no longer
    aliases (Zhang 2019's MaxBlurPool). Window ``i`` of the dense max spans real tokens
    ``i - (k-1)//2 .. i + k//2``. Same output layout as :func:`blur_pool_tokens`.
    """
    stride, filter_size, pad_mode = _check_blur(stride, filter_size, pad_mode)
    kernel_size = stride if kernel_size is None else _int_arg(kernel_size, "kernel_size", 1)
    compact, lengths = compact_tokens(hidden_states, attention_mask)
    dense = _dense_max(compact, lengths, kernel_size)
    return _blur_subsample(dense, lengths, stride, filter_size, pad_mode, hidden_states.dtype)


# -- measuring aliasing ----------------------------------------------------------------


@dataclass(frozen=True)
class ShiftConsistency:
    """How much a downsampled sequence changes when its text is shifted (1 / 0 = not at all)."""

    cosine: float  #: mean cosine similarity of re-aligned pooled tokens
    relative_l2: float  #: ||shifted - original|| / ||original|| over all compared tokens
    agreement: float | None  #: fraction of unchanged probe predictions (None without a probe)
    compared: int  #: number of (row, token, shift) comparisons behind the figures


def _as_pooled(result: tuple[Tensor, Tensor] | Tensor) -> tuple[Tensor, Tensor]:
    if isinstance(result, Tensor):
        return result, torch.ones(result.shape[:2], dtype=torch.bool, device=result.device)
    pooled, new_mask = result
    return pooled, new_mask.bool()


def _realigned(pooled: Tensor, new_mask: Tensor, positions: Tensor, stride: int) -> tuple[Tensor, Tensor]:
    """Nearest-hold upsampling read at ``positions``: output ``p // stride`` and its validity."""
    if pooled.shape[1] == 0:
        return pooled.new_zeros(*positions.shape, pooled.shape[2]), torch.zeros_like(positions, dtype=torch.bool)
    slot = torch.div(positions, stride, rounding_mode="floor")
    inside = slot < pooled.shape[1]
    slot = slot.clamp(max=pooled.shape[1] - 1)
    values = pooled.gather(1, slot.unsqueeze(-1).expand(-1, -1, pooled.shape[2]))
    return values, inside & new_mask.gather(1, slot)


def shift_consistency(
    pool_fn: LocalPoolFn, hidden_states: Tensor, attention_mask: Tensor | None = None, *, stride: int,
    shifts: Sequence[int] | None = None, probe: Callable[[Tensor], Tensor] | None = None,
) -> ShiftConsistency:
    """Aliasing made measurable: does downsampling change when the text shifts by s tokens?

    For each shift ``s`` the real tokens get ``s`` zero tokens prepended (marked real, so
    they move the window grid), both versions go through ``pool_fn`` (``(states, mask) ->
    (pooled, new_mask)`` or just ``pooled``; output ``j`` must summarise input tokens near
    ``j * stride``), and each is upsampled back to token resolution by holding every output
    for ``stride`` tokens. Original token ``p`` then compares ``original[p // stride]``
    with ``shifted[(p + s) // stride]``, over tokens both mark valid. A shift-equivariant
    downsampler scores cosine 1 / relative L2 0; aliasing lowers / raises them.

    ``shifts`` defaults to ``1 .. stride-1`` (multiples of the stride only test the text's
    edges). With a ``probe`` (e.g. an ``nn.Linear`` to class logits), ``agreement`` is the
    fraction of compared tokens whose argmax prediction is unchanged (Zhang 2019's
    consistency). Rows are compacted first, so the padding layout does not matter.
    Runs without gradients.
    """
    stride = _int_arg(stride, "stride", 1)
    shifts = list(range(1, stride)) if shifts is None else [_int_arg(s, "shift", 0) for s in shifts]
    if not shifts:
        raise SeqpoolError("shifts is empty; pass at least one shift, or a stride of 2 or more")
    with torch.no_grad():
        compact, lengths = compact_tokens(hidden_states, attention_mask)
        batch, tokens, dim = compact.shape
        real = _prefix_mask(lengths, tokens)
        original, original_mask = _as_pooled(pool_fn(compact, real))
        positions = torch.arange(tokens, device=compact.device).expand(batch, tokens)
        original_held, original_valid = _realigned(original, original_mask, positions, stride)
        cosines, squared_diff, squared_norm, agree, compared = 0.0, 0.0, 0.0, 0, 0
        for shift in shifts:
            lead = compact.new_zeros(batch, shift, dim)
            shifted_states = torch.cat([lead, compact], dim=1)
            shifted_mask = torch.cat([torch.ones(batch, shift, dtype=torch.bool, device=real.device), real], dim=1)
            shifted, shifted_new_mask = _as_pooled(pool_fn(shifted_states, shifted_mask))
            shifted_held, shifted_valid = _realigned(shifted, shifted_new_mask, positions + shift, stride)
            valid = real & original_valid & shifted_valid
            a, b = original_held[valid], shifted_held[valid]
            if probe is not None and len(a):
                agree += int((probe(a).argmax(-1) == probe(b).argmax(-1)).sum())
            a, b = a.double(), b.double()
            cosines += float(F.cosine_similarity(a, b, dim=-1, eps=_TINY).sum())
            squared_diff += float((a - b).square().sum())
            squared_norm += float(a.square().sum())
            compared += len(a)
    if compared == 0:
        raise SeqpoolError("no token could be compared: the texts are empty or shorter than one pooled window")
    relative = math.sqrt(squared_diff / squared_norm) if squared_norm > 0 else (0.0 if squared_diff == 0 else math.inf)
    return ShiftConsistency(cosine=cosines / compared, relative_l2=relative,
                            agreement=agree / compared if probe is not None else None, compared=compared)


# -- segment pooling ------------------------------------------------------------------


def _segment_ids(segment_ids: Any, shape: tuple[int, int], device: torch.device) -> Tensor:
    ids = torch.as_tensor(segment_ids, device=device)
    if tuple(ids.shape) != shape:
        raise SeqpoolError(f"segment_ids must have shape (batch, tokens) = {shape}, got {tuple(ids.shape)}")
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise SeqpoolError(f"segment_ids must be integers (-1 = ignore), got {ids.dtype}")
    return ids.long()


def segment_pool(
    hidden_states: Tensor, segment_ids: Tensor, reduce: str = "mean", attention_mask: Tensor | None = None,
    num_segments: int | None = None,
) -> tuple[Tensor, Tensor]:
    """Pool tokens that share a segment id: ``(pooled (B, S, D), non_empty (B, S))``.

    ``segment_ids`` (B, T) holds each token's segment (ragged sizes, any order; ``-1`` =
    ignore, as are padded tokens): subwords -> words (ids from a fast tokenizer's
    ``word_ids()``, see :func:`word_segment_ids`), tokens -> sentences, nodes -> clusters.
    ``S`` is ``num_segments`` or the largest id + 1; empty segments give zeros.

    ``reduce="sum"`` preserves the total of the features, ``"mean"`` their (size-weighted)
    mean and any constant signal -- the two ways to coarsen a graph -- and ``"max"`` keeps
    the strongest activation per channel.
    """
    mask = normalize_mask(hidden_states, attention_mask)
    reduce = _choice(reduce, SEGMENT_REDUCTIONS, "reduce")
    batch, tokens, dim = hidden_states.shape
    ids = _segment_ids(segment_ids, (batch, tokens), hidden_states.device)
    keep = mask & (ids >= 0)
    if bool((mask & (ids < -1)).any()):
        raise SeqpoolError("segment_ids must be >= 0, or -1 for tokens to ignore")
    largest = int(ids[keep].max()) + 1 if bool(keep.any()) else 0
    if num_segments is None:
        num_segments = largest
    elif _int_arg(num_segments, "num_segments", 0) < largest:
        raise SeqpoolError(f"segment id {largest - 1} does not fit num_segments={num_segments}; "
                           f"pass at least {largest} or leave it out")
    acc = _accumulation_dtype(hidden_states.dtype)
    rows = torch.arange(batch, device=ids.device).unsqueeze(1).expand(batch, tokens)
    flat = (rows * num_segments + ids)[keep]  # (N,) one slot per (row, segment)
    values = hidden_states[keep].to(acc)  # only real, non-ignored tokens are read
    slots = batch * num_segments
    counts = torch.zeros(slots, dtype=acc, device=ids.device).index_add(0, flat, values.new_ones(len(flat)))
    zeros = values.new_zeros(slots, dim)
    if reduce == "max":
        pooled = zeros.scatter_reduce(0, flat.unsqueeze(1).expand(-1, dim), values, "amax", include_self=False)
    else:
        pooled = zeros.index_add(0, flat, values)
        if reduce == "mean":
            pooled = pooled / counts.clamp(min=1).unsqueeze(1)
    return pooled.view(batch, num_segments, dim).to(hidden_states.dtype), (counts > 0).view(batch, num_segments)


def word_segment_ids(word_ids: Sequence[Sequence[int | None]], tokens: int | None = None) -> Tensor:
    """(B, T) segment ids from per-row ``word_ids()`` lists (``None`` -> -1), right-padded with -1."""
    tokens = max((len(row) for row in word_ids), default=0) if tokens is None else tokens
    ids = torch.full((len(word_ids), tokens), -1, dtype=torch.long)
    for row, words in enumerate(word_ids):
        if len(words) > tokens:
            raise SeqpoolError(f"row {row} has {len(words)} word ids, more than tokens={tokens}")
        ids[row, :len(words)] = torch.tensor([-1 if w is None else int(w) for w in words], dtype=torch.long)
    return ids
