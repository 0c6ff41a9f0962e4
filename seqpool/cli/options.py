"""Option values the commands share, parsed from the strings click hands over.

Both ``seqpool embed`` and ``seqpool evaluate`` take ``--layer``; its one parser lives here, so
the two commands read the same spellings and refuse a bad one in the same words. Parsing never
imports torch: a bad value fails before anything heavy loads.
"""

from __future__ import annotations

from seqpool.errors import SeqpoolError


def parse_layers(value: str) -> int | tuple[int, ...]:
    """``-1`` (last layer), ``6``, or ``-4,-3,-2,-1`` (the average of those layers)."""
    try:
        layers = tuple(int(part) for part in value.split(","))
    except ValueError:
        raise SeqpoolError(f"--layer takes an integer or comma-separated integers (e.g. -1 or -4,-3,-2,-1), "
                           f"got {value!r}") from None
    return layers[0] if len(layers) == 1 else layers

