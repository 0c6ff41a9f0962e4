"""The one base class of seqpool's learned pooling modules (PyG's ``Aggregation`` is the model).

Everything a learned pooler has besides its math lives here, once: its ``config`` (the
constructor arguments it declares, plus ``seqpool_type``/``seqpool_version``), saving and
loading as ``config.json`` + ``model.safetensors`` (:mod:`seqpool.serialization`, strict,
never pickle), ``extra_repr``, the output width, and the optional capabilities a caller may
use, declared as class attributes instead of discovered with ``getattr``:

* ``returns_weights`` -- ``forward(..., return_weights=True)`` also returns the token weights;
* ``pools_from_mean`` -- the output depends on the tokens only through their masked mean, and
  :meth:`PoolerBase.from_mean` computes it from that mean (a trainer pools each text once);
* :meth:`PoolerBase.pool_filled` -- ``forward`` on states whose padding is already zero, which a
  module may override to skip its masking pass.

A subclass writes its constructor, its math and :meth:`PoolerBase.output_width` (which the
registry's record of its strategy points at, so the width formula has one home).
"""

from __future__ import annotations

import os
from operator import attrgetter
from typing import Any, ClassVar, Mapping, TypeVar

from torch import Tensor, nn

from seqpool._version import __version__
from seqpool.errors import SeqpoolError
from seqpool.pooling.functional import normalize_mask
from seqpool.serialization import load_configured, save_module

_P = TypeVar("_P", bound="PoolerBase")


class PoolerBase(nn.Module):
    """A learned pooling module: declared constructor arguments, saved and loaded as one folder.

    Subclasses declare ``config_args`` (their constructor's arguments, in order) and, where an
    argument is stored under another attribute, ``config_attributes`` (argument -> dotted
    attribute path, e.g. ``{"p": "p_init"}``); ``repr_args`` picks the ones ``repr`` shows.
    Modules that transform states rather than pool them (``ScalarMix``, ``SqueezeExcitation``)
    share the base for its config and saving; their ``output_dim`` is the width of their output.
    """

    #: Constructor arguments, in order: what ``config`` holds and ``from_pretrained`` passes back.
    config_args: ClassVar[tuple[str, ...]] = ()
    #: Constructor argument -> the (dotted) attribute holding its value, where the names differ.
    config_attributes: ClassVar[Mapping[str, str]] = {}
    #: The constructor arguments ``repr`` shows (None: all of ``config_args``).
    repr_args: ClassVar[tuple[str, ...] | None] = None
    #: ``forward(..., return_weights=True)`` also returns the token weights.
    returns_weights: ClassVar[bool] = False
    #: The output depends on the tokens only through their masked mean (see :meth:`from_mean`).
    pools_from_mean: bool = False

    # -- width ----------------------------------------------------------------------------------

    @staticmethod
    def output_width(dim: int, **_: Any) -> int:
        """Width of the output for ``dim``-wide states and these constructor arguments, without
        building the module (the registry's ``width`` of the strategy points here)."""
        return dim

    @property
    def output_dim(self) -> int | None:
        """Width of the output (None for a module not built for one width, such as a layer mix)."""
        arguments = self.constructor_args()
        return self.output_width(**arguments) if "dim" in arguments else None

    # -- capabilities -----------------------------------------------------------------------------

    def from_mean(self, mean: Tensor) -> Tensor:
        """The output from the (B, D) masked mean of the states, when :attr:`pools_from_mean`."""
        raise SeqpoolError(f"{type(self).__name__} needs every token, not only their mean")

    def pool_filled(self, filled: Tensor, mask: Tensor) -> Tensor:
        """``forward`` of states whose padding is already zero, with a (B, T) bool mask; a module
        that can skip its own masking pass over the (B, T, D) states overrides this."""
        return self(filled, mask)

    def checked_mask(self, hidden_states: Tensor, attention_mask: Tensor | None) -> Tensor:
        """``normalize_mask`` plus one clear error when the states are not ``dim`` wide."""
        mask = normalize_mask(hidden_states, attention_mask)
        width, dim = hidden_states.shape[-1], getattr(self, "dim")
        if width != dim:
            raise SeqpoolError(
                f"hidden_states have width {width} but this {type(self).__name__} was built for dim={dim}; "
                f"use states from the encoder it was trained on, or build a new one with dim={width}"
            )
        return mask

    # -- config, saving, loading --------------------------------------------------------------

    def constructor_args(self) -> dict[str, Any]:
        """The declared constructor arguments with the values this module was built with."""
        return {name: attrgetter(self.config_attributes.get(name, name))(self) for name in self.config_args}

    @property
    def config(self) -> dict[str, Any]:
        """What ``config.json`` holds: the type, the seqpool version and the constructor arguments."""
        return {"seqpool_type": type(self).__name__, "seqpool_version": __version__, **self.constructor_args()}

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """Write ``config.json`` + ``model.safetensors`` into ``directory``."""
        save_module(self, self.config, directory)

    @classmethod
    def from_pretrained(cls: type[_P], directory: str | os.PathLike) -> _P:
        """Rebuild a module saved by :meth:`save_pretrained`: the type is checked, the weights
        loaded strictly from safetensors, and it comes back in eval mode (dropout off), like
        Hugging Face's ``from_pretrained``; call ``.train()`` to fine-tune."""
        return load_configured(cls, directory)

    def extra_repr(self) -> str:
        arguments = self.constructor_args()
        shown = self.config_args if self.repr_args is None else self.repr_args
        return ", ".join(f"{name}={arguments[name]!r}" for name in shown)
