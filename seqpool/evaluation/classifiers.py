"""The two classifiers every strategy is scored with, fitted on the training part only.

Parameter-free strategies: standardised pooled vectors -> an L2-regularised logistic regression,
its strength C chosen by an inner stratified CV (SentEval's protocol). The objective is
scikit-learn's ``StandardScaler`` + ``LogisticRegression``, but every fit of a strategy (each
task's inner folds x C, and its refits) is solved at once by the batched L-BFGS of
:mod:`.logistic` (:func:`fit_predict_logistic_many`); :func:`choose_c` keeps the one-fit-at-a-time
scikit-learn version as the reference the tests compare it with. Learned strategies:
:class:`~seqpool.classifier.PooledClassifier` on frozen token states.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from seqpool.states import TokenStates
from seqpool.threads import limited_threads


def accuracy_and_f1(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-example correctness and the macro-F1 of a prediction."""
    from sklearn.metrics import f1_score

    correct = y_true == y_pred
    return correct, float(f1_score(y_true, y_pred, average="macro", zero_division=0))


def _fit_logistic(x: np.ndarray, y: np.ndarray, c: float) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000)).fit(x, y)


def choose_c(x: np.ndarray, y: np.ndarray, c_grid: Sequence[float], inner_folds: int, seed: int) -> float:
    """The C with the best inner stratified-CV accuracy on (x, y), one scikit-learn fit per (fold, C).

    The reference :func:`fit_predict_logistic_many` is checked against (it uses the same inner
    splits and tie rule, solving all fits at once). Standardisation is refit inside every inner
    fold. Ties go to the smaller C (stronger regularisation). Inner folds shrink to the smallest
    class count; with a single example in some class there is nothing to tune and C=1 (or the
    grid's middle) is returned.
    """
    grid = sorted(float(c) for c in c_grid)
    inner = inner_splits(y, grid, inner_folds, seed)
    if isinstance(inner, float):
        return inner
    correct = np.zeros(len(grid))
    for train, val in inner:
        for j, c in enumerate(grid):
            correct[j] += np.sum(_fit_logistic(x[train], y[train], c).predict(x[val]) == y[val])
    return grid[int(np.argmax(correct))]


def inner_splits(y: np.ndarray, grid: Sequence[float], inner_folds: int,
                 seed: int) -> float | list[tuple[np.ndarray, np.ndarray]]:
    """The inner stratified folds that choose C on training labels ``y``, or the C to use when
    there is nothing to tune (a one-value grid, or too few examples of some class)."""
    from sklearn.model_selection import StratifiedKFold

    folds = inner_folds_used(y, grid, inner_folds)
    if len(grid) == 1:
        return float(grid[0])
    if folds < 2:
        return 1.0 if 1.0 in grid else float(grid[len(grid) // 2])
    placeholder = np.zeros((len(y), 1))
    return list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(placeholder, y))


def inner_folds_used(y: np.ndarray, grid: Sequence[float], inner_folds: int) -> int:
    """How many inner folds choose C on training labels ``y``: ``inner_folds``, at most the smallest
    class's count (a stratified fold needs one of each); 0 when nothing is tuned (a one-value grid,
    or fewer than 2 possible folds)."""
    counts = np.bincount(np.asarray(y))
    folds = min(inner_folds, int(counts[counts > 0].min())) if len(y) else 0
    return folds if len(grid) > 1 and folds >= 2 else 0


Task = tuple[np.ndarray, np.ndarray, int]  # (training rows, test rows, seed of the inner split)


def fit_predict_logistic_many(x: np.ndarray, y: np.ndarray, tasks: Sequence[Task], *, c_grid: Sequence[float],
                              tune: bool, inner_folds: int, num_classes: int | None = None,
                              x_test: np.ndarray | None = None) -> list[tuple[np.ndarray, float]]:
    """(test predictions, chosen C) of every task: a standardised logistic regression on its
    training rows of ``x``, C chosen by its inner CV, scored on its test rows (of ``x_test``,
    default ``x``).

    Every inner fit and every refit of every task (``tasks x (inner_folds + 1) x len(c_grid)``
    problems) is solved in one batched L-BFGS run (:mod:`.logistic`), with the same inner splits,
    the same objective and the same tie rule as :func:`choose_c` with scikit-learn.
    """
    x_test = x if x_test is None else x_test
    num_classes = int(num_classes if num_classes is not None else y.max() + 1)
    grid = sorted(float(c) for c in c_grid)
    # tasks are solved in groups whose logits fit in about 256 MB (float64), a fixed plan
    per_task = len(x) * (inner_folds + 1) * len(grid) * (1 if num_classes == 2 else num_classes)
    size = max(1, int(LOGIT_BUDGET // max(per_task, 1)))
    outcomes: list[tuple[np.ndarray, float]] = []
    for start in range(0, len(tasks), size):
        outcomes += _solve_tasks(x, y, tasks[start:start + size], grid, tune, inner_folds, num_classes, x_test)
    return outcomes


#: Most logits (rows x problems x outputs) one batched solve holds: 3.2e7 float64 = 256 MB.
LOGIT_BUDGET = 32_000_000


def _solve_tasks(x: np.ndarray, y: np.ndarray, tasks: Sequence[Task], grid: list[float], tune: bool,
                 inner_folds: int, num_classes: int, x_test: np.ndarray) -> list[tuple[np.ndarray, float]]:
    from seqpool.evaluation.logistic import fit_logistic_problems

    row_sets: list[np.ndarray] = []
    plans: list[tuple[int, list[np.ndarray] | float]] = []
    for train_rows, _, seed in tasks:
        train_rows = np.asarray(train_rows)
        inner = inner_splits(y[train_rows], grid, inner_folds, seed) if tune else 1.0
        if isinstance(inner, float):
            plans.append((len(row_sets), inner))
        else:
            row_sets += [train_rows[fit] for fit, _ in inner]
            plans.append((len(row_sets), [train_rows[val] for _, val in inner]))
        row_sets.append(train_rows)
    fixed = {plan for _, plan in plans if isinstance(plan, float)}
    c_values = sorted(set(grid if any(not isinstance(plan, float) for _, plan in plans) else ()) | fixed)
    # One thread: many mid-sized products gain little from a second one, and on a shared
    # machine OpenMP's busy-waiting made them 4x slower; one thread is also reproducible.
    with limited_threads(1):
        models = fit_logistic_problems(x, y, row_sets, c_values, num_classes)
    predicted = models.predict_all(x) if any(not isinstance(plan, float) for _, plan in plans) else None
    outcomes = []
    for (refit, plan), (_, test_rows, _) in zip(plans, tasks):
        if isinstance(plan, float):
            chosen = plan
        else:
            correct = np.zeros(len(grid))
            for fold, val_rows in enumerate(plan):
                for j, c in enumerate(grid):
                    votes = predicted[val_rows, refit - len(plan) + fold, c_values.index(c)]
                    correct[j] += np.sum(votes == y[val_rows])
            chosen = grid[int(np.argmax(correct))]
        outcomes.append((models.predict(x_test[np.asarray(test_rows)], refit, c_values.index(chosen)), chosen))
    return outcomes


def fit_predict_logistic(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, *,
                         c_grid: Sequence[float], tune: bool, inner_folds: int, seed: int) -> tuple[np.ndarray, float]:
    """Predictions on ``x_test`` of a standardised logistic regression fitted on the training part
    (C by inner CV when ``tune``), and the chosen C."""
    rows = np.arange(len(y_train))
    stacked = np.concatenate([x_train, x_test])
    [(predicted, chosen)] = fit_predict_logistic_many(
        stacked, np.concatenate([y_train, np.zeros(len(x_test), dtype=y_train.dtype)]),
        [(rows, len(rows) + np.arange(len(x_test)), seed)], c_grid=c_grid, tune=tune, inner_folds=inner_folds,
        num_classes=int(y_train.max()) + 1)
    return predicted, chosen


def fit_predict_learned(strategy: str, train_states: TokenStates, y_train: np.ndarray, test_states: TokenStates,
                        test_rows: np.ndarray | None, num_labels: int, seed: int,
                        options: dict[str, Any], pooler_kwargs: dict[str, Any] | None = None) -> np.ndarray:
    """Train a :class:`PooledClassifier` on the training states only; predict the test rows.

    ``pooler_kwargs`` go to the pooler (e.g. ``num_layers`` for a strategy that mixes layers).
    """
    from seqpool.classifier import PooledClassifier

    model = PooledClassifier(strategy, train_states.dim, num_labels, **(pooler_kwargs or {}))
    model.fit(train_states, y_train, seed=seed, **options)
    return model.predict(test_states, test_rows)
