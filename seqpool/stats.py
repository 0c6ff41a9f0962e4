"""Variance analysis for comparing pooling strategies: pure functions on numpy arrays.

Differences between pooling strategies are often below one accuracy point, so the
uncertainty of each number matters as much as the number. Everything here is usable on
its own (no torch, no model) and is checked in ``tests/test_stats.py`` by simulation
against known truth.

Cross-validation (one labelled file)
    Fold scores share most of their training data, so they are positively correlated and
    the naive ``s^2 / J`` variance of their mean is far too small. :func:`corrected_ci` and
    :func:`corrected_paired_ttest` use the Nadeau & Bengio (2003) correction
    ``(1/J + n_test/n_train) * s^2`` with a t distribution on ``J - 1`` degrees of freedom,
    which also covers repeated k-fold (Bouckaert & Frank, 2004: ``J = repeats * folds``).

A fixed test split (train + test files)
    :func:`mcnemar` (exact binomial for few discordant pairs, chi-square with continuity
    correction otherwise) and :func:`paired_bootstrap` over test examples
    (``scipy.stats.bootstrap``). With several training seeds, :func:`paired_bootstrap`
    resamples seeds *and* examples (the "multi-bootstrap" of Sellam et al., 2022), so
    seed variance is part of the interval.

Multiple comparisons
    :func:`holm` step-down adjustment (controls the family-wise error rate).

Variance components
    :func:`variance_components` splits score variance into a split part and a seed part
    (one-way random-effects ANOVA, seeds nested in splits).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import stats as scipy_stats

from seqpool.errors import SeqpoolError

#: Below this many discordant pairs McNemar uses the exact binomial test.
MCNEMAR_EXACT_BELOW = 25


@dataclass(frozen=True)
class Summary:
    """Mean, spread and a confidence interval of one strategy's scores."""

    mean: float
    std: float
    ci: tuple[float, float]
    n: int
    method: str


@dataclass(frozen=True)
class PairedTest:
    """A paired comparison ``a - b``: effect size (mean difference, its CI) and p-value."""

    test: str
    diff: float
    ci: tuple[float, float] | None
    p_value: float
    statistic: float | None = None


def clip_interval(ci: tuple[float, float], low: float = 0.0, high: float = 1.0) -> tuple[float, float]:
    """``ci`` inside ``[low, high]`` (NaN stays NaN: "no interval" is not a bound)."""
    first, second = (float(min(max(x, low), high)) if np.isfinite(x) else float(x) for x in ci)
    return first, second


def _scores(scores: Sequence[float] | np.ndarray, minimum: int = 2) -> np.ndarray:
    """Finite float64 scores, flattened; at least ``minimum`` of them."""
    values = np.asarray(scores, dtype=np.float64).ravel()
    if values.size < minimum:
        raise SeqpoolError(f"need at least {minimum} scores to estimate a variance, got {values.size}")
    if not np.all(np.isfinite(values)):
        raise SeqpoolError("scores contain NaN or infinity")
    return values


def _mean_and_std(values: np.ndarray) -> tuple[float, float]:
    """Mean and sample standard deviation; exactly 0 when all values agree to 1e-12,
    so constant scores give a point interval instead of rounding noise."""
    if np.ptp(values) <= 1e-12:
        return float(values[0]), 0.0
    return float(values.mean()), float(values.std(ddof=1))


def _t_interval(mean: float, standard_error: float, df: int, confidence: float) -> tuple[float, float]:
    """``mean +- t_{df, (1+confidence)/2} * se``; a zero standard error gives a point."""
    if standard_error == 0.0:
        return (mean, mean)
    half = float(scipy_stats.t.ppf(0.5 + confidence / 2, df)) * standard_error
    return (mean - half, mean + half)


def _check_sizes(n_train: float, n_test: float) -> None:
    if n_train <= 0 or n_test <= 0:
        raise SeqpoolError(f"n_train and n_test must be positive, got {n_train} and {n_test}")


def corrected_variance_factor(n_scores: int, n_train: float, n_test: float) -> float:
    """Nadeau-Bengio factor ``1/J + n_test/n_train`` that multiplies the sample variance.

    ``n_test/n_train`` stands for the correlation between scores whose training sets overlap;
    the naive factor is ``1/J`` alone.
    """
    _check_sizes(n_train, n_test)
    return 1.0 / n_scores + n_test / n_train


def naive_ci(scores: Sequence[float] | np.ndarray, confidence: float = 0.95) -> Summary:
    """Student-t interval treating the scores as independent (too narrow for CV scores)."""
    values = _scores(scores)
    mean, std = _mean_and_std(values)
    ci = _t_interval(mean, std / np.sqrt(values.size), values.size - 1, confidence)
    return Summary(mean, std, ci, values.size, "naive t")


def corrected_ci(
    scores: Sequence[float] | np.ndarray, n_train: float, n_test: float, confidence: float = 0.95
) -> Summary:
    """Nadeau-Bengio corrected t interval for the mean of (repeated) k-fold scores.

    ``n_train`` / ``n_test`` are the (average) training and test fold sizes; ``scores`` may be
    a (repeats, folds) array, which is flattened (``J = repeats * folds``).
    """
    values = _scores(scores)
    mean, std = _mean_and_std(values)
    factor = corrected_variance_factor(values.size, n_train, n_test)
    ci = _t_interval(mean, std * np.sqrt(factor), values.size - 1, confidence)
    return Summary(mean, std, ci, values.size, "Nadeau-Bengio corrected t")


def _two_sided_t_p(statistic: float, df: int) -> float:
    return float(2.0 * scipy_stats.t.sf(abs(statistic), df))


def corrected_paired_ttest(
    scores_a: Sequence[float] | np.ndarray,
    scores_b: Sequence[float] | np.ndarray,
    n_train: float,
    n_test: float,
    confidence: float = 0.95,
) -> PairedTest:
    """Corrected resampled paired t-test of ``a - b`` on the same CV splits.

    The scores must be paired: element ``j`` of both comes from the same train/test split.
    A zero variance of the differences gives p = 1 if they are all zero, else p = 0.
    """
    a, b = _scores(scores_a), _scores(scores_b)
    if a.shape != b.shape:
        raise SeqpoolError(f"paired scores need the same length, got {a.size} and {b.size}")
    diff = a - b
    mean, std = _mean_and_std(diff)
    standard_error = float(np.sqrt(corrected_variance_factor(diff.size, n_train, n_test))) * std
    df = diff.size - 1
    ci = _t_interval(mean, standard_error, df, confidence)
    if standard_error == 0.0:
        return PairedTest("corrected resampled t", mean, ci, 1.0 if mean == 0.0 else 0.0, None)
    statistic = mean / standard_error
    return PairedTest("corrected resampled t", mean, ci, _two_sided_t_p(statistic, df), statistic)


def _correctness(values: Sequence[bool] | np.ndarray, name: str) -> np.ndarray:
    array = np.asarray(values)
    if array.size == 0:
        raise SeqpoolError(f"{name} is empty")
    if not np.isin(array, (0, 1)).all():
        raise SeqpoolError(f"{name} must hold per-example correctness (0/1 or bool)")
    return array.astype(bool)


def mcnemar(
    correct_a: Sequence[bool] | np.ndarray,
    correct_b: Sequence[bool] | np.ndarray,
    exact_below: int = MCNEMAR_EXACT_BELOW,
) -> PairedTest:
    """McNemar's test of equal accuracy of two classifiers on the same test examples.

    Only discordant examples count: ``n_ab`` (a right, b wrong) and ``n_ba``. With fewer
    than ``exact_below`` of them the exact two-sided binomial test is used, otherwise the
    chi-square statistic with continuity correction ``(|n_ab - n_ba| - 1)^2 / (n_ab + n_ba)``.
    """
    a, b = _correctness(correct_a, "correct_a"), _correctness(correct_b, "correct_b")
    if a.shape != b.shape:
        raise SeqpoolError(f"paired correctness needs the same shape, got {a.shape} and {b.shape}")
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    discordant = only_a + only_b
    diff = float(a.mean() - b.mean())
    if discordant == 0:
        return PairedTest("mcnemar exact", diff, None, 1.0, 0.0)
    if discordant < exact_below:
        p_value = scipy_stats.binomtest(only_a, discordant, 0.5).pvalue
        return PairedTest("mcnemar exact", diff, None, float(min(1.0, p_value)), float(only_a))
    statistic = (abs(only_a - only_b) - 1.0) ** 2 / discordant
    return PairedTest("mcnemar chi2", diff, None, float(scipy_stats.chi2.sf(statistic, 1)), statistic)


@dataclass(frozen=True)
class BootstrapEstimate:
    """A statistic, its percentile interval and the bootstrap distribution it came from."""

    estimate: float
    ci: tuple[float, float]
    standard_error: float
    distribution: np.ndarray


def bootstrap_mean(
    values: Sequence[float] | np.ndarray, confidence: float = 0.95, n_resamples: int = 9999, seed: int = 0
) -> BootstrapEstimate:
    """Percentile bootstrap of the mean over examples (``scipy.stats.bootstrap``).

    A 2-D ``(seeds, examples)`` array is resampled along both axes instead
    (:func:`seed_example_bootstrap`), so run-to-run variance of training is included.
    """
    array = np.asarray(values, dtype=np.float64)
    if array.ndim == 2 and array.shape[0] > 1:
        return seed_example_bootstrap(array, confidence, n_resamples, seed)
    sample = _scores(array, minimum=1)
    estimate = float(sample.mean())
    if np.all(sample == sample[0]):  # degenerate: every resample gives the same mean
        return BootstrapEstimate(estimate, (estimate, estimate), 0.0, np.full(n_resamples, estimate))
    result = scipy_stats.bootstrap(
        (sample,), np.mean, n_resamples=n_resamples, vectorized=True, confidence_level=confidence,
        method="percentile", rng=np.random.default_rng(seed),
    )
    interval = result.confidence_interval
    return BootstrapEstimate(estimate, (float(interval.low), float(interval.high)),
                             float(result.standard_error), result.bootstrap_distribution)


def _resampling_weights(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """(size, n) weights of ``size`` with-replacement resamples of n items (counts / n)."""
    picks = rng.integers(0, n, size=(size, n)) + n * np.arange(size)[:, None]
    return np.bincount(picks.ravel(), minlength=size * n).reshape(size, n) / n


def seed_example_bootstrap(
    matrix: np.ndarray, confidence: float = 0.95, n_resamples: int = 9999, seed: int = 0, chunk: int = 256
) -> BootstrapEstimate:
    """Two-way percentile bootstrap of the grand mean of a (seeds, examples) array.

    Each resample draws seeds and examples independently with replacement (the
    multi-bootstrap of Sellam et al., "The MultiBERTs", 2022): the interval then covers
    the mean over *both* new test examples and new training seeds. Resampling is done
    with multinomial weights, in chunks, so memory stays ``chunk * examples``.
    """
    matrix = np.asarray(matrix, dtype=np.float64)
    if matrix.ndim != 2 or matrix.size == 0:
        raise SeqpoolError(f"expected a non-empty (seeds, examples) array, got shape {matrix.shape}")
    n_seeds, n_examples = matrix.shape
    rng = np.random.default_rng(seed)
    distribution = np.empty(n_resamples)
    for start in range(0, n_resamples, chunk):
        size = min(chunk, n_resamples - start)
        seed_weights = _resampling_weights(rng, n_seeds, size)
        example_weights = _resampling_weights(rng, n_examples, size)
        distribution[start:start + size] = ((seed_weights @ matrix) * example_weights).sum(axis=1)
    alpha = (1.0 - confidence) / 2
    low, high = np.quantile(distribution, [alpha, 1.0 - alpha])
    return BootstrapEstimate(float(matrix.mean()), (float(low), float(high)),
                             float(distribution.std(ddof=1)), distribution)


def bootstrap_p_value(distribution: np.ndarray, null: float = 0.0) -> float:
    """Two-sided p-value by inverting the percentile interval: the smallest alpha whose
    equal-tailed interval excludes ``null`` (with the +1 correction, never exactly 0)."""
    count = distribution.size
    below = (np.sum(distribution <= null) + 1) / (count + 1)
    above = (np.sum(distribution >= null) + 1) / (count + 1)
    return float(min(1.0, 2.0 * min(below, above)))


def paired_bootstrap(
    correct_a: Sequence[float] | np.ndarray,
    correct_b: Sequence[float] | np.ndarray,
    confidence: float = 0.95,
    n_resamples: int = 9999,
    seed: int = 0,
) -> PairedTest:
    """Paired bootstrap of the accuracy difference ``a - b`` on the same test examples.

    Inputs are per-example scores (e.g. 0/1 correctness) of shape (examples,), or
    (seeds, examples) for strategies trained with several seeds; resampling the
    differences keeps the pairing.
    """
    a, b = np.asarray(correct_a, dtype=np.float64), np.asarray(correct_b, dtype=np.float64)
    if a.ndim == 1:
        a = a[None, :]
    if b.ndim == 1:
        b = b[None, :]
    if a.shape[1] != b.shape[1]:
        raise SeqpoolError(f"paired scores need the same examples, got {a.shape[1]} and {b.shape[1]}")
    if a.shape[0] != b.shape[0]:  # one seed against several: compare each seed to the single run
        a, b = np.broadcast_arrays(a, b)
    diff = a - b
    result = bootstrap_mean(diff if diff.shape[0] > 1 else diff[0], confidence, n_resamples, seed)
    test = "paired bootstrap (seeds x examples)" if diff.shape[0] > 1 else "paired bootstrap"
    return PairedTest(test, result.estimate, result.ci, bootstrap_p_value(result.distribution), None)


def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm (1979) step-down adjusted p-values, in the input order.

    The i-th smallest p-value is multiplied by ``m - i + 1`` (i from 1), then running
    maxima keep the order; NaN entries are left out of ``m`` and stay NaN.
    """
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full_like(p, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    if valid.size == 0:
        return adjusted
    order = valid[np.argsort(p[valid], kind="stable")]
    multipliers = np.arange(valid.size, 0, -1)
    stepped = np.maximum.accumulate(np.minimum(1.0, multipliers * p[order]))
    adjusted[order] = stepped
    return adjusted


#: The fewest within-split (seed) and between-split degrees of freedom with which a split of the
#: variance is stated. Below them the 95 % interval of the seed share covers most of [0, 1] for
#: any scores: with 5 splits x 2 seeds (4 and 5 df) it is at best about [0.02, 0.90] (at an
#: estimated share of 0.2) and [0.19, 1] at a share of 1; with 2 splits (1 df) it is about
#: [0, 1] whatever the seeds; and the seed variance alone is known only within a factor 15
#: (chi-square with 5 df). From 4 and 10 df (5 x 3; 10 x 2 gives 9 and 10) an interval such
#: as [0.03, 0.61] can rule shares out, and the seed variance is known within a factor 6.
MIN_SPLIT_DF = 4
MIN_SEED_DF = 10


@dataclass(frozen=True)
class VarianceComponents:
    """How much of the score variance is due to the data split and to the training seed.

    ``split_df`` / ``seed_df`` are the between- and within-split degrees of freedom of the
    ANOVA; ``seed_share_ci`` the 95 % interval of :attr:`seed_share` (NaN when no score varies).
    """

    split: float
    seed: float
    split_df: int = 0
    seed_df: int = 0
    seed_share_ci: tuple[float, float] = (float("nan"), float("nan"))

    @property
    def total(self) -> float:
        return self.split + self.seed

    @property
    def seed_share(self) -> float:
        return self.seed / self.total if self.total > 0 else 0.0

    @property
    def enough_to_split(self) -> bool:
        """Whether the design has the degrees of freedom to state the split (see :data:`MIN_SEED_DF`)."""
        return self.split_df >= MIN_SPLIT_DF and self.seed_df >= MIN_SEED_DF


def variance_components(scores: np.ndarray, confidence: float = 0.95) -> VarianceComponents:
    """Split and seed variance from a (splits, seeds) score table (seeds nested in splits).

    Model: ``s_ij = mu + a_i + e_ij`` with split effects ``a_i ~ (0, var_split)`` and seed
    effects ``e_ij ~ (0, var_seed)``; one-way random-effects ANOVA estimators
    ``var_seed = MS_within`` and ``var_split = (MS_between - MS_within) / seeds``, clipped at
    0 (their sum estimates the variance of one score, by the law of total variance).

    The seed share is one minus the intraclass correlation ICC(1) of the splits, so its
    interval is the exact one of the ICC under normal effects (Shrout & Fleiss 1979), from
    ``F = MS_between / MS_within`` and the F distribution with (splits - 1, splits * (seeds - 1)) df.
    """
    table = np.asarray(scores, dtype=np.float64)
    if table.ndim != 2 or table.shape[0] < 2 or table.shape[1] < 2:
        raise SeqpoolError(f"variance components need a (splits >= 2, seeds >= 2) table, got shape {table.shape}")
    splits, n_seeds = table.shape
    within = float(table.var(axis=1, ddof=1).mean())
    between = float(n_seeds * table.mean(axis=1).var(ddof=1))
    split_df, seed_df = splits - 1, splits * (n_seeds - 1)
    return VarianceComponents(split=max(0.0, (between - within) / n_seeds), seed=within, split_df=split_df,
                              seed_df=seed_df,
                              seed_share_ci=_seed_share_interval(between, within, n_seeds, split_df, seed_df,
                                                                 confidence))


def _seed_share_interval(between: float, within: float, n_seeds: int, split_df: int, seed_df: int,
                         confidence: float) -> tuple[float, float]:
    """``1 - ICC`` bounds: ICC = (F - 1) / (F + seeds - 1) at F divided (lower) and multiplied
    (upper) by the F distribution's upper quantiles."""
    if within <= 0:
        return (0.0, 0.0) if between > 0 else (float("nan"), float("nan"))
    tail = (1 + confidence) / 2
    f = between / within
    f_low = f / float(scipy_stats.f.ppf(tail, split_df, seed_df))
    f_high = f * float(scipy_stats.f.ppf(tail, seed_df, split_df))
    icc = [min(1.0, max(0.0, (x - 1) / (x + n_seeds - 1))) for x in (f_low, f_high)]
    return 1.0 - icc[1], 1.0 - icc[0]
