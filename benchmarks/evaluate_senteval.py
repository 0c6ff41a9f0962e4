"""Benchmark ``seqpool evaluate`` on SentEval MR (10-fold CV) and TREC (train/test files).

Prints each result table and the cost of the protocol against a plain encoding of the
same corpus (what ``seqpool embed`` does): the issue asks that everything except the
classifier fits costs at most 1.2x that encoding, and that a second run reuses the
cached token states.

    .venv/bin/python benchmarks/evaluate_senteval.py                # MR and TREC, default model
    .venv/bin/python benchmarks/evaluate_senteval.py --only trec --threads 1 --json-dir /tmp/results

Data: ``shared/data/senteval`` beside the repository (or ``--data``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from seqpool.encoder import Encoder
from seqpool.evaluate import evaluate, limited_threads, load_labelled

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "senteval"


def plain_encode_seconds(encoder: Encoder, texts: list[str]) -> float:
    """Wall time of one embedding pass (the work ``seqpool embed`` does), mean pooling."""
    start = time.perf_counter()
    encoder.encode(texts, strategies=("mean",))
    return time.perf_counter() - start


def run(name: str, train: Path, test: Path | None, encoder: Encoder, args: argparse.Namespace) -> None:
    texts = load_labelled(train).texts + (load_labelled(test).texts if test else [])
    encoder.encode(texts[:256])  # warm-up, so neither side pays first-call costs
    plain = plain_encode_seconds(encoder, texts)
    with tempfile.TemporaryDirectory(prefix="seqpool-bench-cache-") as cache:
        start = time.perf_counter()
        result = evaluate(train, test, args.strategies, folds=args.folds, repeats=args.repeats, seed=args.seed,
                          encoder=encoder, cache_dir=cache, log=lambda m: print(f"  {m}", file=sys.stderr))
        first_wall = time.perf_counter() - start
        start = time.perf_counter()
        again = evaluate(train, test, "mean", folds=args.folds, seed=args.seed, encoder=encoder, cache_dir=cache,
                         tune=False)
        second_wall = time.perf_counter() - start
    t = result.timings
    fits = t["fit_seconds"] + t["learning_curve_seconds"]
    overhead = first_wall - fits
    print(f"\n=== {name} ===\n")
    print(result.table())
    print(f"plain encode of the same {len(texts)} texts (mean pooling, as seqpool embed): {plain:.1f} s")
    print(f"evaluate: encode+cache {t['encode_seconds']:.1f} s, pool {t['pool_seconds']:.2f} s "
          f"(all {sum(not r.learned for r in result.strategies.values())} parameter-free strategies), "
          f"fits {t['fit_seconds']:.1f} s (parameter-free {t['fit_seconds_parameter_free']:.1f} s, "
          f"learned {t['fit_seconds_learned']:.1f} s), data loading {t['load_data_seconds']:.1f} s, "
          f"wall {first_wall:.1f} s")
    print(f"cost without the fits: {overhead:.1f} s = {overhead / plain:.2f} x the plain encode (bound: 1.20)")
    print(f"second run on the same data: cache hit {again.protocol['cache_hit']}, cache load "
          f"{again.timings['cache_load_seconds']:.1f} s, encode {again.timings['encode_seconds']:.1f} s, "
          f"wall {second_wall:.1f} s (mean only, no tuning)")
    if args.json_dir:
        path = Path(args.json_dir) / f"{name.lower()}.json"
        result.to_json(path)
        print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA)
    parser.add_argument("--only", choices=("mr", "trec"))
    parser.add_argument("--model", help="default: the packaged all-MiniLM-L6-v2")
    parser.add_argument("--strategies", help="default: every parameter-free strategy plus attention and se_mean")
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, help="cap torch/BLAS threads for both sides of the comparison")
    parser.add_argument("--json-dir", type=Path)
    args = parser.parse_args()
    if not (args.data / "mr.jsonl").is_file():
        sys.exit(f"SentEval data not found in {args.data}; pass --data")
    with limited_threads(args.threads):
        encoder = Encoder(args.model)
        if args.only in (None, "mr"):
            run("MR", args.data / "mr.jsonl", None, encoder, args)
        if args.only in (None, "trec"):
            run("TREC", args.data / "trec.train.jsonl", args.data / "trec.test.jsonl", encoder, args)


if __name__ == "__main__":
    main()
