"""The phantom consortium: eight sites with the cohort sizes and class mix of DESIGN §1, one subject at a time.

A subject is fully decided by ``(seed, site, index)``: its random generator is seeded from those three numbers, so
generation order and worker count never change a file, and a cohort can be regenerated or resumed exactly.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits

from catphish.data.phantom.anatomy import RadialPush, SubjectWarp, load_atlas, sample_anatomy, warp_anatomy
from catphish.data.phantom.contrast import synthesise_contrasts
from catphish.data.phantom.scanner import acquire, site_profile
from catphish.data.phantom.tumour import (
    IDH_OF_TYPE,
    TUMOUR_TYPES,
    TumourFractions,
    TumourPhenotype,
    render_tumour,
    sample_phenotype,
)
from catphish.errors import CatphishError

BRATS_LABELS = {"necrosis": 1, "oedema": 2, "enhancing": 4}
"""BraTS 2021 segmentation labels: necrotic/non-enhancing core, peritumoral oedema, enhancing tumour."""


@dataclass(frozen=True)
class SiteCohort:
    """One consortium member as in the paper's Table 1 (DESIGN §1); ``None`` type counts: IDH labels only."""

    site: str
    split: str
    """The site's role in the IDH task: ``train`` or ``test``."""
    subjects: int
    idh_mutant: int
    idh_wildtype: int
    oligodendroglioma: int | None
    astrocytoma: int | None
    glioblastoma: int | None

    @property
    def has_tumour_type(self) -> bool:
        return self.glioblastoma is not None


CONSORTIUM: tuple[SiteCohort, ...] = (
    SiteCohort("TCGA", "train", 198, 91, 107, 27, 63, 107),
    SiteCohort("UTSW", "train", 360, 104, 256, 40, 29, 256),
    SiteCohort("EGD", "train", 456, 150, 306, 71, 74, 306),
    SiteCohort("NYU", "test", 181, 48, 133, 21, 20, 128),
    SiteCohort("UWM", "test", 218, 18, 200, 2, 13, 198),
    SiteCohort("UCSF", "test", 495, 103, 392, 9, 84, 392),
    SiteCohort("UPenn", "test", 419, 11, 408, None, None, None),
    SiteCohort("UTSWp2", "test", 164, 50, 114, 16, 17, 112),
)
SITE_NAMES: tuple[str, ...] = tuple(c.site for c in CONSORTIUM)


@dataclass(frozen=True)
class SubjectPlan:
    """Who a phantom subject is before any voxel exists: labels, hidden tumour type and split."""

    subject_id: str
    site: str
    index: int
    idh: str
    tumor_type: str
    """The label written to ``labels.csv``; empty where the real site has no tumour-type label."""
    kind: str
    """The tumour type the phenotype is drawn from (always set, even when the label is withheld)."""
    split: str


def resolve_sites(names: list[str] | None) -> list[SiteCohort]:
    """Sites by name (case-insensitive; comma-separated values allowed), in consortium order; all when empty."""
    if not names:
        return list(CONSORTIUM)
    wanted = {part.strip().lower() for name in names for part in name.split(",") if part.strip()}
    known = {c.site.lower(): c for c in CONSORTIUM}
    unknown = sorted(wanted - set(known))
    if unknown:
        raise CatphishError(f"unknown phantom site '{unknown[0]}' (choose from {', '.join(SITE_NAMES)})")
    return [c for c in CONSORTIUM if c.site.lower() in wanted]


def site_counts(cohort: SiteCohort, scale: float, min_per_class: int = 3) -> dict[str, int]:
    """Subjects per (label) class at ``scale``: the paper's counts scaled, at least ``min_per_class`` per class.

    Keys: ``oligodendroglioma``, ``astrocytoma``, ``glioblastoma`` (labelled types), ``mutant_untyped`` and
    ``wildtype_untyped`` (IDH label only, as for part of every real site and all of UPenn).
    """
    if scale <= 0:
        raise CatphishError(f"--scale must be positive, got {scale}")

    def scaled(count: int) -> int:
        return max(round(count * scale), min_per_class)

    typed = {t: (scaled(getattr(cohort, t)) if cohort.has_tumour_type else 0) for t in TUMOUR_TYPES}
    mutant = max(scaled(cohort.idh_mutant), typed["oligodendroglioma"] + typed["astrocytoma"])
    wildtype = max(scaled(cohort.idh_wildtype), typed["glioblastoma"])
    return {**typed, "mutant_untyped": mutant - typed["oligodendroglioma"] - typed["astrocytoma"],
            "wildtype_untyped": wildtype - typed["glioblastoma"]}


def site_code(site: str) -> int:
    """A stable number for a site name (Python's ``hash`` changes between processes)."""
    return zlib.crc32(site.encode("utf-8"))


def subject_rng(seed: int, site: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed % 2**63, site_code(site), index]))


def plan_site(cohort: SiteCohort, scale: float, seed: int, min_per_class: int = 3) -> list[SubjectPlan]:
    """The site's subjects in a seeded random order (so ids do not reveal the class)."""
    counts = site_counts(cohort, scale, min_per_class)
    rng = np.random.default_rng(np.random.SeedSequence([seed % 2**63, site_code(cohort.site), 2**31]))
    # IDH-mutant subjects without a type label still need a tumour type: draw it from the site's own mix
    oligo, astro = (cohort.oligodendroglioma or 0), (cohort.astrocytoma or 0)
    p_oligo = oligo / (oligo + astro) if oligo + astro else 0.4
    entries: list[tuple[str, str]] = []
    for tumour_type in TUMOUR_TYPES:
        entries += [(tumour_type, tumour_type)] * counts[tumour_type]
    entries += [("", "oligodendroglioma" if rng.random() < p_oligo else "astrocytoma")
                for _ in range(counts["mutant_untyped"])]
    entries += [("", "glioblastoma")] * counts["wildtype_untyped"]
    order = rng.permutation(len(entries))
    return [SubjectPlan(subject_id=f"{cohort.site}-{i + 1:04d}", site=cohort.site, index=i + 1,
                        idh=IDH_OF_TYPE[entries[j][1]], tumor_type=entries[j][0], kind=entries[j][1], split=cohort.split)
            for i, j in enumerate(order)]


def plan_cohort(scale: float, seed: int, sites: list[str] | None = None, min_per_class: int = 3) -> list[SubjectPlan]:
    """Every subject of the requested sites, site by site."""
    return [plan for cohort in resolve_sites(sites) for plan in plan_site(cohort, scale, seed, min_per_class)]


# ---------------------------------------------------------------------------------------------------- generation
@dataclass
class PhantomSubject:
    """One generated subject on the atlas grid: four sequences, the BraTS segmentation and how it was made."""

    plan: SubjectPlan
    images: np.ndarray
    """int16 ``(4, X, Y, Z)``: T1, T1C, T2, FLAIR in the site's scanner units, 0 outside the brain."""
    segmentation: np.ndarray
    """uint8 ``(X, Y, Z)`` with BraTS labels 0, 1, 2, 4."""
    brain: np.ndarray
    affine: np.ndarray
    phenotype: TumourPhenotype
    details: dict[str, float] = field(default_factory=dict)


def generate_subject(plan: SubjectPlan, seed: int, resolution: float = 2.0) -> PhantomSubject:
    """Generate one subject: anatomy, tumour, contrasts, then the site's scanner.

    BLAS runs single-threaded here: the products are small, and threaded BLAS next to a process pool (or other jobs
    on a 2-core machine) makes them ten times slower.
    """
    with threadpool_limits(limits=1, user_api="blas"):
        return _generate_subject(plan, seed, resolution)


def _generate_subject(plan: SubjectPlan, seed: int, resolution: float) -> PhantomSubject:
    atlas = load_atlas(resolution)
    rng = subject_rng(seed, plan.site, plan.index)
    warp = SubjectWarp(atlas, sample_anatomy(rng))
    for _attempt in range(20):
        phenotype = sample_phenotype(rng, plan.kind)
        centre = warp.output_of_atlas(atlas.voxel_of_mm(np.asarray(phenotype.centre_mm)))
        push = RadialPush(centre, np.full(3, 1.3 * phenotype.core_radius_mm / atlas.resolution), phenotype.mass_effect)
        warp.add_push(push)
        anatomy = warp_anatomy(warp)
        tumour = render_tumour(rng, phenotype, centre, anatomy, atlas.resolution)
        if tumour is not None:
            break
        warp.pushes.remove(push)
    else:  # pragma: no cover - the location prior keeps centres well inside the brain
        raise RuntimeError(f"{plan.subject_id}: could not place a tumour inside the brain")
    profile = site_profile(plan.site)
    signal = synthesise_contrasts(rng, anatomy, tumour, phenotype, atlas, flair_csf=profile.flair_csf,
                                  contrast_uptake=profile.contrast_uptake)
    images = np.zeros((4, *atlas.shape), np.int16)
    images[(slice(None), *anatomy.box)] = acquire(signal, anatomy.brain, profile, rng, atlas.resolution)
    segmentation = np.zeros(atlas.shape, np.uint8)
    segmentation[anatomy.box] = brats_segmentation(tumour, anatomy.brain.shape) * anatomy.brain
    brain = np.zeros(atlas.shape, bool)
    brain[anatomy.box] = anatomy.brain
    voxel_ml = atlas.resolution**3 / 1000.0
    details = {f"{name}_ml": float(np.sum(segmentation == label) * voxel_ml) for name, label in BRATS_LABELS.items()}
    return PhantomSubject(plan=plan, images=images, segmentation=segmentation, brain=brain, affine=atlas.affine.copy(),
                          phenotype=phenotype, details=details)


def brats_segmentation(tumour: TumourFractions, shape: tuple[int, ...]) -> np.ndarray:
    """Hard BraTS labels as a rater would draw them: the whole tumour where its extent covers most of a voxel; inside
    the core, enhancing (4) where enhancement dominates, else necrotic/non-enhancing core (1); the rest oedema (2)."""
    labels = np.zeros(shape, np.uint8)
    _, solid, necrosis, enhancing, calcification = tumour.fractions
    core_label = np.where(enhancing >= solid + necrosis + calcification, BRATS_LABELS["enhancing"],
                          BRATS_LABELS["necrosis"]).astype(np.uint8)
    local = np.where(tumour.core >= 0.5, core_label, BRATS_LABELS["oedema"]).astype(np.uint8)
    labels[tumour.box] = np.where(tumour.whole >= 0.5, local, 0)
    return labels
