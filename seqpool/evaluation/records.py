"""What :func:`~seqpool.evaluation.evaluate` measured, as plain dataclasses and nothing else.

They sit below both :mod:`.result` (which adds the JSON and the presentations to the whole
record) and :mod:`.report` (which formats it), so the report can name what it formats without
importing the module that calls it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class StrategyResult:
    """Scores of one strategy: per split (CV) or per seed (train/test), with their summary."""

    name: str
    learned: bool
    scores: list[float]
    macro_f1: list[float]
    mean: float
    std: float
    standard_error: float
    ci95: tuple[float, float]
    ci_method: str
    macro_f1_mean: float
    macro_f1_ci95: tuple[float, float]
    rank: int = 0
    chosen_c: list[float] = field(default_factory=list)
    variance: dict[str, float] | None = None


@dataclass
class Comparison:
    """``a - b`` in accuracy, with its CI and raw and Holm-adjusted p-values."""

    a: str
    b: str
    diff: float
    ci95: tuple[float, float] | None
    p_value: float
    p_adjusted: float
    test: str
    significant: bool
    extra: dict[str, float] = field(default_factory=dict)


@dataclass
class EvaluationRecord:
    """Everything :func:`~seqpool.evaluation.evaluate` measured, as data; its subclass
    :class:`~seqpool.evaluation.result.EvaluationResult` adds the JSON, the table and the plot.

    ``warnings`` holds what the run told the user on stderr (e.g. a cache it could not write).
    ``by_length`` holds the accuracy per token-length bin (``by_length=K``); ``saved`` describes
    the classifier folder written by ``save_best``.
    """

    strategies: dict[str, StrategyResult]
    comparisons: list[Comparison]
    best: str
    protocol: dict[str, Any]
    timings: dict[str, Any]
    versions: dict[str, str]
    learning_curve: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    by_length: dict[str, Any] | None = None
    saved: dict[str, Any] | None = None
