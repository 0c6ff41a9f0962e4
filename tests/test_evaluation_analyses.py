"""evaluate's analyses: accuracy by token length (``by_length``) and the saved winner (``save_best``).

Tiny random BERT (tests/conftest.py) on the synthetic corpus of tests/test_evaluate.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from seqpool.classifier import PooledClassifier
from seqpool.cli import main
from seqpool.errors import SeqpoolError
from seqpool.evaluation import cached_states, evaluate, load_labelled
from seqpool.evaluation.by_length import length_bins
from tests.test_evaluate import FAST, LEARNED_FAST, synthetic_rows, write_jsonl


@pytest.fixture(scope="module")
def toy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "toy.jsonl", synthetic_rows(80, seed=3))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def analysed(toy_file, tiny_bert_encoder, cache_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("out")
    result = evaluate(toy_file, strategies="mean,max,cls", folds=4, encoder=tiny_bert_encoder, cache_dir=cache_dir,
                      by_length=3, save_best=folder / "best", json_path=folder / "r.json",
                      plot_path=folder / "r.png", **FAST)
    return result, folder


@pytest.mark.parametrize("lengths,k", [([5, 5, 5, 6, 7, 8, 9, 9, 30, 31], 3), ([4] * 7, 4),
                                       (list(range(1, 101)), 4), ([3, 9, 3, 9, 3, 9], 5)])
def test_length_bins_partition_rows_and_never_split_equal_lengths(lengths, k):
    index, bins = length_bins(np.array(lengths), k)
    assert len(index) == len(lengths) and sum(b["examples"] for b in bins) == len(lengths)
    assert 1 <= len(bins) <= k and sorted(set(index)) == list(range(len(bins)))
    for length in set(lengths):
        assert len({index[i] for i, value in enumerate(lengths) if value == length}) == 1
    assert all(bins[i]["max_tokens"] < bins[i + 1]["min_tokens"] for i in range(len(bins) - 1))
    if len(set(lengths)) == len(lengths) and len(lengths) % k == 0:
        assert all(b["examples"] == len(lengths) // k for b in bins)  # distinct lengths: equal bins


def test_by_length_bins_partition_the_corpus_and_agree_with_the_overall_accuracy(analysed, toy_file, cache_dir,
                                                                                  tiny_bert_encoder):
    result, _ = analysed
    analysis = result.by_length
    states = cached_states(tiny_bert_encoder, load_labelled(toy_file).texts, cache_dir).states
    index, bins = length_bins(states.lengths().numpy(), 3)
    assert analysis["bins"] == [{**b, "test_examples_per_fold": pytest.approx(b["examples"] / 4)}
                                for b in bins] or [b["examples"] for b in analysis["bins"]] == [b["examples"]
                                                                                                for b in bins]
    assert sum(b["examples"] for b in analysis["bins"]) == 80
    for name, points in analysis["strategies"].items():
        assert len(points) == len(bins)
        overall = np.mean([s for s in result.strategies[name].scores])  # equal folds of 20: pooled = mean
        pooled = sum(p["accuracy"] * b["examples"] for p, b in zip(points, analysis["bins"])) / 80
        assert pooled == pytest.approx(overall)
        for point in points:
            assert point["ci95"][0] <= point["mean"] <= point["ci95"][1]
    assert len(analysis["comparisons"]) == len(bins)
    for comparisons in analysis["comparisons"]:
        assert {(c["a"], c["b"]) for c in comparisons} <= {(result.best, n) for n in result.strategies}
        for c in comparisons:
            assert c["p_adjusted"] >= c["p_value"]


def test_by_length_is_in_the_json_table_and_plot(analysed):
    result, folder = analysed
    data = json.loads((folder / "r.json").read_text())
    assert data["by_length"]["k"] == 3 and set(data["by_length"]["strategies"]) == {"mean", "max", "cls"}
    assert data["protocol"]["settings"]["by_length"] == 3
    table = result.table()
    assert "By length:" in table and "tok (n=" in table and f"Δ max - {result.best}" in table or \
        f"Δ mean - {result.best}" in table
    assert (folder / "r.png").read_bytes()[:4] == b"\x89PNG"


def test_save_best_folder_loads_and_predicts_what_the_final_fit_predicts(analysed, toy_file, cache_dir,
                                                                          tiny_bert_encoder):
    result, folder = analysed
    saved = result.saved
    assert saved["strategy"] == result.best and Path(saved["path"]) == folder / "best"
    model = PooledClassifier.from_pretrained(folder / "best")
    assert model.strategy == result.best and model.labels == ["neg", "pos"]
    assert model.encoder_info["model"] == str(tiny_bert_encoder.name_or_path)
    data = load_labelled(toy_file)
    states = cached_states(tiny_bert_encoder, data.texts, cache_dir).states
    predicted = model.predict(states)
    assert np.mean(predicted == data.labels) == pytest.approx(saved["training_accuracy"])
    # the same fit by scikit-learn at the chosen C: the folded-in standardisation changes nothing
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    pooled = states.pool([result.best])[result.best]
    reference = make_pipeline(StandardScaler(), LogisticRegression(C=saved["chosen_c"], max_iter=1000))
    assert np.mean(reference.fit(pooled, data.labels).predict(pooled) == predicted) >= 0.97
    assert not [p for p in folder.iterdir() if p.name.startswith(".")]  # no staging folder left


def test_saved_folder_works_in_seqpool_explain(analysed, tiny_bert_dir):
    _, folder = analysed
    result = CliRunner().invoke(main, ["explain", "--classifier", str(folder / "best"), "--model",
                                       str(tiny_bert_dir), "--no-color", "a good film"])
    assert result.exit_code == 0, result.output
    assert "top words:" in result.output


def test_save_best_refuses_a_non_empty_folder_before_any_work(toy_file, tmp_path, monkeypatch):
    target = tmp_path / "taken"
    target.mkdir()
    (target / "keep.txt").write_text("mine")
    with pytest.raises(SeqpoolError, match="not empty.*overwrite"):
        evaluate(toy_file, strategies="mean", encoder=object(), save_best=target)  # never reaches the encoder
    (tmp_path / "file").write_text("x")
    with pytest.raises(SeqpoolError, match="not a folder"):
        evaluate(toy_file, strategies="mean", encoder=object(), save_best=tmp_path / "file")
    assert (target / "keep.txt").read_text() == "mine"
    monkeypatch.chdir(tmp_path)
    cli = CliRunner().invoke(main, ["evaluate", "--train", str(toy_file), "--save-best", str(target)])
    assert cli.exit_code == 1 and "--save-best" in cli.output and "--overwrite" in cli.output
    assert "Traceback" not in cli.output


def test_save_best_overwrites_when_asked_and_saves_a_learned_winner(toy_file, tiny_bert_encoder, cache_dir,
                                                                   tmp_path):
    from seqpool.evaluation.save_best import save_atomically

    target = tmp_path / "best"
    save_atomically(PooledClassifier("mean", 32, 2), target, "an-earlier-run")  # what an earlier save_best left
    result = evaluate(toy_file, strategies="attention", folds=2, encoder=tiny_bert_encoder, cache_dir=cache_dir,
                      save_best=target, overwrite=True, learned_options=LEARNED_FAST, **FAST)
    assert (target / "config.json").is_file()
    model = PooledClassifier.from_pretrained(target)
    assert model.strategy == "attention" and result.saved["learned"] is True
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]
    (target / "old.txt").write_text("old")  # a file seqpool did not write: overwrite never deletes it
    with pytest.raises(SeqpoolError, match="not saved by seqpool"):
        evaluate(toy_file, strategies="attention", encoder=object(), save_best=target, overwrite=True)
    assert (target / "old.txt").read_text() == "old"


def test_by_length_must_be_at_least_two(toy_file):
    with pytest.raises(SeqpoolError, match="by_length"):
        evaluate(toy_file, strategies="mean", by_length=1)


def test_same_seed_gives_identical_results(toy_file, tiny_bert_encoder, cache_dir):
    runs = [evaluate(toy_file, strategies="mean,cls", folds=3, encoder=tiny_bert_encoder, cache_dir=cache_dir,
                     by_length=2, **FAST).to_dict() for _ in range(2)]
    for run in runs:
        run.pop("timings")
    assert runs[0] == runs[1]
