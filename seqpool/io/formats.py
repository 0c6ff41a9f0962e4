"""What seqpool's output files are called and hold: formats, npy names, sidecars, chunk columns.

The writers (:mod:`seqpool.io.writers`) and the reader (:mod:`seqpool.io.loading`) both go by
these rules, so they live below both (the writers re-export them under their old names).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

from seqpool.errors import SeqpoolError
from seqpool.io.ownership import safe_file_name
from seqpool.io.readers import choose

OUTPUT_FORMATS: tuple[str, ...] = ("npy", "parquet", "jsonl", "safetensors")

_OUTPUT_EXTENSIONS = {".npy": "npy", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl",
                      ".safetensors": "safetensors"}
#: The columns that say where each chunk row comes from (``seqpool embed --chunk-output``).
CHUNK_COLUMNS = ("doc", "chunk", "char_start", "char_end")


def detect_output_format(path: str | os.PathLike, output_format: str | None = None) -> str:
    """``output_format`` if given, else the one the extension names (no extension: ``npy``).

    An extension that names no output format (``x.json``, ``x.csv``) is an error rather than
    npy bytes under a misleading name; so is an extension naming another format than
    ``output_format``.
    """
    suffix = Path(path).suffix.lower()
    implied = _OUTPUT_EXTENSIONS.get(suffix)
    if output_format:
        fmt = choose(output_format, OUTPUT_FORMATS, "output format")
        if implied is not None and implied != fmt:
            raise SeqpoolError(f"output {path} has a .{implied} extension but output_format={fmt!r}; "
                               f"make them agree")
        return fmt
    if implied is None and suffix and str(path):
        raise SeqpoolError(f"cannot tell the output format from {path}'s extension {suffix!r}; name the file "
                           f".npy, .parquet, .jsonl or .safetensors, or set output_format=... "
                           f"(one of: {', '.join(OUTPUT_FORMATS)})")
    return implied or "npy"


def npy_strategy(path: str | os.PathLike, strategies: Sequence[str]) -> str | None:
    """The strategy of a several-strategy run whose npy file ``path`` is (``emb.max.npy`` -> ``max``).

    The inverse of :func:`seqpool.io.writers.output_paths`' npy rule ``OUTPUT.<safe name>.npy``;
    the longest match wins (``p2.5`` over ``5``); ``None`` when the name carries none."""
    name = Path(path).name
    suffixes = {s: f".{safe_file_name(s)}.npy" for s in strategies}
    named = [s for s, suffix in suffixes.items() if name.endswith(suffix) and len(name) > len(suffix)]
    return max(named, key=lambda s: len(suffixes[s])) if named else None


def sidecar_path(path: str | os.PathLike) -> Path:
    """``emb.npy`` -> ``emb.npy.json``: the metadata of formats that cannot hold any."""
    return Path(str(path) + ".json")
