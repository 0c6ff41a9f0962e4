"""Ragged token-level hidden states: the unit that is computed once and pooled many times.

One encoder pass produces token states for N texts of different lengths. Storing them
flat (``states`` of shape (total_tokens, D) plus ``offsets``) wastes no memory on padding,
saves to a single safetensors file (the evaluation cache), and can be re-padded into
(B, T, D) batches for any pooling strategy or learned pooler.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from seqpool.errors import SeqpoolError
from seqpool.pooling import check_strategy, pool_many

Batch = tuple[np.ndarray, Tensor, Tensor]


@dataclass
class TokenStates:
    """Token states of N texts stored flat: text ``i`` owns ``states[offsets[i]:offsets[i + 1]]``."""

    states: Tensor
    offsets: Tensor

    def __post_init__(self) -> None:
        if self.states.dim() != 2:
            raise SeqpoolError(f"TokenStates.states must be (total_tokens, dim), got {tuple(self.states.shape)}")
        self.offsets = torch.as_tensor(self.offsets, dtype=torch.int64)
        if self.offsets.dim() != 1 or len(self.offsets) < 1 or int(self.offsets[0]) != 0 \
                or int(self.offsets[-1]) != self.states.shape[0] or bool((self.offsets.diff() < 0).any()):
            raise SeqpoolError("TokenStates.offsets must start at 0, never decrease, and end at len(states)")

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def dim(self) -> int:
        return self.states.shape[1]

    def lengths(self) -> Tensor:
        """(N,) number of tokens of each text."""
        return self.offsets.diff()

    def _indices(self, indices: Sequence[int] | np.ndarray | None) -> np.ndarray:
        """Text indices as int64, each in ``0 .. len - 1`` (every method that takes ``indices`` checks here)."""
        if indices is None:
            return np.arange(len(self))
        array = np.asarray(indices).reshape(-1)
        if array.size and not np.issubdtype(array.dtype, np.integer):
            raise SeqpoolError(f"indices must be integers, got {array.dtype}")
        array = array.astype(np.int64)
        if array.size and (array.min() < 0 or array.max() >= len(self)):
            bad = int(array[(array < 0) | (array >= len(self))][0])
            raise SeqpoolError(f"index {bad} is out of range for {len(self)} texts (indices run 0..{len(self) - 1})")
        return array

    def padded(self, indices: Sequence[int] | np.ndarray | None = None, dtype: torch.dtype = torch.float32,
               transform: Callable[[Tensor], Tensor] | None = None) -> tuple[Tensor, Tensor]:
        """Right-padded (B, T_max, D) states and (B, T_max) bool mask for the chosen texts.

        ``transform`` maps the real tokens' (n_tokens, D) states (already in ``dtype``) before
        they are placed, e.g. a standardisation: only real tokens are touched, and padding stays
        exactly zero, with no masking pass over the padded batch.
        """
        grid, mask = self.token_grid(indices)
        hidden = torch.zeros(*mask.shape, self.dim, dtype=dtype)
        values = self.states[grid[mask]].to(dtype)
        hidden[mask] = values if transform is None else transform(values)
        return hidden, mask

    def token_grid(self, indices: Sequence[int] | np.ndarray | None = None) -> tuple[Tensor, Tensor]:
        """(B, T_max) row in ``states`` of each position of the chosen texts, right-padded, and the
        (B, T_max) bool mask of real positions (a padded position's index is past its text)."""
        rows = torch.from_numpy(self._indices(indices))
        starts, lengths = self.offsets[rows], self.offsets[rows + 1] - self.offsets[rows]
        positions = torch.arange(int(lengths.max()) if len(rows) else 0)
        return starts.unsqueeze(1) + positions, positions < lengths.unsqueeze(1)

    def float_chunks(self, size: int = 8192) -> Iterator[tuple[slice, Tensor]]:
        """``(token slice, float32 states)`` a few thousand tokens at a time: sums and copies
        over every token without a full-size float32 temporary."""
        for start in range(0, self.states.shape[0], size):
            end = min(start + size, self.states.shape[0])
            yield slice(start, end), self.states[start:end].float()

    def iter_batches(self, indices: Sequence[int] | np.ndarray | None = None, batch_size: int = 256,
                     dtype: torch.dtype = torch.float32) -> Iterator[Batch]:
        """(indices, hidden, mask) batches in the given order; sort by length first to cut padding."""
        rows = self._indices(indices)
        for start in range(0, len(rows), batch_size):
            chunk = rows[start:start + batch_size]
            hidden, mask = self.padded(chunk, dtype)
            yield chunk, hidden, mask

    def length_sorted(self, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """The given rows ordered by token count (stable), so batches pad little."""
        rows = self._indices(indices)
        return rows[np.argsort(self.lengths().numpy()[rows], kind="stable")]

    def pool(self, strategies: Sequence[str] = ("mean",), batch_size: int = 256) -> dict[str, np.ndarray]:
        """Every parameter-free strategy from these states: float32 (N, D) arrays in text order."""
        for strategy in strategies:
            check_strategy(strategy)
        pooled = {s: np.zeros((len(self), self.dim), dtype=np.float32) for s in strategies}
        for rows, hidden, mask in self.iter_batches(self.length_sorted(), batch_size):
            for strategy, vectors in pool_many(hidden, mask, strategies).items():
                pooled[strategy][rows] = vectors.float().numpy()
        return pooled

    def means(self) -> Tensor:
        """(N, D) float32 mean of each text's tokens (zeros for a text with none), from segment
        sums over the flat states: no padded batch is built."""
        sums = torch.zeros(len(self), self.dim)
        owner = torch.repeat_interleave(torch.arange(len(self)), self.lengths())
        for tokens, chunk in self.float_chunks():
            sums.index_add_(0, owner[tokens], chunk)
        return sums / self.lengths().clamp(min=1).unsqueeze(1).float()

    def subset(self, indices: Sequence[int] | np.ndarray) -> "TokenStates":
        """A new TokenStates with the chosen texts, in the given order."""
        rows = torch.from_numpy(self._indices(indices))
        starts, lengths = self.offsets[rows], self.lengths()[rows]
        offsets = torch.zeros(len(rows) + 1, dtype=torch.int64)
        offsets[1:] = lengths.cumsum(0)
        if len(rows) == 0:
            return TokenStates(self.states[:0], offsets)
        token_index = torch.repeat_interleave(starts - offsets[:-1], lengths) + torch.arange(int(offsets[-1]))
        return TokenStates(self.states[token_index], offsets)

    def to(self, dtype: torch.dtype) -> "TokenStates":
        return TokenStates(self.states.to(dtype), self.offsets)

    def save(self, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
        """One safetensors file, written atomically (a cache must never be half-written).

        Written next to ``path`` and published by :func:`seqpool.io.atomic.atomic_replace`
        (fsync, umask permissions, never over a device or FIFO), like every seqpool output.
        """
        import tempfile

        from seqpool.io.atomic import atomic_replace  # the one atomic write; lazy: io sits above states

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        try:
            save_file({"states": self.states.contiguous(), "offsets": self.offsets.contiguous()},
                      tmp, metadata=metadata or {})
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        atomic_replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TokenStates":
        """The states :meth:`save` wrote; a missing or foreign file is a SeqpoolError naming it."""
        try:
            tensors = load_file(str(path))
        except FileNotFoundError:
            raise SeqpoolError(f"{path} not found: no token states were saved there") from None
        except Exception as error:  # safetensors raises its own types for a damaged or foreign file
            raise SeqpoolError(f"{path} is not a token-states file: {type(error).__name__}: {error}") from None
        if set(tensors) != {"states", "offsets"}:
            raise SeqpoolError(f"{path} is not a token-states file: it holds {', '.join(sorted(tensors))}")
        return cls(tensors["states"], tensors["offsets"])

    @classmethod
    def from_batches(cls, batches: Iterable[Batch], num_texts: int | None = None,
                     dtype: torch.dtype | None = None) -> "TokenStates":
        """Collect (indices, hidden, mask) batches, in any order, into input order.

        Every row ``0 .. num_texts - 1`` must come exactly once: a missing or repeated row
        means the batches do not belong to these texts, and is refused rather than guessed.
        """
        pieces: dict[int, Tensor] = {}
        width: int | None = None
        for number, (rows, hidden, mask) in enumerate(batches):
            width = _check_batch(number, rows, hidden, mask, width)
            states = hidden if dtype is None else hidden.to(dtype)
            for row, row_states, row_mask in zip(np.asarray(rows).tolist(), states, mask):
                if row in pieces:
                    raise SeqpoolError(f"batches cover row {row} twice: some texts are missing or repeated")
                pieces[row] = row_states[row_mask.bool()].clone()
        count = len(pieces) if num_texts is None else num_texts
        if sorted(pieces) != list(range(count)):
            raise SeqpoolError(f"batches cover rows {len(pieces)} of {count}: some texts are missing or repeated")
        if count == 0:
            return cls(torch.zeros(0, 0), torch.zeros(1, dtype=torch.int64))
        ordered = [pieces[row] for row in range(count)]
        offsets = torch.zeros(count + 1, dtype=torch.int64)
        offsets[1:] = torch.tensor([len(p) for p in ordered]).cumsum(0)
        return cls(torch.cat(ordered), offsets)


def _check_batch(number: int, rows: Any, hidden: Any, mask: Any, width: int | None) -> int:
    """One (rows, hidden, mask) batch is (B,), (B, T, D) and (B, T), and D matches the batches
    before it; returns D. Mismatches are the caller's batches, so they are SeqpoolErrors."""
    if not isinstance(hidden, Tensor) or hidden.dim() != 3:
        raise SeqpoolError(f"batch {number}: hidden states must be a (batch, tokens, dim) tensor, got "
                           f"{tuple(hidden.shape) if isinstance(hidden, Tensor) else type(hidden).__name__}")
    if not isinstance(mask, Tensor) or tuple(mask.shape) != tuple(hidden.shape[:2]):
        raise SeqpoolError(f"batch {number}: the attention mask must be (batch, tokens) = {tuple(hidden.shape[:2])}, "
                           f"got {tuple(mask.shape) if isinstance(mask, Tensor) else type(mask).__name__}")
    if len(np.asarray(rows).reshape(-1)) != hidden.shape[0]:
        raise SeqpoolError(f"batch {number}: {len(np.asarray(rows).reshape(-1))} row indices for "
                           f"{hidden.shape[0]} rows of states")
    if width is not None and hidden.shape[2] != width:
        raise SeqpoolError(f"batch {number}: states of width {hidden.shape[2]}, but earlier batches have {width}; "
                           f"all batches must come from one encoder")
    return int(hidden.shape[2])
