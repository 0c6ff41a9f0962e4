"""A pooler plus a linear head, trained on frozen token states; saved without pickle.

This is how learned strategies (``attention``, ``se_mean``) are compared with the
parameter-free ones, and what ``seqpool explain`` explains. Token states are
standardised per channel with statistics of the training texts' real tokens (stored as
buffers) before pooling, so a linear head trains well whatever the encoder's scale; for
mean pooling this is the same as standardising the pooled vectors.

Training settings are constructor arguments (scikit-learn style: ``get_params`` /
``set_params``) and are saved in ``config.json``, so a saved folder says how its weights
were trained and ``PooledClassifier(**loaded.get_params()).fit(states, y)`` redoes it.
"""

from __future__ import annotations

import copy
import os
import random
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from seqpool._version import __version__
from seqpool.errors import SeqpoolError
from seqpool.pooling.pooler import Pooler
from seqpool.pooling import normalize_mask
from seqpool.registry import get_strategy
from seqpool.serialization import (CONFIG_NAME, REQUIRED, build_checked, config_fields, load_state, read_config,
                                   save_module)
from seqpool.states import TokenStates

if TYPE_CHECKING:
    from seqpool.encoder import Encoder


@dataclass(frozen=True)
class TrainingSettings:
    """How :meth:`PooledClassifier.fit` trains: AdamW, cross-entropy, early stopping.

    ``seed`` fixes the inner validation split, the initialisation, the batch order and the
    dropout masks; ``validation_fraction`` of the training rows (stratified) decide early
    stopping, which ends training after ``patience`` epochs without a better validation
    accuracy (ties broken by loss) and restores the best epoch's weights.
    """

    seed: int = 0
    max_epochs: int = 40
    patience: int = 5
    lr: float = 1e-3
    weight_decay: float = 1e-4
    batch_size: int = 64
    validation_fraction: float = 0.1

    def __post_init__(self) -> None:
        for name in ("seed", "max_epochs", "patience", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise SeqpoolError(f"{name} must be an integer, got {value!r}")
        for name in ("lr", "weight_decay", "validation_fraction"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
                raise SeqpoolError(f"{name} must be a number, got {value!r}")
        lowest = {"max_epochs": 1, "patience": 1, "batch_size": 1, "seed": 0}
        for name, low in lowest.items():
            if getattr(self, name) < low:
                raise SeqpoolError(f"{name} must be at least {low}, got {getattr(self, name)}")
        if self.seed >= 2**32:  # numpy's and scikit-learn's limit
            raise SeqpoolError(f"seed must be below 2**32, got {self.seed}")
        if not self.lr > 0:
            raise SeqpoolError(f"lr must be positive, got {self.lr}")
        if not self.weight_decay >= 0:
            raise SeqpoolError(f"weight_decay must be zero or positive, got {self.weight_decay}")
        if not 0.0 < self.validation_fraction < 1.0:
            raise SeqpoolError(f"validation_fraction must be in (0, 1), got {self.validation_fraction}")

    def as_config(self) -> dict[str, Any]:
        """Plain JSON types (numpy scalars given by a caller become int / float)."""
        return {name: (float(value) if isinstance(value, (float, np.floating)) else int(value))
                for name, value in asdict(self).items()}


TRAINING_FIELDS = tuple(field.name for field in fields(TrainingSettings))


@dataclass(frozen=True)
class EncoderSettings:
    """The encoder a classifier's training states came from, as its ``encoder`` config records it.

    ``evaluate --save-best`` saves a ``mean@-2`` winner as ``mean`` over an encoder of layer -2, so
    the layer is part of the model: fed another layer's states, the head predicts silently wrong.
    Everything that encodes texts for a saved classifier (``explain``, the pipeline) takes its
    encoder settings from here and refuses an encoder that contradicts them. ``None``: not recorded
    (a classifier built by hand without ``encoder=``); the caller's encoder decides.
    """

    model: str | None = None
    layer: int | tuple[int, ...] | None = None
    max_length: int | None = None

    @classmethod
    def from_info(cls, info: dict[str, Any] | None) -> "EncoderSettings":
        """The settings in a classifier's ``encoder`` dict, or a SeqpoolError naming the malformed one."""
        info = info or {}
        model, layer, max_length = info.get("model"), info.get("layer"), info.get("max_length")
        if model is not None and not isinstance(model, (str, os.PathLike)):
            raise SeqpoolError(f"the classifier's recorded encoder model must be a model name or folder, got "
                               f"{model!r}; save it again with encoder={{'model': ...}}")
        if isinstance(layer, (list, tuple)):
            layer = tuple(layer)
        if layer is not None and not (_is_index(layer) or (isinstance(layer, tuple) and layer
                                                           and all(_is_index(i) for i in layer))):
            raise SeqpoolError(f"the classifier's recorded encoder layer must be a hidden-layer index or a "
                               f"non-empty list of them, got {info.get('layer')!r}; save it again with "
                               f"encoder={{'layer': ...}}")
        if max_length is not None and (not _is_index(max_length) or max_length < 1):
            raise SeqpoolError(f"the classifier's recorded encoder max_length must be a whole number >= 1, got "
                               f"{max_length!r}; save it again with encoder={{'max_length': ...}}")
        return cls(None if model is None else os.fspath(model), layer, max_length)

    @property
    def layer_argument(self) -> str:
        """The recorded layer as a ``layer=`` argument is written (``1``, ``[0, 1]``)."""
        return repr(list(self.layer) if isinstance(self.layer, tuple) else self.layer)

    def choose(self, layer: int | Sequence[int] | None = None,
               max_length: int | None = None) -> tuple[int | Sequence[int], int | None]:
        """``(layer, max_length)`` for an encoder of this classifier: the caller's where given, else the
        recorded ones (layer -1, the model's last, when none is recorded).

        A given layer may still contradict the recorded one: check the built encoder with
        :meth:`layer_mismatch`. A given ``max_length`` is the caller's choice of where to cut long texts.
        """
        chosen_layer = layer if layer is not None else self.layer if self.layer is not None else -1
        return chosen_layer, max_length if max_length is not None else self.max_length

    def layer_mismatch(self, encoder: "Encoder") -> str | None:
        """Why ``encoder``'s states are not the ones the classifier was trained on (other hidden
        layers than the recorded ones; ``1`` and ``-2`` of a 2-layer model are the same), or None."""
        if self.layer is None:
            return None
        count = int(getattr(encoder.model.config, "num_hidden_layers", 0)) + 1
        recorded = (self.layer,) if isinstance(self.layer, int) else self.layer
        if all(-count <= i < count for i in recorded) and \
                sorted(i % count for i in recorded) == sorted(i % count for i in encoder.layers):
            return None
        return (f"the classifier was trained on states of hidden {_layer_words(self.layer)}, but the encoder "
                f"gives {_layer_words(encoder.layers)}")


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _layer_words(layer: int | Sequence[int]) -> str:
    """``layer 1`` or ``layers [0, 1] averaged``."""
    if isinstance(layer, int):
        return f"layer {layer}"
    return f"layer {layer[0]}" if len(layer) == 1 else f"layers {list(layer)} averaged"


class PooledClassifier(nn.Module):
    """``logits = head(pooler(standardise(hidden_states), mask))`` for any pooling strategy.

    ``labels`` names the classes in index order (ints or strings); ``encoder`` optionally
    records which encoder produced the training states (``{"model": ..., "layer": ...,
    "max_length": ...}``, read back as :attr:`encoder_settings`) so explain and the pipeline
    encode the states it was trained on. ``seed`` ... ``validation_fraction`` are the
    :class:`TrainingSettings`; other keywords go to the :class:`~seqpool.pooling.pooler.Pooler`
    (``heads``, ``dropout``, ``rd_ratio``, ...). The initial weights come from ``seed`` too:
    building or fitting a classifier never reads or advances the global RNG.
    """

    def __init__(self, strategy: str, dim: int, num_labels: int, labels: Sequence[Any] | None = None,
                 encoder: dict[str, Any] | None = None, *, seed: int = 0, max_epochs: int = 40,
                 patience: int = 5, lr: float = 1e-3, weight_decay: float = 1e-4, batch_size: int = 64,
                 validation_fraction: float = 0.1, **pooler_kwargs: Any):
        super().__init__()
        self.training_settings = TrainingSettings(
            seed=seed, max_epochs=max_epochs, patience=patience, lr=lr, weight_decay=weight_decay,
            batch_size=batch_size, validation_fraction=validation_fraction)
        if num_labels < 2:
            raise SeqpoolError(f"a classifier needs at least 2 classes, got {num_labels}")
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
            raise SeqpoolError(f"dim must be the encoder's hidden size (a whole number >= 1), got {dim!r}")
        with torch.random.fork_rng(devices=[]):  # initial weights from ``seed``, the global RNG untouched
            torch.manual_seed(seed)
            self.pooler = Pooler(strategy, dim, **pooler_kwargs)
            self.head = nn.Linear(self.pooler.output_dim or dim, num_labels)
        self.register_buffer("shift", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(dim))
        self.dim, self.num_labels = dim, num_labels
        self.labels = list(labels) if labels is not None else list(range(num_labels))
        if len(self.labels) != num_labels:
            raise SeqpoolError(f"{len(self.labels)} label names for {num_labels} classes")
        self.encoder_info = dict(encoder or {})
        self.history_: list[dict[str, float]] = []

    @property
    def strategy(self) -> str:
        return self.pooler.strategy

    @property
    def encoder_settings(self) -> EncoderSettings:
        """The recorded encoder (model, layer, max length) the training states came from."""
        return EncoderSettings.from_info(self.encoder_info)

    def get_params(self, deep: bool = False) -> dict[str, Any]:
        """The constructor's arguments: ``PooledClassifier(**clf.get_params())`` is an untrained twin."""
        return {"strategy": self.strategy, "dim": self.dim, "num_labels": self.num_labels,
                "labels": list(self.labels), "encoder": dict(self.encoder_info),
                **self.training_settings.as_config(), **self.pooler.kwargs}

    def set_params(self, **params: Any) -> "PooledClassifier":
        """Change training settings (the architecture is fixed: build a new classifier for that)."""
        fixed = sorted(set(params) - set(TRAINING_FIELDS))
        if fixed:
            raise SeqpoolError(f"set_params changes only the training settings {', '.join(TRAINING_FIELDS)}; "
                               f"{', '.join(fixed)} fix the architecture: build a new PooledClassifier")
        self.training_settings = replace(self.training_settings, **params)
        return self

    def standardize(self, hidden_states: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Float32 states after the stored per-channel standardisation (padding set to 0)."""
        mask = normalize_mask(hidden_states, attention_mask)
        states = (hidden_states.float() - self.shift) * self.scale
        return states.masked_fill(~mask.unsqueeze(-1), 0.0)

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """(B, num_labels) logits."""
        mask = normalize_mask(hidden_states, attention_mask)
        return self._logits(self.standardize(hidden_states, mask), mask)

    def _logits(self, standardized: Tensor, mask: Tensor) -> Tensor:
        """Logits of states already standardised with padding zero and a (B, T) bool mask: what
        :meth:`forward` does after :meth:`standardize`, shared with training, which gathers
        batches that way."""
        return self.head(self.pooler.pool_filled(standardized, mask).float())

    def _standardized_batch(self, states: TokenStates, rows: np.ndarray) -> tuple[Tensor, Tensor]:
        """``standardize(*states.padded(rows))`` in one gather: only real tokens are standardised
        and padding is zero from the start (no masking pass over the padded batch)."""
        return states.padded(rows, transform=lambda tokens: (tokens - self.shift) * self.scale)

    def fit_standardization(self, states: TokenStates) -> None:
        """Per-channel mean and 1/std of the real tokens of ``states``.

        Chunk by chunk (float32 sums of a few thousand tokens, added up in float64), so no
        float64 copy of every token is made.
        """
        count = states.states.shape[0]
        total = torch.zeros(self.dim, dtype=torch.float64)
        squares = torch.zeros(self.dim, dtype=torch.float64)
        for _, chunk in states.float_chunks():  # float32 partial sums of a chunk, added up in float64
            total += chunk.sum(dim=0).double()
            squares += chunk.square().sum(dim=0).double()
        mean = total / max(count, 1)
        variance = (squares - count * mean.square()).clamp(min=0.0) / max(count - 1, 1)
        self.shift.copy_(mean.float())
        self.scale.copy_((1.0 / variance.sqrt().clamp(min=1e-6)).float())

    def reset_parameters(self) -> None:
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()

    def fit(self, states: TokenStates, y: Sequence[int] | np.ndarray, *, seed: int | None = None,
            validation_fraction: float | None = None, max_epochs: int | None = None, patience: int | None = None,
            lr: float | None = None, weight_decay: float | None = None,
            batch_size: int | None = None) -> "PooledClassifier":
        """Train on ``states`` with early stopping on an inner stratified validation split.

        Only ``states`` is ever looked at (never a test fold). Keywords override the
        constructor's training settings for this call; the settings actually used are the
        ones ``save_pretrained`` records. The seed fixes the split, the initialisation, the
        batch order and the dropout masks; torch's global RNG (and numpy's and ``random``'s)
        is left exactly as it was: the training runs on a forked, seeded RNG.
        """
        overrides = {"seed": seed, "validation_fraction": validation_fraction, "max_epochs": max_epochs,
                     "patience": patience, "lr": lr, "weight_decay": weight_decay, "batch_size": batch_size}
        settings = replace(self.training_settings, **{k: v for k, v in overrides.items() if v is not None})
        self._check_states(states)
        y = _check_targets(y, len(states), self.num_labels)
        train_rows, val_rows = _validation_split(y, settings.validation_fraction, settings.seed)
        devices = sorted({p.device.index or 0 for p in self.parameters() if p.device.type == "cuda"})
        with torch.random.fork_rng(devices=devices):  # dropout draws from here, seeded
            torch.manual_seed(settings.seed)
            self.reset_parameters()
            self._train(states, y, train_rows, val_rows, settings)
        self.fitted_settings_ = settings
        return self.eval()

    def _train(self, states: TokenStates, y: np.ndarray, train_rows: np.ndarray, val_rows: np.ndarray,
               settings: TrainingSettings) -> None:
        """The epochs of :meth:`fit`: AdamW steps, early stopping, best weights restored."""
        generator = torch.Generator().manual_seed(settings.seed)
        self.fit_standardization(states.subset(train_rows))
        optimizer = torch.optim.AdamW(self.parameters(), lr=settings.lr, weight_decay=settings.weight_decay,
                                      **_fast_adamw(self))
        targets = torch.as_tensor(y, dtype=torch.long)
        lengths = states.lengths().numpy()
        val_order = states.length_sorted(val_rows)
        val_targets = targets[val_order]
        if self.pooler.pools_from_mean:  # e.g. se_mean: each text pooled once, training runs on (N, D) means
            means = self._standardized_means(states)
            logits_of = lambda rows: self.head(self.pooler.from_mean(means[rows]).float())  # noqa: E731
            epoch_batches = lambda: _shuffled_batches(train_rows, settings.batch_size, generator)  # noqa: E731
            val_batches = [val_order]
        else:
            batch_of = _standardized_copy(states, self.shift, self.scale)  # one gather per batch
            if batch_of is None:  # too large to copy: convert and standardise while gathering
                batch_of = lambda rows: self._standardized_batch(states, rows)  # noqa: E731
            logits_of = lambda rows: self._logits(*batch_of(rows))  # noqa: E731
            epoch_batches = lambda: length_bucketed_batches(train_rows, lengths, settings.batch_size,  # noqa: E731
                                                            generator)
            val_batches = [val_order[start:start + _PREDICT_BATCH] for start in range(0, len(val_order),
                                                                                        _PREDICT_BATCH)]
        best = (-1.0, float("inf"))
        best_state, stale, self.history_ = copy.deepcopy(self.state_dict()), 0, []
        for epoch in range(settings.max_epochs):
            self.train()
            for rows in epoch_batches():
                loss = nn.functional.cross_entropy(logits_of(rows), targets[rows])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            self.eval()
            with torch.no_grad():
                val_logits = torch.cat([logits_of(rows) for rows in val_batches])
            val_loss = float(nn.functional.cross_entropy(val_logits, val_targets))
            val_acc = float((val_logits.argmax(1) == val_targets).float().mean())
            self.history_.append({"epoch": epoch, "val_loss": val_loss, "val_accuracy": val_acc})
            if (val_acc, -val_loss) > (best[0], -best[1]):
                best, best_state, stale = (val_acc, val_loss), copy.deepcopy(self.state_dict()), 0
            else:
                stale += 1
                if stale >= settings.patience:
                    break
        self.load_state_dict(best_state)

    @torch.no_grad()
    def _standardized_means(self, states: TokenStates) -> Tensor:
        """(N, D) float32 masked means of every text's standardised states: the standardisation
        is affine, so it commutes with the mean and is applied to the raw means."""
        means = (states.means() - self.shift) * self.scale
        return means.masked_fill(states.lengths().unsqueeze(1) == 0, 0.0)  # a text without tokens pools to 0

    @torch.no_grad()
    def predict_logits(self, states: TokenStates, indices: Sequence[int] | np.ndarray | None = None,
                       batch_size: int = 256) -> np.ndarray:
        """Float32 (N, num_labels) logits for the chosen texts, in the given order."""
        self._check_states(states)
        rows = states._indices(indices)
        was_training = self.training
        self.eval()
        logits = np.zeros((len(rows), self.num_labels), dtype=np.float32)
        by_length = np.argsort(states.lengths().numpy()[rows], kind="stable")  # less padding per batch
        for start in range(0, len(rows), batch_size):
            positions = by_length[start:start + batch_size]
            hidden, mask = self._standardized_batch(states, rows[positions])
            logits[positions] = self._logits(hidden, mask).numpy()
        self.train(was_training)
        return logits

    def _check_states(self, states: TokenStates) -> None:
        if not isinstance(states, TokenStates):
            raise SeqpoolError(f"states must be TokenStates (Encoder.token_states(texts)), got {type(states).__name__}")
        if len(states) and states.dim != self.dim:
            raise SeqpoolError(f"this classifier takes {self.dim}-dim token states, got {states.dim}; use states of "
                               f"the encoder it is built for")

    def predict(self, states: TokenStates, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Predicted class indices (map through ``labels`` for names)."""
        return self.predict_logits(states, indices).argmax(axis=1)

    @property
    def config(self) -> dict[str, Any]:
        """What ``config.json`` holds; ``training`` is how the saved weights were trained
        (the last :meth:`fit`'s settings, or the constructor's before any fit)."""
        settings = getattr(self, "fitted_settings_", self.training_settings)
        return {"seqpool_type": "PooledClassifier", "seqpool_version": __version__,
                "strategy": self.pooler.strategy, "dim": self.dim, "num_labels": self.num_labels,
                "labels": self.labels, "encoder": self.encoder_info, "pooler_kwargs": self.pooler.kwargs,
                "training": settings.as_config()}

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """``config.json`` + ``model.safetensors`` (pooler, head and standardisation)."""
        save_module(self, self.config, directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "PooledClassifier":
        """Rebuild a saved classifier; its config is checked key by key before anything is built."""
        config = read_config(directory)
        if config.get("seqpool_type") != "PooledClassifier":
            raise SeqpoolError(
                f"{directory} holds a {config.get('seqpool_type', 'non-seqpool')!r} config, not a PooledClassifier")
        values = config_fields(config, {"strategy": (str, REQUIRED), "dim": (int, REQUIRED),
                                        "num_labels": (int, REQUIRED), "labels": (list, None),
                                        "encoder": (dict, None), "pooler_kwargs": (dict, {}),
                                        "training": (dict, {})}, directory)  # folders saved before 0.2 lack training
        default = TrainingSettings()
        training = config_fields(values["training"], {name: (type(getattr(default, name)), getattr(default, name))
                                                      for name in TRAINING_FIELDS}, directory, "training.")
        path = Path(directory) / CONFIG_NAME
        unknown = sorted(set(values["training"]) - set(TRAINING_FIELDS))
        if unknown:
            raise SeqpoolError(f"{path}: unknown training setting(s) {', '.join(unknown)}; save the module again")
        try:
            get_strategy(values["strategy"])  # a plugin is imported and tried here, not while sizing on meta
            model = build_checked(lambda: cls(values["strategy"], values["dim"], values["num_labels"],
                                              labels=values["labels"], encoder=values["encoder"], **training,
                                              **values["pooler_kwargs"]), directory)
        except (TypeError, SeqpoolError) as error:  # e.g. pooler_kwargs the strategy does not take
            raise SeqpoolError(f"{path} does not describe a valid PooledClassifier: {error}") from None
        return load_state(model, directory).eval()


#: Rows per batch when only predicting (no gradients: larger batches, fewer steps).
_PREDICT_BATCH = 256
#: Length buckets hold this many batches: shuffled enough to keep SGD's randomness, sorted
#: enough that a batch pads to about its own length rather than the corpus' longest text.
_BATCHES_PER_BUCKET = 16


#: Largest float32 copy of the training tokens a fit makes (bytes); above it, batches are
#: converted and standardised as they are gathered.
TRAINING_COPY_BYTES = 1 << 30


class _StandardizedTokens:
    """The training texts' tokens standardised once, in float32, with a zero row after them.

    An epoch gathers every training token again; from this copy a batch is one gather (a
    padding position points at the zero row), with no conversion, standardisation or
    masking pass per batch. Calling it gives what ``_standardized_batch`` gives.
    """

    def __init__(self, states: TokenStates, shift: Tensor, scale: Tensor):
        self.states, self.padding_row = states, states.states.shape[0]
        self.tokens = torch.empty(self.padding_row + 1, states.dim)
        self.tokens[self.padding_row] = 0.0
        for tokens, chunk in states.float_chunks():
            self.tokens[tokens] = (chunk - shift) * scale

    def __call__(self, rows: np.ndarray) -> tuple[Tensor, Tensor]:
        grid, mask = self.states.token_grid(rows)
        return self.tokens[torch.where(mask, grid, self.padding_row)], mask


def _standardized_copy(states: TokenStates, shift: Tensor, scale: Tensor) -> _StandardizedTokens | None:
    """A :class:`_StandardizedTokens` of ``states`` when its copy fits :data:`TRAINING_COPY_BYTES`."""
    if (states.states.shape[0] + 1) * states.dim * 4 > TRAINING_COPY_BYTES:
        return None
    return _StandardizedTokens(states, shift, scale)


def _fast_adamw(module: nn.Module) -> dict[str, bool]:
    """AdamW's fused kernel when every parameter is a float tensor on the CPU or CUDA: one kernel
    per step instead of a dozen small ops per parameter, which dominate the step of a small
    pooler (the same update rule; only the rounding of its arithmetic differs)."""
    parameters = list(module.parameters())
    fusable = parameters and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in parameters)
    return {"fused": True} if fusable else {}


def _shuffled_batches(rows: np.ndarray, batch_size: int, generator: torch.Generator) -> list[np.ndarray]:
    """One epoch's batches of ``rows`` in a random order drawn from ``generator``."""
    order = rows[torch.randperm(len(rows), generator=generator).numpy()]
    return [order[start:start + batch_size] for start in range(0, len(order), batch_size)]


def length_bucketed_batches(rows: np.ndarray, lengths: np.ndarray, batch_size: int,
                            generator: torch.Generator) -> list[np.ndarray]:
    """One epoch's batches of ``rows``: shuffled, cut into buckets of ``_BATCHES_PER_BUCKET``
    batches, each bucket sorted by length and cut into batches, and the batches shuffled.

    Random batches of short texts pad to the longest text in them (on SentEval MR about twice
    the mean length), so most of an epoch's work is padding; "sortish" batches (as fastai's
    ``SortishSampler``) cut that while every epoch still sees new batch compositions and
    orders. All draws come from ``generator``: the seed fixes every batch.
    """
    order = rows[torch.randperm(len(rows), generator=generator).numpy()]
    bucket = batch_size * _BATCHES_PER_BUCKET
    batches = []
    for start in range(0, len(order), bucket):
        chunk = order[start:start + bucket]
        chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


def _check_targets(y: Sequence[int] | np.ndarray, count: int, num_labels: int) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (count,):
        raise SeqpoolError(f"expected {count} targets (one per text), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.min(initial=0) < 0 or y.max(initial=0) >= num_labels:
        raise SeqpoolError(f"targets must be class indices in 0..{num_labels - 1}")
    return y.astype(np.int64)


def _validation_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified inner split of the training rows; stratification is dropped only when impossible."""
    state = random.getstate()  # importing scikit-learn's model_selection imports rich, which draws from
    from sklearn.model_selection import train_test_split  # `random` once (rich.style's id counter)

    random.setstate(state)  # so even a first fit leaves Python's global RNG as it was

    rows = np.arange(len(y))
    if not 0.0 < fraction < 1.0:
        raise SeqpoolError(f"validation_fraction must be in (0, 1), got {fraction}")
    counts = np.bincount(y)
    stratify = y if counts[counts > 0].min() >= 2 and round(fraction * len(y)) >= len(counts[counts > 0]) else None
    train_rows, val_rows = train_test_split(rows, test_size=fraction, random_state=seed, stratify=stratify)
    return np.sort(train_rows), np.sort(val_rows)
