"""Peak memory of ``seqpool embed`` on 100 k vs 1 M lines: it must stay flat (streaming).

Writes synthetic corpora of short lines, runs ``seqpool embed`` on each in a child
process and reads that process's peak resident set size (``ru_maxrss`` via ``wait4``),
plus its RSS sampled along the run. A flat peak shows that neither the texts nor the
vectors are held in memory; the 1.5 GB output of the 1 M run goes to disk chunk by chunk.

Embedding 1 M lines with MiniLM takes a while on 2 cores, so the default setting is a
fast one: 3-6 word lines and ``--max-length 8``; pass ``--model`` / ``--max-length`` to
change it.

    .venv/bin/python benchmarks/embed_memory.py                    # 100 k and 1 M lines
    .venv/bin/python benchmarks/embed_memory.py --lines 10000 100000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WORDS = ("the a film story good bad great slow funny long short quiet loud cold warm city river "
         "train night day music light dark old new small big red blue green read write run").split()


def write_corpus(path: Path, lines: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as handle:
        for _ in range(lines):
            handle.write(" ".join(rng.choices(WORDS, k=rng.randint(3, 6))) + "\n")


def current_rss_mb(pid: int) -> float | None:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    return int(fields["VmRSS"].split()[0]) / 1024 if "VmRSS" in fields else None


def run_measured(command: list[str], log: Path) -> tuple[float, float, list[float]]:
    """(peak RSS in MB, wall seconds, RSS sampled every second) of one child process.

    ``os.wait4`` reports the peak of exactly this child; the samples show whether memory
    plateaus or keeps growing along the run.
    """
    start = time.perf_counter()
    with open(log, "w") as stderr:
        child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
        samples: list[float] = []
        while True:
            pid, status, usage = os.wait4(child.pid, os.WNOHANG)
            if pid:
                break
            rss = current_rss_mb(child.pid)
            if rss is not None:
                samples.append(rss)
            time.sleep(1.0)
    child.returncode = os.waitstatus_to_exitcode(status)
    if child.returncode:
        raise SystemExit(f"{' '.join(command)} failed:\n{log.read_text()}")
    return usage.ru_maxrss / 1024, time.perf_counter() - start, samples


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
            peak, seconds, samples = run_measured(command, Path(folder) / "stderr.log")
            quarters = [round(samples[min(len(samples) - 1, len(samples) * q // 4)]) for q in (1, 2, 3, 4)] \
                if samples else []
            rows.append({"lines": lines, "peak_rss_mb": round(peak), "rss_mb_at_quarters": quarters,
                         "seconds": round(seconds), "texts_per_s": round(lines / seconds),
                         "output_mb": round(output.stat().st_size / 2**20)})
            print(json.dumps(rows[-1]), flush=True)
            output.unlink()
            corpus.unlink()
    print("\n| lines | peak RSS | RSS at 1/4, 1/2, 3/4, end of the run | wall time | texts/s | output size |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        quarters = ", ".join(f"{mb}" for mb in row["rss_mb_at_quarters"])
        print(f"| {row['lines']:,} | {row['peak_rss_mb']} MB | {quarters} MB | {row['seconds']} s | "
              f"{row['texts_per_s']} | {row['output_mb']} MB |")


if __name__ == "__main__":
    main()
