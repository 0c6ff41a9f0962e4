"""The engine core (seqpool.engine): one Embedder both engines call, one settings record in the
files each engine wrote before, one compaction, option records from keywords. No Ray needed."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest

from seqpool.embed import EmbedSettings, embed_corpus, embed_file
from seqpool.engine import EmbeddedBatch, Embedder, RunSettings, gather_options, run_compaction, truncated_rows
from seqpool.errors import SeqpoolError
from seqpool.io import TextSource
from seqpool.io.loading import read_metadata
from seqpool.vector_options import VectorOptions

LONG = "the cat sat on the mat and a very good film about a dog " * 8  # over the tiny model's 64 tokens
LINES = ["one", LONG, "", "two", "three"]


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return path


def test_embed_returns_vectors_with_the_statistics_of_that_call(tiny_bert_encoder):
    embedder = Embedder.from_encoder(tiny_bert_encoder, ["mean", "max"])
    batch = embedder.embed(LINES)
    vectors, stats = tiny_bert_encoder.encode(LINES, ["mean", "max"], return_stats=True)
    assert isinstance(batch, EmbeddedBatch) and list(batch) == ["mean", "max"] and batch.chunks is None
    for name in ("mean", "max"):
        np.testing.assert_array_equal(batch[name], vectors[name])
    assert batch.stats == stats and truncated_rows(batch) == (1,) and stats.truncated == 1
    assert truncated_rows({"mean": vectors["mean"]}) == ()  # a plain dict records none

    class Slow(Embedder):  # an override that returns super().embed keeps them
        def embed(self, texts):
            return super().embed(texts)

    assert truncated_rows(Slow.from_encoder(tiny_bert_encoder).embed(LINES)) == (1,)


def test_chunk_rows_come_with_their_columns_but_never_into_a_batch(tiny_bert_encoder):
    options = VectorOptions(long_texts="late", window=16, chunk_output=True)
    embedder = Embedder.from_encoder(tiny_bert_encoder, ["mean"], options=options)
    batch = embedder.embed(LINES)
    vectors, chunks = tiny_bert_encoder.encode_chunks(LINES, ["mean"], long_texts="late", window=16)
    np.testing.assert_array_equal(batch["mean"], vectors["mean"])
    np.testing.assert_array_equal(batch.chunks["doc"], chunks["doc"])
    with pytest.raises(SeqpoolError, match="one row per chunk"):
        embedder({"text": np.array(LINES, dtype=object)})


def test_an_embedder_around_an_encoder_pickles_its_settings_only(tiny_bert_encoder, tiny_bert_dir):
    embedder = Embedder.from_encoder(tiny_bert_encoder, ["cls"], options=VectorOptions(prompt="q: ", precision="int8"))
    assert embedder.encoder is tiny_bert_encoder
    assert embedder.vectors == VectorOptions(prompt="q: ")  # the storage options are the engine's
    copy = pickle.loads(pickle.dumps(embedder))
    assert len(pickle.dumps(embedder)) < 2000 and copy._encoder is None and copy.settings == embedder.settings
    with pytest.raises(TypeError, match="unexpected keyword argument 'precision'"):
        Embedder(str(tiny_bert_dir), precision="int8")
    assert Embedder(str(tiny_bert_dir), options=VectorOptions(prompt="q: "), truncate_dim=8).vectors == VectorOptions(
        prompt="q: ", truncate_dim=8)


def test_the_local_loop_embeds_every_chunk_through_the_embedder(corpus, tmp_path, tiny_bert_encoder, monkeypatch):
    calls = []
    real = Embedder.embed

    def counted(self, texts, progress=False):
        calls.append(len(texts))
        return real(self, texts, progress)

    monkeypatch.setattr(Embedder, "embed", counted)
    result = embed_corpus(tiny_bert_encoder, TextSource.open(corpus), tmp_path / "e.npy", chunk_size=2,
                          skip_empty=True, progress=False)
    assert calls == [2, 1, 1]  # chunks of 2, 2, 1 texts; the empty one skipped, not encoded
    assert result.truncated == 1
    np.testing.assert_array_equal(np.load(result.paths[0])[2], 0)


def test_the_checkpoint_holds_the_settings_earlier_versions_wrote(corpus, tmp_path, tiny_bert_encoder, monkeypatch):
    """A resume compares every key of the checkpoint's settings: these keys and values are a format."""
    real, calls = tiny_bert_encoder.encode, []

    def interrupted(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(tiny_bert_encoder, "encode", interrupted)
    out = tmp_path / "e.npy"
    with pytest.raises(KeyboardInterrupt):
        embed_corpus(tiny_bert_encoder, TextSource.open(corpus), out, chunk_size=2, progress=False,
                     options=VectorOptions(prompt="q: "))
    settings = json.loads((tmp_path / "e.npy.partial" / "progress.json").read_text())["settings"]
    encoder = tiny_bert_encoder
    normalize = encoder.default_normalize
    assert settings == {
        "model": encoder.name_or_path, "layers": list(encoder.layers), "max_length": encoder.max_length,
        "dtype": encoder.precision, "normalize": normalize, "skip_empty": False, "batch_size": None,
        "chunk_size": 2, "input_format": "txt", "text_field": TextSource.open(corpus).text_field,
        "pipeline": {"mean": encoder.pipeline("mean", normalize)},
        "vectors": {"prompt": "q: ", "long_texts": "truncate", "chunk_output": False, "precision": "float32"},
        "strategies": ["mean"], "dim": 32, "output_format": "npy", "columns": {"mean": [[32], "float32"]}}
    monkeypatch.undo()
    resumed = embed_corpus(tiny_bert_encoder, TextSource.open(corpus), out, chunk_size=2, progress=False,
                           resume=True, options=VectorOptions(prompt="q: "))
    assert resumed.resumed_from == 2 and resumed.rows == len(LINES)


def test_the_output_metadata_keys_are_those_earlier_versions_wrote(corpus, tmp_path, tiny_bert_dir):
    out = tmp_path / "e.parquet"
    embed_file(corpus, out, model=tiny_bert_dir, strategies=["mean", "max"], precision="uint8", progress=False)
    metadata = read_metadata(out)
    assert {"model", "strategies", "normalize", "layers", "max_length", "dtype", "texts", "truncated", "pipeline",
            "dims", "long_texts", "chunk_output", "precision", "compaction"} <= set(metadata)
    assert "calibration" not in metadata and "int8_calibration" not in metadata
    assert (metadata["strategies"], metadata["texts"], metadata["truncated"]) == ("mean,max", "5", "1")
    assert json.loads(metadata["dims"]) == {"mean": 32, "max": 32} and metadata["precision"] == "uint8"


def test_the_manifest_settings_merge_encoding_and_storage_options():
    record = RunSettings("m", ("mean",), True, (-1,), 64, "float32", {"mean": 8}, {"mean": "mean -> Normalize"},
                         VectorOptions(prompt="q: ", truncate_dim=8, precision="int8", calibration="/c.txt"), 16)
    assert record.manifest(5) == {
        "model": "m", "strategies": ["mean"], "normalize": True, "layers": [-1], "max_length": 64,
        "dtype": "float32", "dims": {"mean": 8}, "pipeline": {"mean": "mean -> Normalize"},
        "vectors": {"prompt": "q: ", "truncate_dim": 8, "precision": "int8", "calibration": "/c.txt"},
        "batch_size": 16, "shard_rows": 5}
    assert "vectors" not in RunSettings("m", ("mean",), True, (-1,), 64, "float32", {"mean": 8}, {}).described()


def test_a_recorded_compaction_is_taken_as_it_is():
    fresh = run_compaction(None, "int8")
    fresh.fit("mean", np.array([[0.0, 1.0], [1.0, 3.0]], dtype=np.float32))
    kept = run_compaction({**fresh.to_metadata(), "truncated": 0}, "uint8")
    assert kept.precision == "int8" and np.array_equal(kept.ranges["mean"], fresh.ranges["mean"])
    assert run_compaction({}, "binary").precision == "binary"


def test_options_come_as_records_or_as_keywords(corpus, tmp_path):
    settings, options = gather_options("f", {"chunk_size": 3, "prompt": "q: "}, (EmbedSettings, None),
                                       (VectorOptions, VectorOptions(precision="int8")))
    assert settings.chunk_size == 3 and options == VectorOptions(prompt="q: ", precision="int8")
    given = EmbedSettings(batch_size=4)
    assert gather_options("f", {}, (EmbedSettings, given)) == [given]
    with pytest.raises(TypeError, match=r"embed_file\(\) got an unexpected keyword argument 'chunksize'"):
        embed_file(corpus, tmp_path / "e.npy", chunksize=2)
    with pytest.raises(TypeError, match="expects a VectorOptions, got dict"):
        embed_file(corpus, tmp_path / "e.npy", options={"prompt": "q: "})
    with pytest.raises(SeqpoolError, match="`chunk_size` must be a whole number of at least 1, got 0"):
        embed_file(corpus, tmp_path / "e.npy", settings=EmbedSettings(), chunk_size=0)


@pytest.mark.parametrize("field,value,message", [
    ("resume", "no", "`resume` must be True, False or None"),
    ("skip_empty", 1, "`skip_empty` must be True, False or None"),
    ("chunk_size", None, "`chunk_size` must be a whole number of at least 1, got None"),
    ("max_length", 2.0, "`max_length` must be a whole number of at least 1, got 2.0"),
    ("strategies", ["median"], "unknown pooling strategy 'median'"),
])
def test_embed_settings_check_what_needs_no_model(field, value, message):
    with pytest.raises(SeqpoolError, match=message):
        EmbedSettings(**{field: value})
    assert EmbedSettings(strategies="max", resume=None).strategies == ("max",)


def test_outputs_are_checked_against_inputs_once(corpus, tmp_path, tiny_bert_dir, monkeypatch):
    import seqpool.embed

    calls = []
    real = seqpool.embed.check_outputs
    monkeypatch.setattr(seqpool.embed, "check_outputs", lambda *args: calls.append(args[2]) or real(*args))
    embed_file(corpus, tmp_path / "e.npy", model=tiny_bert_dir, progress=False)
    assert calls == [("mean",)]
