"""Small synthetic NIfTI datasets for tests, in any of the four naming conventions catphish recognises.

A subject is an ellipsoidal "brain" (integer intensities, like scanner output) with a spherical tumour in the
subject's right hemisphere and a BraTS-style segmentation (labels 1, 2, 4). Files are stored LPS-oriented
(affine diag(-1, -1, 1), like BraTS), so reorientation to RAS is exercised by every test that uses them.

Reuse from any test: ``from nifti_fixtures import write_dataset`` (pytest puts ``tests/`` on ``sys.path``).
"""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np

NAMINGS: tuple[str, ...] = ("brats2021", "brats2023", "ucsf-pdgm", "generic")
ROLES: tuple[str, ...] = ("t1", "t1c", "t2", "flair", "seg")
_SUFFIXES: dict[str, dict[str, str]] = {
    "brats2021": {"t1": "_t1", "t1c": "_t1ce", "t2": "_t2", "flair": "_flair", "seg": "_seg"},
    "brats2023": {"t1": "-t1n", "t1c": "-t1c", "t2": "-t2w", "flair": "-t2f", "seg": "-seg"},
    "ucsf-pdgm": {"t1": "_T1", "t1c": "_T1c", "t2": "_T2", "flair": "_FLAIR", "seg": "_tumor_segmentation"},
    "generic": {"t1": "t1", "t1c": "t1c", "t2": "t2", "flair": "flair", "seg": "mask"},
}
# (tumour_type, idh): a class cycle that gives every site both IDH classes and several tumour types
_CLASS_CYCLE: tuple[tuple[str, str], ...] = (("glioblastoma", "wildtype"), ("astrocytoma", "mutant"),
                                             ("oligodendroglioma", "mutant"), ("glioblastoma", "wildtype"))
# intensity of (white matter, tumour core, oedema) per sequence
_CONTRAST: dict[str, tuple[float, float, float]] = {"t1": (600, 350, 450), "t1c": (620, 1100, 480),
                                                    "t2": (300, 900, 750), "flair": (350, 500, 800)}
LPS_SPACING_1MM = np.diag([-1.0, -1.0, 1.0, 1.0])


def subject_paths(site_dir: Path, subject_id: str, naming: str, suffix: str = ".nii.gz") -> dict[str, Path]:
    """Where a subject's files go under its site folder, in the layout the collection ships."""
    names = _SUFFIXES[naming]
    if naming == "generic":
        return {role: site_dir / subject_id / f"{names[role]}{suffix}" for role in ROLES}
    folder = site_dir / (f"{subject_id}_nifti" if naming == "ucsf-pdgm" else subject_id)
    return {role: folder / f"{subject_id}{names[role]}{suffix}" for role in ROLES}


def synthetic_volumes(shape: tuple[int, int, int] = (16, 16, 16), seed: int = 0) -> dict[str, np.ndarray]:
    """RAS-ordered volumes: four int16 sequences and an int16 segmentation (tumour on the right, +x)."""
    rng = np.random.default_rng(seed)
    axes = [np.linspace(-1.0, 1.0, n, dtype=np.float32) for n in shape]
    x, y, z = np.meshgrid(*axes, indexing="ij")
    brain = (x / 0.85) ** 2 + (y / 0.9) ** 2 + (z / 0.8) ** 2 <= 1.0
    centre = np.array([0.35, 0.05 * rng.standard_normal(), 0.05 * rng.standard_normal()], dtype=np.float32)
    distance = np.sqrt((x - centre[0]) ** 2 + (y - centre[1]) ** 2 + (z - centre[2]) ** 2)
    radius = 0.3 + 0.05 * rng.random()
    core = (distance <= radius * 0.6) & brain
    oedema = (distance <= radius) & brain & ~core
    volumes: dict[str, np.ndarray] = {}
    for role, (tissue, tumour, swelling) in _CONTRAST.items():
        image = np.where(brain, tissue, 0.0).astype(np.float32)
        image[core], image[oedema] = tumour, swelling
        image += np.where(brain, rng.normal(0.0, 25.0, size=shape), 0.0).astype(np.float32)
        volumes[role] = np.clip(np.rint(image), 0, 32767).astype(np.int16) * brain
    seg = np.zeros(shape, dtype=np.int16)
    seg[oedema], seg[core] = 2, 4
    seg[core & (distance <= radius * 0.3)] = 1
    volumes["seg"] = seg
    return volumes


def to_lps(volume: np.ndarray) -> np.ndarray:
    """RAS voxel order → LPS storage order (flip x and y), matching :data:`LPS_SPACING_1MM`."""
    return np.ascontiguousarray(volume[::-1, ::-1, :])


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, LPS_SPACING_1MM if affine is None else affine), str(path))
    return path


def write_subject(site_dir: Path, subject_id: str, naming: str = "brats2021", shape: tuple[int, int, int] = (16, 16, 16),
                  seed: int = 0, suffix: str = ".nii.gz") -> dict[str, Path]:
    """Write one synthetic subject in ``naming`` under ``site_dir``; returns role → path."""
    paths = subject_paths(site_dir, subject_id, naming, suffix)
    volumes = synthetic_volumes(shape, seed)
    for role, path in paths.items():
        write_nifti(path, to_lps(volumes[role]))
    return paths


def write_labels(root: Path, rows: list[dict[str, str]], columns: tuple[str, ...] | None = None) -> Path:
    columns = columns or ("subject_id", "site", "idh", "tumor_type", "split", *sorted(
        {k for row in rows for k in row} - {"subject_id", "site", "idh", "tumor_type", "split"}))
    path = root / "labels.csv"
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def subject_id_for(naming: str, site: str, index: int) -> str:
    """Subject ids in each collection's style."""
    return {"brats2021": f"BraTS2021_{site}{index:03d}", "brats2023": f"BraTS-GLI-{site}{index:03d}-000",
            "ucsf-pdgm": f"UCSF-PDGM-{site}{index:03d}", "generic": f"{site}-sub{index:02d}"}[naming]


def write_dataset(root: Path, naming: str = "brats2021", sites: dict[str, int] | None = None,
                  shape: tuple[int, int, int] = (16, 16, 16), suffix: str = ".nii.gz", seed: int = 0,
                  extra_column: bool = True) -> list[dict[str, str]]:
    """A dataset folder (site folders + labels.csv) with ``sites`` = {site: number of subjects}; returns the rows."""
    sites = sites or {"siteA": 3, "siteB": 2}
    rows: list[dict[str, str]] = []
    for site_index, (site, count) in enumerate(sorted(sites.items())):
        for index in range(count):
            subject_id = subject_id_for(naming, site, index)
            write_subject(root / site, subject_id, naming, shape, seed=seed + 100 * site_index + index, suffix=suffix)
            tumor_type, idh = _CLASS_CYCLE[index % len(_CLASS_CYCLE)]
            row = {"subject_id": subject_id, "site": site, "idh": idh, "tumor_type": tumor_type,
                   "split": "test" if index % 3 == 2 else "train"}
            if extra_column:
                row["age"] = str(40 + index)
            rows.append(row)
    write_labels(root, rows)
    return rows
