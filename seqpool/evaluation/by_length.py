"""Accuracy by text length: does one pooling win on long texts and another on short ones?

Rows are split into K quantile bins of their token count (the real tokens of the cached
states, so what the encoder saw after truncation). Lengths repeat, so a bin edge never splits
texts of equal length: with many ties there are fewer than K bins, and the bins say their
token ranges and sizes. Each bin is scored from the predictions the comparison already made
(no extra fits): per fold (CV) with the Nadeau-Bengio corrected interval and paired t-test, or
over test examples (train/test) with the bootstrap and McNemar, as the overall comparison;
Holm adjusts the comparisons within each bin.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

import seqpool.stats as stats
from seqpool.stats import clip_interval
from seqpool.evaluation.settings import ALPHA, derive_seed


def length_bins(lengths: np.ndarray, k: int) -> tuple[np.ndarray, list[dict[str, int]]]:
    """(bin index of every row, bins with ``min_tokens``/``max_tokens``/``examples``): K quantile
    bins of ``lengths``; equal lengths always share a bin, empty bins are dropped."""
    lengths = np.asarray(lengths, dtype=np.int64)
    cuts = np.unique(np.quantile(lengths, np.arange(1, k) / k, method="lower")) if len(lengths) else np.array([])
    raw = np.searchsorted(cuts, lengths, side="left")  # a row at a cut goes below it
    used = np.unique(raw)
    index = np.searchsorted(used, raw)
    bins = [{"bin": b, "min_tokens": int(lengths[index == b].min()), "max_tokens": int(lengths[index == b].max()),
             "examples": int(np.sum(index == b))} for b in range(len(used))]
    return index, bins


def by_length(names: Sequence[str], runs: dict[str, Any], lengths: np.ndarray, k: int, protocol: dict[str, Any],
              best: str, pairs: Callable[[str], list[tuple[str, str]]], seed: int,
              n_resamples: int) -> dict[str, Any]:
    """Per bin: every strategy's accuracy with its CI, and the paired comparisons ``pairs(best)``."""
    index, bins = length_bins(lengths, k)
    cv = protocol["mode"] == "cross-validation"
    chosen = pairs(best)
    strategies: dict[str, list[dict[str, Any]]] = {name: [] for name in names}
    comparisons: list[list[dict[str, Any]]] = []
    for b, info in enumerate(bins):
        if cv:
            per_run = {name: _fold_scores(runs[name], index, b) for name in names}
            sizes = [int(np.sum(index[rows] == b)) for rows in runs[names[0]].rows]
            n_test = float(np.mean(sizes))
            info["test_examples_per_fold"] = n_test
            for name in names:
                strategies[name].append(_cv_point(per_run[name], runs[name], index, b, protocol["n_train"], n_test))
            tests = [stats.corrected_paired_ttest(_paired(per_run[a], per_run[b_]), _paired(per_run[b_], per_run[a]),
                                                  protocol["n_train"], n_test) if _enough(per_run[a], per_run[b_])
                     else None for a, b_ in chosen]
        else:
            matrices = {name: _test_matrix(runs[name], index, b) for name in names}
            for name in names:
                boot = stats.bootstrap_mean(matrices[name] if matrices[name].shape[0] > 1 else matrices[name][0],
                                            n_resamples=n_resamples, seed=derive_seed(seed, "bootstrap", 1000 + b))
                strategies[name].append({"mean": boot.estimate, "ci95": clip_interval(boot.ci),
                                         "accuracy": float(matrices[name].mean()), "scores": []})
            tests = [_test_pair(matrices[a], matrices[b_], n_resamples, derive_seed(seed, "bootstrap", 1000 + b, i))
                     for i, (a, b_) in enumerate(chosen)]
        comparisons.append(_holm(chosen, tests))
    method = ("Nadeau-Bengio corrected t over the folds' examples in the bin; corrected paired t-test" if cv
              else "bootstrap over the bin's test examples; McNemar (one run) or paired bootstrap")
    return {"k": k, "bins": bins, "ci_method": method + "; Holm within each bin", "strategies": strategies,
            "comparisons": comparisons, "lengths": "real tokens per text (after truncation)"}


def _fold_scores(runs: Any, index: np.ndarray, b: int) -> list[float]:
    """Accuracy of every run on its test rows that fall in bin ``b`` (NaN where none do)."""
    scores = []
    for rows, correct in zip(runs.rows, runs.correct):
        inside = index[rows] == b
        scores.append(float(correct[inside].mean()) if inside.any() else float("nan"))
    return scores


def _cv_point(scores: list[float], runs: Any, index: np.ndarray, b: int, n_train: float,
              n_test: float) -> dict[str, Any]:
    finite = [s for s in scores if np.isfinite(s)]
    hits = sum(int(correct[index[rows] == b].sum()) for rows, correct in zip(runs.rows, runs.correct))
    total = sum(int(np.sum(index[rows] == b)) for rows in runs.rows)
    if len(finite) >= 2:
        summary = stats.corrected_ci(finite, n_train, n_test)
        mean, ci = summary.mean, clip_interval(summary.ci)
    else:
        mean, ci = (finite[0] if finite else float("nan")), (float("nan"), float("nan"))
    return {"mean": mean, "ci95": ci, "accuracy": hits / total if total else float("nan"), "scores": scores}


def _paired(a: list[float], b: list[float]) -> list[float]:
    return [x for x, y in zip(a, b) if np.isfinite(x) and np.isfinite(y)]


def _enough(a: list[float], b: list[float]) -> bool:
    return len(_paired(a, b)) >= 2


def _test_matrix(runs: Any, index: np.ndarray, b: int) -> np.ndarray:
    """(runs, examples in bin b) correctness on the fixed test set."""
    return np.vstack([correct[index[rows] == b] for rows, correct in zip(runs.rows, runs.correct)]).astype(np.float64)


def _test_pair(a: np.ndarray, b: np.ndarray, n_resamples: int, seed: int) -> stats.PairedTest:
    boot = stats.paired_bootstrap(a, b, n_resamples=n_resamples, seed=seed)
    if a.shape[0] == b.shape[0] == 1:
        exact = stats.mcnemar(a[0], b[0])
        return stats.PairedTest(exact.test, boot.diff, boot.ci, exact.p_value, exact.statistic)
    return boot


def _holm(chosen: list[tuple[str, str]], tests: list[stats.PairedTest | None]) -> list[dict[str, Any]]:
    done = [(pair, t) for pair, t in zip(chosen, tests) if t is not None]
    adjusted = stats.holm([t.p_value for _, t in done]) if done else []
    return [{"a": a, "b": b, "diff": t.diff, "ci95": t.ci, "p_value": t.p_value, "p_adjusted": float(p),
             "test": t.test, "significant": bool(p < ALPHA)} for ((a, b), t), p in zip(done, adjusted)]
