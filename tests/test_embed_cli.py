"""``seqpool embed`` end to end: formats, stdin, resume, bad input, bf16, the packaged model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from seqpool.cli import main
from seqpool.encoder import Encoder
from seqpool.io import OUTPUT_FORMATS, load_embeddings

REPO = Path(__file__).resolve().parents[1]
LINES = ["the cat sat on the mat", "", "hello world", "the cat sat on the mat", "   ", "a very good film",
         "hello world", "not a bad movie", "xyz"]


def run(*args, input=None):
    return CliRunner().invoke(main, ["embed", *map(str, args)], input=input)


def ok(*args, input=None):
    result = run(*args, input=input)
    assert result.exit_code == 0, (result.output, result.exception)
    return result


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return path


def test_default_output_beside_the_input_with_rows_aligned(corpus, tiny_bert_dir, tiny_bert_encoder):
    result = ok(corpus, "--model", tiny_bert_dir)
    rows = np.load(corpus.with_suffix(".npy"))
    assert rows.shape == (len(LINES), tiny_bert_encoder.hidden_size)
    np.testing.assert_array_equal(rows, tiny_bert_encoder.encode(LINES)["mean"])
    np.testing.assert_array_equal(rows[0], rows[3])  # duplicates in place
    np.testing.assert_array_equal(rows[1], rows[4])  # "" and "   " tokenize alike: [CLS] [SEP]
    assert f"wrote {len(LINES)} x" in result.stderr and result.stdout == ""


@pytest.mark.parametrize("fmt", OUTPUT_FORMATS)
def test_every_format_round_trips_every_strategy(corpus, tmp_path, tiny_bert_dir, tiny_bert_encoder, fmt):
    out = tmp_path / f"emb.{fmt}"
    ok(corpus, "--model", tiny_bert_dir, "-o", out, "--strategy", "mean,max", "--strategy", "last")
    expected = tiny_bert_encoder.encode(LINES, ["mean", "max", "last"])
    for strategy, vectors in expected.items():
        path = tmp_path / f"emb.{strategy}.npy" if fmt == "npy" else out
        np.testing.assert_array_equal(load_embeddings(path, strategy), vectors)


def test_format_option_overrides_the_extension(corpus, tmp_path, tiny_bert_dir):
    ok(corpus, "--model", tiny_bert_dir, "-o", tmp_path / "emb.bin", "--format", "jsonl")
    records = [json.loads(line) for line in (tmp_path / "emb.bin").read_text().splitlines()]
    assert len(records) == len(LINES) and list(records[0]) == ["mean"]


def test_strategies_in_one_pass_equal_separate_passes(corpus, tmp_path, tiny_bert_dir):
    ok(corpus, "--model", tiny_bert_dir, "-o", tmp_path / "all.safetensors", "--strategy", "mean,max,cls")
    for strategy in ("mean", "max", "cls"):
        ok(corpus, "--model", tiny_bert_dir, "-o", tmp_path / f"{strategy}.npy", "--strategy", strategy)
        np.testing.assert_array_equal(load_embeddings(tmp_path / "all.safetensors", strategy),
                                      np.load(tmp_path / f"{strategy}.npy"))


def test_stdin_input(corpus, tmp_path, tiny_bert_dir):
    ok(corpus, "--model", tiny_bert_dir, "-o", tmp_path / "file.npy")
    ok("-", "--model", tiny_bert_dir, "-o", tmp_path / "stdin.npy", input=corpus.read_bytes())
    np.testing.assert_array_equal(np.load(tmp_path / "stdin.npy"), np.load(tmp_path / "file.npy"))


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".parquet"])
def test_structured_inputs_match_plain_text(corpus, tmp_path, tiny_bert_dir, suffix):
    path = tmp_path / f"input{suffix}"
    table = pa.table({"id": list(range(len(LINES))), "body": LINES})
    if suffix == ".jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in table.to_pylist()), encoding="utf-8")
    elif suffix == ".csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(table, path)
    else:
        pq.write_table(table, path)
    ok(corpus, "--model", tiny_bert_dir, "-o", tmp_path / "txt.npy")
    ok(path, "--model", tiny_bert_dir, "--text-field", "body", "-o", tmp_path / "structured.npy")
    np.testing.assert_array_equal(np.load(tmp_path / "structured.npy"), np.load(tmp_path / "txt.npy"))


def interrupt_on_chunk(monkeypatch, chunk: int) -> None:
    """Make the ``chunk``-th ``Encoder.encode`` call raise KeyboardInterrupt (Ctrl-C mid-run)."""
    real_encode = Encoder.encode
    calls = []

    def encode(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == chunk:
            raise KeyboardInterrupt
        return real_encode(self, *args, **kwargs)

    monkeypatch.setattr(Encoder, "encode", encode)


@pytest.mark.parametrize("fmt", ["npy", "parquet"])
def test_resume_after_interruption_gives_identical_bytes(corpus, tmp_path, tiny_bert_dir, monkeypatch, fmt):
    common = ["--model", tiny_bert_dir, "--chunk-size", "2", "--strategy", "mean,max"]
    reference = tmp_path / f"reference.{fmt}"
    ok(corpus, "-o", reference, *common)
    interrupt_on_chunk(monkeypatch, 3)
    out = tmp_path / f"resumed.{fmt}"
    result = run(corpus, "-o", out, *common)
    assert result.exit_code == 130 and "--resume" in result.stderr
    assert not list(tmp_path.glob("resumed*.npy")) and not list(tmp_path.glob("resumed*.parquet"))
    monkeypatch.undo()
    again = run(corpus, "-o", out, *common)  # without --resume: refuse to throw the work away
    assert again.exit_code == 1 and "add --resume" in again.stderr
    done = ok(corpus, "-o", out, *common, "--resume")
    assert "resumed at row 4" in done.stderr
    names = ["mean", "max"] if fmt == "npy" else [None]
    for name in names:
        suffix = f".{name}.{fmt}" if name else f".{fmt}"
        assert (tmp_path / f"resumed{suffix}").read_bytes() == (tmp_path / f"reference{suffix}").read_bytes()
    assert not (tmp_path / f"resumed.{fmt}.partial").exists()


def test_resume_with_other_options_is_refused(corpus, tmp_path, tiny_bert_dir, monkeypatch):
    out = tmp_path / "e.npy"
    interrupt_on_chunk(monkeypatch, 2)
    run(corpus, "--model", tiny_bert_dir, "-o", out, "--chunk-size", "3")
    monkeypatch.undo()
    result = run(corpus, "--model", tiny_bert_dir, "-o", out, "--chunk-size", "3", "--resume", "--no-normalize",
                 "--strategy", "max")
    assert result.exit_code == 1 and "settings differ" in result.stderr and "strategies" in result.stderr


def test_empty_input_gives_an_empty_array(tmp_path, tiny_bert_dir, tiny_bert_encoder):
    (tmp_path / "empty.txt").write_bytes(b"")
    ok(tmp_path / "empty.txt", "--model", tiny_bert_dir)
    assert np.load(tmp_path / "empty.npy").shape == (0, tiny_bert_encoder.hidden_size)


def test_skip_empty_keeps_rows_aligned(corpus, tmp_path, tiny_bert_dir, tiny_bert_encoder):
    ok(corpus, "--model", tiny_bert_dir, "-o", tmp_path / "e.npy", "--skip-empty")
    rows = np.load(tmp_path / "e.npy")
    assert not rows[1].any() and not rows[4].any()
    np.testing.assert_allclose(rows[2], tiny_bert_encoder.encode(["hello world"])["mean"][0], atol=1e-6)


def test_normalize_layer_and_max_length_options(corpus, tmp_path, tiny_bert_dir, tiny_bert_encoder):
    ok(corpus, "--model", tiny_bert_dir, "-o", tmp_path / "n.npy", "--normalize", "--layer", "-2,-1",
       "--max-length", "4")
    rows = np.load(tmp_path / "n.npy")
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-6)
    encoder = Encoder(tiny_bert_dir, layer=(-2, -1), max_length=4)
    np.testing.assert_array_equal(rows, encoder.encode(LINES, normalize=True)["mean"])


def test_bf16_is_close_to_fp32(corpus, tmp_path, tiny_bert_dir):
    ok(corpus, "--model", tiny_bert_dir, "-o", tmp_path / "fp32.npy", "--normalize")
    ok(corpus, "--model", tiny_bert_dir, "-o", tmp_path / "bf16.npy", "--normalize", "--dtype", "bf16")
    fp32, bf16 = np.load(tmp_path / "fp32.npy"), np.load(tmp_path / "bf16.npy")
    assert bf16.dtype == np.float32 and not np.array_equal(fp32, bf16)
    assert float(np.sum(fp32 * bf16, axis=1).min()) > 0.99


def test_decoder_without_pad_token_last_pooling(corpus, tmp_path, tiny_gpt2_dir, tiny_gpt2_encoder):
    ok(corpus, "--model", tiny_gpt2_dir, "-o", tmp_path / "g.npy", "--strategy", "last")
    rows = np.load(tmp_path / "g.npy")
    alone = [tiny_gpt2_encoder.encode([text], "last")["last"][0] for text in LINES]
    np.testing.assert_allclose(rows, np.stack(alone), atol=1e-5)


def test_threads_option_leaves_torch_threads_as_they_were(corpus, tmp_path, tiny_bert_dir):
    # --threads limits the run only: issue 9 names the old leak of torch.set_num_threads a defect.
    import torch

    before = torch.get_num_threads()
    try:
        ok(corpus, "--model", tiny_bert_dir, "-o", tmp_path / "t.npy", "--threads", "1")
        assert torch.get_num_threads() == before
    finally:
        torch.set_num_threads(before)
    one_line_error(run(corpus, "--model", tiny_bert_dir, "--threads", "0"), "--threads must be at least 1")


def test_progress_bar_only_when_asked(corpus, tmp_path, tiny_bert_dir):
    quiet = ok(corpus, "--model", tiny_bert_dir, "-o", tmp_path / "q.npy", "--quiet")
    assert quiet.stderr == "" and quiet.stdout == ""


def one_line_error(result, *phrases):
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.stderr
    for phrase in phrases:
        assert phrase in lines[0], lines[0]


def test_bad_inputs_give_one_line_and_exit_1(corpus, tmp_path, tiny_bert_dir):
    model = ["--model", tiny_bert_dir]
    one_line_error(run(tmp_path / "missing.txt", *model), "input file not found")
    one_line_error(run(tmp_path, *model), "is a directory")
    (tmp_path / "bad.txt").write_bytes(b"ok\nok\n\xc3\x28 broken\n")
    one_line_error(run(tmp_path / "bad.txt", *model), "line 3", "not valid UTF-8")
    one_line_error(run(corpus, *model, "--strategy", "mean,median"), "unknown pooling strategy 'median'")
    one_line_error(run(corpus, "--model", tmp_path / "no-such-model"), "no-such-model does not exist")
    (tmp_path / "empty-model").mkdir()
    one_line_error(run(corpus, "--model", tmp_path / "empty-model"), "cannot load model")
    (tmp_path / "c.jsonl").write_text('{"body": "x"}\n', encoding="utf-8")
    one_line_error(run(tmp_path / "c.jsonl", *model), "line 1", "no field 'text'", "--text-field")
    one_line_error(run(corpus, *model, "-o", tmp_path / "nowhere" / "e.npy"), "output folder", "does not exist")
    one_line_error(run(corpus, *model, "-o", corpus / "e.npy"), "is not a folder")
    one_line_error(run(corpus, *model, "-o", tmp_path), "is a directory")
    one_line_error(run(corpus, *model, "-o", corpus, "--format", "npy"), "would overwrite the input")
    one_line_error(run("-", *model, input="a\n"), "stdin", "-o/--output")
    one_line_error(run(corpus, *model, "--format", "csv"), "unknown output format 'csv'")
    one_line_error(run(corpus, *model, "--dtype", "fp8"), "unknown --dtype 'fp8'")
    one_line_error(run(corpus, *model, "--layer", "last"), "--layer takes an integer")
    one_line_error(run(corpus, *model, "--layer", "9"), "out of range")


@pytest.mark.skipif(__import__("os").geteuid() == 0, reason="root can write anywhere")
def test_unwritable_output_folder(corpus, tmp_path, tiny_bert_dir):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    one_line_error(run(corpus, "--model", tiny_bert_dir, "-o", locked / "e.npy"), "permission denied")


@pytest.mark.integration
def test_readme_example_with_the_packaged_model(tmp_path):
    out = tmp_path / "corpus.npy"
    ok(REPO / "examples" / "corpus.txt", "-o", out, "--quiet")
    rows = np.load(out)
    lines = (REPO / "examples" / "corpus.txt").read_text(encoding="utf-8").splitlines()
    assert rows.shape == (len(lines), 384)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, atol=1e-5)  # MiniLM ends with Normalize


@pytest.mark.integration
def test_packaged_model_keeps_empty_lines_and_duplicates_in_place(tmp_path):
    lines = (REPO / "examples" / "corpus.txt").read_text(encoding="utf-8").splitlines()[:6]
    lines = [lines[0], "", lines[1], lines[0], "", lines[2], *lines[3:], lines[1]]
    ok("-", "-o", tmp_path / "e.npy", "--quiet", input="\n".join(lines) + "\n")
    rows = np.load(tmp_path / "e.npy")
    assert rows.shape == (len(lines), 384)
    np.testing.assert_allclose(rows, Encoder().encode(lines)["mean"], atol=1e-6)
    for i, j in [(0, 3), (1, 4), (2, len(lines) - 1)]:
        np.testing.assert_allclose(rows[i], rows[j], atol=1e-6)
    assert float(rows[0] @ rows[2]) < 0.99  # different texts really differ
