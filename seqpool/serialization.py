"""Save and load modules as ``config.json`` + ``model.safetensors`` (never pickle).

Shared by every seqpool module with parameters, so all of them round-trip the same way
and a directory can be inspected with a text editor and ``safetensors`` alone.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save

from seqpool.errors import SeqpoolError
from seqpool.io.atomic import atomic_path, atomic_write_text  # noqa: F401  (atomic_write_text: old import path)
from seqpool.io.ownership import input_paths  # noqa: F401  (its old import path)
from seqpool.io.safetensors_header import safetensors_header

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"

_M = TypeVar("_M", bound=torch.nn.Module)


def save_module(module: torch.nn.Module, config: dict[str, Any], directory: str | os.PathLike) -> Path:
    """Write ``config`` and the module's state dict into ``directory`` (created if needed)."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {name: tensor.detach().contiguous().cpu() for name, tensor in module.state_dict().items()}
    with atomic_path(directory / WEIGHTS_NAME, mode="wb") as handle:
        handle.write(save(state, metadata={"format": "pt", "library": "seqpool"}))
    atomic_write_text(directory / CONFIG_NAME, json.dumps(config, indent=2, sort_keys=True) + "\n")
    return directory


def read_config(directory: str | os.PathLike) -> dict[str, Any]:
    """The ``config.json`` of a saved module, with a clear error if it is not one."""
    path = Path(directory) / CONFIG_NAME
    if not path.is_file():
        raise SeqpoolError(f"{directory} is not a saved seqpool module: {CONFIG_NAME} is missing")
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise SeqpoolError(f"{path} is not valid JSON: {error}") from None
    if not isinstance(config, dict):
        raise SeqpoolError(f"{path} must hold a JSON object, got {type(config).__name__}")
    return config


def load_state(module: torch.nn.Module, directory: str | os.PathLike) -> torch.nn.Module:
    """Load ``model.safetensors`` into ``module`` strictly (every name and shape must match).

    Checked before loading, so a mismatch is a SeqpoolError and leaves ``module`` untouched.
    """
    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise SeqpoolError(f"{directory} is not a saved seqpool module: {WEIGHTS_NAME} is missing")
    try:
        state = load_file(str(path))
    except SafetensorError as error:
        raise SeqpoolError(f"{path} is not a readable safetensors file ({error}); save the module again") from None
    _check_shapes(path, {name: tuple(t.shape) for name, t in state.items()},
                  {name: tuple(t.shape) for name, t in module.state_dict().items()})
    module.load_state_dict(state)
    return module


def build_checked(build: Callable[[], _M], directory: str | os.PathLike) -> _M:
    """``build()`` once its parameter shapes match the saved weights' safetensors header.

    A config is only a claim: ``dim`` 10**9 would make torch allocate gigabytes before
    :func:`load_state` could see that the weights disagree. So the module is first built on the
    ``meta`` device (shapes only, no memory, no data), its state dict compared with the header
    of ``model.safetensors`` (read without the data), and only a match is built for real.
    """
    path = Path(directory) / WEIGHTS_NAME
    if not path.is_file():
        raise SeqpoolError(f"{directory} is not a saved seqpool module: {WEIGHTS_NAME} is missing")
    header = safetensors_header(path)
    saved = {name: tuple(entry.get("shape", ())) for name, entry in header.items() if isinstance(entry, dict)}
    with torch.device("meta"):
        skeleton = build()
    _check_shapes(path, saved, {name: tuple(t.shape) for name, t in skeleton.state_dict().items()})
    return build()


def _check_shapes(path: Path, saved: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]) -> None:
    """One SeqpoolError listing every name missing, unexpected or of another shape in ``path``."""
    missing, unexpected = sorted(expected.keys() - saved.keys()), sorted(saved.keys() - expected.keys())
    reshaped = sorted(f"{name} {saved[name]} vs {expected[name]}" for name in expected.keys() & saved.keys()
                      if saved[name] != expected[name])
    found = (("missing", missing), ("unexpected", unexpected), ("wrong shape (saved vs config)", reshaped))
    problems = [f"{label} {names}" for label, names in found if names]
    if problems:
        raise SeqpoolError(f"{path} does not match its config.json: {'; '.join(problems)}")


def load_configured(cls: type[_M], directory: str | os.PathLike) -> _M:
    """Rebuild a module saved with a config of ``{"seqpool_type": cls.__name__, **constructor kwargs}``.

    For modules whose config *is* their constructor's keywords (GeMPooling, ScalarMix, ...):
    checks the type, builds, loads the weights strictly and returns it in eval mode, like
    Hugging Face's ``from_pretrained``.
    """
    config = read_config(directory)
    if config.get("seqpool_type") != cls.__name__:
        raise SeqpoolError(
            f"{directory} holds a {config.get('seqpool_type', 'non-seqpool')!r} config, not a {cls.__name__}"
        )
    kwargs = {key: value for key, value in config.items() if key not in ("seqpool_type", "seqpool_version")}
    try:
        module = build_checked(lambda: cls(**kwargs), directory)
    except TypeError as error:
        raise SeqpoolError(f"{Path(directory) / CONFIG_NAME} does not fit {cls.__name__}: {error}") from None
    return load_state(module, directory).eval()


REQUIRED: Any = object()  # marks a config field that has no default
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true/false", list: "a list",
               dict: "an object"}


def config_fields(config: dict[str, Any], fields: dict[str, tuple[type, Any]],
                  directory: str | os.PathLike, prefix: str = "") -> dict[str, Any]:
    """The typed fields of a saved module's config, checked strictly before anything is built.

    ``fields`` maps each key to ``(type, default)``; ``default`` is :data:`REQUIRED` when the
    key must be present. A missing key or a value of the wrong type is one SeqpoolError naming
    the key and the file (JSON numbers: an int is accepted as a float, a bool never as a number).
    ``prefix`` names a nested object in messages (``"training."``).
    """
    path = Path(directory) / CONFIG_NAME
    values = {}
    for key, (kind, default) in fields.items():
        if key not in config:
            if default is REQUIRED:
                raise SeqpoolError(f"{path} lacks the key {prefix + key!r}; save the module again")
            values[key] = default
            continue
        value = config[key]
        accepted = (int, float) if kind is float else (kind,)
        if isinstance(value, bool) and kind is not bool or not isinstance(value, accepted):
            raise SeqpoolError(f"{path}: {prefix + key!r} must be {_TYPE_NAMES.get(kind, kind.__name__)}, "
                               f"got {json.dumps(value)}; save the module again")
        values[key] = float(value) if kind is float else value
    return values
