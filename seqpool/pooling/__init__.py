"""Pooling over the token axis: the pure masked functions and the strategies by name.

``from seqpool.pooling import masked_mean, pool, STRATEGIES, check_strategy, normalize_mask,
fill_padding, upcast`` is the pure-function namespace: importing it costs torch and nothing of
the learned modules. The package holds, one concept per file:

* :mod:`~seqpool.pooling.functional` -- masked mean/max/first/last/... and their exact token weights;
* :mod:`~seqpool.pooling.moments` -- power means, mean ⊕ std, masked softmax;
* :mod:`~seqpool.pooling.base` -- :class:`PoolerBase`, the one base class of the learned poolers;
* :mod:`~seqpool.pooling.attention`, :mod:`~seqpool.pooling.squeeze_excitation`,
  :mod:`~seqpool.pooling.gem`, :mod:`~seqpool.pooling.scalar_mix`,
  :mod:`~seqpool.pooling.latent_attention`, :mod:`~seqpool.pooling.attentive_stats` -- one learned
  pooler each;
* :mod:`~seqpool.pooling.pooler` -- :class:`Pooler`, any strategy by name as one module.

This ``__init__`` imports only the pure modules, never the learned ones: it runs before any
submodule does (``import seqpool.pooling.gem`` runs it first), so importing a learned module from
here would be an arrow from the math layer up to the modules layer and a cycle through the package.
The learned classes come from their own modules, or lazily from ``seqpool`` (``seqpool.Pooler``).
"""

from __future__ import annotations

from typing import Sequence

from torch import Tensor

from seqpool.errors import SeqpoolError
from seqpool.pooling.functional import (
    PoolFn,
    fill_padding,
    first_token,
    first_token_index,
    first_token_weights,
    last_token,
    last_token_index,
    last_token_weights,
    masked_max,
    masked_mean,
    masked_mean_sqrt_len,
    masked_weighted_mean,
    masked_weighted_mean_keeping_positions,
    max_token_weights,
    mean_sqrt_len_token_weights,
    mean_token_weights,
    normalize_mask,
    upcast,
    weighted_mean_token_weights,
)
from seqpool.pooling.moments import masked_mean_std, masked_power_mean
from seqpool.registry import PARAMETER_FREE, builtin_names, get_strategy, strategy_names

__all__ = [
    "STRATEGIES", "PoolFn", "check_strategy", "pool", "pool_many", "normalize_mask", "fill_padding", "upcast",
    "masked_mean", "masked_max", "masked_mean_sqrt_len", "masked_weighted_mean",
    "masked_weighted_mean_keeping_positions", "first_token", "last_token", "first_token_index", "last_token_index",
    "masked_power_mean", "masked_mean_std", "mean_token_weights", "mean_sqrt_len_token_weights",
    "weighted_mean_token_weights", "first_token_weights", "last_token_weights", "max_token_weights",
]

#: The built-in parameter-free strategies accepted by :func:`pool` (registered and plugin
#: strategies come on top: ``seqpool.registry.strategy_names("parameter-free")``).
STRATEGIES: tuple[str, ...] = builtin_names(PARAMETER_FREE)


def __getattr__(name: str) -> object:
    # POOLING_FUNCTIONS stays importable for old code: a name -> function snapshot of the registry.
    if name == "POOLING_FUNCTIONS":
        return {n: get_strategy(n).fn for n in strategy_names(PARAMETER_FREE, plugins=False)}
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def check_strategy(strategy: str, valid: Sequence[str] | None = None) -> str:
    """Return ``strategy`` if it is a parameter-free strategy (or in ``valid``, when given), else
    raise a SeqpoolError listing the valid names."""
    if valid is None:
        get_strategy(strategy, PARAMETER_FREE)
    elif strategy not in valid:
        raise SeqpoolError(f"unknown pooling strategy {strategy!r}; choose one of: {', '.join(valid)}")
    return strategy


def pool(hidden_states: Tensor, attention_mask: Tensor | None = None, strategy: str = "mean") -> Tensor:
    """Pool (B, T, D) token states into (B, D') with a parameter-free strategy.

    >>> import torch
    >>> h = torch.randn(2, 5, 8); m = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]])
    >>> pool(h, m, "last").shape
    torch.Size([2, 8])
    """
    return get_strategy(strategy, PARAMETER_FREE).fn(hidden_states, attention_mask)


def pool_many(
    hidden_states: Tensor, attention_mask: Tensor | None, strategies: Sequence[str]
) -> dict[str, Tensor]:
    """Several strategies from the same states (one encoder pass feeds them all)."""
    functions = {strategy: get_strategy(strategy, PARAMETER_FREE).fn for strategy in strategies}
    return {strategy: function(hidden_states, attention_mask) for strategy, function in functions.items()}
