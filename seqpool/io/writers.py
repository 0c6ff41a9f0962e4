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
  rows done, a digest of the texts consumed, the settings and the sha256 of each spool's rows;
  ``resume=True`` checks all of them (:mod:`seqpool.io.checkpoint`) and continues from there,
  producing the same bytes as an uninterrupted run.
* **Ownership** (:mod:`seqpool.io.ownership`): the spool folder is made exclusively with a run
  marker, and only a marked folder is ever resumed, discarded or removed; the metadata file
  beside an npy / jsonl output carries a marker too and never replaces a file seqpool did not
  write; strategy names become file names only through :func:`~seqpool.io.ownership.safe_file_name`.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import IO, Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from seqpool.errors import SeqpoolError
from seqpool.io.atomic import atomic_path, atomic_replace, resolve_output
from seqpool.io.checkpoint import PROGRESS_FILE, progress_record, read_progress, verify_rows
from seqpool.io.digest import TextDigest
from seqpool.io.formats import CHUNK_COLUMNS, OUTPUT_FORMATS, detect_output_format, sidecar_path
from seqpool.io.loading import load_embeddings, read_metadata  # the read side, re-exported
from seqpool.io.ownership import (
    check_working_paths,
    input_at,
    make_working_folder,
    marked_json,
    new_run_id,
    owned_by_seqpool,
    remove_working_folder,
    safe_file_name,
)
from seqpool.io.readers import STDIN, TextSource, is_stream

_COPY_ROWS = 16384  # rows per block when converting spools to the final format


# -- output paths ------------------------------------------------------------------------------


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
    each: ``emb.npy`` -> ``emb.mean.npy``, ``emb.max.npy`` (a long or unusual strategy name
    through :func:`~seqpool.io.ownership.safe_file_name`, so every file stays in the output's folder).
    """
    output = Path(output)
    if output_format != "npy" or len(strategies) == 1:
        return {strategy: output for strategy in strategies}
    stem = output.name[:-len(".npy")] if output.name.lower().endswith(".npy") else output.name
    return {strategy: output.with_name(f"{stem}.{safe_file_name(strategy)}.npy") for strategy in strategies}


def partial_folder(output: str | os.PathLike) -> Path:
    """Where an unfinished run of ``output`` keeps its rows (``OUTPUT.partial/``)."""
    output = Path(output)
    return output.with_name(output.name + ".partial")


def check_output_writable(output: Path, source: TextSource | None = None,
                          inputs: Sequence[str | os.PathLike | None] = ()) -> None:
    """Fail before any work if the output cannot be created or would overwrite an input
    (``source``, or another file the run reads: ``inputs``)."""
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
    read = [source.path if source is not None and not source.is_stream else None, *inputs]
    overwritten = input_at(output, read)
    if overwritten is not None:
        what = "the input" if source is not None and overwritten == Path(source.path) else f"the input {overwritten}"
        raise SeqpoolError(f"output {output} would overwrite {what}; choose another output=...")


# -- spools: append-only .npy files, finished into the requested format ----------------------


#: A column's row shape and numpy dtype: ``((D,), "float32")`` for a vector, ``((), "int64")`` for a number.
Column = tuple[tuple[int, ...], str]


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
    quantisation ranges), saved with every checkpoint. The folder is created exclusively
    with ``run_id``'s marker; an existing one is used only when marked (``resume``), and its
    rows are verified against the checkpoint before anything is appended.
    """

    def __init__(self, output: Path, output_format: str, strategies: Sequence[str], dim: int | Mapping[str, int],
                 settings: Mapping[str, Any], resume: bool = False, folder: Path | None = None,
                 columns: Mapping[str, Column] | None = None, run_id: str | None = None):
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
        self.run_id = run_id or new_run_id()
        # ``folder``: elsewhere than ``<output>.partial`` (an output that is a device or FIFO)
        self.folder = Path(folder) if folder is not None else partial_folder(self.output)
        self.rows_done = 0
        self.input_digest = TextDigest().hexdigest()
        self.resumed = False
        recorded: dict[str, str] = {}
        if os.path.lexists(self.folder):
            self.check_unfinished(self.folder, self.output, resume)
            recorded = self._load_progress()
        else:
            make_working_folder(self.folder, self.run_id, f"the rows of {self.output.name} until it is written")
        self._hashes = {s: self._verify_spool(s, recorded.get(s)) for s in self.strategies}
        self._files = {s: self._open_spool(s) for s in self.strategies}

    @staticmethod
    def check_unfinished(folder: Path, output: Path, resume: bool = False) -> None:
        """Before any work: an existing ``folder`` must be a spool seqpool made (its marker);
        without ``resume``, refuse to start over an interrupted run's rows in it."""
        if not os.path.lexists(folder):
            return
        check_working_paths(output, {"unfinished rows": folder}, ())
        if not resume:
            try:
                progress = read_progress(folder)
            except SeqpoolError:  # damaged: resume=True says how
                progress = None
            done = progress["rows_done"] if progress else 0
            raise SeqpoolError(f"an interrupted run of {output} is in {folder} ({done} rows done); "
                               f"add --resume to continue it, or delete that folder to start over")

    def spool_path(self, strategy: str) -> Path:
        return self.folder / f"{safe_file_name(strategy)}.npy"

    def _load_progress(self) -> dict[str, str]:
        """Restore the last checkpoint (if any) after checking it matches these settings; the
        sha256 it recorded for each column's rows."""
        progress = read_progress(self.folder)
        if progress is None:
            return {}
        changed = [f"{key}: {progress['settings'].get(key)!r} then, {value!r} now"
                   for key, value in self.settings.items() if progress["settings"].get(key) != value]
        if changed:
            raise SeqpoolError(f"cannot resume {self.output}: settings differ from the interrupted run "
                               f"({'; '.join(changed)}); rerun with the same options or delete {self.folder}")
        self.rows_done = progress["rows_done"]
        self.texts_done = progress.get("texts_done", self.rows_done)
        self.state = dict(progress.get("state") or {})
        self.input_digest = progress["input_digest"]
        self.resumed = True
        return progress["rows_sha256"]

    def _header(self, name: str) -> bytes:
        shape, dtype = self.columns[name]
        return _npy_header(self.rows_done, shape, dtype)

    def _verify_spool(self, strategy: str, recorded: str | None) -> Any:
        """The running sha256 of the column's kept rows, after checking them against ``recorded``."""
        if not self.rows_done:
            return hashlib.sha256()
        path = self.spool_path(strategy)
        if not path.is_file() or path.is_symlink():
            raise SeqpoolError(f"{path} lost rows since the last checkpoint; delete {self.folder} to start over")
        shape, dtype = self.columns[strategy]
        return verify_rows(path, len(self._header(strategy)), self.rows_done, shape, dtype, recorded)

    def _open_spool(self, strategy: str) -> IO[bytes]:
        path = self.spool_path(strategy)
        shape, dtype = self.columns[strategy]
        kept = len(self._header(strategy)) + self.rows_done * int(np.prod(shape)) * np.dtype(dtype).itemsize
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
            data = rows.tobytes()
            handle = self._files[strategy]
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
            self._hashes[strategy].update(data)
        rows_added = counts.pop()
        self.rows_done += rows_added
        self.texts_done += rows_added if texts is None else int(texts)
        self.input_digest = input_digest
        if state is not None:
            self.state = dict(state)
        progress = progress_record(self.rows_done, self.texts_done, input_digest, self.settings, self.state,
                                   self._hashes)
        with atomic_path(self.folder / PROGRESS_FILE) as handle:
            handle.write(json.dumps(progress, indent=1))

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()

    def discard(self) -> None:
        """Remove the spool folder (nothing worth resuming); it is this run's, marked."""
        self.close()
        remove_working_folder(self.folder)

    def finish(self, metadata: Mapping[str, str] | None = None) -> list[Path]:
        """Turn the spools into the output file(s), rename them into place, clean up.

        npy and jsonl hold no metadata: when ``metadata`` has :data:`METADATA_SIDECAR_KEY`, it
        goes to a marked file beside each output (:func:`write_sidecar`); a marked one left by an
        earlier run of that output is removed first, so old metadata never sits beside new rows.
        """
        for name, handle in self._files.items():
            handle.seek(0)
            handle.write(self._header(name))
        self.close()
        targets = output_paths(self.output, self.output_format, self.strategies)
        outputs = list(dict.fromkeys(targets.values()))
        for target in outputs if self.output_format in SIDECAR_FORMATS else ():
            remove_sidecar(target)
        if self.output_format == "npy":
            for strategy in self.strategies:
                atomic_replace(self.spool_path(strategy), targets[strategy])
        else:
            arrays = {s: _open_rows(self.spool_path(s), self.rows_done, self.columns[s]) for s in self.strategies}
            _WRITERS[self.output_format](self.output, arrays, dict(metadata or {}))
            del arrays  # release the memory maps before the folder goes
        stream = resolve_output(self.output)[1] == "stream"
        if not stream and needs_sidecar(self.output_format, tuple(metadata or ()), self.rows_done):
            for target in outputs:
                write_sidecar(target, dict(metadata or {}), self.run_id)
        remove_working_folder(self.folder)
        return outputs


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
#: The output formats that hold no metadata of their own.
SIDECAR_FORMATS = ("npy", "jsonl")
#: The int8 model's calibration record: provenance that must travel with the vectors (``--dtype int8``).
INT8_KEY = "int8_calibration"


def needs_sidecar(output_format: str, metadata_keys: Sequence[str], rows: int | None = None) -> bool:
    """Whether an output of ``output_format`` whose metadata has ``metadata_keys`` gets a file beside it:
    npy / jsonl codes that need their ranges to decode, and a jsonl file of no rows (``rows=0``), which
    has no row to say its width."""
    if output_format not in SIDECAR_FORMATS:
        return False
    return (METADATA_SIDECAR_KEY in metadata_keys or INT8_KEY in metadata_keys
            or (output_format == "jsonl" and rows == 0))


def check_sidecar(output: str | os.PathLike) -> Path:
    """Before any work and again before writing: the metadata file beside ``output`` is absent
    or one seqpool wrote (its marker); anything else is the user's and is never replaced."""
    path = sidecar_path(output)
    check_working_paths(output, {"metadata": path}, ())
    return path


def write_sidecar(path: str | os.PathLike, metadata: Mapping[str, str], run_id: str | None = None) -> None:
    """Write ``path``'s metadata beside it, marked as seqpool's (:func:`check_sidecar` first)."""
    sidecar = check_sidecar(path)
    record = marked_json(metadata, run_id or new_run_id(), f"the metadata of {Path(path).name}")
    with atomic_path(sidecar, exclusive=not os.path.lexists(sidecar)) as handle:
        handle.write(json.dumps(record, indent=1))


def remove_sidecar(path: str | os.PathLike) -> None:
    """Delete the metadata file seqpool wrote beside ``path`` (an earlier run's), if there is one;
    a file there that seqpool did not write is left alone."""
    sidecar = sidecar_path(path)
    if os.path.lexists(sidecar) and owned_by_seqpool(sidecar):
        sidecar.unlink()


_WRITERS: dict[str, Callable[[Path, Mapping[str, np.ndarray], Mapping[str, str]], None]] = {
    "parquet": write_parquet, "jsonl": write_jsonl, "safetensors": write_safetensors}
