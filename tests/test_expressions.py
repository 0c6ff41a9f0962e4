"""Strategy expressions by name: concatenations (a+b), hidden layers (name@layer, name@i~j), power
means (pP) and the issue-11 operators as registry records (kinds, widths, explain weights)."""

from __future__ import annotations

import pytest
import torch

from seqpool.errors import SeqpoolError
from seqpool.explain import pooling_weights
from seqpool.expressions import Term, parse_strategy
from seqpool.pooling.pooler import Pooler
from seqpool.pooling.moments import masked_mean_std, masked_power_mean
from seqpool.pooling import STRATEGIES, first_token, masked_max, masked_mean, pool, pool_many
from seqpool.registry import get_strategy, register_strategy, strategy_names, unregister_strategy

HIDDEN = torch.randn(3, 6, 5, generator=torch.Generator().manual_seed(0))
MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0]])


@pytest.mark.parametrize("expression, terms", [
    ("mean", (Term("mean"),)),
    ("mean+max", (Term("mean"), Term("max"))),
    ("cls@6", (Term("cls", (6,)),)),
    ("mean@-2", (Term("mean", (-2,)),)),
    ("mean@1~-1", (Term("mean", (1, -1)),)),
    ("cls@-1+mean@-4~-3~-2~-1+max", (Term("cls", (-1,)), Term("mean", (-4, -3, -2, -1)), Term("max"))),
    ("attention@3", (Term("attention", (3,)),)),
])
def test_parse_splits_terms_and_layers(expression, terms):
    assert parse_strategy(expression) == terms


@pytest.mark.parametrize("expression, message", [
    ("mean++max", "has an empty part"),
    ("+mean", "has an empty part"),
    ("mean@", "after '@' comes a hidden layer index"),
    ("mean@x", "after '@' comes a hidden layer index"),
    ("mean@1~", "after '@' comes a hidden layer index"),
    ("mean@1.5", "after '@' comes a hidden layer index"),
    ("mean@1@2", "after '@' comes a hidden layer index"),
    ("mean@+3", "after '@' comes a hidden layer index"),
    ("median+max", "unknown pooling strategy 'median'"),
    ("attention+mean", "only parameter-free strategies can be concatenated"),
    ("scalar_mix@-1", "scalar_mix learns its own mix"),
    ("p0.5", "the power p must be at least 1"),
])
def test_bad_expressions_are_one_clear_error(expression, message):
    with pytest.raises(SeqpoolError, match=message):
        get_strategy(expression)


def test_a_concatenation_is_its_parts_side_by_side_with_the_summed_width():
    spec = get_strategy("mean+max+cls")
    assert spec.kind == "parameter-free" and spec.output_dim(5) == 15
    expected = torch.cat([masked_mean(HIDDEN, MASK), masked_max(HIDDEN, MASK), first_token(HIDDEN, MASK)], dim=-1)
    assert torch.equal(pool(HIDDEN, MASK, "mean+max+cls"), expected)
    assert torch.equal(pool_many(HIDDEN, MASK, ["mean+max+cls"])["mean+max+cls"], expected)
    assert Pooler("mean+max+cls", dim=5).output_dim == 15
    assert get_strategy("mean+mean_std").output_dim(5) == 15


def test_a_concatenation_with_a_user_strategy_uses_it_and_checks_it():
    register_strategy("double_mean", lambda h, m: 2 * masked_mean(h, m), output_dim=lambda d: d)
    try:
        torch.testing.assert_close(pool(HIDDEN, MASK, "mean+double_mean")[:, 5:], 2 * masked_mean(HIDDEN, MASK))
        assert get_strategy("mean+double_mean").origin == "expression"
    finally:
        unregister_strategy("double_mean")
    with pytest.raises(SeqpoolError, match="unknown pooling strategy 'double_mean'"):
        get_strategy("mean+double_mean")  # built per lookup: never a stale copy


@pytest.mark.parametrize("expression", ["mean@-2", "cls+mean@-2", "mean@1~-1"])
def test_layer_expressions_refuse_a_single_states_tensor(expression):
    assert get_strategy(expression).kind == "parameter-free"
    with pytest.raises(SeqpoolError, match="pools chosen hidden layers.*Encoder.encode"):
        pool(HIDDEN, MASK, expression)


def test_a_learned_strategy_on_a_layer_keeps_its_factory_and_width():
    spec = get_strategy("attention@-2")
    assert spec.kind == "learned" and spec.output_dim(5, heads=3) == 15
    assert spec.weights_fn() is None  # explain pools the encoder's own layer, not layer -2
    assert Pooler("attention@-2", dim=5, heads=2)(HIDDEN, MASK).shape == (3, 10)


@pytest.mark.parametrize("name, p", [("p1", 1.0), ("p2", 2.0), ("p3", 3.0), ("p2.5", 2.5), ("p10", 10.0)])
def test_power_means_by_name(name, p):
    spec = get_strategy(name)
    assert spec.kind == "parameter-free" and spec.output_dim(5) == 5
    assert torch.equal(pool(HIDDEN, MASK, name), masked_power_mean(HIDDEN, MASK, p))
    assert (spec.weights_fn() is not None) == (p == 1.0)  # only p = 1 (the mean) is linear in the tokens
    assert torch.equal(pool(HIDDEN, MASK, "power_mean"), masked_power_mean(HIDDEN, MASK, 3.0))


def test_names_that_only_look_like_a_power_are_unknown():
    for name in ("p", "px", "p3x", "p-1"):
        with pytest.raises(SeqpoolError, match="unknown pooling strategy"):
            get_strategy(name)


OPERATORS = {"mean_std": ("parameter-free", 10, False), "power_mean": ("parameter-free", 5, False),
             "gem": ("learned", 5, False), "attentive_stats": ("learned", 10, False),
             "latent_attention": ("learned", 5, True), "scalar_mix": ("learned", 5, False)}


@pytest.mark.parametrize("name", OPERATORS)
def test_operators_are_listed_with_kind_width_and_explain_weights(name):
    kind, width, exact = OPERATORS[name]
    spec = get_strategy(name)
    assert name in strategy_names(kind) and name not in STRATEGIES and spec.description
    kwargs = {"num_layers": 2} if name == "scalar_mix" else {}
    dim = 10 if name == "scalar_mix" else 5
    assert spec.output_dim(dim, **kwargs) == width
    assert (spec.weights_fn() is not None) == exact
    pooler = Pooler(name, dim=dim, **kwargs) if kind == "learned" else Pooler(name, dim=dim)
    states = torch.randn(3, 6, dim)
    assert pooler(states, MASK).shape == (3, width) == (3, pooler.output_dim)
    assert get_strategy("latent_attention").output_dim(5, num_queries=3, mode="concat") == 15


def test_mean_std_strategy_is_the_moment_function():
    assert torch.equal(pool(HIDDEN, MASK, "mean_std"), masked_mean_std(HIDDEN, MASK))


def test_scalar_mix_needs_its_number_of_layers():
    with pytest.raises(SeqpoolError, match="pass num_layers="):
        Pooler("scalar_mix", dim=10)
    with pytest.raises(SeqpoolError, match="pass num_layers="):
        Pooler("scalar_mix", dim=10, num_layers=3)


@pytest.mark.parametrize("expression", ["mean+max", "cls+weighted_mean+last", "mean+p1"])
def test_concatenation_weights_decompose_the_output_exactly(expression):
    pooler = Pooler(expression, dim=5)
    weights = pooling_weights(pooler, HIDDEN, MASK)
    tiled = HIDDEN.repeat(1, 1, weights.shape[-1] // 5)
    torch.testing.assert_close((weights * tiled).sum(dim=1), pooler(HIDDEN, MASK))


@pytest.mark.parametrize("expression", ["mean+mean_std", "mean+p3"])
def test_a_concatenation_with_a_non_linear_part_has_no_exact_weights(expression):
    assert get_strategy(expression).weights_fn() is None


def test_latent_attention_pooler_explains_exactly():
    torch.manual_seed(0)
    pooler = Pooler("latent_attention", dim=5, num_queries=2, mode="concat").eval()
    weights = pooling_weights(pooler, HIDDEN, MASK)
    tiled = HIDDEN.repeat(1, 1, 2)
    torch.testing.assert_close((weights * tiled).sum(dim=1), pooler(HIDDEN, MASK))


def test_strategy_names_stay_usable_in_comma_separated_lists_and_file_names():
    for expression in ("mean+max", "mean@-2", "mean@1~-1", "p2.5", "cls@6+mean@-4~-1"):
        assert not set(expression) & set(",/\\ *?'\"$&|;<>()[]{}")
