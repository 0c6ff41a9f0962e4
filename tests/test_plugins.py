"""Strategies from third-party packages (the ``seqpool.strategies`` entry-point group).

Each test writes a throw-away package into ``tmp_path`` together with the ``*.dist-info``
metadata pip would install (``METADATA`` + ``entry_points.txt``) and puts ``tmp_path`` on
``sys.path``: ``importlib.metadata.entry_points`` then finds it exactly as it finds an
installed plugin, without touching the environment.
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from seqpool import registry
from seqpool.cli import main
from seqpool.errors import SeqpoolError
from seqpool.pooling.pooler import Pooler
from seqpool.pooling import masked_mean, pool

HIDDEN = torch.randn(3, 6, 8, generator=torch.Generator().manual_seed(0))
MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 0], [1, 0, 0, 0, 0, 0]])
LINES = ["a good film", "the cat sat on the mat", "", "not a bad movie at all", "hello world"]

GOOD = '''
import torch


def twice_mean(hidden_states, attention_mask):
    """twice the mean of the real tokens"""
    mask = attention_mask.bool().unsqueeze(-1).to(hidden_states.device)
    total = hidden_states.float().masked_fill(~mask, 0).sum(1)
    return (2 * total / mask.sum(1).clamp(min=1)).to(hidden_states.dtype)
'''
BROKEN = {
    "import_error": "import fancy_dependency_that_is_not_installed\n\ndef function(h, m):\n    return h.sum(1)\n",
    "wrong_shape": "def function(hidden_states, attention_mask):\n    return hidden_states\n",
    "nan": "def function(hidden_states, attention_mask):\n    return hidden_states.sum(1) * float('nan')\n",
    "not_callable": "function = 42\n",
}
_unique = itertools.count()


@pytest.fixture(autouse=True)
def _fresh_plugins():
    """Plugins are read again in every test, and forgotten afterwards."""
    registry._forget_plugins()
    yield
    registry._forget_plugins()


def make_plugin(root: Path, entry_points: dict[str, tuple[str, str]]) -> str:
    """Write package ``plugpkgN`` with one module per entry point and its dist-info into ``root``.

    ``entry_points`` maps the strategy name to (module source, attribute).
    """
    package = f"plugpkg{next(_unique)}"
    (root / package).mkdir(parents=True)
    (root / package / "__init__.py").write_text("", encoding="utf-8")
    lines = ["[seqpool.strategies]"]
    for index, (name, (source, attribute)) in enumerate(entry_points.items()):
        (root / package / f"mod{index}.py").write_text(source, encoding="utf-8")
        lines.append(f"{name} = {package}.mod{index}:{attribute}")
    info = root / f"{package}-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.1\n", encoding="utf-8")
    (info / "entry_points.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return package


@pytest.fixture
def installed(tmp_path, monkeypatch):
    """``installed({name: (source, attribute)})`` makes a plugin package importable and discoverable."""
    def install(entry_points: dict[str, tuple[str, str]]) -> str:
        root = tmp_path / f"site{next(_unique)}"
        root.mkdir()
        package = make_plugin(root, entry_points)
        monkeypatch.syspath_prepend(str(root))
        monkeypatch.delitem(sys.modules, package, raising=False)
        return package
    return install


def listing_with(name: str) -> list[str]:
    """What ``seqpool strategies`` lists with one working plugin ``name``: after the parameter-free ones."""
    return [*registry.strategy_names("parameter-free", plugins=False), name,
            *registry.strategy_names("learned", plugins=False)]


def run(*args):
    return CliRunner().invoke(main, [*map(str, args)])


def twice_mean(hidden, mask):
    return 2 * masked_mean(hidden, mask)


# -- a working plugin ----------------------------------------------------------------------------------


def test_plugin_is_listed_by_the_strategies_command(installed):
    package = installed({"myname": (GOOD, "twice_mean")})
    result = run("strategies")
    assert result.exit_code == 0 and result.stderr == ""
    lines = result.stdout.splitlines()
    assert [line.split("\t")[0] for line in lines] == listing_with("myname")
    assert "myname\tparameter-free\ttwice the mean of the real tokens" in lines
    origin = f"plugin 'myname' (myname = {package}.mod0:twice_mean from {package} 0.1)"
    assert registry.get_strategy("myname").origin == origin


def test_plugin_works_in_pool_and_pooler(installed, tmp_path):
    installed({"myname": (GOOD, "twice_mean")})
    torch.testing.assert_close(pool(HIDDEN, MASK, "myname"), twice_mean(HIDDEN, MASK))
    pooler = Pooler("myname")
    torch.testing.assert_close(pooler(HIDDEN, MASK), twice_mean(HIDDEN, MASK))
    pooler.save_pretrained(tmp_path / "saved")
    registry._forget_plugins()  # a fresh process: loading by name finds the plugin again
    torch.testing.assert_close(Pooler.from_pretrained(tmp_path / "saved")(HIDDEN, MASK), twice_mean(HIDDEN, MASK))


def test_plugin_works_in_seqpool_embed(installed, tmp_path, tiny_bert_dir, tiny_bert_encoder):
    installed({"myname": (GOOD, "twice_mean")})
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    result = run("embed", corpus, "--model", tiny_bert_dir, "-o", tmp_path / "emb.npy", "--strategy", "myname,mean")
    assert result.exit_code == 0, result.output
    mine, mean = np.load(tmp_path / "emb.myname.npy"), np.load(tmp_path / "emb.mean.npy")
    np.testing.assert_allclose(mine, 2 * tiny_bert_encoder.encode(LINES)["mean"], rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(mean, tiny_bert_encoder.encode(LINES)["mean"])


def test_plugin_works_in_seqpool_evaluate(installed, tmp_path, tiny_bert_dir):
    installed({"myname": (GOOD, "twice_mean")})
    rng = np.random.default_rng(0)
    filler = "the a of to in is it was this that film movie story cat dog".split()
    rows = [{"text": " ".join([*rng.choice(filler, 5), "good great" if i % 2 else "bad boring"]),
             "label": "pos" if i % 2 else "neg"} for i in range(30)]
    train = tmp_path / "train.jsonl"
    train.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    json_path = tmp_path / "result.json"
    result = run("evaluate", "--train", train, "--strategies", "myname,mean", "--folds", "2", "--model", tiny_bert_dir,
                 "--cache-dir", tmp_path / "cache", "--threads", "1", "--json", json_path, "--quiet")
    assert result.exit_code == 0, result.output
    data = json.loads(json_path.read_text())
    assert set(data["strategies"]) == {"myname", "mean"}
    # LogisticRegression on standardised features: doubling every vector changes nothing.
    assert data["strategies"]["myname"]["scores"] == pytest.approx(data["strategies"]["mean"]["scores"])


def test_plugin_works_in_the_pipeline_pooling_resolution(installed):
    from seqpool.pipeline import resolve_pooling

    installed({"myname": (GOOD, "twice_mean")})
    functions, several = resolve_pooling(["myname", "mean"])
    assert list(functions) == ["myname", "mean"] and several
    torch.testing.assert_close(functions["myname"](HIDDEN, MASK), twice_mean(HIDDEN, MASK))


def test_plugins_load_lazily_and_only_the_one_asked_for(installed):
    package = installed({"myname": (GOOD, "twice_mean"), "other": (GOOD, "twice_mean")})
    pool(HIDDEN, MASK, "mean")
    assert f"{package}.mod0" not in sys.modules  # built-ins never import plugins
    pool(HIDDEN, MASK, "myname")
    assert f"{package}.mod0" in sys.modules and f"{package}.mod1" not in sys.modules


# -- broken plugins ----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind, message", [
    ("import_error", "failed to import: ModuleNotFoundError: No module named 'fancy_dependency_that_is_not_installed'"),
    ("wrong_shape", r"returned shape \(2, 5, 8\) for states of shape \(2, 5, 8\); it must return \(batch, width\)"),
    ("nan", "returned NaN or infinity"),
    ("not_callable", "is not callable"),
])
def test_a_broken_plugin_is_one_line_naming_it_and_builtins_keep_working(installed, tmp_path, tiny_bert_dir,
                                                                         kind, message):
    package = installed({"good": (GOOD, "twice_mean"), f"bad_{kind}": (BROKEN[kind], "function")})
    name = f"bad_{kind}"

    listed = run("strategies")
    assert listed.exit_code == 0
    assert [line.split("\t")[0] for line in listed.stdout.splitlines()] == listing_with("good")
    warning, = listed.stderr.splitlines()
    assert warning.startswith(f"warning: plugin '{name}' ({name} = {package}.mod1:function from {package} 0.1)")

    with pytest.raises(SeqpoolError, match=message) as raised:
        registry.get_strategy(name)
    assert "\n" not in str(raised.value) and f"'{name}'" in str(raised.value)
    with pytest.raises(SeqpoolError, match=message):
        Pooler(name)

    corpus = tmp_path / "corpus.txt"
    corpus.write_text("a good film\n", encoding="utf-8")
    embedded = run("embed", corpus, "--model", tiny_bert_dir, "--strategy", name)
    assert embedded.exit_code == 1 and embedded.stdout == ""
    error, = embedded.stderr.splitlines()
    assert f"'{name}'" in error and "Traceback" not in embedded.stderr

    torch.testing.assert_close(pool(HIDDEN, MASK, "mean"), masked_mean(HIDDEN, MASK))
    torch.testing.assert_close(pool(HIDDEN, MASK, "good"), twice_mean(HIDDEN, MASK))
    with pytest.warns(UserWarning, match=name):
        assert list(registry.strategy_names()) == listing_with("good")


def test_a_plugin_cannot_replace_a_builtin(installed):
    installed({"mean": (BROKEN["nan"], "function")})
    listed = run("strategies")
    assert listed.exit_code == 0 and "is ignored: 'mean' is already a strategy" in listed.stderr
    torch.testing.assert_close(pool(HIDDEN, MASK, "mean"), masked_mean(HIDDEN, MASK))


def test_unknown_names_list_plugins_without_importing_them(installed):
    package = installed({"myname": (GOOD, "twice_mean")})
    with pytest.raises(SeqpoolError, match="choose one of: mean, .*, myname"):
        pool(HIDDEN, MASK, "median")
    assert f"{package}.mod0" not in sys.modules
