"""``Embedder``: the one unit every engine calls -- texts in, one float32 array per strategy out,
with the statistics of the call that made them.

The local loop (:mod:`seqpool.embed`) wraps the Encoder it loaded (:meth:`Embedder.from_encoder`).
A Ray actor, a Spark ``predict_batch_udf`` or a plain loop hold a picklable ``Embedder``: it
carries only settings and loads its :class:`~seqpool.Encoder` the first time it is called in a
process, so shipping it to a thousand workers costs nothing and each worker holds one model
however many copies of the object it unpickles.
"""

from __future__ import annotations

import os
import sys
import warnings
from dataclasses import fields, replace
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import numpy as np

from seqpool.checks import positive_int
from seqpool.errors import PoolingWarning, SeqpoolError

if TYPE_CHECKING:
    from seqpool.encode_plan import EncodeStats
    from seqpool.engine.settings import RunSettings
    from seqpool.vector_options import VectorOptions

#: Encoders loaded in this process, by settings: copies of one Embedder share a model.
_ENCODERS: dict[tuple, Any] = {}

#: The :class:`~seqpool.vector_options.VectorOptions` an Embedder applies (the others, precision
#: and calibration, say how an engine stores the vectors it returns).
_STORAGE_FIELDS = ("precision", "calibration")


class EmbeddedBatch(dict):
    """One float32 ``(N, D)`` array per strategy (a plain ``dict`` to whoever reads it), with what
    encoding them recorded: ``stats`` (:class:`~seqpool.encode_plan.EncodeStats`: texts cut at the
    model's max length, which ones) and, with ``chunk_output``, ``chunks``: the ``doc``, ``chunk``,
    ``char_start`` and ``char_end`` columns of its rows (one row per chunk, not per text).

    The statistics travel with the vectors, not on the Encoder, so an engine reads those of the
    very call that made them, and an ``embed`` override that returns ``super().embed(texts)``
    keeps them.
    """

    def __init__(self, vectors: Mapping[str, np.ndarray], stats: EncodeStats | None = None,
                 chunks: dict[str, np.ndarray] | None = None):
        super().__init__(vectors)
        self.stats = stats
        self.chunks = chunks


def truncated_rows(vectors: Mapping[str, np.ndarray]) -> tuple[int, ...]:
    """The rows of ``vectors`` whose texts were cut at the model's max length, as their
    :class:`EmbeddedBatch` recorded; none known for a plain dict (an ``embed`` override that made
    its own vectors)."""
    stats = getattr(vectors, "stats", None)
    return tuple(stats.truncated_rows) if stats is not None else ()


class Embedder:
    """Map a batch with a text column to the same batch plus one float32 vector column per strategy.

    ``batch`` is a ``dict[str, np.ndarray]`` (Ray Data's numpy format) or a pandas
    DataFrame; the result has the same type, every input column unchanged, and a column
    named after each strategy: an ``(N, D)`` float32 array (dict) or one array per row
    (DataFrame). A ``None`` text embeds as the empty string, as the file readers read it,
    so rows never shift. :meth:`embed` takes the texts themselves.

    ``device=None`` picks ``cuda`` when this process was given a GPU by Ray, else the CPU.
    The other settings are those of :class:`seqpool.Encoder` and ``Encoder.encode``; prompts,
    long texts and ``truncate_dim`` come as ``options``
    (:class:`~seqpool.vector_options.VectorOptions`, whose ``precision`` and ``calibration``
    are the engine's to apply, not the Embedder's) or as keywords naming its fields.
    """

    _encoder: Any = None  # an Encoder given to from_encoder, never pickled

    def __init__(self, model: str | None = None, strategies: Sequence[str] | str | None = None,
                 normalize: bool | None = None, layer: int | Sequence[int] = -1, dtype: str | None = None,
                 max_length: int | None = None, batch_size: int | None = None, device: str | None = None,
                 text_column: str = "text", *, options: VectorOptions | None = None, **vector_options: Any):
        from seqpool.batching import check_flag
        from seqpool.pooling import check_strategy  # the registry's check: unknown names fail here
        from seqpool.vector_options import VectorOptions

        for name in vector_options:
            if name in _STORAGE_FIELDS or name not in {field.name for field in fields(VectorOptions)}:
                raise TypeError(f"{type(self).__name__}() got an unexpected keyword argument {name!r}")
        if isinstance(strategies, str):
            strategies = [strategies]
        if isinstance(dtype, str) and dtype.lower() == "int8":
            raise SeqpoolError("dtype int8 is not available with the Ray engine: each actor would fit its own "
                               "calibration, so rows would differ by actor; use the local engine for int8")
        if not isinstance(text_column, str) or not text_column:
            raise SeqpoolError(f"text_column must be a column name, got {text_column!r}")
        self.batch_size = positive_int(batch_size, "batch_size", optional=True)
        if model is not None and os.path.exists(os.path.expanduser(str(model))):
            model = os.path.abspath(os.path.expanduser(str(model)))  # workers run elsewhere: no cwd
        self.model = None if model is None else str(model)
        self.strategies = None if strategies is None else tuple(dict.fromkeys(check_strategy(s) for s in strategies))
        self.normalize = check_flag(normalize, "normalize")  # checked on the driver, before any worker
        self.layer = layer if isinstance(layer, int) else tuple(layer)
        self.dtype = dtype
        self.max_length = max_length
        self.device = device
        self.text_column = text_column
        # prompts, long texts, Matryoshka truncation: checked here, on the driver, before any worker starts
        options = VectorOptions() if options is None else options
        self.vectors = (replace(options, **vector_options) if vector_options else options).encoding()
        if self.strategies is not None and text_column in self.strategies:
            raise SeqpoolError(f"text_column {text_column!r} is also a strategy name; its vectors would "
                               f"overwrite the texts, so rename the column")

    @classmethod
    def from_encoder(cls, encoder: Any, strategies: Sequence[str] | None = None, normalize: bool | None = None,
                     batch_size: int | None = None, *, options: VectorOptions | None = None) -> Embedder:
        """An Embedder around an Encoder already loaded in this process (the local engine's, with
        its device, threads and int8 calibration): the same unit as the actors', no second model.
        A pickled copy carries the settings only, and loads its own model from them."""
        embedder = cls(strategies=strategies, normalize=normalize, batch_size=batch_size, options=options)
        embedder.model, embedder.layer, embedder.dtype = encoder.name_or_path, tuple(encoder.layers), encoder.precision
        embedder.max_length, embedder.device = encoder.max_length, str(encoder.device)
        embedder._encoder = encoder
        return embedder

    def __getstate__(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items() if key != "_encoder"}

    @property
    def settings(self) -> dict[str, Any]:
        """The constructor arguments: ``type(e)(**e.settings)`` builds an equal Embedder."""
        return {"model": self.model, "strategies": self.strategies, "normalize": self.normalize,
                "layer": self.layer, "dtype": self.dtype, "max_length": self.max_length,
                "batch_size": self.batch_size, "device": self.device, "text_column": self.text_column,
                **self.vector_settings}

    @property
    def vector_settings(self) -> dict[str, Any]:
        """The prompt / long-text / truncate_dim / chunk_output arguments that differ from their defaults."""
        return self.vectors.changed()

    def __repr__(self) -> str:
        shown = ", ".join(f"{key}={value!r}" for key, value in self.settings.items() if value is not None)
        return f"{type(self).__name__}({shown})"

    # -- the model, once per process -------------------------------------------------

    @property
    def encoder(self) -> Any:
        """This process's :class:`seqpool.Encoder` for these settings, loaded on first use.

        Kept in a per-process table, never on the instance: pickling an Embedder ships
        settings only, and every copy in one process shares one model.
        """
        if self._encoder is not None:
            return self._encoder
        device = self.resolved_device()
        key = (self.model, self.layer, self.dtype, self.max_length, device)
        if key not in _ENCODERS:
            from seqpool.encoder import Encoder

            _ENCODERS[key] = Encoder(self.model, device=device, dtype=self.dtype, max_length=self.max_length,
                                     layer=self.layer)
        return _ENCODERS[key]

    def resolved_device(self) -> str:
        """``device``, or ``cuda`` when Ray gave this worker a GPU, else ``cpu``."""
        if self.device is not None:
            return str(self.device)
        ray = sys.modules.get("ray")  # only inside a Ray worker (or driver) is it already imported
        if ray is not None and ray.is_initialized() and ray.get_gpu_ids():
            return "cuda"
        return "cpu"

    def run_settings(self, precision: str = "float32", calibration: str | None = None) -> RunSettings:
        """The record of a run with this Embedder (:class:`~seqpool.engine.settings.RunSettings`),
        resolved against the model (loaded if needed); ``precision`` and ``calibration``: how the
        engine stores the vectors (:mod:`seqpool.engine.compaction`)."""
        from seqpool.engine.settings import RunSettings

        options = replace(self.vectors, precision=precision, calibration=calibration)
        return RunSettings.resolve(self.encoder, self.resolved_strategies(), self.resolved_normalize(), options,
                                   self.batch_size)

    def check_runs(self) -> None:
        """Run the model once, on an empty text, in this process: a model that loads but cannot
        run fails here, and what it warns (a strategy that departs from the model's own pooling)
        is said here, once, not by every worker."""
        self.embed([""])

    def describe(self) -> dict[str, Any]:
        """The resolved settings (model path, strategies, normalize, layers, ...): what a run
        must record to be reproduced or resumed. Loads the model and runs it (:meth:`check_runs`)."""
        self.check_runs()
        return self.run_settings().described()

    def resolved_strategies(self) -> tuple[str, ...]:
        return self.strategies or (self.encoder.default_strategy,)

    def resolved_normalize(self) -> bool:
        return self.encoder.default_normalize if self.normalize is None else bool(self.normalize)

    # -- texts and batches ------------------------------------------------------------

    def embed(self, texts: Sequence[str], progress: Any = False) -> EmbeddedBatch:
        """One float32 ``(N, D)`` array per strategy for ``texts``, in order, with the call's
        statistics (:class:`EmbeddedBatch`); with ``chunk_output``, one row per chunk and the
        chunk columns. ``progress``: a bar advanced per text (the local loop's), or False."""
        encoder = self.encoder
        kwargs = {"batch_size": self.batch_size, "normalize": self.resolved_normalize(), "progress": progress,
                  "return_stats": True, **self.vectors.encode_kwargs()}
        if self.vectors.chunk_output:
            vectors, chunks, stats = encoder.encode_chunks(list(texts), self.resolved_strategies(), **kwargs)
            return EmbeddedBatch(vectors, stats, chunks)
        vectors, stats = encoder.encode(list(texts), self.resolved_strategies(), **kwargs)
        return EmbeddedBatch(vectors, stats)

    def embed_column(self, batch: Any) -> EmbeddedBatch:
        """The vectors of ``batch``'s text column, one row per row (what :meth:`__call__` adds)."""
        if self.vectors.chunk_output:
            raise SeqpoolError("`chunk_output` gives one row per chunk, which a batch of one row per text cannot "
                               "hold; call embed(texts) for chunk rows")
        texts = self._texts(batch)
        with warnings.catch_warnings():  # the driver's check_runs() said it once; actors need not repeat it
            warnings.simplefilter("ignore", PoolingWarning)
            return self.embed(texts)

    def __call__(self, batch: Any) -> Any:
        vectors = self.embed_column(batch)
        if _is_dataframe(batch):
            out = batch.copy()
            for name, array in vectors.items():
                out[name] = list(array)
            return out
        out = dict(batch)
        out.update(vectors)
        return out

    def _texts(self, batch: Any) -> list[str]:
        columns = list(batch.columns) if _is_dataframe(batch) else list(batch)
        if self.text_column not in columns:
            raise SeqpoolError(f"the batch has no text column {self.text_column!r} (columns: "
                               f"{', '.join(map(str, columns))}); set text_column")
        values = batch[self.text_column]
        values = values.tolist() if hasattr(values, "tolist") else list(values)
        texts = []
        for index, value in enumerate(values):
            if value is None:
                value = ""
            elif isinstance(value, bytes):
                value = value.decode("utf-8")
            elif not isinstance(value, str):
                raise SeqpoolError(f"column {self.text_column!r}, row {index} of the batch holds "
                                   f"{type(value).__name__}, not text")
            texts.append(value)
        return texts


def _is_dataframe(batch: Any) -> bool:
    pandas = sys.modules.get("pandas")
    return pandas is not None and isinstance(batch, pandas.DataFrame)
