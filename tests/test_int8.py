"""``Encoder(dtype="int8")``: OpenVINO + NNCF static int8, calibrated on the user's texts.

Fidelity on the packaged MiniLM (integration), every strategy / layer / prompt / long-text mode
on the tiny BERT, calibration recorded in the fingerprint, and the one-line message without the
extra. Speed is measured in ``benchmarks/embed_throughput.py``, not here.
"""

from __future__ import annotations

import importlib.util
import json
import warnings

import numpy as np
import pytest

from seqpool.devices import native_int8_cpu
from seqpool.errors import SeqpoolError

pytest.importorskip("openvino")
pytest.importorskip("nncf")

#: Without int8 dot products (AVX512-VNNI, AVX-VNNI, AMX) oneDNN halves the int8 weights so its
#: 16-bit pair sums cannot overflow: a bit of every weight is lost. The issue's bar (MiniLM cosine
#: to fp32 mean >= 0.997, min >= 0.98) is asserted where the CPU has them; on an AVX2 CPU the same
#: test measured 0.9951 / 0.9895 and the tiny random qwen3 0.968 on `last`, so there the bars are below
#: those (a conversion error, a padding side mixed up, gives far lower cosines than either).
VNNI = native_int8_cpu() is not False
MINILM_MEAN_BAR, MINILM_MIN_BAR = (0.997, 0.98) if VNNI else (0.994, 0.98)
TINY_MIN_BAR = 0.995 if VNNI else 0.95

CALIBRATION = ["the cat sat on the mat", "a very good film", "not a bad movie at all", "hello world",
               "it was boring and long", "pooling tokens into one vector", "a story about a dog"] * 6
TEXTS = ["the story was great", "a dull one", "hello", "the cat and the dog sat on a mat , very funny", ""]


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return np.where(norms > 0, (a * b).sum(axis=1) / np.maximum(norms, 1e-12), 1.0)


@pytest.fixture(scope="module")
def tiny_int8(tiny_bert_dir):
    from seqpool.encoder import Encoder

    encoder = Encoder(tiny_bert_dir, dtype="int8")
    encoder.calibrate(CALIBRATION)
    return encoder


def test_every_strategy_layer_prompt_and_long_text_mode_runs_on_int8(tiny_int8, tiny_bert_encoder):
    strategies = ["mean", "max", "cls", "last", "mean@-2", "cls+mean", "mean_std"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        int8 = tiny_int8.encode(TEXTS, strategies)
        fp32 = tiny_bert_encoder.encode(TEXTS, strategies)
        for strategy in strategies:
            assert int8[strategy].shape == fp32[strategy].shape
            assert _cosines(int8[strategy][:-1], fp32[strategy][:-1]).min() > 0.95, strategy
        prompted = tiny_int8.encode(TEXTS, prompt="query: ", include_prompt=False)["mean"]
        assert _cosines(prompted[:-1], tiny_bert_encoder.encode(TEXTS, prompt="query: ",
                                                                include_prompt=False)["mean"][:-1]).min() > 0.95
        long_text = ["the cat sat on the mat " * 30]
        chunked, table = tiny_int8.encode_chunks(long_text, long_texts="chunk", window=16)
        reference, _ = tiny_bert_encoder.encode_chunks(long_text, long_texts="chunk", window=16)
        assert chunked["mean"].shape == reference["mean"].shape and len(table["doc"]) == len(chunked["mean"])
        assert _cosines(chunked["mean"], reference["mean"]).min() > 0.95


def test_the_calibration_is_recorded_and_reproducible(tiny_bert_dir, tiny_int8):
    """A second calibration on the same texts giving the same record and vectors is checked in the
    next test, on the encoder that ``encode`` calibrates there (on these texts, like ``tiny_int8``):
    one calibration fewer, the same assertions."""
    from seqpool.encoder import Encoder

    assert tiny_int8.fingerprint()["dtype"].startswith("int8 ")
    other = Encoder(tiny_bert_dir, dtype="int8")
    other.calibrate(CALIBRATION[:5])
    assert other.fingerprint()["dtype"] != tiny_int8.fingerprint()["dtype"]
    assert tiny_int8.precision == "int8" and "dtype=int8" in repr(tiny_int8)


def test_encode_calibrates_on_its_first_texts_and_forward_without_it_is_one_line(tiny_bert_dir, tiny_int8):
    from seqpool.encoder import Encoder

    encoder = Encoder(tiny_bert_dir, dtype="int8")
    batch = encoder.collate(encoder.tokenize(TEXTS))
    with pytest.raises(SeqpoolError, match="calibrate"):
        encoder.forward_batch(batch)
    assert encoder.encode(CALIBRATION)["mean"].shape == (len(CALIBRATION), 32)
    assert encoder.int8_runtime is not None and encoder.int8_runtime.calibration["sequences"] > 0
    # reproducible: calibrated again on the same texts (here by encode, there by calibrate), the
    # same record and the same vectors
    assert encoder.fingerprint()["dtype"] == tiny_int8.fingerprint()["dtype"]
    assert encoder.fingerprint()["dtype"].startswith("int8 ")
    np.testing.assert_array_equal(encoder.encode(TEXTS)["mean"], tiny_int8.encode(TEXTS)["mean"])


def test_int8_without_the_extra_says_what_to_install(tiny_bert_dir, monkeypatch):
    from seqpool.encoder import Encoder

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("openvino", "nncf") else real(name, *a))
    with pytest.raises(SeqpoolError, match=r"pip install 'seqpool\[int8\]'"):
        Encoder(tiny_bert_dir, dtype="int8")


def test_int8_is_cpu_only(tiny_bert_dir):
    from seqpool.encoder import Encoder

    with pytest.raises(SeqpoolError):
        Encoder(tiny_bert_dir, dtype="int8", device="cuda")



@pytest.mark.parametrize("flags, native", [({"sse2", "avx2", "avx512_vnni"}, True), ({"sse2", "avx_vnni"}, True),
                                            ({"sse2", "amx_int8"}, True), ({"sse2", "avx2", "avx512f"}, False),
                                            ({"asimd", "asimddp"}, None), (None, None)])
def test_native_int8_cpu_reads_the_vnni_flags(monkeypatch, flags, native):
    monkeypatch.setattr("seqpool.devices._cpu_flags", lambda: flags)
    assert native_int8_cpu() is native


@pytest.mark.parametrize("family", ["modernbert", "qwen3"])
def test_int8_converts_encoders_directly_and_decoders_through_onnx(family, tmp_path):
    """ModernBERT goes through OpenVINO's torch frontend, a causal decoder (its mask code is not
    convertible there) through ONNX; both must give the fp32 vectors, padded batches included."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from model_zoo import build_family

    from seqpool.encoder import Encoder

    folder = build_family(family, tmp_path / family)
    texts = ["a fine film", "x", "the plot is thin but the acting is good and the music is great"] * 4
    fp32 = Encoder(folder).encode(texts, strategies=["mean", "last", "mean@-2"])
    int8 = Encoder(folder, dtype="int8")
    int8.calibrate(texts * 4)
    for name, vectors in int8.encode(texts, strategies=["mean", "last", "mean@-2"]).items():
        assert _cosines(vectors, fp32[name]).min() > TINY_MIN_BAR, (family, name)


def test_a_model_no_converter_takes_is_one_line(tmp_path):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from model_zoo import build_family

    from seqpool.encoder import Encoder

    encoder = Encoder(build_family("gemma3", tmp_path / "gemma3"), dtype="int8")
    with pytest.raises(SeqpoolError, match="dtype int8 cannot convert .* use dtype bf16 or fp32") as raised:
        encoder.calibrate(["a fine film", "a dull one"])
    assert "\n" not in str(raised.value)

@pytest.mark.integration
def test_minilm_int8_keeps_the_fp32_vectors(senteval_dir):
    """The issue's fidelity bar on real reviews: cosine to fp32 mean >= 0.997, min >= 0.98 (on a CPU
    with int8 dot products; see ``VNNI``)."""
    import json

    from seqpool.encoder import Encoder

    lines = (senteval_dir / "mr.jsonl").read_text(encoding="utf-8").split("\n")[:-1]
    texts = [json.loads(line)["text"] for line in lines]
    # the product's full calibration sample (300 texts; 100 miss the bar), and 200 reviews it has not
    # seen, both classes, from the same stretch of the file as before (every second of 5000-5400)
    calibration, held_out = texts[:300], texts[5000:5400:2]
    fp32 = Encoder().encode(held_out)["mean"]
    int8 = Encoder(dtype="int8")
    int8.calibrate(calibration)
    cosines = _cosines(int8.encode(held_out)["mean"], fp32)
    assert cosines.mean() >= MINILM_MEAN_BAR and cosines.min() >= MINILM_MIN_BAR, (cosines.mean(), cosines.min())


def _embed(*args):
    from click.testing import CliRunner

    from seqpool.cli import main

    return CliRunner().invoke(main, ["embed", *map(str, args)])


def test_embed_int8_records_its_calibration_and_resume_gives_the_same_vectors(tiny_bert_dir, tmp_path):
    from seqpool.io import load_embeddings
    from seqpool.io.loading import read_metadata

    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(f"{text} {i}" for i, text in enumerate(CALIBRATION)) + "\n", encoding="utf-8")
    whole = _embed(corpus, "--model", tiny_bert_dir, "--dtype", "int8", "--chunk-size", "10", "-o",
                   tmp_path / "whole.parquet", "--quiet")
    assert whole.exit_code == 0, whole.output
    metadata = read_metadata(tmp_path / "whole.parquet")
    record = json.loads(metadata["int8_calibration"])
    assert metadata["dtype"] == "int8" and record["sequences"] == 10 and len(record["sha256"]) == 64
    # an interrupted run (its first two chunks) resumed: the same calibration (the first chunk), the same rows
    from seqpool.embed import EmbedInterrupted

    import seqpool.embed as embed_module

    real = embed_module._encode_chunk
    calls = {"n": 0}

    def interrupt_third(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    embed_module._encode_chunk = interrupt_third
    try:
        with pytest.raises(EmbedInterrupted):
            embed_module.embed_file(corpus, tmp_path / "resumed.parquet", model=tiny_bert_dir, dtype="int8",
                                    chunk_size=10, progress=False)
    finally:
        embed_module._encode_chunk = real
    resumed = _embed(corpus, "--model", tiny_bert_dir, "--dtype", "int8", "--chunk-size", "10", "-o",
                     tmp_path / "resumed.parquet", "--resume", "--quiet")
    assert resumed.exit_code == 0, resumed.output
    np.testing.assert_array_equal(load_embeddings(tmp_path / "resumed.parquet"),
                                  load_embeddings(tmp_path / "whole.parquet"))
    assert read_metadata(tmp_path / "resumed.parquet")["int8_calibration"] == metadata["int8_calibration"]


def test_embed_int8_npy_keeps_the_record_beside_it_and_ray_refuses_int8(tiny_bert_dir, tmp_path, monkeypatch):
    """On a CPU without int8 dot products (an AVX2 one, faked here) the run says int8 gains nothing there."""
    from seqpool import Embedder

    monkeypatch.setattr("seqpool.devices._cpu_flags", lambda: {"sse2", "avx2", "fma"})
    corpus = tmp_path / "c.txt"
    corpus.write_text("\n".join(CALIBRATION[:8]) + "\n", encoding="utf-8")
    result = _embed(corpus, "--model", tiny_bert_dir, "--dtype", "int8", "-o", tmp_path / "o.npy")
    assert result.exit_code == 0, result.output
    assert "note: this CPU has no int8 dot products (AVX512-VNNI, AVX-VNNI or AMX), so int8 runs no faster than " \
           "fp32 here (slower on long texts) and keeps less of its vectors; --dtype fp32 gives the exact ones" \
           in result.stderr, result.stderr
    assert "int8_calibration" in (tmp_path / "o.npy.json").read_text(encoding="utf-8")
    with pytest.raises(SeqpoolError, match="not available with the Ray engine"):
        Embedder(str(tiny_bert_dir), dtype="int8")


@pytest.mark.parametrize("fmt", ["openvino", "onnx"])
def test_an_int8_export_keeps_the_fp32_vectors(tiny_bert_dir, tmp_path, fmt):
    """``seqpool export --dtype int8 --calibration FILE``: the quantized graph, pooling inside."""
    from seqpool.encoder import Encoder

    (tmp_path / "calibration.txt").write_text("\n".join(CALIBRATION) + "\n", encoding="utf-8")
    result = _export_cli(tmp_path / "out", "--model", tiny_bert_dir, "--format", fmt, "--dtype", "int8",
                         "--calibration", tmp_path / "calibration.txt")
    assert result.exit_code == 0, result.output
    record = json.loads((tmp_path / "out" / "seqpool_export.json").read_text(encoding="utf-8"))
    assert record["dtype"] == "int8" and record["calibration"]["texts"] == len(CALIBRATION)
    encoder = Encoder(tiny_bert_dir)
    batch = encoder.collate(encoder.tokenize(TEXTS[:-1]))
    feed = {"input_ids": batch["input_ids"].numpy(), "attention_mask": batch["attention_mask"].numpy(),
            "token_type_ids": np.zeros_like(batch["input_ids"].numpy())}
    if fmt == "openvino":
        import openvino

        got = openvino.Core().compile_model(str(tmp_path / "out" / "openvino_model.xml"), "CPU")(feed)[0]
    else:
        import onnxruntime

        got = onnxruntime.InferenceSession(str(tmp_path / "out" / "model.onnx"),
                                           providers=["CPUExecutionProvider"]).run(None, feed)[0]
    expected = encoder.encode(TEXTS[:-1])["mean"]
    assert got.shape == expected.shape and _cosines(np.asarray(got), expected).min() > 0.95


def _export_cli(output, *args):
    from click.testing import CliRunner

    from seqpool.cli import main

    return CliRunner().invoke(main, ["export", "-o", str(output), *map(str, args)])
