"""Encode once: token states cached on disk, keyed by the encoder's fingerprint and the texts.

A cache is an optimisation, never a reason to fail, and never trusted unchecked: each file
records the sha256 of its states (:func:`states_digest`), so a file that does not match its
digest, or holds non-finite states, or no digest at all, is re-encoded and replaced with one
warning (not scored at chance). A cache folder that cannot be written (read-only, a path under
a regular file, a full disk) gives one warning, before the encoder runs, not after; the run
goes on, reading what the folder holds and storing nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import torch

from seqpool._version import __version__
from seqpool.io import text_digest
from seqpool.states import TokenStates

#: fp16 overflows at 65504; token states beyond this are cached in float32 instead.
_FP16_SAFE = 6.0e4

Log = Callable[[str], None]


def encoder_fingerprint(encoder: Any) -> dict[str, Any]:
    """What determines the token states besides the texts (:meth:`seqpool.Encoder.fingerprint`)."""
    return encoder.fingerprint()


def default_cache_dir() -> Path:
    """``$SEQPOOL_CACHE`` or ``~/.cache/seqpool``."""
    return Path(os.environ.get("SEQPOOL_CACHE") or Path.home() / ".cache" / "seqpool")


def states_cache_path(cache_dir: str | os.PathLike, fingerprint: dict[str, Any], texts: Sequence[str]) -> Path:
    key = hashlib.sha256(json.dumps({"encoder": fingerprint, "texts": text_digest(texts)},
                                    sort_keys=True).encode()).hexdigest()
    return Path(cache_dir) / "states" / f"{key[:40]}.safetensors"


def cache_write_problem(cache_dir: str | os.PathLike) -> str | None:
    """Why token states could not be stored under ``cache_dir`` (None if they can).

    Probes by creating the folder and a throw-away file in it: ``os.access`` says yes to root
    on a read-only mount and knows nothing of full disks or paths under regular files.
    """
    folder = Path(cache_dir).expanduser() / "states"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-"):
            pass
    except OSError as error:
        return f"{error.strerror or type(error).__name__}: {error.filename or folder}"
    return None


def _storage_dtype(batches: Iterable[Any], overflow: list[bool]) -> Iterable[Any]:
    """Pass batches on as fp16 unless a value would overflow it (then keep float32)."""
    for rows, hidden, mask in batches:
        real = hidden[mask]
        if real.numel() and float(real.abs().max()) >= _FP16_SAFE:
            overflow.append(True)
        else:
            hidden = hidden.half()
        yield rows, hidden, mask


def encode_states(encoder: Any, texts: Sequence[str], batch_size: int | None = None,
                  progress: bool = False, blocks: Sequence[tuple[int, ...]] | None = None) -> TokenStates:
    """Token states of ``texts`` in input order, stored in fp16 (float32 if fp16 would overflow).

    ``blocks`` (a :class:`~seqpool.layer_plan.LayerPlan`'s): every block's states side by side,
    K * D wide, from the one encoder pass, cached together as one file.
    """
    overflow: list[bool] = []
    batches = encoder.hidden_states(texts, batch_size, progress, blocks=blocks) if blocks \
        else encoder.hidden_states(texts, batch_size, progress)
    states = TokenStates.from_batches(_storage_dtype(batches, overflow), num_texts=len(texts))
    return states.to(torch.float32 if overflow else torch.float16)


#: The safetensors metadata key holding :func:`states_digest` of the stored states.
DIGEST_KEY = "sha256"


def states_digest(states: TokenStates) -> str:
    """sha256 over the dtype, shape and bytes of the token states and their offsets: what a cache
    file must still hold when it is read back."""
    digest = hashlib.sha256()
    for tensor in (states.states, states.offsets):
        tensor = tensor.contiguous()
        digest.update(f"{tensor.dtype}{tuple(tensor.shape)};".encode())
        digest.update(memoryview(tensor.view(torch.uint8).numpy()))
    return digest.hexdigest()


def _read_cache(path: Path, count: int, width: int) -> tuple[TokenStates | None, str]:
    """(the states of a cache file, "") if it is whole and fits; else (None, why not)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            recorded = (handle.metadata() or {}).get(DIGEST_KEY)
        states = TokenStates.load(path)
    except Exception as error:  # a damaged file is not the user's problem: re-encode
        return None, f"is unreadable ({' '.join(str(error).split())[:120]})"
    if len(states) != count or states.dim != width:
        return None, f"holds {len(states)} x {states.dim} states, not {count} x {width}"
    if recorded is None:
        return None, "records no digest of its content"
    if states_digest(states) != recorded:
        return None, "does not match its recorded digest (damaged)"
    if not bool(torch.isfinite(states.states).all()):
        return None, "holds non-finite token states"
    return states, ""


@dataclass
class EncodedStates:
    """Token states plus where they came from and what they cost."""

    states: TokenStates
    seconds: float
    cache_hit: bool
    cache_path: str | None


def cached_states(encoder: Any, texts: Sequence[str], cache_dir: str | os.PathLike | None,
                  batch_size: int | None = None, progress: bool = False, log: Log | None = None,
                  warn: Log | None = None, writable: bool = True,
                  blocks: Sequence[tuple[int, ...]] | None = None) -> EncodedStates:
    """Load the token states of ``texts`` (of several layer ``blocks``, see :func:`encode_states`)
    from the cache, or encode and store them.

    ``cache_dir=None`` disables the cache; ``writable=False`` reads it but stores nothing. A
    cache file that is damaged, mismatching, without digest or non-finite is re-encoded and
    replaced with one ``warn``-ing; states that are not finite are not stored; a failed store is
    a ``warn``-ing, never an error (the states are in memory, the run goes on). ``log`` gets a
    line when the states come from the cache.
    """
    start = time.perf_counter()
    fingerprint = {**encoder_fingerprint(encoder), **({"blocks": [list(b) for b in blocks]} if blocks else {})}
    path = states_cache_path(cache_dir, fingerprint, texts) if cache_dir is not None else None
    width = encoder.hidden_size * (len(blocks) if blocks else 1)
    if path is not None and path.is_file():
        states, problem = _read_cache(path, len(texts), width)
        if states is not None:
            if log:
                log(f"token states of {len(texts)} texts read from the cache (digest checked)")
            return EncodedStates(states, time.perf_counter() - start, True, str(path))
        if warn:
            warn(f"the token-state cache file {path} {problem}; re-encoding")
    states = encode_states(encoder, texts, batch_size, progress, blocks)
    stored = None
    if path is not None and writable and not bool(torch.isfinite(states.states).all()):
        if warn:
            warn("the encoder gave non-finite token states; they are not cached, and scores built on them "
                 "are not meaningful")
    elif path is not None and writable:
        try:
            states.save(path, metadata={"seqpool_version": __version__, "model": str(encoder.name_or_path),
                                        "texts": str(len(texts)), DIGEST_KEY: states_digest(states)})
            stored = str(path)
        except Exception as error:  # OSError, or safetensors' own error on a full disk
            if warn:
                warn(f"could not store token states in the cache ({' '.join(str(error).split())[:200]}); "
                     f"continuing without it")
    return EncodedStates(states, time.perf_counter() - start, False, stored)
