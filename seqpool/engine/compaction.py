"""Compact vectors (:mod:`seqpool.quantize`) as both engines store them.

One :class:`~seqpool.quantize.Compaction` per run. Its int8/uint8 ranges are fitted once -- on
the ``calibration`` file's texts, else on the first vectors the run makes -- and kept in the
run's checkpoint or manifest, so every chunk, every shard and every resumed run quantises with
the same buckets; a resumed run takes the recorded ranges as they are.
"""

from __future__ import annotations

import json
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from seqpool.quantize import METADATA_KEY, Compaction


def run_compaction(recorded: Mapping[str, Any] | None, precision: str) -> Compaction:
    """The compaction a checkpoint's state or a manifest recorded, else a new one in ``precision``."""
    if recorded is not None and METADATA_KEY in recorded:
        return Compaction.from_metadata(recorded)
    return Compaction(precision)


def fit_ranges(compaction: Compaction, vectors: Mapping[str, np.ndarray]) -> None:
    """Fit each strategy's ranges on ``vectors`` (those already fitted are kept)."""
    for name, array in vectors.items():
        compaction.fit(name, array)


def fit_on_calibration(compaction: Compaction, calibration: str | None,
                       embed: Callable[[Sequence[str]], Mapping[str, np.ndarray]]) -> bool:
    """Fit the ranges on the texts of the ``calibration`` file, embedded by ``embed``, unless there
    is no file, or the precision has no ranges, or they were fitted already; whether it fitted."""
    from seqpool.io.readers import calibration_source

    if calibration is None or not compaction.needs_ranges or compaction.ranges:
        return False
    fit_ranges(compaction, embed(list(calibration_source(calibration).texts())))
    return True


def stored_rows(compaction: Compaction, vectors: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The columns a run stores: each strategy's vectors as the compaction's codes (float32 as
    they come without one), ranges fitted on first use."""
    return {name: compaction.encode(name, array) for name, array in vectors.items()}


def compaction_metadata(compaction: Compaction) -> dict[str, str]:
    """The local output's compaction metadata (what ``load_embeddings`` decodes with); none for float32."""
    return {} if compaction.is_identity else compaction.to_metadata()


def manifest_record(compaction: Compaction) -> dict[str, Any]:
    """The Ray manifest's ``compaction`` object (what ``Compaction.from_metadata`` reads back); none for float32."""
    return {} if compaction.is_identity else {METADATA_KEY: json.loads(compaction.to_metadata()[METADATA_KEY])}
