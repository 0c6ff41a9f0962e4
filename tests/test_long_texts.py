"""Long texts: window plans, the merged-sequence rule per strategy, late-chunk span pooling."""

from __future__ import annotations

import pytest
import torch

from seqpool.errors import SeqpoolError
from seqpool.long_texts import (
    char_spans,
    check_window,
    content_states,
    merge_windows,
    pool_spans,
    pool_windows,
    special_tokens_around,
    window_inputs,
    window_plan,
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


def test_window_plan_counts_special_tokens_in_the_window():
    assert window_plan(10, max_length=6, n_special=2) == window_spans(10, 4, 3)
    assert window_plan(10, max_length=6, n_special=2, window=4, stride=2) == [(0, 2), (2, 4), (4, 6), (6, 8), (8, 10)]
    for window in (2, 7, 3.5):
        with pytest.raises(SeqpoolError, match="window must be"):
            check_window(window, None, max_length=6, n_special=2)
    with pytest.raises(SeqpoolError, match="stride must be"):
        check_window(6, 5, max_length=6, n_special=2)


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
