"""The two classifiers every strategy is scored with, fitted on the training part only.

Parameter-free strategies: standardised pooled vectors -> scikit-learn ``LogisticRegression``,
its L2 strength chosen by an inner stratified CV (SentEval's protocol). Learned strategies:
:class:`~seqpool.classifier.PooledClassifier` on frozen token states.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from seqpool.states import TokenStates


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
    """The C with the best inner stratified-CV accuracy on (x, y) (the training part only).

    Standardisation is refit inside every inner fold. Ties go to the smaller C (stronger
    regularisation). Inner folds shrink to the smallest class count; with a single example
    in some class there is nothing to tune and C=1 (or the grid's middle) is returned.
    """
    from sklearn.model_selection import StratifiedKFold

    grid = sorted(float(c) for c in c_grid)
    counts = np.bincount(y)
    folds = min(inner_folds, int(counts[counts > 0].min()))
    if len(grid) == 1:
        return grid[0]
    if folds < 2:
        return 1.0 if 1.0 in grid else grid[len(grid) // 2]
    correct = np.zeros(len(grid))
    for train, val in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        for j, c in enumerate(grid):
            correct[j] += np.sum(_fit_logistic(x[train], y[train], c).predict(x[val]) == y[val])
    return grid[int(np.argmax(correct))]


def fit_predict_logistic(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, *,
                         c_grid: Sequence[float], tune: bool, inner_folds: int, seed: int) -> tuple[np.ndarray, float]:
    """Predictions on ``x_test`` of a standardised logistic regression fitted on the training part."""
    from threadpoolctl import threadpool_limits

    # Many small lbfgs fits: BLAS threads buy nothing here and, on a shared machine, their
    # busy-waiting made each fit 10x slower. One thread is also bit-for-bit reproducible.
    with threadpool_limits(limits=1):
        c = choose_c(x_train, y_train, c_grid, inner_folds, seed) if tune else 1.0
        return _fit_logistic(x_train, y_train, c).predict(x_test), c


def fit_predict_learned(strategy: str, train_states: TokenStates, y_train: np.ndarray, test_states: TokenStates,
                        test_rows: np.ndarray | None, num_labels: int, seed: int,
                        options: dict[str, Any], pooler_kwargs: dict[str, Any] | None = None) -> np.ndarray:
    """Train a :class:`PooledClassifier` on the training states only; predict the test rows.

    ``pooler_kwargs`` go to the pooler (``num_layers`` for ``scalar_mix``).
    """
    from seqpool.classifier import PooledClassifier

    model = PooledClassifier(strategy, train_states.dim, num_labels, **(pooler_kwargs or {}))
    model.fit(train_states, y_train, seed=seed, **options)
    return model.predict(test_states, test_rows)
