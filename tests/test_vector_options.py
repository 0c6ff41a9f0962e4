"""VectorOptions: the one options record for prompts, long texts and compact vectors, checked on construction."""

from __future__ import annotations

from pathlib import Path

import pytest

from seqpool.errors import SeqpoolError
from seqpool.vector_options import VectorOptions


def test_on_off_and_path_fields_are_normalised():
    with pytest.raises(SeqpoolError, match="`chunk_output` must be True, False or None, got 'no'"):
        VectorOptions(long_texts="late", chunk_output="no")
    assert VectorOptions(chunk_output=None).chunk_output is False
    assert VectorOptions(precision="int8", calibration=Path("c.txt")).calibration == "c.txt"


def test_the_encoding_part_and_the_changed_fields():
    options = VectorOptions(prompt="q: ", long_texts="late", window=8, chunk_output=True, precision="uint8",
                            calibration="c.txt")
    assert options.encoding() == VectorOptions(prompt="q: ", long_texts="late", window=8, chunk_output=True)
    assert options.changed() == {"prompt": "q: ", "long_texts": "late", "window": 8, "chunk_output": True,
                                 "precision": "uint8", "calibration": "c.txt"}
    assert VectorOptions().changed() == {}


@pytest.mark.parametrize("field", ["window", "stride"])
@pytest.mark.parametrize("value", [0, 2.5, True])
def test_window_and_stride_are_positive_token_counts(field, value):
    with pytest.raises(SeqpoolError, match=f"`{field}` must be a positive number of tokens, got {value!r}"):
        VectorOptions(long_texts="chunk", **{field: value})
