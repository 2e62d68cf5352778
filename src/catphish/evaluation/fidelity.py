"""Distances between a generated and a real distribution of feature vectors ``(N, D)``.

- :func:`frechet_distance` (FID): ‖μ_g − μ_r‖² + tr(Σ_g + Σ_r − 2 (Σ_g Σ_r)^½) of Gaussians fitted to the features
  (unbiased covariances), the same number as ``monai.metrics.FIDMetric``. Biased upwards for small N, so compare
  values only at equal sample sizes.
- :func:`kernel_inception_distance` (KID, Bińkowski et al. 2018): unbiased MMD² with the cubic polynomial kernel
  k(x, y) = (xᵀy / D + 1)³, averaged over random subsets; its mean and standard deviation over the subsets.
  Unbiased, so usable at small N (it can be slightly negative when the distributions match).
- :func:`precision_recall` (Kynkäänniemi et al. 2019): the real manifold is the union of balls around each real
  feature with radius its distance to the k-th nearest real neighbour; precision = share of generated samples inside
  it, recall = share of real samples inside the generated manifold built the same way.

Which features these numbers are computed on matters as much as the formula: see :mod:`catphish.evaluation.features`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import linalg
from scipy.spatial.distance import cdist

from catphish.errors import CatphishError


@dataclass(frozen=True)
class KidResult:
    mean: float
    std: float
    subsets: int
    subset_size: int


@dataclass(frozen=True)
class PrecisionRecall:
    precision: float
    recall: float
    k: int


def frechet_distance(generated: np.ndarray, real: np.ndarray) -> float:
    """FID between two feature matrices ``(N, D)`` (generated first, as MONAI's ``FIDMetric``).

    tr((Σ_g Σ_r)^½) is computed as Σ √λ of the symmetric PSD matrix Σ_g^½ Σ_r Σ_g^½ (the same eigenvalues), which
    is faster than a general matrix square root and stays real and stable when a covariance is singular (fewer
    samples than features).
    """
    generated, real = _features(generated, "generated"), _features(real, "real")
    _same_dimension(generated, real)
    mu_g, mu_r = generated.mean(0), real.mean(0)
    sigma_g = np.atleast_2d(np.cov(generated, rowvar=False))
    sigma_r = np.atleast_2d(np.cov(real, rowvar=False))
    root_g = _psd_sqrt(sigma_g)
    eigenvalues = linalg.eigvalsh(root_g @ sigma_r @ root_g)
    trace_root = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()
    diff = mu_g - mu_r
    return float(diff @ diff + np.trace(sigma_g) + np.trace(sigma_r) - 2 * trace_root)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = linalg.eigh(matrix)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, coef0: float = 1.0) -> np.ndarray:
    """k(x, y) = (xᵀy / D + coef0)^degree, the KID kernel."""
    return (x @ y.T / x.shape[1] + coef0) ** degree


def unbiased_mmd2(generated: np.ndarray, real: np.ndarray) -> float:
    """Unbiased MMD² with the polynomial kernel (diagonal terms of the within-set kernels left out)."""
    m, n = len(generated), len(real)
    k_gg, k_rr, k_gr = polynomial_kernel(generated, generated), polynomial_kernel(real, real), \
        polynomial_kernel(generated, real)
    within_g = (k_gg.sum() - np.trace(k_gg)) / (m * (m - 1))
    within_r = (k_rr.sum() - np.trace(k_rr)) / (n * (n - 1))
    return float(within_g + within_r - 2 * k_gr.mean())


def kernel_inception_distance(generated: np.ndarray, real: np.ndarray, subsets: int = 100, subset_size: int = 1000,
                              seed: int = 0) -> KidResult:
    """KID over ``subsets`` random subsets of ``min(subset_size, N_g, N_r)`` samples of each set (without
    replacement within a subset), seeded. A subset holding both whole sets is the same every time, so then the
    statistic is computed once and its standard deviation is NaN."""
    generated, real = _features(generated, "generated"), _features(real, "real")
    _same_dimension(generated, real)
    size = min(subset_size, len(generated), len(real))
    if size < 2:
        raise CatphishError("KID needs at least 2 samples in each set")
    if size == len(generated) == len(real):
        return KidResult(unbiased_mmd2(generated, real), float("nan"), 1, size)
    rng = np.random.default_rng(seed)
    values = np.array([unbiased_mmd2(generated[rng.choice(len(generated), size, replace=False)],
                                     real[rng.choice(len(real), size, replace=False)]) for _ in range(subsets)])
    return KidResult(float(values.mean()), float(values.std()), subsets, size)


def knn_radii(features: np.ndarray, k: int) -> np.ndarray:
    """Distance of every sample to its k-th nearest other sample of the same set."""
    distances = cdist(features, features)
    # column 0 after sorting is the sample itself (distance 0)
    return np.sort(distances, axis=1)[:, min(k, len(features) - 1)]


def manifold_coverage(manifold: np.ndarray, radii: np.ndarray, queries: np.ndarray) -> float:
    """Share of ``queries`` inside at least one ball (centre ``manifold[i]``, radius ``radii[i]``)."""
    inside = cdist(queries, manifold) <= radii[None, :]
    return float(inside.any(axis=1).mean())


def precision_recall(generated: np.ndarray, real: np.ndarray, k: int = 3) -> PrecisionRecall:
    """Improved precision and recall of the generated distribution (k-NN manifolds, k = 3 as in the paper)."""
    generated, real = _features(generated, "generated"), _features(real, "real")
    _same_dimension(generated, real)
    if min(len(generated), len(real)) < 2:
        raise CatphishError("precision/recall needs at least 2 samples in each set")
    precision = manifold_coverage(real, knn_radii(real, k), generated)
    recall = manifold_coverage(generated, knn_radii(generated, k), real)
    return PrecisionRecall(precision, recall, k)


def real_baseline_summary(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The real-vs-real scale per sequence and kind (split halves of a site, pairs of sites), from the rows of
    ``real_baselines``: number of pairs, mean FID/KID and the FID range."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(str(row["sequence"]), str(row["kind"]))].append(row)
    summary = []
    for (sequence, kind), members in groups.items():
        fids = [float(r["fid"]) for r in members]
        kids = [float(r["kid"]) for r in members if r.get("kid") is not None]
        summary.append({"sequence": sequence, "kind": kind, "pairs": len(members),
                        "FID mean": float(np.mean(fids)), "FID min": min(fids), "FID max": max(fids),
                        "KID mean": float(np.mean(kids)) if kids else None})
    return summary


def _features(values: np.ndarray, what: str) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 2:
        raise CatphishError(f"{what} features must be a (samples, features) matrix, got shape {values.shape}")
    if len(values) < 2:
        raise CatphishError(f"{what} features: need at least 2 samples, got {len(values)}")
    if not np.isfinite(values).all():
        raise CatphishError(f"{what} features contain NaN or infinite values")
    return values


def _same_dimension(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[1] != b.shape[1]:
        raise CatphishError(f"feature sizes differ: {a.shape[1]} vs {b.shape[1]}")
