"""``evaluate``: which pooling strategy should I use for my task, and is the difference real?

The orchestration, in the order that makes mistakes cheap: settings and output paths are
checked first, then the data is read and checked (labels, classes, folds, learning-curve
sizes), and only then is a model loaded and anything encoded.

1. **Encode once** (:mod:`.cache`): token states are computed once per encoder (its
   fingerprint: model, weights, tokenizer, layers, max length, dtype) and texts, and cached on disk;
   every strategy pools from the same states.
2. **Resample** (:mod:`.protocol`): repeated stratified k-fold on one file, or train/test,
   the same splits for every strategy (paired); optionally a learning curve (:mod:`.curve`).
3. **Record** (:mod:`.result`): every number, the settings and the versions, as one result;
   :mod:`.report` formats it as a table and a plot.

Every random choice takes a seed derived from ``settings.seed``, so the same call gives the
same numbers.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from seqpool.errors import SeqpoolError
from seqpool.evaluation.data import (LabelledTexts, check_cv_data, check_train_test, is_local, labelled_texts,
                                     load_labelled)
from seqpool.evaluation.report import check_output_paths
from seqpool.evaluation.save_best import check_save_dir
from seqpool.evaluation.settings import ALPHA, EvaluationSettings, check_strategies, parameter_error
from seqpool.io import text_digest
from seqpool.io.ownership import check_outputs_against_inputs
from seqpool.io.ownership import input_paths
from seqpool.threads import limited_threads

if TYPE_CHECKING:  # the encoding and fitting stages (torch, scipy, sklearn) import when they run,
    # so a bad option, path or file is reported without loading them
    from seqpool.evaluation.cache import EncodedStates
    from seqpool.evaluation.result import EvaluationResult

Log = Callable[[str], None]
TrainInput = str | os.PathLike | LabelledTexts | tuple[Sequence[str], Sequence[Any]]


class EvaluationWarning(UserWarning):
    """Something the user should know that does not stop the run (e.g. an unwritable cache)."""


def evaluate(
    train: TrainInput,
    test: TrainInput | None = None,
    strategies: Sequence[str] | str | None = None,
    *,
    settings: EvaluationSettings | None = None,
    encoder: Any = None,
    json_path: str | os.PathLike | None = None,
    plot_path: str | os.PathLike | None = None,
    save_best: str | os.PathLike | None = None,
    overwrite: bool = False,
    progress: bool | None = False,
    log: Log | None = None,
    warn: Log | None = None,
    **overrides: Any,
) -> EvaluationResult:
    """Compare pooling strategies on a labelled corpus; see the module docstring for the protocol.

    ``train`` (and ``test``) is a local jsonl/json/csv/tsv/parquet file (``-``: stdin), a Hub
    dataset name, a :class:`LabelledTexts` or a ``(texts, labels)`` tuple. How to evaluate is
    an :class:`EvaluationSettings` (``settings=``), or its fields as keyword arguments
    (``folds=5, seed=1``), which override ``settings``. ``encoder`` (an
    :class:`~seqpool.encoder.Encoder`) overrides ``model``/``layer``/``max_length``/``device``/``dtype``.
    ``json_path`` / ``plot_path`` are checked before anything is read (never an input, nor the
    same file as one) and written at the end. ``save_best`` names a folder for the winner
    fitted on all training data (a :class:`~seqpool.classifier.PooledClassifier`, see
    :mod:`.save_best`); it must be new or empty, or with ``overwrite`` a folder an earlier
    ``save_best`` wrote, never the working folder nor one holding an input; checked first too.
    ``log`` gets progress lines; ``warn`` gets warnings (default: :class:`EvaluationWarning`
    through :mod:`warnings`), which the result also records.
    """
    settings = EvaluationSettings.build(settings, overrides)
    names = check_strategies(strategies)
    check_output_paths(json_path, plot_path)
    check_outputs_against_inputs({"json_path": json_path, "plot_path": plot_path},
                                 input_paths(train, test, settings.model),
                                 folders={"save_best": None if save_best is None else Path(save_best).expanduser()})
    save_dir = check_save_dir(save_best, overwrite) if save_best is not None else None
    log = log or (lambda message: None)
    with limited_threads(settings.threads):
        result = _evaluate(train, test, names, settings, encoder, progress, log, warn or _warn, save_dir)
    if json_path is not None:
        result.to_json(json_path)
        log(f"wrote {os.fspath(json_path)}")
    if plot_path is not None:
        result.plot(plot_path)
        log(f"wrote {os.fspath(plot_path)}")
    return result


def _warn(message: str) -> None:
    warnings.warn(message, EvaluationWarning, stacklevel=4)


def load_data(train: TrainInput, test: TrainInput | None,
              settings: EvaluationSettings) -> tuple[LabelledTexts, LabelledTexts | None]:
    """Both sides read, labelled in one class order and checked against the protocol."""
    s = settings
    if s.split is not None and not isinstance(train, (LabelledTexts, tuple)) and is_local(train):
        raise parameter_error(f"split={s.split!r} picks a split of a Hub dataset, but {os.fspath(train)} is a local "
                              f"file (read whole); drop split", "split")
    train_data = _as_labelled(train, s, s.split)
    test_data = None
    if test is not None:
        test_data = _as_labelled(test, s, s.test_split, label_names=train_data.label_names)
        check_train_test(train_data, test_data)
    else:
        check_cv_data(train_data, s.folds)
    return train_data, test_data


def _as_labelled(data: TrainInput, settings: EvaluationSettings, split: str | None,
                 label_names: Sequence[Any] | None = None) -> LabelledTexts:
    if isinstance(data, LabelledTexts):
        if label_names is None:
            return data
        raw = [data.label_names[i] for i in data.labels]
        return labelled_texts(data.texts, raw, data.source, label_names, data.lines)
    if isinstance(data, tuple):
        texts, labels = (list(part) for part in data)
        if len(texts) != len(labels):
            raise SeqpoolError(f"{len(texts)} texts but {len(labels)} labels")
        try:
            return labelled_texts(texts, labels, "in-memory data", label_names)
        except SeqpoolError as error:
            raise SeqpoolError(f"cannot use these texts and labels: {error}") from None
    return load_labelled(data, settings.text_field, settings.label_field, split, label_names, settings.input_format)


def _evaluate(train: TrainInput, test: TrainInput | None, names: tuple[str, ...], settings: EvaluationSettings,
              encoder: Any, progress: bool | None, log: Log, warn: Log,
              save_dir: Path | None = None) -> EvaluationResult:
    told: list[str] = []

    def warn_and_record(message: str) -> None:
        told.append(message)
        warn(message)

    start = time.perf_counter()
    train_data, test_data = load_data(train, test, settings)
    # the stages below need torch, scipy and sklearn: imported once the cheap checks have passed
    from seqpool.evaluation.cache import cached_states
    from seqpool.evaluation.curve import plan_curve, run_learning_curve
    from seqpool.evaluation.fitting import Corpus, Fitter, is_learned
    from seqpool.evaluation.protocol import cross_validate, pairs, train_test
    from seqpool.evaluation.result import EvaluationResult, versions
    from seqpool.evaluation.workers import FitWorkers

    curve_rows = plan_curve(train_data, test_data, settings.learning_curve, settings.folds, settings.seed)
    load_seconds = time.perf_counter() - start

    if encoder is None:
        from seqpool.encoder import Encoder

        encoder = Encoder(settings.model, device=settings.device, dtype=settings.dtype,
                          max_length=settings.max_length, layer=settings.layer, workers=settings.threads)
    directory, writable = _cache_folder(settings, warn_and_record)
    sides = [data for data in (train_data, test_data) if data is not None]
    log(f"encoding {' + '.join(str(len(d)) for d in sides)} texts with {encoder.name_or_path}")
    plan = encoder.layer_plan(names)  # every hidden layer a strategy needs (mean@-2, a layer mix), one pass
    if save_dir is not None:  # any strategy may win: each must be savable, known before encoding
        from seqpool.evaluation.save_best import winner_input

        for name in names:
            winner_input(name, plan, encoder.layers)
    encoded = [cached_states(encoder, data.texts, directory, settings.batch_size, progress, log,
                             warn_and_record, writable, plan.blocks) for data in sides]
    pooling_start = time.perf_counter()
    parameter_free = [s for s in names if not is_learned(s)]
    corpora = [Corpus(e.states, plan.pool_states(e.states, parameter_free) if parameter_free else {}, data.labels)
               for e, data in zip(encoded, sides)]
    pool_seconds = time.perf_counter() - pooling_start

    fitter = Fitter(settings, len(train_data.label_names), plan)
    with FitWorkers(fitter, corpora, settings.threads) as workers:
        fit_start = time.perf_counter()
        if test_data is None:
            runs, results, comparisons, protocol = cross_validate(names, workers, corpora[0], settings, log)
        else:
            runs, results, comparisons, protocol = train_test(names, workers, corpora[0], corpora[1], settings,
                                                              log)
        fit_seconds = time.perf_counter() - fit_start
        walls = protocol.pop("fit_walls")

        curve_start = time.perf_counter()
        curve = None
        if curve_rows is not None:
            pool_rows, test_rows, description = curve_rows
            curve = run_learning_curve(names, workers, corpora[0], pool_rows, corpora[-1], test_rows, settings, log)
            curve["test"] = description
        curve_seconds = time.perf_counter() - curve_start if curve is not None else 0.0

    protocol.update(_protocol(names, settings, encoder, train_data, test_data, encoded,
                              protocol.pop("inner_folds_used")))
    best = next(name for name, res in results.items() if res.rank == 1)
    length_analysis = None
    if settings.by_length is not None:
        from seqpool.evaluation.by_length import by_length

        lengths = corpora[-1].states.lengths().numpy()
        length_analysis = by_length(names, runs, lengths, settings.by_length, protocol, best,
                                    lambda winner: pairs(names, winner, settings.all_pairs), settings.seed,
                                    settings.n_resamples)
    saved, save_seconds = None, 0.0
    if save_dir is not None:
        save_start = time.perf_counter()
        saved = _save_best(best, corpora[0], train_data, settings, encoder, save_dir, plan)
        save_seconds = time.perf_counter() - save_start
        log(f"saved {best} fitted on all {len(train_data)} training texts to {save_dir}")
    timings = {
        "load_data_seconds": load_seconds,
        "encode_seconds": sum(e.seconds for e in encoded if not e.cache_hit),
        "cache_load_seconds": sum(e.seconds for e in encoded if e.cache_hit),
        "pool_seconds": pool_seconds,
        "fit_seconds": fit_seconds,
        "fit_seconds_parameter_free": walls["parameter_free"],
        "fit_seconds_learned": walls["learned"],
        "fit_seconds_by_strategy": {s: runs[s].seconds for s in names},
        "learning_curve_seconds": curve_seconds,
        "save_best_seconds": save_seconds,
        "evaluation_seconds": pool_seconds + fit_seconds + curve_seconds,
        "total_seconds": time.perf_counter() - start,
    }
    return EvaluationResult(results, comparisons, best, protocol, timings, versions(), curve, told,
                            length_analysis, saved)


def _save_best(best: str, corpus: Any, data: LabelledTexts, settings: EvaluationSettings, encoder: Any,
               directory: Path, plan: Any) -> dict[str, Any]:
    """Fit the winner on every training row of its own layer's states, save it atomically with
    that layer choice, and say what was saved."""
    import numpy as np

    from seqpool.evaluation.fitting import is_learned
    from seqpool.evaluation.save_best import fit_best, save_atomically, winner_input
    from seqpool.io.ownership import new_run_id

    winner = winner_input(best, plan, encoder.layers)
    layers = list(winner.layers)
    info = {"model": str(encoder.name_or_path), "layer": layers[0] if len(layers) == 1 else layers,
            "max_length": encoder.max_length}
    states = corpus.states
    if winner.channels != slice(0, states.dim):
        states = type(states)(states.states[:, winner.channels], states.offsets)
    learned = is_learned(best)
    pooled = None if learned else corpus.pooled[best]
    model = fit_best(winner.strategy, learned, states, pooled, corpus.labels, data.label_names, settings, info)
    save_atomically(model, directory, new_run_id())
    accuracy = float(np.mean(model.predict(states) == corpus.labels))
    return {"strategy": best, "saved_strategy": winner.strategy, "path": str(directory), "learned": learned,
            "examples": int(len(corpus.labels)), "chosen_c": getattr(model, "chosen_c_", None),
            "training_accuracy": accuracy, "encoder": info}


def _cache_folder(settings: EvaluationSettings, warn: Log) -> tuple[Path | None, bool]:
    """(cache folder or None, whether it can be written); an unwritable folder is a warning,
    given now (before encoding), and the run continues reading what is there."""
    from seqpool.evaluation.cache import cache_write_problem, default_cache_dir

    if not settings.cache:
        return None, False
    directory = Path(settings.cache_dir).expanduser() if settings.cache_dir is not None else default_cache_dir()
    problem = cache_write_problem(directory)
    if problem is not None:
        warn(f"cannot write the token-state cache in {directory} ({problem}); continuing without caching")
        return directory, False
    return directory, True


def _protocol(names: Sequence[str], settings: EvaluationSettings, encoder: Any, train: LabelledTexts,
              test: LabelledTexts | None, encoded: list[EncodedStates],
              inner_folds: int | list[int]) -> dict[str, Any]:
    """Everything needed to reproduce the numbers (``inner_folds``: those used, not the one asked for)."""
    from seqpool.evaluation.cache import encoder_fingerprint

    s = settings
    return {
        "seed": s.seed, "strategies": list(names), "metric": "accuracy", "secondary_metric": "macro_f1",
        "classifier": {"parameter_free": "StandardScaler + LogisticRegression (lbfgs, L2)", "tune_c": s.tune,
                       "c_grid": list(s.c_grid), "inner_folds": inner_folds,
                       "inner_folds_requested": s.inner_folds,
                       "learned": "PooledClassifier on frozen token states, early stopping on an inner split",
                       "learned_options": dict(s.learned_options)},
        "comparisons": "all pairs" if s.all_pairs else "best against each other", "alpha": ALPHA,
        "multiple_comparisons": "holm", "bootstrap_resamples": s.n_resamples,
        "model": str(encoder.name_or_path), "layer": list(encoder.layers), "max_length": encoder.max_length,
        "encoder": encoder_fingerprint(encoder),
        "data": {"train": _describe(train), "test": _describe(test) if test is not None else None},
        "cache": [e.cache_path for e in encoded], "cache_hit": [e.cache_hit for e in encoded],
        "settings": s.to_dict(),
    }


def _describe(data: LabelledTexts) -> dict[str, Any]:
    counts = data.class_counts()
    return {"source": data.source, "examples": len(data), "sha256": text_digest(data.texts, data.labels),
            "labels": [str(name) for name in data.label_names],
            "class_counts": {str(name): int(count) for name, count in zip(data.label_names, counts)}}
