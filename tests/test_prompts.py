"""Instruction prompts: resolving them, and masking their tokens out of the pool (both paddings)."""

from __future__ import annotations

import json

import pytest
import torch

from seqpool.errors import SeqpoolError
from seqpool.pooling import STRATEGIES, pool
from seqpool.prompts import (
    exclude_prompt,
    pool_excluding_prompt,
    prompt_length,
    prompt_token_mask,
    resolve_prompt,
)

PROMPTS = {"query": "query: ", "passage": "passage: ", "none": ""}


def test_resolve_prompt():
    assert resolve_prompt("find: ", None, PROMPTS) == "find: "
    assert resolve_prompt(None, "query", PROMPTS) == "query: "
    assert resolve_prompt(None, None, PROMPTS, "passage") == "passage: "
    assert resolve_prompt(None, None, PROMPTS) is None
    assert resolve_prompt(None, "none", PROMPTS, "query") is None  # an explicit empty prompt wins
    assert resolve_prompt("", None, PROMPTS, "query") is None
    with pytest.raises(SeqpoolError, match="not both"):
        resolve_prompt("x", "query", PROMPTS)
    with pytest.raises(SeqpoolError, match="'doc' is not among the model's prompts \\(none, passage, query\\)"):
        resolve_prompt(None, "doc", PROMPTS)
    with pytest.raises(SeqpoolError, match="pass the text as `prompt`"):
        resolve_prompt(None, "doc", {})


def test_prompt_settings_are_read_from_the_model_folder(tmp_path):
    from seqpool.model_reader import read_folder

    neutral = read_folder(tmp_path)
    assert (neutral.prompts, neutral.default_prompt_name, neutral.include_prompt) == ({}, None, True)
    (tmp_path / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": PROMPTS, "default_prompt_name": "query"}), encoding="utf-8")
    (tmp_path / "modules.json").write_text(json.dumps(  # the reader's minimal stack: a Transformer, then Pooling
        [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
         {"idx": 1, "name": "1", "path": "pool", "type": "sentence_transformers.models.Pooling"}]), encoding="utf-8")
    (tmp_path / "pool").mkdir()
    (tmp_path / "pool" / "config.json").write_text(json.dumps({"include_prompt": False}), encoding="utf-8")
    settings = read_folder(tmp_path)
    assert (settings.prompts, settings.default_prompt_name, settings.include_prompt) == (
        PROMPTS, "query", False)
    (tmp_path / "config_sentence_transformers.json").write_text("{broken", encoding="utf-8")
    with pytest.raises(SeqpoolError, match="cannot read .*config_sentence_transformers.json"):
        read_folder(tmp_path)  # refused, never skipped: the model's prompts would be silently lost


def test_prompt_length_drops_a_trailing_special_token():
    assert prompt_length([101, 5, 6, 102], special_ids=[101, 102]) == 3  # [CLS] query : ([SEP] dropped)
    assert prompt_length([5, 6], special_ids=[0]) == 2
    assert prompt_length([], special_ids=[0]) == 0


def test_prompt_mask_right_and_left_padding():
    right = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert prompt_token_mask(right, 2).tolist() == [[True, True, False, False, False]] * 2
    assert prompt_token_mask(left, [2, 3]).tolist() == [[False, True, True, False, False],
                                                        [True, True, True, False, False]]
    assert exclude_prompt(left, [2, 3]).tolist() == [[False, False, False, True, True],
                                                     [False, False, False, True, True]]
    with pytest.raises(SeqpoolError, match="3 entries for 2 rows"):
        prompt_token_mask(right, [1, 2, 3])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_excluding_the_prompt_is_the_same_on_either_padding_side(strategy):
    generator = torch.Generator().manual_seed(0)
    lengths, prompt = [6, 4, 3], [3, 3, 3]  # row 2 is all prompt: zeros on both sides
    width = max(lengths)
    hidden = torch.randn(len(lengths), width, 8, generator=generator)
    right = torch.zeros(len(lengths), width, dtype=torch.long)
    left_hidden = torch.zeros_like(hidden)
    left = torch.zeros_like(right)
    for row, length in enumerate(lengths):
        right[row, :length] = 1
        left[row, width - length:] = 1
        left_hidden[row, width - length:] = hidden[row, :length]
    right_out = pool_excluding_prompt(hidden, right, prompt, [strategy])[strategy]
    left_out = pool_excluding_prompt(left_hidden, left, prompt, [strategy])[strategy]
    torch.testing.assert_close(right_out, left_out)
    if strategy != "weighted_mean":  # the pool of the text's own tokens
        for row, length in enumerate(lengths):
            text_only = hidden[row:row + 1, prompt[row]:length]
            torch.testing.assert_close(right_out[row], pool(text_only, None, strategy)[0])


def test_cls_means_the_first_token_after_the_prompt_and_empty_rows_give_zeros():
    hidden = torch.arange(2 * 4 * 2, dtype=torch.float32).reshape(2, 4, 2)
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0]])
    out = pool_excluding_prompt(hidden, mask, 2, ["cls", "last", "mean"])
    torch.testing.assert_close(out["cls"][0], hidden[0, 2])
    torch.testing.assert_close(out["last"][0], hidden[0, 3])
    for strategy in ("cls", "last", "mean"):  # row 1 is all prompt
        torch.testing.assert_close(out[strategy][1], torch.zeros(2))


def test_weighted_mean_keeps_original_positions_like_sentence_transformers():
    hidden = torch.randn(1, 5, 3, generator=torch.Generator().manual_seed(1))
    out = pool_excluding_prompt(hidden, torch.ones(1, 5), 2, ["weighted_mean"])["weighted_mean"]
    weights = torch.tensor([0, 0, 3, 4, 5], dtype=torch.float32)[:, None]
    torch.testing.assert_close(out[0], (hidden[0] * weights).sum(0) / weights.sum())


@pytest.mark.parametrize("mode", ["cls", "mean", "max", "weightedmean", "lasttoken", "mean_sqrt_len_tokens"])
@pytest.mark.parametrize("side", ["right", "left"])
def test_matches_sentence_transformers_pooling(mode, side):
    pooling_module = pytest.importorskip("sentence_transformers.sentence_transformer.modules.pooling")
    st_to_ours = {"cls": "cls", "mean": "mean", "max": "max", "weightedmean": "weighted_mean",
                  "lasttoken": "last", "mean_sqrt_len_tokens": "mean_sqrt_len"}
    generator = torch.Generator().manual_seed(2)
    hidden = torch.randn(3, 7, 4, generator=generator)
    lengths = [7, 5, 4]
    mask = torch.zeros(3, 7, dtype=torch.long)
    for row, length in enumerate(lengths):
        if side == "right":
            mask[row, :length] = 1
        else:
            mask[row, 7 - length:] = 1
    st_pool = pooling_module.Pooling(4, pooling_mode=mode, include_prompt=False)
    expected = st_pool({"token_embeddings": hidden, "attention_mask": mask, "prompt_length": 3})["sentence_embedding"]
    ours = pool_excluding_prompt(hidden, mask, 3, [st_to_ours[mode]])[st_to_ours[mode]]
    torch.testing.assert_close(ours, expected)
