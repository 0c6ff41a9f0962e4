"""seqpool.io.atomic_path: the one atomic write, for every kind of output path."""

from __future__ import annotations

import json
import os
import stat
import threading

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from seqpool.errors import SeqpoolError
from seqpool.io import atomic_path, atomic_replace, write_jsonl, write_parquet, write_safetensors

KINDS = ["regular", "missing", "symlink", "dangling-symlink", "fifo", "char-device", "directory"]


class umask:
    def __init__(self, mask):
        self.mask = mask

    def __enter__(self):
        self.old = os.umask(self.mask)

    def __exit__(self, *exc):
        os.umask(self.old)


def make(folder, kind):
    """An output path of ``kind`` in ``folder``; returns (path, the file really written or None)."""
    path = folder / "out"
    target = folder / "target"
    if kind == "regular":
        path.write_bytes(b"old")
        os.chmod(path, 0o640)
        return path, path
    if kind == "missing":
        return path, path
    if kind == "symlink":
        target.write_bytes(b"old")
        path.symlink_to(target)
        return path, target
    if kind == "dangling-symlink":
        path.symlink_to(target)
        return path, target
    if kind == "fifo":
        os.mkfifo(path)
        return path, None
    if kind == "char-device":
        return "/dev/null", None
    path.mkdir()
    return path, None


def drain(fifo, into):
    def run():
        with open(fifo, "rb") as handle:
            into.append(handle.read())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.sampled_from(KINDS), st.sampled_from([0o022, 0o077, 0o002]), st.binary(max_size=200))
def test_every_output_path_kind_behaves_as_documented(tmp_path_factory, kind, mask, data):
    folder = tmp_path_factory.mktemp("k")
    path, written = make(folder, kind)
    before = os.lstat(path) if kind != "missing" else None
    kept_mode = stat.S_IMODE(os.stat(written).st_mode) if written is not None and written.exists() else None
    received: list[bytes] = []
    reader = drain(path, received) if kind == "fifo" else None
    with umask(mask):
        if kind == "directory":
            with pytest.raises(SeqpoolError, match="is a directory"):
                with atomic_path(path, mode="wb") as handle:
                    handle.write(data)
        else:
            with atomic_path(path, mode="wb") as handle:
                handle.write(data)
    after = os.lstat(path)
    if kind in ("fifo", "char-device", "directory"):  # never replaced: same inode, same type
        assert (after.st_ino, after.st_dev, stat.S_IFMT(after.st_mode)) == (
            before.st_ino, before.st_dev, stat.S_IFMT(before.st_mode))
    if kind == "fifo":
        reader.join(5)
        assert received == [data]
    if kind in ("symlink", "dangling-symlink"):
        assert os.path.islink(path)  # the link stays, its target holds the data
    if written is not None:
        assert written.read_bytes() == data
        mode = stat.S_IMODE(os.stat(written).st_mode)
        assert mode == (0o666 & ~mask if kept_mode is None else kept_mode)  # an existing file keeps its mode
    leftovers = [p.name for p in folder.iterdir() if p.name.startswith(".")]
    assert leftovers == []


def test_an_error_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(path) as handle:
            handle.write("half")
            raise KeyboardInterrupt
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_sockets_and_missing_folders_are_refused(tmp_path):
    import socket

    sock_path = tmp_path / "s"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(sock_path))
    try:
        with pytest.raises(SeqpoolError, match="is a socket"):
            with atomic_path(sock_path):
                pass
    finally:
        server.close()
    with pytest.raises(FileNotFoundError):
        with atomic_path(tmp_path / "no" / "x"):
            pass


def test_atomic_replace_writes_through_links_and_into_devices(tmp_path):
    target = tmp_path / "elsewhere"
    target.mkdir()
    (tmp_path / "link.npy").symlink_to(target / "real.npy")
    spool = tmp_path / "spool.npy"
    spool.write_bytes(b"rows")
    atomic_replace(spool, tmp_path / "link.npy")
    assert (target / "real.npy").read_bytes() == b"rows" and os.path.islink(tmp_path / "link.npy")
    assert not spool.exists()
    spool.write_bytes(b"rows")
    atomic_replace(spool, "/dev/null")
    assert not spool.exists() and stat.S_ISCHR(os.stat("/dev/null").st_mode)


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_every_writer_creates_files_with_umask_permissions(tmp_path, mask):
    import torch

    from seqpool.serialization import CONFIG_NAME, WEIGHTS_NAME, save_module

    arrays = {"mean": np.ones((3, 2), np.float32)}
    with umask(mask):
        for writer, name in ((write_parquet, "e.parquet"), (write_jsonl, "e.jsonl"),
                             (write_safetensors, "e.safetensors")):
            writer(tmp_path / name, arrays, {})
        save_module(torch.nn.Linear(2, 2), {"kind": "linear"}, tmp_path / "module")
    for path in [tmp_path / "e.parquet", tmp_path / "e.jsonl", tmp_path / "e.safetensors",
                 tmp_path / "module" / CONFIG_NAME, tmp_path / "module" / WEIGHTS_NAME]:
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o666 & ~mask, path
    assert json.loads((tmp_path / "module" / CONFIG_NAME).read_text()) == {"kind": "linear"}


def test_writers_stream_into_dev_null_without_replacing_it(tmp_path):
    before = os.stat("/dev/null")
    write_jsonl("/dev/null", {"mean": np.ones((2, 2), np.float32)}, {})
    write_safetensors("/dev/null", {"mean": np.ones((2, 2), np.float32)}, {})
    after = os.stat("/dev/null")
    assert stat.S_ISCHR(after.st_mode) and after.st_ino == before.st_ino
