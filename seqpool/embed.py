"""Embed a corpus: reader -> :class:`~seqpool.encoder.Encoder` -> writer, streamed and resumable.

:func:`embed_file` is what ``seqpool embed`` calls: it checks every argument and every
output path first (before the model loads or the corpus is read), takes a lock on the
output, builds the Encoder and runs :func:`embed_corpus`, which does the chunked,
checkpointed loop. io only reads and writes; the Encoder only encodes; this module joins them.

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
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from seqpool.batching import check_flag
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
    skip_empty, resume = _switches(skip_empty=skip_empty, resume=resume)
    normalize = check_flag(normalize, "normalize")
    normalize = encoder.default_normalize if normalize is None else normalize
    _check_sizes(chunk_size=chunk_size, batch_size=batch_size)
    fmt = detect_output_format(output or "", output_format)
    options = options or VectorOptions()
    _check_options(options, fmt, skip_empty)
    options.check_model(encoder, strategies)
    output = Path(output) if output is not None else default_output_path(source.path, fmt)
    check_outputs(output, fmt, strategies, source, options)
    _check_calibration(options, output, resume)
    run_id = new_run_id()
    with output_lock(output, run_id):
        return _embed_locked(encoder, source, output, fmt, strategies, normalize, batch_size, chunk_size,
                             skip_empty, resume, progress, options, run_id)


def _embed_locked(encoder: Any, source: TextSource, output: Path, fmt: str, strategies: tuple[str, ...],
                  normalize: bool, batch_size: int | None, chunk_size: int, skip_empty: bool, resume: bool,
                  progress: bool | None, options: VectorOptions, run_id: str) -> EmbedResult:
    """The loop of :func:`embed_corpus`, with the output already locked and checked."""
    total = None if source.is_stream else source.count()
    if resolve_output(output)[1] == "stream":  # rows are spooled in a temporary folder, never in /dev
        if resume:
            raise SeqpoolError(f"cannot resume into {output}: it is a device or FIFO, which keeps no rows")
        with tempfile.TemporaryDirectory(prefix="seqpool-embed-") as scratch:
            return _embed_spooled(encoder, source, output, fmt, strategies, normalize, batch_size, chunk_size,
                                  skip_empty, False, progress, total, Path(scratch) / "partial", options, run_id)
    return _embed_spooled(encoder, source, output, fmt, strategies, normalize, batch_size, chunk_size,
                          skip_empty, resume, progress, total, None, options, run_id)


def _embed_spooled(encoder: Any, source: TextSource, output: Path, fmt: str, strategies: tuple[str, ...],
                   normalize: bool, batch_size: int | None, chunk_size: int, skip_empty: bool, resume: bool,
                   progress: bool | None, total: int | None, folder: Path | None, options: VectorOptions,
                   run_id: str) -> EmbedResult:
    from seqpool.io.writers import CHUNK_COLUMNS
    from seqpool.quantize import Compaction, output_dtype, output_width

    settings = {"model": encoder.name_or_path, "layers": list(encoder.layers), "max_length": encoder.max_length,
                "dtype": encoder.precision, "normalize": normalize, "skip_empty": skip_empty,
                "batch_size": batch_size, "chunk_size": chunk_size, "input_format": source.format,
                "text_field": source.text_field}
    encoder.layer_plan(strategies)  # layers checked against the model before anything is written
    widths = {s: options.truncate_dim or encoder.output_dim(s) for s in strategies}  # the model's head included
    pipelines = {s: encoder.pipeline(s, normalize) for s in strategies}
    settings["pipeline"] = pipelines
    columns = None
    if options != VectorOptions():
        settings["vectors"] = {k: v for k, v in vars(options).items() if v is not None}
        columns = {s: ((output_width(widths[s], options.precision),), str(output_dtype(options.precision)))
                   for s in strategies}
        columns.update({name: ((), "int64") for name in CHUNK_COLUMNS} if options.chunk_output else {})
    spool = EmbeddingSpool(output, fmt, strategies, widths, settings, resume=resume, folder=folder, columns=columns,
                           run_id=run_id)
    started_at = spool.texts_done
    compaction = Compaction.from_metadata(spool.state) if "compaction" in spool.state else Compaction(options.precision)
    truncated = int(spool.state.get("truncated", 0))
    try:
        if options.calibration is not None and not compaction.ranges:  # fitted once, kept in the checkpoints
            calibration = list(calibration_source(options.calibration).texts())
            for strategy, vectors in _encode_chunk(encoder, calibration, strategies, normalize, batch_size,
                                                   False, _NoBar(), options)[0].items():
                compaction.fit(strategy, vectors)
        texts = source.texts()
        head: list[str] = []  # the corpus's first chunk, as it streams past: an int8 model's calibration sample
        digest = TextDigest().update(_keep_first(islice(texts, spool.texts_done), head, chunk_size))
        if digest.hexdigest() != spool.input_digest:
            raise SeqpoolError(f"cannot resume {output}: the first {spool.texts_done} rows of {source.name} "
                               f"differ from the interrupted run's; delete {spool.folder} to start over")
        int8: dict[str, Any] = {}
        if encoder.quantized:
            more = list(islice(texts, max(0, chunk_size - len(head))))
            texts = chain(more, texts)
            int8 = _calibrate_int8(encoder, options, head + more, spool.state.get("int8"), output)
        with progress_bar(total, progress, initial=spool.texts_done) as bar:
            for chunk in chunked(texts, chunk_size):
                vectors, table, cut = _encode_chunk(encoder, chunk, strategies, normalize, batch_size, skip_empty,
                                                    bar, options)
                rows = {s: compaction.encode(s, v) for s, v in vectors.items()}
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
    metadata = {"model": encoder.name_or_path, "strategies": ",".join(strategies), "normalize": str(normalize),
                "layers": ",".join(map(str, encoder.layers)), "max_length": str(encoder.max_length),
                "dtype": encoder.precision, "texts": str(spool.texts_done),
                "truncated": str(truncated), "pipeline": "; ".join(f"{s}: {p}" for s, p in pipelines.items()),
                "dims": json.dumps(widths)}
    if options != VectorOptions():
        metadata.update({k: str(v) for k, v in vars(options).items() if v is not None and k != "calibration"})
    if not compaction.is_identity:
        metadata.update(compaction.to_metadata())
    if int8:
        metadata["int8_calibration"] = json.dumps(int8, sort_keys=True)
    paths = spool.finish(metadata)
    return EmbedResult(paths, spool.rows_done, widths[strategies[0]], strategies, started_at,
                       texts=spool.texts_done, truncated=truncated, pipelines=tuple(pipelines.values()),
                       widths=tuple(widths.values()))


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


class _NoBar:
    """A progress bar that shows nothing (the calibration texts are not the corpus)."""

    def update(self, count: int) -> None:
        pass


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


def _switches(**flags: Any) -> tuple[bool, ...]:
    """On/off options as bools, each checked to be one (``resume='no'`` must not resume)."""
    return tuple(bool(check_flag(value, name)) for name, value in flags.items())


def _check_sizes(**sizes: int | None) -> None:
    for name, value in sizes.items():
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise SeqpoolError(f"`{name}` must be a whole number of at least 1, got {value!r}")


def parse_dtype(dtype: str) -> str:
    """``fp32``/``float32``, ``bf16``/``bfloat16`` as the torch dtype name, or ``int8`` (OpenVINO)."""
    if not isinstance(dtype, str) or dtype.lower() not in DTYPES:
        raise SeqpoolError(f"unknown `dtype` {dtype!r}; choose fp32, bf16 or int8")
    return DTYPES[dtype.lower()]


def embed_file(input_path: str | os.PathLike, output: str | os.PathLike | None = None, *,
               model: str | os.PathLike | None = None, input_format: str | None = None,
               output_format: str | None = None, text_field: str | None = None,
               strategies: Sequence[str] | None = None, layer: int | Sequence[int] = -1,
               batch_size: int | None = None, max_length: int | None = None, normalize: bool | None = None,
               dtype: str = "fp32", device: str | None = None, threads: int | None = None,
               skip_empty: bool = False, chunk_size: int = DEFAULT_CHUNK_SIZE, resume: bool = False,
               progress: bool | None = None, note: Callable[[str], None] | None = None,
               prompt: str | None = None, prompt_name: str | None = None, include_prompt: bool | None = None,
               long_texts: str = "truncate", window: int | None = None, stride: int | None = None,
               chunk_output: bool = False, truncate_dim: int | None = None, precision: str = "float32",
               calibration: str | os.PathLike | None = None) -> EmbedResult:
    """Embed the corpus at ``input_path`` (``-`` for stdin) into ``output``: the whole ``seqpool embed``.

    Every argument, the input and every output path are checked before the model loads or
    the corpus is read. ``threads`` caps torch's threads for this call only. ``note``
    receives advice worth showing (e.g. bf16 on a CPU without native bf16). Prompts, long
    texts and compact vectors: :class:`seqpool.vector_options.VectorOptions` (``calibration``:
    a file of texts, any input format, to fit int8/uint8 ranges on).
    """
    from seqpool.registry import PARAMETER_FREE, get_strategy
    from seqpool.threads import check_thread_count, limited_threads

    def check_strategy(name: str) -> str:  # the registry's check is torch-free: option errors stay fast
        get_strategy(name, PARAMETER_FREE)
        return name

    chosen = tuple(dict.fromkeys(check_strategy(s) for s in strategies)) if strategies else None
    torch_dtype = parse_dtype(dtype)
    _check_sizes(chunk_size=chunk_size, batch_size=batch_size, max_length=max_length)
    skip_empty, resume, chunk_output = _switches(skip_empty=skip_empty, resume=resume, chunk_output=chunk_output)
    normalize = check_flag(normalize, "normalize")
    check_thread_count(threads, "`threads`")
    options = VectorOptions(prompt, prompt_name, include_prompt, long_texts, window, stride, chunk_output,
                            truncate_dim, precision, None if calibration is None else str(calibration))
    source = TextSource.open(input_path, input_format, text_field)
    fmt = detect_output_format(output or "", output_format)
    _check_options(options, fmt, skip_empty)
    target = Path(output) if output is not None else default_output_path(str(input_path), fmt)
    # The model's default strategy is unknown until it loads; check the one-file case now
    # and every per-strategy file again in embed_corpus, still before the corpus is read.
    check_outputs(target, fmt, chosen or ("mean",), source, options)
    _check_calibration(options, target, resume)
    if torch_dtype == "int8":
        _check_int8_outputs(target, fmt, chosen or ("mean",), source, options)
    from seqpool.encoder import Encoder, native_bf16_cpu

    run_id = new_run_id()
    with output_lock(target, run_id), limited_threads(threads):
        # after the lock: a running writer is "in use", not "interrupted"
        EmbeddingSpool.check_unfinished(partial_folder(target), target, resume)
        encoder = Encoder(model, device=device, dtype=torch_dtype, max_length=max_length, layer=layer,
                          workers=threads)
        if torch_dtype == "bfloat16" and encoder.device.type == "cpu" and native_bf16_cpu() is False and note:
            note("this CPU has no native bf16 (AVX512-BF16 or AMX), so bf16 runs slower than fp32 here; "
                 "use dtype=fp32 for speed")
        defaulted = not chosen and encoder.spec is not None and encoder.spec.pooling is None
        chosen = tuple(dict.fromkeys(check_strategy(s) for s in (chosen or (encoder.default_strategy,))))
        check_outputs(target, fmt, chosen, source, options)
        if torch_dtype == "int8":
            _check_int8_outputs(target, fmt, chosen, source, options)
        options.check_model(encoder, chosen)
        try:
            result = _embed_locked(encoder, source, target, fmt, chosen,
                                   encoder.default_normalize if normalize is None else normalize,
                                   batch_size, chunk_size, skip_empty, resume, progress, options, run_id)
            if defaulted and note:  # with the summary, after the run: a refusal stays one line
                note(f"{encoder.name_or_path} has no sentence-transformers modules.json, so it pooled with mean and "
                     f"did not normalise, as sentence-transformers would; name `strategies` to choose")
            return result
        except KeyboardInterrupt as error:
            raise EmbedInterrupted(partial_folder(target).is_dir()) from error


def _encode_chunk(encoder: Any, texts: list[str], strategies: tuple[str, ...], normalize: bool,
                  batch_size: int | None, skip_empty: bool, bar: Any,
                  options: VectorOptions) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray] | None, int]:
    """Rows of one chunk, in row order: ``(vectors, chunk columns or None, texts truncated)``.

    With ``skip_empty``, empty texts get zero rows unencoded.
    """
    kwargs = options.encode_kwargs()
    if options.chunk_output:
        vectors, table = encoder.encode_chunks(texts, strategies, batch_size=batch_size, normalize=normalize,
                                               progress=bar, **kwargs)
        return vectors, table, encoder.last_stats.truncated
    keep = [i for i, text in enumerate(texts) if text.strip()] if skip_empty else None
    if keep is None or len(keep) == len(texts):
        vectors = encoder.encode(texts, strategies, batch_size=batch_size, normalize=normalize, progress=bar, **kwargs)
        return vectors, None, encoder.last_stats.truncated
    encoded = encoder.encode([texts[i] for i in keep], strategies, batch_size=batch_size,
                             normalize=normalize, progress=bar, **kwargs)
    bar.update(len(texts) - len(keep))
    out = {}
    for strategy, vectors in encoded.items():
        full = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
        full[keep] = vectors
        out[strategy] = full
    return out, None, encoder.last_stats.truncated
