"""The engine core: what both ways of embedding a corpus do alike, in one place.

The local loop (:mod:`seqpool.embed`: chunks, checkpoints, a lock) and the Ray Data engine
(:mod:`seqpool.distributed`: shards, actors, a manifest) differ in how they read, schedule and
write; what they do to the texts is this package's:

* :class:`Embedder` (:mod:`.embedder`): the one unit both call -- texts in, one float32 array
  per strategy out, with the call's statistics (:class:`EmbeddedBatch`).
* :class:`RunSettings` (:mod:`.settings`): the run's resolved settings, written to the local
  checkpoint and metadata or the Ray manifest; :func:`gather_options` builds option records
  from a call's keywords.
* :mod:`.compaction`: the run's compact-vector codec, its ranges fitted once.

Importing it loads neither torch nor Ray.
"""

from seqpool.engine.compaction import (
    compaction_metadata,
    fit_on_calibration,
    fit_ranges,
    manifest_record,
    run_compaction,
    stored_rows,
)
from seqpool.engine.embedder import EmbeddedBatch, Embedder, truncated_rows
from seqpool.engine.settings import RunSettings, gather_options

__all__ = ["EmbeddedBatch", "Embedder", "RunSettings", "compaction_metadata", "fit_on_calibration", "fit_ranges",
           "gather_options", "manifest_record", "run_compaction", "stored_rows", "truncated_rows"]
