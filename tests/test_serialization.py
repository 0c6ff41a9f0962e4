"""Saving and loading: config.json + model.safetensors, never pickle, clear errors.

Every Pooler variant must come back with identical outputs; anything that is not a
matching saved Pooler must be refused with a SeqpoolError rather than a traceback or a
silently wrong module.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from seqpool import STRATEGIES, Pooler, SeqpoolError
from seqpool.serialization import CONFIG_NAME, WEIGHTS_NAME, load_state, read_config, save_module

DIM = 8
ROUND_TRIP_CASES = (
    [(strategy, {}) for strategy in STRATEGIES]
    + [("max", {"dim": DIM})]
    + [
        ("attention", {"dim": DIM}),
        ("attention", {"dim": DIM, "heads": 3}),
        ("attention", {"dim": DIM, "heads": 2, "hidden_dim": 5, "dropout": 0.25}),
        ("se_mean", {"dim": DIM}),
        ("se_mean", {"dim": DIM, "reduction": 2}),
        ("se_mean", {"dim": DIM, "rd_ratio": 0.5}),
        ("se_mean", {"dim": DIM, "rd_channels": 3, "act_layer": "gelu", "gate_layer": "hardsigmoid", "bias": False}),
    ]
)
round_trip_cases = pytest.mark.parametrize(
    "strategy, kwargs", ROUND_TRIP_CASES, ids=[f"{s}-{'-'.join(map(str, k.values()))}" for s, k in ROUND_TRIP_CASES]
)


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """States with garbage padding and a mask with every layout (right, left, holes, empty, full)."""
    mask = torch.tensor([[1, 1, 0, 0], [0, 0, 1, 1], [1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    states = torch.randn(5, 4, DIM, generator=torch.Generator().manual_seed(0))
    return states.masked_fill(~mask[..., None], float("nan")), mask


def saved_pooler(directory: Path, strategy: str, **kwargs) -> Pooler:
    torch.manual_seed(7)
    pooler = Pooler(strategy, **kwargs).eval()
    pooler.save_pretrained(directory)
    return pooler


@round_trip_cases
def test_round_trip_gives_identical_outputs(tmp_path, strategy, kwargs):
    original = saved_pooler(tmp_path, strategy, **kwargs)
    torch.manual_seed(99)  # a fresh module would get other random weights: they must come from the file
    loaded = Pooler.from_pretrained(tmp_path)
    assert not loaded.training  # like Hugging Face from_pretrained: ready for inference, dropout off
    assert loaded.config == original.config
    assert loaded.state_dict().keys() == original.state_dict().keys()
    for name, tensor in original.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], tensor), name
    assert torch.equal(loaded(*batch()), original(*batch()))


@round_trip_cases
def test_weights_file_is_a_real_safetensors_file(tmp_path, strategy, kwargs):
    original = saved_pooler(tmp_path, strategy, **kwargs)
    with safe_open(str(tmp_path / WEIGHTS_NAME), framework="pt") as weights:
        assert set(weights.keys()) == set(original.state_dict())
        assert weights.metadata()["format"] == "pt"
        for name, tensor in original.state_dict().items():
            assert torch.equal(weights.get_tensor(name), tensor)
    config = json.loads((tmp_path / CONFIG_NAME).read_text(encoding="utf-8"))
    assert config["seqpool_type"] == "Pooler" and config["strategy"] == strategy
    assert sorted(path.name for path in tmp_path.iterdir()) == [CONFIG_NAME, WEIGHTS_NAME]  # no temp files left


def test_saving_creates_folders_and_overwrites_an_older_save(tmp_path):
    directory = tmp_path / "a" / "b"
    saved_pooler(directory, "attention", dim=DIM, heads=2)
    newer = saved_pooler(directory, "se_mean", dim=DIM)
    loaded = Pooler.from_pretrained(directory)
    assert loaded.strategy == "se_mean"
    assert torch.equal(loaded(*batch()), newer(*batch()))


def test_generic_modules_round_trip_and_load_strictly(tmp_path):
    layer = torch.nn.Linear(3, 2)
    save_module(layer, {"kind": "linear", "sizes": [3, 2]}, tmp_path)
    assert read_config(tmp_path) == {"kind": "linear", "sizes": [3, 2]}
    loaded = load_state(torch.nn.Linear(3, 2), tmp_path)
    assert torch.equal(loaded.weight, layer.weight) and torch.equal(loaded.bias, layer.bias)
    wider = torch.nn.Linear(3, 4)
    before = wider.weight.clone()
    with pytest.raises(SeqpoolError, match=r"wrong shape .*weight \(2, 3\) vs \(4, 3\)"):
        load_state(wider, tmp_path)
    assert torch.equal(wider.weight, before)  # refused before anything was copied
    with pytest.raises(SeqpoolError, match=r"missing \['0.bias', '0.weight'\]; unexpected \['bias', 'weight'\]"):
        load_state(torch.nn.Sequential(torch.nn.Linear(3, 2)), tmp_path)


# ---------------------------------------------------------------- refusals


def test_missing_files_are_reported(tmp_path):
    with pytest.raises(SeqpoolError, match=f"{CONFIG_NAME} is missing"):
        Pooler.from_pretrained(tmp_path)
    saved_pooler(tmp_path, "attention", dim=DIM)
    (tmp_path / WEIGHTS_NAME).unlink()
    with pytest.raises(SeqpoolError, match=f"{WEIGHTS_NAME} is missing"):
        Pooler.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "saved, expected, message",
    [
        ({"strategy": "attention", "dim": DIM, "heads": 2}, {"strategy": "attention", "dim": DIM, "heads": 3}, "score"),
        ({"strategy": "attention", "dim": DIM}, {"strategy": "attention", "dim": 4}, "score"),
        ({"strategy": "mean"}, {"strategy": "se_mean", "dim": DIM}, "missing"),
        ({"strategy": "attention", "dim": DIM}, {"strategy": "mean"}, "unexpected"),
        ({"strategy": "attention", "dim": DIM}, {"strategy": "se_mean", "dim": DIM}, "missing"),
    ],
)
def test_weights_that_do_not_match_the_config_are_refused(tmp_path, saved, expected, message):
    saved_pooler(tmp_path / "other", **saved)
    saved_pooler(tmp_path / "target", **expected)
    shutil.copyfile(tmp_path / "other" / WEIGHTS_NAME, tmp_path / "target" / WEIGHTS_NAME)
    with pytest.raises(SeqpoolError, match=message):
        Pooler.from_pretrained(tmp_path / "target")


@pytest.mark.parametrize("content", [b"", b"not a safetensors file", b"\xff" * 64])
def test_a_corrupt_weights_file_is_refused(tmp_path, content):
    saved_pooler(tmp_path, "attention", dim=DIM)
    (tmp_path / WEIGHTS_NAME).write_bytes(content)
    with pytest.raises(SeqpoolError, match=WEIGHTS_NAME):
        Pooler.from_pretrained(tmp_path)


@pytest.mark.parametrize(
    "config, message",
    [
        ('{"seqpool_type": "PooledClassifier", "strategy": "mean"}', "not a Pooler"),
        ('{"model_type": "bert", "hidden_size": 32}', "not a Pooler"),
        ("[1, 2, 3]", "JSON object"),
        ("{not json", "not valid JSON"),
        ('{"seqpool_type": "Pooler"}', "strategy"),
        ('{"seqpool_type": "Pooler", "strategy": "mean", "kwargs": [1]}', "kwargs"),
        ('{"seqpool_type": "Pooler", "strategy": "median"}', "choose one of"),
    ],
)
def test_configs_that_are_not_a_pooler_are_refused(tmp_path, config, message):
    saved_pooler(tmp_path, "mean")
    (tmp_path / CONFIG_NAME).write_text(config, encoding="utf-8")
    with pytest.raises(SeqpoolError, match=message):
        Pooler.from_pretrained(tmp_path)


def test_config_fields_checks_presence_and_type_naming_the_key(tmp_path):
    from seqpool.serialization import REQUIRED, config_fields

    fields = {"dim": (int, REQUIRED), "lr": (float, 0.1), "name": (str, "x")}
    assert config_fields({"dim": 3, "lr": 1}, fields, tmp_path) == {"dim": 3, "lr": 1.0, "name": "x"}
    assert isinstance(config_fields({"dim": 3, "lr": 1}, fields, tmp_path)["lr"], float)
    for config, message in [({}, "lacks the key 'dim'"), ({"dim": "3"}, "'dim' must be an integer"),
                            ({"dim": True}, "'dim' must be an integer"), ({"dim": 3, "lr": False}, "'lr' must be a"),
                            ({"dim": 3, "name": None}, "'name' must be a string")]:
        with pytest.raises(SeqpoolError, match=message) as error:
            config_fields(config, fields, tmp_path)
        assert str(tmp_path / CONFIG_NAME) in str(error.value)
    with pytest.raises(SeqpoolError, match="'training.dim'"):
        config_fields({}, fields, tmp_path, prefix="training.")
