"""Per-site scanner profiles: what a site's MRI protocol does to the true signal.

A site keeps one profile for all its subjects (with small per-session jitter), so cross-site shift is systematic like
in a real consortium: field strength and sequence timing bend the contrast curve (a power law per sequence), slice
thickness blurs across slices, coils leave a smooth multiplicative bias field, the receiver chain sets the intensity
scale (MRI units are arbitrary and differ per site and sequence) and the noise level (magnitude images, so Rician).
Data are then skull-stripped and resampled to the common grid, as in BraTS.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from catphish.errors import CatphishError

FWHM_TO_SIGMA = 1.0 / 2.3548
GAMMA_REFERENCE = 0.6
"""Signal level a contrast curve leaves unchanged (about grey matter)."""
INTENSITY_MAX = 32767


@dataclass(frozen=True)
class ScannerProfile:
    """One site's acquisition, sequences in the order T1, T1C, T2, FLAIR."""

    site: str
    field_strength_t: float
    intensity_scale: float
    sequence_gain: tuple[float, float, float, float]
    contrast_gamma: tuple[float, float, float, float]
    noise: float
    """Rician noise standard deviation relative to the grey-matter signal."""
    bias: float
    """Spread of the log bias field across the brain (0.1 ≈ ±10 %)."""
    bias_direction: tuple[float, float, float]
    """The coil's typical intensity gradient (unit vector); each subject adds its own random part."""
    inplane_fwhm_mm: float
    slice_mm: tuple[float, float, float, float]
    """Acquired slice thickness per sequence (through-plane blur along the last axis)."""
    flair_csf: float
    """Residual CSF signal in FLAIR (imperfect fluid suppression)."""
    contrast_uptake: float
    """Relative gadolinium enhancement (dose and post-injection delay)."""


SITE_PROFILES: dict[str, ScannerProfile] = {
    p.site: p
    for p in (
        # multi-institution archive, mostly 1.5 T, thick 2D slices
        ScannerProfile("TCGA", 1.5, 620.0, (1.0, 1.05, 1.3, 0.9), (1.15, 1.1, 0.9, 0.95), 0.050, 0.16,
                       (0.0, 0.6, 0.8), 1.6, (3.0, 3.0, 5.0, 5.0), 0.11, 0.9),
        ScannerProfile("UTSW", 3.0, 1450.0, (1.0, 1.0, 0.85, 1.1), (0.9, 0.95, 1.1, 1.05), 0.030, 0.10,
                       (0.0, -0.3, 0.95), 1.1, (1.0, 1.0, 3.0, 3.0), 0.06, 1.05),
        ScannerProfile("EGD", 1.5, 240.0, (1.0, 1.1, 1.5, 1.2), (1.05, 1.0, 0.95, 1.1), 0.040, 0.13,
                       (0.7, 0.0, 0.7), 1.4, (1.5, 1.5, 4.0, 4.0), 0.09, 0.95),
        ScannerProfile("NYU", 3.0, 1050.0, (1.0, 0.95, 1.2, 1.0), (0.95, 0.9, 1.05, 1.0), 0.032, 0.20,
                       (0.0, 0.0, 1.0), 1.2, (1.0, 1.0, 2.0, 3.0), 0.05, 1.1),
        ScannerProfile("UWM", 1.5, 780.0, (1.0, 1.0, 1.1, 0.8), (1.1, 1.15, 0.95, 0.9), 0.045, 0.12,
                       (0.5, 0.5, 0.7), 1.5, (1.5, 1.5, 4.0, 5.0), 0.12, 0.85),
        ScannerProfile("UCSF", 3.0, 2100.0, (1.0, 1.0, 0.9, 1.05), (0.9, 0.9, 1.05, 1.1), 0.022, 0.07,
                       (0.0, 1.0, 0.0), 1.0, (1.0, 1.0, 1.5, 1.0), 0.04, 1.15),
        ScannerProfile("UPenn", 3.0, 900.0, (1.0, 1.1, 1.0, 1.15), (1.0, 0.95, 1.0, 1.05), 0.035, 0.15,
                       (-0.6, 0.0, 0.8), 1.2, (1.0, 1.0, 3.0, 3.0), 0.07, 1.0),
        ScannerProfile("UTSWp2", 3.0, 1700.0, (1.0, 1.0, 0.8, 1.0), (0.92, 0.95, 1.1, 1.0), 0.026, 0.09,
                       (0.0, -0.3, 0.95), 1.0, (1.0, 1.0, 2.0, 1.0), 0.05, 1.05),
    )
}


def site_profile(site: str) -> ScannerProfile:
    if site not in SITE_PROFILES:
        raise CatphishError(f"no scanner profile for site '{site}' (known: {', '.join(SITE_PROFILES)})")
    return SITE_PROFILES[site]


def acquire(signal: np.ndarray, brain: np.ndarray, profile: ScannerProfile, rng: np.random.Generator,
            voxel_mm: float) -> np.ndarray:
    """Turn true signal ``(4, X, Y, Z)`` into the site's skull-stripped images: int16 scanner units, 0 outside the
    brain and at least 1 inside (BraTS convention: 0 is background).

    Order follows the physics: contrast curve, point-spread (in-plane and slice) blur, coil bias, receiver scale,
    complex Gaussian noise whose magnitude is Rician, then skull stripping.
    """
    scale = profile.intensity_scale * float(np.exp(rng.normal(0.0, 0.08)))
    noise = profile.noise * float(np.exp(rng.normal(0.0, 0.15)))
    inside = np.flatnonzero(brain)
    log_bias = bias_field(rng, brain.shape, profile).ravel()[inside]
    # the same coil shades every sequence, a little differently per contrast
    bias = (np.exp(log_bias), np.exp(1.1 * log_bias))
    weight = brain.astype(np.float32)
    blurred_weight: dict[tuple[float, ...], np.ndarray] = {}
    images = np.zeros(signal.shape, np.int16)
    flat = images.reshape(signal.shape[0], -1)
    for index in range(signal.shape[0]):
        gamma = profile.contrast_gamma[index] * float(np.exp(rng.normal(0.0, 0.02)))
        values = GAMMA_REFERENCE * (np.clip(signal[index].ravel()[inside], 1e-6, None) / GAMMA_REFERENCE) ** gamma
        sigma = _blur_sigma(profile, index, voxel_mm)
        if max(sigma) > 0.3:
            # normalised convolution: blur inside the brain only, so skull stripping does not darken the edge
            if sigma not in blurred_weight:
                blurred = ndi.gaussian_filter(weight, sigma, truncate=3.0)
                blurred_weight[sigma] = np.maximum(blurred.ravel()[inside], 1e-3)
            curved = np.zeros(brain.shape, np.float32)
            curved.ravel()[inside] = values
            values = ndi.gaussian_filter(curved, sigma, truncate=3.0).ravel()[inside] / blurred_weight[sigma]
        gain = scale * profile.sequence_gain[index]
        values = values * bias[index % 2] * gain
        sd = noise * GAMMA_REFERENCE * gain
        real = values + sd * rng.standard_normal(values.shape, dtype=np.float32)
        imaginary = sd * rng.standard_normal(values.shape, dtype=np.float32)
        magnitude = np.sqrt(real * real + imaginary * imaginary)
        flat[index, inside] = np.clip(np.rint(magnitude), 1, INTENSITY_MAX).astype(np.int16)
    return images


def _blur_sigma(profile: ScannerProfile, index: int, voxel_mm: float) -> tuple[float, float, float]:
    """Gaussian sigmas (voxels) of the blur left after resampling to ``voxel_mm``: what the grid does not already do."""
    def extra(fwhm_mm: float) -> float:
        return float(np.sqrt(max(fwhm_mm**2 - voxel_mm**2, 0.0)) * FWHM_TO_SIGMA / voxel_mm)

    inplane = extra(profile.inplane_fwhm_mm)
    return (round(inplane, 3), round(inplane, 3), round(extra(profile.slice_mm[index]), 3))


def bias_field(rng: np.random.Generator, shape: tuple[int, ...], profile: ScannerProfile) -> np.ndarray:
    """Smooth log bias field: the site's coil gradient, a random gradient, and a quadratic (centre vs periphery) term."""
    direction = np.asarray(profile.bias_direction) + rng.normal(0.0, 0.5, 3)
    direction /= max(float(np.linalg.norm(direction)), 1e-6)
    curvature = rng.normal(0.0, 0.5, 3)
    field = np.zeros(shape, np.float32)
    for axis, n in enumerate(shape):
        u = np.linspace(-1.0, 1.0, n, dtype=np.float32)
        profile_1d = profile.bias * (direction[axis] * u + curvature[axis] * (u**2 - 1.0 / 3.0))
        field += profile_1d.reshape([-1 if a == axis else 1 for a in range(len(shape))])
    return field
