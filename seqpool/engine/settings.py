"""The run-settings record both engines write, and option records gathered from a call's keywords.

:class:`RunSettings` is what a run's vectors depend on -- model, strategies, normalisation,
layers, length, precision, widths, each strategy's pipeline, the vector options -- resolved
against the loaded model, in one record. Each engine writes it in its own file, in the keys and
values earlier versions wrote (a resume compares every key, so changing one would refuse to
resume an older run): the local engine's checkpoint and output metadata, the Ray engine's manifest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields, replace
from typing import Any, Mapping, Sequence

from seqpool.vector_options import VectorOptions


@dataclass(frozen=True)
class RunSettings:
    """One run's resolved settings (see :meth:`resolve`); ``widths``: each strategy's vector width
    before any compaction, ``pipelines``: the steps its vectors go through."""

    model: str
    strategies: tuple[str, ...]
    normalize: bool
    layers: tuple[int, ...]
    max_length: int
    dtype: str
    widths: dict[str, int]
    pipelines: dict[str, str]
    options: VectorOptions = VectorOptions()
    batch_size: int | None = None

    @classmethod
    def resolve(cls, encoder: Any, strategies: Sequence[str], normalize: bool, options: VectorOptions,
                batch_size: int | None = None) -> RunSettings:
        """The record of ``encoder`` run with these settings; checks that the strategies' layers
        exist in the model, before anything is written."""
        encoder.layer_plan(strategies)
        strategies = tuple(strategies)
        return cls(model=encoder.name_or_path, strategies=strategies, normalize=normalize,
                   layers=tuple(encoder.layers), max_length=encoder.max_length, dtype=encoder.precision,
                   widths={s: options.truncate_dim or encoder.output_dim(s) for s in strategies},  # the head included
                   pipelines={s: encoder.pipeline(s, normalize) for s in strategies}, options=options,
                   batch_size=batch_size)

    def checkpoint(self, *, skip_empty: bool, chunk_size: int, input_format: str,
                   text_field: str | None) -> dict[str, Any]:
        """The local engine's settings, as its checkpoints (``OUTPUT.partial/progress.json``) hold them."""
        settings = {"model": self.model, "layers": list(self.layers), "max_length": self.max_length,
                    "dtype": self.dtype, "normalize": self.normalize, "skip_empty": skip_empty,
                    "batch_size": self.batch_size, "chunk_size": chunk_size, "input_format": input_format,
                    "text_field": text_field, "pipeline": dict(self.pipelines)}
        if self.options != VectorOptions():
            settings["vectors"] = {key: value for key, value in vars(self.options).items() if value is not None}
        return settings

    def metadata(self, *, texts: int, truncated: int) -> dict[str, str]:
        """The local engine's output metadata (in a parquet / safetensors file, beside an npy /
        jsonl one), less the compaction's (:func:`seqpool.engine.compaction.compaction_metadata`)."""
        metadata = {"model": self.model, "strategies": ",".join(self.strategies), "normalize": str(self.normalize),
                    "layers": ",".join(map(str, self.layers)), "max_length": str(self.max_length),
                    "dtype": self.dtype, "texts": str(texts), "truncated": str(truncated),
                    "pipeline": "; ".join(f"{s}: {p}" for s, p in self.pipelines.items()),
                    "dims": json.dumps(self.widths)}
        if self.options != VectorOptions():
            metadata.update({key: str(value) for key, value in vars(self.options).items()
                             if value is not None and key != "calibration"})
        return metadata

    def described(self) -> dict[str, Any]:
        """What :meth:`Embedder.describe` reports and the Ray manifest's settings begin with:
        ``vectors`` holds the encoding options that differ from their defaults, then a
        ``precision`` other than float32 and the ``calibration`` file, and is left out when empty."""
        settings = {"model": self.model, "strategies": list(self.strategies), "normalize": self.normalize,
                    "layers": list(self.layers), "max_length": self.max_length, "dtype": self.dtype,
                    "dims": dict(self.widths), "pipeline": dict(self.pipelines)}
        defaults = VectorOptions().encode_kwargs()
        vectors = {key: value for key, value in self.options.encode_kwargs().items() if value != defaults[key]}
        if self.options.precision != "float32":
            vectors["precision"] = self.options.precision
        if self.options.calibration is not None:
            vectors["calibration"] = self.options.calibration
        return {**settings, **({"vectors": vectors} if vectors else {})}

    def manifest(self, shard_rows: int) -> dict[str, Any]:
        """The Ray engine's settings, as its manifest (``_manifest.json``) holds them."""
        return {**self.described(), "batch_size": self.batch_size, "shard_rows": shard_rows}


def gather_options(function: str, keywords: Mapping[str, Any], *records: tuple[type, Any]) -> list[Any]:
    """Option records for a call that also takes their fields as keywords: each ``(class, record
    given or None)`` of ``records`` with the keywords naming its fields applied (and checked, as
    on construction). A keyword that names no field is a TypeError, as for any function."""
    left = dict(keywords)
    gathered = []
    for kind, given in records:
        if given is not None and not isinstance(given, kind):
            raise TypeError(f"{function}() expects a {kind.__name__}, got {type(given).__name__}")
        names = {field.name for field in fields(kind)}
        mine = {name: left.pop(name) for name in list(left) if name in names}
        gathered.append(kind(**mine) if given is None else replace(given, **mine) if mine else given)
    if left:
        raise TypeError(f"{function}() got an unexpected keyword argument {next(iter(left))!r}")
    return gathered
