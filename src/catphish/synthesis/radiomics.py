"""Whole-tumour radiomics features of one case, computed with NumPy/SciPy/scikit-image.

pyradiomics does not install here, so this is a documented subset of the IBSI feature families:

- **first order** per sequence (T1, T1C, T2, FLAIR) over tumour voxels: mean, standard deviation, skewness, kurtosis,
  10th/50th/90th percentiles, energy (mean of squares) and histogram entropy (32 bins);
- **shape**: log volume (voxels), surface-to-volume ratio (boundary voxels / voxels), extent (volume / bounding-box
  volume), elongation (sqrt of the smallest/largest eigenvalue of the voxel-coordinate covariance) and the number of
  connected components;
- **GLCM texture** per sequence (scikit-image ``graycomatrix``, 16 grey levels over the tumour's intensity range,
  distance 1, four in-plane angles, symmetric, normalised, background level excluded, averaged over axial slices for
  3D): contrast, dissimilarity, homogeneity, energy, correlation.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage, stats
from skimage.feature import graycomatrix, graycoprops

from catphish.config import SEQUENCES

FIRST_ORDER = ("mean", "std", "skewness", "kurtosis", "p10", "p50", "p90", "energy", "entropy")
SHAPE = ("log_volume", "surface_to_volume", "extent", "elongation", "components")
GLCM = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation")
GLCM_LEVELS = 16


def feature_names() -> list[str]:
    names = [f"{seq}_{name}" for seq in SEQUENCES for name in FIRST_ORDER]
    names += [f"shape_{name}" for name in SHAPE]
    names += [f"{seq}_glcm_{name}" for seq in SEQUENCES for name in GLCM]
    return names


def tumour_features(image: np.ndarray, mask_threshold: float = 0.5) -> np.ndarray:
    """Feature vector of one case ``(5, *spatial)``; all-NaN when the mask is empty."""
    mask = image[4] > mask_threshold
    if not mask.any():
        return np.full(len(feature_names()), np.nan)
    first_order = [_first_order(image[c][mask]) for c in range(len(SEQUENCES))]
    texture = [_glcm(image[c], mask) for c in range(len(SEQUENCES))]
    return np.concatenate([*first_order, _shape(mask), *texture]).astype(float)


def _first_order(values: np.ndarray) -> np.ndarray:
    values = values.astype(float)
    if values.size < 2 or np.ptp(values) == 0:
        skewness = kurtosis = 0.0
    else:
        skewness, kurtosis = float(stats.skew(values)), float(stats.kurtosis(values))
    histogram, _ = np.histogram(values, bins=32)
    p = histogram[histogram > 0] / values.size
    entropy = float(-(p * np.log2(p)).sum())
    p10, p50, p90 = np.percentile(values, [10, 50, 90])
    return np.array([values.mean(), values.std(), skewness, kurtosis, p10, p50, p90, (values**2).mean(), entropy])


def _shape(mask: np.ndarray) -> np.ndarray:
    volume = float(mask.sum())
    boundary = mask & ~ndimage.binary_erosion(mask)
    coords = np.argwhere(mask)
    extent = volume / float(np.prod(coords.max(0) - coords.min(0) + 1))
    if len(coords) > mask.ndim:
        eigen = np.clip(np.linalg.eigvalsh(np.cov(coords.T)), 0, None)
        elongation = float(np.sqrt(eigen[0] / eigen[-1])) if eigen[-1] > 0 else 1.0
    else:
        elongation = 1.0
    components = float(ndimage.label(mask)[1])
    return np.array([np.log(volume), boundary.sum() / volume, extent, elongation, components])


def _glcm(channel: np.ndarray, mask: np.ndarray) -> np.ndarray:
    values = channel[mask]
    low, high = float(values.min()), float(values.max())
    scale = (GLCM_LEVELS - 1) / (high - low) if high > low else 0.0
    # level 0 marks background; tumour voxels get 1..GLCM_LEVELS
    levels = np.where(mask, np.clip(np.round((channel - low) * scale), 0, GLCM_LEVELS - 1) + 1, 0).astype(np.uint8)
    planes = [levels] if levels.ndim == 2 else [levels[..., z] for z in range(levels.shape[-1]) if mask[..., z].any()]
    props = []
    for plane in planes:
        matrix = graycomatrix(plane, distances=[1], angles=[0, np.pi / 4, np.pi / 2, 3 * np.pi / 4],
                              levels=GLCM_LEVELS + 1, symmetric=True, normed=False)[1:, 1:].astype(float)
        totals = matrix.sum(axis=(0, 1), keepdims=True)
        if not (totals > 0).all():
            continue
        matrix /= totals
        props.append([np.nanmean(graycoprops(matrix, name)) for name in GLCM])
    if not props:
        return np.zeros(len(GLCM))
    return np.nan_to_num(np.mean(props, axis=0))
