"""Every fact about a strategy lives on its registry record, and nothing else keys on its name.

The facts (window rule for long texts, "needs every layer", output width, default-comparison
membership, prompt exclusion) are fields of :class:`seqpool.registry.StrategySpec`; the consumers
(long_texts, layer_plan, expressions, evaluation) read them, so changing a record changes what
they do (checked below by swapping a record). A source scan then fails on any comparison or
table in seqpool/ that names a built-in strategy outside the registry and the module defining it.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from seqpool import registry
from seqpool.errors import SeqpoolError
from seqpool.evaluation.settings import DEFAULT_STRATEGIES
from seqpool.expressions import parse_strategy
from seqpool.layer_plan import plan_layers
from seqpool.long_texts import pool_windows, window_spans
from seqpool.pooling import STRATEGIES, masked_weighted_mean
from seqpool.pooling.functional import masked_weighted_mean_keeping_positions
from seqpool.pooling.pooler import LEARNED_STRATEGIES, Pooler
from seqpool.prompts import pool_excluding_prompt
from seqpool.registry import EVERY_WINDOW_STATE, MERGED_SEQUENCE, get_strategy, register_strategy

PACKAGE = Path(__file__).resolve().parent.parent / "seqpool"
BUILTINS = {name: spec for name, spec in registry._BUILTINS.items()}


#: Every test starts and ends with only the built-in strategies.
pytestmark = pytest.mark.usefixtures("clean_registry")


def _swap(name: str, **fields) -> None:
    """Make ``name``'s record say something else (a registered record wins over the built-in)."""
    registry._USER[name] = replace(get_strategy(name), **fields)


# -- the facts are fields, and the consumers read them ---------------------------------------------


def test_the_records_hold_the_facts_and_new_strategies_get_the_defaults():
    assert {n for n, s in BUILTINS.items() if s.window_merge == EVERY_WINDOW_STATE} == {"max"}
    assert {n for n, s in BUILTINS.items() if s.needs_all_layers} == {"scalar_mix"}
    assert {n for n, s in BUILTINS.items() if s.prompt_excluded} == {"weighted_mean"}
    assert DEFAULT_STRATEGIES == STRATEGIES + LEARNED_STRATEGIES == registry.default_comparison()
    assert all(BUILTINS[name].in_default_comparison for name in DEFAULT_STRATEGIES)
    spec = register_strategy("rms", lambda h, m: h.pow(2).mean(1).sqrt())
    assert (spec.window_merge, spec.needs_all_layers, spec.in_default_comparison, spec.prompt_excluded) == \
        (MERGED_SEQUENCE, False, False, None)
    assert "rms" not in registry.default_comparison()
    with pytest.raises(SeqpoolError, match="window_merge must be one of"):
        replace(spec, window_merge="somehow")


@pytest.mark.parametrize("name", [n for n, s in BUILTINS.items() if s.kind == "learned"])
def test_learned_widths_come_from_the_module_class(name):
    """The record's width is the module's own ``output_width``: one formula, two readers."""
    spec = BUILTINS[name]
    assert isinstance(spec.width, str) and spec.width.endswith(".output_width")
    kwargs = {"num_layers": 2} if spec.needs_all_layers else {}
    pooler = Pooler(name, dim=12, **kwargs)
    assert registry._resolve(spec.width) == type(pooler.module).output_width
    assert pooler(torch.randn(2, 3, 12)).shape == (2, spec.output_dim(12, **kwargs)) == (2, pooler.output_dim)
    if pooler.module.output_dim is not None:
        assert pooler.module.output_dim == pooler.output_dim


def test_long_text_windows_follow_the_records_window_rule():
    states = [torch.randn(1 + 4 + 1, 3, generator=torch.Generator().manual_seed(i)).clamp(-1, 1) for i in range(2)]
    spans = window_spans(7, 4, 3)  # (0, 4), (3, 7): content token 3 is in both windows
    states[0][1 + 3], states[1][1 + 0] = 10.0, 0.0  # its two states: max 10, average 5
    every_state = pool_windows(states, spans, 1, 1, ["max"])["max"]
    assert torch.equal(every_state, torch.cat(states).max(dim=0).values)
    _swap("max", window_merge=MERGED_SEQUENCE, origin="user")
    merged = pool_windows(states, spans, 1, 1, ["max"])["max"]
    assert not torch.equal(merged, every_state)  # the overlap was averaged first: the record decided


def test_layer_plans_and_expressions_follow_the_records_layer_rule():
    assert plan_layers(["gem"], 4, [-1], 8).blocks is None
    with pytest.raises(SeqpoolError, match="drop the '@'"):
        parse_strategy("scalar_mix@-1")
    _swap("gem", needs_all_layers=True)
    plan = plan_layers(["gem"], 4, [-1], 8)
    assert plan.blocks[:4] == ((0,), (1,), (2,), (3,)) and plan.learned("gem")[2] == {"num_layers": 4}
    with pytest.raises(SeqpoolError, match="gem learns its own mix of every layer"):
        parse_strategy("gem@-1")


def test_the_prompt_rule_function_is_what_prompt_exclusion_computes():
    """The record's ``prompt_excluded`` function equals the weighted mean that pool_excluding_prompt
    computes with original positions (so prompts.py can read it from the record)."""
    hidden = torch.randn(3, 6, 4, generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]]).bool()
    expected = pool_excluding_prompt(hidden, mask, 2, ["weighted_mean"])["weighted_mean"]
    kept = mask & (mask.cumsum(dim=1) > 2)
    function = get_strategy("weighted_mean").prompt_excluded_fn()
    assert function is masked_weighted_mean_keeping_positions
    torch.testing.assert_close(function(hidden, mask, kept), expected)
    torch.testing.assert_close(function(hidden, mask, mask), masked_weighted_mean(hidden, mask))


def test_the_registry_imports_no_torch():
    code = "import sys, seqpool.registry, seqpool.expressions; seqpool.registry.list_strategies(); " \
           "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


# -- nothing outside the registry keys on a strategy's name ---------------------------------------

#: Variables compared with words that are also strategy names but mean something else.
NOT_STRATEGIES = {
    "mode": "latent attention averages ('mean') or concatenates its queries",
    "reduce": "local.py's window/segment reductions ('mean', 'max', 'sum')",
}
#: Hits that need a change in a module this change did not own, each with what replaces it.
#: Listed so that a new hit fails; an entry must leave once it is fixed (see the test below).
KNOWN_NAME_KEYS: dict[tuple[str, str], str] = {
}


def _defining_modules(name: str) -> set[str]:
    """Paths (relative to seqpool/) of the modules the record of ``name`` points into."""
    spec = BUILTINS[name]
    refs = (spec.function, spec.factory, spec.token_weights, spec.width, spec.prompt_excluded)
    modules = {ref.partition(":")[0] for ref in refs if isinstance(ref, str)}
    return {str(Path(*module.split(".")[1:])) + ".py" for module in modules}


def _names_in(node: ast.AST, names: set[str]) -> list[str] | None:
    """The strategy names a constant or a literal collection of constants holds (None: not one)."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("frozenset", "set", "tuple") \
            and len(node.args) == 1:
        node = node.args[0]
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return [node.value] if node.value in names else None
    if isinstance(node, (ast.Tuple, ast.List, ast.Set)):
        elements = node.elts
    elif isinstance(node, ast.Dict):
        elements = [key for key in node.keys if key is not None]
    else:
        return None
    found = [e.value for e in elements if isinstance(e, ast.Constant) and isinstance(e.value, str)]
    return found if found and len(found) == len(elements) and set(found) <= names else None


def _other_side_is_not_a_strategy(node: ast.AST) -> bool:
    last = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None
    return last in NOT_STRATEGIES


def name_keys(source: str, names: set[str]) -> list[tuple[int, list[str], str]]:
    """``(line, names, code)`` of every place ``source`` keys on strategy ``names``: a comparison
    with one (``== "max"``, ``in ("max", ...)``), a ``case "max":``, or a constant or table made
    only of them (``X = "scalar_mix"``, ``frozenset({"max"})``, ``{"mean": ...}``)."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for left, right in zip(operands, operands[1:]):
                for side, other in ((left, right), (right, left)):
                    hit = _names_in(side, names)
                    if hit and not _other_side_is_not_a_strategy(other):
                        found.append((node.lineno, hit, ast.unparse(node)))
        elif isinstance(node, ast.MatchValue):
            hit = _names_in(node.value, names)
            if hit:
                found.append((node.lineno, hit, f"case {ast.unparse(node.value)}"))
        elif isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None \
                and not isinstance(node.value, ast.Dict):  # a table is reported as the Dict below
            hit = _names_in(node.value, names)
            if hit:
                found.append((node.lineno, hit, ast.unparse(node)))
        elif isinstance(node, ast.Dict):
            hit = _names_in(node, names)
            if hit:
                found.append((node.lineno, hit, ast.unparse(node)))
    return list({(line, tuple(hit), code): (line, hit, code) for line, hit, code in found}.values())


def strategy_name_keys() -> list[str]:
    """Every place in seqpool/ (registry.py and each strategy's own module excepted) keyed on a
    built-in strategy's name, as ``path:line: code``."""
    hits = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = str(path.relative_to(PACKAGE))
        if relative == "registry.py":
            continue
        for line, names, code in name_keys(path.read_text(encoding="utf-8"), set(BUILTINS)):
            foreign = [name for name in names if relative not in _defining_modules(name)
                       and (relative, name) not in KNOWN_NAME_KEYS]
            if foreign:
                hits.append(f"seqpool/{relative}:{line}: {code}")
    return hits


def test_nothing_outside_the_registry_keys_on_a_strategy_name():
    hits = strategy_name_keys()
    assert hits == [], "put the fact on the strategy's StrategySpec and read it there:\n" + "\n".join(hits)


def test_known_name_keys_are_still_real():
    """A listed exception that no longer exists must leave the list (it cannot hide a new one)."""
    for (relative, name), fix in KNOWN_NAME_KEYS.items():
        source = (PACKAGE / relative).read_text(encoding="utf-8")
        assert any(name in names for _, names, _ in name_keys(source, set(BUILTINS))), (relative, name, fix)


@pytest.mark.parametrize("code", [
    'if term.name == "scalar_mix":\n    pass',
    'if "scalar_mix" in names:\n    pass',
    'x = strategy != "weighted_mean"',
    'x = s in ("max", "cls")',
    'ALL_WINDOW_STATES = frozenset({"max"})',
    'SCALAR_MIX = "scalar_mix"',
    'DEFAULT: tuple[str, ...] = ("mean", "attention")',
    'WIDTH = {"mean_std": 2}',
    'match strategy:\n    case "max":\n        pass',
])
def test_the_scan_catches_a_strategy_name_used_as_a_key(code):
    assert len(name_keys(code, set(BUILTINS))) == 1, code


@pytest.mark.parametrize("code", [
    'x = self.mode == "mean"',
    'if reduce == "max":\n    pass',
    'def pool(h, m, strategy="mean"):\n    return vectors["mean"]',
    'MODES = ("mean", "concat")',
    'row = {"mean": 1.0, "ci95": (0, 1)}',
    'name = chosen or ("mean",)',
])
def test_the_scan_leaves_other_meanings_of_the_same_words(code):
    assert name_keys(code, set(BUILTINS)) == [], code


def test_the_scan_would_catch_a_name_key_added_to_a_real_module(tmp_path, monkeypatch):
    """Run the whole scan over a copy of seqpool/ with one ``== "scalar_mix"`` added to layer_plan.py."""
    import shutil

    copy = tmp_path / "seqpool"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with (copy / "layer_plan.py").open("a", encoding="utf-8") as handle:
        handle.write('\n\ndef _is_mix(name: str) -> bool:\n    return name == "scalar_mix"\n')
    monkeypatch.setattr(sys.modules[__name__], "PACKAGE", copy)
    assert [hit.split(":")[0] for hit in strategy_name_keys()] == ["seqpool/layer_plan.py"]
