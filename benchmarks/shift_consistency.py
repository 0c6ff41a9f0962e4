"""Shift consistency of naive vs anti-aliased token downsampling (stride 2 and 4).

Shifts each text by 1..stride-1 tokens, downsamples, re-aligns and reports how much the
pooled sequence changed (seqpool.local.shift_consistency): mean cosine (1 = unchanged),
relative L2 (0 = unchanged) and the fraction of unchanged linear-probe predictions.

Signals: random synthetic sequences whose energy sits half in low and half in high
frequencies (the high half is what aliases), white noise, and all-MiniLM-L6-v2 token states
of MR sentences with a sentiment probe fitted on their mean-pooled embeddings.

    .venv/bin/python benchmarks/shift_consistency.py            # ~1 min on 2 CPU cores
    .venv/bin/python benchmarks/shift_consistency.py --sentences 0   # synthetic only
"""

from __future__ import annotations

import argparse
import json
import math
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

from seqpool.local import (
    avg_pool_tokens,
    blur_pool_tokens,
    default_filter_size,
    max_blur_pool_tokens,
    max_pool_tokens,
    shift_consistency,
)
from seqpool.pooling import masked_mean

MR_PATH = Path(__file__).resolve().parents[2] / "shared" / "data" / "senteval" / "mr.jsonl"


def poolers(stride: int) -> dict[str, object]:
    """The naive strided poolers and their anti-aliased replacements at one stride."""
    methods = {
        f"naive avg (k={stride})": partial(avg_pool_tokens, kernel_size=stride, stride=stride),
        f"naive max (k={stride})": partial(max_pool_tokens, kernel_size=stride, stride=stride),
        f"blur (filter {default_filter_size(stride)})": partial(blur_pool_tokens, stride=stride),
        f"max-blur (k={stride}, filter {default_filter_size(stride)})": partial(max_blur_pool_tokens, stride=stride),
    }
    if default_filter_size(stride) != 3:
        methods["blur (filter 3, too narrow)"] = partial(blur_pool_tokens, stride=stride, filter_size=3)
    return methods


def mixed_frequency_signals(batch: int, tokens: int, dim: int, seed: int) -> torch.Tensor:
    """Per channel: random cosines below pi/8 (content) plus as much power above pi/2 (aliases)."""
    generator = torch.Generator().manual_seed(seed)
    t = torch.arange(tokens, dtype=torch.float64).view(1, -1, 1, 1)

    def band(low: float, high: float) -> torch.Tensor:
        freq = low + (high - low) * torch.rand(batch, 1, dim, 3, generator=generator, dtype=torch.float64)
        phase = 2 * math.pi * torch.rand(batch, 1, dim, 3, generator=generator, dtype=torch.float64)
        return torch.cos(freq * t + phase).sum(-1)

    return (band(0.0, math.pi / 8) + band(math.pi / 2, math.pi)).float()


def random_probe(dim: int, classes: int, seed: int) -> torch.nn.Linear:
    generator = torch.Generator().manual_seed(seed)
    probe = torch.nn.Linear(dim, classes)
    with torch.no_grad():
        probe.weight.copy_(torch.randn(classes, dim, generator=generator))
        probe.bias.zero_()
    return probe


def minilm_states(sentences: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.nn.Linear] | None:
    """Token states of MR sentences and a sentiment probe fitted on their mean-pooled vectors."""
    from sklearn.linear_model import LogisticRegression

    from seqpool.encoder import Encoder

    if sentences <= 0 or not MR_PATH.exists():
        return None
    with MR_PATH.open(encoding="utf-8") as lines:  # not splitlines(): texts may hold U+2028
        rows = [json.loads(line) for line in lines if line.strip()]
    chosen = np.random.default_rng(seed).choice(len(rows), size=min(sentences, len(rows)), replace=False)
    texts, labels = [rows[i]["text"] for i in chosen], np.array([rows[i]["label"] for i in chosen])
    hidden, mask = Encoder().token_states(texts).padded()
    classifier = LogisticRegression(max_iter=2000).fit(masked_mean(hidden, mask).numpy(), labels)
    probe = torch.nn.Linear(hidden.shape[-1], len(classifier.classes_))
    with torch.no_grad():  # binary logistic regression: logits (0, w.x + b)
        weight = torch.as_tensor(classifier.coef_, dtype=torch.float32)
        bias = torch.as_tensor(classifier.intercept_, dtype=torch.float32)
        probe.weight.copy_(torch.cat([torch.zeros_like(weight), weight]) if len(weight) == 1 else weight)
        probe.bias.copy_(torch.cat([torch.zeros_like(bias), bias]) if len(bias) == 1 else bias)
    return hidden, mask, probe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sentences", type=int, default=200, help="MR sentences for the MiniLM rows (0 = skip)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.manual_seed(args.seed)
    started = time.perf_counter()

    signals = {
        "mixed low+high freq": (mixed_frequency_signals(64, 128, 32, args.seed), None, random_probe(32, 8, args.seed)),
        "white noise": (torch.randn(64, 128, 32, generator=torch.Generator().manual_seed(args.seed)), None,
                        random_probe(32, 8, args.seed)),
    }
    minilm = minilm_states(args.sentences, args.seed)
    if minilm is not None:
        signals[f"MiniLM, {args.sentences} MR sentences"] = minilm

    print("| signal | stride | method | cosine | relative L2 | probe agreement |")
    print("|---|---|---|---|---|---|")
    for name, (hidden, mask, probe) in signals.items():
        for stride in (2, 4):
            for method, pool_fn in poolers(stride).items():
                result = shift_consistency(pool_fn, hidden, mask, stride=stride, probe=probe)
                print(f"| {name} | {stride} | {method} | {result.cosine:.3f} | {result.relative_l2:.3f} "
                      f"| {100 * result.agreement:.1f}% |")
    print(f"\n({time.perf_counter() - started:.0f} s; shifts 1..stride-1; seed {args.seed})")


if __name__ == "__main__":
    main()
