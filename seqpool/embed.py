"""Embed a corpus: reader -> :class:`~seqpool.engine.Embedder` -> writer, streamed and resumable.

:func:`embed_file` is what ``seqpool embed`` calls: it checks every argument and every
output path first (before the model loads or the corpus is read), takes a lock on the
output, builds the Encoder and runs the chunked, checkpointed loop :func:`embed_corpus` runs.
Each chunk goes through the same :class:`~seqpool.engine.Embedder` a Ray actor calls, and the
run's settings, compact vectors and metadata are the engine core's (:mod:`seqpool.engine`);
this module adds what only the local loop does: chunks, checkpoints and resume, the output
lock, ``skip_empty`` and the int8 model's calibration. io only reads and writes; the Encoder
only encodes; this module joins them.

Files follow :mod:`seqpool.io.ownership`: a run writes the outputs named and its own working
files (the lock, ``OUTPUT.partial/``, the metadata beside an npy / jsonl output), each checked
against every input (the corpus, the calibration file) before any work; a working path that
exists and is not seqpool's is refused, never used, replaced or deleted.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass
from itertools import chain, islice
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from seqpool.batching import check_flag
from seqpool.checks import positive_int
from seqpool.engine import (
    Embedder,
    compaction_metadata,
    fit_on_calibration,
    gather_options,
    run_compaction,
    stored_rows,
    truncated_rows,
)
from seqpool.errors import SeqpoolError
from seqpool.io import (
    DEFAULT_CHUNK_SIZE,
    EmbeddingSpool,
    TextDigest,
    TextSource,
    check_output_writable,
    chunked,
    default_output_path,
    detect_output_format,
    output_paths,
    resolve_output,
)
from seqpool.io.lock import lock_path, output_lock
from seqpool.io.readers import calibration_source
from seqpool.io.ownership import check_working_paths, new_run_id
from seqpool.io.writers import needs_sidecar, partial_folder, sidecar_path
from seqpool.progress import progress_bar
from seqpool.vector_options import VectorOptions

DTYPES = {"fp32": "float32", "float32": "float32", "bf16": "bfloat16", "bfloat16": "bfloat16", "int8": "int8"}


@dataclass(frozen=True)
class EmbedSettings:
    """Every option of :func:`embed_file` but the vectors' own
    (:class:`~seqpool.vector_options.VectorOptions`): what it reads, which model encodes it and
    how, how the run goes. Construction checks all that needs neither the model nor the input,
    torch-free, so a bad option fails in milliseconds.
    """

    model: str | os.PathLike | None = None
    input_format: str | None = None
    text_field: str | None = None
    output_format: str | None = None
    #: None: the model's own pooling (its modules.json), else mean
    strategies: Sequence[str] | None = None
    layer: int | Sequence[int] = -1
    batch_size: int | None = None
    max_length: int | None = None
    normalize: bool | None = None
    dtype: str = "fp32"
    device: str | None = None
    #: caps torch's threads for the call only
    threads: int | None = None
    #: a zero row for each empty (or whitespace-only) text instead of encoding it
    skip_empty: bool = False
    chunk_size: int = DEFAULT_CHUNK_SIZE
    resume: bool = False

    def __post_init__(self) -> None:
        from seqpool.threads import check_thread_count

        strategies = [self.strategies] if isinstance(self.strategies, str) else self.strategies
        object.__setattr__(self, "strategies", _registered(strategies) if strategies else None)
        parse_dtype(self.dtype)
        for name in ("chunk_size", "batch_size", "max_length"):
            positive_int(getattr(self, name), name, optional=name != "chunk_size")
        for name in ("skip_empty", "resume"):  # 'no' is truthy: resume='no' must not resume
            object.__setattr__(self, name, bool(check_flag(getattr(self, name), name)))
        object.__setattr__(self, "normalize", check_flag(self.normalize, "normalize"))
        check_thread_count(self.threads, "`threads`")

    @property
    def torch_dtype(self) -> str:
        return parse_dtype(self.dtype)


def _registered(strategies: Sequence[str]) -> tuple[str, ...]:
    """The strategy names, each once, checked by the registry (torch-free: option errors stay fast)."""
    from seqpool.registry import PARAMETER_FREE, get_strategy

    for name in strategies:
        get_strategy(name, PARAMETER_FREE)
    return tuple(dict.fromkeys(strategies))


@dataclass(frozen=True)
class EmbedResult:
    """What :func:`embed_corpus` wrote."""

    paths: list[Path]
    rows: int
    dim: int
    strategies: tuple[str, ...]
    resumed_from: int
    #: input texts read, and how many of them were cut at the model's max_length
    texts: int | None = None
    truncated: int = 0
    #: per strategy: the steps its vectors went through (``cls -> Dense(384->128, Tanh) -> Normalize``)
    pipelines: tuple[str, ...] = ()
    #: per strategy: the width of its vectors
    widths: tuple[int, ...] = ()


class EmbedInterrupted(KeyboardInterrupt):
    """Ctrl-C during :func:`embed_file`; ``resumable`` says whether rows were kept for ``resume=True``."""

    def __init__(self, resumable: bool):
        super().__init__("interrupted")
        self.resumable = resumable


@dataclass(frozen=True)
class _Run:
    """One local run, its output checked and locked: what the loop needs."""

    embedder: Embedder
    source: TextSource
    output: Path
    output_format: str
    #: the run's whole vector options: the Embedder applies the encoding ones, the loop
    #: ``precision`` and ``calibration``
    options: VectorOptions
    chunk_size: int
    skip_empty: bool
    resume: bool
    progress: bool | None
    run_id: str


def embed_corpus(encoder: Any, source: TextSource, output: str | os.PathLike | None = None, *,
                 output_format: str | None = None, strategies: Sequence[str] | None = None,
                 normalize: bool | None = None, batch_size: int | None = None,
                 chunk_size: int = DEFAULT_CHUNK_SIZE, skip_empty: bool = False, resume: bool = False,
                 progress: bool | None = None, options: VectorOptions | None = None) -> EmbedResult:
    """Embed every row of ``source`` with ``encoder`` into ``output``, streaming and resumable.

    ``encoder`` is a :class:`seqpool.Encoder`. ``skip_empty`` writes a zero row for each
    empty (or whitespace-only) text instead of encoding it; rows never shift either way.
    ``progress=None`` shows a bar on stderr only when it is a terminal. A regular file is
    first counted (which validates every row before hours of work); a stream (stdin, a
    pipe) is read exactly once, with no total in the bar. ``options``: prompts, long texts
    and compact vectors (:class:`seqpool.vector_options.VectorOptions`).
    """
    from seqpool.pooling import check_strategy

    strategies = tuple(dict.fromkeys(check_strategy(s) for s in (strategies or (encoder.default_strategy,))))
    checked = EmbedSettings(normalize=normalize, batch_size=batch_size, chunk_size=chunk_size,
                            skip_empty=skip_empty, resume=resume)
    normalize = encoder.default_normalize if checked.normalize is None else checked.normalize
    fmt = detect_output_format(output or "", output_format)
    options = options or VectorOptions()
    _check_options(options, fmt, checked.skip_empty)
    options.check_model(encoder, strategies)
    output = Path(output) if output is not None else default_output_path(source.path, fmt)
    check_outputs(output, fmt, strategies, source, options)
    _check_calibration(options, output, checked.resume)
    run_id = new_run_id()
    with output_lock(output, run_id):
        embedder = Embedder.from_encoder(encoder, strategies, normalize, batch_size, options=options)
        return _embed_locked(_Run(embedder, source, output, fmt, options, chunk_size, checked.skip_empty,
                                  checked.resume, progress, run_id))


def _embed_locked(run: _Run) -> EmbedResult:
    """The loop of :func:`embed_corpus`, with the output already locked and checked."""
    total = None if run.source.is_stream else run.source.count()
    if resolve_output(run.output)[1] == "stream":  # rows are spooled in a temporary folder, never in /dev
        if run.resume:
            raise SeqpoolError(f"cannot resume into {run.output}: it is a device or FIFO, which keeps no rows")
        with tempfile.TemporaryDirectory(prefix="seqpool-embed-") as scratch:
            return _embed_spooled(run, total, Path(scratch) / "partial")
    return _embed_spooled(run, total, None)


def _embed_spooled(run: _Run, total: int | None, folder: Path | None) -> EmbedResult:
    from seqpool.io.writers import CHUNK_COLUMNS
    from seqpool.quantize import output_dtype, output_width

    embedder, options, source = run.embedder, run.options, run.source
    record = embedder.run_settings(options.precision, options.calibration)
    settings = record.checkpoint(skip_empty=run.skip_empty, chunk_size=run.chunk_size, input_format=source.format,
                                 text_field=source.text_field)
    columns = None
    if options != VectorOptions():
        columns = {s: ((output_width(record.widths[s], options.precision),), str(output_dtype(options.precision)))
                   for s in record.strategies}
        columns.update({name: ((), "int64") for name in CHUNK_COLUMNS} if options.chunk_output else {})
    spool = EmbeddingSpool(run.output, run.output_format, record.strategies, record.widths, settings,
                           resume=run.resume, folder=folder, columns=columns, run_id=run.run_id)
    started_at = spool.texts_done
    compaction = run_compaction(spool.state, options.precision)  # fitted once, kept in the checkpoints
    truncated = int(spool.state.get("truncated", 0))
    try:
        fit_on_calibration(compaction, options.calibration, embedder.embed)
        texts = source.texts()
        head: list[str] = []  # the corpus's first chunk, as it streams past: an int8 model's calibration sample
        digest = TextDigest().update(_keep_first(islice(texts, spool.texts_done), head, run.chunk_size))
        if digest.hexdigest() != spool.input_digest:
            raise SeqpoolError(f"cannot resume {run.output}: the first {spool.texts_done} rows of {source.name} "
                               f"differ from the interrupted run's; delete {spool.folder} to start over")
        int8: dict[str, Any] = {}
        if embedder.encoder.quantized:
            more = list(islice(texts, max(0, run.chunk_size - len(head))))
            texts = chain(more, texts)
            int8 = _calibrate_int8(embedder.encoder, options, head + more, spool.state.get("int8"), run.output)
        with progress_bar(total, run.progress, initial=spool.texts_done) as bar:
            for chunk in chunked(texts, run.chunk_size):
                vectors, table, cut = _encode_chunk(embedder, chunk, run.skip_empty, bar)
                rows = stored_rows(compaction, vectors)
                if table is not None:
                    rows.update(table, doc=table["doc"] + spool.texts_done)
                truncated += cut
                spool.append(rows, digest.update(chunk).hexdigest(), texts=len(chunk),
                             state={**compaction.to_metadata(), "truncated": truncated,
                                    **({"int8": int8} if int8 else {})})
    except BaseException:
        if spool.rows_done == 0:
            spool.discard()
        else:
            spool.close()
        raise
    metadata = {**record.metadata(texts=spool.texts_done, truncated=truncated), **compaction_metadata(compaction)}
    if int8:
        metadata["int8_calibration"] = json.dumps(int8, sort_keys=True)
    paths = spool.finish(metadata)
    return EmbedResult(paths, spool.rows_done, record.widths[record.strategies[0]], record.strategies, started_at,
                       texts=spool.texts_done, truncated=truncated, pipelines=tuple(record.pipelines.values()),
                       widths=tuple(record.widths.values()))


def _keep_first(texts: Iterator[str], head: list[str], count: int) -> Iterator[str]:
    """``texts`` unchanged, copying the first ``count`` of them into ``head`` as they pass."""
    for text in texts:
        if len(head) < count:
            head.append(text)
        yield text


def _calibrate_int8(encoder: Any, options: VectorOptions, head: list[str], recorded: Any,
                    output: Path) -> dict[str, Any]:
    """Quantize an int8 Encoder on the ``calibration`` file's texts, else the corpus's first chunk
    (the same texts on every run and every resume of this output), and check a resumed run's
    calibration is the interrupted run's: its record goes into the checkpoints and the metadata."""
    texts = list(calibration_source(options.calibration).texts()) if options.calibration else head
    if not any(text.strip() for text in texts):
        raise SeqpoolError("dtype int8 needs texts to calibrate on, and the corpus (or `calibration` file) has none")
    encoder.calibrate(texts)
    record = dict(encoder.int8_runtime.calibration)
    if isinstance(recorded, dict) and recorded.get("sha256") != record["sha256"]:
        raise SeqpoolError(f"cannot resume {output}: the int8 calibration differs from the interrupted run's "
                           f"(another `calibration` file, or it changed); delete {partial_folder(output)} to "
                           f"start over")
    return record


def _check_options(options: VectorOptions, output_format: str, skip_empty: bool) -> None:
    """Option combinations no run can honour, refused before the model loads."""
    if options.chunk_output and output_format == "npy":
        raise SeqpoolError("`chunk_output` rows carry doc, chunk, char_start and char_end columns, which npy "
                           "cannot hold; choose `output_format` parquet, jsonl or safetensors")
    if options.chunk_output and skip_empty:
        raise SeqpoolError("`skip_empty` does not apply to `chunk_output` (an empty text gives one empty chunk row)")


def check_outputs(output: Path, output_format: str, strategies: Sequence[str], source: TextSource | None,
                  options: VectorOptions | None = None) -> None:
    """Before any work: every file a run will write -- outputs and working files -- is writable,
    is no input (the corpus, the calibration file) and is not in the way of something else; a
    working path that exists must be seqpool's (its marker). A stream output keeps nothing beside
    it, so an option whose metadata would need a file there is refused."""
    from seqpool.quantize import Compaction

    options = options or VectorOptions()
    sidecar = needs_sidecar(output_format, () if Compaction(options.precision).is_identity else ("compaction",))
    if resolve_output(output)[1] == "stream":  # /dev/null, /dev/stdout, a FIFO: streamed into, no state beside it
        if output_format == "npy" and len(strategies) > 1:
            raise SeqpoolError(f"{output} is a device or FIFO and can take one npy array, not {len(strategies)} "
                               f"strategies; choose output_format=... parquet, jsonl or safetensors")
        if sidecar:
            raise SeqpoolError(f"{output} is a device or FIFO, so an {output_format} stream has nowhere to keep the "
                               f"`precision` {options.precision} metadata its codes decode with; choose "
                               f"output_format=... parquet or safetensors (they hold it inside) or write a file")
        return
    inputs = [None if source is None or source.is_stream else source.path, options.calibration]
    finals = list(dict.fromkeys(output_paths(output, output_format, strategies).values()))
    for path in finals:
        check_output_writable(path, source, inputs)
    for path, what in ((partial_folder(output), "folder"), (lock_path(output), "file")):
        if path.exists() and not (path.is_dir() if what == "folder" else path.is_file()):
            raise SeqpoolError(f"{path} exists and is not a {what}; seqpool keeps a run's state there, "
                               f"so move it or choose another output=...")
    check_working_paths(output, {"lock": lock_path(output), "unfinished rows": partial_folder(output)}, inputs)
    for path in finals if sidecar or output_format == "jsonl" else ():  # an empty jsonl keeps its width beside it
        check_working_paths(path, {"metadata": sidecar_path(path)}, inputs)


def _check_int8_outputs(output: Path, output_format: str, strategies: Sequence[str], source: TextSource,
                       options: VectorOptions) -> None:
    """An int8 run's calibration record goes beside an npy / jsonl file: that path must be free or seqpool's.
    (A stream output keeps nothing beside it; its float32 vectors need no record to be read.)"""
    if output_format not in ("npy", "jsonl") or resolve_output(output)[1] == "stream":
        return
    inputs = [None if source.is_stream else source.path, options.calibration]
    for path in dict.fromkeys(output_paths(output, output_format, strategies).values()):
        check_working_paths(path, {"metadata": sidecar_path(path)}, inputs)


def _check_calibration(options: VectorOptions, output: Path, resume: bool) -> None:
    """The calibration file is readable -- unless this run resumes, which uses the ranges stored
    in the checkpoint (fitted once) and needs the file no more."""
    if options.calibration is not None and not (resume and os.path.lexists(partial_folder(output))):
        calibration_source(options.calibration)


def parse_dtype(dtype: str) -> str:
    """``fp32``/``float32``, ``bf16``/``bfloat16`` as the torch dtype name, or ``int8`` (OpenVINO)."""
    if not isinstance(dtype, str) or dtype.lower() not in DTYPES:
        raise SeqpoolError(f"unknown `dtype` {dtype!r}; choose fp32, bf16 or int8")
    return DTYPES[dtype.lower()]


def embed_file(input_path: str | os.PathLike, output: str | os.PathLike | None = None, *,
               settings: EmbedSettings | None = None, options: VectorOptions | None = None,
               progress: bool | None = None, note: Callable[[str], None] | None = None,
               **keywords: Any) -> EmbedResult:
    """Embed the corpus at ``input_path`` (``-`` for stdin) into ``output``: the whole ``seqpool embed``.

    ``settings`` (:class:`EmbedSettings`: model, formats, strategies, sizes, dtype, device,
    threads, ...) and ``options`` (:class:`~seqpool.vector_options.VectorOptions`: prompts, long
    texts, compact vectors; ``calibration``: a file of texts, any input format, to fit int8/uint8
    ranges on) may also be given as keywords naming their fields, e.g.
    ``embed_file("c.txt", "c.parquet", model=..., precision="int8")``.

    Every argument, the input and every output path are checked before the model loads or
    the corpus is read. ``progress=None`` shows a bar on stderr only when it is a terminal.
    ``note`` receives advice worth showing (e.g. bf16 on a CPU without native bf16).
    """
    from seqpool.threads import limited_threads

    settings, options = gather_options("embed_file", keywords, (EmbedSettings, settings), (VectorOptions, options))
    source = TextSource.open(input_path, settings.input_format, settings.text_field)
    fmt = detect_output_format(output or "", settings.output_format)
    _check_options(options, fmt, settings.skip_empty)
    target = Path(output) if output is not None else default_output_path(str(input_path), fmt)
    # Every output path, checked once, before the model loads. Without `strategies` the model's
    # default is unknown until then, but it is one strategy, and the output of one strategy is
    # `target` itself whatever its name: checking with any one name checks the real one.
    names = settings.strategies or ("mean",)
    check_outputs(target, fmt, names, source, options)
    _check_calibration(options, target, settings.resume)
    if settings.torch_dtype == "int8":
        _check_int8_outputs(target, fmt, names, source, options)
    from seqpool.devices import native_bf16_cpu, native_int8_cpu
    from seqpool.encoder import Encoder

    run_id = new_run_id()
    with output_lock(target, run_id), limited_threads(settings.threads):
        # after the lock: a running writer is "in use", not "interrupted"
        EmbeddingSpool.check_unfinished(partial_folder(target), target, settings.resume)
        encoder = Encoder(settings.model, device=settings.device, dtype=settings.torch_dtype,
                          max_length=settings.max_length, layer=settings.layer, workers=settings.threads)
        if settings.torch_dtype == "bfloat16" and encoder.device.type == "cpu" and native_bf16_cpu() is False \
                and note:
            note("this CPU has no native bf16 (AVX512-BF16 or AMX), so bf16 runs slower than fp32 here; "
                 "use dtype=fp32 for speed")
        if settings.torch_dtype == "int8" and native_int8_cpu() is False and note:
            note("this CPU has no int8 dot products (AVX512-VNNI, AVX-VNNI or AMX), so int8 runs no faster than fp32 "
                 "here (slower on long texts) and keeps less of its vectors; dtype=fp32 gives the exact ones")
        defaulted = not settings.strategies and encoder.spec is not None and encoder.spec.pooling is None
        strategies = settings.strategies or _registered((encoder.default_strategy,))
        options.check_model(encoder, strategies)
        normalize = encoder.default_normalize if settings.normalize is None else settings.normalize
        embedder = Embedder.from_encoder(encoder, strategies, normalize, settings.batch_size, options=options)
        try:
            result = _embed_locked(_Run(embedder, source, target, fmt, options, settings.chunk_size,
                                        settings.skip_empty, settings.resume, progress, run_id))
            if defaulted and note:  # with the summary, after the run: a refusal stays one line
                note(f"{encoder.name_or_path} has no sentence-transformers modules.json, so it pooled with mean and "
                     f"did not normalise, as sentence-transformers would; name `strategies` to choose")
            return result
        except KeyboardInterrupt as error:
            raise EmbedInterrupted(partial_folder(target).is_dir()) from error


def _encode_chunk(embedder: Embedder, texts: list[str], skip_empty: bool,
                  bar: Any) -> tuple[Mapping[str, np.ndarray], dict[str, np.ndarray] | None, int]:
    """Rows of one chunk, in row order: ``(vectors, chunk columns or None, texts truncated)``.

    With ``skip_empty``, empty texts get zero rows unencoded.
    """
    keep = [i for i, text in enumerate(texts) if text.strip()] if skip_empty else None
    if keep is None or len(keep) == len(texts):
        embedded = embedder.embed(texts, progress=bar)
        return embedded, embedded.chunks, len(truncated_rows(embedded))
    embedded = embedder.embed([texts[i] for i in keep], progress=bar)
    bar.update(len(texts) - len(keep))
    out = {}
    for strategy, vectors in embedded.items():
        full = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
        full[keep] = vectors
        out[strategy] = full
    return out, None, len(truncated_rows(embedded))
