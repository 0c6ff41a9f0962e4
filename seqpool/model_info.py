"""What a model is and what seqpool will do with it: the report behind ``seqpool inspect``.

Reads the model's folder (resolved like every other command: folder, cache or Hub), its config,
its tokenizer and its safetensors headers -- never its weights, so a 7 B model is described in a
second. The pooling, head, normalisation and prompts are the :class:`~seqpool.model_reader.ModelSpec`
the Encoder uses, so what ``inspect`` prints is what ``embed`` does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from seqpool.errors import SeqpoolError
from seqpool.expressions import parse_strategy
from seqpool.io.safetensors_header import safetensors_header
from seqpool.model_loading import max_length_limit, quiet_transformers, special_token_ids, stored_dtype
from seqpool.model_reader import ModelSpec, read_model
from seqpool.registry import get_strategy

_DTYPE_BYTES = {"F64": 8, "F32": 4, "BF16": 2, "F16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


def describe_model(model: str | os.PathLike | None = None, trust_remote_code: bool = False) -> dict[str, Any]:
    """A JSON-ready description of ``model`` (``None``: the packaged all-MiniLM-L6-v2)."""
    from transformers import AutoConfig, AutoTokenizer

    spec = read_model(model)
    folder = str(spec.transformer_dir)
    try:
        with quiet_transformers():
            config = AutoConfig.from_pretrained(folder, trust_remote_code=trust_remote_code, **spec.config_kwargs)
            tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=trust_remote_code,
                                                      **spec.tokenizer_kwargs)
    except Exception as error:
        detail = " ".join(str(error).split())[:200] or type(error).__name__
        raise SeqpoolError(f"cannot read model {spec.name!r}: {detail}") from None
    hidden = int(getattr(config, "hidden_size", 0) or getattr(config, "d_model", 0))
    pooled = sum(get_strategy(term.name).output_dim(hidden) for term in parse_strategy(spec.strategy))
    head_in = spec.head[0].in_features if spec.head else None
    width = spec.head[-1].out_features if spec.head and head_in == pooled else pooled
    stored = stored_dtype(config, folder)
    parameters, weight_bytes = _weights(spec)
    prefix, suffix = _special_tokens(tokenizer)
    return {
        "model": spec.name, "source": spec.source, "path": str(spec.path),
        "family": model_family(config), "architecture": (getattr(config, "architectures", None) or [config.model_type])[0],
        "model_type": config.model_type, "layers": int(getattr(config, "num_hidden_layers", 0) or 0),
        "hidden_size": hidden, "pooling": spec.strategy,
        "pooling_from": "modules.json" if spec.pooling else "default: no sentence-transformers modules.json",
        "include_prompt": spec.include_prompt, "head": [layer.describe() for layer in spec.head],
        "normalize": spec.normalize, "pipeline": spec.pipeline(head=head_in == pooled), "output_width": width,
        "max_length": max_length_limit(config, tokenizer, spec.max_length), "do_lower_case": spec.do_lower_case,
        "prompts": dict(spec.prompts), "default_prompt_name": spec.default_prompt_name,
        "padding_side": getattr(tokenizer, "padding_side", "right"),
        "special_tokens": {"before": prefix, "after": suffix},
        "stored_dtype": str(stored).removeprefix("torch.") if stored is not None else None,
        "runs_as": "bfloat16" if stored is not None and str(stored) == "torch.bfloat16" else "float32",
        "parameters": parameters, "weight_bytes": weight_bytes,
    }


def model_family(config: Any) -> str:
    """``encoder``, ``decoder`` or ``encoder-decoder``: a config that only a causal LM head takes is a decoder."""
    if getattr(config, "is_encoder_decoder", False):
        return "encoder-decoder"
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    model_type = getattr(config, "model_type", "")
    causal = model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and model_type not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    return "decoder" if causal or getattr(config, "is_decoder", False) else "encoder"


def _weights(spec: ModelSpec) -> tuple[int | None, int | None]:
    """Parameters and bytes of the transformer's safetensors files, from their headers."""
    files = sorted(Path(spec.transformer_dir).glob("*.safetensors"))
    if not files:
        return None, None
    count = size = 0
    for path in files:
        for entry in safetensors_header(path).values():
            if not isinstance(entry, dict):
                continue
            numel = 1
            for extent in entry.get("shape", ()):
                numel *= int(extent)
            count += numel
            size += numel * _DTYPE_BYTES.get(str(entry.get("dtype")), 4)
    return count, size


def _special_tokens(tokenizer: Any) -> tuple[list[str], list[str]]:
    """The tokens the tokenizer puts before and after every text (``[CLS]``/``[SEP]``, an appended EOS)."""
    before, after = special_token_ids(tokenizer)
    return tokenizer.convert_ids_to_tokens(before), tokenizer.convert_ids_to_tokens(after)


def format_description(info: dict[str, Any]) -> str:
    """The human-readable ``seqpool inspect`` report, one fact a line."""
    prompts = ", ".join(f"{name}={text!r}" for name, text in info["prompts"].items()) or "none"
    default = info["default_prompt_name"] or "none"
    before = " ".join(info["special_tokens"]["before"]) or "nothing"
    after = " ".join(info["special_tokens"]["after"]) or "nothing"
    params = f"{info['parameters']:,}" if info["parameters"] is not None else "unknown (no safetensors)"
    stored = info["stored_dtype"] or "not recorded"
    rows = [
        ("model", f"{info['model']} ({info['source']}: {info['path']})"),
        ("family", f"{info['family']} ({info['architecture']}, {info['model_type']})"),
        ("layers", f"{info['layers']} x {info['hidden_size']}"),
        ("pooling", f"{info['pooling']} ({info['pooling_from']}; include_prompt={info['include_prompt']})"),
        ("head", ", ".join(info["head"]) or "none"),
        ("normalize", str(info["normalize"])),
        ("pipeline", f"{info['pipeline']} -> {info['output_width']} values"),
        ("max length", f"{info['max_length']} tokens" + (", lowercased" if info["do_lower_case"] else "")),
        ("prompts", f"{prompts} (default: {default})"),
        ("tokens", f"{before} + text + {after}; the tokenizer pads {info['padding_side']}, seqpool pads right "
                   f"and reads the mask"),
        ("dtype", f"stored {stored}, runs as {info['runs_as']} unless --dtype says otherwise"),
        ("parameters", params),
    ]
    return "\n".join(f"{name:<11} {value}" for name, value in rows)
