"""The one exception type users can cause, so callers (and the CLI) can tell it from bugs."""

from __future__ import annotations


class SeqpoolError(ValueError):
    """A problem with the user's input or arguments; the message says what to do.

    The CLI prints it as a single line on stderr and exits non-zero; library users
    can catch it (it is a ``ValueError``) without catching genuine bugs.
    """


class PoolingWarning(UserWarning):
    """A pooling choice that departs from how the model was trained: the run goes on, but its
    vectors are not the model's own. The CLI prints it as one ``warning:`` line, even with
    ``--quiet`` (it is not progress)."""
