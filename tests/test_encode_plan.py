"""EncodePlan: which token sequences run, and how their states become rows again (no model)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seqpool.encode_plan import EncodePlan, TextPieces
from seqpool.vector_options import LongTextOptions, window_sizes
from seqpool.errors import SeqpoolError
from seqpool.long_texts import names_pooler, pool_spans, pool_windows
from seqpool.pooling import pool

CLS, SEP = 101, 102
DIM = 4


def _fake_states(ids: list[int]) -> torch.Tensor:
    """Deterministic states that depend on the token and its position in the input."""
    ids_t = torch.tensor(ids, dtype=torch.float32)
    pos = torch.arange(len(ids), dtype=torch.float32)
    return torch.stack([ids_t, ids_t * 0.5 + pos, torch.sin(ids_t + pos), torch.cos(ids_t * pos)], dim=1)


def _run(plan: EncodePlan, batch_size: int = 3, budget: int = 40, strategies=("mean", "max", "cls", "last")):
    def batches():
        for rows in plan.batches(batch_size, budget):
            width = max(len(plan.inputs[r]) for r in rows)
            hidden = torch.zeros(len(rows), width, DIM)
            mask = torch.zeros(len(rows), width, dtype=torch.bool)
            for k, r in enumerate(rows):
                hidden[k, :len(plan.inputs[r])] = _fake_states(plan.inputs[r])
                mask[k, :len(plan.inputs[r])] = True
            yield rows, hidden, mask

    out = {s: torch.full((plan.num_rows, DIM), float("nan")) for s in strategies}
    seen = []
    for rows, vectors, _ in plan.assemble(batches(), names_pooler(strategies)):
        seen.extend(rows.tolist())
        for s in strategies:
            out[s][torch.as_tensor(rows)] = vectors[s]
    assert sorted(seen) == list(range(plan.num_rows))  # every row exactly once
    return out


def _texts(lengths, prompt=()):
    return [TextPieces(list(prompt), list(range(1, n + 1)), [(3 * i, 3 * i + 2) for i in range(n)]) for n in lengths]


def test_truncate_cuts_and_counts_like_the_tokenizer():
    plan = EncodePlan(_texts([3, 8, 9]), [CLS], [SEP], max_length=10)
    assert plan.truncated == 1
    assert plan.inputs[2] == [CLS, *range(1, 9), SEP]
    left = EncodePlan(_texts([9]), [CLS], [SEP], max_length=10, truncation_side="left")
    assert left.inputs[0] == [CLS, *range(2, 10), SEP]
    prompted = EncodePlan(_texts([9], prompt=[50, 51]), [CLS], [SEP], max_length=10)
    assert prompted.inputs[0] == [CLS, 50, 51, *range(1, 7), SEP] and prompted.truncated == 1


@pytest.mark.parametrize("batch_size,budget", [(1, 1000), (2, 30), (64, 10_000)])
def test_chunk_rows_do_not_depend_on_batching(batch_size, budget):
    texts = _texts([0, 3, 20, 7, 33])
    plan = EncodePlan(texts, [CLS], [SEP], max_length=10, options=LongTextOptions("chunk", window=8, stride=4))
    out = _run(plan, batch_size, budget)
    for index, text in enumerate(texts):
        windows = [_fake_states(plan.inputs[i]) for i in plan.windows[index]]
        expected = pool_windows(windows, plan.spans[index], 1, 1, ["mean", "max", "cls", "last"])
        for strategy, vector in expected.items():
            torch.testing.assert_close(out[strategy][index], vector)
    reference = _run(EncodePlan(texts, [CLS], [SEP], 10, LongTextOptions("chunk", window=8, stride=4)), 64, 10_000)
    for strategy in out:
        torch.testing.assert_close(out[strategy], reference[strategy])
    assert plan.truncated == 0


def test_short_texts_in_chunk_mode_equal_truncation():
    texts = _texts([0, 2, 5, 8])
    truncated = _run(EncodePlan(texts, [CLS], [SEP], 10))
    chunked = _run(EncodePlan(texts, [CLS], [SEP], 10, LongTextOptions("chunk")))
    for strategy in truncated:
        torch.testing.assert_close(chunked[strategy], truncated[strategy], rtol=0, atol=0)


def test_chunk_output_rows_are_windows_and_late_rows_are_chunks():
    texts = _texts([20, 0, 5])
    chunk = EncodePlan(texts, [CLS], [SEP], 10, LongTextOptions("chunk", window=8, stride=6, chunk_output=True))
    table = chunk.chunk_table()
    assert table["doc"].tolist() == [0, 0, 0, 0, 1, 2]
    assert table["chunk"].tolist() == [0, 1, 2, 3, 0, 0]
    assert list(zip(table["char_start"], table["char_end"]))[:2] == [(0, 17), (18, 35)]
    assert (table["char_start"][4], table["char_end"][4]) == (0, 0)
    out = _run(chunk)
    first = _fake_states(chunk.inputs[chunk.windows[0][0]])
    torch.testing.assert_close(out["mean"][0], first.mean(0))
    late = EncodePlan(texts, [CLS], [SEP], 10, LongTextOptions("late", window=5, chunk_output=True))
    assert late.chunk_table()["doc"].tolist() == [0, 0, 0, 0, 1, 2]
    assert late.chunk_spans[0] == [(0, 5), (5, 10), (10, 15), (15, 20)]
    out = _run(late)
    from seqpool.long_texts import content_states

    states = content_states([_fake_states(late.inputs[i]) for i in late.windows[0]], late.spans[0], 1, 1)
    torch.testing.assert_close(out["max"][:4], pool_spans(states, late.chunk_spans[0], ["max"])["max"])
    torch.testing.assert_close(out["mean"][4], torch.zeros(DIM))  # an empty text: one empty chunk


def test_prompt_is_in_every_window_and_can_stay_out_of_the_pool():
    texts = _texts([12], prompt=[50, 51])
    plan = EncodePlan(texts, [CLS], [SEP], 10, LongTextOptions("chunk"), exclude=3)
    assert all(ids[:3] == [CLS, 50, 51] for ids in plan.inputs)
    out = _run(plan, strategies=("cls",))
    torch.testing.assert_close(out["cls"][0], _fake_states(plan.inputs[0])[3])  # first token after the prompt
    one = EncodePlan(_texts([4], prompt=[50, 51]), [CLS], [SEP], 10, exclude=3)
    row = _fake_states(one.inputs[0])
    torch.testing.assert_close(_run(one, strategies=("mean",))["mean"][0], pool(row[None, 3:], None, "mean")[0])


def test_options_are_checked():
    with pytest.raises(SeqpoolError, match="unknown `long_texts`"):
        LongTextOptions("split")
    with pytest.raises(SeqpoolError, match="`window` must be a positive"):
        LongTextOptions("chunk", window=0)
    with pytest.raises(SeqpoolError, match="not 'truncate'"):
        LongTextOptions("truncate", chunk_output=True)
    with pytest.raises(SeqpoolError, match="exceeds the 4-token chunks"):
        LongTextOptions("late", window=4, stride=5)
    with pytest.raises(SeqpoolError, match="exceeds the 10 tokens the model takes"):
        window_sizes(LongTextOptions("chunk", window=11), 10, 2)
    with pytest.raises(SeqpoolError, match="no room for text"):
        window_sizes(LongTextOptions("chunk", window=5), 10, 2, prompt_tokens=3)
    with pytest.raises(SeqpoolError, match="`stride` 7 exceeds"):
        window_sizes(LongTextOptions("chunk", window=8, stride=7), 10, 2)
    assert window_sizes(LongTextOptions("late", window=3), 10, 2) == (8, None, 3)
    with pytest.raises(SeqpoolError, match="chunk_output=True"):
        EncodePlan(_texts([2]), [CLS], [SEP], 10).chunk_table()
    assert np.array_equal(EncodePlan([], [CLS], [SEP], 10, LongTextOptions("chunk")).first_row, [0])
