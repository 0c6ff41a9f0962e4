"""Reading corpora and writing embeddings; nothing here runs a model.

* :mod:`seqpool.io.readers`: one streaming reader per input format (:class:`TextSource`).
* :mod:`seqpool.io.writers`: output formats, the resumable spool.
* :mod:`seqpool.io.loading`: :func:`load_embeddings`, which verifies what it reads back.
* :mod:`seqpool.io.formats`: output formats by extension, npy names, sidecars (both sides' rules).
* :mod:`seqpool.io.atomic`: :func:`atomic_path`, the one atomic write every writer uses.
* :mod:`seqpool.io.digest`: :class:`TextDigest` / :func:`text_digest`, the one text digest.
* :mod:`seqpool.io.safetensors_header`: a safetensors file's header, checked, without its data.

Importing this package loads numpy but never torch.
"""

from seqpool.io.atomic import atomic_path, atomic_replace, atomic_write_text, check_writable, resolve_output
from seqpool.io.digest import TextDigest, text_digest
from seqpool.io.loading import load_embeddings
from seqpool.io.readers import (
    DEFAULT_CHUNK_SIZE,
    INPUT_FORMATS,
    STDIN,
    FieldError,
    Record,
    TextSource,
    chunked,
    detect_input_format,
    is_stream,
)
from seqpool.io.writers import (
    OUTPUT_FORMATS,
    EmbeddingSpool,
    check_output_writable,
    default_output_path,
    detect_output_format,
    output_paths,
    write_jsonl,
    write_parquet,
    write_safetensors,
)

__all__ = [
    "DEFAULT_CHUNK_SIZE", "FieldError", "INPUT_FORMATS", "OUTPUT_FORMATS", "STDIN", "EmbeddingSpool", "Record", "TextDigest",
    "TextSource", "atomic_path", "atomic_replace", "atomic_write_text", "check_output_writable", "check_writable", "chunked",
    "default_output_path", "detect_input_format", "detect_output_format", "is_stream", "load_embeddings",
    "output_paths", "resolve_output", "text_digest", "write_jsonl", "write_parquet", "write_safetensors",
]
