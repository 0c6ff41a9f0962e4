"""Snapshot a working folder (paths, kinds and content hashes) around a run, to assert that a
command changed only the outputs it declares -- seqpool's rule that it never touches what it
did not create. Used by the fault-battery tests.

    before = snapshot(tmp_path)
    run(...)
    assert changed(before, snapshot(tmp_path)) <= {"out.npy"}
"""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path


def snapshot(folder: str | os.PathLike) -> dict[str, str]:
    """``relative path -> kind:digest`` for everything under ``folder`` (links not followed)."""
    root = Path(folder)
    state: dict[str, str] = {}
    for path in sorted(root.rglob("*")):
        relative = str(path.relative_to(root))
        mode = path.lstat().st_mode
        if stat.S_ISLNK(mode):
            state[relative] = f"link:{os.readlink(path)}"
        elif stat.S_ISDIR(mode):
            state[relative] = "dir"
        elif stat.S_ISREG(mode):
            state[relative] = "file:" + hashlib.sha256(path.read_bytes()).hexdigest()
        else:
            state[relative] = f"special:{stat.S_IFMT(mode)}"
    return state


def changed(before: dict[str, str], after: dict[str, str]) -> set[str]:
    """Paths created, deleted or modified between two snapshots."""
    return {path for path in before.keys() | after.keys() if before.get(path) != after.get(path)}
