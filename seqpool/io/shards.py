"""The output folder of ``seqpool embed --engine ray``: parquet shards named by row range, and a manifest.

::

    OUT/_manifest.json                               inputs (+digests), settings, shards done
    OUT/part-00000-000000000000-000000008192.parquet  source 0, rows [0, 8192)
    OUT/part-00000-000000008192-000000009000.parquet  source 0, rows [8192, 9000)
    OUT/part-00001-000000000000-000000000017.parquet  source 1, ...

A shard is a fixed row range of one input, planned by the driver from row counts alone,
so what a shard holds never depends on how the engine batched or scheduled the work.
Each shard file is written atomically, so a shard file that exists is complete: resuming
is "embed the ranges whose file is missing". Shards sort by name into input order.

Nothing here imports Ray or torch: :func:`load_folder` (behind ``load_embeddings(folder)``)
reads a finished folder anywhere.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from seqpool.errors import SeqpoolError
from seqpool.io.atomic import atomic_path

MANIFEST = "_manifest.json"
MANIFEST_VERSION = 1
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


def plan_shards(row_counts: Sequence[int], shard_rows: int) -> list[Shard]:
    """Every input cut into consecutive ranges of ``shard_rows`` rows (the last may be shorter)."""
    return [Shard(source, start, min(shard_rows, rows - start))
            for source, rows in enumerate(row_counts) for start in range(0, rows, shard_rows)]


def shard_of(source: int, row: int, shard_rows: int, row_counts: Sequence[int]) -> Shard:
    """The planned shard holding ``row`` of input ``source``."""
    start = row - row % shard_rows
    return Shard(source, start, min(shard_rows, row_counts[source] - start))


# -- manifest ----------------------------------------------------------------------------------


def read_manifest(folder: str | os.PathLike) -> dict[str, Any] | None:
    """The folder's manifest, ``None`` if it has none; a damaged one is a user error."""
    path = Path(folder) / MANIFEST
    if not path.exists():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SeqpoolError(f"{path} is not a readable seqpool manifest ({error}); delete the folder to "
                           f"start over") from None
    if not isinstance(manifest, dict) or manifest.get("version") != MANIFEST_VERSION:
        raise SeqpoolError(f"{path} is not a seqpool manifest of version {MANIFEST_VERSION}")
    return manifest


def write_manifest(folder: str | os.PathLike, manifest: Mapping[str, Any]) -> None:
    with atomic_path(Path(folder) / MANIFEST) as handle:
        json.dump(manifest, handle, indent=1)
        handle.write("\n")


# -- shards -------------------------------------------------------------------------------------


def write_shard(folder: str | os.PathLike, shard: Shard, source_path: str, vectors: Mapping[str, np.ndarray],
                truncated: int = 0) -> Path:
    """Write one shard's rows atomically: ``source``, ``row`` and a fixed-size list column per
    strategy (the layout ``seqpool embed -o x.parquet`` writes too): float32 vectors, or the
    codes of a compact precision in their own dtype. How many of its texts were cut at the
    model's max length goes in the file's metadata, so a resumed run still reports them all."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    columns = {"source": pa.array([source_path] * shard.rows, type=pa.string()),
               "row": pa.array(np.arange(shard.first_row, shard.end, dtype=np.int64))}
    for name, array in vectors.items():
        array = np.ascontiguousarray(array)
        array = array.astype(np.float32) if array.dtype.kind == "f" and array.dtype != np.float16 else array
        columns[name] = pa.FixedSizeListArray.from_arrays(pa.array(array.reshape(-1)), array.shape[1])
    path = Path(folder) / shard.name
    table = pa.table(columns).replace_schema_metadata({TRUNCATED_KEY: str(int(truncated))})
    with atomic_path(path, mode="wb") as handle:
        pq.write_table(table, handle)
    return path


def finished_shards(folder: str | os.PathLike, shards: Iterable[Shard]) -> dict[Shard, int]:
    """The shards whose file exists with the planned number of rows (atomic writes: then
    complete), each with how many of its texts were truncated (0 when its file does not say)."""
    import pyarrow.parquet as pq

    done = {}
    for shard in shards:
        path = Path(folder) / shard.name
        if path.is_file():
            try:
                metadata = pq.ParquetFile(path).metadata
                if metadata.num_rows == shard.rows:
                    done[shard] = int((metadata.metadata or {}).get(TRUNCATED_KEY.encode(), b"0"))
            except Exception:  # unreadable: embed it again
                pass
    return done


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
    (inputs as listed in the manifest, rows in order within each). Compact precisions are
    decoded with the ranges in the manifest (as ``load_embeddings`` decodes a local output);
    ``decode=False`` returns the stored codes."""
    import pyarrow.parquet as pq

    from seqpool.quantize import Compaction

    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None:
        raise SeqpoolError(f"{folder} is a folder without {MANIFEST}: not the output of `seqpool embed --engine ray`")
    if not manifest.get("complete"):
        raise SeqpoolError(f"{folder} holds an unfinished run; rerun the same command with --resume to finish it")
    strategy = choose_strategy(folder, manifest["settings"]["strategies"], strategy)
    compaction = Compaction.from_metadata(manifest)
    compaction.dim = manifest["settings"]["dims"][strategy]  # the width before binary packing
    shards = plan_shards([source["rows"] for source in manifest["inputs"]], manifest["settings"]["shard_rows"])
    parts = []
    for shard in shards:
        path = folder / shard.name
        if not path.is_file():
            raise SeqpoolError(f"{path} is missing; rerun the command with --resume to embed it again")
        column = pq.read_table(path, columns=[strategy]).column(strategy).combine_chunks()
        parts.append(np.asarray(column.flatten()).reshape(shard.rows, -1))
    if not parts:  # every input empty: (0, D), as a local output of an empty input
        if decode or compaction.is_identity:
            return np.empty((0, compaction.dim), dtype=np.float32)
        from seqpool.quantize import output_dtype, output_width

        return np.empty((0, output_width(compaction.dim, compaction.precision)), dtype=output_dtype(compaction.precision))
    codes = np.concatenate(parts)
    if compaction.is_identity:
        return codes.astype(np.float32, copy=False)
    return compaction.decode(strategy, codes) if decode else codes
