"""The Ray engine's output folder: which folders a run may write, what a resume must match,
and the manifest recorder that writes each finished shard and records its digest.

Split from :mod:`.files` (the run itself); the folder's format is :mod:`seqpool.io.shards`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from seqpool.errors import SeqpoolError
from seqpool.io.shards import MANIFEST, Shard, read_manifest, write_manifest, write_shard

_MANIFEST_EVERY_S = 2.0  # a shard written since is verified by its content on resume, not by digest


def check_output_folder(folder: Path, resume: bool) -> dict[str, Any] | None:
    """The previous run's manifest when resuming one; errors for folders that must not be touched."""
    if folder.exists() and not folder.is_dir():
        raise SeqpoolError(f"output {folder} is a file; the Ray engine writes a folder of shards, name a folder")
    if not folder.exists():
        parent = folder.parent
        if not parent.is_dir():
            raise SeqpoolError(f"the folder {parent} (holding output {folder}) does not exist; create it first")
        if not os.access(parent, os.W_OK | os.X_OK):
            raise SeqpoolError(f"cannot create {folder}: {parent} is not writable (permission denied)")
        return None
    manifest = read_manifest(folder)
    if manifest is None:
        if any(folder.iterdir()):
            raise SeqpoolError(f"output folder {folder} is not empty and holds no {MANIFEST}; "
                               f"choose a new or empty folder")
        return None
    if not resume:
        state = "a finished" if manifest.get("complete") else "an unfinished"
        raise SeqpoolError(f"output folder {folder} holds {state} run; pass --resume to continue it, "
                           f"or choose another folder")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SeqpoolError(f"cannot write to {folder} (permission denied)")
    return manifest


def check_same_run(folder: Path, previous: dict[str, Any], current: dict[str, Any]) -> None:
    """A resume must see the same inputs (paths, rows, digests) and settings; say what differs."""
    before = [(item["path"], item["rows"], item["digest"]) for item in previous.get("inputs", [])]
    now = [(item["path"], item["rows"], item["digest"]) for item in current["inputs"]]
    if before != now:
        old, new = {p for p, _, _ in before}, {p for p, _, _ in now}
        if old != new or [p for p, _, _ in before] != [p for p, _, _ in now]:
            what = f"the inputs differ (added: {', '.join(sorted(new - old)) or 'none'}; removed: " \
                   f"{', '.join(sorted(old - new)) or 'none'}; or their order changed)"
        else:
            changed = [p for (p, r, d), (_, r2, d2) in zip(before, now) if (r, d) != (r2, d2)]
            what = f"the content of {', '.join(changed)} changed"
        raise SeqpoolError(f"cannot resume {folder}: {what}; rerun without --resume into a new folder")
    old_settings, new_settings = previous.get("settings", {}), current["settings"]
    changed = [key for key in sorted(set(old_settings) | set(new_settings))
               if old_settings.get(key) != new_settings.get(key)]
    if changed:
        detail = "; ".join(f"{key} was {old_settings.get(key)!r}, now {new_settings.get(key)!r}" for key in changed)
        raise SeqpoolError(f"cannot resume {folder}: the settings changed ({detail}); rerun with the same "
                           f"options, or without --resume into a new folder")


class ManifestRecorder:
    """Writes finished shards and keeps the manifest's list of them (range and sha256 each),
    rewritten atomically now and then."""

    def __init__(self, folder: Path, manifest: dict[str, Any], done: dict[Shard, tuple[str, int]]):
        self.folder, self.manifest = folder, manifest
        self.done = {shard: sha256 for shard, (sha256, _) in done.items()}  # finished shard -> its file's sha256
        self.truncated = sum(cut for _, cut in done.values())  # texts cut at max_length in the finished shards
        self._written_at = 0.0
        self.flush()

    def write(self, shard: Shard, source_path: str, columns: dict[str, np.ndarray], truncated: int) -> None:
        """Write one shard's file (atomically), then record it as done, with its digest."""
        self.done[shard] = write_shard(self.folder, shard, source_path, columns, truncated)
        self.truncated += truncated
        if time.monotonic() - self._written_at >= _MANIFEST_EVERY_S:
            self.flush()

    def flush(self) -> None:
        self.manifest["shards"] = [shard.record(sha256) for shard, sha256 in
                                   sorted(self.done.items(), key=lambda item: item[0].name)]
        write_manifest(self.folder, self.manifest)
        self._written_at = time.monotonic()

    def finish(self) -> None:
        self.manifest["complete"] = True
        self.flush()
