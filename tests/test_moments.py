"""Power means and statistics pooling (seqpool.pooling.moments): properties and loop references.

The random padding layouts come from test_pooling's hypothesis strategies; the references
here are written as plain Python loops over each row's real tokens, in float64.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_pooling import garbage, holey_batches, ragged_batches
from torch import Tensor

from seqpool.errors import SeqpoolError
from seqpool.pooling.moments import masked_mean_std, masked_power_mean, masked_softmax, safe_sqrt, weighted_mean_std
from seqpool.pooling import masked_max, masked_mean

PROPERTY = settings(max_examples=25, deadline=None)
POWERS = [1.0, 1.5, 2.0, 3.0, 7.0]


def power_mean_fn(p: float):
    return lambda hidden, mask=None: masked_power_mean(hidden, mask, p)


#: (id, function): every pooling function of the module.
FUNCTIONS = [(f"p{p:g}", power_mean_fn(p)) for p in POWERS] + [("mean_std", masked_mean_std)]
functions = pytest.mark.parametrize("fn", [fn for _, fn in FUNCTIONS], ids=[name for name, _ in FUNCTIONS])


# ---------------------------------------------------------------- loop references


def reference_power_mean(vectors: list[Tensor], p: float) -> Tensor:
    """The odd-extension power mean of one row, channel by channel, with Python floats."""
    out = []
    for channel in range(len(vectors[0])):
        values = [float(vector[channel]) for vector in vectors]
        m = sum(math.copysign(abs(v) ** p, v) for v in values) / len(values)
        out.append(math.copysign(abs(m) ** (1 / p), m))
    return torch.tensor(out, dtype=torch.float64)


def reference_mean_std(vectors: list[Tensor]) -> Tensor:
    n = len(vectors)
    mean = [sum(float(v[c]) for v in vectors) / n for c in range(len(vectors[0]))]
    std = [math.sqrt(sum((float(v[c]) - mean[c]) ** 2 for v in vectors) / n) for c in range(len(vectors[0]))]
    return torch.tensor(mean + std, dtype=torch.float64)


def reference(hidden: Tensor, mask: Tensor, name: str) -> Tensor:
    """Loop over rows, reading only real positions; empty rows give zeros."""
    batch, tokens, dim = hidden.shape
    width = 2 * dim if name == "mean_std" else dim
    out = torch.zeros(batch, width, dtype=torch.float64)
    for row in range(batch):
        vectors = [hidden[row, t].double() for t in range(tokens) if mask[row, t]]
        if vectors:
            out[row] = reference_mean_std(vectors) if name == "mean_std" else reference_power_mean(vectors, float(name[1:]))
    return out


@pytest.mark.parametrize("name, fn", FUNCTIONS, ids=[name for name, _ in FUNCTIONS])
@settings(max_examples=40, deadline=None)
@given(data=holey_batches())
def test_matches_a_loop_over_rows_reference(name, fn, data):
    hidden, mask = data
    # float64 in: the math against the loop. (In float32 a near-cancelling sum of odd powers is only
    # good to ~1e-4 relative before the root, as for any float32 power mean; dtypes are tested below.)
    torch.testing.assert_close(fn(hidden.double(), mask), reference(hidden, mask, name), rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- padding


@functions
@PROPERTY
@given(batch=ragged_batches(), fill=garbage, before=st.integers(0, 3), after=st.integers(0, 3))
def test_garbage_padding_changes_no_output_and_no_gradient(fn, batch, fill, before, after):
    # float64, so only padding (not float32 rounding of near-cancelling odd powers) could differ
    clean_hidden, clean_mask = batch.assemble(dtype=torch.float64)
    dirty_hidden, dirty_mask = batch.padded(before, after).assemble(fill, dtype=torch.float64)
    clean_hidden.requires_grad_(True)
    dirty_hidden.requires_grad_(True)
    clean, dirty = fn(clean_hidden, clean_mask), fn(dirty_hidden, dirty_mask)
    assert torch.isfinite(dirty).all()
    torch.testing.assert_close(dirty, clean, rtol=1e-9, atol=1e-12)

    upstream = torch.randn(clean.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    (clean_grad,) = torch.autograd.grad((clean * upstream).sum(), clean_hidden)
    (dirty_grad,) = torch.autograd.grad((dirty * upstream).sum(), dirty_hidden)
    assert torch.isfinite(dirty_grad).all()
    assert (dirty_grad[~dirty_mask] == 0).all()
    torch.testing.assert_close(dirty_grad[dirty_mask], clean_grad[clean_mask], rtol=1e-7, atol=1e-9)


@functions
@PROPERTY
@given(batch=ragged_batches())
def test_left_right_and_no_padding_agree(fn, batch):
    right = fn(*batch.aligned("right").assemble(float("nan"), dtype=torch.float64))
    left = fn(*batch.aligned("left").assemble(float("nan"), dtype=torch.float64))
    unpadded = torch.stack([fn(row[None].double())[0] if len(row) else torch.zeros_like(right[0]) for row in batch.rows])
    torch.testing.assert_close(left, right, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(right, unpadded, rtol=1e-9, atol=1e-12)


@functions
@pytest.mark.parametrize("tokens", [0, 1, 5])
def test_all_padding_rows_pool_to_zeros_with_zero_gradients(fn, tokens):
    hidden = torch.full((2, tokens, 3), float("nan"), requires_grad=True)
    pooled = fn(hidden, torch.zeros(2, tokens, dtype=torch.bool))
    assert pooled.shape[0] == 2 and (pooled == 0).all()
    (grad,) = torch.autograd.grad(pooled.sum(), hidden)
    assert (grad == 0).all()


@functions
@PROPERTY
@given(batch=ragged_batches(), seed=st.integers(0, 2**16))
def test_token_order_does_not_matter(fn, batch, seed):
    generator = torch.Generator().manual_seed(seed)
    shuffled = replace(batch, rows=tuple(row[torch.randperm(len(row), generator=generator)] for row in batch.rows))
    torch.testing.assert_close(fn(*shuffled.assemble(dtype=torch.float64)), fn(*batch.assemble(dtype=torch.float64)),
                               rtol=1e-9, atol=1e-12)


# ---------------------------------------------------------------- precision


@functions
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@PROPERTY
@given(batch=ragged_batches(), fill=garbage)
def test_half_precision_keeps_its_dtype_and_matches_float32(fn, dtype, batch, fill):
    hidden, mask = batch.assemble(fill, dtype=dtype)
    pooled = fn(hidden, mask)
    assert pooled.dtype == dtype
    torch.testing.assert_close(pooled, fn(hidden.float(), mask).to(dtype))


@pytest.mark.parametrize("name, fn", FUNCTIONS, ids=[name for name, _ in FUNCTIONS])
@pytest.mark.parametrize("dtype, value", [(torch.float16, 6.0e4), (torch.float16, -6.0e4), (torch.bfloat16, 3.0e34)])
def test_half_precision_near_its_maximum_does_not_overflow(name, fn, dtype, value):
    # bf16 at 3e34: the float32 sum of 4096 tokens still fits (as for masked_mean), but a float32
    # square or cube would not -- the per-channel scaling is what keeps std and powers finite.
    tokens = 4096  # a half-precision running sum (or any square / cube) would overflow at once
    hidden = torch.full((2, tokens, 4), value).to(dtype)
    hidden[1, ::2] = torch.tensor(-value / 2).to(dtype)  # a spread: std and signed powers both matter
    mask = torch.ones(2, tokens, dtype=torch.bool)
    hidden.requires_grad_(True)
    pooled = fn(hidden, mask)
    assert torch.isfinite(pooled).all()
    expected = reference(hidden.detach()[:, :3], mask[:, :3], name)  # 3 tokens show the same pattern
    expected[1] = reference(hidden.detach()[1:, :4], mask[1:, :4], name)[0]
    torch.testing.assert_close(pooled.double(), expected, rtol=1e-2, atol=0.0)
    (grad,) = torch.autograd.grad(pooled.float().sum(), hidden)
    assert torch.isfinite(grad.float()).all()


@pytest.mark.parametrize("p", [3.0, 25.0, 100.0])
def test_large_p_in_float32_neither_overflows_nor_underflows_to_nan(p):
    hidden = torch.tensor([[[1e3], [2e3], [-1e-3]]])
    pooled = masked_power_mean(hidden, None, p)
    # 2e3 ** 100 overflows even float64, so the reference divides by 2e3 first (M_p is homogeneous).
    expected = 2e3 * reference_power_mean([row.double() / 2e3 for row in hidden[0]], p)
    torch.testing.assert_close(pooled[0].double(), expected, rtol=1e-5, atol=0.0)


@pytest.mark.parametrize("p", [1.0, 1.5, 2.0, 3.0, 5.0])
def test_gradcheck_power_mean_in_float64(p):
    hidden = torch.randn(4, 5, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 0, 1, 0, 1], [0, 0, 0, 0, 0]])
    assert masked_power_mean(hidden, mask, p).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda states: masked_power_mean(states, mask, p), (hidden,))


def test_gradcheck_mean_std_in_float64():
    hidden = torch.randn(4, 5, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 0, 1, 1, 1], [1, 0, 1, 0, 1], [1, 1, 0, 0, 0]])
    assert torch.autograd.gradcheck(lambda states: masked_mean_std(states, mask), (hidden,))


# ---------------------------------------------------------------- math


@pytest.mark.parametrize("p", POWERS)
@PROPERTY
@given(data=holey_batches(), factor=st.floats(0.01, 100.0))
def test_power_mean_is_odd_homogeneous_and_between_min_and_max(p, data, factor):
    hidden, mask = data
    hidden = hidden.double()
    pooled = masked_power_mean(hidden, mask, p)
    torch.testing.assert_close(masked_power_mean(-hidden, mask, p), -pooled)
    torch.testing.assert_close(masked_power_mean(factor * hidden, mask, p), factor * pooled, rtol=1e-4, atol=1e-5)
    has_tokens = mask.bool().any(dim=1)
    upper = masked_max(hidden, mask)
    lower = -masked_max(-hidden, mask)
    assert (pooled[has_tokens] <= upper[has_tokens] + 1e-5).all()
    assert (pooled[has_tokens] >= lower[has_tokens] - 1e-5).all()


@PROPERTY
@given(data=holey_batches())
def test_power_mean_of_positive_states_grows_with_p_toward_the_max(data):
    hidden, mask = data
    hidden = hidden.double()
    positive = hidden.abs() + 0.1
    means = [masked_power_mean(positive, mask, p) for p in (1.0, 2.0, 4.0, 64.0)]
    for lower, higher in zip(means, means[1:]):
        assert (higher >= lower - 1e-5).all()
    has_tokens = mask.bool().any(dim=1)
    torch.testing.assert_close(means[-1][has_tokens], masked_max(positive, mask)[has_tokens], rtol=0.05, atol=0.0)


def test_p1_is_the_masked_mean_exactly_and_odd_p_takes_the_real_root():
    hidden = torch.randn(3, 6, 4)
    mask = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 1], [0, 0, 0, 1, 1, 0]])
    assert torch.equal(masked_power_mean(hidden, mask, 1), masked_mean(hidden, mask))
    signed = torch.tensor([[[1.0], [-2.0], [0.5]]])
    assert masked_power_mean(signed, None, 3).item() == pytest.approx(-((8 - 1 - 0.125) / 3) ** (1 / 3), rel=1e-6)


@pytest.mark.parametrize("fn", [power_mean_fn(3.0), power_mean_fn(2.0)], ids=["p3", "p2"])
def test_a_single_token_is_its_own_power_mean(fn):
    token = torch.randn(2, 1, 5)
    torch.testing.assert_close(fn(token), token[:, 0])


def test_single_token_and_identical_tokens_have_std_zero_with_finite_gradients():
    hidden = torch.tensor([[[1.5, -2.0], [9.0, 9.0]], [[3.0, 3.0], [3.0, 3.0]]], requires_grad=True)
    mask = torch.tensor([[1, 0], [1, 1]])
    pooled = masked_mean_std(hidden, mask)
    assert torch.equal(pooled[:, 2:], torch.zeros(2, 2))
    assert torch.equal(pooled[:, :2], torch.tensor([[1.5, -2.0], [3.0, 3.0]]))
    (grad,) = torch.autograd.grad(pooled.sum(), hidden)
    assert torch.isfinite(grad).all()


@PROPERTY
@given(data=holey_batches())
def test_mean_std_is_the_masked_mean_bitwise_and_torch_std(data):
    hidden, mask = data
    pooled = masked_mean_std(hidden, mask)
    dim = hidden.shape[-1]
    assert pooled.shape == (hidden.shape[0], 2 * dim)
    assert torch.equal(pooled[:, :dim], masked_mean(hidden, mask))
    for row in range(hidden.shape[0]):
        real = hidden[row][mask[row].bool()]
        if len(real):
            torch.testing.assert_close(pooled[row, dim:], real.std(dim=0, unbiased=False), rtol=1e-4, atol=1e-5)


def test_safe_sqrt_is_exact_zero_with_zero_gradient_at_zero():
    value = torch.tensor([0.0, 4.0], requires_grad=True)
    root = safe_sqrt(value)
    assert root.tolist() == [0.0, 2.0]
    (grad,) = torch.autograd.grad(root.sum(), value)
    assert grad.tolist() == [0.0, 0.25]


def test_weighted_mean_std_with_uniform_softmax_weights_is_statistics_pooling():
    hidden = torch.randn(3, 5, 4, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 0, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    weights = masked_softmax(torch.zeros(3, 5, 1, dtype=torch.float64), mask)
    assert torch.equal(weights.sum(dim=1).flatten(), torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64))
    mean, std = weighted_mean_std(hidden.masked_fill(~mask[..., None], float("nan")), mask, weights)
    torch.testing.assert_close(torch.cat([mean, std], dim=-1), masked_mean_std(hidden, mask))


@pytest.mark.parametrize("p", [0.5, 0, -1, float("inf"), float("nan"), True, "3"])
def test_power_must_be_a_finite_number_at_least_one(p):
    with pytest.raises(SeqpoolError, match="p must be a finite number >= 1"):
        masked_power_mean(torch.randn(1, 2, 3), None, p)
