"""Uncertainty and paired tests between training modes on the same test subjects.

- :func:`bootstrap_auc_ci`: stratified percentile bootstrap of the AUC (positives and negatives resampled separately,
  so every resample has both classes), seeded.
- :func:`delong_test`: DeLong, DeLong & Clarke-Pearson (1988) test of two correlated AUCs on the same subjects, in the
  fast mid-rank form of Sun & Xu (2014).
- :func:`mcnemar_test`: McNemar's test of two classifiers' correctness on the same subjects (Dietterich 1998): exact
  two-sided binomial test when the discordant pairs are fewer than 25, else χ² with continuity correction (the
  rule of statsmodels' ``mcnemar`` documentation and of Dietterich).
- :func:`stuart_maxwell_test`: marginal homogeneity of the two modes' predicted classes (k × k table), the
  generalisation of McNemar to k classes.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import stats

EXACT_BELOW_DISCORDANT = 25
"""McNemar uses the exact binomial test when b + c is below this, χ² with continuity correction otherwise."""


@dataclass(frozen=True)
class AucInterval:
    low: float
    high: float
    resamples: int
    confidence: float
    seed: int


@dataclass(frozen=True)
class DelongResult:
    auc_a: float
    auc_b: float
    difference: float
    """``auc_b - auc_a``."""
    standard_error: float
    z: float
    p_value: float

    @property
    def reported(self) -> str:
        if np.isnan(self.p_value):
            return "not computable (needs at least 2 subjects of each class)"
        return f"ΔAUC = {self.difference:+.3f}, z = {self.z:.2f}, {p_text(self.p_value)}"


@dataclass(frozen=True)
class McnemarResult:
    b: int
    """Subjects the reference classified correctly and the other mode wrongly."""
    c: int
    """Subjects the reference classified wrongly and the other mode correctly."""
    statistic: float
    """χ² with continuity correction, ``(|b - c| - 1)² / (b + c)`` (0 without discordant pairs)."""
    p_value: float
    exact: bool

    @property
    def method(self) -> str:
        return "exact binomial" if self.exact else "chi-square with continuity correction"

    @property
    def reported(self) -> str:
        if self.exact:
            return f"exact binomial (b = {self.b}, c = {self.c}), {p_text(self.p_value)}"
        return chi_square_text(self.statistic, 1, self.p_value)


@dataclass(frozen=True)
class StuartMaxwellResult:
    statistic: float
    df: int
    p_value: float

    @property
    def reported(self) -> str:
        return chi_square_text(self.statistic, self.df, self.p_value)


def chi_square_text(statistic: float, df: int, p_value: float) -> str:
    """The paper's way of reporting a χ² test: ``χ²(1) = 2.45, p = 0.1175``."""
    return f"χ²({df}) = {statistic:.2f}, {p_text(p_value)}"


def p_text(p_value: float) -> str:
    """``p = 0.1175`` as the paper reports it; ``p < 0.0001`` where four decimals would print zero."""
    return "p < 0.0001" if p_value < 0.00005 else f"p = {p_value:.4f}"


# ------------------------------------------------------------------------------------------------- bootstrap
def bootstrap_auc_ci(y_true: np.ndarray, score: np.ndarray, resamples: int = 1000, confidence: float = 0.95,
                     seed: int = 0) -> AucInterval:
    """Percentile interval of the AUC over stratified bootstrap resamples (NaN bounds without both classes)."""
    y_true = np.asarray(y_true).astype(bool)
    score = np.asarray(score, dtype=float)
    positives, negatives = score[y_true], score[~y_true]
    n_pos, n_neg = len(positives), len(negatives)
    if n_pos == 0 or n_neg == 0 or resamples < 1:
        return AucInterval(float("nan"), float("nan"), resamples, confidence, seed)
    rng = np.random.default_rng(seed)
    aucs = np.empty(resamples)
    # chunks bound the memory of the (resamples, n) rank matrix on large test sets
    chunk = max(1, 2_000_000 // (n_pos + n_neg))
    for start in range(0, resamples, chunk):
        size = min(chunk, resamples - start)
        sample = np.concatenate([positives[rng.integers(0, n_pos, (size, n_pos))],
                                 negatives[rng.integers(0, n_neg, (size, n_neg))]], axis=1)
        ranks = stats.rankdata(sample, axis=1)
        aucs[start:start + size] = (ranks[:, :n_pos].sum(1) - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(aucs, [tail, 100 - tail])
    return AucInterval(float(low), float(high), resamples, confidence, seed)


# --------------------------------------------------------------------------------------------------- DeLong
def delong_components(positive_scores: np.ndarray, negative_scores: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """AUC and DeLong's structural components: ``V10[i]`` = mean over negatives of ψ(positive i, ·) and ``V01[j]`` =
    mean over positives of ψ(·, negative j), with ψ(x, y) = 1 if x > y, ½ if equal, 0 otherwise (mid-ranks)."""
    m, n = len(positive_scores), len(negative_scores)
    combined = stats.rankdata(np.concatenate([positive_scores, negative_scores]))
    v10 = (combined[:m] - stats.rankdata(positive_scores)) / n
    v01 = 1.0 - (combined[m:] - stats.rankdata(negative_scores)) / m
    return float(v10.mean()), v10, v01


def delong_test(y_true: np.ndarray, score_a: np.ndarray, score_b: np.ndarray) -> DelongResult:
    """Two-sided test of equal AUC for two score vectors on the same subjects (NaN without both classes)."""
    y_true = np.asarray(y_true).astype(bool)
    score_a, score_b = np.asarray(score_a, dtype=float), np.asarray(score_b, dtype=float)
    m, n = int(y_true.sum()), int((~y_true).sum())
    if m < 2 or n < 2:
        nan = float("nan")
        return DelongResult(nan, nan, nan, nan, nan, nan)
    auc_a, v10_a, v01_a = delong_components(score_a[y_true], score_a[~y_true])
    auc_b, v10_b, v01_b = delong_components(score_b[y_true], score_b[~y_true])
    s10 = np.cov(np.vstack([v10_a, v10_b]))
    s01 = np.cov(np.vstack([v01_a, v01_b]))
    covariance = s10 / m + s01 / n
    variance = covariance[0, 0] + covariance[1, 1] - 2 * covariance[0, 1]
    difference = auc_b - auc_a
    if variance <= 1e-15:
        # identical rankings: no evidence of a difference
        z, p, se = 0.0, 1.0, 0.0
    else:
        se = float(np.sqrt(variance))
        z = difference / se
        p = float(2 * stats.norm.sf(abs(z)))
    return DelongResult(auc_a, auc_b, difference, se, float(z), p)


# ------------------------------------------------------------------------------------------------- McNemar
def mcnemar_test(reference_correct: np.ndarray, other_correct: np.ndarray) -> McnemarResult:
    """McNemar's test on paired correctness; exact when b + c < 25 (see :data:`EXACT_BELOW_DISCORDANT`)."""
    reference_correct = np.asarray(reference_correct).astype(bool)
    other_correct = np.asarray(other_correct).astype(bool)
    b = int((reference_correct & ~other_correct).sum())
    c = int((~reference_correct & other_correct).sum())
    return mcnemar_from_counts(b, c)


def mcnemar_from_counts(b: int, c: int) -> McnemarResult:
    discordant = b + c
    statistic = (abs(b - c) - 1) ** 2 / discordant if discordant else 0.0
    if discordant < EXACT_BELOW_DISCORDANT:
        p = min(1.0, 2 * stats.binom.cdf(min(b, c), discordant, 0.5)) if discordant else 1.0
        return McnemarResult(b, c, float(statistic), float(p), exact=True)
    return McnemarResult(b, c, float(statistic), float(stats.chi2.sf(statistic, 1)), exact=False)


# ------------------------------------------------------------------------------------------- Stuart–Maxwell
def paired_table(labels_a: np.ndarray, labels_b: np.ndarray, n_classes: int) -> np.ndarray:
    """``table[i, j]``: subjects that mode A put in class ``i`` and mode B in class ``j``."""
    table = np.zeros((n_classes, n_classes), dtype=int)
    np.add.at(table, (np.asarray(labels_a, dtype=int), np.asarray(labels_b, dtype=int)), 1)
    return table


def stuart_maxwell_test(table: np.ndarray) -> StuartMaxwellResult:
    """Stuart–Maxwell test of marginal homogeneity of a square table.

    Statistic ``d' V⁻¹ d`` on the first k − 1 margin differences, df = k − 1 (as statsmodels'
    ``SquareTable.homogeneity()``). When V is singular (a class neither mode ever predicts, or perfect agreement on
    some classes) the pseudo-inverse is used and df is V's rank; with V = 0 (the modes never disagree) χ² = 0, p = 1.
    """
    table = np.asarray(table, dtype=float)
    k = table.shape[0]
    d = (table.sum(1) - table.sum(0))[: k - 1]
    variance = -(table + table.T)
    np.fill_diagonal(variance, table.sum(1) + table.sum(0) - 2 * np.diag(table))
    variance = variance[: k - 1, : k - 1]
    rank = int(np.linalg.matrix_rank(variance))
    if rank == 0:
        return StuartMaxwellResult(0.0, k - 1, 1.0)
    inverse = np.linalg.inv(variance) if rank == k - 1 else np.linalg.pinv(variance)
    statistic = float(d @ inverse @ d)
    return StuartMaxwellResult(statistic, rank, float(stats.chi2.sf(statistic, rank)))
