"""``seqpool embed`` never touches what the user owns, and nothing wrong comes back silently.

The one rule (:mod:`seqpool.io.ownership`): a run writes the outputs named and its own working
files -- the lock, ``OUT.partial/``, the metadata beside an npy / jsonl output -- each created
exclusively with a marker naming the run; every path is checked against every input before any
work; what a resumed run reads back is verified. Each case below is one way a user's file met a
name seqpool uses; the harness at the end snapshots the folder (``workspace_snapshot``) around
each run of a matrix of such collisions and asserts that only the declared outputs changed.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from seqpool.cli import main
from seqpool.embed import embed_corpus, embed_file, lock_path, output_lock
from seqpool.encoder import Encoder
from seqpool.errors import SeqpoolError
from seqpool.io import TextSource, load_embeddings
from seqpool.io.atomic import atomic_path
from seqpool.io.ownership import FILE_MARKER, create_working_file, owned_by_seqpool, safe_file_name
from seqpool.io.writers import EmbeddingSpool, output_paths

from tests.workspace_snapshot import changed, snapshot

TEXTS = ["the cat sat on the mat", "hello world", "a very good film", "not a bad movie", "xyz"]
NO_MODEL = "/nonexistent/model/folder"  # loading it would fail: an error about anything else came first


def run(*args, input=None):
    return CliRunner().invoke(main, ["embed", *map(str, args)], input=input)


def ok(*args):
    result = run(*args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def refused(result, *phrases: str) -> str:
    """Exit 1, exactly one line on stderr, no traceback, saying each of ``phrases``."""
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]
    return lines[0]


@pytest.fixture
def work(tmp_path) -> Path:
    (tmp_path / "c.txt").write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    return tmp_path


def interrupt_on_call(monkeypatch, call: int) -> None:
    """Ctrl-C during the ``call``-th ``Encoder.encode`` (chunks before it are checkpointed)."""
    real_encode, calls = Encoder.encode, []

    def encode(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == call:
            raise KeyboardInterrupt
        return real_encode(self, *args, **kwargs)

    monkeypatch.setattr(Encoder, "encode", encode)


def interrupted(work: Path, monkeypatch, *args) -> Path:
    """An embed of ``c.txt`` into ``e.npy``, 2 rows a chunk, stopped after 2 chunks; its spool folder."""
    interrupt_on_call(monkeypatch, 3)
    assert run(work / "c.txt", "-o", work / "e.npy", "--chunk-size", "2", *args).exit_code == 130
    monkeypatch.undo()
    return work / "e.npy.partial"


# -- 1. OUT.lock ---------------------------------------------------------------------------------


def test_a_lock_named_like_the_input_is_refused_and_the_input_kept(work, tiny_bert_dir):
    # head -5 c.txt > l.npy.lock; seqpool embed l.npy.lock -o l.npy
    (work / "l.npy.lock").write_bytes((work / "c.txt").read_bytes())
    before = snapshot(work)
    refused(run(work / "l.npy.lock", "-o", work / "l.npy", "--model", tiny_bert_dir), "l.npy.lock", "input")
    assert snapshot(work) == before


def test_a_lock_file_seqpool_did_not_make_is_refused_before_any_work(work):
    (work / "e.npy.lock").write_text("my notes\n", encoding="utf-8")
    before = snapshot(work)
    refused(run(work / "c.txt", "-o", work / "e.npy", "--model", NO_MODEL), "e.npy.lock", "did not make")
    assert snapshot(work) == before


def test_the_lock_is_marked_and_a_dead_runs_lock_is_taken_over(work, tiny_bert_dir):
    out = work / "e.npy"
    with output_lock(out):
        held = lock_path(out).read_text(encoding="utf-8")
        assert held.startswith(FILE_MARKER) and f"pid={os.getpid()}" in held
    assert not lock_path(out).exists()
    # a run that died left its (marked) lock behind; nobody holds its flock any more
    lock_path(out).write_text(f"{FILE_MARKER} run=dead pid=999999: the lock of e.npy\n", encoding="utf-8")
    with output_lock(out):
        held = lock_path(out).read_text(encoding="utf-8")
        assert "run=dead" not in held and f"pid={os.getpid()}" in held
    assert not lock_path(out).exists()
    lock_path(out).write_text(f"{FILE_MARKER} run=dead pid=999999: the lock of e.npy\n", encoding="utf-8")
    ok(work / "c.txt", "-o", out, "--model", tiny_bert_dir)
    assert out.exists() and not lock_path(out).exists()


def test_working_files_are_created_exclusively_and_marked(work):
    mine = work / "mine.txt"
    mine.write_text("mine\n", encoding="utf-8")
    with pytest.raises(SeqpoolError, match="exists"):
        with atomic_path(mine, exclusive=True) as handle:
            handle.write("seqpool's")
    with pytest.raises(FileExistsError):
        create_working_file(mine, "run-1", "a test file")
    assert mine.read_text(encoding="utf-8") == "mine\n" and not owned_by_seqpool(mine)
    os.close(create_working_file(work / "made", "run-1", "a test file"))
    assert (work / "made").read_text(encoding="utf-8").startswith(f"{FILE_MARKER} run=run-1 pid=")
    assert owned_by_seqpool(work / "made")
    assert sorted(p.name for p in work.iterdir()) == ["c.txt", "made", "mine.txt"]  # no temporary file left


# -- 2. OUT.partial/ -----------------------------------------------------------------------------


def test_a_partial_folder_seqpool_did_not_make_is_never_resumed_or_deleted(work, tiny_bert_dir):
    (work / "u.npy.partial").mkdir()
    (work / "u.npy.partial" / "notes.md").write_text("my notes\n", encoding="utf-8")
    before = snapshot(work)
    first = refused(run(work / "c.txt", "-o", work / "u.npy", "--model", tiny_bert_dir), "u.npy.partial",
                    "did not make")
    assert "--resume" not in first  # the advice is only for a folder seqpool made
    refused(run(work / "c.txt", "-o", work / "u.npy", "--model", tiny_bert_dir, "--resume"), "u.npy.partial",
            "did not make")
    assert snapshot(work) == before
    with pytest.raises(SeqpoolError, match="did not make"):  # the library refuses it too
        EmbeddingSpool(work / "u.npy", "npy", ["mean"], 3, {}, resume=True)
    assert snapshot(work) == before


def test_a_marked_partial_folder_still_gets_the_resume_advice(work, tiny_bert_dir, monkeypatch):
    interrupted(work, monkeypatch, "--model", tiny_bert_dir)
    refused(run(work / "c.txt", "-o", work / "e.npy", "--chunk-size", "2", "--model", tiny_bert_dir),
            "add --resume")
    ok(work / "c.txt", "-o", work / "e.npy", "--chunk-size", "2", "--model", tiny_bert_dir, "--resume")
    assert not (work / "e.npy.partial").exists()


# -- 3. the metadata file beside npy / jsonl -----------------------------------------------------


def test_the_metadata_file_is_never_written_over_an_input(work, tiny_bert_dir):
    (work / "e.npy.json").write_bytes((work / "c.txt").read_bytes())  # the corpus, named like e.npy's metadata
    (work / "f.npy.json").write_text(json.dumps([{"text": t} for t in TEXTS]), encoding="utf-8")
    before = snapshot(work)
    refused(run(work / "e.npy.json", "--input-format", "txt", "-o", work / "e.npy", "--precision", "int8",
                "--model", tiny_bert_dir), "e.npy.json", "input")
    refused(run(work / "c.txt", "-o", work / "f.npy", "--precision", "int8", "--calibration", work / "f.npy.json",
                "--model", tiny_bert_dir), "f.npy.json", "input")
    assert snapshot(work) == before


def test_a_metadata_file_seqpool_did_not_write_is_never_replaced(work, tiny_bert_dir):
    (work / "e.npy.json").write_text('{"mine": 1}\n', encoding="utf-8")
    before = snapshot(work)
    refused(run(work / "c.txt", "-o", work / "e.npy", "--precision", "int8", "--model", tiny_bert_dir),
            "e.npy.json", "did not make")
    (work / "e.jsonl.json").symlink_to("c.txt")  # a link is never seqpool's either
    before = snapshot(work)
    refused(run(work / "c.txt", "-o", work / "e.jsonl", "--precision", "binary", "--model", tiny_bert_dir),
            "e.jsonl.json")
    assert snapshot(work) == before


def test_metadata_of_an_earlier_run_never_sits_beside_new_rows(work, tiny_bert_dir):
    out = work / "e.npy"
    ok(work / "c.txt", "-o", out, "--precision", "int8", "--model", tiny_bert_dir)
    assert (work / "e.npy.json").exists()
    ok(work / "c.txt", "-o", out, "--precision", "uint8", "--model", tiny_bert_dir)  # seqpool's own: replaced
    ok(work / "c.txt", "-o", out, "--model", tiny_bert_dir)  # float32: the old int8 metadata must go
    assert not (work / "e.npy.json").exists()
    np.testing.assert_array_equal(load_embeddings(out), Encoder(tiny_bert_dir).encode(TEXTS)["mean"])


def test_a_fifo_output_refuses_an_option_whose_metadata_needs_a_file_beside_it(work, tiny_bert_dir):
    fifo = work / "myfifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # a reader, so a write into the FIFO cannot block
    try:
        before = snapshot(work)
        refused(run(work / "c.txt", "-o", fifo, "--format", "npy", "--precision", "int8", "--model", tiny_bert_dir),
                "device or FIFO", "parquet or safetensors")
        assert snapshot(work) == before  # no myfifo.json beside it
    finally:
        os.close(reader)


def test_dev_null_refuses_an_option_whose_metadata_needs_a_file_beside_it(work, tiny_bert_dir):
    refused(run(work / "c.txt", "-o", "/dev/null", "--format", "jsonl", "--precision", "uint8",
                "--model", tiny_bert_dir), "device or FIFO")
    assert not os.path.exists("/dev/null.json")
    ok(work / "c.txt", "-o", "/dev/null", "--format", "safetensors", "--precision", "uint8", "--model", tiny_bert_dir)


# -- 4. what a resumed run reads back ------------------------------------------------------------


def _spool_data_offset(path: Path) -> int:
    with open(path, "rb") as handle:
        np.lib.format.read_magic(handle)
        np.lib.format.read_array_header_1_0(handle)
        return handle.tell()


@pytest.mark.parametrize("value", [np.nan, 0.25])
def test_rows_changed_in_the_spool_are_refused_on_resume(work, tiny_bert_dir, monkeypatch, value):
    spool = interrupted(work, monkeypatch, "--model", tiny_bert_dir) / "mean.npy"
    with open(spool, "r+b") as handle:
        handle.seek(_spool_data_offset(spool) + 4 * 33)  # row 1, column 1
        handle.write(np.float32(value).tobytes())
    before = snapshot(work)
    line = refused(run(work / "c.txt", "-o", work / "e.npy", "--chunk-size", "2", "--model", tiny_bert_dir,
                       "--resume"), "mean.npy", "changed since")
    assert ("NaN" in line) == bool(np.isnan(value))
    assert snapshot(work) == before


@pytest.mark.parametrize("edit,key", [
    (lambda p: p.pop("rows_done"), "'rows_done' is missing"),
    (lambda p: p.update(rows_done="2"), "'rows_done' should be a whole number"),
    (lambda p: p.update(rows_done=-2), "'rows_done' is negative"),
    (lambda p: p.update(settings=[]), "'settings' should be a JSON object"),
    (lambda p: p.pop("input_digest"), "'input_digest' is missing"),
    (lambda p: p.update(rows_sha256={"mean": 3}), "'rows_sha256'"),
])
def test_a_hand_edited_checkpoint_is_named_in_one_line(work, tiny_bert_dir, monkeypatch, edit, key):
    progress = interrupted(work, monkeypatch, "--model", tiny_bert_dir) / "progress.json"
    record = json.loads(progress.read_text(encoding="utf-8"))
    edit(record)
    progress.write_text(json.dumps(record), encoding="utf-8")
    before = snapshot(work)
    refused(run(work / "c.txt", "-o", work / "e.npy", "--chunk-size", "2", "--model", tiny_bert_dir, "--resume"),
            "progress.json", key)
    assert snapshot(work) == before


# -- 5. options typed strictly --------------------------------------------------------------------


@pytest.mark.parametrize("value", ["no", "False", 0, 1])
def test_normalize_must_be_a_bool_or_none(work, tiny_bert_encoder, value):
    with pytest.raises(SeqpoolError, match="`normalize` must be True, False or None"):
        tiny_bert_encoder.encode(["a text"], normalize=value)
    with pytest.raises(SeqpoolError, match="`normalize` must be True, False or None"):
        tiny_bert_encoder.encode_chunks(["a text"], normalize=value)
    with pytest.raises(SeqpoolError, match="`normalize` must be True, False or None"):
        embed_corpus(tiny_bert_encoder, TextSource.open(work / "c.txt"), work / "e.npy", normalize=value,
                     progress=False)
    with pytest.raises(SeqpoolError, match="`normalize` must be True, False or None"):
        embed_file(work / "c.txt", work / "e.npy", model=NO_MODEL, normalize=value)
    assert sorted(p.name for p in work.iterdir()) == ["c.txt"]
    plain = tiny_bert_encoder.encode(["a text"], normalize=False)["mean"]
    np.testing.assert_array_equal(tiny_bert_encoder.encode(["a text"], normalize=np.False_)["mean"], plain)


def test_bytes_are_told_to_be_decoded(tiny_bert_encoder):
    with pytest.raises(SeqpoolError, match=r"got bytes; decode"):
        tiny_bert_encoder.encode(b"hello world")
    with pytest.raises(SeqpoolError, match=r"texts\[1\] is bytes, not str; decode"):
        tiny_bert_encoder.encode(["hello", b"world"])


# -- 6. messages that are true --------------------------------------------------------------------


def test_a_missing_calibration_file_is_called_the_calibration_file(work):
    line = refused(run(work / "c.txt", "-o", work / "e.npy", "--precision", "int8", "--calibration",
                       work / "nosuch.txt", "--model", NO_MODEL), "calibration file not found", "nosuch.txt")
    assert "input file" not in line


def test_resume_uses_the_stored_ranges_and_needs_no_calibration_file(work, tiny_bert_dir, monkeypatch):
    calibration = work / "calibration.txt"
    calibration.write_text("a good film\na bad film\nthe dog sat on the mat\n", encoding="utf-8")
    common = ["--model", tiny_bert_dir, "--chunk-size", "2", "--precision", "int8", "--calibration", calibration]
    ok(work / "c.txt", "-o", work / "reference.parquet", *common)
    interrupt_on_call(monkeypatch, 4)  # the calibration texts, then 2 chunks, then Ctrl-C
    assert run(work / "c.txt", "-o", work / "e.parquet", *common).exit_code == 130
    monkeypatch.undo()
    calibration.unlink()
    done = ok(work / "c.txt", "-o", work / "e.parquet", *common, "--resume")
    assert "resumed at row 4" in done.stderr
    assert (work / "e.parquet").read_bytes() == (work / "reference.parquet").read_bytes()


def test_file_names_made_from_a_long_expression_stay_short(work, tiny_bert_dir):
    expression = "+".join(["mean"] * 2000)
    before = snapshot(work)
    result = ok(work / "c.txt", "-o", work / "e.npy", "--strategy", f"{expression},max", "--model", tiny_bert_dir,
                "-q")
    assert result.stderr == ""
    made = changed(before, snapshot(work))
    assert len(made) == 2 and "e.max.npy" in made and all(len(name) < 120 for name in made)
    assert np.load(work / sorted(made - {"e.max.npy"})[0]).shape == (len(TEXTS), 2000 * 32)


def test_strategy_names_never_reach_outside_the_output_folder(work):
    out = work / "out" / "e.npy"
    names = ["mean", "../escape", "/abs", ".hidden", "mean+" * 100 + "max", "a b"]
    paths = output_paths(out, "npy", names)
    assert all(path.parent == out.parent for path in paths.values()) and len(set(paths.values())) == len(names)
    assert all(len(path.name) < 120 and not path.name.startswith(".") for path in paths.values())
    assert paths["mean"].name == "e.mean.npy" and safe_file_name("mean@1~-1+max") == "mean@1~-1+max"
    (work / "out").mkdir()
    before = snapshot(work)
    spool = EmbeddingSpool(work / "out" / "e.parquet", "parquet", ["../escape"], 3, {})
    spool.append({"../escape": np.ones((2, 3), np.float32)}, "digest")
    assert spool.spool_path("../escape").parent == spool.folder
    spool.finish()
    assert changed(before, snapshot(work)) == {"out/e.parquet"}


def test_the_summary_says_the_real_width_of_mean_std(work, tiny_bert_dir):
    result = ok(work / "c.txt", "-o", work / "e.npy", "--strategy", "mean_std", "--model", tiny_bert_dir)
    assert f"wrote {len(TEXTS)} x 64 embeddings" in result.stderr  # mean and std side by side: 2 x 32


# -- 7. the harness: only the declared outputs change ---------------------------------------------


def _json_texts(path: Path) -> None:
    path.write_text(json.dumps([{"text": t} for t in TEXTS]), encoding="utf-8")


def _notes_in(folder: str):
    def make(work: Path) -> None:
        (work / folder).mkdir()
        (work / folder / "notes.md").write_text("mine\n", encoding="utf-8")
    return make


# name, setup(work), argv (relative to the work folder), outputs it may change (None: refused, with the phrase)
COLLISIONS = [
    ("plain run", None, ["c.txt", "-o", "e.npy"], {"e.npy"}),
    ("several strategies", None, ["c.txt", "-o", "e.npy", "--strategy", "mean,max"], {"e.mean.npy", "e.max.npy"}),
    ("int8 with its metadata", None, ["c.txt", "-o", "e.npy", "--precision", "int8"], {"e.npy", "e.npy.json"}),
    ("output inside a folder", lambda w: (w / "sub").mkdir(), ["c.txt", "-o", "sub/e.npy"], {"sub/e.npy"}),
    ("output is the input", None, ["c.txt", "-o", "c.txt", "--format", "npy"], "would overwrite the input"),
    ("output is a hard link to the input", lambda w: os.link(w / "c.txt", w / "h.npy"), ["c.txt", "-o", "h.npy"],
     "would overwrite the input"),
    ("output is a symlink to the input", lambda w: os.symlink("c.txt", w / "s.npy"), ["c.txt", "-o", "s.npy"],
     "would overwrite the input"),
    ("output is the calibration file", lambda w: (w / "cal.npy").write_text("a\nb\n"),
     ["c.txt", "-o", "cal.npy", "--precision", "int8", "--calibration", "cal.npy"], "would overwrite the input"),
    ("OUT.lock is the input", lambda w: (w / "l.npy.lock").write_text("a\nb\n"), ["l.npy.lock", "-o", "l.npy"],
     "is the input"),
    ("OUT.lock is the user's", lambda w: (w / "e.npy.lock").write_text("mine\n"), ["c.txt", "-o", "e.npy"],
     "did not make"),
    ("OUT.lock is a symlink", lambda w: os.symlink("c.txt", w / "k.npy.lock"), ["c.txt", "-o", "k.npy"],
     "is the input"),
    ("OUT.partial holds user files", _notes_in("u.npy.partial"), ["c.txt", "-o", "u.npy"], "did not make"),
    ("OUT.partial holds user files, --resume", _notes_in("u.npy.partial"), ["c.txt", "-o", "u.npy", "--resume"],
     "did not make"),
    ("OUT.partial holds the input", _notes_in("v.npy.partial"), ["v.npy.partial/notes.md", "-o", "v.npy"],
     "is the input"),
    ("OUT.json is the input", lambda w: (w / "j.npy.json").write_text("a\nb\n"),
     ["j.npy.json", "--input-format", "txt", "-o", "j.npy", "--precision", "int8"], "is the input"),
    ("OUT.json is the calibration file", lambda w: _json_texts(w / "f.npy.json"),
     ["c.txt", "-o", "f.npy", "--precision", "int8", "--calibration", "f.npy.json"], "is the input"),
    ("OUT.json is the user's", lambda w: (w / "e.npy.json").write_text("{}"),
     ["c.txt", "-o", "e.npy", "--precision", "int8"], "did not make"),
    ("OUT.json of one of several strategies is the user's", lambda w: (w / "e.max.npy.json").write_text("{}"),
     ["c.txt", "-o", "e.npy", "--precision", "int8", "--strategy", "mean,max"], "did not make"),
]


@pytest.mark.parametrize("name,setup,argv,expected", COLLISIONS, ids=[case[0] for case in COLLISIONS])
def test_only_the_declared_outputs_change(work, tiny_bert_dir, monkeypatch, name, setup, argv, expected):
    if setup is not None:
        setup(work)
    monkeypatch.chdir(work)
    before = snapshot(work)
    result = run(*argv, "--model", tiny_bert_dir, "-q")
    after = snapshot(work)
    if isinstance(expected, str):
        refused(result, expected)
        assert changed(before, after) == set(), name
    else:
        assert result.exit_code == 0, (result.output, result.exception)
        assert changed(before, after) == expected, name
