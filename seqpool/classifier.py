"""A pooler plus a linear head, trained on frozen token states; saved without pickle.

This is how learned strategies (``attention``, ``se_mean``) are compared with the
parameter-free ones, and what ``seqpool explain`` explains. Token states are
standardised per channel with statistics of the training texts' real tokens (stored as
buffers) before pooling, so a linear head trains well whatever the encoder's scale; for
mean pooling this is the same as standardising the pooled vectors.
"""

from __future__ import annotations

import copy
import os
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor, nn

from seqpool._version import __version__
from seqpool.errors import SeqpoolError
from seqpool.layers import Pooler
from seqpool.pooling import normalize_mask
from seqpool.serialization import load_state, read_config, save_module
from seqpool.states import TokenStates


class PooledClassifier(nn.Module):
    """``logits = head(pooler(standardise(hidden_states), mask))`` for any pooling strategy.

    ``labels`` names the classes in index order (ints or strings); ``encoder`` optionally
    records which encoder produced the training states (``{"model": ..., "layer": ...}``)
    so an explanation can rebuild it.
    """

    def __init__(self, strategy: str, dim: int, num_labels: int, labels: Sequence[Any] | None = None,
                 encoder: dict[str, Any] | None = None, **pooler_kwargs: Any):
        super().__init__()
        if num_labels < 2:
            raise SeqpoolError(f"a classifier needs at least 2 classes, got {num_labels}")
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

    def standardize(self, hidden_states: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """Float32 states after the stored per-channel standardisation (padding set to 0)."""
        mask = normalize_mask(hidden_states, attention_mask)
        states = (hidden_states.float() - self.shift) * self.scale
        return states.masked_fill(~mask.unsqueeze(-1), 0.0)

    def forward(self, hidden_states: Tensor, attention_mask: Tensor | None = None) -> Tensor:
        """(B, num_labels) logits."""
        pooled = self.pooler(self.standardize(hidden_states, attention_mask), attention_mask)
        return self.head(pooled.float())

    def fit_standardization(self, states: TokenStates) -> None:
        """Per-channel mean and 1/std of the real tokens of ``states``.

        Accumulated in float64 chunk by chunk, so no float64 copy of every token is made.
        """
        count = states.states.shape[0]
        total = torch.zeros(self.dim, dtype=torch.float64)
        squares = torch.zeros(self.dim, dtype=torch.float64)
        for start in range(0, count, 65536):
            chunk = states.states[start:start + 65536].double()
            total += chunk.sum(dim=0)
            squares += chunk.square().sum(dim=0)
        mean = total / max(count, 1)
        variance = (squares - count * mean.square()).clamp(min=0.0) / max(count - 1, 1)
        self.shift.copy_(mean.float())
        self.scale.copy_((1.0 / variance.sqrt().clamp(min=1e-6)).float())

    def reset_parameters(self) -> None:
        for module in self.modules():
            if module is not self and hasattr(module, "reset_parameters"):
                module.reset_parameters()

    def fit(self, states: TokenStates, y: Sequence[int] | np.ndarray, *, seed: int,
            validation_fraction: float = 0.1, max_epochs: int = 40, patience: int = 5, lr: float = 1e-3,
            weight_decay: float = 1e-4, batch_size: int = 64) -> "PooledClassifier":
        """Train on ``states`` with early stopping on an inner stratified validation split.

        Only ``states`` is ever looked at (never a test fold); ``seed`` fixes the split,
        the initialisation and the batch order, without touching torch's global RNG.
        """
        y = _check_targets(y, len(states), self.num_labels)
        train_rows, val_rows = _validation_split(y, validation_fraction, seed)
        generator = torch.Generator().manual_seed(seed)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.reset_parameters()
        self.fit_standardization(states.subset(train_rows))
        optimizer = torch.optim.AdamW(self.parameters(), lr=lr, weight_decay=weight_decay)
        targets = torch.as_tensor(y, dtype=torch.long)
        best = (-1.0, float("inf"))
        best_state, stale, self.history_ = copy.deepcopy(self.state_dict()), 0, []
        for epoch in range(max_epochs):
            self.train()
            order = train_rows[torch.randperm(len(train_rows), generator=generator).numpy()]
            for start in range(0, len(order), batch_size):
                rows = order[start:start + batch_size]
                hidden, mask = states.padded(rows)
                loss = nn.functional.cross_entropy(self(hidden, mask), targets[rows])
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            val_logits = torch.from_numpy(self.predict_logits(states, val_rows))
            val_loss = float(nn.functional.cross_entropy(val_logits, targets[val_rows]))
            val_acc = float((val_logits.argmax(1) == targets[val_rows]).float().mean())
            self.history_.append({"epoch": epoch, "val_loss": val_loss, "val_accuracy": val_acc})
            if (val_acc, -val_loss) > (best[0], -best[1]):
                best, best_state, stale = (val_acc, val_loss), copy.deepcopy(self.state_dict()), 0
            else:
                stale += 1
                if stale >= patience:
                    break
        self.load_state_dict(best_state)
        return self.eval()

    @torch.no_grad()
    def predict_logits(self, states: TokenStates, indices: Sequence[int] | np.ndarray | None = None,
                       batch_size: int = 256) -> np.ndarray:
        """Float32 (N, num_labels) logits for the chosen texts, in the given order."""
        was_training = self.training
        self.eval()
        rows = np.arange(len(states)) if indices is None else np.asarray(indices, dtype=np.int64)
        logits = np.zeros((len(rows), self.num_labels), dtype=np.float32)
        by_length = np.argsort(states.lengths().numpy()[rows], kind="stable")  # less padding per batch
        for start in range(0, len(rows), batch_size):
            positions = by_length[start:start + batch_size]
            hidden, mask = states.padded(rows[positions])
            logits[positions] = self(hidden, mask).numpy()
        self.train(was_training)
        return logits

    def predict(self, states: TokenStates, indices: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
        """Predicted class indices (map through ``labels`` for names)."""
        return self.predict_logits(states, indices).argmax(axis=1)

    @property
    def config(self) -> dict[str, Any]:
        return {"seqpool_type": "PooledClassifier", "seqpool_version": __version__,
                "strategy": self.pooler.strategy, "dim": self.dim, "num_labels": self.num_labels,
                "labels": self.labels, "encoder": self.encoder_info, "pooler_kwargs": self.pooler.kwargs}

    def save_pretrained(self, directory: str | os.PathLike) -> None:
        """``config.json`` + ``model.safetensors`` (pooler, head and standardisation)."""
        save_module(self, self.config, directory)

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> "PooledClassifier":
        config = read_config(directory)
        if config.get("seqpool_type") != "PooledClassifier":
            raise SeqpoolError(
                f"{directory} holds a {config.get('seqpool_type', 'non-seqpool')!r} config, not a PooledClassifier")
        model = cls(config["strategy"], config["dim"], config["num_labels"], labels=config.get("labels"),
                    encoder=config.get("encoder"), **config.get("pooler_kwargs", {}))
        return load_state(model, directory).eval()


def _check_targets(y: Sequence[int] | np.ndarray, count: int, num_labels: int) -> np.ndarray:
    y = np.asarray(y)
    if y.shape != (count,):
        raise SeqpoolError(f"expected {count} targets (one per text), got shape {y.shape}")
    if not np.issubdtype(y.dtype, np.integer) or y.min(initial=0) < 0 or y.max(initial=0) >= num_labels:
        raise SeqpoolError(f"targets must be class indices in 0..{num_labels - 1}")
    return y.astype(np.int64)


def _validation_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified inner split of the training rows; stratification is dropped only when impossible."""
    from sklearn.model_selection import train_test_split

    rows = np.arange(len(y))
    if not 0.0 < fraction < 1.0:
        raise SeqpoolError(f"validation_fraction must be in (0, 1), got {fraction}")
    counts = np.bincount(y)
    stratify = y if counts[counts > 0].min() >= 2 and round(fraction * len(y)) >= len(counts[counts > 0]) else None
    train_rows, val_rows = train_test_split(rows, test_size=fraction, random_state=seed, stratify=stratify)
    return np.sort(train_rows), np.sort(val_rows)
