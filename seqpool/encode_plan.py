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
characters each row covers. Without chunk rows, ``late`` gives each text the vector pooled from
those same full-context states (the same as ``chunk`` with windows of the model's full length).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import numpy as np
import torch
from torch import Tensor

from seqpool.batching import DEFAULT_BATCH_SIZE, DEFAULT_TOKEN_BUDGET, check_flag, check_texts, pack_batches, positive
from seqpool.errors import PoolingWarning, SeqpoolError
from seqpool.long_texts import (
    Span,
    char_spans,
    content_states,
    pool_spans,
    pool_windows,
    window_spans,
)
from seqpool.vector_options import LongTextOptions, window_sizes

Batch = tuple[np.ndarray, Tensor, Tensor]
#: ``{strategy: float32 (rows, width)}``, or a chunk table's int64 columns
Vectors = dict[str, np.ndarray]
#: ``pool(hidden (B, T, W), mask (B, T), exclude) -> {strategy: (B, D')}``; ``exclude`` leading
#: tokens of every row stay out of the pool (the prompt, with include_prompt=False).
Pooler = Callable[[Tensor, Tensor, int], dict[str, Tensor]]


@dataclass(frozen=True)
class EncodeStats:
    """What one ``Encoder.encode`` call did (``return_stats=True``): texts, texts cut at ``max_length``,
    model inputs run, and which texts (their indices) were cut: an engine that spreads one call's
    rows over several outputs counts each output's own."""

    texts: int
    truncated: int
    inputs: int
    truncated_rows: tuple[int, ...] = ()


class EncodeResult(NamedTuple):
    """What :func:`encode_texts` gives: the vectors, the chunk table (chunk output only) and the stats."""

    vectors: Vectors
    chunks: Vectors | None
    stats: EncodeStats


@dataclass
class TextPieces:
    """One text as the Encoder tokenized it: the prompt's tokens, the text's own tokens (no
    special tokens, not truncated) and, when chunk rows are wanted, their character spans."""

    prompt_ids: list[int]
    content_ids: list[int]
    offsets: list[tuple[int, int]] | None = None


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
        self.truncated_rows: list[int] = []
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
                    self.truncated_rows.append(index)
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

    @property
    def truncated(self) -> int:
        """How many texts were cut at ``max_length``."""
        return len(self.truncated_rows)

    def batches(self, batch_size: int, token_budget: int) -> list[np.ndarray]:
        """Input indices per model batch: by length for truncation, in plan order for windows."""
        lengths = [len(ids) for ids in self.inputs]
        if self.options.mode == "truncate":
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

    def _pool(self, hidden: Tensor, mask: Tensor, pool: Pooler) -> dict[str, Tensor]:
        return pool(hidden, mask, self.exclude)

    def assemble(self, batches: Iterator[Batch], pool: Pooler) -> Iterator[tuple[np.ndarray, dict[str, Tensor], int]]:
        """``(output rows, {strategy: (n, D) float32}, texts completed)`` as texts (or chunks) complete.

        ``batches`` yields ``(input indices, hidden (B, T, W), mask (B, T))`` for every input of
        :meth:`batches`; a text's windows may span several batches. ``pool(hidden, mask, exclude)``
        pools every strategy (:func:`strategy_pooler`).
        """
        owners = np.asarray(self.owners, dtype=np.int64)
        mode, chunk_output = self.options.mode, self.options.chunk_output
        pending: dict[int, dict[int, Tensor]] = {}
        for rows, hidden, mask in batches:
            rows = np.asarray(rows)
            if mode == "truncate":
                yield owners[rows], _float(self._pool(hidden, mask, pool)), len(rows)
                continue
            if mode == "chunk" and chunk_output:  # every window is a row of its own
                last = sum(int(r) == self.windows[owners[r]][-1] for r in rows)  # batches come in plan order
                yield self._window_rows(rows), _float(self._pool(hidden, mask, pool)), last
                continue
            # a text in one window is the text itself: pool those straight from the batch
            single = np.array([len(self.windows[owners[r]]) == 1 and not chunk_output for r in rows], dtype=bool)
            if single.any():
                yield owners[rows[single]], _float(self._pool(hidden[single], mask[single], pool)), int(single.sum())
            for k in np.flatnonzero(~single):
                text = int(owners[rows[k]])
                pending.setdefault(text, {})[int(rows[k])] = hidden[k, :int(mask[k].sum())]
                if len(pending[text]) == len(self.windows[text]):
                    received = pending.pop(text)
                    states = [received[i] for i in self.windows[text]]
                    yield (*self._finish(text, states, pool), 1)
        if pending:
            raise SeqpoolError(f"internal error: {len(pending)} texts did not receive all their windows")

    def _window_rows(self, rows: np.ndarray) -> np.ndarray:
        out = np.empty(len(rows), dtype=np.int64)
        for k, row in enumerate(rows):
            text = self.owners[row]
            out[k] = self.first_row[text] + self.windows[text].index(int(row))
        return out

    def _finish(self, text: int, states: list[Tensor], pool: Pooler) -> tuple[np.ndarray, dict[str, Tensor]]:
        spans, n_prefix = self.spans[text], self.n_prefix[text]
        if self.options.mode == "late" and self.options.chunk_output:
            contextual = content_states(states, spans, n_prefix, self.n_suffix)
            chunks = self.chunk_spans[text]
            rows = np.arange(self.first_row[text], self.first_row[text] + len(chunks))
            return rows, _float(pool_spans(contextual, chunks, pool))
        pooled = pool_windows(states, spans, n_prefix, self.n_suffix, pool, self.exclude)
        return np.array([text]), {strategy: vector.unsqueeze(0).float() for strategy, vector in pooled.items()}

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


def strategy_pooler(layers: Any) -> Pooler:
    """The :data:`Pooler` of an Encoder's :class:`~seqpool.layer_plan.LayerPlan`: every parameter-free
    strategy, each term from its layer block; the prompt left out as :func:`pool_excluding_prompt`."""
    from seqpool.prompts import pool_excluding_prompt

    def pool(hidden: Tensor, mask: Tensor, exclude: int = 0) -> dict[str, Tensor]:
        if not exclude:
            return layers.pool(hidden, mask)
        out: dict[str, Tensor] = {}
        for strategy in (s for s in layers.strategies if not layers.is_learned(s)):
            parts = [pool_excluding_prompt(layers.block(hidden, index), mask, exclude, [name])[name]
                     for name, index in layers.terms[strategy]]
            out[strategy] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        return out

    return pool


def encode_texts(encoder: Any, texts: Sequence[str], strategies: Sequence[str] | str | None, batch_size: int | None,
                 normalize: bool | None, progress: Any, prompt: str | None, prompt_name: str | None,
                 include_prompt: bool | None, options: LongTextOptions,
                 truncate_dim: int | None) -> EncodeResult:
    """The body of ``Encoder.encode`` / ``encode_chunks``: plan the inputs, run them through the
    encoder (every layer block of the strategies from one pass), assemble rows, apply the model's
    head where it fits (:meth:`Encoder.uses_head`), truncate (Matryoshka) and normalise -- the
    order sentence-transformers applies them in -- and count what was done (:class:`EncodeStats`).
    A strategy other than the model's trained pooling gives one :class:`~seqpool.errors.PoolingWarning`."""
    from seqpool.pooling import check_strategy
    from seqpool.progress import progress_bar
    from seqpool.prompts import resolve_prompt
    from seqpool.quantize import check_truncate_dim

    if strategies is None:
        strategies = (encoder.default_strategy,)
    elif isinstance(strategies, str):
        strategies = (strategies,)
    layers = encoder.layer_plan(tuple(dict.fromkeys(check_strategy(s) for s in strategies)))
    heads = {s: encoder.uses_head(s, layers.output_dim(s)) for s in layers.strategies}
    widths = {s: encoder.head.out_features if heads[s] else layers.output_dim(s) for s in layers.strategies}
    for message in encoder.departures(layers.strategies):
        warnings.warn(message, PoolingWarning, stacklevel=4)
    for width in widths.values():
        check_truncate_dim(truncate_dim, width)
    normalize = check_flag(normalize, "normalize")  # 'no' is truthy: only True, False or None
    normalize = encoder.default_normalize if normalize is None else normalize
    texts = check_texts(texts)
    prompt = resolve_prompt(prompt, prompt_name, encoder.prompts, encoder.default_prompt_name)
    include = encoder.include_prompt if include_prompt is None else check_flag(include_prompt, "include_prompt")
    prefix, suffix = encoder.special_tokens
    plan = EncodePlan(encoder.text_pieces(texts, prompt, offsets=options.chunk_output), prefix, suffix,
                      encoder.max_length, options, encoder.prompt_length(prompt) if prompt and not include else 0,
                      getattr(encoder.tokenizer, "truncation_side", "right"))
    batches = plan.batches(positive(batch_size, DEFAULT_BATCH_SIZE, "batch_size"), DEFAULT_TOKEN_BUDGET)
    out = {s: np.zeros((plan.num_rows, truncate_dim or widths[s]), dtype=np.float32) for s in layers.strategies}
    states = encoder.run_inputs(plan.inputs, batches, layers.blocks)
    with progress_bar(len(texts), progress) as bar:
        for rows, vectors, done in plan.assemble(states, strategy_pooler(layers)):
            for strategy, rows_vectors in vectors.items():
                rows_vectors = encoder.head(rows_vectors) if heads[strategy] else rows_vectors
                rows_vectors = rows_vectors[:, :truncate_dim] if truncate_dim else rows_vectors
                if normalize:
                    rows_vectors = torch.nn.functional.normalize(rows_vectors, dim=-1)
                out[strategy][rows] = rows_vectors.numpy()
            bar.update(done)
    stats = EncodeStats(len(texts), plan.truncated, len(plan.inputs), tuple(plan.truncated_rows))
    return EncodeResult(out, plan.chunk_table() if options.chunk_output else None, stats)
