"""One record per pooling strategy: the single place every consumer looks strategies up.

``pool``, :class:`~seqpool.pooling.pooler.Pooler`, ``explain``, the sentence-transformers export
and reader, ``evaluate``, the pipeline, long texts, layer plans and ``seqpool strategies`` all read
this table, so adding a strategy is one record here (built-in) or one call to
:func:`register_strategy` (yours), or one entry point in the ``seqpool.strategies`` group (a
package's)::

    [project.entry-points."seqpool.strategies"]
    myname = "mypkg.module:function"   # function(hidden_states, attention_mask) -> (B, D)

Every fact about a strategy is a field of its record (its function or module, output width,
sentence-transformers mode, explain weights, how long-text windows merge for it, whether it needs
every hidden layer, whether the default comparison runs it): nothing else in seqpool keys on a
strategy's name (``tests/test_registry_facts.py`` greps for it).

This module imports neither torch nor transformers: built-in records name their functions,
modules and width formulas as ``"module:attribute"`` strings resolved on first use, so listing
strategies stays cheap, and each width formula has one home, next to the code it describes.
Plugins load lazily (on the first lookup of a name no record has, or when listing), one at
a time and isolated: a broken plugin is one :class:`SeqpoolError` line naming it when it is
used, and a warning when listing; it never affects the built-in strategies.
"""

from __future__ import annotations

import importlib
import re
import warnings
from dataclasses import dataclass
from typing import Any, Callable, Literal, Mapping

from seqpool.errors import SeqpoolError

#: The entry-point group third-party packages declare their strategies in.
ENTRY_POINT_GROUP = "seqpool.strategies"
PARAMETER_FREE = "parameter-free"
LEARNED = "learned"
Kind = Literal["parameter-free", "learned"]
_KINDS = (PARAMETER_FREE, LEARNED)
#: How a long text's windows become one vector (see :mod:`seqpool.long_texts`): pool the merged
#: sequence (overlaps averaged), or pool every window's raw token states together.
MERGED_SEQUENCE = "merged_sequence"
EVERY_WINDOW_STATE = "every_window_state"
WindowMerge = Literal["merged_sequence", "every_window_state"]
_WINDOW_MERGES = (MERGED_SEQUENCE, EVERY_WINDOW_STATE)
#: A strategy name: ASCII letters, digits, ``_``, ``-`` and ``.``, not starting with ``.`` or ``-``.
#: Names end up in file names (``out.<name>.npy``) and command lines, so nothing in one may climb
#: folders (``../``), hide a file, look like an option, or separate strategies (``,``, ``+``, ``@``).
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")

#: The order of the boolean pooling flags in a sentence-transformers Pooling config (see
#: :func:`st_pooling_flags`; the order modes are read and concatenated in is ``_ST_MODE_ORDER``).
_ST_FLAG_ORDER = ("pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_max_tokens",
                  "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens", "pooling_mode_lasttoken")


def _resolve(ref: Any) -> Any:
    """A callable given directly, or as a lazy ``"package.module:attribute"`` reference (the
    attribute may be dotted: ``"seqpool.pooling.gem:GeMPooling.output_width"``)."""
    if ref is None or not isinstance(ref, str):
        return ref
    module, _, attribute = ref.partition(":")
    value = importlib.import_module(module)
    for part in attribute.split("."):
        value = getattr(value, part)
    return value


def same_width(dim: int, **_: Any) -> int:
    """Output width of strategies that return one ``dim``-wide vector per text."""
    return dim


@dataclass(frozen=True)
class StrategySpec:
    """Everything seqpool knows about one pooling strategy.

    ``function`` (parameter-free) is ``fn(hidden_states, attention_mask) -> (B, D')``;
    ``factory`` (learned) is ``factory(dim, **kwargs)`` returning a
    :class:`~seqpool.pooling.base.PoolerBase` module whose forward has the same signature. Either may be a lazy ``"module:attribute"`` string. ``width(dim, **kwargs)``
    is ``D'`` (a function or a lazy reference: a learned module's ``output_width``).
    ``st_mode``/``st_flag`` are its sentence-transformers ``pooling_mode`` string and boolean
    flag, if sentence-transformers has it. ``token_weights(hidden_states, mask, module)`` gives the
    exact (B, T) or (B, T, D') token weights ``explain`` needs, or is None when no exact
    decomposition exists. ``origin`` is ``"built-in"``, ``"user"`` or the plugin and its entry point.

    The facts other parts of seqpool act on (defaults fit any registered or plugin strategy):

    * ``window_merge``: how a long text's windows are pooled -- :data:`MERGED_SEQUENCE` (the
      merged sequence, overlaps averaged) or :data:`EVERY_WINDOW_STATE` (every window's raw
      states, for strategies that do not double count, such as ``max``);
    * ``needs_all_layers``: a learned strategy that mixes every hidden layer: it pools states
      holding all L layers side by side, takes ``num_layers=L``, and cannot take an ``@``;
    * ``in_default_comparison``: ``evaluate`` runs it when no strategies are named (and it is in
      the ``STRATEGIES`` / ``LEARNED_STRATEGIES`` constants); opt-in, so a new operator or a
      plugin never silently joins the default run and its cost;
    * ``prompt_excluded``: ``fn(hidden_states, attention_mask, kept)`` pooling only the ``kept``
      tokens while they keep the positions they have in the whole text (position-weighted
      strategies, as sentence-transformers' ``include_prompt=False``); None: pool the kept
      tokens as a text of their own.
    """

    name: str
    kind: Kind
    description: str = ""
    function: Any = None
    factory: Any = None
    width: Callable[..., int] | str = same_width
    st_mode: str | None = None
    st_flag: str | None = None
    token_weights: Any = None
    origin: str = "built-in"
    window_merge: WindowMerge = MERGED_SEQUENCE
    needs_all_layers: bool = False
    in_default_comparison: bool = False
    prompt_excluded: Any = None

    def __post_init__(self) -> None:
        if self.window_merge not in _WINDOW_MERGES:
            raise SeqpoolError(f"window_merge must be one of {', '.join(_WINDOW_MERGES)}, got {self.window_merge!r}")

    @property
    def fn(self) -> Callable[..., Any]:
        """The pooling function (parameter-free strategies), outputs checked unless built in."""
        if self.kind != PARAMETER_FREE:
            raise SeqpoolError(f"strategy {self.name!r} is learned: build it with seqpool.Pooler({self.name!r}, dim=...)")
        function = _resolve(self.function)
        return function if self.is_builtin else _validated(function, self)

    def build(self, dim: int, **kwargs: Any) -> Any:
        """The nn.Module of a learned strategy for ``dim``-wide states."""
        if self.kind != LEARNED:
            raise SeqpoolError(f"strategy {self.name!r} has no parameters; call seqpool.pool(..., {self.name!r})")
        return _resolve(self.factory)(dim, **kwargs)

    def output_dim(self, dim: int, **kwargs: Any) -> int:
        """Width of the pooled vector for ``dim``-wide token states."""
        return int(_resolve(self.width)(dim, **kwargs))

    def weights_fn(self) -> Callable[..., Any] | None:
        """The exact token-weight function for ``explain`` (None: no exact decomposition)."""
        return _resolve(self.token_weights)

    def prompt_excluded_fn(self) -> Callable[..., Any] | None:
        """The function that pools with a prompt left out but positions kept (None: none needed)."""
        return _resolve(self.prompt_excluded)

    @property
    def is_builtin(self) -> bool:
        return self.origin == "built-in"


def _check_name(name: Any) -> str:
    """``name`` if it is a safe strategy name (see :data:`_SAFE_NAME`), for built-ins, users and plugins alike."""
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):
        raise SeqpoolError(f"name must be a non-empty string of ASCII letters, digits, '_', '-' and '.' (not first): "
                           f"it becomes part of file names and command lines, got {name!r}")
    return name


_FUNCTIONAL = "seqpool.pooling.functional"
_MOMENTS = "seqpool.pooling.moments"


def _builtin(name: str, kind: Kind, description: str, ref: str, *, weights: str | None = None,
             st: tuple[str, str] | None = None, width: Callable[..., int] | str = same_width,
             **facts: Any) -> StrategySpec:
    """One built-in record: ``ref`` (``"module:attribute"``) is its function (parameter-free) or
    module factory (learned); ``facts`` are the record's remaining fields."""
    return StrategySpec(
        _check_name(name), kind, description, function=ref if kind == PARAMETER_FREE else None,
        factory=ref if kind == LEARNED else None, width=width, st_mode=st[0] if st else None,
        st_flag=st[1] if st else None, token_weights=weights, **facts)


#: Every strategy seqpool ships, in listing order. The classic ones (``in_default_comparison``)
#: come first: the default ``evaluate`` run and the ``STRATEGIES`` / ``LEARNED_STRATEGIES``
#: constants (all exportable to sentence-transformers or learned on the encoder's own layer).
#: The operators after them are usable by name everywhere; exact explain weights exist for
#: latent_attention only among them: power means (p != 1), standard deviations and GeM are not
#: linear in the tokens, and scalar_mix mixes layers explain never sees.
_BUILTINS: dict[str, StrategySpec] = {spec.name: spec for spec in (
    _builtin("mean", PARAMETER_FREE, "average of the real tokens", f"{_FUNCTIONAL}:masked_mean",
             weights=f"{_FUNCTIONAL}:mean_token_weights", st=("mean", "pooling_mode_mean_tokens"),
             in_default_comparison=True),
    _builtin("max", PARAMETER_FREE, "channel-wise maximum over the real tokens", f"{_FUNCTIONAL}:masked_max",
             weights=f"{_FUNCTIONAL}:max_token_weights", st=("max", "pooling_mode_max_tokens"),
             window_merge=EVERY_WINDOW_STATE, in_default_comparison=True),
    _builtin("cls", PARAMETER_FREE, "the first real token ([CLS] of BERT-style encoders)", f"{_FUNCTIONAL}:first_token",
             weights=f"{_FUNCTIONAL}:first_token_weights", st=("cls", "pooling_mode_cls_token"),
             in_default_comparison=True),
    _builtin("last", PARAMETER_FREE, "the last real token (the summary state of causal decoders)",
             f"{_FUNCTIONAL}:last_token", weights=f"{_FUNCTIONAL}:last_token_weights",
             st=("lasttoken", "pooling_mode_lasttoken"), in_default_comparison=True),
    _builtin("mean_sqrt_len", PARAMETER_FREE, "sum of the real tokens divided by sqrt(length)",
             f"{_FUNCTIONAL}:masked_mean_sqrt_len", weights=f"{_FUNCTIONAL}:mean_sqrt_len_token_weights",
             st=("mean_sqrt_len_tokens", "pooling_mode_mean_sqrt_len_tokens"), in_default_comparison=True),
    _builtin("weighted_mean", PARAMETER_FREE, "position-weighted mean: the k-th real token weighs k (SGPT)",
             f"{_FUNCTIONAL}:masked_weighted_mean", weights=f"{_FUNCTIONAL}:weighted_mean_token_weights",
             st=("weightedmean", "pooling_mode_weightedmean_tokens"), in_default_comparison=True,
             prompt_excluded=f"{_FUNCTIONAL}:masked_weighted_mean_keeping_positions"),
    _builtin("attention", LEARNED, "learned softmax attention over the real tokens; width heads * dim",
             "seqpool.pooling.attention:AttentionPooling",
             weights="seqpool.pooling.attention:attention_token_weights",
             width="seqpool.pooling.attention:AttentionPooling.output_width", in_default_comparison=True),
    _builtin("se_mean", LEARNED, "squeeze-and-excitation channel gates, then the mean",
             "seqpool.pooling.squeeze_excitation:SqueezeExcitationMean",
             weights="seqpool.pooling.squeeze_excitation:se_mean_token_weights",
             width="seqpool.pooling.squeeze_excitation:SqueezeExcitationMean.output_width",
             in_default_comparison=True),
    _builtin("mean_std", PARAMETER_FREE, "statistics pooling: mean ⊕ standard deviation of the real tokens; "
             "width 2 * dim", f"{_MOMENTS}:masked_mean_std", width=f"{_MOMENTS}:mean_std_width"),
    _builtin("power_mean", PARAMETER_FREE, "signed power mean with p = 3 (Rücklé et al.); any p >= 1 as "
             "pP: p2, p2.5, p7 (p1 = mean)", f"{_MOMENTS}:masked_power_mean"),
    _builtin("gem", LEARNED, "GeM: signed power mean with a learned p (Radenović et al.)",
             "seqpool.pooling.gem:GeMPooling", width="seqpool.pooling.gem:GeMPooling.output_width"),
    _builtin("attentive_stats", LEARNED, "attentive statistics: attention-weighted mean ⊕ std (Okabe et al.; "
             "ECAPA); width 2 * dim", "seqpool.pooling.attentive_stats:AttentiveStatisticsPooling",
             width="seqpool.pooling.attentive_stats:AttentiveStatisticsPooling.output_width"),
    _builtin("latent_attention", LEARNED, "k learned queries attend to the real tokens (Set Transformer PMA, "
             "NV-Embed); width dim, or k * dim with mode='concat'",
             "seqpool.pooling.latent_attention:LatentAttentionPooling",
             weights="seqpool.pooling.latent_attention:latent_attention_token_weights",
             width="seqpool.pooling.latent_attention:LatentAttentionPooling.output_width"),
    _builtin("scalar_mix", LEARNED, "softmax-weighted mix of every hidden layer (ELMo), then the mean",
             "seqpool.pooling.scalar_mix:scalar_mix_pooler",
             width="seqpool.pooling.scalar_mix:ScalarMixPooling.output_width", needs_all_layers=True),
)}


#: Strategies registered by :func:`register_strategy` (these win over built-ins they replace).
_USER: dict[str, StrategySpec] = {}
#: Plugins loaded so far: the spec, or the one-line error it gave.
_PLUGINS: dict[str, StrategySpec | SeqpoolError] = {}
_WARNED: set[str] = set()


# -- lookups ----------------------------------------------------------------------------------


def _plugin_entry_points() -> dict[str, Any]:
    """Entry points of the ``seqpool.strategies`` group by name (nothing is imported)."""
    from importlib.metadata import entry_points

    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def _known() -> dict[str, StrategySpec]:
    """Every strategy available without importing a plugin, in listing order."""
    return {**_BUILTINS, **_USER}


def find_strategy(name: str) -> StrategySpec | None:
    """The record of ``name`` or None; loads the plugin of that name if no record has it.

    A broken plugin of that name raises its one-line :class:`SeqpoolError`.
    """
    if not isinstance(name, str):
        return None
    known = _known()
    if name in known:
        return known[name]
    if any(mark in name for mark in "+@") or name.startswith("p") and name[1:2].isdigit():
        # "mean+max", "mean@-2", "p3": the grammar sits a layer above and is named by string,
        # like every built-in record's function, so this module imports nothing above it.
        spec = _resolve("seqpool.expressions:expression_spec")(name)
        if spec is not None:
            return spec
    if name not in _PLUGINS:
        entry_point = _plugin_entry_points().get(name)
        if entry_point is None:
            return None
        _PLUGINS[name] = _load_plugin(entry_point)
    found = _PLUGINS[name]
    if isinstance(found, SeqpoolError):
        raise SeqpoolError(str(found))
    return found


def get_strategy(name: str, kind: Kind | None = None) -> StrategySpec:
    """The record of strategy ``name`` (of ``kind``, if given); unknown names list the valid ones."""
    if kind is not None and kind not in _KINDS:
        raise SeqpoolError(f"kind must be one of {', '.join(_KINDS)} or None, got {kind!r}")
    spec = find_strategy(name)
    if spec is None or (kind is not None and spec.kind != kind):
        why = f" here: it is {spec.kind}, this needs a {kind} one" if spec is not None else ""
        raise SeqpoolError(f"unknown pooling strategy {name!r}{why}; choose one of: {', '.join(_valid_names(kind))}")
    return spec


def _valid_names(kind: Kind | None) -> list[str]:
    """Names for an error message: known records plus plugin names (not imported)."""
    names = [spec.name for spec in _known().values() if kind is None or spec.kind == kind]
    if kind in (None, PARAMETER_FREE):
        try:
            names += [name for name in _plugin_entry_points() if name not in names]
        except Exception:  # broken metadata must not hide the built-in names
            pass
    return names


def strategy_names(kind: Kind | None = None, *, plugins: bool = True) -> tuple[str, ...]:
    """Names of the available strategies (of ``kind``), parameter-free first, then learned.

    ``plugins=True`` loads every plugin of the ``seqpool.strategies`` group; one that fails is
    left out with a warning. ``plugins=False`` gives the built-in and registered ones only.
    """
    if kind is not None and kind not in _KINDS:
        raise SeqpoolError(f"kind must be one of {', '.join(_KINDS)} or None, got {kind!r}")
    specs = list_strategies() if plugins else _by_kind(_known().values())
    return tuple(s.name for s in specs if kind is None or s.kind == kind)


def _by_kind(specs: Any) -> list[StrategySpec]:
    return sorted(specs, key=lambda s: _KINDS.index(s.kind))


def builtin_names(kind: Kind | None = None) -> tuple[str, ...]:
    """The classic strategies seqpool ships (``in_default_comparison``), in their documented order:
    what the ``STRATEGIES`` / ``LEARNED_STRATEGIES`` constants and the default comparison hold."""
    return tuple(s.name for s in _by_kind(_BUILTINS.values())
                 if s.in_default_comparison and (kind is None or s.kind == kind))


def default_comparison() -> tuple[str, ...]:
    """The strategies ``evaluate`` compares when none are named: the built-in records that declare
    ``in_default_comparison``, parameter-free first."""
    return builtin_names()


def list_strategies(*, warn: bool = True) -> list[StrategySpec]:
    """Every usable record: built-ins, registered ones and working plugins; parameter-free first.

    Each broken plugin is left out with one warning (``warn=False``: silently; the caller
    reports :func:`load_plugins`' problems itself).
    """
    specs = dict(_known())
    for problem in load_plugins():
        if warn and problem not in _WARNED:
            _WARNED.add(problem)
            warnings.warn(problem, stacklevel=2)
    for found in _PLUGINS.values():
        if isinstance(found, StrategySpec) and found.name not in specs:
            specs[found.name] = found
    return _by_kind(specs.values())


def load_plugins() -> list[str]:
    """Load every plugin not loaded yet; return the one-line problem of each broken one."""
    try:
        entry_points = _plugin_entry_points()
    except Exception as error:  # pragma: no cover - broken installation metadata
        return [f"cannot read the {ENTRY_POINT_GROUP!r} entry points: {error}"]
    problems = []
    for name, entry_point in entry_points.items():
        if name in _known():
            problems.append(f"{_describe(entry_point)} is ignored: {name!r} is already a strategy")
            continue
        if name not in _PLUGINS:
            _PLUGINS[name] = _load_plugin(entry_point)
        if isinstance(_PLUGINS[name], SeqpoolError):
            problems.append(str(_PLUGINS[name]))
    return problems


# -- user and plugin strategies ---------------------------------------------------------------


def _width_function(output_dim: int | Callable[[int], int] | None) -> Callable[..., int]:
    if output_dim is None:
        return same_width
    if callable(output_dim):
        return lambda dim, **_: output_dim(dim)
    if isinstance(output_dim, bool) or not isinstance(output_dim, int) or output_dim < 1:
        raise SeqpoolError(f"output_dim must be None (the hidden size), a positive int or a function of the "
                           f"hidden size, got {output_dim!r}")
    return lambda dim, **_: output_dim


def register_strategy(name: str, fn: Callable[..., Any], *, description: str = "",
                      output_dim: int | Callable[[int], int] | None = None, replace: bool = False) -> StrategySpec:
    """Make ``fn(hidden_states, attention_mask) -> (B, D')`` a parameter-free strategy called ``name``.

    It then works wherever a strategy name does: ``seqpool.pool``, ``Pooler(name)``,
    ``Encoder.encode``, ``evaluate`` and the pipeline. ``output_dim`` is ``D'``: None for the
    hidden size, an int, or a function of the hidden size. Its outputs are checked on every call
    (2-D, one row per text, ``D'`` wide, finite). Re-registering a name, or a built-in one,
    needs ``replace=True``.
    """
    _check_name(name)
    if not callable(fn):
        raise SeqpoolError(f"fn must be callable as fn(hidden_states, attention_mask), got {type(fn).__name__}")
    if not isinstance(description, str):
        raise SeqpoolError(f"description must be a string, got {type(description).__name__}")
    if not replace and name in _known():
        where = "a built-in strategy" if name in _BUILTINS and name not in _USER else "already registered"
        raise SeqpoolError(f"strategy {name!r} is {where}; pass replace=True to replace it, or choose another name")
    spec = StrategySpec(name, PARAMETER_FREE, description or _first_doc_line(fn), function=fn,
                        width=_width_function(output_dim), origin="user")
    _USER[name] = spec
    return spec


def unregister_strategy(name: str) -> None:
    """Forget a strategy added by :func:`register_strategy` (a replaced built-in comes back)."""
    if name not in _USER:
        raise SeqpoolError(f"strategy {name!r} was not added with register_strategy; registered: "
                           f"{', '.join(_USER) or 'none'}")
    del _USER[name]


def _forget_plugins() -> None:
    """Drop loaded plugins so the next lookup reads the entry points again (for tests)."""
    _PLUGINS.clear()
    _WARNED.clear()


def _first_doc_line(fn: Any) -> str:
    doc = (getattr(fn, "__doc__", None) or "").strip()
    return doc.splitlines()[0].strip() if doc else ""


def _describe(entry_point: Any) -> str:
    dist = getattr(entry_point, "dist", None)
    package = f" from {dist.name} {dist.version}" if dist is not None else ""
    return f"plugin {entry_point.name!r} ({entry_point.name} = {entry_point.value}{package})"


def _load_plugin(entry_point: Any) -> StrategySpec | SeqpoolError:
    """Import one plugin and try it on a small batch; any failure becomes its one-line error."""
    who = _describe(entry_point)
    try:
        _check_name(entry_point.name)
    except SeqpoolError as error:
        return SeqpoolError(f"{who} has an invalid name: {error}")
    try:
        loaded = entry_point.load()
    except Exception as error:
        return SeqpoolError(f"{who} failed to import: {type(error).__name__}: {_one_line(error)}")
    if not callable(loaded):
        return SeqpoolError(f"{who} is not callable (a {type(loaded).__name__}); it must point to "
                            f"fn(hidden_states, attention_mask) -> (batch, dim)")
    spec = StrategySpec(entry_point.name, PARAMETER_FREE, _first_doc_line(loaded), function=loaded,
                        origin=who)
    try:
        _try_out(spec)
    except SeqpoolError as error:
        return SeqpoolError(_one_line(error))
    except Exception as error:
        return SeqpoolError(f"{who} failed on a test batch: {type(error).__name__}: {_one_line(error)}")
    return spec


def _try_out(spec: StrategySpec) -> None:
    """Pool a small fixed batch (right padding, one empty row excluded) through the checked function,
    on the CPU whatever the caller's default device (a plugin may first be looked up while a
    module is sized on the ``meta`` device, see :func:`seqpool.serialization.build_checked`)."""
    import torch

    with torch.device("cpu"):
        generator = torch.Generator().manual_seed(0)
        hidden = torch.randn(2, 5, 8, generator=generator)
        mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]])
        spec.fn(hidden, mask)


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split()) or type(error).__name__


def _validated(function: Callable[..., Any], spec: StrategySpec) -> Callable[..., Any]:
    """``function`` with its output checked: a (B, D') finite tensor, else a SeqpoolError naming it."""
    who = spec.origin if spec.origin.startswith("plugin ") else f"strategy {spec.name!r} ({spec.origin})"

    def checked(hidden_states: Any, attention_mask: Any = None) -> Any:
        import torch

        out = function(hidden_states, attention_mask)
        batch, dim = hidden_states.shape[0], hidden_states.shape[-1]
        expected = spec.output_dim(dim)
        if not isinstance(out, torch.Tensor):
            raise SeqpoolError(f"{who} returned a {type(out).__name__}, not a torch.Tensor of shape (batch, dim)")
        if out.dim() != 2 or out.shape[0] != batch or out.shape[1] != expected:
            raise SeqpoolError(f"{who} returned shape {tuple(out.shape)} for states of shape "
                               f"{tuple(hidden_states.shape)}; it must return (batch, width) = {(batch, expected)}")
        if not out.is_floating_point():
            raise SeqpoolError(f"{who} returned {out.dtype} values; it must return floating point vectors")
        if not bool(torch.isfinite(out).all()):
            raise SeqpoolError(f"{who} returned NaN or infinity; it must return finite vectors "
                               f"(an empty text should pool to zeros)")
        return out

    checked.__doc__ = function.__doc__
    return checked


# -- sentence-transformers -----------------------------------------------------------------------
# The one table of sentence-transformers' pooling modes: the model reader, the export and the
# layout reader all read it here. Which mode a name stands for is a fact about sentence-transformers,
# so the tables come from the built-in records: a strategy registered over a built-in name changes
# what that name pools with (and it is no longer exportable, see st_names), not how a folder is read.

#: sentence-transformers' pooling modes in the order its Pooling module concatenates them
#: (``Pooling.POOLING_MODES``); a legacy config's boolean flags are read into modes in this order.
_ST_MODE_ORDER = ("cls", "max", "mean", "mean_sqrt_len_tokens", "weightedmean", "lasttoken")


def _st_records() -> list[StrategySpec]:
    return [spec for spec in _BUILTINS.values() if spec.st_mode and spec.st_flag]


def st_pooling_flags() -> dict[str, str]:
    """sentence-transformers boolean flag -> strategy, in the order its Pooling configs list the flags
    (the order seqpool writes them in)."""
    return {s.st_flag: s.name for s in sorted(_st_records(), key=lambda s: _ST_FLAG_ORDER.index(s.st_flag))}


def st_pooling_modes() -> dict[str, str]:
    """sentence-transformers ``pooling_mode`` string -> strategy, in the order sentence-transformers
    concatenates several modes."""
    return {s.st_mode: s.name for s in sorted(_st_records(), key=lambda s: _ST_MODE_ORDER.index(s.st_mode))}


def st_flag_modes() -> dict[str, str]:
    """sentence-transformers boolean flag -> its ``pooling_mode`` string, in the order
    sentence-transformers reads a legacy config's flags (and so concatenates what they switch on)."""
    return {s.st_flag: s.st_mode for s in sorted(_st_records(), key=lambda s: _ST_MODE_ORDER.index(s.st_mode))}


def strategy_for_st_mode(mode: str) -> str | None:
    """The strategy of a sentence-transformers ``pooling_mode`` string, or None."""
    return st_pooling_modes().get(mode)


def st_names() -> Mapping[str, StrategySpec]:
    """The strategies sentence-transformers can express, by name."""
    return {s.name: s for s in _known().values() if s.st_flag}
