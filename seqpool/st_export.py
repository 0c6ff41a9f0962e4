"""Hand a parameter-free strategy chosen with seqpool to sentence-transformers, and read it back.

sentence-transformers describes a model as a folder: the Hugging Face model at the root,
``modules.json`` listing the modules, ``1_Pooling/config.json`` naming the pooling mode and,
optionally, a ``Normalize`` module. Writing that layout lets anyone load what seqpool chose
with ``SentenceTransformer(path)``; reading it lets seqpool start from any such model.

The pooling config is written in the boolean-flag format (``pooling_mode_mean_tokens`` ...)
that every sentence-transformers release reads; reading goes through the model reader
(:func:`seqpool.model_reader.read_folder`), which accepts the newer ``pooling_mode`` string too.
"""

from __future__ import annotations

import copy
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from seqpool.batching import check_flag
from seqpool.errors import SeqpoolError
from seqpool.model_reader import read_folder
from seqpool.registry import st_names, st_pooling_flags
from seqpool.io.atomic import atomic_write_text, staging_folder

if TYPE_CHECKING:
    from seqpool.encoder import Encoder

POOLING_DIR = "1_Pooling"
NORMALIZE_DIR = "2_Normalize"
_ST_MODULE = "sentence_transformers.models."
#: the model reader's head layer kinds -> sentence-transformers module classes
_HEAD_CLASSES = {"dense": "Dense", "layer_norm": "LayerNorm", "normalize": "Normalize"}


@dataclass(frozen=True)
class SentenceTransformersLayout:
    """What a sentence-transformers folder says about pooling: enough to rebuild the embedding."""

    strategy: str
    normalize: bool
    max_length: int | None


def pooling_config(strategy: str, dim: int) -> dict[str, Any]:
    """The ``1_Pooling/config.json`` that makes sentence-transformers pool like ``strategy``."""
    spec = check_exportable(strategy)
    if dim < 1:
        raise SeqpoolError(f"embedding dimension must be at least 1, got {dim}")
    config: dict[str, Any] = {"word_embedding_dimension": int(dim)}
    config.update({flag: flag == spec.st_flag for flag in st_pooling_flags()})
    return config


def check_exportable(strategy: str) -> Any:
    """The registry record of ``strategy`` if sentence-transformers has a pooling mode for it."""
    exportable = st_names()
    if strategy not in exportable:
        raise SeqpoolError(f"unknown pooling strategy {strategy!r} for sentence-transformers (it has no such "
                           f"pooling mode); choose one of: {', '.join(exportable)}")
    return exportable[strategy]


def modules_config(normalize: bool, head: Sequence[tuple[str, str]] = ()) -> list[dict[str, Any]]:
    """The ``modules.json`` of a Transformer -> Pooling [-> head modules] [-> Normalize] stack;
    ``head``: ``(module class name, folder)`` pairs (``("Dense", "2_Dense")``)."""
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": _ST_MODULE + "Transformer"},
        {"idx": 1, "name": "1", "path": POOLING_DIR, "type": _ST_MODULE + "Pooling"},
    ]
    for kind, folder in head:
        modules.append({"idx": len(modules), "name": str(len(modules)), "path": folder, "type": _ST_MODULE + kind})
    if normalize:
        index = len(modules)
        modules.append({"idx": index, "name": str(index), "path": f"{index}_Normalize",
                        "type": _ST_MODULE + "Normalize"})
    return modules


def padding_ready_tokenizer(tokenizer: Any, pad_token_id: int) -> Any:
    """``tokenizer`` set to pad on the right with a pad token, as :class:`Encoder` pads; a copy if
    anything had to change (the caller's tokenizer is never modified).

    Libraries that pad with the tokenizer's own settings (``transformers`` pipelines,
    sentence-transformers) then see each real token at the position of the unpadded text.
    Decoders without a pad token (GPT-2) get the Encoder's choice, usually EOS: masked anyway.
    """
    if tokenizer.pad_token_id is not None and tokenizer.padding_side == "right":
        return tokenizer
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.padding_side = "right"
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.convert_ids_to_tokens(pad_token_id)
    return tokenizer


def _write_json(path: Path, value: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(value, indent=2) + "\n")


def write_sentence_transformers_layout(directory: str | os.PathLike, strategy: str, dim: int,
                                       normalize: bool = False, max_length: int | None = None,
                                       head: Sequence[tuple[str, Path]] = ()) -> Path:
    """Add the sentence-transformers files to a folder that already holds a HF model + tokenizer;
    ``head``: the model's modules after pooling, ``(class name, folder to copy)``, in order."""
    directory = Path(directory)
    config = pooling_config(strategy, dim)
    _write_json(directory / POOLING_DIR / "config.json", config)
    placed = []
    for index, (kind, source) in enumerate(head, start=2):
        folder = f"{index}_{kind}"
        if Path(source).is_dir():
            shutil.copytree(source, directory / folder)
        else:  # a Normalize module has no files of its own
            (directory / folder).mkdir(parents=True)
        placed.append((kind, folder))
    modules = modules_config(normalize, placed)
    if normalize:
        (directory / modules[-1]["path"]).mkdir(parents=True, exist_ok=True)
    if max_length is not None:
        _write_json(directory / "sentence_bert_config.json",
                    {"max_seq_length": int(max_length), "do_lower_case": False})
    _write_json(directory / "modules.json", modules)
    return directory


def export_sentence_transformers(encoder: "Encoder", directory: str | os.PathLike, strategy: str | None = None,
                                 normalize: bool | None = None) -> Path:
    """Save ``encoder``'s model, tokenizer and ``strategy`` as a sentence-transformers folder.

    The folder is built beside ``directory`` and renamed into place, so it is either complete
    or absent. ``strategy``/``normalize`` default to the encoder's. The model's own modules after
    pooling (Dense, LayerNorm) go with it wherever seqpool applies them (:meth:`Encoder.uses_head`),
    so sentence-transformers gives the vectors seqpool gives. Only the last layer can be exported:
    sentence-transformers pools the model's final hidden states.
    """
    strategy = encoder.default_strategy if strategy is None else strategy
    normalize = encoder.default_normalize if normalize is None else check_flag(normalize, "normalize")
    check_exportable(strategy)
    if tuple(encoder.layers) != (-1,):
        raise SeqpoolError(
            f"sentence-transformers pools the last layer only, but this encoder uses layer(s) "
            f"{list(encoder.layers)}; export an Encoder built with layer=-1")
    target = Path(directory)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise SeqpoolError(f"{target} already exists and is not an empty folder; choose a new path")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = staging_folder(target)
    try:
        encoder.model.save_pretrained(staging)
        padding_ready_tokenizer(encoder.tokenizer, encoder.pad_token_id).save_pretrained(staging)
        head = [(_HEAD_CLASSES[layer.kind], encoder.spec.path / layer.path) for layer in encoder.spec.head] \
            if encoder.uses_head(strategy) and encoder.spec is not None else []
        write_sentence_transformers_layout(staging, strategy, encoder.hidden_size, normalize, encoder.max_length, head)
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def read_sentence_transformers_layout(directory: str | os.PathLike) -> SentenceTransformersLayout:
    """The strategy, normalisation and max length a sentence-transformers folder specifies.

    A view of :func:`seqpool.model_reader.read_folder`, the one reader of model folders, so every
    module is read, or refused, as :class:`~seqpool.encoder.Encoder` reads it. Strict: a missing
    ``modules.json`` (a plain Hugging Face folder, which the Encoder mean-pools), no Pooling module,
    or a concatenation of several pooling modes (which seqpool represents as several strategies,
    not one vector) is an error.
    """
    root = Path(directory)
    if not (root / "modules.json").is_file():
        raise SeqpoolError(f"{root} is not a sentence-transformers folder: modules.json is missing")
    spec = read_folder(root)  # an unreadable modules.json is its one-line error
    if spec.pooling is None:
        raise SeqpoolError(f"{root / 'modules.json'} lists no Pooling module")
    strategies = spec.pooling.split("+")
    if len(strategies) != 1:
        raise SeqpoolError(
            f"{root} pools with {strategies}; seqpool reads a single mode (for several, "
            f"pass them as separate strategies to Encoder.encode)")
    return SentenceTransformersLayout(spec.pooling, spec.normalize, spec.max_length)
