"""A saved PooledClassifier pools, in the pipeline and in explain, the hidden layer it was trained on.

``evaluate --save-best`` saves a ``mean@-2`` winner as ``mean`` over an encoder of layer -2 (recorded
in config.json); the pipeline must encode that layer, not the model's last one, or the head reads
states it never saw and predicts silently wrong.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import pipeline

import seqpool.pipeline  # noqa: F401  (registers the "seqpool" task)
from seqpool.classifier import PooledClassifier
from seqpool.encoder import Encoder
from seqpool.errors import SeqpoolError
from seqpool.explain import encoder_for, explain
from seqpool.pipeline import TASK

TEXTS = ["the film was good", "a boring , very long movie that was not funny at all", "cat", ""]


def _random_classifier(strategy: str, encoder_info: dict | None, seed: int = 0) -> PooledClassifier:
    """A 2-class classifier over the tiny BERT's 32-dim states with every weight drawn at random."""
    classifier = PooledClassifier(strategy, 32, 2, labels=["neg", "pos"], encoder=encoder_info)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in list(classifier.parameters()) + [classifier.shift]:
            tensor.copy_(torch.randn(tensor.shape, generator=generator))
        classifier.scale.copy_(torch.rand(32, generator=generator) + 0.5)
    return classifier.eval()


@pytest.fixture(scope="module")
def second_to_last(tiny_bert_dir):
    """The tiny BERT's states of hidden layer -2 (= 1 of 0..2), where the saved classifiers were trained."""
    return Encoder(tiny_bert_dir, layer=-2)


@pytest.fixture
def layer_1_classifier(tiny_bert_dir, tmp_path):
    """A mean classifier saved as ``evaluate --save-best`` saves a ``mean@-2`` winner: layer 1 recorded."""
    classifier = _random_classifier("mean", {"model": str(tiny_bert_dir), "layer": 1, "max_length": 64})
    classifier.save_pretrained(tmp_path / "clf")
    return classifier, str(tmp_path / "clf")


def _expected(classifier: PooledClassifier, encoder: Encoder) -> tuple[np.ndarray, np.ndarray]:
    """The classifier's pooled vectors and logits for TEXTS on ``encoder``'s states."""
    states = encoder.token_states(TEXTS)
    hidden, mask = states.padded()
    with torch.no_grad():
        pooled = classifier.pooler(classifier.standardize(hidden, mask), mask).numpy()
    return pooled, classifier.predict_logits(states)


def test_pipeline_built_with_a_classifier_encodes_its_recorded_layer(tiny_bert_dir, second_to_last,
                                                                     layer_1_classifier):
    classifier, folder = layer_1_classifier
    embed = pipeline(TASK, model=str(tiny_bert_dir), device="cpu", pooling=folder)
    assert embed.encoder.layers == (1,)
    pooled, logits = _expected(classifier, second_to_last)
    got = np.stack(embed(TEXTS, batch_size=2))
    np.testing.assert_allclose(got, pooled, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        np.testing.assert_allclose(classifier.head(torch.from_numpy(got)).numpy(), logits, atol=1e-4)
    last = Encoder(tiny_bert_dir)  # the states the pipeline used to pool: a real difference, not a tie
    assert not np.allclose(_expected(classifier, last)[0], pooled, atol=1e-3)


def test_an_equivalent_layer_index_is_accepted(tiny_bert_dir, second_to_last, layer_1_classifier):
    classifier, folder = layer_1_classifier
    embed = pipeline(TASK, model=str(tiny_bert_dir), device="cpu", pooling=folder, layer=-2)  # -2 is 1 of 0..2
    np.testing.assert_allclose(np.stack(embed(TEXTS)), _expected(classifier, second_to_last)[0],
                               atol=1e-5, rtol=1e-5)


def test_a_contradicting_layer_is_refused_naming_layer(tiny_bert_dir, layer_1_classifier):
    _, folder = layer_1_classifier
    with pytest.raises(SeqpoolError, match=r"layer=1\b") as error:
        pipeline(TASK, model=str(tiny_bert_dir), device="cpu", pooling=folder, layer=-1)
    assert "\n" not in str(error.value) and "layer 1" in str(error.value)


def test_per_call_classifier_on_a_pipeline_of_another_layer_is_refused(tiny_bert_dir, second_to_last,
                                                                       layer_1_classifier):
    classifier, folder = layer_1_classifier
    last_layer = pipeline(TASK, model=str(tiny_bert_dir), device="cpu")
    with pytest.raises(SeqpoolError, match=r"layer=1\b"):
        last_layer(TEXTS, pooling=["mean", folder])
    with pytest.raises(SeqpoolError, match=r"layer=1\b"):
        last_layer([], pooling=folder)  # refused before any text, as any bad argument
    on_layer_1 = pipeline(TASK, model=str(tiny_bert_dir), device="cpu", layer=1)
    got = on_layer_1(TEXTS, pooling=["mean", folder])
    np.testing.assert_allclose(np.stack([r[folder] for r in got]), _expected(classifier, second_to_last)[0],
                               atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(np.stack([r["mean"] for r in got]), second_to_last.encode(TEXTS, "mean")["mean"],
                               atol=1e-5, rtol=1e-5)


def test_classifiers_of_different_layers_in_one_pipeline_are_refused(tiny_bert_dir, layer_1_classifier, tmp_path):
    _, folder = layer_1_classifier
    _random_classifier("mean", {"layer": -1}).save_pretrained(tmp_path / "last")
    with pytest.raises(SeqpoolError, match="pooling="):
        pipeline(TASK, model=str(tiny_bert_dir), device="cpu", pooling=[folder, str(tmp_path / "last")])


def test_classifier_without_a_recorded_layer_pools_the_pipelines_layer(tiny_bert_dir, second_to_last, tmp_path):
    classifier = _random_classifier("max", None)  # saved by hand, no encoder recorded: the caller decides
    classifier.save_pretrained(tmp_path / "plain")
    embed = pipeline(TASK, model=str(tiny_bert_dir), device="cpu", layer=1, pooling=str(tmp_path / "plain"))
    np.testing.assert_allclose(np.stack(embed(TEXTS)), _expected(classifier, second_to_last)[0],
                               atol=1e-5, rtol=1e-5)


def test_recorded_max_length_is_the_default(tiny_bert_dir, tmp_path):
    _random_classifier("mean", {"layer": -1, "max_length": 5}).save_pretrained(tmp_path / "short")
    embed = pipeline(TASK, model=str(tiny_bert_dir), device="cpu", pooling=str(tmp_path / "short"))
    assert embed.encoder.max_length == 5
    assert pipeline(TASK, model=str(tiny_bert_dir), device="cpu", pooling=str(tmp_path / "short"),
                    max_length=7).encoder.max_length == 7  # a shorter or longer cut is the caller's choice


def test_explain_and_the_pipeline_read_the_same_settings(tiny_bert_dir, layer_1_classifier):
    from seqpool.classifier import EncoderSettings

    classifier, folder = layer_1_classifier
    settings = classifier.encoder_settings
    assert settings == EncoderSettings(model=str(tiny_bert_dir), layer=1, max_length=64)
    assert encoder_for(classifier).layers == (1,)
    embed = pipeline(TASK, model=str(tiny_bert_dir), device="cpu", pooling=folder)
    assert embed.encoder.layers == encoder_for(classifier).layers
    assert embed.encoder.max_length == encoder_for(classifier).max_length == 64


def test_explain_refuses_an_encoder_of_another_layer(tiny_bert_encoder, second_to_last, layer_1_classifier):
    classifier, folder = layer_1_classifier
    with pytest.raises(SeqpoolError, match="encoder") as error:
        explain(["a good film"], folder, encoder=tiny_bert_encoder)
    assert "layer 1" in str(error.value) and "\n" not in str(error.value)
    explained = explain(["a good film"], classifier, encoder=second_to_last)[0]
    np.testing.assert_allclose(explained.logits, classifier.predict_logits(second_to_last.token_states(
        ["a good film"]))[0], atol=1e-4)


@pytest.mark.parametrize("info,message", [({"layer": "last"}, "layer"), ({"layer": [1, "x"]}, "layer"),
                                          ({"layer": []}, "layer"), ({"max_length": 0}, "max_length"),
                                          ({"model": 3}, "model")])
def test_malformed_recorded_settings_are_refused(tmp_path, info, message):
    _random_classifier("mean", info).save_pretrained(tmp_path / "bad")
    with pytest.raises(SeqpoolError, match=message):
        PooledClassifier.from_pretrained(tmp_path / "bad").encoder_settings


@pytest.mark.parametrize("strategies", ["mean@-2", "attention@1"])
def test_a_save_best_winner_of_another_layer_predicts_in_the_pipeline_as_in_training(tiny_bert_dir, second_to_last,
                                                                                    tmp_path, strategies):
    from seqpool.evaluation.run import evaluate

    texts = [f"{['good', 'great', 'funny', 'bad', 'boring', 'not'][i % 6]} film {i}" for i in range(24)]
    labels = [int(i % 6 < 3) for i in range(24)]
    result = evaluate((texts, labels), strategies=strategies, folds=2, tune=False, encoder=Encoder(tiny_bert_dir),
                      save_best=tmp_path / "best", cache=False, threads=1, n_resamples=99,
                      learned_options={"max_epochs": 2})
    classifier = PooledClassifier.from_pretrained(tmp_path / "best")
    assert classifier.encoder_settings.layer == 1
    embed = pipeline(TASK, model=str(tiny_bert_dir), device="cpu", pooling=str(tmp_path / "best"))
    with torch.no_grad():
        logits = classifier.head(torch.from_numpy(np.stack(embed(texts, batch_size=8)))).numpy()
    expected = classifier.predict_logits(second_to_last.token_states(texts))
    np.testing.assert_allclose(logits, expected, atol=1e-4)
    assert np.mean(logits.argmax(1) == np.array(labels)) == pytest.approx(result.saved["training_accuracy"])
