"""What the model runs for a list of texts, and how its states become vectors again.

The :class:`~seqpool.encoder.Encoder` tokenizes and runs the model; an :class:`EncodePlan`
decides which token sequences it runs -- each text (behind its prompt) truncated at the
model's limit and counted, or split into windows (:mod:`seqpool.long_texts`) -- and turns
the states of those sequences back into one vector per text, or per chunk. Pure: token ids
in, tensors in, no tokenizer and no model here.

Output rows (``chunk_output=True``): ``chunk`` mode gives one row per window, pooled as if
the window were a text of its own; ``late`` gives one row per chunk of ``window`` text tokens
(``stride`` apart, default ``window``: disjoint), pooled from token states computed with
the most context the model takes. :meth:`EncodePlan.chunk_table` says which text and which
characters each row covers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from seqpool.errors import SeqpoolError
from seqpool.long_texts import (
    LONG_TEXT_MODES,
    Span,
    char_spans,
    content_states,
    pool_spans,
    pool_windows,
    window_spans,
)

Batch = tuple[np.ndarray, Tensor, Tensor]


@dataclass
class TextPieces:
    """One text as the Encoder tokenized it: the prompt's tokens, the text's own tokens (no
    special tokens, not truncated) and, when chunk rows are wanted, their character spans."""

    prompt_ids: list[int]
    content_ids: list[int]
    offsets: list[tuple[int, int]] | None = None


@dataclass(frozen=True)
class LongTextOptions:
    """``mode``: truncate | chunk | late. ``window`` / ``stride`` in tokens: for ``chunk`` a
    window's tokens *including* the special tokens and the prompt (default: the model's
    max_length), for ``late`` a chunk's text tokens (default: the model's max_length less
    its special tokens). ``stride``: tokens between window starts (default: 3/4 of the
    window for chunk, the whole window for late)."""

    mode: str = "truncate"
    window: int | None = None
    stride: int | None = None
    chunk_output: bool = False

    def __post_init__(self) -> None:
        if self.mode not in LONG_TEXT_MODES:
            raise SeqpoolError(f"unknown long_texts {self.mode!r}; choose one of: {', '.join(LONG_TEXT_MODES)}")
        for name in ("window", "stride"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
                raise SeqpoolError(f"{name} must be a positive number of tokens, got {value!r}")
        if self.mode == "late" and self.window and self.stride and self.stride > self.window:
            raise SeqpoolError(f"stride {self.stride} exceeds the {self.window}-token chunks (it would skip tokens); "
                               f"pass at most {self.window}")
        if self.mode == "truncate" and (self.window is not None or self.stride is not None or self.chunk_output):
            raise SeqpoolError("window, stride and chunk output apply to long_texts='chunk' or 'late', "
                               "not 'truncate'; pass long_texts='chunk' or 'late'")


def window_sizes(options: LongTextOptions, max_length: int, n_special: int,
                 prompt_tokens: int = 0) -> tuple[int, int | None, int]:
    """``(text tokens per model window, their stride, text tokens per late chunk)``; checks that
    the options fit the model (callable as soon as the tokenizer is known, before any text)."""
    window = max_length if options.window is None or options.mode == "late" else options.window
    if window > max_length:
        raise SeqpoolError(f"window {window} exceeds the model's max_length {max_length}; pass at most {max_length}")
    size = window - n_special - prompt_tokens
    if size < 1:
        raise SeqpoolError(f"a window of {window} tokens leaves no room for text after {n_special} special tokens "
                           f"and a {prompt_tokens}-token prompt; pass a larger window or a shorter prompt")
    stride = options.stride if options.mode == "chunk" else None
    if stride is not None and stride > size:
        raise SeqpoolError(f"stride {stride} exceeds the window's {size} text tokens (it would skip tokens); "
                           f"pass at most {size}")
    chunk_size = options.window if options.window is not None else size
    if options.mode == "late" and options.stride is not None and options.stride > chunk_size:
        raise SeqpoolError(f"stride {options.stride} exceeds the {chunk_size}-token chunks (it would skip tokens); "
                           f"pass at most {chunk_size}")
    return size, stride, chunk_size


class EncodePlan:
    """The model inputs for ``texts`` and the rule that pools their states (see the module doc).

    ``exclude`` is how many tokens at the start of every input stay out of the pool
    (sentence-transformers' prompt length with ``include_prompt=False``, else 0).
    """

    def __init__(self, texts: Sequence[TextPieces], prefix: Sequence[int], suffix: Sequence[int],
                 max_length: int, options: LongTextOptions = LongTextOptions(), exclude: int = 0,
                 truncation_side: str = "right"):
        self.options = options
        self.num_texts = len(texts)
        self.n_suffix = len(suffix)
        self.exclude = exclude
        self.truncated = 0
        n_special = len(prefix) + len(suffix)
        prompt_tokens = max((len(t.prompt_ids) for t in texts), default=0)
        self.inputs: list[list[int]] = []
        self.owners: list[int] = []
        #: per text: its windows' input indices, spans and prefix width (chunk / late)
        self.windows: list[list[int]] = [[] for _ in texts]
        self.spans: list[list[Span]] = [[] for _ in texts]
        self.chunk_spans: list[list[Span]] = [[] for _ in texts]
        self.n_prefix: list[int] = [len(prefix) + len(t.prompt_ids) for t in texts]
        if options.mode == "truncate":
            room = max_length - n_special
            if room < 1:
                raise SeqpoolError(f"max_length {max_length} leaves no room for text after {n_special} special tokens")
            for index, text in enumerate(texts):
                joint = [*text.prompt_ids, *text.content_ids]
                if len(joint) > room:
                    self.truncated += 1
                    joint = joint[-room:] if truncation_side == "left" else joint[:room]
                self.inputs.append([*prefix, *joint, *suffix])
                self.owners.append(index)
            return
        size, stride, chunk_size = window_sizes(options, max_length, n_special, prompt_tokens)
        # longest texts first, each text's windows together: little padding, few texts in flight
        for index in sorted(range(len(texts)), key=lambda i: -len(texts[i].content_ids)):
            text = texts[index]
            spans = window_spans(len(text.content_ids), size, stride)
            self.spans[index] = spans
            for start, end in spans:
                self.windows[index].append(len(self.inputs))
                self.inputs.append([*prefix, *text.prompt_ids, *text.content_ids[start:end], *suffix])
                self.owners.append(index)
            if options.mode == "late":
                self.chunk_spans[index] = window_spans(len(text.content_ids), chunk_size, options.stride or chunk_size)
            else:
                self.chunk_spans[index] = spans
        counts = [len(s) for s in (self.chunk_spans if options.chunk_output else self.spans)]
        self.first_row = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._texts = texts

    @property
    def num_rows(self) -> int:
        """Output rows: one per text, or one per chunk with ``chunk_output``."""
        return int(self.first_row[-1]) if self.options.chunk_output else self.num_texts

    def batches(self, batch_size: int, token_budget: int) -> list[np.ndarray]:
        """Input indices per model batch: by length for truncation, in plan order for windows."""
        lengths = [len(ids) for ids in self.inputs]
        if self.options.mode == "truncate":
            from seqpool.encoder import pack_batches

            return pack_batches(lengths, batch_size, token_budget)
        batches: list[np.ndarray] = []
        start = 0
        while start < len(lengths):
            end, widest = start, 0
            while end < len(lengths) and end - start < batch_size:
                widest_next = max(widest, lengths[end], 1)
                if end > start and widest_next * (end - start + 1) > token_budget:
                    break
                widest, end = widest_next, end + 1
            batches.append(np.arange(start, end))
            start = end
        return batches

    def _pool(self, hidden: Tensor, mask: Tensor, strategies: Sequence[str]) -> dict[str, Tensor]:
        from seqpool.pooling import pool_many
        from seqpool.prompts import pool_excluding_prompt

        if self.exclude:
            return pool_excluding_prompt(hidden, mask, self.exclude, strategies)
        return pool_many(hidden, mask, strategies)

    def assemble(self, batches: Iterator[Batch], strategies: Sequence[str]) -> Iterator[tuple[np.ndarray, dict[str, Tensor]]]:
        """``(output rows, {strategy: (n, D) float32})`` as the texts (or chunks) complete.

        ``batches`` yields ``(input indices, hidden (B, T, D), mask (B, T))`` for every input of
        :meth:`batches`; a text's windows may span several batches.
        """
        owners = np.asarray(self.owners, dtype=np.int64)
        mode, chunk_output = self.options.mode, self.options.chunk_output
        pending: dict[int, dict[int, Tensor]] = {}
        for rows, hidden, mask in batches:
            rows = np.asarray(rows)
            if mode == "truncate":
                yield owners[rows], _float(self._pool(hidden, mask, strategies))
                continue
            if mode == "chunk" and chunk_output:  # every window is a row of its own
                yield self._window_rows(rows), _float(self._pool(hidden, mask, strategies))
                continue
            # a text in one window is the text itself: pool those straight from the batch
            single = np.array([len(self.windows[owners[r]]) == 1 and not chunk_output for r in rows], dtype=bool)
            if single.any():
                yield owners[rows[single]], _float(self._pool(hidden[single], mask[single], strategies))
            for k in np.flatnonzero(~single):
                text = int(owners[rows[k]])
                pending.setdefault(text, {})[int(rows[k])] = hidden[k, :int(mask[k].sum())]
                if len(pending[text]) == len(self.windows[text]):
                    received = pending.pop(text)
                    states = [received[i] for i in self.windows[text]]
                    yield self._finish(text, states, strategies)
        if pending:
            raise SeqpoolError(f"internal error: {len(pending)} texts did not receive all their windows")

    def _window_rows(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty(len(rows), dtype=np.int64)
        for k, row in enumerate(rows):
            text = self.owners[row]
            out[k] = self.first_row[text] + self.windows[text].index(int(row))
        return out

    def _finish(self, text: int, states: list[Tensor], strategies: Sequence[str]) -> tuple[np.ndarray, dict[str, Tensor]]:
        spans, n_prefix = self.spans[text], self.n_prefix[text]
        if self.options.mode == "late" and self.options.chunk_output:
            contextual = content_states(states, spans, n_prefix, self.n_suffix)
            chunks = self.chunk_spans[text]
            rows = np.arange(self.first_row[text], self.first_row[text] + len(chunks))
            return rows, _float(pool_spans(contextual, chunks, strategies))
        pooled = pool_windows(states, spans, n_prefix, self.n_suffix, strategies, exclude=self.exclude)
        return np.array([text]), {s: v.unsqueeze(0).float() for s, v in pooled.items()}

    def chunk_table(self) -> dict[str, np.ndarray]:
        """``doc``, ``chunk``, ``char_start``, ``char_end`` (int64) of every output row (chunk output)."""
        if not self.options.chunk_output:
            raise SeqpoolError("chunk_table needs chunk_output=True")
        doc, chunk, char_start, char_end = [], [], [], []
        for index, text in enumerate(self._texts):
            if text.offsets is None:
                raise SeqpoolError("chunk rows need character offsets: tokenize with offsets (a fast tokenizer)")
            for k, (start, end) in enumerate(char_spans(text.offsets, self.chunk_spans[index])):
                doc.append(index)
                chunk.append(k)
                char_start.append(start)
                char_end.append(end)
        return {name: np.asarray(values, dtype=np.int64) for name, values in
                (("doc", doc), ("chunk", chunk), ("char_start", char_start), ("char_end", char_end))}


def _float(vectors: dict[str, Tensor]) -> dict[str, Tensor]:
    return {strategy: v.float() for strategy, v in vectors.items()}
