"""One strategy fitted and scored: the corpus a fit reads, the runs it records, and the
:class:`Fitter` that :class:`~seqpool.evaluation.workers.FitWorkers` runs.

These sit below both the protocol (which plans the fits) and the workers (which run them), so
neither needs the other's types: the protocol hands the workers jobs, the workers hand back
:class:`Runs`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from seqpool.evaluation.classifiers import Task, accuracy_and_f1, fit_predict_learned, fit_predict_logistic_many
from seqpool.evaluation.settings import EvaluationSettings
from seqpool.layer_plan import LayerPlan
from seqpool.registry import LEARNED, get_strategy
from seqpool.states import TokenStates


def is_learned(strategy: str) -> bool:
    """Whether ``strategy`` trains parameters (a :class:`PooledClassifier`) rather than being pooled
    once: read from the registry's ``kind``, so new operators, expressions and plugins are
    classified the same way as the built-ins."""
    return get_strategy(strategy).kind == LEARNED


@dataclass
class Corpus:
    """One side of an experiment: token states, pooled vectors and class indices."""

    states: TokenStates
    pooled: dict[str, np.ndarray]
    labels: np.ndarray

    def rows(self) -> np.ndarray:
        return np.arange(len(self.labels))


@dataclass
class Runs:
    """Raw outcomes of one strategy: accuracy/macro-F1 per run and, on a fixed test set,
    per-example correctness (runs, examples)."""

    accuracy: list[float] = field(default_factory=list)
    macro_f1: list[float] = field(default_factory=list)
    correct: list[np.ndarray] = field(default_factory=list)
    chosen_c: list[float] = field(default_factory=list)
    seconds: float = 0.0
    rows: list[np.ndarray] = field(default_factory=list)

    def add(self, y_true: np.ndarray, y_pred: np.ndarray, chosen_c: float | None, seconds: float,
            rows: np.ndarray | None = None) -> None:
        correct, f1 = accuracy_and_f1(y_true, y_pred)
        self.accuracy.append(float(correct.mean()))
        self.macro_f1.append(f1)
        self.correct.append(correct)
        self.rows.append(np.arange(len(correct)) if rows is None else np.asarray(rows))
        if chosen_c is not None:
            self.chosen_c.append(chosen_c)
        self.seconds += seconds

    def extend(self, other: "Runs") -> None:
        """Append ``other``'s runs after these (jobs of one strategy fitted apart, merged in order)."""
        self.accuracy += other.accuracy
        self.macro_f1 += other.macro_f1
        self.correct += other.correct
        self.chosen_c += other.chosen_c
        self.rows += other.rows
        self.seconds += other.seconds

    def correct_matrix(self) -> np.ndarray:
        return np.vstack(self.correct).astype(np.float64)


@dataclass(frozen=True)
class Fitter:
    """Fits one strategy on some training rows and scores it on some test rows.

    It holds what every fit needs (``settings``: the C grid, tuning, the learned strategies'
    options; the number of classes; the layer plan), so a forked worker inherits it once
    instead of receiving it with each job.
    """

    settings: EvaluationSettings
    num_labels: int
    #: which channels of the cached states each learned strategy trains on (None: all of them)
    plan: LayerPlan | None = None

    def fitted(self, strategy: str, train: Corpus, test: Corpus, tasks: Sequence[Task]) -> Runs:
        """The :class:`Runs` of every (train rows, test rows, seed) task of one strategy, in order:
        one job of :class:`~seqpool.evaluation.workers.FitWorkers`. Parameter-free strategies solve
        all tasks' logistic regressions (every inner fold and C) together."""
        runs = Runs()
        if is_learned(strategy):
            for train_rows, test_rows, seed in tasks:
                start = time.perf_counter()
                name, train_states, test_states, pooler_kwargs = self.learned_input(strategy, train, train_rows,
                                                                                    test)
                predicted = fit_predict_learned(name, train_states, train.labels[train_rows], test_states, test_rows,
                                                self.num_labels, seed, self.settings.learned_options, pooler_kwargs)
                runs.add(test.labels[test_rows], predicted, None, time.perf_counter() - start, test_rows)
            return runs
        s = self.settings
        start = time.perf_counter()
        x_test = None if test is train else test.pooled[strategy]
        outcomes = fit_predict_logistic_many(train.pooled[strategy], train.labels, tasks, c_grid=s.c_grid,
                                             tune=s.tune, inner_folds=s.inner_folds, num_classes=self.num_labels,
                                             x_test=x_test)
        share = (time.perf_counter() - start) / max(len(tasks), 1)
        for (predicted, chosen_c), (_, test_rows, _) in zip(outcomes, tasks):
            runs.add(test.labels[test_rows], predicted, chosen_c, share, test_rows)
        return runs

    def learned_input(self, strategy: str, train: Corpus, train_rows: np.ndarray,
                      test: Corpus) -> tuple[str, TokenStates, TokenStates, dict[str, Any]]:
        """(Pooler strategy, training states, test states, Pooler kwargs) of a learned strategy:
        ``attention@-2`` trains ``attention`` on layer -2's channels; a strategy that mixes layers trains on
        every layer's (the plan says which)."""
        train_states = train.states.subset(train_rows)
        if self.plan is None:
            return strategy, train_states, test.states, {}
        name, _, pooler_kwargs = self.plan.learned(strategy)
        return (name, self.plan.learned_states(strategy, train_states), self.plan.learned_states(strategy, test.states),
                pooler_kwargs)
