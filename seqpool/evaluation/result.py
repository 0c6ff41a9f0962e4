"""What :func:`~seqpool.evaluation.evaluate` measured, as plain dataclasses and strict JSON.

Accuracy CIs are clipped to [0, 1] here (and again where the report prints them): a t
interval over scores near 1 can reach past 100 %, which no accuracy can.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from seqpool._version import __version__
from seqpool.io.atomic import atomic_write_text
from seqpool.stats import clip_interval  # noqa: F401  (re-exported: protocol and curve use it)


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
class EvaluationResult:
    """Everything :func:`evaluate` measured; ``to_json`` / ``table`` / ``plot`` present it.

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

    def to_dict(self) -> dict[str, Any]:
        return jsonable({
            "best": self.best,
            "strategies": {name: vars(result) for name, result in self.strategies.items()},
            "comparisons": [{**{k: v for k, v in vars(c).items() if k != "extra"}, **c.extra}
                            for c in self.comparisons],
            "protocol": self.protocol, "timings": self.timings, "versions": self.versions,
            "learning_curve": self.learning_curve, "warnings": self.warnings,
            "by_length": self.by_length, "saved_best": self.saved,
        })

    def to_json(self, path: str | os.PathLike | None = None, indent: int = 2) -> str:
        """The whole result as JSON (fractions, not percent); written atomically to ``path`` if given."""
        text = json.dumps(self.to_dict(), indent=indent, allow_nan=False) + "\n"
        if path is not None:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(Path(path), text)
        return text

    def table(self) -> str:
        """The human-readable report printed by ``seqpool evaluate``."""
        from seqpool.evaluation.report import format_table

        return format_table(self)

    def plot(self, path: str | os.PathLike) -> Path:
        """Per-strategy score distributions with CIs (and the learning curve), as an image."""
        from seqpool.evaluation.report import plot_result

        return plot_result(self, path)


def jsonable(value: Any) -> Any:
    """Plain JSON types; NaN and infinity become null."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    return value


def versions() -> dict[str, str]:
    """Versions of everything that can change the numbers."""
    import scipy
    import sklearn
    import torch
    import transformers

    return {"seqpool": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "scikit-learn": sklearn.__version__, "scipy": scipy.__version__, "numpy": np.__version__,
            "python": platform.python_version()}
