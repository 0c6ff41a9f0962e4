"""Write embeddings: output paths and formats, the resumable spool, and the format writers.

Corpora can be far larger than memory, so nothing here holds more than one chunk of
vectors: rows are appended to spool files and only turned into the requested format at
the very end.

Guarantees the ``seqpool embed`` command builds on:

* **Row alignment**: output row ``i`` is input row ``i``, always; empty texts keep their row.
* **Atomic output**: rows go to ``<output>.partial/``; the output file(s) appear, through
  :func:`seqpool.io.atomic.atomic_path` / ``atomic_replace``, only once every row is written.
  An interrupted run never leaves a file that looks complete.
* **Resume**: after each chunk the spools are flushed and ``progress.json`` records the
  rows done, a digest of the texts consumed and the settings; ``resume=True`` checks
  both and continues from there, producing the same bytes as an uninterrupted run.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from seqpool.errors import SeqpoolError
from seqpool.io.atomic import atomic_path, atomic_replace, resolve_output
from seqpool.io.digest import TextDigest
from seqpool.io.readers import STDIN, TextSource, choose, is_stream

OUTPUT_FORMATS: tuple[str, ...] = ("npy", "parquet", "jsonl", "safetensors")

_OUTPUT_EXTENSIONS = {".npy": "npy", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl",
                      ".safetensors": "safetensors"}
_PROGRESS_FILE = "progress.json"
_PROGRESS_VERSION = 2  # 2: sha256 input digest (seqpool.io.digest)
_COPY_ROWS = 16384  # rows per block when converting spools to the final format


# -- output paths ------------------------------------------------------------------------------


def detect_output_format(path: str | os.PathLike, output_format: str | None = None) -> str:
    """``output_format`` if given, else the one the extension names (no extension: ``npy``).

    An extension that names no output format (``x.json``, ``x.csv``) is an error rather than
    npy bytes under a misleading name; so is an extension naming another format than
    ``output_format``.
    """
    suffix = Path(path).suffix.lower()
    implied = _OUTPUT_EXTENSIONS.get(suffix)
    if output_format:
        fmt = choose(output_format, OUTPUT_FORMATS, "output format")
        if implied is not None and implied != fmt:
            raise SeqpoolError(f"output {path} has a .{implied} extension but output_format={fmt!r}; "
                               f"make them agree")
        return fmt
    if implied is None and suffix and str(path):
        raise SeqpoolError(f"cannot tell the output format from {path}'s extension {suffix!r}; name the file "
                           f".npy, .parquet, .jsonl or .safetensors, or set output_format=... "
                           f"(one of: {', '.join(OUTPUT_FORMATS)})")
    return implied or "npy"


def default_output_path(input_path: str, output_format: str = "npy") -> Path:
    """``corpus.txt`` -> ``corpus.npy`` (beside the input), or ``corpus.parquet`` etc."""
    if is_stream(input_path):  # stdin, <(cat f), a FIFO: nowhere sensible to put a file beside it
        where = "stdin" if input_path == STDIN else f"the stream {input_path} (stdin, a pipe or a FIFO)"
        raise SeqpoolError(f"reading from {where}: name the output file with `output`")
    output = Path(input_path).with_suffix(f".{output_format}")
    if output == Path(input_path):  # corpus.parquet -> corpus.embeddings.parquet, never the input
        output = output.with_suffix(f".embeddings.{output_format}")
    return output


def output_paths(output: str | os.PathLike, output_format: str, strategies: Sequence[str]) -> dict[str, Path]:
    """Final file of each strategy.

    parquet, jsonl and safetensors hold every strategy in one file (columns, keys, tensors
    named after the strategy); npy holds one array, so several strategies give one file
    each: ``emb.npy`` -> ``emb.mean.npy``, ``emb.max.npy``.
    """
    output = Path(output)
    if output_format != "npy" or len(strategies) == 1:
        return {strategy: output for strategy in strategies}
    stem = output.name[:-len(".npy")] if output.name.lower().endswith(".npy") else output.name
    return {strategy: output.with_name(f"{stem}.{strategy}.npy") for strategy in strategies}


def check_output_writable(output: Path, source: TextSource | None = None) -> None:
    """Fail before any work if the output cannot be created or would overwrite the input."""
    target, kind = resolve_output(output)  # a directory, socket or block device fails here
    if kind == "stream":
        return
    folder = Path(output).parent if str(Path(output).parent) else Path(".")
    if not folder.exists():
        raise SeqpoolError(f"output folder {folder} does not exist; create it or choose another output=...")
    if not folder.is_dir():
        raise SeqpoolError(f"cannot write {output}: {folder} is not a folder")
    if not os.access(target.parent, os.W_OK | os.X_OK):
        raise SeqpoolError(f"cannot write to {target.parent} (permission denied); choose another output=...")
    if source is not None and not source.is_stream and kind == "file" and os.path.samefile(target, source.path):
        raise SeqpoolError(f"output {output} would overwrite the input; choose another output=...")


# -- spools: append-only .npy files, finished into the requested format ----------------------


def _npy_header(rows: int, dim: int) -> bytes:
    """A version 1.0 float32 .npy header; numpy pads it so any row count gives the same size."""
    import io

    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": "<f4", "fortran_order": False, "shape": (rows, dim)})
    return buffer.getvalue()


def _open_rows(path: Path, rows: int, dim: int) -> np.ndarray:
    """A finished spool as a read-only (rows, dim) array, memory-mapped so it never loads whole."""
    if rows == 0:
        return np.zeros((0, dim), dtype=np.float32)
    return np.load(path, mmap_mode="r")


class EmbeddingSpool:
    """Appends float32 rows per strategy under ``<output>.partial/`` and checkpoints them.

    Each strategy's rows go to an .npy file whose header is rewritten with the final row
    count at the end (numpy reserves room for that), so npy output needs no copy at all.
    """

    def __init__(self, output: Path, output_format: str, strategies: Sequence[str], dim: int | Mapping[str, int],
                 settings: Mapping[str, Any], resume: bool = False, folder: Path | None = None):
        self.output = Path(output)
        self.output_format = output_format
        self.strategies = tuple(strategies)
        # one width for all, or one per strategy (``mean+max`` is twice as wide as ``mean``)
        self.dims = {s: int(dim[s]) if isinstance(dim, Mapping) else int(dim) for s in self.strategies}
        widths = set(self.dims.values())
        self.dim: int | dict[str, int] = next(iter(widths), 0) if len(widths) <= 1 else dict(self.dims)
        self.settings = {**settings, "strategies": list(self.strategies), "dim": self.dim,
                         "output_format": output_format}
        # ``folder``: elsewhere than ``<output>.partial`` (an output that is a device or FIFO)
        self.folder = Path(folder) if folder is not None else self.output.with_name(self.output.name + ".partial")
        self.rows_done = 0
        self.input_digest = TextDigest().hexdigest()
        self.resumed = False
        if self.folder.exists():
            if not resume:
                self.check_unfinished(self.folder, self.output)
            self._load_progress()
        else:
            self.folder.mkdir()
        self._files = {s: self._open_spool(s) for s in self.strategies}

    @staticmethod
    def check_unfinished(folder: Path, output: Path) -> None:
        """Refuse to start over an interrupted run's rows in ``folder`` without ``resume``."""
        if folder.exists():
            done = _read_json_object(folder / _PROGRESS_FILE).get("rows_done", 0)
            raise SeqpoolError(f"an interrupted run of {output} is in {folder} ({done} rows done); "
                               f"add --resume to continue it, or delete that folder to start over")

    def spool_path(self, strategy: str) -> Path:
        return self.folder / f"{strategy}.npy"

    def _read_progress(self) -> dict[str, Any]:
        return _read_json_object(self.folder / _PROGRESS_FILE)

    def _load_progress(self) -> None:
        progress = self._read_progress()
        if not progress:
            return
        if progress.get("version") != _PROGRESS_VERSION:
            raise SeqpoolError(f"{self.folder} was written by another seqpool version; delete it to start over")
        changed = [f"{key}: {progress['settings'].get(key)!r} then, {value!r} now"
                   for key, value in self.settings.items() if progress["settings"].get(key) != value]
        if changed:
            raise SeqpoolError(f"cannot resume {self.output}: settings differ from the interrupted run "
                               f"({'; '.join(changed)}); rerun with the same options or delete {self.folder}")
        self.rows_done = int(progress["rows_done"])
        self.input_digest = str(progress["input_digest"])
        self.resumed = True

    def _open_spool(self, strategy: str) -> IO[bytes]:
        path = self.spool_path(strategy)
        kept = len(_npy_header(0, self.dims[strategy])) + self.rows_done * self.dims[strategy] * 4
        if self.rows_done and (not path.exists() or path.stat().st_size < kept):
            raise SeqpoolError(f"{path} lost rows since the last checkpoint; delete {self.folder} to start over")
        handle = open(path, "r+b" if path.exists() else "w+b")
        handle.seek(0)
        handle.write(_npy_header(self.rows_done, self.dims[strategy]))
        # Drop rows written after the last checkpoint: they are encoded again.
        handle.truncate(kept)
        handle.seek(0, os.SEEK_END)
        return handle

    def append(self, vectors: Mapping[str, np.ndarray], input_digest: str) -> None:
        """Write one chunk's rows for every strategy, make them durable, then checkpoint."""
        counts = {len(vectors[s]) for s in self.strategies}
        if len(counts) != 1:
            raise ValueError(f"strategies got different row counts: {counts}")
        for strategy in self.strategies:
            rows = np.ascontiguousarray(vectors[strategy], dtype="<f4")
            if rows.ndim != 2 or rows.shape[1] != self.dims[strategy]:
                raise ValueError(f"expected rows of width {self.dims[strategy]}, got shape {rows.shape}")
            handle = self._files[strategy]
            handle.write(rows.tobytes())
            handle.flush()
            os.fsync(handle.fileno())
        self.rows_done += counts.pop()
        self.input_digest = input_digest
        progress = {"version": _PROGRESS_VERSION, "rows_done": self.rows_done,
                    "input_digest": input_digest, "settings": self.settings}
        with atomic_path(self.folder / _PROGRESS_FILE) as handle:
            handle.write(json.dumps(progress, indent=1))

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()

    def discard(self) -> None:
        """Remove the partial folder (nothing worth resuming)."""
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def finish(self, metadata: Mapping[str, str] | None = None) -> list[Path]:
        """Turn the spools into the output file(s), rename them into place, clean up."""
        for strategy, handle in self._files.items():
            handle.seek(0)
            handle.write(_npy_header(self.rows_done, self.dims[strategy]))
        self.close()
        targets = output_paths(self.output, self.output_format, self.strategies)
        if self.output_format == "npy":
            for strategy in self.strategies:
                atomic_replace(self.spool_path(strategy), targets[strategy])
        else:
            arrays = {s: _open_rows(self.spool_path(s), self.rows_done, self.dims[s]) for s in self.strategies}
            _WRITERS[self.output_format](self.output, arrays, dict(metadata or {}))
            del arrays  # release the memory maps before the folder goes
        shutil.rmtree(self.folder)
        return list(dict.fromkeys(targets.values()))


def _read_json_object(path: Path) -> dict[str, Any]:
    """A checkpoint's JSON object, or ``{}`` if there is none yet (interrupted before the first)."""
    try:
        progress = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return progress if isinstance(progress, dict) else {}


def _blocks(arrays: Mapping[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    rows = len(next(iter(arrays.values())))
    for start in range(0, rows, _COPY_ROWS):
        yield {name: np.asarray(array[start:start + _COPY_ROWS]) for name, array in arrays.items()}


def write_parquet(path: Path, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> None:
    """One ``fixed_size_list<float32>[D]`` column per strategy, written in row groups."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pa.schema([(name, pa.list_(pa.float32(), array.shape[1])) for name, array in arrays.items()],
                       metadata={f"seqpool.{k}": str(v) for k, v in metadata.items()})
    with atomic_path(path, mode="wb") as handle, pq.ParquetWriter(handle, schema) as writer:
        for block in _blocks(arrays):
            columns = [pa.FixedSizeListArray.from_arrays(pa.array(block[name].reshape(-1)), block[name].shape[1])
                       for name in arrays]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))


def write_jsonl(path: Path, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> None:
    """One JSON object per row, ``{"<strategy>": [floats], ...}``; floats round-trip to float32 exactly."""
    with atomic_path(path) as handle:
        for block in _blocks(arrays):
            lists = {name: rows.tolist() for name, rows in block.items()}
            for row in range(len(next(iter(lists.values())))):
                handle.write(json.dumps({name: values[row] for name, values in lists.items()}) + "\n")


def write_safetensors(path: Path, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> None:
    """A safetensors file with one F32 tensor per strategy, streamed block by block.

    ``safetensors.numpy.save_file`` would first copy every tensor into memory; the format
    is a JSON header plus raw little-endian data, so it is written here the same way,
    and read back by the safetensors library in the tests.
    """
    header: dict[str, Any] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    for name, array in arrays.items():
        size = array.shape[0] * array.shape[1] * 4
        header[name] = {"dtype": "F32", "shape": list(array.shape), "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # the format asks for 8-byte aligned data
    with atomic_path(path, mode="wb") as handle:
        handle.write(len(encoded).to_bytes(8, "little"))
        handle.write(encoded)
        for name, array in arrays.items():
            for start in range(0, len(array), _COPY_ROWS):
                handle.write(np.ascontiguousarray(array[start:start + _COPY_ROWS], dtype="<f4").tobytes())


_WRITERS: dict[str, Callable[[Path, Mapping[str, np.ndarray], Mapping[str, str]], None]] = {
    "parquet": write_parquet, "jsonl": write_jsonl, "safetensors": write_safetensors}


def load_embeddings(path: str | os.PathLike, strategy: str | None = None) -> np.ndarray:
    """Read back one strategy's (N, D) float32 embeddings from any output format.

    ``strategy`` may be left out when the file holds one strategy (always true for npy).
    """
    path = Path(path)
    fmt = detect_output_format(path)
    if fmt == "npy":
        return np.load(path)
    if fmt == "safetensors":
        from safetensors.numpy import load_file

        arrays = load_file(str(path))
    elif fmt == "parquet":
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        arrays = {name: _fixed_size_lists(table.column(name)) for name in table.column_names}
    else:
        with open(path, encoding="utf-8") as handle:
            records = [json.loads(line) for line in handle]
        names = list(records[0]) if records else []
        arrays = {name: np.asarray([r[name] for r in records], dtype=np.float32) for name in names}
    if strategy is None:
        if len(arrays) != 1:
            raise SeqpoolError(f"{path} holds {', '.join(arrays) or 'no rows'}; name the strategy to load")
        return next(iter(arrays.values()))
    if strategy not in arrays:
        raise SeqpoolError(f"{path} has no {strategy!r} embeddings (it holds {', '.join(arrays)})")
    return arrays[strategy]


def _fixed_size_lists(column: Any) -> np.ndarray:
    dim = column.type.list_size
    flat = column.combine_chunks().flatten() if column.num_chunks else []
    return np.asarray(flat, dtype=np.float32).reshape(-1, dim)
