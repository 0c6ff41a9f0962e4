"""The click group itself: help, version, strategies, and one-line errors."""

from click.testing import CliRunner

import seqpool
from seqpool.cli import main


def test_help_lists_commands():
    result = CliRunner().invoke(main, ["--help"])
    assert result.exit_code == 0
    assert "strategies" in result.output


def test_version_matches_package():
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert seqpool.__version__ in result.output


def test_strategies_lists_every_strategy():
    result = CliRunner().invoke(main, ["strategies"])
    assert result.exit_code == 0
    listed = [line.split("\t")[0] for line in result.output.splitlines()]
    assert listed == list(seqpool.STRATEGIES) + list(seqpool.LEARNED_STRATEGIES)
