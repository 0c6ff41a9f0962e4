"""Texts longer than the model takes: overlapping windows, and late chunking. Pure functions.

A text's *content* tokens (no special tokens) are split into windows of at most ``size``
tokens whose starts are ``stride`` apart (:func:`window_spans`); each window is encoded on
its own with the model's special tokens around it (:func:`window_inputs`). The windows'
token states then become one vector per text by one rule for every strategy
(:func:`pool_windows`), the **merged sequence** (:func:`merge_windows`)::

    for each window, in order: its prefix specials ([CLS], a prompt),
                               the content tokens no earlier window covered,
                               its suffix specials ([SEP], </s>)

where each content token's state is the average of its states in every window that covers
it. A strategy pools the merged sequence exactly as it pools one encoded text, so:

* ``mean`` / ``mean_sqrt_len``: every content token counts once (overlaps are averaged, not
  double counted); each window's own special tokens count as tokens. With non-overlapping
  windows this is the token-count-weighted mean of the window means.
* ``weighted_mean``: weights by position in the merged sequence.
* ``cls``: the first window's first token ([CLS] of the text's start).
* ``last``: the last window's last token.
* ``max``: the maximum over every token state of every window, overlaps included (max does
  not double count, so nothing is averaged first). Its record says so
  (``window_merge=EVERY_WINDOW_STATE`` in :mod:`seqpool.registry`); every other record keeps the
  default, the merged sequence.
* any other parameter-free strategy (registered, a plugin, or an expression such as ``cls+max``
  or ``mean@-2``): the merged sequence.

A text that fits one window gives exactly its one window's states: ``chunk`` equals
``truncate`` for every text under the limit.

Late chunking (Günther et al. 2024, "Late Chunking"): the text is encoded with the most
context the model takes (windows of the model's full length, merged as above), and each
chunk -- a span of content tokens -- is pooled from those contextual states
(:func:`pool_spans`); :func:`char_spans` maps chunk token spans back to characters.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import Tensor

from seqpool.errors import SeqpoolError
from seqpool.registry import EVERY_WINDOW_STATE, find_strategy

Span = tuple[int, int]


def pools_every_window_state(strategy: str) -> bool:
    """Whether ``strategy``'s record says to pool every window's raw states instead of the merged
    sequence (a name no record has -- a pooler's own key -- pools the merged sequence)."""
    spec = find_strategy(strategy)
    return spec is not None and spec.window_merge == EVERY_WINDOW_STATE


def special_tokens_around(with_special: Sequence[int], without_special: Sequence[int]) -> tuple[list[int], list[int]]:
    """The model's prefix and suffix special tokens, read off one text tokenized both ways.

    ``[CLS] a [SEP]`` vs ``a`` gives ``([CLS], [SEP])``; GPT-2 gives ``([], [])``.
    """
    with_special, without_special = list(with_special), list(without_special)
    width = len(without_special)
    for start in range(len(with_special) - width + 1):
        if with_special[start:start + width] == without_special:
            return with_special[:start], with_special[start + width:]
    raise SeqpoolError("cannot find the text's tokens between the special tokens; this tokenizer is not supported "
                       "for long texts")


def default_stride(size: int) -> int:
    """A quarter of each window overlaps the next: context on both sides of every boundary."""
    return max(1, size - size // 4)


def window_spans(num_tokens: int, size: int, stride: int | None = None) -> list[Span]:
    """``[start, end)`` spans of content tokens: ``size`` long, starts ``stride`` apart, ending at the text's end.

    Windows stop at the first one that reaches the end, so only the last window reaches the
    last token, and every token is covered. An empty text has one empty window.
    """
    if size < 1:
        raise SeqpoolError(f"a window must hold at least one text token, got {size}")
    stride = default_stride(size) if stride is None else stride
    if not 1 <= stride <= size:
        raise SeqpoolError(f"`stride` must be between 1 and the window's {size} text tokens (larger strides "
                           f"would skip tokens), got {stride}")
    spans: list[Span] = []
    start = 0
    while True:
        end = min(start + size, num_tokens)
        spans.append((start, end))
        if end >= num_tokens:
            return spans
        start += stride


def window_inputs(content_ids: Sequence[int], spans: Sequence[Span], prefix: Sequence[int],
                  suffix: Sequence[int]) -> list[list[int]]:
    """The token ids of each window: ``prefix + content[start:end] + suffix``."""
    return [[*prefix, *content_ids[start:end], *suffix] for start, end in spans]


def _check_windows(window_states: Sequence[Tensor], spans: Sequence[Span], n_prefix: int, n_suffix: int) -> None:
    if not window_states or len(window_states) != len(spans):
        raise SeqpoolError(f"got {len(window_states)} window states for {len(spans)} windows")
    for index, (states, (start, end)) in enumerate(zip(window_states, spans)):
        if states.dim() != 2 or states.shape[0] != n_prefix + end - start + n_suffix:
            raise SeqpoolError(f"window {index} has states of shape {tuple(states.shape)}; expected "
                               f"({n_prefix + end - start + n_suffix}, dim) for span {(start, end)}")


def content_states(window_states: Sequence[Tensor], spans: Sequence[Span], n_prefix: int, n_suffix: int) -> Tensor:
    """(num_content_tokens, D) float32: each content token's state averaged over the windows covering it."""
    _check_windows(window_states, spans, n_prefix, n_suffix)
    num_tokens = max(end for _, end in spans)
    dim = window_states[0].shape[-1]
    total = torch.zeros(num_tokens, dim, dtype=torch.float32, device=window_states[0].device)
    count = torch.zeros(num_tokens, 1, dtype=torch.float32, device=total.device)
    for states, (start, end) in zip(window_states, spans):
        total[start:end] += states[n_prefix:n_prefix + end - start].float()
        count[start:end] += 1
    if bool((count == 0).any()):
        raise SeqpoolError("the windows leave content tokens uncovered; spans must come from window_spans")
    return total / count


def merge_windows(window_states: Sequence[Tensor], spans: Sequence[Span], n_prefix: int, n_suffix: int) -> Tensor:
    """The merged sequence (see the module docstring) as float32 (L, D)."""
    content = content_states(window_states, spans, n_prefix, n_suffix)
    pieces: list[Tensor] = []
    covered = 0
    for states, (start, end) in zip(window_states, spans):
        states = states.float()
        pieces.append(states[:n_prefix])
        pieces.append(content[max(covered, start):end])
        pieces.append(states[n_prefix + end - start:])
        covered = max(covered, end)
    return torch.cat(pieces)


def names_pooler(strategies: Sequence[str]) -> Callable[[Tensor, Tensor, int], dict[str, Tensor]]:
    """A pooler ``pool(hidden, mask, exclude) -> {strategy: (B, D)}`` for registered strategy names."""
    from seqpool.prompts import pool_excluding_prompt

    def pool(hidden: Tensor, mask: Tensor, exclude: int = 0) -> dict[str, Tensor]:
        return pool_excluding_prompt(hidden, mask, exclude, strategies)

    return pool


def _pooler(pool: Any) -> Callable[[Tensor, Tensor, int], dict[str, Tensor]]:
    return pool if callable(pool) else names_pooler(list(pool))


def _pool_sequence(pool: Callable[..., dict[str, Tensor]], sequence: Tensor, exclude: int) -> dict[str, Tensor]:
    """Pool one (L, W) sequence; ``exclude`` masked rows in front keep the tokens' real positions."""
    padded = torch.cat([sequence.new_zeros(exclude, sequence.shape[-1]), sequence]).unsqueeze(0)
    return {name: vector[0] for name, vector in pool(padded, torch.ones(padded.shape[:2], dtype=torch.bool),
                                                     exclude).items()}


def pool_windows(window_states: Sequence[Tensor], spans: Sequence[Span], n_prefix: int, n_suffix: int,
                 pool: Any, exclude: int = 0) -> dict[str, Tensor]:
    """One (D,) float32 vector per strategy from the states of one text's windows (rules above).

    ``pool``: strategy names, or a pooler ``pool(hidden, mask, exclude)`` (the Encoder's, which
    knows layer blocks). ``exclude`` leaves each window's first ``exclude`` prefix tokens (the
    [CLS] and a prompt, sentence-transformers' ``include_prompt=False``) out of the pool;
    position-weighted strategies keep the positions they had, as
    :func:`seqpool.prompts.pool_excluding_prompt`.
    """
    if not 0 <= exclude <= n_prefix:
        raise SeqpoolError(f"exclude={exclude} must be between 0 and the windows' {n_prefix} prefix tokens")
    pool = _pooler(pool)
    window_states = [states[exclude:].float() for states in window_states]
    out = _pool_sequence(pool, merge_windows(window_states, spans, n_prefix - exclude, n_suffix), exclude)
    every_window = [name for name in out if pools_every_window_state(name)]
    if every_window and len(window_states) > 1:
        every_state = _pool_sequence(pool, torch.cat(window_states), exclude)
        out.update({name: every_state[name] for name in every_window})
    return out


def pool_spans(states: Tensor, spans: Sequence[Span], pool: Any) -> dict[str, Tensor]:
    """Late chunking: (num_spans, D) per strategy, pooling each ``[start, end)`` row span of ``states``.

    ``states`` are one text's contextual token states (e.g. :func:`content_states`); an empty
    span pools to zeros. Within a chunk ``cls`` is its first token and ``last`` its last.
    ``pool``: strategy names or a pooler, as :func:`pool_windows`.
    """
    if states.dim() != 2:
        raise SeqpoolError(f"states must be (tokens, dim), got shape {tuple(states.shape)}")
    for start, end in spans:
        if not 0 <= start <= end <= states.shape[0]:
            raise SeqpoolError(f"span {(start, end)} is outside the text's {states.shape[0]} tokens")
    width = max((end - start for start, end in spans), default=0)
    batch = states.new_zeros(len(spans), width, states.shape[-1])
    mask = torch.zeros(len(spans), width, dtype=torch.bool, device=states.device)
    for row, (start, end) in enumerate(spans):
        batch[row, :end - start] = states[start:end]
        mask[row, :end - start] = True
    return _pooler(pool)(batch, mask, 0)


def char_spans(offsets: Sequence[tuple[int, int]], token_spans: Sequence[Span]) -> list[Span]:
    """Character ``[start, end)`` of each token span, from the content tokens' offsets.

    An empty token span maps to ``(0, 0)`` (an empty text has one empty chunk).
    """
    out: list[Span] = []
    for start, end in token_spans:
        if end <= start:
            out.append((0, 0))
            continue
        out.append((int(offsets[start][0]), int(offsets[end - 1][1])))
    return out

