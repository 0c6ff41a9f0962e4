"""MR and TREC, the two SentEval tasks the notebooks, the README and ``benchmarks/`` use, loaded
the same way wherever the code runs: from the Hugging Face Hub by dataset name when it is
reachable, otherwise from local SentEval files.

Whichever source they come from, the texts arrive in SentEval's row order with SentEval's class
indices (MR: 0 = negative, 1 = positive; TREC: its six coarse types in the order of SentEval's
files), so a seeded subsample picks the same rows, and a class index means the same thing, from
either source. ``LabelledTexts.source`` says which one was used.

Where they are looked for, in order:

1. a folder you name (``data_dir=``, else the ``SEQPOOL_DATA`` environment variable): only there;
2. the Hub (``cornell-movie-review-data/rotten_tomatoes``, ``CogComp/trec``), unless
   ``HF_DATASETS_OFFLINE`` or ``HF_HUB_OFFLINE`` is set or its host does not answer one quick
   connection (an unreachable Hub would otherwise cost half a minute of ``datasets``' retries);
3. ``shared/data/senteval`` beside the repository (the offline path; how this project's CI runs).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seqpool.errors import SeqpoolError
from seqpool.evaluation.data import LabelledTexts, load_labelled
from seqpool.evaluation.settings import parameter_error

#: The environment variable that names a folder holding the SentEval files.
DATA_VARIABLE = "SEQPOOL_DATA"
_SENTEVAL = "https://github.com/facebookresearch/SentEval (data/downstream/get_transfer_data.bash)"


@dataclass(frozen=True)
class Benchmark:
    """Where one task lives, locally and on the Hub, and how the two line up."""

    title: str
    #: split -> the local JSON lines file (``{"text": ..., "label": class index}`` per line)
    files: dict[str, str]
    #: split -> the ``datasets`` split expression of the same rows on the Hub
    hub_splits: dict[str, str]
    hub_name: str
    hub_label_field: str
    #: the Hub's class names, in the order of ``label_names`` (SentEval's class indices)
    hub_label_names: tuple[str, ...]
    label_names: tuple[str, ...]
    #: SentEval lists MR's negatives, then its positives; the Hub's splits each list the
    #: positives first. A stable sort by class puts the Hub's rows in SentEval's order.
    sort_hub_rows_by_label: bool = False

    @property
    def default_split(self) -> str:
        return next(iter(self.files))


BENCHMARKS: dict[str, Benchmark] = {
    "mr": Benchmark(
        title="MR",  # movie-review sentence polarity (Pang & Lee, 2005)
        files={"all": "mr.jsonl"},
        hub_splits={"all": "train+validation+test"},
        hub_name="cornell-movie-review-data/rotten_tomatoes",
        hub_label_field="label",
        hub_label_names=("neg", "pos"),
        label_names=("negative", "positive"),
        sort_hub_rows_by_label=True,
    ),
    "trec": Benchmark(
        title="TREC",  # question types (Li & Roth, 2002), SentEval's train and TREC-10 test splits
        files={"train": "trec.train.jsonl", "test": "trec.test.jsonl"},
        hub_splits={"train": "train", "test": "test"},
        hub_name="CogComp/trec",
        hub_label_field="coarse_label",
        hub_label_names=("DESC", "ENTY", "ABBR", "HUM", "LOC", "NUM"),
        label_names=("DESC", "ENTY", "ABBR", "HUM", "LOC", "NUM"),
    ),
}


def load_benchmark(name: str, split: str | None = None, data_dir: str | os.PathLike | None = None) -> LabelledTexts:
    """MR (``"mr"``, split ``"all"``: SentEval evaluates it by 10-fold CV) or TREC (``"trec"``,
    split ``"train"`` or ``"test"``), from local SentEval files or the Hub (see the module
    docstring for the order); ``.source`` of the result names the file or Hub dataset used."""
    benchmark = _benchmark(name)
    split = _split(benchmark, name, split)
    folder = data_dir if data_dir is not None else os.environ.get(DATA_VARIABLE) or None
    if folder is not None:
        return _named_folder(benchmark, split, Path(folder).expanduser(),
                             "data_dir" if data_dir is not None else DATA_VARIABLE)
    tried = []
    offline = _offline_variable()
    if offline is not None:
        tried.append(f"the Hub skipped ({offline} is set)")
    elif not hub_reachable():
        tried.append("the Hub skipped (its host did not answer)")
    else:
        try:
            return _hub(benchmark, split)
        except SeqpoolError as error:
            tried.append(f"the Hub failed: {error}")
    for candidate in _folders_beside_repository():
        path = candidate / benchmark.files[split]
        if path.is_file():
            return _local(benchmark, path)
        tried.append(f"no {path}")
    raise SeqpoolError(f"{benchmark.title} not found ({'; '.join(tried)}). {_where_from(benchmark)}")


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hub's host (``HF_ENDPOINT``, default huggingface.co) takes one TCP connection
    within ``timeout`` seconds. Behind a proxy (``HTTPS_PROXY`` / ``ALL_PROXY``) only the proxy
    can tell, so the Hub is tried."""
    import socket
    from urllib.parse import urlsplit

    if any(os.environ.get(name) for name in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    endpoint = urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    try:
        port = endpoint.port or (80 if endpoint.scheme == "http" else 443)
        socket.create_connection((endpoint.hostname or "", port), timeout=timeout).close()
    except (OSError, ValueError):
        return False
    return True


def _offline_variable() -> str | None:
    """``HF_DATASETS_OFFLINE`` or ``HF_HUB_OFFLINE`` if set now (``datasets`` reads them once, on import)."""
    return next((variable for variable in ("HF_DATASETS_OFFLINE", "HF_HUB_OFFLINE")
                 if os.environ.get(variable, "").strip().upper() in ("1", "ON", "YES", "TRUE")), None)


def _benchmark(name: str) -> Benchmark:
    if name not in BENCHMARKS:
        raise parameter_error(f"name={name!r} is not a benchmark; choose one of {', '.join(BENCHMARKS)} "
                              f"(any other labelled data: seqpool.load_labelled)", "name")
    return BENCHMARKS[name]


def _split(benchmark: Benchmark, name: str, split: str | None) -> str:
    split = benchmark.default_split if split is None else split
    if split not in benchmark.files:
        raise parameter_error(f"split={split!r} is not a split of {name}; choose one of "
                              f"{', '.join(benchmark.files)}", "split")
    return split


def _named_folder(benchmark: Benchmark, split: str, folder: Path, named_by: str) -> LabelledTexts:
    path = folder / benchmark.files[split]
    if not path.is_file():
        message = f"{named_by} names {folder}, which has no {benchmark.files[split]}. {_where_from(benchmark)}"
        raise parameter_error(message, "data_dir") if named_by == "data_dir" else SeqpoolError(message)
    return _local(benchmark, path)


def _folders_beside_repository() -> list[Path]:
    """``shared/data/senteval`` beside the repository that holds this package (an editable
    install) and beside the one that holds the working folder (a notebook run from a clone)."""
    here = Path.cwd().resolve()
    working = next((folder for folder in (here, *here.parents) if (folder / "pyproject.toml").is_file()), None)
    roots = [root for root in (Path(__file__).resolve().parents[2], working)
             if root is not None and (root / "pyproject.toml").is_file()]
    return list(dict.fromkeys(root.parent / "shared" / "data" / "senteval" for root in roots))


def _local(benchmark: Benchmark, path: Path) -> LabelledTexts:
    classes = list(range(len(benchmark.label_names)))
    data = load_labelled(path, label_names=classes)
    _check_classes(data, classes, str(path), benchmark)
    return LabelledTexts(data.texts, data.labels, list(benchmark.label_names), data.source, data.lines)


def _hub(benchmark: Benchmark, split: str) -> LabelledTexts:
    hub_split = benchmark.hub_splits[split]
    data = load_labelled(benchmark.hub_name, label_field=benchmark.hub_label_field, split=hub_split,
                         label_names=benchmark.hub_label_names)
    source = f"{benchmark.hub_name} (Hugging Face Hub, split {hub_split})"
    _check_classes(data, list(benchmark.hub_label_names), source, benchmark)
    order = np.argsort(data.labels, kind="stable") if benchmark.sort_hub_rows_by_label else np.arange(len(data))
    return LabelledTexts([data.texts[i] for i in order], data.labels[order], list(benchmark.label_names), source)


def _check_classes(data: LabelledTexts, expected: list, source: str, benchmark: Benchmark) -> None:
    """Labels outside the task's classes mean the file or the Hub dataset is not the one expected."""
    if len(data.label_names) != len(expected):
        unexpected = data.label_names[len(expected):]
        raise SeqpoolError(f"{source}: labels {unexpected!r} are not {benchmark.title} classes "
                           f"(expected {expected!r})")


def _where_from(benchmark: Benchmark) -> str:
    files = " and ".join(benchmark.files.values())
    return (f"{benchmark.title} is on the Hugging Face Hub as {benchmark.hub_name} (needs the network: unset "
            f"HF_DATASETS_OFFLINE and HF_HUB_OFFLINE) and in SentEval's data, {_SENTEVAL}; to run offline, "
            f'save it as {files} (one {{"text": ..., "label": class index}} per line) in a folder named by '
            f"data_dir or {DATA_VARIABLE}")
