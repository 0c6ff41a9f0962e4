"""The lock a run holds on its output (``OUTPUT.lock``), so two runs never write one output at once.

The lock is a working file (:mod:`seqpool.io.ownership`): created exclusively, already
``flock``-ed and holding its marker line (run id and pid) from the instant it appears. An
existing ``OUTPUT.lock`` is only ever used if it carries that marker: a live holder's lock is
reported ("in use by another run (pid N)"); a dead run's is taken over (the kernel dropped its
``flock`` when the process died); anything else is the user's file, refused in one line before
any work and never truncated or deleted. On leaving, a run deletes the lock only while it is
still the very file it holds.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
from pathlib import Path
from typing import Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

from seqpool.errors import SeqpoolError
from seqpool.io.atomic import resolve_output
from seqpool.io.ownership import FILE_MARKER, create_working_file, marker_line, new_run_id, owned_by_seqpool


def lock_path(output: str | os.PathLike) -> Path:
    """The lock file held while a run writes ``output`` (``OUTPUT.lock``)."""
    output = Path(output)
    return output.with_name(output.name + ".lock")


@contextlib.contextmanager
def output_lock(output: str | os.PathLike, run_id: str | None = None) -> Iterator[None]:
    """Hold an exclusive lock on ``output`` for the block (see the module docstring).

    Where fcntl does not exist (Windows), runs are not locked; a device or FIFO output keeps
    nothing on disk to protect and is not locked either.
    """
    if fcntl is None or resolve_output(output)[1] == "stream":
        yield
        return
    path = lock_path(output)
    what = f"the lock of {Path(output).name}, held while seqpool writes it"
    fd = _acquire(path, output, run_id or new_run_id(), what)
    try:
        yield
    finally:
        try:
            if _same_inode(path, fd):  # still the file this run holds: it is seqpool's, delete it
                path.unlink()  # before unlocking, so no one can lock a file about to vanish
        finally:
            os.close(fd)


def _acquire(path: Path, output: str | os.PathLike, run_id: str, what: str) -> int:
    """A descriptor of ``path``, created or taken over, holding the lock and this run's marker."""
    while True:
        try:
            return create_working_file(path, run_id, what, lock=True)
        except FileExistsError:
            pass
        fd = _open_seqpool_lock(path, output)
        if fd is None:  # it vanished meanwhile (its holder finished): create it again
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = re.search(r"pid=(\d+)", os.pread(fd, 512, 0).decode("utf-8", "replace"))
            os.close(fd)
            raise SeqpoolError(f"{output} is in use by another run (pid {holder.group(1) if holder else 'unknown'}); "
                               f"wait for it to finish or choose another output=...") from None
        if not _same_inode(path, fd):
            os.close(fd)  # replaced or removed between the check and the lock: look again
            continue
        if os.pread(fd, len(FILE_MARKER), 0) != FILE_MARKER.encode("utf-8"):
            os.close(fd)
            raise _not_a_lock(path, output)
        line = marker_line(run_id, what).encode("utf-8")  # a dead run's lock: take it over
        os.pwrite(fd, line, 0)
        os.ftruncate(fd, len(line))
        return fd


def _open_seqpool_lock(path: Path, output: str | os.PathLike) -> int | None:
    """An existing lock opened read-write if it is seqpool's; None if it is gone; else a SeqpoolError."""
    try:
        mode = os.lstat(path).st_mode
        if stat.S_ISREG(mode) and owned_by_seqpool(path):
            return os.open(path, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0))
    except FileNotFoundError:
        return None
    except OSError as error:
        raise SeqpoolError(f"cannot open the lock {path}: {error.strerror}; move it or choose another "
                           f"output=...") from None
    if not os.path.lexists(path):
        return None
    raise _not_a_lock(path, output)


def _not_a_lock(path: Path, output: str | os.PathLike) -> SeqpoolError:
    return SeqpoolError(f"{path} exists and seqpool did not make it (a seqpool lock starts with {FILE_MARKER!r}); "
                        f"seqpool keeps the lock of {output} there and never replaces or deletes what it did not "
                        f"create, so move it or choose another output=...")


def _same_inode(path: Path, fd: int) -> bool:
    try:
        named, held = os.stat(path, follow_symlinks=False), os.fstat(fd)
        return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)
    except FileNotFoundError:
        return False
