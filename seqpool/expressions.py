"""Strategy expressions: concatenations, hidden-layer choices and power means, by name.

Grammar (what ``get_strategy``, ``--strategy`` and ``--strategies`` accept beyond plain names)::

    expression := term ("+" term)*          mean+max: the pooled vectors side by side
    term       := name ("@" layers)?         mean@-2: mean of hidden layer -2
    layers     := int ("~" int)*             mean@1~-1: mean of the average of layers 1 and -1
    pP         := "p" number                 p3, p2.5: signed power mean with that p (>= 1)

None of "+", "@", "~" (nor the digits and "-" of a layer index) can appear in a strategy name
or needs quoting in a shell, so a comma-separated list of expressions splits unambiguously.
"@" binds to the term before it: ``cls@-1+mean@-2``. Layer indices are hidden-state indices as
in Hugging Face's ``output_hidden_states`` (0 = embeddings, -1 = last layer), so SimCSE's
"first-last average" is ``mean@1~-1``; a term without "@" uses the encoder's own layer
(``Encoder(layer=...)``, ``--layer``). Concatenations are parameter-free, like
sentence-transformers' multi-mode ``Pooling``; a learned strategy may take an ``@`` but not a ``+``.

Like :mod:`seqpool.registry`, this module imports no torch; :func:`seqpool.layer_plan.plan_layers`
turns parsed expressions into one encoder pass.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from seqpool.errors import SeqpoolError
from seqpool.registry import LEARNED, PARAMETER_FREE, StrategySpec, _resolve, get_strategy

LAYER_SEPARATOR = "~"
_POWER_NAME = re.compile(r"p(\d+(?:\.\d+)?)")
_LAYER_INDEX = re.compile(r"-?\d+")


@dataclass(frozen=True)
class Term:
    """One strategy of an expression and the hidden layers it pools (None: the encoder's own)."""

    name: str
    layers: tuple[int, ...] | None = None


def parse_strategy(expression: str) -> tuple[Term, ...]:
    """The terms of a strategy expression (``"cls+mean@-2"`` -> cls on the default layer, mean on -2).

    Names are checked to be strategies; a learned strategy cannot be part of a concatenation
    and one that needs every layer (``scalar_mix``, which mixes them) takes no ``@``.
    """
    if not isinstance(expression, str) or not expression:
        raise SeqpoolError(f"a strategy must be a non-empty name, got {expression!r}")
    terms = []
    for text in expression.split("+"):
        name, at, layers = text.partition("@")
        if not name:
            raise SeqpoolError(f"strategy {expression!r} has an empty part; write e.g. 'mean+max' or 'mean@-2'")
        if at and not all(_LAYER_INDEX.fullmatch(i) for i in layers.split(LAYER_SEPARATOR)):
            raise SeqpoolError(f"strategy {expression!r}: after '@' comes a hidden layer index (mean@-2) or layers "
                               f"to average joined by '{LAYER_SEPARATOR}' (mean@1~-1), got {layers!r}")
        terms.append(Term(name, tuple(int(i) for i in layers.split(LAYER_SEPARATOR)) if at else None))
    specs = [get_strategy(term.name) for term in terms]
    for term, spec in zip(terms, specs):
        if spec.kind == LEARNED and len(terms) > 1:
            raise SeqpoolError(f"strategy {expression!r}: only parameter-free strategies can be concatenated with "
                               f"'+', and {term.name!r} is learned; evaluate it on its own")
        if spec.needs_all_layers and term.layers is not None:
            raise SeqpoolError(f"strategy {expression!r}: {term.name} learns its own mix of every layer; drop the '@'")
    return tuple(terms)


def expression_spec(expression: str) -> StrategySpec | None:
    """The record of a power mean ``pP`` or of an expression with ``+`` / ``@`` (None: neither).

    Built on every lookup (microseconds), so it always reflects the strategies registered now.
    """
    power = _POWER_NAME.fullmatch(expression)
    if power:
        return _power_spec(expression, float(power.group(1)))
    if "+" in expression or "@" in expression:
        return _composite_spec(expression, parse_strategy(expression))
    return None


def _power_spec(name: str, p: float) -> StrategySpec:
    if p < 1:
        raise SeqpoolError(f"strategy {name!r}: the power p must be at least 1 (p1 = mean, p3 = cubic mean)")

    def power_mean(hidden_states: Any, attention_mask: Any = None) -> Any:
        # named as a string, like every built-in record: the registry layer sits under the math
        return _resolve("seqpool.pooling.moments:masked_power_mean")(hidden_states, attention_mask, p)

    weights = "seqpool.pooling.functional:mean_token_weights" if p == 1 else None
    return StrategySpec(name, PARAMETER_FREE, f"signed power mean with p = {p:g}", function=power_mean,
                        token_weights=weights)


def _composite_spec(expression: str, terms: tuple[Term, ...]) -> StrategySpec:
    specs = [get_strategy(term.name) for term in terms]
    origin = "built-in" if all(spec.is_builtin for spec in specs) else "expression"
    layered = [term for term in terms if term.layers is not None]
    if len(terms) == 1:  # one strategy on chosen layers: the caller hands it that layer's states
        spec = specs[0]
        return StrategySpec(expression, spec.kind, f"{spec.description} (hidden layer {_layer_text(terms[0])})",
                            function=_layer_bound(expression) if spec.kind == PARAMETER_FREE else None,
                            factory=spec.factory, width=spec.width, origin=origin)
    parts = [(spec.fn, spec.output_dim) for spec in specs]

    def concatenated(hidden_states: Any, attention_mask: Any = None) -> Any:
        import torch

        return torch.cat([fn(hidden_states, attention_mask) for fn, _ in parts], dim=-1)

    def width(dim: int, **_: Any) -> int:
        return sum(output_dim(dim) for _, output_dim in parts)

    weight_refs = [spec.token_weights for spec in specs]
    weights = None if layered or None in weight_refs else _concatenated_weights([_resolve(w) for w in weight_refs])
    description = " ⊕ ".join(spec.name + (f" of layer {_layer_text(t)}" if t.layers else "")
                             for spec, t in zip(specs, terms))
    return StrategySpec(expression, PARAMETER_FREE, f"concatenation: {description}",
                        function=_layer_bound(expression) if layered else concatenated, width=width,
                        token_weights=weights, origin=origin)


def _layer_text(term: Term) -> str:
    return LAYER_SEPARATOR.join(str(i) for i in term.layers or ())


def _layer_bound(expression: str) -> Callable[..., Any]:
    """The function of an expression with ``@``: it needs other layers' states than one tensor holds."""

    def needs_layers(hidden_states: Any, attention_mask: Any = None) -> Any:
        raise SeqpoolError(f"strategy {expression!r} pools chosen hidden layers, which one states tensor does not "
                           f"hold; use Encoder.encode, embed or evaluate (they run every layer a strategy names "
                           f"through one encoder pass), or pool that layer's states without the '@'")

    return needs_layers


def _concatenated_weights(functions: list[Callable[..., Any]]) -> Callable[..., Any]:
    """Exact token weights of a concatenation: each part's (B, T, width) weights side by side."""

    def weights(hidden_states: Any, attention_mask: Any = None, module: Any = None) -> Any:
        import torch

        parts = []
        for function in functions:
            part = function(hidden_states, attention_mask, None)
            parts.append(part.unsqueeze(-1).expand(*hidden_states.shape) if part.dim() == 2 else part)
        return torch.cat(parts, dim=-1)

    return weights
