"""Fault battery 3, reading back: ``load_embeddings`` verifies a file against its own metadata,
and any damaged, foreign or crafted file ends in one SeqpoolError line naming it."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from seqpool.cli import main
from seqpool.encoder import Encoder
from seqpool.errors import SeqpoolError
from seqpool.io import TextSource, load_embeddings
from seqpool.io.writers import read_metadata, write_jsonl, write_parquet, write_safetensors
from seqpool.quantize import Compaction, dequantize

LINES = ["the cat sat on the mat", "hello world", "a very good film", "not a bad movie", "xyz"]


def embed(*args: object) -> None:
    result = CliRunner().invoke(main, ["embed", *map(str, args)])
    assert result.exit_code == 0, (result.output, result.exception)


def refused(path, match: str, **kwargs) -> SeqpoolError:
    """``load_embeddings(path)`` fails with one SeqpoolError line that names the file."""
    with pytest.raises(SeqpoolError, match=match) as caught:
        load_embeddings(path, **kwargs)
    message = str(caught.value)
    assert path.name in message and len(message.splitlines()) == 1, message
    return caught.value


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def int8_pair(corpus, tmp_path, tiny_bert_dir):
    """``seqpool embed --precision int8 --strategy mean,max -o q8.npy``: q8.mean.npy, q8.max.npy + sidecars."""
    embed(corpus, "--model", tiny_bert_dir, "-o", tmp_path / "q8.npy", "--precision", "int8", "--strategy", "mean,max")
    return tmp_path / "q8.mean.npy", tmp_path / "q8.max.npy"


# -- 1. the strategy asked must be one the file holds -------------------------------------------


def test_an_int8_npy_refuses_another_strategys_name(int8_pair):
    _, max_file = int8_pair
    assert read_metadata(max_file)["strategies"] == "mean,max"  # the sidecar lists both ...
    refused(max_file, r"has no 'mean' embeddings \(it holds max\)", strategy="mean")  # ... the name says which
    ranges = Compaction.from_metadata(read_metadata(max_file)).ranges
    expected = dequantize(np.load(max_file), "int8", ranges["max"])
    np.testing.assert_array_equal(load_embeddings(max_file, "max"), expected)


def test_a_float_npy_refuses_a_strategy_it_cannot_vouch_for(corpus, tmp_path, tiny_bert_dir):
    embed(corpus, "--model", tiny_bert_dir, "-o", tmp_path / "f.npy", "--strategy", "max")
    refused(tmp_path / "f.npy", r"does not record which strategy .*leave `strategy` out", strategy="mean")
    np.testing.assert_array_equal(load_embeddings(tmp_path / "f.npy"), np.load(tmp_path / "f.npy"))
    embed(corpus, "--model", tiny_bert_dir, "-o", tmp_path / "two.npy", "--strategy", "mean,max")
    refused(tmp_path / "two.max.npy", r"does not record which strategy", strategy="mean")
    np.testing.assert_array_equal(load_embeddings(tmp_path / "two.max.npy", "max"), np.load(tmp_path / "f.npy"))


# -- 2. only what seqpool writes, in the dtype and rank it writes it ----------------------------


@pytest.mark.parametrize("array, match", [
    (np.zeros((3, 4), np.float64), r"it holds a float64 array of shape \(3, 4\), where seqpool writes float32"),
    (np.zeros(4, np.float32), r"it holds a float32 array of shape \(4,\)"),
    (np.zeros((2, 3, 4), np.float32), r"shape \(2, 3, 4\)"),
    (np.array(["a", "b"]), r"it holds a <U1 array"),
    (np.array([{"a": 1}], dtype=object), r"holds Python objects"),
    (np.zeros((3, 4), np.int8), r"it holds int8 codes but no 'compaction' metadata .*e\.npy\.json"),
])
def test_npy_arrays_seqpool_does_not_write_are_refused(tmp_path, array, match):
    np.save(tmp_path / "e.npy", array, allow_pickle=array.dtype.hasobject)
    refused(tmp_path / "e.npy", match)


def test_other_formats_refuse_foreign_dtypes_and_shapes(tmp_path):
    float64 = np.zeros((2, 3), np.float64)
    write_safetensors(tmp_path / "f.safetensors", {"mean": np.zeros((2, 3), np.float16)}, {})
    refused(tmp_path / "f.safetensors", r"'mean' holds float16 codes but no 'compaction' metadata")
    pq.write_table(pa.table({"mean": pa.FixedSizeListArray.from_arrays(pa.array(float64.ravel()), 3)}),
                   tmp_path / "d.parquet")
    refused(tmp_path / "d.parquet", r"'mean' is a float64 array of shape \(2, 3\)")
    pq.write_table(pa.table({"mean": pa.array([[1.0, 2.0], [3.0]], type=pa.list_(pa.float32()))}),
                   tmp_path / "ragged.parquet")
    refused(tmp_path / "ragged.parquet", r"'mean' is a object array")
    pq.write_table(pa.table({"mean": ["a", "b"]}), tmp_path / "s.parquet")
    refused(tmp_path / "s.parquet", r"'mean' is a object array of shape \(2,\)")
    (tmp_path / "s.jsonl").write_text('{"mean": ["a", "b"]}\n', encoding="utf-8")
    refused(tmp_path / "s.jsonl", r"line 1: 'mean' is not a list of 2 numbers")
    header = json.dumps({"mean": {"dtype": "BF16", "shape": [1, 2], "data_offsets": [0, 4]}}).encode()
    (tmp_path / "b.safetensors").write_bytes(len(header).to_bytes(8, "little") + header + bytes(4))
    refused(tmp_path / "b.safetensors", r"tensor 'mean' has dtype 'BF16'; seqpool writes F32, F16, I8, U8, I64")


def test_codes_outside_their_dtype_or_with_damaged_ranges_are_refused(tmp_path, int8_pair):
    mean_file, _ = int8_pair
    metadata = {"compaction": read_metadata(mean_file)["compaction"], "strategies": "mean"}
    codes = {"mean": np.load(mean_file)}
    write_jsonl(tmp_path / "q.jsonl", codes, metadata)
    (tmp_path / "q.jsonl.json").write_text(json.dumps(metadata), encoding="utf-8")
    np.testing.assert_array_equal(load_embeddings(tmp_path / "q.jsonl", decode=False), codes["mean"])
    rows = [json.loads(line) for line in (tmp_path / "q.jsonl").read_text(encoding="utf-8").splitlines()]

    def rewrite(row: int, values: list) -> None:
        changed = [dict(r, mean=values) if i == row else r for i, r in enumerate(rows)]
        (tmp_path / "q.jsonl").write_text("".join(json.dumps(r) + "\n" for r in changed), encoding="utf-8")

    rewrite(1, rows[1]["mean"][:-1])
    refused(tmp_path / "q.jsonl", r"line 2: 'mean' is not a list of 32 numbers like line 1's")
    rewrite(0, [300] + rows[0]["mean"][1:])
    refused(tmp_path / "q.jsonl", r"'mean' holds values that are not int8 numbers \(-128\.\.127\)")
    rewrite(0, [0.5] + rows[0]["mean"][1:])
    refused(tmp_path / "q.jsonl", r"'mean' holds values that are not int8 numbers")
    damaged = json.loads(metadata["compaction"])
    damaged["ranges"]["mean"][0][0] = float("nan")
    write_parquet(tmp_path / "q.parquet", codes, {"compaction": json.dumps(damaged)})
    refused(tmp_path / "q.parquet", r"int8 ranges stored for 'mean' are not \(2, 32\) finite")
    np.testing.assert_array_equal(load_embeddings(tmp_path / "q.parquet", decode=False), codes["mean"])


def test_a_null_parquet_row_is_refused_not_dropped(tmp_path):
    column = pa.array([[1.0, 2.0], None, [3.0, 4.0]], type=pa.list_(pa.float32(), 2))
    pq.write_table(pa.table({"mean": column}), tmp_path / "n.parquet")
    refused(tmp_path / "n.parquet", r"row 1 of 'mean' is null")
    column = pa.array([[1.0, 2.0], [3.0, None]], type=pa.list_(pa.float32(), 2))
    pq.write_table(pa.table({"mean": column}), tmp_path / "v.parquet")
    refused(tmp_path / "v.parquet", r"row 1 of 'mean' holds a null value")


# -- 3. crafted files: one line, no traceback, no huge allocation -------------------------------


def test_a_safetensors_header_claiming_2_62_bytes_is_refused_before_reading(tmp_path):
    path = tmp_path / "big.safetensors"
    path.write_bytes((2 ** 62).to_bytes(8, "little") + b"{}")
    refused(path, r"not a readable safetensors file: its header claims 4611686018427387904 bytes of the 10")
    with pytest.raises(SeqpoolError, match="big.safetensors"):
        read_metadata(path)
    header = json.dumps({"mean": {"dtype": "F32", "shape": [2 ** 40, 4], "data_offsets": [0, 2 ** 44]}}).encode()
    path.write_bytes(len(header).to_bytes(8, "little") + header)
    refused(path, r"tensor 'mean'.s shape \[1099511627776, 4\] and data offsets .* do not fit the file's 0 data bytes")


def test_a_garbage_parquet_is_refused(tmp_path):
    path = tmp_path / "g.parquet"
    path.write_bytes(b"garbage" * 10)
    refused(path, r"g\.parquet is not a readable parquet file")
    with pytest.raises(SeqpoolError, match=r"g\.parquet is not a readable parquet file"):
        read_metadata(path)


def test_jsonl_output_trailing_blank_lines_are_accepted_and_bad_lines_named(tmp_path):
    path = tmp_path / "e.jsonl"
    rows = np.arange(6, dtype=np.float32).reshape(3, 2)
    write_jsonl(path, {"mean": rows}, {})
    text = path.read_text(encoding="utf-8")
    path.write_text(text + "\n  \n", encoding="utf-8")
    np.testing.assert_array_equal(load_embeddings(path), rows)
    first, rest = text.split("\n", 1)
    path.write_text(first + "\n\n" + rest, encoding="utf-8")
    refused(path, r"e\.jsonl, line 2: a blank line between rows")
    path.write_text(first + "\n{oops\n" + rest, encoding="utf-8")
    refused(path, r"e\.jsonl, line 2: not valid JSON")
    path.write_text(first + '\n{"max": [1.0, 2.0]}\n', encoding="utf-8")
    refused(path, r"e\.jsonl, line 2: keys max differ from line 1's \(mean\)")


def test_a_truncated_npy_is_refused(tmp_path):
    path = tmp_path / "t.npy"
    np.save(path, np.zeros((30, 4), np.float32))
    path.write_bytes(path.read_bytes()[:-50])
    refused(path, r"t\.npy is truncated or damaged: its header promises a float32 array of shape \(30, 4\)")
    path.write_bytes(b"\x93NUMPY")
    refused(path, r"t\.npy is not a readable npy file")


# -- 4. valid outputs read back ------------------------------------------------------------------


def test_each_npy_of_a_several_strategy_int8_run_decodes_without_naming_it(int8_pair, tiny_bert_dir):
    floats = Encoder(tiny_bert_dir).encode(LINES, ["mean", "max"])
    for strategy, path in zip(("mean", "max"), int8_pair):
        ranges = Compaction.from_metadata(read_metadata(path)).ranges[strategy]
        decoded = load_embeddings(path)
        np.testing.assert_array_equal(decoded, dequantize(np.load(path), "int8", ranges))
        np.testing.assert_array_equal(decoded, load_embeddings(path, strategy))
        assert np.abs(decoded - floats[strategy]).max() <= (ranges[1] - ranges[0]).max() / 255


def test_an_empty_int8_npy_reads_back_as_zero_rows(tmp_path, tiny_bert_dir):
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    embed(tmp_path / "empty.txt", "--model", tiny_bert_dir, "-o", tmp_path / "e.npy", "--precision", "int8")
    width = Encoder(tiny_bert_dir).hidden_size
    loaded = load_embeddings(tmp_path / "e.npy")
    assert loaded.shape == (0, width) and loaded.dtype == np.float32
    assert load_embeddings(tmp_path / "e.npy", decode=False).shape == (0, width)


@pytest.mark.parametrize("precision", ["float32", "int8"])
def test_an_empty_jsonl_reads_back_as_zero_rows(tmp_path, tiny_bert_dir, precision):
    (tmp_path / "empty.txt").write_text("", encoding="utf-8")
    embed(tmp_path / "empty.txt", "--model", tiny_bert_dir, "-o", tmp_path / "e.jsonl", "--precision", precision)
    loaded = load_embeddings(tmp_path / "e.jsonl")
    assert loaded.shape == (0, Encoder(tiny_bert_dir).hidden_size) and loaded.dtype == np.float32


def test_the_read_side_moved_but_stays_importable_from_writers():
    import seqpool
    import seqpool.io.loading as loading
    import seqpool.io.writers as writers

    assert writers.load_embeddings is loading.load_embeddings is seqpool.load_embeddings
    assert writers.read_metadata is loading.read_metadata


# -- 5. the input side: a jsonl corpus --------------------------------------------------------------


def test_a_jsonl_corpus_accepts_blank_lines_and_keeps_true_line_numbers(tmp_path):
    """Blank lines hold no record (as pandas, pyarrow and ``datasets`` read JSON lines), at the end
    or between records; every record keeps its own line number, so errors name the right line."""
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "a"}\n{"text": "b"}\n\n \n', encoding="utf-8")
    source = TextSource.open(path)
    assert list(source.texts()) == ["a", "b"] and source.count() == 2
    path.write_text('{"text": "a"}\n\n{"body": "b"}\n', encoding="utf-8")
    with pytest.raises(SeqpoolError, match=r"c\.jsonl, line 3: no field 'text'"):
        list(TextSource.open(path).records())
