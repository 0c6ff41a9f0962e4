"""The learned poolers' own math: AttentionPooling, SqueezeExcitation and Pooler.

Layout properties shared by every strategy (garbage padding, left = right padding, dtypes)
live in test_pooling.py; here each module is checked against a hand computation that
uses the module's own Linear weights, on one mask holding every padding layout.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor

from seqpool import (
    LEARNED_STRATEGIES,
    POOLER_STRATEGIES,
    STRATEGIES,
    AttentionPooling,
    Pooler,
    SeqpoolError,
    SqueezeExcitation,
)

#: One row per layout: right padded, left padded, holes, no real token, no padding.
MASK = torch.tensor(
    [
        [1, 1, 1, 0, 0, 0],
        [0, 0, 1, 1, 1, 1],
        [1, 0, 1, 1, 0, 1],
        [0, 0, 0, 0, 0, 0],
        [1, 1, 1, 1, 1, 1],
    ],
    dtype=torch.bool,
)
BATCH, TOKENS = MASK.shape

PROPERTY = settings(max_examples=25, deadline=None)


def random_states(dim: int, seed: int) -> Tensor:
    """(BATCH, TOKENS, dim) random states with NaN in every padded position of MASK."""
    states = torch.randn(BATCH, TOKENS, dim, generator=torch.Generator().manual_seed(seed))
    return states.masked_fill(~MASK[..., None], float("nan"))


def real_tokens(states: Tensor, row: int) -> list[Tensor]:
    """The real token vectors of one row, in order, as float64."""
    return [states[row, position].double() for position in range(TOKENS) if MASK[row, position]]


def hand_linear(layer: torch.nn.Linear, vector: Tensor) -> Tensor:
    """``W @ x + b`` with the layer's own parameters, in float64."""
    out = layer.weight.detach().double() @ vector
    return out if layer.bias is None else out + layer.bias.detach().double()


def hand_mean(vectors: list[Tensor]) -> Tensor:
    total = torch.zeros_like(vectors[0])
    for vector in vectors:
        total = total + vector
    return total / len(vectors)


# ---------------------------------------------------------------- AttentionPooling

attention_shapes = st.fixed_dictionaries(
    {"dim": st.integers(1, 6), "heads": st.integers(1, 3), "hidden_dim": st.none() | st.integers(1, 5)}
)


def seeded_attention(shape: dict, seed: int) -> AttentionPooling:
    torch.manual_seed(seed)
    return AttentionPooling(**shape).eval()


@PROPERTY
@given(shape=attention_shapes, seed=st.integers(0, 2**16))
def test_attention_weights_sum_to_one_per_head_and_vanish_on_padding(shape, seed):
    module = seeded_attention(shape, seed)
    pooled, weights = module(random_states(shape["dim"], seed), MASK, return_weights=True)
    assert pooled.shape == (BATCH, shape["heads"] * shape["dim"]) == (BATCH, module.output_dim)
    assert weights.shape == (BATCH, shape["heads"], TOKENS)
    assert (weights >= 0).all()
    assert (weights.masked_select(~MASK[:, None, :]) == 0).all()
    expected_sums = MASK.any(dim=1).float()[:, None].expand(BATCH, shape["heads"])
    torch.testing.assert_close(weights.sum(dim=2), expected_sums)


def hand_scores(module: AttentionPooling, token: Tensor) -> Tensor:
    """(heads,) scores of one token: a linear query, or the tanh MLP, by hand."""
    if module.hidden_dim is None:
        return hand_linear(module.score, token)
    first, _, second = module.score
    return hand_linear(second, torch.tanh(hand_linear(first, token)))


@PROPERTY
@given(shape=attention_shapes, seed=st.integers(0, 2**16))
def test_attention_matches_a_hand_computed_softmax_over_real_tokens(shape, seed):
    module = seeded_attention(shape, seed)
    states = random_states(shape["dim"], seed)
    pooled = module(states, MASK).double()
    for row in range(BATCH):
        tokens = real_tokens(states, row)
        if not tokens:
            assert (pooled[row] == 0).all()
            continue
        scores = torch.stack([hand_scores(module, token) for token in tokens])  # (n, heads)
        for head in range(shape["heads"]):
            exps = [math.exp(score - scores[:, head].max()) for score in scores[:, head].tolist()]
            expected = sum(weight / sum(exps) * token for weight, token in zip(exps, tokens))
            got = pooled[row, head * shape["dim"] : (head + 1) * shape["dim"]]
            torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)


def test_attention_with_constant_scores_is_the_masked_mean_in_every_head():
    module = AttentionPooling(4, heads=3)
    torch.nn.init.zeros_(module.score.weight)
    states = random_states(4, 0)
    pooled = module(states, MASK).reshape(BATCH, 3, 4)
    for row in range(BATCH):
        tokens = real_tokens(states, row)
        expected = hand_mean(tokens).float() if tokens else torch.zeros(4)
        for head in range(3):
            torch.testing.assert_close(pooled[row, head], expected)


def test_attention_mlp_variant_has_the_requested_hidden_width():
    module = AttentionPooling(8, heads=2, hidden_dim=5)
    first, activation, second = module.score
    assert (first.in_features, first.out_features, second.out_features) == (8, 5, 2)
    assert isinstance(activation, torch.nn.Tanh)
    assert module(torch.randn(2, 3, 8)).shape == (2, 16)


@pytest.mark.parametrize("shape", [{"dim": 3}, {"dim": 3, "heads": 2, "hidden_dim": 4}])
def test_attention_gradcheck_in_float64(shape):
    module = AttentionPooling(**shape).double()
    states = torch.randn(BATCH, TOKENS, 3, dtype=torch.float64, requires_grad=True)
    assert module(states, MASK).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda x: module(x, MASK), (states,))
    pooler = Pooler("attention", dim=3, **{k: v for k, v in shape.items() if k != "dim"}).double()
    assert torch.autograd.gradcheck(lambda x: pooler(x, MASK), (states,))


def test_attention_parameters_learn_from_real_tokens_only():
    module = AttentionPooling(4, heads=2, hidden_dim=3)
    module(random_states(4, 1), MASK).sum().backward()
    for name, parameter in module.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dim": 0}, "dim >= 1"),
        ({"dim": 4, "heads": 0}, "heads >= 1"),
        ({"dim": 4, "hidden_dim": 0}, "hidden_dim >= 1"),
        ({"dim": 4, "dropout": 1.5}, "dropout"),
    ],
)
def test_attention_rejects_bad_arguments(kwargs, message):
    with pytest.raises(SeqpoolError, match=message):
        AttentionPooling(**kwargs)


# ---------------------------------------------------------------- SqueezeExcitation


@pytest.mark.parametrize(
    "kwargs, width",
    [
        ({}, 4),  # 64 / 16, the default reduction
        ({"reduction": 8}, 8),
        ({"rd_ratio": 0.25}, 16),
        ({"rd_ratio": 0.25, "reduction": 8}, 16),  # rd_ratio wins over reduction
        ({"rd_channels": 5, "rd_ratio": 0.25, "reduction": 8}, 5),  # rd_channels wins over both
        ({"reduction": 1000}, 1),  # never below one channel
    ],
)
def test_se_bottleneck_width_precedence(kwargs, width):
    module = SqueezeExcitation(64, **kwargs)
    assert module.rd_channels == width
    assert (module.fc1.in_features, module.fc1.out_features) == (64, width)
    assert (module.fc2.in_features, module.fc2.out_features) == (width, 64)


HAND_ACTIVATIONS = {
    "relu": lambda x: x.clamp(min=0),
    "gelu": lambda x: 0.5 * x * (1 + torch.erf(x / math.sqrt(2))),
    "silu": lambda x: x / (1 + torch.exp(-x)),
    "tanh": torch.tanh,
    "sigmoid": lambda x: 1 / (1 + torch.exp(-x)),
    "hardsigmoid": lambda x: (x / 6 + 0.5).clamp(0, 1),
}


def hand_gates(module: SqueezeExcitation, act: str, gate: str, tokens: list[Tensor]) -> Tensor:
    """Squeeze (mean of real tokens) then excite, written out with the module's weights."""
    hidden = HAND_ACTIVATIONS[act](hand_linear(module.fc1, hand_mean(tokens)))
    return HAND_ACTIVATIONS[gate](hand_linear(module.fc2, hidden))


@pytest.mark.parametrize(
    "act, gate, bias", [("relu", "sigmoid", True), ("gelu", "hardsigmoid", True), ("silu", "tanh", False)]
)
@PROPERTY
@given(dim=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_se_scales_real_tokens_by_gates_from_the_masked_mean(act, gate, bias, dim, seed):
    torch.manual_seed(seed)
    module = SqueezeExcitation(dim, rd_channels=3, act_layer=act, gate_layer=gate, bias=bias)
    states = random_states(dim, seed)
    scaled = module(states, MASK)
    gates = module.channel_weights(states, MASK)
    assert scaled.shape == states.shape and torch.isfinite(scaled).all()
    for row in range(BATCH):
        tokens = real_tokens(states, row)
        assert (scaled[row][~MASK[row]] == 0).all()  # padding is documented to come out as zero
        if not tokens:
            continue
        expected_gates = hand_gates(module, act, gate, tokens)
        torch.testing.assert_close(gates[row].double(), expected_gates, rtol=1e-5, atol=1e-6)
        expected = torch.stack([token * expected_gates for token in tokens])
        torch.testing.assert_close(scaled[row][MASK[row]].double(), expected, rtol=1e-5, atol=1e-6)


def test_se_without_bias_has_no_bias_parameters():
    module = SqueezeExcitation(8, bias=False)
    assert module.fc1.bias is None and module.fc2.bias is None


def test_se_mean_pooler_is_the_mean_of_the_excited_real_tokens():
    pooler = Pooler("se_mean", dim=5, rd_channels=2)
    states = random_states(5, 3)
    pooled = pooler(states, MASK)
    for row in range(BATCH):
        tokens = real_tokens(states, row)
        if tokens:
            expected = hand_mean(tokens) * hand_gates(pooler.module, "relu", "sigmoid", tokens)
        else:
            expected = torch.zeros(5, dtype=torch.float64)
        torch.testing.assert_close(pooled[row].double(), expected, rtol=1e-5, atol=1e-6)


def test_se_gradcheck_in_float64():
    states = torch.randn(BATCH, TOKENS, 4, dtype=torch.float64, requires_grad=True)
    module = SqueezeExcitation(4, rd_channels=2, act_layer="gelu").double()
    assert torch.autograd.gradcheck(lambda x: module(x, MASK), (states,))
    pooler = Pooler("se_mean", dim=4, rd_ratio=0.5).double()
    assert pooler(states, MASK).dtype == torch.float64
    assert torch.autograd.gradcheck(lambda x: pooler(x, MASK), (states,))


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"dim": 0}, "dim >= 1"),
        ({"dim": 8, "reduction": 0}, "reduction"),
        ({"dim": 8, "rd_ratio": -0.5}, "rd_ratio"),
        ({"dim": 8, "rd_channels": 0}, "rd_channels"),
        ({"dim": 8, "act_layer": "swish"}, "relu, gelu"),
        ({"dim": 8, "gate_layer": "softmax"}, "sigmoid"),
    ],
)
def test_se_rejects_bad_arguments(kwargs, message):
    with pytest.raises(SeqpoolError, match=message):
        SqueezeExcitation(**kwargs)


# ---------------------------------------------------------------- Pooler


@pytest.mark.parametrize("strategy", POOLER_STRATEGIES)
def test_every_strategy_pools_to_the_width_its_record_declares(strategy):
    """The registry's width function is what Pooler, Encoder.encode and the writers allocate."""
    from seqpool.registry import get_strategy

    spec = get_strategy(strategy)
    kwargs = {"heads": 3} if strategy == "attention" else {}
    pooler = Pooler(strategy, dim=12, **kwargs)
    hidden, mask = torch.randn(4, 7, 12), torch.tensor([[1] * 7, [1] * 3 + [0] * 4, [0] * 7, [0, 1, 1, 0, 1, 0, 0]])
    out = pooler(hidden, mask)
    assert out.shape == (4, spec.output_dim(12, **kwargs)) == (4, pooler.output_dim)
    assert bool(torch.isfinite(out).all())
    assert pooler.is_learned == (spec.kind == "learned") == (strategy in LEARNED_STRATEGIES)
    assert (strategy in STRATEGIES) != (strategy in LEARNED_STRATEGIES)


@pytest.mark.parametrize("strategy", LEARNED_STRATEGIES)
def test_learned_strategies_need_dim(strategy):
    with pytest.raises(SeqpoolError, match="dim="):
        Pooler(strategy)


@pytest.mark.parametrize(
    "strategy, kwargs, message",
    [
        ("mean", {"heads": 2}, "has no parameters"),
        ("attention", {"dim": 4, "head": 2}, "bad arguments"),
        ("se_mean", {"dim": 4, "reduction": 0}, "reduction"),
    ],
)
def test_pooler_rejects_bad_arguments(strategy, kwargs, message):
    with pytest.raises(SeqpoolError, match=message):
        Pooler(strategy, **kwargs)


@pytest.mark.parametrize("strategy", ["attention", "se_mean"])
def test_learned_poolers_reject_states_of_another_width(strategy):
    pooler = Pooler(strategy, dim=4)
    with pytest.raises(SeqpoolError, match="width 5.*dim=4"):
        pooler(torch.randn(2, 3, 5))


def test_return_weights_is_for_attention_only():
    with pytest.raises(SeqpoolError, match="only available for 'attention'"):
        Pooler("mean")(torch.randn(1, 2, 3), return_weights=True)
    pooler = Pooler("attention", dim=3, heads=2)
    pooled, weights = pooler(torch.randn(1, 2, 3), return_weights=True)
    assert pooled.shape == (1, 6) and weights.shape == (1, 2, 2)


@pytest.mark.parametrize(
    "strategy, kwargs, output_dim, learned",
    [
        ("mean", {}, None, False),
        ("max", {"dim": 7}, 7, False),
        ("attention", {"dim": 7, "heads": 3}, 21, True),
        ("se_mean", {"dim": 7}, 7, True),
    ],
)
def test_pooler_output_dim_matches_its_output(strategy, kwargs, output_dim, learned):
    pooler = Pooler(strategy, **kwargs)
    assert pooler.output_dim == output_dim and pooler.is_learned == learned
    assert pooler(torch.randn(2, 3, 7)).shape == (2, output_dim or 7)
