"""Glioma phenotypes and their geometry: where a tumour grows, how large, and what its sub-regions look like.

Every subject has a latent *aggressiveness* ``z`` drawn around a class mean (IDH-wildtype glioblastoma high, IDH-mutant
low) with unit spread; enhancement, necrosis, oedema extent, irregularity and mass effect all follow ``z`` plus their own
noise, so classes overlap: some IDH-mutant tumours enhance with a necrotic core, some glioblastomas barely enhance. Type-
specific signs sit on top (T2-FLAIR mismatch for astrocytoma, calcification and cortical location for oligodendroglioma).
Geometry is an irregular ellipsoidal level set per sub-region (smooth noise on the normalised radius), which yields soft
(partial-volume) fractions of oedema, solid non-enhancing tumour, necrosis, enhancing rim and calcification.
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass

import numpy as np
from scipy import ndimage as ndi

from catphish.config import TASK_CLASSES
from catphish.data.phantom.anatomy import SubjectAnatomy, load_atlas, rotation_matrix

TUMOUR_TYPES: tuple[str, ...] = TASK_CLASSES["tumor_type"]
IDH_OF_TYPE: dict[str, str] = {"oligodendroglioma": "mutant", "astrocytoma": "mutant", "glioblastoma": "wildtype"}
CLASS_SEPARATION = 1.7
"""Distance between the class means of the latent aggressiveness, in units of its spread (Φ(1.7/√2) ≈ 0.89 AUC)."""
SHAPE_NOISE_LIMIT = 0.35
"""Largest change of the normalised radius by the shape noise (keeps shapes irregular but bounded)."""
COMPONENTS: tuple[str, ...] = ("oedema", "solid", "necrosis", "enhancing", "calcification")
"""Tumour tissue compartments, in the order of :attr:`TumourFractions.fractions`."""


@dataclass(frozen=True)
class TumourPhenotype:
    """Everything that decides one tumour's appearance; recorded so a case can be explained."""

    tumour_type: str
    aggressiveness: float
    centre_mm: tuple[float, float, float]
    core_radius_mm: float
    oedema_factor: float
    """Whole-tumour (FLAIR abnormality) radius over core radius."""
    necrosis_fraction: float
    """Necrotic radius over core radius; 0 = no necrosis."""
    enhancement: float
    """0..1: none, patchy faint nodules, up to a complete enhancing rim."""
    ring_thickness_mm: float
    contrast_uptake: float
    """T1C brightening of enhancing tissue (before the site's own contrast timing)."""
    mismatch: float
    """0..1 T2-FLAIR mismatch: the solid tumour's FLAIR signal suppressed while T2 stays bright."""
    calcifications: int
    heterogeneity: float
    irregularity: float
    axes: tuple[float, float, float]
    rotation_deg: tuple[float, float, float]
    mass_effect: float

    def summary(self) -> dict[str, float | int | str]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in asdict(self).items()
                if not isinstance(v, tuple)}


def _sigmoid(x: np.ndarray | float) -> np.ndarray | float:
    return 1.0 / (1.0 + np.exp(-np.clip(x, -60.0, 60.0)))


def sample_phenotype(rng: np.random.Generator, tumour_type: str) -> TumourPhenotype:
    """Draw a tumour of ``tumour_type``: location from the type's prior, then a phenotype driven by aggressiveness."""
    wildtype = IDH_OF_TYPE[tumour_type] == "wildtype"
    z = float(rng.normal(CLASS_SEPARATION / 2 if wildtype else -CLASS_SEPARATION / 2, 1.0))
    e = rng.normal(0.0, 1.0, 8)
    necrosis = float(0.7 * _sigmoid(1.8 * (z + 0.45 * e[1]) - 0.7))
    mismatch_base = float(_sigmoid(-1.6 * (z + 0.5 * e[3]) - 0.4))
    mismatch = {"astrocytoma": mismatch_base, "oligodendroglioma": 0.3 * mismatch_base,
                "glioblastoma": 0.12 * mismatch_base}[tumour_type]
    calcification_rate = {"oligodendroglioma": 0.55, "astrocytoma": 0.12, "glioblastoma": 0.04}[tumour_type]
    calcifications = int(rng.integers(1, 6)) if rng.random() < calcification_rate else 0
    heterogeneity_mean = {"oligodendroglioma": 0.16, "astrocytoma": 0.07, "glioblastoma": 0.11}[tumour_type]
    anisotropy = np.exp(rng.normal(0.0, 0.15, 3))
    anisotropy /= np.prod(anisotropy) ** (1 / 3)
    aggressive = float(_sigmoid(z))
    return TumourPhenotype(
        tumour_type=tumour_type,
        aggressiveness=z,
        centre_mm=tuple(float(v) for v in sample_location(rng, tumour_type)),
        core_radius_mm=float(np.exp(rng.normal(np.log(15.5 if wildtype else 14.5), 0.27))),
        oedema_factor=float(1.06 + 0.95 * _sigmoid(1.4 * (z + 0.5 * e[2]) - 0.2)),
        necrosis_fraction=necrosis if necrosis > 0.15 else 0.0,
        enhancement=float(_sigmoid(1.7 * (z + 0.35 * e[0]) - 0.1)),
        ring_thickness_mm=float(rng.uniform(2.5, 5.0)),
        contrast_uptake=float(rng.uniform(0.85, 1.15)),
        mismatch=mismatch,
        calcifications=calcifications,
        heterogeneity=float(max(0.02, rng.normal(heterogeneity_mean, 0.04))),
        irregularity=float(np.clip(0.55 + 0.6 * aggressive + 0.2 * e[4], 0.2, 1.4)),
        axes=tuple(float(v) for v in anisotropy),
        rotation_deg=tuple(float(v) for v in rng.uniform(-180, 180, 3)),
        mass_effect=float(np.clip(0.12 + 0.35 * aggressive + 0.08 * e[5], 0.05, 0.6)),
    )


# ------------------------------------------------------------------------------------------------ location priors
@functools.lru_cache(maxsize=4)
def location_prior(tumour_type: str) -> tuple[np.ndarray, np.ndarray]:
    """Candidate tumour centres (MNI mm, ``(N, 3)``) and their cumulative probabilities for ``tumour_type``.

    Oligodendroglioma: frontal and cortical. Astrocytoma: frontal and temporal, cortex and subcortical white matter.
    Glioblastoma: anywhere supratentorial, more often deep white matter, corpus callosum and temporal lobe. Brainstem
    and cerebellum are rare in adults. Centres stay 10 mm inside the brain. Computed once on the 2 mm atlas whatever
    the output resolution, so a subject's tumour sits in the same place at every resolution.
    """
    atlas = load_atlas(2.0)
    voxel = atlas.resolution
    depth_mm = ndi.distance_transform_edt(atlas.brain > 0) * voxel
    x, y, z = atlas.world_mm
    gm, wm = atlas.tissues[0], atlas.tissues[1]
    s = _sigmoid
    frontal = s((y - 5.0) / 8.0) * s((z + 15.0) / 6.0)
    temporal = s((np.abs(x) - 28.0) / 5.0) * s((-z - 2.0) / 6.0) * s((y + 55.0) / 8.0) * s((22.0 - y) / 8.0)
    cortical = s((gm - 0.3) / 0.1) * s((14.0 - depth_mm) / 3.0)
    deep_white = s((wm - 0.5) / 0.1) * s((depth_mm - 18.0) / 4.0)
    callosal = s((wm - 0.6) / 0.1) * s((15.0 - np.abs(x)) / 3.0) * s((z - 4.0) / 3.0) * s((30.0 - z) / 3.0) \
        * s((y + 38.0) / 5.0) * s((32.0 - y) / 5.0)
    brainstem = s((-10.0 - z) / 3.0) * s((22.0 - np.abs(x)) / 4.0)
    cerebellum = s((-40.0 - y) / 4.0) * s((-6.0 - z) / 4.0)
    infratentorial = np.clip(brainstem + cerebellum, 0.0, 1.0)
    weights = {
        "oligodendroglioma": (0.2 + 2.6 * frontal + 0.5 * temporal) * (0.02 + cortical),
        "astrocytoma": (0.25 + 1.7 * frontal + 1.9 * temporal) * (0.15 + 0.6 * cortical + 0.6 * (wm > 0.4)),
        "glioblastoma": 1.0 + 0.6 * temporal + 1.6 * deep_white + 1.6 * callosal,
    }[tumour_type]
    weights = weights * (1.0 - 0.97 * infratentorial) * (depth_mm >= 10.0)
    candidates = np.flatnonzero(weights > 0)
    probabilities = weights.ravel()[candidates].astype(np.float64)
    positions = atlas.world_mm.reshape(3, -1)[:, candidates].T.astype(np.float64)
    return positions, np.cumsum(probabilities / probabilities.sum())


def sample_location(rng: np.random.Generator, tumour_type: str) -> np.ndarray:
    positions, cumulative = location_prior(tumour_type)
    index = min(int(np.searchsorted(cumulative, rng.random(), side="right")), len(cumulative) - 1)
    return positions[index] + rng.uniform(-1.0, 1.0, 3)  # anywhere inside the 2 mm candidate voxel


# ----------------------------------------------------------------------------------------------------- geometry
@dataclass
class TumourFractions:
    """A tumour inside a sub-box of the subject's anatomy box: its extent (for the labels) and its signal fractions."""

    box: tuple[slice, slice, slice]
    """Slices into the anatomy box."""
    whole: np.ndarray
    """float32 geometric whole-tumour fraction (the FLAIR abnormality a rater would outline)."""
    core: np.ndarray
    """float32 geometric tumour-core fraction (solid, necrotic and enhancing tumour)."""
    fractions: np.ndarray
    """float32 ``(5, *box shape)`` signal fractions in :data:`COMPONENTS` order. Oedema is infiltrated tissue, so
    its fraction stays below 1 and the underlying anatomy still shows through it."""
    texture: np.ndarray
    """float32 zero-mean texture (unit spread) for the tumour's heterogeneity."""


def smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma_vox: float) -> np.ndarray:
    """Gaussian random field of unit spread and correlation length ``sigma_vox``."""
    field = ndi.gaussian_filter(rng.standard_normal(shape, dtype=np.float32), max(sigma_vox, 0.5), mode="wrap",
                                truncate=2.5)
    return field / max(float(field.std()), 1e-6)


def render_tumour(rng: np.random.Generator, phenotype: TumourPhenotype, centre_vox: np.ndarray,
                  anatomy: SubjectAnatomy, voxel_mm: float) -> TumourFractions | None:
    """Compartment fractions around ``centre_vox`` (output grid); ``None`` when the tumour misses the brain."""
    whole_radius = phenotype.core_radius_mm * phenotype.oedema_factor
    # the shape noise moves a border by at most SHAPE_NOISE_LIMIT of its radius, so this box holds the whole tumour
    half = whole_radius * max(phenotype.axes) / (1.0 - SHAPE_NOISE_LIMIT) / voxel_mm + 2
    lo_anatomy = np.array([s.start for s in anatomy.box])
    local_centre = np.asarray(centre_vox) - lo_anatomy
    lo = np.maximum(np.floor(local_centre - half).astype(int), 0)
    hi = np.minimum(np.ceil(local_centre + half).astype(int) + 1, np.array(anatomy.brain.shape))
    if np.any(hi - lo < 3):
        return None
    box = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi, strict=True))
    shape = tuple(int(b - a) for a, b in zip(lo, hi, strict=True))
    offset = (np.indices(shape, dtype=np.float32) + (lo - local_centre).astype(np.float32)[:, None, None, None]) * voxel_mm
    rotation = rotation_matrix(np.deg2rad(phenotype.rotation_deg)).astype(np.float32)
    local = np.tensordot(rotation.T, offset, axes=1) / np.asarray(phenotype.axes, dtype=np.float32)[:, None, None, None]
    distance = np.sqrt(np.sum(local**2, axis=0))
    shape_sigma = 4.0 / voxel_mm
    irregular = phenotype.irregularity

    def region(radius_mm: float, noise_amplitude: float, edge_mm: float = 0.6 * voxel_mm) -> np.ndarray:
        """Soft inside-fraction of an irregular ellipsoid; ``edge_mm`` sets how sharp its border is."""
        bumps = np.clip(noise_amplitude * irregular * smooth_noise(rng, shape, shape_sigma), -SHAPE_NOISE_LIMIT,
                        SHAPE_NOISE_LIMIT)
        rho = distance / radius_mm + bumps
        return _sigmoid((1.0 - rho) * radius_mm / edge_mm).astype(np.float32)

    core_radius = phenotype.core_radius_mm
    whole = region(whole_radius, 0.22, edge_mm=max(1.5, 0.6 * voxel_mm))  # oedema fades out, tumour edges are sharper
    core = np.minimum(region(core_radius, 0.25), whole)
    necrosis = np.zeros(shape, np.float32)
    if phenotype.necrosis_fraction > 0:
        necrosis = np.minimum(region(core_radius * phenotype.necrosis_fraction, 0.3), core)
    inner_radius = max(core_radius - phenotype.ring_thickness_mm, 0.5 * voxel_mm)
    inner = np.minimum(region(inner_radius, 0.25), core)
    rim = core - inner
    # strong enhancers get a (nearly) complete rim; weak ones faint patchy nodules anywhere in the solid core
    ring_weight = float(_sigmoid((phenotype.enhancement - 0.45) / 0.1))
    site_of_enhancement = ring_weight * rim + (1.0 - ring_weight) * np.clip(core - necrosis, 0.0, 1.0)
    coverage = 4.0 * (phenotype.enhancement - 0.35)
    presence = _sigmoid((smooth_noise(rng, shape, 2.5 / voxel_mm) + coverage) / 0.3)
    enhancing = np.clip(site_of_enhancement * presence, 0.0, None) * min(1.0, 2.5 * phenotype.enhancement)
    necrosis = np.clip(necrosis - enhancing, 0.0, None)
    calcification = _calcifications(rng, phenotype.calcifications, core - necrosis, voxel_mm)
    solid = np.clip(core - necrosis - enhancing - calcification, 0.0, None)
    brain = anatomy.brain[box].astype(np.float32)
    tissues = anatomy.tissues[(slice(None), *box)]
    # oedema is water in infiltrated tissue: strongest in white matter, weaker in cortex, never complete
    white_share = tissues[1] / np.maximum(tissues.sum(axis=0), 1e-3)
    infiltration = np.clip((0.35 + 0.45 * white_share) * (1.0 + 0.2 * smooth_noise(rng, shape, shape_sigma)), 0.0, 0.9)
    oedema = np.clip(whole - core, 0.0, None) * infiltration
    fractions = np.stack([oedema, solid, necrosis, enhancing, calcification]) * brain[None]
    if float(core.sum()) < 1.0:
        return None
    texture = smooth_noise(rng, shape, max(1.5 / voxel_mm, 0.7))
    return TumourFractions(box=box, whole=whole * brain, core=core * brain, fractions=fractions.astype(np.float32),
                           texture=texture)


def _calcifications(rng: np.random.Generator, count: int, where: np.ndarray, voxel_mm: float) -> np.ndarray:
    """Small dense foci (1–2.5 mm) inside the solid tumour."""
    calcification = np.zeros(where.shape, np.float32)
    candidates = np.argwhere(where > 0.5)
    if count == 0 or len(candidates) == 0:
        return calcification
    grid = np.indices(where.shape, dtype=np.float32)
    for index in rng.choice(len(candidates), size=min(count, len(candidates)), replace=False):
        radius = rng.uniform(1.0, 2.5) / voxel_mm
        d2 = np.sum((grid - candidates[index].astype(np.float32)[:, None, None, None]) ** 2, axis=0)
        calcification += np.exp(-0.5 * d2 / radius**2) * 0.9
    return np.minimum(calcification, where.clip(0, 1) * 0.9)
