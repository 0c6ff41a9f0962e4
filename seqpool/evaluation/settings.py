"""Every knob of :func:`~seqpool.evaluation.evaluate` in one frozen dataclass.

One object instead of ~30 loose keyword arguments: it is validated once, before any data is
read or any model loaded, it travels through the protocol as a unit, and it is recorded in the
JSON result (``protocol["settings"]``) so a run can be rebuilt with
``EvaluationSettings.from_dict(...)``. Error messages name the Python parameters (``folds``);
the CLI maps them to its flags through the ``parameters`` attribute of the error.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from seqpool.errors import SeqpoolError
from seqpool.registry import default_comparison, get_strategy

#: The curated comparison ``evaluate`` runs when no strategies are named: the classic
#: parameter-free strategies plus the two classic learned ones, read from the records that
#: declare ``in_default_comparison``. The field is opt-in, so a new operator (``power_mean``,
#: ``mean_std``, ...) or a plugin never silently joins the default run (and its cost); name
#: them to compare them.
DEFAULT_STRATEGIES: tuple[str, ...] = default_comparison()
#: SentEval's grid of inverse L2 strengths for the logistic regression.
DEFAULT_C_GRID: tuple[float, ...] = tuple(2.0 ** k for k in range(-2, 4))
#: Comparisons with a Holm-adjusted p-value below this are reported as significant.
ALPHA = 0.05

_SEED_STREAMS = {"split": 1, "fit": 2, "inner": 3, "bootstrap": 4, "curve": 5, "holdout": 6, "final": 7}


def parameter_error(message: str, *parameters: str) -> SeqpoolError:
    """A :class:`SeqpoolError` that remembers which Python parameters its message names,
    so a front end (the CLI) can say ``--inner-folds`` where the library says ``inner_folds``."""
    return SeqpoolError(message, parameters=parameters)


def derive_seed(seed: int, stream: str, *keys: int) -> int:
    """An independent 32-bit seed for one random choice (numpy SeedSequence of the keys)."""
    entropy = [int(seed) % 2**32, _SEED_STREAMS[stream], *(int(k) for k in keys)]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


def check_strategies(strategies: Sequence[str] | str | None) -> tuple[str, ...]:
    """Known, de-duplicated strategy names (``None`` -> :data:`DEFAULT_STRATEGIES`)."""
    if strategies is None:
        return DEFAULT_STRATEGIES
    if isinstance(strategies, str):
        strategies = [s.strip() for s in strategies.split(",") if s.strip()]
    chosen = tuple(dict.fromkeys(get_strategy(s).name for s in strategies))
    if len(chosen) < 1:
        raise parameter_error("no strategy given; pass e.g. strategies='mean,cls,max'", "strategies")
    return chosen


def parse_sizes(sizes: Sequence[int] | str | None) -> tuple[int, ...]:
    """Learning-curve sizes (examples per class), sorted and de-duplicated."""
    if sizes is None:
        return ()
    if isinstance(sizes, str):
        try:
            sizes = [int(x) for x in sizes.split(",") if x.strip()]
        except ValueError:
            raise parameter_error(f"learning_curve takes comma-separated integers like 8,16,32, got {sizes!r}",
                                  "learning_curve") from None
    sizes = sorted(set(int(x) for x in sizes))
    if sizes and sizes[0] < 1:
        raise parameter_error(f"learning_curve sizes must be at least 1 example per class, got {sizes[0]}",
                              "learning_curve")
    return tuple(sizes)


@dataclass(frozen=True)
class EvaluationSettings:
    """How to evaluate: the protocol, the classifiers, the data columns, the encoder and the cache.

    Without a test set: ``repeats`` x stratified ``folds``-fold CV. With one: fit on train,
    score on test, learned strategies once per repeat with a new seed. ``tune`` chooses the
    logistic regression's C from ``c_grid`` by an ``inner_folds`` CV of the training part.
    ``learned_options`` go to :meth:`PooledClassifier.fit`. ``seed_variance`` (CV,
    ``repeats > 1``) adds fits that split a learned strategy's variance into split and seed
    parts. ``learning_curve`` lists examples per class for balanced subsamples, each drawn
    ``curve_experiments`` times. ``by_length`` (K) also scores every strategy in K token-length
    quantile bins (ties kept together, so fewer bins when lengths repeat).
    ``model``/``layer``/``max_length``/``device``/``dtype`` build
    the encoder; ``threads`` caps torch and BLAS threads for the run and is the number of
    single-threaded processes the fits run in (:mod:`.workers`; default: every CPU).
    """

    folds: int = 10
    repeats: int = 1
    seed: int = 0
    tune: bool = True
    c_grid: tuple[float, ...] = DEFAULT_C_GRID
    inner_folds: int = 5
    learned_options: dict[str, Any] = field(default_factory=dict)
    seed_variance: bool = True
    all_pairs: bool = False
    learning_curve: tuple[int, ...] = ()
    curve_experiments: int = 10
    by_length: int | None = None
    n_resamples: int = 9999
    text_field: str = "text"
    label_field: str = "label"
    input_format: str | None = None
    split: str | None = None
    test_split: str | None = "test"
    model: str | None = None
    layer: int | tuple[int, ...] = -1
    max_length: int | None = None
    device: str | None = None
    dtype: str | None = None
    batch_size: int | None = None
    threads: int | None = None
    cache: bool = True
    cache_dir: str | None = None

    def __post_init__(self) -> None:
        normalize = {
            "c_grid": tuple(float(c) for c in self.c_grid) if self.c_grid is not None else (),
            "learned_options": dict(self.learned_options or {}),
            "learning_curve": parse_sizes(self.learning_curve),
            "layer": self.layer if isinstance(self.layer, int) else tuple(int(x) for x in self.layer),
            "model": None if self.model is None else os.fspath(self.model),
            "cache_dir": None if self.cache_dir is None else os.fspath(self.cache_dir),
        }
        for name, value in normalize.items():
            object.__setattr__(self, name, value)
        self._check()

    def _check(self) -> None:
        at_least = {"folds": 2, "repeats": 1, "curve_experiments": 1, "n_resamples": 1}
        for name, minimum in at_least.items():
            _check_count(name, getattr(self, name), minimum)
        if self.by_length is not None:
            _check_count("by_length", self.by_length, 2, " (the number of token-length bins)")
        for name in ("max_length", "batch_size", "threads"):
            if getattr(self, name) is not None:
                _check_count(name, getattr(self, name), 1)
        if self.tune:
            _check_count("inner_folds", self.inner_folds, 2, " (or set tune=False)", "tune=False")
        if not self.c_grid or min(self.c_grid) <= 0 or not all(np.isfinite(self.c_grid)):
            raise parameter_error(f"c_grid must hold positive numbers, got {list(self.c_grid)}", "c_grid")
        epochs = self.learned_options.get("max_epochs")
        if epochs is not None:
            _check_count("max_epochs", epochs, 1, " (in learned_options)")

    def replace(self, **changes: Any) -> "EvaluationSettings":
        """A copy with ``changes`` applied (and validated)."""
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON types (tuples become lists)."""
        data = dataclasses.asdict(self)
        for name in ("c_grid", "learning_curve"):
            data[name] = list(data[name])
        if isinstance(data["layer"], tuple):
            data["layer"] = list(data["layer"])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "EvaluationSettings":
        """The settings recorded by :meth:`to_dict` (e.g. ``result.protocol["settings"]``)."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise SeqpoolError(f"unknown evaluation settings: {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def build(cls, settings: "EvaluationSettings | None", overrides: dict[str, Any]) -> "EvaluationSettings":
        """``settings`` (or the defaults) with keyword ``overrides``; unknown names are a user error."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise SeqpoolError(f"evaluate() got unknown setting{'s' if len(unknown) > 1 else ''} "
                               f"{', '.join(unknown)}; see EvaluationSettings for the valid names")
        if settings is None:
            return cls(**overrides)
        return settings.replace(**overrides) if overrides else settings


def _check_count(name: str, value: Any, minimum: int, hint: str = "", *more: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise parameter_error(f"{name} must be a whole number, got {value!r}", name, *more)
    if value < minimum:
        raise parameter_error(f"{name} must be at least {minimum}, got {value}{hint}", name, *more)
