"""Settings a sentence-transformers model folder carries, read leniently.

``Encoder`` and the pipeline take their defaults from here: pooling strategy, Normalize,
``max_seq_length``, instruction ``prompts`` / ``default_prompt_name``
(``config_sentence_transformers.json``) and the Pooling module's ``include_prompt``.
Missing or malformed files simply give no default, so a plain HF model folder works too
(:func:`seqpool.st_export.read_sentence_transformers_layout` is the strict reader).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Mapping

from seqpool.registry import st_pooling_flags, st_pooling_modes


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def strategy_from_st_pooling_config(config: Mapping[str, Any]) -> str | None:
    """The seqpool strategy named by a sentence-transformers ``1_Pooling/config.json``.

    Reads both the newer ``pooling_mode`` string and the older boolean flags.
    """
    mode = config.get("pooling_mode")
    if isinstance(mode, str):
        return st_pooling_modes().get(mode)
    for flag, strategy in st_pooling_flags().items():
        if config.get(flag):
            return strategy
    return None


def sentence_transformers_defaults(model_dir: str | os.PathLike) -> dict[str, Any]:
    """Defaults of a sentence-transformers directory: ``strategy``, ``normalize``, ``max_length``,
    ``prompts``, ``default_prompt_name`` and ``include_prompt``."""
    root = Path(model_dir)
    defaults: dict[str, Any] = {"strategy": None, "normalize": False, "max_length": None, "prompts": {},
                                "default_prompt_name": None, "include_prompt": True}
    modules = _read_json(root / "modules.json")
    pooling_dir = "1_Pooling"
    if isinstance(modules, list) and modules:
        types = [str(module.get("type", "")) for module in modules if isinstance(module, dict)]
        defaults["normalize"] = bool(types) and types[-1].endswith("Normalize")
        pooling_dir = next((m.get("path", "") for m in modules if isinstance(m, dict)
                            and str(m.get("type", "")).endswith("Pooling")), pooling_dir)
    pooling = _read_json(root / pooling_dir / "config.json")
    if isinstance(pooling, dict):
        defaults["strategy"] = strategy_from_st_pooling_config(pooling)
        if isinstance(pooling.get("include_prompt"), bool):
            defaults["include_prompt"] = pooling["include_prompt"]
    st_config = _read_json(root / "sentence_bert_config.json")
    if isinstance(st_config, dict) and isinstance(st_config.get("max_seq_length"), int):
        defaults["max_length"] = st_config["max_seq_length"]
    config = _read_json(root / "config_sentence_transformers.json")
    if isinstance(config, dict):
        if isinstance(config.get("prompts"), dict):
            defaults["prompts"] = {str(k): v for k, v in config["prompts"].items() if isinstance(v, str)}
        if isinstance(config.get("default_prompt_name"), str):
            defaults["default_prompt_name"] = config["default_prompt_name"]
    return defaults
