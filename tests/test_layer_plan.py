"""Layer selection: which blocks of hidden layers a set of strategies needs (LayerPlan), and the
Encoder computing all of them in one forward pass per batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seqpool.encoder import Encoder
from seqpool.errors import SeqpoolError
from seqpool.layer_plan import average_layers, plan_layers
from seqpool.pooling import first_token, masked_max, masked_mean
from seqpool.states import TokenStates

TEXTS = ["the cat sat on the mat", "hello world", "a very good film", "", "not a bad movie at all", "a"]


def test_plain_strategies_need_no_extra_layers():
    plan = plan_layers(["mean", "mean+max", "p3", "mean_std", "attention"], 7, (-1,), 8)
    assert plan.blocks is None and plan.width == 8
    assert [plan.output_dim(s) for s in plan.strategies] == [8, 16, 8, 16, 8]
    assert plan.terms["mean+max"] == (("mean", 0), ("max", 0))


def test_a_term_on_the_encoders_own_layer_needs_no_extra_block():
    # -1 and 6 name the same hidden state of a 7-state model, as do [1, -1] and [6, 1]
    assert plan_layers(["mean@-1", "cls@6"], 7, (-1,), 8).blocks is None
    plan = plan_layers(["mean@1~-1", "max@6~1", "mean"], 7, (-1,), 8)
    assert plan.blocks == ((1, 6), (6,)) and plan.width == 16
    assert plan.terms == {"mean@1~-1": (("mean", 0),), "max@6~1": (("max", 0),), "mean": (("mean", 1),)}


def test_blocks_are_listed_once_and_scalar_mix_gets_every_layer_first():
    plan = plan_layers(["cls@-1+mean@-2", "mean@-2", "scalar_mix", "attention@0"], 4, (-1,), 3)
    assert plan.blocks == ((0,), (1,), (2,), (3,))
    assert plan.terms["cls@-1+mean@-2"] == (("cls", 3), ("mean", 2))
    assert plan.learned("scalar_mix") == ("scalar_mix", slice(0, 12), {"num_layers": 4})
    assert plan.learned("attention@0") == ("attention", slice(0, 3), {})
    assert plan.output_dim("scalar_mix") == 3 and plan.output_dim("attention@0", heads=2) == 6


def test_an_encoder_averaging_layers_is_one_block_too():
    plan = plan_layers(["mean", "mean@-1"], 5, (-2, -1), 4)
    assert plan.blocks == ((3, 4), (4,))
    assert plan.terms["mean"] == (("mean", 0),)


@pytest.mark.parametrize("strategy", ["mean@7", "mean@-8", "cls+mean@1~9"])
def test_layers_out_of_range_name_the_strategy(strategy):
    with pytest.raises(SeqpoolError, match=rf"strategy '{strategy.replace('+', '[+]')}': layer -?\d is out of range; "
                                           r"this model has hidden states 0..6"):
        plan_layers([strategy], 7, (-1,), 8)


def test_pool_reads_each_terms_block():
    hidden = torch.randn(2, 5, 12)
    mask = torch.tensor([[1, 1, 1, 0, 0], [0, 1, 1, 1, 1]])
    plan = plan_layers(["cls@0+mean@-1", "max@1"], 3, (-1,), 4)
    assert plan.blocks == ((0,), (2,), (1,))
    pooled = plan.pool(hidden, mask)
    expected = torch.cat([first_token(hidden[..., :4], mask), masked_mean(hidden[..., 4:8], mask)], dim=-1)
    assert torch.equal(pooled["cls@0+mean@-1"], expected)
    assert torch.equal(pooled["max@1"], masked_max(hidden[..., 8:], mask))


def test_pool_states_and_learned_states_slice_cached_token_states():
    generator = torch.Generator().manual_seed(0)
    states = TokenStates(torch.randn(9, 8, generator=generator), torch.tensor([0, 3, 3, 9]))
    plan = plan_layers(["mean@0", "attention@1"], 2, (-1,), 4)
    pooled = plan.pool_states(states)
    assert list(pooled) == ["mean@0"]  # learned strategies are fitted, not pooled
    expected = np.stack([states.states[0:3, :4].mean(0).numpy(), np.zeros(4), states.states[3:9, :4].mean(0).numpy()])
    np.testing.assert_allclose(pooled["mean@0"], expected, rtol=1e-6)
    sliced = plan.learned_states("attention@1", states)
    assert sliced.dim == 4 and torch.equal(sliced.states, states.states[:, 4:]) and torch.equal(sliced.offsets, states.offsets)


def test_average_layers_puts_block_averages_side_by_side():
    layers = [torch.full((1, 2, 3), float(i)) for i in range(4)]
    out = average_layers(layers, [(0,), (1, 3)])
    assert out.shape == (1, 2, 6)
    assert out[0, 0].tolist() == [0.0, 0.0, 0.0, 2.0, 2.0, 2.0]


# ---------------------------------------------------------------- the encoder: one pass, every layer


def count_forward_calls(encoder: Encoder) -> tuple[list[bool], object]:
    """A list that gets one entry (output_hidden_states asked?) per model forward call."""
    calls: list[bool] = []
    handle = encoder.model.register_forward_pre_hook(
        lambda module, args, kwargs: calls.append(bool(kwargs.get("output_hidden_states"))), with_kwargs=True)
    return calls, handle


def test_every_layer_comes_from_one_forward_pass_per_batch(tiny_bert_dir):
    encoder = Encoder(tiny_bert_dir, workers=1)
    plain_calls, handle = count_forward_calls(encoder)
    encoder.encode(TEXTS, ["mean"], batch_size=2)
    handle.remove()
    strategies = ["mean", "mean@-2", "cls@1", "mean@1~-1", "mean+max", "cls@0+mean@-1", "p3@0"]
    calls, handle = count_forward_calls(encoder)
    encoded = encoder.encode(TEXTS, strategies, batch_size=2)
    handle.remove()
    assert len(calls) == len(plain_calls) and all(calls) and not any(plain_calls)

    by_layer = {layer: Encoder(tiny_bert_dir, layer=layer, workers=1).encode(TEXTS, ["mean", "cls", "max", "p3"])
                for layer in (0, 1, -2, -1, (1, -1))}
    close = dict(rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(encoded["mean"], by_layer[-1]["mean"], **close)
    np.testing.assert_allclose(encoded["mean@-2"], by_layer[-2]["mean"], **close)
    np.testing.assert_allclose(encoded["cls@1"], by_layer[1]["cls"], **close)
    np.testing.assert_allclose(encoded["mean@1~-1"], by_layer[(1, -1)]["mean"], **close)
    np.testing.assert_allclose(encoded["mean+max"], np.hstack([by_layer[-1]["mean"], by_layer[-1]["max"]]), **close)
    np.testing.assert_allclose(encoded["cls@0+mean@-1"], np.hstack([by_layer[0]["cls"], by_layer[-1]["mean"]]), **close)
    np.testing.assert_allclose(encoded["p3@0"], by_layer[0]["p3"], **close)
    assert encoded["mean+max"].shape == (len(TEXTS), 64)


def test_hidden_states_with_blocks_hold_each_block_side_by_side(tiny_gpt2_dir):
    encoder = Encoder(tiny_gpt2_dir, workers=1)
    plan = encoder.layer_plan(["mean@0", "mean"])
    assert plan.blocks == ((0,), (2,))
    batches = list(encoder.hidden_states(TEXTS, batch_size=4, blocks=plan.blocks))
    assert all(hidden.shape[-1] == 64 for _, hidden, _ in batches)
    ((rows, hidden, mask),) = encoder.hidden_states(["", ""], blocks=plan.blocks)  # no tokens at all: no forward
    assert hidden.shape == (2, 1, 64) and not mask.any()


def test_encode_refuses_a_layer_the_model_does_not_have(tiny_bert_encoder):
    with pytest.raises(SeqpoolError, match="strategy 'mean@5': layer 5 is out of range"):
        tiny_bert_encoder.encode(["a"], ["mean@5"])


def test_evaluate_caches_every_block_together_and_keys_the_file_by_the_blocks(tiny_bert_encoder, tmp_path):
    from seqpool.evaluation.cache import cached_states

    plan = tiny_bert_encoder.layer_plan(["mean", "mean@0", "cls@1~-1"])
    first = cached_states(tiny_bert_encoder, TEXTS, tmp_path, blocks=plan.blocks)
    again = cached_states(tiny_bert_encoder, TEXTS, tmp_path, blocks=plan.blocks)
    assert not first.cache_hit and again.cache_hit and first.cache_path == again.cache_path
    assert first.states.dim == 3 * 32 and torch.equal(again.states.states, first.states.states)
    plain = cached_states(tiny_bert_encoder, TEXTS, tmp_path)  # the encoder's own layer only: another file
    assert plain.cache_path != first.cache_path and plain.states.dim == 32
    # the block of the encoder's own layer holds exactly the single-layer states
    own = plan.blocks.index((2,))
    torch.testing.assert_close(first.states.states[:, own * 32:(own + 1) * 32], plain.states.states)
    pooled = plan.pool_states(first.states)
    expected = tiny_bert_encoder.encode(TEXTS, ["mean", "mean@0", "cls@1~-1"])
    for strategy, vectors in expected.items():  # from fp16 cached states, so close, not equal
        np.testing.assert_allclose(pooled[strategy], vectors, rtol=1e-2, atol=1e-2)
