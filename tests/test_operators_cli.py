"""The issue-11 operators, concatenations and layer choices through the command line:
``seqpool strategies``, ``seqpool embed --strategy ...`` and ``seqpool evaluate --strategies ...``,
with the tiny random models of conftest.py."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from seqpool.cli import main
from seqpool.encoder import Encoder
from seqpool.io import load_embeddings

LINES = ["the cat sat on the mat", "", "hello world", "a very good film", "not a bad movie at all", "xyz"]
OPERATORS = {"mean_std": "parameter-free", "power_mean": "parameter-free", "gem": "learned",
             "attentive_stats": "learned", "latent_attention": "learned", "scalar_mix": "learned"}


def invoke(*args) -> object:
    return CliRunner().invoke(main, [*map(str, args)])


@pytest.fixture
def corpus(tmp_path) -> Path:
    path = tmp_path / "corpus.txt"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return path


def test_strategies_lists_every_operator_with_its_kind():
    result = invoke("strategies")
    assert result.exit_code == 0
    kinds = {line.split("\t")[0]: line.split("\t")[1] for line in result.output.splitlines()}
    for name, kind in OPERATORS.items():
        assert kinds[name] == kind


def test_embed_writes_concatenations_layers_and_power_means(corpus, tmp_path, tiny_bert_dir):
    strategies = ["mean+max", "mean@-2", "p3", "mean@1~-1", "cls@0+mean"]
    result = invoke("embed", corpus, "--model", tiny_bert_dir, "-o", tmp_path / "emb.npy", "--strategy",
                    ",".join(strategies))
    assert result.exit_code == 0, result.output
    expected = Encoder(tiny_bert_dir).encode(LINES, strategies)
    widths = {"mean+max": 64, "mean@-2": 32, "p3": 32, "mean@1~-1": 32, "cls@0+mean": 64}
    for strategy in strategies:
        rows = np.load(tmp_path / f"emb.{strategy}.npy")  # the expression names the file
        assert rows.shape == (len(LINES), widths[strategy])
        np.testing.assert_array_equal(rows, expected[strategy])
    layer_minus_2 = Encoder(tiny_bert_dir, layer=-2).encode(LINES, ["mean"])["mean"]
    np.testing.assert_allclose(expected["mean@-2"], layer_minus_2, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fmt", ["parquet", "jsonl", "safetensors"])
def test_one_file_formats_hold_columns_of_different_widths(corpus, tmp_path, tiny_bert_dir, fmt):
    out = tmp_path / f"emb.{fmt}"
    result = invoke("embed", corpus, "--model", tiny_bert_dir, "-o", out, "--strategy", "mean+max,mean@0")
    assert result.exit_code == 0, result.output
    expected = Encoder(tiny_bert_dir).encode(LINES, ["mean+max", "mean@0"])
    for strategy, vectors in expected.items():
        np.testing.assert_array_equal(load_embeddings(out, strategy), vectors)


@pytest.mark.parametrize("strategy, message", [
    ("mean@5", "strategy 'mean@5': layer 5 is out of range; this model has hidden states 0..2"),
    ("mean+attention", "only parameter-free strategies can be concatenated"),
    ("gem", "is learned"),
    ("mean@x", "after '@' comes a hidden layer index"),
])
def test_embed_refuses_bad_expressions_in_one_line_and_writes_nothing(corpus, tmp_path, tiny_bert_dir,
                                                                        strategy, message):
    result = invoke("embed", corpus, "--model", tiny_bert_dir, "-o", tmp_path / "emb.npy", "--strategy", strategy)
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.txt"]


def test_evaluate_compares_operators_layers_and_learned_poolers(tmp_path, tiny_bert_dir):
    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        label = ("neg", "pos")[i % 2]
        words = list(rng.choice("the a of film movie story cat sat on mat".split(), 5))
        words.append(("bad", "good")[i % 2])
        rows.append({"text": " ".join(words), "label": label})
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    strategies = "mean+max,mean@-2,p3,mean_std,mean@1~-1,gem,attention@0,latent_attention,scalar_mix"
    result = invoke("evaluate", "--train", data, "--model", tiny_bert_dir, "--strategies", strategies,
                    "--folds", "2", "--max-epochs", "2", "--threads", "1", "--cache-dir", tmp_path / "cache",
                    "--json", tmp_path / "out.json")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "out.json").read_text())
    assert list(report["strategies"]) == strategies.split(",")
    assert report["strategies"]["scalar_mix"]["learned"] and not report["strategies"]["mean+max"]["learned"]
    assert all(0.0 <= result["mean"] <= 1.0 for result in report["strategies"].values())
    for strategy in strategies.split(","):
        assert strategy in result.output  # the table names every strategy
    cached = list((tmp_path / "cache" / "states").glob("*.safetensors"))
    assert len(cached) == 1  # every layer of every strategy: one encoder pass, one cache file
