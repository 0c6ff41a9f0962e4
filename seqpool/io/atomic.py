"""The one atomic write: every file seqpool writes goes through :func:`atomic_path`.

Readers never see half a file, and after a crash (or Ctrl-C, or a full disk) the path holds
either the old file or the new one: data goes to a temporary file in the same folder, is
fsynced, renamed over the path, and the folder is fsynced so the rename is durable too.

What happens for each kind of output path (documented behaviour, tested in test_atomic.py):

* missing or a regular file: replaced atomically; a new file gets the permissions the
  umask gives (``0o666 & ~umask``, as ``open`` would), an existing one keeps its mode.
* a symlink (also a dangling one): written *through* — the link stays, its target gets the
  new content, as ``echo > link`` does. The rename happens beside the target.
* a FIFO or character device (``/dev/null``, ``/dev/stdout``, a named pipe): streamed into
  directly, never replaced (there is nothing to make atomic about a stream).
* a directory, socket or block device: refused with a one-line :class:`SeqpoolError`.

``exclusive=True`` publishes only a *new* file: the rename becomes a hard link, which fails if
anything appeared at the path meanwhile (:func:`link_new`), so a working file seqpool creates
never replaces one it did not.

The temporary file is removed on any error, KeyboardInterrupt included.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from pathlib import Path
from typing import IO, Any, Iterator

from seqpool.errors import SeqpoolError


def resolve_output(path: str | os.PathLike) -> tuple[Path, str]:
    """The file really written for ``path`` (symlinks followed) and its kind:
    ``"missing"``, ``"file"`` or ``"stream"``; anything else is a SeqpoolError.
    """
    target = Path(os.path.realpath(path))
    try:
        mode = os.stat(target).st_mode
    except FileNotFoundError:
        return target, "missing"
    except NotADirectoryError:
        raise SeqpoolError(f"cannot write {path}: {Path(path).parent} is not a folder") from None
    if stat.S_ISREG(mode):
        return target, "file"
    if stat.S_ISFIFO(mode) or stat.S_ISCHR(mode):
        return target, "stream"
    kind = "a directory" if stat.S_ISDIR(mode) else "a socket" if stat.S_ISSOCK(mode) else "a block device"
    raise SeqpoolError(f"cannot write {path}: it is {kind}; pass a file name")


def check_writable(path: str | os.PathLike, name: str = "path") -> Path:
    """Fail now, before any work, if ``path`` could not be written by :func:`atomic_path`."""
    target, kind = resolve_output(path)
    if kind == "stream":
        return target
    folder = target.parent
    if not folder.exists():
        raise SeqpoolError(f"{name}: folder {folder} does not exist; create it or choose another {name}")
    if not folder.is_dir():
        raise SeqpoolError(f"cannot write {path}: {folder} is not a folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SeqpoolError(f"cannot write to {folder} (permission denied); choose another {name}")
    return target


def current_umask() -> int:
    """The process umask (read by setting and restoring it; there is no getter before 3.x)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, mode: str = "w", encoding: str | None = "utf-8",
                exclusive: bool = False) -> Iterator[IO[Any]]:
    """Open ``path`` for writing (``mode`` ``"w"`` text or ``"wb"`` bytes), atomically.

    ``with atomic_path(p) as handle: handle.write(...)``: the content appears at ``p`` only
    when the block ends without error. See the module docstring for symlinks, devices and
    ``exclusive`` (``p`` must not exist, now or when the content is published).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    text_options = {"encoding": encoding} if mode == "w" else {}
    target, kind = resolve_output(path)
    if exclusive and (kind != "missing" or os.path.lexists(path)):
        raise SeqpoolError(f"{path} exists; seqpool creates it only where nothing is")
    if kind == "stream":
        with open(target, mode, **text_options) as handle:
            yield handle
        return
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **text_options) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        _publish(Path(tmp), target, exclusive)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` through :func:`atomic_path` (temp file, fsync, rename; umask permissions;
    symlinks written through; devices streamed to, never replaced)."""
    with atomic_path(path) as handle:
        handle.write(text)


def atomic_replace(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """Move the finished file ``source`` (in ``path``'s folder) to ``path`` by the same rules.

    For outputs built in place (e.g. an .npy spool) so they need no copy; a stream target
    gets a copy of the bytes and ``source`` is removed.
    """
    source = Path(source)
    target, kind = resolve_output(path)
    try:
        if kind == "stream" or source.resolve().parent != target.parent:  # a device, or another folder
            with open(source, "rb") as reader, atomic_path(target, mode="wb") as writer:
                while block := reader.read(1 << 20):
                    writer.write(block)
            source.unlink()
            return
        with open(source, "rb+") as handle:
            os.fsync(handle.fileno())
        _publish(source, target)
    except BaseException:
        source.unlink(missing_ok=True)
        raise


def _publish(tmp: Path, target: Path, exclusive: bool = False) -> None:
    """Give ``tmp`` the mode ``target`` has (or the umask's), rename it over ``target`` (or, when
    ``exclusive``, link it there only if nothing is), sync the folder."""
    try:
        file_mode = stat.S_IMODE(os.stat(target).st_mode)
    except FileNotFoundError:
        file_mode = 0o666 & ~current_umask()
    os.chmod(tmp, file_mode)
    if exclusive:
        link_new(tmp, target)
    else:
        os.replace(tmp, target)
    _fsync_folder(target.parent)


def link_new(tmp: Path, target: Path) -> None:
    """Give the finished file ``tmp`` the name ``target`` only if nothing has that name, then drop ``tmp``.

    A hard link fails when ``target`` exists (a rename would replace it), so the check and the
    creation are one step: nothing that appears at ``target`` meanwhile is ever replaced.
    Where the file system has no hard links, a rename after a check is the fallback.
    """
    try:
        os.link(tmp, target, follow_symlinks=False)
    except FileExistsError:
        raise SeqpoolError(f"{target} appeared while seqpool was creating it; seqpool does not replace what it "
                           f"did not create, so move it and run again") from None
    except OSError:  # no hard links here (some network or FAT file systems)
        if os.path.lexists(target):
            raise SeqpoolError(f"{target} appeared while seqpool was creating it; seqpool does not replace what "
                               f"it did not create, so move it and run again") from None
        os.rename(tmp, target)
        return
    os.unlink(tmp)


def _fsync_folder(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows cannot open folders; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def staging_folder(target: str | os.PathLike) -> Path:
    """A new, empty folder beside ``target`` (hidden, unique) to build a folder output in before it is
    renamed into place; with the permissions the umask gives, not ``mkdtemp``'s 0o700."""
    target = Path(target)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp"))
    os.chmod(staging, 0o777 & ~current_umask())
    return staging
