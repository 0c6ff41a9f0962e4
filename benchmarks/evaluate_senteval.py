"""Benchmark ``seqpool evaluate`` on SentEval MR (10-fold CV) and TREC (train/test files).

Prints each result table and the cost of the protocol against a plain encoding of the
same corpus (what ``seqpool embed`` does): everything except the classifier fits must
cost at most 1.2x that encoding, and a second run must reuse the cached token states.
It also prints the fits' cost as a multiple of the encoder pass timed in the same run
(issue 11's targets: all fits <= 2x, parameter-free fits <= 0.5x).
The plain and the caching encodes are timed alternately, so load from other processes
on a shared machine falls on both alike.

    .venv/bin/python benchmarks/evaluate_senteval.py                # MR and TREC, default model
    .venv/bin/python benchmarks/evaluate_senteval.py --only trec --threads 1 --json-dir /tmp/results
    .venv/bin/python benchmarks/evaluate_senteval.py --cost-only --threads 1   # the cost bound alone

Data: MR and TREC through ``seqpool.evaluation.load_benchmark``: the SentEval files in ``--data``
(else ``$SEQPOOL_DATA``, else ``shared/data/senteval`` beside the repository), otherwise the
Hugging Face Hub by name; each table's header and the printed source say which was used.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

from seqpool.encoder import Encoder
from seqpool.errors import SeqpoolError
from seqpool.evaluation import LabelledTexts, cached_states, evaluate, limited_threads, load_benchmark
from seqpool.evaluation.settings import check_strategies
from seqpool.pooling import STRATEGIES

def timed(function, *args, **kwargs) -> float:
    start = time.perf_counter()
    function(*args, **kwargs)
    return time.perf_counter() - start


def interleaved_encode_costs(encoder: Encoder, sides: list[list[str]], rounds: int, cache_root: Path,
                             strategies: str | None) -> tuple[list[float], list[float], Path]:
    """Wall times of a plain embedding pass (what ``seqpool embed`` does: encode + mean pool)
    and of evaluate's encode-and-cache step (every layer the strategies name, as evaluate caches
    them), alternated so machine load hits both alike."""
    texts = [text for side in sides for text in side]
    blocks = encoder.layer_plan(check_strategies(strategies)).blocks
    plain, cached = [], []
    for round_ in range(rounds):
        plain.append(timed(encoder.encode, texts, strategies=("mean",)))
        directory = cache_root / f"round{round_}"
        cached.append(sum(timed(cached_states, encoder, side, directory, blocks=blocks) for side in sides))
    return plain, cached, directory


def run(name: str, train: LabelledTexts, test: LabelledTexts | None, encoder: Encoder,
        args: argparse.Namespace) -> None:
    print(f"{name}: {' and '.join(side.source for side in (train, test) if side is not None)}", file=sys.stderr)
    sides = [train.texts] + ([test.texts] if test else [])
    encoder.encode(sides[0][:256])  # warm-up, so neither side pays first-call costs
    strategies = ",".join(STRATEGIES) if args.cost_only else args.strategies
    with tempfile.TemporaryDirectory(prefix="seqpool-bench-cache-") as cache:
        plain, cached, directory = interleaved_encode_costs(encoder, sides, args.rounds, Path(cache), strategies)
        start = time.perf_counter()
        result = evaluate(train, test, strategies, folds=args.folds, repeats=args.repeats, seed=args.seed,
                          encoder=encoder, cache_dir=directory, tune=not args.cost_only,
                          log=lambda m: print(f"  {m}", file=sys.stderr))
        wall = time.perf_counter() - start
    t = result.timings
    rest = wall - t["fit_seconds"] - t["learning_curve_seconds"] - t["cache_load_seconds"]
    first_run = statistics.median(cached) + rest
    print(f"\n=== {name} ===\n")
    print(result.table())
    print(f"plain encode of the same {sum(map(len, sides))} texts (encode + mean pooling, as seqpool embed), "
          f"{args.rounds} runs: {', '.join(f'{x:.1f}' for x in plain)} s")
    print(f"evaluate's encode-and-cache step (fp16 safetensors), interleaved with those: "
          f"{', '.join(f'{x:.1f}' for x in cached)} s")
    print(f"evaluate on the cached states: cache load {t['cache_load_seconds']:.1f} s, pool {t['pool_seconds']:.2f} s "
          f"({sum(not r.learned for r in result.strategies.values())} parameter-free strategies), fits "
          f"{t['fit_seconds']:.1f} s (parameter-free {t['fit_seconds_parameter_free']:.1f} s, learned "
          f"{t['fit_seconds_learned']:.1f} s), data loading {t['load_data_seconds']:.1f} s, wall {wall:.1f} s")
    print(f"first run without the fits = encode-and-cache {statistics.median(cached):.1f} s + load/pool/stats "
          f"{rest:.1f} s = {first_run:.1f} s = {first_run / statistics.median(plain):.2f} x the plain encode "
          f"(medians; bound 1.20)")
    encode = statistics.median(cached)
    print(f"fits against the encoder pass (issue 11 targets: all fits <= 2x, parameter-free <= 0.5x): all "
          f"{t['fit_seconds'] / encode:.2f}x, parameter-free {t['fit_seconds_parameter_free'] / encode:.2f}x, "
          f"learned {t['fit_seconds_learned'] / encode:.2f}x of the {encode:.1f} s encode-and-cache")
    print(f"second run: cache hit {result.protocol['cache_hit']}, encode 0 s, cache load "
          f"{t['cache_load_seconds']:.1f} s")
    if args.json_dir:
        path = Path(args.json_dir) / f"{name.lower()}.json"
        result.to_json(path)
        print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, help="folder of the SentEval files (mr.jsonl, trec.train.jsonl, "
                        "trec.test.jsonl) [default: $SEQPOOL_DATA, shared/data/senteval beside the repository, "
                        "else the Hugging Face Hub]")
    parser.add_argument("--only", choices=("mr", "trec"))
    parser.add_argument("--model", help="default: the packaged all-MiniLM-L6-v2")
    parser.add_argument("--strategies", help="default: every parameter-free strategy plus attention and se_mean")
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--rounds", type=int, default=2, help="interleaved plain/cached encodes to time")
    parser.add_argument("--cost-only", action="store_true",
                        help="only the parameter-free strategies without tuning: times the protocol, not the fits")
    parser.add_argument("--threads", type=int, help="cap torch/BLAS threads for both sides of the comparison")
    parser.add_argument("--json-dir", type=Path)
    args = parser.parse_args()
    try:
        mr = load_benchmark("mr", data_dir=args.data) if args.only in (None, "mr") else None
        trec = [load_benchmark("trec", split, data_dir=args.data) for split in ("train", "test")
                if args.only in (None, "trec")]
    except SeqpoolError as error:
        sys.exit(f"error: {error}")
    with limited_threads(args.threads):
        encoder = Encoder(args.model)
        if mr is not None:
            run("MR", mr, None, encoder, args)
        if trec:
            run("TREC", trec[0], trec[1], encoder, args)


if __name__ == "__main__":
    main()
