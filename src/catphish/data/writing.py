"""Writing cases in the data contract (DESIGN §3): NIfTI in BraTS 2021 naming and rows of ``labels.csv``.

Used for synthetic cohorts, so every catphish tool reads generated cases exactly like real data. Every file is
written atomically (through :func:`catphish.artifacts.atomic_output_path`); ``labels.csv`` last, so a case without
a label row is never mistaken for a finished one.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from catphish.artifacts import atomic_output_path, atomic_write_text
from catphish.config import SEQUENCES, TASK_CLASSES
from catphish.errors import CatphishError

LABELS_NAME = "labels.csv"
LABEL_COLUMNS: tuple[str, ...] = ("subject_id", "site", "idh", "tumor_type", "split")
BRATS2021_SUFFIXES: dict[str, str] = {"t1": "t1", "t1c": "t1ce", "t2": "t2", "flair": "flair", "seg": "seg"}
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def case_affine(spacing_mm: Sequence[float]) -> np.ndarray:
    """Voxel → RAS world transform of a prepared grid (axes already in RAS order)."""
    affine = np.eye(4)
    affine[0, 0], affine[1, 1], affine[2, 2] = (float(v) for v in spacing_mm)
    return affine


def write_case(folder: str | Path, subject_id: str, case: np.ndarray, spacing_mm: Sequence[float]) -> list[Path]:
    """One case ``(5, *grid)`` → ``<folder>/<id>_{t1,t1ce,t2,flair,seg}.nii.gz``; a 2D case becomes one axial slice."""
    folder = Path(folder)
    volumes = case if case.ndim == 4 else case[..., None]
    affine = case_affine(spacing_mm)
    written = []
    for channel, role in enumerate((*SEQUENCES, "seg")):
        data = (volumes[channel] > 0.5).astype(np.uint8) if role == "seg" else volumes[channel].astype(np.float32)
        image = nib.Nifti1Image(data, affine)
        image.header.set_xyzt_units("mm")
        path = folder / f"{subject_id}_{BRATS2021_SUFFIXES[role]}.nii.gz"
        with atomic_output_path(path) as tmp:
            nib.save(image, tmp)
        written.append(path)
    return written


def read_label_rows(path: str | Path) -> list[dict[str, str]]:
    path = Path(path)
    if not path.exists():
        return []
    with path.open(newline="", encoding="utf-8-sig") as handle:
        return [dict(row) for row in csv.DictReader(handle)]


def write_label_rows(path: str | Path, rows: list[dict[str, str]]) -> Path:
    """Write ``labels.csv`` (standard columns first, extra columns after) atomically."""
    columns = list(LABEL_COLUMNS)
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return atomic_write_text(path, buffer.getvalue())


def write_synthetic_cohort(cases: np.ndarray, out_dir: str | Path, *, site: str, task: str, class_name: str,
                           spacing_mm: Sequence[float], extra: dict[str, str] | None = None) -> list[str]:
    """Write ``cases`` of one class as subjects of dataset folder ``out_dir`` (site folder ``site``).

    Subject ids are ``<site>-<class>-NNNNN``; numbering continues after ids already listed in ``labels.csv``.
    The class goes into the task's column (``idh`` or ``tumor_type``); ``split`` is ``train``.
    """
    if task not in TASK_CLASSES or class_name not in TASK_CLASSES[task]:
        raise CatphishError(f"class '{class_name}' is not a class of task '{task}'")
    out_dir = Path(out_dir)
    labels_path = out_dir / LABELS_NAME
    rows = read_label_rows(labels_path)
    prefix = f"{_UNSAFE.sub('_', site)}-{class_name}-"
    taken = [int(r["subject_id"][len(prefix):]) for r in rows
             if r.get("subject_id", "").startswith(prefix) and r["subject_id"][len(prefix):].isdigit()]
    first = max(taken, default=0) + 1
    ids = [f"{prefix}{first + i:05d}" for i in range(len(cases))]
    for subject_id, case in zip(ids, cases, strict=True):
        write_case(out_dir / site / subject_id, subject_id, case, spacing_mm)
    for subject_id in ids:
        row = {"subject_id": subject_id, "site": site, "idh": "", "tumor_type": "", "split": "train", **(extra or {})}
        row[task] = class_name
        rows.append(row)
    write_label_rows(labels_path, rows)
    return ids
