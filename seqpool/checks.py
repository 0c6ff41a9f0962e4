"""Checks of numeric options: one rule and one message shape for every count and amount.

A count (``chunk_size``, ``workers``, ``window``) refuses what Python would let through: a bool
(``True`` is an int to Python), a float or a string where a whole number is meant, zero. An
amount (``num_cpus``, ``ray_timeout``) refuses a bool, NaN and infinity. Either way the error is
one line naming the Python parameter in backticks, which the CLI shows as its flag.
"""

from __future__ import annotations

import math
from numbers import Integral, Real
from typing import Any

from seqpool.errors import SeqpoolError

#: What a count must be, as the default message says it.
WHOLE_NUMBER = "a whole number of at least 1"


def positive_int(value: Any, name: str, *, what: str = WHOLE_NUMBER, optional: bool = False) -> int | None:
    """``value`` as an int >= 1 (``None`` stays ``None`` when ``optional``), or one
    :class:`SeqpoolError`: ``\\`name\\` must be {what}, got {value!r}``."""
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, Integral) or value < 1:
        raise SeqpoolError(f"`{name}` must be {what}, got {value!r}")
    return int(value)


def number(value: Any, name: str, *, at_least: float | None = None, above: float | None = None,
           what: str) -> float:
    """``value`` as a finite float ``>= at_least`` and ``> above`` (each bound when given), or one
    :class:`SeqpoolError`: ``\\`name\\` must be {what}, got {value!r}``."""
    if isinstance(value, bool) or not isinstance(value, Real) or not math.isfinite(value) \
            or (at_least is not None and value < at_least) or (above is not None and value <= above):
        raise SeqpoolError(f"`{name}` must be {what}, got {value!r}")
    return float(value)
