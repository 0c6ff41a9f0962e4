"""``python -m seqpool.cli``: the ``seqpool`` command, for environments without the console script."""

from seqpool.cli import main

main()
