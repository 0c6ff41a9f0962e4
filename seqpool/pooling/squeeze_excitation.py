"""Squeeze-and-Excitation for sequences (Hu et al., 2018), mask-aware, and the ``se_mean`` pooler.

Argument style follows timm's ``layers/squeeze_excite.py``: ``rd_channels`` wins over
``rd_ratio``, which wins over ``reduction``; activations are named, so configs stay JSON.
"""

from __future__ import annotations

from torch import Tensor, nn

from seqpool.errors import SeqpoolError
from seqpool.pooling.base import PoolerBase
from seqpool.pooling.functional import fill_padding, masked_mean, normalize_mask, upcast

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


class SqueezeExcitation(PoolerBase):
    """Squeeze-and-Excitation for sequences (Hu et al., 2018), mask-aware.

    *Squeeze*: masked mean over real tokens (padding excluded) -> (B, D).
    *Excitation*: ``Linear(D -> r) -> act -> Linear(r -> D) -> gate`` -> per-channel scale in (0, 1).
    Output: the states scaled per channel, shape (B, T, D). **Padded positions are set to
    zero** so nothing downstream can pick up garbage from them.

    Argument style follows timm's ``SEModule``: ``rd_channels`` wins over ``rd_ratio``, which
    wins over ``reduction``. The saved config holds the bottleneck width it resolved to.
    """

    config_args = ("dim", "reduction", "rd_ratio", "rd_channels", "act_layer", "gate_layer", "bias")
    repr_args = ("dim", "rd_channels", "act_layer", "gate_layer")

    def __init__(self, dim: int, reduction: float = 16, rd_ratio: float | None = None,
                 rd_channels: int | None = None, act_layer: str = "relu", gate_layer: str = "sigmoid",
                 bias: bool = True):
        super().__init__()
        if dim < 1:
            raise SeqpoolError(f"SqueezeExcitation needs dim >= 1, got dim={dim}")
        self.dim, self.reduction, self.rd_ratio = dim, reduction, rd_ratio
        self.rd_channels = reduced_channels(dim, reduction, rd_ratio, rd_channels)
        self.act_layer, self.gate_layer, self.bias = act_layer, gate_layer, bias
        self.fc1 = nn.Linear(dim, self.rd_channels, bias=bias)
        self.act = _activation(act_layer)
        self.fc2 = nn.Linear(self.rd_channels, dim, bias=bias)
        self.gate = _activation(gate_layer)

    def channel_weights(self, hidden_states: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """(B, D) excitation gates (float32 at least) computed from the masked squeeze."""
        mask = self.checked_mask(hidden_states, attention_mask)
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

    #: The gates are one scale per channel, the same for every token, so they commute with the
    #: mean: mean(h * g) = mean(h) * g. Gating the (B, D) mean instead of the (B, T, D) states
    #: makes the module one masked mean, which is what makes training it cheap.
    pools_from_mean = True

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        mask = self.checked_mask(hidden_states, attention_mask)
        return self.from_mean(masked_mean(upcast(hidden_states), mask)).to(hidden_states.dtype)

    def from_mean(self, mean: Tensor) -> Tensor:
        """The pooled (B, D) vectors from the (B, D) masked mean of the states: all this module
        needs of the tokens, so a trainer can pool each text once and train on the means."""
        return mean * self.excite(mean)


def se_mean_token_weights(hidden_states: Tensor, attention_mask: Tensor, module: SqueezeExcitation) -> Tensor:
    """(B, T, D) exact token weights of ``se_mean``: 1/n times each channel's gate."""
    mask = normalize_mask(hidden_states, attention_mask)
    real = mask.float()
    per_token = real / real.sum(dim=1, keepdim=True).clamp(min=1.0)
    gates = module.channel_weights(hidden_states, mask)
    return per_token.unsqueeze(-1).expand(*hidden_states.shape) * gates.unsqueeze(1)
