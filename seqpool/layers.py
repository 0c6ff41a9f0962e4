"""Learned poolers as thin ``nn.Module`` wrappers: parameters and config live here, math in pooling.

* :class:`AttentionPooling` -- learned softmax weights over real tokens.
* :class:`SqueezeExcitation` -- the SE block of Hu et al. for sequences (masked squeeze).
* :class:`SqueezeExcitationMean` -- SE gates, then the masked mean (the ``se_mean`` strategy).
* :class:`Pooler` -- any strategy of :mod:`seqpool.registry` by name, config-driven, saved as
  config.json + model.safetensors.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn

from seqpool._version import __version__
from seqpool.errors import SeqpoolError
from seqpool.pooling import fill_padding, masked_mean, normalize_mask, upcast
from seqpool.registry import LEARNED, PARAMETER_FREE, builtin_names, get_strategy
from seqpool.serialization import CONFIG_NAME, build_checked, load_state, read_config, save_module

#: The built-in strategies with parameters; :class:`Pooler` needs ``dim`` for them.
LEARNED_STRATEGIES: tuple[str, ...] = builtin_names(LEARNED)
#: The built-in strategies, parameter-free then learned (a :class:`Pooler` also accepts
#: registered and plugin strategies: ``seqpool.registry.strategy_names()``).
POOLER_STRATEGIES: tuple[str, ...] = builtin_names()

_ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "hardsigmoid": nn.Hardsigmoid,
}


def _activation(name: str) -> nn.Module:
    """An activation by name; names (not classes) keep module configs JSON-serialisable."""
    if name not in _ACTIVATIONS:
        raise SeqpoolError(f"unknown activation {name!r}; choose one of: {', '.join(_ACTIVATIONS)}")
    return _ACTIVATIONS[name]()


def _width_checked_mask(hidden_states: Tensor, attention_mask: Tensor | None, dim: int, owner: str) -> Tensor:
    """``normalize_mask`` plus a clear error when the states are not ``dim`` wide."""
    mask = normalize_mask(hidden_states, attention_mask)
    width = hidden_states.shape[-1]
    if width != dim:
        raise SeqpoolError(
            f"hidden_states have width {width} but this {owner} was built for dim={dim}; "
            f"use states from the encoder it was trained on, or build a new one with dim={width}"
        )
    return mask


class AttentionPooling(nn.Module):
    """Learned attention pooling: a softmax over real tokens of a per-token score.

    With ``hidden_dim=None`` each head scores tokens with a learned query vector
    (a linear layer); otherwise with a small MLP ``dim -> hidden_dim -> tanh -> heads``
    (Bahdanau-style additive attention). Padding is masked before the softmax; rows
    with no real token give zeros. Each head returns a weighted mean of the full
    ``dim``-wide states, and heads are concatenated: the output is ``(B, heads * dim)``
    (see :attr:`output_dim`).
    """

    #: ``forward(..., return_weights=True)`` also returns the attention weights.
    returns_weights = True

    def __init__(self, dim: int, heads: int = 1, hidden_dim: int | None = None, dropout: float = 0.0):
        super().__init__()
        if dim < 1 or heads < 1 or (hidden_dim is not None and hidden_dim < 1):
            raise SeqpoolError(
                "AttentionPooling needs dim >= 1, heads >= 1 and hidden_dim >= 1 (or None), "
                f"got dim={dim}, heads={heads}, hidden_dim={hidden_dim}"
            )
        if not 0.0 <= dropout <= 1.0:
            raise SeqpoolError(f"AttentionPooling dropout must be between 0 and 1, got {dropout}")
        self.dim, self.heads, self.hidden_dim = dim, heads, hidden_dim
        if hidden_dim is None:
            self.score: nn.Module = nn.Linear(dim, heads)
        else:
            self.score = nn.Sequential(nn.Linear(dim, hidden_dim), nn.Tanh(), nn.Linear(hidden_dim, heads))
        self.dropout = nn.Dropout(dropout)

    @property
    def output_dim(self) -> int:
        return self.heads * self.dim

    def attention_weights(self, hidden_states: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """(B, heads, T) weights; each row sums to 1 over real tokens (0 if none).

        Float32 at least (float64 when the states or the module are float64).
        """
        mask = _width_checked_mask(hidden_states, attention_mask, self.dim, "AttentionPooling")
        return self._weights(fill_padding(hidden_states, mask), mask)

    def _weights(self, filled: Tensor, mask: Tensor) -> Tensor:
        """:meth:`attention_weights` of states whose padding is already zero (``filled``)."""
        states = filled.to(self._parameter_dtype())
        dtype = torch.promote_types(upcast(filled).dtype, states.dtype)
        scores = self.score(states).to(dtype)  # (B, T, heads)
        scores = scores.masked_fill(~mask.unsqueeze(-1), torch.finfo(dtype).min)
        weights = torch.softmax(scores, dim=1) * mask.any(dim=1).to(dtype)[:, None, None]
        return weights.transpose(1, 2)

    def forward(
        self, hidden_states: Tensor, attention_mask: Tensor | None = None, return_weights: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Pool to (B, heads*dim); with ``return_weights`` also return the (B, heads, T) weights."""
        mask = _width_checked_mask(hidden_states, attention_mask, self.dim, "AttentionPooling")
        filled = fill_padding(hidden_states, mask)  # once: it feeds both the scores and the weighted sum
        pooled, weights = self._pool(filled, mask)
        return (pooled, weights) if return_weights else pooled

    def pool_filled(self, filled: Tensor, mask: Tensor) -> Tensor:
        """:meth:`forward` of states whose padding is already zero, with a (B, T) bool mask:
        training batches are gathered that way, so the masking pass over (B, T, D) is skipped."""
        return self._pool(filled, mask)[0]

    def _pool(self, filled: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
        weights = self._weights(filled, mask)
        pooled = torch.einsum("bht,btd->bhd", self.dropout(weights), filled.to(weights.dtype))
        return pooled.reshape(filled.shape[0], self.output_dim).to(filled.dtype), weights

    def _parameter_dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype


def reduced_channels(dim: int, reduction: float = 16, rd_ratio: float | None = None,
                     rd_channels: int | None = None) -> int:
    """Bottleneck width of the SE excitation: ``rd_channels``, else ``dim * rd_ratio``, else ``dim / reduction``."""
    for name, value in (("reduction", reduction), ("rd_ratio", rd_ratio), ("rd_channels", rd_channels)):
        if value is not None and value <= 0:
            raise SeqpoolError(f"SqueezeExcitation {name} must be positive, got {value}")
    if rd_channels is not None:
        width = rd_channels
    elif rd_ratio is not None:
        width = round(dim * rd_ratio)
    else:
        width = round(dim / reduction)
    return max(1, int(width))


class SqueezeExcitation(nn.Module):
    """Squeeze-and-Excitation for sequences (Hu et al., 2018), mask-aware.

    *Squeeze*: masked mean over real tokens (padding excluded) -> (B, D).
    *Excitation*: ``Linear(D -> r) -> act -> Linear(r -> D) -> gate`` -> per-channel scale in (0, 1).
    Output: the states scaled per channel, shape (B, T, D). **Padded positions are set to
    zero** so nothing downstream can pick up garbage from them.

    Argument style follows timm's ``SEModule``: ``rd_channels`` wins over ``rd_ratio``, which
    wins over ``reduction``.
    """

    def __init__(self, dim: int, reduction: float = 16, rd_ratio: float | None = None,
                 rd_channels: int | None = None, act_layer: str = "relu", gate_layer: str = "sigmoid",
                 bias: bool = True):
        super().__init__()
        if dim < 1:
            raise SeqpoolError(f"SqueezeExcitation needs dim >= 1, got dim={dim}")
        self.dim = dim
        self.rd_channels = reduced_channels(dim, reduction, rd_ratio, rd_channels)
        self.fc1 = nn.Linear(dim, self.rd_channels, bias=bias)
        self.act = _activation(act_layer)
        self.fc2 = nn.Linear(self.rd_channels, dim, bias=bias)
        self.gate = _activation(gate_layer)

    def channel_weights(self, hidden_states: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """(B, D) excitation gates (float32 at least) computed from the masked squeeze."""
        mask = _width_checked_mask(hidden_states, attention_mask, self.dim, "SqueezeExcitation")
        return self.excite(masked_mean(upcast(hidden_states), mask))

    def excite(self, squeezed: Tensor) -> Tensor:
        """(B, D) gates (float32 at least) from the (B, D) squeezed states."""
        return upcast(self.gate(self.fc2(self.act(self.fc1(squeezed.to(self.fc1.weight.dtype))))))

    def scaled_states(self, hidden_states: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """The (B, T, D) output before it is cast back to the input dtype (float32 at least).

        Lets ``Pooler("se_mean")`` pool without rounding every token to fp16/bf16 first.
        """
        mask = normalize_mask(hidden_states, attention_mask)
        gates = self.channel_weights(hidden_states, mask)
        return fill_padding(upcast(hidden_states), mask) * gates.unsqueeze(1)

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        return self.scaled_states(hidden_states, attention_mask).to(hidden_states.dtype)


class SqueezeExcitationMean(SqueezeExcitation):
    """The ``se_mean`` strategy: :class:`SqueezeExcitation` gates, then the masked mean -> (B, D).

    Computed as the float32 masked mean times the gates (equal to the mean of the gated
    states), so fp16/bf16 tokens are not rounded before the mean.
    """

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        # The gates are one scale per channel, the same for every token, so they commute with
        # the mean: mean(h * g) = mean(h) * g. Gating the (B, D) mean instead of the (B, T, D)
        # states makes the module one masked mean, which is what makes training it cheap.
        mask = _width_checked_mask(hidden_states, attention_mask, self.dim, "SqueezeExcitation")
        return self.from_mean(masked_mean(upcast(hidden_states), mask)).to(hidden_states.dtype)

    def from_mean(self, mean: Tensor) -> Tensor:
        """The pooled (B, D) vectors from the (B, D) masked mean of the states: all this module
        needs of the tokens, so a trainer can pool each text once and train on the means."""
        return mean * self.excite(mean)


def attention_token_weights(hidden_states: Tensor, attention_mask: Tensor, module: AttentionPooling) -> Tensor:
    """(B, T, heads * D) exact token weights of attention pooling (for ``explain``)."""
    attention = module.attention_weights(hidden_states, attention_mask)  # (B, heads, T)
    return attention.transpose(1, 2).repeat_interleave(hidden_states.shape[-1], dim=2)


def se_mean_token_weights(hidden_states: Tensor, attention_mask: Tensor, module: SqueezeExcitation) -> Tensor:
    """(B, T, D) exact token weights of ``se_mean``: 1/n times each channel's gate."""
    mask = normalize_mask(hidden_states, attention_mask)
    real = mask.float()
    per_token = real / real.sum(dim=1, keepdim=True).clamp(min=1.0)
    gates = module.channel_weights(hidden_states, mask)
    return per_token.unsqueeze(-1).expand(*hidden_states.shape) * gates.unsqueeze(1)


class Pooler(nn.Module):
    """Any pooling strategy by name, configured from plain JSON-able arguments.

    ``Pooler("mean")`` and the other parameter-free strategies need nothing else;
    ``Pooler("attention", dim=384, heads=2)`` and ``Pooler("se_mean", dim=384, reduction=8)``
    build the learned modules (extra keyword arguments go to :class:`AttentionPooling`
    / :class:`SqueezeExcitation`). ``save_pretrained`` / ``from_pretrained`` round-trip
    through ``config.json`` + ``model.safetensors``.
    """

    def __init__(self, strategy: str = "mean", dim: int | None = None, **kwargs: Any):
        super().__init__()
        spec = get_strategy(strategy)
        self.strategy, self.dim, self.kwargs = strategy, dim, dict(kwargs)
        self.module: nn.Module | None = None
        if spec.kind == PARAMETER_FREE:
            if kwargs:
                raise SeqpoolError(f"strategy {strategy!r} has no parameters; unexpected {sorted(kwargs)}")
            self._pool = spec.fn
            return
        if dim is None:
            raise SeqpoolError(f"strategy {strategy!r} is learned: pass dim= (the encoder's hidden size)")
        try:
            self.module = spec.build(dim, **kwargs)
        except TypeError as error:
            raise SeqpoolError(f"bad arguments for strategy {strategy!r}: {error}") from None

    @property
    def output_dim(self) -> int | None:
        """Width of the pooled vector (``None`` for parameter-free strategies without ``dim``)."""
        if self.dim is None:
            return None
        return get_strategy(self.strategy).output_dim(self.dim, **self.kwargs)

    @property
    def is_learned(self) -> bool:
        return self.module is not None

    @property
    def pools_from_mean(self) -> bool:
        """Whether the output depends on the tokens only through their masked mean (the module
        has ``from_mean`` and does not set ``pools_from_mean`` false, as ``se_mean`` and
        ``scalar_mix`` with the mean): then ``forward(h, m) == from_mean(masked_mean(h, m))``."""
        module = self.module
        return callable(getattr(module, "from_mean", None)) and bool(getattr(module, "pools_from_mean", True))

    def from_mean(self, mean: Tensor) -> Tensor:
        """Pool from the (B, D) masked mean of the states (see :attr:`pools_from_mean`)."""
        if not self.pools_from_mean:
            raise SeqpoolError(f"strategy {self.strategy!r} needs every token, not only their mean")
        return self.module.from_mean(mean)

    def pool_filled(self, filled: Tensor, mask: Tensor) -> Tensor:
        """:meth:`forward` of states whose padding is already zero, with a (B, T) bool mask:
        a module with its own ``pool_filled`` then skips its masking pass over the states."""
        pool = getattr(self.module, "pool_filled", None)
        return pool(filled, mask) if callable(pool) else self(filled, mask)

    def forward(
        self, hidden_states: Tensor, attention_mask: Tensor | None = None, return_weights: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Pool (B, T, D) -> (B, output_dim). ``return_weights`` is for attention pooling only."""
        if return_weights:
            if not getattr(self.module, "returns_weights", False):
                raise SeqpoolError(f"return_weights is only available for 'attention', not {self.strategy!r}")
            return self.module(hidden_states, attention_mask, return_weights=True)
        if self.module is not None:
            return self.module(hidden_states, attention_mask)
        return self._pool(hidden_states, attention_mask)

    @property
    def config(self) -> dict[str, Any]:
        return {"seqpool_type": "Pooler", "seqpool_version": __version__, "strategy": self.strategy,
                "dim": self.dim, "kwargs": self.kwargs}

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` + ``model.safetensors`` into ``directory``."""
        save_module(self, self.config, directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "Pooler":
        """Rebuild a Pooler saved by :meth:`save_pretrained` (weights via safetensors only).

        Like Hugging Face's ``from_pretrained`` it returns the module in eval mode (dropout off),
        so a loaded pooler gives the saved pooler's outputs; call ``.train()`` to fine-tune.
        """
        config = read_config(directory)
        if config.get("seqpool_type") != "Pooler":
            raise SeqpoolError(f"{directory} holds a {config.get('seqpool_type', 'non-seqpool')!r} config, not a Pooler")
        strategy, kwargs = config.get("strategy"), config.get("kwargs", {})
        if not isinstance(strategy, str) or not isinstance(kwargs, dict):
            raise SeqpoolError(
                f"{directory}/{CONFIG_NAME} is malformed: it needs a 'strategy' name and a 'kwargs' object"
            )
        get_strategy(strategy)  # a plugin is imported and tried here, not while sizing on the meta device
        pooler = build_checked(lambda: cls(strategy, config.get("dim"), **kwargs), directory)
        return load_state(pooler, directory).eval()

    def extra_repr(self) -> str:
        return f"strategy={self.strategy!r}, dim={self.dim}"
