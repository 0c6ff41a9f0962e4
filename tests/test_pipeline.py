"""The Hugging Face pipeline gives Encoder's vectors, batched or not, for every kind of pooling."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer, pipeline

import seqpool.pipeline  # noqa: F401  (registers the "seqpool" task)
from seqpool.classifier import PooledClassifier
from seqpool.encoder import Encoder
from seqpool.errors import SeqpoolError
from seqpool.pooling.pooler import Pooler
from seqpool.pipeline import TASK, PoolingPipeline, register_pipeline
from seqpool.pooling import STRATEGIES

TEXTS = ["the film was good", "a boring , very long movie that was not funny at all", "cat", "",
         "hello world hello world hello world", "Ünïcödé text, with punctuation!"]


@pytest.fixture(scope="module")
def bert_pipe(tiny_bert_dir):
    """One pipeline over the tiny BERT, reused where construction arguments do not matter."""
    return pipeline(TASK, model=str(tiny_bert_dir), device="cpu")


def _stacked(results: list, strategy: str | None = None) -> np.ndarray:
    return np.stack([r if strategy is None else r[strategy] for r in results])


@pytest.mark.parametrize("batch_size", [1, 4])
def test_every_strategy_matches_encoder_on_bert(bert_pipe, tiny_bert_encoder, batch_size):
    results = bert_pipe(TEXTS, pooling=list(STRATEGIES), batch_size=batch_size)
    expected = tiny_bert_encoder.encode(TEXTS, STRATEGIES)
    assert len(results) == len(TEXTS) and all(set(r) == set(STRATEGIES) for r in results)
    for strategy in STRATEGIES:
        np.testing.assert_allclose(_stacked(results, strategy), expected[strategy], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("strategy", ["last", "weighted_mean", "mean"])
def test_decoder_without_pad_token_batches_like_encoder(tiny_gpt2_dir, tiny_gpt2_encoder, strategy):
    tokenizer = AutoTokenizer.from_pretrained(tiny_gpt2_dir)
    assert tokenizer.pad_token is None and tokenizer.padding_side == "left"
    embed = pipeline(TASK, model=AutoModel.from_pretrained(tiny_gpt2_dir), tokenizer=tokenizer, device="cpu",
                     pooling=strategy)
    batched = _stacked(embed(TEXTS, batch_size=len(TEXTS)))
    np.testing.assert_allclose(batched, tiny_gpt2_encoder.encode(TEXTS, strategy)[strategy], atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(batched, _stacked(embed(TEXTS, batch_size=1)), atol=1e-5, rtol=1e-5)
    assert tokenizer.pad_token is None and tokenizer.padding_side == "left"  # the caller's tokenizer untouched


def test_feature_extraction_task_with_pipeline_class(tiny_bert_dir, tiny_bert_encoder):
    embed = pipeline("feature-extraction", model=str(tiny_bert_dir), pipeline_class=PoolingPipeline,
                     device="cpu", pooling="max")
    vector = embed("the film was good")
    assert isinstance(vector, np.ndarray) and vector.dtype == np.float32 and vector.shape == (32,)
    np.testing.assert_allclose(vector, tiny_bert_encoder.encode(["the film was good"], "max")["max"][0], atol=1e-5)


def test_defaults_follow_the_sentence_transformers_layout(make_st_model_dir):
    directory = make_st_model_dir("max", normalize=True)
    vectors = _stacked(pipeline(TASK, model=str(directory), device="cpu")(TEXTS, batch_size=3))
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(vectors, Encoder(directory).encode(TEXTS)["max"], atol=1e-5, rtol=1e-5)
    raw = _stacked(pipeline(TASK, model=str(directory), device="cpu", normalize=False)(TEXTS))
    np.testing.assert_allclose(raw, Encoder(directory).encode(TEXTS, normalize=False)["max"], atol=1e-5, rtol=1e-5)


def test_call_arguments_override_construction_ones(tiny_bert_dir, tiny_bert_encoder):
    embed = pipeline(TASK, model=str(tiny_bert_dir), device="cpu", pooling="cls")
    vectors = _stacked(embed(TEXTS, pooling="mean", normalize=True, batch_size=2))
    np.testing.assert_allclose(vectors, tiny_bert_encoder.encode(TEXTS, "mean", normalize=True)["mean"], atol=1e-5)
    np.testing.assert_allclose(_stacked(embed(TEXTS)), tiny_bert_encoder.encode(TEXTS, "cls")["cls"], atol=1e-5)


def test_layer_and_max_length_are_those_of_encoder(tiny_bert_dir):
    embed = pipeline(TASK, model=str(tiny_bert_dir), device="cpu", layer=[0, 1], max_length=5)
    expected = Encoder(tiny_bert_dir, layer=[0, 1], max_length=5).encode(TEXTS, "mean")["mean"]
    np.testing.assert_allclose(_stacked(embed(TEXTS, batch_size=3)), expected, atol=1e-5, rtol=1e-5)


def _padded_states(encoder: Encoder, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    return encoder.token_states(texts).padded()


def test_saved_attention_pooler_folder_as_pooling(bert_pipe, tiny_bert_encoder, tmp_path):
    torch.manual_seed(3)
    pooler = Pooler("attention", dim=32, heads=2).eval()
    pooler.save_pretrained(tmp_path / "attention")
    hidden, mask = _padded_states(tiny_bert_encoder, TEXTS)
    with torch.no_grad():
        expected = pooler(hidden, mask).numpy()
    got = _stacked(bert_pipe(TEXTS, pooling=str(tmp_path / "attention"), batch_size=4))
    assert got.shape == (len(TEXTS), 64)
    np.testing.assert_allclose(got, expected, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(_stacked(bert_pipe(TEXTS, pooling=pooler)), expected, atol=1e-5, rtol=1e-5)


def test_saved_classifier_folder_pools_its_standardised_states(bert_pipe, tiny_bert_encoder, tmp_path):
    states = tiny_bert_encoder.token_states(TEXTS * 4)
    labels = np.array([0, 1] * (len(TEXTS) * 2))
    classifier = PooledClassifier("se_mean", 32, 2, reduction=4).fit(states, labels, seed=0, max_epochs=2)
    classifier.save_pretrained(tmp_path / "clf")
    got = bert_pipe(TEXTS, pooling=["mean", str(tmp_path / "clf")], batch_size=2)
    hidden, mask = _padded_states(tiny_bert_encoder, TEXTS)
    with torch.no_grad():
        expected = classifier.pooler(classifier.standardize(hidden, mask), mask).numpy()
        logits = classifier.head(torch.from_numpy(_stacked(got, str(tmp_path / "clf")))).numpy()
    np.testing.assert_allclose(_stacked(got, str(tmp_path / "clf")), expected, atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(logits, classifier.predict_logits(states.subset(range(len(TEXTS)))), atol=1e-4)
    np.testing.assert_allclose(_stacked(got, "mean"), tiny_bert_encoder.encode(TEXTS)["mean"], atol=1e-5)


def test_pooler_of_another_width_is_refused(bert_pipe, tmp_path):
    Pooler("attention", dim=16).save_pretrained(tmp_path / "narrow")
    with pytest.raises(SeqpoolError, match="16-dim"):
        bert_pipe("the film", pooling=str(tmp_path / "narrow"))


@pytest.mark.parametrize("pooling,message", [("median", "neither a strategy"), ("attention", "neither a strategy"),
                                             ([], "empty list")])
def test_bad_pooling_raises_seqpool_error(bert_pipe, pooling, message):
    with pytest.raises(SeqpoolError, match=message):
        bert_pipe("the film", pooling=pooling)


def test_folder_that_is_not_a_pooler_is_refused(bert_pipe, tiny_bert_dir):
    with pytest.raises(SeqpoolError, match="config"):
        bert_pipe("the film", pooling=str(tiny_bert_dir))


def test_unknown_arguments_and_non_text_inputs_raise(bert_pipe):
    embed = bert_pipe
    with pytest.raises(SeqpoolError, match="unexpected pipeline argument"):
        embed("the film", strategy="mean")
    with pytest.raises(SeqpoolError, match="strings"):
        embed([3])


def test_registration_is_idempotent_and_listed(caplog):
    from transformers.pipelines import PIPELINE_REGISTRY

    register_pipeline()
    register_pipeline()
    assert TASK in PIPELINE_REGISTRY.get_supported_tasks()
    assert PIPELINE_REGISTRY.supported_tasks[TASK]["impl"] is PoolingPipeline
    assert "Overwriting" not in caplog.text


@pytest.mark.integration
def test_packaged_minilm_matches_encoder_and_sentence_transformers(minilm_path):
    texts = ["A gripping, beautifully acted drama.", "Dull and lifeless.", "It rains."]
    vectors = _stacked(pipeline(TASK, model=str(minilm_path), device="cpu")(texts, batch_size=2))
    np.testing.assert_allclose(vectors, Encoder().encode(texts)["mean"], atol=1e-5, rtol=1e-5)
    sentence_transformers = pytest.importorskip("sentence_transformers")
    reference = sentence_transformers.SentenceTransformer(str(minilm_path), device="cpu").encode(texts)
    np.testing.assert_allclose(vectors, reference, atol=1e-5, rtol=1e-5)


def test_prompt_arguments_given_at_construction_apply_to_every_call(tiny_bert_dir):
    """``pipeline(..., prompt=)`` at construction works as the docstring says (the base class checks
    arguments before the encoder, whose prompt names they need, exists)."""
    from transformers import pipeline

    built = pipeline("seqpool", model=str(tiny_bert_dir), prompt="query: ", include_prompt=False)
    per_call = pipeline("seqpool", model=str(tiny_bert_dir))
    plain = per_call("a fine film")
    expected = per_call("a fine film", prompt="query: ", include_prompt=False)
    assert np.allclose(built("a fine film"), expected, atol=1e-6)
    assert not np.allclose(expected, plain, atol=1e-4)
