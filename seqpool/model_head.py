"""The modules a sentence-transformers model applies after pooling: Dense, LayerNorm, Normalize.

LaBSE, sentence-t5, GTR and EmbeddingGemma project the pooled vector through one or two Dense
layers before normalising; their vectors are only the model's own with that head. The head is
read by :mod:`seqpool.model_reader` (shapes checked from the safetensors header before anything
is allocated) and built here as a plain ``nn.Module`` that runs in float32 on pooled vectors.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor, nn

from seqpool.errors import SeqpoolError
from seqpool.model_reader import HeadLayer, weights_file


class DenseLayer(nn.Module):
    """sentence-transformers' ``Dense``: ``activation(linear(x))`` (+ ``x`` or its projection with
    ``use_residual``)."""

    def __init__(self, spec: HeadLayer):
        super().__init__()
        module_name, _, class_name = spec.activation.rpartition(".")
        self.linear = nn.Linear(spec.in_features, spec.out_features, bias=spec.bias)
        self.activation = getattr(importlib.import_module(module_name), class_name)()
        self.use_residual = spec.residual
        if spec.residual and spec.in_features != spec.out_features:
            self.residual = nn.Linear(spec.in_features, spec.out_features, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        out = self.activation(self.linear(x))
        if self.use_residual:
            out = out + (self.residual(x) if hasattr(self, "residual") else x)
        return out


class LayerNormLayer(nn.Module):
    """sentence-transformers' ``LayerNorm`` (its weights are saved as ``norm.*``)."""

    def __init__(self, spec: HeadLayer):
        super().__init__()
        self.norm = nn.LayerNorm(spec.in_features)

    def forward(self, x: Tensor) -> Tensor:
        return self.norm(x)


class NormalizeLayer(nn.Module):
    """An L2 normalisation in the middle of a head (one at the end is the ``normalize`` option)."""

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.normalize(x, dim=-1)


class ModelHead(nn.Module):
    """The model's modules after pooling, in order; ``in_features`` -> ``out_features``."""

    def __init__(self, layers: Sequence[nn.Module], in_features: int, out_features: int):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.in_features = in_features
        self.out_features = out_features

    @classmethod
    def from_spec(cls, head: Sequence[HeadLayer], root: Path) -> "ModelHead | None":
        """The head of a model folder, weights loaded strictly; ``None`` when the model has none."""
        if not any(layer.kind in ("dense", "layer_norm") for layer in head):
            return None
        built: list[nn.Module] = []
        for spec in head:
            if spec.kind == "normalize":
                built.append(NormalizeLayer())
                continue
            module = DenseLayer(spec) if spec.kind == "dense" else LayerNormLayer(spec)
            _load_weights(module, root / spec.path)
            built.append(module.eval())
        return cls(built, head[0].in_features, head[-1].out_features).eval()

    def forward(self, x: Tensor) -> Tensor:
        with torch.inference_mode():
            x = x.float()
            for layer in self.layers:
                x = layer(x)
            return x

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}"


def _load_weights(module: nn.Module, folder: Path) -> None:
    """safetensors, or an older ``pytorch_model.bin`` through ``torch.load(weights_only=True)`` (tensors
    only: the restricted unpickler transformers uses too); every key must match."""
    path = weights_file(folder)
    if path is None:
        raise SeqpoolError(f"{folder} has no model.safetensors or pytorch_model.bin")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
        module.load_state_dict({key: value.float() for key, value in state.items()}, strict=True)
    except (RuntimeError, OSError, ValueError, AttributeError, TypeError) as error:
        detail = " ".join(str(error).split())[:200]
        raise SeqpoolError(f"cannot load the weights in {path}: {detail}") from None
