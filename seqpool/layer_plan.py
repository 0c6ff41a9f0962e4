"""One encoder pass for every hidden layer a set of strategy expressions names.

``mean``, ``cls@6``, ``mean@1~-1`` and ``scalar_mix`` together need the encoder's own layer,
layer 6, the average of layers 1 and -1, and every layer. :func:`plan_layers` lists those
*blocks* once; the encoder then returns, per batch, states holding every block side by side on
the channel axis -- (B, T, K * D) for K blocks -- which is also how evaluate caches them (one
token-states file, so every layer comes from the same pass and is cached together). Each term of
each expression then pools its own block. With no ``@`` and no ``scalar_mix`` there is one block,
the encoder's own layer, and nothing changes: (B, T, D) states, as before.

A strategy whose record says it needs every layer (``scalar_mix``) reads the blocks of the single
layers 0 .. L-1, which the plan places first and in order, so its input is one contiguous
(B, T, L * D) slice.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from seqpool.errors import SeqpoolError
from seqpool.expressions import parse_strategy
from seqpool.registry import LEARNED, get_strategy

#: Hidden-state indices (0 = embeddings), sorted, that one block averages.
LayerKey = tuple[int, ...]


@dataclass(frozen=True)
class LayerPlan:
    """Which blocks of hidden layers to compute, and which block each term of each strategy pools.

    ``blocks`` is None when every strategy pools the encoder's own layer (states stay D wide).
    ``terms[strategy]`` is one ``(strategy name, block index)`` per ``+`` term.
    """

    strategies: tuple[str, ...]
    dim: int
    num_hidden_states: int
    blocks: tuple[LayerKey, ...] | None
    terms: Mapping[str, tuple[tuple[str, int], ...]]

    @property
    def width(self) -> int:
        """Width of the states the encoder returns for this plan: ``K * dim``."""
        return self.dim * (len(self.blocks) if self.blocks else 1)

    def block(self, hidden_states: Tensor, index: int) -> Tensor:
        """The (B, T, D) states of block ``index`` (a view, no copy)."""
        return hidden_states if self.blocks is None else hidden_states[..., index * self.dim:(index + 1) * self.dim]

    def is_learned(self, strategy: str) -> bool:
        return get_strategy(strategy).kind == LEARNED

    def output_dim(self, strategy: str, **kwargs: Any) -> int:
        """Width of ``strategy``'s pooled vector (learned ones with their Pooler ``kwargs``)."""
        if self.is_learned(strategy):
            name, _, pooler_kwargs = self.learned(strategy)
            return get_strategy(name).output_dim(self.dim * pooler_kwargs.get("num_layers", 1),
                                                 **{**pooler_kwargs, **kwargs})
        return sum(get_strategy(name).output_dim(self.dim) for name, _ in self.terms[strategy])

    def pool(self, hidden_states: Tensor, attention_mask: Tensor, strategies: Sequence[str] | None = None
             ) -> dict[str, Tensor]:
        """Every parameter-free strategy (default: all of the plan's) from (B, T, K * D) states."""
        chosen = [s for s in (self.strategies if strategies is None else strategies) if not self.is_learned(s)]
        functions = {name: get_strategy(name).fn for s in chosen for name, _ in self.terms[s]}
        pooled: dict[str, Tensor] = {}
        for strategy in chosen:
            parts = [functions[name](self.block(hidden_states, index), attention_mask)
                     for name, index in self.terms[strategy]]
            pooled[strategy] = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
        return pooled

    def pool_states(self, states: Any, strategies: Sequence[str] | None = None,
                    batch_size: int = 256) -> dict[str, np.ndarray]:
        """Float32 (N, width) arrays per parameter-free strategy from cached :class:`TokenStates`."""
        chosen = [s for s in (self.strategies if strategies is None else strategies) if not self.is_learned(s)]
        out = {s: np.zeros((len(states), self.output_dim(s)), dtype=np.float32) for s in chosen}
        for rows, hidden, mask in states.iter_batches(states.length_sorted(), batch_size):
            for strategy, vectors in self.pool(hidden, mask, chosen).items():
                out[strategy][rows] = vectors.float().numpy()
        return out

    def learned(self, strategy: str) -> tuple[str, slice, dict[str, Any]]:
        """``(name for Pooler, channel slice of the plan's states, Pooler kwargs)`` of a learned strategy.

        ``attention@-2`` is ``attention`` on block -2's channels; a strategy that needs every layer
        (``scalar_mix``) reads every single-layer block and needs ``num_layers``.
        """
        ((name, index),) = self.terms[strategy]
        if get_strategy(name).needs_all_layers:
            layers = self.num_hidden_states
            return name, slice(0, layers * self.dim), {"num_layers": layers}
        return name, slice(index * self.dim, (index + 1) * self.dim), {}

    def learned_states(self, strategy: str, states: Any) -> Any:
        """The token states a learned strategy trains on: its channels of the plan's states."""
        _, channels, _ = self.learned(strategy)
        if channels == slice(0, states.dim):
            return states
        return type(states)(states.states[:, channels], states.offsets)


def normalize_layers(layers: Sequence[int], num_hidden_states: int, strategy: str) -> LayerKey:
    """Sorted non-negative hidden-state indices, or a SeqpoolError naming the strategy."""
    for index in layers:
        if not -num_hidden_states <= index < num_hidden_states:
            raise SeqpoolError(f"strategy {strategy!r}: layer {index} is out of range; this model has hidden states "
                               f"0..{num_hidden_states - 1} (0 = embeddings, -1 = last layer)")
    return tuple(sorted({index % num_hidden_states for index in layers}))


def plan_layers(strategies: Sequence[str], num_hidden_states: int, default_layers: Sequence[int],
                dim: int) -> LayerPlan:
    """The blocks ``strategies`` need from a model with ``num_hidden_states`` hidden states
    (layers + embeddings) whose own layer choice is ``default_layers``."""
    strategies = tuple(dict.fromkeys(strategies))
    default = normalize_layers(default_layers, num_hidden_states, "the encoder's layer")
    keys: dict[str, list[LayerKey]] = {}
    needs_every_layer = False
    for strategy in strategies:
        get_strategy(strategy)  # one clear error for an unknown or malformed name
        terms = parse_strategy(strategy)
        needs_every_layer |= any(get_strategy(term.name).needs_all_layers for term in terms)
        keys[strategy] = [default if term.layers is None else normalize_layers(term.layers, num_hidden_states, strategy)
                          for term in terms]
    if not needs_every_layer and all(key == default for ks in keys.values() for key in ks):
        terms = {s: tuple((t.name, 0) for t in parse_strategy(s)) for s in strategies}
        return LayerPlan(strategies, dim, num_hidden_states, None, terms)
    blocks: list[LayerKey] = [(layer,) for layer in range(num_hidden_states)] if needs_every_layer else []
    for key in (key for ks in keys.values() for key in ks):
        if key not in blocks:
            blocks.append(key)
    terms = {s: tuple((t.name, blocks.index(key)) for t, key in zip(parse_strategy(s), keys[s]))
             for s in strategies}
    return LayerPlan(strategies, dim, num_hidden_states, tuple(blocks), terms)


def average_layers(hidden_states: Sequence[Tensor], blocks: Sequence[LayerKey]) -> Tensor:
    """(B, T, K * D) float32: each block's average of ``hidden_states[i]`` (the model's tuple), side by side."""
    averaged = []
    for block in blocks:
        chosen = [hidden_states[i].float() for i in block]
        averaged.append(chosen[0] if len(chosen) == 1 else torch.stack(chosen).mean(dim=0))
    return torch.cat(averaged, dim=-1)
