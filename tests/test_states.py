"""seqpool.states.TokenStates: ragged storage, padding, subsets, batches, save/load, from_batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seqpool.errors import SeqpoolError
from seqpool.pooling import pool
from seqpool.states import TokenStates

LENGTHS = [3, 0, 5, 1, 2]
DIM = 4


def make_states(lengths=LENGTHS, dim=DIM, seed=0) -> TokenStates:
    generator = torch.Generator().manual_seed(seed)
    offsets = torch.tensor([0, *np.cumsum(lengths)], dtype=torch.int64)
    return TokenStates(torch.randn(int(offsets[-1]), dim, generator=generator), offsets)


def rows_of(states: TokenStates) -> list[torch.Tensor]:
    return [states.states[states.offsets[i]:states.offsets[i + 1]] for i in range(len(states))]


# -- construction ---------------------------------------------------------------------------


def test_shape_accessors():
    states = make_states()
    assert len(states) == len(LENGTHS)
    assert states.dim == DIM
    assert states.lengths().tolist() == LENGTHS
    assert states.offsets.dtype == torch.int64


@pytest.mark.parametrize("states,offsets,message", [
    (torch.zeros(4), [0, 4], r"\(total_tokens, dim\)"),
    (torch.zeros(4, 2), [1, 4], "start at 0"),
    (torch.zeros(4, 2), [0, 3], "end at len"),
    (torch.zeros(4, 2), [0, 3, 2, 4], "never decrease"),
    (torch.zeros(4, 2), [], "offsets"),
    (torch.zeros(4, 2), [[0, 4]], "offsets"),
])
def test_invalid_layouts_are_refused(states, offsets, message):
    with pytest.raises(SeqpoolError, match=message):
        TokenStates(states, torch.tensor(offsets, dtype=torch.int64))


# -- padding and batches ----------------------------------------------------------------------


def test_padded_is_right_padded_and_masked():
    states = make_states()
    hidden, mask = states.padded()
    assert hidden.shape == (len(LENGTHS), max(LENGTHS), DIM) and mask.dtype == torch.bool
    assert mask.sum(dim=1).tolist() == LENGTHS
    for row, tokens in enumerate(rows_of(states)):
        assert torch.equal(hidden[row, :len(tokens)], tokens)
        assert bool((hidden[row, len(tokens):] == 0).all())
        assert bool(mask[row, :len(tokens)].all()) and not bool(mask[row, len(tokens):].any())


def test_padded_subset_and_dtype():
    states = make_states()
    hidden, mask = states.padded([3, 0], dtype=torch.float64)
    assert hidden.dtype == torch.float64 and hidden.shape == (2, 3, DIM)
    assert mask.sum(dim=1).tolist() == [1, 3]
    empty_hidden, empty_mask = states.padded([])
    assert empty_hidden.shape == (0, 0, DIM) and empty_mask.shape == (0, 0)


def test_iter_batches_covers_the_given_order():
    states = make_states()
    order = [4, 2, 0, 1, 3]
    seen = []
    for rows, hidden, mask in states.iter_batches(order, batch_size=2):
        assert len(rows) <= 2 and hidden.shape[:2] == mask.shape
        seen.extend(rows.tolist())
    assert seen == order


def test_length_sorted_orders_by_token_count_stably():
    states = make_states([2, 1, 2, 0, 1])
    assert states.length_sorted().tolist() == [3, 1, 4, 0, 2]
    assert states.length_sorted([2, 0, 3]).tolist() == [3, 2, 0]


def test_pool_matches_pooling_the_padded_batch():
    states = make_states()
    hidden, mask = states.padded()
    pooled = states.pool(["mean", "max"], batch_size=2)
    for strategy in ("mean", "max"):
        assert pooled[strategy].dtype == np.float32 and pooled[strategy].shape == (len(LENGTHS), DIM)
        np.testing.assert_allclose(pooled[strategy], pool(hidden, mask, strategy).numpy(), atol=1e-6)
    assert not pooled["mean"][1].any()  # the text without tokens pools to zeros


def test_pool_refuses_an_unknown_strategy():
    with pytest.raises(SeqpoolError, match="median"):
        make_states().pool(["median"])


# -- subset, dtype -------------------------------------------------------------------------------


def test_subset_keeps_the_chosen_texts_in_the_given_order():
    states = make_states()
    chosen = [4, 1, 2, 2]
    subset = states.subset(chosen)
    assert subset.lengths().tolist() == [LENGTHS[i] for i in chosen]
    for got, index in zip(rows_of(subset), chosen):
        assert torch.equal(got, rows_of(states)[index])
    assert subset.subset([0]).lengths().tolist() == [LENGTHS[4]]


def test_subset_of_nothing_is_empty_but_keeps_the_width():
    empty = make_states().subset([])
    assert len(empty) == 0 and empty.dim == DIM and empty.offsets.tolist() == [0]
    assert empty.pool(["mean"])["mean"].shape == (0, DIM)


def test_to_changes_dtype_only():
    states = make_states()
    half = states.to(torch.bfloat16)
    assert half.states.dtype == torch.bfloat16 and torch.equal(half.offsets, states.offsets)
    torch.testing.assert_close(half.states.float(), states.states, atol=1e-1, rtol=1e-2)


# -- save / load ----------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_save_load_round_trip_is_exact(tmp_path, dtype):
    states = make_states().to(dtype)
    path = tmp_path / "cache" / "states.safetensors"
    states.save(path, metadata={"model": "tiny"})
    loaded = TokenStates.load(path)
    assert loaded.states.dtype == dtype
    assert torch.equal(loaded.states, states.states) and torch.equal(loaded.offsets, states.offsets)
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        assert handle.metadata() == {"model": "tiny"}
    assert [p.name for p in path.parent.iterdir()] == ["states.safetensors"]  # no temp file left


def test_save_replaces_an_existing_file_and_load_checks_layout(tmp_path):
    path = tmp_path / "s.safetensors"
    make_states(seed=1).save(path)
    second = make_states([2, 2], seed=2)
    second.save(path)
    assert TokenStates.load(path).lengths().tolist() == [2, 2]
    from safetensors.torch import save_file

    save_file({"states": torch.zeros(3, 2), "offsets": torch.tensor([0, 2])}, str(path))
    with pytest.raises(SeqpoolError, match="end at len"):
        TokenStates.load(path)


def test_save_failure_leaves_the_old_file(tmp_path, monkeypatch):
    import seqpool.states as states_module

    path = tmp_path / "s.safetensors"
    make_states([1], seed=3).save(path)
    before = path.read_bytes()

    def broken(tensors, filename, metadata=None):
        open(filename, "wb").write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(states_module, "save_file", broken)
    with pytest.raises(OSError, match="disk full"):
        make_states().save(path)
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["s.safetensors"]


# -- from_batches ---------------------------------------------------------------------------------


def batches_of(states: TokenStates, order, batch_size):
    for start in range(0, len(order), batch_size):
        rows = np.asarray(order[start:start + batch_size])
        hidden, mask = states.padded(rows)
        yield rows, hidden, mask


def test_from_batches_restores_input_order_from_any_batch_order():
    states = make_states()
    rebuilt = TokenStates.from_batches(batches_of(states, [2, 4, 0, 3, 1], 2), num_texts=len(LENGTHS))
    assert torch.equal(rebuilt.offsets, states.offsets) and torch.equal(rebuilt.states, states.states)
    inferred = TokenStates.from_batches(batches_of(states, [1, 0, 2, 3, 4], 3))
    assert torch.equal(inferred.states, states.states)


def test_from_batches_casts_and_reads_the_mask():
    states = make_states()
    hidden, mask = states.padded()
    hidden[~mask] = float("nan")  # padding is never read
    rebuilt = TokenStates.from_batches([(np.arange(len(LENGTHS)), hidden, mask.long())], dtype=torch.bfloat16)
    assert rebuilt.states.dtype == torch.bfloat16 and not bool(rebuilt.states.float().isnan().any())
    assert rebuilt.lengths().tolist() == LENGTHS


@pytest.mark.parametrize("order,num_texts", [
    ([0, 1, 2], 5),        # missing rows
    ([0, 1, 2, 3, 4, 5], 5),  # a row beyond num_texts
    ([0, 2, 3, 4], None),   # a gap when the count is inferred
])
def test_from_batches_refuses_missing_rows(order, num_texts):
    states = make_states([1, 2, 1, 3, 2, 1])
    with pytest.raises(SeqpoolError, match="missing or repeated"):
        TokenStates.from_batches(batches_of(states, order, 2), num_texts=num_texts)


def test_from_batches_refuses_a_repeated_row():
    states = make_states()
    batches = list(batches_of(states, [0, 1, 2, 3, 4], 5)) + list(batches_of(states, [3], 1))
    with pytest.raises(SeqpoolError, match="missing or repeated"):
        TokenStates.from_batches(batches, num_texts=5)


def test_from_no_batches_is_empty():
    empty = TokenStates.from_batches([], num_texts=0)
    assert len(empty) == 0 and empty.offsets.tolist() == [0]


def test_save_gives_umask_permissions_and_keeps_symlinks(tmp_path):
    import os
    import stat

    old_umask = os.umask(0o022)
    try:
        target = tmp_path / "real.safetensors"
        make_states().save(target)
        assert stat.S_IMODE(target.stat().st_mode) == 0o644  # not mkstemp's 0600
        link = tmp_path / "link.safetensors"
        link.symlink_to(target)
        make_states([2], seed=5).save(link)
        assert link.is_symlink() and TokenStates.load(target).lengths().tolist() == [2]
    finally:
        os.umask(old_umask)
