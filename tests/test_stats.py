"""seqpool.stats checked by simulation against known truth, and on hand-computed examples.

The cross-validation simulation runs a real (repeated, stratified) k-fold CV of a
nearest-class-mean classifier on two Gaussian classes, where the expected accuracy of the
algorithm trained on ``n_train`` examples is known in closed form:
the threshold ``t = (mean_1 + mean_0) / 2`` is ``N(0, 1 / (2 n_c))`` with ``n_c = n_train / 2``
examples per class, so ``E[accuracy] = Phi(delta / sqrt(1 + 1 / (2 n_c)))``.
"""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as scipy_stats

from seqpool.errors import SeqpoolError
from seqpool.stats import (
    bootstrap_mean,
    bootstrap_p_value,
    corrected_ci,
    corrected_paired_ttest,
    holm,
    mcnemar,
    naive_ci,
    paired_bootstrap,
    seed_example_bootstrap,
    variance_components,
)


def simulate_cv(n_datasets: int, n_per_class: int, deltas: tuple[float, float], folds: int, repeats: int,
                seed: int) -> tuple[np.ndarray, np.ndarray, float, float]:
    """Fold accuracies (datasets, repeats, folds, features) of a 1-D nearest-class-mean
    classifier on each of two independent features, the true expected accuracies, n_train, n_test."""
    rng = np.random.default_rng(seed)
    n = 2 * n_per_class
    labels = np.repeat([0, 1], n_per_class)
    shift = np.where(labels == 1, 1.0, -1.0)[None, :, None] * np.asarray(deltas)[None, None, :]
    features = rng.standard_normal((n_datasets, n, len(deltas))) + shift
    scores = np.empty((n_datasets, repeats, folds, len(deltas)))
    for repeat in range(repeats):
        fold_of = np.empty(n, dtype=int)
        for label in (0, 1):  # stratified: each class spread evenly over the folds
            fold_of[labels == label] = rng.permutation(np.arange(n_per_class) % folds)
        for fold in range(folds):
            test, train = fold_of == fold, fold_of != fold
            threshold = (features[:, train & (labels == 1)].mean(1) + features[:, train & (labels == 0)].mean(1)) / 2
            predicted = features[:, test] > threshold[:, None, :]
            scores[:, repeat, fold] = (predicted == (labels[test] == 1)[None, :, None]).mean(1)
    n_train = n * (folds - 1) / folds
    truth = scipy_stats.norm.cdf(np.asarray(deltas) / np.sqrt(1 + 1 / n_train))
    return scores, truth, n_train, n - n_train


@pytest.fixture(scope="module")
def repeated_cv():
    """500 datasets, 10 x 10-fold CV, two equally good features (identical in distribution)."""
    return simulate_cv(500, 50, (0.5, 0.5), folds=10, repeats=10, seed=0)


def coverage(intervals: list[tuple[float, float]], truth: float) -> float:
    return float(np.mean([low <= truth <= high for low, high in intervals]))


def test_corrected_ci_covers_the_true_accuracy_and_naive_does_not(repeated_cv):
    scores, truth, n_train, n_test = repeated_cv
    corrected = coverage([corrected_ci(s[..., 0], n_train, n_test).ci for s in scores], truth[0])
    naive = coverage([naive_ci(s[..., 0]).ci for s in scores], truth[0])
    # Nadeau-Bengio is known to be slightly conservative; the naive interval is far too narrow.
    assert 0.93 <= corrected <= 0.995
    assert naive < 0.75
    assert corrected - naive > 0.2


def test_corrected_paired_ttest_keeps_type_one_error(repeated_cv):
    scores, _, n_train, n_test = repeated_cv
    corrected = np.mean([corrected_paired_ttest(s[..., 0], s[..., 1], n_train, n_test).p_value < 0.05
                         for s in scores])
    naive = np.mean([scipy_stats.ttest_rel(s[..., 0].ravel(), s[..., 1].ravel()).pvalue < 0.05 for s in scores])
    assert corrected <= 0.05 + 0.02
    assert naive > 0.2  # why the correction exists


def test_best_against_the_rest_with_holm_keeps_family_wise_error():
    """What ``seqpool evaluate`` reports: the best strategy is picked on the same scores it is
    then tested with. With six identical strategies, 'best is significantly better than
    at least one other' must still be rare."""
    scores, _, n_train, n_test = simulate_cv(500, 50, (0.5,) * 6, folds=10, repeats=3, seed=7)
    false_alarms = 0
    for table in scores:
        best = int(np.argmax(table.mean(axis=(0, 1))))
        p_values = [corrected_paired_ttest(table[..., best], table[..., j], n_train, n_test).p_value
                    for j in range(6) if j != best]
        false_alarms += bool((holm(p_values) < 0.05).any())
    assert false_alarms / len(scores) <= 0.05 + 0.025


def test_corrected_paired_ttest_detects_a_real_difference():
    scores, truth, n_train, n_test = simulate_cv(200, 100, (0.3, 0.8), folds=10, repeats=3, seed=1)
    results = [corrected_paired_ttest(s[..., 1], s[..., 0], n_train, n_test) for s in scores]
    assert np.mean([r.p_value < 0.05 for r in results]) > 0.8
    assert np.mean([r.diff for r in results]) == pytest.approx(truth[1] - truth[0], abs=0.01)
    assert coverage([r.ci for r in results], truth[1] - truth[0]) >= 0.93


def test_corrected_ci_matches_hand_computation():
    scores = [0.70, 0.80, 0.75, 0.85]
    mean, variance = 0.775, np.var(scores, ddof=1)
    half = scipy_stats.t.ppf(0.975, 3) * np.sqrt((1 / 4 + 10 / 90) * variance)
    result = corrected_ci(scores, n_train=90, n_test=10)
    assert result.mean == pytest.approx(mean)
    assert result.ci == pytest.approx((mean - half, mean + half))
    assert naive_ci(scores).ci[1] - naive_ci(scores).ci[0] < result.ci[1] - result.ci[0]


def test_zero_variance_gives_point_interval_and_extreme_p():
    assert corrected_ci([0.8, 0.8, 0.8], 90, 10).ci == (0.8, 0.8)
    assert corrected_paired_ttest([0.8, 0.7], [0.8, 0.7], 90, 10).p_value == 1.0
    assert corrected_paired_ttest([0.9, 0.8], [0.8, 0.7], 90, 10).p_value == 0.0


@pytest.mark.parametrize(
    "call",
    [lambda: corrected_ci([0.5], 9, 1), lambda: corrected_ci([0.5, np.nan], 9, 1),
     lambda: corrected_ci([0.5, 0.6], 0, 1), lambda: corrected_paired_ttest([0.5, 0.6], [0.5, 0.6, 0.7], 9, 1),
     lambda: mcnemar([1, 0], [1, 0, 1]), lambda: mcnemar([2, 0], [1, 0]),
     lambda: variance_components(np.ones((5, 1)))],
)
def test_bad_inputs_raise_seqpool_error(call):
    with pytest.raises(SeqpoolError):
        call()


def discordant_pairs(only_a: int, only_b: int, both: int = 5) -> tuple[np.ndarray, np.ndarray]:
    a = np.array([1] * only_a + [0] * only_b + [1] * both, dtype=bool)
    b = np.array([0] * only_a + [1] * only_b + [1] * both, dtype=bool)
    return a, b


def test_mcnemar_exact_matches_hand_binomial():
    result = mcnemar(*discordant_pairs(1, 9))
    # two-sided exact binomial: 2 * P(X <= 1 | n = 10, p = 1/2) = 2 * 11 / 1024
    assert result.p_value == pytest.approx(2 * 11 / 1024)
    assert result.test == "mcnemar exact"
    assert result.diff == pytest.approx((1 - 9) / 15)


def test_mcnemar_chi_square_with_continuity_correction():
    result = mcnemar(*discordant_pairs(10, 30))
    assert result.statistic == pytest.approx((abs(10 - 30) - 1) ** 2 / 40)
    assert result.p_value == pytest.approx(scipy_stats.chi2.sf(361 / 40, 1))
    assert mcnemar(*discordant_pairs(0, 0)).p_value == 1.0


@pytest.mark.parametrize("n_examples", [30, 400])  # exact branch, chi-square branch
def test_mcnemar_type_one_error(n_examples):
    rng = np.random.default_rng(n_examples)
    difficulty = rng.beta(4, 2, size=(2000, n_examples))  # shared by both classifiers
    a = rng.random(difficulty.shape) < difficulty
    b = rng.random(difficulty.shape) < difficulty
    rejected = np.mean([mcnemar(x, y).p_value < 0.05 for x, y in zip(a, b)])
    assert rejected <= 0.05 + 0.01


def test_paired_bootstrap_type_one_error_and_power():
    rng = np.random.default_rng(3)
    difficulty = rng.beta(4, 2, size=(300, 150))
    a = rng.random(difficulty.shape) < difficulty
    b = rng.random(difficulty.shape) < difficulty
    better = rng.random(difficulty.shape) < np.minimum(1.0, difficulty + 0.15)
    null = [paired_bootstrap(x, y, n_resamples=499, seed=i) for i, (x, y) in enumerate(zip(a, b))]
    assert np.mean([r.p_value < 0.05 for r in null]) <= 0.05 + 0.03
    assert coverage([r.ci for r in null], 0.0) >= 0.92
    power = [paired_bootstrap(x, y, n_resamples=499, seed=i).p_value < 0.05 for i, (x, y) in enumerate(zip(better, b))]
    assert np.mean(power) > 0.8


def test_paired_bootstrap_is_deterministic_given_seed():
    rng = np.random.default_rng(0)
    a, b = rng.random(80) < 0.7, rng.random(80) < 0.6
    assert paired_bootstrap(a, b, seed=5) == paired_bootstrap(a, b, seed=5)


def test_seed_example_bootstrap_covers_seed_variance():
    """Correctness depends on example difficulty and on a per-seed shift (logit scale):
    resampling seeds and examples covers the mean over both; examples alone does not."""
    rng = np.random.default_rng(4)
    seeds, examples, seed_sd = 8, 200, 0.3

    def logit(p):
        return np.log(p / (1 - p))

    population = logit(rng.beta(4, 2, 20000))
    shifts = rng.normal(0, seed_sd, 400)
    truth = np.mean([np.mean(1 / (1 + np.exp(-(population + s)))) for s in shifts])
    both, examples_only = [], []
    for trial in range(200):
        difficulty = logit(rng.beta(4, 2, examples))[None, :] + rng.normal(0, seed_sd, (seeds, 1))
        correct = (rng.random((seeds, examples)) < 1 / (1 + np.exp(-difficulty))).astype(float)
        both.append(seed_example_bootstrap(correct, n_resamples=499, seed=trial).ci)
        examples_only.append(bootstrap_mean(correct.mean(0), n_resamples=499, seed=trial).ci)
    assert coverage(both, truth) >= 0.88
    assert coverage(examples_only, truth) < coverage(both, truth) - 0.1


def test_bootstrap_mean_on_a_matrix_uses_seeds_and_examples():
    matrix = np.random.default_rng(0).random((3, 50))
    assert bootstrap_mean(matrix, seed=1).ci == seed_example_bootstrap(matrix, seed=1).ci
    constant = bootstrap_mean(np.ones(20))
    assert constant.ci == (1.0, 1.0) and constant.standard_error == 0.0


def test_bootstrap_p_value_of_one_sided_distribution():
    assert bootstrap_p_value(np.full(999, 0.2)) == pytest.approx(2 / 1000)
    assert bootstrap_p_value(np.zeros(999)) == 1.0
    assert bootstrap_p_value(np.linspace(-1, 1, 1001)) == 1.0


def test_holm_matches_hand_example():
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> max(0.06, 0.04)=0.06
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03, 0.005]), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(holm([0.5, np.nan, 0.01]), [0.5, np.nan, 0.02])
    assert holm([]).size == 0


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=12), st.randoms(use_true_random=False))
def test_holm_properties(p_values, random):
    p = np.asarray(p_values)
    adjusted = holm(p)
    assert np.all(adjusted >= p - 1e-12) and np.all(adjusted <= 1.0)
    assert np.all(adjusted <= np.minimum(1.0, p.size * p) + 1e-12)  # never worse than Bonferroni
    order = np.argsort(p, kind="stable")
    assert np.all(np.diff(adjusted[order]) >= -1e-12)  # monotone in the raw p-values
    permutation = np.asarray(random.sample(range(p.size), p.size))
    np.testing.assert_allclose(holm(p[permutation]), adjusted[permutation])


def test_variance_components_recover_known_truth():
    rng = np.random.default_rng(5)
    split_var, seed_var = 4e-4, 1e-4
    estimates = []
    for _ in range(50):
        table = 0.8 + rng.normal(0, np.sqrt(split_var), (40, 1)) + rng.normal(0, np.sqrt(seed_var), (40, 4))
        estimates.append(variance_components(table))
    assert np.mean([e.split for e in estimates]) == pytest.approx(split_var, rel=0.15)
    assert np.mean([e.seed for e in estimates]) == pytest.approx(seed_var, rel=0.1)
    assert estimates[0].total == pytest.approx(estimates[0].split + estimates[0].seed)
    assert 0.0 <= estimates[0].seed_share <= 1.0


def test_variance_components_without_split_effect_attribute_it_to_seed():
    table = np.tile([0.70, 0.74, 0.72], (6, 1))  # every split identical, seeds differ
    components = variance_components(table)
    assert components.split == 0.0
    assert components.seed == pytest.approx(np.var([0.70, 0.74, 0.72], ddof=1))
