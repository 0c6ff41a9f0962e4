"""The resampling protocols (scikit-learn's ``model_selection`` is the model): repeated
stratified k-fold on one file, or train/test, with the same splits for every strategy.

1. **Parameter-free strategies**: standardised pooled vectors -> a logistic regression (scikit-learn's
   ``LogisticRegression`` objective; a strategy's fits, every fold, inner fold and C, solved at once
   by the batched L-BFGS of :mod:`.logistic`), C chosen by an inner stratified CV on the training
   part only, refit, scored on the held-out part.
2. **Learned strategies** (every strategy the registry marks ``learned``): :class:`PooledClassifier`
   on the frozen token states of the training part, with a seed derived from ``(seed, repeat, fold)``.
3. **Statistics** from :mod:`seqpool.stats`: Nadeau-Bengio corrected CIs and paired t-tests for
   CV, McNemar / paired bootstrap for a fixed test split, Holm across comparisons. The best
   strategy is picked on the same scores it is then compared with; the simulation in
   ``tests/test_stats.py`` checks that this keeps the family-wise error near 5 %.

Like ``cross_validate(..., cv=)``, each protocol takes its :class:`EvaluationSettings` as an
argument; the :class:`~seqpool.evaluation.workers.FitWorkers` only run the fits.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np

import seqpool.stats as stats
from seqpool.evaluation.classifiers import Task, inner_folds_used
from seqpool.evaluation.fitting import Corpus, Runs, is_learned
from seqpool.evaluation.result import Comparison, StrategyResult, clip_interval
from seqpool.evaluation.settings import ALPHA, EvaluationSettings, derive_seed
from seqpool.evaluation.workers import FitWorkers

Log = Callable[[str], None]
Splits = list[list[tuple[np.ndarray, np.ndarray]]]


def cv_splits(labels: np.ndarray, folds: int, repeats: int, seed: int) -> Splits:
    """``splits[repeat][fold] = (train_rows, test_rows)``: stratified, reshuffled per repeat."""
    from sklearn.model_selection import StratifiedKFold

    placeholder = np.zeros((len(labels), 1))
    return [list(StratifiedKFold(folds, shuffle=True, random_state=derive_seed(seed, "split", r))
                 .split(placeholder, labels)) for r in range(repeats)]


Outcome = tuple[dict[str, Runs], dict[str, StrategyResult], list[Comparison], dict[str, Any]]


Jobs = dict[Any, tuple[str, Corpus, Corpus, list[Task]]]


def fit_all(workers: FitWorkers, jobs: Jobs, log: Log | None = None) -> tuple[dict[Any, Runs], dict[str, float]]:
    """The :class:`Runs` of every ``key: (strategy, train, test, tasks)``, fitted on ``workers``,
    and the wall seconds the parameter-free and the learned fits took.

    A parameter-free strategy's tasks are one job (its logistic regressions are solved
    together); a learned strategy's tasks are a job each, so its folds run side by side.
    Parameter-free jobs go first, so each kind's wall time is known; ``log`` gets a line per
    strategy-name key, in that order.
    """
    keys = sorted(jobs, key=lambda key: is_learned(jobs[key][0]))  # stable: parameter-free first
    pieces: list[tuple[Any, Task | None]] = []
    for key in keys:
        strategy, _, _, tasks = jobs[key]
        pieces += [(key, task) for task in tasks] if is_learned(strategy) else [(key, None)]
    runs = {key: Runs() for key in keys}
    walls = {"parameter_free": 0.0, "learned": 0.0}
    start = time.perf_counter()
    outcomes = workers.run([(*jobs[key][:3], [task] if task is not None else jobs[key][3]) for key, task in pieces])
    for index, ((key, _), outcome) in enumerate(zip(pieces, outcomes)):
        runs[key].extend(outcome)
        if index + 1 == len(pieces) or pieces[index + 1][0] != key:
            if log is not None and isinstance(key, str):
                log(f"{jobs[key][0]}: {np.mean(runs[key].accuracy):.4f} ({runs[key].seconds:.1f} s)")
            walls["learned" if is_learned(jobs[key][0]) else "parameter_free"] += time.perf_counter() - start
            start = time.perf_counter()
    return runs, walls


def cross_validate(names: Sequence[str], workers: FitWorkers, corpus: Corpus, settings: EvaluationSettings,
                   log: Log) -> Outcome:
    """Repeated stratified k-fold on one file, the same splits for every strategy (``settings``:
    folds, repeats, seed, seed variance, pairs)."""
    s = settings
    splits = cv_splits(corpus.labels, s.folds, s.repeats, s.seed)
    n_train = float(np.mean([len(train) for partition in splits for train, _ in partition]))
    n_test = float(np.mean([len(test) for partition in splits for _, test in partition]))
    tasks = [(train_rows, test_rows, derive_seed(s.seed, "fit", repeat, fold))
             for repeat, partition in enumerate(splits) for fold, (train_rows, test_rows) in enumerate(partition)]
    jobs: Jobs = {name: (name, corpus, corpus, tasks) for name in names}
    seed_tables = [name for name in names if is_learned(name) and s.seed_variance and len(splits) > 1]
    for name in seed_tables:  # repeat 0's splits again with every other repeat's seed
        jobs["seeds", name] = (name, corpus, corpus, [
            (train_rows, test_rows, derive_seed(s.seed, "fit", seed_index, fold))
            for seed_index in range(1, s.repeats) for fold, (train_rows, test_rows) in enumerate(splits[0])])
    fitted, walls = fit_all(workers, jobs, log)
    runs = {name: fitted[name] for name in names}
    tables = {name: _seed_table(runs[name], fitted["seeds", name], len(splits[0]), s.repeats) for name in seed_tables}
    results = {n: summarize_cv(n, runs[n], n_train, n_test, s.repeats, tables.get(n)) for n in names}
    best = rank(results)
    comparisons = compare(names, best, s.all_pairs, lambda a, b: (
        stats.corrected_paired_ttest(runs[a].accuracy, runs[b].accuracy, n_train, n_test), {}))
    protocol = {"mode": "cross-validation", "folds": s.folds, "repeats": s.repeats, "n_train": n_train,
                "n_test": n_test, "split_seeds": [derive_seed(s.seed, "split", r) for r in range(s.repeats)],
                "fit_walls": walls, "inner_folds_used": _inner_folds(names, s, corpus.labels, tasks)}
    return runs, results, comparisons, protocol


def _inner_folds(names: Sequence[str], settings: EvaluationSettings, labels: np.ndarray,
                 tasks: Sequence[tuple[np.ndarray, Any, int]]) -> int | list[int]:
    """The inner folds the logistic regressions actually used (``inner_folds`` is only an upper
    bound): one number, or the distinct numbers when the outer folds' class counts differ; 0
    when no C was chosen by inner CV."""
    if not settings.tune or all(is_learned(name) for name in names):
        return 0
    used = sorted({inner_folds_used(labels[np.asarray(rows)], settings.c_grid, settings.inner_folds)
                   for rows, _, _ in tasks})
    return used[0] if len(used) == 1 else used


def _seed_table(done: Runs, extra: Runs, folds: int, repeats: int) -> np.ndarray:
    """(folds, repeats) accuracies on repeat 0's splits: column 0 from the main runs (repeat 0
    ran with its own seed), the others from the extra fits with every other repeat's seed."""
    table = np.empty((folds, repeats))
    table[:, 0] = done.accuracy[:folds]
    table[:, 1:] = np.asarray(extra.accuracy).reshape(repeats - 1, folds).T
    done.seconds += extra.seconds
    return table


def train_test(names: Sequence[str], workers: FitWorkers, train: Corpus, test: Corpus,
               settings: EvaluationSettings, log: Log) -> Outcome:
    """Fit on the whole training file, score on the test file; learned strategies once per seed
    (``settings.repeats``); bootstrap (over examples, and seeds) for the uncertainty."""
    s = settings
    jobs: Jobs = {name: (name, train, test, [(train.rows(), test.rows(), derive_seed(s.seed, "fit", repeat, 0))
                                             for repeat in range(s.repeats if is_learned(name) else 1)])
                  for name in names}
    fitted, walls = fit_all(workers, jobs, log)
    runs = {name: fitted[name] for name in names}
    results = {name: summarize_test(name, runs[name], s.n_resamples, s.seed) for name in names}
    best = rank(results)
    comparisons = compare(names, best, s.all_pairs, lambda a, b: _compare_test(
        runs[a], runs[b], s.n_resamples, derive_seed(s.seed, "bootstrap", names.index(a), names.index(b))))
    protocol = {"mode": "train-test", "repeats": s.repeats, "n_train": len(train.labels),
                "n_test": len(test.labels), "fit_walls": walls,
                "inner_folds_used": _inner_folds(names, s, train.labels, [(train.rows(), None, 0)])}
    return runs, results, comparisons, protocol


def summarize_cv(name: str, runs: Runs, n_train: float, n_test: float, repeats: int,
                 seed_table: np.ndarray | None) -> StrategyResult:
    """Mean, std and the corrected CI of the CV scores (the CI clipped to [0, 1])."""
    accuracy = stats.corrected_ci(runs.accuracy, n_train, n_test)
    f1 = stats.corrected_ci(runs.macro_f1, n_train, n_test)
    variance = None
    if seed_table is not None:
        components = stats.variance_components(seed_table)
        variance = {"split": components.split, "seed": components.seed, "seed_share": components.seed_share,
                    "seed_share_ci95": components.seed_share_ci, "split_df": components.split_df,
                    "seed_df": components.seed_df, "enough_to_split": components.enough_to_split,
                    "splits": seed_table.shape[0], "seeds": seed_table.shape[1],
                    "design": f"{seed_table.shape[0]} splits of repeat 0 x {seed_table.shape[1]} seeds "
                              f"(a seed sets initialisation, batch order and early-stopping split); "
                              f"one-way random-effects ANOVA, F-based interval of the seed share"}
    elif repeats > 1 and not is_learned(name):
        variance = {"split": accuracy.std ** 2, "seed": 0.0, "seed_share": 0.0,
                    "design": "parameter-free: no seed, all variance comes from the split"}
    factor = stats.corrected_variance_factor(len(runs.accuracy), n_train, n_test)
    return StrategyResult(name, is_learned(name), runs.accuracy, runs.macro_f1, accuracy.mean,
                          accuracy.std, accuracy.std * float(np.sqrt(factor)), clip_interval(accuracy.ci),
                          accuracy.method, f1.mean, clip_interval(f1.ci),
                          chosen_c=runs.chosen_c, variance=variance)


def summarize_test(name: str, runs: Runs, n_resamples: int, seed: int) -> StrategyResult:
    """The bootstrap mean and CI over test examples (and seeds) of one strategy."""
    correct = runs.correct_matrix()
    boot = stats.bootstrap_mean(correct if correct.shape[0] > 1 else correct[0], n_resamples=n_resamples,
                                seed=derive_seed(seed, "bootstrap", 0))
    per_run = np.asarray(runs.accuracy)
    std = float(per_run.std(ddof=1)) if per_run.size > 1 else 0.0
    sampling = float(np.mean(per_run * (1 - per_run)) / correct.shape[1])
    method = ("bootstrap over seeds and test examples" if correct.shape[0] > 1
              else "bootstrap over test examples")
    return StrategyResult(name, is_learned(name), runs.accuracy, runs.macro_f1, boot.estimate, std,
                          boot.standard_error, clip_interval(boot.ci), method, float(np.mean(runs.macro_f1)),
                          (float("nan"), float("nan")), chosen_c=runs.chosen_c,
                          variance={"seed": std ** 2, "test_sample": sampling})


def _compare_test(a: Runs, b: Runs, n_resamples: int, seed: int) -> tuple[stats.PairedTest, dict[str, float]]:
    """One run each: McNemar's p with a paired-bootstrap CI; several seeds: the bootstrap over
    seeds and examples for both."""
    correct_a, correct_b = a.correct_matrix(), b.correct_matrix()
    boot = stats.paired_bootstrap(correct_a, correct_b, n_resamples=n_resamples, seed=seed)
    if correct_a.shape[0] == correct_b.shape[0] == 1:
        exact = stats.mcnemar(correct_a[0], correct_b[0])
        return (stats.PairedTest(exact.test, boot.diff, boot.ci, exact.p_value, exact.statistic),
                {"p_value_bootstrap": boot.p_value})
    # a bootstrap p-value cannot go below 2 / (resamples + 1): say so rather than print it as exact
    return boot, {"p_value_floor": 2.0 / (n_resamples + 1)}


def pairs(names: Sequence[str], best: str, all_pairs: bool) -> list[tuple[str, str]]:
    if all_pairs:
        return [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    return [(best, other) for other in names if other != best]


def compare(names: Sequence[str], best: str, all_pairs: bool,
            test: Callable[[str, str], tuple[stats.PairedTest, dict[str, float]]]) -> list[Comparison]:
    """The paired tests of the chosen pairs, Holm-adjusted together."""
    chosen = pairs(names, best, all_pairs)
    tests = [test(a, b) for a, b in chosen]
    adjusted = stats.holm([t.p_value for t, _ in tests])
    return [Comparison(a, b, t.diff, t.ci, t.p_value, float(p_adj), t.test, bool(p_adj < ALPHA), extra)
            for (a, b), (t, extra), p_adj in zip(chosen, tests, adjusted)]


def rank(results: dict[str, StrategyResult]) -> str:
    """Set every result's rank by mean accuracy; returns the best name."""
    order = sorted(results, key=lambda name: -results[name].mean)
    for position, name in enumerate(order, start=1):
        results[name].rank = position
    return order[0]
