"""The Embedder and the Ray engine: row-exact, resumable, surviving a killed actor or driver.

One local Ray instance serves every Ray test (``ray_cluster`` in conftest.py, shared with
test_faults_ray.py); the tests that need Ray are skipped, with the reason, where the ``ray``
extra is not installed. Embedder subclasses defined here (slow, failing) reach Ray workers
pickled by value.
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from seqpool.distributed import MANIFEST, Embedder, embed_files, load_folder
from seqpool.errors import SeqpoolError


REPO = Path(__file__).resolve().parents[1]
LINES = ["the cat sat on the mat", "", "hello world", "the cat sat on the mat", "   ", "a very good film",
         "hello world", "not a bad movie", "xyz", "", "funny film", "the dog sat"]


class SlowEmbedder(Embedder):
    """Sleeps per call, so a test can act while a run is still going."""

    delay = 0.25

    def embed(self, texts):
        time.sleep(self.delay)
        return super().embed(texts)


class FailingEmbedder(Embedder):
    """Raises for a batch holding the text "boom", while a marker file exists."""

    marker = ""

    def embed(self, texts):
        if "boom" in texts and os.path.exists(self.marker):
            raise ValueError("cannot embed boom")
        return super().embed(texts)


class CrashingEmbedder(FailingEmbedder):
    """Kills its own process (as the OOM killer would) for a batch holding "boom", while a marker exists."""

    def embed(self, texts):
        if "boom" in texts and os.path.exists(self.marker):
            os._exit(1)
        return super().embed(texts)


def write_lines(path: Path, lines) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def make_corpus(folder: Path) -> list[Path]:
    """Several inputs in several formats, with empty lines, a null and duplicates."""
    folder.mkdir()
    txt = write_lines(folder / "a.txt", LINES)
    jsonl = folder / "b.jsonl"
    jsonl.write_text("".join(json.dumps({"text": t, "id": i}) + "\n" for i, t in enumerate(LINES[::-1])))
    parquet = folder / "c.parquet"
    pq.write_table(pa.table({"text": LINES[3:] + [None]}), parquet)
    return [txt, jsonl, parquet]


@pytest.fixture
def corpus(tmp_path) -> list[Path]:
    return make_corpus(tmp_path / "corpus")


@pytest.fixture(scope="module")
def finished(ray_cluster, tmp_path_factory, tiny_bert_dir):
    """One finished run over three inputs named as a file, a glob and a folder (which lists
    a.txt again): shared by the tests that only read or refuse to touch its folder."""
    root = tmp_path_factory.mktemp("finished")
    corpus = make_corpus(root / "corpus")
    out = root / "out"
    result = embed_files([corpus[0], str(corpus[0].parent / "*.jsonl"), corpus[2].parent], out,
                         model=str(tiny_bert_dir), strategies=["mean", "max"], shard_rows=5, workers=2,
                         rows_per_call=4, progress=False)
    return corpus, out, result


def texts_of(path: Path) -> list[str]:
    from seqpool.io import TextSource

    return list(TextSource.open(path).texts())


def expected(encoder, paths, strategy="mean") -> np.ndarray:
    return np.concatenate([encoder.encode(texts_of(p), [strategy])[strategy] for p in paths])


# -- the Embedder (no Ray needed) --------------------------------------------------------------------


def test_embedder_maps_dict_and_dataframe_batches(tiny_bert_dir, tiny_bert_encoder):
    import pandas as pd

    embedder = Embedder(model=str(tiny_bert_dir), strategies=["mean", "max"])
    ids = np.arange(len(LINES))
    out = embedder({"id": ids, "text": np.array(LINES, dtype=object)})
    reference = tiny_bert_encoder.encode(LINES, ["mean", "max"])
    assert set(out) == {"id", "text", "mean", "max"}
    np.testing.assert_array_equal(out["id"], ids)
    for strategy in ("mean", "max"):
        assert out[strategy].dtype == np.float32 and out[strategy].shape == (len(LINES), 32)
        np.testing.assert_allclose(out[strategy], reference[strategy], atol=1e-6)
    frame = embedder(pd.DataFrame({"id": ids, "text": LINES}))
    assert list(frame.columns) == ["id", "text", "mean", "max"]
    np.testing.assert_allclose(np.stack(frame["mean"]), reference["mean"], atol=1e-6)


def test_embedder_pickles_settings_only_and_loads_once_per_process(tiny_bert_dir):
    embedder = Embedder(model=str(tiny_bert_dir), strategies="cls", text_column="body")
    embedder({"body": np.array(["hello"], dtype=object)})  # loads the model
    payload = pickle.dumps(embedder)
    assert len(payload) < 2000  # settings, not weights
    copy = pickle.loads(payload)
    assert copy.settings == embedder.settings and copy.encoder is embedder.encoder
    assert type(embedder)(**embedder.settings).settings == embedder.settings


def test_embedder_none_text_is_empty_and_bad_columns_are_one_line(tiny_bert_dir):
    embedder = Embedder(model=str(tiny_bert_dir))
    out = embedder({"text": np.array([None, ""], dtype=object)})
    np.testing.assert_array_equal(out["mean"][0], out["mean"][1])
    with pytest.raises(SeqpoolError, match="no text column 'text'.*body"):
        embedder({"body": np.array(["x"], dtype=object)})
    with pytest.raises(SeqpoolError, match="row 1 .* holds int"):
        embedder({"text": np.array(["x", 3], dtype=object)})
    with pytest.raises(SeqpoolError, match="unknown|strategy"):
        Embedder(strategies=["no_such_pooling"])
    with pytest.raises(SeqpoolError, match="text_column 'mean' is also a strategy"):
        Embedder(strategies=["mean"], text_column="mean")


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_embedder_on_cuda_without_cuda_is_one_clear_error(tiny_bert_dir):
    embedder = Embedder(model=str(tiny_bert_dir), device="cuda")  # settings only: fine anywhere
    assert embedder.resolved_device() == "cuda"
    with pytest.raises(SeqpoolError, match="CUDA"):
        embedder({"text": np.array(["hello"], dtype=object)})
    assert Embedder(model=str(tiny_bert_dir)).resolved_device() == "cpu"  # no GPU from Ray: CPU


def test_embed_files_takes_its_options_as_records_or_keywords_checked_before_ray(tmp_path, corpus, tiny_bert_dir):
    from seqpool.distributed import RayOptions

    for bad, message in (({"workers": 0}, "`workers` must be a whole number of actors, at least 1, got 0"),
                         ({"max_attempts": True}, "`max_attempts` must be a whole number of at least 1, got True"),
                         ({"rows_per_call": 1.5}, "`rows_per_call` must be a whole number"),
                         ({"shard_rows": 0}, "`shard_rows` must be a whole number of at least 1, got 0"),
                         ({"resume": "no"}, "`resume` must be True, False or None"),
                         ({"long_texts": "late", "chunk_output": True}, "one row per chunk"),
                         ({"ray_options": RayOptions(workers=1), "ray_timeout": -1}, "`ray_timeout` must be")):
        with pytest.raises(SeqpoolError, match=message):
            embed_files(corpus, tmp_path / "out", **bad)
    with pytest.raises(SeqpoolError, match="to the Embedder passed as `embedder`, not beside it"):
        embed_files(corpus, tmp_path / "out", embedder=Embedder(model=str(tiny_bert_dir)), prompt="q: ")
    with pytest.raises(TypeError, match=r"embed_files\(\) got an unexpected keyword argument 'device'"):
        embed_files(corpus, tmp_path / "out", device="cpu")
    assert RayOptions(workers=2, ray_timeout=5).ray_timeout == 5.0 and not (tmp_path / "out").exists()


def test_missing_ray_extra_is_one_line_naming_it(monkeypatch, tmp_path, corpus):
    from seqpool.distributed import embed_dataset, import_ray

    monkeypatch.setitem(sys.modules, "ray", None)  # "import ray" now raises ImportError
    monkeypatch.setitem(sys.modules, "ray.data", None)
    for call in (import_ray, lambda: embed_dataset(object()), lambda: embed_files(corpus, tmp_path / "out")):
        with pytest.raises(SeqpoolError, match=r'pip install "seqpool\[ray\]"'):
            call()
    assert not (tmp_path / "out").exists()


def test_a_ray_started_for_the_run_gives_its_actors_normal_priority_a_joined_one_is_left_as_is():
    """Ray's workers default to nice 15; on the instance seqpool starts they are the work."""
    from seqpool.distributed.dataset import _started_ray

    calls = []

    class FakeRay:
        def init(self, **kwargs):
            calls.append(kwargs)

        def shutdown(self):
            calls.append("shutdown")

    for address in (None, "auto"):
        with _started_ray(FakeRay(), address, 2):
            pass
    local, joined = calls[0], calls[2]
    assert local["_system_config"] == {"worker_niceness": 0} and local["num_cpus"] == 2
    assert "_system_config" not in joined and joined["address"] == "auto"
    assert calls[1] == calls[3] == "shutdown"


def test_importing_seqpool_never_imports_ray():
    code = "import sys, seqpool, seqpool.distributed; seqpool.Embedder; print('ray' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, check=True)
    assert result.stdout.strip() == "False"


# -- Ray Data: embed_dataset -------------------------------------------------------------------------


def test_embed_dataset_uses_an_actor_pool_and_carries_the_row_id(ray_cluster, tiny_bert_dir, tiny_bert_encoder):
    import ray

    from seqpool.distributed import embed_dataset

    ds = ray.data.from_items([{"id": i, "text": t} for i, t in enumerate(LINES)])
    with warnings.catch_warnings():
        warnings.simplefilter("error", DeprecationWarning)  # the pinned Ray's current API only
        out = embed_dataset(ds, model=str(tiny_bert_dir), strategies=["mean", "max"], workers=1, batch_size=4)
    assert str(out).startswith("MapBatches(Embedder)")
    rows = sorted(out.take_all(), key=lambda row: row["id"])
    assert [row["id"] for row in rows] == list(range(len(LINES)))
    assert [row["text"] for row in rows] == LINES
    reference = tiny_bert_encoder.encode(LINES, ["mean", "max"])
    for strategy in ("mean", "max"):
        np.testing.assert_allclose(np.stack([row[strategy] for row in rows]), reference[strategy], atol=1e-6)


def test_embed_dataset_gpu_request_on_a_cluster_without_gpus(ray_cluster, tiny_bert_dir):
    import ray

    from seqpool.distributed import embed_dataset

    ds = ray.data.from_items([{"text": "x"}])
    with pytest.raises(SeqpoolError, match="num_gpus=1.*0 GPUs"):
        embed_dataset(ds, model=str(tiny_bert_dir), num_gpus=1)
    with pytest.raises(SeqpoolError, match="`workers` must be"):
        embed_dataset(ds, model=str(tiny_bert_dir), workers=0)


# -- the file engine ---------------------------------------------------------------------------------


def test_files_equal_local_embedding_in_input_order(finished, tiny_bert_encoder):
    corpus, out, result = finished
    rows = [len(texts_of(p)) for p in corpus]  # each file once, in the order first named
    assert result.rows == sum(rows) and result.strategies == ("mean", "max") and result.resumed_shards == 0
    for strategy in ("mean", "max"):
        np.testing.assert_allclose(load_folder(out, strategy), expected(tiny_bert_encoder, corpus, strategy),
                                   atol=1e-6, rtol=0)
    table = pq.read_table(sorted(out.glob("part-*.parquet")))
    sources, row_numbers = table.column("source").to_pylist(), table.column("row").to_pylist()
    assert sources == [str(p) for p, n in zip(corpus, rows) for _ in range(n)]
    assert row_numbers == [r for n in rows for r in range(n)]
    vectors = np.asarray(table.column("mean").combine_chunks().flatten()).reshape(-1, 32)
    first = vectors[:len(LINES)]
    # duplicates stay in place, and both empty lines; within float rounding, as rows in other batches
    # may differ by it where the BLAS picks its kernel by matrix shape (AVX2 CPUs); other rows differ by > 0.01
    np.testing.assert_allclose(first[0], first[3], atol=1e-6, rtol=0)
    np.testing.assert_allclose(first[1], first[9], atol=1e-6, rtol=0)
    assert np.abs(first[0] - first[1]).max() > 0.01
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["complete"] and len(manifest["shards"]) == result.shards == sum(-(-n // 5) for n in rows)
    assert [item["path"] for item in manifest["inputs"]] == [str(p) for p in corpus]
    assert manifest["settings"]["strategies"] == ["mean", "max"] and manifest["settings"]["shard_rows"] == 5


def test_reads_are_cut_into_call_sized_blocks_without_a_cpu_of_their_own(ray_cluster, corpus):
    """Blocks of at most one actor call's rows, every row once; the cutting is fused into the
    read, which reserves no CPU (with the actors holding every CPU it would otherwise wait forever)."""
    import ray

    from seqpool.distributed import files
    from seqpool.distributed.inputs import scan

    sources = [scan(str(path), None, None, 5) for path in corpus]
    plan = {i: (s.path, s.format, s.text_field, dict(zip(range(0, s.rows, 5), s.shard_digests)))
            for i, s in enumerate(sources)}
    ds = files._call_sized_blocks(ray, plan, sources, 5, "text", 4)
    assert ds._logical_plan.dag.ray_remote_args["num_cpus"] == 0
    blocks = list(ds.iter_batches(batch_size=None, batch_format="numpy"))
    assert max(len(block["row"]) for block in blocks) <= 4
    seen = sorted((int(s), int(r)) for block in blocks for s, r in zip(block["source"], block["row"]))
    assert seen == [(i, r) for i, s in enumerate(sources) for r in range(s.rows)]


def test_without_the_fused_cut_the_run_is_still_row_exact(ray_cluster, tmp_path, corpus, tiny_bert_dir,
                                                           tiny_bert_encoder, monkeypatch):
    """Another Ray (no StreamingRepartition to adjust): blocks cut by bytes, same vectors."""
    import ray

    monkeypatch.setattr(ray.data.Dataset, "repartition", lambda self, **kwargs: self)
    embed_files(corpus, tmp_path / "out", model=str(tiny_bert_dir), strategies=["mean"], shard_rows=5, workers=2,
                rows_per_call=4, progress=False)
    np.testing.assert_allclose(load_folder(tmp_path / "out", "mean"), expected(tiny_bert_encoder, corpus),
                               atol=1e-6, rtol=0)


def test_call_rows_give_each_actor_about_four_calls_within_bounds():
    from seqpool.distributed.files import CALLS_PER_ACTOR, MAX_CALL_ROWS, MIN_CALL_ROWS, call_rows

    assert call_rows(20_000, 2) == 2500  # the benchmark's corpus on 2 actors: 4 calls each
    assert call_rows(10, 2) == MIN_CALL_ROWS and call_rows(10**8, 64) == MAX_CALL_ROWS
    for rows in (1, 63, 64, 1000, 20_001, 10**6):
        for actors in (1, 2, 3, 16):
            size = call_rows(rows, actors)
            assert MIN_CALL_ROWS <= size <= MAX_CALL_ROWS
            if MIN_CALL_ROWS < size < MAX_CALL_ROWS:  # not clamped: every actor gets its calls, no more
                assert -(-rows // size) <= CALLS_PER_ACTOR * actors < rows / (size - 1)

def test_an_actor_crash_loop_names_the_unfinished_shards_its_rows_are_among():
    """Ray's ActorDiedError does not say which call's rows killed the actor; the driver names
    the shards still unfinished (one exactly, several as the first three and a count)."""
    from seqpool.distributed.files import _as_user_error, _where
    from seqpool.io.shards import plan_shards

    class ActorDiedError(Exception):  # matched by name, as Ray's own class is
        pass

    paths = ["a.txt", "b.txt"]
    shards = plan_shards([25, 10], 10)  # a.txt: 0-9, 10-19, 20-24; b.txt: 0-9
    one = str(_as_user_error(ActorDiedError("The actor died"), 3, 2, _where(shards[2:3], paths)))
    assert "an actor died 3 times" in one and "in shard part-00000-000000000020-000000000025.parquet " \
        "(a.txt rows 20-24); the 2 shards done are kept" in one and "\n" not in one
    many = str(_as_user_error(ActorDiedError("The actor died"), 3, 0, _where(shards, paths)))
    assert "in one of the 4 unfinished shards: shard part-00000-000000000000-000000000010.parquet (a.txt rows 0-9)" \
        in many and "(a.txt rows 20-24) and 1 more;" in many and "b.txt" not in many
    assert "out of memory?); the 5 shards" in str(_as_user_error(ActorDiedError("died"), 3, 5, _where([], paths)))
    other = str(_as_user_error(RuntimeError("Ray lost the cluster\nlast line"), 3, 0, _where(shards, paths)))
    assert other.startswith("the Ray run failed: last line") and "unfinished" not in other



def test_default_call_size_follows_the_rows_and_actors(ray_cluster, tmp_path, tiny_bert_dir, tiny_bert_encoder,
                                                      monkeypatch):
    """Without rows_per_call, the blocks are call_rows(missing rows, actors) rows; same vectors."""
    from seqpool.distributed import files

    corpus = write_lines(tmp_path / "c.txt", [f"{LINES[i % len(LINES)]} {i}" for i in range(600)])
    sizes = []
    cut = files._call_sized_blocks
    monkeypatch.setattr(files, "_call_sized_blocks", lambda *args: sizes.append(args[-1]) or cut(*args))
    embed_files([corpus], tmp_path / "out", model=str(tiny_bert_dir), strategies=["mean"], workers=2,
                shard_rows=100, progress=False)
    assert sizes == [files.call_rows(600, 2)] == [75]
    np.testing.assert_allclose(load_folder(tmp_path / "out", "mean"), expected(tiny_bert_encoder, [corpus]),
                               atol=1e-6, rtol=0)


def test_a_bad_model_is_one_line_while_ray_starts_beside_its_check(ray_cluster, tmp_path, corpus):
    """The model check runs beside Ray's start; its error still ends the run alone, leaving
    nothing behind and the caller's Ray running."""
    import ray

    (tmp_path / "not_a_model").mkdir()
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SeqpoolError, match="cannot load model .*not_a_model"):
        embed_files(corpus, tmp_path / "out", model=str(tmp_path / "not_a_model"), progress=False)
    assert sorted(tmp_path.rglob("*")) == before and ray.is_initialized()


def test_load_embeddings_reads_the_folder(finished):
    import seqpool

    _, out, _ = finished
    np.testing.assert_array_equal(seqpool.load_embeddings(out, "max"), load_folder(out, "max"))
    with pytest.raises(SeqpoolError, match="holds mean, max; name the strategy"):
        load_folder(out)


def test_resume_refuses_changed_inputs_or_settings(finished, tiny_bert_dir):
    corpus, out, result = finished
    same = {"model": str(tiny_bert_dir), "strategies": ["mean", "max"], "shard_rows": 5, "progress": False}
    inputs = [corpus[0], str(corpus[0].parent / "*.jsonl"), corpus[2].parent]
    with pytest.raises(SeqpoolError, match="holds a finished run; pass --resume"):
        embed_files(inputs, out, **same)
    again = embed_files(inputs, out, resume=True, **same)  # nothing missing: no Ray run at all
    assert again.resumed_shards == again.shards == result.shards
    with pytest.raises(SeqpoolError, match="settings changed.*strategies was"):
        embed_files(inputs, out, **{**same, "strategies": "max"}, resume=True)
    with pytest.raises(SeqpoolError, match="settings changed.*shard_rows was 5, now 4"):
        embed_files(inputs, out, **{**same, "shard_rows": 4}, resume=True)
    with pytest.raises(SeqpoolError, match="inputs differ"):
        embed_files(corpus[:1], out, resume=True, **same)
    before = corpus[0].read_bytes()
    try:
        write_lines(corpus[0], LINES + ["one more line"])
        with pytest.raises(SeqpoolError, match=f"content of {corpus[0]} changed"):
            embed_files(inputs, out, resume=True, **same)
    finally:
        corpus[0].write_bytes(before)
    assert json.loads((out / MANIFEST).read_text())["complete"]  # untouched by the refused runs


def cli(*args):
    from click.testing import CliRunner

    from seqpool.cli import main

    return CliRunner().invoke(main, ["embed", *map(str, args)])


def test_cli_engine_ray_embeds_several_inputs_quietly(ray_cluster, tmp_path, corpus, tiny_bert_dir,
                                                     tiny_bert_encoder):
    from seqpool.io import load_embeddings

    out = tmp_path / "out"
    result = cli(corpus[0], corpus[2], "--engine", "ray", "--model", tiny_bert_dir, "--strategy", "max",
                 "--chunk-size", 4, "--workers", 1, "-o", out, "-q")
    assert result.exit_code == 0, result.output
    assert result.output == ""  # --quiet: no progress, no summary, no Ray chatter
    np.testing.assert_allclose(load_embeddings(out), expected(tiny_bert_encoder, [corpus[0], corpus[2]], "max"),
                               atol=1e-6, rtol=0)
    again = cli(corpus[0], corpus[2], "--engine", "ray", "--model", tiny_bert_dir, "--strategy", "max",
                "--chunk-size", 4, "-o", out, "--resume")
    assert again.exit_code == 0 and "as 6 parquet shards, 6 of them already done" in again.stderr


@pytest.mark.parametrize("args, message", [
    (["{a}", "{a}"], "2 INPUTs given; the local engine embeds one file"),
    (["{a}", "--workers", "2"], "--ray-address and --workers need --engine ray"),
    (["{a}", "--engine", "ray"], "name it with -o/--output"),
    (["{a}", "--engine", "ray", "-o", "{out}", "--long-texts", "late", "--chunk-output", "--skip-empty"],
     "--skip-empty, --chunk-output cannot be used with --engine ray"),
    (["{a}", "--engine", "ray", "-o", "{out}", "--precision", "binary", "--calibration", "{a}"],
     "--calibration fits int8/uint8 ranges"),
    (["{a}", "--engine", "ray", "-o", "{out}", "--device", "mps"], "use cpu or cuda"),
    (["{a}", "--engine", "ray", "-o", "{out}", "--chunk-size", "0"], "--chunk-size must be a whole number"),
])
def test_cli_engine_ray_refuses_bad_options_in_one_line(tmp_path, corpus, args, message):
    pytest.importorskip("ray", reason="needs the ray extra")
    result = cli(*[arg.format(a=corpus[0], out=tmp_path / "out") for arg in args])
    assert result.exit_code == 1 and message in result.stderr, result.output
    assert len(result.stderr.strip().splitlines()) == 1 and not (tmp_path / "out").exists()


def _local(tmp_path, name, *args):
    """The local engine's output for the same options: the reference the Ray engine must equal."""
    out = tmp_path / f"{name}.parquet"
    result = cli(*args, "-o", out, "-q")
    assert result.exit_code == 0, result.output
    return out


def test_cli_engine_ray_prompt_and_exclude_prompt_equal_local_and_resume_refuses_a_new_prompt(
        ray_cluster, tmp_path, corpus, tiny_bert_dir):
    from seqpool.io import load_embeddings

    options = ["--model", tiny_bert_dir, "--strategy", "mean,cls", "--prompt", "query: ", "--exclude-prompt"]
    out = tmp_path / "out"
    result = cli(corpus[0], "--engine", "ray", *options, "--chunk-size", 5, "--workers", 1, "-o", out, "-q")
    assert result.exit_code == 0, result.output
    local = _local(tmp_path, "local", corpus[0], *options)
    plain = _local(tmp_path, "plain", corpus[0], "--model", tiny_bert_dir, "--strategy", "mean,cls")
    for strategy in ("mean", "cls"):
        ray_vectors = load_embeddings(out, strategy)
        np.testing.assert_allclose(ray_vectors, load_embeddings(local, strategy), atol=1e-6, rtol=0)
        assert np.abs(ray_vectors - load_embeddings(plain, strategy)).max() > 1e-3  # the prompt took effect
    assert json.loads((out / MANIFEST).read_text())["settings"]["vectors"] == {"prompt": "query: ",
                                                                               "include_prompt": False}
    again = cli(corpus[0], "--engine", "ray", *options[:-3], "--prompt", "passage: ", "--exclude-prompt",
                "--chunk-size", 5, "-o", out, "--resume")
    assert again.exit_code == 1 and "cannot resume" in again.stderr and "'passage: '" in again.stderr, again.output
    assert len(again.stderr.strip().splitlines()) == 1


def test_cli_engine_ray_counts_truncated_texts_per_shard_and_after_resume(ray_cluster, tmp_path, tiny_bert_dir,
                                                                          tiny_bert_encoder):
    """One actor call spans every shard here; each shard still counts only its own cut rows,
    and a resumed run adds the kept shards' counts (from their files) to the redone ones'."""
    import pyarrow.parquet as pq

    words = "the cat sat on the mat and a very good film about a dog".split()
    lines = [" ".join(words * (1 + 2 * i)) for i in range(9)] + ["short text", ""]
    corpus = write_lines(tmp_path / "long.txt", lines)
    _, stats = tiny_bert_encoder.encode(lines, return_stats=True)
    cut = stats.truncated
    assert 0 < cut < len(lines) - 2
    out = tmp_path / "out"
    result = cli(corpus, "--engine", "ray", "--model", tiny_bert_dir, "--chunk-size", 3, "--workers", 1, "-o", out)
    assert result.exit_code == 0, result.output
    note = f"{cut} of {len(lines)} texts were longer than the model's max length and were truncated"
    assert note in result.stderr
    shards = sorted(out.glob("part-*.parquet"))
    per_shard = [int(pq.read_schema(path).metadata[b"seqpool.truncated"]) for path in shards]
    assert sum(per_shard) == cut and per_shard[-1] == 0 < per_shard[2]  # rows 9-10 short, rows 6-8 long
    shards[2].unlink()
    # one actor each below too: a second would start (importing torch, loading the model) only to sit idle
    again = cli(corpus, "--engine", "ray", "--model", tiny_bert_dir, "--chunk-size", 3, "--workers", 1, "-o", out,
                "--resume")
    assert again.exit_code == 0 and "3 of them already done" in again.stderr and note in again.stderr, again.output
    # with --long-texts chunk nothing is truncated: test_cli_engine_ray_chunks_long_texts_as_local_does


def test_cli_engine_ray_chunks_long_texts_as_local_does(ray_cluster, tmp_path, tiny_bert_dir):
    from seqpool.io import load_embeddings

    words = "the cat sat on the mat and a very good film about a dog".split()
    lines = [" ".join(words[i % 7:] * (3 + i)) for i in range(7)] + ["short text", ""]
    corpus = write_lines(tmp_path / "long.txt", lines)
    options = ["--model", tiny_bert_dir, "--strategy", "mean,max", "--long-texts", "chunk", "--window", 16,
               "--stride", 12]
    out = tmp_path / "out"
    result = cli(corpus, "--engine", "ray", *options, "--chunk-size", 4, "--workers", 1, "-o", out)
    assert result.exit_code == 0 and "truncated" not in result.stderr, result.output  # every token is in a window
    local = _local(tmp_path, "local", corpus, *options)
    truncated = _local(tmp_path, "truncated", corpus, "--model", tiny_bert_dir, "--strategy", "mean,max")
    for strategy in ("mean", "max"):
        np.testing.assert_allclose(load_embeddings(out, strategy), load_embeddings(local, strategy), atol=1e-6, rtol=0)
    assert np.abs(load_embeddings(out, "mean")[:7] - load_embeddings(truncated, "mean")[:7]).max() > 1e-3


def test_cli_engine_ray_int8_codes_equal_local_with_one_calibration_and_survive_resume(
        ray_cluster, tmp_path, corpus, tiny_bert_dir):
    from seqpool.io import load_embeddings

    calibration = write_lines(tmp_path / "calibration.txt", LINES[::2] + ["a dog", "an awful film"])
    options = ["--model", tiny_bert_dir, "--strategy", "mean", "--truncate-dim", 24, "--precision", "int8",
               "--calibration", calibration]
    out = tmp_path / "out"
    ray_args = [corpus[0], "--engine", "ray", *options, "--chunk-size", 3, "--workers", 1, "-o", out]
    assert cli(*ray_args, "-q").exit_code == 0
    local = _local(tmp_path, "local", corpus[0], *options)
    codes = load_embeddings(out, decode=False)
    assert codes.dtype == np.int8 and codes.shape == (len(LINES), 24)
    np.testing.assert_array_equal(codes, load_embeddings(local, decode=False))
    np.testing.assert_allclose(load_embeddings(out), load_embeddings(local), atol=1e-6, rtol=0)
    manifest = json.loads((out / MANIFEST).read_text())
    ranges = np.asarray(manifest["compaction"]["ranges"]["mean"])
    assert ranges.shape == (2, 24) and manifest["settings"]["vectors"]["precision"] == "int8"
    # a resumed run quantises with the stored ranges, even if the calibration file changed since
    (out / "part-00000-000000000003-000000000006.parquet").unlink()
    manifest["complete"] = False
    (out / MANIFEST).write_text(json.dumps(manifest))
    write_lines(calibration, ["zzz"] * 3)
    assert cli(*ray_args, "--resume", "-q").exit_code == 0
    np.testing.assert_array_equal(load_embeddings(out, decode=False), codes)
    changed = cli(*[arg if arg != "int8" else "uint8" for arg in ray_args], "--resume")
    assert changed.exit_code == 1 and "precision" in changed.stderr


def test_ray_int8_without_calibration_fits_on_the_first_shard_as_local_fits_its_first_chunk(
        ray_cluster, tmp_path, corpus, tiny_bert_dir):
    from seqpool.io import load_embeddings

    options = ["--model", tiny_bert_dir, "--precision", "int8", "--chunk-size", 6]
    out = tmp_path / "out"
    assert cli(corpus[0], "--engine", "ray", *options, "--workers", 1, "-o", out, "-q").exit_code == 0
    local = _local(tmp_path, "local", corpus[0], *options)
    np.testing.assert_array_equal(load_embeddings(out, decode=False), load_embeddings(local, decode=False))


def test_cli_without_the_ray_extra_names_it(monkeypatch, tmp_path, corpus):
    monkeypatch.setitem(sys.modules, "ray", None)
    result = cli(corpus[0], "--engine", "ray", "-o", tmp_path / "out")
    assert result.exit_code == 1
    assert result.stderr.strip().splitlines() == [
        'Error: the Ray engine needs Ray, which is not installed; install it with: pip install "seqpool[ray]"']


@pytest.mark.parametrize("case", ["missing", "no_match", "empty_folder", "bad_json", "stdin", "output_is_file",
                                  "foreign_folder", "no_parent"])
def test_bad_inputs_are_one_line_and_leave_nothing(tmp_path, corpus, tiny_bert_dir, case):
    pytest.importorskip("ray", reason="needs the ray extra")
    out = tmp_path / "out"
    inputs = [corpus[0]]
    message = {"missing": "input file not found", "no_match": "no input file matches",
               "empty_folder": "holds no files", "bad_json": r"bad.jsonl, line 2", "stdin": "not stdin",
               "output_is_file": "is a file", "foreign_folder": "not empty", "no_parent": "does not exist"}[case]
    if case == "missing":
        inputs = [tmp_path / "nope.txt"]
    elif case == "no_match":
        inputs = [str(tmp_path / "*.nothing")]
    elif case == "empty_folder":
        (tmp_path / "empty").mkdir()
        (tmp_path / "empty" / "_SUCCESS").write_text("")
        inputs = [tmp_path / "empty"]
    elif case == "bad_json":
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"text": "fine"}\n{"text": oops}\n')
        inputs = [corpus[0], bad]
    elif case == "stdin":
        inputs = ["-"]
    elif case == "output_is_file":
        out.write_text("x")
    elif case == "foreign_folder":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    elif case == "no_parent":
        out = tmp_path / "a" / "b"
    before = sorted(tmp_path.rglob("*"))
    with pytest.raises(SeqpoolError, match=message):
        embed_files(inputs, out, model=str(tiny_bert_dir), progress=False)
    assert sorted(tmp_path.rglob("*")) == before  # nothing created, nothing complete-looking


def test_resume_after_the_driver_is_killed(ray_cluster, tmp_path, tiny_bert_dir, tiny_bert_encoder):
    """A driver killed with SIGKILL mid-run; --resume embeds only the missing shards."""
    corpus = write_lines(tmp_path / "big.txt", [f"{LINES[i % len(LINES)]} {i % 7}" for i in range(120)])
    out = tmp_path / "out"
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(f"""
        import time
        from seqpool.distributed import Embedder, embed_files

        class Slow(Embedder):
            def embed(self, texts):
                time.sleep(0.25)
                return super().embed(texts)

        embed_files([{str(corpus)!r}], {str(out)!r}, embedder=Slow(model={str(tiny_bert_dir)!r}), shard_rows=10,
                    rows_per_call=10, workers=1, ray_address={ray_cluster!r}, progress=False)
    """))
    driver = subprocess.Popen([sys.executable, str(script)], cwd=REPO, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT)
    try:
        _wait_for(lambda: len(list(out.glob("part-*.parquet"))) >= 2 or driver.poll() is not None, 120)
        driver.send_signal(signal.SIGKILL)
    finally:
        output = driver.communicate(timeout=30)[0]
    assert driver.returncode == -signal.SIGKILL, output.decode(errors="replace")
    written = set(out.glob("part-*.parquet"))
    assert 2 <= len(written) < 12
    with pytest.raises(SeqpoolError, match="unfinished run.*--resume"):
        load_folder(out)
    mtimes = {path: path.stat().st_mtime_ns for path in written}
    result = embed_files([corpus], out, model=str(tiny_bert_dir), shard_rows=10, rows_per_call=10, workers=1,
                         resume=True, progress=False)
    assert result.resumed_shards == len(written) and result.shards == 12
    assert {path: path.stat().st_mtime_ns for path in written} == mtimes  # done shards were not redone
    np.testing.assert_allclose(load_folder(out), expected(tiny_bert_encoder, [corpus]), atol=1e-6, rtol=0)


def test_a_killed_actor_is_restarted_and_no_row_is_lost_or_duplicated(ray_cluster, tmp_path, tiny_bert_dir,
                                                                     tiny_bert_encoder):
    corpus = write_lines(tmp_path / "big.txt", [f"{LINES[i % len(LINES)]} {i}" for i in range(100)])
    out = tmp_path / "out"
    outcome = {}

    def run():
        try:
            outcome["result"] = embed_files([corpus], out, embedder=SlowEmbedder(model=str(tiny_bert_dir)),
                                            shard_rows=10, rows_per_call=5, workers=2, progress=False)
        except BaseException as error:  # reported below
            outcome["error"] = error

    thread = threading.Thread(target=run)
    thread.start()
    _wait_for(lambda: _actor_pids("_ShardWorker") and list(out.glob("part-*.parquet")) or not thread.is_alive(), 120)
    victims = _actor_pids("_ShardWorker")
    assert victims, "no actor found to kill"
    os.kill(victims[0], signal.SIGKILL)
    thread.join(180)
    assert not thread.is_alive() and "error" not in outcome, outcome
    assert outcome["result"].shards == 10 and len(list(out.glob("part-*.parquet"))) == 10
    table = pq.read_table(sorted(out.glob("part-*.parquet")))
    assert table.column("row").to_pylist() == list(range(100))
    np.testing.assert_allclose(load_folder(out), expected(tiny_bert_encoder, [corpus]), atol=1e-6, rtol=0)


def fail_then_resume(embedder_class: type, tmp_path: Path, tiny_bert_dir, tiny_bert_encoder):
    """Embed 30 lines whose row 23 ("boom") breaks ``embedder_class`` while its marker file
    exists, with max_attempts=2; then remove the marker and resume. Returns the failed run's
    message, the resumed run's result and the corpus path; checks the resumed vectors."""
    lines = [f"line {i}" for i in range(30)]
    lines[23] = "boom"
    corpus = write_lines(tmp_path / "c.txt", lines)
    marker = tmp_path / "marker"
    marker.write_text("")
    embedder = embedder_class(model=str(tiny_bert_dir))
    embedder.marker = str(marker)
    out = tmp_path / "out"
    with pytest.raises(SeqpoolError) as caught:
        embed_files([corpus], out, embedder=embedder, shard_rows=10, rows_per_call=10, workers=1, max_attempts=2,
                    progress=False)
    marker.unlink()
    result = embed_files([corpus], out, embedder=embedder, shard_rows=10, rows_per_call=10, workers=1, resume=True,
                         progress=False)
    np.testing.assert_allclose(load_folder(out), expected(tiny_bert_encoder, [corpus]), atol=1e-6, rtol=0)
    return str(caught.value), result, corpus


def test_a_shard_failing_repeatedly_is_named_and_resume_continues(ray_cluster, tmp_path, tiny_bert_dir,
                                                                  tiny_bert_encoder):
    message, result, corpus = fail_then_resume(FailingEmbedder, tmp_path, tiny_bert_dir, tiny_bert_encoder)
    assert "\n" not in message
    assert f"part-00000-000000000020-000000000030.parquet ({corpus} rows 20-29) failed 2 times" in message
    assert "cannot embed boom" in message and "--resume" in message
    assert 0 < result.resumed_shards < 3


def test_rows_that_crash_their_actor_every_time_end_the_run_in_one_line_and_resume_continues(
        ray_cluster, tmp_path, tiny_bert_dir, tiny_bert_encoder):
    """Ray restarts a dead actor and resends its call forever by default; here max_attempts bounds it."""
    message, result, corpus = fail_then_resume(CrashingEmbedder, tmp_path, tiny_bert_dir, tiny_bert_encoder)
    assert "\n" not in message and "an actor died 2 times running the same rows" in message
    assert f"part-00000-000000000020-000000000030.parquet ({corpus} rows 20-29)" in message  # "boom"'s shard
    assert "--resume" in message
    assert result.resumed_shards < 3


@pytest.mark.integration
def test_packaged_minilm_equals_local_seqpool_embed(ray_cluster, tmp_path, minilm_path):
    """The packaged model, through the CLI's local engine and the Ray engine: same vectors."""
    from click.testing import CliRunner

    from seqpool.cli import main

    lines = [f"{LINES[i % len(LINES)]} number {i}" if i % 5 else "" for i in range(300)]
    first, second = write_lines(tmp_path / "one.txt", lines), write_lines(tmp_path / "two.txt", lines[::-1][:77])
    local = []
    for path in (first, second):
        result = CliRunner().invoke(main, ["embed", str(path), "-o", str(path.with_suffix(".npy")), "-q"])
        assert result.exit_code == 0, result.output
        local.append(np.load(path.with_suffix(".npy")))
    embed_files([first, second], tmp_path / "out", shard_rows=64, workers=1, progress=False)  # one MiniLM to load
    difference = np.abs(load_folder(tmp_path / "out") - np.concatenate(local)).max()
    assert difference <= 1e-6, difference


def test_spark_recipe_on_local_2(monkeypatch, tiny_bert_dir, tiny_bert_encoder):
    """The README's Spark recipe: the same Embedder inside pyspark's predict_batch_udf."""
    pytest.importorskip("pyspark", reason="the Spark recipe test needs pyspark (not a seqpool dependency)")
    if shutil.which("java") is None:
        pytest.skip("the Spark recipe test needs a Java runtime")
    from pyspark.ml.functions import predict_batch_udf
    from pyspark.sql import SparkSession
    from pyspark.sql.types import ArrayType, FloatType

    monkeypatch.setenv("PYSPARK_PYTHON", sys.executable)
    model = str(tiny_bert_dir)

    def make_predict_fn():  # runs once per Spark Python worker: one model each
        embedder = Embedder(model=model, strategies="mean")
        return lambda texts: embedder.embed(texts.tolist())["mean"]

    spark = (SparkSession.builder.master("local[2]").appName("seqpool-test").config("spark.ui.enabled", "false")
             .config("spark.sql.shuffle.partitions", "2").getOrCreate())
    try:
        embed = predict_batch_udf(make_predict_fn, return_type=ArrayType(FloatType()), batch_size=4)
        frame = spark.createDataFrame(list(enumerate(LINES)), ["id", "text"]).repartition(2)
        rows = frame.withColumn("mean", embed("text")).orderBy("id").collect()
    finally:
        spark.stop()
    assert [row["id"] for row in rows] == list(range(len(LINES)))
    vectors = np.asarray([row["mean"] for row in rows], dtype=np.float32)
    np.testing.assert_allclose(vectors, tiny_bert_encoder.encode(LINES)["mean"], atol=1e-6, rtol=0)


# -- helpers --------------------------------------------------------------------------------------------


def _wait_for(condition, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(0.05)


def _actor_pids(name: str) -> list[int]:
    """PIDs of Ray actor processes whose title names ``name`` (Ray sets ``ray::MapWorker(...)``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                title = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if title.startswith("ray::") and name in title:
                pids.append(int(entry.name))
    return sorted(pids)
