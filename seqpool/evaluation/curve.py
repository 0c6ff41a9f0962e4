"""Learning curves: accuracy per strategy on balanced subsamples of n training examples per class.

The plan (which rows train, which test) is made and checked before anything is encoded, so a
size that cannot be drawn fails at once, not after the long part.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

import seqpool.stats as stats
from seqpool.errors import SeqpoolError
from seqpool.evaluation.data import LabelledTexts
from seqpool.evaluation.protocol import Corpus, Jobs, fit_all
from seqpool.evaluation.result import clip_interval
from seqpool.evaluation.settings import EvaluationSettings, derive_seed, parameter_error
from seqpool.evaluation.workers import FitWorkers

Log = Callable[[str], None]


def learning_curve_samples(labels: np.ndarray, rows: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """``per_class`` rows of every class drawn without replacement (MTEB-style balanced sample)."""
    rng = np.random.default_rng(seed)
    picked = []
    for label in np.unique(labels[rows]):
        pool = rows[labels[rows] == label]
        if len(pool) < per_class:
            raise SeqpoolError(f"learning_curve size {per_class} needs {per_class} examples of every class, "
                               f"but class index {label} has only {len(pool)} available for training")
        picked.append(rng.choice(pool, per_class, replace=False))
    return np.sort(np.concatenate(picked))


def curve_holdout(labels: np.ndarray, folds: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A stratified 1/folds holdout of a single file, so curve points share one test set."""
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(labels))
    pool, held = train_test_split(rows, test_size=1 / folds, stratify=labels, random_state=derive_seed(seed, "holdout"))
    return np.sort(pool), np.sort(held)


def plan_curve(train: LabelledTexts, test: LabelledTexts | None, sizes: Sequence[int], folds: int,
               seed: int) -> tuple[np.ndarray, np.ndarray, str] | None:
    """(training pool rows, test rows, description) of the learning curve; checks every size fits."""
    if not sizes:
        return None
    if test is None:
        pool_rows, test_rows = curve_holdout(train.labels, folds, seed)
        description = f"stratified holdout of 1/{folds} of {train.source}"
    else:
        pool_rows, test_rows, description = np.arange(len(train)), np.arange(len(test)), test.source
    counts = np.bincount(train.labels[pool_rows], minlength=len(train.label_names))
    smallest = int(np.argmin(counts))
    if counts[smallest] < max(sizes):
        raise parameter_error(f"learning_curve size {max(sizes)} needs {max(sizes)} training examples per class, "
                              f"but class {train.label_names[smallest]!r} has {counts[smallest]} available"
                              + (" outside the curve's test holdout" if test is None else ""), "learning_curve")
    return pool_rows, test_rows, description


def run_learning_curve(strategies: Sequence[str], workers: FitWorkers, train: Corpus, pool_rows: np.ndarray,
                       test: Corpus, test_rows: np.ndarray, settings: EvaluationSettings, log: Log) -> dict[str, Any]:
    """Accuracy +- CI per strategy and per examples-per-class, over balanced subsamples.

    The CI resamples experiments and test examples (both are random), like seeds x examples.
    """
    s = settings
    jobs: Jobs = {}
    for per_class in s.learning_curve:
        samples = [learning_curve_samples(train.labels, pool_rows, per_class,
                                          derive_seed(s.seed, "curve", per_class, e))
                   for e in range(s.curve_experiments)]
        for name in strategies:
            jobs[per_class, name] = (name, train, test, [(rows, test_rows, derive_seed(s.seed, "curve", per_class, e))
                                                          for e, rows in enumerate(samples)])
    fitted, _ = fit_all(workers, jobs)
    curve: dict[str, list[dict[str, Any]]] = {name: [] for name in strategies}
    for per_class in s.learning_curve:
        for name in strategies:
            runs = fitted[per_class, name]
            boot = stats.bootstrap_mean(runs.correct_matrix(), n_resamples=s.n_resamples,
                                        seed=derive_seed(s.seed, "bootstrap", per_class))
            curve[name].append({"n_per_class": per_class, "mean": boot.estimate, "ci95": clip_interval(boot.ci),
                                "scores": runs.accuracy, "macro_f1": runs.macro_f1})
        log(f"learning curve n={per_class}: " + ", ".join(f"{n} {curve[n][-1]['mean']:.3f}" for n in strategies))
    return {"sizes": list(s.learning_curve), "experiments": s.curve_experiments, "test_examples": int(len(test_rows)),
            "ci_method": "bootstrap over experiments and test examples", "strategies": curve}
