"""The click group itself: help, version, strategies, and one-line errors."""

from click.testing import CliRunner

import seqpool
from seqpool.cli import main


def test_help_lists_commands():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "strategies" in result.output


def test_version_matches_package():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert seqpool.__version__ in result.output


def test_strategies_lists_every_strategy():
    result = CliRunner().invoke(main, ["strategies"])
    assert result.exit_code == 0
    listed = [line.split("\t")[0] for line in result.output.splitlines()]
    # every registered strategy: the classic constants plus issue 11's operators (mean_std, gem, ...)
    assert listed == list(seqpool.strategy_names())
    assert set(seqpool.STRATEGIES) | set(seqpool.LEARNED_STRATEGIES) < set(listed)


# -- seqpool explain: options, output paths and --label checked before any work ---------------

import json  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

from seqpool import PooledClassifier, SeqpoolError  # noqa: E402


def saved_classifier(folder: Path, model: str, labels=("negative", "positive")) -> Path:
    """An untrained (seeded) mean-pooling classifier over 32-d states that names ``model``."""
    PooledClassifier("mean", 32, len(labels), labels=list(labels),
                     encoder={"model": model, "layer": -1}).save_pretrained(folder)
    return folder


def explain(*arguments: str, env: dict | None = None):
    return CliRunner().invoke(main, ["explain", *arguments], env=env)


@pytest.fixture()
def classifier_without_model(tmp_path) -> Path:
    """Its recorded encoder does not exist: any check that runs after the encoder loads fails
    with "not found" instead of its own message, so these tests see the order of the checks."""
    return saved_classifier(tmp_path / "clf", str(tmp_path / "no-such-model"))


@pytest.mark.parametrize("arguments, message", [
    (["--label", "neutral", "cat"], "--label 'neutral': unknown class"),
    (["--label", "2", "cat"], "unknown class"),
    (["--label", "-1", "cat"], "unknown class"),
    (["--html", "{tmp}/missing/map.html", "cat"], "--html: folder"),
    (["--png", "{tmp}/missing/map.png", "cat"], "--png: folder"),
    (["--html", "{tmp}", "cat"], "directory"),
    (["--input", "{tmp}/none.txt"], "not found"),
    (["--input", "{tmp}/texts.jsonl", "--text-field", "review"], "--text-field"),
    (["--text-field", "review", "cat"], "give --input too"),
])
def test_explain_checks_before_loading_the_encoder(classifier_without_model, tmp_path, arguments, message):
    (tmp_path / "texts.jsonl").write_text('{"text": "a film"}\n', encoding="utf-8")
    arguments = [argument.replace("{tmp}", str(tmp_path)) for argument in arguments]
    result = explain("--classifier", str(classifier_without_model), *arguments)
    assert result.exit_code in (1, 2)
    assert message in result.output, result.output
    assert "no-such-model" not in result.output  # failed before the encoder was looked for
    assert "Traceback" not in result.output
    assert [line.startswith("Error:") for line in result.output.splitlines()].count(True) == 1
    assert not (tmp_path / "missing").exists()


@pytest.mark.parametrize("label, labels, shown", [
    ("1", ("negative", "positive"), "contributions to positive"),  # an index, as --help says
    ("negative", ("negative", "positive"), "contributions to negative"),  # a name
    ("1", (1, 0), "contributions to 1"),  # integer class names: the name wins over the index
    ("0", (1, 0), "contributions to 0"),
])
def test_explain_label_takes_a_name_or_an_index(tiny_bert_dir, tmp_path, label, labels, shown):
    classifier = saved_classifier(tmp_path / "clf", str(tiny_bert_dir), labels)
    result = explain("--classifier", str(classifier), "--label", label, "--no-color", "a good film")
    assert result.exit_code == 0, result.output
    assert shown in result.output


def test_explain_reads_the_text_field_of_an_input(tiny_bert_dir, tmp_path):
    classifier = saved_classifier(tmp_path / "clf", str(tiny_bert_dir))
    (tmp_path / "reviews.jsonl").write_text('{"review": "a boring movie"}\n{"review": "a good film"}\n',
                                            encoding="utf-8")
    result = explain("--classifier", str(classifier), "--input", str(tmp_path / "reviews.jsonl"),
                     "--text-field", "review", "--no-color", "--top", "1")
    assert result.exit_code == 0, result.output
    assert result.output.count("top words:") == 2 and "boring" in result.output and "good" in result.output


def test_explain_refuses_a_broken_classifier_config_in_one_line(tiny_bert_dir, tmp_path):
    classifier = saved_classifier(tmp_path / "clf", str(tiny_bert_dir))
    config = json.loads((classifier / "config.json").read_text(encoding="utf-8"))
    del config["num_labels"]
    (classifier / "config.json").write_text(json.dumps(config), encoding="utf-8")
    result = explain("--classifier", str(classifier), "cat")
    assert result.exit_code == 1
    assert "'num_labels'" in result.output and len(result.output.strip().splitlines()) == 1


def test_seqpool_debug_shows_the_traceback(classifier_without_model):
    quiet = explain("--classifier", str(classifier_without_model), "--label", "bogus", "cat")
    assert quiet.exit_code == 1 and not isinstance(quiet.exception, SeqpoolError)
    debug = explain("--classifier", str(classifier_without_model), "--label", "bogus", "cat",
                    env={"SEQPOOL_DEBUG": "1"})
    assert isinstance(debug.exception, SeqpoolError)  # re-raised for the traceback, not turned into a line
