"""Options for how texts become stored vectors: prompt, long texts, compact vectors.

Kept free of torch (and of the model) so that a bad option fails in milliseconds, before
anything heavy is imported or loaded; :meth:`VectorOptions.check_model` adds the checks that
need the loaded Encoder (prompt names, window vs. max_length, truncate_dim vs. width).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Sequence

from seqpool.checks import positive_int
from seqpool.errors import SeqpoolError

#: ``truncate``: cut at the model's limit (counted); ``chunk``: overlapping windows merged
#: (:mod:`seqpool.long_texts`); ``late``: late chunking.
LONG_TEXT_MODES = ("truncate", "chunk", "late")


@dataclass(frozen=True)
class LongTextOptions:
    """``mode``: truncate | chunk | late. ``window`` / ``stride`` in tokens: for ``chunk`` a
    window's tokens *including* the special tokens and the prompt (default: the model's
    max_length), for ``late`` a chunk's text tokens (default: the model's max_length less
    its special tokens). ``stride``: tokens between window starts (default: 3/4 of the
    window for chunk, the whole window for late)."""

    mode: str = "truncate"
    window: int | None = None
    stride: int | None = None
    chunk_output: bool = False

    def __post_init__(self) -> None:
        if self.mode not in LONG_TEXT_MODES:
            raise SeqpoolError(f"unknown `long_texts` {self.mode!r}; choose one of: {', '.join(LONG_TEXT_MODES)}")
        for name in ("window", "stride"):
            positive_int(getattr(self, name), name, what="a positive number of tokens", optional=True)
        if self.mode == "late" and self.window and self.stride and self.stride > self.window:
            raise SeqpoolError(f"`stride` {self.stride} exceeds the {self.window}-token chunks (it would skip tokens); "
                               f"pass at most {self.window}")
        if self.mode == "truncate" and (self.window is not None or self.stride is not None or self.chunk_output):
            raise SeqpoolError("`window`, `stride` and `chunk_output` apply to `long_texts` 'chunk' or 'late', "
                               "not 'truncate'; choose one of those")


def window_sizes(options: LongTextOptions, max_length: int, n_special: int,
                 prompt_tokens: int = 0) -> tuple[int, int | None, int]:
    """``(text tokens per model window, their stride, text tokens per late chunk)``; checks that
    the options fit the model (callable as soon as the tokenizer is known, before any text)."""
    window = max_length if options.window is None or options.mode == "late" else options.window
    if window > max_length:
        raise SeqpoolError(f"`window` {window} exceeds the {max_length} tokens the model takes (`max_length`); "
                           f"pass at most {max_length}")
    size = window - n_special - prompt_tokens
    if size < 1:
        raise SeqpoolError(f"a `window` of {window} tokens leaves no room for text after {n_special} special tokens "
                           f"and a {prompt_tokens}-token prompt; pass a larger window or a shorter prompt")
    stride = options.stride if options.mode == "chunk" else None
    if stride is not None and stride > size:
        raise SeqpoolError(f"`stride` {stride} exceeds the window's {size} text tokens (it would skip tokens); "
                           f"pass at most {size}")
    chunk_size = options.window if options.window is not None else size
    if options.mode == "late" and options.stride is not None and options.stride > chunk_size:
        raise SeqpoolError(f"`stride` {options.stride} exceeds the {chunk_size}-token chunks (it would skip tokens); "
                           f"pass at most {chunk_size}")
    return size, stride, chunk_size


@dataclass(frozen=True)
class VectorOptions:
    """How ``seqpool embed`` turns texts into stored rows beyond the pooling strategy.

    Prompt (:mod:`seqpool.prompts`), long texts (``long_texts`` / ``window`` / ``stride``,
    ``chunk_output``: one row per chunk), Matryoshka ``truncate_dim`` and ``precision``
    (:mod:`seqpool.quantize`; int8/uint8 ranges fitted on the first chunk, or once on the
    texts of ``calibration``, a path). Construction checks everything that needs no model.

    Both engines and the :class:`~seqpool.engine.Embedder` take these options as one object
    (``embed_file`` and ``embed_files`` also take its fields as keywords, for short calls).
    """

    prompt: str | None = None
    prompt_name: str | None = None
    include_prompt: bool | None = None
    long_texts: str = "truncate"
    window: int | None = None
    stride: int | None = None
    chunk_output: bool = False
    truncate_dim: int | None = None
    precision: str = "float32"
    calibration: str | None = None

    def __post_init__(self) -> None:
        from seqpool.batching import check_flag
        from seqpool.quantize import SCALAR_PRECISIONS, check_precision, check_truncate_dim

        # 'no' is truthy: an on/off option must be a bool (None: off)
        object.__setattr__(self, "chunk_output", bool(check_flag(self.chunk_output, "chunk_output")))
        if self.calibration is not None:
            object.__setattr__(self, "calibration", str(self.calibration))
        if self.prompt is not None and self.prompt_name is not None:
            raise SeqpoolError("pass `prompt` (the text) or `prompt_name` (a name from the model's prompts), not both")
        LongTextOptions(self.long_texts, self.window, self.stride, self.chunk_output)
        check_precision(self.precision)
        check_truncate_dim(self.truncate_dim)
        if self.calibration is not None and self.precision not in SCALAR_PRECISIONS:
            raise SeqpoolError(f"`calibration` fits int8/uint8 ranges; it does not apply to `precision` {self.precision!r}")

    def encoding(self) -> VectorOptions:
        """These options less ``precision`` and ``calibration``: what happens to texts in the encoder.
        Storing the vectors compact is the engine's step, after the encoder (:mod:`seqpool.engine`)."""
        return replace(self, precision="float32", calibration=None)

    def changed(self) -> dict[str, Any]:
        """The fields set to something other than their default, by name, in field order."""
        return {field.name: getattr(self, field.name) for field in fields(self)
                if getattr(self, field.name) != field.default}

    def encode_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of ``Encoder.encode`` / ``encode_chunks``."""
        return {"prompt": self.prompt, "prompt_name": self.prompt_name, "include_prompt": self.include_prompt,
                "long_texts": self.long_texts, "window": self.window, "stride": self.stride,
                "truncate_dim": self.truncate_dim}

    def check_model(self, encoder: Any, strategies: Sequence[str]) -> str | None:
        """Check the options against the loaded model (before any text is read); the prompt used."""
        from seqpool.prompts import resolve_prompt
        from seqpool.quantize import check_truncate_dim
        from seqpool.registry import get_strategy

        prompt = resolve_prompt(self.prompt, self.prompt_name, encoder.prompts, encoder.default_prompt_name)
        prefix, suffix = encoder.special_tokens
        prompt_tokens = len(encoder.text_pieces([""], prompt)[0].prompt_ids) if prompt else 0
        if self.long_texts != "truncate":
            window_sizes(LongTextOptions(self.long_texts, self.window, self.stride), encoder.max_length,
                         len(prefix) + len(suffix), prompt_tokens)
        for strategy in strategies:
            check_truncate_dim(self.truncate_dim, get_strategy(strategy).output_dim(encoder.hidden_size))
        return prompt
