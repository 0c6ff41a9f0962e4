"""``Embedder``: the one unit every engine maps over batches of texts.

A Ray actor, a Spark ``predict_batch_udf`` or a plain loop all hold one picklable
``Embedder``; it carries only settings, and loads its :class:`~seqpool.Encoder` the first
time it is called in a process, so shipping it to a thousand workers costs nothing and
each worker holds one model however many copies of the object it unpickles.
"""

from __future__ import annotations

import os
import sys
import warnings
from typing import Any, Sequence

import numpy as np

from seqpool.errors import PoolingWarning, SeqpoolError

#: Encoders loaded in this process, by settings: copies of one Embedder share a model.
_ENCODERS: dict[tuple, Any] = {}


class Embedder:
    """Map a batch with a text column to the same batch plus one float32 vector column per strategy.

    ``batch`` is a ``dict[str, np.ndarray]`` (Ray Data's numpy format) or a pandas
    DataFrame; the result has the same type, every input column unchanged, and a column
    named after each strategy: an ``(N, D)`` float32 array (dict) or one array per row
    (DataFrame). A ``None`` text embeds as the empty string, as the file readers read it,
    so rows never shift.

    ``device=None`` picks ``cuda`` when this process was given a GPU by Ray, else the CPU.
    The other settings are those of :class:`seqpool.Encoder` and ``Encoder.encode``.
    """

    def __init__(self, model: str | None = None, strategies: Sequence[str] | str | None = None,
                 normalize: bool | None = None, layer: int | Sequence[int] = -1, dtype: str | None = None,
                 max_length: int | None = None, batch_size: int | None = None, device: str | None = None,
                 text_column: str = "text", prompt: str | None = None, prompt_name: str | None = None,
                 include_prompt: bool | None = None, long_texts: str = "truncate", window: int | None = None,
                 stride: int | None = None, truncate_dim: int | None = None):
        from seqpool.batching import check_flag
        from seqpool.pooling import check_strategy  # the registry's check: unknown names fail here
        from seqpool.vector_options import VectorOptions

        if isinstance(strategies, str):
            strategies = [strategies]
        if isinstance(dtype, str) and dtype.lower() == "int8":
            raise SeqpoolError("dtype int8 is not available with the Ray engine: each actor would fit its own "
                               "calibration, so rows would differ by actor; use the local engine for int8")
        if not isinstance(text_column, str) or not text_column:
            raise SeqpoolError(f"text_column must be a column name, got {text_column!r}")
        if batch_size is not None and (isinstance(batch_size, bool) or int(batch_size) < 1):
            raise SeqpoolError(f"batch_size must be at least 1, got {batch_size}")
        if model is not None and os.path.exists(os.path.expanduser(str(model))):
            model = os.path.abspath(os.path.expanduser(str(model)))  # workers run elsewhere: no cwd
        self.model = None if model is None else str(model)
        self.strategies = None if strategies is None else tuple(dict.fromkeys(check_strategy(s) for s in strategies))
        self.normalize = check_flag(normalize, "normalize")  # checked on the driver, before any worker
        self.layer = layer if isinstance(layer, int) else tuple(layer)
        self.dtype = dtype
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = device
        self.text_column = text_column
        # prompts, long texts, Matryoshka truncation: checked here, on the driver, before any worker starts
        self.vectors = VectorOptions(prompt, prompt_name, include_prompt, long_texts, window, stride,
                                     truncate_dim=truncate_dim)
        if self.strategies is not None and text_column in self.strategies:
            raise SeqpoolError(f"text_column {text_column!r} is also a strategy name; its vectors would "
                               f"overwrite the texts, so rename the column")

    @property
    def settings(self) -> dict[str, Any]:
        """The constructor arguments: ``type(e)(**e.settings)`` builds an equal Embedder."""
        return {"model": self.model, "strategies": self.strategies, "normalize": self.normalize,
                "layer": self.layer, "dtype": self.dtype, "max_length": self.max_length,
                "batch_size": self.batch_size, "device": self.device, "text_column": self.text_column,
                **self.vector_settings}

    @property
    def vector_settings(self) -> dict[str, Any]:
        """The prompt / long-text / truncate_dim arguments that differ from their defaults."""
        defaults = type(self.vectors)().encode_kwargs()
        return {key: value for key, value in self.vectors.encode_kwargs().items() if value != defaults[key]}

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

    def describe(self) -> dict[str, Any]:
        """The resolved settings (model path, strategies, normalize, layers, ...): what a run
        must record to be reproduced or resumed. Loads the model if needed."""
        encoder = self.encoder
        widths = {name: int(vectors.shape[1]) for name, vectors in self.embed([""]).items()}
        return {"model": encoder.name_or_path, "strategies": list(self.resolved_strategies()),
                "normalize": self.resolved_normalize(), "layers": list(encoder.layers),
                "max_length": encoder.max_length, "dtype": str(encoder.dtype).removeprefix("torch."),
                "dims": widths, "pipeline": {s: encoder.pipeline(s, self.resolved_normalize()) for s in widths},
                **({"vectors": self.vector_settings} if self.vector_settings else {})}

    def resolved_strategies(self) -> tuple[str, ...]:
        return self.strategies or (self.encoder.default_strategy,)

    def resolved_normalize(self) -> bool:
        return self.encoder.default_normalize if self.normalize is None else bool(self.normalize)

    # -- batches ----------------------------------------------------------------------

    def embed(self, texts: Sequence[str]) -> dict[str, np.ndarray]:
        """One float32 ``(N, D)`` array per strategy for ``texts``, in order."""
        return self.encoder.encode(list(texts), self.resolved_strategies(), batch_size=self.batch_size,
                                   normalize=self.resolved_normalize(), **self.vectors.encode_kwargs())

    def __call__(self, batch: Any) -> Any:
        texts = self._texts(batch)
        with warnings.catch_warnings():  # the driver's describe() said it once; actors need not repeat it
            warnings.simplefilter("ignore", PoolingWarning)
            vectors = self.embed(texts)
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
