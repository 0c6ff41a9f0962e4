"""seqpool.checks: one rule and one message shape for every numeric option."""

from __future__ import annotations

import numpy as np
import pytest

from seqpool.checks import number, positive_int
from seqpool.errors import SeqpoolError


@pytest.mark.parametrize("value", [0, -3, True, False, 2.0, "4", None])
def test_a_count_refuses_what_python_would_let_through(value):
    with pytest.raises(SeqpoolError, match=rf"^`chunk_size` must be a whole number of at least 1, got {value!r}$"):
        positive_int(value, "chunk_size")


def test_a_count_is_an_int_and_may_be_optional():
    assert positive_int(np.int64(3), "workers") == 3 and type(positive_int(np.int64(3), "workers")) is int
    assert positive_int(None, "window", optional=True) is None
    with pytest.raises(SeqpoolError, match="^`window` must be a positive number of tokens, got 0$"):
        positive_int(0, "window", what="a positive number of tokens", optional=True)


@pytest.mark.parametrize("value", [0, -1, float("nan"), float("inf"), "5", True])
def test_an_amount_is_finite_and_within_its_bound(value):
    with pytest.raises(SeqpoolError, match="^`ray_timeout` must be a number of seconds > 0, got "):
        number(value, "ray_timeout", above=0, what="a number of seconds > 0")


def test_an_amount_keeps_an_inclusive_bound():
    assert number(0, "num_gpus", at_least=0, what="a number >= 0 per actor") == 0.0
    assert number(0.5, "num_cpus", at_least=0, what="a number >= 0 per actor") == 0.5
    with pytest.raises(SeqpoolError, match="`num_cpus` must be a number >= 0 per actor, got -1"):
        number(-1, "num_cpus", at_least=0, what="a number >= 0 per actor")
