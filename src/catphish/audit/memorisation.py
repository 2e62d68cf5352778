"""Memorisation and membership measures that run at the site, beside the real data; only aggregates leave.

- nearest-neighbour similarity of each synthetic case to the site's cases: max SSIM, min RMSE and max Pearson correlation
  (the DDPM + mutual-information work measures memorisation as the max Pearson correlation);
- the SSIM-distance membership-inference attack: each real case is scored by its max SSIM to any synthetic case; if the
  model memorised its training cases, members (training) score higher than non-members (held out) and the attack AUC
  rises above 0.5 (CATphishing reports 0.493);
- the PE-LDM privacy screen: a synthetic case whose nearest training feature is closer than a threshold calibrated on
  real-to-real nearest distances is blocked.

Images are ``(N, 5, *spatial)``; similarity uses the four sequences (the mask channel is left out).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from monai.metrics.regression import compute_ssim_and_cs
from scipy.spatial.distance import cdist
from sklearn.metrics import roc_auc_score


@dataclass
class NearestNeighbourScores:
    max_ssim: np.ndarray
    min_rmse: np.ndarray
    max_pearson: np.ndarray

    def summary(self) -> dict[str, float]:
        return {f"{name}_{stat}": float(getattr(np, stat)(values))
                for name, values in (("max_ssim", self.max_ssim), ("min_rmse", self.min_rmse),
                                     ("max_pearson", self.max_pearson))
                for stat in ("mean", "median", "max" if name != "min_rmse" else "min")}


def nearest_neighbour_scores(synthetic: np.ndarray, reference: np.ndarray, batch: int = 64) -> NearestNeighbourScores:
    """For each synthetic case, its best match among ``reference`` cases by SSIM, RMSE and Pearson correlation."""
    ssim = pairwise_ssim(synthetic, reference, batch=batch)
    flat_syn = synthetic[:, :4].reshape(len(synthetic), -1).astype(np.float64)
    flat_ref = reference[:, :4].reshape(len(reference), -1).astype(np.float64)
    rmse = cdist(flat_syn, flat_ref) / np.sqrt(flat_syn.shape[1])
    pearson = 1.0 - cdist(flat_syn, flat_ref, metric="correlation")
    return NearestNeighbourScores(max_ssim=ssim.max(axis=1), min_rmse=rmse.min(axis=1), max_pearson=pearson.max(axis=1))


def pairwise_ssim(a: np.ndarray, b: np.ndarray, batch: int = 64, data_range: float | None = None) -> np.ndarray:
    """SSIM of every pair (``len(a)`` × ``len(b)``), mean over the four sequences, Gaussian window (MONAI)."""
    images_a = torch.as_tensor(a[:, :4], dtype=torch.float32)
    images_b = torch.as_tensor(b[:, :4], dtype=torch.float32)
    spatial_dims = images_a.ndim - 2
    if data_range is None:
        data_range = float(max(images_a.max() - images_a.min(), images_b.max() - images_b.min(), 1e-6))
    kernel = 7 if min(images_a.shape[2:]) >= 7 else min(images_a.shape[2:]) | 1
    result = np.empty((len(a), len(b)), dtype=np.float64)
    for i in range(len(a)):
        for start in range(0, len(b), batch):
            chunk = images_b[start:start + batch]
            ssim, _ = compute_ssim_and_cs(images_a[i:i + 1].expand_as(chunk), chunk, spatial_dims=spatial_dims,
                                          kernel_size=[kernel] * spatial_dims, kernel_sigma=[1.5] * spatial_dims,
                                          data_range=data_range, kernel_type="gaussian")
            result[i, start:start + len(chunk)] = ssim.flatten(1).mean(1).double().numpy()
    return result


def membership_inference_auc(synthetic: np.ndarray, members: np.ndarray, non_members: np.ndarray) -> float:
    """AUC of the SSIM-distance attack (members = training cases, non-members = held-out cases); 0.5 = no leakage."""
    member_scores = pairwise_ssim(members, synthetic).max(axis=1)
    non_member_scores = pairwise_ssim(non_members, synthetic).max(axis=1)
    labels = np.r_[np.ones(len(member_scores)), np.zeros(len(non_member_scores))]
    return float(roc_auc_score(labels, np.r_[member_scores, non_member_scores]))


class PrivacyScreen:
    """Block synthetic cases too close to a training case in feature space (PE-LDM).

    The threshold is the ``percentile`` of real-to-real nearest-neighbour distances among training features: a synthetic
    case nearer to some training case than most real cases are to each other is treated as a copy.
    """

    def __init__(self, percentile: float = 5.0) -> None:
        if not 0.0 < percentile < 100.0:
            raise ValueError(f"percentile must be in (0, 100), got {percentile}")
        self.percentile = percentile

    def fit(self, training_features: np.ndarray) -> PrivacyScreen:
        training_features = np.asarray(training_features, dtype=float)
        if len(training_features) < 2:
            raise ValueError("the privacy screen needs at least two training cases to calibrate")
        self.training_features_ = training_features
        distances = cdist(training_features, training_features)
        np.fill_diagonal(distances, np.inf)
        self.real_nearest_ = distances.min(axis=1)
        self.threshold_ = float(np.percentile(self.real_nearest_, self.percentile))
        return self

    def nearest_distance(self, features: np.ndarray) -> np.ndarray:
        return cdist(np.asarray(features, dtype=float), self.training_features_).min(axis=1)

    def predict(self, features: np.ndarray) -> np.ndarray:
        """True where a case is allowed to leave the site."""
        return self.nearest_distance(features) >= self.threshold_
