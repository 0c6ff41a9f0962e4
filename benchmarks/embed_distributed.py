"""The Ray engine against the local engine on the same corpus, in one run.

Writes the same N lines (default 20 000 SentEval sentences, MR + TREC, repeated to fill) to
a text file, then times, each as its own process, exactly as a user runs them:

* ``seqpool embed corpus.txt -o local.npy`` (the local engine: one process, every core)
* ``seqpool embed corpus.txt --engine ray --workers W -o out_W/`` for each W (default 1
  and 2): a local Ray instance, W actors of one CPU each, one model per actor

and prints wall seconds, texts/s and the ratio to the local engine, both as run and without
the fixed cost of starting and stopping Ray (timed separately), plus max |difference| of
the Ray vectors to the local ones (row-exact: <= 1e-6). With ``--rounds R`` every engine
runs R times, interleaved (local, ray 1, ray 2, local, ...), and the medians are reported:
on a shared VM one run's wall time moves by 10 % or more. With ``--marginal-lines M`` every
engine also embeds the first M lines (M > N), and the report adds each engine's marginal rate,
(M - N) / (wall at M - wall at N), and fixed cost, wall at N - N / marginal rate: what a run
costs however small (processes, imports, models, Ray), apart from what every further text costs.

    .venv/bin/python benchmarks/embed_distributed.py
    .venv/bin/python benchmarks/embed_distributed.py --lines 5000 --workers 1 2 --rounds 3
    .venv/bin/python benchmarks/embed_distributed.py --workers 2 --marginal-lines 40000 --rounds 2
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "senteval"
CLI = [sys.executable, "-c", "from seqpool.cli import main; main()"]


def write_corpus(path: Path, lines: int) -> None:
    texts = []
    for name in ("mr.jsonl", "trec.train.jsonl", "trec.test.jsonl"):
        with open(DATA / name, encoding="utf-8") as handle:
            texts.extend(" ".join(json.loads(line)["text"].split()) for line in handle)
    if not texts:
        raise SystemExit(f"no SentEval texts under {DATA}")
    corpus = [texts[i % len(texts)] for i in range(lines)]
    path.write_text("\n".join(corpus) + "\n", encoding="utf-8")


def timed(command: list[str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command[3:])} failed:\n{result.stderr}")
    return elapsed


def cpu_flags() -> str:
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return "?"
    return " ".join(sorted(f for f in flags if f == "avx2" or f.startswith(("avx512", "amx")))) or "none"


def report(name: str, elapsed: float, local: float, lines: int, difference: float | None,
           net: float | None = None) -> None:
    net = elapsed if net is None else net
    print(f"{name:<22}{elapsed:>8.1f}{lines / elapsed:>9.0f}{local / elapsed:>7.2f}{lines / net:>10.0f}"
          f"{local / net:>8.2f}  {'' if difference is None else f'{difference:.1e}'}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--lines", type=int, default=20_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=1, help="runs of each engine, interleaved; medians")
    parser.add_argument("--marginal-lines", type=int, default=None,
                        help="also embed this many lines (more than --lines): marginal rate and fixed cost")
    args = parser.parse_args()
    if args.marginal_lines is not None and args.marginal_lines <= args.lines:
        parser.error("--marginal-lines must be more than --lines")
    sizes = [args.lines] + ([args.marginal_lines] if args.marginal_lines else [])

    from seqpool.distributed import load_folder

    with tempfile.TemporaryDirectory(prefix="seqpool-bench-") as tmp:
        folder = Path(tmp)
        for lines in sizes:
            write_corpus(folder / f"corpus_{lines}.txt", lines)
        print(f"{args.lines} lines; {os.cpu_count()} CPUs ({cpu_flags()}); load average at start "
              f"{os.getloadavg()[0]:.2f}", flush=True)
        ray_start = timed([sys.executable, "-c", "import ray; ray.init(include_dashboard=False, "
                                                 "logging_level=40, log_to_driver=False); ray.shutdown()"])
        print(f"starting + stopping Ray alone: {ray_start:.1f} s\n", flush=True)
        engines = [0, *args.workers]  # 0: the local engine
        walls: dict[tuple[int, int], list[float]] = {(w, lines): [] for lines in sizes for w in engines}
        for round_ in range(args.rounds):
            for workers, lines in walls:
                out = folder / (f"ray_{workers}_{lines}" if workers else f"local_{lines}.npy")
                engine = ["--engine", "ray", "--workers", str(workers)] if workers else []
                if out.is_dir():
                    shutil.rmtree(out)
                out.unlink(missing_ok=True)
                walls[workers, lines].append(timed([*CLI, "embed", str(folder / f"corpus_{lines}.txt"), *engine,
                                                    "-o", str(out), "-q"]))
            if args.rounds > 1:
                print(f"round {round_ + 1}: " + ", ".join(f"{_name(w)} {lines} lines {wall[-1]:.1f} s"
                                                         for (w, lines), wall in walls.items()), flush=True)
        wall = {key: statistics.median(values) for key, values in walls.items()}
        local = wall[0, args.lines]
        reference = np.load(folder / f"local_{args.lines}.npy")
        print(f"\n{'engine':<22}{'wall s':>8}{'texts/s':>9}{'ratio':>7}{'texts/s*':>10}{'ratio*':>8}  max|diff|")
        report(_name(0), local, local, args.lines, None)
        for workers in args.workers:
            elapsed = wall[workers, args.lines]
            difference = float(np.abs(load_folder(folder / f"ray_{workers}_{args.lines}") - reference).max())
            report(_name(workers), elapsed, local, args.lines, difference, net=max(elapsed - ray_start, 1e-9))
        print("\n* without the fixed cost of starting and stopping Ray")
        if args.marginal_lines:
            added = args.marginal_lines - args.lines
            rate = {w: added / max(wall[w, args.marginal_lines] - wall[w, args.lines], 1e-9) for w in engines}
            print(f"\n{'engine':<22}{f'wall s @{args.marginal_lines}':>14}{'marginal texts/s':>18}{'ratio':>7}"
                  f"{'fixed s':>9}")
            for w in engines:
                print(f"{_name(w):<22}{wall[w, args.marginal_lines]:>14.1f}{rate[w]:>18.0f}{rate[w] / rate[0]:>7.2f}"
                      f"{wall[w, args.lines] - args.lines / rate[w]:>9.1f}")
        print(f"\nload average at end {os.getloadavg()[0]:.2f}")


def _name(workers: int) -> str:
    return f"ray, {workers} actor{'s' * (workers > 1)}" if workers else "local (one process)"


if __name__ == "__main__":
    main()
