"""Regenerate the README's pictures (docs/img/*.png) from real data, never by hand.

- ``evaluate_mr.png``: what ``seqpool evaluate --plot`` draws for the default strategies on an
  MR subset (per-fold accuracies, mean and 95% CI per strategy, best first);
- ``token_map.png``: what ``seqpool explain --png`` draws for a mean-pooled classifier trained on
  the same subset (each word shaded by its exact contribution to the "positive" score).

The classifier is trained on the token states ``evaluate`` cached, so the corpus is encoded once.
Both files are written atomically by the library functions the commands use.

    .venv/bin/python benchmarks/make_figures.py          # ~20 min on 2 busy CPU cores (learned fits dominate)
    .venv/bin/python benchmarks/make_figures.py --texts 200 --folds 3 --out /tmp/figures   # a quick look

Data: ``shared/data/senteval`` beside the repository (or ``--data``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from seqpool.classifier import PooledClassifier
from seqpool.encoder import Encoder
from seqpool.evaluation import DEFAULT_STRATEGIES, cached_states, evaluate, load_labelled
from seqpool.explain import explain, write_png

REPOSITORY = Path(__file__).resolve().parents[1]
DATA = REPOSITORY.parent / "shared" / "data" / "senteval"
#: Short reviews in MR's style (lower-cased, punctuation split off) for the token map.
REVIEWS = [
    "a dull , lifeless film that never finds its footing .",
    "a moving , beautifully acted and often very funny film .",
    "the plot is predictable , but the performances are wonderful .",
]
#: README pictures are committed: keep each one small.
MAX_BYTES = 200_000


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=DATA, help="folder holding mr.jsonl")
    parser.add_argument("--out", type=Path, default=REPOSITORY / "docs" / "img", help="folder for the PNGs")
    parser.add_argument("--texts", type=int, default=2000, help="MR reviews to use (a seeded random subset)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--strategies", default=",".join(DEFAULT_STRATEGIES))
    parser.add_argument("--max-epochs", type=int, default=10, help="epochs for the learned strategies")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if not (args.data / "mr.jsonl").is_file():
        parser.error(f"{args.data / 'mr.jsonl'} not found; pass --data")
    if args.texts < 2 * args.folds:
        parser.error(f"--texts must be at least 2 x --folds ({2 * args.folds})")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.perf_counter()
    mr = load_labelled(args.data / "mr.jsonl")
    rows = np.sort(np.random.default_rng(args.seed).choice(len(mr), size=min(args.texts, len(mr)), replace=False))
    texts, labels = [mr.texts[i] for i in rows], mr.labels[rows]
    args.out.mkdir(parents=True, exist_ok=True)
    evaluation_png, token_map_png = args.out / "evaluate_mr.png", args.out / "token_map.png"

    encoder = Encoder()  # the packaged all-MiniLM-L6-v2
    with tempfile.TemporaryDirectory() as cache:
        result = evaluate((texts, labels), strategies=args.strategies, folds=args.folds, seed=args.seed,
                          encoder=encoder, cache_dir=cache, plot_path=evaluation_png,
                          learned_options={"max_epochs": args.max_epochs, "patience": 3})
        encoded = cached_states(encoder, texts, cache)  # the states evaluate stored: no second encode
    print(result.table())
    print(f"token states from the cache: {encoded.cache_hit}")

    classifier = PooledClassifier("mean", encoder.hidden_size, 2, labels=["negative", "positive"])
    classifier.fit(encoded.states, labels, seed=args.seed)
    write_png(explain(REVIEWS, classifier, encoder=encoder), token_map_png, label="positive")

    too_big = [path for path in (evaluation_png, token_map_png) if path.stat().st_size > MAX_BYTES]
    for path in (evaluation_png, token_map_png):
        print(f"wrote {path} ({path.stat().st_size / 1000:.0f} kB)")
    print(f"({time.perf_counter() - started:.0f} s; {len(texts)} MR reviews, {args.folds}-fold CV, seed {args.seed})")
    if too_big:
        print(f"larger than {MAX_BYTES // 1000} kB: {', '.join(map(str, too_big))}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
