"""The int8 path: the model's token states from an OpenVINO graph quantized by NNCF.

Chosen on measurement (2-core AVX-512 VNNI CPU, MiniLM on MR, same run): OpenVINO + NNCF static
int8 kept cosine 0.997 mean / 0.992 min to fp32 where ONNX Runtime's static QDQ quantization gave
0.92 / 0.83 and its dynamic quantization 0.992 / 0.979 (the issue's bar: 0.997 / 0.98). Weights
are quantized per output channel, activations with ranges fitted on the user's own texts
(calibration). Only the transformer is quantized: pooling, the model's head and normalisation
stay in float32 torch, so every strategy, layer selection, prompt and long-text mode works
unchanged -- the graph returns every hidden state the Encoder may ask for.

Needs the ``seqpool[int8]`` extra (openvino, nncf, onnx); without it one line says so.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
import threading
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from seqpool.errors import SeqpoolError

#: What OpenVINO computes the unquantized operations in (softmax, layer norm, the residual adds):
#: f32, because on a CPU with avx512_bf16 its default is bf16 and the int8 model already spends
#: most of the fidelity budget.
PRECISION_HINT = "f32"
#: Calibration texts used at most (NNCF's subset); more adds time, not accuracy.
CALIBRATION_TEXTS = 300
_CALIBRATION_BATCH = 16


def require_extra() -> None:
    """One line naming what to install when the int8 extra is missing."""
    import importlib.util

    missing = [m for m in ("openvino", "nncf", "onnx") if importlib.util.find_spec(m) is None]
    if missing:
        raise SeqpoolError(f"dtype int8 needs {', '.join(missing)}: install them with pip install 'seqpool[int8]'")


def calibration_inputs(encoder: Any, texts: Sequence[str], names: Sequence[str],
                       limit: int = CALIBRATION_TEXTS) -> list[dict[str, np.ndarray]]:
    """Model inputs for the calibration texts (at most ``limit``, evenly spread)."""
    texts = [t for t in texts if t.strip()]
    if not texts:
        raise SeqpoolError("no calibration text: give texts like the ones to embed")
    return calibration_feeds(encoder, encoder.tokenize(spread(texts, limit)), names)


def spread(items: Sequence[Any], limit: int = CALIBRATION_TEXTS) -> list[Any]:
    """At most ``limit`` items, evenly spaced: a sample of the whole corpus, not just its start."""
    return list(items[::max(1, len(items) // limit)][:limit])


def calibration_feeds(encoder: Any, token_ids: Sequence[Sequence[int]],
                      names: Sequence[str]) -> list[dict[str, np.ndarray]]:
    """Token id lists as small right-padded numpy batches keyed by the graph's input names."""
    order = np.argsort([len(i) for i in token_ids], kind="stable")
    feeds = []
    for start in range(0, len(order), _CALIBRATION_BATCH):
        batch = encoder.collate([token_ids[i] for i in order[start:start + _CALIBRATION_BATCH]])
        feed = {"input_ids": batch["input_ids"].numpy(), "attention_mask": batch["attention_mask"].numpy()}
        if "token_type_ids" in names:
            feed["token_type_ids"] = np.zeros_like(feed["input_ids"])
        feeds.append({name: feed[name] for name in names})
    return feeds


def _quantize(model: Any, inputs: list[dict[str, np.ndarray]]) -> Any:
    """NNCF static int8 (transformer preset: per-channel weights, SmoothQuant) of an OpenVINO or ONNX model."""
    import logging

    import nncf

    nncf_logger = logging.getLogger("nncf")
    level = nncf_logger.level
    nncf_logger.setLevel(logging.ERROR)  # NNCF's info lines and (rich) progress bars are not seqpool's output
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return nncf.quantize(model, nncf.Dataset(inputs), model_type=nncf.ModelType.TRANSFORMER,
                                 subset_size=sum(len(feed["input_ids"]) for feed in inputs),
                                 fast_bias_correction=True)
    finally:
        nncf_logger.setLevel(level)


def quantize_onnx_to_openvino(onnx_path: Path, inputs: list[dict[str, np.ndarray]], xml_path: Path) -> None:
    """An OpenVINO int8 IR (``.xml`` + ``.bin``) of an fp32 ONNX graph."""
    import openvino

    quantized = _quantize(openvino.convert_model(str(onnx_path)), inputs)
    openvino.save_model(quantized, str(xml_path), compress_to_fp16=False)


def quantize_onnx(onnx_path: Path, inputs: list[dict[str, np.ndarray]], out_path: Path) -> None:
    """An int8 (QDQ) ONNX graph of an fp32 one, for ONNX Runtime and transformers.js users."""
    import onnx

    quantized = _quantize(_outputs_behind_identity(onnx.load(str(onnx_path))), inputs)
    onnx.save(quantized, str(out_path))


def _outputs_behind_identity(model: Any) -> Any:
    """Each graph output produced by an Identity, every tensor's type inferred: NNCF's ONNX pass that
    removes no-op Casts looks their outputs up among the inferred types, which never list a graph
    output, so a Cast that ends the graph (a float32 ``.float()``) would stop it with a KeyError."""
    import onnx

    produced = {name: node for node in model.graph.node for name in node.output}
    for output in model.graph.output:
        node = produced.get(output.name)
        if node is None or node.op_type == "Identity":
            continue
        inner = f"{output.name}_before_output"
        node.output[list(node.output).index(output.name)] = inner
        for other in model.graph.node:  # anything else reading the output tensor reads the renamed one
            other.input[:] = [inner if name == output.name else name for name in other.input]
        model.graph.node.append(onnx.helper.make_node("Identity", [inner], [output.name]))
    return onnx.shape_inference.infer_shapes(model)


def _convert(graph: nn.Module, names: Sequence[str], outputs: Sequence[str], args: Sequence[Tensor]) -> Any:
    """The OpenVINO model of ``graph`` with dynamic batch and length.

    Converted from torch directly where OpenVINO's torch frontend takes the model: it then sees
    the fused attention (``scaled_dot_product_attention``) and runs it as one kernel instead of
    the matmul / mask / isnan / select / softmax chain an ONNX export spells out -- faster, most
    on long texts, and as faithful (issue 22's closing note has the figures). Models whose
    mask code that frontend cannot convert (causal decoders today) go through ONNX as before.
    """
    import warnings

    import openvino

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        try:
            converted = openvino.convert_model(graph, example_input=dict(zip(names, args)))
        except Exception:
            with tempfile.TemporaryDirectory(prefix="seqpool-int8-") as scratch:
                path = Path(scratch) / "model.onnx"
                axes = {name: {0: "batch", 1: "sequence"} for name in [*names, *outputs]}
                torch.onnx.export(graph, tuple(args), str(path), input_names=list(names), output_names=list(outputs),
                                  dynamic_axes=axes, opset_version=17, dynamo=False)
                return openvino.convert_model(str(path))
    for port, name in zip(converted.inputs, names):
        port.get_tensor().set_names({name})
    for port, name in zip(converted.outputs, outputs):
        port.get_tensor().set_names({name})
    converted.reshape({name: openvino.PartialShape([-1, -1]) for name in names})
    return converted


class _HiddenStates(nn.Module):
    """The model's every hidden state, one output each (``hidden_0`` = embeddings ... ``hidden_L``)."""

    def __init__(self, encoder: Any, token_types: bool):
        super().__init__()
        self.encoder = encoder  # the Encoder runs its model (model_outputs) ...
        self.model = encoder.model  # ... registered here too, so tracing sees its weights as parameters
        self.token_types = token_types

    def forward(self, input_ids: Tensor, attention_mask: Tensor,
                token_type_ids: Tensor | None = None) -> tuple[Tensor, ...]:
        types = token_type_ids if self.token_types else None
        output = self.encoder.model_outputs(input_ids, attention_mask, types, all_layers=True)
        return tuple(h.float() for h in output.hidden_states)


class Int8Runtime:
    """A quantized copy of an Encoder's model, called like the Hugging Face model it replaces.

    ``__call__(input_ids, attention_mask, output_hidden_states)`` returns an object with
    ``last_hidden_state`` and ``hidden_states`` (float32 torch tensors), so the Encoder's forward
    pass is unchanged. Each calling thread gets its own OpenVINO infer request; one compiled
    model serves all (``streams`` = the Encoder's workers).
    """

    def __init__(self, compiled: Any, last_only: Any, names: Sequence[str], calibration: dict[str, Any]):
        self.compiled = compiled  # every hidden state (layer selections, mean@-2, scalar_mix)
        self.last_only = last_only  # the last layer alone: no copies of the others
        self.names = list(names)
        self.calibration = calibration
        self._local = threading.local()

    @classmethod
    def build(cls, encoder: Any, token_ids: Sequence[Sequence[int]], streams: int = 1) -> "Int8Runtime":
        """Trace the encoder's model, quantize it with ranges fitted on ``token_ids`` (the calibration
        sequences, at most :data:`CALIBRATION_TEXTS`, evenly spread) and compile it."""
        require_extra()
        import hashlib

        import nncf
        import openvino

        names = ["input_ids", "attention_mask"]
        token_types = encoder.token_types
        if token_types:
            names.append("token_type_ids")
        used = [list(ids) for ids in spread([ids for ids in token_ids if len(ids)])]
        if not used:
            raise SeqpoolError("no calibration text: give texts like the ones to embed")
        inputs = calibration_feeds(encoder, used, names)
        # the traced example has a padded row, so no branch a mask without padding takes is baked in
        longest = max(used, key=len)
        sample = encoder.collate([longest, longest[:max(1, len(longest) // 2)]])
        args = [sample["input_ids"], sample["attention_mask"]] + ([torch.zeros_like(sample["input_ids"])]
                                                                  if token_types else [])
        graph = _HiddenStates(encoder, token_types).eval()
        layers = int(getattr(encoder.model.config, "num_hidden_layers", 0)) + 1
        outputs = [f"hidden_{i}" for i in range(layers)]
        try:
            converted = _convert(graph, names, outputs, args)
        except Exception as error:  # an operation neither converter knows: one line, not a traceback
            raise SeqpoolError(f"dtype int8 cannot convert {encoder.name_or_path!r} to OpenVINO ({type(error).__name__}: "
                               f"{str(error).strip().splitlines()[-1][:200] if str(error).strip() else 'no detail'}); "
                               f"use dtype bf16 or fp32 for this model") from None
        quantized = _quantize(converted, inputs)
        # f32 for what stays unquantized: on a CPU with avx512_bf16 OpenVINO would run it in bf16
        config = {"INFERENCE_PRECISION_HINT": PRECISION_HINT, "NUM_STREAMS": str(streams),
                  "INFERENCE_NUM_THREADS": str(streams)}
        core = openvino.Core()
        compiled = core.compile_model(quantized, "CPU", config)
        last = openvino.Model([quantized.output(len(outputs) - 1)], quantized.get_parameters(), "last_hidden_state")
        last_only = core.compile_model(last, "CPU", config)
        digest = hashlib.sha256(repr(used).encode("ascii")).hexdigest()
        record = {"sequences": len(used), "sha256": digest, "openvino": openvino.__version__,
                  "nncf": nncf.__version__, "weights": "int8 per channel", "activations": "int8 (static ranges)"}
        return cls(compiled, last_only, names, record)

    def __call__(self, input_ids: Tensor, attention_mask: Tensor | None = None, token_type_ids: Tensor | None = None,
                 output_hidden_states: bool = False, return_dict: bool = True, **_: Any) -> Any:
        key = "all" if output_hidden_states else "last"
        request = getattr(self._local, key, None)
        if request is None:
            request = (self.compiled if output_hidden_states else self.last_only).create_infer_request()
            setattr(self._local, key, request)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        feed = {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()}
        if "token_type_ids" in self.names:
            feed["token_type_ids"] = (token_type_ids if token_type_ids is not None
                                      else torch.zeros_like(input_ids)).numpy()
        results = request.infer(feed)
        hidden = tuple(torch.from_numpy(np.array(results[i], copy=True)) for i in range(len(results)))
        return _Output(hidden[-1], hidden if output_hidden_states else None)


class _Output:
    """What a Hugging Face model returns, as much as the Encoder reads."""

    def __init__(self, last_hidden_state: Tensor, hidden_states: tuple[Tensor, ...] | None):
        self.last_hidden_state = last_hidden_state
        self.hidden_states = hidden_states

    def __getitem__(self, index: int) -> Tensor:
        return (self.last_hidden_state, self.hidden_states)[index]
