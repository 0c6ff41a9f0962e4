"""Third fault battery, evaluate and explain: outputs against inputs, the cache, saved winners,
bounded allocations, honest protocol records, safe names and terminal text, variance claims.

Each test runs what a user would (the CLI through click's runner, or the library call) on the
tiny models of conftest.py and small generated labelled jsonl files, and states what must hold.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from seqpool.cli import main
from seqpool.errors import SeqpoolError
from tests.test_evaluate import FAST, LEARNED_FAST, synthetic_rows, write_jsonl
from tests.workspace_snapshot import changed, snapshot


def run(args: list[str]):
    return CliRunner().invoke(main, [str(a) for a in args])


def one_line_error(result, *must_say: str) -> None:
    assert result.exit_code == 1, (result.exit_code, result.output, result.exception)
    assert "Traceback" not in result.output and result.stderr.count("\n") == 1, result.stderr
    for words in must_say:
        assert words in result.stderr, result.stderr


@pytest.fixture()
def workspace(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tiny_bert_dir: Path) -> Path:
    """A user's folder: labelled train/test files, a text file, a saved classifier, data in a folder."""
    from seqpool.classifier import PooledClassifier

    root = tmp_path / "ws"
    root.mkdir()
    write_jsonl(root / "tr.jsonl", synthetic_rows(24, seed=1))
    write_jsonl(root / "te.jsonl", synthetic_rows(12, seed=2))
    (root / "x.txt").write_text("a good film\na boring movie\n", encoding="utf-8")
    (root / "d").mkdir()
    write_jsonl(root / "d" / "tr.jsonl", synthetic_rows(24, seed=1))
    (root / "foreign").mkdir()
    (root / "foreign" / "notes.txt").write_text("mine", encoding="utf-8")
    os.link(root / "tr.jsonl", root / "link.png")
    PooledClassifier("mean", 32, 2, labels=["neg", "pos"],
                     encoder={"model": str(tiny_bert_dir), "layer": -1}).save_pretrained(root / "clf")
    monkeypatch.chdir(root)
    monkeypatch.setenv("SEQPOOL_CACHE", str(tmp_path / "cache"))
    return root


def evaluate_args(tiny_bert_dir: Path, *more: str) -> list[str]:
    return ["evaluate", "--model", tiny_bert_dir, "--strategies", "mean", "--folds", "2", "--no-tune", "-q",
            "--threads", "1", *more]


# -- 1. outputs are checked against inputs before any work --------------------------------------


COLLISIONS = {
    "json onto --test": (["--train", "tr.jsonl", "--test", "te.jsonl", "--json", "te.jsonl"], "--json"),
    "json onto --train": (["--train", "tr.jsonl", "--json", "tr.jsonl"], "--json"),
    "plot onto a hard link of --train": (["--train", "tr.jsonl", "--plot", "link.png"], "--plot"),
    "save-best holding --train": (["--train", "d/tr.jsonl", "--save-best", "d", "--overwrite"], "--save-best"),
    "save-best of the working folder": (["--train", "tr.jsonl", "--save-best", "."], "working folder"),
    "overwrite of a folder seqpool did not save": (["--train", "tr.jsonl", "--save-best", "foreign",
                                                    "--overwrite"], "--save-best"),
    "save-best onto the classifier folder": (["--train", "tr.jsonl", "--save-best", "clf", "--overwrite"],
                                             "--save-best"),
}


@pytest.mark.parametrize("name", list(COLLISIONS))
def test_evaluate_outputs_colliding_with_inputs_are_refused_and_nothing_changes(workspace, tiny_bert_dir, name,
                                                                                monkeypatch):
    import seqpool.encoder

    def no_model(*args, **kwargs):
        raise AssertionError("the encoder was loaded before the outputs were checked")

    monkeypatch.setattr(seqpool.encoder.Encoder, "__init__", no_model)
    arguments, says = COLLISIONS[name]
    before = snapshot(workspace)
    result = run(evaluate_args(tiny_bert_dir, *arguments))
    one_line_error(result, says)
    assert changed(before, snapshot(workspace)) == set()


@pytest.mark.parametrize("arguments,says", [
    (["--input", "x.txt", "--html", "x.txt"], "--html"),
    (["--html", "clf/config.json"], "--html"),
    (["--html", "out.png", "--png", "out.png"], "--png"),
])
def test_explain_outputs_colliding_with_inputs_are_refused_and_nothing_changes(workspace, arguments, says):
    before = snapshot(workspace)
    result = run(["explain", "--classifier", "clf", "--no-color", *arguments, "a good film"])
    one_line_error(result, says)
    assert changed(before, snapshot(workspace)) == set()


def test_a_run_changes_only_its_declared_outputs_and_overwrite_replaces_only_its_own_save(workspace,
                                                                                         tiny_bert_dir):
    before = snapshot(workspace)
    first = run(evaluate_args(tiny_bert_dir, "--train", "tr.jsonl", "--json", "r.json", "--save-best", "best"))
    assert first.exit_code == 0, first.output
    assert {path.split(os.sep)[0] for path in changed(before, snapshot(workspace))} == {"r.json", "best"}
    again = run(evaluate_args(tiny_bert_dir, "--train", "tr.jsonl", "--save-best", "best"))
    one_line_error(again, "--overwrite")
    middle = snapshot(workspace)
    replaced = run(evaluate_args(tiny_bert_dir, "--train", "tr.jsonl", "--save-best", "best", "--overwrite"))
    assert replaced.exit_code == 0, replaced.output
    assert {path.split(os.sep)[0] for path in changed(middle, snapshot(workspace))} <= {"best"}
    (workspace / "best" / "my-notes.txt").write_text("keep", encoding="utf-8")  # now it holds a user's file
    refused = run(evaluate_args(tiny_bert_dir, "--train", "tr.jsonl", "--save-best", "best", "--overwrite"))
    one_line_error(refused, "--save-best")
    assert (workspace / "best" / "my-notes.txt").read_text(encoding="utf-8") == "keep"


# -- 2. a damaged cache is re-encoded with one warning ----------------------------------------------


def _rewrite_states(path: Path, change) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(path), "pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(path))
    change(tensors["states"])
    save_file(tensors, str(path), metadata=metadata)


@pytest.mark.parametrize("damage", ["inf", "nan", "one value"])
def test_a_corrupted_cache_is_re_encoded_with_one_warning(tiny_bert_encoder, tmp_path, damage):
    from seqpool.evaluation.cache import cached_states

    texts = [row["text"] for row in synthetic_rows(12)]
    fresh = cached_states(tiny_bert_encoder, texts, tmp_path, warn=pytest.fail)
    path = Path(fresh.cache_path)
    changes = {"inf": lambda s: s.fill_(float("inf")), "nan": lambda s: s[3].fill_(float("nan")),
               "one value": lambda s: s[0, 0].add_(1.0)}
    _rewrite_states(path, changes[damage])
    warnings: list[str] = []
    again = cached_states(tiny_bert_encoder, texts, tmp_path, warn=warnings.append)
    assert len(warnings) == 1 and "cache" in warnings[0] and "re-encod" in warnings[0], warnings
    assert not again.cache_hit and torch.isfinite(again.states.states).all()
    torch.testing.assert_close(again.states.states, fresh.states.states)
    third = cached_states(tiny_bert_encoder, texts, tmp_path, warn=pytest.fail)  # the file was replaced
    assert third.cache_hit


def test_evaluate_on_a_poisoned_cache_warns_and_scores_above_chance(tiny_bert_dir, tmp_path):
    data = write_jsonl(tmp_path / "m.jsonl", synthetic_rows(40, seed=4))
    args = ["evaluate", "--train", data, "--model", tiny_bert_dir, "--strategies", "mean,max", "--folds", "2",
            "--no-tune", "--cache-dir", tmp_path / "cache", "--json", tmp_path / "r.json", "-q", "--threads", "1"]
    assert run(args).exit_code == 0
    [path] = (tmp_path / "cache" / "states").glob("*.safetensors")
    _rewrite_states(path, lambda s: s.fill_(float("inf")))
    result = run(args)
    assert result.exit_code == 0, result.output
    assert result.stderr.count("warning:") == 1 and "cache" in result.stderr, result.stderr
    scores = json.loads((tmp_path / "r.json").read_text())["strategies"]
    assert max(entry["mean"] for entry in scores.values()) > 0.7


# -- 3. explain of a binary winner: class 0 has its own (negated) map ------------------------------


def test_explain_of_a_saved_binary_winner_maps_class_zero_too(tiny_bert_dir, tiny_bert_encoder, tmp_path):
    from seqpool.evaluation import evaluate
    from seqpool.explain import explain, render_terminal

    data = write_jsonl(tmp_path / "m.jsonl", synthetic_rows(40, seed=5))
    evaluate(data, strategies="mean", folds=2, tune=False, encoder=tiny_bert_encoder, cache=False,
             save_best=tmp_path / "best", **FAST)
    texts = [row["text"] for row in synthetic_rows(20, seed=6)]
    explanations = explain(texts, tmp_path / "best", encoder=tiny_bert_encoder)
    predicted = {e.predicted for e in explanations}
    assert predicted == {0, 1}
    for e in explanations:
        mine, other = e.word_scores(), e.word_scores(1 - e.predicted)
        assert np.abs(mine).max() > 1e-4
        np.testing.assert_allclose(mine, -other, atol=1e-6)
        index = e.predicted
        total = e.word_contributions[:, index].sum() + e.special_contribution[index] + e.bias[index]
        assert total == pytest.approx(e.logits[index], abs=1e-4)
        assert e.logits[index] > 0  # the predicted class's own score is positive
        assert e.probabilities[index] > 0.5
        assert "+0.000 = words +0.000" not in render_terminal(e)


# -- 4. a saved winner records its layer choice ---------------------------------------------------


@pytest.mark.parametrize("strategies", ["mean@-2,cls", "cls@1,mean", "mean@1", "attention@1", "attention@1,mean"])
def test_save_best_of_strategies_on_other_layers_round_trips_through_explain(tiny_bert_dir, tiny_bert_encoder,
                                                                            tmp_path, strategies):
    from seqpool.classifier import PooledClassifier
    from seqpool.explain import encoder_for

    data = write_jsonl(tmp_path / "m.jsonl", synthetic_rows(40, seed=7))
    best = tmp_path / "b2"
    args = ["evaluate", "--train", data, "--model", tiny_bert_dir, "--strategies", strategies, "--folds", "2",
            "--no-tune", "--max-epochs", "3", "--save-best", best, "--json", tmp_path / "r.json", "--no-cache",
            "-q", "--threads", "1"]
    result = run(args)
    assert result.exit_code == 0, result.output
    saved = json.loads((tmp_path / "r.json").read_text())["saved_best"]
    classifier = PooledClassifier.from_pretrained(best)
    assert classifier.dim == 32 and classifier.strategy == saved["strategy"].split("@")[0]
    if saved["strategy"].endswith("@1"):
        assert classifier.encoder_info["layer"] == 1
    encoder = encoder_for(classifier, tiny_bert_dir)
    texts = [row["text"] for row in synthetic_rows(40, seed=7)]
    labels = np.array([["neg", "pos"].index(row["label"]) for row in synthetic_rows(40, seed=7)])
    accuracy = float(np.mean(classifier.predict(encoder.token_states(texts)) == labels))
    assert accuracy == pytest.approx(saved["training_accuracy"], abs=1e-9)  # explain pools the winner's states
    explained = run(["explain", "--classifier", best, "--model", tiny_bert_dir, "--no-color", "a good film"])
    assert explained.exit_code == 0, explained.output


def test_save_best_refuses_strategies_it_cannot_save_before_encoding(tiny_bert_dir, tmp_path, monkeypatch):
    import seqpool.evaluation.cache

    monkeypatch.setattr(seqpool.evaluation.cache, "encode_states", pytest.fail)
    data = write_jsonl(tmp_path / "m.jsonl", synthetic_rows(20))
    for strategies in ("mean,scalar_mix", "cls@1+mean"):
        result = run(["evaluate", "--train", data, "--model", tiny_bert_dir, "--strategies", strategies,
                      "--folds", "2", "--save-best", tmp_path / "b", "--no-cache", "-q"])
        one_line_error(result, "--save-best")
        assert not (tmp_path / "b").exists()


# -- 5. no tracebacks, no huge allocations ------------------------------------------------------------


def test_by_length_with_as_many_bins_as_texts_reports_without_a_traceback(tiny_bert_dir, tmp_path):
    """Ten texts of distinct short lengths (one-text bins: no test) before longer ones that share lengths
    (bins with tests): each row of the report still has a cell per bin."""
    rows = [{"text": " ".join([("bad", "good")[i % 2]] + ["film"] * (i + 1 if i < 10 else 12 + i % 3)),
             "label": i % 2} for i in range(28)]
    data = write_jsonl(tmp_path / "m.jsonl", rows)
    result = run(["evaluate", "--train", data, "--model", tiny_bert_dir, "--strategies", "mean,max",
                  "--folds", "2", "--no-tune", "--by-length", "28", "--no-cache", "-q", "--threads", "1",
                  "--json", tmp_path / "r.json"])
    assert result.exit_code == 0, (result.output, result.exception)
    analysis = json.loads((tmp_path / "r.json").read_text())["by_length"]
    assert len(analysis["bins"]) > 10 and not analysis["comparisons"][0] and any(analysis["comparisons"])
    assert "By length:" in result.stdout and "Δ " in result.stdout


def _learned_saves(tmp_path: Path):
    from seqpool.classifier import PooledClassifier
    from seqpool.pooling.attentive_stats import AttentiveStatisticsPooling
    from seqpool.pooling.gem import GeMPooling
    from seqpool.pooling.latent_attention import LatentAttentionPooling
    from seqpool.pooling.pooler import Pooler
    from seqpool.pooling.scalar_mix import ScalarMix

    return {
        "classifier": (PooledClassifier("mean", 8, 2), PooledClassifier, "dim"),
        "pooler": (Pooler("attention", 8), Pooler, "dim"),
        "gem": (GeMPooling(8, per_channel=True), GeMPooling, "dim"),
        "latent_attention": (LatentAttentionPooling(8), LatentAttentionPooling, "dim"),
        "attentive_stats": (AttentiveStatisticsPooling(8), AttentiveStatisticsPooling, "dim"),
        "scalar_mix": (ScalarMix(3), ScalarMix, "num_layers"),
    }


def _guarded(factory):
    """``factory`` refusing to make a real (not ``meta``) tensor of over 10**8 elements."""
    def guarded(*args, **kwargs):
        size = args[0] if args and isinstance(args[0], (tuple, list, torch.Size)) else \
            [a for a in args if isinstance(a, int)]
        device = torch.device(kwargs.get("device") or torch.get_default_device())
        if device.type != "meta" and float(np.prod([float(s) for s in size])) > 1e8:
            raise AssertionError(f"tried to allocate {tuple(size)}")
        return factory(*args, **kwargs)
    return guarded


@pytest.mark.parametrize("kind", ["classifier", "pooler", "gem", "latent_attention", "attentive_stats",
                                  "scalar_mix"])
def test_a_config_that_disagrees_with_its_weights_is_refused_before_anything_is_built(tmp_path, kind,
                                                                                     monkeypatch):
    module, cls, key = _learned_saves(tmp_path)[kind]
    module.save_pretrained(tmp_path / kind)
    config_path = tmp_path / kind / "config.json"
    config = json.loads(config_path.read_text())
    config[key] = 10**9
    config_path.write_text(json.dumps(config))
    for factory in ("empty", "zeros", "ones", "full"):  # any real tensor of over 10**8 elements fails the test
        monkeypatch.setattr(torch, factory, _guarded(getattr(torch, factory)))
    start = time.perf_counter()
    with pytest.raises(SeqpoolError, match="model.safetensors"):
        cls.from_pretrained(tmp_path / kind)
    assert time.perf_counter() - start < 10


# -- 6. the JSON records the inner folds actually used ------------------------------------------------


def test_inner_folds_recorded_are_the_ones_used(tiny_bert_encoder, tmp_path):
    from seqpool.evaluation import evaluate

    data = write_jsonl(tmp_path / "m.jsonl", synthetic_rows(28, seed=9))  # 14 per class; 2 folds: 7 in training
    result = evaluate(data, strategies="mean", folds=2, inner_folds=50, encoder=tiny_bert_encoder, cache=False,
                      **FAST)
    recorded = json.loads(result.to_json())["protocol"]["classifier"]
    assert recorded["inner_folds"] == 7 and recorded["inner_folds_requested"] == 50


# -- 7. safe strategy names; no terminal control sequences from user text ---------------------------


@pytest.mark.parametrize("name", ["../../escape", "a/b", ".hidden", "-flag", "x\\y", "a:b", "é", "a\x1b"])
def test_strategy_names_outside_the_safe_set_are_refused(name):
    from seqpool.registry import register_strategy

    with pytest.raises(SeqpoolError, match="name must be a non-empty string"):
        register_strategy(name, lambda h, m: h.mean(1))


def test_safe_names_register_and_a_plugin_with_a_bad_name_is_a_warning(tmp_path, monkeypatch):
    from seqpool import registry
    from tests.test_plugins import GOOD, make_plugin

    registry.register_strategy("my.mean-2_v1", lambda h, m: h.mean(1))
    registry.unregister_strategy("my.mean-2_v1")
    registry._forget_plugins()
    root = tmp_path / "site"
    root.mkdir()
    make_plugin(root, {"..evil": (GOOD, "twice_mean")})
    monkeypatch.syspath_prepend(str(root))
    try:
        with pytest.warns(UserWarning, match="invalid name"):
            names = registry.strategy_names()
        assert "..evil" not in names and "mean" in names
    finally:
        registry._forget_plugins()


def test_explain_strips_terminal_control_sequences_from_the_text(workspace):
    hostile = "a good \x1b]0;pwned\x07film\x1b[2J \x9b31m movie\x1b[31m red"
    for color in ("--no-color", "--color"):
        result = run(["explain", "--classifier", "clf", color, hostile])
        assert result.exit_code == 0, result.output
        text = result.stdout
        assert "\x07" not in text and "\x9b" not in text and "\x1b]" not in text and "\x1b[2J" not in text
        if color == "--no-color":
            assert "\x1b" not in text
        assert "film" in text and "movie" in text


# -- 8. the variance split states its uncertainty ------------------------------------------------------


def test_variance_components_carry_degrees_of_freedom_and_an_interval_that_covers():
    from seqpool.stats import variance_components

    rng = np.random.default_rng(0)
    split_var, seed_var, covered = 1e-4, 4e-4, 0
    truth = seed_var / (split_var + seed_var)
    trials = 400
    for _ in range(trials):
        table = rng.normal(0, np.sqrt(split_var), (10, 1)) + rng.normal(0, np.sqrt(seed_var), (10, 3))
        components = variance_components(table)
        low, high = components.seed_share_ci
        covered += low <= truth <= high
        assert 0.0 <= low <= components.seed_share <= high <= 1.0
    assert components.split_df == 9 and components.seed_df == 20
    assert 0.92 <= covered / trials <= 0.98


@pytest.mark.parametrize("folds,repeats,says", [(5, 2, "too few repeats to split the variance"),
                                                (5, 3, "95% CI")])
def test_variance_line_states_df_and_interval_or_declines(tiny_bert_encoder, tmp_path, folds, repeats, says):
    from seqpool.evaluation import evaluate

    data = write_jsonl(tmp_path / "m.jsonl", synthetic_rows(40, seed=10))
    result = evaluate(data, strategies="attention", folds=folds, repeats=repeats, tune=False,
                      encoder=tiny_bert_encoder, cache=False, learned_options={**LEARNED_FAST, "max_epochs": 2},
                      **FAST)
    [line] = [line for line in result.table().splitlines() if line.startswith("Variance:")]
    assert says in line and f"{folds - 1} and {folds * (repeats - 1)} df" in line, line
    if repeats == 2:  # no share is claimed at all
        assert "of the fold-score variance from the seed" not in line
    variance = result.strategies["attention"].variance
    assert variance["seed_df"] == folds * (repeats - 1) and variance["split_df"] == folds - 1


def test_a_save_best_folder_holds_exactly_what_serialization_writes():
    """save_best names serialization's files without importing it (torch-free option checks)."""
    from seqpool.evaluation.save_best import SAVED_FILES
    from seqpool.io.ownership import FOLDER_MARKER
    from seqpool.serialization import CONFIG_NAME, WEIGHTS_NAME

    assert SAVED_FILES == {CONFIG_NAME, WEIGHTS_NAME, FOLDER_MARKER}
