"""Read corpora as a stream, write embeddings atomically, and resume interrupted runs.

Corpora can be far larger than memory, so nothing here holds more than one chunk of
texts or vectors: inputs are read in chunks, vectors are appended to spool files and
only turned into the requested format at the very end.

Guarantees the ``seqpool embed`` command builds on:

* **Row alignment**: output row ``i`` is input row ``i`` (line ``i`` of a text file,
  record ``i`` of JSONL/CSV/Parquet), always; empty texts keep their row.
* **Atomic output**: rows go to ``<output>.partial/``; the output file(s) appear, by
  ``os.replace``, only once every row is written. An interrupted run never leaves a
  file that looks complete.
* **Resume**: after each chunk the spools are flushed and ``progress.json`` records the
  rows done, a digest of the texts consumed and the settings; ``resume=True`` checks
  both and continues from there, producing the same bytes as an uninterrupted run.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import sys
from dataclasses import dataclass
from itertools import islice
from pathlib import Path
from typing import IO, Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np

from seqpool.errors import SeqpoolError
from seqpool.serialization import atomic_write_text

INPUT_FORMATS: tuple[str, ...] = ("txt", "jsonl", "csv", "tsv", "parquet")
OUTPUT_FORMATS: tuple[str, ...] = ("npy", "parquet", "jsonl", "safetensors")
#: Texts read, encoded and checkpointed together: big enough to sort by length well,
#: small enough that an interruption loses seconds, not hours.
DEFAULT_CHUNK_SIZE = 8192

_INPUT_EXTENSIONS = {".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv",
                     ".parquet": "parquet", ".pq": "parquet"}
_OUTPUT_EXTENSIONS = {".npy": "npy", ".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl",
                      ".safetensors": "safetensors"}
_STDIN = "-"
_PROGRESS_FILE = "progress.json"
_PROGRESS_VERSION = 1
_COPY_ROWS = 16384  # rows per block when converting spools to the final format


# -- reading --------------------------------------------------------------------------------


def detect_input_format(path: str | os.PathLike) -> str:
    """The input format implied by the file name (``txt`` for anything unrecognised)."""
    return _INPUT_EXTENSIONS.get(Path(path).suffix.lower(), "txt")


def _choose(value: str, valid: Sequence[str], what: str) -> str:
    if value not in valid:
        raise SeqpoolError(f"unknown {what} {value!r}; choose one of: {', '.join(valid)}")
    return value


@dataclass(frozen=True)
class TextSource:
    """A corpus to stream: a file (or ``-`` for stdin) in one of :data:`INPUT_FORMATS`.

    Rows are numbered from 0; a row's text is a line (txt), the ``text_field`` of a JSON
    object (jsonl) or of a record (csv/tsv/parquet). A ``null`` text counts as empty.
    """

    path: str
    format: str
    text_field: str = "text"

    @classmethod
    def open(cls, path: str | os.PathLike, input_format: str | None = None,
             text_field: str = "text") -> "TextSource":
        """Check the path and format up front, so mistakes fail before any model loads."""
        path = str(path)
        fmt = _choose(input_format or ("txt" if path == _STDIN else detect_input_format(path)),
                      INPUT_FORMATS, "input format")
        if path == _STDIN:
            if fmt == "parquet":
                raise SeqpoolError("parquet cannot be read from stdin (it needs seeking); pass the file path")
        elif not os.path.exists(path):
            raise SeqpoolError(f"input file not found: {path}")
        elif os.path.isdir(path):
            raise SeqpoolError(f"input {path} is a directory; pass a file with one text per line")
        source = cls(path, fmt, text_field)
        if fmt == "parquet":
            source._check_parquet_column()  # fails now on a missing or non-text column
        return source

    @property
    def is_stdin(self) -> bool:
        return self.path == _STDIN

    @property
    def name(self) -> str:
        return "stdin" if self.is_stdin else self.path

    def texts(self) -> Iterator[str]:
        """Every row's text, in order, streamed."""
        if self.format == "parquet":
            return self._parquet_texts()
        return self._stream_texts()

    def chunks(self, chunk_size: int = DEFAULT_CHUNK_SIZE, skip: int = 0) -> Iterator[list[str]]:
        """Lists of at most ``chunk_size`` texts, starting at row ``skip``."""
        return chunked(islice(self.texts(), skip, None), chunk_size)

    def count(self) -> int:
        """Number of rows; reads (and so validates) the whole input once, without keeping it."""
        if self.format == "parquet":
            return self._parquet_file().metadata.num_rows
        return sum(1 for _ in self.texts())

    # txt / jsonl / csv / tsv: one streamed pass over the bytes

    def _stream_texts(self) -> Iterator[str]:
        if self.is_stdin:
            yield from self._parse(sys.stdin.buffer)
            return
        with open(self.path, "rb") as stream:
            yield from self._parse(stream)

    def _parse(self, stream: IO[bytes]) -> Iterator[str]:
        lines = _decoded_lines(stream, self.name)
        if self.format == "txt":
            return (_strip_newline(line) for _, line in lines)
        if self.format == "jsonl":  # blank lines hold no record (as for pandas and pyarrow)
            return (self._json_text(number, line) for number, line in lines if line.strip())
        return self._csv_texts(lines)

    def _json_text(self, number: int, line: str) -> str:
        where = f"{self.name}, line {number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise SeqpoolError(f"{where}: not valid JSON: {error.msg}") from None
        if not isinstance(record, dict):
            raise SeqpoolError(f"{where}: expected a JSON object with a {self.text_field!r} field")
        if self.text_field not in record:
            raise SeqpoolError(f"{where}: no field {self.text_field!r} (fields: {', '.join(map(str, record))}); "
                               f"choose one with --text-field")
        return _as_text(record[self.text_field], where, self.text_field)

    def _csv_texts(self, lines: Iterator[tuple[int, str]]) -> Iterator[str]:
        # Long documents exceed csv's default 128 KiB field limit; a text embedder must accept them.
        csv.field_size_limit(2**31 - 1)
        reader = csv.reader((line for _, line in lines), delimiter="\t" if self.format == "tsv" else ",")
        try:
            header = next(reader, None)
            if header is None:
                return
            if self.text_field not in header:
                raise SeqpoolError(f"{self.name}: no column {self.text_field!r} in the header "
                                   f"({', '.join(header)}); choose one with --text-field")
            column = header.index(self.text_field)
            for record in reader:
                if not record:  # a blank line holds no record (csv writers quote an empty text: "")
                    continue
                if len(record) <= column:
                    raise SeqpoolError(f"{self.name}, line {reader.line_num}: {len(record)} fields, "
                                       f"no {self.text_field!r} column")
                yield record[column]
        except csv.Error as error:
            raise SeqpoolError(f"{self.name}, line {reader.line_num}: malformed CSV: {error}") from None

    # parquet: record batches, never the whole table

    def _parquet_file(self) -> Any:
        import pyarrow.parquet as pq

        try:
            return pq.ParquetFile(self.path)
        except Exception as error:  # pyarrow raises its own ArrowInvalid for non-parquet files
            raise SeqpoolError(f"{self.path} is not a readable parquet file: {error}") from None

    def _check_parquet_column(self) -> None:
        import pyarrow as pa

        schema = self._parquet_file().schema_arrow
        if self.text_field not in schema.names:
            raise SeqpoolError(f"{self.path}: no column {self.text_field!r} ({', '.join(schema.names)}); "
                               f"choose one with --text-field")
        field_type = schema.field(self.text_field).type
        if not (pa.types.is_string(field_type) or pa.types.is_large_string(field_type)):
            raise SeqpoolError(f"{self.path}: column {self.text_field!r} holds {field_type}, not text")

    def _parquet_texts(self) -> Iterator[str]:
        self._check_parquet_column()
        for batch in self._parquet_file().iter_batches(batch_size=DEFAULT_CHUNK_SIZE, columns=[self.text_field]):
            for text in batch.column(0).to_pylist():
                yield "" if text is None else text


def _decoded_lines(stream: IO[bytes], name: str) -> Iterator[tuple[int, str]]:
    """(1-based line number, text with its line ending) pairs; invalid UTF-8 names the line."""
    for number, raw in enumerate(stream, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise SeqpoolError(f"{name}, line {number}: not valid UTF-8 (byte 0x{raw[error.start]:02x} at "
                               f"byte {error.start + 1} of the line); convert the file to UTF-8 first") from None
        yield number, (line[1:] if number == 1 and line.startswith("\ufeff") else line)


def _strip_newline(line: str) -> str:
    """The line without its ``\\n`` or ``\\r\\n`` ending (other characters are text)."""
    if line.endswith("\n"):
        line = line[:-1]
        if line.endswith("\r"):
            line = line[:-1]
    return line


def _as_text(value: Any, where: str, field: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise SeqpoolError(f"{where}: field {field!r} is {type(value).__name__}, not a string")
    return value


def chunked(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Consecutive lists of ``size`` items (the last may be shorter); never an empty list."""
    if size < 1:
        raise SeqpoolError(f"chunk size must be at least 1, got {size}")
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


class TextDigest:
    """A running digest of the texts consumed, so a resume can prove it sees the same rows."""

    def __init__(self) -> None:
        self._hash = hashlib.blake2b(digest_size=16)

    def update(self, texts: Iterable[str]) -> "TextDigest":
        for text in texts:
            data = text.encode("utf-8", "surrogatepass")
            self._hash.update(len(data).to_bytes(8, "little"))
            self._hash.update(data)
        return self

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


# -- output paths ------------------------------------------------------------------------------


def detect_output_format(path: str | os.PathLike, output_format: str | None = None) -> str:
    """``output_format`` if given, else the one the extension names, else ``npy``."""
    if output_format:
        return _choose(output_format, OUTPUT_FORMATS, "output format")
    return _OUTPUT_EXTENSIONS.get(Path(path).suffix.lower(), "npy")


def default_output_path(input_path: str, output_format: str = "npy") -> Path:
    """``corpus.txt`` -> ``corpus.npy`` (beside the input), or ``corpus.parquet`` etc."""
    if input_path == _STDIN:
        raise SeqpoolError("reading from stdin: name the output with -o/--output")
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


def check_output_writable(output: Path, source: TextSource) -> None:
    """Fail before any work if the output cannot be created or would overwrite the input."""
    folder = output.parent if str(output.parent) else Path(".")
    if not folder.exists():
        raise SeqpoolError(f"output folder {folder} does not exist; create it or choose another -o/--output")
    if not folder.is_dir():
        raise SeqpoolError(f"cannot write {output}: {folder} is not a folder")
    if output.is_dir():
        raise SeqpoolError(f"output {output} is a directory; pass a file name")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise SeqpoolError(f"cannot write to {folder} (permission denied); choose another -o/--output")
    if not source.is_stdin and output.exists() and os.path.samefile(output, source.path):
        raise SeqpoolError(f"output {output} would overwrite the input; choose another -o/--output")


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

    def __init__(self, output: Path, output_format: str, strategies: Sequence[str], dim: int,
                 settings: Mapping[str, Any], resume: bool = False):
        self.output = Path(output)
        self.output_format = output_format
        self.strategies = tuple(strategies)
        self.dim = int(dim)
        self.settings = {**settings, "strategies": list(self.strategies), "dim": self.dim,
                         "output_format": output_format}
        self.folder = self.output.with_name(self.output.name + ".partial")
        self.rows_done = 0
        self.input_digest = TextDigest().hexdigest()
        self.resumed = False
        self._header_size = len(_npy_header(0, self.dim))
        if self.folder.exists():
            if not resume:
                done = self._read_progress().get("rows_done", 0)
                raise SeqpoolError(f"an interrupted run of {self.output} is in {self.folder} ({done} rows done); "
                                   f"add --resume to continue it, or delete that folder to start over")
            self._load_progress()
        else:
            self.folder.mkdir()
        self._files = {s: self._open_spool(s) for s in self.strategies}

    def spool_path(self, strategy: str) -> Path:
        return self.folder / f"{strategy}.npy"

    def _read_progress(self) -> dict[str, Any]:
        try:
            progress = json.loads((self.folder / _PROGRESS_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {}  # interrupted before the first checkpoint: nothing to keep
        return progress if isinstance(progress, dict) else {}

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
        kept = self._header_size + self.rows_done * self.dim * 4
        if self.rows_done and (not path.exists() or path.stat().st_size < kept):
            raise SeqpoolError(f"{path} lost rows since the last checkpoint; delete {self.folder} to start over")
        handle = open(path, "r+b" if path.exists() else "w+b")
        handle.seek(0)
        handle.write(_npy_header(self.rows_done, self.dim))
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
            if rows.ndim != 2 or rows.shape[1] != self.dim:
                raise ValueError(f"expected rows of width {self.dim}, got shape {rows.shape}")
            handle = self._files[strategy]
            handle.write(rows.tobytes())
            handle.flush()
            os.fsync(handle.fileno())
        self.rows_done += counts.pop()
        self.input_digest = input_digest
        progress = {"version": _PROGRESS_VERSION, "rows_done": self.rows_done,
                    "input_digest": input_digest, "settings": self.settings}
        atomic_write_text(self.folder / _PROGRESS_FILE, json.dumps(progress, indent=1))

    def close(self) -> None:
        for handle in self._files.values():
            handle.close()

    def discard(self) -> None:
        """Remove the partial folder (nothing worth resuming)."""
        self.close()
        shutil.rmtree(self.folder, ignore_errors=True)

    def finish(self, metadata: Mapping[str, str] | None = None) -> list[Path]:
        """Turn the spools into the output file(s), rename them into place, clean up."""
        for handle in self._files.values():
            handle.seek(0)
            handle.write(_npy_header(self.rows_done, self.dim))
        self.close()
        targets = output_paths(self.output, self.output_format, self.strategies)
        if self.output_format == "npy":
            for strategy in self.strategies:
                os.replace(self.spool_path(strategy), targets[strategy])
        else:
            arrays = {s: _open_rows(self.spool_path(s), self.rows_done, self.dim) for s in self.strategies}
            staged = self.folder / f"output.{self.output_format}"
            _WRITERS[self.output_format](staged, arrays, dict(metadata or {}))
            del arrays  # release the memory maps before the folder goes
            os.replace(staged, self.output)
        shutil.rmtree(self.folder)
        return list(dict.fromkeys(targets.values()))


def _blocks(arrays: Mapping[str, np.ndarray]) -> Iterator[dict[str, np.ndarray]]:
    rows = len(next(iter(arrays.values())))
    for start in range(0, rows, _COPY_ROWS):
        yield {name: np.asarray(array[start:start + _COPY_ROWS]) for name, array in arrays.items()}


def write_parquet(path: Path, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> None:
    """One ``fixed_size_list<float32>[D]`` column per strategy, written in row groups."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    dim = next(iter(arrays.values())).shape[1]
    schema = pa.schema([(name, pa.list_(pa.float32(), dim)) for name in arrays],
                       metadata={f"seqpool.{k}": str(v) for k, v in metadata.items()})
    with pq.ParquetWriter(path, schema) as writer:
        for block in _blocks(arrays):
            columns = [pa.FixedSizeListArray.from_arrays(pa.array(block[name].reshape(-1)), dim)
                       for name in arrays]
            writer.write_table(pa.Table.from_arrays(columns, schema=schema))


def write_jsonl(path: Path, arrays: Mapping[str, np.ndarray], metadata: Mapping[str, str]) -> None:
    """One JSON object per row, ``{"<strategy>": [floats], ...}``; floats round-trip to float32 exactly."""
    with open(path, "w", encoding="utf-8") as handle:
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
    with open(path, "wb") as handle:
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


# -- the embedding loop ------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbedResult:
    """What :func:`embed_corpus` wrote."""

    paths: list[Path]
    rows: int
    dim: int
    strategies: tuple[str, ...]
    resumed_from: int


def embed_corpus(encoder: Any, source: TextSource, output: str | os.PathLike | None = None, *,
                 output_format: str | None = None, strategies: Sequence[str] | None = None,
                 normalize: bool | None = None, batch_size: int | None = None,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, skip_empty: bool = False, resume: bool = False,
                 progress: bool | None = None) -> EmbedResult:
    """Embed every row of ``source`` with ``encoder`` into ``output``, streaming and resumable.

    ``encoder`` is a :class:`seqpool.Encoder`. ``skip_empty`` writes a zero row for each
    empty (or whitespace-only) text instead of encoding it; rows never shift either way.
    ``progress=None`` shows a bar on stderr only when it is a terminal.
    """
    from seqpool.pooling import check_strategy

    strategies = tuple(dict.fromkeys(check_strategy(s) for s in (strategies or (encoder.default_strategy,))))
    normalize = encoder.default_normalize if normalize is None else bool(normalize)
    fmt = detect_output_format(output or "", output_format)
    output = Path(output) if output is not None else default_output_path(source.path, fmt)
    check_output_writable(output, source)
    total = None if source.is_stdin else source.count()  # validates every row before hours of work
    settings = {"model": encoder.name_or_path, "layers": list(encoder.layers), "max_length": encoder.max_length,
                "dtype": str(encoder.dtype), "normalize": normalize, "skip_empty": skip_empty,
                "batch_size": batch_size, "chunk_size": chunk_size, "input_format": source.format,
                "text_field": source.text_field}
    spool = EmbeddingSpool(output, fmt, strategies, encoder.hidden_size, settings, resume=resume)
    started_at = spool.rows_done
    try:
        texts = source.texts()
        digest = TextDigest().update(islice(texts, spool.rows_done))
        if digest.hexdigest() != spool.input_digest:
            raise SeqpoolError(f"cannot resume {output}: the first {spool.rows_done} rows of {source.name} differ "
                               f"from the interrupted run's; delete {spool.folder} to start over")
        with _progress_bar(total, spool.rows_done, progress) as bar:
            for chunk in chunked(texts, chunk_size):
                vectors = _encode_chunk(encoder, chunk, strategies, normalize, batch_size, skip_empty, bar)
                spool.append(vectors, digest.update(chunk).hexdigest())
    except BaseException:
        if spool.rows_done == 0:
            spool.discard()
        else:
            spool.close()
        raise
    metadata = {"model": encoder.name_or_path, "strategies": ",".join(strategies), "normalize": str(normalize),
                "layers": ",".join(map(str, encoder.layers)), "max_length": str(encoder.max_length),
                "dtype": str(encoder.dtype).removeprefix("torch.")}
    paths = spool.finish(metadata)
    return EmbedResult(paths, spool.rows_done, encoder.hidden_size, strategies, started_at)


def _encode_chunk(encoder: Any, texts: list[str], strategies: tuple[str, ...], normalize: bool,
                  batch_size: int | None, skip_empty: bool, bar: Any) -> dict[str, np.ndarray]:
    """Vectors of one chunk, in row order; with ``skip_empty``, empty texts get zero rows unencoded."""
    keep = [i for i, text in enumerate(texts) if text.strip()] if skip_empty else None
    if keep is None or len(keep) == len(texts):
        return encoder.encode(texts, strategies, batch_size=batch_size, normalize=normalize, progress=bar)
    encoded = encoder.encode([texts[i] for i in keep], strategies, batch_size=batch_size,
                             normalize=normalize, progress=bar)
    bar.update(len(texts) - len(keep))
    out = {}
    for strategy, vectors in encoded.items():
        full = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
        full[keep] = vectors
        out[strategy] = full
    return out


def _progress_bar(total: int | None, initial: int, enabled: bool | None) -> Any:
    """tqdm on stderr with texts/s; ``None`` = only when stderr is a terminal."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, unit="text", unit_scale=True, file=sys.stderr,
                disable=None if enabled is None else not enabled, dynamic_ncols=True, smoothing=0.05)
