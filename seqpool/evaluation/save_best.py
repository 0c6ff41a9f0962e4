"""``save_best``: the comparison's winner, fitted on all training data, as a PooledClassifier folder.

A parameter-free winner keeps the comparison's classifier: a standardised logistic regression
(C chosen by the same inner CV on all training rows), whose standardisation is folded into the
linear head of a :class:`~seqpool.classifier.PooledClassifier` (its token standardisation left
at the identity), so the folder predicts exactly what that fit predicts. A learned winner is
trained on all training states with the evaluation's options. The folder records the encoder
(model, layer, max length), so ``seqpool explain --classifier DIR`` and the pipeline rebuild it.

The folder is checked before any work (see :func:`check_save_dir`) and published atomically:
written in a temporary sibling folder, then renamed into place, so a crash never leaves half a
classifier under ``DIR``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from seqpool.evaluation.settings import EvaluationSettings, derive_seed, parameter_error
from seqpool.io.atomic import current_umask


def check_save_dir(directory: str | os.PathLike, overwrite: bool) -> Path:
    """``directory`` if a classifier can be saved there: not a file, empty or absent (an existing
    non-empty folder only with ``overwrite``), and its nearest existing parent a writable folder."""
    path = Path(directory).expanduser()
    if path.exists() or path.is_symlink():
        if not path.is_dir():
            raise parameter_error(f"save_best {os.fspath(directory)} exists and is not a folder; "
                                  f"name a new or empty folder", "save_best")
        if any(path.iterdir()) and not overwrite:
            raise parameter_error(f"save_best folder {os.fspath(directory)} is not empty; pass overwrite=True "
                                  f"to replace it, or name a new folder", "save_best", "overwrite=True")
    parent = path.resolve().parent
    existing = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise parameter_error(f"cannot write save_best {os.fspath(directory)}: {existing or parent} is not a "
                              f"writable folder", "save_best")
    return path


def fit_best(strategy: str, learned: bool, states: Any, pooled: np.ndarray | None, labels: np.ndarray,
             label_names: Sequence[Any], settings: EvaluationSettings, encoder_info: dict[str, Any]) -> Any:
    """The winner as a fitted PooledClassifier, trained on every training row."""
    import torch

    from seqpool.classifier import PooledClassifier

    names = [_plain(name) for name in label_names]
    seed = derive_seed(settings.seed, "final")
    if learned:
        model = PooledClassifier(strategy, states.dim, len(names), labels=names, encoder=encoder_info)
        return model.fit(states, labels, seed=seed, **settings.learned_options)
    weight, bias, chosen = fit_final_logistic(pooled, labels, len(names), settings, seed)
    model = PooledClassifier(strategy, states.dim, len(names), labels=names, encoder=encoder_info)
    with torch.no_grad():  # identity token standardisation; the head holds scaler + regression
        model.shift.zero_()
        model.scale.fill_(1.0)
        model.head.weight.copy_(torch.from_numpy(weight))
        model.head.bias.copy_(torch.from_numpy(bias))
    model.chosen_c_ = chosen
    return model.eval()


def fit_final_logistic(x: np.ndarray, y: np.ndarray, num_classes: int, settings: EvaluationSettings,
                       seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """(num_classes, dim) weight and bias on raw pooled vectors, and the C chosen by inner CV on all rows."""
    from seqpool.evaluation.classifiers import fit_predict_logistic_many
    from seqpool.evaluation.logistic import fit_logistic_problems
    from seqpool.threads import limited_threads

    rows = np.arange(len(y))
    [(_, chosen)] = fit_predict_logistic_many(x, y, [(rows, rows[:1], seed)], c_grid=settings.c_grid,
                                              tune=settings.tune, inner_folds=settings.inner_folds,
                                              num_classes=num_classes)
    with limited_threads(1):
        models = fit_logistic_problems(x, y, [rows], [chosen], num_classes)
    weight, bias = models.raw_linear(0, 0, num_classes)
    return weight.astype(np.float32), bias.astype(np.float32), chosen


def save_atomically(model: Any, directory: Path) -> Path:
    """Write ``model`` into a temporary sibling folder, then rename it to ``directory``
    (an existing folder is moved aside first and removed once the new one is in place)."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".tmp", dir=directory.parent))
    try:
        os.chmod(staging, 0o777 & ~current_umask())
        model.save_pretrained(staging)
        old = None
        if directory.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.", suffix=".old", dir=directory.parent))
            os.rmdir(old)
            os.rename(directory, old)
        os.rename(staging, directory)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return directory


def _plain(value: Any) -> Any:
    """A label name as a JSON type (numpy scalars from a reader become int / float / str)."""
    return value.item() if isinstance(value, np.generic) else value
