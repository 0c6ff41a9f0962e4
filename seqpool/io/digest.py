"""The one text digest: proves a resume sees the same rows, keys the evaluation cache, and
fingerprints a data set in evaluation results.

sha256 over length-prefixed UTF-8 texts (so ``["ab", "c"]`` and ``["a", "bc"]`` differ),
then, if given, the labels as little-endian int64. Reproducible with any sha256 tool.
"""

from __future__ import annotations

import hashlib
from typing import Iterable, Sequence

import numpy as np


class TextDigest:
    """A running digest of texts consumed in order; ``update`` may be called chunk by chunk."""

    def __init__(self) -> None:
        self._hash = hashlib.sha256()

    def update(self, texts: Iterable[str]) -> "TextDigest":
        for text in texts:
            data = text.encode("utf-8", "surrogatepass")
            self._hash.update(len(data).to_bytes(8, "little"))
            self._hash.update(data)
        return self

    def update_labels(self, labels: Sequence[int]) -> "TextDigest":
        self._hash.update(np.asarray(labels, dtype="<i8").tobytes())
        return self

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


def text_digest(texts: Iterable[str], labels: Sequence[int] | None = None) -> str:
    """sha256 of ``texts`` (length-prefixed, so boundaries count) and optionally integer labels."""
    digest = TextDigest().update(texts)
    if labels is not None:
        digest.update_labels(labels)
    return digest.hexdigest()
