"""The one rule for every file seqpool writes: only what the user named, and working files it made.

A run writes (1) the outputs the user named and (2) working files beside them -- a lock, a
spool folder, temporary files, metadata. Working files are created *exclusively* and carry a
marker naming the run that made them; seqpool never truncates, replaces or deletes a path it
cannot prove it created (:func:`owned_by_seqpool`). Before any work, every output is checked
against every input (:func:`check_outputs_against_inputs`): the same path, the same file under
another name (hard link, symlink), or an input inside a folder the run would replace is refused
in one line -- so a report never overwrites the data it reports on.

How a working file proves seqpool made it: a folder holds :data:`FOLDER_MARKER`; a plain file
(a lock) starts with a :func:`marker_line`; a JSON file (the metadata beside an npy or jsonl
output) has :data:`JSON_MARKER_KEY` as its first key (:func:`marked_json`). Working files are
published with :func:`create_working_file` / ``atomic_path(exclusive=True)``, which never
replace anything that appeared at their path.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import secrets
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

from seqpool.errors import SeqpoolError

#: The file inside a working folder that proves seqpool made it (and which run).
FOLDER_MARKER = ".seqpool-run"
#: The first line of a working file seqpool made (a lock); the run id follows it.
FILE_MARKER = "seqpool working file"
#: The first key of a JSON working file seqpool made; its value names the run and the file's job.
JSON_MARKER_KEY = "seqpool_working_file"
_JSON_MARKED = re.compile(r'\A\s*\{\s*"' + JSON_MARKER_KEY + r'"\s*:\s*"' + FILE_MARKER)


def marker_line(run_id: str, what: str) -> str:
    """The first line of a working file: :data:`FILE_MARKER`, the run, its pid, and what the file is for."""
    return f"{FILE_MARKER} run={run_id} pid={os.getpid()}: {what}\n"


def marked_json(record: Mapping[str, Any], run_id: str, what: str) -> dict[str, Any]:
    """``record`` with the marker as its first key, for a JSON working file."""
    return {JSON_MARKER_KEY: marker_line(run_id, what).strip(), **record}


_SAFE_NAME = re.compile(r"[A-Za-z0-9_+@~-][A-Za-z0-9_.+@~-]*")
#: Longest name :func:`safe_file_name` keeps as it is (file systems allow 255 bytes in all).
SAFE_NAME_LIMIT = 80


def safe_file_name(name: str) -> str:
    """``name`` (a strategy, an expression) as one short, safe piece of a file name.

    Kept as it is when it is at most :data:`SAFE_NAME_LIMIT` characters of ASCII letters,
    digits, ``_ - . + @ ~`` and does not start with ``.``; otherwise a readable prefix (other
    characters as ``_``) and a digest of the whole name, so distinct names stay distinct and no
    name can reach outside its folder (``/``, ``..``) or pass the file system's length limit.
    """
    if _SAFE_NAME.fullmatch(name) and len(name) <= SAFE_NAME_LIMIT:
        return name
    readable = re.sub(r"[^A-Za-z0-9_.+@~-]", "_", name)[:40].lstrip(".")
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return f"{readable}-{digest}" if readable else digest


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


def _real_inputs(inputs: Iterable[str | os.PathLike | None]) -> list[Path]:
    return [Path(p) for p in inputs if p is not None and str(p) != "-" and Path(p).exists()]


def input_at(path: str | os.PathLike, inputs: Iterable[str | os.PathLike | None]) -> Path | None:
    """The input file that ``path`` is -- the same path, or the same file under another name
    (a hard link or symlink) -- if any: the one test behind every "output is an input" refusal."""
    path = Path(path)
    for source in _real_inputs(inputs):
        same_name = Path(os.path.abspath(path)) == Path(os.path.abspath(source))
        if source.is_file() and (same_name or _same_file(path, source)):
            return source
    return None


def check_working_paths(output: str | os.PathLike, working: Mapping[str, str | os.PathLike],
                        inputs: Iterable[str | os.PathLike | None], option: str = "output=...") -> None:
    """Before any work: each working path of ``output`` (``what -> path``: its lock, spool folder,
    metadata file) is no input, holds no input, and is absent or seqpool's own (its marker).

    Refused in one line naming the path and what seqpool keeps there; nothing is touched.
    """
    real_inputs = _real_inputs(inputs)
    for what, path in working.items():
        path = Path(path)
        source = input_at(path, real_inputs) or next((s for s in real_inputs if _inside(s, path)), None)
        if source is not None:
            raise SeqpoolError(f"{path} is where seqpool keeps the {what} of {output}, and it is the input "
                               f"{source}; choose another {option}")
        if os.path.lexists(path) and not owned_by_seqpool(path):
            raise SeqpoolError(f"{path} exists and seqpool did not make it (no seqpool marker); seqpool keeps the "
                               f"{what} of {output} there and never replaces or deletes what it did not create, "
                               f"so move it or choose another {option}")


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
    real_inputs = _real_inputs(inputs)
    named = [(option, Path(path)) for option, path in outputs.items() if path is not None and str(path) != "-"]
    for option, path in named:
        source = input_at(path, real_inputs)
        if source is not None:
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


def create_working_file(path: str | os.PathLike, run_id: str, what: str, *, lock: bool = False) -> int:
    """Create the working file ``path`` exclusively, its marker line in it from the first instant.

    The marked file is written beside ``path`` and hard-linked there (``atomic.link_new``), which
    fails with :class:`FileExistsError` if anything is at ``path``, so no reader ever sees it
    empty and nothing is replaced. ``lock``: take an exclusive ``flock`` before it appears.
    Returns an open read-write descriptor of the file (the caller closes it).
    """
    from seqpool.io.atomic import current_umask, link_new

    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~current_umask())  # as open() would make it, not mkstemp's 0600
        os.write(fd, marker_line(run_id, what).encode("utf-8"))
        os.fsync(fd)  # a crash must not leave an empty (unmarked, so unremovable) lock
        if lock:
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody else can know this file yet
        if os.path.lexists(path):
            raise FileExistsError(path)
        try:
            link_new(Path(tmp), path)
        except SeqpoolError:
            raise FileExistsError(path) from None
    except BaseException:
        os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
    return fd


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
                head = handle.read(4096)
            return head.startswith(FILE_MARKER) or _JSON_MARKED.match(head) is not None
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


def input_paths(*sources: Any) -> list[Path]:
    """The local paths a command reads, for :func:`seqpool.io.ownership.check_outputs_against_inputs`:
    each existing file or folder named (streams ``-``, Hub names and in-memory data skipped) and
    the files directly inside a named folder -- a saved module's ``config.json`` and weights, a
    model's files -- so that no output overwrites one."""
    paths: list[Path] = []
    for source in sources:
        if not isinstance(source, (str, os.PathLike)) or os.fspath(source) in ("", "-"):
            continue
        path = Path(source).expanduser()
        if path.is_dir():
            paths += [path, *(entry for entry in sorted(path.iterdir()) if entry.is_file())]
        elif path.exists():
            paths.append(path)
    return paths
