"""Compact vectors: truncation, int8/uint8 codes with ranges fitted once, binary packing."""

from __future__ import annotations

import numpy as np
import pytest

from seqpool.errors import SeqpoolError
from seqpool.quantize import (
    PRECISIONS,
    Compaction,
    dequantize,
    fit_ranges,
    output_width,
    quantize,
    truncate,
    unpack_bits,
)


@pytest.fixture
def vectors() -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.normal(size=(64, 20)).astype(np.float32)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_truncate_keeps_the_head_and_renormalises(vectors):
    out = truncate(vectors, 8, normalize=True)
    assert out.shape == (64, 8)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-6)
    head = vectors[:, :8] / np.linalg.norm(vectors[:, :8], axis=1, keepdims=True)
    np.testing.assert_allclose(out, head, atol=1e-6)
    np.testing.assert_array_equal(truncate(vectors, 8), vectors[:, :8])
    np.testing.assert_array_equal(truncate(vectors, None), vectors)


@pytest.mark.parametrize("bad", [0, -3, 21, 2.5, True])
def test_truncate_dim_out_of_range_is_a_user_error(vectors, bad):
    with pytest.raises(SeqpoolError, match="truncate_dim"):
        truncate(vectors, bad)


@pytest.mark.parametrize("precision", ["int8", "uint8", "binary", "ubinary"])
def test_codes_equal_sentence_transformers(vectors, precision):
    st_quantize = pytest.importorskip("sentence_transformers.util.quantization").quantize_embeddings
    ranges = fit_ranges(vectors[:32])  # fitted on part of the data: later rows clip like ST's
    ours = quantize(vectors, precision, ranges)
    theirs = st_quantize(vectors, precision=precision, ranges=ranges if precision.endswith("int8") else None)
    assert ours.dtype == theirs.dtype
    np.testing.assert_array_equal(ours, theirs)


@pytest.mark.parametrize("precision", ["binary", "ubinary"])
@pytest.mark.parametrize("dim", [1, 7, 8, 9, 20])
def test_binary_packing_round_trips(precision, dim):
    rng = np.random.default_rng(dim)
    x = rng.normal(size=(10, dim)).astype(np.float32)
    codes = quantize(x, precision)
    assert codes.shape == (10, output_width(dim, precision)) == (10, (dim + 7) // 8)
    np.testing.assert_array_equal(unpack_bits(codes, dim, precision), (x > 0).astype(np.uint8))
    np.testing.assert_array_equal(dequantize(codes, precision, dim=dim), np.where(x > 0, 1.0, -1.0))


def test_first_dimension_is_the_high_bit():
    x = np.zeros((1, 8), dtype=np.float32)
    x[0, 0] = 1.0
    assert quantize(x, "ubinary")[0, 0] == 0b1000_0000
    assert quantize(x, "binary")[0, 0] == 0b1000_0000 - 128


@pytest.mark.parametrize("precision", ["int8", "uint8"])
def test_scalar_codes_decode_within_half_a_bucket(vectors, precision):
    ranges = fit_ranges(vectors)
    decoded = dequantize(quantize(vectors, precision, ranges), precision, ranges)
    step = (ranges[1] - ranges[0]) / 255
    assert np.all(np.abs(decoded - vectors) <= step / 2 + 1e-5)
    assert _cosine(decoded, vectors).min() > 0.999


def test_float16_is_a_cast(vectors):
    codes = quantize(vectors, "float16")
    assert codes.dtype == np.float16
    np.testing.assert_allclose(dequantize(codes, "float16"), vectors, rtol=1e-3, atol=1e-3)


def test_ranges_are_fitted_once_so_codes_do_not_depend_on_the_batch(vectors):
    compaction = Compaction("int8")
    first = compaction.encode("mean", vectors[:32])
    ranges = compaction.ranges["mean"].copy()
    compaction.encode("mean", vectors[32:] * 3)  # a later chunk far outside the first chunk's range
    np.testing.assert_array_equal(compaction.ranges["mean"], ranges)
    again = compaction.encode("mean", vectors[:32])
    np.testing.assert_array_equal(first, again)
    # per-call fitting (sentence-transformers' default) would give the same rows other codes
    assert not np.array_equal(quantize(vectors[:16], "int8", fit_ranges(vectors[:16])), first[:16])


def test_metadata_round_trip_lets_another_process_continue(vectors):
    compaction = Compaction("uint8", truncate_dim=12, normalize=True)
    compaction.encode("mean", vectors[:32])
    compaction.encode("max", vectors[:32] ** 2)
    restored = Compaction.from_metadata(compaction.to_metadata())
    assert (restored.precision, restored.truncate_dim, restored.normalize, restored.dim) == ("uint8", 12, True, 12)
    np.testing.assert_array_equal(restored.encode("mean", vectors[32:]), compaction.encode("mean", vectors[32:]))
    codes = compaction.encode("max", vectors[32:] ** 2)
    np.testing.assert_array_equal(restored.decode("max", codes), compaction.decode("max", codes))


def test_calibration_fit_is_used_instead_of_the_first_chunk(vectors):
    compaction = Compaction("int8")
    compaction.fit("mean", vectors)
    compaction.encode("mean", vectors[:4])
    np.testing.assert_array_equal(compaction.ranges["mean"], fit_ranges(vectors))


def test_binary_compaction_decodes_with_its_width(vectors):
    compaction = Compaction("binary", truncate_dim=13)
    codes = compaction.encode("cls", vectors)
    assert codes.shape == (64, 2) and codes.dtype == np.int8
    restored = Compaction.from_metadata(compaction.to_metadata())
    np.testing.assert_array_equal(restored.decode("cls", codes), np.where(vectors[:, :13] > 0, 1.0, -1.0))


def test_identity_and_bad_input():
    assert Compaction().is_identity and not Compaction("float16").is_identity
    assert Compaction.from_metadata({}).is_identity
    with pytest.raises(SeqpoolError, match="precision"):
        Compaction("int4")
    with pytest.raises(SeqpoolError, match="at least 2 vectors"):
        fit_ranges(np.ones((1, 4), dtype=np.float32))
    with pytest.raises(SeqpoolError, match="needs ranges"):
        quantize(np.ones((2, 4), dtype=np.float32), "int8")
    with pytest.raises(SeqpoolError, match="shape"):
        quantize(np.ones((2, 4), dtype=np.float32), "int8", np.zeros((2, 3)))
    with pytest.raises(SeqpoolError, match="no int8/uint8 ranges"):
        Compaction("int8").decode("mean", np.zeros((1, 4), dtype=np.int8))
    with pytest.raises(SeqpoolError, match="unreadable"):
        Compaction.from_metadata({"compaction": "{not json"})
    assert set(PRECISIONS) == {"float32", "float16", "int8", "uint8", "binary", "ubinary"}


@pytest.mark.integration
def test_int8_and_binary_agree_with_float32_on_minilm(minilm_path):
    from seqpool.encoder import Encoder

    texts = [f"{a} {b}" for a in ("a good film", "a dull movie", "the cat sat", "stocks fell today",
                                  "rain is expected", "she won the match")
             for b in ("overall", "by far", "I think", "again", "at last", "for sure")]
    floats = Encoder(minilm_path).encode(texts)["mean"]
    compaction = Compaction("int8")
    decoded = compaction.decode("mean", compaction.encode("mean", floats))
    assert _cosine(decoded, floats).min() >= 0.99
    bits = Compaction("binary")
    signs = bits.decode("mean", bits.encode("mean", floats))
    # ranking agreement: each text's nearest other text under float32 stays in binary's top 5
    sim_f, sim_b = floats @ floats.T, signs @ signs.T
    np.fill_diagonal(sim_f, -np.inf)
    np.fill_diagonal(sim_b, -np.inf)
    top5 = np.argsort(-sim_b, axis=1)[:, :5]
    hits = np.mean([sim_f[i].argmax() in top5[i] for i in range(len(texts))])
    assert hits >= 0.8
