"""Read embeddings back: every output ``seqpool embed`` writes, verified before it is trusted.

A file is checked against its own metadata (embedded in parquet and safetensors, the ``.json``
sidecar beside npy and jsonl) before anything is decoded:

* the strategy asked for must be one the file holds (an npy file of a several-strategy run
  holds the one its name carries, :func:`seqpool.io.formats.npy_strategy`);
* the stored column must have the rank, dtype and width seqpool writes: float32 vectors, or
  the codes of the precision its ``compaction`` metadata names (with valid ranges); chunk
  columns are int64 numbers;
* headers (npy, safetensors) are checked against the file's size before any data is read, so
  a header claiming 2**62 bytes costs nothing; parquet nulls and damaged jsonl lines are named.

Whatever a damaged, foreign or crafted file holds, reading it ends in one
:class:`~seqpool.errors.SeqpoolError` naming the file.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

import numpy as np

from seqpool.errors import SeqpoolError
from seqpool.io.formats import CHUNK_COLUMNS, detect_output_format, npy_strategy, sidecar_path
from seqpool.io.ownership import JSON_MARKER_KEY
from seqpool.io.safetensors_header import read_safetensors_header
from seqpool.quantize import BINARY_PRECISIONS, Compaction, output_dtype, output_width

#: safetensors dtypes seqpool writes, as numpy reads them (little-endian, as the format says).
_SAFETENSORS_DTYPES = {"F32": "<f4", "F16": "<f2", "I8": "i1", "U8": "u1", "I64": "<i8"}
_CHUNK_DTYPE = np.dtype(np.int64)
#: dtypes of compact codes, which mean nothing without the metadata that decodes them.
_CODE_DTYPES = (np.dtype(np.int8), np.dtype(np.uint8), np.dtype(np.float16))


class _Stored(NamedTuple):
    """One stored column as its header describes it; ``read`` loads its values."""

    dtype: np.dtype
    shape: tuple[int, ...]
    read: Callable[[], np.ndarray]


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The ``seqpool`` metadata of an output file (embedded, or in its ``.json`` file beside it)."""
    path = Path(path)
    fmt = detect_output_format(path)
    if fmt == "parquet":
        raw = _parquet_file(path).schema_arrow.metadata or {}
        return {k.decode()[len("seqpool."):]: v.decode() for k, v in raw.items() if k.startswith(b"seqpool.")}
    if fmt == "safetensors":
        return _safetensors_header(path)[0]
    return _read_sidecar(path)


def load_embeddings(path: str | os.PathLike, strategy: str | None = None, decode: bool = True) -> np.ndarray:
    """Read back one strategy's (N, D) float32 embeddings from any output format.

    ``strategy`` may be left out when the file holds one strategy (always true for npy).
    Compact outputs (``precision`` int8, binary, ...) are decoded with the ranges stored in
    the file's metadata (:class:`seqpool.quantize.Compaction`); ``decode=False`` returns the
    stored codes. The chunk columns (``doc``, ``chunk``, ``char_start``, ``char_end``) load by name.
    """
    from seqpool.io.shards import choose_strategy

    path = Path(path)
    if not path.exists():
        raise SeqpoolError(f"{path} not found: give the output file (or folder) of seqpool embed")
    if path.is_dir():  # the parquet shards of `seqpool embed --engine ray`, in input order
        from seqpool.io.shards import load_folder

        return load_folder(path, strategy, decode)
    if not path.is_file():
        raise SeqpoolError(f"{path} is not a regular file: give the output file (or folder) of seqpool embed")
    fmt = detect_output_format(path)
    metadata = read_metadata(path)
    compaction = _compaction(path, metadata)
    dims = _dims(path, metadata)
    if fmt == "npy":
        columns = _npy_columns(path, metadata, strategy)
    elif fmt == "safetensors":
        columns = _safetensors_header(path)[1]
    elif fmt == "parquet":
        columns = _parquet_columns(path)
    else:
        columns = _jsonl_columns(path, metadata, compaction, dims)
    vectors = [name for name in columns if name not in CHUNK_COLUMNS]
    strategy = choose_strategy(path, vectors, strategy, list(columns))
    stored = columns[strategy]
    if strategy in CHUNK_COLUMNS:
        _check_column(path, strategy, stored, _CHUNK_DTYPE, 1, None, "a chunk column")
        return stored.read()
    _check_codes(path, strategy, stored, compaction, dims, metadata)
    codes = stored.read()
    if not decode or compaction.is_identity:
        return codes
    return _decode(path, strategy, codes, compaction, dims)


# -- verification ----------------------------------------------------------------------------------


def _compaction(path: Path, metadata: Mapping[str, str]) -> Compaction:
    try:
        return Compaction.from_metadata(metadata)
    except SeqpoolError as error:
        raise SeqpoolError(f"{path}: {error}") from None


def _dims(path: Path, metadata: Mapping[str, str]) -> dict[str, int]:
    """Each strategy's float width, as the run recorded it (``{}`` for files that predate it)."""
    raw = metadata.get("dims")
    if raw is None:
        return {}
    try:
        dims = json.loads(raw)
        if isinstance(dims, dict) and all(type(d) is int and d > 0 for d in dims.values()):
            return dims
    except ValueError:
        pass
    raise SeqpoolError(f"{path}: unreadable 'dims' metadata {raw!r}; was the file written by seqpool?")


def _stored_dtype(compaction: Compaction) -> np.dtype:
    return np.dtype(np.float32) if compaction.precision == "float32" else output_dtype(compaction.precision)


def _stored_width(strategy: str, compaction: Compaction, dims: Mapping[str, int]) -> int | None:
    """Columns the stored codes of ``strategy`` must have, when the metadata says."""
    if strategy in dims:
        return output_width(dims[strategy], compaction.precision)
    if strategy in compaction.ranges:
        return int(compaction.ranges[strategy].shape[-1])
    return None


def _check_codes(path: Path, strategy: str, stored: _Stored, compaction: Compaction, dims: Mapping[str, int],
                 metadata: Mapping[str, str]) -> None:
    """The stored vectors have the dtype, rank and width the file's metadata says seqpool wrote."""
    expected = _stored_dtype(compaction)
    if "compaction" not in metadata and stored.dtype in _CODE_DTYPES:
        where = sidecar_path(path) if detect_output_format(path) in ("npy", "jsonl") else "its own metadata"
        held = "it holds" if strategy == path.name else f"{strategy!r} holds"
        raise SeqpoolError(f"{path}: {held} {stored.dtype} codes but no 'compaction' metadata to decode "
                           f"them ({where}); seqpool writes codes only with their metadata")
    what = "float32 vectors" if compaction.precision == "float32" else f"{compaction.precision} codes"
    what += f" of {strategy!r}" if strategy != path.name else ""
    _check_column(path, strategy, stored, expected, 2, _stored_width(strategy, compaction, dims), what)


def _check_column(path: Path, name: str, stored: _Stored, dtype: np.dtype, ndim: int, width: int | None,
                  what: str) -> None:
    shape = "(rows,)" if ndim == 1 else f"(rows, {width if width is not None else 'width'})"
    if stored.dtype != dtype or len(stored.shape) != ndim or (width is not None and stored.shape[1] != width):
        held = "it holds" if name == path.name else f"{name!r} is"  # an npy's one array has no name
        raise SeqpoolError(f"{path}: {held} a {stored.dtype} array of shape {stored.shape}, where seqpool writes "
                           f"{what} as {dtype} {shape}; the file is not one seqpool wrote, or was changed")


def _decode(path: Path, strategy: str, codes: np.ndarray, compaction: Compaction,
            dims: Mapping[str, int]) -> np.ndarray:
    """Float32 vectors from checked codes, with ranges checked before they are used."""
    binary = compaction.precision in BINARY_PRECISIONS
    dim = dims.get(strategy, compaction.dim if binary else codes.shape[1])
    if binary:
        compaction.dim = dim  # a several-width run packs each strategy from its own width
    if not len(codes):  # an empty input: no ranges were ever fitted, nothing to decode
        if dim is None:
            raise SeqpoolError(f"{path} holds no rows and does not record {strategy!r}'s width before "
                               f"packing; load it with decode=False")
        return np.zeros((0, dim), dtype=np.float32)
    if compaction.needs_ranges:
        ranges = compaction.ranges.get(strategy)
        if ranges is None:
            raise SeqpoolError(f"{path}: no {compaction.precision} ranges stored for {strategy!r}; "
                               f"the file's metadata is incomplete")
        if ranges.shape != (2, codes.shape[1]) or not np.isfinite(ranges).all() or (ranges[0] > ranges[1]).any():
            raise SeqpoolError(f"{path}: the {compaction.precision} ranges stored for {strategy!r} are not "
                               f"(2, {codes.shape[1]}) finite [min; max] rows; the file's metadata is damaged")
    try:
        return compaction.decode(strategy, codes)
    except SeqpoolError as error:
        raise SeqpoolError(f"{path}: {error}") from None


# -- npy ------------------------------------------------------------------------------------------


def _npy_columns(path: Path, metadata: Mapping[str, str], strategy: str | None) -> dict[str, _Stored]:
    """The one array of an npy file, under the strategy it holds.

    A several-strategy run writes ``OUT.<strategy>.npy`` files whose sidecars list every
    strategy: the name says which one a file holds. A float32 npy has no metadata at all, so a
    ``strategy`` asked of it is checked against its name alone.
    """
    listed = [s for s in metadata.get("strategies", "").split(",") if s]
    if len(listed) > 1:
        held = npy_strategy(path, listed)
        if held is None:
            raise SeqpoolError(f"cannot tell which of {', '.join(listed)} {path} holds: seqpool names these files "
                               f"OUTPUT.<strategy>.npy (with OUTPUT.<strategy>.npy.json beside); rename it back")
    elif listed:
        held = listed[0]
    elif strategy is None or npy_strategy(path, [strategy]) == strategy:
        held = strategy or path.name
    else:
        raise SeqpoolError(f"{path} does not record which strategy it holds (seqpool writes a float32 npy "
                           f"without metadata, and its name does not end in .{strategy}.npy); "
                           f"leave `strategy` out to load its one array")
    return {held: _npy_array(path)}


def _npy_array(path: Path) -> _Stored:
    """The array's header, checked against the file's size before any data is read."""
    fmt = np.lib.format
    try:
        with open(path, "rb") as handle:
            version = fmt.read_magic(handle)
            if version == (1, 0):
                shape, fortran, dtype = fmt.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, fortran, dtype = fmt.read_array_header_2_0(handle)
            else:
                raise ValueError(f"npy format version {version[0]}.{version[1]}")
            offset = handle.tell()
        size = path.stat().st_size
    except (OSError, ValueError, EOFError, SyntaxError) as error:
        raise SeqpoolError(f"{path} is not a readable npy file ({error})") from None
    if dtype.hasobject or dtype.fields is not None:
        raise SeqpoolError(f"{path} holds Python objects or records ({dtype}); seqpool writes arrays of numbers")
    count = math.prod(shape)
    if size != offset + count * dtype.itemsize:
        raise SeqpoolError(f"{path} is truncated or damaged: its header promises a {dtype} array of shape {shape} "
                           f"({offset + count * dtype.itemsize} bytes) but the file has {size} bytes")

    def read() -> np.ndarray:
        return np.fromfile(path, dtype=dtype, count=count, offset=offset).reshape(shape, order="F" if fortran else "C")

    return _Stored(dtype, tuple(shape), read)


# -- safetensors ----------------------------------------------------------------------------------


def _safetensors_header(path: Path) -> tuple[dict[str, str], dict[str, _Stored]]:
    """(metadata, tensors) of a safetensors file; every size and offset checked against the file."""
    header, metadata, data_start = read_safetensors_header(path)
    data_size = path.stat().st_size - data_start
    return metadata, {name: _safetensors_tensor(path, name, entry, data_start, data_size)
                      for name, entry in header.items()}


def _safetensors_tensor(path: Path, name: str, entry: Any, data_start: int, data_size: int) -> _Stored:
    kind = entry.get("dtype") if isinstance(entry, dict) else None
    if kind not in _SAFETENSORS_DTYPES:
        raise SeqpoolError(f"{path}: tensor {name!r} has dtype {kind!r}; seqpool writes "
                           f"{', '.join(_SAFETENSORS_DTYPES)}")
    dtype = np.dtype(_SAFETENSORS_DTYPES[kind])
    shape, offsets = entry.get("shape"), entry.get("data_offsets")
    if not _fits(shape, offsets, dtype.itemsize, data_size):
        raise SeqpoolError(f"{path}: tensor {name!r}'s shape {shape} and data offsets {offsets} do not fit "
                           f"the file's {data_size} data bytes")
    count, offset = math.prod(shape), data_start + offsets[0]

    def read() -> np.ndarray:
        return np.fromfile(path, dtype=dtype, count=count, offset=offset).reshape(shape)

    return _Stored(dtype, tuple(shape), read)


def _fits(shape: Any, offsets: Any, itemsize: int, data_size: int) -> bool:
    """A tensor entry's shape and ``[start, end)`` are whole numbers that agree and lie in the data."""
    if not (isinstance(shape, list) and isinstance(offsets, list) and len(offsets) == 2):
        return False
    if not all(type(n) is int and n >= 0 for n in shape + offsets):
        return False
    start, end = offsets
    return start <= end <= data_size and end - start == math.prod(shape) * itemsize


# -- parquet --------------------------------------------------------------------------------------


def _parquet_file(path: Path) -> Any:
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(path)
    except Exception as error:  # pyarrow raises its own ArrowInvalid / OSError for damaged files
        raise SeqpoolError(f"{path} is not a readable parquet file ({error})") from None


def _parquet_columns(path: Path) -> dict[str, _Stored]:
    """One fixed-size list column per strategy, plain number columns for the chunk columns."""
    import pyarrow as pa

    parquet = _parquet_file(path)
    rows = parquet.metadata.num_rows
    columns = {}
    for field in parquet.schema_arrow:
        kind = field.type.value_type if pa.types.is_fixed_size_list(field.type) else field.type
        try:
            dtype = np.dtype(kind.to_pandas_dtype())
        except (NotImplementedError, TypeError, ValueError, AttributeError):
            dtype = np.dtype(object)
        if pa.types.is_nested(kind) or not (pa.types.is_integer(kind) or pa.types.is_floating(kind)):
            dtype = np.dtype(object)  # strings, variable-length lists, ...: never a seqpool column
        shape = (rows, field.type.list_size) if pa.types.is_fixed_size_list(field.type) else (rows,)
        columns[field.name] = _Stored(dtype, shape, lambda name=field.name: _parquet_values(path, parquet, name))
    return columns


def _parquet_values(path: Path, parquet: Any, name: str) -> np.ndarray:
    """A column's values; a null row (which flattening would silently drop) is refused by number."""
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        column = parquet.read(columns=[name]).column(name)
        column = column.combine_chunks() if column.num_chunks else pa.array([], type=column.type)
    except Exception as error:  # a damaged page
        raise SeqpoolError(f"{path}: column {name!r} cannot be read ({error})") from None
    if column.null_count:
        row = pc.index(pc.is_null(column), True).as_py()
        raise SeqpoolError(f"{path}: row {row} of {name!r} is null; seqpool writes a value for every row")
    if not pa.types.is_fixed_size_list(column.type):
        return column.to_numpy(zero_copy_only=False)
    values = column.flatten()
    if values.null_count:
        row = pc.index(pc.is_null(values), True).as_py() // column.type.list_size
        raise SeqpoolError(f"{path}: row {row} of {name!r} holds a null value; seqpool writes numbers")
    return values.to_numpy(zero_copy_only=False).reshape(len(column), column.type.list_size)


# -- jsonl ----------------------------------------------------------------------------------------


def _jsonl_columns(path: Path, metadata: Mapping[str, str], compaction: Compaction,
                   dims: Mapping[str, int]) -> dict[str, _Stored]:
    """Every key of a jsonl output as a column, in the dtype its metadata says seqpool stored.

    Trailing blank lines are accepted (editors add them); anything else that is not one JSON
    object per row is refused naming its line. An empty file says nothing, so its columns come
    from the metadata beside it.
    """
    lines, values = _jsonl_rows(path)
    if not lines:
        return _empty_jsonl(path, metadata, compaction, dims)
    columns = {}
    for name, column in values.items():
        array = _json_array(path, name, column, lines)
        target = _CHUNK_DTYPE if name in CHUNK_COLUMNS else _stored_dtype(compaction)
        array = _as_dtype(path, name, array, target)
        columns[name] = _Stored(array.dtype, array.shape, lambda array=array: array)
    return columns


def _jsonl_rows(path: Path) -> tuple[list[int], dict[str, list[Any]]]:
    """(line number of each row, each key's values); one pass, names the first bad line."""
    lines: list[int] = []
    values: dict[str, list[Any]] = {}
    blank = 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, start=1):
            if not raw.strip():
                blank = blank or number
                continue
            if blank:
                raise SeqpoolError(f"{path}, line {blank}: a blank line between rows; a seqpool jsonl holds one "
                                   f"JSON object per row")
            try:
                record = json.loads(raw)
            except (ValueError, RecursionError) as error:
                raise SeqpoolError(f"{path}, line {number}: not valid JSON ({error})") from None
            if not isinstance(record, dict) or not record:
                raise SeqpoolError(f"{path}, line {number}: expected a JSON object of columns")
            if not lines:
                values = {str(name): [] for name in record}
            elif record.keys() != values.keys():
                raise SeqpoolError(f"{path}, line {number}: keys {', '.join(record)} differ from line {lines[0]}'s "
                                   f"({', '.join(values)})")
            for name, value in record.items():
                values[name].append(value)
            lines.append(number)
    return lines, values


def _json_array(path: Path, name: str, column: list[Any], lines: list[int]) -> np.ndarray:
    """A column's JSON values as numbers: all lists of one length, or all plain numbers."""
    width = len(column[0]) if isinstance(column[0], list) else None
    for value, number in zip(column, lines):
        if (len(value) != width if isinstance(value, list) else width is not None):
            raise SeqpoolError(f"{path}, line {number}: {name!r} is not {_json_shape(width)} like line {lines[0]}'s")
    try:
        array = np.asarray(column)
    except (ValueError, TypeError, OverflowError):
        array = np.asarray([None])
    if array.dtype.kind not in "iuf" or array.ndim != (1 if width is None else 2):
        number = next((n for value, n in zip(column, lines) if not _numbers(value)), lines[0])
        raise SeqpoolError(f"{path}, line {number}: {name!r} is not {_json_shape(width)}")
    return array


def _json_shape(width: int | None) -> str:
    return "a number" if width is None else f"a list of {width} numbers"


def _numbers(value: Any) -> bool:
    items = value if isinstance(value, list) else [value]
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items)


def _as_dtype(path: Path, name: str, array: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """JSON numbers in the dtype seqpool stored them in; a value that dtype cannot hold is refused."""
    if dtype.kind == "f":
        return array.astype(dtype)
    info = np.iinfo(dtype)
    if array.dtype.kind != "i" or (array.size and (array.min() < info.min or array.max() > info.max)):
        raise SeqpoolError(f"{path}: {name!r} holds values that are not {dtype} numbers "
                           f"({info.min}..{info.max}), as its metadata says seqpool stored them")
    return array.astype(dtype)


def _empty_jsonl(path: Path, metadata: Mapping[str, str], compaction: Compaction,
                 dims: Mapping[str, int]) -> dict[str, _Stored]:
    """The (0, width) columns of a jsonl without rows, from the metadata written beside it."""
    strategies = [s for s in metadata.get("strategies", "").split(",") if s]
    widths = {s: _stored_width(s, compaction, dims) for s in strategies}
    if not strategies or None in widths.values():
        raise SeqpoolError(f"{path} holds no rows, and no metadata beside it ({sidecar_path(path)}) records its "
                           f"strategies and widths; rerun seqpool embed to write it again")
    dtype = _stored_dtype(compaction)
    columns = {s: np.zeros((0, width), dtype=dtype) for s, width in widths.items()}
    if metadata.get("chunk_output") == "True":
        columns.update({name: np.zeros(0, dtype=_CHUNK_DTYPE) for name in CHUNK_COLUMNS})
    return {name: _Stored(array.dtype, array.shape, lambda array=array: array) for name, array in columns.items()}


# -- sidecars -------------------------------------------------------------------------------------


def _read_sidecar(path: Path) -> dict[str, str]:
    """The metadata beside an npy or jsonl file: ``{}`` when there is none, else a JSON object
    (its ownership marker, :func:`seqpool.io.ownership.marked_json`, is no metadata)."""
    sidecar = sidecar_path(path)
    if not sidecar.exists():
        return {}
    try:
        metadata = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as error:
        raise SeqpoolError(f"{sidecar} (the metadata of {path.name}) is not readable JSON ({error})") from None
    if not isinstance(metadata, dict):
        raise SeqpoolError(f"{sidecar} (the metadata of {path.name}) is not a JSON object")
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in metadata.items() if k != JSON_MARKER_KEY}
