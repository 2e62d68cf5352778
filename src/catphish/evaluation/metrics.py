"""Classification metrics of one group of subjects: binary (ACC, SEN, SPE, AUC) and multi-class (per-class accuracy,
macro-F1, confusion matrix).

Labels are integer class indices. AUC is the Mann–Whitney form (ties count one half), the same number as
scikit-learn's ``roc_auc_score``; it is written out here because the bootstrap and DeLong's test need its rank form.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import rankdata
from sklearn.metrics import roc_curve


@dataclass(frozen=True)
class BinaryMetrics:
    n: int
    n_positive: int
    n_negative: int
    accuracy: float
    sensitivity: float
    """True-positive rate: positives predicted positive / positives (NaN without positives)."""
    specificity: float
    """True-negative rate: negatives predicted negative / negatives (NaN without negatives)."""
    auc: float
    """Area under the ROC curve (NaN unless both classes are present)."""


@dataclass(frozen=True)
class MulticlassMetrics:
    n: int
    accuracy: float
    macro_f1: float
    per_class_accuracy: tuple[float, ...]
    """Per class: its subjects classified correctly / its subjects (the class's recall; NaN when absent)."""
    confusion: np.ndarray
    """``confusion[i, j]``: subjects of true class ``i`` predicted as class ``j``."""


def mann_whitney_auc(positive_scores: np.ndarray, negative_scores: np.ndarray) -> float:
    """AUC = P(score of a positive > score of a negative) + ½ P(equal), from mid-ranks."""
    n_pos, n_neg = len(positive_scores), len(negative_scores)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(np.concatenate([positive_scores, negative_scores]))
    return float((ranks[:n_pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_metrics(y_true: np.ndarray, score: np.ndarray, threshold: float = 0.5) -> BinaryMetrics:
    """Metrics of a binary task; ``y_true`` is 1 for the positive class, ``score`` its probability.

    A subject is predicted positive when ``score >= threshold``.
    """
    y_true = np.asarray(y_true).astype(bool)
    score = np.asarray(score, dtype=float)
    predicted = score >= threshold
    n_pos, n_neg = int(y_true.sum()), int((~y_true).sum())
    true_pos = int((predicted & y_true).sum())
    true_neg = int((~predicted & ~y_true).sum())
    return BinaryMetrics(
        n=len(y_true),
        n_positive=n_pos,
        n_negative=n_neg,
        accuracy=_ratio(true_pos + true_neg, len(y_true)),
        sensitivity=_ratio(true_pos, n_pos),
        specificity=_ratio(true_neg, n_neg),
        auc=mann_whitney_auc(score[y_true], score[~y_true]),
    )


def confusion_matrix(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> np.ndarray:
    """``(n_classes, n_classes)`` counts, rows = true class, columns = predicted class."""
    matrix = np.zeros((n_classes, n_classes), dtype=int)
    np.add.at(matrix, (np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)), 1)
    return matrix


def multiclass_metrics(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> MulticlassMetrics:
    """Accuracy, macro-F1 (mean over all ``n_classes``; a class with no true and no predicted subject scores 0, as in
    scikit-learn's ``f1_score(average='macro', labels=range(n_classes), zero_division=0)``), per-class accuracy and the
    confusion matrix."""
    matrix = confusion_matrix(y_true, y_pred, n_classes)
    true_counts, predicted_counts, hits = matrix.sum(1), matrix.sum(0), np.diag(matrix)
    f1 = [_ratio(2 * int(hits[k]), int(true_counts[k] + predicted_counts[k]), empty=0.0) for k in range(n_classes)]
    return MulticlassMetrics(
        n=int(matrix.sum()),
        accuracy=_ratio(int(hits.sum()), int(matrix.sum())),
        macro_f1=float(np.mean(f1)),
        per_class_accuracy=tuple(_ratio(int(hits[k]), int(true_counts[k])) for k in range(n_classes)),
        confusion=matrix,
    )


def roc_points(y_true: np.ndarray, score: np.ndarray) -> dict[str, list[float]]:
    """The ROC curve (false- and true-positive rates at every distinct threshold) for a figure."""
    y_true = np.asarray(y_true).astype(int)
    if y_true.min(initial=1) == y_true.max(initial=0):
        return {"fpr": [], "tpr": [], "thresholds": []}
    fpr, tpr, thresholds = roc_curve(y_true, np.asarray(score, dtype=float), drop_intermediate=False)
    # scikit-learn's first threshold is +inf (nothing predicted positive); JSON has no infinity
    thresholds = np.minimum(thresholds, 1.0 + np.finfo(float).eps)
    return {"fpr": fpr.tolist(), "tpr": tpr.tolist(), "thresholds": thresholds.tolist()}


def class_indices(labels: Sequence[str], class_names: Sequence[str]) -> np.ndarray:
    lookup = {name: i for i, name in enumerate(class_names)}
    return np.array([lookup[label] for label in labels], dtype=int)


def _ratio(numerator: int, denominator: int, empty: float = float("nan")) -> float:
    return float(numerator / denominator) if denominator else empty
