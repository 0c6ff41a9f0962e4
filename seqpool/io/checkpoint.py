"""The checkpoint of a resumable spool (``progress.json``): its schema, and the proof that the
rows it vouches for are the rows that were written.

A checkpoint is read back after a crash -- perhaps after a hand edit, a bad disk or a stray
script -- so nothing in it is trusted: every key is checked for its type (one line naming the
key, never a ``KeyError``), and before a resumed run appends a row, each spool's kept rows are
hashed and compared with the sha256 recorded when they were written (updated with every
chunk) and checked to be finite. Rows that changed since are refused, not resumed.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from seqpool.errors import SeqpoolError

PROGRESS_FILE = "progress.json"
PROGRESS_VERSION = 3  # 2: sha256 input digest (seqpool.io.digest); 3: sha256 of each spool's rows
_READ_BLOCK = 1 << 22  # bytes hashed at a time when verifying a spool

#: key -> (type, required); ``rows_sha256`` maps each column to the sha256 of its spooled rows.
SCHEMA: dict[str, tuple[type, bool]] = {
    "version": (int, True), "rows_done": (int, True), "input_digest": (str, True), "settings": (dict, True),
    "rows_sha256": (dict, True), "texts_done": (int, False), "state": (dict, False)}
_TYPE_NAMES = {int: "a whole number", str: "a string", dict: "a JSON object"}


def _damaged(path: Path, problem: str) -> SeqpoolError:
    return SeqpoolError(f"cannot resume from {path}: {problem}; the checkpoint was edited or damaged, so delete "
                        f"{path.parent} to start over")


def read_progress(folder: Path) -> dict[str, Any] | None:
    """The checkpoint in ``folder``, schema-checked; None when there is none yet (a run stopped
    before its first chunk was written)."""
    path = Path(folder) / PROGRESS_FILE
    if not path.exists():
        return None
    try:
        progress = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise _damaged(path, f"it is not readable JSON ({error})") from None
    return check_progress(progress, path)


def check_progress(progress: Any, path: Path) -> dict[str, Any]:
    """``progress`` if it has every key of :data:`SCHEMA` with its type, else one line naming the key."""
    if not isinstance(progress, dict):
        raise _damaged(path, f"it holds a JSON {type(progress).__name__}, not an object")
    if progress.get("version") != PROGRESS_VERSION:
        raise SeqpoolError(f"{path.parent} was written by another seqpool version (checkpoint version "
                           f"{progress.get('version')!r}, this one writes {PROGRESS_VERSION}); delete it to start over")
    for key, (kind, required) in SCHEMA.items():
        if key not in progress:
            if required:
                raise _damaged(path, f"key {key!r} is missing")
            continue
        value = progress[key]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise _damaged(path, f"key {key!r} should be {_TYPE_NAMES[kind]}, got {type(value).__name__} {value!r:.40}")
        if kind is int and value < 0:
            raise _damaged(path, f"key {key!r} is negative ({value})")
    for column, digest in progress["rows_sha256"].items():
        if not isinstance(digest, str) or len(digest) != 64:
            raise _damaged(path, f"key 'rows_sha256' holds no sha256 for {column!r}")
    return progress


def verify_rows(path: Path, offset: int, rows: int, row_shape: tuple[int, ...], dtype: str,
                expected: str | None) -> Any:
    """Check the ``rows`` rows stored at ``offset`` in the spool ``path`` against the sha256
    recorded for them (and, for float columns, that they are finite); return the running hash,
    ready for the rows appended next.
    """
    digest = hashlib.sha256()
    item = np.dtype(dtype).newbyteorder("<")
    row_bytes = int(np.prod(row_shape, dtype=np.int64)) * item.itemsize
    rows_per_block = max(1, _READ_BLOCK // max(row_bytes, 1))
    bad_row = None
    with open(path, "rb") as handle:
        handle.seek(offset)
        for start in range(0, rows, rows_per_block):
            count = min(rows_per_block, rows - start)
            block = handle.read(count * row_bytes)
            if len(block) != count * row_bytes:
                raise SeqpoolError(f"{path} lost rows since the last checkpoint; delete {path.parent} to start over")
            digest.update(block)
            if bad_row is None and item.kind == "f" and row_bytes:
                values = np.frombuffer(block, dtype=item).reshape(count, -1)
                finite = np.isfinite(values).all(axis=1)
                if not finite.all():
                    bad_row = start + int(np.argmin(finite))
    if expected is None or digest.hexdigest() != expected:
        nan = f"; row {bad_row} now holds NaN or inf" if bad_row is not None else ""
        raise SeqpoolError(f"cannot resume: the rows in {path} changed since they were written (their sha256 "
                           f"differs from the checkpoint's{nan}); delete {path.parent} to start over")
    if bad_row is not None:
        raise SeqpoolError(f"cannot resume: row {bad_row} of {path} holds NaN or inf; delete {path.parent} to "
                           f"start over")
    return digest


def progress_record(rows_done: int, texts_done: int, input_digest: str, settings: Mapping[str, Any],
                    state: Mapping[str, Any], hashes: Mapping[str, Any]) -> dict[str, Any]:
    """The checkpoint written after each chunk (the schema :func:`check_progress` reads)."""
    progress = {"version": PROGRESS_VERSION, "rows_done": rows_done, "input_digest": input_digest,
                "settings": dict(settings), "rows_sha256": {name: h.hexdigest() for name, h in hashes.items()}}
    if texts_done != rows_done or state:
        progress.update(texts_done=texts_done, state=dict(state))
    return progress
