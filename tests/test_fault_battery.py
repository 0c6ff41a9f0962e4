"""A fault battery tried as a new user would (issue 13): every command, odd values, odd paths.

Each case runs the real CLI (click's runner, in-process, on the tiny models of conftest.py) and
states the exit code it must give. A user error (exit 1) is exactly one line on stderr, never a
traceback, and leaves nothing behind in the output folder; a valid odd case (exit 0) does what
the help says. Python entry points are checked for the same: a SeqpoolError, never another type.
"""

from __future__ import annotations

import json
import os
import stat
import threading
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from seqpool.cli import as_flags, main
from seqpool.errors import SeqpoolError

TEXTS = "a good film\na boring movie\n"


def labelled_jsonl(rows: int = 24) -> str:
    return "".join(json.dumps({"text": f"{'good fun' if i % 2 else 'bad dull'} film {i}", "label": i % 2}) + "\n"
                   for i in range(rows))


@pytest.fixture()
def workdir(tmp_path: Path) -> Path:
    """Inputs in the test folder; outputs go to ``out/``, which a failing run must leave empty."""
    (tmp_path / "texts.txt").write_text(TEXTS, encoding="utf-8")
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    (tmp_path / "bad.txt").write_bytes(b"fine\n\xff\xfe broken\n")
    (tmp_path / "bom.txt").write_bytes("\ufeffa good film\na boring movie\n".encode())
    (tmp_path / "crlf.txt").write_bytes(b"a good film\r\na boring movie\r\n")
    (tmp_path / "data.jsonl").write_text(labelled_jsonl(), encoding="utf-8")
    (tmp_path / "bad.jsonl").write_bytes(b'{"text": "a", "label": 0}\n{"text": "\xff", "label": 1}\n')
    (tmp_path / "deep.jsonl").write_text("[" * 100_000 + "\n", encoding="utf-8")
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "empty_model").mkdir()
    (tmp_path / "not_a_model.txt").write_text("x", encoding="utf-8")
    (tmp_path / "out").mkdir()
    return tmp_path


def run(args: list[str]):
    return CliRunner().invoke(main, args)


def assert_one_line_error(result, must_say: str) -> None:
    """Exit 1 and one line; or click's own check of an option's type (exit 2: usage, then one Error line)."""
    assert result.exit_code in (1, 2), (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    if result.exit_code == 2:
        assert lines[0].startswith("Usage:") and lines[-1].startswith("Error:"), result.stderr
        lines = lines[-1:]
    assert len(lines) == 1, result.stderr
    assert must_say.lower() in lines[0].lower(), lines[0]


# (name, argv with {w} = work folder and {m} = tiny model, substring of the one error line)
EMBED_ERRORS = [
    ("batch size 0", ["embed", "{w}/texts.txt", "-o", "{w}/out/e.npy", "--batch-size", "0"], "--batch-size"),
    ("chunk size 0", ["embed", "{w}/texts.txt", "-o", "{w}/out/e.npy", "--chunk-size", "0"], "--chunk-size"),
    ("max length 0", ["embed", "{w}/texts.txt", "-o", "{w}/out/e.npy", "--max-length", "0"], "--max-length"),
    ("threads 0", ["embed", "{w}/texts.txt", "-o", "{w}/out/e.npy", "--threads", "0"], "threads"),
    ("unknown dtype", ["embed", "{w}/texts.txt", "-o", "{w}/out/e.npy", "--dtype", "fp8"], "--dtype"),
    ("unknown device", ["embed", "{w}/texts.txt", "-o", "{w}/out/e.npy", "--model", "{m}", "--device", "gpu0"],
     "device"),
    ("layer not a number", ["embed", "{w}/texts.txt", "-o", "{w}/out/e.npy", "--layer", "x"], "--layer"),
    ("layer out of range", ["embed", "{w}/texts.txt", "-o", "{w}/out/e.npy", "--model", "{m}", "--layer", "99"],
     "layer"),
    ("unknown strategy", ["embed", "{w}/texts.txt", "-o", "{w}/out/e.npy", "--strategy", "bogus"], "bogus"),
    ("unknown output format", ["embed", "{w}/texts.txt", "-o", "{w}/out/e.npy", "--format", "xls"], "xls"),
    ("unknown input format", ["embed", "{w}/texts.txt", "-o", "{w}/out/e.npy", "--input-format", "xls"], "xls"),
    ("text field on txt", ["embed", "{w}/texts.txt", "-o", "{w}/out/e.npy", "--text-field", "review"],
     "--text-field"),
    ("missing input", ["embed", "{w}/nope.txt", "-o", "{w}/out/e.npy"], "not found"),
    ("missing input with a field", ["embed", "{w}/nope.txt", "--text-field", "t", "-o", "{w}/out/e.npy"],
     "not found"),
    ("input is a folder", ["embed", "{w}/a_dir", "-o", "{w}/out/e.npy"], "a_dir"),
    ("invalid utf-8", ["embed", "{w}/bad.txt", "-o", "{w}/out/e.npy", "--model", "{m}"], "line 2"),
    ("output is a folder", ["embed", "{w}/texts.txt", "-o", "{w}/a_dir"], "a_dir"),
    ("output folder missing", ["embed", "{w}/texts.txt", "-o", "{w}/no/such/e.npy"], "no/such"),
    ("model folder missing", ["embed", "{w}/texts.txt", "-o", "{w}/out/e.npy", "--model", "{w}/no_model"],
     "no_model"),
    ("model folder empty", ["embed", "{w}/texts.txt", "-o", "{w}/out/e.npy", "--model", "{w}/empty_model"],
     "empty_model"),
    ("model is a file", ["embed", "{w}/texts.txt", "-o", "{w}/out/e.npy", "--model", "{w}/not_a_model.txt"],
     "not_a_model.txt"),
    ("resume with nothing to resume", ["embed", "{w}/texts.txt", "-o", "{w}/out/e.npy", "--model", "{m}",
                                       "--resume", "--chunk-size", "1"], None),
]

EVALUATE_ERRORS = [
    ("one fold", ["evaluate", "--train", "{w}/data.jsonl", "--folds", "1"], "--folds"),
    ("split of a local file", ["evaluate", "--train", "{w}/data.jsonl", "--split", "validation"], "--split"),
    ("zero repeats", ["evaluate", "--train", "{w}/data.jsonl", "--repeats", "0"], "--repeats"),
    ("threads 0", ["evaluate", "--train", "{w}/data.jsonl", "--threads", "0"], "threads"),
    ("unknown strategy", ["evaluate", "--train", "{w}/data.jsonl", "--strategies", "mean,bogus"], "bogus"),
    ("missing train file", ["evaluate", "--train", "{w}/nope.jsonl"], "not found"),
    ("missing train txt file", ["evaluate", "--train", "{w}/nope.txt"], "not found"),
    ("train is a folder", ["evaluate", "--train", "{w}/a_dir"], "a_dir"),
    ("empty train file", ["evaluate", "--train", "{w}/empty.txt", "--input-format", "jsonl"], "empty"),
    ("invalid utf-8", ["evaluate", "--train", "{w}/bad.jsonl"], "line 2"),
    ("deeply nested json", ["evaluate", "--train", "{w}/deep.jsonl"], "line 1"),
    ("json output is a folder", ["evaluate", "--train", "{w}/data.jsonl", "--json", "{w}/a_dir"], "a_dir"),
    ("plot format unknown", ["evaluate", "--train", "{w}/data.jsonl", "--plot", "{w}/out/p.xyz"], "plot"),
    ("model folder missing", ["evaluate", "--train", "{w}/data.jsonl", "--model", "{w}/no_model", "--no-cache"],
     "no_model"),
]


def _args(args: list[str], workdir: Path, model: Path) -> list[str]:
    return [arg.format(w=workdir, m=model) for arg in args]


@pytest.mark.parametrize("name, args, says", EMBED_ERRORS + EVALUATE_ERRORS,
                         ids=[case[0] for case in EMBED_ERRORS + EVALUATE_ERRORS])
def test_user_errors_are_one_line_and_leave_no_output(workdir, tiny_bert_dir, name, args, says):
    before = {p.name: p.stat().st_mtime_ns for p in workdir.iterdir()}
    result = run(_args(args, workdir, tiny_bert_dir))
    if says is None:  # a valid odd case: exit 0
        assert result.exit_code == 0, (result.output, result.exception)
        return
    assert_one_line_error(result, says)
    assert list((workdir / "out").iterdir()) == [], "a failed run left files behind"
    assert {p.name: p.stat().st_mtime_ns for p in workdir.iterdir() if p.name != "out"} == \
        {k: v for k, v in before.items() if k != "out"}, "a failed run changed the inputs"


@pytest.mark.parametrize("name, content, rows", [("empty.txt", None, 0), ("bom.txt", None, 2),
                                                 ("crlf.txt", None, 2)])
def test_odd_but_valid_inputs_embed_row_aligned(workdir, tiny_bert_dir, name, content, rows):
    out = workdir / "out" / "e.npy"
    result = run(["embed", str(workdir / name), "-o", str(out), "--model", str(tiny_bert_dir), "-q"])
    assert result.exit_code == 0, result.output
    assert np.load(out).shape[0] == rows


def test_bom_and_crlf_are_not_part_of_the_text(workdir, tiny_bert_dir):
    vectors = {}
    for name in ("texts.txt", "bom.txt", "crlf.txt"):
        out = workdir / "out" / f"{name}.npy"
        assert run(["embed", str(workdir / name), "-o", str(out), "--model", str(tiny_bert_dir), "-q"]).exit_code == 0
        vectors[name] = np.load(out)
    np.testing.assert_array_equal(vectors["bom.txt"], vectors["texts.txt"])
    np.testing.assert_array_equal(vectors["crlf.txt"], vectors["texts.txt"])


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_fifo_input_with_data_is_read_once(workdir, tiny_bert_dir):
    fifo = workdir / "in.fifo"
    os.mkfifo(fifo)

    def feed() -> None:
        with open(fifo, "w", encoding="utf-8") as handle:
            handle.write(TEXTS * 3)

    writer = threading.Thread(target=feed, daemon=True)
    writer.start()
    out = workdir / "out" / "e.npy"
    result = run(["embed", str(fifo), "-o", str(out), "--model", str(tiny_bert_dir), "-q"])
    writer.join(timeout=30)
    assert result.exit_code == 0, result.output
    assert np.load(out).shape[0] == 6


def test_output_to_dev_null_streams_and_keeps_the_device(workdir, tiny_bert_dir):
    before = os.stat("/dev/null")
    result = run(["embed", str(workdir / "texts.txt"), "-o", "/dev/null", "--format", "npy", "--model",
                  str(tiny_bert_dir), "-q"])
    assert result.exit_code == 0, result.output
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and (after.st_ino, after.st_rdev) == (before.st_ino, before.st_rdev)


def test_output_through_a_symlink_keeps_the_link(workdir, tiny_bert_dir):
    target = workdir / "out" / "real.npy"
    target.write_bytes(b"old")
    link = workdir / "link.npy"
    link.symlink_to(target)
    result = run(["embed", str(workdir / "texts.txt"), "-o", str(link), "--model", str(tiny_bert_dir), "-q"])
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and np.load(target).shape[0] == 2


def test_explain_errors_are_one_line(workdir, tiny_bert_dir):
    from seqpool.classifier import PooledClassifier

    classifier = PooledClassifier("mean", 32, 2, labels=["neg", "pos"])
    classifier.encoder_info = {"model": str(tiny_bert_dir), "layer": -1}
    saved = workdir / "clf"
    classifier.save_pretrained(saved)
    broken = workdir / "broken_clf"
    broken.mkdir()
    (broken / "config.json").write_text("{}", encoding="utf-8")
    cases: list[tuple[list[str], str]] = [
        (["--classifier", str(saved), "--label", "bogus", "a text"], "bogus"),
        (["--classifier", str(saved), "--label", "7", "a text"], "7"),
        (["--classifier", str(saved), "--png", str(workdir / "out" / "map.jpg"), "a text"], "--png"),
        (["--classifier", str(saved), "--input", str(workdir / "bad.txt")], "line 2"),
        (["--classifier", str(saved), "--input", str(workdir / "texts.txt"), "--text-field", "review"],
         "--text-field"),
        (["--classifier", str(saved), "--input", str(workdir / "nope.txt")], "not found"),
        (["--classifier", str(broken), "a text"], "broken_clf"),
        (["--classifier", str(workdir / "empty_model"), "a text"], "empty_model"),
    ]
    for args, says in cases:
        assert_one_line_error(run(["explain", *args]), says)
        assert list((workdir / "out").iterdir()) == []


def test_strategies_takes_no_arguments():
    result = run(["strategies", "extra"])
    assert result.exit_code == 2 and "Traceback" not in result.output


# -- the one parameter -> flag mapping every command uses --------------------------------------

FLAGS = {"text_field": "--text-field", "input_format": "--input-format", "output": "-o/--output",
         "resume": "--resume", "folds": "--folds", "tune=False": "--no-tune"}


@pytest.mark.parametrize("message, expected", [
    ("no field text_field='review' here", "no field --text-field 'review' here"),
    ("set input_format if it is not", "set --input-format if it is not"),
    ("set `input_format` if it is not", "set --input-format if it is not"),
    ("choose another output=...", "choose another -o/--output"),
    ("run again with resume=True", "run again with --resume"),
    ("the output is in use", "the output is in use"),  # an English word stays a word
    ("no column 'text_field'", "no column 'text_field'"),  # quoted names are data, not parameters
    ("or set tune=False; 4-fold folds", "or set --no-tune; 4-fold folds"),
])
def test_as_flags_maps_every_spelling_of_a_parameter(message, expected):
    assert str(as_flags(SeqpoolError(message), FLAGS)) == expected


def test_as_flags_maps_bare_words_the_error_lists():
    from seqpool.evaluation.settings import parameter_error

    assert str(as_flags(parameter_error("folds must be at least 2", "folds"), FLAGS)) == "--folds must be at least 2"


def test_each_command_maps_through_the_one_mechanism():
    from seqpool.cli import embed, evaluate, explain

    error = SeqpoolError("text_field='x' and `input_format`")
    for module in (embed, evaluate, explain):
        assert str(module.as_flags(error)) == "--text-field 'x' and --input-format", module.__name__


# -- Python entry points: user errors are SeqpoolError ------------------------------------------

def _pooler_bad_strategy() -> None:
    from seqpool.pooling.pooler import Pooler

    Pooler("bogus", 8)


def _pool_bad_mask() -> None:
    from seqpool.pooling import pool

    pool(torch.randn(2, 3, 4), torch.ones(2, 5), "mean")


def _pool_float_mask() -> None:
    from seqpool.pooling import pool

    pool(torch.randn(2, 3, 4), torch.full((2, 3), 0.5), "mean")


def _pool_1d_states() -> None:
    from seqpool.pooling import pool

    pool(torch.randn(4), None, "mean")


def _token_states_widths_differ() -> None:
    from seqpool.states import TokenStates

    TokenStates.from_batches([([0, 1], torch.randn(2, 3, 4), torch.ones(2, 3)),
                              ([2], torch.randn(1, 3, 5), torch.ones(1, 3))])


def _token_states_mask_shape() -> None:
    from seqpool.states import TokenStates

    TokenStates.from_batches([([0, 1], torch.randn(2, 3, 4), torch.ones(2, 5))])


def _token_states_rows_count() -> None:
    from seqpool.states import TokenStates

    TokenStates.from_batches([([0], torch.randn(2, 3, 4), torch.ones(2, 3))])


@pytest.mark.parametrize("call", [_pooler_bad_strategy, _pool_bad_mask, _pool_float_mask, _pool_1d_states,
                                  _token_states_widths_differ, _token_states_mask_shape, _token_states_rows_count],
                         ids=lambda call: call.__name__.strip("_"))
def test_python_entry_points_raise_seqpool_errors(call: Callable[[], None]):
    with pytest.raises(SeqpoolError):
        call()


def test_pipeline_user_errors_are_seqpool_errors(tiny_bert_dir):
    from transformers import pipeline

    import seqpool.pipeline  # noqa: F401  (registers the task)

    embed = pipeline(seqpool.pipeline.TASK, model=str(tiny_bert_dir), device="cpu")
    assert embed([]) == []
    with pytest.raises(SeqpoolError, match="bogus"):
        embed(["a text"], pooling="bogus")
    with pytest.raises(SeqpoolError, match="unexpected pipeline argument"):
        embed(["a text"], strategy="mean")


def test_load_embeddings_of_a_missing_file_is_a_seqpool_error(tmp_path):
    from seqpool.io import load_embeddings

    with pytest.raises(SeqpoolError, match="none.npy"):
        load_embeddings(tmp_path / "none.npy")


def test_token_states_indices_and_files_are_checked(tmp_path):
    from seqpool.states import TokenStates

    states = TokenStates.from_batches([([0, 1], torch.randn(2, 3, 4), torch.ones(2, 3))])
    for bad, says in (([5], "index 5 is out of range"), ([-1], "index -1"), ([0.5], "integers")):
        with pytest.raises(SeqpoolError, match=says):
            states.subset(bad)
        with pytest.raises(SeqpoolError, match=says):
            states.padded(bad)
    assert len(states.subset([])) == 0 and len(states.subset([1, 1, 0])) == 3
    with pytest.raises(SeqpoolError, match="not found"):
        TokenStates.load(tmp_path / "none.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"junk")
    with pytest.raises(SeqpoolError, match="not a token-states file"):
        TokenStates.load(tmp_path / "junk.safetensors")


def test_classifier_refuses_states_of_another_width():
    from seqpool.classifier import PooledClassifier
    from seqpool.states import TokenStates

    states = TokenStates.from_batches([([0, 1], torch.randn(2, 3, 8), torch.ones(2, 3))])
    with pytest.raises(SeqpoolError, match="dim must be"):
        PooledClassifier("mean", 0, 2)
    classifier = PooledClassifier("mean", 4, 2)
    with pytest.raises(SeqpoolError, match="takes 4-dim token states, got 8"):
        classifier.fit(states, np.array([0, 1]))
    with pytest.raises(SeqpoolError, match="takes 4-dim token states, got 8"):
        classifier.predict(states)
    with pytest.raises(SeqpoolError, match="index 2 is out of range"):
        PooledClassifier("mean", 8, 2).predict(states, [2])


def test_encoder_texts_that_are_not_a_list(tiny_bert_encoder):
    for texts in (None, 3):
        with pytest.raises(SeqpoolError, match="texts must be a list of strings"):
            tiny_bert_encoder.encode(texts)
