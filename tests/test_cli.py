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


# -- flags come from each command's own options; aliases only where the library spells it otherwise --

import dataclasses  # noqa: E402
import inspect  # noqa: E402

import click  # noqa: E402

from seqpool.cli import as_flags, command_flags  # noqa: E402


def _library_parameters(*entry_points) -> set[str]:
    """Every parameter name the library functions (or dataclass fields) a command calls take."""
    names: set[str] = set()
    for entry in entry_points:
        if dataclasses.is_dataclass(entry):
            names |= {field.name for field in dataclasses.fields(entry)}
        else:
            names |= set(inspect.signature(entry).parameters)
    return names


def _aliased_commands():
    """(command, its aliases, the library entry points whose parameters its messages name)."""
    from seqpool.cli import embed, evaluate
    from seqpool.distributed import embed_files
    from seqpool.embed import embed_file
    from seqpool.evaluation import EvaluationSettings
    from seqpool.evaluation import evaluate as run_evaluation

    return [(embed.embed, embed.ALIASES, (embed_file, embed_files)),
            (evaluate.evaluate, evaluate.ALIASES, (EvaluationSettings, run_evaluation))]


def test_every_alias_names_a_real_library_parameter_and_a_real_option():
    for command, aliases, entry_points in _aliased_commands():
        parameters = _library_parameters(*entry_points)
        options = {param.name for param in command.params if isinstance(param, click.Option)}
        for spelling, option in aliases.items():
            assert spelling.partition("=")[0] in parameters, f"{command.name}: {spelling!r} is no library parameter"
            assert spelling not in options, f"{command.name}: {spelling!r} is an option's own name, not an alias"
            assert option in options, f"{command.name}: alias {spelling!r} -> {option!r}, no such option"


def test_flags_are_the_commands_own_options():
    from seqpool.cli import embed, evaluate, explain

    embed_flags = command_flags(embed.embed, embed.ALIASES)
    assert embed_flags["output"] == "-o/--output" and embed_flags["output_format"] == "--format"
    assert embed_flags["shard_rows"] == embed_flags["chunk_size"] == "--chunk-size"
    assert "label_field" not in embed_flags  # embed has no --label-field: no entry can claim it does
    evaluate_flags = command_flags(evaluate.evaluate, evaluate.ALIASES)
    assert evaluate_flags["json_path"] == "--json" and evaluate_flags["tune=False"] == "--no-tune"
    assert command_flags(explain.explain)["input_path"] == "--input"
    for command in (embed.embed, evaluate.evaluate, explain.explain):  # every option, nothing else
        options = [param for param in command.params if isinstance(param, click.Option)]
        assert set(command_flags(command)) == {param.name for param in options}


def test_a_new_option_is_mapped_and_an_alias_to_no_option_is_refused():
    @click.command()
    @click.option("--text-column", "text_field")
    @click.option("-n", "--rows")
    @click.argument("path")
    def probe(text_field, rows, path):
        """A command with two options and an argument."""

    assert command_flags(probe) == {"text_field": "--text-column", "rows": "-n/--rows"}
    error = as_flags(SeqpoolError("set text_field='x' or `rows`"), command_flags(probe, {"limit": "rows"}))
    assert str(error) == "set --text-column 'x' or -n/--rows"
    with pytest.raises(KeyError, match="label_field"):
        command_flags(probe, {"label_field": "label"})
