"""Embedding past one machine: the Ray Data engine, around the engine core's :class:`Embedder`.

* :class:`Embedder` (:mod:`seqpool.engine.embedder`, re-exported here): the unit every engine
  calls, the local loop included; this package adds only what Ray needs around it.
* :func:`embed_dataset` (:mod:`.dataset`): an actor pool of Embedders over a Ray Dataset.
* :func:`embed_files` (:mod:`.files`; inputs expanded and scanned by :mod:`.inputs`):
  ``seqpool embed INPUT... --engine ray``, row-exact and resumable, into a folder of parquet
  shards (:mod:`seqpool.io.shards`) that :func:`load_folder` reads.

Importing this package loads neither Ray nor torch; Ray is imported when a Ray function runs.
"""

from seqpool.distributed.dataset import RAY_EXTRA, RayOptions, embed_dataset, import_ray
from seqpool.distributed.files import FilesResult, embed_files
from seqpool.distributed.inputs import expand_inputs
from seqpool.engine.embedder import Embedder
from seqpool.io.shards import DEFAULT_SHARD_ROWS, MANIFEST, load_folder

__all__ = ["DEFAULT_SHARD_ROWS", "MANIFEST", "RAY_EXTRA", "Embedder", "FilesResult", "RayOptions", "embed_dataset",
           "embed_files", "expand_inputs", "import_ray", "load_folder"]
