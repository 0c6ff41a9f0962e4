"""``seqpool embed INPUT... --engine ray``: files in, a folder of row-exact parquet shards out.

The driver reads every input once with the shared reader (so rows are numbered exactly as
the local engine numbers them, empty lines included), records row counts and digests, and
cuts each input into fixed row ranges (:mod:`.inputs`, :mod:`seqpool.io.shards`). Ray Data then
streams the missing ranges: read tasks re-read their file and check each range's digest,
an actor pool of :class:`Embedder` embeds, and the driver reassembles rows into their
ranges and writes each finished range as one atomic parquet file. Which rows a file holds
is fixed by the plan, never by Ray's blocks or scheduling, so:

* a killed actor is restarted by Ray and its batch retried (at most ``max_attempts`` times
  in all, so rows that crash their actor every time end the run instead of looping); rows
  land in their range by row number, so a retried batch can neither lose nor duplicate one;
* ``resume=True`` after the driver died embeds exactly the ranges whose file is missing or
  fails verification (:func:`seqpool.io.shards.read_shard`: recorded digest, rows, finite values);
* a range whose batch raises is retried in a fresh run, and after ``max_attempts`` the run
  ends with one line naming it; the ranges already written are kept for ``--resume``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from seqpool.distributed.dataset import (
    DEFAULT_RAY_TIMEOUT_S,
    check_resources,
    check_timeout,
    check_workers,
    default_workers,
    import_ray,
    map_embedder,
    ray_session,
)
from seqpool.distributed.embedder import Embedder
from seqpool.distributed.folder import ManifestRecorder, check_output_folder, check_same_run
from seqpool.distributed.inputs import Input, expand_inputs, scan
from seqpool.errors import SeqpoolError
from seqpool.io.shards import DEFAULT_SHARD_ROWS, MANIFEST_VERSION, Shard, kept_shards, plan_shards, shard_of

#: Bounds of the automatic rows per actor call (see :func:`call_rows`).
MIN_CALL_ROWS, MAX_CALL_ROWS, CALLS_PER_ACTOR = 64, 8192, 4


@dataclass(frozen=True)
class FilesResult:
    """What :func:`embed_files` wrote."""

    folder: Path
    rows: int
    dim: int
    strategies: tuple[str, ...]
    shards: int
    resumed_shards: int
    truncated: int  # texts cut at the model's max length (--long-texts truncate), resumed shards included
    redone: tuple[str, ...] = ()  # kept shards that failed verification on resume, each with why: embedded again


def embed_files(inputs: str | os.PathLike | Sequence[str | os.PathLike], output_dir: str | os.PathLike, *,
                model: str | None = None, strategies: Sequence[str] | str | None = None,
                normalize: bool | None = None, layer: int | Sequence[int] = -1, dtype: str | None = None,
                max_length: int | None = None, batch_size: int | None = None, input_format: str | None = None,
                text_field: str | None = None, ray_address: str | None = None, workers: int | None = None,
                num_cpus: float = 1, num_gpus: float = 0, shard_rows: int = DEFAULT_SHARD_ROWS,
                rows_per_call: int | None = None, resume: bool = False, progress: bool | None = None,
                max_attempts: int = 3, embedder: Embedder | None = None, prompt: str | None = None,
                prompt_name: str | None = None, include_prompt: bool | None = None, long_texts: str = "truncate",
                window: int | None = None, stride: int | None = None, truncate_dim: int | None = None,
                precision: str = "float32", calibration: str | os.PathLike | None = None,
                ray_timeout: float = DEFAULT_RAY_TIMEOUT_S) -> FilesResult:
    """Embed every row of ``inputs`` on a Ray cluster into parquet shards under ``output_dir``.

    ``inputs``: files, globs (``data/*.jsonl``, ``**`` too) or folders (every file inside,
    recursively, except names starting with ``.`` or ``_``), on a path every Ray node can
    read (a local disk for a local run, a shared mount on a cluster). Without
    ``ray_address`` a local Ray instance sized to this machine runs the job and is shut down
    after; ``"auto"`` or ``"ray://host:port"`` joins a cluster; a caller that already ran
    ``ray.init`` is used as is. ``workers`` actors (default: one per CPU, or per GPU with
    ``num_gpus``) each hold one model. The model settings are :class:`Embedder`'s; pass
    ``embedder`` instead to use a configured (or subclassed) one.

    ``rows_per_call`` rows go to an actor at a time (the Encoder sorts them by length and
    batches them further by ``batch_size`` and its token budget): what a restarted actor
    redoes. By default about a quarter of each actor's share, between 64 and 8192 rows
    (:func:`call_rows`).

    Prompts, long texts and ``truncate_dim`` are :class:`Embedder`'s (one vector per text:
    row-per-chunk output does not fit the one-row-per-input-row shards). ``precision``
    (:mod:`seqpool.quantize`) is applied by the driver as it writes each shard; int8/uint8
    ranges are fitted once, before any actor starts, on ``calibration``'s texts or else on the
    first shard's vectors (embedded on the driver, and written as that shard), and kept in the
    manifest, so every shard and every resumed run uses the same buckets.

    ``ray_timeout``: seconds to wait for the cluster at ``ray_address`` to answer before the
    run ends in one line naming the address (Ray itself retries for many minutes).

    ``load_embeddings(output_dir)`` reads the result back in input order (decoded), every shard
    verified against the manifest. ``resume=True`` continues an interrupted run with the same
    inputs and settings (anything else is an error): shard files that pass the same checks are
    kept, the others (named in ``FilesResult.redone``) are embedded again with the missing ones.
    """
    from seqpool.vector_options import VectorOptions

    calibration = None if calibration is None else os.path.abspath(str(calibration))
    VectorOptions(precision=precision, calibration=calibration)  # torch-free checks, before any input is read
    shard_rows = _whole(shard_rows, "shard_rows")
    max_attempts = _whole(max_attempts, "max_attempts")
    workers = None if workers is None else check_workers(workers)
    rows_per_call = None if rows_per_call is None else _whole(rows_per_call, "rows_per_call")
    ray_timeout = check_timeout(ray_timeout)
    import_ray()  # a missing extra is one line, before any input is read
    folder = Path(output_dir)
    previous = check_output_folder(folder, resume)
    paths = expand_inputs(inputs, folder)
    if calibration is not None:
        from seqpool.io import TextSource

        TextSource.open(calibration)  # exists and is readable, before the model loads
    sources = [scan(path, input_format, text_field, shard_rows) for path in paths]
    if embedder is None:
        embedder = Embedder(model=model, strategies=strategies, normalize=normalize, layer=layer, dtype=dtype,
                            max_length=max_length, batch_size=batch_size, prompt=prompt, prompt_name=prompt_name,
                            include_prompt=include_prompt, long_texts=long_texts, window=window, stride=stride,
                            truncate_dim=truncate_dim)
    with _ray_while_describing(embedder, ray_address, ray_timeout, quiet=progress is False) as (ray, described):
        return _run(ray, described, embedder, folder, previous, sources, compaction_args=(precision, calibration),
                    batch_size=batch_size, shard_rows=shard_rows, workers=workers, rows_per_call=rows_per_call,
                    num_cpus=num_cpus, num_gpus=num_gpus, progress=progress, max_attempts=max_attempts)


@contextlib.contextmanager
def _ray_while_describing(embedder: Embedder, address: str | None, timeout: float,
                          quiet: bool) -> Iterator[tuple[Any, dict]]:
    """Ray, and the embedder's resolved settings, with the two started side by side.

    ``describe`` loads torch and the model on the driver to check them; starting Ray is mostly
    waiting for its daemons. Together they take the longer of the two instead of the sum
    (2-3 s of a run's fixed cost on 2 cores). A bad model still ends the run with its own error.
    """
    with ThreadPoolExecutor(1, thread_name_prefix="seqpool-describe") as pool:
        described = pool.submit(embedder.describe)
        with ray_session(address, quiet=quiet, timeout=timeout) as ray:
            yield ray, described.result()


def _run(ray: Any, described: dict[str, Any], embedder: Embedder, folder: Path, previous: dict[str, Any] | None,
         sources: list[Input], *, compaction_args: tuple[str, str | None], batch_size: int | None,
         shard_rows: int, workers: int | None, rows_per_call: int | None, num_cpus: float, num_gpus: float,
         progress: bool | None, max_attempts: int) -> FilesResult:
    """:func:`embed_files` once the inputs are scanned and Ray runs: plan, write, record."""
    from seqpool.quantize import Compaction

    precision, calibration = compaction_args
    settings = {**described, "batch_size": batch_size, "shard_rows": shard_rows}
    compact = {"precision": precision} if precision != "float32" else {}
    compact.update({"calibration": calibration} if calibration is not None else {})
    if compact:  # a resume with another precision or calibration is refused like any changed setting
        settings["vectors"] = {**settings.get("vectors", {}), **compact}
    dims = settings["dims"]
    manifest = {"version": MANIFEST_VERSION, "complete": False, "inputs": [source.record() for source in sources],
                "settings": settings, "shards": []}
    plan = plan_shards([source.rows for source in sources], shard_rows)
    done: dict[Shard, tuple[str, int]] = {}  # verified finished shard -> its sha256, its texts cut at max_length
    damaged: dict[Shard, str] = {}  # shard files that failed verification -> why: embedded again
    if previous is not None:
        check_same_run(folder, previous, manifest)
        done, damaged = kept_shards(folder, plan, previous, [source.path for source in sources])
        for stale in folder.glob(".part-*.tmp"):  # a temporary file of a write the kill interrupted
            stale.unlink(missing_ok=True)
    compaction = Compaction.from_metadata(previous) if previous is not None and "compaction" in previous \
        else Compaction(precision)
    first = _fit_ranges(compaction, embedder, sources, plan, done, shard_rows, calibration)
    if not compaction.is_identity:
        manifest.update(_compaction_record(compaction))
    created = not folder.exists()
    folder.mkdir(exist_ok=True)
    recorder = ManifestRecorder(folder, manifest, done)
    try:
        if first is not None:  # the shard the ranges were fitted on: embedded already
            shard, vectors, truncated = first
            recorder.write(shard, sources[shard.source].path, _encoded(compaction, vectors), truncated)
        missing = [shard for shard in plan if shard not in recorder.done]
        if missing:
            _embed_missing(ray, missing, sources, embedder, recorder, compaction, shard_rows=shard_rows, dims=dims,
                           workers=workers, rows_per_call=rows_per_call, num_cpus=num_cpus, num_gpus=num_gpus,
                           progress=progress, max_attempts=max_attempts)
    except BaseException:
        if created and not recorder.done:
            shutil.rmtree(folder, ignore_errors=True)  # nothing was embedded: leave nothing behind
        else:
            recorder.flush()
        raise
    recorder.finish()
    paths = [source.path for source in sources]
    return FilesResult(folder, sum(source.rows for source in sources), dims[settings["strategies"][0]],
                       tuple(settings["strategies"]), len(plan), len(done), recorder.truncated,
                       tuple(f"{shard.describe(paths)} {why}" for shard, why in damaged.items()))


def _fit_ranges(compaction: Any, embedder: Embedder, sources: list[Input], plan: list[Shard],
                done: dict[Shard, tuple[str, int]], shard_rows: int,
                calibration: str | None) -> tuple[Shard, dict[str, np.ndarray], int] | None:
    """Fit int8/uint8 ranges once, on the driver (kept as they are when resuming): on the
    calibration texts, else on the first shard's vectors, which are returned to be written
    (with how many of its texts were truncated)."""
    if not compaction.needs_ranges or compaction.ranges or not plan:
        return None
    from seqpool.io import TextSource, text_digest

    if calibration is not None:
        for name, vectors in embedder.embed(list(TextSource.open(calibration).texts())).items():
            compaction.fit(name, vectors)
        return None
    shard = plan[0]
    source = sources[shard.source]
    texts = next(iter(TextSource.open(source.path, source.format, source.text_field).chunks(shard_rows)))
    if text_digest(texts) != source.shard_digests[0]:
        raise SeqpoolError(f"{source.path} changed while it was being embedded (rows 0-{len(texts) - 1} differ "
                           f"from the first read); rerun")
    vectors = embedder.embed(texts)
    for name, array in vectors.items():
        compaction.fit(name, array)
    return None if shard in done else (shard, vectors, embedder.encoder.last_stats.truncated)


def _compaction_record(compaction: Any) -> dict[str, Any]:
    """``{"compaction": {...}}`` for the manifest (what ``Compaction.from_metadata`` reads back)."""
    from seqpool.quantize import METADATA_KEY

    return {METADATA_KEY: json.loads(compaction.to_metadata()[METADATA_KEY])}


def _encoded(compaction: Any, vectors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A shard's stored columns: the float vectors, or their codes with the run's fixed ranges."""
    if compaction.is_identity:
        return vectors
    return {name: compaction.encode(name, array) for name, array in vectors.items()}


# -- the Ray run -----------------------------------------------------------------------------------


def _embed_missing(ray: Any, missing: list[Shard], sources: list[Input], embedder: Embedder,
                   recorder: ManifestRecorder, compaction: Any, *, shard_rows: int, dims: dict[str, int],
                   workers: int | None, rows_per_call: int | None, num_cpus: float, num_gpus: float,
                   progress: bool | None, max_attempts: int) -> None:
    """Run rounds over the missing shards until none is left; a shard whose rows failed is
    tried again next round, up to ``max_attempts`` times (a user error, at once)."""
    from seqpool.progress import progress_bar

    total = sum(source.rows for source in sources)
    failures: Counter[Shard] = Counter()
    paths = [source.path for source in sources]
    with progress_bar(total, progress, initial=sum(s.rows for s in recorder.done), unit="row") as bar:
        while missing:
            failed: dict[Shard, str] = {}
            try:
                stream = _stream(ray, missing, sources, embedder, shard_rows=shard_rows, dims=dims, workers=workers,
                                 rows_per_call=rows_per_call, num_cpus=num_cpus, num_gpus=num_gpus,
                                 max_attempts=max_attempts)
                for shard, vectors, error, truncated in stream:
                    if error:
                        failed[shard] = error
                        continue
                    recorder.write(shard, paths[shard.source], _encoded(compaction, vectors), truncated)
                    bar.update(shard.rows)
            except Exception as error:  # Ray's own failure (a read task, dead actors, the cluster): one line
                unfinished = [shard for shard in missing if shard not in recorder.done]
                raise _as_user_error(error, max_attempts, len(recorder.done), _where(unfinished, paths)) from None
            for shard, error in failed.items():
                failures[shard] += 1
                if error.startswith("SeqpoolError: ") or failures[shard] >= max_attempts:
                    times = "" if failures[shard] == 1 else f" {failures[shard]} times"
                    raise SeqpoolError(f"{shard.describe(paths)} failed{times}: {error}; the {len(recorder.done)} "
                                       f"shards done are kept: fix the cause and rerun with --resume")
            lost = [shard for shard in missing if shard not in recorder.done and shard not in failed]
            if lost:  # Ray finished without returning these rows: never report success over them
                raise SeqpoolError(f"{lost[0].describe(paths)} came back incomplete from Ray; rerun with --resume")
            missing = [shard for shard in missing if shard not in recorder.done]


def _stream(ray: Any, missing: list[Shard], sources: list[Input], embedder: Embedder, *, shard_rows: int,
            dims: dict[str, int], workers: int | None, rows_per_call: int | None, num_cpus: float,
            num_gpus: float, max_attempts: int) -> Iterator[tuple[Shard, dict[str, np.ndarray], str, int]]:
    """``(shard, vectors, error, truncated)`` for each shard whose rows all came back (``error``
    empty unless a batch holding some of its rows failed; ``truncated``: its texts cut at
    max_length), as the actors return them.

    A dead actor is restarted and its calls sent again, each at most ``max_attempts`` times:
    Ray's default (forever) would loop without end on rows that crash their actor every time.
    """
    wanted: dict[int, dict[int, str]] = {}
    for shard in missing:
        wanted.setdefault(shard.source, {})[shard.first_row] = sources[shard.source].shard_digests[
            shard.first_row // shard_rows]
    read_plan = {index: (sources[index].path, sources[index].format, sources[index].text_field, starts)
                 for index, starts in wanted.items()}
    num_cpus, num_gpus = check_resources(ray, num_cpus, num_gpus)
    actors = workers or default_workers(ray, num_cpus, num_gpus)
    batch_size = rows_per_call or call_rows(sum(shard.rows for shard in missing), actors)
    ds = _call_sized_blocks(ray, read_plan, sources, shard_rows, embedder.text_column, batch_size)
    row_counts = [source.rows for source in sources]
    ds = map_embedder(ds, _ShardWorker, workers=actors, batch_size=batch_size, num_cpus=num_cpus,
                      num_gpus=num_gpus, ray=ray, constructor_args=(embedder, dims),
                      max_task_retries=max_attempts - 1)
    assembler = _Assembler(set(missing), shard_rows, row_counts)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        yield from assembler.add(batch)


def call_rows(rows: int, actors: int) -> int:
    """Rows per actor call for ``rows`` rows on ``actors`` actors.

    The Encoder sorts a call's texts by length before batching them, so a bigger call wastes
    less on padding (MiniLM on 20 000 SentEval lines through the Encoder's own packing: 2.6 %
    padded tokens in 1250-row calls, 1.5 % in 2500, 0.7 % in 5000; one actor embeds 4-8 % faster
    in 2500-4096-row calls than in 1024-row ones). A
    smaller call balances the last ones between actors and costs less to redo after a crash:
    about ``CALLS_PER_ACTOR`` calls per actor, within ``[MIN_CALL_ROWS, MAX_CALL_ROWS]``.
    """
    share = math.ceil(rows / (CALLS_PER_ACTOR * max(1, actors)))
    return min(MAX_CALL_ROWS, max(MIN_CALL_ROWS, share))


def _call_sized_blocks(ray: Any, read_plan: dict[int, tuple], sources: list[Input], shard_rows: int, column: str,
                       rows: int) -> Any:
    """The rows to embed, read by one task per file, in blocks of at most ``rows`` rows.

    An actor works on one block at a time, and Ray merges what a read task yields into blocks
    of up to ``target_max_block_size`` bytes (128 MiB): one file would feed one actor. Cutting
    the read's output into call-sized blocks lets every actor take part.
    """
    def read() -> Any:
        ds = ray.data.from_items([{"source": index} for index in read_plan])
        return ds.map_batches(_read_shards, batch_size=1, num_cpus=0,  # no CPU: never waits behind the actors
                              fn_kwargs={"plan": read_plan, "shard_rows": shard_rows, "column": column})

    # Streaming repartition fuses into the read when both reserve no CPU. Its operator reserves
    # one CPU by default, and the public API cannot change that (ray-project/ray#56008): with the
    # actors holding every CPU it would never run. Ray is pinned, so the logical operator's remote
    # arguments are set directly.
    blocked = read().repartition(target_num_rows_per_block=rows)
    node = getattr(getattr(blocked, "_logical_plan", None), "dag", None)
    if type(node).__name__ == "StreamingRepartition" and isinstance(getattr(node, "ray_remote_args", None), dict):
        node.ray_remote_args["num_cpus"] = 0
        return blocked
    # Otherwise (another Ray): a Dataset keeps the DataContext it was created with, so one created
    # with blocks of about one call's bytes is cut that way -- and so are the actors' outputs.
    context = ray.data.DataContext.get_current()
    row_bytes = 24 + sum(source.chars for source in sources) / max(1, sum(source.rows for source in sources))
    saved = context.target_max_block_size
    context.target_max_block_size = max(4096, int(row_bytes * rows))
    try:
        return read()
    finally:
        context.target_max_block_size = saved


def _read_shards(batch: dict[str, np.ndarray], plan: dict[int, tuple], shard_rows: int,
                 column: str) -> Iterator[dict[str, np.ndarray]]:
    """A Ray task: re-read an input with the shared reader, yield the wanted row ranges."""
    from seqpool.io import TextSource, text_digest

    for index in batch["source"]:
        path, fmt, field, starts = plan[int(index)]
        remaining = dict(starts)
        for number, texts in enumerate(TextSource.open(path, fmt, field).chunks(shard_rows)):
            start = number * shard_rows
            if start not in remaining:
                continue
            if text_digest(texts) != remaining.pop(start):
                raise SeqpoolError(f"{path} changed while it was being embedded (rows {start}-"
                                   f"{start + len(texts) - 1} differ from the first read); rerun")
            yield {"source": np.full(len(texts), int(index), dtype=np.int64),
                   "row": np.arange(start, start + len(texts), dtype=np.int64),
                   column: np.array(texts, dtype=object)}
            if not remaining:
                break


class _ShardWorker:
    """The actor: an :class:`Embedder` whose failure is returned as data, not raised.

    A batch that raises comes back with NaN vectors and the error in the ``error`` column,
    so one bad batch neither aborts the whole run nor loses which rows it held: the driver
    knows exactly which shards failed, and why, and tries them again. The ``truncated``
    column marks the rows cut at the model's max length, so each shard counts its own.
    """

    def __init__(self, embedder: Embedder, dims: dict[str, int]):
        self.embedder, self.dims = embedder, dims

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        rows = len(batch["row"])
        truncated = np.zeros(rows, dtype=bool)
        try:
            out = self.embedder(batch)
            truncated[list(self.embedder.encoder.last_stats.truncated_rows)] = True
            error = ""
        except Exception as exc:
            out = dict(batch)
            out.update({name: np.full((rows, dim), np.nan, dtype=np.float32) for name, dim in self.dims.items()})
            error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        del out[self.embedder.text_column]
        out["error"] = np.full(rows, error, dtype=object)
        out["truncated"] = truncated
        return out


@dataclass
class _PendingShard:
    """A shard's rows as they come back: vectors, which rows arrived, which were cut, errors."""

    vectors: dict[str, np.ndarray]
    filled: np.ndarray
    cut: np.ndarray
    failures: list[str]


class _Assembler:
    """Collects returned rows into their planned shards; yields each shard once it is full.

    Rows are placed by row number, so a batch Ray retried after an actor died overwrites
    identical values instead of adding rows, and blocks may arrive in any order.
    """

    def __init__(self, wanted: set[Shard], shard_rows: int, row_counts: list[int]):
        self.wanted, self.shard_rows, self.row_counts = wanted, shard_rows, row_counts
        self.pending: dict[Shard, _PendingShard] = {}

    def add(self, batch: dict[str, np.ndarray]) -> list[tuple[Shard, dict[str, np.ndarray], str, int]]:
        sources, rows = batch["source"].astype(np.int64), batch["row"].astype(np.int64)
        errors, cut = batch["error"], batch["truncated"]
        names = [name for name in batch if name not in ("source", "row", "error", "truncated")]
        finished = []
        starts = rows - rows % self.shard_rows
        for source, start in sorted({(int(s), int(r)) for s, r in zip(sources, starts)}):
            shard = shard_of(source, start, self.shard_rows, self.row_counts)
            if shard not in self.wanted:
                continue
            if shard not in self.pending:
                self.pending[shard] = _PendingShard(
                    {name: np.empty((shard.rows, batch[name].shape[1]), dtype=np.float32) for name in names},
                    np.zeros(shard.rows, dtype=bool), np.zeros(shard.rows, dtype=bool), [])
            pending = self.pending[shard]
            mask = (sources == source) & (starts == start)
            local = rows[mask] - start
            for name in names:
                pending.vectors[name][local] = batch[name][mask]
            pending.filled[local] = True
            pending.cut[local] = cut[mask]
            pending.failures.extend(str(error) for error in errors[mask] if error)
            if pending.filled.all():
                finished.append((shard, pending.vectors, pending.failures[0] if pending.failures else "",
                                 int(pending.cut.sum())))
                del self.pending[shard]
                self.wanted.discard(shard)
        return finished


def _as_user_error(error: BaseException, max_attempts: int, done: int, unfinished: str) -> SeqpoolError:
    """One line for a failed Ray run: the SeqpoolError a worker raised (Ray keeps only its
    text), actors that died on the same rows every time (``unfinished`` says where: Ray's error
    does not say which call's rows), else the last line of Ray's message."""
    if isinstance(error, SeqpoolError):
        return error
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    ours = [line.split("SeqpoolError: ", 1)[1] for line in lines if "SeqpoolError: " in line]
    if ours:
        return SeqpoolError(ours[-1])
    if _actor_lost(error):
        return SeqpoolError(f"an actor died {max_attempts} times running the same rows (killed, or crashed: out "
                            f"of memory?){unfinished}; the {done} shards done are kept: fix the cause and "
                            f"rerun with --resume")
    return SeqpoolError(f"the Ray run failed: {lines[-1] if lines else type(error).__name__}; the shards done "
                        f"are kept: rerun with --resume")


def _where(shards: list[Shard], paths: list[str], shown: int = 3) -> str:
    """`` in shard ... (a.txt rows 0-9)``, `` in one of the N unfinished shards: ..., ... and N more``, or ''."""
    if len(shards) <= 1:
        return "".join(f" in {shard.describe(paths)}" for shard in shards)
    names = ", ".join(shard.describe(paths) for shard in shards[:shown])
    more = f" and {len(shards) - shown} more" if len(shards) > shown else ""
    return f" in one of the {len(shards)} unfinished shards: {names}{more}"


def _actor_lost(error: BaseException) -> bool:
    """Did Ray give up on a call because its actor died (or stayed unreachable) every time?"""
    kinds = {kind.__name__ for kind in type(error).__mro__}
    text = str(error)
    return bool(kinds & {"ActorDiedError", "ActorUnavailableError"}) or "ActorDiedError" in text \
        or "ActorUnavailableError" in text or ("The actor" in text and ("unavailable" in text or "died" in text))


def _whole(value: Any, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SeqpoolError(f"`{name}` must be a whole number, at least 1, got {value!r}")
    return value
