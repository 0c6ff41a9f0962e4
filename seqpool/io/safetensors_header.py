"""The header of a safetensors file, read without its data: one reader for every safetensors file
seqpool opens (model weights checked before they load, saved poolers, embeddings read back).

Pure reading: JSON from the file's first bytes, no torch, no numpy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from seqpool.errors import SeqpoolError

#: Largest safetensors header read (the safetensors library's own limit).
MAX_SAFETENSORS_HEADER = 100_000_000


def read_safetensors_header(path: Path) -> tuple[dict[str, Any], dict[str, Any], int]:
    """``(tensors, metadata, data_start)`` of a safetensors file, from its header alone: the header's
    length is checked against the file's size before it is read, so a crafted one costs nothing."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            length = int.from_bytes(handle.read(8), "little")
            fits = size >= 8 and length <= min(size - 8, MAX_SAFETENSORS_HEADER)
            header = json.loads(handle.read(length)) if fits else None
    except (OSError, ValueError, RecursionError) as error:
        raise SeqpoolError(f"{path} is not a readable safetensors file ({error})") from None
    if not fits:
        raise SeqpoolError(f"{path} is not a readable safetensors file: its header claims {length} bytes "
                           f"of the {size} in the file")
    metadata = (header.pop("__metadata__", None) or {}) if isinstance(header, dict) else None
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise SeqpoolError(f"{path} is not a readable safetensors file: its header is not a JSON object "
                           f"of tensors with string metadata")
    return header, metadata, 8 + length


def safetensors_header(path: Path) -> dict[str, Any]:
    """The tensors of a safetensors file's header (names -> dtype, shape, offsets), without the data."""
    return read_safetensors_header(path)[0]
