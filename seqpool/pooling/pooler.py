"""Any pooling strategy by name, as one module: :class:`Pooler` (the registry's resolver, as PyG's
``aggregation_resolver``), config-driven and saved as config.json + model.safetensors.

A learned strategy's module is a :class:`~seqpool.pooling.base.PoolerBase`, so the Pooler reads
what it can do (``returns_weights``, ``pools_from_mean``, ``pool_filled``) from the module's
declared capabilities instead of probing it.
"""

from __future__ import annotations

import os
from typing import Any

from torch import Tensor

from seqpool.errors import SeqpoolError
from seqpool.pooling.base import PoolerBase
from seqpool.registry import LEARNED, PARAMETER_FREE, builtin_names, get_strategy
from seqpool.serialization import CONFIG_NAME, build_checked, load_state, read_config

#: The built-in strategies with parameters; :class:`Pooler` needs ``dim`` for them.
LEARNED_STRATEGIES: tuple[str, ...] = builtin_names(LEARNED)
#: The built-in strategies, parameter-free then learned (a :class:`Pooler` also accepts
#: registered and plugin strategies: ``seqpool.registry.strategy_names()``).
POOLER_STRATEGIES: tuple[str, ...] = builtin_names()


class Pooler(PoolerBase):
    """Any pooling strategy by name, configured from plain JSON-able arguments.

    ``Pooler("mean")`` and the other parameter-free strategies need nothing else;
    ``Pooler("attention", dim=384, heads=2)`` and ``Pooler("se_mean", dim=384, reduction=8)``
    build the learned modules (extra keyword arguments go to :class:`AttentionPooling`
    / :class:`SqueezeExcitation`). ``save_pretrained`` / ``from_pretrained`` round-trip
    through ``config.json`` + ``model.safetensors``.
    """

    config_args = ("strategy", "dim", "kwargs")
    repr_args = ("strategy", "dim")

    def __init__(self, strategy: str = "mean", dim: int | None = None, **kwargs: Any):
        super().__init__()
        spec = get_strategy(strategy)
        self.strategy, self.dim, self.kwargs = strategy, dim, dict(kwargs)
        self.module: PoolerBase | None = None
        if spec.kind == PARAMETER_FREE:
            if kwargs:
                raise SeqpoolError(f"strategy {strategy!r} has no parameters; unexpected {sorted(kwargs)}")
            self._pool = spec.fn
            return
        if dim is None:
            raise SeqpoolError(f"strategy {strategy!r} is learned: pass dim= (the encoder's hidden size)")
        try:
            module = spec.build(dim, **kwargs)
        except TypeError as error:
            raise SeqpoolError(f"bad arguments for strategy {strategy!r}: {error}") from None
        if not isinstance(module, PoolerBase):
            raise SeqpoolError(f"strategy {strategy!r} built a {type(module).__name__}, not a seqpool PoolerBase "
                               f"module; a learned strategy's factory must return one")
        self.module = module

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
    def returns_weights(self) -> bool:  # type: ignore[override]  # the module's capability
        """Whether ``forward(..., return_weights=True)`` works: the module declares it."""
        return self.module is not None and self.module.returns_weights

    @property
    def pools_from_mean(self) -> bool:  # type: ignore[override]  # the module's capability
        """Whether the output depends on the tokens only through their masked mean (the module
        declares it, as ``se_mean`` and ``scalar_mix`` with the mean do): then
        ``forward(h, m) == from_mean(masked_mean(h, m))``."""
        return self.module is not None and self.module.pools_from_mean

    def from_mean(self, mean: Tensor) -> Tensor:
        """Pool from the (B, D) masked mean of the states (see :attr:`pools_from_mean`)."""
        if self.module is None or not self.module.pools_from_mean:
            raise SeqpoolError(f"strategy {self.strategy!r} needs every token, not only their mean")
        return self.module.from_mean(mean)

    def pool_filled(self, filled: Tensor, mask: Tensor) -> Tensor:
        """:meth:`forward` of states whose padding is already zero, with a (B, T) bool mask:
        a module with its own ``pool_filled`` then skips its masking pass over the states."""
        return self(filled, mask) if self.module is None else self.module.pool_filled(filled, mask)

    def forward(
        self, hidden_states: Tensor, attention_mask: Tensor | None = None, return_weights: bool = False
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Pool (B, T, D) -> (B, output_dim). ``return_weights`` is for modules that weigh tokens."""
        if return_weights:
            if not self.returns_weights:
                raise SeqpoolError(f"return_weights is only available for 'attention' and the other learned "
                                   f"strategies that weigh tokens, not {self.strategy!r}")
            return self.module(hidden_states, attention_mask, return_weights=True)
        if self.module is not None:
            return self.module(hidden_states, attention_mask)
        return self._pool(hidden_states, attention_mask)

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
