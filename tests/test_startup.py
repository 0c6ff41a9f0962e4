"""Start-up cost: ``import seqpool``, ``seqpool --help``, ``strategies`` and option errors
must not import torch or transformers (they cost seconds; the user asked for none of them).

Each case runs in a fresh interpreter, since this test process has long imported torch.
"""

from __future__ import annotations

import json
import subprocess
import sys

import click
import pytest

import seqpool
from seqpool.cli import LAZY_COMMANDS, main

HEAVY = ("torch", "transformers", "sklearn", "scipy", "datasets")

PROBE = """
import json, sys
from click.testing import CliRunner
import seqpool
{action}
print(json.dumps({{"heavy": sorted(set({heavy!r}) & set(sys.modules)), "out": out}}))
"""


def run_probe(action: str) -> dict:
    """Run ``action`` (which sets ``out``) in a new interpreter; which heavy modules got imported."""
    code = PROBE.format(action=action, heavy=HEAVY)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    return json.loads(result.stdout.splitlines()[-1])


def cli_probe(args: list[str]) -> str:
    return ("from seqpool.cli import main\n"
            f"result = CliRunner().invoke(main, {args!r})\n"
            "out = [result.exit_code, result.output]")


def test_import_seqpool_is_light():
    probe = run_probe("out = sorted(seqpool.__all__)")
    assert probe["heavy"] == []
    assert probe["out"] == sorted(seqpool.__all__)


@pytest.mark.parametrize("args", [["--help"], ["--version"], ["embed", "--help"], ["evaluate", "--help"],
                                  ["explain", "--help"]])
def test_help_does_not_import_torch(args):
    probe = run_probe(cli_probe(args))
    code, output = probe["out"]
    assert code == 0 and output.strip()
    assert "torch" not in probe["heavy"] and "transformers" not in probe["heavy"], (args, probe["heavy"])


@pytest.mark.parametrize("args", [["--bogus"], ["nosuchcommand"], ["explain", "--top", "-1", "x"],
                                  ["explain", "text"]])
def test_option_errors_do_not_import_torch(args):
    probe = run_probe(cli_probe(args))
    code, output = probe["out"]
    assert code == 2 and "Error" in output
    assert "torch" not in probe["heavy"] and "transformers" not in probe["heavy"], (args, probe["heavy"])


@pytest.mark.parametrize("args, message", [
    (["embed", "{txt}", "--batch-size", "0"], "--batch-size must be a whole number of at least 1"),
    (["embed", "{txt}", "--chunk-size", "0"], "--chunk-size must be a whole number of at least 1"),
    (["embed", "{txt}", "--strategy", "bogus"], "unknown pooling strategy 'bogus'"),
    (["embed", "{missing}"], "input file not found"),
    (["evaluate", "--train", "{jsonl}", "--folds", "1"], "--folds must be at least 2"),
    (["evaluate", "--train", "{missing}.jsonl"], "input file not found"),
])
def test_value_errors_do_not_import_torch(tmp_path, args, message):
    """A bad value or a missing file is reported before torch or transformers load (issue 13 class 6)."""
    (tmp_path / "t.txt").write_text("a\nb\n", encoding="utf-8")
    (tmp_path / "t.jsonl").write_text('{"text": "a", "label": 0}\n', encoding="utf-8")
    paths = {"txt": tmp_path / "t.txt", "jsonl": tmp_path / "t.jsonl", "missing": tmp_path / "missing"}
    probe = run_probe(cli_probe([arg.format(**paths) for arg in args]))
    code, output = probe["out"]
    assert code == 1 and message in output, output
    assert "torch" not in probe["heavy"] and "transformers" not in probe["heavy"], (args, probe["heavy"])


def test_evaluation_settings_do_not_import_torch():
    probe = run_probe("from seqpool.evaluation import EvaluationSettings\nout = EvaluationSettings().folds")
    assert probe["out"] == 10
    assert "torch" not in probe["heavy"] and "sklearn" not in probe["heavy"], probe["heavy"]


def test_strategies_does_not_import_torch():
    probe = run_probe(cli_probe(["strategies"]))
    assert probe["out"][0] == 0 and "mean" in probe["out"][1].split()
    assert "torch" not in probe["heavy"] and "transformers" not in probe["heavy"], probe["heavy"]


def test_every_public_name_resolves_to_its_module():
    import importlib

    for name, module in seqpool._EXPORTS.items():
        assert getattr(seqpool, name) is getattr(importlib.import_module(module), name), name
    for name in ("EvaluationSettings", "load_embeddings", "embed_file", "evaluate", "Encoder"):
        assert name in seqpool.__all__, name
    from seqpool.embed import embed_file
    from seqpool.evaluation.settings import EvaluationSettings
    from seqpool.io.writers import load_embeddings

    assert (seqpool.EvaluationSettings, seqpool.load_embeddings, seqpool.embed_file) == (
        EvaluationSettings, load_embeddings, embed_file)
    import seqpool.evaluation as evaluation

    for name, module in evaluation._EXPORTS.items():  # the evaluation package is lazy the same way
        assert getattr(evaluation, name) is getattr(importlib.import_module(module), name), name
    assert set(seqpool.__all__) <= set(dir(seqpool))
    with pytest.raises(AttributeError, match="no_such_name"):
        seqpool.no_such_name  # noqa: B018


def test_stored_command_help_matches_each_command():
    """``seqpool --help`` lists commands from LAZY_COMMANDS without importing them: keep it true."""
    context = click.Context(main)
    assert set(LAZY_COMMANDS) <= set(main.list_commands(context))
    for name, (_, _, short_help) in LAZY_COMMANDS.items():
        command = main.get_command(context, name)
        assert command.name == name
        assert command.get_short_help_str(limit=1000) == short_help, name


def test_nothing_imports_the_package_root_for_its_version():
    import pathlib

    package = pathlib.Path(seqpool.__file__).parent
    offenders = [str(path.relative_to(package)) for path in package.rglob("*.py")
                 if "from seqpool import __version__" in path.read_text(encoding="utf-8")]
    assert offenders == []
