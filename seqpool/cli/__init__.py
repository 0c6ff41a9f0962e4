"""The ``seqpool`` command line: a thin click group over the library.

Each command lives in its own module under ``seqpool/cli/``; this file holds the group,
the shared error handling (user errors become one line on stderr and exit code 1, never
a traceback) and the ``strategies`` command.
"""

from __future__ import annotations

import os
from typing import Any

import click

from seqpool import __version__
from seqpool.errors import SeqpoolError


class SeqpoolGroup(click.Group):
    """A click group that turns user-caused errors into one-line messages.

    ``SEQPOOL_DEBUG=1`` re-raises them with their traceback, for bug reports.
    """

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except (SeqpoolError, OSError, UnicodeError) as error:
            if os.environ.get("SEQPOOL_DEBUG"):
                raise
            raise click.ClickException(one_line(error)) from None


def one_line(error: BaseException) -> str:
    """A user-facing single-line description of ``error``."""
    if isinstance(error, OSError) and error.filename is not None and error.strerror:
        return f"{error.strerror}: {error.filename}"
    text = " ".join(str(error).split())
    return text or type(error).__name__


@click.group(cls=SeqpoolGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="seqpool")
def main() -> None:
    """seqpool: pool transformer hidden states into one vector per text,
    and compare pooling strategies with statistics."""


@main.command()
def strategies() -> None:
    """List the pooling strategies (parameter-free, then learned)."""
    from seqpool.layers import LEARNED_STRATEGIES
    from seqpool.pooling import STRATEGIES

    for name in STRATEGIES:
        click.echo(name)
    for name in LEARNED_STRATEGIES:
        click.echo(f"{name}\t(learned; seqpool evaluate trains it)")


# Sub-commands register themselves below, one import each.
from seqpool.cli.embed import embed as _embed; main.add_command(_embed)  # noqa: E402
from seqpool.cli.explain import explain as _explain; main.add_command(_explain)  # noqa: E402
from seqpool.cli.evaluate import evaluate as _evaluate; main.add_command(_evaluate)  # noqa: E402
