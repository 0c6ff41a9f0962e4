"""The shortcuts that make evaluate's fits fast give what the plain computations give.

* logistic: per-set statistics from two products, and every problem's predictions from one
  product, against a loop over the sets / problems;
* learned poolers: length-bucketed batches cover every row once per epoch and are fixed by
  the seed; ``se_mean`` pooled from the mean equals gating the tokens; a classifier trained on
  pre-pooled means predicts with the token path it is saved with; batches gathered from the
  standardised training copy are the ones a transforming gather gives (and train the same
  weights); means from segment sums; ``pool_filled`` is ``forward`` on zero-padded states.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from seqpool import classifier
from seqpool.classifier import PooledClassifier, _standardized_copy, length_bucketed_batches
from seqpool.evaluation.logistic import fit_logistic_problems, set_statistics
from seqpool.errors import SeqpoolError
from seqpool.pooling import masked_mean
from seqpool.pooling.pooler import Pooler
from seqpool.pooling.scalar_mix import ScalarMixPooling
from seqpool.pooling.squeeze_excitation import SqueezeExcitationMean
from seqpool.states import TokenStates


def test_set_statistics_match_a_loop_over_the_sets():
    rng = np.random.default_rng(0)
    x = rng.normal(5.0, 0.1, size=(300, 7))  # a large mean: the centred second moment must not lose it
    x[:, 3] = 2.0  # a constant column: scale 1, as StandardScaler gives
    sets = [rng.choice(300, size, replace=False) for size in (20, 150, 299)]
    mean, scale = set_statistics(x, sets)
    for s, rows in enumerate(sets):
        assert np.allclose(mean[s], x[rows].mean(axis=0), rtol=0, atol=1e-12)
        std = x[rows].std(axis=0)
        assert np.allclose(scale[s][std > 0], std[std > 0], rtol=1e-9)
        assert scale[s][3] == 1.0


@pytest.mark.parametrize("classes", [2, 3])
def test_predict_all_matches_predicting_problem_by_problem(classes):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(200, 6))
    y = rng.integers(0, classes, size=200)
    sets = [np.arange(0, 120), np.arange(60, 200)]
    models = fit_logistic_problems(x, y, sets, [0.25, 4.0], classes)
    together = models.predict_all(x)
    assert together.shape == (200, 2, 2)
    for s in range(2):
        for c in range(2):
            assert np.array_equal(together[:, s, c], models.predict(x, s, c))


def test_length_bucketed_batches_cover_every_row_once_and_follow_the_seed():
    lengths = np.random.default_rng(2).integers(1, 60, size=1000)
    rows = np.arange(3, 1000, 2)  # a subset, as a training split is
    first = length_bucketed_batches(rows, lengths, 16, torch.Generator().manual_seed(5))
    again = length_bucketed_batches(rows, lengths, 16, torch.Generator().manual_seed(5))
    other = length_bucketed_batches(rows, lengths, 16, torch.Generator().manual_seed(6))
    assert np.array_equal(np.sort(np.concatenate(first)), rows)
    assert all(len(batch) <= 16 for batch in first)
    assert all(np.array_equal(a, b) for a, b in zip(first, again)) and len(first) == len(again)
    assert not all(np.array_equal(a, b) for a, b in zip(first, other))
    # sorted within a bucket: a batch pads to little more than its own texts' lengths
    random_pad = np.mean([lengths[b].max() - lengths[b].mean() for b in np.array_split(rows, len(first))])
    bucket_pad = np.mean([lengths[b].max() - lengths[b].mean() for b in first])
    assert bucket_pad < random_pad / 3


def test_se_mean_from_the_mean_equals_gating_every_token():
    torch.manual_seed(0)
    module = SqueezeExcitationMean(8, reduction=2).double()
    hidden = torch.randn(3, 5, 8, dtype=torch.float64)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 1, 1, 0]], dtype=torch.bool)
    gated = module.scaled_states(hidden, mask)  # the (B, T, D) gated tokens
    reference = torch.stack([gated[b][mask[b]].mean(dim=0) for b in range(3)])
    assert torch.allclose(module(hidden, mask), reference, atol=1e-12)
    pooler = Pooler("se_mean", dim=8, reduction=2).double()
    assert pooler.pools_from_mean
    assert torch.allclose(pooler.from_mean(masked_mean(hidden, mask)), pooler(hidden, mask), atol=1e-12)
    assert not Pooler("attention", dim=8).pools_from_mean


@pytest.mark.parametrize("strategy", ["mean", "max"])
def test_scalar_mix_pools_from_the_mean_only_with_the_mean(strategy):
    module = ScalarMixPooling(3, strategy=strategy).double()
    with torch.no_grad():
        module.mix.weights.copy_(torch.tensor([0.3, -1.0, 0.5]))
        module.mix.gamma.fill_(1.7)
    hidden = torch.randn(2, 4, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    mask = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 1]], dtype=torch.bool)
    assert module.pools_from_mean == (strategy == "mean")
    if strategy == "mean":
        assert torch.allclose(module.from_mean(masked_mean(hidden, mask)), module(hidden, mask), atol=1e-12)
        assert Pooler("scalar_mix", dim=12, num_layers=3).pools_from_mean
    else:
        with pytest.raises(SeqpoolError, match="needs every token"):
            module.from_mean(masked_mean(hidden, mask))


def _toy_states(n: int = 120, dim: int = 6, seed: int = 3) -> tuple[TokenStates, np.ndarray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 12, size=n)
    y = rng.integers(0, 2, size=n)
    tokens = rng.normal(size=(int(lengths.sum()), dim)).astype(np.float32)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    for i in range(n):  # a class signal in channel 0 of every token
        tokens[offsets[i]:offsets[i + 1], 0] += 1.5 * (2 * y[i] - 1)
    return TokenStates(torch.from_numpy(tokens).half(), torch.from_numpy(offsets)), y


@pytest.mark.parametrize("strategy", ["se_mean", "attention"])
def test_training_shortcuts_learn_and_match_the_saved_forward(strategy):
    states, y = _toy_states()
    extra = {"reduction": 2} if strategy == "se_mean" else {}
    model = PooledClassifier(strategy, states.dim, 2, max_epochs=30, lr=0.05, batch_size=16, **extra)
    model.fit(states, y, seed=1)
    assert (model.predict(states) == y).mean() > 0.9
    again = PooledClassifier(**model.get_params()).fit(states, y, seed=1)
    assert np.array_equal(model.predict_logits(states), again.predict_logits(states))  # the seed fixes every number
    # the logits predict_logits gives (gathered and standardised in one step) are forward's
    hidden, mask = states.padded()
    with torch.no_grad():
        assert np.allclose(model(hidden, mask).numpy(), model.predict_logits(states), atol=1e-5)


def test_the_standardised_training_copy_gathers_what_the_transforming_gather_gives():
    states, _ = _toy_states()
    empty = TokenStates(states.states, torch.cat([states.offsets[:3], states.offsets[2:]]))  # text 2 has no token
    model = PooledClassifier("attention", states.dim, 2)
    model.fit_standardization(empty)
    copy = _standardized_copy(empty, model.shift, model.scale)
    for rows in (np.array([5, 2, 17, 0]), np.array([2]), np.arange(len(empty))[::-1]):
        hidden, mask = copy(rows)
        expected_hidden, expected_mask = model._standardized_batch(empty, rows)
        assert torch.equal(mask, expected_mask) and torch.equal(hidden, expected_hidden)


def test_a_fit_too_large_to_copy_trains_the_same_weights(monkeypatch):
    states, y = _toy_states()
    copied = PooledClassifier("attention", states.dim, 2, max_epochs=3).fit(states, y, seed=2)
    monkeypatch.setattr(classifier, "TRAINING_COPY_BYTES", 0)
    assert classifier._standardized_copy(states, copied.shift, copied.scale) is None
    gathered = PooledClassifier("attention", states.dim, 2, max_epochs=3).fit(states, y, seed=2)
    for name, value in copied.state_dict().items():
        assert torch.equal(value, gathered.state_dict()[name]), name


def test_means_from_segment_sums_match_the_padded_masked_mean():
    states, _ = _toy_states()
    states = TokenStates(states.states, torch.cat([states.offsets[:3], states.offsets[2:]]))  # an empty text
    hidden, mask = states.padded()
    means = states.means()
    assert means.dtype == torch.float32 and torch.equal(means[2], torch.zeros(states.dim))
    assert torch.allclose(means, masked_mean(hidden, mask).float(), atol=1e-6)


def test_pool_filled_is_forward_on_states_with_zero_padding():
    torch.manual_seed(0)
    hidden = torch.randn(3, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0]], dtype=torch.bool)
    filled = hidden.masked_fill(~mask.unsqueeze(-1), 0.0)
    for pooler in (Pooler("attention", dim=8, heads=2), Pooler("se_mean", dim=8), Pooler("max")):
        pooler.eval()
        assert torch.equal(pooler.pool_filled(filled, mask), pooler(hidden, mask)), pooler.strategy
