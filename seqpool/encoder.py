"""Load a Hugging Face encoder and turn texts into token states, fast, in one pass.

The encoder step yields ``(indices, hidden_states, attention_mask)`` batches; pooling
happens after, so every strategy is fed by the same forward pass. CPU cost is dominated
by padding waste, so texts are tokenized once, sorted by *token* length and packed into
batches under a token budget; results are scattered back to input order.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

from seqpool.devices import DEVICE_TYPES, native_bf16_cpu, resolve_device, resolve_dtype  # noqa: F401 (public here)
from seqpool.batching import (  # noqa: F401  (re-exported: seqpool.encoder.pack_batches and friends)
    DEFAULT_BATCH_SIZE,
    DEFAULT_TOKEN_BUDGET,
    check_texts,
    pack_batches,
)
from seqpool.batching import check_flag
from seqpool.batching import positive as _positive
from seqpool.encode_plan import EncodeStats, TextPieces, Vectors, encode_texts
from seqpool.errors import SeqpoolError
from seqpool.layer_plan import LayerKey, LayerPlan, average_layers, plan_layers
from seqpool.local import SEGMENT_REDUCTIONS, segment_pool, word_segment_ids
from seqpool.pooling import check_strategy
from seqpool.progress import progress_bar
from seqpool.prompts import prompt_length
from seqpool.model_loading import load_parts, max_length_limit, special_token_ids, wrap_parts
from seqpool.model_reader import ModelSpec, default_model_path  # noqa: F401 (default_model_path public here)
from seqpool.states import Batch, TokenStates
from seqpool.threads import available_cpus, limited_threads, ordered_map  # noqa: F401 (ordered_map public here)
from seqpool.vector_options import LongTextOptions


#: Weights larger than this many values are fingerprinted by an evenly strided sample.
_FINGERPRINT_VALUES = 1 << 20


class Encoder:
    """A Hugging Face model + tokenizer that yields token states and pooled embeddings.

    ``model``: a Hub id or local folder (``None``: the packaged all-MiniLM-L6-v2, offline), read
    with its whole sentence-transformers module stack; or a model object already built (a
    ``PreTrainedModel``) with its ``tokenizer=`` and, optionally, the ``spec=`` of the folder it came
    from (:func:`seqpool.model_reader.read_model`). ``layer`` is an index into the model's hidden
    states (``-1`` = last, ``0`` = embeddings) or a sequence of indices to average
    (e.g. ``(-4, -3, -2, -1)`` for the last four layers).

    The model's defaults come from its module stack and can be passed instead:
    ``default_strategy`` (its Pooling, else ``mean``), ``default_normalize`` (its Normalize
    module), ``prompts`` / ``default_prompt_name`` (config_sentence_transformers.json) and
    ``include_prompt`` (its Pooling config, else ``True``). They are settled here, once.

    Texts are always padded on the right: positions and causal attention of the real
    tokens are then exactly those of the unpadded text, for encoders and decoders alike
    (a decoder's left-padding setting is therefore ignored); pooling reads the mask.

    On CPU, ``workers`` batches (default: ``OMP_NUM_THREADS`` if set, else the CPUs this
    process may use; never torch's global thread setting) run at once, each on one
    thread, instead of one batch split over every thread: no per-operation thread
    synchronisation, which is faster on an idle machine and many times faster on a busy
    one. torch's thread count is 1 while batches run and restored after
    (:func:`seqpool.threads.limited_threads`). On a GPU one batch runs at a time.

    ``device`` is checked (:func:`resolve_device`) before anything is loaded. ``dtype``: ``fp32``,
    ``bf16`` or ``int8`` (CPU, a model loaded by name); ``None`` runs a loaded model in its stored
    dtype and a model object in float32.
    """

    def __init__(self, model: str | os.PathLike | torch.nn.Module | None = None,
                 device: str | torch.device | None = None, dtype: Any = None, max_length: int | None = None,
                 layer: int | Sequence[int] = -1, trust_remote_code: bool = False, workers: int | None = None, *,
                 tokenizer: Any = None, spec: ModelSpec | None = None, default_strategy: str | None = None,
                 default_normalize: bool | None = None, prompts: Mapping[str, str] | None = None,
                 default_prompt_name: str | None = None, include_prompt: bool | None = None):
        self.device = resolve_device(device)  # first: a bad device must not cost a model load
        self.workers = None if workers is None else _positive(workers, 1, "workers")
        if max_length is not None and max_length < 1:
            raise SeqpoolError(f"max_length must be at least 1, got {max_length}")
        if isinstance(model, torch.nn.Module):
            parts = wrap_parts(model, tokenizer, dtype, spec)
        elif tokenizer is not None or spec is not None:
            raise SeqpoolError("tokenizer and spec go with a model object; a model name or folder brings its own")
        else:
            parts = load_parts(model, dtype, self.device, trust_remote_code)
        spec = parts.spec
        self.name_or_path = parts.name
        self.dtype = parts.dtype
        #: dtype int8: the quantized model (:class:`seqpool.int8.Int8Runtime`), built by :meth:`calibrate`
        self.quantized = parts.quantized
        self.int8_runtime: Any = None
        self.model = parts.model.to(device=self.device, dtype=self.dtype).eval()
        self.tokenizer = parts.tokenizer
        self.hidden_size = int(self.model.config.hidden_size)
        self.layers = self._check_layers(layer)
        self.max_length = max_length_limit(self.model.config, self.tokenizer,
                                           max_length or (spec.max_length if spec else None))
        self.default_strategy = check_strategy(default_strategy or (spec.strategy if spec else "mean"))
        self.default_normalize = _setting(default_normalize, spec.normalize if spec else False, "default_normalize")
        #: the model's module stack as read from its folder (None: built from objects, no folder)
        self.spec = spec
        #: the model's modules after pooling (Dense, LayerNorm), applied where a strategy's width fits
        self.head = parts.head
        if self.head is not None and self.head.in_features % self.hidden_size:
            raise SeqpoolError(f"{self.name_or_path}: the head after pooling takes {self.head.in_features} values, "
                               f"which no pooling of {self.hidden_size}-wide token states gives")
        # sentence-transformers prompt settings: the arguments, else the model's own
        self.prompts: dict[str, str] = _prompts(prompts, spec.prompts if spec else {})
        self.default_prompt_name = _default_prompt_name(default_prompt_name, self.prompts,
                                                        spec.default_prompt_name if spec else None)
        self.include_prompt = _setting(include_prompt, spec.include_prompt if spec else True, "include_prompt")
        self._warned: set[str] = set()
        pad_id = self.tokenizer.pad_token_id
        if pad_id is None:  # decoders such as GPT-2: any id works, the mask hides it
            pad_id = self.tokenizer.eos_token_id if self.tokenizer.eos_token_id is not None else 0
        self.pad_token_id = int(pad_id)

    @classmethod
    def from_pretrained(cls, model: str | os.PathLike | None = None, **kwargs: Any) -> "Encoder":
        """``Encoder(model, **kwargs)``, by the name transformers users reach for."""
        return cls(model, **kwargs)

    @classmethod
    def from_model(cls, model: torch.nn.Module, tokenizer: Any, layer: int | Sequence[int] = -1,
                   max_length: int | None = None, dtype: Any = None, device: str | torch.device | None = None,
                   default_strategy: str | None = None, default_normalize: bool | None = None,
                   workers: int | None = None, spec: ModelSpec | None = None, **kwargs: Any) -> "Encoder":
        """``Encoder(model, tokenizer=tokenizer, ...)``: wrap an already built model and tokenizer (tests,
        custom models, the pipeline); ``spec``: the module stack of the folder they came from, whose
        pooling, head, normalisation and prompts are then the defaults."""
        return cls(model, device=device, dtype=dtype, max_length=max_length, layer=layer, workers=workers,
                   tokenizer=tokenizer, spec=spec, default_strategy=default_strategy,
                   default_normalize=default_normalize, **kwargs)

    def _check_layers(self, layer: int | Sequence[int]) -> tuple[int, ...]:
        layers = (layer,) if isinstance(layer, int) else tuple(layer)
        available = int(getattr(self.model.config, "num_hidden_layers", 0)) + 1
        if not layers or any(not isinstance(i, int) or not -available <= i < available for i in layers):
            raise SeqpoolError(
                f"layer {layer!r} is out of range: this model has hidden states 0..{available - 1} "
                f"(0 = embeddings, -1 = last layer)"
            )
        return layers

    def fingerprint(self) -> dict[str, Any]:
        """What determines the token states besides the texts: model, weights, tokenizer, layer.

        Weights are fingerprinted by the bytes of every tensor, or of an evenly strided sample
        of about a million values (plus both ends) for larger tensors: any fine-tune changes
        them, and no gigabytes are hashed. Bytes, not float sums, so thread counts cannot
        change it. The tokenizer's truncation/padding settings are left out: a fast tokenizer
        stores the last call's settings, so they change after the first encode.
        """
        import hashlib

        weights = hashlib.sha256()
        for name, tensor in sorted(self.model.state_dict().items()):
            flat = tensor.detach().reshape(-1).cpu()
            stride = max(1, flat.numel() // _FINGERPRINT_VALUES)
            sample = torch.cat([flat[::stride], flat[-1024:]]) if stride > 1 else flat
            weights.update(f"{name}{tuple(tensor.shape)}{tensor.dtype}".encode())
            weights.update(sample.float().contiguous().numpy().tobytes())
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            layout = json.loads(backend.to_str())
            layout.pop("truncation", None)
            layout.pop("padding", None)
            vocabulary = json.dumps(layout, sort_keys=True)
        else:
            vocabulary = json.dumps(sorted(self.tokenizer.get_vocab().items()))
        config = self.model.config.to_json_string(use_diff=False) if hasattr(self.model, "config") else ""
        if self.quantized:  # before calibration: the texts it will calibrate on (part of any cache key) decide
            calibrated = self.int8_runtime.calibration["sha256"] if self.int8_runtime is not None else "on its texts"
            dtype = f"int8 {calibrated}"
        else:
            dtype = str(self.dtype)
        return {"model": str(self.name_or_path), "layers": list(self.layers), "max_length": self.max_length,
                "dtype": dtype, "config_sha256": hashlib.sha256(config.encode()).hexdigest(),
                "weights_sha256": weights.hexdigest(),
                "tokenizer_sha256": hashlib.sha256(f"{type(self.tokenizer).__name__}{vocabulary}".encode()).hexdigest()}

    def __repr__(self) -> str:
        return (f"Encoder({self.name_or_path!r}, layer={self.layers if len(self.layers) > 1 else self.layers[0]}, "
                f"max_length={self.max_length}, dtype={self.precision}, default_strategy={self.default_strategy!r})")

    # -- tokens -------------------------------------------------------------------------

    def tokenize(self, texts: Sequence[str]) -> list[list[int]]:
        """Token ids per text (with special tokens, truncated to ``max_length``), unpadded."""
        texts = check_texts(texts)
        if not texts:
            return []
        encoded = self.tokenizer(list(texts), add_special_tokens=True, truncation=True,
                                 max_length=self.max_length, padding=False,
                                 return_attention_mask=False, return_token_type_ids=False)
        return encoded["input_ids"]

    def tokenize_with_offsets(self, texts: Sequence[str]) -> list["TokenizedText"]:
        """Per text: exactly :meth:`tokenize`'s ids, plus token strings, character offsets and word ids.

        Needs a fast tokenizer (the default of ``AutoTokenizer``): only it reports offsets.
        """
        texts = check_texts(texts)
        self._require_fast_tokenizer("mapping tokens to characters and words")
        if not texts:
            return []
        encoded = self.tokenizer(texts, add_special_tokens=True, truncation=True, max_length=self.max_length,
                                 padding=False, return_attention_mask=False, return_token_type_ids=False,
                                 return_offsets_mapping=True)
        return [TokenizedText(ids=list(ids), tokens=self.tokenizer.convert_ids_to_tokens(ids),
                              offsets=[(int(a), int(b)) for a, b in encoded["offset_mapping"][row]],
                              word_ids=list(encoded.word_ids(row)))
                for row, ids in enumerate(encoded["input_ids"])]

    @property
    def special_tokens(self) -> tuple[list[int], list[int]]:
        """The ids the tokenizer puts before and after every text (``[CLS]``, ``[SEP]``)."""
        if not hasattr(self, "_special_tokens"):
            self._special_tokens = special_token_ids(self.tokenizer)
        return self._special_tokens

    def prompt_length(self, prompt: str) -> int:
        """sentence-transformers' prompt length: the prompt's tokens with the leading special
        tokens, without a trailing one (so a BERT prompt length counts its ``[CLS]``)."""
        ids = self.tokenizer(prompt, add_special_tokens=True, verbose=False)["input_ids"]
        return prompt_length(ids, self.tokenizer.all_special_ids)

    def text_pieces(self, texts: Sequence[str], prompt: str | None = None, offsets: bool = False) -> list[TextPieces]:
        """Each ``prompt + text`` tokenized whole (no special tokens, not truncated) and split into
        the prompt's tokens and the text's; ``offsets``: the text tokens' character spans in the text."""
        texts = check_texts(texts)
        if offsets:
            self._require_fast_tokenizer("chunk rows (character offsets)")
        n_prompt = max(0, self.prompt_length(prompt) - len(self.special_tokens[0])) if prompt else 0
        encoded = self.tokenizer([(prompt or "") + text for text in texts], add_special_tokens=False,
                                 truncation=False, verbose=False, return_offsets_mapping=offsets,
                                 return_attention_mask=False, return_token_type_ids=False) if texts else {}
        shift = len(prompt or "")
        return [TextPieces(ids[:n_prompt], ids[n_prompt:], [(max(0, a - shift), max(0, b - shift)) for a, b in
                                                            encoded["offset_mapping"][row][n_prompt:]] if offsets else None)
                for row, ids in enumerate(encoded.get("input_ids", []))]

    def _require_fast_tokenizer(self, purpose: str) -> None:
        if not getattr(self.tokenizer, "is_fast", False):
            raise SeqpoolError(f"{purpose} needs a fast tokenizer; load the model's tokenizer with "
                               f"AutoTokenizer.from_pretrained(..., use_fast=True) (a tokenizer.json)")

    def collate(self, token_ids: Sequence[Sequence[int]]) -> dict[str, Tensor]:
        """Right-pad token id lists into model inputs."""
        width = max((len(ids) for ids in token_ids), default=0)
        input_ids = torch.full((len(token_ids), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(token_ids), width), dtype=torch.long)
        for row, ids in enumerate(token_ids):
            input_ids[row, :len(ids)] = torch.as_tensor(ids, dtype=torch.long)
            attention_mask[row, :len(ids)] = 1
        batch = {"input_ids": input_ids, "attention_mask": attention_mask}
        if self.token_types:
            batch["token_type_ids"] = torch.zeros_like(input_ids)  # one segment, as the tokenizer gives it
        return batch

    @property
    def token_types(self) -> bool:
        """Whether the model gets ``token_type_ids``: when its tokenizer emits them and its forward takes
        them, as sentence-transformers passes them (GPT-2 adds their embeddings, so it matters)."""
        if not hasattr(self, "_token_types"):
            import inspect

            emitted = "token_type_ids" in (getattr(self.tokenizer, "model_input_names", None) or ())
            self._token_types = emitted and "token_type_ids" in inspect.signature(self.model.forward).parameters
        return self._token_types

    def forward_tokens(self, batch: Mapping[str, Tensor], blocks: Sequence[LayerKey] | None = None) -> Tensor:
        """Float32 (B, T, D) states of the chosen layer(s) for a tokenized, right-padded batch.

        ``blocks`` (from :meth:`layer_plan`): (B, T, K * D) states, the average of each block's
        hidden layers side by side, all from this one forward pass.
        """
        inputs = {key: value.to(self.device) for key, value in batch.items()
                  if key in ("input_ids", "attention_mask", "token_type_ids")}
        mask = inputs.get("attention_mask")
        if mask is not None and bool(mask.all()):
            del inputs["attention_mask"]  # no padding: attention runs faster without a mask
        if self.quantized and self.int8_runtime is None:
            raise SeqpoolError("an int8 Encoder needs its calibration first: encoder.calibrate(texts) with texts "
                               "like the ones to embed (encode() calibrates on its first texts by itself)")
        model = self.int8_runtime if self.quantized else self.model
        with torch.inference_mode():
            want_all = self.layers != (-1,) or blocks is not None
            output = model(**inputs, output_hidden_states=want_all, return_dict=True)
            if blocks is not None:
                return average_layers(output.hidden_states, blocks)
            if not want_all:
                hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
                return hidden.float()
            chosen = [output.hidden_states[i].float() for i in self.layers]
            return chosen[0] if len(chosen) == 1 else torch.stack(chosen).mean(dim=0)

    def model_outputs(self, input_ids: Tensor, attention_mask: Tensor, token_type_ids: Tensor | None = None,
                      all_layers: bool = False) -> Any:
        """The torch model's raw outputs (``last_hidden_state``, ``hidden_states`` with ``all_layers``),
        without inference mode: what an exported or quantized graph traces. Only the Encoder calls the model."""
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        return self.model(**inputs, output_hidden_states=all_layers, return_dict=True)

    def forward_batch(self, batch: Mapping[str, Tensor],
                      blocks: Sequence[LayerKey] | None = None) -> tuple[Tensor, Tensor]:
        """CPU float32 (B, T, D) states and (B, T) bool mask of a collated, right-padded batch.

        A batch whose texts have no tokens at all (``""`` for a decoder) cannot go through
        the model; it gets one masked zero token per text, which pools to zeros.
        """
        rows, width = batch["input_ids"].shape
        if width == 0:
            width = self.hidden_size * (len(blocks) if blocks else 1)
            return torch.zeros(rows, 1, width), torch.zeros(rows, 1, dtype=torch.bool)
        hidden = self.forward_tokens(batch) if blocks is None else self.forward_tokens(batch, blocks)
        return hidden.cpu(), batch["attention_mask"].bool()

    # -- texts -> states -> vectors ---------------------------------------------------

    def hidden_states(self, texts: Sequence[str], batch_size: int | None = None, progress: Any = False,
                      token_budget: int | None = None, blocks: Sequence[LayerKey] | None = None) -> Iterator[Batch]:
        """Yield ``(indices, hidden (B,T,D) float32, mask (B,T) bool)``, longest texts first.

        ``indices`` point into ``texts``; batches come in length order, not input order.
        ``blocks``: (B, T, K * D) states of several layer blocks per batch (see :meth:`layer_plan`).
        """
        token_ids = self.tokenize(texts)
        batches = pack_batches([len(ids) for ids in token_ids], _positive(batch_size, DEFAULT_BATCH_SIZE, "batch_size"),
                               _positive(token_budget, DEFAULT_TOKEN_BUDGET, "token_budget"))
        with progress_bar(len(token_ids), progress) as bar:
            for batch in self.run_inputs(token_ids, batches, blocks):
                yield batch
                bar.update(len(batch[0]))

    def run_inputs(self, token_ids: Sequence[Sequence[int]], batches: Iterable[np.ndarray],
                   blocks: Sequence[LayerKey] | None = None) -> Iterator[Batch]:
        """``(rows, hidden, mask)`` per batch of ``token_ids`` rows, in the order of ``batches``."""
        def run(rows: np.ndarray) -> Batch:
            return (rows, *self.forward_batch(self.collate([token_ids[i] for i in rows]), blocks))

        if self.quantized and self.int8_runtime is None:
            self.calibrate_tokens(token_ids)  # a sample of the first texts encoded

        workers = self._workers()
        with limited_threads(1 if workers > 1 else None, blas=False):
            yield from ordered_map(run, batches, workers)

    def text_batches(self, texts: Sequence[str], batch_size: int = 32) -> Iterator["TextBatch"]:
        """Texts in input order, ``batch_size`` at a time, with their tokens (offsets, word ids)
        and token states: what token-level explanations need. Needs a fast tokenizer."""
        texts = check_texts(texts)
        batch_size = _positive(batch_size, 32, "batch_size")
        self._require_fast_tokenizer("mapping tokens to characters and words")
        for start in range(0, len(texts), batch_size):
            chunk = texts[start:start + batch_size]
            tokenized = self.tokenize_with_offsets(chunk)
            hidden, mask = self.forward_batch(self.collate([item.ids for item in tokenized]))
            yield TextBatch(start=start, texts=chunk, tokens=tokenized, hidden_states=hidden, attention_mask=mask)

    def word_embeddings(self, texts: Sequence[str], reduce: str = "mean",
                        batch_size: int = 32) -> list[np.ndarray]:
        """One float32 ``(n_words, D)`` array per text: its whitespace words, pooled from their subwords.

        Tokenizes the words with ``is_split_into_words=True`` and maps subwords to words with
        ``word_ids()`` (a fast tokenizer), then :func:`seqpool.local.segment_pool`. Special
        tokens are ignored; a word the tokenizer drops entirely (e.g. only control
        characters) gets zeros. A text longer than ``max_length`` tokens raises rather than
        silently losing words.
        """
        if reduce not in SEGMENT_REDUCTIONS:
            raise SeqpoolError(f"unknown reduce {reduce!r}; choose one of: {', '.join(SEGMENT_REDUCTIONS)}")
        batch_size = _positive(batch_size, 32, "batch_size")
        words = [text.split() for text in check_texts(texts)]
        self._require_fast_tokenizer("word_embeddings (word_ids())")
        out = [np.zeros((0, self.hidden_size), dtype=np.float32) for _ in words]
        todo = [i for i, text_words in enumerate(words) if text_words]
        for start in range(0, len(todo), batch_size):
            rows = todo[start:start + batch_size]
            encoding = self.tokenizer([words[i] for i in rows], is_split_into_words=True, truncation=False,
                                      padding=False, return_token_type_ids=False)
            for row, ids in zip(rows, encoding["input_ids"]):
                if len(ids) > self.max_length:
                    raise SeqpoolError(f"texts[{row}] has {len(ids)} tokens, more than the model's max_length "
                                       f"{self.max_length}; split it into shorter texts")
            # right-padded, like every encoder pass
            hidden, mask = self.forward_batch(self.collate(encoding["input_ids"]))
            segment_ids = word_segment_ids([encoding.word_ids(k) for k in range(len(rows))], hidden.shape[1])
            pooled, _ = segment_pool(hidden, segment_ids, reduce, mask,
                                     num_segments=max(len(words[i]) for i in rows))
            for k, row in enumerate(rows):
                out[row] = pooled[k, :len(words[row])].float().numpy()
        return out

    def calibrate(self, texts: Sequence[str]) -> None:
        """dtype int8: quantize the model with activation ranges fitted on ``texts`` (at most 300,
        evenly spread; texts like the ones to embed). Without it, the first ``encode`` calibrates
        on the texts it is given."""
        self.calibrate_tokens(self.tokenize(texts))

    def calibrate_tokens(self, token_ids: Sequence[Sequence[int]]) -> None:
        """:meth:`calibrate` from token id lists (as :meth:`tokenize` gives them)."""
        if not self.quantized:
            raise SeqpoolError("calibrate() is for an Encoder built with dtype='int8'")
        from seqpool.int8 import Int8Runtime

        self.int8_runtime = Int8Runtime.build(self, token_ids, streams=self._workers())

    @property
    def precision(self) -> str:
        """What the model computes in: ``float32``, ``bfloat16`` or ``int8``."""
        return "int8" if self.quantized else str(self.dtype).removeprefix("torch.")

    def _workers(self) -> int:
        """Batches run at once: one per usable CPU, each single-threaded (see ``workers``)."""
        if self.workers is not None:
            return self.workers
        return default_workers() if self.device.type == "cpu" else 1

    def token_states(self, texts: Sequence[str], batch_size: int | None = None, progress: bool = False,
                     dtype: torch.dtype | None = None) -> TokenStates:
        """Token states of every text, in input order, ready to cache and pool many ways."""
        return TokenStates.from_batches(self.hidden_states(texts, batch_size, progress),
                                        num_texts=len(texts), dtype=dtype)

    def layer_plan(self, strategies: Sequence[str]) -> LayerPlan:
        """Which hidden layers ``strategies`` (``mean@-2``, ``scalar_mix``, ...) need from one pass."""
        num_hidden_states = int(getattr(self.model.config, "num_hidden_layers", 0)) + 1
        return plan_layers(strategies, num_hidden_states, self.layers, self.hidden_size)

    def uses_head(self, strategy: str, width: int | None = None) -> bool:
        """Whether ``strategy``'s vectors go through the model's head: the rule is that the head
        applies wherever its input width fits (the model's own pooling always fits), and the
        raw pooled vector is kept where it does not (``mean+max`` on a 384 -> 128 head)."""
        if self.head is None:
            return False
        width = self.layer_plan((strategy,)).output_dim(strategy) if width is None else width
        return width == self.head.in_features

    def output_dim(self, strategy: str) -> int:
        """Width of ``strategy``'s vectors from :meth:`encode`: the head's output where it applies."""
        width = self.layer_plan((strategy,)).output_dim(strategy)
        return self.head.out_features if self.head is not None and width == self.head.in_features else width

    def pipeline(self, strategy: str | None = None, normalize: bool | None = None) -> str:
        """The steps ``strategy``'s vectors go through, e.g. ``cls -> Dense(384->128, Tanh) -> Normalize``."""
        strategy = strategy or self.default_strategy
        normalize = self.default_normalize if normalize is None else normalize
        steps = [strategy]
        if self.uses_head(strategy) and self.spec is not None:
            steps += [layer.describe() for layer in self.spec.head]
        return " -> ".join(steps + (["Normalize"] if normalize else []))

    def departures(self, strategies: Sequence[str]) -> list[str]:
        """One warning per strategy that differs from the pooling the model was trained with
        (read from its modules.json), each said once per Encoder: the vectors are still
        computed, but they are not the ones the model was trained to produce."""
        trained = self.spec.pooling if self.spec is not None else None
        out = []
        for strategy in strategies:
            if trained is None or strategy == trained or strategy in self._warned:
                continue
            self._warned.add(strategy)
            out.append(f"{self.name_or_path} was trained with {trained} pooling; {strategy} departs from it, so its "
                       f"vectors are not the model's own (omit the strategy for the model's own vectors)")
        return out

    def encode(self, texts: Sequence[str], strategies: Sequence[str] | str | None = None,
               batch_size: int | None = None, normalize: bool | None = None, progress: Any = False, *,
               prompt: str | None = None, prompt_name: str | None = None, include_prompt: bool | None = None,
               long_texts: str = "truncate", window: int | None = None, stride: int | None = None,
               truncate_dim: int | None = None, return_stats: bool = False) -> Vectors | tuple[Vectors, EncodeStats]:
        """One float32 (N, width) array per strategy, in input order, all from one encoder pass
        (``mean@-2``, ``mean@1~-1`` and ``cls+mean`` included: every layer comes from that pass).

        ``strategies=None`` uses the model's default (its sentence-transformers pooling
        config, else mean); ``normalize=None`` follows the model's Normalize module.
        ``prompt`` (text) or ``prompt_name`` (a key of the model's ``prompts``; default: its
        ``default_prompt_name``) is prepended to every text; ``include_prompt=False`` keeps its
        tokens out of the pool (default: the model's Pooling config), see :mod:`seqpool.prompts`.
        ``long_texts``: ``truncate`` (cut at ``max_length``), ``chunk`` or ``late`` with ``window`` /
        ``stride`` tokens, see :mod:`seqpool.long_texts`. ``truncate_dim`` keeps the first
        dimensions (Matryoshka), renormalised when normalising. ``return_stats=True`` returns
        ``(vectors, EncodeStats)``: texts, texts cut at ``max_length`` (which ones), model inputs run.
        """
        return_stats = check_flag(return_stats, "return_stats")
        vectors, _, stats = encode_texts(self, texts, strategies, batch_size, normalize, progress, prompt,
                                         prompt_name, include_prompt, LongTextOptions(long_texts, window, stride),
                                         truncate_dim)
        return (vectors, stats) if return_stats else vectors

    def encode_chunks(self, texts: Sequence[str], strategies: Sequence[str] | str | None = None,
                      batch_size: int | None = None, normalize: bool | None = None, progress: Any = False, *,
                      prompt: str | None = None, prompt_name: str | None = None, include_prompt: bool | None = None,
                      long_texts: str = "late", window: int | None = None, stride: int | None = None,
                      truncate_dim: int | None = None,
                      return_stats: bool = False) -> tuple[Vectors, Vectors] | tuple[Vectors, Vectors, EncodeStats]:
        """One row per chunk: ``(vectors per strategy, {"doc", "chunk", "char_start", "char_end"})``,
        and the :class:`EncodeStats` third with ``return_stats=True``.

        ``late`` pools chunks of ``window`` text tokens from full-context token states;
        ``chunk`` encodes each window on its own. Options as :meth:`encode`.
        """
        return_stats = check_flag(return_stats, "return_stats")
        vectors, chunks, stats = encode_texts(self, texts, strategies, batch_size, normalize, progress, prompt,
                                              prompt_name, include_prompt,
                                              LongTextOptions(long_texts, window, stride, chunk_output=True),
                                              truncate_dim)
        return (vectors, chunks, stats) if return_stats else (vectors, chunks)


def _setting(value: bool | None, model_default: bool, name: str) -> bool:
    """A flag passed to the Encoder (only True or False), else the model's own."""
    return model_default if value is None else check_flag(value, name)


def _prompts(prompts: Mapping[str, str] | None, model_prompts: Mapping[str, str]) -> dict[str, str]:
    """The prompts passed (name -> text), else the model's own."""
    if prompts is None:
        return dict(model_prompts)
    if not isinstance(prompts, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()):
        raise SeqpoolError("prompts must map prompt names to prompt texts, e.g. {'query': 'query: '}")
    return dict(prompts)


def _default_prompt_name(name: str | None, prompts: Mapping[str, str], model_default: str | None) -> str | None:
    """The default prompt passed (one of ``prompts``), else the model's own."""
    if name is None:
        return model_default
    if name not in prompts:
        known = ", ".join(sorted(prompts)) or "none: pass prompts= too"
        raise SeqpoolError(f"default_prompt_name {name!r} is not among the prompts ({known})")
    return name


def default_workers() -> int:
    """CPU batches run at once by default: ``OMP_NUM_THREADS`` where the user set it, else
    the CPUs this process may use. Deliberately not ``torch.get_num_threads()``, which is
    global state that any caller (or an earlier ``--threads``) may have changed."""
    configured = os.environ.get("OMP_NUM_THREADS", "").strip()
    if configured.isdigit() and int(configured) > 0:
        return int(configured)
    return available_cpus()


@dataclass
class TokenizedText:
    """One text's tokens: ids (as :meth:`Encoder.tokenize` gives them), their strings, the
    character span of each in the text (``(0, 0)`` for special tokens) and word ids."""

    ids: list[int]
    tokens: list[str]
    offsets: list[tuple[int, int]]
    word_ids: list[int | None]


@dataclass
class TextBatch:
    """``texts[start:start + len(texts)]`` with their tokens and (B, T, D) states + (B, T) mask."""

    start: int
    texts: list[str]
    tokens: list[TokenizedText]
    hidden_states: Tensor
    attention_mask: Tensor


def word_embeddings(encoder: Encoder, texts: Sequence[str], reduce: str = "mean",
                    batch_size: int = 32) -> list[np.ndarray]:
    """:meth:`Encoder.word_embeddings` as a function (the public ``seqpool.word_embeddings``)."""
    if not isinstance(encoder, Encoder):
        raise SeqpoolError(f"encoder must be a seqpool.Encoder, got {type(encoder).__name__}")
    return encoder.word_embeddings(texts, reduce=reduce, batch_size=batch_size)
