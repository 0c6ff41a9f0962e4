"""Texts into model batches: checking the texts, and grouping them by length under a token budget.

Pure (numpy and the standard library): the encoder and its input plans (:mod:`seqpool.encode_plan`)
both batch through here, so neither imports the other for it.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from seqpool.errors import SeqpoolError

#: Longest texts first, at most this many texts per batch ...
DEFAULT_BATCH_SIZE = 256
#: ... and at most this many (padded) tokens per batch. Small enough that a layer's
#: activations stay in CPU cache: on a 2-core CPU, MiniLM ran ~1.6x faster with 1-2k
#: tokens per batch than with 16k (benchmarks/embed_throughput.py).
DEFAULT_TOKEN_BUDGET = 2048


def pack_batches(lengths: Sequence[int], batch_size: int, token_budget: int,
                 min_tokens: int | None = None) -> list[np.ndarray]:
    """Group text indices, longest first, so each batch's padded size stays under the budget.

    A batch holds at most ``batch_size`` texts and at most ``token_budget`` padded tokens
    (texts x longest text); a single text longer than the budget still gets its own batch.
    A batch also ends where the token length drops, once it holds ``min_tokens`` tokens
    (default: an eighth of the budget): then most batches have no padding at all, and
    the model runs them without an attention mask.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    min_tokens = max(1, token_budget // 8) if min_tokens is None else min_tokens
    order = np.argsort(-lengths, kind="stable")
    sorted_lengths = lengths[order]
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        longest = max(int(sorted_lengths[start]), 1)
        size = max(1, min(batch_size, token_budget // longest))
        same_length = int(np.searchsorted(-sorted_lengths[start:start + size], -sorted_lengths[start], "right"))
        if same_length < size and same_length * longest >= min_tokens:
            size = same_length
        batches.append(order[start:start + size])
        start += size
    return batches


def check_texts(texts: Sequence[str]) -> list[str]:
    """``texts`` as a list of valid Unicode strings, or a :class:`SeqpoolError` naming the
    first bad item.

    Checked once at every entry that hands texts to the tokenizer, so a user mistake (a
    single string, a ``None``, a lone surrogate from a JSON escape such as ``"\\ud800"``)
    is one clear line instead of a tokenizer traceback deep inside a batch.
    """
    if isinstance(texts, str):
        raise SeqpoolError("texts must be a list of strings, not a single string; wrap it: [text]")
    if isinstance(texts, (bytes, bytearray, memoryview)):  # list(b"ab") would be numbers, not texts
        raise SeqpoolError(f"texts must be a list of strings, got {type(texts).__name__}; decode the bytes first "
                           f"(data.decode('utf-8')) and wrap a single text in a list: [text]")
    try:
        texts = list(texts)
    except TypeError:
        raise SeqpoolError(f"texts must be a list of strings, got {type(texts).__name__}") from None
    for index, text in enumerate(texts):
        if isinstance(text, (bytes, bytearray)):
            raise SeqpoolError(f"texts[{index}] is {type(text).__name__}, not str; decode the texts first "
                               f"(text.decode('utf-8'))")
        if not isinstance(text, str):
            raise SeqpoolError(f"texts[{index}] is {type(text).__name__}, not str")
        if not text.isascii():
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as error:
                code = ord(text[error.start])
                raise SeqpoolError(f"texts[{index}] holds a lone surrogate U+{code:04X} at character {error.start}, "
                                   f"which is not valid Unicode; fix or drop that text (decoding with "
                                   f"errors='replace' turns it into U+FFFD)") from None
    return texts


def check_flag(value: Any, name: str) -> bool | None:
    """``value`` if it is True, False or None (a numpy bool counts); anything else is a
    :class:`SeqpoolError` naming ``name`` -- ``normalize='no'`` must not switch normalising on
    because a non-empty string is truthy."""
    if value is None or isinstance(value, (bool, np.bool_)):
        return None if value is None else bool(value)
    raise SeqpoolError(f"`{name}` must be True, False or None, got {value!r}")


def positive(value: int | None, default: int, name: str) -> int:
    """``value`` as an int >= 1 (``default`` when None), or a SeqpoolError naming ``name``."""
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise SeqpoolError(f"{name} must be a whole number, got {value!r}")
    if int(value) < 1:
        raise SeqpoolError(f"{name} must be at least 1, got {value}")
    return int(value)
