"""seqpool.embed: every check before the model loads, the output lock, streams read once."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from click.testing import CliRunner

from seqpool.cli import main
from seqpool.embed import embed_corpus, embed_file, lock_path, output_lock
from seqpool.errors import SeqpoolError
from seqpool.io import TextSource
from seqpool.io.ownership import FILE_MARKER, make_working_folder

LINES = ["one", "", "two", "three"]
NO_MODEL = "/nonexistent/model/folder"  # loading it would fail: an error about anything else came first


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("option,message", [
    ({"chunk_size": 0}, "`chunk_size` must be a whole number of at least 1, got 0"),
    ({"batch_size": 0}, "`batch_size` must be a whole number of at least 1"),
    ({"max_length": 0}, "`max_length` must be a whole number of at least 1"),
    ({"threads": 0}, "`threads` must be at least 1"),
    ({"dtype": "fp8"}, "unknown `dtype` 'fp8'"),
    ({"strategies": ["median"]}, "unknown pooling strategy 'median'"),
    ({"text_field": "body"}, "text_field='body' needs a structured input"),
    ({"output_format": "csv"}, "unknown output format 'csv'"),
])
def test_options_are_checked_before_the_model_loads(corpus, option, message):
    with pytest.raises(SeqpoolError) as caught:
        embed_file(corpus, corpus.with_suffix(".npy"), model=NO_MODEL, **option)
    assert message in str(caught.value)


def test_output_paths_are_checked_before_the_model_loads(corpus, tmp_path):
    (tmp_path / "e.max.npy").mkdir()  # collides with the second strategy's file
    with pytest.raises(SeqpoolError, match=r"e\.max\.npy: it is a directory"):
        embed_file(corpus, tmp_path / "e.npy", model=NO_MODEL, strategies=["mean", "max"])
    with pytest.raises(SeqpoolError, match=r"extension '\.json'.*npy, parquet, jsonl, safetensors"):
        embed_file(corpus, tmp_path / "x.json", model=NO_MODEL)
    with pytest.raises(SeqpoolError, match=r"\.npy extension but output_format='jsonl'"):
        embed_file(corpus, tmp_path / "x.npy", model=NO_MODEL, output_format="jsonl")
    (tmp_path / "f.npy.partial").write_text("not a folder")
    with pytest.raises(SeqpoolError, match=r"f\.npy\.partial exists and is not a folder"):
        embed_file(corpus, tmp_path / "f.npy", model=NO_MODEL)
    make_working_folder(tmp_path / "g.npy.partial", "an-earlier-run", "rows")  # an interrupted run's (marked)
    with pytest.raises(SeqpoolError, match="interrupted run .* add --resume"):
        embed_file(corpus, tmp_path / "g.npy", model=NO_MODEL)
    assert not (tmp_path / "x.json").exists() and not (tmp_path / "g.npy.lock").exists()


def test_a_stream_input_needs_an_output_name(tmp_path):
    os.mkfifo(tmp_path / "fifo")
    with pytest.raises(SeqpoolError, match=r"reading from the stream .*fifo.*: name the output file with `output`"):
        embed_file(tmp_path / "fifo", model=NO_MODEL)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo"]


def test_cli_names_flags_for_library_parameters(corpus):
    for args, flag in ((["--chunk-size", "0"], "--chunk-size must be"), (["--max-length", "0"], "--max-length must"),
                       (["--text-field", "body"], "--text-field 'body' needs"), (["--dtype", "x"], "--dtype")):
        result = CliRunner().invoke(main, ["embed", str(corpus), "--model", NO_MODEL, *args])
        assert result.exit_code == 1 and flag in result.stderr, result.stderr
        assert "`" not in result.stderr


def test_a_second_run_on_a_locked_output_is_told_who_holds_it(corpus, tmp_path):
    out = tmp_path / "e.npy"
    holder = subprocess.Popen([sys.executable, "-c", (
        "import sys, time; from seqpool.embed import output_lock\n"
        f"with output_lock({str(out)!r}):\n    print('locked', flush=True); time.sleep(60)")],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(SeqpoolError, match=rf"e\.npy is in use by another run \(pid {holder.pid}\)"):
            embed_file(corpus, out, model=NO_MODEL)
    finally:
        holder.kill()
        holder.wait()
    # The holder died without cleaning up: its lock file stays, but the lock is free to take over.
    assert lock_path(out).exists()
    with output_lock(out):
        held = lock_path(out).read_text()
        assert held.startswith(FILE_MARKER) and f"pid={os.getpid()}" in held
    assert not lock_path(out).exists()


def test_a_lock_is_exclusive_within_one_process_too(tmp_path):
    with output_lock(tmp_path / "e.npy"):
        with pytest.raises(SeqpoolError, match="in use by another run"):
            with output_lock(tmp_path / "e.npy"):
                pass


def test_a_pipe_is_embedded_once_with_every_row(tmp_path, tiny_bert_encoder):
    lines = [f"text number {i}" for i in range(50)]
    read_end, write_end = os.pipe()

    def feed():
        with os.fdopen(write_end, "wb") as handle:
            handle.write("".join(line + "\n" for line in lines).encode())

    threading.Thread(target=feed, daemon=True).start()
    try:
        result = embed_corpus(tiny_bert_encoder, TextSource.open(f"/dev/fd/{read_end}"), tmp_path / "e.npy",
                              chunk_size=16, progress=False)
    finally:
        os.close(read_end)
    rows = np.load(result.paths[0])
    assert rows.shape == (len(lines), tiny_bert_encoder.hidden_size)
    np.testing.assert_allclose(rows, tiny_bert_encoder.encode(lines)["mean"], atol=1e-5)


def test_embed_file_runs_end_to_end_and_restores_threads(corpus, tmp_path, tiny_bert_dir, tiny_bert_encoder):
    import torch

    before = torch.get_num_threads()
    result = embed_file(corpus, tmp_path / "e.jsonl", model=tiny_bert_dir, strategies=["mean", "max"], threads=1,
                        progress=False)
    assert torch.get_num_threads() == before
    assert result.rows == len(LINES) and result.paths == [tmp_path / "e.jsonl"]
    assert not lock_path(tmp_path / "e.jsonl").exists()
    from seqpool.io import load_embeddings

    np.testing.assert_array_equal(load_embeddings(tmp_path / "e.jsonl", "max"),
                                  tiny_bert_encoder.encode(LINES, ["max"])["max"])


def test_embed_to_dev_null_leaves_it_a_device(corpus, tiny_bert_dir):
    before = os.stat("/dev/null")
    result = CliRunner().invoke(main, ["embed", str(corpus), "--model", str(tiny_bert_dir), "-o", "/dev/null",
                                       "--format", "npy", "-q"])
    assert result.exit_code == 0, result.output
    assert os.stat("/dev/null").st_ino == before.st_ino and not os.path.exists("/dev/null.partial")


def test_the_lock_never_has_two_holders(tmp_path):
    holders: list[int] = []
    overlaps: list[int] = []
    taken: list[int] = []

    def worker():
        for _ in range(100):
            try:
                with output_lock(tmp_path / "e.npy"):
                    holders.append(1)
                    taken.append(1)
                    if len(holders) > 1:
                        overlaps.append(1)
                    time.sleep(0.0002)
                    holders.pop()
            except SeqpoolError:
                pass

    workers = [threading.Thread(target=worker) for _ in range(4)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()
    assert taken and not overlaps and not lock_path(tmp_path / "e.npy").exists()
