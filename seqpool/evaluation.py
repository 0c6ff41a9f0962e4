"""Which pooling strategy should I use for my task, and is the difference real?

The protocol, as a library (``seqpool evaluate`` is a thin CLI over :func:`evaluate`):

1. **Encode once.** Token states of every text are computed once per (model, layer,
   max_length, texts) and cached on disk as fp16 safetensors, keyed by a content hash;
   every strategy pools from the same states, and a second run skips the encoder.
2. **Parameter-free strategies**: standardised pooled vectors -> scikit-learn
   ``LogisticRegression``, L2 strength chosen by an inner stratified CV on the training
   part only (SentEval's grid ``2^-2 .. 2^3``), refit, scored on the held-out part.
3. **Learned strategies** (``attention``, ``se_mean``): :class:`PooledClassifier` trained on
   the frozen token states of the training part (early stopping on an inner split of it),
   with a seed derived from ``(seed, repeat, fold)``.
4. **One file**: repeated stratified k-fold, the same splits for every strategy (paired).
   **Train + test files**: fit on train, score on test; bootstrap over test examples
   (and over seeds for learned strategies when ``repeats > 1``).
5. **Statistics** from :mod:`seqpool.stats`: Nadeau-Bengio corrected CIs and paired t-tests
   for CV, McNemar / paired bootstrap for a fixed test split, Holm across comparisons.
   The best strategy is picked on the same scores it is then compared with; the
   simulation in ``tests/test_stats.py`` checks that this procedure still keeps the
   family-wise error near 5 % when all strategies are equally good.

Every random choice takes a seed derived from ``seed`` (recorded in the result), so the
same call gives the same numbers.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch

from seqpool import __version__
from seqpool.errors import SeqpoolError
from seqpool.layers import LEARNED_STRATEGIES, POOLER_STRATEGIES
from seqpool.pooling import STRATEGIES, check_strategy
from seqpool.serialization import atomic_write_text
from seqpool.states import TokenStates
from seqpool import stats

#: Every parameter-free strategy plus the learned ones.
DEFAULT_STRATEGIES: tuple[str, ...] = STRATEGIES + LEARNED_STRATEGIES
#: SentEval's grid of inverse L2 strengths for the logistic regression.
DEFAULT_C_GRID: tuple[float, ...] = tuple(2.0 ** k for k in range(-2, 4))
#: Comparisons with a Holm-adjusted p-value below this are reported as significant.
ALPHA = 0.05
#: fp16 overflows at 65504; token states beyond this are cached in float32 instead.
_FP16_SAFE = 6.0e4
#: Values per weight tensor that the cache key hashes (all of them for smaller tensors).
_FINGERPRINT_VALUES = 1 << 20
_SEED_STREAMS = {"split": 1, "fit": 2, "inner": 3, "bootstrap": 4, "curve": 5, "holdout": 6}
_READERS = {".jsonl": "json", ".json": "json", ".ndjson": "json", ".csv": "csv", ".tsv": "csv",
            ".parquet": "parquet", ".pq": "parquet"}

Log = Callable[[str], None]


def derive_seed(seed: int, stream: str, *keys: int) -> int:
    """An independent 32-bit seed for one random choice (numpy SeedSequence of the keys)."""
    entropy = [int(seed) % 2**32, _SEED_STREAMS[stream], *(int(k) for k in keys)]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])


# -- data -------------------------------------------------------------------------------------


@dataclass
class LabelledTexts:
    """Texts with class indices; ``label_names[i]`` is the original label of class ``i``."""

    texts: list[str]
    labels: np.ndarray
    label_names: list[Any]
    source: str

    def __len__(self) -> int:
        return len(self.texts)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.label_names))


def read_table(source: str | os.PathLike, split: str | None = None) -> Any:
    """A ``datasets.Dataset`` from a local jsonl/csv/tsv/parquet file or a Hub dataset name.

    Local files are converted in a throw-away cache folder, so nothing stale is ever reused.
    """
    import datasets

    path = Path(source).expanduser()
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        if path.exists():
            with tempfile.TemporaryDirectory(prefix="seqpool-data-") as scratch:
                return _read_local(datasets, path, scratch)
        if path.suffix.lower() in _READERS:
            raise SeqpoolError(f"input file not found: {source}")
        return _read_hub(datasets, str(source), split)
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def _read_local(datasets: Any, path: Path, scratch: str) -> Any:
    if path.is_dir():
        raise SeqpoolError(f"{path} is a folder; pass a .jsonl, .csv, .tsv or .parquet file")
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise SeqpoolError(f"cannot tell the format of {path}: use a .jsonl, .csv, .tsv or .parquet file")
    if path.stat().st_size == 0:
        raise SeqpoolError(f"{path} is empty: it needs one labelled text per row")
    options = {"delimiter": "\t"} if path.suffix.lower() == ".tsv" else {}
    try:
        table = datasets.load_dataset(reader, data_files=str(path), split="train", cache_dir=scratch,
                                      keep_in_memory=True, **options)
    except Exception as error:  # datasets/pyarrow raise many types for a malformed file
        raise SeqpoolError(f"cannot read {path} as {reader}: {_first_line(error)}") from None
    if len(table) == 0:
        raise SeqpoolError(f"{path} is empty: it needs one labelled text per row")
    return table


def _read_hub(datasets: Any, name: str, split: str | None) -> Any:
    """A Hub dataset through the usual Hugging Face cache (downloads are worth keeping)."""
    try:
        return datasets.load_dataset(name, split=split or "train")
    except Exception as error:
        raise SeqpoolError(f"{name!r} is neither a local file nor a dataset loadable from the Hub "
                           f"(split {split or 'train'!r}): {_first_line(error)}") from None


def _first_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return (text[:300] or type(error).__name__)


def labelled_texts(table: Any, text_field: str, label_field: str, source: str,
                   label_names: Sequence[Any] | None = None) -> LabelledTexts:
    """Validate the two columns and turn labels (ints or strings) into class indices.

    ``label_names`` fixes the class order (e.g. the training file's); labels outside it
    are appended after it.
    """
    columns = list(table.column_names)
    for what, name in (("text", text_field), ("label", label_field)):
        if name not in columns:
            flag = "--text-field" if what == "text" else "--label-field"
            raise SeqpoolError(f"{source} has no {what} column {name!r} (columns: {', '.join(columns)}); "
                               f"choose one with {flag}")
    texts, raw = list(table[text_field]), list(table[label_field])
    for row, (text, label) in enumerate(zip(texts, raw)):
        if not isinstance(text, str):
            raise SeqpoolError(f"{source} row {row + 1}: text is {type(text).__name__}, not a string")
        if label is None or isinstance(label, (list, dict)):
            raise SeqpoolError(f"{source} row {row + 1}: label {label!r} is missing or not a single value")
    feature = table.features.get(label_field)
    if hasattr(feature, "names") and hasattr(feature, "int2str"):  # a Hub ClassLabel: use the names
        raw = [feature.int2str(int(label)) for label in raw]
    known = list(label_names) if label_names is not None else sorted(set(raw), key=_label_order)
    extra = sorted(set(raw) - set(known), key=_label_order)
    names = known + extra
    index = {name: i for i, name in enumerate(names)}
    labels = np.asarray([index[label] for label in raw], dtype=np.int64)
    return LabelledTexts(texts, labels, names, source)


def _label_order(label: Any) -> tuple[str, Any]:
    """Sort ints numerically and strings alphabetically, even if a column mixes them."""
    return (type(label).__name__, label)


def load_labelled(source: str | os.PathLike, text_field: str = "text", label_field: str = "label",
                  split: str | None = None, label_names: Sequence[Any] | None = None) -> LabelledTexts:
    """Read a labelled corpus through ``datasets`` (local file or Hub dataset name)."""
    return labelled_texts(read_table(source, split), text_field, label_field, str(source), label_names)


def check_cv_data(data: LabelledTexts, folds: int) -> None:
    """Enough classes and enough examples per class for stratified ``folds``-fold CV."""
    _check_classes(data)
    if folds < 2:
        raise SeqpoolError(f"--folds must be at least 2, got {folds}")
    counts = data.class_counts()
    smallest = int(np.argmin(counts))
    if counts[smallest] < folds:
        raise SeqpoolError(
            f"class {data.label_names[smallest]!r} has {counts[smallest]} examples but {folds}-fold CV needs at "
            f"least {folds} per class; lower --folds to {max(2, int(counts[smallest]))} or add examples")


def check_train_test(train: LabelledTexts, test: LabelledTexts) -> None:
    _check_classes(train)
    if min(train.class_counts()) < 2:
        smallest = int(np.argmin(train.class_counts()))
        raise SeqpoolError(f"class {train.label_names[smallest]!r} has a single training example; "
                           f"every class needs at least 2")
    seen = set(train.label_names)
    test_labels = {test.label_names[i] for i in np.unique(test.labels)}
    if not seen & test_labels:
        raise SeqpoolError(f"{train.source} and {test.source} share no label: train has "
                           f"{_preview(seen)}, test has {_preview(test_labels)}; check --label-field")


def _check_classes(data: LabelledTexts) -> None:
    if len(data) == 0:
        raise SeqpoolError(f"{data.source} has no rows")
    present = np.flatnonzero(data.class_counts())
    if len(present) < 2:
        raise SeqpoolError(f"{data.source} has a single class ({data.label_names[present[0]]!r}); "
                           f"a classifier needs at least 2")


def _preview(labels: Iterable[Any], limit: int = 5) -> str:
    items = sorted(labels, key=_label_order)
    shown = ", ".join(repr(x) for x in items[:limit])
    return shown + (", ..." if len(items) > limit else "")


def check_strategies(strategies: Sequence[str] | str | None) -> tuple[str, ...]:
    """Known, de-duplicated strategy names (``None`` -> :data:`DEFAULT_STRATEGIES`)."""
    if strategies is None:
        return DEFAULT_STRATEGIES
    if isinstance(strategies, str):
        strategies = [s.strip() for s in strategies.split(",") if s.strip()]
    chosen = tuple(dict.fromkeys(check_strategy(s, POOLER_STRATEGIES) for s in strategies))
    if len(chosen) < 1:
        raise SeqpoolError("no strategy given; pass e.g. --strategies mean,cls,max")
    return chosen


# -- encoding once, with a cache -----------------------------------------------------------


def text_digest(texts: Sequence[str], labels: Sequence[int] | None = None) -> str:
    """sha256 of the texts (length-prefixed, so boundaries count) and optionally labels."""
    digest = hashlib.sha256()
    for text in texts:
        data = text.encode("utf-8")
        digest.update(len(data).to_bytes(8, "little") + data)
    if labels is not None:
        digest.update(np.asarray(labels, dtype=np.int64).tobytes())
    return digest.hexdigest()


def encoder_fingerprint(encoder: Any) -> dict[str, Any]:
    """What determines the token states besides the texts: model, weights, tokenizer, layer.

    Weights are fingerprinted by the bytes of every tensor, or of an evenly strided sample of
    about a million values (plus both ends) for larger tensors: any fine-tune changes them,
    and no gigabytes are hashed. Bytes, not float sums, so thread counts cannot change it.
    """
    weights = hashlib.sha256()
    for name, tensor in sorted(encoder.model.state_dict().items()):
        flat = tensor.detach().reshape(-1).cpu()
        stride = max(1, flat.numel() // _FINGERPRINT_VALUES)
        sample = torch.cat([flat[::stride], flat[-1024:]]) if stride > 1 else flat
        weights.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
        weights.update(sample.float().contiguous().numpy().tobytes())
    tokenizer = encoder.tokenizer
    backend = getattr(tokenizer, "backend_tokenizer", None)
    vocabulary = backend.to_str() if backend is not None else json.dumps(sorted(tokenizer.get_vocab().items()))
    config = encoder.model.config.to_json_string(use_diff=False) if hasattr(encoder.model, "config") else ""
    return {"model": str(encoder.name_or_path), "layers": list(encoder.layers), "max_length": encoder.max_length,
            "dtype": str(encoder.dtype), "config_sha256": hashlib.sha256(config.encode()).hexdigest(),
            "weights_sha256": weights.hexdigest(),
            "tokenizer_sha256": hashlib.sha256(f"{type(tokenizer).__name__}{vocabulary}".encode()).hexdigest()}


def default_cache_dir() -> Path:
    """``$SEQPOOL_CACHE`` or ``~/.cache/seqpool``."""
    return Path(os.environ.get("SEQPOOL_CACHE") or Path.home() / ".cache" / "seqpool")


def states_cache_path(cache_dir: str | os.PathLike, fingerprint: dict[str, Any], texts: Sequence[str]) -> Path:
    key = hashlib.sha256(json.dumps({"encoder": fingerprint, "texts": text_digest(texts)},
                                    sort_keys=True).encode()).hexdigest()
    return Path(cache_dir) / "states" / f"{key[:40]}.safetensors"


def _storage_dtype(batches: Iterable[Any], overflow: list[bool]) -> Iterable[Any]:
    """Pass batches on as fp16 unless a value would overflow it (then keep float32)."""
    for rows, hidden, mask in batches:
        real = hidden[mask]
        if real.numel() and float(real.abs().max()) >= _FP16_SAFE:
            overflow.append(True)
        else:
            hidden = hidden.half()
        yield rows, hidden, mask


def encode_states(encoder: Any, texts: Sequence[str], batch_size: int | None = None,
                  progress: bool = False) -> TokenStates:
    """Token states of ``texts`` in input order, stored in fp16 (float32 if fp16 would overflow)."""
    overflow: list[bool] = []
    states = TokenStates.from_batches(_storage_dtype(encoder.hidden_states(texts, batch_size, progress), overflow),
                                      num_texts=len(texts))
    return states.to(torch.float32 if overflow else torch.float16)


@dataclass
class EncodedStates:
    """Token states plus where they came from and what they cost."""

    states: TokenStates
    seconds: float
    cache_hit: bool
    cache_path: str | None


def cached_states(encoder: Any, texts: Sequence[str], cache_dir: str | os.PathLike | None,
                  batch_size: int | None = None, progress: bool = False, log: Log | None = None) -> EncodedStates:
    """Load the token states of ``texts`` from the cache, or encode and store them.

    ``cache_dir=None`` disables the cache. A damaged or mismatching cache file is
    re-encoded and replaced.
    """
    start = time.perf_counter()
    path = states_cache_path(cache_dir, encoder_fingerprint(encoder), texts) if cache_dir is not None else None
    if path is not None and path.is_file():
        try:
            states = TokenStates.load(path)
            if len(states) == len(texts) and states.dim == encoder.hidden_size:
                return EncodedStates(states, time.perf_counter() - start, True, str(path))
        except Exception:  # a damaged cache file is not the user's problem: re-encode
            pass
        if log:
            log(f"cache file {path} does not match; re-encoding")
    states = encode_states(encoder, texts, batch_size, progress)
    if path is not None:
        states.save(path, metadata={"seqpool_version": __version__, "model": str(encoder.name_or_path),
                                    "texts": str(len(texts))})
    return EncodedStates(states, time.perf_counter() - start, False, str(path) if path else None)


# -- classifiers ---------------------------------------------------------------------------


def _accuracy_and_f1(y_true: np.ndarray, y_pred: np.ndarray) -> tuple[np.ndarray, float]:
    from sklearn.metrics import f1_score

    correct = y_true == y_pred
    return correct, float(f1_score(y_true, y_pred, average="macro", zero_division=0))


def _fit_logistic(x: np.ndarray, y: np.ndarray, c: float) -> Any:
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=1000)).fit(x, y)


def choose_c(x: np.ndarray, y: np.ndarray, c_grid: Sequence[float], inner_folds: int, seed: int) -> float:
    """The C with the best inner stratified-CV accuracy on (x, y) (the training part only).

    Standardisation is refit inside every inner fold. Ties go to the smaller C (stronger
    regularisation). Inner folds shrink to the smallest class count; with a single example
    in some class there is nothing to tune and C=1 (or the grid's middle) is returned.
    """
    from sklearn.model_selection import StratifiedKFold

    grid = sorted(float(c) for c in c_grid)
    counts = np.bincount(y)
    folds = min(inner_folds, int(counts[counts > 0].min()))
    if len(grid) == 1:
        return grid[0]
    if folds < 2:
        return 1.0 if 1.0 in grid else grid[len(grid) // 2]
    correct = np.zeros(len(grid))
    for train, val in StratifiedKFold(folds, shuffle=True, random_state=seed).split(x, y):
        for j, c in enumerate(grid):
            correct[j] += np.sum(_fit_logistic(x[train], y[train], c).predict(x[val]) == y[val])
    return grid[int(np.argmax(correct))]


def fit_predict_logistic(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray, *,
                         c_grid: Sequence[float], tune: bool, inner_folds: int, seed: int) -> tuple[np.ndarray, float]:
    """Predictions on ``x_test`` of a standardised logistic regression fitted on the training part."""
    from threadpoolctl import threadpool_limits

    # Many small lbfgs fits: BLAS threads buy nothing here and, on a shared machine, their
    # busy-waiting made each fit 10x slower. One thread is also bit-for-bit reproducible.
    with threadpool_limits(limits=1):
        c = choose_c(x_train, y_train, c_grid, inner_folds, seed) if tune else 1.0
        return _fit_logistic(x_train, y_train, c).predict(x_test), c


def fit_predict_learned(strategy: str, train_states: TokenStates, y_train: np.ndarray, test_states: TokenStates,
                        test_rows: np.ndarray | None, num_labels: int, seed: int,
                        options: dict[str, Any]) -> np.ndarray:
    """Train a :class:`PooledClassifier` on the training states only; predict the test rows."""
    from seqpool.classifier import PooledClassifier

    model = PooledClassifier(strategy, train_states.dim, num_labels)
    model.fit(train_states, y_train, seed=seed, **options)
    return model.predict(test_states, test_rows)


# -- results ---------------------------------------------------------------------------------


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
    """Everything :func:`evaluate` measured; ``to_json`` / ``table`` / ``plot`` present it."""

    strategies: dict[str, StrategyResult]
    comparisons: list[Comparison]
    best: str
    protocol: dict[str, Any]
    timings: dict[str, Any]
    versions: dict[str, str]
    learning_curve: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return _jsonable({
            "best": self.best,
            "strategies": {name: vars(result) for name, result in self.strategies.items()},
            "comparisons": [{**{k: v for k, v in vars(c).items() if k != "extra"}, **c.extra}
                            for c in self.comparisons],
            "protocol": self.protocol, "timings": self.timings, "versions": self.versions,
            "learning_curve": self.learning_curve,
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
        return format_table(self)

    def plot(self, path: str | os.PathLike) -> Path:
        """Per-strategy score distributions with CIs (and the learning curve), as an image."""
        return plot_result(self, path)


def _jsonable(value: Any) -> Any:
    """Plain JSON types; NaN and infinity become null."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, (float, np.floating)):
        return float(value) if np.isfinite(value) else None
    return value


# -- the protocol ----------------------------------------------------------------------------


@dataclass
class _Corpus:
    """One side of an experiment: token states, pooled vectors and class indices."""

    states: TokenStates
    pooled: dict[str, np.ndarray]
    labels: np.ndarray


@dataclass
class _Setup:
    c_grid: tuple[float, ...]
    tune: bool
    inner_folds: int
    num_labels: int
    learned_options: dict[str, Any]


@dataclass
class _Runs:
    """Raw outcomes of one strategy: accuracy/macro-F1 per run and, on a fixed test set,
    per-example correctness (runs, examples)."""

    accuracy: list[float] = field(default_factory=list)
    macro_f1: list[float] = field(default_factory=list)
    correct: list[np.ndarray] = field(default_factory=list)
    chosen_c: list[float] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, y_true: np.ndarray, y_pred: np.ndarray, chosen_c: float | None, seconds: float) -> None:
        correct, f1 = _accuracy_and_f1(y_true, y_pred)
        self.accuracy.append(float(correct.mean()))
        self.macro_f1.append(f1)
        self.correct.append(correct)
        if chosen_c is not None:
            self.chosen_c.append(chosen_c)
        self.seconds += seconds


def _fit_predict(strategy: str, setup: _Setup, train: _Corpus, train_rows: np.ndarray, test: _Corpus,
                 test_rows: np.ndarray, seed: int) -> tuple[np.ndarray, float | None]:
    """Fit ``strategy`` on ``train_rows`` only and predict ``test_rows``; returns (predictions, C)."""
    if strategy in LEARNED_STRATEGIES:
        predicted = fit_predict_learned(strategy, train.states.subset(train_rows), train.labels[train_rows],
                                        test.states, test_rows, setup.num_labels, seed, setup.learned_options)
        return predicted, None
    features = train.pooled[strategy]
    return fit_predict_logistic(features[train_rows], train.labels[train_rows], test.pooled[strategy][test_rows],
                                c_grid=setup.c_grid, tune=setup.tune, inner_folds=setup.inner_folds, seed=seed)


def _timed_run(runs: _Runs, strategy: str, setup: _Setup, train: _Corpus, train_rows: np.ndarray,
               test: _Corpus, test_rows: np.ndarray, seed: int) -> None:
    start = time.perf_counter()
    predicted, chosen_c = _fit_predict(strategy, setup, train, train_rows, test, test_rows, seed)
    runs.add(test.labels[test_rows], predicted, chosen_c, time.perf_counter() - start)


def cv_splits(labels: np.ndarray, folds: int, repeats: int, seed: int) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """``splits[repeat][fold] = (train_rows, test_rows)``: stratified, reshuffled per repeat."""
    from sklearn.model_selection import StratifiedKFold

    placeholder = np.zeros((len(labels), 1))
    return [list(StratifiedKFold(folds, shuffle=True, random_state=derive_seed(seed, "split", r))
                 .split(placeholder, labels)) for r in range(repeats)]


def _all_rows(corpus: _Corpus) -> np.ndarray:
    return np.arange(len(corpus.labels))


def _run_cv(strategies: Sequence[str], setup: _Setup, corpus: _Corpus,
            splits: list[list[tuple[np.ndarray, np.ndarray]]], seed: int, seed_variance: bool,
            log: Log) -> tuple[dict[str, _Runs], dict[str, np.ndarray]]:
    """Every strategy on the same splits; learned ones also on repeat 0's splits with the
    other repeats' seeds (a splits x seeds table for the variance decomposition)."""
    runs = {s: _Runs() for s in strategies}
    seed_tables: dict[str, np.ndarray] = {}
    for strategy in strategies:
        for repeat, partition in enumerate(splits):
            for fold, (train_rows, test_rows) in enumerate(partition):
                _timed_run(runs[strategy], strategy, setup, corpus, train_rows, corpus, test_rows,
                           derive_seed(seed, "fit", repeat, fold))
        if strategy in LEARNED_STRATEGIES and seed_variance and len(splits) > 1:
            seed_tables[strategy] = _seed_table(strategy, setup, corpus, splits, seed, runs[strategy])
        log(f"{strategy}: {np.mean(runs[strategy].accuracy):.4f} ({runs[strategy].seconds:.1f} s)")
    return runs, seed_tables


def _seed_table(strategy: str, setup: _Setup, corpus: _Corpus, splits: list[list[tuple[np.ndarray, np.ndarray]]],
                seed: int, done: _Runs) -> np.ndarray:
    """(folds, repeats) accuracies on repeat 0's splits with every repeat's fit seed."""
    folds, repeats = len(splits[0]), len(splits)
    table = np.empty((folds, repeats))
    table[:, 0] = done.accuracy[:folds]  # repeat 0 ran first: its seed on its own splits
    extra = _Runs()
    for seed_index in range(1, repeats):
        for fold, (train_rows, test_rows) in enumerate(splits[0]):
            _timed_run(extra, strategy, setup, corpus, train_rows, corpus, test_rows,
                       derive_seed(seed, "fit", seed_index, fold))
            table[fold, seed_index] = extra.accuracy[-1]
    done.seconds += extra.seconds
    return table


def _run_train_test(strategies: Sequence[str], setup: _Setup, train: _Corpus, test: _Corpus, repeats: int,
                    seed: int, log: Log) -> dict[str, _Runs]:
    """Fit on the whole training file, score on the test file; learned strategies once per seed."""
    runs = {s: _Runs() for s in strategies}
    for strategy in strategies:
        for repeat in range(repeats if strategy in LEARNED_STRATEGIES else 1):
            _timed_run(runs[strategy], strategy, setup, train, _all_rows(train), test, _all_rows(test),
                       derive_seed(seed, "fit", repeat, 0))
        log(f"{strategy}: {np.mean(runs[strategy].accuracy):.4f} ({runs[strategy].seconds:.1f} s)")
    return runs


def _summarize_cv(name: str, runs: _Runs, n_train: float, n_test: float, repeats: int,
                  seed_table: np.ndarray | None) -> StrategyResult:
    accuracy = stats.corrected_ci(runs.accuracy, n_train, n_test)
    f1 = stats.corrected_ci(runs.macro_f1, n_train, n_test)
    variance = None
    if seed_table is not None:
        components = stats.variance_components(seed_table)
        variance = {"split": components.split, "seed": components.seed, "seed_share": components.seed_share,
                    "design": f"{seed_table.shape[0]} splits of repeat 0 x {seed_table.shape[1]} seeds "
                              f"(a seed sets initialisation, batch order and early-stopping split)"}
    elif repeats > 1 and name not in LEARNED_STRATEGIES:
        variance = {"split": accuracy.std ** 2, "seed": 0.0, "seed_share": 0.0,
                    "design": "parameter-free: no seed, all variance comes from the split"}
    factor = stats.corrected_variance_factor(len(runs.accuracy), n_train, n_test)
    return StrategyResult(name, name in LEARNED_STRATEGIES, runs.accuracy, runs.macro_f1, accuracy.mean,
                          accuracy.std, accuracy.std * float(np.sqrt(factor)), accuracy.ci, accuracy.method,
                          f1.mean, f1.ci,
                          chosen_c=runs.chosen_c, variance=variance)


def _correct_matrix(runs: _Runs) -> np.ndarray:
    return np.vstack(runs.correct).astype(np.float64)


def _summarize_test(name: str, runs: _Runs, n_resamples: int, seed: int) -> StrategyResult:
    correct = _correct_matrix(runs)
    boot = stats.bootstrap_mean(correct if correct.shape[0] > 1 else correct[0], n_resamples=n_resamples,
                                seed=derive_seed(seed, "bootstrap", 0))
    per_run = np.asarray(runs.accuracy)
    std = float(per_run.std(ddof=1)) if per_run.size > 1 else 0.0
    sampling = float(np.mean(per_run * (1 - per_run)) / correct.shape[1])
    variance = {"seed": std ** 2, "test_sample": sampling}
    method = ("bootstrap over seeds and test examples" if correct.shape[0] > 1
              else "bootstrap over test examples")
    return StrategyResult(name, name in LEARNED_STRATEGIES, runs.accuracy, runs.macro_f1, boot.estimate, std,
                          boot.standard_error, boot.ci, method, float(np.mean(runs.macro_f1)),
                          (float("nan"), float("nan")),
                          chosen_c=runs.chosen_c, variance=variance)


def _pairs(names: Sequence[str], best: str, all_pairs: bool) -> list[tuple[str, str]]:
    if all_pairs:
        return [(a, b) for i, a in enumerate(names) for b in names[i + 1:]]
    return [(best, other) for other in names if other != best]


def _compare_cv(a: _Runs, b: _Runs, n_train: float, n_test: float) -> tuple[stats.PairedTest, dict[str, float]]:
    return stats.corrected_paired_ttest(a.accuracy, b.accuracy, n_train, n_test), {}


def _compare_test(a: _Runs, b: _Runs, n_resamples: int, seed: int) -> tuple[stats.PairedTest, dict[str, float]]:
    """One run each: McNemar's p with a paired-bootstrap CI; several seeds: the bootstrap over
    seeds and examples for both."""
    correct_a, correct_b = _correct_matrix(a), _correct_matrix(b)
    boot = stats.paired_bootstrap(correct_a, correct_b, n_resamples=n_resamples, seed=seed)
    if correct_a.shape[0] == correct_b.shape[0] == 1:
        exact = stats.mcnemar(correct_a[0], correct_b[0])
        return (stats.PairedTest(exact.test, boot.diff, boot.ci, exact.p_value, exact.statistic),
                {"p_value_bootstrap": boot.p_value})
    # a bootstrap p-value cannot go below 2 / (resamples + 1): say so rather than print it as exact
    return boot, {"p_value_floor": 2.0 / (n_resamples + 1)}


def _comparisons(names: Sequence[str], best: str, all_pairs: bool,
                 compare: Callable[[str, str], tuple[stats.PairedTest, dict[str, float]]]) -> list[Comparison]:
    pairs = _pairs(names, best, all_pairs)
    tests = [compare(a, b) for a, b in pairs]
    adjusted = stats.holm([test.p_value for test, _ in tests])
    return [Comparison(a, b, test.diff, test.ci, test.p_value, float(p_adj), test.test, bool(p_adj < ALPHA), extra)
            for (a, b), (test, extra), p_adj in zip(pairs, tests, adjusted)]


def _rank(results: dict[str, StrategyResult]) -> str:
    order = sorted(results, key=lambda name: -results[name].mean)
    for rank, name in enumerate(order, start=1):
        results[name].rank = rank
    return order[0]


def learning_curve_samples(labels: np.ndarray, rows: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """``per_class`` rows of every class drawn without replacement (MTEB-style balanced sample)."""
    rng = np.random.default_rng(seed)
    picked = []
    for label in np.unique(labels[rows]):
        pool = rows[labels[rows] == label]
        if len(pool) < per_class:
            raise SeqpoolError(f"--learning-curve size {per_class} needs {per_class} examples of every class, "
                               f"but class index {label} has only {len(pool)} available for training")
        picked.append(rng.choice(pool, per_class, replace=False))
    return np.sort(np.concatenate(picked))


def _curve_holdout(labels: np.ndarray, folds: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A stratified 1/folds holdout of a single file, so curve points share one test set."""
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(labels))
    pool, held = train_test_split(rows, test_size=1 / folds, stratify=labels, random_state=derive_seed(seed, "holdout"))
    return np.sort(pool), np.sort(held)


def _run_learning_curve(strategies: Sequence[str], setup: _Setup, train: _Corpus, pool_rows: np.ndarray,
                        test: _Corpus, test_rows: np.ndarray, sizes: Sequence[int], experiments: int,
                        n_resamples: int, seed: int, log: Log) -> dict[str, Any]:
    """Accuracy +- CI per strategy and per examples-per-class, over balanced subsamples.

    The CI resamples experiments and test examples (both are random), like seeds x examples.
    """
    curve: dict[str, list[dict[str, Any]]] = {s: [] for s in strategies}
    for per_class in sizes:
        samples = [learning_curve_samples(train.labels, pool_rows, per_class, derive_seed(seed, "curve", per_class, e))
                   for e in range(experiments)]
        for strategy in strategies:
            runs = _Runs()
            for experiment, rows in enumerate(samples):
                _timed_run(runs, strategy, setup, train, rows, test, test_rows,
                           derive_seed(seed, "curve", per_class, experiment))
            boot = stats.bootstrap_mean(_correct_matrix(runs), n_resamples=n_resamples,
                                        seed=derive_seed(seed, "bootstrap", per_class))
            curve[strategy].append({"n_per_class": per_class, "mean": boot.estimate, "ci95": boot.ci,
                                    "scores": runs.accuracy, "macro_f1": runs.macro_f1})
        log(f"learning curve n={per_class}: " + ", ".join(f"{s} {curve[s][-1]['mean']:.3f}" for s in strategies))
    return {"sizes": list(sizes), "experiments": experiments, "test_examples": int(len(test_rows)),
            "ci_method": "bootstrap over experiments and test examples", "strategies": curve}


def versions() -> dict[str, str]:
    """Versions of everything that can change the numbers."""
    import scipy
    import sklearn
    import transformers

    return {"seqpool": __version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "scikit-learn": sklearn.__version__, "scipy": scipy.__version__, "numpy": np.__version__,
            "python": platform.python_version()}


TrainInput = str | os.PathLike | LabelledTexts | tuple[Sequence[str], Sequence[Any]]


def _as_labelled(data: TrainInput, text_field: str, label_field: str, split: str | None,
                 label_names: Sequence[Any] | None = None) -> LabelledTexts:
    if isinstance(data, LabelledTexts):
        if label_names is None:
            return data
        raw = [data.label_names[i] for i in data.labels]
        return _from_lists(data.texts, raw, data.source, label_names)
    if isinstance(data, tuple):
        texts, labels = data
        return _from_lists(list(texts), list(labels), "in-memory data", label_names)
    return load_labelled(data, text_field, label_field, split, label_names)


def _from_lists(texts: list[str], labels: list[Any], source: str, label_names: Sequence[Any] | None) -> LabelledTexts:
    if len(texts) != len(labels):
        raise SeqpoolError(f"{len(texts)} texts but {len(labels)} labels")
    import datasets

    try:
        table = datasets.Dataset.from_dict({"text": texts, "label": labels})
    except Exception as error:  # pyarrow refuses mixed types, e.g. ints and strings
        raise SeqpoolError(f"cannot use these texts and labels: {_first_line(error)}") from None
    return labelled_texts(table, "text", "label", source, label_names)


def evaluate(
    train: TrainInput,
    test: TrainInput | None = None,
    strategies: Sequence[str] | str | None = None,
    *,
    folds: int = 10,
    repeats: int = 1,
    seed: int = 0,
    model: str | os.PathLike | None = None,
    layer: int | Sequence[int] = -1,
    max_length: int | None = None,
    encoder: Any = None,
    tune: bool = True,
    c_grid: Sequence[float] = DEFAULT_C_GRID,
    inner_folds: int = 5,
    learned_options: dict[str, Any] | None = None,
    seed_variance: bool = True,
    all_pairs: bool = False,
    learning_curve: Sequence[int] | str | None = None,
    curve_experiments: int = 10,
    text_field: str = "text",
    label_field: str = "label",
    split: str | None = None,
    test_split: str | None = "test",
    cache: bool = True,
    cache_dir: str | os.PathLike | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    dtype: str | None = None,
    threads: int | None = None,
    n_resamples: int = 9999,
    progress: bool = False,
    log: Log | None = None,
) -> EvaluationResult:
    """Compare pooling strategies on a labelled corpus; see the module docstring for the protocol.

    ``train`` (and ``test``) is a local jsonl/csv/tsv/parquet file, a Hub dataset name, a
    :class:`LabelledTexts` or a ``(texts, labels)`` tuple. Without ``test``: ``repeats`` x
    stratified ``folds``-fold CV; with it: fit on train, score on test (learned strategies
    once per repeat, with a new seed each time). ``encoder`` (an :class:`~seqpool.encoder.Encoder`)
    overrides ``model``/``layer``/``max_length``. ``learned_options`` go to
    :meth:`PooledClassifier.fit`. ``seed_variance`` (CV, ``repeats > 1``): also fit learned
    strategies on repeat 0's splits with the other repeats' seeds, to split their variance
    into split and seed parts (``(repeats - 1) * folds`` extra fits each). ``threads`` caps
    torch and BLAS threads for the whole run (1 is much faster on a busy machine, where
    idle threads spin); scikit-learn fits always run on one thread.
    """
    if threads is not None and threads < 1:
        raise SeqpoolError(f"--threads must be at least 1, got {threads}")
    with limited_threads(threads):
        return _evaluate(**{name: value for name, value in locals().items() if name != "threads"})


@contextlib.contextmanager
def limited_threads(count: int | None) -> Iterator[None]:
    """Cap torch's and the BLAS libraries' threads to ``count`` (None: leave them), then restore."""
    if count is None:
        yield
        return
    from threadpoolctl import threadpool_limits

    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        with threadpool_limits(limits=count):
            yield
    finally:
        torch.set_num_threads(previous)


def _evaluate(train: TrainInput, test: TrainInput | None, strategies: Sequence[str] | str | None, *, folds: int,
              repeats: int, seed: int, model: Any, layer: Any, max_length: int | None, encoder: Any, tune: bool,
              c_grid: Sequence[float], inner_folds: int, learned_options: dict[str, Any] | None,
              seed_variance: bool, all_pairs: bool, learning_curve: Sequence[int] | str | None,
              curve_experiments: int, text_field: str, label_field: str, split: str | None, test_split: str | None,
              cache: bool, cache_dir: Any, batch_size: int | None, device: str | None, dtype: str | None,
              n_resamples: int, progress: bool, log: Log | None) -> EvaluationResult:
    log = log or (lambda message: None)
    names = check_strategies(strategies)
    setup = _Setup(tuple(float(c) for c in c_grid), tune, inner_folds, 0, dict(learned_options or {}))
    _check_settings(setup, repeats, curve_experiments)
    sizes = _check_sizes(learning_curve)
    start = time.perf_counter()
    train_data = _as_labelled(train, text_field, label_field, split)
    test_data = None
    if test is not None:
        test_data = _as_labelled(test, text_field, label_field, test_split, label_names=train_data.label_names)
        check_train_test(train_data, test_data)
    else:
        check_cv_data(train_data, folds)
    setup.num_labels = len(train_data.label_names)
    curve_rows = _plan_curve(train_data, test_data, sizes, folds, seed)  # fails now, not after the long part
    load_seconds = time.perf_counter() - start

    if encoder is None:
        from seqpool.encoder import Encoder

        encoder = Encoder(model, device=device, dtype=dtype, max_length=max_length, layer=layer)
    directory = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) if cache else None
    sides = [data for data in (train_data, test_data) if data is not None]
    log(f"encoding {' + '.join(str(len(d)) for d in sides)} texts with {encoder.name_or_path}")
    encoded = [cached_states(encoder, data.texts, directory, batch_size, progress, log) for data in sides]
    pooling_start = time.perf_counter()
    parameter_free = [s for s in names if s not in LEARNED_STRATEGIES]
    corpora = [_Corpus(e.states, e.states.pool(parameter_free) if parameter_free else {}, data.labels)
               for e, data in zip(encoded, sides)]
    pool_seconds = time.perf_counter() - pooling_start

    fit_start = time.perf_counter()
    if test_data is None:
        runs, results, comparisons, protocol = _cross_validate(names, setup, corpora[0], folds, repeats, seed,
                                                                seed_variance, all_pairs, log)
    else:
        runs, results, comparisons, protocol = _train_test(names, setup, corpora[0], corpora[1], repeats, seed,
                                                           all_pairs, n_resamples, log)
    fit_seconds = time.perf_counter() - fit_start

    curve_start = time.perf_counter()
    curve = None
    if curve_rows is not None:
        pool_rows, test_rows, description = curve_rows
        curve = _run_learning_curve(names, setup, corpora[0], pool_rows, corpora[-1], test_rows, sizes,
                                    curve_experiments, n_resamples, seed, log)
        curve["test"] = description
    curve_seconds = time.perf_counter() - curve_start

    protocol.update(_protocol(names, setup, seed, all_pairs, n_resamples, encoder, train_data, test_data, encoded))
    timings = {
        "load_data_seconds": load_seconds,
        "encode_seconds": sum(e.seconds for e in encoded if not e.cache_hit),
        "cache_load_seconds": sum(e.seconds for e in encoded if e.cache_hit),
        "pool_seconds": pool_seconds,
        "fit_seconds": fit_seconds,
        "fit_seconds_parameter_free": sum(runs[s].seconds for s in names if s not in LEARNED_STRATEGIES),
        "fit_seconds_learned": sum(runs[s].seconds for s in names if s in LEARNED_STRATEGIES),
        "fit_seconds_by_strategy": {s: runs[s].seconds for s in names},
        "learning_curve_seconds": curve_seconds if curve is not None else 0.0,
        "evaluation_seconds": pool_seconds + fit_seconds + (curve_seconds if curve is not None else 0.0),
        "total_seconds": time.perf_counter() - start,
    }
    best = next(name for name, res in results.items() if res.rank == 1)
    return EvaluationResult(results, comparisons, best, protocol, timings, versions(), curve)


def _check_settings(setup: _Setup, repeats: int, curve_experiments: int) -> None:
    if setup.tune and setup.inner_folds < 2:
        raise SeqpoolError(f"--inner-folds must be at least 2, got {setup.inner_folds} (or pass --no-tune)")
    if not setup.c_grid or min(setup.c_grid) <= 0:
        raise SeqpoolError("the C grid must hold positive numbers")
    if repeats < 1:
        raise SeqpoolError(f"--repeats must be at least 1, got {repeats}")
    if curve_experiments < 1:
        raise SeqpoolError(f"--curve-experiments must be at least 1, got {curve_experiments}")


_Outcome = tuple[dict[str, _Runs], dict[str, StrategyResult], list[Comparison], dict[str, Any]]


def _cross_validate(names: Sequence[str], setup: _Setup, corpus: _Corpus, folds: int, repeats: int, seed: int,
                    seed_variance: bool, all_pairs: bool, log: Log) -> _Outcome:
    """Repeated stratified k-fold on one file, the same splits for every strategy."""
    splits = cv_splits(corpus.labels, folds, repeats, seed)
    n_train = float(np.mean([len(train) for partition in splits for train, _ in partition]))
    n_test = float(np.mean([len(test) for partition in splits for _, test in partition]))
    runs, seed_tables = _run_cv(names, setup, corpus, splits, seed, seed_variance, log)
    results = {s: _summarize_cv(s, runs[s], n_train, n_test, repeats, seed_tables.get(s)) for s in names}
    best = _rank(results)
    comparisons = _comparisons(names, best, all_pairs, lambda a, b: _compare_cv(runs[a], runs[b], n_train, n_test))
    protocol = {"mode": "cross-validation", "folds": folds, "repeats": repeats, "n_train": n_train, "n_test": n_test,
                "split_seeds": [derive_seed(seed, "split", r) for r in range(repeats)]}
    return runs, results, comparisons, protocol


def _train_test(names: Sequence[str], setup: _Setup, train: _Corpus, test: _Corpus, repeats: int, seed: int,
                all_pairs: bool, n_resamples: int, log: Log) -> _Outcome:
    """Fit on the training file, score on the test file; bootstrap (and seeds) for uncertainty."""
    runs = _run_train_test(names, setup, train, test, repeats, seed, log)
    results = {s: _summarize_test(s, runs[s], n_resamples, seed) for s in names}
    best = _rank(results)
    comparisons = _comparisons(names, best, all_pairs, lambda a, b: _compare_test(
        runs[a], runs[b], n_resamples, derive_seed(seed, "bootstrap", names.index(a), names.index(b))))
    protocol = {"mode": "train-test", "repeats": repeats, "n_train": len(train.labels), "n_test": len(test.labels)}
    return runs, results, comparisons, protocol


def _plan_curve(train: LabelledTexts, test: LabelledTexts | None, sizes: Sequence[int], folds: int,
                seed: int) -> tuple[np.ndarray, np.ndarray, str] | None:
    """(training pool rows, test rows, description) of the learning curve; checks every size fits."""
    if not sizes:
        return None
    if test is None:
        pool_rows, test_rows = _curve_holdout(train.labels, folds, seed)
        description = f"stratified holdout of 1/{folds} of {train.source}"
    else:
        pool_rows, test_rows, description = np.arange(len(train)), np.arange(len(test)), test.source
    counts = np.bincount(train.labels[pool_rows], minlength=len(train.label_names))
    smallest = int(np.argmin(counts))
    if counts[smallest] < max(sizes):
        raise SeqpoolError(f"--learning-curve size {max(sizes)} needs {max(sizes)} training examples per class, but "
                           f"class {train.label_names[smallest]!r} has {counts[smallest]} available"
                           + (" outside the curve's test holdout" if test is None else ""))
    return pool_rows, test_rows, description


def _protocol(names: Sequence[str], setup: _Setup, seed: int, all_pairs: bool, n_resamples: int, encoder: Any,
              train: LabelledTexts, test: LabelledTexts | None, encoded: list[EncodedStates]) -> dict[str, Any]:
    """Everything needed to reproduce the numbers."""
    return {
        "seed": seed, "strategies": list(names), "metric": "accuracy", "secondary_metric": "macro_f1",
        "classifier": {"parameter_free": "StandardScaler + LogisticRegression (lbfgs, L2)", "tune_c": setup.tune,
                       "c_grid": list(setup.c_grid), "inner_folds": setup.inner_folds,
                       "learned": "PooledClassifier on frozen token states, early stopping on an inner split",
                       "learned_options": setup.learned_options},
        "comparisons": "all pairs" if all_pairs else "best against each other", "alpha": ALPHA,
        "multiple_comparisons": "holm", "bootstrap_resamples": n_resamples,
        "model": str(encoder.name_or_path), "layer": list(encoder.layers), "max_length": encoder.max_length,
        "encoder": encoder_fingerprint(encoder),
        "data": {"train": _describe(train), "test": _describe(test) if test is not None else None},
        "cache": [e.cache_path for e in encoded], "cache_hit": [e.cache_hit for e in encoded],
    }


def _check_sizes(sizes: Sequence[int] | str | None) -> list[int]:
    if sizes is None:
        return []
    if isinstance(sizes, str):
        try:
            sizes = [int(x) for x in sizes.split(",") if x.strip()]
        except ValueError:
            raise SeqpoolError(f"--learning-curve takes comma-separated integers like 8,16,32, got {sizes!r}") from None
    sizes = sorted(set(int(x) for x in sizes))
    if sizes and sizes[0] < 1:
        raise SeqpoolError(f"learning-curve sizes must be at least 1 example per class, got {sizes[0]}")
    return sizes


def _describe(data: LabelledTexts) -> dict[str, Any]:
    counts = data.class_counts()
    return {"source": data.source, "examples": len(data), "sha256": text_digest(data.texts, data.labels),
            "labels": [str(name) for name in data.label_names],
            "class_counts": {str(name): int(count) for name, count in zip(data.label_names, counts)}}


# -- presentation --------------------------------------------------------------------------


def _percent(value: float | None, digits: int = 2) -> str:
    if value is None or not np.isfinite(value):
        return "-"
    return f"{100 * value:.{digits}f}"


def _interval(ci: tuple[float, float] | None, digits: int = 2) -> str:
    if ci is None or not all(np.isfinite(ci)):
        return "-"
    return f"[{_percent(ci[0], digits)}, {_percent(ci[1], digits)}]"




@dataclass(frozen=True)
class _Delta:
    """Another strategy seen from the best one: ``other - best`` with its CI and Holm p."""

    diff: float
    ci: tuple[float, float] | None
    p_adjusted: float
    significant: bool
    p_at_floor: bool = False

    def p_text(self) -> str:
        """``0.0127``, ``<1e-4``, or ``≤0.0008`` when the raw p-value is the bootstrap's floor."""
        if self.p_at_floor:
            return f"≤{self.p_adjusted:.4f}"
        return "<1e-4" if self.p_adjusted < 1e-4 else f"{self.p_adjusted:.4f}"


def _against_best(result: EvaluationResult) -> dict[str, _Delta]:
    deltas = {}
    for c in result.comparisons:
        if result.best not in (c.a, c.b):
            continue
        sign = -1.0 if c.a == result.best else 1.0  # comparisons hold a - b
        ci = None if c.ci95 is None else tuple(sorted(sign * x + 0.0 for x in c.ci95))
        at_floor = c.p_value <= c.extra.get("p_value_floor", -1.0) * (1 + 1e-9)
        deltas[c.b if c.a == result.best else c.a] = _Delta(sign * c.diff + 0.0, ci, c.p_adjusted, c.significant,
                                                            at_floor)
    return deltas


def format_table(result: EvaluationResult) -> str:
    """Strategy, accuracy, CI, difference to the best with its CI, Holm-adjusted p, rank."""
    cv = result.protocol.get("mode") == "cross-validation"
    deltas = _against_best(result)
    spread = "std" if cv else "SE"
    header = ["rank", "strategy", f"accuracy % (mean ± {spread})", "95% CI", f"Δ to {result.best} [95% CI]",
              "p (Holm)", "macro-F1 %"]
    rows = []
    for name, res in sorted(result.strategies.items(), key=lambda item: item[1].rank):
        delta = deltas.get(name)
        rows.append([str(res.rank), name + (" (learned)" if res.learned else ""),
                     f"{_percent(res.mean)} ± {_percent(res.std if cv else res.standard_error)}", _interval(res.ci95),
                     "-" if delta is None else f"{100 * delta.diff:+.2f} {_interval(delta.ci)}",
                     "-" if delta is None else delta.p_text() + (" *" if delta.significant else ""),
                     _percent(res.macro_f1_mean)])
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [_describe_protocol(result), "",
             "  ".join(cell.ljust(width) for cell, width in zip(header, widths)).rstrip(),
             "  ".join("-" * width for width in widths)]
    lines += ["  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    lines += ["", _verdict(result, deltas), _method_note(result), _variance_note(result), _timing_note(result)]
    if result.learning_curve:
        lines += ["", _curve_table(result.learning_curve)]
    return "\n".join(line for line in lines if line is not None) + "\n"


def _describe_protocol(result: EvaluationResult) -> str:
    p = result.protocol
    data = p["data"]["train"]
    if p["mode"] == "cross-validation":
        design = f"{p['folds']}-fold stratified CV x {p['repeats']} repeat{'s' if p['repeats'] > 1 else ''}"
        source = f"{data['source']} ({data['examples']} texts, {len(data['labels'])} classes)"
    else:
        design = "train/test" + (f", {p['repeats']} seeds for learned strategies" if p["repeats"] > 1 else "")
        test = p["data"]["test"]
        source = f"{data['source']} ({data['examples']}) -> {test['source']} ({test['examples']})"
    layer = p["layer"][0] if len(p["layer"]) == 1 else p["layer"]
    return f"seqpool evaluate: {source}; {design}; model {p['model']} layer {layer}; seed {p['seed']}"


def _verdict(result: EvaluationResult, against_best: dict[str, _Delta]) -> str:
    better = [f"{name} (p{'' if c.p_text()[0] in '<≤' else '='}{c.p_text()})"
              for name, c in against_best.items() if c.significant]
    not_better = [name for name, c in against_best.items() if not c.significant]
    text = f"Best: {result.best}."
    if better:
        text += f" Significantly better (Holm-adjusted p < {ALPHA}) than: {', '.join(better)}."
    if not_better:
        text += f" Not significantly better than: {', '.join(not_better)}."
    return text


def _method_note(result: EvaluationResult) -> str:
    tests = sorted({c.test for c in result.comparisons})
    if result.protocol["mode"] == "cross-validation":
        ci = "Nadeau-Bengio corrected t interval over the CV scores"
    else:
        ci = "bootstrap over test examples (and seeds for learned strategies)"
    return (f"CI: {ci}. Tests: {', '.join(tests) or 'none'}; Holm correction over {len(result.comparisons)} "
            f"comparison{'s' if len(result.comparisons) != 1 else ''}. '*' = significant at {ALPHA}.")


def _variance_note(result: EvaluationResult) -> str | None:
    parts = []
    for name, res in result.strategies.items():
        if res.learned and res.variance and "split" in res.variance:
            parts.append(f"{name}: {100 * res.variance['seed_share']:.0f}% of the fold-score variance from the seed "
                         f"(sd split {_percent(np.sqrt(res.variance['split']))}, seed "
                         f"{_percent(np.sqrt(res.variance['seed']))} points)")
        elif res.learned and res.variance and len(res.scores) > 1:
            parts.append(f"{name}: seed sd {_percent(np.sqrt(res.variance['seed']))} vs test-sample sd "
                         f"{_percent(np.sqrt(res.variance['test_sample']))} points")
    return ("Variance: " + "; ".join(parts) + ".") if parts else None


def _timing_note(result: EvaluationResult) -> str:
    t = result.timings
    encode = [f"encode {t['encode_seconds']:.1f} s" if t["encode_seconds"] else "",
              f"cache load {t['cache_load_seconds']:.1f} s" if t["cache_load_seconds"] else ""]
    curve = f", learning curve {t['learning_curve_seconds']:.1f} s" if t["learning_curve_seconds"] else ""
    return (f"Time: {', '.join(part for part in encode if part)}; evaluation {t['evaluation_seconds']:.1f} s "
            f"(pool {t['pool_seconds']:.1f} s, fit {t['fit_seconds_parameter_free']:.1f} s parameter-free + "
            f"{t['fit_seconds_learned']:.1f} s learned{curve}).")


def _curve_table(curve: dict[str, Any]) -> str:
    sizes = curve["sizes"]
    header = ["strategy", *[f"n={n}/class" for n in sizes]]
    rows = [[name, *[f"{_percent(point['mean'], 1)} {_interval(point['ci95'], 1)}" for point in points]]
            for name, points in curve["strategies"].items()]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = [f"Learning curve: accuracy % [95% CI], {curve['experiments']} balanced subsamples per size, "
             f"tested on {curve['test']} ({curve['test_examples']} examples)"]
    lines += ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)) for row in [header, *rows]]
    return "\n".join(lines)


def check_output_paths(json_path: str | os.PathLike | None = None, plot_path: str | os.PathLike | None = None) -> None:
    """Fail before the (long) evaluation if the JSON or plot file could not be written."""
    for path in (json_path, plot_path):
        if path is None:
            continue
        folder = Path(path).expanduser().resolve().parent
        existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if existing is None or not existing.is_dir() or not os.access(existing, os.W_OK):
            raise SeqpoolError(f"cannot write {path}: {existing or folder} is not a writable folder")
        if Path(path).is_dir():
            raise SeqpoolError(f"cannot write {path}: it is a folder")
    if plot_path is not None:
        from matplotlib.figure import Figure

        formats = Figure().canvas.get_supported_filetypes()
        suffix = Path(plot_path).suffix.lstrip(".").lower()
        if suffix not in formats:
            raise SeqpoolError(f"cannot write a plot as {Path(plot_path).name!r}: use one of "
                               f".{', .'.join(sorted(formats))}")


def plot_result(result: EvaluationResult, path: str | os.PathLike) -> Path:
    """Strip plot of each strategy's scores with its mean and 95% CI (plus the learning
    curve when there is one), written atomically; the format follows the file extension."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    check_output_paths(plot_path=path)
    path = Path(path)
    order = sorted(result.strategies, key=lambda name: result.strategies[name].rank)
    panels = 2 if result.learning_curve else 1
    figure, axes = plt.subplots(1, panels, figsize=(max(6.0, 1.1 * len(order)) + 5 * (panels - 1), 4.5),
                                squeeze=False)
    _plot_scores(axes[0][0], result, order)
    if result.learning_curve:
        _plot_curve(axes[0][1], result.learning_curve)
    figure.tight_layout()
    suffix = path.suffix.lstrip(".").lower()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=f".{suffix}")
    os.close(fd)
    try:
        figure.savefig(tmp, format=suffix, dpi=120)
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
        plt.close(figure)
    return path


def _plot_scores(axis: Any, result: EvaluationResult, order: list[str]) -> None:
    rng = np.random.default_rng(0)  # jitter only: the plot is deterministic too
    for x, name in enumerate(order):
        res = result.strategies[name]
        scores = 100 * np.asarray(res.scores)
        axis.scatter(x + rng.uniform(-0.15, 0.15, scores.size), scores, s=12, alpha=0.5, color="tab:blue")
        low, high = 100 * np.asarray(res.ci95)
        axis.errorbar(x + 0.3, 100 * res.mean, yerr=[[100 * res.mean - low], [high - 100 * res.mean]],
                      fmt="o", color="black", capsize=4)
    axis.set_xticks(range(len(order)), order, rotation=30, ha="right")
    unit = "fold" if result.protocol["mode"] == "cross-validation" else "seed"
    axis.set_ylabel(f"accuracy % (dots: per {unit}; bar: mean, 95% CI)")
    axis.set_title(f"best: {result.best}")
    axis.grid(axis="y", alpha=0.3)


def _plot_curve(axis: Any, curve: dict[str, Any]) -> None:
    for name, points in curve["strategies"].items():
        sizes = [p["n_per_class"] for p in points]
        means = 100 * np.asarray([p["mean"] for p in points])
        lows, highs = (100 * np.asarray([p["ci95"][i] for p in points]) for i in (0, 1))
        axis.plot(sizes, means, marker="o", label=name)
        axis.fill_between(sizes, lows, highs, alpha=0.15)
    axis.set_xscale("log", base=2)
    axis.set_xlabel("training examples per class")
    axis.set_ylabel("accuracy % (95% CI)")
    axis.legend(fontsize="small")
    axis.grid(alpha=0.3)
