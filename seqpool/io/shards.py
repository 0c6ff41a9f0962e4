"""The output folder of ``seqpool embed --engine ray``: parquet shards named by row range, and a manifest.

::

    OUT/_manifest.json                               inputs (+digests), settings, shards done (+sha256)
    OUT/part-00000-000000000000-000000008192.parquet  source 0, rows [0, 8192)
    OUT/part-00000-000000008192-000000009000.parquet  source 0, rows [8192, 9000)
    OUT/part-00001-000000000000-000000000017.parquet  source 1, ...

A shard is a fixed row range of one input, planned by the driver from row counts alone,
so what a shard holds never depends on how the engine batched or scheduled the work.
Each shard file is written atomically and recorded in the manifest with its row range and the
sha256 of its bytes. Nothing read back is trusted unchecked: the manifest is schema-checked
(:func:`check_manifest`), and a shard file must match its recorded digest and hold exactly its
planned rows (its ``row`` and ``source`` columns), vectors of the stored width and finite
floats (:func:`read_shard`). Resuming keeps the shards that pass and embeds the rest again;
loading refuses a folder with one that does not. Shards sort by name into input order.

Nothing here imports Ray or torch: :func:`load_folder` (behind ``load_embeddings(folder)``)
reads a finished folder anywhere.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np

from seqpool.errors import SeqpoolError
from seqpool.io.atomic import atomic_path

MANIFEST = "_manifest.json"
MANIFEST_VERSION = 2  # 2: each finished shard recorded with its row range and sha256
#: Rows per shard: the local engine's chunk size, so a shard is what one local chunk is.
DEFAULT_SHARD_ROWS = 8192
#: A shard file's metadata key: how many of its texts were cut at the model's max length.
TRUNCATED_KEY = "seqpool.truncated"


@dataclass(frozen=True)
class Shard:
    """Rows ``[first_row, first_row + rows)`` of input number ``source``."""

    source: int
    first_row: int
    rows: int

    @property
    def end(self) -> int:
        return self.first_row + self.rows

    @property
    def name(self) -> str:
        return f"part-{self.source:05d}-{self.first_row:012d}-{self.end:012d}.parquet"

    def describe(self, paths: Sequence[str]) -> str:
        """``shard part-...parquet (corpus.txt rows 8192-16383)`` for messages."""
        return f"shard {self.name} ({paths[self.source]} rows {self.first_row}-{self.end - 1})"

    def record(self, sha256: str) -> dict[str, Any]:
        """The manifest's entry for this shard, written with the digest of its file's bytes."""
        return {"file": self.name, "source": self.source, "first_row": self.first_row, "rows": self.rows,
                "sha256": sha256}


def plan_shards(row_counts: Sequence[int], shard_rows: int) -> list[Shard]:
    """Every input cut into consecutive ranges of ``shard_rows`` rows (the last may be shorter)."""
    return list(iter_shards(row_counts, shard_rows))


def iter_shards(row_counts: Sequence[int], shard_rows: int) -> Iterator[Shard]:
    """:func:`plan_shards`, one shard at a time."""
    for source, rows in enumerate(row_counts):
        for start in range(0, rows, shard_rows):
            yield Shard(source, start, min(shard_rows, rows - start))


def shard_of(source: int, row: int, shard_rows: int, row_counts: Sequence[int]) -> Shard:
    """The planned shard holding ``row`` of input ``source``."""
    start = row - row % shard_rows
    return Shard(source, start, min(shard_rows, row_counts[source] - start))


# -- manifest ----------------------------------------------------------------------------------

_SHA256 = re.compile(r"[0-9a-f]{64}")
_MISSING = object()


def read_manifest(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The folder's manifest, schema-checked (:func:`check_manifest`); ``None`` if it has none."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SeqpoolError(f"{path} is not a readable seqpool manifest ({error}); delete the folder to "
                           f"start over") from None
    if not isinstance(manifest, dict) or "version" not in manifest:
        raise SeqpoolError(f"{path} is not a seqpool manifest")
    if manifest["version"] != MANIFEST_VERSION:
        raise SeqpoolError(f"{path} is a seqpool manifest of version {manifest['version']!r}; this seqpool reads "
                           f"version {MANIFEST_VERSION}: embed again into a new folder")
    check_manifest(manifest, path)
    return manifest


def write_manifest(folder: str | os.PathLike, manifest: Mapping[str, Any]) -> None:
    with atomic_path(Path(folder) / MANIFEST) as handle:
        json.dump(manifest, handle, indent=1)
        handle.write("\n")


def check_manifest(manifest: Mapping[str, Any], where: object) -> None:
    """Refuse, in one line naming the key, a manifest whose types, counts or shard ranges are off.

    A hand-edited count (a negative ``rows``, a ``shard_rows`` of 0) would otherwise plan
    no shards or the wrong ones, and the folder would load as ``(0, D)`` or without some rows.
    Every shard entry must be a planned range of its input; a complete run's entries must be
    every planned range once, so together they cover every input row exactly once.
    """
    def bad(key: str, expected: str, value: Any = _MISSING, shown: str | None = None) -> SeqpoolError:
        if shown is None:
            shown = "it is missing" if value is _MISSING else f"got {value!r}"
            shown = shown if len(shown) <= 90 else shown[:87] + "..."
        return SeqpoolError(f"{where}: `{key}` must be {expected}, {shown}; the manifest was edited or damaged, "
                            f"so the folder cannot be trusted: embed again into a new folder")

    def field(record: Mapping[str, Any], key: str, name: str, kinds: type | tuple[type, ...], expected: str) -> Any:
        value = record.get(name, _MISSING)
        if not isinstance(value, kinds):
            raise bad(f"{key}.{name}" if key else name, expected, value)
        return value

    def whole(record: Mapping[str, Any], key: str, name: str, least: int) -> int:
        value = record.get(name, _MISSING)
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise bad(f"{key}.{name}", f"a whole number >= {least}", value)
        return value

    def digest(record: Mapping[str, Any], key: str, name: str) -> str:
        value = field(record, key, name, str, "a sha256 (64 hex digits)")
        if not _SHA256.fullmatch(value):
            raise bad(f"{key}.{name}", "a sha256 (64 hex digits)", value)
        return value

    field(manifest, "", "complete", bool, "true or false")
    inputs = field(manifest, "", "inputs", list, "a list of the inputs")
    if not inputs:
        raise bad("inputs", "a list of the inputs", inputs)
    rows, paths = [], {}
    for i, item in enumerate(inputs):
        key = f"inputs[{i}]"
        if not isinstance(item, dict):
            raise bad(key, "an object", item)
        path = field(item, key, "path", str, "a path")
        if not path or path in paths:
            raise bad(f"{key}.path", "a path not listed before" if path else "a path", path)
        paths[path] = i
        field(item, key, "format", str, "an input format")
        field(item, key, "text_field", (str, type(None)), "a field name or null")
        digest(item, key, "digest")
        rows.append(whole(item, key, "rows", 0))
    settings = field(manifest, "", "settings", dict, "an object")
    shard_rows = whole(settings, "settings", "shard_rows", 1)
    strategies = field(settings, "settings", "strategies", list, "a list of strategy names")
    if not strategies or not all(isinstance(s, str) and s for s in strategies) or len(set(strategies)) < len(strategies):
        raise bad("settings.strategies", "a list of distinct strategy names", strategies)
    dims = field(settings, "settings", "dims", dict, "an object of widths")
    for name in strategies:
        whole(dims, "settings.dims", name, 1)
    if "compaction" in manifest and not isinstance(manifest["compaction"], dict):
        raise bad("compaction", "an object", manifest["compaction"])
    records = field(manifest, "", "shards", list, "a list of finished shards")
    seen: dict[str, int] = {}
    for j, record in enumerate(records):
        key = f"shards[{j}]"
        if not isinstance(record, dict):
            raise bad(key, "an object", record)
        source = whole(record, key, "source", 0)
        if source >= len(rows):
            raise bad(f"{key}.source", f"the number of one of the {len(rows)} inputs", source)
        first = whole(record, key, "first_row", 0)
        if first % shard_rows or first >= rows[source]:
            raise bad(f"{key}.first_row", f"a multiple of shard_rows ({shard_rows}) below inputs[{source}].rows "
                                          f"({rows[source]})", first)
        shard = Shard(source, first, min(shard_rows, rows[source] - first))
        if whole(record, key, "rows", 1) != shard.rows:
            raise bad(f"{key}.rows", f"{shard.rows} (the planned range of inputs[{source}])", record["rows"])
        if field(record, key, "file", str, "a shard file name") != shard.name:
            raise bad(f"{key}.file", repr(shard.name), record["file"])
        if shard.name in seen:
            raise bad(key, f"a shard not listed before (shards[{seen[shard.name]}] is the same)", shard.name)
        seen[shard.name] = j
        digest(record, key, "sha256")
    if manifest["complete"]:
        for shard in iter_shards(rows, shard_rows):  # lazily: a huge edited count stops at its first gap
            if shard.name not in seen:
                raise bad("shards", "every planned shard of a complete run", shown=f"it lacks {shard.name} "
                          f"(rows {shard.first_row}-{shard.end - 1} of inputs[{shard.source}])")


def recorded_shards(manifest: Mapping[str, Any]) -> dict[Shard, str]:
    """The shards a checked manifest records as finished, in input order, with their files' sha256."""
    shards = {Shard(r["source"], r["first_row"], r["rows"]): r["sha256"] for r in manifest["shards"]}
    return dict(sorted(shards.items(), key=lambda item: (item[0].source, item[0].first_row)))


def stored_columns(manifest: Mapping[str, Any]) -> dict[str, tuple[int, np.dtype]]:
    """Each strategy's stored (width, dtype): its vectors, or the codes of a compact precision."""
    from seqpool.quantize import Compaction, output_dtype, output_width

    precision = Compaction.from_metadata(manifest).precision
    dims = manifest["settings"]["dims"]
    return {name: (output_width(dims[name], precision), output_dtype(precision))
            for name in manifest["settings"]["strategies"]}


# -- shards -------------------------------------------------------------------------------------


def file_sha256(data: bytes) -> str:
    """The digest a shard is recorded and checked by: sha256 of the file's bytes (``sha256sum``)."""
    return hashlib.sha256(data).hexdigest()


def write_shard(folder: str | os.PathLike, shard: Shard, source_path: str, vectors: Mapping[str, np.ndarray],
                truncated: int = 0) -> str:
    """Write one shard's rows atomically; returns the sha256 of the bytes written, for the manifest.

    Columns: ``source``, ``row`` and a fixed-size list column per strategy (the layout
    ``seqpool embed -o x.parquet`` writes too): float32 vectors, or the codes of a compact
    precision in their own dtype. How many of its texts were cut at the model's max length
    goes in the file's metadata, so a resumed run still reports them all."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {"source": pa.array([source_path] * shard.rows, type=pa.string()),
               "row": pa.array(np.arange(shard.first_row, shard.end, dtype=np.int64))}
    for name, array in vectors.items():
        array = np.ascontiguousarray(array)
        array = array.astype(np.float32) if array.dtype.kind == "f" and array.dtype != np.float16 else array
        columns[name] = pa.FixedSizeListArray.from_arrays(pa.array(array.reshape(-1)), array.shape[1])
    table = pa.table(columns).replace_schema_metadata({TRUNCATED_KEY: str(int(truncated))})
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink)
    data = sink.getvalue().to_pybytes()
    with atomic_path(Path(folder) / shard.name, mode="wb") as handle:
        handle.write(data)
    return file_sha256(data)


class DamagedShard(Exception):
    """A shard file that fails its checks; the text says how (``is missing``, ``holds rows ...``)."""


@dataclass(frozen=True)
class ShardFile:
    """A shard file that passed every check: its stored vectors (or codes) by strategy, the
    sha256 of its bytes, and how many of its texts were truncated."""

    vectors: dict[str, np.ndarray]
    sha256: str
    truncated: int


def read_shard(folder: str | os.PathLike, shard: Shard, source_path: str,
               columns: Mapping[str, tuple[int, np.dtype]], sha256: str | None = None) -> ShardFile:
    """Shard ``shard``'s file, verified before it is trusted; :class:`DamagedShard` if it is not
    what this run wrote there: bytes other than ``sha256`` (when the manifest recorded it), rows
    other than exactly its planned range of ``source_path`` (two files of equal size swapped
    hold the right count of the wrong rows), ``columns`` (name -> stored width, dtype) missing
    or of another shape, or floats that are NaN or infinite."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        data = (Path(folder) / shard.name).read_bytes()
    except FileNotFoundError:
        raise DamagedShard("is missing") from None
    except OSError as error:
        raise DamagedShard(f"cannot be read ({error.strerror or error})") from None
    digest = file_sha256(data)
    if sha256 is not None and digest != sha256:
        raise DamagedShard("is not the file this run wrote there (its sha256 differs from the one the manifest "
                           "recorded: changed, swapped or damaged since)")
    try:
        table = pq.read_table(pa.BufferReader(data))
        truncated = int((table.schema.metadata or {}).get(TRUNCATED_KEY.encode(), b"0"))
    except Exception as error:  # pyarrow raises several types for a damaged file
        raise DamagedShard(f"is not a readable seqpool shard ({' '.join(str(error).split())[:120]})") from None
    if table.num_rows != shard.rows:
        raise DamagedShard(f"holds {table.num_rows} rows, not {shard.rows}")
    for name, kind in (("row", pa.types.is_integer), ("source", pa.types.is_string)):
        if name not in table.column_names or table.column(name).null_count or not kind(table.column(name).type):
            raise DamagedShard(f"has no complete `{name}` column")
    rows = table.column("row").to_numpy()
    if not np.array_equal(rows, np.arange(shard.first_row, shard.end)):
        raise DamagedShard(f"holds rows {rows.min()}-{rows.max()} (its `row` column), not exactly rows "
                           f"{shard.first_row}-{shard.end - 1} in order")
    sources = table.column("source").unique().to_pylist()
    if sources != [source_path]:
        raise DamagedShard(f"holds rows of {', '.join(map(str, sources))} (its `source` column), not of {source_path}")
    if truncated < 0:
        raise DamagedShard(f"says {truncated} of its texts were truncated")
    vectors = {}
    for name, (width, dtype) in columns.items():
        column = table.column(name).combine_chunks() if name in table.column_names else None
        if column is None or column.null_count or not pa.types.is_fixed_size_list(column.type) \
                or column.type.list_size != width or np.dtype(column.type.value_type.to_pandas_dtype()) != dtype:
            raise DamagedShard(f"has no `{name}` column of {width}-wide {np.dtype(dtype).name} vectors")
        vectors[name] = np.asarray(column.flatten()).reshape(len(column), width)
        if np.dtype(dtype).kind == "f" and not np.isfinite(vectors[name]).all():
            raise DamagedShard(f"holds NaN or infinite values in its `{name}` column")
    return ShardFile(vectors, digest, truncated)


def kept_shards(folder: str | os.PathLike, plan: Iterable[Shard], manifest: Mapping[str, Any],
                paths: Sequence[str]) -> tuple[dict[Shard, tuple[str, int]], dict[Shard, str]]:
    """For a resume: the planned shards whose file passes :func:`read_shard` (against the digest
    ``manifest`` recorded, if it recorded the shard before the run stopped), each with its
    sha256 and truncated texts; and the files that fail, with why: those are embedded again,
    like the missing ones (the shard's rows come again from inputs whose digests match)."""
    recorded, columns = recorded_shards(manifest), stored_columns(manifest)
    kept, damaged = {}, {}
    for shard in plan:
        path = Path(folder) / shard.name
        if not (path.exists() or path.is_symlink()):
            continue
        try:
            found = read_shard(folder, shard, paths[shard.source], columns, recorded.get(shard))
        except DamagedShard as damage:
            damaged[shard] = str(damage)
            continue
        kept[shard] = found.sha256, found.truncated
    return kept, damaged


def choose_strategy(where: object, vectors: Sequence[str], strategy: str | None,
                    loadable: Sequence[str] | None = None) -> str:
    """The strategy to load from an output at ``where`` that holds ``vectors``: ``strategy``, or
    the only one held; ``loadable`` (default ``vectors``) are the names that may be asked for."""
    loadable = vectors if loadable is None else loadable
    if strategy is None:
        if len(vectors) != 1:
            raise SeqpoolError(f"{where} holds {', '.join(vectors) or 'no rows'}; name the strategy to load")
        return vectors[0]
    if strategy not in loadable:
        raise SeqpoolError(f"{where} has no {strategy!r} embeddings (it holds {', '.join(loadable)})")
    return strategy


def load_folder(folder: str | os.PathLike, strategy: str | None = None, decode: bool = True) -> np.ndarray:
    """One strategy's ``(N, D)`` vectors from a finished run's folder, in input order
    (inputs as listed in the manifest, rows in order within each), every shard verified
    first (:func:`read_shard`). Compact precisions are decoded with the ranges in the manifest
    (as ``load_embeddings`` decodes a local output); ``decode=False`` returns the stored codes."""
    from seqpool.quantize import Compaction

    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        raise SeqpoolError(f"{folder} is a folder without {MANIFEST}: not the output of `seqpool embed --engine ray`")
    if not manifest["complete"]:
        raise SeqpoolError(f"{folder} holds an unfinished run; rerun the same command with --resume to finish it")
    strategy = choose_strategy(folder, manifest["settings"]["strategies"], strategy)
    compaction = Compaction.from_metadata(manifest)
    compaction.dim = manifest["settings"]["dims"][strategy]  # the width before binary packing
    columns, paths = stored_columns(manifest), [item["path"] for item in manifest["inputs"]]
    parts = []
    for shard, sha256 in recorded_shards(manifest).items():  # complete: every planned shard, in order
        try:
            parts.append(read_shard(folder, shard, paths[shard.source], columns, sha256).vectors[strategy])
        except DamagedShard as damage:
            raise SeqpoolError(f"{folder}: {shard.describe(paths)} {damage}; rerun the same command with --resume "
                               f"to embed it again") from None
    if not parts:  # every input empty: (0, D), as a local output of an empty input
        if decode or compaction.is_identity:
            return np.empty((0, compaction.dim), dtype=np.float32)
        from seqpool.quantize import output_dtype, output_width

        return np.empty((0, output_width(compaction.dim, compaction.precision)), dtype=output_dtype(compaction.precision))
    codes = np.concatenate(parts)
    if compaction.is_identity:
        return codes.astype(np.float32, copy=False)
    return compaction.decode(strategy, codes) if decode else codes
