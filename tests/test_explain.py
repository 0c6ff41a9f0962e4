"""Token activation maps: exact decomposition of the logit, word merging, rendering, CLI, MR sanity."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from seqpool.classifier import PooledClassifier
from seqpool.cli import main
from seqpool.errors import SeqpoolError
from seqpool.explain import (
    explain,
    pooling_weights,
    render_html,
    render_terminal,
    token_contributions,
    write_html,
    write_png,
)
from seqpool.pooling.pooler import POOLER_STRATEGIES

DIM = 8
POOLER_KWARGS = {"attention": {"heads": 2, "hidden_dim": 4}, "se_mean": {"reduction": 2}}
TEXTS = ["the film was good", "a boring , very long movie that was not funny at all", "cat", "",
         "zebra xylophone", "hello <b>world</b> & friends"]


def random_classifier(strategy: str, dim: int = DIM, num_labels: int = 3, seed: int = 0) -> PooledClassifier:
    """A classifier with every parameter and the standardisation drawn at random (no training)."""
    classifier = PooledClassifier(strategy, dim, num_labels, labels=["neg", "mid", "pos"][:num_labels],
                                  **POOLER_KWARGS.get(strategy, {}))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for tensor in list(classifier.parameters()) + [classifier.shift]:
            tensor.copy_(torch.randn(tensor.shape, generator=generator))
        classifier.scale.copy_(torch.rand(dim, generator=generator) + 0.5)
    return classifier.eval()


@st.composite
def padded_batches(draw):
    """Random states, a random mask (left/right/no padding, holes, empty rows) and NaN in padding."""
    batch, tokens = draw(st.integers(1, 3)), draw(st.integers(1, 6))
    mask = torch.tensor(draw(st.lists(st.lists(st.booleans(), min_size=tokens, max_size=tokens),
                                      min_size=batch, max_size=batch)))
    generator = torch.Generator().manual_seed(draw(st.integers(0, 2**16)))
    hidden = torch.randn(batch, tokens, DIM, generator=generator) * 3
    return hidden.masked_fill(~mask.unsqueeze(-1), float("nan")), mask


@settings(max_examples=50, deadline=None)
@given(padded_batches(), st.sampled_from(POOLER_STRATEGIES), st.integers(0, 1000))
def test_contributions_sum_exactly_to_logit_minus_bias_whatever_the_padding(batch, strategy, seed):
    hidden, mask = batch
    classifier = random_classifier(strategy, seed=seed)
    contributions, logits = token_contributions(classifier, hidden, mask)
    assert torch.isfinite(contributions).all() and torch.isfinite(logits).all()
    total = contributions.sum(dim=1) + classifier.head.bias.detach()
    torch.testing.assert_close(total, logits, atol=1e-4, rtol=1e-4)
    assert (contributions[~mask] == 0).all()  # padding contributes nothing
    for row in range(hidden.shape[0]):  # and a text explained alone, unpadded, gets the same map
        if mask[row].any():
            alone, _ = token_contributions(classifier, hidden[row, mask[row]].unsqueeze(0))
            torch.testing.assert_close(alone[0], contributions[row, mask[row]], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("strategy", POOLER_STRATEGIES)
def test_pooling_weights_rebuild_the_pooled_vector(strategy):
    classifier = random_classifier(strategy, seed=7)
    hidden = torch.randn(3, 5, DIM)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1], [1, 0, 1, 1, 0]]).bool()
    states = classifier.standardize(hidden, mask)
    with torch.no_grad():
        weights = pooling_weights(classifier.pooler, states, mask)
        pooled = classifier.pooler(states, mask)
    rebuilt = (weights * states.repeat(1, 1, weights.shape[-1] // DIM)).sum(dim=1)
    torch.testing.assert_close(rebuilt, pooled, atol=1e-5, rtol=1e-5)


def test_single_token_strategies_put_everything_on_that_token():
    hidden, mask = torch.randn(1, 4, DIM), torch.tensor([[0, 1, 1, 1]]).bool()
    for strategy, position in (("cls", 1), ("last", 3)):
        contributions, _ = token_contributions(random_classifier(strategy), hidden, mask)
        others = [p for p in range(4) if p != position]
        assert (contributions[0, others] == 0).all() and (contributions[0, position] != 0).any()


# -- texts -> explanations (tiny BERT) ------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_classifier(tiny_bert_encoder) -> PooledClassifier:
    """A mean-pooling classifier trained briefly on tiny-BERT states of a toy task."""
    texts = [f"{random.Random(i).choice(['good', 'great', 'funny'])} film {i % 3}" for i in range(30)] + \
            [f"{random.Random(i).choice(['bad', 'boring', 'not'])} movie {i % 3}" for i in range(30)]
    labels = np.array([1] * 30 + [0] * 30)
    return PooledClassifier("mean", 32, 2, labels=["negative", "positive"]).fit(
        tiny_bert_encoder.token_states(texts), labels, seed=0, max_epochs=5)


@pytest.mark.parametrize("strategy", ["mean", "attention", "max", "se_mean"])
def test_word_contributions_add_up_for_real_texts(tiny_bert_encoder, strategy):
    classifier = random_classifier(strategy, dim=32, seed=1)
    explanations = explain(TEXTS, classifier, encoder=tiny_bert_encoder, batch_size=4)
    assert [e.text for e in explanations] == TEXTS
    expected_logits = classifier.predict_logits(tiny_bert_encoder.token_states(TEXTS))
    for explanation, logits in zip(explanations, expected_logits):
        np.testing.assert_allclose(explanation.logits, logits, atol=1e-4, rtol=1e-4)
        total = explanation.word_contributions.sum(axis=0) + explanation.special_contribution
        np.testing.assert_allclose(total, explanation.logits - explanation.bias, atol=1e-4, rtol=1e-4)
        np.testing.assert_allclose(explanation.token_contributions.sum(axis=0), total, atol=1e-4, rtol=1e-4)


def test_subwords_merge_into_words_and_special_tokens_stay_apart(tiny_bert_encoder):
    explanation = explain(["zebra film !"], random_classifier("mean", dim=32), encoder=tiny_bert_encoder)[0]
    assert explanation.words == ["zebra", "film", "!"]
    assert explanation.word_spans == [(0, 5), (6, 10), (11, 12)]
    tokens = explanation.tokens
    assert tokens[0] == "[CLS]" and tokens[-1] == "[SEP]" and "##e" in tokens  # "zebra" is split
    zebra_tokens = tokens.index("film") - 1  # every token between [CLS] and "film"
    np.testing.assert_allclose(explanation.word_contributions[0],
                               explanation.token_contributions[1:1 + zebra_tokens].sum(axis=0), rtol=1e-5)
    np.testing.assert_allclose(explanation.special_contribution,
                               explanation.token_contributions[[0, -1]].sum(axis=0), rtol=1e-5)


def test_batching_does_not_change_explanations(tiny_bert_encoder):
    classifier = random_classifier("attention", dim=32, seed=2)
    alone = explain([TEXTS[0]], classifier, encoder=tiny_bert_encoder)[0]
    batched = explain(TEXTS, classifier, encoder=tiny_bert_encoder, batch_size=len(TEXTS))[0]
    np.testing.assert_allclose(alone.token_contributions, batched.token_contributions, atol=1e-5, rtol=1e-4)


def test_decoder_texts_including_empty_ones(tiny_gpt2_encoder):
    classifier = random_classifier("last", dim=32, seed=3)
    explanations = explain(["", "the cat sat on the mat"], classifier, encoder=tiny_gpt2_encoder)
    assert explanations[0].words == [] and explanations[0].tokens == []
    np.testing.assert_allclose(explanations[0].logits, explanations[0].bias, atol=1e-6)
    assert explanations[1].words == ["the", "cat", "sat", "on", "the", "mat"]
    last_word = explanations[1].word_contributions[-1]
    np.testing.assert_allclose(last_word, explanations[1].logits - explanations[1].bias, atol=1e-4, rtol=1e-4)


def test_truncated_texts_are_flagged(tiny_bert_dir):
    from seqpool.encoder import Encoder

    short = Encoder(tiny_bert_dir, max_length=4)
    explanations = explain(["the film was very good", "cat"], random_classifier("mean", dim=32), encoder=short)
    assert explanations[0].truncated and explanations[0].words == ["the", "film"]
    assert not explanations[1].truncated


def test_labels_top_words_and_class_choice(tiny_bert_encoder, tiny_classifier):
    explanation = explain(["a good film", "a boring movie"], tiny_classifier, encoder=tiny_bert_encoder)[1]
    assert explanation.labels == ["negative", "positive"]
    scores = explanation.word_scores("positive")
    top = explanation.top_words(2, "positive")
    assert [abs(score) for _, score in top] == sorted(np.abs(scores), reverse=True)[:2]
    np.testing.assert_array_equal(explanation.word_scores(1), scores)
    np.testing.assert_array_equal(explanation.word_scores(), explanation.word_scores(explanation.predicted))
    with pytest.raises(SeqpoolError, match="unknown class"):
        explanation.word_scores("neutral")


def test_encoder_of_another_width_is_refused(tiny_bert_encoder):
    with pytest.raises(SeqpoolError, match="16-dim"):
        explain(["cat"], random_classifier("mean", dim=16), encoder=tiny_bert_encoder)


# -- classifier save / load --------------------------------------------------------------------


@pytest.mark.parametrize("strategy", ["mean", "attention", "se_mean"])
def test_classifier_round_trips_through_config_and_safetensors(tiny_bert_encoder, tmp_path, strategy):
    states = tiny_bert_encoder.token_states(TEXTS * 3)
    labels = np.array([0, 1, 2] * (len(TEXTS)))
    classifier = PooledClassifier(strategy, 32, 3, labels=["a", "b", "c"], encoder={"model": "tiny", "layer": -1},
                                  **POOLER_KWARGS.get(strategy, {})).fit(states, labels, seed=1, max_epochs=2)
    classifier.save_pretrained(tmp_path / "clf")
    assert sorted(p.name for p in (tmp_path / "clf").iterdir()) == ["config.json", "model.safetensors"]
    config = json.loads((tmp_path / "clf" / "config.json").read_text())
    assert config["labels"] == ["a", "b", "c"] and config["encoder"] == {"model": "tiny", "layer": -1}
    loaded = PooledClassifier.from_pretrained(tmp_path / "clf")
    np.testing.assert_array_equal(loaded.predict_logits(states), classifier.predict_logits(states))
    from_dir = explain(TEXTS[:2], tmp_path / "clf", encoder=tiny_bert_encoder)
    from_object = explain(TEXTS[:2], classifier, encoder=tiny_bert_encoder)
    for a, b in zip(from_dir, from_object):
        np.testing.assert_array_equal(a.token_contributions, b.token_contributions)


def test_loading_something_else_is_a_seqpool_error(tmp_path):
    with pytest.raises(SeqpoolError):
        explain(["cat"], tmp_path)
    with pytest.raises(SeqpoolError, match="PooledClassifier"):
        explain(["cat"], 3)


# -- rendering and CLI ----------------------------------------------------------------------------


def test_renderings_show_every_word(tiny_bert_encoder, tiny_classifier, tmp_path):
    explanations = explain(TEXTS, tiny_classifier, encoder=tiny_bert_encoder)
    terminal = render_terminal(explanations[1], "positive")
    assert "\x1b[" in terminal and "contributions to positive" in terminal
    for word in explanations[1].words:
        assert word in terminal
    page = render_html(explanations)
    assert "<b>" not in page and page.count("&lt;") == 2 and "&amp;" in page  # the text is escaped
    assert page.count('title="') == sum(len(e.words) for e in explanations)
    html_path = write_html(explanations, tmp_path / "maps" / "out.html")
    assert html_path.read_text(encoding="utf-8") == page
    png_path = write_png(explanations, tmp_path / "out.png")
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["maps", "out.png"]  # no temporary files left


@pytest.fixture(scope="module")
def saved_classifier(tiny_classifier, tiny_bert_dir, tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("clf")
    tiny_classifier.encoder_info = {"model": str(tiny_bert_dir), "layer": -1}
    tiny_classifier.save_pretrained(directory)
    return directory


def test_cli_explains_texts_and_writes_heat_maps(saved_classifier, tmp_path):
    result = CliRunner().invoke(main, ["explain", "--classifier", str(saved_classifier), "--color",
                                       "--html", str(tmp_path / "map.html"), "--png", str(tmp_path / "map.png"),
                                       "--top", "2", "a good film", "a boring movie"])
    assert result.exit_code == 0, result.output
    assert result.output.count("top words:") == 2 and "\x1b[" in result.output
    assert "boring" in (tmp_path / "map.html").read_text(encoding="utf-8")
    assert (tmp_path / "map.png").read_bytes()[:4] == b"\x89PNG"


def test_cli_reads_input_files_and_explains_a_chosen_class(saved_classifier, tiny_bert_dir, tmp_path):
    (tmp_path / "texts.txt").write_text("a good film\na boring movie\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["explain", "--classifier", str(saved_classifier), "--model",
                                       str(tiny_bert_dir), "--input", str(tmp_path / "texts.txt"),
                                       "--label", "negative", "--no-color"])
    assert result.exit_code == 0, result.output
    assert result.output.count("contributions to negative") == 2 and "\x1b[" not in result.output


@pytest.mark.parametrize("arguments,message", [
    (["--label", "neutral", "cat"], "unknown class"),
    (["--png", "out.jpg", "cat"], "needs a .png"),
    ([], "at least one text"),
])
def test_cli_errors_are_one_line(saved_classifier, tmp_path, arguments, message, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["explain", "--classifier", str(saved_classifier), *arguments])
    assert result.exit_code in (1, 2) and message in result.output
    assert "Traceback" not in result.output
    assert list(tmp_path.iterdir()) == []


# -- the sentiment sanity check on MR with the packaged model ---------------------------------


@pytest.mark.integration
def test_sentiment_words_drive_a_classifier_trained_on_mr(senteval_dir):
    from seqpool.encoder import Encoder

    with open(senteval_dir / "mr.jsonl", encoding="utf-8") as lines:  # not splitlines(): texts hold U+2028
        rows = [json.loads(line) for line in lines if line.strip()]
    sample = random.Random(0).sample(rows, 400)
    encoder = Encoder()
    classifier = PooledClassifier("mean", encoder.hidden_size, 2, labels=["negative", "positive"],
                                  encoder={"model": None, "layer": -1})
    classifier.fit(encoder.token_states([r["text"] for r in sample]), np.array([r["label"] for r in sample]),
                   seed=0)
    negative, positive = explain(["a dull , lifeless film .", "a moving , wonderful and beautifully acted film ."],
                                 classifier, encoder=encoder)
    (top_negative, negative_score), = negative.top_words(1, "positive")
    (top_positive, positive_score), = positive.top_words(1, "positive")
    assert negative_score < 0 and top_negative in {"dull", "lifeless"}
    assert positive_score > 0 and top_positive in {"moving", "wonderful", "beautifully"}


def test_slow_tokenizers_are_refused(tiny_bert_encoder):
    import copy
    from types import SimpleNamespace

    encoder = copy.copy(tiny_bert_encoder)
    encoder.tokenizer = SimpleNamespace(is_fast=False)
    with pytest.raises(SeqpoolError, match="fast tokenizer"):
        explain(["cat"], random_classifier("mean", dim=32), encoder=encoder)
