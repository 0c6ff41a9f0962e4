"""The Ray engine's inputs: files, globs and folders expanded to paths, each scanned once.

The scan reads every row with the shared reader (so rows are numbered exactly as the local
engine numbers them), counts them and digests the whole file and each shard: the read
tasks check those digests when they re-read a file, and ``--resume`` compares the whole.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from seqpool.errors import SeqpoolError


@dataclass(frozen=True)
class Input:
    """One input file as the scan found it: what the plan, the read tasks and the manifest need."""

    path: str  # absolute: read tasks run in other processes, maybe on other machines
    format: str
    text_field: str | None
    rows: int
    chars: int
    digest: str
    shard_digests: tuple[str, ...]

    def record(self) -> dict[str, Any]:
        return {"path": self.path, "format": self.format, "text_field": self.text_field, "rows": self.rows,
                "digest": self.digest}


def expand_inputs(inputs: str | os.PathLike | Iterable[str | os.PathLike], output_dir: Path | None = None) -> list[str]:
    """Absolute paths of the files named by ``inputs`` (files, globs, folders), in the order
    given (sorted within a glob or folder), each once, never one inside ``output_dir``."""
    if isinstance(inputs, (str, os.PathLike)):
        inputs = [inputs]
    inputs = [str(item) for item in inputs]
    if not inputs:
        raise SeqpoolError("inputs is empty; pass at least one file, glob or folder")
    found: list[str] = []
    for item in inputs:
        if item == "-":
            raise SeqpoolError("the Ray engine reads files, not stdin (workers re-read their rows); "
                               "save the input to a file first")
        if "://" in item:
            raise SeqpoolError(f"input {item}: URLs are not read directly; mount the storage so every Ray node "
                               f"sees it as a path (e.g. s3fs, gcsfuse, NFS)")
        if glob.has_magic(item):
            matches = sorted(path for path in glob.glob(item, recursive=True) if os.path.isfile(path))
            if not matches:
                raise SeqpoolError(f"no input file matches {item}")
        elif os.path.isdir(item):
            matches = _folder_files(item)
            if not matches:
                raise SeqpoolError(f"input folder {item} holds no files (names starting with . or _ are skipped)")
        elif not os.path.exists(item):
            raise SeqpoolError(f"input file not found: {item}")
        else:
            matches = [item]
        found.extend(os.path.abspath(path) for path in matches)
    inside = os.path.realpath(output_dir) + os.sep if output_dir is not None else None
    unique = list(dict.fromkeys(found))
    if inside is not None:
        unique = [path for path in unique if not os.path.realpath(path).startswith(inside)]
        if not unique:
            raise SeqpoolError(f"every input lies inside the output folder {output_dir}")
    return unique


def _folder_files(folder: str) -> list[str]:
    files = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(name for name in dirs if not name.startswith((".", "_")))
        files.extend(os.path.join(root, name) for name in sorted(names) if not name.startswith((".", "_")))
    return files


def scan(path: str, input_format: str | None, text_field: str | None, shard_rows: int) -> Input:
    """Read one input once: validate every row, count them, digest the whole and each shard."""
    from seqpool.io import TextDigest, TextSource, text_digest

    source = TextSource.open(path, input_format, text_field)
    if source.is_stream:
        raise SeqpoolError(f"input {path} is a stream (a pipe or device); the Ray engine needs files it can re-read")
    digest, shard_digests, rows, chars = TextDigest(), [], 0, 0
    for texts in source.chunks(shard_rows):
        digest.update(texts)
        shard_digests.append(text_digest(texts))
        rows += len(texts)
        chars += sum(map(len, texts))
    return Input(os.path.abspath(path), source.format, None if source.format == "txt" else source.text_field,
                  rows, chars, digest.hexdigest(), tuple(shard_digests))
