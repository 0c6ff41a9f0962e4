"""The batched logistic solver (seqpool.evaluation.logistic) keeps scikit-learn's numbers.

``fit_predict_logistic_many`` solves every inner fold, every C and every refit of every outer
fold in one batched L-BFGS run; here it is checked against one scikit-learn
``StandardScaler + LogisticRegression(C)`` fit per (fold, C) (``choose_c``): the same C, and the
same predictions up to a documented tolerance (examples whose decision value is within 1e-3 of
the boundary may flip: the two solvers stop at slightly different points of the same optimum).
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.model_selection import StratifiedKFold

from seqpool.evaluation.classifiers import _fit_logistic, choose_c, fit_predict_logistic_many
from seqpool.evaluation.logistic import fit_logistic_problems

GRID = tuple(2.0 ** k for k in range(-2, 4))


def problem(n: int = 240, d: int = 12, classes: int = 2, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Correlated features with a shift and uneven scales (what pooled hidden states look like)."""
    rng = np.random.default_rng(seed)
    latent = rng.normal(size=(n, 6))
    x = latent @ rng.normal(size=(6, d)) + 0.5 * rng.normal(size=(n, d))
    x = x * rng.uniform(0.1, 10, size=d) + rng.normal(size=d) * 5
    scores = latent @ rng.normal(size=(6, classes)) + rng.normal(size=(n, classes))
    y = scores.argmax(axis=1) if classes > 2 else (scores[:, 0] > scores[:, 1]).astype(int)
    return x, y


@pytest.mark.parametrize("classes", [2, 3])
def test_each_problem_matches_sklearn_logistic_regression(classes):
    x, y = problem(classes=classes)
    rows = [np.arange(180), np.arange(60, 240)]
    models = fit_logistic_problems(x, y, rows, GRID, classes)
    for s, r in enumerate(rows):
        for c_index, c in enumerate(GRID):
            reference = _fit_logistic(x[r], y[r], c)
            expected = reference.decision_function(x)
            mine = models.decision(x, s, c_index)
            if classes == 2:
                mine = mine[:, 0]
            else:  # softmax logits are defined up to a constant per row
                mine, expected = mine - mine.mean(1, keepdims=True), expected - expected.mean(1, keepdims=True)
            assert np.max(np.abs(mine - expected)) < 2e-2 * max(1.0, np.abs(expected).max())
            agree = np.mean(models.predict(x, s, c_index) == reference.predict(x))
            assert agree >= 0.995


@pytest.mark.parametrize("classes", [2, 3])
def test_chosen_c_and_accuracy_match_one_sklearn_fit_per_c(classes):
    x, y = problem(n=200, classes=classes, seed=1)
    outer = list(StratifiedKFold(3, shuffle=True, random_state=3).split(x, y))
    tasks = [(train, test, 100 + i) for i, (train, test) in enumerate(outer)]
    outcomes = fit_predict_logistic_many(x, y, tasks, c_grid=GRID, tune=True, inner_folds=5)
    for (train, test, seed), (predicted, chosen) in zip(tasks, outcomes):
        reference_c = choose_c(x[train], y[train], GRID, 5, seed)
        assert chosen == reference_c
        reference = _fit_logistic(x[train], y[train], reference_c).predict(x[test])
        assert np.mean(predicted == reference) >= 0.98
        assert abs(np.mean(predicted == y[test]) - np.mean(reference == y[test])) <= 0.02


def test_same_inputs_give_identical_weights():
    x, y = problem(seed=2)
    rows = [np.arange(150), np.arange(100, 240)]
    first = fit_logistic_problems(x, y, rows, GRID, 2)
    second = fit_logistic_problems(x, y, rows, GRID, 2)
    assert np.array_equal(first.weights, second.weights) and np.array_equal(first.bias, second.bias)


def test_problems_are_solved_independently_of_each_other():
    """Each problem has its own steps and stopping test, so which other problems share the batch
    moves its weights only within the solver's tolerance (the preconditioner is shared)."""
    x, y = problem(seed=4)
    rows = [np.arange(150), np.arange(80, 240)]
    together = fit_logistic_problems(x, y, rows, GRID, 2)
    alone = fit_logistic_problems(x, y, rows[:1], GRID, 2)
    assert np.allclose(together.weights[0], alone.weights[0], atol=2e-3)
    assert np.array_equal(together.predict(x, 0, 3), alone.predict(x, 0, 3))


def test_raw_linear_folds_the_standardisation_in():
    x, y = problem(classes=3, seed=5)
    models = fit_logistic_problems(x, y, [np.arange(240)], (1.0,), 3)
    weight, bias = models.raw_linear(0, 0, 3)
    assert np.allclose(x @ weight.T + bias, models.decision(x, 0, 0), atol=1e-8)
    x2, y2 = problem(classes=2, seed=5)
    binary = fit_logistic_problems(x2, y2, [np.arange(240)], (1.0,), 2)
    weight, bias = binary.raw_linear(0, 0, 2)
    logits = x2 @ weight.T + bias
    assert np.array_equal(logits.argmax(1), binary.predict(x2, 0, 0))


def test_tasks_split_into_memory_bounded_groups_give_the_same_choices(monkeypatch):
    import seqpool.evaluation.classifiers as classifiers

    x, y = problem(n=160, seed=6)
    outer = list(StratifiedKFold(4, shuffle=True, random_state=0).split(x, y))
    tasks = [(train, test, i) for i, (train, test) in enumerate(outer)]
    together = fit_predict_logistic_many(x, y, tasks, c_grid=GRID[:3], tune=True, inner_folds=3)
    monkeypatch.setattr(classifiers, "LOGIT_BUDGET", 1)  # one task per solve
    apart = fit_predict_logistic_many(x, y, tasks, c_grid=GRID[:3], tune=True, inner_folds=3)
    assert [c for _, c in together] == [c for _, c in apart]
    assert all(np.mean(a == b) >= 0.97 for (a, _), (b, _) in zip(together, apart))
