"""The strategy registry: lookups, errors, user strategies and their checks, widths, explain
weights and the sentence-transformers table (against sentence-transformers' own names)."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

import seqpool
from seqpool import registry
from seqpool.errors import SeqpoolError
from seqpool.explain import pooling_weights
from seqpool.pooling.pooler import LEARNED_STRATEGIES, POOLER_STRATEGIES, Pooler
from seqpool.pooling import STRATEGIES, check_strategy, masked_mean, pool, pool_many
from seqpool.registry import get_strategy, register_strategy, strategy_names, unregister_strategy

HIDDEN = torch.randn(3, 6, 10, generator=torch.Generator().manual_seed(0))
MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0]])


#: Every test starts and ends with only the built-in strategies.
pytestmark = pytest.mark.usefixtures("clean_registry")


def rms(hidden_states, attention_mask):
    """root mean square of the real tokens"""
    mask = attention_mask.bool().unsqueeze(-1)
    squares = hidden_states.pow(2).masked_fill(~mask, 0).sum(1)
    return (squares / mask.sum(1).clamp(min=1)).sqrt()


# -- lookups ---------------------------------------------------------------------------------------


def test_builtin_constants_are_views_of_the_registry_in_their_documented_order():
    assert STRATEGIES == ("mean", "max", "cls", "last", "mean_sqrt_len", "weighted_mean")
    assert LEARNED_STRATEGIES == ("attention", "se_mean")
    assert all(get_strategy(name).kind == "parameter-free" and get_strategy(name).is_builtin for name in STRATEGIES)
    assert all(get_strategy(name).kind == "learned" and get_strategy(name).is_builtin for name in LEARNED_STRATEGIES)
    names = strategy_names()
    kinds = [get_strategy(name).kind for name in names]
    assert kinds == sorted(kinds, key=("parameter-free", "learned").index)  # parameter-free first
    assert strategy_names("parameter-free")[:6] == STRATEGIES and set(POOLER_STRATEGIES) <= set(names)
    assert set(strategy_names("learned")) >= set(LEARNED_STRATEGIES)
    assert all(get_strategy(name).description for name in names)


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(SeqpoolError, match="unknown pooling strategy 'median'; choose one of: mean, max, cls"):
        get_strategy("median")
    with pytest.raises(SeqpoolError, match="it is learned, this needs a parameter-free one"):
        get_strategy("attention", "parameter-free")
    with pytest.raises(SeqpoolError, match="kind must be one of"):
        strategy_names("fancy")
    with pytest.raises(SeqpoolError, match="unknown pooling strategy 'attention'"):
        pool(HIDDEN, MASK, "attention")  # learned strategies need a Pooler
    assert registry.find_strategy("median") is None and registry.find_strategy(3) is None


def test_records_hold_functions_factories_and_lazy_references():
    mean = get_strategy("mean")
    assert mean.kind == "parameter-free" and mean.fn is masked_mean and mean.is_builtin
    assert isinstance(get_strategy("attention").build(10, heads=2), torch.nn.Module)
    with pytest.raises(SeqpoolError, match="is learned"):
        get_strategy("attention").fn
    with pytest.raises(SeqpoolError, match="has no parameters"):
        mean.build(10)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_width_function_matches_the_real_output(strategy):
    for dim in (1, 10):
        hidden = torch.randn(3, 6, dim)
        assert pool(hidden, MASK, strategy).shape == (3, get_strategy(strategy).output_dim(dim))


@pytest.mark.parametrize("strategy", strategy_names("parameter-free"))
def test_every_parameter_free_record_pools_to_its_declared_width(strategy):
    for dim in (2, 10):
        out = pool(torch.randn(3, 6, dim), MASK, strategy)
        assert out.shape == (3, get_strategy(strategy).output_dim(dim)) and bool(torch.isfinite(out).all())


def test_attention_width_depends_on_heads():
    spec = get_strategy("attention")
    assert spec.output_dim(10) == 10 and spec.output_dim(10, heads=4) == 40
    assert Pooler("attention", dim=10, heads=4)(HIDDEN, MASK).shape == (3, 40)


# -- user strategies --------------------------------------------------------------------------------


def test_registered_strategy_works_everywhere_a_name_does(tmp_path, tiny_bert_encoder):
    spec = seqpool.register_strategy("rms", rms)
    assert spec.description == "root mean square of the real tokens" and spec.origin == "user"
    assert "rms" in strategy_names("parameter-free") and check_strategy("rms") == "rms"
    torch.testing.assert_close(pool(HIDDEN, MASK, "rms"), rms(HIDDEN, MASK))
    assert set(pool_many(HIDDEN, MASK, ["mean", "rms"])) == {"mean", "rms"}
    pooler = Pooler("rms")
    torch.testing.assert_close(pooler(HIDDEN, MASK), rms(HIDDEN, MASK))
    pooler.save_pretrained(tmp_path / "p")
    assert json.loads((tmp_path / "p" / "config.json").read_text())["strategy"] == "rms"
    torch.testing.assert_close(Pooler.from_pretrained(tmp_path / "p")(HIDDEN, MASK), rms(HIDDEN, MASK))
    vectors = tiny_bert_encoder.encode(["a good film", "the cat"], ["rms", "mean"])
    assert vectors["rms"].shape == vectors["mean"].shape and np.all(vectors["rms"] >= 0)


def test_output_dim_declares_the_width():
    register_strategy("mean_max", lambda h, m: torch.cat([pool(h, m, "mean"), pool(h, m, "max")], -1),
                      output_dim=lambda dim: 2 * dim, description="mean and max side by side")
    assert pool(HIDDEN, MASK, "mean_max").shape == (3, 20)
    assert Pooler("mean_max", dim=10).output_dim == 20
    register_strategy("first3", lambda h, m: h[:, 0, :3], output_dim=3)
    assert pool(HIDDEN, MASK, "first3").shape == (3, 3)
    with pytest.raises(SeqpoolError, match=r"strategy 'first3' \(user\) returned shape \(3, 3\).*\(3, 4\)"):
        unregister_strategy("first3")
        register_strategy("first3", lambda h, m: h[:, 0, :3], output_dim=4)
        pool(HIDDEN, MASK, "first3")
    for bad in (0, -1, 2.5, True, "wide"):
        with pytest.raises(SeqpoolError, match="output_dim must be"):
            register_strategy("bad", rms, output_dim=bad)


@pytest.mark.parametrize("name", ["", "a,b", "a+b", "a@2", "a b", "tab\tname", None])
def test_names_that_the_command_line_could_not_parse_are_refused(name):
    with pytest.raises(SeqpoolError, match="name must be a non-empty string"):
        register_strategy(name, rms)


def test_register_refuses_non_callables_and_bad_descriptions():
    with pytest.raises(SeqpoolError, match="fn must be callable"):
        register_strategy("x", "mean")
    with pytest.raises(SeqpoolError, match="description must be a string"):
        register_strategy("x", rms, description=3)


def test_builtins_and_registered_names_are_replaced_only_on_request():
    with pytest.raises(SeqpoolError, match="'mean' is a built-in strategy; pass replace=True"):
        register_strategy("mean", rms)
    register_strategy("rms", rms)
    with pytest.raises(SeqpoolError, match="'rms' is already registered"):
        register_strategy("rms", masked_mean)
    register_strategy("rms", masked_mean, replace=True)
    torch.testing.assert_close(pool(HIDDEN, MASK, "rms"), masked_mean(HIDDEN, MASK))
    register_strategy("mean", rms, replace=True)
    torch.testing.assert_close(pool(HIDDEN, MASK, "mean"), rms(HIDDEN, MASK))
    assert "mean" not in registry.st_names()  # a replaced built-in is no longer sentence-transformers' mean
    unregister_strategy("mean")  # the built-in comes back
    torch.testing.assert_close(pool(HIDDEN, MASK, "mean"), masked_mean(HIDDEN, MASK))
    assert "mean" in registry.st_names()
    with pytest.raises(SeqpoolError, match="was not added with register_strategy"):
        unregister_strategy("max")


@pytest.mark.parametrize("fn, message", [
    (lambda h, m: h, r"returned shape \(3, 6, 10\) for states of shape \(3, 6, 10\); it must return "
                     r"\(batch, width\) = \(3, 10\)"),
    (lambda h, m: h[:2, 0], r"returned shape \(2, 10\)"),
    (lambda h, m: h[:, 0, :4], r"returned shape \(3, 4\)"),
    (lambda h, m: h.sum(1) / 0 * 0, "returned NaN or infinity"),
    (lambda h, m: h.sum(1) * float("inf"), "returned NaN or infinity"),
    (lambda h, m: h.sum(1).numpy(), "returned a ndarray, not a torch.Tensor"),
    (lambda h, m: h.sum(1).long(), "returned torch.int64 values"),
])
def test_user_outputs_are_checked_on_every_call(fn, message):
    register_strategy("broken", fn)
    with pytest.raises(SeqpoolError, match=r"strategy 'broken' \(user\) " + message):
        pool(HIDDEN, MASK, "broken")
    with pytest.raises(SeqpoolError, match="strategy 'broken'"):
        Pooler("broken")(HIDDEN, MASK)
    torch.testing.assert_close(pool(HIDDEN, MASK, "mean"), masked_mean(HIDDEN, MASK))  # built-ins unaffected


# -- explain weights and sentence-transformers -------------------------------------------------------


@pytest.mark.parametrize("strategy", POOLER_STRATEGIES)
def test_builtin_token_weights_reconstruct_the_pooled_vector(strategy):
    kwargs = {"heads": 2} if strategy == "attention" else {}
    pooler = Pooler(strategy, dim=10, **kwargs).eval()
    assert get_strategy(strategy).weights_fn() is not None
    hidden = HIDDEN.double().float()
    weights = pooling_weights(pooler, hidden, MASK)
    assert weights.shape == (3, 6, pooler.output_dim)
    tiled = hidden.repeat(1, 1, weights.shape[-1] // 10)
    with torch.no_grad():
        torch.testing.assert_close((weights * tiled).sum(1), pooler(hidden, MASK), atol=1e-5, rtol=1e-5)
    assert bool((weights[~MASK.bool()] == 0).all())  # padding never contributes


def test_user_strategies_have_no_exact_decomposition():
    register_strategy("rms", rms)
    assert get_strategy("rms").weights_fn() is None
    with pytest.raises(SeqpoolError, match="'rms' has no exact token decomposition"):
        pooling_weights(Pooler("rms"), HIDDEN, MASK)


def test_sentence_transformers_table_uses_sentence_transformers_names():
    # Spelled out from sentence_transformers.models.Pooling (an oracle independent of the registry).
    assert registry.st_pooling_flags() == {
        "pooling_mode_cls_token": "cls", "pooling_mode_mean_tokens": "mean", "pooling_mode_max_tokens": "max",
        "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len", "pooling_mode_weightedmean_tokens": "weighted_mean",
        "pooling_mode_lasttoken": "last"}
    assert list(registry.st_pooling_flags())[:2] == ["pooling_mode_cls_token", "pooling_mode_mean_tokens"]
    assert registry.st_pooling_modes() == {"cls": "cls", "mean": "mean", "max": "max",
                                           "mean_sqrt_len_tokens": "mean_sqrt_len", "weightedmean": "weighted_mean",
                                           "lasttoken": "last"}
    assert set(registry.st_names()) == set(STRATEGIES)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_st_mode_round_trip(strategy):
    from seqpool.model_reader import pooling_strategy
    from seqpool.st_export import pooling_config

    config = pooling_config(strategy, 10)
    assert sum(value is True for value in config.values()) == 1
    assert pooling_strategy(config, "config.json")[0] == strategy
    spec = get_strategy(strategy)
    assert pooling_strategy({"pooling_mode": spec.st_mode}, "config.json")[0] == strategy
    assert registry.strategy_for_st_mode(spec.st_mode) == strategy


def test_strategies_without_an_st_mode_cannot_be_exported():
    from seqpool.st_export import pooling_config

    register_strategy("rms", rms)
    for name in ("rms", "se_mean"):
        with pytest.raises(SeqpoolError, match=f"'{name}' for sentence-transformers"):
            pooling_config(name, 10)


def test_registry_and_the_strategies_command_stay_torch_free():
    code = ("import sys; import seqpool.registry as r; assert 'se_mean' in r.strategy_names(); "
            "from click.testing import CliRunner; from seqpool.cli import main; "
            "out = CliRunner().invoke(main, ['strategies']).output; assert 'se_mean\\tlearned' in out, out; "
            "heavy = [m for m in ('torch', 'transformers', 'numpy') if m in sys.modules]; "
            "assert not heavy, heavy")
    subprocess.run([sys.executable, "-c", code], check=True)
