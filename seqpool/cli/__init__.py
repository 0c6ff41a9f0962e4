"""The ``seqpool`` command line: a thin click group over the library.

Each command lives in its own module under ``seqpool/cli/``; this file holds the group,
the shared error handling (user errors become one line on stderr and exit code 1, never
a traceback) and the ``strategies`` command. Command modules are imported only when their
command runs, so ``seqpool --help`` and option errors never pay for torch.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import re
import warnings
from typing import Any, Iterator, Mapping

import click

from seqpool._version import __version__
from seqpool.errors import SeqpoolError


def command_flags(command: click.Command, aliases: Mapping[str, str] | None = None) -> dict[str, str]:
    """Python parameter -> the flag that sets it, read from ``command``'s own options, so a new
    option is mapped the day it is added and a removed one cannot linger.

    Each option's click name (``text_field``, ``json_path``) is the library parameter it sets,
    said as all its option strings (``-o/--output``, ``--json``). ``aliases`` adds the few library
    spellings that differ from every click name (``tune=False`` -> ``no_tune``, i.e. ``--no-tune``);
    an alias naming no option of ``command`` is a bug, and raises.
    """
    flags = {param.name: "/".join(param.opts) for param in command.params
             if isinstance(param, click.Option) and param.name}
    for spelling, name in (aliases or {}).items():
        if name not in flags:
            raise KeyError(f"alias {spelling!r} names {name!r}, which is no option of {command.name!r}")
        flags[spelling] = flags[name]
    return flags


def as_flags(error: SeqpoolError, flags: Mapping[str, str]) -> SeqpoolError:
    """``error`` with the Python parameters it names said as the command's flags (``flags``:
    parameter, or a spelling such as ``tune=False``, -> flag; see :func:`command_flags`), the one
    mapping every command uses.

    Mapped: `` `name` ``; ``name=...`` / ``name=True`` (the flag alone); ``name=value`` (the flag,
    a space, the value); a bare ``name`` where it cannot be an English word (it has an ``_``) or
    where the error lists it in :attr:`SeqpoolError.parameters` (see
    :func:`seqpool.evaluation.settings.parameter_error`). Names inside quotes or other
    identifiers are left alone.
    """
    listed = set(error.parameters)
    names = "|".join(re.escape(name) for name in sorted(flags, key=len, reverse=True))
    if not names:
        return error
    pattern = re.compile(rf"`(?P<tick>{names})`|(?<![\w'\"`/.-])(?P<name>{names})"
                         rf"(?P<rest>=(?:\.\.\.|True)(?![\w'\"])|=(?=\S)|(?![\w'\"`=-]))")

    def flag(match: re.Match[str]) -> str:
        if match.group("tick"):
            return flags[match.group("tick")]
        name, rest = match.group("name"), match.group("rest")
        if rest == "=":
            return flags[name] + " "
        if rest or "_" in name or "=" in name or name in listed:
            return flags[name]
        return match.group(0)

    return SeqpoolError(pattern.sub(flag, str(error)), parameters=error.parameters)


# command name -> (module, attribute, one-line help shown by ``seqpool --help``); the help
# is kept here so listing the commands imports nothing (tests check it matches the command)
LAZY_COMMANDS: dict[str, tuple[str, str, str]] = {
    "embed": ("seqpool.cli.embed", "embed",
              "Embed every text of INPUT (a file, or - for stdin) into one vector per row."),
    "evaluate": ("seqpool.cli.evaluate", "evaluate",
                 "Compare pooling strategies on a labelled corpus, with honest statistics."),
    "explain": ("seqpool.cli.explain", "explain",
                "Colour each word of TEXTS by its contribution to the classifier's score."),
    "export": ("seqpool.cli.export", "export",
               "Export the model with its pooling, head and normalisation inside the graph: inputs input_ids + "
               "attention_mask (+ token_type_ids), either padding side; output sentence_embedding (or logits "
               "with --classifier)."),
    "inspect": ("seqpool.cli.model", "inspect",
                "Describe MODEL (a folder or Hub id; default all-MiniLM-L6-v2): family, layers, the pooling "
                "and head it was trained with, normalisation, output width, max length, prompts, tokens, dtype."),
}


class SeqpoolGroup(click.Group):
    """A click group that turns user-caused errors into one-line messages.

    ``SEQPOOL_DEBUG=1`` re-raises them with their traceback, for bug reports. Commands in
    :data:`LAZY_COMMANDS` are imported on first use (as click's documented ``LazyGroup``).
    """

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*super().list_commands(ctx), *LAZY_COMMANDS})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        command = super().get_command(ctx, cmd_name)
        if command is None and cmd_name in LAZY_COMMANDS:
            module, attribute, _ = LAZY_COMMANDS[cmd_name]
            command = getattr(importlib.import_module(module), attribute)
            self.add_command(command, cmd_name)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """The command list from the stored one-line helps, without importing any command."""
        names = self.list_commands(ctx)
        limit = formatter.width - 6 - max(map(len, names), default=0)
        rows = [(name, self.commands[name].get_short_help_str(limit) if name in self.commands
                 else click.Command(name, help=LAZY_COMMANDS[name][2]).get_short_help_str(limit)) for name in names]
        if rows:
            with formatter.section("Commands"):
                formatter.write_dl(rows)

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with one_line_warnings():
                return super().invoke(ctx)
        except (SeqpoolError, OSError, UnicodeError) as error:
            if os.environ.get("SEQPOOL_DEBUG"):
                raise
            raise click.ClickException(one_line(error)) from None


@contextlib.contextmanager
def one_line_warnings() -> Iterator[None]:
    """seqpool's own warnings (:class:`~seqpool.errors.PoolingWarning`) as one ``warning:`` line on
    stderr, whatever ``--quiet`` says: they are about the result, not progress. Others as Python shows them."""
    from seqpool.errors import PoolingWarning

    shown = warnings.showwarning

    def show(message: Any, category: type, filename: str, lineno: int, file: Any = None, line: Any = None) -> None:
        if issubclass(category, PoolingWarning):
            click.echo(f"warning: {' '.join(str(message).split())}", err=True)
        else:
            shown(message, category, filename, lineno, file, line)

    with warnings.catch_warnings():  # restores the filters and showwarning after the command
        warnings.simplefilter("always", PoolingWarning)  # the Encoder says each one once per run already
        warnings.showwarning = show
        yield


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
    """List the pooling strategies: name, kind and description; plugins included."""
    import seqpool.registry as registry

    for problem in registry.load_plugins():  # a broken plugin is a warning here, never a crash
        click.echo(f"warning: {problem}", err=True)
    for spec in registry.list_strategies(warn=False):
        click.echo(f"{spec.name}\t{spec.kind}\t{spec.description}")

