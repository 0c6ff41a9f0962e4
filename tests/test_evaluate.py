"""seqpool.evaluate and ``seqpool evaluate``: protocol, cache, determinism, output, bad input.

A tiny random BERT (tests/conftest.py) encodes a synthetic corpus whose label is carried
by one class-specific word among filler words, so pooled states carry a learnable signal.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from seqpool import stats
from seqpool.cli import main
from seqpool.errors import SeqpoolError
from seqpool.evaluation import (
    DEFAULT_STRATEGIES,
    cv_splits,
    evaluate,
    learning_curve_samples,
    load_labelled,
    states_cache_path,
    encoder_fingerprint,
)
from seqpool.states import TokenStates

FILLER = "the a an and or of to in is it was this that film movie story cat dog sat on mat".split()
CUES = {"pos": "good great funny".split(), "neg": "bad boring not".split()}
FAST = {"threads": 1, "n_resamples": 999}
LEARNED_FAST = {"max_epochs": 8, "lr": 1e-2, "patience": 3}


def synthetic_rows(count: int, seed: int = 0, labels: tuple = ("neg", "pos")) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        label = labels[i % len(labels)]
        words = list(rng.choice(FILLER, rng.integers(4, 10))) + [rng.choice(CUES[label] if label in CUES
                                                                           else CUES["pos"])]
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": label})
    return rows


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def toy_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_jsonl(tmp_path_factory.mktemp("data") / "toy.jsonl", synthetic_rows(80))


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def cv_result(toy_file, tiny_bert_encoder, cache_dir):
    return evaluate(toy_file, strategies="mean,max,cls,attention", folds=4, repeats=2, encoder=tiny_bert_encoder,
                    cache_dir=cache_dir, learned_options=LEARNED_FAST, **FAST)


def test_cv_json_has_every_required_key(cv_result):
    data = json.loads(cv_result.to_json())
    assert set(data["strategies"]) == {"mean", "max", "cls", "attention"}
    for name, entry in data["strategies"].items():
        assert len(entry["scores"]) == 8  # 2 repeats x 4 folds
        assert entry["mean"] == pytest.approx(np.mean(entry["scores"]))
        assert entry["std"] == pytest.approx(np.std(entry["scores"], ddof=1))
        low, high = entry["ci95"]
        assert low <= entry["mean"] <= high
    for comparison in data["comparisons"]:
        assert {"a", "b", "diff", "p_value", "p_adjusted", "test"} <= set(comparison)
        assert comparison["p_value"] <= comparison["p_adjusted"] <= 1.0
    protocol = data["protocol"]
    assert protocol["folds"] == 4 and protocol["repeats"] == 2 and protocol["seed"] == 0
    assert protocol["classifier"]["c_grid"] == [0.25, 0.5, 1.0, 2.0, 4.0, 8.0]
    assert len(protocol["data"]["train"]["sha256"]) == 64 and protocol["layer"] == [-1]
    assert {"seqpool", "torch", "transformers", "scikit-learn"} <= set(data["versions"])
    assert {"encode_seconds", "pool_seconds", "fit_seconds", "evaluation_seconds"} <= set(data["timings"])


def test_cv_statistics_are_the_corrected_ones_on_paired_scores(cv_result):
    protocol = cv_result.protocol
    for name, res in cv_result.strategies.items():
        expected = stats.corrected_ci(res.scores, protocol["n_train"], protocol["n_test"])
        assert res.ci95 == pytest.approx(expected.ci)
    assert len(cv_result.comparisons) == 3  # the best against each other strategy
    p_values = [c.p_value for c in cv_result.comparisons]
    np.testing.assert_allclose([c.p_adjusted for c in cv_result.comparisons], stats.holm(p_values))
    for c in cv_result.comparisons:
        assert c.a == cv_result.best
        paired = np.asarray(cv_result.strategies[c.a].scores) - np.asarray(cv_result.strategies[c.b].scores)
        assert c.diff == pytest.approx(paired.mean())


def test_cv_finds_the_signal_and_ranks(cv_result):
    assert cv_result.strategies["mean"].mean > 0.7  # chance is 0.5
    ranks = sorted(res.rank for res in cv_result.strategies.values())
    assert ranks == [1, 2, 3, 4]
    assert cv_result.strategies[cv_result.best].rank == 1
    assert cv_result.strategies[cv_result.best].mean == max(r.mean for r in cv_result.strategies.values())


def test_variance_decomposition_with_repeats(cv_result):
    learned = cv_result.strategies["attention"].variance
    assert learned["split"] >= 0 and learned["seed"] >= 0 and 0 <= learned["seed_share"] <= 1
    assert "4 splits" in learned["design"]
    fixed = cv_result.strategies["mean"].variance
    assert fixed["seed"] == 0.0 and fixed["split"] == pytest.approx(cv_result.strategies["mean"].std ** 2)


def test_table_reports_every_strategy_with_ci_delta_and_verdict(cv_result):
    table = cv_result.table()
    for name in ("mean", "max", "cls", "attention (learned)"):
        assert name in table
    assert f"Best: {cv_result.best}." in table and "Δ to" in table and "p (Holm)" in table
    assert "Nadeau-Bengio" in table and "encode" in table


def test_cv_splits_are_stratified_partitions_reshuffled_per_repeat():
    labels = np.repeat([0, 1, 2], [10, 20, 30])
    splits = cv_splits(labels, folds=5, repeats=2, seed=3)
    for partition in splits:
        tests = np.concatenate([test for _, test in partition])
        assert sorted(tests) == list(range(60))  # every row tested exactly once
        for train, test in partition:
            assert not set(train) & set(test)
            assert np.bincount(labels[test]).tolist() == [2, 4, 6]
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(*splits))
    again = cv_splits(labels, folds=5, repeats=2, seed=3)
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(splits[1], again[1]))


def test_same_seed_same_numbers_new_seed_new_splits(toy_file, tiny_bert_encoder, cache_dir):
    def run(seed):
        result = evaluate(toy_file, strategies="mean,se_mean", folds=3, seed=seed, encoder=tiny_bert_encoder,
                          cache_dir=cache_dir, learned_options=LEARNED_FAST, **FAST)
        data = result.to_dict()
        return data["strategies"], data["comparisons"]

    first = run(0)
    assert run(0) == first
    assert run(1)[0]["mean"]["scores"] != first[0]["mean"]["scores"]


def test_second_run_reuses_the_cache_and_does_not_encode(toy_file, tiny_bert_encoder, tmp_path, monkeypatch):
    first = evaluate(toy_file, strategies="mean", folds=3, encoder=tiny_bert_encoder, cache_dir=tmp_path, **FAST)
    assert first.protocol["cache_hit"] == [False]
    cached = TokenStates.load(first.protocol["cache"][0])
    assert cached.states.dtype == torch.float16 and len(cached) == 80

    def must_not_encode(*args, **kwargs):
        raise AssertionError("the encoder ran although the states were cached")

    monkeypatch.setattr(tiny_bert_encoder, "hidden_states", must_not_encode)
    second = evaluate(toy_file, strategies="mean", folds=3, encoder=tiny_bert_encoder, cache_dir=tmp_path, **FAST)
    assert second.protocol["cache_hit"] == [True]
    assert second.timings["encode_seconds"] == 0.0
    assert second.strategies["mean"].scores == first.strategies["mean"].scores


def test_cache_key_changes_with_texts_and_layer(tiny_bert_dir, tiny_bert_encoder, tmp_path):
    from seqpool.encoder import Encoder

    key = states_cache_path(tmp_path, encoder_fingerprint(tiny_bert_encoder), ["a b", "c"])
    assert key == states_cache_path(tmp_path, encoder_fingerprint(tiny_bert_encoder), ["a b", "c"])
    assert key != states_cache_path(tmp_path, encoder_fingerprint(tiny_bert_encoder), ["a", "b c"])
    other_layer = Encoder(tiny_bert_dir, layer=1)
    assert key != states_cache_path(tmp_path, encoder_fingerprint(other_layer), ["a b", "c"])


def test_damaged_cache_file_is_re_encoded(toy_file, tiny_bert_encoder, tmp_path):
    first = evaluate(toy_file, strategies="mean", folds=3, encoder=tiny_bert_encoder, cache_dir=tmp_path, **FAST)
    Path(first.protocol["cache"][0]).write_bytes(b"not a safetensors file")
    again = evaluate(toy_file, strategies="mean", folds=3, encoder=tiny_bert_encoder, cache_dir=tmp_path, **FAST)
    assert again.protocol["cache_hit"] == [False]
    assert again.strategies["mean"].scores == first.strategies["mean"].scores


def test_train_test_single_run_uses_mcnemar_with_bootstrap_ci(tmp_path, tiny_bert_encoder, cache_dir):
    train = write_jsonl(tmp_path / "train.jsonl", synthetic_rows(80, seed=1))
    test = write_jsonl(tmp_path / "test.jsonl", synthetic_rows(40, seed=2))
    result = evaluate(train, test, strategies="mean,max,cls", encoder=tiny_bert_encoder, cache_dir=cache_dir, **FAST)
    assert result.protocol["mode"] == "train-test" and result.protocol["n_test"] == 40
    for res in result.strategies.values():
        assert len(res.scores) == 1 and res.ci95[0] <= res.mean <= res.ci95[1]
        assert res.mean * 40 == pytest.approx(round(res.mean * 40))  # an accuracy on 40 examples
    for c in result.comparisons:
        assert c.test.startswith("mcnemar") and c.ci95 is not None and 0 <= c.extra["p_value_bootstrap"] <= 1
    data = json.loads(result.to_json())  # strict JSON: no NaN
    assert data["strategies"]["mean"]["macro_f1_ci95"] == [None, None]
    assert "accuracy % (mean ± SE)" in result.table()


def test_all_pairs_compares_every_pair_and_keeps_delta_to_best(toy_file, tiny_bert_encoder, cache_dir):
    result = evaluate(toy_file, strategies="mean,max,cls", folds=3, all_pairs=True, encoder=tiny_bert_encoder,
                      cache_dir=cache_dir, **FAST)
    assert {(c.a, c.b) for c in result.comparisons} == {("mean", "max"), ("mean", "cls"), ("max", "cls")}
    np.testing.assert_allclose([c.p_adjusted for c in result.comparisons],
                               stats.holm([c.p_value for c in result.comparisons]))
    others = [name for name in ("mean", "max", "cls") if name != result.best]
    rows = [line for line in result.table().splitlines() if line.split()[1:2] and line.split()[1] in others]
    assert len(rows) == 2 and all("[" in row.split(" ", 3)[-1] for row in rows)


def test_train_test_with_seeds_bootstraps_seeds_and_examples(tmp_path, tiny_bert_encoder, cache_dir):
    train = write_jsonl(tmp_path / "train.jsonl", synthetic_rows(80, seed=1))
    test = write_jsonl(tmp_path / "test.jsonl", synthetic_rows(40, seed=2))
    result = evaluate(train, test, strategies="mean,attention", repeats=3, encoder=tiny_bert_encoder,
                      cache_dir=cache_dir, learned_options=LEARNED_FAST, **FAST)
    assert len(result.strategies["attention"].scores) == 3 and len(result.strategies["mean"].scores) == 1
    assert result.comparisons[0].test == "paired bootstrap (seeds x examples)"
    floor = result.comparisons[0].extra["p_value_floor"]
    assert floor == pytest.approx(2 / 1000) and result.comparisons[0].p_value >= floor  # 999 resamples
    variance = result.strategies["attention"].variance
    assert variance["seed"] == pytest.approx(np.var(result.strategies["attention"].scores, ddof=1))
    assert variance["test_sample"] > 0


def test_learning_curve_and_plot(toy_file, tiny_bert_encoder, cache_dir, tmp_path):
    result = evaluate(toy_file, strategies="mean,cls", folds=4, learning_curve=[2, 6], curve_experiments=3,
                      encoder=tiny_bert_encoder, cache_dir=cache_dir, **FAST)
    curve = result.to_dict()["learning_curve"]
    assert curve["sizes"] == [2, 6] and curve["test_examples"] == 20  # a 1/4 stratified holdout
    for points in curve["strategies"].values():
        assert [p["n_per_class"] for p in points] == [2, 6]
        for point in points:
            assert len(point["scores"]) == 3 and point["ci95"][0] <= point["mean"] <= point["ci95"][1]
    assert "Learning curve" in result.table()
    image = result.plot(tmp_path / "plot.png")
    assert image.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp file left


def test_learning_curve_samples_are_balanced_and_within_the_pool():
    labels = np.repeat([0, 1], [30, 50])
    pool = np.arange(10, 80)
    rows = learning_curve_samples(labels, pool, 8, seed=0)
    assert np.bincount(labels[rows]).tolist() == [8, 8] and set(rows) <= set(pool) and len(set(rows)) == 16
    with pytest.raises(SeqpoolError, match="needs 25 examples of every class"):
        learning_curve_samples(labels, pool, 25, seed=0)


def test_labels_may_be_ints_or_strings_and_other_formats_load(tmp_path):
    import pandas as pd

    frame = pd.DataFrame({"sentence": ["a b", "c d", "e f"], "y": [3, 1, 3]})
    frame.to_csv(tmp_path / "data.csv", index=False)
    frame.to_parquet(tmp_path / "data.parquet")
    for name in ("data.csv", "data.parquet"):
        data = load_labelled(tmp_path / name, text_field="sentence", label_field="y")
        assert data.label_names == [1, 3] and data.labels.tolist() == [1, 0, 1] and data.texts[1] == "c d"


# -- bad input: one clear line, exit code 1 --------------------------------------------------


def invoke(*args: str):
    return CliRunner().invoke(main, ["evaluate", *args])


@pytest.fixture
def write(tmp_path):
    def make(name: str, rows: list[dict] | str) -> str:
        path = tmp_path / name
        if isinstance(rows, str):
            path.write_text(rows, encoding="utf-8")
        else:
            write_jsonl(path, rows)
        return str(path)

    return make


@pytest.mark.parametrize(
    ("rows", "extra", "message"),
    [
        ([{"text": "a", "y": 1}] * 20, [], "no label column 'label'"),
        ([{"text": "a", "label": "x"}] * 20, [], "single class"),
        (synthetic_rows(12), [], "needs at least 10 per class"),
        (synthetic_rows(40), ["--strategies", "mean,bogus"], "unknown pooling strategy 'bogus'"),
        ("", [], "is empty"),
        ([{"text": 3, "label": 1}, {"text": "b", "label": 0}] * 20, [], "row 1: text is int"),
        (synthetic_rows(40), ["--learning-curve", "8,x"], "comma-separated integers"),
        (synthetic_rows(40), ["--folds", "1"], "--folds must be at least 2"),
        (synthetic_rows(40), ["--plot", "out.unknownformat"], "cannot write a plot"),
        (synthetic_rows(40), ["--learning-curve", "30"], "needs 30 training examples per class"),
        (synthetic_rows(40), ["--no-tune", "--c-grid", "1,-2"], "positive numbers"),
    ],
)
def test_bad_input_gives_one_line_and_exit_1(write, rows, extra, message, tiny_bert_dir):
    path = write("data.jsonl", rows)
    result = invoke("--train", path, "--model", str(tiny_bert_dir), "--no-cache", *extra)
    assert result.exit_code == 1
    assert message in result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output


def test_disjoint_train_test_labels(write, tiny_bert_dir):
    train = write("train.jsonl", synthetic_rows(20))
    test = write("test.jsonl", [{"text": "a b", "label": "other"}] * 5)
    result = invoke("--train", train, "--test", test, "--model", str(tiny_bert_dir), "--no-cache")
    assert result.exit_code == 1 and "share no label" in result.output


def test_in_memory_texts_and_labels(tiny_bert_encoder, tmp_path):
    rows = synthetic_rows(30)
    result = evaluate(([r["text"] for r in rows], [r["label"] for r in rows]), strategies="mean", folds=3,
                      encoder=tiny_bert_encoder, cache_dir=tmp_path, **FAST)
    assert result.protocol["data"]["train"]["labels"] == ["neg", "pos"]
    with pytest.raises(SeqpoolError, match="cannot use these texts and labels"):
        evaluate((["a", "b"], [1, "x"]), strategies="mean", encoder=tiny_bert_encoder)


def test_missing_file_is_a_user_error(tmp_path):
    with pytest.raises(SeqpoolError, match="not found"):
        evaluate(tmp_path / "missing.jsonl", strategies="mean")


def test_library_rejects_unknown_strategy_before_loading(tmp_path):
    with pytest.raises(SeqpoolError, match="choose one of"):
        evaluate(tmp_path / "never-read.jsonl", strategies=["mean", "median"])


def test_cli_end_to_end_writes_table_json_and_plot(toy_file, tiny_bert_dir, tmp_path):
    json_path, plot_path = tmp_path / "out" / "r.json", tmp_path / "out" / "r.png"
    result = invoke("--train", str(toy_file), "--strategies", "mean,max", "--folds", "3", "--model",
                    str(tiny_bert_dir), "--cache-dir", str(tmp_path / "cache"), "--threads", "1", "--json",
                    str(json_path), "--plot", str(plot_path), "--quiet")
    assert result.exit_code == 0, result.output
    assert "Best:" in result.output and "mean" in result.output
    data = json.loads(json_path.read_text())
    assert set(data["strategies"]) == {"mean", "max"} and data["protocol"]["folds"] == 3
    assert plot_path.read_bytes()[:4] == b"\x89PNG"


def test_default_strategies_are_all_parameter_free_plus_learned():
    from seqpool.pooling.pooler import LEARNED_STRATEGIES
    from seqpool.pooling import STRATEGIES

    assert DEFAULT_STRATEGIES == STRATEGIES + LEARNED_STRATEGIES
    assert {"attention", "se_mean"} <= set(DEFAULT_STRATEGIES)


@pytest.mark.integration
def test_minilm_on_a_small_mr_subset(senteval_dir, minilm_path, tmp_path):
    with open(senteval_dir / "mr.jsonl", encoding="utf-8") as lines:  # not splitlines(): texts hold U+2028
        rows = [json.loads(line) for line in lines]
    subset = [rows[i] for i in np.random.default_rng(0).permutation(len(rows))[:300]]
    path = write_jsonl(tmp_path / "mr300.jsonl", subset)
    result = evaluate(path, strategies="mean,max,cls", folds=3, model=minilm_path, cache_dir=tmp_path, **FAST)
    mean = result.strategies["mean"]
    assert mean.ci95[0] > 0.5  # clearly better than chance even from 200 training texts
    assert result.timings["encode_seconds"] > 0 and result.timings["pool_seconds"] < result.timings["encode_seconds"]


def test_fingerprint_sees_a_changed_weight_and_ignores_thread_count(tiny_bert_encoder):
    import copy

    from seqpool.encoder import Encoder

    before = encoder_fingerprint(tiny_bert_encoder)
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        assert encoder_fingerprint(tiny_bert_encoder) == before
    finally:
        torch.set_num_threads(threads)
    model = copy.deepcopy(tiny_bert_encoder.model)
    with torch.no_grad():
        model.encoder.layer[0].attention.self.query.weight[5, 7] += 1e-3
    tuned = Encoder.from_model(model, tiny_bert_encoder.tokenizer, max_length=tiny_bert_encoder.max_length)
    assert encoder_fingerprint(tuned)["weights_sha256"] != before["weights_sha256"]
