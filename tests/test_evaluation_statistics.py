"""Every statistic of catphish.evaluation against an independent oracle on fixed inputs."""

import numpy as np
import pytest
from scipy import stats
from sklearn.metrics import accuracy_score, f1_score, recall_score, roc_auc_score
from sklearn.metrics import confusion_matrix as sk_confusion_matrix
from statsmodels.stats.contingency_tables import SquareTable, mcnemar

from catphish.evaluation import metrics, statistics

RNG = np.random.default_rng(7)
Y_BINARY = RNG.integers(0, 2, 80)
# scores rounded to 1 decimal so that ties occur, within and across classes
SCORE_A = np.round(np.clip(0.3 * Y_BINARY + RNG.normal(0.35, 0.25, 80), 0, 1), 1)
SCORE_B = np.round(np.clip(0.2 * Y_BINARY + RNG.normal(0.4, 0.25, 80), 0, 1), 1)


def test_auc_equals_sklearn_with_ties():
    positive, negative = SCORE_A[Y_BINARY == 1], SCORE_A[Y_BINARY == 0]
    assert metrics.mann_whitney_auc(positive, negative) == pytest.approx(roc_auc_score(Y_BINARY, SCORE_A), abs=1e-12)
    assert np.isnan(metrics.mann_whitney_auc(positive, negative[:0]))


def test_binary_metrics_equal_sklearn():
    result = metrics.binary_metrics(Y_BINARY, SCORE_A, threshold=0.5)
    predicted = (SCORE_A >= 0.5).astype(int)
    assert result.accuracy == pytest.approx(accuracy_score(Y_BINARY, predicted))
    assert result.sensitivity == pytest.approx(recall_score(Y_BINARY, predicted, pos_label=1))
    assert result.specificity == pytest.approx(recall_score(Y_BINARY, predicted, pos_label=0))
    assert result.auc == pytest.approx(roc_auc_score(Y_BINARY, SCORE_A))
    assert (result.n, result.n_positive) == (80, int(Y_BINARY.sum()))


def test_multiclass_metrics_equal_sklearn():
    truth = RNG.integers(0, 3, 60)
    predicted = np.where(RNG.random(60) < 0.6, truth, RNG.integers(0, 3, 60))
    result = metrics.multiclass_metrics(truth, predicted, 3)
    assert result.accuracy == pytest.approx(accuracy_score(truth, predicted))
    assert result.macro_f1 == pytest.approx(f1_score(truth, predicted, average="macro"))
    np.testing.assert_array_equal(result.confusion, sk_confusion_matrix(truth, predicted, labels=[0, 1, 2]))
    np.testing.assert_allclose(result.per_class_accuracy, recall_score(truth, predicted, average=None))


def test_macro_f1_counts_a_never_seen_class_as_zero_like_sklearn():
    truth, predicted = np.array([0, 0, 1, 1]), np.array([0, 1, 1, 1])
    expected = f1_score(truth, predicted, labels=[0, 1, 2], average="macro", zero_division=0)
    assert metrics.multiclass_metrics(truth, predicted, 3).macro_f1 == pytest.approx(expected)


def _delong_oracle(y, score_a, score_b):
    """Direct O(n²) DeLong: structural components from the Mann–Whitney kernel ψ."""
    def components(score):
        pos, neg = score[y == 1], score[y == 0]
        psi = (pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])
        return psi.mean(), psi.mean(1), psi.mean(0)

    auc_a, v10_a, v01_a = components(score_a)
    auc_b, v10_b, v01_b = components(score_b)
    m, n = len(v10_a), len(v01_a)
    s10 = np.cov(np.vstack([v10_a, v10_b]))
    s01 = np.cov(np.vstack([v01_a, v01_b]))
    s = s10 / m + s01 / n
    z = (auc_b - auc_a) / np.sqrt(s[0, 0] + s[1, 1] - 2 * s[0, 1])
    return auc_a, auc_b, z, 2 * stats.norm.sf(abs(z))


def test_delong_equals_direct_quadratic_computation():
    result = statistics.delong_test(Y_BINARY, SCORE_A, SCORE_B)
    auc_a, auc_b, z, p = _delong_oracle(Y_BINARY, SCORE_A, SCORE_B)
    assert (result.auc_a, result.auc_b) == (pytest.approx(auc_a), pytest.approx(auc_b))
    assert result.z == pytest.approx(z, rel=1e-10)
    assert result.p_value == pytest.approx(p, rel=1e-10)
    assert result.auc_a == pytest.approx(roc_auc_score(Y_BINARY, SCORE_A))


def test_delong_of_identical_scores_has_no_difference():
    result = statistics.delong_test(Y_BINARY, SCORE_A, SCORE_A)
    assert (result.difference, result.p_value) == (0.0, 1.0)


def test_bootstrap_ci_is_seeded_and_matches_a_naive_stratified_bootstrap():
    first = statistics.bootstrap_auc_ci(Y_BINARY, SCORE_A, resamples=2000, seed=3)
    again = statistics.bootstrap_auc_ci(Y_BINARY, SCORE_A, resamples=2000, seed=3)
    other = statistics.bootstrap_auc_ci(Y_BINARY, SCORE_A, resamples=2000, seed=4)
    assert (first.low, first.high) == (again.low, again.high)
    assert (first.low, first.high) != (other.low, other.high)
    rng = np.random.default_rng(11)
    positives, negatives = SCORE_A[Y_BINARY == 1], SCORE_A[Y_BINARY == 0]
    naive = []
    for _ in range(2000):  # AUC straight from its definition: P(pos > neg) + ½ P(pos = neg) over all pairs
        pos, neg = rng.choice(positives, len(positives)), rng.choice(negatives, len(negatives))
        naive.append(np.mean((pos[:, None] > neg[None, :]) + 0.5 * (pos[:, None] == neg[None, :])))
    low, high = np.percentile(naive, [2.5, 97.5])
    auc = roc_auc_score(Y_BINARY, SCORE_A)
    assert first.low < auc < first.high
    assert abs(first.low - low) < 0.02 and abs(first.high - high) < 0.02


@pytest.mark.parametrize(("b", "c"), [(3, 9), (0, 5), (7, 7), (12, 12), (30, 14), (40, 60)])
def test_mcnemar_equals_statsmodels_exact_below_25_discordant_else_chi2(b, c):
    table = np.array([[50, b], [c, 20]])
    reference_correct = np.repeat([True, True, False, False], [50, b, c, 20])
    other_correct = np.repeat([True, False, True, False], [50, b, c, 20])
    result = statistics.mcnemar_test(reference_correct, other_correct)
    assert (result.b, result.c) == (b, c)
    exact = b + c < 25
    assert result.exact == exact
    oracle = mcnemar(table, exact=exact, correction=True)
    assert result.p_value == pytest.approx(oracle.pvalue, rel=1e-12)
    if not exact:
        assert result.statistic == pytest.approx(oracle.statistic, rel=1e-12)
        assert result.reported == f"χ²(1) = {oracle.statistic:.2f}, p = {oracle.pvalue:.4f}"


def test_mcnemar_without_discordant_pairs_is_p_one():
    result = statistics.mcnemar_from_counts(0, 0)
    assert (result.p_value, result.exact) == (1.0, True)


def test_paper_style_text():
    assert statistics.chi_square_text(2.4512, 1, 0.117466) == "χ²(1) = 2.45, p = 0.1175"
    assert statistics.chi_square_text(78.41, 1, 8.4e-19) == "χ²(1) = 78.41, p < 0.0001"
    assert statistics.chi_square_text(15.2, 1, 0.00005) == "χ²(1) = 15.20, p = 0.0001"


@pytest.mark.parametrize("table", [
    [[20, 3, 2], [5, 30, 4], [1, 6, 25]],
    [[12, 0, 7], [2, 18, 1], [9, 3, 40]],
    [[5, 9, 1, 0], [2, 11, 3, 4], [0, 1, 14, 2], [3, 0, 6, 21]],
])
def test_stuart_maxwell_equals_statsmodels(table):
    table = np.array(table)
    result = statistics.stuart_maxwell_test(table)
    oracle = SquareTable(table, shift_zeros=False).homogeneity()
    assert result.statistic == pytest.approx(oracle.statistic, rel=1e-10)
    assert result.df == oracle.df
    assert result.p_value == pytest.approx(oracle.pvalue, rel=1e-10)


def test_stuart_maxwell_of_identical_predictions_is_p_one():
    labels = RNG.integers(0, 3, 30)
    result = statistics.stuart_maxwell_test(statistics.paired_table(labels, labels, 3))
    assert (result.statistic, result.p_value) == (0.0, 1.0)


def test_delong_without_two_subjects_per_class_is_reported_as_not_computable():
    result = statistics.delong_test(np.array([1, 0, 0, 0]), np.array([0.9, 0.1, 0.2, 0.3]), np.array([0.5] * 4))
    assert np.isnan(result.p_value) and "not computable" in result.reported
