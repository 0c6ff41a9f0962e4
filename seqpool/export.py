"""A model folder whose graph ends in the sentence vector: pooling, head and normalisation inside.

sentence-transformers exports the transformer only, so every service in Rust, Java, C# or
JavaScript re-implements pooling by hand -- and gets padding wrong. ``seqpool export`` writes
``model.onnx`` (or the OpenVINO pair ``openvino_model.xml``/``.bin``) plus the tokenizer files:

* inputs ``input_ids``, ``attention_mask`` (+ ``token_type_ids`` where the model has them),
  int64, dynamic batch and sequence axes, **either padding side**: the graph moves each row's
  real tokens to the front (a per-row rotation by its count of leading pads), so the model sees
  exactly the right-padded batch seqpool itself runs and positions never shift;
* output ``sentence_embedding``: the strategy (any parameter-free expression, layers included:
  ``mean``, ``cls+mean``, ``mean@-2``), or a saved :class:`~seqpool.pooling.pooler.Pooler`, then the
  model's own head where seqpool applies it, then L2 normalisation -- or, with a saved
  :class:`~seqpool.classifier.PooledClassifier`, its ``logits``;
* ``--dtype int8``: weights and activations quantized by NNCF with calibration on the user's
  texts (per-channel weights), the same quantizer as :mod:`seqpool.int8`.

Everything is checked before the model loads and built in a staging folder renamed into place,
so a failed export leaves nothing behind.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from seqpool.batching import check_flag
from seqpool.errors import SeqpoolError
from seqpool.io.atomic import staging_folder

EXPORT_FORMATS = ("onnx", "openvino")
EXPORT_DTYPES = ("fp32", "int8")
ONNX_OPSET = 17
_INSTALL = "pip install 'seqpool[int8]'"


@dataclass(frozen=True)
class ExportRequest:
    """What to export, checked before anything loads (:func:`check_request`)."""

    output: Path
    fmt: str = "onnx"
    model: str | None = None
    strategy: str | None = None
    normalize: bool | None = None
    classifier: str | None = None
    dtype: str = "fp32"
    calibration: str | None = None


def check_request(request: ExportRequest) -> None:
    """Every option and the output folder, before the model loads (one line each)."""
    if request.fmt not in EXPORT_FORMATS:
        raise SeqpoolError(f"unknown export format {request.fmt!r}; choose one of: {', '.join(EXPORT_FORMATS)}")
    if request.dtype not in EXPORT_DTYPES:
        raise SeqpoolError(f"export dtype {request.dtype!r} is not one of: {', '.join(EXPORT_DTYPES)}")
    output = request.output
    if output.exists() and (not output.is_dir() or output.is_symlink() or any(output.iterdir())):
        raise SeqpoolError(f"{output} exists and is not an empty folder; export into a new or empty folder")
    if not output.parent.is_dir():
        raise SeqpoolError(f"the folder {output.parent} does not exist; create it first")
    if not os.access(output.parent, os.W_OK | os.X_OK):
        raise SeqpoolError(f"cannot write to {output.parent} (permission denied)")
    if request.classifier is not None and request.strategy is not None:
        raise SeqpoolError("a classifier carries its own pooling: pass --classifier or --strategy, not both")
    if request.dtype == "int8":
        if request.calibration is None:
            raise SeqpoolError("--dtype int8 needs --calibration FILE: texts like the ones the model will see, "
                               "to fit the int8 ranges on")
        require_int8_extra()
    elif request.calibration is not None:
        raise SeqpoolError("--calibration applies to --dtype int8 only")
    if request.fmt == "openvino" or request.dtype == "int8":
        require_int8_extra()
    else:
        _require("onnx", "export to ONNX needs the onnx package")


def _require(module: str, why: str) -> None:
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise SeqpoolError(f"{why}; install it with {_INSTALL}")


def require_int8_extra() -> None:
    """OpenVINO and NNCF, from the ``seqpool[int8]`` extra: one line saying what to install."""
    for module in ("openvino", "nncf", "onnx"):
        _require(module, f"int8 and OpenVINO need {module}, which seqpool installs only with its int8 extra")


class SentenceGraph(nn.Module):
    """``(input_ids, attention_mask[, token_type_ids]) -> sentence vector or logits``, traceable.

    ``pool(hidden, mask) -> (B, D')`` is the strategy (from the encoder's layer plan) or a Pooler;
    ``blocks``: the layer blocks the strategy names (``None``: the model's last layer).
    """

    def __init__(self, encoder: Any, pool: Any, blocks: Sequence[tuple[int, ...]] | None,
                 head: nn.Module | None, normalize: bool, token_types: bool):
        super().__init__()
        self.encoder = encoder  # the Encoder runs its model (model_outputs) ...
        self.model = encoder.model  # ... registered here too, so tracing sees its weights as parameters
        self.pool = pool
        self.blocks = tuple(blocks) if blocks else None
        self.head = head
        self.normalize = normalize
        self.token_types = token_types

    def forward(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None) -> Tensor:
        from seqpool.layer_plan import average_layers

        mask = attention_mask.to(torch.int64)
        tokens = mask.shape[1]
        # Rotate each row left by its count of leading pads: left padding becomes right padding,
        # right padding is unchanged, so the model sees what seqpool's Encoder runs.
        leading = (mask.cumsum(dim=1) == 0).to(torch.int64).sum(dim=1, keepdim=True)
        index = (torch.arange(tokens, device=mask.device).unsqueeze(0) + leading) % tokens
        ids, mask = input_ids.gather(1, index), mask.gather(1, index)
        types = token_type_ids.gather(1, index) if self.token_types and token_type_ids is not None else None
        output = self.encoder.model_outputs(ids, mask, types, all_layers=self.blocks is not None)
        hidden = average_layers(output.hidden_states, self.blocks) if self.blocks else output.last_hidden_state.float()
        pooled = self.pool(hidden, mask).float()
        if self.head is not None:
            pooled = self.head(pooled)
        if self.normalize:
            pooled = nn.functional.normalize(pooled, dim=-1)
        return pooled


def build_graph(encoder: Any, strategy: str | None = None, normalize: bool | None = None,
                classifier: str | None = None) -> tuple[SentenceGraph, str, str]:
    """``(graph, output name, what it computes)`` for ``encoder`` and the chosen pooling."""
    from seqpool.expressions import parse_strategy
    from seqpool.registry import LEARNED, get_strategy

    token_types = encoder.token_types
    if classifier is not None:
        from seqpool.classifier import PooledClassifier

        clf = PooledClassifier.from_pretrained(classifier).eval()
        if clf.dim != encoder.hidden_size:
            raise SeqpoolError(f"the classifier in {classifier} was trained on {clf.dim}-dim states but this "
                               f"model gives {encoder.hidden_size}; export the model it was trained with")
        return (SentenceGraph(encoder, clf, None, None, False, token_types).eval(), "logits",
                f"{classifier}: logits")
    if strategy is not None and Path(strategy).is_dir():
        from seqpool.pooling.pooler import Pooler

        pooler = Pooler.from_pretrained(strategy).eval()
        normalize = encoder.default_normalize if normalize is None else normalize
        graph = SentenceGraph(encoder, pooler, None, None, normalize, token_types).eval()
        return graph, "sentence_embedding", f"Pooler({strategy})" + (" -> Normalize" if normalize else "")
    strategy = strategy or encoder.default_strategy
    if any(get_strategy(term.name).kind == LEARNED for term in parse_strategy(strategy)):
        raise SeqpoolError(f"strategy {strategy!r} is learned: train it (seqpool evaluate --save-best) and export the "
                           f"saved folder with --strategy FOLDER")
    plan = encoder.layer_plan((strategy,))
    if plan.strategies != (strategy,) or any(plan.is_learned(s) for s in plan.strategies):
        raise SeqpoolError(f"strategy {strategy!r} cannot be expressed in the exported graph")
    normalize = encoder.default_normalize if normalize is None else check_flag(normalize, "normalize")
    head = encoder.head if encoder.uses_head(strategy) else None

    def pool(hidden: Tensor, mask: Tensor) -> Tensor:
        return plan.pool(hidden, mask, (strategy,))[strategy]

    graph = SentenceGraph(encoder, _Pool(pool), plan.blocks, head, normalize, token_types).eval()
    return graph, "sentence_embedding", encoder.pipeline(strategy, normalize)


class _Pool(nn.Module):
    """A pooling function as a module, so the graph's children are all modules."""

    def __init__(self, function: Any):
        super().__init__()
        self.function = function

    def forward(self, hidden: Tensor, mask: Tensor) -> Tensor:
        return self.function(hidden, mask)


def export_model(request: ExportRequest, progress: Any = None) -> Path:
    """The whole ``seqpool export``: check, load, build, trace, (quantize,) save; returns the folder."""
    check_request(request)
    calibration = _calibration_texts(request.calibration) if request.calibration else None
    from seqpool.encoder import Encoder

    encoder = Encoder(request.model)  # fp32: the graph is traced in fp32 and quantized afterwards
    graph, output_name, description = build_graph(encoder, request.strategy, request.normalize, request.classifier)
    staging = staging_folder(request.output)
    try:
        onnx_path = staging / "model.onnx"
        names = trace_onnx(graph, encoder, onnx_path, output_name)
        if request.dtype == "int8":
            from seqpool.int8 import calibration_inputs, quantize_onnx_to_openvino, quantize_onnx

            inputs = calibration_inputs(encoder, calibration, names)
            if request.fmt == "openvino":
                quantize_onnx_to_openvino(onnx_path, inputs, staging / "openvino_model.xml")
                onnx_path.unlink()
            else:
                quantize_onnx(onnx_path, inputs, onnx_path)
        elif request.fmt == "openvino":
            import openvino

            openvino.save_model(openvino.convert_model(str(onnx_path)), str(staging / "openvino_model.xml"),
                                compress_to_fp16=False)
            onnx_path.unlink()
        from seqpool.st_export import padding_ready_tokenizer

        tokenizer = copy.deepcopy(padding_ready_tokenizer(encoder.tokenizer, encoder.pad_token_id))
        tokenizer.model_max_length = encoder.max_length  # the length the model's vectors were made at
        tokenizer.save_pretrained(staging)
        record = {"seqpool_export": 1, "format": request.fmt, "dtype": request.dtype, "inputs": names,
                  "output": output_name, "computes": description, "model": encoder.name_or_path,
                  "max_length": encoder.max_length, "padding": "either side", "layers": list(encoder.layers),
                  "calibration": {"file": str(request.calibration), "texts": len(calibration)} if calibration else None}
        (staging / "seqpool_export.json").write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        if request.output.exists():
            request.output.rmdir()  # empty (checked): the staged folder takes its place
        os.replace(staging, request.output)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return request.output


def trace_onnx(graph: SentenceGraph, encoder: Any, path: Path, output_name: str) -> list[str]:
    """Trace ``graph`` to ONNX with dynamic batch and sequence axes; returns the input names."""
    batch = encoder.collate(encoder.tokenize(["a short text", "a somewhat longer text to pad the batch"]))
    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if graph.token_types else [])
    args = [batch["input_ids"], batch["attention_mask"]]
    if graph.token_types:
        args.append(torch.zeros_like(batch["input_ids"]))
    axes = {name: {0: "batch", 1: "sequence"} for name in names}
    axes[output_name] = {0: "batch"}
    import warnings

    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's tracer chatter, not the user's concern
        try:
            torch.onnx.export(graph, tuple(args), str(path), input_names=names, output_names=[output_name],
                              dynamic_axes=axes, opset_version=ONNX_OPSET, dynamo=False)
        except Exception as error:
            detail = " ".join(str(error).split())[:300]
            raise SeqpoolError(f"this pooling cannot be expressed in an ONNX graph ({detail})") from None
    return names


def _calibration_texts(path: str) -> list[str]:
    """The calibration file's texts (any input format seqpool reads); empty or unreadable is refused."""
    from seqpool.io.readers import calibration_source

    texts = [text for text in calibration_source(path).texts() if text.strip()]
    if not texts:
        raise SeqpoolError(f"calibration file {path} holds no text; give it texts like the ones to embed")
    return texts
