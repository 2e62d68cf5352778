"""A subject's volumes in one voxel grid: read, validated, optionally resampled by world coordinates, reoriented.

This is the step between files on disk and preprocessing: every later stage may assume that the four sequences and
the whole-tumour mask are finite 3D arrays that share one voxel grid and one affine.
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from scipy import ndimage

from catphish.config import SEQUENCES
from catphish.data.loading import Subject, missing_role_problem, read_volume
from catphish.data.naming import ROLE_NAMES, SEGMENTATION
from catphish.data.validation import check_resample_to, check_subject_headers, check_voxels, reference_role
from catphish.errors import InputFileError

MASK = "mask"


@dataclass
class SubjectVolumes:
    """Voxel arrays keyed by name (``t1``, ``t1c``, ``t2``, ``flair`` as float32, ``mask`` as uint8 0/1) and the
    voxel-to-world affine they share."""

    arrays: dict[str, np.ndarray]
    affine: np.ndarray

    @property
    def shape(self) -> tuple[int, ...]:
        return next(iter(self.arrays.values())).shape

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along each array axis (column norms of the affine, so oblique grids are right too)."""
        return tuple(float(v) for v in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def axis_codes(self) -> tuple[str, ...]:
        return tuple(nib.aff2axcodes(self.affine))


def read_subject_volumes(subject: Subject, tolerance_mm: float = 1.0, resample_to: str | None = None,
                         require_segmentation: bool = True) -> SubjectVolumes:
    """Read and validate one subject's files into one voxel grid (the native grid, or ``resample_to``'s).

    Raises :class:`InputFileError` for the first problem: a missing file, an unreadable or 4D image, grids that
    differ beyond ``tolerance_mm`` (without ``resample_to``), NaN/Inf voxels, an all-zero sequence, an empty mask.
    """
    resample_to = check_resample_to(resample_to)
    needed = [*SEQUENCES, SEGMENTATION] if require_segmentation else list(SEQUENCES)
    for role in needed:
        if role not in subject.files:
            raise missing_role_problem(subject, role).as_error()
    geometries, problems = check_subject_headers(subject, tolerance_mm, resample_to)
    if problems:
        raise problems[0].as_error()
    roles = [*SEQUENCES, SEGMENTATION] if SEGMENTATION in subject.files else list(SEQUENCES)
    reference = reference_role(subject, resample_to) or SEQUENCES[0]
    ref_shape, ref_affine = geometries[reference].shape, geometries[reference].affine
    arrays: dict[str, np.ndarray] = {}
    for role in roles:
        path = subject.files[role]
        data, affine = read_volume(path)
        issue = check_voxels(role, path, data)
        if issue:
            raise InputFileError(path, issue)
        if role == SEGMENTATION:
            data = (data > 0).astype(np.float32)
        if data.shape != ref_shape or not np.allclose(affine, ref_affine, atol=1e-4):
            data = resample_into(data, affine, ref_shape, ref_affine)
            if role != SEGMENTATION and not data.any():
                raise InputFileError(path, f"lies outside the {ROLE_NAMES[reference]} field of view: nothing is left "
                                           "after resampling by world coordinates")
        if role == SEGMENTATION:
            mask = (data >= 0.5).astype(np.uint8)
            if not mask.any():
                raise InputFileError(path, f"tumour mask is empty after resampling into the {ROLE_NAMES[reference]} grid")
            arrays[MASK] = mask
        else:
            arrays[role] = data
    return SubjectVolumes(arrays=arrays, affine=ref_affine.copy())


def resample_into(data: np.ndarray, affine: np.ndarray, shape: tuple[int, ...], target_affine: np.ndarray,
                  order: int = 1) -> np.ndarray:
    """Resample ``data`` (voxel-to-world ``affine``) into the grid ``(shape, target_affine)`` by world coordinates.

    Target voxel ``v`` takes the value at source voxel ``inv(affine) @ target_affine @ v`` (linear interpolation,
    0 outside the source field of view) — what a scanner console does when it reformats one series onto another.
    """
    target_to_source = np.linalg.inv(affine) @ target_affine
    return ndimage.affine_transform(data.astype(np.float32, copy=False), target_to_source[:3, :3],
                                    offset=target_to_source[:3, 3], output_shape=tuple(shape), order=order,
                                    mode="constant", cval=0.0, prefilter=False)


def reorient_to_ras(volumes: SubjectVolumes, contiguous: bool = True) -> SubjectVolumes:
    """Flip/permute the voxel axes so that they run closest to Right, Anterior, Superior (nibabel's canonical).

    Oblique grids stay oblique (no interpolation); only the axis order and direction change. With ``contiguous``
    false the arrays may be strided views (cheaper when they are processed further anyway).
    """
    orientation = nib.orientations.io_orientation(volumes.affine)
    if np.array_equal(orientation, nib.orientations.axcodes2ornt("RAS")):
        return volumes
    shape = volumes.shape
    arrange = np.ascontiguousarray if contiguous else np.asarray
    arrays = {name: arrange(nib.orientations.apply_orientation(array, orientation))
              for name, array in volumes.arrays.items()}
    affine = volumes.affine @ nib.orientations.inv_ornt_aff(orientation, shape)
    return SubjectVolumes(arrays=arrays, affine=affine)


def load_subject_volumes(subject: Subject, *, tolerance_mm: float = 1.0, resample_to: str | None = None,
                         canonical: bool = True, require_segmentation: bool = True) -> dict[str, np.ndarray]:
    """One subject's validated volumes in one grid: ``t1``, ``t1c``, ``t2``, ``flair`` (float32) and ``mask``
    (uint8 whole-tumour mask = segmentation > 0), reoriented to RAS unless ``canonical`` is false."""
    volumes = read_subject_volumes(subject, tolerance_mm, resample_to, require_segmentation)
    return (reorient_to_ras(volumes) if canonical else volumes).arrays
