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


#: A column's row shape and numpy dtype: ``((D,), "float32")`` for a vector, ``((), "int64")`` for a number.
Column = tuple[tuple[int, ...], str]
#: The columns that say where each chunk row comes from (``seqpool embed --chunk-output``).
CHUNK_COLUMNS = ("doc", "chunk", "char_start", "char_end")


def _npy_header(rows: int, dim: int | tuple[int, ...], dtype: str = "float32") -> bytes:
    """A version 1.0 .npy header; numpy pads it so any row count gives the same size."""
    import io

    tail = (dim,) if isinstance(dim, int) else tuple(dim)
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(buffer, {"descr": np.dtype(dtype).newbyteorder("<").str,
                                                  "fortran_order": False, "shape": (rows, *tail)})
    return buffer.getvalue()


def _open_rows(path: Path, rows: int, column: Column) -> np.ndarray:
    """A finished spool as a read-only array, memory-mapped so it never loads whole."""
    if rows == 0:
        return np.zeros((0, *column[0]), dtype=column[1])
    return np.load(path, mmap_mode="r")


class EmbeddingSpool:
    """Appends rows per column under ``<output>.partial/`` and checkpoints them.

    Each column's rows go to an .npy file whose header is rewritten with the final row
    count at the end (numpy reserves room for that), so npy output needs no copy at all.
    By default every strategy is a float32 column ``dim`` wide; ``columns`` names others
    (compact codes, the chunk columns). ``texts_done`` counts input texts, which differ from
    rows with one row per chunk; ``state`` is whatever the writer must resume with (e.g.
    quantisation ranges), saved with every checkpoint.
    """

    def __init__(self, output: Path, output_format: str, strategies: Sequence[str], dim: int | Mapping[str, int],
                 settings: Mapping[str, Any], resume: bool = False, folder: Path | None = None,
                 columns: Mapping[str, Column] | None = None):
        self.output = Path(output)
        self.output_format = output_format
        # one width for all, or one per strategy (``mean+max`` is twice as wide as ``mean``)
        self.dims = {s: int(dim[s]) if isinstance(dim, Mapping) else int(dim) for s in strategies}
        widths = set(self.dims.values())
        self.dim: int | dict[str, int] = next(iter(widths), 0) if len(widths) <= 1 else dict(self.dims)
        self.columns = {name: (tuple(shape), str(np.dtype(dtype))) for name, (shape, dtype) in columns.items()} \
            if columns else {s: ((self.dims[s],), "float32") for s in strategies}
        self.strategies = tuple(self.columns)
        self.settings = {**settings, "strategies": list(self.strategies), "dim": self.dim,
                         "output_format": output_format}
        if columns:
            self.settings["columns"] = {name: [list(shape), dtype] for name, (shape, dtype) in self.columns.items()}
        self.texts_done = 0
        self.state: dict[str, Any] = {}
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
        self.texts_done = int(progress.get("texts_done", self.rows_done))
        self.state = dict(progress.get("state") or {})
        self.input_digest = str(progress["input_digest"])
        self.resumed = True

    def _header(self, name: str) -> bytes:
        shape, dtype = self.columns[name]
        return _npy_header(self.rows_done, shape, dtype)

    def _open_spool(self, strategy: str) -> IO[bytes]:
        path = self.spool_path(strategy)
        shape, dtype = self.columns[strategy]
        kept = len(self._header(strategy)) + self.rows_done * int(np.prod(shape)) * np.dtype(dtype).itemsize
        if self.rows_done and (not path.exists() or path.stat().st_size < kept):
            raise SeqpoolError(f"{path} lost rows since the last checkpoint; delete {self.folder} to start over")
        handle = open(path, "r+b" if path.exists() else "w+b")
        handle.seek(0)
        handle.write(self._header(strategy))
        # Drop rows written after the last checkpoint: they are encoded again.
        handle.truncate(kept)
        handle.seek(0, os.SEEK_END)
        return handle

    def append(self, vectors: Mapping[str, np.ndarray], input_digest: str, texts: int | None = None,
               state: Mapping[str, Any] | None = None) -> None:
        """Write one chunk's rows for every column, make them durable, then checkpoint.

        ``texts``: input texts the rows came from (default: one per row); ``state``: saved
        with the checkpoint and restored as ``self.state`` on resume.
        """
        counts = {len(vectors[s]) for s in self.strategies}
        if len(counts) != 1:
            raise ValueError(f"strategies got different row counts: {counts}")
        for strategy in self.strategies:
            shape, dtype = self.columns[strategy]
            rows = np.ascontiguousarray(vectors[strategy], dtype=np.dtype(dtype).newbyteorder("<"))
            if rows.shape[1:] != shape:
                raise ValueError(f"expected rows of shape {shape}, got shape {rows.shape}")
            handle = self._files[strategy]
            handle.write(rows.tobytes())
            handle.flush()
            os.fsync(handle.fileno())
        rows_added = counts.pop()
        self.rows_done += rows_added
        self.texts_done += rows_added if texts is None else int(texts)
        self.input_digest = input_digest
        if state is not None:
            self.state = dict(state)
        progress = {"version": _PROGRESS_VERSION, "rows_done": self.rows_done,
                    "input_digest": input_digest, "settings": self.settings}
        if self.texts_done != self.rows_done or self.state:
            progress.update(texts_done=self.texts_done, state=self.state)
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
        for name, handle in self._files.items():
            handle.seek(0)
            handle.write(self._header(name))
        self.close()
        targets = output_paths(self.output, self.output_format, self.strategies)
        if self.output_format == "npy":
            for strategy in self.strategies:
                atomic_replace(self.spool_path(strategy), targets[strategy])
        else:
            arrays = {s: _open_rows(self.spool_path(s), self.rows_done, self.columns[s]) for s in self.strategies}
            _WRITERS[self.output_format](self.output, arrays, dict(metadata or {}))
            del arrays  # release the memory maps before the folder goes
        if metadata and METADATA_SIDECAR_KEY in metadata and self.output_format in ("npy", "jsonl"):
            for target in dict.fromkeys(targets.values()):  # these formats hold no metadata: a file beside
                write_sidecar(target, metadata)
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
    """One ``fixed_size_list<float32>[D]`` column per strategy (other dtypes as stored; a
    one-number-per-row column as a plain column), written in row groups."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    def column_type(array: np.ndarray) -> Any:
        item = pa.from_numpy_dtype(array.dtype)
        return item if array.ndim == 1 else pa.list_(item, array.shape[1])

    schema = pa.schema([(name, column_type(array)) for name, array in arrays.items()],
                       metadata={f"seqpool.{k}": str(v) for k, v in metadata.items()})
    with atomic_path(path, mode="wb") as handle, pq.ParquetWriter(handle, schema) as writer:
        for block in _blocks(arrays):
            columns = [pa.array(block[name]) if block[name].ndim == 1 else
                       pa.FixedSizeListArray.from_arrays(pa.array(block[name].reshape(-1)), block[name].shape[1])
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
        size = int(np.prod(array.shape)) * array.dtype.itemsize
        header[name] = {"dtype": _SAFETENSORS_DTYPES[array.dtype.str[1:]], "shape": list(array.shape),
                        "data_offsets": [offset, offset + size]}
        offset += size
    encoded = json.dumps(header, separators=(",", ":")).encode("utf-8")
    encoded += b" " * (-len(encoded) % 8)  # the format asks for 8-byte aligned data
    with atomic_path(path, mode="wb") as handle:
        handle.write(len(encoded).to_bytes(8, "little"))
        handle.write(encoded)
        for name, array in arrays.items():
            for start in range(0, len(array), _COPY_ROWS):
                handle.write(np.ascontiguousarray(array[start:start + _COPY_ROWS],
                                                  dtype=array.dtype.newbyteorder("<")).tobytes())


_SAFETENSORS_DTYPES = {"f4": "F32", "f2": "F16", "i1": "I8", "u1": "U8", "i8": "I64"}
#: The metadata key whose presence makes npy and jsonl outputs get a metadata file beside them.
METADATA_SIDECAR_KEY = "compaction"


def sidecar_path(path: str | os.PathLike) -> Path:
    """``emb.npy`` -> ``emb.npy.json``: the metadata of formats that cannot hold any."""
    return Path(str(path) + ".json")


def write_sidecar(path: str | os.PathLike, metadata: Mapping[str, str]) -> None:
    with atomic_path(sidecar_path(path)) as handle:
        handle.write(json.dumps(dict(metadata), indent=1))


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``seqpool`` metadata of an output file (embedded, or in its ``.json`` file beside it)."""
    path = Path(path)
    fmt = detect_output_format(path)
    if fmt == "parquet":
        import pyarrow.parquet as pq

        raw = pq.read_schema(path).metadata or {}
        return {k.decode()[len("seqpool."):]: v.decode() for k, v in raw.items() if k.startswith(b"seqpool.")}
    if fmt == "safetensors":
        with open(path, "rb") as handle:
            size = int.from_bytes(handle.read(8), "little")
            return dict(json.loads(handle.read(size)).get("__metadata__") or {})
    return _read_json_object(sidecar_path(path))


_WRITERS: dict[str, Callable[[Path, Mapping[str, np.ndarray], Mapping[str, str]], None]] = {
    "parquet": write_parquet, "jsonl": write_jsonl, "safetensors": write_safetensors}


def load_embeddings(path: str | os.PathLike, strategy: str | None = None, decode: bool = True) -> np.ndarray:
    """Read back one strategy's (N, D) float32 embeddings from any output format.

    ``strategy`` may be left out when the file holds one strategy (always true for npy).
    Compact outputs (``precision`` int8, binary, ...) are decoded with the ranges stored in
    the file's metadata (:class:`seqpool.quantize.Compaction`); ``decode=False`` returns the
    stored codes. The chunk columns (``doc``, ``chunk``, ``char_start``, ``char_end``) load by name.
    """
    from seqpool.quantize import Compaction

    path = Path(path)
    if not path.exists():
        raise SeqpoolError(f"{path} not found: give the output file (or folder) of seqpool embed")
    if path.is_dir():  # the parquet shards of `seqpool embed --engine ray`, in input order
        from seqpool.io.shards import load_folder

        return load_folder(path, strategy, decode)
    compaction = Compaction.from_metadata(read_metadata(path))
    arrays = _read_arrays(path)
    if detect_output_format(path) == "npy":  # one array; its strategy: named, or the one with ranges
        name = strategy or (next(iter(compaction.ranges)) if len(compaction.ranges) == 1 else path.name)
        arrays = {name: arrays[path.name]}
    from seqpool.io.shards import choose_strategy

    vectors = [name for name in arrays if name not in CHUNK_COLUMNS]
    strategy = choose_strategy(path, vectors, strategy, list(arrays))
    if not decode or strategy in CHUNK_COLUMNS or compaction.is_identity:
        return arrays[strategy]
    return compaction.decode(strategy, arrays[strategy])


def _read_arrays(path: Path) -> dict[str, np.ndarray]:
    fmt = detect_output_format(path)
    if fmt == "npy":
        return {path.name: np.load(path)}
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
        arrays = {name: _as_stored(np.asarray([r[name] for r in records])) for name in names}
    return arrays


def _as_stored(array: np.ndarray) -> np.ndarray:
    """JSON numbers back as float32 (vectors) or int64 (codes, chunk columns)."""
    return array.astype(np.float32) if array.dtype.kind == "f" or array.size == 0 else array


def _fixed_size_lists(column: Any) -> np.ndarray:
    import pyarrow as pa

    if not pa.types.is_fixed_size_list(column.type):
        return column.to_numpy()
    dim = column.type.list_size
    flat = column.combine_chunks().flatten() if column.num_chunks else []
    dtype = column.type.value_type.to_pandas_dtype()
    return np.asarray(flat, dtype=dtype).reshape(-1, dim)
