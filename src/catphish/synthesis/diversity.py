"""The hub's quality gate and diversity filter (CATphishing, DESIGN §1 step 3).

Diversity rule of the paper: standardised whole-tumour radiomics features, pairwise distances within each site, and samples
in pairs closer than the given percentile of those distances are dropped. Dropping *both* members of every close pair would
empty the cohort (at the 20th percentile nearly every sample has some close partner), so pairs are resolved greedily: the
sample with the most remaining close partners is dropped first, until no pair below the threshold is left. The kept set is
thus a set of mutually distant samples, which is what the rule is for (the paper kept 4614 of 9600).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial.distance import pdist, squareform


def quality_problem(image: np.ndarray, min_mask_voxels: int = 8, mask_threshold: float = 0.5,
                    min_in_brain_fraction: float = 0.5) -> str | None:
    """Why a generated case ``(5, *spatial)`` is unusable, or ``None`` when it passes the gate."""
    if not np.isfinite(image).all():
        return "non-finite voxels"
    mask = image[4] > mask_threshold
    voxels = int(mask.sum())
    if voxels == 0:
        return "empty mask"
    if voxels < min_mask_voxels:
        return f"tiny mask ({voxels} voxels < {min_mask_voxels})"
    brain = ndimage.binary_fill_holes(np.abs(image[:4]).mean(axis=0) > 0.1)
    inside = float((mask & brain).sum()) / voxels
    if inside < min_in_brain_fraction:
        return f"mask outside the brain ({inside:.0%} of it inside)"
    return None


class DiversityFilter:
    """Drop near-duplicate samples within each group (site); estimator-style, testable on arrays.

    Parameters
    ----------
    percentile:
        Pairs whose distance is below this percentile of the group's pairwise distances are "too close".
    """

    def __init__(self, percentile: float = 20.0) -> None:
        if not 0.0 < percentile < 100.0:
            raise ValueError(f"percentile must be in (0, 100), got {percentile}")
        self.percentile = percentile

    def fit(self, features: np.ndarray, groups: Sequence[str]) -> DiversityFilter:
        features = np.asarray(features, dtype=float)
        groups = np.asarray(list(groups))
        if len(features) != len(groups):
            raise ValueError("features and groups must have the same length")
        standardised = standardise(features)
        self.keep_ = np.ones(len(features), dtype=bool)
        self.thresholds_: dict[str, float] = {}
        for group in sorted(set(groups.tolist())):
            index = np.flatnonzero(groups == group)
            if len(index) < 2:
                continue
            distances = pdist(standardised[index])
            threshold = float(np.percentile(distances, self.percentile))
            self.thresholds_[group] = threshold
            self.keep_[index] = _greedy_spread(squareform(distances) < threshold)
        return self

    def fit_predict(self, features: np.ndarray, groups: Sequence[str]) -> np.ndarray:
        return self.fit(features, groups).keep_


def standardise(features: np.ndarray) -> np.ndarray:
    """z-score each column (constant columns become 0; NaN → column mean)."""
    mean = np.nanmean(features, axis=0)
    std = np.nanstd(features, axis=0)
    filled = np.where(np.isnan(features), mean, features)
    return np.where(std > 0, (filled - mean) / np.where(std > 0, std, 1.0), 0.0)


def _greedy_spread(close: np.ndarray) -> np.ndarray:
    """Keep mask after repeatedly dropping the sample with most close partners (ties: the later sample)."""
    close = close.copy()
    np.fill_diagonal(close, False)
    keep = np.ones(len(close), dtype=bool)
    degree = close.sum(axis=1)
    while degree.max(initial=0) > 0:
        worst = len(degree) - 1 - int(np.argmax(degree[::-1]))
        keep[worst] = False
        degree -= close[:, worst]
        degree[worst] = 0
        close[worst, :] = False
        close[:, worst] = False
    return keep
