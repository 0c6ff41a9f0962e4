"""GeMPooling, AttentiveStatisticsPooling, LatentAttentionPooling and ScalarMix(Pooling).

Layout properties (garbage padding, left = right padding, empty rows, dtypes, token order) run
on hypothesis' random padding layouts from test_pooling; each module's math is checked against
a loop over rows that uses the module's own parameters, in float64.
"""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_pooling import garbage, ragged_batches
from torch import Tensor, nn

from seqpool.errors import SeqpoolError
from seqpool.pooling.attentive_stats import AttentiveStatisticsPooling
from seqpool.pooling.gem import GeMPooling
from seqpool.pooling.latent_attention import LatentAttentionPooling, latent_attention_token_weights
from seqpool.pooling.moments import masked_power_mean
from seqpool.pooling.scalar_mix import ScalarMix, ScalarMixPooling

PROPERTY = settings(max_examples=12, deadline=None)

#: (class, kwargs): each module in its default and a non-default configuration.
CASES = [
    (GeMPooling, {}),
    (GeMPooling, {"p": 2.0, "per_channel": True}),
    (GeMPooling, {"signed": False}),
    (AttentiveStatisticsPooling, {"attention_dim": 2}),
    (AttentiveStatisticsPooling, {"attention_dim": 2, "channelwise": False, "global_context": False}),
    (LatentAttentionPooling, {}),
    (LatentAttentionPooling, {"num_queries": 3, "mode": "concat", "key_dim": 2}),
]
IDS = [cls.__name__ + "".join(f"-{k}={v}" for k, v in kwargs.items()) for cls, kwargs in CASES]
cases = pytest.mark.parametrize("case", CASES, ids=IDS)


def build(case, dim: int, seed: int = 1234) -> nn.Module:
    """The module with seeded random parameters (not its near-trivial initial ones), eval mode."""
    cls, kwargs = case
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        module = cls(dim, **kwargs).eval()
        with torch.no_grad():
            for name, parameter in module.named_parameters():
                if name == "p":
                    parameter.add_(torch.rand_like(parameter))  # a non-integer p above its initial value
                else:
                    parameter.copy_(torch.randn_like(parameter))
    return module


# ---------------------------------------------------------------- layout properties


@cases
@PROPERTY
@given(batch=ragged_batches(), fill=garbage, before=st.integers(0, 3), after=st.integers(0, 3))
def test_garbage_padding_changes_no_output_and_no_gradient(case, batch, fill, before, after):
    module = build(case, batch.dim).double()  # float64: only padding, not rounding, could differ
    clean_hidden, clean_mask = batch.assemble(dtype=torch.float64)
    dirty_hidden, dirty_mask = batch.padded(before, after).assemble(fill, dtype=torch.float64)
    clean_hidden.requires_grad_(True)
    dirty_hidden.requires_grad_(True)
    clean, dirty = module(clean_hidden, clean_mask), module(dirty_hidden, dirty_mask)
    assert torch.isfinite(dirty).all()
    torch.testing.assert_close(dirty, clean, rtol=1e-9, atol=1e-12)

    upstream = torch.randn(clean.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    (dirty_grad, *parameter_grads) = torch.autograd.grad((dirty * upstream).sum(), [dirty_hidden, *module.parameters()],
                                                         allow_unused=True)
    (clean_grad,) = torch.autograd.grad((clean * upstream).sum(), clean_hidden)
    assert torch.isfinite(dirty_grad).all() and (dirty_grad[~dirty_mask] == 0).all()
    assert all(grad is None or torch.isfinite(grad).all() for grad in parameter_grads)
    torch.testing.assert_close(dirty_grad[dirty_mask], clean_grad[clean_mask], rtol=1e-7, atol=1e-9)


@cases
@PROPERTY
@given(batch=ragged_batches())
def test_left_right_and_no_padding_agree(case, batch):
    module = build(case, batch.dim).double()
    right = module(*batch.aligned("right").assemble(float("nan"), dtype=torch.float64))
    left = module(*batch.aligned("left").assemble(float("nan"), dtype=torch.float64))
    unpadded = torch.stack([module(row[None].double())[0] if len(row) else torch.zeros_like(right[0])
                            for row in batch.rows])
    torch.testing.assert_close(left, right, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(right, unpadded, rtol=1e-9, atol=1e-12)


@cases
@pytest.mark.parametrize("tokens", [0, 1, 5])
def test_all_padding_rows_pool_to_zeros_with_zero_gradients(case, tokens):
    module = build(case, 3)
    hidden = torch.full((2, tokens, 3), float("nan"), requires_grad=True)
    pooled = module(hidden, torch.zeros(2, tokens, dtype=torch.bool))
    assert pooled.shape == (2, module.output_dim) and (pooled == 0).all()
    (grad,) = torch.autograd.grad(pooled.sum(), hidden)
    assert (grad == 0).all()


@cases
@PROPERTY
@given(batch=ragged_batches(), seed=st.integers(0, 2**16))
def test_token_order_does_not_matter(case, batch, seed):
    module = build(case, batch.dim).double()
    generator = torch.Generator().manual_seed(seed)
    shuffled = replace(batch, rows=tuple(row[torch.randperm(len(row), generator=generator)] for row in batch.rows))
    torch.testing.assert_close(module(*shuffled.assemble(dtype=torch.float64)),
                               module(*batch.assemble(dtype=torch.float64)), rtol=1e-9, atol=1e-12)


@cases
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@PROPERTY
@given(batch=ragged_batches(), fill=garbage)
def test_half_precision_keeps_its_dtype_and_matches_float32(case, dtype, batch, fill):
    module = build(case, batch.dim)
    hidden, mask = batch.assemble(fill, dtype=dtype)
    pooled = module(hidden, mask)
    assert pooled.dtype == dtype
    torch.testing.assert_close(pooled, module(hidden.float(), mask).to(dtype))


@cases
@pytest.mark.parametrize("value", [6.0e4, -6.0e4])
def test_fp16_near_its_maximum_does_not_overflow(case, value):
    hidden = torch.full((2, 2048, 4), value, dtype=torch.float16)
    hidden[1] += torch.linspace(-500, 500, 2048, dtype=torch.float16)[:, None]
    module = build(case, 4)
    with torch.no_grad():  # unit-scale scores: the random test weights times 6e4 would saturate any softmax
        for parameter in module.parameters():
            if parameter.dim() == 2:
                parameter.mul_(1e-5)
    pooled = module(hidden)
    assert torch.isfinite(pooled).all()
    torch.testing.assert_close(pooled.float(), module(hidden.float()), rtol=1e-3, atol=1e-2)


@cases
def test_gradcheck_in_float64_for_states_and_parameters(case):
    module = build(case, 2).double()
    hidden = torch.randn(3, 4, 2, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 0, 1], [0, 0, 0, 0]])
    assert module(hidden, mask).dtype == torch.float64
    parameters = [p for p in module.parameters() if p.requires_grad]
    names = [name for name, p in module.named_parameters() if p.requires_grad]

    def with_parameters(states, *values):
        return torch.func.functional_call(module, dict(zip(names, values)), (states, mask))

    assert torch.autograd.gradcheck(with_parameters, (hidden, *[p.detach().clone().requires_grad_() for p in parameters]))


@cases
def test_save_and_load_round_trip(case, tmp_path):
    module = build(case, 4)
    hidden, mask = torch.randn(3, 5, 4), torch.tensor([[1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]])
    module.save_pretrained(tmp_path)
    assert {path.name for path in tmp_path.iterdir()} == {"config.json", "model.safetensors"}
    loaded = type(module).from_pretrained(tmp_path)
    assert not loaded.training and loaded.config == module.config
    assert torch.equal(loaded(hidden, mask), module(hidden, mask))


@pytest.mark.parametrize("other", [GeMPooling, LatentAttentionPooling])
def test_loading_another_modules_folder_is_a_clear_error(other, tmp_path):
    AttentiveStatisticsPooling(4).save_pretrained(tmp_path)
    with pytest.raises(SeqpoolError, match=f"not a {other.__name__}"):
        other.from_pretrained(tmp_path)


def test_a_config_that_does_not_fit_the_constructor_is_a_clear_error(tmp_path):
    GeMPooling(4).save_pretrained(tmp_path)
    config = (tmp_path / "config.json").read_text().replace('"dim"', '"width"')
    (tmp_path / "config.json").write_text(config)
    with pytest.raises(SeqpoolError, match="config.json does not fit GeMPooling"):
        GeMPooling.from_pretrained(tmp_path)


@cases
def test_states_of_another_width_are_refused(case):
    with pytest.raises(SeqpoolError, match="width 5.*dim=4"):
        build(case, 4)(torch.randn(2, 3, 5))


# ---------------------------------------------------------------- GeM


MASK = torch.tensor([[1, 1, 1, 0, 0, 0], [0, 0, 1, 1, 1, 1], [1, 0, 1, 1, 0, 1], [0, 0, 0, 0, 0, 0],
                     [1, 1, 1, 1, 1, 1]], dtype=torch.bool)


def random_states(dim: int, seed: int) -> Tensor:
    states = torch.randn(*MASK.shape, dim, generator=torch.Generator().manual_seed(seed))
    return states.masked_fill(~MASK[..., None], float("nan"))


def real_tokens(states: Tensor, row: int) -> list[Tensor]:
    return [states[row, t].double() for t in range(MASK.shape[1]) if MASK[row, t]]


@PROPERTY
@given(seed=st.integers(0, 2**16), per_channel=st.booleans())
def test_signed_gem_is_the_signed_power_mean_at_its_learned_p(seed, per_channel):
    module = build((GeMPooling, {"per_channel": per_channel}), 3, seed).double()
    states = random_states(3, seed).double()  # float64: near-cancelling odd powers are exact enough
    pooled = module(states, MASK).detach()
    p = module.exponent().detach().double().expand(3)
    for row in range(MASK.shape[0]):
        tokens = real_tokens(states, row)
        for channel in range(3):
            if not tokens:
                assert pooled[row, channel] == 0
                continue
            powers = [math.copysign(abs(float(t[channel])) ** float(p[channel]), float(t[channel])) for t in tokens]
            m = sum(powers) / len(powers)
            expected = math.copysign(abs(m) ** (1 / float(p[channel])), m)
            assert float(pooled[row, channel]) == pytest.approx(expected, rel=1e-9, abs=1e-12)


def test_unsigned_gem_is_radenovic_s_clamped_power_mean():
    module = GeMPooling(2, p=3.0, eps=1e-6, signed=False)
    states = torch.tensor([[[2.0, -1.0], [1.0, 4.0], [-3.0, 0.0]]])
    expected = [((2**3 + 1 + 1e-18) / 3) ** (1 / 3), ((1e-18 + 64 + 1e-18) / 3) ** (1 / 3)]
    assert module(states).squeeze(0).tolist() == pytest.approx(expected, rel=1e-5)


def test_gem_learns_p_and_clamps_it_at_p_min():
    module = GeMPooling(3, p=3.0)
    states = torch.randn(4, 6, 3)
    module(states).sum().backward()
    assert module.p.grad is not None and torch.isfinite(module.p.grad).all() and module.p.grad.abs().sum() > 0
    with torch.no_grad():
        module.p.fill_(0.2)
    torch.testing.assert_close(module(states), masked_power_mean(states, None, 1.0))  # p = 1: the mean
    frozen = GeMPooling(3, learn_p=False)
    assert list(frozen.parameters()) == [] and "p" in frozen.state_dict()


@pytest.mark.parametrize("kwargs, message", [({"dim": 0}, "dim >= 1"), ({"dim": 3, "p": 0.5}, "p must be"),
                                             ({"dim": 3, "p": 2.0, "p_min": 3.0}, "p_min"),
                                             ({"dim": 3, "eps": 0.0}, "eps")])
def test_gem_rejects_bad_arguments(kwargs, message):
    with pytest.raises(SeqpoolError, match=message):
        GeMPooling(**kwargs)


# ---------------------------------------------------------------- attentive statistics


def hand_linear(layer: nn.Linear, vector: Tensor) -> Tensor:
    return layer.weight.detach().double() @ vector + layer.bias.detach().double()


def hand_softmax(scores: list[float]) -> list[float]:
    top = max(scores)
    exps = [math.exp(s - top) for s in scores]
    return [e / sum(exps) for e in exps]


@pytest.mark.parametrize("channelwise, global_context", [(True, True), (False, False), (True, False)])
@PROPERTY
@given(seed=st.integers(0, 2**16))
def test_attentive_stats_matches_a_hand_computation(channelwise, global_context, seed):
    dim = 3
    module = build((AttentiveStatisticsPooling, {"attention_dim": 4, "channelwise": channelwise,
                                                 "global_context": global_context}), dim, seed)
    states = random_states(dim, seed)
    pooled, weights = (t.detach() for t in module(states, MASK, return_weights=True))
    assert weights.shape == (MASK.shape[0], dim if channelwise else 1, MASK.shape[1])
    first, _, second = module.score
    for row in range(MASK.shape[0]):
        tokens = real_tokens(states, row)
        if not tokens:
            assert (pooled[row] == 0).all() and (weights[row] == 0).all()
            continue
        n = len(tokens)
        mean = sum(tokens) / n
        std = torch.sqrt(sum((t - mean) ** 2 for t in tokens) / n)
        inputs = [torch.cat([t, mean, std]) if global_context else t for t in tokens]
        scores = torch.stack([hand_linear(second, torch.tanh(hand_linear(first, x))) for x in inputs])  # (n, C)
        for channel in range(dim):
            column = scores[:, channel if channelwise else 0].tolist()
            w = hand_softmax(column)
            mu = sum(wi * float(t[channel]) for wi, t in zip(w, tokens))
            sigma = math.sqrt(sum(wi * (float(t[channel]) - mu) ** 2 for wi, t in zip(w, tokens)))
            assert float(pooled[row, channel]) == pytest.approx(mu, rel=1e-4, abs=1e-5)
            assert float(pooled[row, dim + channel]) == pytest.approx(sigma, rel=1e-4, abs=1e-5)
            real_weights = weights[row, channel if channelwise else 0][MASK[row]].tolist()
            assert real_weights == pytest.approx(w, rel=1e-4, abs=1e-6)


def test_attentive_stats_of_one_token_is_that_token_and_std_zero():
    module = build((AttentiveStatisticsPooling, {"attention_dim": 2}), 4)
    token = torch.randn(2, 1, 4)
    pooled = module(token)
    torch.testing.assert_close(pooled[:, :4], token[:, 0])
    assert (pooled[:, 4:] == 0).all()


# ---------------------------------------------------------------- latent attention


@pytest.mark.parametrize("mode", ["mean", "concat"])
@PROPERTY
@given(seed=st.integers(0, 2**16), queries=st.integers(1, 3))
def test_latent_attention_matches_a_hand_computation(mode, seed, queries):
    dim = 3
    module = build((LatentAttentionPooling, {"num_queries": queries, "mode": mode, "key_dim": 2}), dim, seed)
    states = random_states(dim, seed)
    pooled, weights = (t.detach() for t in module(states, MASK, return_weights=True))
    assert pooled.shape == (MASK.shape[0], module.output_dim) and weights.shape == (MASK.shape[0], queries, MASK.shape[1])
    q = module.queries.detach().double()
    for row in range(MASK.shape[0]):
        tokens = real_tokens(states, row)
        if not tokens:
            assert (pooled[row] == 0).all() and (weights[row] == 0).all()
            continue
        keys = [hand_linear(module.key, t) for t in tokens]
        per_query = []
        for j in range(queries):
            w = hand_softmax([float(q[j] @ k) / math.sqrt(2) for k in keys])
            assert weights[row, j][MASK[row]].tolist() == pytest.approx(w, rel=1e-4, abs=1e-6)
            per_query.append(sum(wi * t for wi, t in zip(w, tokens)))
        expected = sum(per_query) / queries if mode == "mean" else torch.cat(per_query)
        torch.testing.assert_close(pooled[row].double(), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", ["mean", "concat"])
def test_latent_attention_token_weights_decompose_the_output_exactly(mode):
    module = build((LatentAttentionPooling, {"num_queries": 3, "mode": mode}), 4)
    states = random_states(4, 7).nan_to_num(0.0)
    weights = latent_attention_token_weights(states, MASK, module)
    weights = weights.unsqueeze(-1).expand(*states.shape) if weights.dim() == 2 else weights
    tiled = states.repeat(1, 1, weights.shape[-1] // 4)
    torch.testing.assert_close((weights * tiled).sum(dim=1), module(states, MASK))


@pytest.mark.parametrize("kwargs, message", [({"dim": 0}, "dim >= 1"), ({"dim": 3, "num_queries": 0}, "num_queries"),
                                             ({"dim": 3, "mode": "sum"}, "mode must be one of mean, concat"),
                                             ({"dim": 3, "dropout": 2.0}, "dropout")])
def test_latent_attention_rejects_bad_arguments(kwargs, message):
    with pytest.raises(SeqpoolError, match=message):
        LatentAttentionPooling(**kwargs)


# ---------------------------------------------------------------- scalar mix


def test_scalar_mix_starts_as_the_average_of_all_layers_and_matches_a_hand_mix():
    layers = torch.randn(4, 2, 3, 5)
    mix = ScalarMix(4)
    torch.testing.assert_close(mix(layers), layers.mean(dim=0))
    with torch.no_grad():
        mix.weights.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
        mix.gamma.fill_(1.5)
    softmax = [math.exp(w) for w in (0.5, -1.0, 2.0, 0.0)]
    expected = 1.5 * sum(s / sum(softmax) * layer for s, layer in zip(softmax, layers))
    torch.testing.assert_close(mix(layers), expected)
    torch.testing.assert_close(mix(list(layers)), expected)  # a list of (B, T, D) layers works the same


@PROPERTY
@given(batch=ragged_batches(), fill=garbage, seed=st.integers(0, 2**16))
def test_scalar_mix_pooling_ignores_padding_and_keeps_weight_gradients_finite(batch, fill, seed):
    generator = torch.Generator().manual_seed(seed)
    scales = [0.5, 1.0, 2.0]
    clean_layers = [batch.assemble()[0] * s for s in scales]
    mask = batch.assemble()[1]
    dirty = batch.padded(1, 2)
    dirty_mask = dirty.assemble()[1]
    dirty_layers = [dirty.assemble(fill)[0] * s for s in scales]
    module = ScalarMixPooling(3)
    with torch.no_grad():
        module.mix.weights.copy_(torch.randn(3, generator=generator))
    clean, dirty_out = module(clean_layers, mask), module(dirty_layers, dirty_mask)
    torch.testing.assert_close(dirty_out, clean, rtol=1e-5, atol=1e-5)
    dirty_out.sum().backward()
    assert torch.isfinite(module.mix.weights.grad).all() and torch.isfinite(module.mix.gamma.grad).all()
    has_tokens = mask.any(dim=1)
    assert (clean[~has_tokens] == 0).all()


def test_scalar_mix_pooling_gradcheck_and_round_trip(tmp_path):
    layers = torch.randn(3, 2, 4, 3, dtype=torch.float64, requires_grad=True)
    mask = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 1]])
    module = ScalarMixPooling(3, strategy="max").double()
    assert torch.autograd.gradcheck(lambda x: module(x, mask), (layers,))
    module.save_pretrained(tmp_path)
    loaded = ScalarMixPooling.from_pretrained(tmp_path).double()
    assert torch.equal(loaded(layers, mask), module(layers, mask))


@pytest.mark.parametrize("layers, message", [
    (torch.randn(2, 2, 3, 4), "num_layers=3 layers but got 2"),
    (torch.randn(3, 3, 4), r"\(layers, batch, tokens, dim\)"),
    ([torch.randn(2, 3, 4), torch.randn(2, 2, 4), torch.randn(2, 3, 4)], "same \\(batch, tokens, dim\\) shape"),
])
def test_scalar_mix_rejects_bad_layer_stacks(layers, message):
    with pytest.raises(SeqpoolError, match=message):
        ScalarMix(3)(layers)
