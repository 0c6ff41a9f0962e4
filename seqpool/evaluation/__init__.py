"""Which pooling strategy should I use for my task, and is the difference real?

``seqpool evaluate`` is a thin CLI over :func:`evaluate`. The package follows scikit-learn's
``model_selection``: one small module per concern, the settings in one dataclass.

- :mod:`.settings`    :class:`EvaluationSettings` (every knob, validated once), strategy names, seeds
- :mod:`.data`        reading labelled texts (the reader ``seqpool embed`` uses) and checking labels
- :mod:`.benchmarks`  MR and TREC for the examples: local SentEval files, else the Hub by name
- :mod:`.cache`       token states encoded once, cached on disk by encoder fingerprint and texts
- :mod:`.classifiers` the logistic regression (C by inner CV) and the learned :class:`PooledClassifier`
- :mod:`.fitting`     one strategy fitted and scored on one split (:class:`Corpus`, :class:`Runs`, the fitter)
- :mod:`.protocol`    repeated stratified k-fold CV or train/test, paired statistics, Holm
- :mod:`.curve`       learning curves on balanced subsamples
- :mod:`.records`     what evaluate measured, as plain dataclasses
- :mod:`.result`      :class:`EvaluationResult` and strict JSON
- :mod:`.report`      the table and the plot (presentation only), output-path checks
- :mod:`.run`         :func:`evaluate`, which checks everything cheap before anything expensive

Names load on first use (like the package root), so ``EvaluationSettings`` and the checks
before any encoding import neither torch nor scikit-learn.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from seqpool._lazy import lazy_exports

_MODULES: dict[str, tuple[str, ...]] = {
    "benchmarks": ("load_benchmark",),
    "cache": ("EncodedStates", "cache_write_problem", "cached_states", "default_cache_dir", "encode_states",
              "encoder_fingerprint", "states_cache_path"),
    "classifiers": ("choose_c", "fit_predict_learned", "fit_predict_logistic"),
    "curve": ("learning_curve_samples",),
    "data": ("LabelledTexts", "check_cv_data", "check_train_test", "clean_label", "labelled_texts",
             "load_labelled", "read_hub"),
    "protocol": ("cv_splits",),
    "report": ("check_output_paths", "format_table", "plot_result"),
    "result": ("Comparison", "EvaluationResult", "StrategyResult", "versions"),
    "run": ("EvaluationWarning", "TrainInput", "evaluate", "load_data"),
    "settings": ("ALPHA", "DEFAULT_C_GRID", "DEFAULT_STRATEGIES", "EvaluationSettings", "check_strategies",
                 "derive_seed"),
}
#: public name -> the module that defines it
_EXPORTS: dict[str, str] = {name: f"{__name__}.{module}" for module, names in _MODULES.items() for name in names}
_EXPORTS.update(text_digest="seqpool.io", limited_threads="seqpool.threads")

__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals(), tuple(_MODULES))

if TYPE_CHECKING:  # static analysers and IDEs see the eager imports
    from seqpool.evaluation.benchmarks import load_benchmark
    from seqpool.evaluation.cache import (EncodedStates, cache_write_problem, cached_states, default_cache_dir,
                                          encode_states, encoder_fingerprint, states_cache_path)
    from seqpool.evaluation.classifiers import choose_c, fit_predict_learned, fit_predict_logistic
    from seqpool.evaluation.curve import learning_curve_samples
    from seqpool.evaluation.data import (LabelledTexts, check_cv_data, check_train_test, clean_label,
                                         labelled_texts, load_labelled, read_hub)
    from seqpool.evaluation.protocol import cv_splits
    from seqpool.evaluation.report import check_output_paths, format_table, plot_result
    from seqpool.evaluation.result import Comparison, EvaluationResult, StrategyResult, versions
    from seqpool.evaluation.run import EvaluationWarning, TrainInput, evaluate, load_data
    from seqpool.evaluation.settings import (ALPHA, DEFAULT_C_GRID, DEFAULT_STRATEGIES, EvaluationSettings,
                                             check_strategies, derive_seed)
    from seqpool.io import text_digest
    from seqpool.threads import limited_threads
