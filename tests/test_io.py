"""seqpool.io: streamed corpus reading, row alignment, atomic resumable writers."""

from __future__ import annotations

import csv
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seqpool.embed import embed_corpus
from seqpool.errors import SeqpoolError
from seqpool.io import (
    OUTPUT_FORMATS,
    EmbeddingSpool,
    TextDigest,
    TextSource,
    chunked,
    default_output_path,
    detect_input_format,
    load_embeddings,
    output_paths,
    write_jsonl,
    write_parquet,
    write_safetensors,
)

TEXTS = ["first line", "", "  ", "dup", "naïve café ✓", "dup", "last"]


def write_lines(path, lines, ending="\n"):
    path.write_bytes("".join(line + ending for line in lines).encode("utf-8"))
    return path


def read_all(path, **kwargs):
    return list(TextSource.open(path, **kwargs).texts())


# -- reading ------------------------------------------------------------------------------------


@pytest.mark.parametrize("ending", ["\n", "\r\n"])
def test_text_lines_keep_every_row_including_empty_ones(tmp_path, ending):
    path = write_lines(tmp_path / "c.txt", TEXTS, ending)
    assert read_all(path) == TEXTS
    assert TextSource.open(path).count() == len(TEXTS)


def test_text_without_final_newline_and_with_bom(tmp_path):
    path = tmp_path / "c.txt"
    path.write_bytes(b"\xef\xbb\xbfone\ntwo")
    assert read_all(path) == ["one", "two"]


def test_text_keeps_characters_other_than_the_line_ending(tmp_path):
    # str.splitlines would split on \x0b, \x1c and \u2028 and shift every later row.
    lines = ["a\x0bb", "c\u2028d", "e\x1cf", "tab\there", "cr\rinside"]
    assert read_all(write_lines(tmp_path / "c.txt", lines)) == lines


def test_invalid_utf8_names_the_line(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"fine\nalso fine\nbad \xff byte\n")
    with pytest.raises(SeqpoolError, match=r"line 3: not valid UTF-8"):
        TextSource.open(path).count()


@settings(max_examples=40, deadline=None)
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r")),
                max_size=30), st.integers(1, 7), st.integers(0, 35))
def test_chunks_cover_rows_in_order_from_any_start(tmp_path_factory, lines, chunk_size, skip):
    path = write_lines(tmp_path_factory.mktemp("c") / "c.txt", lines)
    chunks = list(TextSource.open(path).chunks(chunk_size, skip=skip))
    assert [text for chunk in chunks for text in chunk] == lines[skip:]
    assert all(0 < len(chunk) <= chunk_size for chunk in chunks)


def test_chunked_rejects_nonpositive_sizes():
    assert list(chunked(range(5), 2)) == [[0, 1], [2, 3], [4]]
    with pytest.raises(SeqpoolError):
        list(chunked(range(3), 0))


def test_jsonl_reads_the_text_field_and_skips_blank_lines(tmp_path):
    path = tmp_path / "c.jsonl"
    records = [{"text": t, "label": i} for i, t in enumerate(TEXTS)] + [{"text": None}, {"body": "x", "text": "y"}]
    path.write_text("\n".join(json.dumps(r) for r in records) + "\n\n", encoding="utf-8")
    assert read_all(path) == TEXTS + ["", "y"]


def test_jsonl_errors_name_the_line_and_field(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "a"}\n{"body": "b"}\n', encoding="utf-8")
    with pytest.raises(SeqpoolError, match=r"line 2: no field 'text' \(fields: body\)"):
        read_all(path)
    path.write_text('{"text": "a"}\n{"text": 3}\n', encoding="utf-8")
    with pytest.raises(SeqpoolError, match="line 2: field 'text' is int"):
        read_all(path)
    path.write_text('{"text": "a"}\nnot json\n', encoding="utf-8")
    with pytest.raises(SeqpoolError, match="line 2: not valid JSON"):
        read_all(path)


@pytest.mark.parametrize("delimiter,suffix", [(",", ".csv"), ("\t", ".tsv")])
def test_csv_and_tsv_records_with_quoted_newlines(tmp_path, delimiter, suffix):
    texts = TEXTS + ["multi\nline, \"quoted\""]
    path = tmp_path / f"c{suffix}"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, delimiter=delimiter)
        writer.writerow(["id", "text"])
        writer.writerows([i, t] for i, t in enumerate(texts))
    assert read_all(path) == texts
    with pytest.raises(SeqpoolError, match=r"no column 'body' in the header \(id, text\)"):
        read_all(path, text_field="body")


def test_single_column_csv_keeps_empty_texts(tmp_path):
    path = tmp_path / "c.csv"
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([["text"], *([t] for t in TEXTS)])
    assert read_all(path) == TEXTS


def test_parquet_streams_the_text_column(tmp_path):
    path = tmp_path / "c.parquet"
    pq.write_table(pa.table({"text": TEXTS + [None], "n": list(range(len(TEXTS) + 1))}), path, row_group_size=3)
    source = TextSource.open(path)
    assert list(source.texts()) == TEXTS + [""]
    assert source.count() == len(TEXTS) + 1
    with pytest.raises(SeqpoolError, match="no column 'body'"):
        TextSource.open(path, text_field="body")
    with pytest.raises(SeqpoolError, match="holds int64, not text"):
        TextSource.open(path, text_field="n")


def test_open_rejects_missing_files_directories_and_unknown_formats(tmp_path):
    with pytest.raises(SeqpoolError, match="input file not found"):
        TextSource.open(tmp_path / "missing.txt")
    with pytest.raises(SeqpoolError, match="is a directory"):
        TextSource.open(tmp_path)
    with pytest.raises(SeqpoolError, match="unknown input format 'xml'"):
        TextSource.open(write_lines(tmp_path / "a.txt", ["a"]), input_format="xml")
    with pytest.raises(SeqpoolError, match="parquet cannot be read from stdin"):
        TextSource.open("-", input_format="parquet")


def test_format_detection_and_default_outputs(tmp_path):
    assert detect_input_format("a.JSONL") == "jsonl"
    assert detect_input_format("a.text") == "txt"
    assert default_output_path("data/corpus.txt") == default_output_path("data/corpus.txt", "npy")
    assert str(default_output_path("data/corpus.txt")).endswith("corpus.npy")
    assert str(default_output_path("corpus.parquet", "parquet")) == "corpus.embeddings.parquet"
    with pytest.raises(SeqpoolError, match="stdin"):
        default_output_path("-")
    assert output_paths(tmp_path / "e.npy", "npy", ["mean", "max"]) == {
        "mean": tmp_path / "e.mean.npy", "max": tmp_path / "e.max.npy"}
    assert set(output_paths(tmp_path / "e.parquet", "parquet", ["mean", "max"]).values()) == {tmp_path / "e.parquet"}


def test_digest_depends_on_text_boundaries():
    assert TextDigest().update(["ab", "c"]).hexdigest() != TextDigest().update(["a", "bc"]).hexdigest()
    assert TextDigest().update(["a", "b"]).hexdigest() == TextDigest().update(["a"]).update(["b"]).hexdigest()


# -- writing --------------------------------------------------------------------------------------


@pytest.mark.parametrize("writer,suffix", [(write_parquet, "parquet"), (write_jsonl, "jsonl"),
                                           (write_safetensors, "safetensors")])
@pytest.mark.parametrize("rows", [0, 1, 37])
def test_writers_round_trip_exactly(tmp_path, writer, suffix, rows):
    rng = np.random.default_rng(rows)
    arrays = {"mean": rng.standard_normal((rows, 5)).astype(np.float32),
              "max": (rng.standard_normal((rows, 5)) * 1e-30).astype(np.float32)}
    path = tmp_path / f"e.{suffix}"
    writer(path, arrays, {"model": "m"})
    if rows == 0 and suffix == "jsonl":
        assert path.read_text() == ""  # an empty JSONL has no row to name its keys
        return
    for name, array in arrays.items():
        loaded = load_embeddings(path, name)
        assert loaded.dtype == np.float32 and loaded.shape == array.shape
        np.testing.assert_array_equal(loaded, array)


def test_safetensors_output_is_readable_by_the_safetensors_library(tmp_path):
    from safetensors import safe_open

    arrays = {"mean": np.arange(12, dtype=np.float32).reshape(4, 3), "cls": -np.ones((4, 3), np.float32)}
    write_safetensors(tmp_path / "e.safetensors", arrays, {"model": "tiny"})
    with safe_open(str(tmp_path / "e.safetensors"), framework="numpy") as handle:
        assert handle.metadata() == {"model": "tiny"}
        assert sorted(handle.keys()) == ["cls", "mean"]
        np.testing.assert_array_equal(handle.get_tensor("mean"), arrays["mean"])


def test_load_embeddings_asks_for_a_strategy_when_several(tmp_path):
    write_safetensors(tmp_path / "e.safetensors", {"a": np.zeros((1, 2), np.float32),
                                                   "b": np.ones((1, 2), np.float32)}, {})
    with pytest.raises(SeqpoolError, match="name the strategy"):
        load_embeddings(tmp_path / "e.safetensors")
    with pytest.raises(SeqpoolError, match="no 'c' embeddings"):
        load_embeddings(tmp_path / "e.safetensors", "c")


def spool(tmp_path, resume=False, fmt="npy", strategies=("mean",), settings=None):
    return EmbeddingSpool(tmp_path / f"out.{fmt}", fmt, strategies, 3, settings or {"model": "m"}, resume=resume)


def test_spool_output_appears_only_when_finished(tmp_path):
    rows = np.arange(6, dtype=np.float32).reshape(2, 3)
    writer = spool(tmp_path)
    writer.append({"mean": rows}, "d1")
    assert not (tmp_path / "out.npy").exists()
    assert writer.finish() == [tmp_path / "out.npy"]
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), rows)
    assert not writer.folder.exists()


def test_spool_resume_drops_rows_written_after_the_last_checkpoint(tmp_path):
    first, second = np.ones((2, 3), np.float32), np.full((1, 3), 2.0, np.float32)
    writer = spool(tmp_path, strategies=("mean", "max"))
    writer.append({"mean": first, "max": -first}, "digest-after-2")
    writer.close()
    with open(writer.spool_path("mean"), "ab") as handle:  # a chunk half-written when the crash hit
        handle.write(b"\x00" * 7)
    resumed = spool(tmp_path, resume=True, strategies=("mean", "max"))
    assert (resumed.rows_done, resumed.input_digest) == (2, "digest-after-2")
    resumed.append({"mean": second, "max": -second}, "digest-after-3")
    resumed.finish()
    np.testing.assert_array_equal(np.load(tmp_path / "out.mean.npy"), np.vstack([first, second]))
    np.testing.assert_array_equal(np.load(tmp_path / "out.max.npy"), -np.vstack([first, second]))


def test_spool_refuses_to_clobber_or_resume_with_other_settings(tmp_path):
    writer = spool(tmp_path)
    writer.append({"mean": np.zeros((1, 3), np.float32)}, "d")
    writer.close()
    with pytest.raises(SeqpoolError, match=r"interrupted run .* \(1 rows done\); add --resume"):
        spool(tmp_path)
    with pytest.raises(SeqpoolError, match=r"settings differ .*model: 'm' then, 'other' now"):
        spool(tmp_path, resume=True, settings={"model": "other"})


# -- the embedding loop -------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", OUTPUT_FORMATS)
def test_embed_corpus_rows_match_a_direct_encode(tmp_path, tiny_bert_encoder, fmt):
    path = write_lines(tmp_path / "c.txt", TEXTS)
    result = embed_corpus(tiny_bert_encoder, TextSource.open(path), tmp_path / f"e.{fmt}",
                          strategies=["mean", "cls"], progress=False)
    expected = tiny_bert_encoder.encode(TEXTS, ["mean", "cls"])
    assert (result.rows, result.dim) == (len(TEXTS), tiny_bert_encoder.hidden_size)
    for strategy in ("mean", "cls"):
        path = result.paths[0] if fmt != "npy" else tmp_path / f"e.{strategy}.npy"
        np.testing.assert_array_equal(load_embeddings(path, strategy), expected[strategy])


def test_embed_corpus_chunking_does_not_change_rows(tmp_path, tiny_bert_encoder):
    path = write_lines(tmp_path / "c.txt", TEXTS * 3)
    whole = embed_corpus(tiny_bert_encoder, TextSource.open(path), tmp_path / "a.npy", progress=False)
    small = embed_corpus(tiny_bert_encoder, TextSource.open(path), tmp_path / "b.npy", chunk_size=2,
                         progress=False)
    np.testing.assert_allclose(np.load(small.paths[0]), np.load(whole.paths[0]), atol=1e-5)
    rows = np.load(whole.paths[0])
    np.testing.assert_array_equal(rows[3], rows[5])  # duplicates ("dup") stay duplicates in place


def test_skip_empty_writes_zero_rows_in_place(tmp_path, tiny_bert_encoder):
    path = write_lines(tmp_path / "c.txt", TEXTS)
    result = embed_corpus(tiny_bert_encoder, TextSource.open(path), tmp_path / "e.npy", skip_empty=True,
                          chunk_size=3, progress=False)
    rows = np.load(result.paths[0])
    empty = [i for i, t in enumerate(TEXTS) if not t.strip()]
    assert not rows[empty].any()
    full = [i for i, t in enumerate(TEXTS) if t.strip()]
    np.testing.assert_allclose(rows[full], tiny_bert_encoder.encode([TEXTS[i] for i in full])["mean"], atol=1e-5)


def test_empty_input_gives_zero_rows(tmp_path, tiny_bert_encoder):
    path = tmp_path / "empty.txt"
    path.write_bytes(b"")
    result = embed_corpus(tiny_bert_encoder, TextSource.open(path), tmp_path / "e.npy", progress=False)
    assert np.load(result.paths[0]).shape == (0, tiny_bert_encoder.hidden_size)


def test_failure_before_the_first_checkpoint_leaves_nothing(tmp_path, tiny_bert_encoder, monkeypatch):
    path = write_lines(tmp_path / "c.txt", TEXTS)

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    monkeypatch.setattr(tiny_bert_encoder, "encode", broken)
    with pytest.raises(RuntimeError):
        embed_corpus(tiny_bert_encoder, TextSource.open(path), tmp_path / "e.npy", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c.txt"]


def test_resume_refuses_a_changed_input_prefix(tmp_path, tiny_bert_encoder, monkeypatch):
    path = write_lines(tmp_path / "c.txt", TEXTS)
    calls = []
    real_encode = tiny_bert_encoder.encode

    def interrupted_after_one_chunk(*args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return real_encode(*args, **kwargs)

    monkeypatch.setattr(tiny_bert_encoder, "encode", interrupted_after_one_chunk)
    with pytest.raises(KeyboardInterrupt):
        embed_corpus(tiny_bert_encoder, TextSource.open(path), tmp_path / "e.npy", chunk_size=2, progress=False)
    monkeypatch.undo()
    write_lines(path, ["changed"] + TEXTS[1:])
    with pytest.raises(SeqpoolError, match="first 2 rows of .* differ"):
        embed_corpus(tiny_bert_encoder, TextSource.open(path), tmp_path / "e.npy", chunk_size=2,
                     resume=True, progress=False)
