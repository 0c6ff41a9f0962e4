"""EvaluationSettings (one validated dataclass, recorded in the result) and CI clipping."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings as hsettings, strategies as st

from seqpool.cli.evaluate import as_flags
from seqpool.errors import SeqpoolError
from seqpool.evaluation import EvaluationSettings, evaluate
from seqpool.evaluation.protocol import Runs, summarize_cv
from seqpool.evaluation.report import _interval
from seqpool.evaluation.result import clip_interval

ROWS = [(f"{'good great' if i % 2 else 'bad boring'} film {i}", i % 2) for i in range(24)]


def data() -> tuple[list[str], list[int]]:
    return [t for t, _ in ROWS], [y for _, y in ROWS]


def test_settings_round_trip_through_the_json_result(tiny_bert_encoder, tmp_path):
    chosen = EvaluationSettings(folds=3, repeats=2, seed=7, c_grid=[0.5, 2], inner_folds=2, learning_curve="4,2",
                                curve_experiments=2, n_resamples=99, threads=1, layer=[-1],
                                learned_options={"max_epochs": 3}, cache_dir=tmp_path)
    assert chosen.c_grid == (0.5, 2.0) and chosen.learning_curve == (2, 4) and chosen.cache_dir == str(tmp_path)
    result = evaluate(data(), strategies="mean", settings=chosen, encoder=tiny_bert_encoder)
    recorded = json.loads(result.to_json())["protocol"]["settings"]
    assert EvaluationSettings.from_dict(recorded) == chosen
    assert recorded["folds"] == 3 and recorded["seed"] == 7 and recorded["learning_curve"] == [2, 4]
    assert result.protocol["folds"] == 3 and len(result.strategies["mean"].scores) == 6


def test_keywords_and_a_settings_object_are_the_same_run(tiny_bert_encoder, tmp_path):
    by_keywords = evaluate(data(), strategies="mean", folds=3, seed=1, threads=1, n_resamples=99,
                           encoder=tiny_bert_encoder, cache_dir=tmp_path)
    by_object = evaluate(data(), strategies="mean", encoder=tiny_bert_encoder,
                         settings=EvaluationSettings(folds=3, seed=1, threads=1, n_resamples=99, cache_dir=tmp_path))
    assert by_keywords.strategies["mean"].scores == by_object.strategies["mean"].scores
    assert by_keywords.protocol["settings"] == by_object.protocol["settings"]
    overridden = evaluate(data(), strategies="mean", encoder=tiny_bert_encoder, folds=2,
                          settings=EvaluationSettings(folds=3, threads=1, n_resamples=99, cache_dir=tmp_path))
    assert overridden.protocol["folds"] == 2  # keywords override the object


@pytest.mark.parametrize(("changes", "message", "parameter"), [
    ({"folds": 1}, "folds must be at least 2, got 1", "folds"),
    ({"repeats": 0}, "repeats must be at least 1", "repeats"),
    ({"inner_folds": 1}, "inner_folds must be at least 2, got 1 (or set tune=False)", "inner_folds"),
    ({"c_grid": [1, -2]}, "c_grid must hold positive numbers", "c_grid"),
    ({"threads": 0}, "threads must be at least 1", "threads"),
    ({"learning_curve": "8,x"}, "learning_curve takes comma-separated integers", "learning_curve"),
    ({"learned_options": {"max_epochs": 0}}, "max_epochs must be at least 1, got 0 (in learned_options)",
     "max_epochs"),
    ({"folds": 2.5}, "folds must be a whole number", "folds"),
])
def test_errors_name_the_python_parameter_and_the_cli_maps_it(changes, message, parameter):
    with pytest.raises(SeqpoolError) as error:
        EvaluationSettings(**changes)
    assert message in str(error.value) and "--" not in str(error.value)
    assert parameter in error.value.parameters
    assert str(as_flags(error.value)).startswith("--" + parameter.replace("_", "-"))


def test_inner_folds_is_not_checked_without_tuning_and_unknown_settings_are_refused(tmp_path):
    assert EvaluationSettings(inner_folds=1, tune=False).inner_folds == 1
    with pytest.raises(SeqpoolError, match="unknown setting fold"):
        evaluate(tmp_path / "never-read.jsonl", strategies="mean", fold=3)
    with pytest.raises(SeqpoolError, match="folds must be at least 2"):
        evaluate(tmp_path / "never-read.jsonl", strategies="mean", folds=1)  # before reading anything


def test_as_flags_maps_only_the_parameters_an_error_names():
    from seqpool.evaluation.settings import parameter_error

    error = as_flags(parameter_error("inner_folds must be at least 2, got 1 (or set tune=False); 4-fold folds",
                                     "inner_folds", "tune=False"))
    assert str(error) == "--inner-folds must be at least 2, got 1 (or set --no-tune); 4-fold folds"


@hsettings(max_examples=200, deadline=None)
@given(scores=st.lists(st.sampled_from([1.0, 1.0, 1.0, 0.99, 0.98, 0.95, 0.9, 0.0, 0.02, 0.05]), min_size=2,
                       max_size=30), n_test=st.integers(2, 200))
def test_cv_interval_of_accuracies_never_leaves_zero_to_one(scores, n_test):
    runs = Runs(accuracy=list(scores), macro_f1=list(scores))
    result = summarize_cv("mean", runs, n_train=4.0 * n_test, n_test=float(n_test), repeats=1, seed_table=None)
    low, high = result.ci95
    assert 0.0 <= low <= high <= 1.0 or (np.isnan(low) and np.isnan(high))
    assert 0.0 <= result.macro_f1_ci95[0] <= result.macro_f1_ci95[1] <= 1.0 or np.isnan(result.macro_f1_ci95[0])
    text = _interval(result.ci95)
    if text != "-":
        printed = [float(x) for x in text.strip("[]").split(", ")]
        assert 0.0 <= printed[0] <= printed[1] <= 100.0


def test_an_unclipped_interval_is_clipped_where_printed():
    assert clip_interval((0.93, 1.04)) == (0.93, 1.0)
    assert _interval((0.93, 1.04)) == "[93.00, 100.00]"
    assert _interval((-0.2, 0.1), bounds=(-1.0, 1.0)) == "[-20.00, 10.00]"  # differences keep their sign
