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
import math
import os
import shutil
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np

from seqpool.batching import check_flag
from seqpool.checks import positive_int
from seqpool.distributed.dataset import (
    RayOptions,
    check_resources,
    default_workers,
    import_ray,
    map_embedder,
    ray_session,
)
from seqpool.distributed.folder import ManifestRecorder, check_output_folder, check_same_run
from seqpool.distributed.inputs import Input, expand_inputs, scan
from seqpool.engine import (
    Embedder,
    RunSettings,
    fit_on_calibration,
    fit_ranges,
    gather_options,
    manifest_record,
    run_compaction,
    stored_rows,
    truncated_rows,
)
from seqpool.errors import SeqpoolError
from seqpool.io.shards import DEFAULT_SHARD_ROWS, MANIFEST_VERSION, Shard, kept_shards, plan_shards, shard_of
from seqpool.vector_options import VectorOptions

#: Bounds of the automatic rows per actor call (see :func:`call_rows`).
MIN_CALL_ROWS, MAX_CALL_ROWS, CALLS_PER_ACTOR = 64, 8192, 4
#: The :class:`Embedder` settings :func:`embed_files` takes as keywords when no ``embedder`` is given.
EMBEDDER_KEYWORDS = ("model", "strategies", "normalize", "layer", "dtype", "max_length", "batch_size")


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
                embedder: Embedder | None = None, ray_options: RayOptions | None = None,
                options: VectorOptions | None = None, input_format: str | None = None, text_field: str | None = None,
                shard_rows: int = DEFAULT_SHARD_ROWS, resume: bool = False, progress: bool | None = None,
                **keywords: Any) -> FilesResult:
    """Embed every row of ``inputs`` on a Ray cluster into parquet shards under ``output_dir``.

    ``inputs``: files, globs (``data/*.jsonl``, ``**`` too) or folders (every file inside,
    recursively, except names starting with ``.`` or ``_``), on a path every Ray node can
    read (a local disk for a local run, a shared mount on a cluster). ``shard_rows`` rows of
    one input go to each shard. ``ray_options`` and ``options`` may also come as keywords naming
    their fields (``workers=2``, ``precision="int8"``), as may the Embedder's settings.

    ``embedder``: the :class:`Embedder` every actor holds (a configured or subclassed one);
    without it, one is built from the keywords naming its settings (``model``, ``strategies``,
    ``normalize``, ``layer``, ``dtype``, ``max_length``, ``batch_size``) and ``options``' prompts,
    long texts and ``truncate_dim`` (one vector per text: row-per-chunk output does not fit the
    one-row-per-input-row shards).

    ``ray_options`` (:class:`~seqpool.distributed.dataset.RayOptions`): without ``ray_address``
    a local Ray instance sized to this machine runs the job and is shut down after; ``"auto"``
    or ``"ray://host:port"`` joins a cluster, which has ``ray_timeout`` seconds to answer before
    the run ends in one line naming the address (Ray itself retries for many minutes); a caller
    that already ran ``ray.init`` is used as is.
    ``workers`` actors (default: one per CPU, or per GPU with ``num_gpus``) each hold one model.
    ``rows_per_call`` rows go to an actor at a time (the Encoder sorts them by length and batches
    them further by ``batch_size`` and its token budget): what a restarted actor redoes. By
    default about a quarter of each actor's share, between 64 and 8192 rows (:func:`call_rows`).

    ``options``' ``precision`` (:mod:`seqpool.quantize`) is applied by the driver as it writes
    each shard; int8/uint8 ranges are fitted once, before any actor starts, on
    ``calibration``'s texts or else on the first shard's vectors (embedded on the driver, and
    written as that shard), and kept in the manifest, so every shard and every resumed run uses
    the same buckets.

    ``load_embeddings(output_dir)`` reads the result back in input order (decoded), every shard
    verified against the manifest. ``resume=True`` continues an interrupted run with the same
    inputs and settings (anything else is an error): shard files that pass the same checks are
    kept, the others (named in ``FilesResult.redone``) are embedded again with the missing ones.
    """
    model_settings = {name: keywords.pop(name) for name in EMBEDDER_KEYWORDS if name in keywords}
    cluster, options = gather_options("embed_files", keywords, (RayOptions, ray_options), (VectorOptions, options))
    if options.calibration is not None:  # in the manifest: a resume from another folder names the same file
        options = replace(options, calibration=os.path.abspath(options.calibration))
    if embedder is not None and (model_settings or options.encoding() != VectorOptions()):
        raise SeqpoolError("give the model and encoding options to the Embedder passed as `embedder`, not beside it")
    if options.chunk_output:
        raise SeqpoolError("`chunk_output` gives one row per chunk, which the shards of one row per input row "
                           "cannot hold; use the local engine for it")
    shard_rows = positive_int(shard_rows, "shard_rows")
    resume = bool(check_flag(resume, "resume"))
    import_ray()  # a missing extra is one line, before any input is read
    folder = Path(output_dir)
    previous = check_output_folder(folder, resume)
    paths = expand_inputs(inputs, folder)
    if options.calibration is not None:
        from seqpool.io.readers import calibration_source

        calibration_source(options.calibration)  # exists and is readable, before the model loads
    sources = [scan(path, input_format, text_field, shard_rows) for path in paths]
    if embedder is None:
        embedder = Embedder(**model_settings, options=options)
    with _ray_while_resolving(embedder, options, cluster, quiet=progress is False) as (ray, record):
        return _run(ray, record, embedder, folder, previous, sources, shard_rows=shard_rows, cluster=cluster,
                    progress=progress)


@contextlib.contextmanager
def _ray_while_resolving(embedder: Embedder, options: VectorOptions, cluster: RayOptions,
                         quiet: bool) -> Iterator[tuple[Any, RunSettings]]:
    """Ray, and the run's settings resolved by the embedder, with the two started side by side.

    Resolving loads torch and the model on the driver and runs it once, to check them; starting
    Ray is mostly waiting for its daemons. Together they take the longer of the two instead of
    the sum. A bad model still ends the run with its own error.
    """
    def resolve() -> RunSettings:
        embedder.check_runs()
        return embedder.run_settings(options.precision, options.calibration)

    with ThreadPoolExecutor(1, thread_name_prefix="seqpool-describe") as pool:
        resolved = pool.submit(resolve)
        with ray_session(cluster.ray_address, quiet=quiet, timeout=cluster.ray_timeout) as ray:
            yield ray, resolved.result()


def _run(ray: Any, record: RunSettings, embedder: Embedder, folder: Path, previous: dict[str, Any] | None,
         sources: list[Input], *, shard_rows: int, cluster: RayOptions, progress: bool | None) -> FilesResult:
    """:func:`embed_files` once the inputs are scanned and Ray runs: plan, write, record."""
    manifest = {"version": MANIFEST_VERSION, "complete": False, "inputs": [source.record() for source in sources],
                "settings": record.manifest(shard_rows), "shards": []}
    plan = plan_shards([source.rows for source in sources], shard_rows)
    done: dict[Shard, tuple[str, int]] = {}  # verified finished shard -> its sha256, its texts cut at max_length
    damaged: dict[Shard, str] = {}  # shard files that failed verification -> why: embedded again
    if previous is not None:
        check_same_run(folder, previous, manifest)
        done, damaged = kept_shards(folder, plan, previous, [source.path for source in sources])
        for stale in folder.glob(".part-*.tmp"):  # a temporary file of a write the kill interrupted
            stale.unlink(missing_ok=True)
    compaction = run_compaction(previous, record.options.precision)
    first = _fit_ranges(compaction, embedder, sources, plan, done, shard_rows, record.options.calibration)
    manifest.update(manifest_record(compaction))
    created = not folder.exists()
    folder.mkdir(exist_ok=True)
    recorder = ManifestRecorder(folder, manifest, done)
    try:
        if first is not None:  # the shard the ranges were fitted on: embedded already
            shard, vectors, truncated = first
            recorder.write(shard, sources[shard.source].path, stored_rows(compaction, vectors), truncated)
        missing = [shard for shard in plan if shard not in recorder.done]
        if missing:
            _embed_missing(ray, missing, sources, embedder, recorder, compaction, shard_rows=shard_rows,
                           dims=record.widths, cluster=cluster, progress=progress)
    except BaseException:
        if created and not recorder.done:
            shutil.rmtree(folder, ignore_errors=True)  # nothing was embedded: leave nothing behind
        else:
            recorder.flush()
        raise
    recorder.finish()
    paths = [source.path for source in sources]
    return FilesResult(folder, sum(source.rows for source in sources), record.widths[record.strategies[0]],
                       record.strategies, len(plan), len(done), recorder.truncated,
                       tuple(f"{shard.describe(paths)} {why}" for shard, why in damaged.items()))


def _fit_ranges(compaction: Any, embedder: Embedder, sources: list[Input], plan: list[Shard],
                done: dict[Shard, tuple[str, int]], shard_rows: int,
                calibration: str | None) -> tuple[Shard, dict[str, np.ndarray], int] | None:
    """Fit int8/uint8 ranges once, on the driver (kept as they are when resuming): on the
    calibration texts, else on the first shard's vectors, which are returned to be written
    (with how many of its texts were truncated)."""
    if not compaction.needs_ranges or compaction.ranges or not plan:
        return None
    if fit_on_calibration(compaction, calibration, embedder.embed):
        return None
    from seqpool.io import TextSource, text_digest

    shard = plan[0]
    source = sources[shard.source]
    texts = next(iter(TextSource.open(source.path, source.format, source.text_field).chunks(shard_rows)))
    if text_digest(texts) != source.shard_digests[0]:
        raise SeqpoolError(f"{source.path} changed while it was being embedded (rows 0-{len(texts) - 1} differ "
                           f"from the first read); rerun")
    vectors = embedder.embed(texts)
    fit_ranges(compaction, vectors)
    return None if shard in done else (shard, vectors, len(truncated_rows(vectors)))


# -- the Ray run -----------------------------------------------------------------------------------


def _embed_missing(ray: Any, missing: list[Shard], sources: list[Input], embedder: Embedder,
                   recorder: ManifestRecorder, compaction: Any, *, shard_rows: int, dims: dict[str, int],
                   cluster: RayOptions, progress: bool | None) -> None:
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
                stream = _stream(ray, missing, sources, embedder, shard_rows=shard_rows, dims=dims, cluster=cluster)
                for shard, vectors, error, truncated in stream:
                    if error:
                        failed[shard] = error
                        continue
                    recorder.write(shard, paths[shard.source], stored_rows(compaction, vectors), truncated)
                    bar.update(shard.rows)
            except Exception as error:  # Ray's own failure (a read task, dead actors, the cluster): one line
                unfinished = [shard for shard in missing if shard not in recorder.done]
                raise _as_user_error(error, cluster.max_attempts, len(recorder.done),
                                     _where(unfinished, paths)) from None
            for shard, error in failed.items():
                failures[shard] += 1
                if error.startswith("SeqpoolError: ") or failures[shard] >= cluster.max_attempts:
                    times = "" if failures[shard] == 1 else f" {failures[shard]} times"
                    raise SeqpoolError(f"{shard.describe(paths)} failed{times}: {error}; the {len(recorder.done)} "
                                       f"shards done are kept: fix the cause and rerun with --resume")
            lost = [shard for shard in missing if shard not in recorder.done and shard not in failed]
            if lost:  # Ray finished without returning these rows: never report success over them
                raise SeqpoolError(f"{lost[0].describe(paths)} came back incomplete from Ray; rerun with --resume")
            missing = [shard for shard in missing if shard not in recorder.done]


def _stream(ray: Any, missing: list[Shard], sources: list[Input], embedder: Embedder, *, shard_rows: int,
            dims: dict[str, int], cluster: RayOptions) -> Iterator[tuple[Shard, dict[str, np.ndarray], str, int]]:
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
    num_cpus, num_gpus = check_resources(ray, cluster.num_cpus, cluster.num_gpus)
    actors = cluster.workers or default_workers(ray, num_cpus, num_gpus)
    batch_size = cluster.rows_per_call or call_rows(sum(shard.rows for shard in missing), actors)
    ds = _call_sized_blocks(ray, read_plan, sources, shard_rows, embedder.text_column, batch_size)
    row_counts = [source.rows for source in sources]
    ds = map_embedder(ds, _ShardWorker, workers=actors, batch_size=batch_size, num_cpus=num_cpus,
                      num_gpus=num_gpus, ray=ray, constructor_args=(embedder, dims),
                      max_task_retries=cluster.max_attempts - 1)
    assembler = _Assembler(set(missing), shard_rows, row_counts)
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        yield from assembler.add(batch)


def call_rows(rows: int, actors: int) -> int:
    """Rows per actor call for ``rows`` rows on ``actors`` actors.

    The Encoder sorts a call's texts by length before batching them, so a bigger call wastes
    less on padding, and each call costs the actor a fixed overhead. A smaller call balances the
    last ones between actors and costs less to redo after a crash: about ``CALLS_PER_ACTOR``
    calls per actor, within ``[MIN_CALL_ROWS, MAX_CALL_ROWS]``.
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
        out = {name: column for name, column in batch.items() if name != self.embedder.text_column}
        try:
            vectors = self.embedder.embed_column(batch)
            truncated[list(truncated_rows(vectors))] = True
            error = ""
        except Exception as exc:
            vectors = {name: np.full((rows, dim), np.nan, dtype=np.float32) for name, dim in self.dims.items()}
            error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
        out.update(vectors)
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
