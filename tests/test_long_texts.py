"""Long texts: window plans, the merged-sequence rule per strategy, late-chunk span pooling."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seqpool.errors import SeqpoolError
from seqpool.long_texts import (
    char_spans,
    content_states,
    merge_windows,
    pool_spans,
    pool_windows,
    special_tokens_around,
    window_inputs,
    window_spans,
)
from seqpool.pooling import STRATEGIES, pool

DIM = 6


def _windows(spans, n_prefix=1, n_suffix=1, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(n_prefix + end - start + n_suffix, DIM, generator=generator) for start, end in spans]


@pytest.mark.parametrize("num_tokens,size,stride", [(0, 4, 4), (3, 4, 4), (4, 4, 4), (5, 4, 4), (10, 4, 3),
                                                     (10, 4, 1), (11, 5, 5), (100, 7, 5)])
def test_window_spans_cover_every_token_and_only_the_last_reaches_the_end(num_tokens, size, stride):
    spans = window_spans(num_tokens, size, stride)
    covered = set()
    for start, end in spans:
        assert 0 <= start <= end <= num_tokens and end - start <= size
        covered.update(range(start, end))
    assert covered == set(range(num_tokens))
    assert [end for _, end in spans].count(num_tokens) == 1 and spans[-1][1] == num_tokens
    assert all(b[0] - a[0] == stride for a, b in zip(spans, spans[1:]))


def test_window_spans_reject_strides_that_skip_tokens():
    with pytest.raises(SeqpoolError, match="stride"):
        window_spans(10, 4, 5)
    with pytest.raises(SeqpoolError, match="stride"):
        window_spans(10, 4, 0)
    with pytest.raises(SeqpoolError, match="at least one"):
        window_spans(10, 0, 1)


def test_special_tokens_and_window_inputs():
    assert special_tokens_around([101, 7, 8, 102], [7, 8]) == ([101], [102])
    assert special_tokens_around([7, 8], [7, 8]) == ([], [])
    assert special_tokens_around([0, 7, 2], [7]) == ([0], [2])
    assert window_inputs([5, 6, 7, 8], [(0, 3), (2, 4)], [1], [2]) == [[1, 5, 6, 7, 2], [1, 7, 8, 2]]
    with pytest.raises(SeqpoolError, match="not supported"):
        special_tokens_around([1, 2], [3])


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_one_window_is_exactly_the_truncated_text(strategy):
    (states,) = _windows([(0, 5)])
    pooled = pool_windows([states], [(0, 5)], 1, 1, [strategy])[strategy]
    torch.testing.assert_close(pooled, pool(states[None], None, strategy)[0], rtol=0, atol=0)


@pytest.mark.parametrize("n_prefix,n_suffix", [(1, 1), (0, 0), (2, 1), (0, 1)])
def test_mean_over_non_overlapping_windows_is_the_token_weighted_mean_of_window_means(n_prefix, n_suffix):
    spans = window_spans(11, 4, 4)  # (0,4) (4,8) (8,11): the last window is shorter
    states = _windows(spans, n_prefix, n_suffix)
    pooled = pool_windows(states, spans, n_prefix, n_suffix, ["mean"])["mean"]
    sizes = torch.tensor([len(s) for s in states], dtype=torch.float32)
    means = torch.stack([s.mean(0) for s in states])
    torch.testing.assert_close(pooled, (sizes[:, None] * means).sum(0) / sizes.sum())


def test_overlapping_tokens_count_once_with_their_states_averaged():
    spans = [(0, 3), (2, 5)]  # token 2 is in both windows
    states = _windows(spans)
    merged = merge_windows(states, spans, 1, 1)
    assert merged.shape == (2 + 3 + 2 + 2, DIM)  # [CLS] t0 t1 t2 [SEP] [CLS] t3 t4 [SEP]
    torch.testing.assert_close(merged[3], (states[0][3] + states[1][1]) / 2)
    torch.testing.assert_close(merged[6], states[1][2])
    pooled = pool_windows(states, spans, 1, 1, ["mean", "max", "cls", "last", "mean_sqrt_len"])
    torch.testing.assert_close(pooled["mean"], merged.mean(0))
    torch.testing.assert_close(pooled["mean_sqrt_len"], merged.sum(0) / merged.shape[0] ** 0.5)
    torch.testing.assert_close(pooled["max"], torch.cat(states).max(0).values)  # raw states, overlaps included
    torch.testing.assert_close(pooled["cls"], states[0][0])
    torch.testing.assert_close(pooled["last"], states[-1][-1])


def test_content_states_and_their_validation():
    spans = [(0, 2), (1, 3)]
    states = _windows(spans, 1, 0)
    content = content_states(states, spans, 1, 0)
    torch.testing.assert_close(content[1], (states[0][2] + states[1][1]) / 2)
    with pytest.raises(SeqpoolError, match="expected"):
        content_states([states[0][:2], states[1]], spans, 1, 0)
    with pytest.raises(SeqpoolError, match="uncovered"):
        content_states(_windows([(0, 1), (2, 3)], 1, 0), [(0, 1), (2, 3)], 1, 0)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_pool_spans_pools_each_chunk_alone(strategy):
    states = torch.randn(9, DIM, generator=torch.Generator().manual_seed(3))
    spans = [(0, 4), (4, 9), (2, 3), (5, 5)]
    pooled = pool_spans(states, spans, [strategy])[strategy]
    for row, (start, end) in enumerate(spans[:3]):
        torch.testing.assert_close(pooled[row], pool(states[None, start:end], None, strategy)[0])
    torch.testing.assert_close(pooled[3], torch.zeros(DIM))  # empty span: zeros
    with pytest.raises(SeqpoolError, match="outside"):
        pool_spans(states, [(3, 10)], [strategy])


def test_char_spans_follow_the_offsets():
    offsets = [(0, 3), (4, 7), (7, 8), (9, 14)]
    assert char_spans(offsets, [(0, 2), (2, 4), (0, 0)]) == [(0, 7), (7, 14), (0, 0)]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_excluding_the_prompt_from_windows_matches_one_text_without_its_prompt(strategy):
    from seqpool.prompts import pool_excluding_prompt

    (states,) = _windows([(0, 5)], n_prefix=3)  # [CLS] p1 p2 t0..t4 [SEP]
    pooled = pool_windows([states], [(0, 5)], 3, 1, [strategy], exclude=3)[strategy]
    expected = pool_excluding_prompt(states[None], torch.ones(1, len(states)), 3, [strategy])[strategy][0]
    torch.testing.assert_close(pooled, expected, rtol=0, atol=0)
    spans = [(0, 3), (3, 5)]  # two windows: every window's prompt is left out
    two = _windows(spans, n_prefix=3, seed=1)
    pooled = pool_windows(two, spans, 3, 1, ["mean"], exclude=3)["mean"]
    torch.testing.assert_close(pooled, torch.cat([two[0][3:], two[1][3:]]).mean(0))
    with pytest.raises(SeqpoolError, match="exclude"):
        pool_windows(two, spans, 3, 1, ["mean"], exclude=4)


# -- through the Encoder (tiny BERT: max_length 64, so "long" is cheap) ------------------------

LONG = "hello world, the cat sat on the mat. " * 12  # ~120 tokens
MIXED = ["a good film", LONG, "", "the dog " * 40, "not bad"]


def _encode_ids(encoder, ids):
    hidden, _ = encoder.forward_batch(encoder.collate([ids]))
    return hidden[0]


@pytest.mark.parametrize("fixture", ["tiny_bert_encoder", "tiny_gpt2_encoder"])
def test_planned_inputs_are_exactly_the_tokenizers_truncation(fixture, request, sample_texts):
    from seqpool.encode_plan import EncodePlan

    encoder = request.getfixturevalue(fixture)
    texts = [*sample_texts, LONG, "x" * 500]
    plan = EncodePlan(encoder.text_pieces(texts), *encoder.special_tokens, encoder.max_length)
    assert plan.inputs == encoder.tokenize(texts)
    assert plan.truncated == sum(len(ids) == encoder.max_length for ids in plan.inputs) > 0


def test_truncated_texts_are_counted(tiny_bert_encoder):
    _, stats = tiny_bert_encoder.encode(MIXED, return_stats=True)
    assert (stats.texts, stats.truncated) == (5, 2)
    assert stats.truncated_rows == (1, 3)  # which ones: LONG and "the dog " * 40
    _, stats = tiny_bert_encoder.encode(MIXED, long_texts="chunk", return_stats=True)
    assert stats.truncated == 0 and stats.inputs > 5
    assert stats.truncated_rows == ()


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_chunk_equals_truncate_under_the_limit(tiny_bert_encoder, strategy):
    short = ["a good film", "", "the cat sat on the mat", "very " * 30]
    truncated = tiny_bert_encoder.encode(short, strategy)[strategy]
    chunked = tiny_bert_encoder.encode(short, strategy, long_texts="chunk")[strategy]
    np.testing.assert_allclose(chunked, truncated, atol=1e-6)


@pytest.mark.parametrize("window,stride", [(None, None), (20, 9), (20, 18)])
def test_chunk_pools_the_windows_as_documented(tiny_bert_encoder, window, stride):
    from seqpool.encode_plan import EncodePlan
    from seqpool.vector_options import LongTextOptions

    strategies = ["mean", "max", "cls", "last", "weighted_mean"]
    ours = tiny_bert_encoder.encode(MIXED, strategies, normalize=False, long_texts="chunk", window=window,
                                    stride=stride)
    prefix, suffix = tiny_bert_encoder.special_tokens
    plan = EncodePlan(tiny_bert_encoder.text_pieces(MIXED), prefix, suffix, 64, LongTextOptions("chunk", window, stride))
    assert len(plan.windows[1]) > 1
    for index in (1, 3):
        states = [_encode_ids(tiny_bert_encoder, plan.inputs[i]) for i in plan.windows[index]]
        expected = pool_windows(states, plan.spans[index], len(prefix), len(suffix), strategies)
        for strategy in strategies:
            np.testing.assert_allclose(ours[strategy][index], expected[strategy].numpy(), atol=1e-5)


def test_late_chunks_pool_spans_of_the_contextual_states(tiny_bert_encoder):
    text = "the cat sat on the mat. " * 4  # under the limit: one forward pass
    vectors, table = tiny_bert_encoder.encode_chunks([text, "", LONG], ["mean", "max"], normalize=False, window=5)
    (item,) = list(tiny_bert_encoder.text_batches([text]))
    content = item.hidden_states[0, 1:int(item.attention_mask[0].sum()) - 1]
    rows = np.flatnonzero(table["doc"] == 0)
    assert len(rows) == -(-len(content) // 5)
    spans = [(5 * k, min(5 * k + 5, len(content))) for k in range(len(rows))]
    expected = pool_spans(content, spans, ["mean", "max"])
    for strategy in ("mean", "max"):
        np.testing.assert_allclose(vectors[strategy][rows], expected[strategy].numpy(), atol=1e-5)
    for row in rows:  # character spans point into the text
        piece = text[table["char_start"][row]:table["char_end"][row]]
        assert piece and piece == piece.strip()
    assert [table["char_start"][rows[0]], table["char_end"][rows[-1]]] == [0, len(text.rstrip())]
    empty = np.flatnonzero(table["doc"] == 1)
    assert len(empty) == 1 and not vectors["mean"][empty].any()
    assert table["chunk"][table["doc"] == 2].tolist() == list(range(int((table["doc"] == 2).sum())))


def test_chunk_rows_are_the_windows_encoded_alone(tiny_bert_encoder):
    from seqpool.encode_plan import EncodePlan
    from seqpool.vector_options import LongTextOptions

    vectors, table = tiny_bert_encoder.encode_chunks([LONG], "cls", normalize=False, long_texts="chunk", window=30)
    plan = EncodePlan(tiny_bert_encoder.text_pieces([LONG]), *tiny_bert_encoder.special_tokens, 64,
                      LongTextOptions("chunk", 30))
    assert len(table["doc"]) == len(plan.inputs) > 2
    for row, ids in enumerate(plan.inputs):
        np.testing.assert_allclose(vectors["cls"][row], _encode_ids(tiny_bert_encoder, ids)[0].numpy(), atol=1e-5)


def test_truncate_dim_keeps_the_head_and_renormalises(tiny_bert_encoder):
    full = tiny_bert_encoder.encode(MIXED, normalize=False)["mean"]
    head = tiny_bert_encoder.encode(MIXED, normalize=True, truncate_dim=8)["mean"]
    np.testing.assert_allclose(head, full[:, :8] / np.linalg.norm(full[:, :8], axis=1, keepdims=True), atol=1e-6)
    with pytest.raises(SeqpoolError, match="`truncate_dim` 33 exceeds"):
        tiny_bert_encoder.encode(["x"], truncate_dim=33)


def test_long_text_option_errors(tiny_bert_encoder):
    with pytest.raises(SeqpoolError, match="exceeds the 64 tokens the model takes"):
        tiny_bert_encoder.encode(["x"], long_texts="chunk", window=65)
    with pytest.raises(SeqpoolError, match="unknown `long_texts`"):
        tiny_bert_encoder.encode(["x"], long_texts="split")
    with pytest.raises(SeqpoolError, match="not 'truncate'"):
        tiny_bert_encoder.encode(["x"], window=10)


@pytest.mark.parametrize("strategy", ["mean@-2", "cls+max", "mean@1~-1"])
def test_layer_expressions_work_with_windows_and_prompts(tiny_bert_encoder, strategy):
    short = ["a good film", "the cat sat on the mat"]
    truncated = tiny_bert_encoder.encode(short, strategy)[strategy]
    np.testing.assert_allclose(tiny_bert_encoder.encode(short, strategy, long_texts="chunk")[strategy], truncated,
                               atol=1e-6)
    long_vector = tiny_bert_encoder.encode([LONG], strategy, long_texts="chunk", prompt="the film: ",
                                           include_prompt=False)[strategy]
    assert long_vector.shape == truncated[:1].shape and np.isfinite(long_vector).all()


def test_truncate_dim_with_windows(tiny_bert_encoder):
    full = tiny_bert_encoder.encode(MIXED, ["mean", "max"], normalize=False, long_texts="chunk")
    head = tiny_bert_encoder.encode(MIXED, ["mean", "max"], normalize=False, long_texts="chunk", truncate_dim=8)
    for strategy in ("mean", "max"):
        np.testing.assert_allclose(head[strategy], full[strategy][:, :8], atol=1e-6)
