"""Labelled texts: reading them (the same reader as ``seqpool embed``), checking the labels,
and checking that the data supports the protocol asked for.

Labels are class names: integers or strings. Everything that would silently change the
scores is refused with the file and line: a missing/empty/NaN label (it would become a class
``"nan"``), a fractional number (0.5 and 1.5 are not classes; 1.0 is read as 1), a file that
mixes numbers and strings, and test labels never seen in training (a classifier cannot
predict them, so each would count as an error without a word).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np

from seqpool.errors import SeqpoolError
from seqpool.evaluation.settings import parameter_error

#: File suffixes that mean "a local file", so a missing one is "not found", not a Hub lookup.
_LOCAL_SUFFIXES = {".jsonl", ".json", ".ndjson", ".csv", ".tsv", ".parquet", ".pq", ".txt"}
_STDIN = "-"


@dataclass
class LabelledTexts:
    """Texts with class indices; ``label_names[i]`` is the original label of class ``i``.

    ``lines`` (1-based, when the data came from a file) lets errors point at a row.
    """

    texts: list[str]
    labels: np.ndarray
    label_names: list[Any]
    source: str
    lines: list[int] | None = None

    def __len__(self) -> int:
        return len(self.texts)

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=len(self.label_names))

    def position(self, row: int) -> str:
        """``line N`` of the file (or ``row N`` of in-memory data) for a 0-based row."""
        return f"line {self.lines[row]}" if self.lines is not None else f"row {row + 1}"


# -- reading -------------------------------------------------------------------------------


def is_local(source: str | os.PathLike) -> bool:
    """A file (or ``-`` for stdin) rather than a Hub dataset name."""
    text = os.fspath(source)
    path = Path(text).expanduser()
    return text == _STDIN or path.exists() or path.suffix.lower() in _LOCAL_SUFFIXES


def read_local(source: str | os.PathLike, text_field: str = "text", label_field: str = "label",
               input_format: str | None = None) -> tuple[list[Any], list[Any], list[int], str]:
    """(texts, raw labels, 1-based lines, name) through :class:`seqpool.io.TextSource`, the
    reader ``seqpool embed`` uses: same formats, stdin as ``-``, errors naming file and line."""
    from seqpool.io.readers import FieldError, TextSource

    text = os.fspath(source)
    reader = TextSource.open(text if text == _STDIN else str(Path(text).expanduser()), input_format=input_format,
                             text_field=text_field, label_field=label_field)
    texts: list[Any] = []
    labels: list[Any] = []
    lines: list[int] = []
    try:
        for record in reader.records():
            texts.append(record.text)
            labels.append(record.label)
            lines.append(record.line)
    except FieldError as error:
        raise _in_evaluate_terms(error, len(texts) + 1) from None
    if not texts:
        raise SeqpoolError(f"{reader.name} is empty: it needs one labelled text per row")
    return texts, labels, lines, reader.name


def _in_evaluate_terms(error: Any, row: int) -> SeqpoolError:
    """A reader's :class:`~seqpool.io.readers.FieldError` in evaluate's terms: the row it counts
    (the reader counts lines), columns, and the parameter that fixes a missing label."""
    if error.role == "label":
        return parameter_error(f"{error.where}: no label column {error.field!r} (fields: {', '.join(error.fields)}); "
                               f"choose one with label_field", "label_field")
    if error.found is not None:
        return SeqpoolError(f"{error.where}, row {row}: text is {error.found}, not a string")
    return error


def read_hub(name: str, split: str | None = None) -> Any:
    """A Hub dataset through ``datasets`` and the usual Hugging Face cache (downloads are worth keeping)."""
    import datasets

    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        return datasets.load_dataset(name, split=split or "train")
    except Exception as error:  # datasets raises many types for a name it cannot resolve
        raise SeqpoolError(f"{name!r} is neither a local file nor a dataset loadable from the Hub "
                           f"(split {split or 'train'!r}): {first_line(error)}") from None
    finally:
        if was_enabled:
            datasets.enable_progress_bars()


def first_line(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return text[:300] or type(error).__name__


def _hub_columns(table: Any, text_field: str, label_field: str, source: str) -> tuple[list[Any], list[Any]]:
    columns = list(table.column_names)
    for what, name, parameter in (("text", text_field, "text_field"), ("label", label_field, "label_field")):
        if name not in columns:
            raise parameter_error(f"{source} has no {what} column {name!r} (columns: {', '.join(columns)}); "
                                  f"choose one with {parameter}", parameter)
    raw = list(table[label_field])
    feature = table.features.get(label_field)
    if hasattr(feature, "names") and hasattr(feature, "int2str"):  # a Hub ClassLabel: use the names
        for row, label in enumerate(raw):
            if label is not None and not 0 <= int(label) < len(feature.names):
                raise SeqpoolError(f"{source} row {row + 1}: label {label} is not one of its {len(feature.names)} "
                                   f"classes (-1 marks an unlabelled row, as in the test split of GLUE tasks); "
                                   f"choose a labelled split")
        raw = [feature.int2str(int(label)) if label is not None else None for label in raw]
    return list(table[text_field]), raw


# -- labels --------------------------------------------------------------------------------


def clean_label(value: Any, where: str, from_text: bool = False) -> Any:
    """One label as an int or a string, or a :class:`SeqpoolError` naming ``where``.

    ``from_text`` (CSV/TSV cells): a cell that reads as a number is that number, so a
    column of ``0``/``1`` gives the classes 0 and 1, as a typed format would.
    """
    if isinstance(value, str):
        if not value.strip():
            raise SeqpoolError(f"{where}: the label is empty; every row needs a label")
        if not from_text:
            return value
        try:
            value = float(value) if not value.strip().lstrip("+-").isdigit() else int(value)
        except ValueError:
            return value
    if value is None:
        raise SeqpoolError(f"{where}: the label is missing (null); every row needs a label")
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (float, np.floating)):
        if not math.isfinite(value):
            raise SeqpoolError(f"{where}: the label is {value!r}; every row needs a class label")
        if not float(value).is_integer():
            raise SeqpoolError(f"{where}: the label {value!r} is not a whole number; class labels are integers "
                               f"or strings (round or map them first)")
        return int(value)
    raise SeqpoolError(f"{where}: the label {value!r} is {type(value).__name__}, not a single int or string")


def _label_kind(label: Any) -> str:
    return "string" if isinstance(label, str) else "number"


def _label_order(label: Any) -> tuple[str, Any]:
    """Sort numbers numerically and strings alphabetically."""
    return (_label_kind(label), label)


def labelled_texts(texts: Sequence[Any], raw_labels: Sequence[Any], source: str,
                   label_names: Sequence[Any] | None = None, lines: list[int] | None = None,
                   labels_from_text: bool = False) -> LabelledTexts:
    """Check texts and labels and turn labels into class indices.

    ``label_names`` fixes the class order (e.g. the training file's); labels outside it
    are appended after it (:func:`check_train_test` then refuses them with their lines).
    """
    def where(row: int) -> str:
        return f"{source}, line {lines[row]}" if lines is not None else f"{source} row {row + 1}"

    for row, text in enumerate(texts):
        if not isinstance(text, str):
            raise SeqpoolError(f"{where(row)}: text is {type(text).__name__}, not a string")
    labels = [clean_label(label, where(row), labels_from_text) for row, label in enumerate(raw_labels)]
    kinds = {_label_kind(label) for label in labels}
    if len(kinds) > 1:
        row = next(i for i, label in enumerate(labels) if _label_kind(label) != _label_kind(labels[0]))
        raise SeqpoolError(f"{where(row)}: the label {labels[row]!r} is a {_label_kind(labels[row])} but "
                           f"earlier labels are {_label_kind(labels[0])}s; use one kind for every label")
    known = list(label_names) if label_names is not None else sorted(set(labels), key=_label_order)
    extra = sorted(set(labels) - set(known), key=_label_order)
    names = known + extra
    index = {name: i for i, name in enumerate(names)}
    return LabelledTexts(list(texts), np.asarray([index[label] for label in labels], dtype=np.int64), names,
                         source, lines)


def load_labelled(source: str | os.PathLike, text_field: str = "text", label_field: str = "label",
                  split: str | None = None, label_names: Sequence[Any] | None = None,
                  input_format: str | None = None) -> LabelledTexts:
    """A labelled corpus from a local file (jsonl/json/csv/tsv/parquet, ``-`` for stdin;
    read exactly as ``seqpool embed`` reads it) or a Hub dataset name."""
    if is_local(source):
        texts, labels, lines, name = read_local(source, text_field, label_field, input_format)
        from seqpool.io import detect_input_format

        fmt = input_format or ("txt" if os.fspath(source) == _STDIN else detect_input_format(source))
        return labelled_texts(texts, labels, name, label_names, lines, labels_from_text=fmt in ("csv", "tsv"))
    table = read_hub(os.fspath(source), split)
    texts, labels = _hub_columns(table, text_field, label_field, os.fspath(source))
    return labelled_texts(texts, labels, os.fspath(source), label_names)


# -- what the protocol needs ---------------------------------------------------------------


def check_cv_data(data: LabelledTexts, folds: int) -> None:
    """Enough classes and enough examples per class for stratified ``folds``-fold CV.

    The advice is always one that works: lowering ``folds`` helps only down to 2, so a class
    with a single example needs more examples, whatever ``folds`` is.
    """
    _check_classes(data)
    if folds < 2:
        raise parameter_error(f"folds must be at least 2, got {folds}", "folds")
    counts = data.class_counts()
    smallest = int(np.argmin(np.where(counts > 0, counts, np.iinfo(np.int64).max)))
    count = int(counts[smallest])
    if count >= folds:
        return
    name, first = data.label_names[smallest], data.position(int(np.flatnonzero(data.labels == smallest)[0]))
    if count >= 2:
        raise parameter_error(f"class {name!r} has {count} examples but {folds}-fold CV needs at least {folds} "
                              f"per class; lower folds to {count} or add examples", "folds")
    raise SeqpoolError(f"class {name!r} has a single example (at {first}) "
                       f"but stratified CV needs at least 2 per class (and {folds} for {folds}-fold CV); "
                       f"add examples of it or remove it")


def check_train_test(train: LabelledTexts, test: LabelledTexts) -> None:
    """Every class trainable, and every test label one the classifier can predict."""
    _check_classes(train)
    counts = train.class_counts()
    present = counts > 0
    if counts[present].min() < 2:
        smallest = int(np.flatnonzero(present & (counts == counts[present].min()))[0])
        raise SeqpoolError(f"class {train.label_names[smallest]!r} has a single training example; "
                           f"every class needs at least 2")
    seen = {train.label_names[i] for i in np.flatnonzero(present)}
    test_labels = {test.label_names[i] for i in np.unique(test.labels)}
    if not seen & test_labels:
        raise parameter_error(f"{train.source} and {test.source} share no label: train has {_preview(seen)}, "
                              f"test has {_preview(test_labels)}; check label_field", "label_field")
    unseen = sorted(test_labels - seen, key=_label_order)
    if unseen:
        rows = np.flatnonzero(np.isin(test.labels, [test.label_names.index(name) for name in unseen]))
        raise SeqpoolError(f"{test.source}: {len(rows)} of {len(test)} test rows have labels never seen in "
                           f"{train.source} ({_preview(unseen)}; first at {test.position(int(rows[0]))}): "
                           f"a classifier cannot predict them, so each would silently count as an error; "
                           f"remove those rows or add training examples of them")


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
