"""MR contrasts from tissue fractions: every voxel's signal is the fraction-weighted mix of its tissues' signals.

Mixing fractions (not labels) gives partial-volume edges for free: a voxel that is 60 % grey matter and 40 % CSF is
as bright as that mixture. Relative signals follow the usual ordering of each weighting — T1: WM > GM > CSF; T2:
CSF > GM > WM; FLAIR: T2 with CSF suppressed; T1C: T1 plus gadolinium uptake where the blood-brain barrier is open
(enhancing tumour) and in normally enhancing structures (vessels, choroid plexus, dura and venous sinuses).
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from catphish.data.phantom.anatomy import Atlas, SubjectAnatomy
from catphish.data.phantom.tumour import TumourFractions, TumourPhenotype, smooth_noise

# columns: T1, T2, FLAIR (arbitrary units, white-matter T1 ≈ 0.8); rows: normal tissues then tumour compartments
TISSUE_SIGNAL: dict[str, tuple[float, float, float]] = {
    "gm": (0.60, 0.52, 0.60),
    "wm": (0.82, 0.36, 0.46),
    "csf": (0.20, 1.00, 0.07),
    "oedema": (0.52, 0.80, 0.84),
    "solid": (0.46, 0.84, 0.82),
    "necrosis": (0.28, 0.95, 0.50),
    "enhancing": (0.55, 0.64, 0.72),
    "calcification": (0.58, 0.12, 0.15),
}
NORMAL_TISSUES = ("gm", "wm", "csf")
TUMOUR_COMPONENTS = ("oedema", "solid", "necrosis", "enhancing", "calcification")
ENHANCEMENT_GAIN = 0.75
"""T1C brightening of fully enhancing tumour tissue at a site with standard contrast timing."""
MISMATCH_FLAIR_DROP = 0.55
"""Fraction of the solid tumour's FLAIR signal lost at full T2-FLAIR mismatch."""


def synthesise_contrasts(rng: np.random.Generator, anatomy: SubjectAnatomy, tumour: TumourFractions | None,
                         phenotype: TumourPhenotype, atlas: Atlas, *, flair_csf: float = 0.07,
                         contrast_uptake: float = 1.0) -> np.ndarray:
    """Noise-free signal of T1, T1C, T2, FLAIR (float32 ``(4, *anatomy box)``), 0 outside the brain.

    ``flair_csf`` is the site's residual CSF signal in FLAIR (imperfect inversion); ``contrast_uptake`` scales all
    gadolinium enhancement (dose and delay differ between sites).
    """
    signal = {name: np.asarray(value, np.float32) * (1.0 + rng.normal(0.0, 0.03, 3)).astype(np.float32)
              for name, value in TISSUE_SIGNAL.items()}
    signal["csf"][2] = flair_csf * float(np.exp(rng.normal(0.0, 0.15)))
    signal["solid"][2] *= 1.0 - MISMATCH_FLAIR_DROP * phenotype.mismatch
    tissues = anatomy.tissues
    voxel_mm = atlas.resolution
    texture = smooth_noise(rng, tissues.shape[1:], 1.5 / voxel_mm)
    weighted = np.empty((3, *tissues.shape[1:]), np.float32)  # T1, T2, FLAIR
    normal = np.stack([signal[name] for name in NORMAL_TISSUES])  # (3 tissues, 3 weightings)
    for weighting in range(3):
        weighted[weighting] = np.tensordot(normal[:, weighting], tissues, axes=1)
    weighted *= 1.0 + 0.02 * texture[None]
    enhancement = normal_enhancement(anatomy, texture, atlas) * (0.5 * contrast_uptake)
    if tumour is not None:
        _add_tumour(weighted, enhancement, tumour, phenotype, signal, anatomy, contrast_uptake)
    t1, t2, flair = weighted
    out = np.stack([t1, t1 + enhancement, t2, flair])
    out *= anatomy.brain[None]
    return out


def _add_tumour(weighted: np.ndarray, enhancement: np.ndarray, tumour: TumourFractions, phenotype: TumourPhenotype,
                signal: dict[str, np.ndarray], anatomy: SubjectAnatomy, contrast_uptake: float) -> None:
    """Replace normal tissue by tumour compartments inside the tumour's box (in place)."""
    box = tumour.box
    fractions = tumour.fractions
    total = fractions.sum(axis=0)
    local = weighted[(slice(None), *box)]
    local *= (1.0 - total)[None]
    variation = 1.0 + phenotype.heterogeneity * tumour.texture
    for index, name in enumerate(TUMOUR_COMPONENTS):
        fraction = fractions[index]
        if name in ("solid", "enhancing"):
            fraction = fraction * variation  # heterogeneous tumour matrix, oedema stays smooth
        local += signal[name][:, None, None, None] * fraction[None]
    enhancement[box] *= 1.0 - total
    enhancement[box] += fractions[3] * (ENHANCEMENT_GAIN * phenotype.contrast_uptake * contrast_uptake)
    weighted[(slice(None), *box)] = np.maximum(local, 0.0)


def normal_enhancement(anatomy: SubjectAnatomy, texture: np.ndarray, atlas: Atlas) -> np.ndarray:
    """Where normal anatomy enhances with gadolinium: dura and sinuses at the brain's edge, cortical vessels in the
    sulcal CSF, and the choroid plexus in the ventricles (relative strength 0..1)."""
    brain = anatomy.brain
    csf = anatomy.tissues[2]
    shell = brain & ~ndi.binary_erosion(brain)
    world_x = atlas.affine[0, 0] * anatomy.atlas_coords[0] + atlas.affine[0, 3]
    midline = np.exp(-0.5 * (world_x / 5.0) ** 2)  # superior sagittal and straight sinuses
    dura = shell * (0.25 + 0.6 * midline)
    vessels = csf * np.exp(-((texture / 0.18) ** 2)) * (1.0 - anatomy.ventricle_weight)
    choroid = csf * (anatomy.ventricle_weight > 0.35) * (texture > 0.6)
    return (dura + 0.8 * vessels + 1.2 * choroid).astype(np.float32)
