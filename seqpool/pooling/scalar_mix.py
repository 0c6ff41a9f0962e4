"""Scalar mix of hidden layers (ELMo, Peters et al., 2018; AllenNLP's ``ScalarMix``).

Which layer to pool is itself a choice that can be learned: ``gamma * sum_l softmax(w)_l h_l``
mixes every layer's token states with L + 1 scalars. Initialised to the uniform average of
all layers (w = 0, gamma = 1). sentence-transformers' ``WeightedLayerPooling`` is the same
idea with unnormalised weights over a range of layers; the softmax keeps the mix a convex
combination, so ``gamma`` alone sets the scale.

:class:`ScalarMix` mixes (B, T, D) states; :class:`ScalarMixPooling` mixes then pools with a
parameter-free strategy, which is the learned ``scalar_mix`` strategy.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import Tensor, nn

from seqpool.errors import SeqpoolError
from seqpool.pooling import STRATEGIES, check_strategy, pool
from seqpool.pooling.base import PoolerBase
from seqpool.pooling.functional import masked_mean, normalize_mask, upcast
from seqpool.registry import get_strategy


def stack_layers(layers: Tensor | Sequence[Tensor], num_layers: int) -> Tensor:
    """(L, B, T, D) from a stacked tensor, a list of L (B, T, D) tensors, or (B, T, L * D) states
    holding the layers side by side; a clear error otherwise."""
    if not isinstance(layers, Tensor):
        layers = list(layers)
        if not all(isinstance(layer, Tensor) for layer in layers):
            raise SeqpoolError("layers must be a (layers, batch, tokens, dim) tensor or a list of (batch, tokens, dim) tensors")
        shapes = {tuple(layer.shape) for layer in layers}
        if len(shapes) > 1:
            raise SeqpoolError(f"every layer must have the same (batch, tokens, dim) shape, got {sorted(shapes)}")
        layers = torch.stack(layers) if layers else torch.empty(0)
    if layers.dim() == 3 and num_layers > 0 and layers.shape[-1] % num_layers == 0:
        # (B, T, L * D): every layer's states side by side, as evaluate caches them
        batch, tokens, width = layers.shape
        layers = layers.reshape(batch, tokens, num_layers, width // num_layers).permute(2, 0, 1, 3)
    if layers.dim() != 4:
        raise SeqpoolError(f"layers must have shape (layers, batch, tokens, dim) or (batch, tokens, "
                          f"{num_layers} * dim), got {tuple(layers.shape)}")
    if layers.shape[0] != num_layers:
        raise SeqpoolError(
            f"this ScalarMix mixes num_layers={num_layers} layers but got {layers.shape[0]}; pass every "
            f"hidden state of the model (embeddings included), or build one with num_layers={layers.shape[0]}"
        )
    if not layers.is_floating_point():
        raise SeqpoolError(f"layers must be floating point, got {layers.dtype}")
    return layers


class ScalarMix(PoolerBase):
    """``gamma * sum_l softmax(w)_l * layers[l]``: (L, B, T, D) or a list of L (B, T, D) -> (B, T, D).

    With an ``attention_mask`` padded positions are zeroed in every layer before mixing (a
    select, so NaN there cannot reach the weights' gradient) and come out as zero.
    """

    config_args = ("num_layers", "gamma", "learn_gamma")
    config_attributes = {"gamma": "gamma_init"}  # ``self.gamma`` is the learned scale itself
    repr_args = ("num_layers", "learn_gamma")

    def __init__(self, num_layers: int, gamma: float = 1.0, learn_gamma: bool = True):
        super().__init__()
        if num_layers < 1:
            raise SeqpoolError(f"ScalarMix needs num_layers >= 1, got num_layers={num_layers}")
        self.num_layers, self.gamma_init, self.learn_gamma = num_layers, float(gamma), learn_gamma
        self.weights = nn.Parameter(torch.zeros(num_layers))
        gamma_tensor = torch.tensor([float(gamma)])
        if learn_gamma:
            self.gamma = nn.Parameter(gamma_tensor)
        else:
            self.register_buffer("gamma", gamma_tensor)

    def layer_weights(self) -> Tensor:
        """(L,) the softmax mixing weights (they sum to 1; gamma not included)."""
        return torch.softmax(self.weights, dim=0)

    def mixed(self, layers: Tensor | Sequence[Tensor], attention_mask: Tensor | None = None) -> Tensor:
        """The mix in the dtype the math runs in (float32 at least), before casting back."""
        stacked = stack_layers(layers, self.num_layers)
        dtype = torch.promote_types(upcast(stacked).dtype, self.weights.dtype)
        states = stacked.to(dtype)
        if attention_mask is not None:
            mask = normalize_mask(states[0], attention_mask)
            states = states.masked_fill(~mask[None, :, :, None], 0.0)
        weights = (self.layer_weights() * self.gamma).to(dtype)
        return torch.einsum("l,lbtd->btd", weights, states)

    def forward(self, layers: Tensor | Sequence[Tensor], attention_mask: Tensor | None = None) -> Tensor:
        stacked = stack_layers(layers, self.num_layers)
        return self.mixed(stacked, attention_mask).to(stacked.dtype)


class ScalarMixPooling(PoolerBase):
    """A :class:`ScalarMix` of all layers, then a parameter-free pooling: (L, B, T, D) -> (B, D)."""

    config_args = ("num_layers", "strategy", "gamma", "learn_gamma")
    config_attributes = {"gamma": "mix.gamma_init", "learn_gamma": "mix.learn_gamma"}
    repr_args = ("num_layers", "strategy")

    def __init__(self, num_layers: int, strategy: str = "mean", gamma: float = 1.0, learn_gamma: bool = True):
        super().__init__()
        self.strategy = check_strategy(strategy, STRATEGIES)
        self.mix = ScalarMix(num_layers, gamma=gamma, learn_gamma=learn_gamma)

    @property
    def num_layers(self) -> int:
        return self.mix.num_layers

    @staticmethod
    def output_width(dim: int, num_layers: int = 1, **_: Any) -> int:
        """The states hold every layer side by side (``dim = num_layers * D`` wide); the pool is ``D`` wide."""
        return dim // num_layers

    def forward(self, layers: Tensor | Sequence[Tensor], attention_mask: Tensor | None = None) -> Tensor:
        stacked = stack_layers(layers, self.num_layers)
        mask = normalize_mask(stacked[0], attention_mask)
        mixed = self.mix.mixed(stacked, mask)
        return pool(mixed, mask, self.strategy).to(stacked.dtype)

    @property
    def pools_from_mean(self) -> bool:
        """When the pooling is the masked mean, the mix commutes with it (both are linear): mixing
        each layer's mean gives the mean of the mix, so a trainer may pool each text once. Asked
        of the strategy's function, not its name, so a replaced ``mean`` is not taken for it."""
        return get_strategy(self.strategy).fn is masked_mean

    def from_mean(self, mean: Tensor) -> Tensor:
        """(B, D) pooled vectors from the (B, L * D) masked means of the layers side by side."""
        if not self.pools_from_mean:
            raise SeqpoolError(f"scalar_mix with strategy {self.strategy!r} needs every token, not their mean")
        layers = mean.reshape(mean.shape[0], self.num_layers, -1)
        weights = (self.mix.layer_weights() * self.mix.gamma).to(layers.dtype)
        return torch.einsum("l,bld->bd", weights, layers)


def scalar_mix_pooler(dim: int, num_layers: int | None = None, strategy: str = "mean", gamma: float = 1.0,
                      learn_gamma: bool = True) -> ScalarMixPooling:
    """The learned ``scalar_mix`` strategy for (B, T, dim) states holding ``num_layers`` layers side by side.

    ``dim`` is the width of those states (``num_layers * hidden_size``), as :class:`seqpool.Pooler`
    passes it; the pooled vector is ``dim // num_layers`` wide.
    """
    if num_layers is None or num_layers < 1 or dim % num_layers:
        raise SeqpoolError(f"scalar_mix pools every hidden layer: pass num_layers= (the model's hidden states, "
                           f"embeddings included) dividing dim={dim}, got num_layers={num_layers}")
    return ScalarMixPooling(num_layers, strategy=strategy, gamma=gamma, learn_gamma=learn_gamma)
