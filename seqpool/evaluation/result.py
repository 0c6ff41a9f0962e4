"""The result :func:`~seqpool.evaluation.evaluate` returns: the measured record (:mod:`.records`)
with its strict JSON, its table and its plot (formatted by :mod:`.report`), and the versions
that can change the numbers.

Accuracy CIs are clipped to [0, 1] before a result holds them (and again where the report prints
them): a t interval over scores near 1 can reach past 100 %, which no accuracy can.
"""

from __future__ import annotations

import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seqpool._version import __version__
# re-exported: seqpool.evaluation names StrategyResult and Comparison from here
from seqpool.evaluation.records import Comparison, EvaluationRecord, StrategyResult  # noqa: F401
from seqpool.io.atomic import atomic_write_text
from seqpool.stats import clip_interval  # noqa: F401  (re-exported: protocol and curve use it)


@dataclass
class EvaluationResult(EvaluationRecord):
    """Everything :func:`evaluate` measured (the fields of :class:`EvaluationRecord`);
    ``to_json`` / ``table`` / ``plot`` present it."""

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
