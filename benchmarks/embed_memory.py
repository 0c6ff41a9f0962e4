"""Peak memory of ``seqpool embed`` on 100 k vs 1 M lines: it must stay flat (streaming).

Writes synthetic corpora of short lines, runs ``seqpool embed`` on each in a fresh
process and reads that process's peak resident set size (``ru_maxrss``). A flat peak
shows that neither the texts nor the vectors are held in memory; the 1.5 GB output of
the 1 M run goes to disk chunk by chunk.

Embedding 1 M lines with MiniLM takes a while on 2 cores, so the default setting is a
fast one: 3-6 word lines and ``--max-length 8``; pass ``--model`` / ``--max-length`` to
change it.

    .venv/bin/python benchmarks/embed_memory.py                    # 100 k and 1 M lines
    .venv/bin/python benchmarks/embed_memory.py --lines 10000 100000
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("the a film story good bad great slow funny long short quiet loud cold warm city river "
         "train night day music light dark old new small big red blue green read write run").split()

# Runs in a fresh interpreter so that ru_maxrss belongs to this one embed run only.
_MEASURE = """
import resource, subprocess, sys
code = subprocess.call(sys.argv[1:])
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(code)
"""


def write_corpus(path: Path, lines: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(lines):
            handle.write(" ".join(rng.choices(WORDS, k=rng.randint(3, 6))) + "\n")


def peak_rss_mb(command: list[str]) -> tuple[float, float]:
    """(peak RSS in MB, wall seconds) of ``command`` run in its own process tree."""
    start = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", _MEASURE, *command], capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stderr}")
    return int(result.stdout.strip().splitlines()[-1]) / 1024, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, nargs="+", default=[100_000, 1_000_000])
    parser.add_argument("--max-length", type=int, default=8)
    parser.add_argument("--model", default=None, help="model for seqpool embed [default: packaged MiniLM]")
    parser.add_argument("--workdir", type=Path, default=None, help="where corpora and outputs go [default: temp]")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(dir=args.workdir) as folder:
        rows = []
        for lines in args.lines:
            corpus, output = Path(folder) / f"lines{lines}.txt", Path(folder) / f"lines{lines}.npy"
            write_corpus(corpus, lines)
            command = [sys.executable, "-c", "from seqpool.cli import main; main()", "embed", str(corpus),
                       "-o", str(output), "--max-length", str(args.max_length), "--quiet"]
            if args.model:
                command += ["--model", args.model]
            peak, seconds = peak_rss_mb(command)
            rows.append({"lines": lines, "peak_rss_mb": round(peak), "seconds": round(seconds),
                         "texts_per_s": round(lines / seconds), "output_mb": round(output.stat().st_size / 2**20)})
            print(json.dumps(rows[-1]), flush=True)
            output.unlink()
            corpus.unlink()
    print("\n| lines | peak RSS | wall time | texts/s | output size |\n|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['lines']:,} | {row['peak_rss_mb']} MB | {row['seconds']} s | {row['texts_per_s']} | "
              f"{row['output_mb']} MB |")


if __name__ == "__main__":
    main()
