"""seqpool as a Hugging Face ``pipeline``: one pooled vector per text.

>>> import seqpool.pipeline; from transformers import pipeline   # doctest: +SKIP
>>> embed = pipeline("seqpool", model=path, pooling="mean")       # doctest: +SKIP
>>> embed(["a fine film", "a dull one"], batch_size=8)            # doctest: +SKIP

Importing this module registers the ``"seqpool"`` task (:func:`register_pipeline`; plain
``import seqpool`` does not, because importing transformers' pipeline machinery takes
seconds). Passing ``pipeline_class=PoolingPipeline`` to ``pipeline("feature-extraction", ...)``
works without registration.

Tokenization, layer choice, prompts and the model's head are those of the :class:`seqpool.Encoder`
built from the pipeline's model and tokenizer (``Encoder(model, tokenizer=..., spec=...)``), so the
vectors are those of ``Encoder.encode`` for the same model and strategy. Batches are always
right-padded (decoders without a pad token pad with EOS); pooling reads the attention mask.

A saved :class:`~seqpool.classifier.PooledClassifier` given as ``pooling=`` pools the hidden layer
its config records (``evaluate --save-best`` of a ``mean@-2`` winner records layer -2), exactly as
``seqpool explain`` does (:class:`~seqpool.classifier.EncoderSettings`): given when the pipeline is
built, it sets the encoder's layer (and max length); a pipeline encoding another layer refuses it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import Tensor
from transformers import AutoModel, Pipeline

from seqpool.classifier import EncoderSettings, PooledClassifier
from seqpool.encoder import Encoder
from seqpool.model_reader import ModelSpec, read_model
from seqpool.batching import check_flag
from seqpool.errors import SeqpoolError
from seqpool.encode_plan import EncodePlan
from seqpool.pooling.pooler import Pooler
from seqpool.prompts import exclude_prompt, pool_excluding_prompt, resolve_prompt
from seqpool.registry import PARAMETER_FREE, find_strategy, strategy_names
from seqpool.serialization import read_config
from seqpool.st_export import padding_ready_tokenizer

#: The task name under which :func:`register_pipeline` registers :class:`PoolingPipeline`.
TASK = "seqpool"

PoolFn = Callable[[Tensor, Tensor], Tensor]
_MODEL_DEFAULT = object()  # preprocess: no prompt argument given, use the model's default prompt


def saved_pooling(directory: str | os.PathLike) -> PoolFn:
    """The pooling saved in ``directory`` by ``Pooler`` or ``PooledClassifier.save_pretrained``.

    A classifier's pooler was trained on standardised token states, so its function
    standardises first (the vector its linear head reads).
    """
    return _saved_pooling(directory)[0]


def _saved_pooling(directory: str | os.PathLike) -> tuple[PoolFn, EncoderSettings | None]:
    """:func:`saved_pooling` and, for a classifier, the encoder settings its config records."""
    kind = read_config(directory).get("seqpool_type")
    if kind == "Pooler":
        return _pooler_fn(Pooler.from_pretrained(directory)), None
    if kind == "PooledClassifier":
        classifier = PooledClassifier.from_pretrained(directory).eval()
        try:
            settings = classifier.encoder_settings
        except SeqpoolError as error:
            raise SeqpoolError(f"{directory}: {error}") from None
        return _checked(lambda hidden, mask: classifier.pooler(classifier.standardize(hidden, mask), mask),
                        classifier.dim, f"the classifier in {directory}"), settings
    raise SeqpoolError(f"{directory} holds a {kind or 'non-seqpool'!r} config; pass a folder saved by "
                       f"Pooler.save_pretrained or PooledClassifier.save_pretrained")


@dataclass(frozen=True)
class ResolvedPooling:
    """A ``pooling=`` argument made ready: the pool function of each name, whether several were
    asked for (results are then dicts), and what each saved classifier among them records of its
    encoder (the hidden layer its states came from, which the pipeline must encode)."""

    functions: dict[str, PoolFn]
    several: bool
    recorded: dict[str, EncoderSettings]

    def encoder_defaults(self) -> EncoderSettings:
        """The layer and max length to build the encoder with when the caller names none: the
        first ones the classifiers record (the others must agree on the layer, or are refused)."""
        layers = [s.layer for s in self.recorded.values() if s.layer is not None]
        lengths = [s.max_length for s in self.recorded.values() if s.max_length is not None]
        return EncoderSettings(layer=layers[0] if layers else None, max_length=lengths[0] if lengths else None)


def resolve_pooling(pooling: str | os.PathLike | Pooler | Sequence[Any]) -> tuple[dict[str, PoolFn], bool]:
    """``{name: pool function}`` for a strategy, a saved-pooler folder, a Pooler, or a list of them.

    The flag says whether the caller asked for several (then results are dicts).
    """
    resolved = _resolve_pooling(pooling)
    return resolved.functions, resolved.several


def _resolve_pooling(pooling: str | os.PathLike | Pooler | Sequence[Any]) -> ResolvedPooling:
    several = isinstance(pooling, (list, tuple))
    items = list(pooling) if several else [pooling]
    if not items:
        raise SeqpoolError("pooling= got an empty list; name at least one strategy")
    functions: dict[str, PoolFn] = {}
    recorded: dict[str, EncoderSettings] = {}
    for item in items:
        if isinstance(item, Pooler):
            functions[item.strategy] = _pooler_fn(item)
        elif isinstance(item, str) and _is_parameter_free(item):
            functions[item] = _strategy_fn(item)
        elif isinstance(item, (str, os.PathLike)) and Path(item).is_dir():
            functions[str(item)], settings = _saved_pooling(item)
            if settings is not None:
                recorded[str(item)] = settings
        else:
            names = ", ".join(strategy_names(PARAMETER_FREE, plugins=False))
            raise SeqpoolError(f"pooling={item!r} is neither a strategy ({names}) nor a "
                               f"folder saved by Pooler/PooledClassifier.save_pretrained")
    return ResolvedPooling(functions, several, recorded)


def _is_parameter_free(name: str) -> bool:
    spec = find_strategy(name)
    return spec is not None and spec.kind == PARAMETER_FREE


def _strategy_fn(strategy: str) -> PoolFn:
    return find_strategy(strategy).fn


def _pooler_fn(pooler: Pooler) -> PoolFn:
    return _checked(pooler.eval(), pooler.dim, f"the {pooler.strategy!r} pooler")


def _checked(function: PoolFn, dim: int | None, what: str) -> PoolFn:
    """``function`` without autograd, refusing states of another width than it was trained on."""
    def run(hidden: Tensor, mask: Tensor) -> Tensor:
        if dim is not None and dim != hidden.shape[-1]:
            raise SeqpoolError(f"{what} was trained on {dim}-dim states, but this model gives "
                               f"{hidden.shape[-1]}; use the model it was trained with")
        with torch.inference_mode():
            return function(hidden, mask)
    return run


class PoolingPipeline(Pipeline):
    """Texts in, one pooled float32 vector (numpy) per text out.

    Arguments (at construction or per call): ``pooling`` -- a strategy name, a list of names
    (each result is then a ``{name: vector}`` dict), a folder saved by ``Pooler`` /
    ``PooledClassifier.save_pretrained`` (its trained attention / SE pooler), or a ``Pooler``;
    default: the model's sentence-transformers pooling, else ``"mean"``. ``normalize`` -- L2
    normalise (default: the model's Normalize module). ``prompt`` / ``prompt_name`` /
    ``include_prompt`` -- instruction prompts, as in :meth:`seqpool.Encoder.encode` (default: the
    model's ``default_prompt_name`` and Pooling ``include_prompt``). Construction only: ``layer``
    (index or list of indices to average) and ``max_length``, as in :class:`seqpool.Encoder`; by
    default those a saved classifier given as ``pooling=`` records (else the last layer and the
    model's limit). A classifier trained on another layer than the pipeline encodes is refused.
    """

    _load_processor = False
    _load_image_processor = False
    _load_feature_extractor = False
    _load_tokenizer = True

    def __init__(self, *args: Any, layer: int | Sequence[int] | None = None, max_length: int | None = None,
                 **kwargs: Any):
        pooling = kwargs.pop("pooling", None)  # resolved here: a saved classifier in it decides the layer
        # prompt arguments need the encoder (its prompt names), which exists only after the base class
        prompting = {name: kwargs.pop(name) for name in ("prompt", "prompt_name", "include_prompt") if name in kwargs}
        super().__init__(*args, **kwargs)
        if self.tokenizer is None:
            raise SeqpoolError("the seqpool pipeline needs a tokenizer; pass tokenizer= or a model folder with one")
        resolved = None if pooling is None else _resolve_pooling(pooling)
        defaults = EncoderSettings() if resolved is None else resolved.encoder_defaults()
        chosen_layer, chosen_max_length = defaults.choose(layer, max_length)  # explain's choice
        model = self.model.get_encoder() if getattr(self.model.config, "is_encoder_decoder", False) else self.model
        model_dtype = model.dtype if model.dtype in (torch.float32, torch.bfloat16) else None
        self.encoder = Encoder(model, tokenizer=self.tokenizer, layer=chosen_layer, max_length=chosen_max_length,
                               dtype=model_dtype, device=self.device, spec=_model_spec(self.model))
        self.tokenizer = padding_ready_tokenizer(self.tokenizer, self.encoder.pad_token_id)
        if resolved is not None:
            if layer is not None:
                self._check_recorded_layers(resolved, "build the pipeline with layer={} or without layer= (it then "
                                                      "encodes the classifier's layer)")
            else:
                self._check_recorded_layers(resolved, "the classifiers in pooling= were trained on different "
                                                      "layers and a pipeline encodes one; build one pipeline per "
                                                      "layer (layer={} for this one)")
            self._postprocess_params["pooling"] = resolved
        if prompting:
            preprocess, _, postprocess = self._sanitize_parameters(**prompting)
            self._preprocess_params.update(preprocess)
            self._postprocess_params.update(postprocess)

    def _check_recorded_layers(self, pooling: ResolvedPooling, fix: str) -> None:
        """Refuse a saved classifier trained on other hidden layers than this pipeline encodes: its head
        would read states it never saw and predict silently wrong. ``fix`` gets the layer to name."""
        for name, settings in pooling.recorded.items():
            mismatch = settings.layer_mismatch(self.encoder)
            if mismatch is not None:
                raise SeqpoolError(f"pooling={name!r}: {mismatch}; {fix.format(settings.layer_argument)}",
                                   parameters=("layer", "pooling"))

    def _sanitize_parameters(self, pooling: Any = None, normalize: bool | None = None, prompt: str | None = None,
                             prompt_name: str | None = None, include_prompt: bool | None = None,
                             **unexpected: Any) -> tuple[dict, dict, dict]:
        if unexpected:
            raise SeqpoolError(f"unexpected pipeline argument(s) {sorted(unexpected)}; the seqpool pipeline "
                               f"takes pooling=, normalize=, prompt=, prompt_name=, include_prompt=, batch_size= "
                               f"(and layer=, max_length= when built)")
        preprocess: dict[str, Any] = {}
        if prompt is not None or prompt_name is not None:
            preprocess["prompt"] = resolve_prompt(prompt, prompt_name, self.encoder.prompts)
        postprocess: dict[str, Any] = {}
        if include_prompt is not None:
            postprocess["include_prompt"] = check_flag(include_prompt, "include_prompt")
        if pooling is not None:  # at construction, __init__ resolves pooling= itself
            postprocess["pooling"] = _resolve_pooling(pooling)
            self._check_recorded_layers(postprocess["pooling"], "build the pipeline with layer={}, or pass this "
                                                                "pooling= when building it")
        if normalize is not None:
            postprocess["normalize"] = check_flag(normalize, "normalize")
        return preprocess, {}, postprocess

    def __call__(self, inputs: Any, *args: Any, num_workers: int | None = None, batch_size: int | None = None,
                 **kwargs: Any) -> Any:
        """Embed a string (one result) or a list of strings (a list of results; ``[]`` for ``[]``,
        where transformers' own batching would fail)."""
        if isinstance(inputs, (list, tuple)) and not inputs:
            self._sanitize_parameters(**kwargs)  # a bad argument is still an error on an empty list
            return []
        return super().__call__(inputs, *args, num_workers=num_workers, batch_size=batch_size, **kwargs)

    def preprocess(self, text: str, prompt: Any = _MODEL_DEFAULT) -> dict[str, Tensor]:
        if not isinstance(text, str):
            raise SeqpoolError(f"the seqpool pipeline embeds strings, got {type(text).__name__}")
        if prompt is _MODEL_DEFAULT:
            prompt = resolve_prompt(None, None, self.encoder.prompts, self.encoder.default_prompt_name)
        plan = EncodePlan(self.encoder.text_pieces([text], prompt), *self.encoder.special_tokens,
                          self.encoder.max_length)  # exactly Encoder.encode's tokens
        inputs = self.encoder.collate(plan.inputs)
        inputs["prompt_length"] = torch.tensor([self.encoder.prompt_length(prompt) if prompt else 0])
        return inputs

    def _forward(self, model_inputs: dict[str, Tensor]) -> dict[str, Tensor]:
        hidden, mask = self.encoder.forward_batch(model_inputs)
        return {"hidden_states": hidden, "attention_mask": mask, "prompt_length": model_inputs["prompt_length"]}

    def postprocess(self, model_outputs: dict[str, Tensor], pooling: ResolvedPooling | None = None,
                    normalize: bool | None = None, include_prompt: bool | None = None) -> np.ndarray | dict[str, np.ndarray]:
        functions, several = resolve_pooling(self.encoder.default_strategy) if pooling is None else \
            (pooling.functions, pooling.several)
        normalize = self.encoder.default_normalize if normalize is None else normalize
        hidden, mask = model_outputs["hidden_states"], model_outputs["attention_mask"]
        include = self.encoder.include_prompt if include_prompt is None else include_prompt
        exclude = 0 if include else int(model_outputs["prompt_length"][0])
        vectors = {}
        for name, function in functions.items():
            if exclude and find_strategy(name) is not None and find_strategy(name).kind == PARAMETER_FREE:
                pooled = pool_excluding_prompt(hidden, mask, exclude, [name])[name].float()  # as Encoder.encode
            else:
                pooled = function(hidden, exclude_prompt(mask, exclude) if exclude else mask).float()
            if find_strategy(name) is not None and self.encoder.uses_head(name, pooled.shape[-1]):
                pooled = self.encoder.head(pooled)  # the model's Dense / LayerNorm modules, as Encoder.encode
            if normalize:
                pooled = torch.nn.functional.normalize(pooled, dim=-1)
            vectors[name] = pooled[0].numpy()
        return vectors if several else next(iter(vectors.values()))


def _model_spec(model: Any) -> ModelSpec | None:
    """The module stack of the folder or Hub id the pipeline's model came from (``None``: built in memory)."""
    name = str(getattr(model, "name_or_path", "") or "")
    if not name:
        return None
    return read_model(name)


def register_pipeline(task: str = TASK) -> None:
    """Make ``transformers.pipeline(task, model=...)`` build a :class:`PoolingPipeline`.

    Cheap (a dict entry, no model loaded) and idempotent; ``import seqpool.pipeline`` calls it
    (plain ``import seqpool`` does not: it imports no transformers).
    """
    from transformers.pipelines import PIPELINE_REGISTRY

    current = PIPELINE_REGISTRY.supported_tasks.get(task)
    if current is not None and current.get("impl") is PoolingPipeline:
        return
    PIPELINE_REGISTRY.register_pipeline(task, pipeline_class=PoolingPipeline, pt_model=AutoModel, type="text")


# Importing this module (``import seqpool.pipeline``) is the opt-in: it costs the import of
# transformers' pipeline machinery (seconds), so plain ``import seqpool`` does not do it.
register_pipeline()
