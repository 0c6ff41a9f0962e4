"""The one rule for every file seqpool writes: only what the user named, and working files it made.

A run writes (1) the outputs the user named and (2) working files beside them -- a lock, a
spool folder, temporary files, metadata. Working files are created *exclusively* and carry a
marker naming the run that made them; seqpool never truncates, replaces or deletes a path it
cannot prove it created (:func:`owned_by_seqpool`). Before any work, every output is checked
against every input (:func:`check_outputs_against_inputs`): the same path, the same file under
another name (hard link, symlink), or an input inside a folder the run would replace is refused
in one line -- so a report never overwrites the data it reports on.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import time
from pathlib import Path
from typing import Iterable, Mapping

from seqpool.errors import SeqpoolError

#: The file inside a working folder that proves seqpool made it (and which run).
FOLDER_MARKER = ".seqpool-run"
#: The first line of a working file seqpool made (a lock); the run id follows it.
FILE_MARKER = "seqpool working file"


def new_run_id() -> str:
    """A run's id: time, pid and randomness, so two runs never share one."""
    return f"{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}-{secrets.token_hex(4)}"


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False


def _inside(path: Path, folder: Path) -> bool:
    try:
        resolved, root = Path(os.path.realpath(path)), Path(os.path.realpath(folder))
    except OSError:
        return False
    return root in resolved.parents


def check_outputs_against_inputs(outputs: Mapping[str, str | os.PathLike | None],
                                 inputs: Iterable[str | os.PathLike | None],
                                 folders: Mapping[str, str | os.PathLike | None] | None = None) -> None:
    """Refuse, in one line naming the option, an output that is an input or would destroy one.

    ``outputs``: option -> file path (``None`` = not asked for); ``folders``: option -> a folder
    the run would create or replace (``--save-best DIR``). An output is refused when it is an
    input (same path or same inode: a hard link or symlink) or when an input lies inside an
    output folder; a folder output is refused when it is the working folder or holds it (``.``).
    Streams (``-``) are not files and are skipped.
    """
    real_inputs = [Path(p) for p in inputs if p is not None and str(p) != "-" and Path(p).exists()]
    named = [(option, Path(path)) for option, path in outputs.items() if path is not None and str(path) != "-"]
    for option, path in named:
        for source in real_inputs:
            if source.is_file() and (_same_file(path, source) or Path(os.path.abspath(path)) == Path(os.path.abspath(source))):
                raise SeqpoolError(f"{option} {path} is the input {source}; writing it would destroy the data, "
                                   f"so choose another {option}")
    for option, folder in (folders or {}).items():
        if folder is None:
            continue
        folder = Path(folder)
        cwd = Path.cwd()
        if _same_file(folder, cwd) or _inside(cwd, folder):
            raise SeqpoolError(f"{option} {folder} is the working folder (or holds it); choose a new folder")
        for source in real_inputs:
            if _same_file(folder, source) or _inside(source, folder):
                raise SeqpoolError(f"{option} {folder} holds the input {source}; replacing the folder would delete "
                                   f"it, so choose another {option}")
    seen: dict[Path, str] = {}
    for option, path in named:  # two outputs of one run naming one file
        key = Path(os.path.abspath(path))
        if key in seen and seen[key] != option:
            raise SeqpoolError(f"{seen[key]} and {option} both name {path}; give each its own file")
        seen[key] = option


def make_working_folder(folder: str | os.PathLike, run_id: str, what: str) -> Path:
    """Create ``folder`` exclusively (it must not exist) with a marker naming the run."""
    folder = Path(folder)
    try:
        folder.mkdir()
    except FileExistsError:
        raise SeqpoolError(f"{folder} exists and seqpool did not create it for this run; move it or choose "
                           f"another output") from None
    marker = folder / FOLDER_MARKER
    fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump({"seqpool": what, "run": run_id}, handle)
    return folder


def owned_by_seqpool(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a working folder or file seqpool made (its marker says so)."""
    path = Path(path)
    try:
        if path.is_symlink():
            return False
        if path.is_dir():
            record = json.loads((path / FOLDER_MARKER).read_text(encoding="utf-8"))
            return isinstance(record, dict) and "run" in record
        if path.is_file():
            with open(path, "r", encoding="utf-8", errors="replace") as handle:
                return handle.readline().startswith(FILE_MARKER)
    except (OSError, ValueError):
        return False
    return False


def remove_working_folder(folder: str | os.PathLike) -> None:
    """Delete a working folder seqpool made; anything else is refused, never deleted."""
    folder = Path(folder)
    if not folder.exists():
        return
    if not owned_by_seqpool(folder):
        raise SeqpoolError(f"{folder} was not made by seqpool (it has no {FOLDER_MARKER} marker); seqpool never "
                           f"deletes what it did not create, so move it yourself")
    shutil.rmtree(folder)
