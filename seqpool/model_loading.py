"""Build the tokenizer and the token-state model a :class:`~seqpool.model_reader.ModelSpec` describes.

The Encoder's loading half, kept apart so ``encoder.py`` stays about running the model:

* encoder-decoder checkpoints (T5, MT5, UMT5, LongT5, any ``is_encoder_decoder`` config) run
  their encoder alone, as sentence-transformers runs them; the decoder's weights are not loaded
  where transformers has an encoder-only class;
* weights load in the dtype asked, else their stored dtype (fp32 or bf16; fp16 runs as fp32),
  straight from the checkpoint -- no fp32 copy first, so a 7 B model in bf16 fits in 24 GB;
* the Transformer module's recorded tokenizer / model / config kwargs are honoured, except
  the ones seqpool decides (``trust_remote_code``, dtype, device: see ``model_reader._OWN_KEYS``);
* ``do_lower_case`` lowercases in the tokenizer's normaliser, as sentence-transformers does, so
  character offsets still point into the original text.

:func:`load_parts` (a model name or folder) and :func:`wrap_parts` (a model and tokenizer already
built) give the same :class:`EncoderParts`, which ``Encoder.__init__`` takes from there.
"""

from __future__ import annotations

import contextlib
import copy
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import torch

from seqpool.devices import resolve_dtype
from seqpool.errors import SeqpoolError
from seqpool.model_head import ModelHead
from seqpool.io.safetensors_header import safetensors_header
from seqpool.model_reader import ModelSpec, read_model

#: Stored dtypes that run as they are; anything else runs as float32.
_RUNNABLE = (torch.float32, torch.bfloat16)
_HEADER_DTYPES = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "F64": torch.float64}


@dataclass(frozen=True)
class EncoderParts:
    """What an Encoder is built from, whichever way its model was given."""

    #: the Encoder's ``name_or_path``: the Hub id, the folder, or the model object's own name
    name: str
    model: Any
    tokenizer: Any
    #: what the model runs in (float32 for int8, which quantizes after calibration)
    dtype: torch.dtype
    #: the model's module stack (``None``: a model object given without one)
    spec: ModelSpec | None = None
    #: the model's modules after pooling (Dense, LayerNorm), built from ``spec``
    head: ModelHead | None = None
    quantized: bool = False


def load_parts(model: str | os.PathLike | None, dtype: Any, device: torch.device,
               trust_remote_code: bool = False) -> EncoderParts:
    """The parts for a model name, folder or ``None`` (the packaged model), in ``dtype`` (``None``:
    the stored dtype). Every setting is checked, and the module stack read and refused where seqpool
    cannot reproduce it, before any weights load."""
    quantized = isinstance(dtype, str) and dtype.lower() == "int8"
    if quantized:
        from seqpool.int8 import require_extra

        require_extra()
        if device.type != "cpu":
            raise SeqpoolError(f"dtype int8 runs on the CPU (OpenVINO); use device='cpu' or dtype bf16 on {device}")
    torch_dtype = torch.float32 if quantized else resolve_dtype(dtype)
    spec = read_model(model)
    head = ModelHead.from_spec(spec.head, spec.path)
    tokenizer, hf_model = load_tokenizer_and_model(spec, torch_dtype, trust_remote_code)
    name = spec.name if spec.source in ("cache", "hub") else str(spec.path)
    return EncoderParts(name, hf_model, tokenizer, torch_dtype or hf_model.dtype, spec, head, quantized)


def wrap_parts(model: torch.nn.Module, tokenizer: Any, dtype: Any, spec: ModelSpec | None = None) -> EncoderParts:
    """The parts for a model and tokenizer already built, run in ``dtype`` (``None``: float32).
    ``spec``'s ``do_lower_case`` lowercases in a copy of the tokenizer: the caller's is not changed."""
    if tokenizer is None:
        raise SeqpoolError("tokenizer is needed with a model object: Encoder(model, tokenizer=tokenizer), "
                           "e.g. AutoTokenizer.from_pretrained of the same checkpoint")
    if spec is not None and not isinstance(spec, ModelSpec):
        raise SeqpoolError(f"spec must be a seqpool.model_reader.ModelSpec (read_model(folder)), "
                           f"got {type(spec).__name__}")
    torch_dtype = resolve_dtype(dtype) or torch.float32
    head = ModelHead.from_spec(spec.head, spec.path) if spec is not None else None
    if spec is not None and spec.do_lower_case:
        tokenizer = copy.deepcopy(tokenizer)
        lowercase_in_tokenizer(tokenizer)
    name = getattr(model, "name_or_path", "") or type(model).__name__
    return EncoderParts(str(name), model, tokenizer, torch_dtype, spec, head)


def load_tokenizer_and_model(spec: ModelSpec, dtype: torch.dtype | None,
                             trust_remote_code: bool = False) -> tuple[Any, Any]:
    """``(tokenizer, model)`` for ``spec``, loaded in ``dtype`` (``None``: the stored dtype)."""
    from transformers import AutoConfig, AutoTokenizer

    folder = str(spec.transformer_dir)
    try:
        with quiet_transformers():
            config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code, **spec.config_kwargs)
            tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code,
                                                      **spec.tokenizer_kwargs)
            model = _load_model(folder, config, _load_dtype(config, dtype, folder), trust_remote_code, spec.model_kwargs)
    except SeqpoolError:
        raise
    except Exception as error:  # HF, safetensors and tokenizers each raise their own types
        detail = " ".join(str(error).split())[:200] or type(error).__name__
        where = "" if folder == spec.name else f" (read from {folder})"
        raise SeqpoolError(f"cannot load model {spec.name!r}: the folder holds no loadable model{where} "
                           f"({detail})") from None
    if spec.do_lower_case:
        lowercase_in_tokenizer(tokenizer)
    return tokenizer, model


def stored_dtype(config: Any, folder: str | Path | None = None) -> torch.dtype | None:
    """The dtype a checkpoint is stored in: its config's ``dtype``, else its first floating
    safetensors tensor's (read from the header), else ``None``."""
    recorded = getattr(config, "dtype", None) or vars(config).get("torch_dtype")
    if isinstance(recorded, str):
        recorded = getattr(torch, recorded, None)
    if isinstance(recorded, torch.dtype):
        return recorded
    for path in sorted(Path(folder).glob("*.safetensors")) if folder is not None else ():
        for entry in safetensors_header(path).values():
            if isinstance(entry, dict) and entry.get("dtype") in _HEADER_DTYPES:
                return _HEADER_DTYPES[entry["dtype"]]
    return None


def _load_dtype(config: Any, dtype: torch.dtype | None, folder: str) -> torch.dtype:
    if dtype is not None:
        return dtype
    stored = stored_dtype(config, folder)
    return stored if stored in _RUNNABLE else torch.float32


def _load_model(folder: str, config: Any, dtype: torch.dtype, trust_remote_code: bool,
                model_kwargs: Any) -> Any:
    """The model class that gives token states: the encoder alone for encoder-decoder configs."""
    from transformers import AutoModel

    kwargs = dict(model_kwargs, trust_remote_code=trust_remote_code, config=config)
    kwargs[_dtype_keyword()] = dtype
    if not getattr(config, "is_encoder_decoder", False):
        return AutoModel.from_pretrained(folder, **kwargs)
    encoder_class = _encoder_only_class(config)
    if encoder_class is not None:
        return encoder_class.from_pretrained(folder, **kwargs)
    full = AutoModel.from_pretrained(folder, **kwargs)
    if not hasattr(full, "get_encoder"):
        raise SeqpoolError(f"{folder}: an encoder-decoder model ({config.model_type}) whose encoder seqpool "
                           f"cannot take on its own")
    encoder = full.get_encoder()
    encoder.config = getattr(encoder, "config", config)
    return encoder


def max_length_limit(config: Any, tokenizer: Any, asked: int | None = None) -> int:
    """The Encoder's max length: ``asked`` (the user's or the model's setting), capped by the position
    embeddings and the tokenizer's limit (512 when neither says)."""
    limits = [getattr(config, "max_position_embeddings", None), getattr(config, "n_positions", None),
              getattr(tokenizer, "model_max_length", None)]
    known = [int(x) for x in limits if isinstance(x, int) and 0 < x < 1_000_000]
    limit = min(known) if known else 512
    if asked is None:
        return limit
    if asked < 1:
        raise SeqpoolError(f"max_length must be at least 1, got {asked}")
    return min(int(asked), limit)


def special_token_ids(tokenizer: Any) -> tuple[list[int], list[int]]:
    """The ids a tokenizer puts before and after every text (``[CLS]``/``[SEP]``, an appended EOS)."""
    from seqpool.long_texts import special_tokens_around

    with_special, without = (tokenizer("a", add_special_tokens=flag)["input_ids"] for flag in (True, False))
    return special_tokens_around(with_special, without)


def _dtype_keyword() -> str:
    """``from_pretrained``'s dtype argument: ``dtype`` since transformers 4.56, ``torch_dtype`` before."""
    import transformers
    from packaging.version import Version

    return "dtype" if Version(transformers.__version__) >= Version("4.56") else "torch_dtype"


def _encoder_only_class(config: Any) -> Any:
    """transformers' ``<Family>EncoderModel`` for this config (T5EncoderModel, MT5EncoderModel, ...)."""
    import transformers
    from transformers import AutoModel

    try:
        full_class = AutoModel._model_mapping[type(config)]
    except Exception:
        return None
    name = full_class.__name__
    candidate = name[: -len("Model")] + "EncoderModel" if name.endswith("Model") else None
    return getattr(transformers, candidate, None) if candidate else None


def lowercase_in_tokenizer(tokenizer: Any) -> None:
    """Put a ``Lowercase`` step in front of a fast tokenizer's normaliser (unless it lowercases already)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        if hasattr(tokenizer, "do_lower_case"):
            tokenizer.do_lower_case = True
            return
        raise SeqpoolError("the model asks for lowercased input (do_lower_case) but its tokenizer is not a fast "
                           "tokenizer seqpool can set it on")
    from tokenizers.normalizers import Lowercase, Sequence

    import json

    normalizer = backend.normalizer
    if normalizer is not None and _lowercases(json.loads(normalizer.__getstate__())):
        return
    steps = [Lowercase()]
    if isinstance(normalizer, Sequence):
        steps += list(normalizer)
    elif normalizer is not None:
        steps.append(normalizer)
    backend.normalizer = Sequence(steps)


def _lowercases(state: Any) -> bool:
    """Whether a normaliser's JSON state lowercases (a ``Lowercase`` step, or BertNormalizer's flag)."""
    if not isinstance(state, dict):
        return False
    if state.get("type") == "Lowercase" or (state.get("type") == "BertNormalizer" and state.get("lowercase")):
        return True
    return any(_lowercases(step) for step in state.get("normalizers") or ())


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Hide transformers' weight-loading bar and info chatter; seqpool shows its own progress."""
    from transformers.utils import logging as hf_logging

    bars_were_on = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars_were_on:
            hf_logging.enable_progress_bar()
