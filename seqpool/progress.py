"""The one progress-bar factory: tqdm on stderr counting texts, so every bar looks alike."""

from __future__ import annotations

import contextlib
import sys
from typing import Any


def progress_bar(total: int | None = None, enabled: Any = None, *, initial: int = 0, unit: str = "text") -> Any:
    """A context manager giving a tqdm bar on stderr with texts/s.

    ``enabled``: ``True``/``False``, or ``None`` for "only when stderr is a terminal". A bar
    passed in (anything with ``update``) is advanced instead, so one bar can span many calls,
    e.g. a whole corpus encoded chunk by chunk. ``total=None`` (a stream) shows a count only.
    """
    if hasattr(enabled, "update"):
        return contextlib.nullcontext(enabled)
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit=unit, unit_scale=True, file=sys.stderr,
                disable=None if enabled is None else not enabled, dynamic_ncols=True, smoothing=0.05)
