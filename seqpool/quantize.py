"""Compact vectors: Matryoshka truncation and int8 / uint8 / binary codes, fitted once.

Pure numpy, no torch. The codes are those of sentence-transformers' ``quantize_embeddings``
(same buckets, same bit order, same ``binary`` offset), with one difference that matters for
corpora: sentence-transformers fits the int8 ranges on whatever batch it is handed, so a
text's codes depend on its batch. Here the ranges are fitted **once** (:func:`fit_ranges`, on
the first chunk or a calibration set), kept in :class:`Compaction` and written into the
output's metadata, so a resumed or distributed run quantises every row identically and a
reader can decode them (:meth:`Compaction.decode`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from seqpool.errors import SeqpoolError

PRECISIONS = ("float32", "float16", "int8", "uint8", "binary", "ubinary")
#: Precisions whose codes need per-dimension ranges.
SCALAR_PRECISIONS = ("int8", "uint8")
BINARY_PRECISIONS = ("binary", "ubinary")
_DTYPES = {"float32": np.float32, "float16": np.float16, "int8": np.int8, "uint8": np.uint8,
           "binary": np.int8, "ubinary": np.uint8}
#: Key under which :meth:`Compaction.to_metadata` stores itself in an output's metadata.
METADATA_KEY = "compaction"


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise SeqpoolError(f"unknown `precision` {precision!r}; choose one of: {', '.join(PRECISIONS)}")
    return precision


def check_truncate_dim(truncate_dim: int | None, dim: int | None = None) -> int | None:
    """``None`` (keep every dimension) or a width in ``1..dim``."""
    if truncate_dim is None:
        return None
    if isinstance(truncate_dim, bool) or not isinstance(truncate_dim, (int, np.integer)) or truncate_dim < 1:
        raise SeqpoolError(f"`truncate_dim` must be a positive integer, got {truncate_dim!r}")
    if dim is not None and truncate_dim > dim:
        raise SeqpoolError(f"`truncate_dim` {truncate_dim} exceeds the embedding width {dim}; pass at most {dim}")
    return int(truncate_dim)


def output_dtype(precision: str) -> np.dtype:
    return np.dtype(_DTYPES[check_precision(precision)])


def output_width(dim: int, precision: str) -> int:
    """Columns of the stored codes: ``dim``, or ``ceil(dim / 8)`` bytes for the binary precisions."""
    return (dim + 7) // 8 if check_precision(precision) in BINARY_PRECISIONS else dim


def truncate(vectors: np.ndarray, truncate_dim: int | None, normalize: bool = False) -> np.ndarray:
    """Keep the first ``truncate_dim`` dimensions (Matryoshka); L2-renormalise when ``normalize``.

    Renormalising matters: the head of a unit vector is shorter than 1, so without it cosine
    and dot products would disagree.
    """
    vectors = np.asarray(vectors)
    truncate_dim = check_truncate_dim(truncate_dim, vectors.shape[-1])
    if truncate_dim is not None:
        vectors = vectors[..., :truncate_dim]
    if normalize:
        norms = np.linalg.norm(vectors.astype(np.float32), axis=-1, keepdims=True)
        vectors = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
    return np.ascontiguousarray(vectors)


def fit_ranges(vectors: np.ndarray) -> np.ndarray:
    """Per-dimension ``[min; max]`` (2, D) float32 ranges of the int8 / uint8 buckets.

    Fit it once, on a representative sample (at least two vectors), and reuse it: codes
    fitted on different batches are not comparable.
    """
    vectors = np.asarray(vectors, dtype=np.float32)
    if vectors.ndim != 2 or vectors.shape[0] < 2:
        raise SeqpoolError(
            f"fitting int8/uint8 ranges needs at least 2 vectors, got {vectors.shape[0] if vectors.ndim else 0}; "
            "pass a larger first chunk (`chunk_size`) or a `calibration` file with more texts")
    if not np.isfinite(vectors).all():
        raise SeqpoolError("cannot fit int8/uint8 ranges: the vectors contain NaN or inf")
    return np.stack([vectors.min(axis=0), vectors.max(axis=0)]).astype(np.float32)


def _check_ranges(ranges: Any, dim: int) -> np.ndarray:
    if ranges is None:
        raise SeqpoolError("int8/uint8 precision needs ranges; fit them once with fit_ranges(vectors)")
    ranges = np.asarray(ranges, dtype=np.float32)
    if ranges.shape != (2, dim):
        raise SeqpoolError(f"ranges must have shape (2, {dim}) (min row, max row), got {tuple(ranges.shape)}")
    return ranges


def _steps(ranges: np.ndarray) -> np.ndarray:
    """Bucket width per dimension; a constant dimension gets width 1 (as sentence-transformers)."""
    steps = (ranges[1] - ranges[0]) / 255
    return np.where(steps == 0, 1, steps).astype(np.float32)


def quantize(vectors: np.ndarray, precision: str, ranges: np.ndarray | None = None) -> np.ndarray:
    """Codes of float vectors (N, D) in ``precision``; int8/uint8 need fitted ``ranges``.

    * float32 / float16: a cast;
    * uint8: bucket ``floor((x - min) / step)`` clipped to 0..255 with ``step = (max - min) / 255``;
      int8 is that minus 128 (sentence-transformers' codes for the same ranges);
    * ubinary: the sign bits ``x > 0`` packed 8 dimensions per byte, first dimension in the high
      bit (``np.packbits``); binary is the same bytes minus 128 as int8.
    """
    precision = check_precision(precision)
    vectors = np.asarray(vectors)
    if not np.issubdtype(vectors.dtype, np.floating):
        raise SeqpoolError(f"vectors to quantize must be floating point, got {vectors.dtype}")
    if precision in ("float32", "float16"):
        return vectors.astype(_DTYPES[precision])
    if precision in SCALAR_PRECISIONS:
        ranges = _check_ranges(ranges, vectors.shape[-1])
        buckets = np.clip(np.floor((vectors.astype(np.float32) - ranges[0]) / _steps(ranges)), 0, 255)
        return buckets.astype(np.uint8) if precision == "uint8" else (buckets - 128).astype(np.int8)
    packed = np.packbits(vectors > 0, axis=-1)
    return packed if precision == "ubinary" else (packed.astype(np.int16) - 128).astype(np.int8)


def unpack_bits(codes: np.ndarray, dim: int, precision: str = "ubinary") -> np.ndarray:
    """The (N, dim) 0/1 sign bits of binary or ubinary codes (the inverse of the packing)."""
    codes = np.asarray(codes)
    packed = codes.astype(np.uint8) if precision == "ubinary" else (codes.astype(np.int16) + 128).astype(np.uint8)
    if codes.shape[-1] != (dim + 7) // 8:
        raise SeqpoolError(f"{dim} dimensions pack into {(dim + 7) // 8} bytes per row, got {codes.shape[-1]}")
    return np.unpackbits(packed, axis=-1, count=dim)


def dequantize(codes: np.ndarray, precision: str, ranges: np.ndarray | None = None,
               dim: int | None = None) -> np.ndarray:
    """Float32 vectors back from codes: the inverse of :func:`quantize` up to its rounding.

    int8/uint8 decode to the *centre* of each bucket (sentence-transformers' rescoring uses its
    lower edge; the centre halves the worst-case error). Binary codes decode to +1 / -1 per
    dimension (``dim`` is needed, since packing pads to whole bytes).
    """
    precision = check_precision(precision)
    codes = np.asarray(codes)
    if precision in ("float32", "float16"):
        return codes.astype(np.float32)
    if precision in SCALAR_PRECISIONS:
        ranges = _check_ranges(ranges, codes.shape[-1])
        buckets = codes.astype(np.float32) + (128 if precision == "int8" else 0)
        return ((buckets + 0.5) * _steps(ranges) + ranges[0]).astype(np.float32)
    if dim is None:
        raise SeqpoolError("decoding binary codes needs dim, the number of dimensions before packing")
    return unpack_bits(codes, dim, precision).astype(np.float32) * 2 - 1


@dataclass
class Compaction:
    """How vectors are made compact, plus the ranges fitted for each output column.

    ``encode`` turns float vectors into stored codes; ``decode`` reads them back. int8/uint8
    ranges are fitted by the first ``encode`` of each column (or :meth:`fit` on a calibration
    set) and never refitted, so every later chunk -- in this process, a resumed one, or another
    worker given ``to_metadata()`` -- quantises with the same buckets.
    """

    precision: str = "float32"
    truncate_dim: int | None = None
    normalize: bool = False
    ranges: dict[str, np.ndarray] = field(default_factory=dict)
    #: Width of the float vectors after truncation (set by the first encode; needed to unpack bits).
    dim: int | None = None

    def __post_init__(self) -> None:
        check_precision(self.precision)
        check_truncate_dim(self.truncate_dim)
        self.ranges = {name: np.asarray(r, dtype=np.float32) for name, r in self.ranges.items()}

    @property
    def is_identity(self) -> bool:
        """True when vectors are stored as they come (float32, every dimension)."""
        return self.precision == "float32" and self.truncate_dim is None

    @property
    def needs_ranges(self) -> bool:
        return self.precision in SCALAR_PRECISIONS

    def check_width(self, dim: int) -> None:
        """Fail early (before a model runs for long) if ``truncate_dim`` exceeds the model's width."""
        check_truncate_dim(self.truncate_dim, dim)

    def prepare(self, vectors: np.ndarray) -> np.ndarray:
        """Float vectors truncated (and renormalised when ``normalize``), before quantising."""
        vectors = truncate(vectors, self.truncate_dim, self.normalize and self.truncate_dim is not None)
        if self.dim is None:
            self.dim = int(vectors.shape[-1])
        return vectors

    def fit(self, name: str, vectors: np.ndarray, refit: bool = False) -> None:
        """Fit ``name``'s ranges on ``vectors`` (full width; truncated here) unless already fitted."""
        if self.needs_ranges and (refit or name not in self.ranges):
            self.ranges[name] = fit_ranges(self.prepare(vectors))

    def encode(self, name: str, vectors: np.ndarray) -> np.ndarray:
        """Stored codes of column ``name``'s float vectors; fits its ranges on first use."""
        prepared = self.prepare(vectors)
        if self.needs_ranges and name not in self.ranges:
            self.ranges[name] = fit_ranges(prepared)
        return quantize(prepared, self.precision, self.ranges.get(name))

    def decode(self, name: str, codes: np.ndarray) -> np.ndarray:
        """Float32 vectors back from column ``name``'s codes (see :func:`dequantize`)."""
        if self.needs_ranges and name not in self.ranges:
            raise SeqpoolError(f"no int8/uint8 ranges stored for {name!r}; the file's metadata is incomplete")
        return dequantize(codes, self.precision, self.ranges.get(name), self.dim)

    def to_metadata(self) -> dict[str, str]:
        """``{"compaction": json}``: everything :meth:`from_metadata` needs to decode or continue."""
        payload = {"precision": self.precision, "truncate_dim": self.truncate_dim, "normalize": self.normalize,
                   "dim": self.dim, "ranges": {name: r.tolist() for name, r in sorted(self.ranges.items())}}
        return {METADATA_KEY: json.dumps(payload, separators=(",", ":"))}

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any] | None) -> "Compaction":
        """The compaction a file was written with; plain float32 when the metadata has none."""
        raw = (metadata or {}).get(METADATA_KEY)
        if raw is None:
            return cls()
        try:
            payload = json.loads(raw) if isinstance(raw, (str, bytes)) else dict(raw)
            return cls(precision=payload["precision"], truncate_dim=payload.get("truncate_dim"),
                       normalize=bool(payload.get("normalize", False)), dim=payload.get("dim"),
                       ranges={name: np.asarray(r, dtype=np.float32) for name, r in payload.get("ranges", {}).items()})
        except (ValueError, KeyError, TypeError) as error:
            raise SeqpoolError(f"unreadable {METADATA_KEY!r} metadata ({error}); was the file written by seqpool?") from None
