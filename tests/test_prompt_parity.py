"""Prompts through the Encoder: sentence-transformers parity on a model folder built here."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from seqpool.encoder import Encoder
from seqpool.errors import SeqpoolError
from seqpool.prompts import pool_excluding_prompt

PROMPTS = {"query": "query: ", "passage": "passage: the text of ", "empty": ""}
TEXTS = ["the cat sat on the mat", "", "a very good film, not boring", "hello world " * 20, "dog"]


def _prompted_folder(make_st_model_dir, tmp_path: Path, pooling: str, include_prompt: bool,
                     default: str | None = None) -> Path:
    folder = tmp_path / f"prompted_{pooling}"
    shutil.copytree(make_st_model_dir(pooling, normalize=True), folder)
    config_path = folder / "1_Pooling" / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    config_path.write_text(json.dumps({**config, "include_prompt": include_prompt}), encoding="utf-8")
    (folder / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": PROMPTS, "default_prompt_name": default}), encoding="utf-8")
    return folder


@pytest.mark.parametrize("pooling", ["mean", "cls", "weighted_mean", "max", "last"])
@pytest.mark.parametrize("include_prompt", [False, True])
def test_prompt_parity_with_sentence_transformers(make_st_model_dir, tmp_path, pooling, include_prompt):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    folder = _prompted_folder(make_st_model_dir, tmp_path, pooling, include_prompt)
    theirs_model = sentence_transformers.SentenceTransformer(str(folder), device="cpu", local_files_only=True)
    encoder = Encoder(folder)
    assert encoder.include_prompt is include_prompt and encoder.prompts == PROMPTS
    for name in ("query", "passage"):
        theirs = theirs_model.encode(TEXTS, prompt_name=name, batch_size=2)
        ours = encoder.encode(TEXTS, prompt_name=name)[pooling]
        assert np.abs(ours - theirs).max() <= 1e-5
        by_text = encoder.encode(TEXTS, prompt=PROMPTS[name])[pooling]
        np.testing.assert_array_equal(by_text, ours)


def test_default_prompt_name_applies_unless_another_prompt_is_given(make_st_model_dir, tmp_path):
    folder = _prompted_folder(make_st_model_dir, tmp_path, "mean", include_prompt=True, default="query")
    encoder = Encoder(folder)
    default = encoder.encode(TEXTS)["mean"]
    np.testing.assert_allclose(default, encoder.encode([f"query: {t}" for t in TEXTS], prompt_name="empty")["mean"],
                               atol=1e-6)
    assert not np.allclose(default, encoder.encode(TEXTS, prompt_name="passage")["mean"], atol=1e-3)


def test_excluded_prompt_pools_only_the_text_on_a_plain_model(tiny_bert_encoder):
    """No ST files: include_prompt=False masks [CLS] + the prompt's tokens (ST's prompt length)."""
    texts = ["hello world", "the cat sat on the mat"]
    ours = tiny_bert_encoder.encode(texts, "mean", prompt="the film: ", include_prompt=False, normalize=False)["mean"]
    assert tiny_bert_encoder.prompt_length("the film: ") == 4  # [CLS] the film :
    for row, text in enumerate(texts):
        (item,) = list(tiny_bert_encoder.text_batches([f"the film: {text}"]))
        expected = pool_excluding_prompt(item.hidden_states, item.attention_mask, 4, ["mean"])["mean"][0]
        np.testing.assert_allclose(ours[row], expected.numpy(), atol=1e-5)


def test_prompt_errors(tiny_bert_encoder):
    with pytest.raises(SeqpoolError, match="not both"):
        tiny_bert_encoder.encode(["x"], prompt="a", prompt_name="b")
    with pytest.raises(SeqpoolError, match="`prompt_name` 'query' is not among"):
        tiny_bert_encoder.encode(["x"], prompt_name="query")


def test_pipeline_takes_the_same_prompt_arguments(make_st_model_dir, tmp_path):
    from transformers import pipeline

    import seqpool.pipeline  # noqa: F401  (registers the task)

    folder = _prompted_folder(make_st_model_dir, tmp_path, "weighted_mean", include_prompt=False, default="query")
    encoder = Encoder(folder)
    embed = pipeline("seqpool", model=str(folder), device="cpu")
    for kwargs in ({}, {"prompt_name": "passage"}, {"prompt": "the film: ", "include_prompt": True}):
        expected = encoder.encode(TEXTS, **kwargs)["weighted_mean"]
        for batch_size in (1, 3):
            np.testing.assert_allclose(np.stack(embed(TEXTS, batch_size=batch_size, **kwargs)), expected, atol=1e-5)


def test_embedder_passes_prompts_and_long_text_options(tiny_bert_dir, tiny_bert_encoder):
    from seqpool.distributed import Embedder

    texts = ["the cat sat on the mat", "hello world, the cat sat on the mat. " * 12]
    kwargs = {"prompt": "the film: ", "include_prompt": False, "long_texts": "chunk", "truncate_dim": 16}
    embedder = Embedder(str(tiny_bert_dir), strategies="mean", **kwargs)
    assert type(embedder)(**embedder.settings).settings == embedder.settings
    assert embedder.describe()["vectors"] == kwargs
    np.testing.assert_allclose(embedder.embed(texts)["mean"], tiny_bert_encoder.encode(texts, "mean", **kwargs)["mean"],
                               atol=1e-6)
    assert "vectors" not in Embedder(str(tiny_bert_dir)).describe()
    with pytest.raises(SeqpoolError, match="`window` must be a positive"):
        Embedder(str(tiny_bert_dir), long_texts="chunk", window=0)
