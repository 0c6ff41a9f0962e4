"""PooledClassifier.fit: early stopping, seeded reproducibility, the global RNG left alone,
training settings in the constructor and in config.json, strict loading of a saved folder.
"""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
import torch

from seqpool import PooledClassifier, SeqpoolError, TokenStates
from seqpool.classifier import TRAINING_FIELDS, _validation_split
from seqpool.serialization import CONFIG_NAME

DIM = 8


def toy_states(count: int = 80, signal: float = 1.0, seed: int = 0) -> tuple[TokenStates, np.ndarray]:
    """Texts of 2..6 tokens; class 1 shifts channel 0 by ``signal`` (0 = labels are pure noise)."""
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(2, 7, (count,), generator=generator)
    labels = np.arange(count) % 2
    states = torch.randn(int(lengths.sum()), DIM, generator=generator)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    for row in np.flatnonzero(labels):
        states[offsets[row]:offsets[row + 1], 0] += signal
    return TokenStates(states, offsets), labels


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


def test_early_stopping_ends_patience_epochs_after_the_best_and_restores_it():
    states, y = toy_states(signal=0.0)  # nothing to learn: validation stops improving early
    model = PooledClassifier("mean", DIM, 2, max_epochs=200, patience=3, lr=0.05, seed=4).fit(states, y)
    history = model.history_
    scores = [(epoch["val_accuracy"], -epoch["val_loss"]) for epoch in history]
    best = max(range(len(scores)), key=lambda epoch: (scores[epoch], -epoch))
    assert len(history) < 200
    assert len(history) == best + 1 + 3  # exactly `patience` epochs without improvement
    assert all(score <= scores[best] for score in scores[best + 1:])
    _, val_rows = _validation_split(y, 0.1, 4)
    logits = torch.from_numpy(model.predict_logits(states, val_rows))
    val_loss = float(torch.nn.functional.cross_entropy(logits, torch.as_tensor(y[val_rows])))
    assert val_loss == pytest.approx(history[best]["val_loss"], abs=1e-6)  # the best epoch's weights


def test_learns_a_separable_task():
    states, y = toy_states(signal=3.0)
    model = PooledClassifier("mean", DIM, 2, max_epochs=30, lr=0.05, seed=0).fit(states, y)
    assert (model.predict(states) == y).mean() > 0.9


@pytest.mark.parametrize("strategy, pooler_kwargs", [("mean", {}), ("attention", {"dropout": 0.5, "heads": 2}),
                                                     ("se_mean", {"reduction": 2})])
def test_same_seed_same_weights_other_seed_other_weights(strategy, pooler_kwargs):
    states, y = toy_states()

    def fitted(seed: int, global_seed: int) -> dict[str, torch.Tensor]:
        torch.manual_seed(global_seed)  # must not matter: dropout draws from the fit's own seeded RNG
        model = PooledClassifier(strategy, DIM, 2, max_epochs=4, seed=seed, **pooler_kwargs)
        return weights(model.fit(states, y))

    first = fitted(seed=1, global_seed=10)
    assert same_weights(first, fitted(seed=1, global_seed=20))
    assert not same_weights(first, fitted(seed=2, global_seed=10))


def test_global_random_states_are_untouched():
    states, y = toy_states()
    torch.manual_seed(123)
    np.random.seed(123)
    random.seed(123)

    def global_states() -> tuple:
        return torch.get_rng_state(), np.random.get_state(), random.getstate()

    def assert_unchanged(before: tuple, after: tuple) -> None:
        assert torch.equal(before[0], after[0])
        assert before[1][0] == after[1][0] and np.array_equal(before[1][1], after[1][1])
        assert before[1][2:] == after[1][2:]
        assert before[2] == after[2]

    before = global_states()
    model = PooledClassifier("attention", DIM, 2, dropout=0.5, max_epochs=3)  # initialised from its seed
    assert_unchanged(before, global_states())
    model.fit(states, y)
    assert_unchanged(before, global_states())


def test_fit_keywords_override_for_that_call_and_are_recorded(tmp_path):
    states, y = toy_states()
    model = PooledClassifier("mean", DIM, 2, max_epochs=6, patience=100)
    assert len(model.fit(states, y).history_) == 6
    assert len(model.fit(states, y, max_epochs=2).history_) == 2
    assert model.get_params()["max_epochs"] == 6  # the constructor's setting is kept
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / CONFIG_NAME).read_text(encoding="utf-8"))
    assert saved["training"]["max_epochs"] == 2  # but the folder says how its weights were made
    assert PooledClassifier.from_pretrained(tmp_path).get_params()["max_epochs"] == 2


def test_settings_round_trip_and_the_folder_reproduces_the_weights(tmp_path):
    states, y = toy_states()
    settings = {"seed": 7, "max_epochs": 5, "patience": 2, "lr": 0.01, "weight_decay": 0.0, "batch_size": 16,
                "validation_fraction": 0.25}
    model = PooledClassifier("attention", DIM, 2, labels=["neg", "pos"], heads=2, dropout=0.25, **settings)
    model.fit(states, y).save_pretrained(tmp_path)
    loaded = PooledClassifier.from_pretrained(tmp_path)
    assert loaded.get_params() == model.get_params()
    assert {name: loaded.get_params()[name] for name in TRAINING_FIELDS} == settings
    assert same_weights(weights(loaded), weights(model))
    twin = PooledClassifier(**loaded.get_params()).fit(states, y)  # retrained from the folder alone
    assert same_weights(weights(twin), weights(model))


def test_set_params_changes_training_settings_only():
    model = PooledClassifier("mean", DIM, 2)
    assert model.set_params(lr=0.5, patience=9) is model
    assert model.get_params()["lr"] == 0.5 and model.get_params()["patience"] == 9
    with pytest.raises(SeqpoolError, match="strategy.*architecture"):
        model.set_params(strategy="max")


@pytest.mark.parametrize("setting, value", [("lr", 0), ("lr", "fast"), ("batch_size", 0), ("max_epochs", 1.5),
                                            ("patience", 0), ("validation_fraction", 1.0), ("seed", -1), ("seed", 2**32),
                                            ("weight_decay", -0.1), ("max_epochs", True)])
def test_bad_settings_are_refused_naming_the_parameter(setting, value):
    with pytest.raises(SeqpoolError, match=setting):
        PooledClassifier("mean", DIM, 2, **{setting: value})
    with pytest.raises(SeqpoolError, match=setting):
        PooledClassifier("mean", DIM, 2).set_params(**{setting: value})


# -- strict loading -------------------------------------------------------------------------


@pytest.fixture()
def saved_folder(tmp_path):
    states, y = toy_states(count=20)
    PooledClassifier("mean", DIM, 2, labels=["neg", "pos"], max_epochs=1).fit(states, y).save_pretrained(tmp_path)
    return tmp_path


def edit_config(folder, change) -> None:
    path = folder / CONFIG_NAME
    config = json.loads(path.read_text(encoding="utf-8"))
    change(config)
    path.write_text(json.dumps(config), encoding="utf-8")


@pytest.mark.parametrize("change, named", [
    (lambda c: c.pop("dim"), "'dim'"),
    (lambda c: c.pop("strategy"), "'strategy'"),
    (lambda c: c.pop("num_labels"), "'num_labels'"),
    (lambda c: c.update(dim="8"), "'dim' must be an integer"),
    (lambda c: c.update(dim=True), "'dim' must be an integer"),
    (lambda c: c.update(strategy=3), "'strategy' must be a string"),
    (lambda c: c.update(labels="np"), "'labels' must be a list"),
    (lambda c: c.update(encoder=[]), "'encoder' must be an object"),
    (lambda c: c.update(pooler_kwargs=None), "'pooler_kwargs' must be an object"),
    (lambda c: c.update(pooler_kwargs={"heads": 2}), "config.json does not describe.*heads"),
    (lambda c: c.update(num_labels=1), "config.json does not describe.*at least 2 classes"),
    (lambda c: c.update(training=5), "'training' must be an object"),
    (lambda c: c["training"].update(lr="fast"), "'training.lr' must be a number"),
    (lambda c: c["training"].update(max_epochs=2.5), "'training.max_epochs' must be an integer"),
    (lambda c: c["training"].update(bogus=1), "bogus"),
    (lambda c: c["training"].update(lr=-1.0), "config.json .*lr must be positive"),
])
def test_a_broken_config_is_one_error_naming_the_key(saved_folder, change, named):
    edit_config(saved_folder, change)
    with pytest.raises(SeqpoolError, match=named) as error:
        PooledClassifier.from_pretrained(saved_folder)
    assert "\n" not in str(error.value)


def test_a_folder_saved_before_training_settings_loads_with_the_defaults(saved_folder):
    edit_config(saved_folder, lambda c: c.pop("training"))
    loaded = PooledClassifier.from_pretrained(saved_folder)
    defaults = PooledClassifier("mean", DIM, 2).get_params()
    assert {name: loaded.get_params()[name] for name in TRAINING_FIELDS} == {name: defaults[name]
                                                                           for name in TRAINING_FIELDS}
    assert loaded.labels == ["neg", "pos"]
