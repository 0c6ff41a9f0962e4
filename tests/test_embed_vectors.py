"""``seqpool embed`` with prompts, long texts and compact vectors: rows, metadata, resume, errors."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from seqpool.cli import main
from seqpool.encoder import Encoder
from seqpool.io import load_embeddings
from seqpool.io.writers import read_metadata, sidecar_path
from seqpool.quantize import Compaction, fit_ranges, quantize

LONG = "hello world, the cat sat on the mat. " * 12  # over the tiny model's 64 tokens
LINES = ["the cat sat on the mat", LONG, "hello world", "a very good film", "", "not a bad movie", LONG + "dog",
         "the dog sat", "xyz"]


def run(*args):
    return CliRunner().invoke(main, ["embed", *map(str, args)])


def ok(*args):
    result = run(*args)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


def fails(result, message: str) -> None:
    assert result.exit_code == 1 and message in result.stderr, result.output
    assert "Traceback" not in result.output and len(result.stderr.strip().splitlines()) == 1


@pytest.fixture
def corpus(tmp_path):
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return path


def test_truncation_is_counted_in_the_summary_and_the_metadata(corpus, tmp_path, tiny_bert_dir):
    result = ok(corpus, "--model", tiny_bert_dir, "-o", tmp_path / "e.parquet")
    assert "2 of 9 texts were longer than the model's max length" in result.stderr
    assert read_metadata(tmp_path / "e.parquet")["truncated"] == "2"
    chunked = ok(corpus, "--model", tiny_bert_dir, "-o", tmp_path / "c.parquet", "--long-texts", "chunk")
    assert "truncated" not in chunked.stderr and read_metadata(tmp_path / "c.parquet")["truncated"] == "0"
    np.testing.assert_allclose(load_embeddings(tmp_path / "c.parquet"),
                               Encoder(tiny_bert_dir).encode(LINES, long_texts="chunk")["mean"], atol=1e-6)


@pytest.mark.parametrize("fmt", ["npy", "parquet", "jsonl", "safetensors"])
@pytest.mark.parametrize("precision", ["int8", "uint8", "binary", "ubinary", "float16"])
def test_compact_outputs_decode_with_their_stored_ranges(corpus, tmp_path, tiny_bert_dir, fmt, precision):
    out = tmp_path / f"e.{fmt}"
    ok(corpus, "--model", tiny_bert_dir, "-o", out, "--precision", precision, "--chunk-size", "4",
       "--strategy", "mean")
    floats = Encoder(tiny_bert_dir).encode(LINES)["mean"]
    codes = load_embeddings(out, decode=False)
    compaction = Compaction.from_metadata(read_metadata(out))
    assert compaction.precision == precision and compaction.dim == floats.shape[1]
    if precision.endswith("int8"):  # fitted once, on the first chunk of 4 rows
        np.testing.assert_array_equal(compaction.ranges["mean"], fit_ranges(floats[:4]))
    np.testing.assert_array_equal(codes, quantize(floats, precision, compaction.ranges.get("mean")))
    decoded = load_embeddings(out)
    assert decoded.dtype == np.float32 and decoded.shape == floats.shape
    if precision == "float16":
        np.testing.assert_allclose(decoded, floats, atol=1e-3)
    elif precision.endswith("binary"):
        np.testing.assert_array_equal(decoded, np.where(floats > 0, 1.0, -1.0))
    assert sidecar_path(out).exists() == (fmt in ("npy", "jsonl"))


def test_int8_resume_quantises_with_the_ranges_of_the_first_run(corpus, tmp_path, tiny_bert_dir, monkeypatch):
    common = ["--model", tiny_bert_dir, "--chunk-size", "3", "--precision", "int8", "--truncate-dim", "16"]
    ok(corpus, "-o", tmp_path / "reference.parquet", *common)
    real_encode, calls = Encoder.encode, []

    def encode(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_encode(self, *args, **kwargs)

    monkeypatch.setattr(Encoder, "encode", encode)
    assert run(corpus, "-o", tmp_path / "resumed.parquet", *common).exit_code == 130
    monkeypatch.undo()
    ok(corpus, "-o", tmp_path / "resumed.parquet", *common, "--resume")
    assert (tmp_path / "resumed.parquet").read_bytes() == (tmp_path / "reference.parquet").read_bytes()
    assert load_embeddings(tmp_path / "resumed.parquet", decode=False).shape == (len(LINES), 16)


def test_calibration_file_fits_the_ranges(corpus, tmp_path, tiny_bert_dir):
    calibration = tmp_path / "calibration.jsonl"
    calibration_texts = ["a good film", "a bad film", "the cat", "the dog sat on the mat", "hello"]
    calibration.write_text("".join(json.dumps({"text": t}) + "\n" for t in calibration_texts), encoding="utf-8")
    ok(corpus, "--model", tiny_bert_dir, "-o", tmp_path / "e.safetensors", "--precision", "uint8",
       "--calibration", calibration)
    ranges = Compaction.from_metadata(read_metadata(tmp_path / "e.safetensors")).ranges["mean"]
    np.testing.assert_array_equal(ranges, fit_ranges(Encoder(tiny_bert_dir).encode(calibration_texts)["mean"]))


def test_truncate_dim_keeps_the_head_renormalised(corpus, tmp_path, minilm_path):
    ok(corpus, "-o", tmp_path / "e.npy", "--truncate-dim", "64")
    rows = np.load(tmp_path / "e.npy")
    full = Encoder(minilm_path).encode(LINES, normalize=False)["mean"][:, :64]
    np.testing.assert_allclose(rows, full / np.linalg.norm(full, axis=1, keepdims=True), atol=1e-6)


@pytest.mark.parametrize("mode", ["chunk", "late"])
def test_chunk_output_rows_trace_back_to_the_input(corpus, tmp_path, tiny_bert_dir, mode):
    out = tmp_path / "chunks.parquet"
    ok(corpus, "--model", tiny_bert_dir, "-o", out, "--long-texts", mode, "--window", "20", "--chunk-output",
       "--chunk-size", "4", "--strategy", "mean,max")
    table = pq.read_table(out).to_pydict()
    docs = np.asarray(table["doc"])
    assert sorted(set(docs.tolist())) == list(range(len(LINES))) and (np.diff(docs) >= 0).all()
    assert (docs == 1).sum() > 1 and (docs == 0).sum() == 1
    for doc, start, end in zip(table["doc"], table["char_start"], table["char_end"]):
        piece = LINES[doc][start:end]
        assert piece == piece.strip() and (piece or not LINES[doc].strip())
    vectors, expected_table = Encoder(tiny_bert_dir).encode_chunks(LINES[4:8], ["mean", "max"], long_texts=mode,
                                                                   window=20)
    second_chunk = (docs >= 4) & (docs < 8)  # input rows 4..7 were encoded together (--chunk-size 4)
    np.testing.assert_allclose(load_embeddings(out, "max")[second_chunk], vectors["max"], atol=1e-6)
    np.testing.assert_array_equal(docs[second_chunk], expected_table["doc"] + 4)
    np.testing.assert_array_equal(np.asarray(table["char_end"])[second_chunk], expected_table["char_end"])


def test_prompt_options_reach_the_encoder(corpus, tmp_path, tiny_bert_dir):
    ok(corpus, "--model", tiny_bert_dir, "-o", tmp_path / "p.npy", "--prompt", "the film: ", "--exclude-prompt")
    expected = Encoder(tiny_bert_dir).encode(LINES, prompt="the film: ", include_prompt=False)["mean"]
    np.testing.assert_allclose(np.load(tmp_path / "p.npy"), expected, atol=1e-6)


@pytest.mark.parametrize("args,message", [
    (["--precision", "int4"], "unknown --precision 'int4'"),
    (["--truncate-dim", "0"], "--truncate-dim must be a positive integer"),
    (["--long-texts", "split"], "unknown --long-texts 'split'"),
    (["--window", "20"], "--window, --stride and --chunk-output apply to --long-texts"),
    (["--long-texts", "chunk", "--window", "0"], "--window must be a positive number of tokens"),
    (["--long-texts", "late", "--window", "4", "--stride", "5"], "--stride 5 exceeds the 4-token chunks"),
    (["--long-texts", "late", "--chunk-output"], "npy cannot hold"),
    (["--long-texts", "late", "--chunk-output", "-o", "x.parquet", "--skip-empty"], "--skip-empty does not apply"),
    (["--prompt", "a", "--prompt-name", "b"], "pass --prompt (the text) or --prompt-name"),
    (["--calibration", "nosuch.txt", "--precision", "int8"], "nosuch.txt"),
    (["--calibration", "x.txt"], "--calibration fits int8/uint8 ranges"),
])
def test_bad_options_fail_before_the_model_loads(corpus, tmp_path, args, message, monkeypatch):
    import seqpool.encoder

    def no_model(*_, **__):
        raise AssertionError("the model must not load")

    monkeypatch.setattr(seqpool.encoder.Encoder, "__init__", no_model)
    monkeypatch.chdir(tmp_path)
    fails(run(corpus, *args), message)


@pytest.mark.parametrize("args,message", [
    (["--prompt-name", "query"], "--prompt-name 'query' is not among the model's prompts"),
    (["--long-texts", "chunk", "--window", "65"], "--window 65 exceeds the 64 tokens the model takes (--max-length)"),
    (["--truncate-dim", "33"], "--truncate-dim 33 exceeds the embedding width 32"),
])
def test_options_checked_against_the_model_before_reading_the_corpus(corpus, tmp_path, tiny_bert_dir, args,
                                                                    message):
    fails(run(corpus, "--model", tiny_bert_dir, "-o", tmp_path / "e.npy", *args), message)
    assert not (tmp_path / "e.npy.partial").exists()


def test_help_lists_the_new_options():
    result = CliRunner().invoke(main, ["embed", "--help"])
    for flag in ("--prompt", "--prompt-name", "--exclude-prompt", "--long-texts", "--window", "--stride",
                 "--chunk-output", "--truncate-dim", "--precision", "--calibration"):
        assert flag in result.output
