"""Validating a dataset before anything is trained on it: headers, voxel grids, voxel values, labels.

Two depths: :func:`check_subject_headers` reads only NIfTI headers (fast; missing or unreadable files, 4D images,
voxel grids that differ between a subject's sequences), :func:`check_voxels` looks at the voxels (NaN/Inf, all-zero
sequences, empty tumour masks). :func:`check_dataset` runs both over a whole dataset for ``catphish data check``.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from catphish.config import SEQUENCES, TASK_CLASSES
from catphish.data.loading import (
    Dataset,
    Problem,
    Subject,
    discover_dataset,
    format_shape,
    read_nifti_header,
    read_volume,
    spatial_shape,
)
from catphish.data.naming import ROLE_NAMES, ROLES, SEGMENTATION
from catphish.errors import ConfigError, InputFileError


@dataclass(frozen=True)
class ImageGeometry:
    """Where a volume's voxels lie: its 3D shape, voxel-to-world affine and voxel sizes (mm)."""

    shape: tuple[int, int, int]
    affine: np.ndarray
    spacing: tuple[float, float, float]


def check_resample_to(resample_to: str | None) -> str | None:
    """Validate ``data.resample_to`` / ``--resample-to``: one of the four sequences, or none."""
    if resample_to is None or resample_to == "":
        return None
    key = resample_to.strip().lower()
    if key not in SEQUENCES:
        raise ConfigError(f"--resample-to / data.resample_to must be one of {', '.join(SEQUENCES)}, got '{resample_to}'")
    return key


def read_geometry(path: Path) -> ImageGeometry:
    """The geometry of a NIfTI file from its header alone; unreadable, non-NIfTI and 4D files are errors."""
    image = read_nifti_header(path)
    shape = spatial_shape(image, path)
    affine = np.asarray(image.affine, dtype=np.float64)
    spacing = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
    return ImageGeometry(shape=shape, affine=affine, spacing=spacing)  # type: ignore[arg-type]


def grid_difference_mm(reference: ImageGeometry, other: ImageGeometry) -> float:
    """Largest distance (mm) between where the two affines put the corners of the reference grid."""
    corners = np.array(list(itertools.product(*[(0, n - 1) for n in reference.shape])), dtype=np.float64)
    homogeneous = np.c_[corners, np.ones(len(corners))]
    moved = (homogeneous @ reference.affine.T)[:, :3] - (homogeneous @ other.affine.T)[:, :3]
    return float(np.linalg.norm(moved, axis=1).max())


def reference_role(subject: Subject, resample_to: str | None = None) -> str | None:
    """The sequence every other file is compared with (or resampled into): ``resample_to``, else T1, else any."""
    if resample_to is not None:
        return resample_to if resample_to in subject.files else None
    return next((role for role in ROLES if role in subject.files), None)


def check_subject_headers(subject: Subject, tolerance_mm: float = 1.0, resample_to: str | None = None,
                          ) -> tuple[dict[str, ImageGeometry], list[Problem]]:
    """Read every header of a subject; report unreadable files and grids that differ beyond ``tolerance_mm``.

    With ``resample_to`` the grids may differ (they are resampled by world coordinates later).
    """
    geometries: dict[str, ImageGeometry] = {}
    problems: list[Problem] = []
    for role, path in subject.files.items():
        try:
            geometries[role] = read_geometry(path)
        except InputFileError as exc:
            problems.append(_problem(subject, exc))
    reference = reference_role(subject, resample_to)
    if reference is None or reference not in geometries or resample_to is not None:
        return geometries, problems
    base = geometries[reference]
    for role in ROLES:
        if role == reference or role not in geometries:
            continue
        mismatch = grid_mismatch(base, geometries[role], tolerance_mm, reference)
        if mismatch:
            problems.append(Problem(str(subject.files[role]), mismatch, subject.subject_id, subject.site))
    return geometries, problems


def grid_mismatch(reference: ImageGeometry, other: ImageGeometry, tolerance_mm: float, reference_role: str) -> str | None:
    """Why ``other`` does not share the reference voxel grid, or ``None`` when it does."""
    name = ROLE_NAMES[reference_role]
    hint = f"; the sequences are not in one voxel grid (prepare with --resample-to {reference_role} to resample by " \
           "world coordinates)"
    if other.shape != reference.shape:
        return f"shape {format_shape(other.shape)} differs from {name} {format_shape(reference.shape)}{hint}"
    distance = grid_difference_mm(reference, other)
    if distance > tolerance_mm:
        return (f"voxel-to-world affine differs from {name} by up to {distance:.2f} mm (tolerance "
                f"{tolerance_mm:g} mm, data.affine_tolerance_mm){hint}")
    return None


def check_voxels(role: str, path: Path, data: np.ndarray) -> str | None:
    """What is wrong with a volume's values (NaN/Inf, all zero, empty tumour mask), or ``None``."""
    if not np.isfinite(np.sum(data, dtype=np.float64)):  # one pass without a temporary; exact count only when bad
        bad = int(data.size - np.count_nonzero(np.isfinite(data)))
        if bad:
            return f"contains {bad} NaN/Inf voxel{'s' if bad > 1 else ''}"
    if role == SEGMENTATION:
        if not (data > 0).any():
            return "tumour segmentation is empty (no voxel > 0), so the whole-tumour mask would be empty"
        return None
    if not data.any():
        return f"{ROLE_NAMES[role]} is all zero (an empty image)"
    brain = data[data != 0]
    if brain.size > 1 and float(brain.max()) == float(brain.min()):
        return f"{ROLE_NAMES[role]} has no contrast (every non-zero voxel is {float(brain[0]):g})"
    return None


def _problem(subject: Subject, exc: InputFileError) -> Problem:
    return Problem(exc.path, exc.problem, subject.subject_id, subject.site)


# -------------------------------------------------------------------------------------------------- whole dataset
@dataclass
class SubjectInspection:
    """What ``check`` learned about one subject: its problems and its reference geometry."""

    subject_id: str
    problems: list[Problem]
    shape: tuple[int, int, int] | None = None
    spacing: tuple[float, float, float] | None = None


def inspect_subject(subject: Subject, tolerance_mm: float = 1.0, resample_to: str | None = None,
                    read_voxels: bool = True) -> SubjectInspection:
    """Headers, grids and (optionally) voxel values of one subject; never raises for bad input."""
    geometries, problems = check_subject_headers(subject, tolerance_mm, resample_to)
    if read_voxels:
        for role, path in subject.files.items():
            if role not in geometries:
                continue  # its header problem is already reported
            try:
                data, _ = read_volume(path)
            except InputFileError as exc:
                problems.append(_problem(subject, exc))
                continue
            issue = check_voxels(role, path, data)
            if issue:
                problems.append(Problem(str(path), issue, subject.subject_id, subject.site))
    reference = reference_role(subject, resample_to)
    geometry = geometries.get(reference) if reference else None
    return SubjectInspection(subject.subject_id, problems, geometry.shape if geometry else None,
                             geometry.spacing if geometry else None)


@dataclass
class SiteSummary:
    """The per-site row of ``catphish data check``."""

    subjects: int = 0
    idh: dict[str, int] = field(default_factory=dict)
    tumor_type: dict[str, int] = field(default_factory=dict)
    shapes: list[tuple[int, int, int]] = field(default_factory=list)
    spacings: list[tuple[float, float, float]] = field(default_factory=list)
    problems: int = 0
    warnings: list[Problem] = field(default_factory=list)

    def shape_range(self) -> dict[str, list[int]] | None:
        if not self.shapes:
            return None
        array = np.array(self.shapes)
        return {"min": array.min(axis=0).tolist(), "max": array.max(axis=0).tolist()}

    def spacing_range(self) -> dict[str, list[float]] | None:
        if not self.spacings:
            return None
        array = np.round(np.array(self.spacings), 3)
        return {"min": array.min(axis=0).tolist(), "max": array.max(axis=0).tolist()}

    def as_json(self) -> dict[str, Any]:
        return {"subjects": self.subjects, "idh": self.idh, "tumor_type": self.tumor_type,
                "shape": self.shape_range(), "spacing_mm": self.spacing_range(), "problems": self.problems,
                "warnings": [w.as_record() for w in self.warnings]}


@dataclass
class CheckReport:
    """Result of :func:`check_dataset`: per-site summaries, problems (errors) and warnings."""

    root: Path
    sites: dict[str, SiteSummary]
    problems: list[Problem]
    warnings: list[Problem]

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_json(self) -> dict[str, Any]:
        """``{"sites": {site: {"subjects", "idh", "tumor_type", …}}, "problems": [{"file", "problem"}]}``."""
        return {"sites": {name: summary.as_json() for name, summary in self.sites.items()},
                "problems": [p.as_record() for p in self.problems]}


def check_dataset(data_dir: str | Path, naming: str = "auto", *, tolerance_mm: float = 1.0,
                  resample_to: str | None = None, workers: int = 1,
                  on_subject: Callable[[str], None] | None = None) -> CheckReport:
    """Validate a whole dataset (labels, files, headers, voxel values) and summarise it per site.

    ``workers`` > 1 reads subjects in parallel processes; ``on_subject`` is called after each (progress bars).
    """
    resample_to = check_resample_to(resample_to)
    dataset = discover_dataset(data_dir, naming)
    subjects = dataset.checked_subjects
    inspections = _inspect_all(subjects, tolerance_mm, resample_to, workers, on_subject)
    problems = list(dataset.problems)
    for inspection in inspections.values():
        problems.extend(inspection.problems)
    return CheckReport(root=dataset.root, sites=_site_summaries(dataset, inspections, problems), problems=problems,
                       warnings=list(dataset.warnings))


def _inspect_all(subjects: list[Subject], tolerance_mm: float, resample_to: str | None, workers: int,
                 on_subject: Callable[[str], None] | None) -> dict[tuple[str, str], SubjectInspection]:
    results: dict[tuple[str, str], SubjectInspection] = {}
    if workers <= 1 or len(subjects) <= 1:
        for subject in subjects:
            results[(subject.site, subject.subject_id)] = inspect_subject(subject, tolerance_mm, resample_to)
            if on_subject:
                on_subject(subject.subject_id)
        return results
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {pool.submit(inspect_subject, s, tolerance_mm, resample_to): s for s in subjects}
        for future in as_completed(futures):
            subject = futures[future]
            results[(subject.site, subject.subject_id)] = future.result()
            if on_subject:
                on_subject(subject.subject_id)
    return results


def _site_summaries(dataset: Dataset, inspections: dict[tuple[str, str], SubjectInspection],
                    problems: list[Problem]) -> dict[str, SiteSummary]:
    sites: dict[str, SiteSummary] = {}

    def site(name: str) -> SiteSummary:
        return sites.setdefault(name, SiteSummary())

    for subject in dataset.checked_subjects:
        summary = site(subject.site)
        summary.subjects += 1
        inspection = inspections.get((subject.site, subject.subject_id))
        if inspection and inspection.shape:
            summary.shapes.append(inspection.shape)
            summary.spacings.append(inspection.spacing)  # type: ignore[arg-type]
    for name, summary in sites.items():
        members = [s for s in dataset.checked_subjects if s.site == name]
        summary.idh = _class_counts([s.idh for s in members], TASK_CLASSES["idh"])
        summary.tumor_type = _class_counts([s.tumor_type for s in members], TASK_CLASSES["tumor_type"])
    for problem in problems:
        if problem.site:
            site(problem.site).problems += 1
    for warning in dataset.warnings:
        if warning.site:
            site(warning.site).warnings.append(warning)
    return dict(sorted(sites.items()))


def _class_counts(values: list[str], classes: tuple[str, ...]) -> dict[str, int]:
    counts = Counter(values)
    result = {name: counts.get(name, 0) for name in classes}
    unknown = sum(n for value, n in counts.items() if value not in classes)
    if unknown:
        result["unknown"] = unknown
    return result
