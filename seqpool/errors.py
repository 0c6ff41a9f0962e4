"""The one exception type users can cause, so callers (and the CLI) can tell it from bugs."""

from __future__ import annotations

from typing import Iterable


class SeqpoolError(ValueError):
    """A problem with the user's input or arguments; the message says what to do.

    The CLI prints it as a single line on stderr and exits non-zero; library users
    can catch it (it is a ``ValueError``) without catching genuine bugs.

    ``parameters`` names the Python parameters the message is about (``folds``, or a spelling
    such as ``tune=False``), so a front end can say them its own way: the CLI says ``--folds``
    even where the name is an ordinary word it would otherwise leave alone.
    """

    parameters: tuple[str, ...]

    def __init__(self, message: object = "", *, parameters: Iterable[str] = ()) -> None:
        super().__init__(message)
        self.parameters = tuple(parameters)


class PoolingWarning(UserWarning):
    """A pooling choice that departs from how the model was trained: the run goes on, but its
    vectors are not the model's own. The CLI prints it as one ``warning:`` line, even with
    ``--quiet`` (it is not progress)."""
