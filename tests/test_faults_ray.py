"""The third fault battery, Ray engine: whatever a run reads back is verified, and waits are bounded.

* Shard files read back (``load_embeddings(folder)``, ``--resume``) must match the sha256 the
  manifest recorded, hold exactly their planned rows of their input, and finite floats: two
  swapped files, or a NaN, are one error naming the shard on load and are embedded again on resume.
* A hand-edited manifest (negative counts, ranges that leave rows out) is one line naming the key.
* Joining a cluster at an address where no Ray answers ends within ``--ray-timeout``, in one line.

The Ray tests share the session's one local Ray (``ray_cluster``, conftest.py); the joining
tests run the CLI in a subprocess, which never touches it.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_distributed import LINES, REPO, cli, write_lines

from seqpool.distributed import MANIFEST, embed_files
from seqpool.errors import SeqpoolError
from seqpool.io import load_embeddings

SHARD_ROWS = 4
A0, A1 = "part-00000-000000000000-000000000004.parquet", "part-00000-000000000004-000000000008.parquet"
A2, B0 = "part-00000-000000000008-000000000012.parquet", "part-00001-000000000000-000000000004.parquet"


def assert_embedded_again_equal(actual: np.ndarray, expected: np.ndarray) -> None:
    """Rows embedded again on resume sit in other batches than the first time; where the BLAS picks
    its kernel by matrix shape (AVX2 CPUs) that moves a value by float rounding, never by 1e-6."""
    np.testing.assert_allclose(actual, expected, atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def finished_run(ray_cluster, tmp_path_factory, tiny_bert_dir):
    """Two inputs of 12 rows, 3 shards of 4 rows each; and the vectors it loads to. Tests copy the folder."""
    root = tmp_path_factory.mktemp("faults_ray")
    inputs = [write_lines(root / "a.txt", LINES), write_lines(root / "b.txt", [f"{t} again" for t in LINES])]
    out = root / "out"
    embed_files(inputs, out, model=str(tiny_bert_dir), strategies=["mean"], shard_rows=SHARD_ROWS, workers=1,
                rows_per_call=8, progress=False)
    return inputs, out, load_embeddings(out)


@pytest.fixture
def run_copy(finished_run, tmp_path):
    """A copy of the finished run's folder (same inputs), free to damage."""
    inputs, out, vectors = finished_run
    copy = tmp_path / "out"
    shutil.copytree(out, copy)
    return inputs, copy, vectors


def manifest_of(folder: Path) -> dict:
    return json.loads((folder / MANIFEST).read_text())


def save_manifest(folder: Path, manifest: dict) -> None:
    (folder / MANIFEST).write_text(json.dumps(manifest))


def swap(folder: Path, first: str, second: str, digests_too: bool) -> None:
    """Swap two shard files; with ``digests_too``, swap their recorded sha256 as well (so only
    the rows the files hold can tell)."""
    (folder / first).rename(folder / "swap.tmp")
    (folder / second).rename(folder / first)
    (folder / "swap.tmp").rename(folder / second)
    if digests_too:
        manifest = manifest_of(folder)
        records = {record["file"]: record for record in manifest["shards"]}
        records[first]["sha256"], records[second]["sha256"] = records[second]["sha256"], records[first]["sha256"]
        save_manifest(folder, manifest)


def resume_cli(inputs, folder: Path, model: Path):
    return cli(*inputs, "--engine", "ray", "--model", model, "--strategy", "mean", "--chunk-size", SHARD_ROWS,
               "--workers", 1, "-o", folder, "--resume")


# -- 1. swapped shards -------------------------------------------------------------------------------


@pytest.mark.parametrize("first, second, digests_too, says", [
    (A0, A1, False, "its sha256 differs from the one the manifest recorded"),
    (A0, A1, True, "holds rows 4-7 (its `row` column), not exactly rows 0-3"),
    (A0, B0, True, "(its `source` column), not of"),
])
def test_swapped_shards_are_one_error_naming_the_shard_on_load(run_copy, first, second, digests_too, says):
    inputs, folder, _ = run_copy
    swap(folder, first, second, digests_too)
    with pytest.raises(SeqpoolError) as caught:
        load_embeddings(folder)
    message = str(caught.value)
    assert f"shard {first} ({inputs[0]} rows 0-3)" in message and says in message, message
    assert "--resume" in message and "\n" not in message


def test_resume_embeds_swapped_shards_again_and_says_so(run_copy, tiny_bert_dir):
    inputs, folder, vectors = run_copy
    swap(folder, A0, A1, digests_too=False)
    result = resume_cli(inputs, folder, tiny_bert_dir)
    assert result.exit_code == 0, result.output
    assert "as 6 parquet shards, 4 of them already done" in result.stderr
    assert f"note: 2 kept shards failed verification and were embedded again: shard {A0}" in result.stderr
    assert_embedded_again_equal(load_embeddings(folder), vectors)
    table = pq.read_table(sorted(folder.glob("part-00000-*.parquet")))
    assert table.column("row").to_pylist() == list(range(12))


def test_resume_embeds_a_shard_whose_rows_are_not_its_range_again(run_copy, tiny_bert_dir):
    """Digests swapped too: only the `row` column tells; the shards are redone, not trusted."""
    inputs, folder, vectors = run_copy
    swap(folder, A0, A1, digests_too=True)
    result = embed_files(inputs, folder, model=str(tiny_bert_dir), strategies=["mean"], shard_rows=SHARD_ROWS,
                         workers=1, resume=True, progress=False)
    assert result.resumed_shards == 4 and len(result.redone) == 2
    assert "holds rows 4-7 (its `row` column), not exactly rows 0-3" in result.redone[0]
    assert_embedded_again_equal(load_embeddings(folder), vectors)


# -- 2. the manifest is schema-checked -----------------------------------------------------------------


def _edit(path: str, value):
    """An edit of the manifest: ``path`` like ``inputs.0.rows``; ``value`` None deletes the entry."""
    def apply(manifest: dict) -> None:
        *parents, last = path.split(".")
        target = manifest
        for key in parents:
            target = target[int(key)] if isinstance(target, list) else target[key]
        if value is None:
            del target[int(last) if isinstance(target, list) else last]
        else:
            target[int(last) if isinstance(target, list) else last] = value
    return apply


def _duplicate_first_shard(manifest: dict) -> None:
    manifest["shards"].append(dict(manifest["shards"][0]))


@pytest.mark.parametrize("edit, key, says", [
    (_edit("inputs.0.rows", -3), "inputs[0].rows", "a whole number >= 0, got -3"),
    (_edit("inputs.0.rows", "12"), "inputs[0].rows", "a whole number >= 0, got '12'"),
    (_edit("inputs.1.rows", 4), "shards[4].first_row", "below inputs[1].rows (4)"),  # would drop 8 rows
    (_edit("inputs.1.rows", 40), "shards", "it lacks part-00001-000000000012-000000000016.parquet"),  # rows no shard holds
    (_edit("settings.shard_rows", -4), "settings.shard_rows", "a whole number >= 1, got -4"),
    (_edit("settings.shard_rows", 0), "settings.shard_rows", "a whole number >= 1, got 0"),
    (_edit("settings.dims.mean", -1), "settings.dims.mean", "a whole number >= 1"),
    (_edit("shards.1.rows", 5), "shards[1].rows", "4 (the planned range of inputs[0])"),
    (_edit("shards.1.first_row", 3), "shards[1].first_row", "a multiple of shard_rows (4)"),
    (_edit("shards.0.sha256", "abc"), "shards[0].sha256", "a sha256"),
    (_edit("shards.2", None), "shards", f"it lacks {A2} (rows 8-11 of inputs[0])"),
    (_duplicate_first_shard, "shards[6]", "a shard not listed before (shards[0] is the same)"),
    (_edit("complete", "yes"), "complete", "true or false"),
    (_edit("inputs", []), "inputs", "a list of the inputs"),
])
def test_an_edited_manifest_is_one_line_naming_the_key(run_copy, edit, key, says):
    _, folder, _ = run_copy
    manifest = manifest_of(folder)
    edit(manifest)
    save_manifest(folder, manifest)
    with pytest.raises(SeqpoolError) as caught:
        load_embeddings(folder)
    message = str(caught.value)
    assert f"`{key}` must be" in message and says in message, message
    assert str(folder / MANIFEST) in message and "\n" not in message


def test_an_edited_manifest_refuses_resume_in_one_line_and_changes_nothing(run_copy, tiny_bert_dir):
    inputs, folder, _ = run_copy
    manifest = manifest_of(folder)
    manifest["inputs"][0]["rows"] = -3
    save_manifest(folder, manifest)
    before = {path.name: path.read_bytes() for path in folder.iterdir()}
    result = resume_cli(inputs, folder, tiny_bert_dir)
    assert result.exit_code == 1, result.output
    assert result.stderr.strip().splitlines() == [result.stderr.strip()] and "`inputs[0].rows` must be" in result.stderr
    assert {path.name: path.read_bytes() for path in folder.iterdir()} == before


# -- 3. kept rows are finite -------------------------------------------------------------------------


def write_nan(folder: Path, name: str) -> None:
    """Rewrite one shard with a NaN in its first vector, metadata and every other value kept."""
    table = pq.read_table(folder / name)
    vectors = np.asarray(table.column("mean").combine_chunks().flatten()).reshape(table.num_rows, -1).copy()
    vectors[0, 0] = np.nan
    column = pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), vectors.shape[1])
    pq.write_table(table.set_column(table.column_names.index("mean"), "mean", column), folder / name)


@pytest.mark.parametrize("recorded", ["digest_updated", "not_recorded"])
def test_a_nan_in_a_kept_shard_is_caught_on_load_and_embedded_again_on_resume(run_copy, tiny_bert_dir, recorded):
    """``digest_updated``: the manifest's sha256 made to match the NaN file, so only the values
    tell; ``not_recorded``: the shard was written after the manifest's last save (a killed driver)."""
    import hashlib

    inputs, folder, vectors = run_copy
    write_nan(folder, A1)
    manifest = manifest_of(folder)
    record = next(r for r in manifest["shards"] if r["file"] == A1)
    if recorded == "digest_updated":
        record["sha256"] = hashlib.sha256((folder / A1).read_bytes()).hexdigest()
        save_manifest(folder, manifest)
        with pytest.raises(SeqpoolError, match=f"shard {A1} .* holds NaN or infinite values in its `mean` column"):
            load_embeddings(folder)
    else:
        manifest["shards"].remove(record)
        manifest["complete"] = False
        save_manifest(folder, manifest)
    result = resume_cli(inputs, folder, tiny_bert_dir)
    assert result.exit_code == 0, result.output
    assert f"note: 1 kept shard failed verification and was embedded again: shard {A1}" in result.stderr
    assert "holds NaN or infinite values" in result.stderr
    assert_embedded_again_equal(load_embeddings(folder), vectors)


def test_a_shard_written_after_the_last_manifest_save_is_kept_when_it_verifies(run_copy, tiny_bert_dir):
    """The manifest's list may lag the files by a moment; such a file is checked by its content
    (rows, source, finite values), kept, and recorded with its digest."""
    inputs, folder, vectors = run_copy
    manifest = manifest_of(folder)
    manifest["shards"] = [r for r in manifest["shards"] if r["file"] != A1]
    manifest["complete"] = False
    save_manifest(folder, manifest)
    before = (folder / A1).stat().st_mtime_ns
    result = embed_files(inputs, folder, model=str(tiny_bert_dir), strategies=["mean"], shard_rows=SHARD_ROWS,
                         workers=1, resume=True, progress=False)
    assert result.resumed_shards == 6 and result.redone == () and (folder / A1).stat().st_mtime_ns == before
    assert A1 in {r["file"] for r in manifest_of(folder)["shards"]}
    np.testing.assert_array_equal(load_embeddings(folder), vectors)


# -- 4. joining a cluster is bounded -------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("0.0.0.0", 0))
        return probe.getsockname()[1]


def silent_server() -> int:
    """A port that accepts connections and never answers (as a stuck or foreign service would)."""
    server = socket.socket()
    server.bind(("0.0.0.0", 0))
    server.listen()
    held = []

    def accept() -> None:
        while True:
            try:
                held.append(server.accept()[0])
            except OSError:
                return

    threading.Thread(target=accept, daemon=True).start()
    return server.getsockname()[1]


@pytest.mark.parametrize("where", ["nothing_listens", "nothing_answers"])
def test_joining_an_address_where_no_ray_answers_ends_within_the_timeout(tmp_path, tiny_bert_dir, where):
    """Ray's own join retries for about 13 minutes; ``--ray-timeout 2`` ends it in one line naming
    the address, leaving no output folder. A subprocess: the session's Ray is never involved."""
    pytest.importorskip("ray", reason="needs the ray extra")
    port = free_port() if where == "nothing_listens" else silent_server()
    corpus = write_lines(tmp_path / "c.txt", LINES)
    out = tmp_path / "out"
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "seqpool.cli", "embed", str(corpus), "--engine", "ray",
                             "--workers", "1", "--model", str(tiny_bert_dir), "--ray-address", f"127.0.0.1:{port}",
                             "--ray-timeout", "2", "-o", str(out)],
                            cwd=REPO, capture_output=True, text=True, timeout=170)
    elapsed = time.monotonic() - started
    print(f"{where}: failed after {elapsed:.1f} s")
    assert result.returncode == 1, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"cannot join the Ray cluster at '127.0.0.1:{port}'" in lines[0], result.stderr
    if where == "nothing_answers":
        assert "nothing answered within 2 s" in lines[0] and "--ray-timeout 2" in lines[0]
    assert elapsed < 60 and not out.exists()


def test_a_port_held_by_something_else_is_refused_without_waiting_and_a_live_cluster_passes(ray_cluster):
    """The probe opens an HTTP/2 session as Ray's gRPC client does: an HTTP/1 server answering
    anything else is told apart at once; the session's live cluster answers the probe."""
    from seqpool.distributed.dataset import wait_for_cluster

    server = socket.socket()
    server.bind(("0.0.0.0", 0))
    server.listen()

    def answer_http() -> None:
        connection = server.accept()[0]
        connection.recv(64)
        connection.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        connection.close()

    threading.Thread(target=answer_http, daemon=True).start()
    started = time.monotonic()
    with pytest.raises(SeqpoolError, match="accepts connections but does not answer as Ray does"):
        wait_for_cluster(f"127.0.0.1:{server.getsockname()[1]}", 20)
    assert time.monotonic() - started < 5
    server.close()
    wait_for_cluster(ray_cluster, 5)  # returns: a Ray answers there


@pytest.mark.parametrize("value", [0, -1, float("nan"), "5", True])
def test_ray_timeout_must_be_a_positive_number(tmp_path, value):
    pytest.importorskip("ray", reason="needs the ray extra")
    corpus = write_lines(tmp_path / "c.txt", LINES)
    with pytest.raises(SeqpoolError, match="`ray_timeout` must be a number of seconds > 0"):
        embed_files([corpus], tmp_path / "out", ray_address="auto", ray_timeout=value, progress=False)
    assert not (tmp_path / "out").exists()
    result = cli(corpus, "--engine", "ray", "--ray-timeout", 0, "-o", tmp_path / "out")
    assert result.exit_code == 1 and "--ray-timeout must be a number of seconds > 0" in result.stderr
