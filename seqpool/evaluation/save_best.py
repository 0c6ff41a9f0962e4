"""``save_best``: the comparison's winner, fitted on all training data, as a PooledClassifier folder.

A parameter-free winner keeps the comparison's classifier: a standardised logistic regression
(C chosen by the same inner CV on all training rows), whose standardisation is folded into the
linear head of a :class:`~seqpool.classifier.PooledClassifier` (its token standardisation left
at the identity), so the folder predicts exactly what that fit predicts. A learned winner is
trained on all training states with the evaluation's options. The folder records the encoder
(model, the winner's own layer choice, max length): ``mean@-2`` is saved as ``mean`` over an
encoder of layer -2, so ``seqpool explain --classifier DIR`` and the pipeline pool the states
the comparison pooled (:func:`winner_input`).

The folder is checked before any work (see :func:`check_save_dir`) and published atomically:
written in a working folder beside it (made exclusively, marked with the run, see
:mod:`seqpool.io.ownership`), then renamed into place, so a crash never leaves half a
classifier under ``DIR``. That marker stays in the folder: it is how a later ``overwrite``
knows the folder is a classifier seqpool saved, the only kind it replaces.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from seqpool.evaluation.settings import EvaluationSettings, derive_seed, parameter_error
from seqpool.io.ownership import FOLDER_MARKER, make_working_folder, owned_by_seqpool, remove_working_folder
from seqpool.registry import get_strategy

#: What a save-best folder holds: serialization's config.json + model.safetensors (named here, so
#: checking options never imports torch through serialization) and the run marker; a folder
#: with anything else is not replaced.
SAVED_FILES = frozenset({"config.json", "model.safetensors", FOLDER_MARKER})
_MARKED_AS = "evaluate --save-best"


def is_saved_winner(folder: Path) -> bool:
    """Whether ``folder`` is a classifier seqpool saved (its run marker) holding only its own files,
    so replacing it deletes nothing of the user's."""
    if folder.is_symlink() or not folder.is_dir() or not owned_by_seqpool(folder):
        return False
    entries = list(folder.iterdir())
    return all(entry.name in SAVED_FILES and entry.is_file() and not entry.is_symlink() for entry in entries)


def check_save_dir(directory: str | os.PathLike, overwrite: bool) -> Path:
    """``directory`` if a classifier can be saved there: absent, an empty folder, or (with
    ``overwrite``) a folder an earlier ``save_best`` wrote and nobody added to; and its nearest
    existing parent a writable folder."""
    path = Path(directory).expanduser()
    if path.is_symlink():
        raise parameter_error(f"save_best {os.fspath(directory)} is a symbolic link; name a new folder",
                              "save_best")
    if path.exists():
        if not path.is_dir():
            raise parameter_error(f"save_best {os.fspath(directory)} exists and is not a folder; "
                                  f"name a new or empty folder", "save_best")
        if any(path.iterdir()) and not overwrite:
            raise parameter_error(f"save_best folder {os.fspath(directory)} is not empty; pass overwrite=True "
                                  f"to replace it, or name a new folder", "save_best", "overwrite=True")
        if any(path.iterdir()) and not is_saved_winner(path):
            raise parameter_error(f"save_best folder {os.fspath(directory)} was not saved by seqpool evaluate, or "
                                  f"holds files it did not write; overwrite=True replaces only such a folder, so "
                                  f"move it or name a new folder", "save_best", "overwrite=True")
    parent = path.resolve().parent
    existing = next((p for p in (parent, *parent.parents) if p.exists()), None)
    if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise parameter_error(f"cannot write save_best {os.fspath(directory)}: {existing or parent} is not a "
                              f"writable folder", "save_best")
    return path


@dataclass(frozen=True)
class WinnerInput:
    """What a saved winner pools: ``strategy`` (no ``@``) on the average of hidden ``layers``,
    which are ``channels`` of the evaluation's cached states."""

    strategy: str
    layers: tuple[int, ...]
    channels: slice


def winner_input(strategy: str, plan: Any, encoder_layers: Sequence[int]) -> WinnerInput:
    """How ``strategy`` of a :class:`~seqpool.layer_plan.LayerPlan` is saved, or a SeqpoolError
    naming save_best when one classifier over one encoder layer (or average) cannot hold it:
    a concatenation of terms on different layers, or a strategy that needs every layer side by side
    (``scalar_mix``)."""
    terms = plan.terms[strategy]
    names, blocks = [name for name, _ in terms], {index for _, index in terms}
    every_layer = any(get_strategy(name).needs_all_layers for name in names)
    if every_layer or len(blocks) != 1:
        raise parameter_error(f"save_best cannot save the strategy {strategy!r}: a saved classifier pools the "
                              f"states of one encoder layer (or one average of layers), and this one pools "
                              f"{'every layer' if every_layer else 'several'}; leave it out of "
                              f"strategies or drop save_best", "save_best", "strategies")
    (index,) = blocks
    if plan.blocks is None:
        return WinnerInput("+".join(names), tuple(encoder_layers), slice(0, plan.dim))
    return WinnerInput("+".join(names), tuple(plan.blocks[index]), slice(index * plan.dim, (index + 1) * plan.dim))


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


def save_atomically(model: Any, directory: Path, run_id: str) -> Path:
    """Write ``model`` into a working folder beside ``directory`` (made exclusively, marked with
    ``run_id``), then rename it to ``directory``. An existing ``directory`` is checked again (it
    must still be empty or a saved winner: the run took a while) and moved aside, then removed."""
    directory.parent.mkdir(parents=True, exist_ok=True)
    staging = make_working_folder(directory.parent / f".{directory.name}.{run_id}.tmp", run_id, _MARKED_AS)
    old = None
    try:
        model.save_pretrained(staging)
        if directory.exists() or directory.is_symlink():
            check_save_dir(directory, overwrite=True)
            old = directory.parent / f".{directory.name}.{run_id}.old"
            os.rename(directory, old)
        try:
            os.rename(staging, directory)
        except BaseException:
            if old is not None:  # put the previous folder back
                os.rename(old, directory)
            raise
    except BaseException:
        remove_working_folder(staging)
        raise
    if old is not None:
        if any(old.iterdir()):
            remove_working_folder(old)  # a saved winner: seqpool's marker and files only
        else:
            old.rmdir()
    return directory


def _plain(value: Any) -> Any:
    """A label name as a JSON type (numpy scalars from a reader become int / float / str)."""
    return value.item() if isinstance(value, np.generic) else value
