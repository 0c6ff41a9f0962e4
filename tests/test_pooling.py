"""Properties of masked pooling over random shapes and random padding layouts.

Hypothesis draws a batch size, a length, a width and, per row, a ``(left_pad, n_real,
right_pad)`` layout. Every pooler strategy -- the parameter-free functions and the learned
``attention`` / ``se_mean`` modules behind :class:`seqpool.Pooler` -- must read the layout
from the mask alone: padding values (even inf/NaN) never reach outputs or gradients, the
padding side does not matter, and an empty row pools to zeros. The parameter-free
functions are also checked against a loop-over-rows oracle written here.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from seqpool import (
    POOLER_STRATEGIES,
    STRATEGIES,
    Pooler,
    SeqpoolError,
    SqueezeExcitation,
    masked_max,
    masked_mean,
    pool,
    pool_many,
)

PROPERTY = settings(max_examples=25, deadline=None)

#: (strategy, constructor kwargs): every strategy, learned ones in a plain and a non-default variant.
POOLER_CASES = [(strategy, {}) for strategy in STRATEGIES] + [
    ("attention", {}),
    ("attention", {"heads": 2, "hidden_dim": 3}),
    ("se_mean", {}),
    ("se_mean", {"rd_ratio": 0.5, "act_layer": "gelu"}),
]
CASE_IDS = [strategy + "".join(f"-{key}={value}" for key, value in kwargs.items()) for strategy, kwargs in POOLER_CASES]
pooler_cases = pytest.mark.parametrize("case", POOLER_CASES, ids=CASE_IDS)


def make_pooler(case: tuple[str, dict], dim: int) -> Pooler:
    """A Pooler for ``case``; learned ones get fixed random weights (seeded, eval mode)."""
    strategy, kwargs = case
    torch.manual_seed(1234)
    if strategy in STRATEGIES:
        return Pooler(strategy).eval()
    return Pooler(strategy, dim=dim, **kwargs).eval()


@dataclass(frozen=True)
class RaggedBatch:
    """The real tokens of each row plus where that row's padding goes.

    ``pads[i] = (left, right)``; ``left + len(rows[i]) + right`` is the same for every row.
    """

    rows: tuple[Tensor, ...]
    pads: tuple[tuple[int, int], ...]
    dim: int

    @property
    def lengths(self) -> list[int]:
        return [len(row) for row in self.rows]

    def assemble(self, fill: float = 0.0, dtype: torch.dtype = torch.float32) -> tuple[Tensor, Tensor]:
        """(B, T, D) states with ``fill`` in every padded position, and the (B, T) bool mask."""
        (tokens,) = {left + len(row) + right for row, (left, right) in zip(self.rows, self.pads)}
        # full() in float32 then cast, so out-of-range garbage becomes inf instead of an error.
        hidden = torch.full((len(self.rows), tokens, self.dim), fill).to(dtype)
        mask = torch.zeros(len(self.rows), tokens, dtype=torch.bool)
        for index, (row, (left, _)) in enumerate(zip(self.rows, self.pads)):
            hidden[index, left : left + len(row)] = row.to(dtype)
            mask[index, left : left + len(row)] = True
        return hidden, mask

    def padded(self, before: int, after: int) -> RaggedBatch:
        """The same batch with ``before``/``after`` extra padding tokens on every row."""
        return replace(self, pads=tuple((left + before, right + after) for left, right in self.pads))

    def aligned(self, side: str) -> RaggedBatch:
        """The same rows, all padded on ``side`` ("left" or "right") to the longest row."""
        longest = max(self.lengths)
        pads = tuple((longest - n, 0) if side == "left" else (0, longest - n) for n in self.lengths)
        return replace(self, pads=pads)

    def real_positions(self, row: int) -> range:
        left = self.pads[row][0]
        return range(left, left + len(self.rows[row]))


@st.composite
def ragged_batches(draw, min_real: int = 0, max_batch: int = 4, max_tokens: int = 7, max_dim: int = 5) -> RaggedBatch:
    """Random batch size, length, dim and per-row (left_pad, n_real, right_pad) layouts."""
    batch = draw(st.integers(1, max_batch))
    tokens = draw(st.integers(max(1, min_real), max_tokens))
    dim = draw(st.integers(1, max_dim))
    lengths = draw(st.lists(st.integers(min_real, tokens), min_size=batch, max_size=batch))
    lefts = [draw(st.integers(0, tokens - n)) for n in lengths]
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    rows = tuple(torch.randn(n, dim, generator=generator) for n in lengths)
    return RaggedBatch(rows, tuple((left, tokens - n - left) for left, n in zip(lefts, lengths)), dim)


#: Any float32 value, including +-inf, NaN and +-3.4e38: what padded positions may hold.
garbage = st.floats(width=32)
extra_padding = st.integers(0, 3)


# ---------------------------------------------------------------- padding invariance


@pooler_cases
@PROPERTY
@given(batch=ragged_batches(), fill=garbage, before=extra_padding, after=extra_padding)
def test_garbage_padding_changes_no_output_and_no_gradient(case, batch, fill, before, after):
    pooler = make_pooler(case, batch.dim)
    clean_hidden, clean_mask = batch.assemble()
    dirty_hidden, dirty_mask = batch.padded(before, after).assemble(fill)
    clean_hidden.requires_grad_(True)
    dirty_hidden.requires_grad_(True)
    clean, dirty = pooler(clean_hidden, clean_mask), pooler(dirty_hidden, dirty_mask)

    assert torch.isfinite(dirty).all()
    torch.testing.assert_close(dirty, clean, rtol=1e-5, atol=1e-6)

    upstream = torch.randn(clean.shape, generator=torch.Generator().manual_seed(0))
    (clean_grad,) = torch.autograd.grad((clean * upstream).sum(), clean_hidden)
    (dirty_grad,) = torch.autograd.grad((dirty * upstream).sum(), dirty_hidden)
    assert torch.isfinite(dirty_grad).all()
    assert (dirty_grad[~dirty_mask] == 0).all()
    torch.testing.assert_close(dirty_grad[dirty_mask], clean_grad[clean_mask], rtol=1e-5, atol=1e-6)


@PROPERTY
@given(batch=ragged_batches(), fill=garbage, before=extra_padding, after=extra_padding)
def test_squeeze_excitation_keeps_real_tokens_and_zeroes_padding(batch, fill, before, after):
    torch.manual_seed(0)
    module = SqueezeExcitation(batch.dim, rd_channels=2)
    clean = module(*batch.assemble())
    dirty_hidden, dirty_mask = batch.padded(before, after).assemble(fill)
    dirty = module(dirty_hidden, dirty_mask)

    assert dirty.shape == dirty_hidden.shape
    torch.testing.assert_close(dirty[dirty_mask], clean[batch.assemble()[1]], rtol=1e-5, atol=1e-6)
    assert (dirty[~dirty_mask] == 0).all()  # documented: padded positions are set to zero


@pooler_cases
@PROPERTY
@given(batch=ragged_batches(min_real=0))
def test_left_right_and_no_padding_agree(case, batch):
    pooler = make_pooler(case, batch.dim)
    right = pooler(*batch.aligned("right").assemble(float("nan")))
    left = pooler(*batch.aligned("left").assemble(float("nan")))
    unpadded = torch.stack(
        [pooler(row[None], None)[0] if len(row) else torch.zeros_like(right[0]) for row in batch.rows]
    )
    torch.testing.assert_close(left, right, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(right, unpadded, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------- symmetries


ORDER_FREE_CASES = [("mean", {}), ("max", {}), ("mean_sqrt_len", {}), ("attention", {}), ("attention", {"heads": 2}),
                    ("se_mean", {})]


@pytest.mark.parametrize("case", ORDER_FREE_CASES, ids=str)
@PROPERTY
@given(batch=ragged_batches(), seed=st.integers(0, 2**16))
def test_order_free_strategies_ignore_token_order(case, batch, seed):
    pooler = make_pooler(case, batch.dim)
    generator = torch.Generator().manual_seed(seed)
    shuffled = replace(batch, rows=tuple(row[torch.randperm(len(row), generator=generator)] for row in batch.rows))
    torch.testing.assert_close(pooler(*shuffled.assemble()), pooler(*batch.assemble()), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "strategy, forward, reversed_",
    [
        ("cls", 1.0, 4.0),
        ("last", 4.0, 1.0),
        ("weighted_mean", (1 * 1 + 2 * 2 + 3 * 4) / 6, (1 * 4 + 2 * 2 + 3 * 1) / 6),
    ],
)
def test_order_aware_strategies_change_when_tokens_are_reversed(strategy, forward, reversed_):
    tokens = torch.tensor([[[1.0], [2.0], [4.0]]])
    mask = torch.tensor([[1, 1, 1]])
    assert pool(tokens, mask, strategy).item() == pytest.approx(forward)
    assert pool(tokens.flip(1), mask, strategy).item() == pytest.approx(reversed_)


@pytest.mark.parametrize("strategy", ["mean", "max", "cls", "last"])
@PROPERTY
@given(batch=ragged_batches(min_real=1), seed=st.integers(0, 2**16))
def test_adding_a_bias_commutes_with_pooling(strategy, batch, seed):
    hidden, mask = batch.assemble()
    bias = 10 * torch.randn(batch.dim, generator=torch.Generator().manual_seed(seed))
    shifted, expected = pool(hidden + bias, mask, strategy), pool(hidden, mask, strategy) + bias
    if strategy == "mean":
        torch.testing.assert_close(shifted, expected, rtol=1e-5, atol=1e-5)
    else:  # picking tokens and float rounding are both monotone: exact
        assert torch.equal(shifted, expected)


# ---------------------------------------------------------------- gradients


def input_gradient(pool_fn, batch: RaggedBatch, fill: float) -> tuple[Tensor, Tensor]:
    """The gradient reaching the states for a random upstream gradient, and that upstream."""
    hidden, mask = batch.assemble(fill)
    hidden.requires_grad_(True)
    upstream = torch.randn(len(batch.rows), batch.dim, generator=torch.Generator().manual_seed(0))
    (grad,) = torch.autograd.grad((pool_fn(hidden, mask) * upstream).sum(), hidden)
    return grad, upstream


@PROPERTY
@given(batch=ragged_batches())
def test_mean_gives_each_real_token_one_nth_of_the_gradient(batch):
    grad, upstream = input_gradient(masked_mean, batch, float("nan"))
    expected = torch.zeros_like(grad)
    for row, n in enumerate(batch.lengths):
        for position in batch.real_positions(row):
            expected[row, position] = upstream[row] / n
    torch.testing.assert_close(grad, expected)


@PROPERTY
@given(batch=ragged_batches())
def test_max_sends_the_gradient_to_the_arg_max_token_only(batch):
    grad, upstream = input_gradient(masked_max, batch, float("inf"))
    expected = torch.zeros_like(grad)
    for row, tokens in enumerate(batch.rows):
        for channel in range(batch.dim):
            if len(tokens):
                winner = batch.pads[row][0] + int(tokens[:, channel].argmax())
                expected[row, winner, channel] = upstream[row, channel]
    torch.testing.assert_close(grad, expected)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_gradcheck_in_float64(strategy):
    hidden = torch.randn(4, 5, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 0, 1, 0, 1], [0, 0, 0, 0, 0]])
    assert pool(hidden, mask, strategy).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda states: pool(states, mask, strategy), (hidden,))


# ---------------------------------------------------------------- independent references


@PROPERTY
@given(batch=ragged_batches(min_real=1))
def test_masked_mean_equals_a_box_filter_convolution_over_the_real_tokens(batch):
    pooled = masked_mean(*batch.assemble(float("nan")))
    for row, tokens in enumerate(batch.rows):
        n = len(tokens)
        kernel = torch.full((batch.dim, 1, n), 1.0 / n)  # one 1/n box filter per channel
        convolved = F.conv1d(tokens.T[None], kernel, groups=batch.dim)  # (1, D, 1): valid conv, T = n
        torch.testing.assert_close(pooled[row], convolved[0, :, 0], rtol=1e-5, atol=1e-6)


def _reference_vector(vectors: list[Tensor], strategy: str) -> Tensor:
    """One row, written as plain loops over its real token vectors (float64)."""
    n = len(vectors)
    if strategy == "cls":
        return vectors[0]
    if strategy == "last":
        return vectors[-1]
    if strategy == "max":
        best = vectors[0]
        for vector in vectors[1:]:
            best = torch.maximum(best, vector)
        return best
    total = torch.zeros_like(vectors[0])
    weight_sum = 0.0
    for position, vector in enumerate(vectors, start=1):
        weight = position if strategy == "weighted_mean" else 1.0
        total = total + weight * vector
        weight_sum += weight
    return total / {"mean": n, "mean_sqrt_len": math.sqrt(n), "weighted_mean": weight_sum}[strategy]


def reference_pool(hidden: Tensor, mask: Tensor, strategy: str) -> Tensor:
    """Loop over rows and tokens, reading only positions whose mask is nonzero; empty rows -> 0."""
    batch, tokens, dim = hidden.shape
    pooled = torch.zeros(batch, dim, dtype=torch.float64)
    for row in range(batch):
        vectors = [hidden[row, position].double() for position in range(tokens) if mask[row, position]]
        if vectors:
            pooled[row] = _reference_vector(vectors, strategy)
    return pooled


@st.composite
def holey_batches(draw) -> tuple[Tensor, Tensor]:
    """Random states (sometimes a non-contiguous view) and random masks with holes."""
    batch, tokens, dim = draw(st.integers(1, 4)), draw(st.integers(1, 8)), draw(st.integers(1, 5))
    bits = draw(st.lists(st.lists(st.booleans(), min_size=tokens, max_size=tokens), min_size=batch, max_size=batch))
    mask = torch.tensor(bits, dtype=torch.int64)
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**32 - 1)))
    hidden = torch.randn(batch, dim, tokens, generator=generator).transpose(1, 2)
    if draw(st.booleans()):
        hidden = hidden.contiguous()
    return hidden.masked_fill(mask[..., None] == 0, float("nan")), mask


@pytest.mark.parametrize("strategy", STRATEGIES)
@settings(max_examples=40, deadline=None)
@given(data=holey_batches())
def test_matches_a_loop_over_rows_reference(strategy, data):
    hidden, mask = data
    expected = reference_pool(hidden, mask, strategy)
    torch.testing.assert_close(pool(hidden, mask, strategy).double(), expected, rtol=1e-5, atol=1e-6)


def test_pool_many_matches_pool_for_every_strategy():
    hidden, mask = torch.randn(3, 4, 2), torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1], [1, 0, 0, 1]])
    pooled = pool_many(hidden, mask, STRATEGIES)
    assert list(pooled) == list(STRATEGIES)
    for strategy, vectors in pooled.items():
        assert torch.equal(vectors, pool(hidden, mask, strategy))


# ---------------------------------------------------------------- edge cases


@pooler_cases
@pytest.mark.parametrize("tokens", [0, 1, 5])
def test_all_padding_rows_pool_to_zeros_with_zero_gradients(case, tokens):
    pooler = make_pooler(case, 3)
    hidden = torch.full((2, tokens, 3), float("nan"), requires_grad=True)
    mask = torch.zeros(2, tokens, dtype=torch.bool)
    pooled = pooler(hidden, mask)
    assert pooled.shape == (2, pooler.output_dim or 3)
    assert (pooled == 0).all()
    (grad,) = torch.autograd.grad(pooled.sum(), hidden)
    assert grad.shape == hidden.shape and (grad == 0).all()  # zero, so finite: no NaN from the padding


@pooler_cases
@PROPERTY
@given(batch=ragged_batches(), fill=garbage)
def test_rows_are_pooled_independently_even_one_at_a_time(case, batch, fill):
    pooler = make_pooler(case, batch.dim)
    hidden, mask = batch.assemble(fill)
    together = pooler(hidden, mask)
    for row in range(len(batch.rows)):  # batches of size 1, padding kept
        torch.testing.assert_close(pooler(hidden[row : row + 1], mask[row : row + 1])[0], together[row])


@pooler_cases
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@PROPERTY
@given(batch=ragged_batches(), fill=garbage)
def test_half_precision_keeps_its_dtype_and_matches_float32(case, dtype, batch, fill):
    pooler = make_pooler(case, batch.dim)
    hidden, mask = batch.assemble(fill, dtype=dtype)
    pooled = pooler(hidden, mask)
    assert pooled.dtype == dtype
    reference = pooler(hidden.float(), mask)  # the same rounded inputs, pooled in float32
    torch.testing.assert_close(pooled, reference.to(dtype))


@pytest.mark.parametrize("value", [6.0e4, -6.0e4])
@pytest.mark.parametrize("case", [case for case in POOLER_CASES if case[0] != "mean_sqrt_len"], ids=str)
def test_fp16_near_its_maximum_does_not_overflow(case, value):
    # mean_sqrt_len is left out on purpose: 6e4 * sqrt(n) exceeds float16's range, so inf is its true value.
    tokens = 4096  # a float16 running sum would overflow after two tokens
    hidden = torch.full((2, tokens, 4), value, dtype=torch.float16)
    hidden[1] += torch.linspace(-500, 500, tokens, dtype=torch.float16)[:, None]
    mask = torch.ones(2, tokens, dtype=torch.bool)
    pooler = make_pooler(case, 4)
    pooled = pooler(hidden, mask)
    assert torch.isfinite(pooled).all()
    torch.testing.assert_close(pooled.float(), pooler(hidden.float(), mask), rtol=1e-3, atol=1e-2)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_a_single_token_is_its_own_summary(strategy):
    token = torch.randn(1, 1, 6)
    assert torch.equal(pool(token, None, strategy), token[:, 0])
    assert torch.equal(pool(token, torch.tensor([[True]]), strategy), token[:, 0])


def test_attention_over_a_single_token_returns_it():
    token = torch.randn(1, 1, 6)
    torch.testing.assert_close(make_pooler(("attention", {}), 6)(token), token[:, 0])


@pooler_cases
def test_missing_mask_means_every_token_is_real(case):
    pooler = make_pooler(case, 4)
    hidden = torch.randn(3, 5, 4)
    expected = pooler(hidden, torch.ones(3, 5, dtype=torch.bool))
    assert torch.equal(pooler(hidden), expected)
    assert torch.equal(pooler(hidden, None), expected)


@pooler_cases
def test_mask_dtype_does_not_matter_any_nonzero_is_real(case):
    pooler = make_pooler(case, 4)
    hidden, bits = torch.randn(2, 4, 4), [[1, 1, 0, 0], [0, 1, 0, 1]]
    expected = pooler(hidden, torch.tensor(bits, dtype=torch.bool))
    for mask in (torch.tensor(bits), torch.tensor(bits, dtype=torch.float32), 7 * torch.tensor(bits), bits):
        assert torch.equal(pooler(hidden, mask), expected)


BAD_INPUTS = [
    (torch.randn(2, 4), None, r"\(batch, tokens, dim\)"),
    (torch.randn(2, 3, 4, 4), None, r"\(batch, tokens, dim\)"),
    (torch.randn(2, 3, 4), torch.ones(2, 4), r"attention_mask must have shape \(batch, tokens\) = \(2, 3\)"),
    (torch.randn(2, 3, 4), torch.ones(3), r"attention_mask must have shape"),
    (torch.randn(2, 3, 4), torch.ones(2, 3, 1), r"attention_mask must have shape"),
    (torch.ones(2, 3, 4, dtype=torch.int64), None, r"floating point"),
    ([[[1.0, 2.0, 3.0, 4.0]]], None, r"torch.Tensor"),
]


@pooler_cases
@pytest.mark.parametrize("hidden, mask, message", BAD_INPUTS, ids=range(len(BAD_INPUTS)))
def test_bad_shapes_raise_a_clear_seqpool_error(case, hidden, mask, message):
    with pytest.raises(SeqpoolError, match=message):
        make_pooler(case, 4)(hidden, mask)


def test_unknown_strategy_lists_the_valid_names():
    hidden = torch.randn(1, 2, 3)
    for call in (lambda: pool(hidden, None, "avg"), lambda: pool_many(hidden, None, ["mean", "avg"])):
        with pytest.raises(SeqpoolError, match="'avg'") as raised:
            call()
        assert all(name in str(raised.value) for name in STRATEGIES)
    with pytest.raises(SeqpoolError, match="'avg'") as raised:
        Pooler("avg")
    assert all(name in str(raised.value) for name in POOLER_STRATEGIES)
