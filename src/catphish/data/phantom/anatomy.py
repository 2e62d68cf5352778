"""Real brain anatomy for the phantom: the MNI152 (ICBM 2009a) tissue maps bundled with nilearn, warped per subject.

The atlas is read from files that ship inside the nilearn wheel (no network): the skull-stripped T1 template, the grey-
and white-matter probability maps and the brain mask. nilearn bundles no CSF map, so CSF is what the brain mask holds
beyond grey and white matter (sulci, cisterns, ventricles). Each subject samples the atlas through its own coordinate
warp: an affine (head pose, brain size), a smooth elastic field, a ventricle expansion or shrinkage (age-like atrophy),
and the radial push of its tumour (mass effect). The warp is evaluated only where the brain can land, which keeps a
2 mm subject to a few tens of milliseconds.
"""

from __future__ import annotations

import functools
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.filebasedimages import ImageFileError
from scipy import ndimage as ndi

from catphish.errors import CatphishError

ELASTIC_FREQUENCIES = 4
"""Cosine modes per axis of the elastic field: wavelengths from the whole head down to a quarter of it."""
VENTRICLE_CENTRE_MM = np.array([0.0, -15.0, 13.0])
VENTRICLE_SIGMA_MM = np.array([14.0, 24.0, 13.0])


@dataclass(frozen=True, eq=False)
class Atlas:
    """The MNI152 tissue maps on one voxel grid, plus the location priors derived from them."""

    resolution: float
    affine: np.ndarray
    tissues: np.ndarray
    """float32 ``(3, X, Y, Z)``: grey matter, white matter, CSF fractions (0 outside the brain)."""
    brain: np.ndarray
    """float32 brain mask (0/1); the subject's skull-strip mask is this map warped and thresholded."""
    world_mm: np.ndarray
    """float32 ``(3, X, Y, Z)``: MNI coordinates of every voxel, for anatomical location priors."""
    brain_extent: np.ndarray
    """int ``(2, 3)``: first and last atlas voxel of the brain along each axis."""

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(int(n) for n in self.brain.shape)  # type: ignore[return-value]

    def voxel_of_mm(self, mm: np.ndarray) -> np.ndarray:
        """Voxel coordinates (float) of an MNI position in millimetres."""
        return np.linalg.solve(self.affine[:3, :3], np.asarray(mm, dtype=float) - self.affine[:3, 3])


MNI152_FILES: dict[str, str] = {
    "t1": "mni_icbm152_t1_tal_nlin_sym_09a_converted.nii.gz",
    "gm": "mni_icbm152_gm_tal_nlin_sym_09a_converted.nii.gz",
    "wm": "mni_icbm152_wm_tal_nlin_sym_09a_converted.nii.gz",
}
"""The 1 mm ICBM 2009a files inside nilearn (``nilearn/datasets/data``) that ``load_mni152_*_template`` read."""
BRAIN_THRESHOLD = 0.2
"""nilearn's ``load_mni152_brain_mask`` rule: the T1 template above 0.2 of its maximum is brain."""
RESOLUTIONS_MM: tuple[int, ...] = (1, 2, 4, 8)


def mni152_path(name: str) -> Path:
    """Where nilearn keeps a bundled MNI152 file, found without importing nilearn (which takes seconds)."""
    spec = importlib.util.find_spec("nilearn")
    if spec is None or spec.origin is None:
        raise CatphishError("nilearn is not installed; the phantom needs the MNI152 templates it bundles")
    return Path(spec.origin).parent / "datasets" / "data" / MNI152_FILES[name]


@functools.lru_cache(maxsize=4)
def load_atlas(resolution: float = 2.0) -> Atlas:
    """The atlas at ``resolution`` mm (1, 2, 4 or 8): nilearn's 1 mm files, halved with a binomial anti-alias filter.

    The 2 mm grid is nilearn's own 2 mm MNI grid (99×117×95, same affine). Coarse grids (4, 8 mm) exist for fast
    tests and previews; the generator is the same at every resolution.
    """
    if resolution not in RESOLUTIONS_MM:
        raise CatphishError(f"phantom resolution must be one of {', '.join(map(str, RESOLUTIONS_MM))} mm, got {resolution}")
    try:
        images = {name: nib.load(str(mni152_path(name))) for name in MNI152_FILES}
        # stored as 0..255; nilearn's loaders rescale each to 0..1 by its maximum, and so do we
        t1, gm, wm = (np.asarray(images[name].dataobj, dtype=np.float32) / float(np.max(images[name].dataobj))
                      for name in ("t1", "gm", "wm"))
    except (OSError, ValueError, ImageFileError) as exc:  # shipped with nilearn: broken install
        raise CatphishError(f"cannot read the MNI152 templates bundled with nilearn ({exc})") from None
    affine = np.asarray(images["t1"].affine, dtype=np.float64)
    brain = (t1 > BRAIN_THRESHOLD).astype(np.float32)
    stack = np.stack([np.clip(gm, 0, 1) * brain, np.clip(wm, 0, 1) * brain, brain])
    for _ in range(int(np.log2(resolution))):
        stack, affine = _halve(stack, affine)
    brain = (stack[2] > 0.5).astype(np.float32)
    gm, wm = stack[0] * brain, stack[1] * brain
    csf = np.clip(1.0 - gm - wm, 0, 1) * brain  # nilearn bundles no CSF map: the rest of the brain is CSF
    ijk = np.indices(brain.shape, dtype=np.float32)
    world = np.tensordot(affine[:3, :3].astype(np.float32), ijk, axes=1) + affine[:3, 3, None, None, None].astype(np.float32)
    voxels = np.argwhere(brain > 0)
    return Atlas(resolution=float(resolution), affine=affine, tissues=np.stack([gm, wm, csf]).astype(np.float32),
                 brain=brain, world_mm=world.astype(np.float32),
                 brain_extent=np.stack([voxels.min(axis=0), voxels.max(axis=0)]))


def _halve(stack: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every second voxel of the last three axes after a [1, 2, 1]/4 filter (anti-aliasing); the origin stays."""
    for axis in (1, 2, 3):
        n = stack.shape[axis]
        padded = np.pad(stack, [(1, 1) if a == axis else (0, 0) for a in range(stack.ndim)])
        take = [slice(None)] * stack.ndim

        def part(start: int, padded: np.ndarray = padded, take: list = take, axis: int = axis, n: int = n) -> np.ndarray:
            take[axis] = slice(start, start + n, 2)
            return padded[tuple(take)]

        stack = 0.25 * part(0) + 0.5 * part(1) + 0.25 * part(2)
    new_affine = affine.copy()
    new_affine[:3, :3] = affine[:3, :3] * 2
    return stack.astype(np.float32), new_affine


# --------------------------------------------------------------------------------------------- subject anatomy
@dataclass(frozen=True)
class AnatomyParameters:
    """One subject's anatomical variation relative to the atlas."""

    rotation_deg: tuple[float, float, float]
    brain_scale: tuple[float, float, float]
    """> 1: a larger brain than the atlas (per axis; overall size and shape)."""
    translation_mm: tuple[float, float, float]
    elastic_mm: np.ndarray
    """``(3, K, K, K)`` cosine-mode amplitudes of the smooth elastic displacement."""
    ventricle_expansion: float
    """> 0 widens the ventricles (atrophy-like), < 0 narrows them."""
    tissue_jitter: tuple[float, float]
    """Relative change of grey-matter and white-matter volume against CSF (cortical thickness-like)."""


def sample_anatomy(rng: np.random.Generator) -> AnatomyParameters:
    """Draw a subject's anatomy: head pose, brain size, smooth shape change and ventricle size."""
    size = rng.normal(1.0, 0.045)
    modes = np.arange(1, ELASTIC_FREQUENCIES + 1, dtype=float)
    decay = 1.0 / (modes[:, None, None] + modes[None, :, None] + modes[None, None, :] - 2.0)
    return AnatomyParameters(
        rotation_deg=tuple(float(v) for v in rng.normal(0.0, [4.0, 3.0, 4.0])),
        brain_scale=tuple(float(size * v) for v in rng.normal(1.0, 0.025, 3)),
        translation_mm=tuple(float(v) for v in rng.normal(0.0, 2.5, 3)),
        elastic_mm=(rng.normal(0.0, 1.0, (3, ELASTIC_FREQUENCIES, ELASTIC_FREQUENCIES, ELASTIC_FREQUENCIES))
                    * decay * 2.2).astype(np.float32),
        ventricle_expansion=float(np.clip(rng.normal(0.08, 0.16), -0.25, 0.45)),
        tissue_jitter=(float(rng.normal(0.0, 0.04)), float(rng.normal(0.0, 0.04))),
    )


@dataclass(frozen=True)
class RadialPush:
    """A radial displacement around a centre (output voxels): tissue is pushed outwards (``strength`` > 0) or drawn in.

    Output voxel ``x`` samples the atlas at ``c + (x - c)(1 - strength·g(x))`` with a Gaussian ``g`` of width ``sigma``,
    so what lay at the centre spreads over a larger region: a tumour's mass effect, or ventricles that grew.
    """

    centre: np.ndarray
    sigma: np.ndarray
    strength: float


class SubjectWarp:
    """The map from a subject's output voxels to atlas voxels: pose and size, elastic field, radial pushes."""

    def __init__(self, atlas: Atlas, params: AnatomyParameters) -> None:
        self.atlas = atlas
        self.params = params
        voxel = atlas.resolution
        self.centre = np.array(atlas.shape, dtype=float) / 2.0
        rotation = rotation_matrix(np.deg2rad(params.rotation_deg))
        # output → atlas: undo the subject's pose and size
        self.linear = rotation.T @ np.diag(1.0 / np.asarray(params.brain_scale))
        self.translation = -np.asarray(params.translation_mm) / voxel
        self.pushes: list[RadialPush] = []
        ventricles = atlas.voxel_of_mm(VENTRICLE_CENTRE_MM)
        self.pushes.append(RadialPush(self.output_of_atlas(ventricles), VENTRICLE_SIGMA_MM / voxel,
                                      params.ventricle_expansion))

    def output_of_atlas(self, atlas_voxel: np.ndarray) -> np.ndarray:
        """Where an atlas voxel lands in the subject (pose and size only; the elastic field is small)."""
        return self.centre + np.linalg.solve(self.linear, np.asarray(atlas_voxel) - self.centre - self.translation)

    def add_push(self, push: RadialPush) -> None:
        self.pushes.append(push)

    def output_box(self) -> tuple[slice, slice, slice]:
        """Output voxels the brain can reach: the atlas brain's bounding box mapped back, widened by the largest
        elastic and push displacements (all further work happens inside this box)."""
        lo, hi = self.atlas.brain_extent
        corners = np.array([[(lo, hi)[bit][axis] for axis, bit in enumerate(bits)] for bits in np.ndindex(2, 2, 2)])
        mapped = np.array([self.output_of_atlas(corner) for corner in corners])
        scale = float(np.max(self.params.brain_scale))
        elastic = _largest_elastic_displacement(self.params.elastic_mm / self.atlas.resolution, self.atlas.shape)
        push = max((abs(p.strength) * float(p.sigma.max()) * 0.61 for p in self.pushes), default=0.0)
        margin = (elastic + push) * scale + 2.0
        start = np.maximum(np.floor(mapped.min(axis=0) - margin).astype(int), 0)
        stop = np.minimum(np.ceil(mapped.max(axis=0) + margin).astype(int) + 1, self.atlas.shape)
        return tuple(slice(int(a), int(b)) for a, b in zip(start, stop, strict=True))  # type: ignore[return-value]

    def atlas_coordinates(self, box: tuple[slice, slice, slice] | None = None) -> np.ndarray:
        """float32 ``(3, *box shape)``: the atlas voxel each output voxel of ``box`` (default: the grid) samples."""
        box = box or tuple(slice(0, n) for n in self.atlas.shape)  # type: ignore[assignment]
        linear = self.linear.astype(np.float32)
        # the affine part is separable: a sum of one ramp per output axis
        ramps = [np.arange(s.start, s.stop, dtype=np.float32) - np.float32(c) for s, c in zip(box, self.centre, strict=True)]
        offset = self.centre + self.translation
        shape = tuple(len(r) for r in ramps)
        coords = np.empty((3, *shape), np.float32)
        for i in range(3):
            coords[i] = (linear[i, 0] * ramps[0])[:, None, None] + (linear[i, 1] * ramps[1])[None, :, None] \
                + (linear[i, 2] * ramps[2] + np.float32(offset[i]))[None, None, :]
        add_elastic_field(coords, self.params.elastic_mm / self.atlas.resolution, self.atlas.shape, box)
        for push in self.pushes:
            _add_push(coords, push, box, linear)
        return coords


def _add_push(coords: np.ndarray, push: RadialPush, box: tuple[slice, slice, slice], linear: np.ndarray) -> None:
    """Add a radial push's displacement (mapped to atlas axes) to ``coords`` where it matters (3 sigma)."""
    origin = np.array([s.start for s in box])
    lo = np.maximum(np.floor(push.centre - 3 * push.sigma).astype(int) - origin, 0)
    hi = np.minimum(np.ceil(push.centre + 3 * push.sigma).astype(int) + 1 - origin, coords.shape[1:])
    if np.any(hi <= lo):
        return
    offsets = [(np.arange(a, b, dtype=np.float32) + np.float32(o - c)) for a, b, o, c in zip(lo, hi, origin, push.centre,
                                                                                          strict=True)]
    profiles = [np.exp(-0.5 * (d / np.float32(w)) ** 2) for d, w in zip(offsets, push.sigma, strict=True)]
    weight = profiles[0][:, None, None] * profiles[1][None, :, None] * profiles[2][None, None, :]
    weight *= np.float32(-push.strength)
    region = coords[(slice(None), *(slice(a, b) for a, b in zip(lo, hi, strict=True)))]
    shape = [(-1, 1, 1), (1, -1, 1), (1, 1, -1)]
    for j in range(3):  # displacement along output axis j, seen in atlas axes through the linear map
        along = weight * offsets[j].reshape(shape[j])
        for i in range(3):
            region[i] += linear[i, j] * along


def add_elastic_field(coords: np.ndarray, amplitudes_vox: np.ndarray, shape: tuple[int, int, int],
                      box: tuple[slice, slice, slice]) -> None:
    """Add a smooth displacement from low-frequency cosine modes over ``shape`` to ``coords`` (covering ``box``).

    Each mode is a product of one cosine per axis, so the field is two small contractions and one matrix product.
    """
    k = amplitudes_vox.shape[1]
    bx, by, bz = (np.cos(np.pi * np.outer(np.arange(s.start, s.stop) + 0.5, np.arange(1, k + 1)) / n).astype(np.float32)
                  for s, n in zip(box, shape, strict=True))
    for c in range(3):
        partial = np.einsum("ijk,yj,zk->iyz", amplitudes_vox[c].astype(np.float32), by, bz)
        coords[c] += (bx @ partial.reshape(k, -1)).reshape(coords.shape[1:])


def _largest_elastic_displacement(amplitudes_vox: np.ndarray, shape: tuple[int, int, int]) -> float:
    """The elastic field's largest component on a 4-voxel lattice (+1 voxel for what lies between lattice points)."""
    k = amplitudes_vox.shape[1]
    bases = [np.cos(np.pi * np.outer(np.arange(0, n, 4) + 0.5, np.arange(1, k + 1)) / n) for n in shape]
    field = np.einsum("cijk,xi,yj,zk->cxyz", amplitudes_vox, *bases, optimize=True)
    return float(np.abs(field).max()) + 1.0


def rotation_matrix(angles: np.ndarray) -> np.ndarray:
    """Rotation about x, then y, then z (angles in radians)."""
    ax, ay, az = angles
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    rz = np.array([[np.cos(az), -np.sin(az), 0], [np.sin(az), np.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


@dataclass
class SubjectAnatomy:
    """A subject's warped tissue fractions inside a bounding box of the output grid."""

    box: tuple[slice, slice, slice]
    tissues: np.ndarray
    """float32 ``(3, *box shape)``: GM, WM, CSF fractions."""
    brain: np.ndarray
    """bool skull-strip mask in the box."""
    ventricle_weight: np.ndarray
    """float32 in the box: closeness to the ventricles' centre (where the choroid plexus lies)."""
    atlas_coords: np.ndarray
    """float32 ``(3, *box shape)``: atlas voxel sampled by each box voxel (for atlas-space priors)."""


def warp_anatomy(warp: SubjectWarp, margin: int = 2) -> SubjectAnatomy:
    """Sample the atlas through the subject's warp, only inside the bounding box of where the brain lands."""
    atlas = warp.atlas
    outer = warp.output_box()
    coords = warp.atlas_coordinates(outer)
    nearest = np.rint(coords).astype(np.int32)
    for axis, n in enumerate(atlas.shape):
        np.clip(nearest[axis], 0, n - 1, out=nearest[axis])
    # skull-strip mask: the atlas mask at the nearest atlas voxel (binary like BraTS masks, and cheap)
    inside = atlas.brain[nearest[0], nearest[1], nearest[2]] > 0
    if not inside.any():
        raise CatphishError("phantom anatomy: the warped brain left the grid (unexpected parameters)")
    inner = _bounding_box(inside, margin)
    local_coords = coords[(slice(None), *inner)]
    brain = inside[inner]
    box = tuple(slice(o.start + i.start, o.start + i.stop) for o, i in zip(outer, inner, strict=True))
    points = local_coords[:, brain]
    tissues = np.zeros((3, *brain.shape), dtype=np.float32)
    for index in range(2):  # grey and white matter; CSF is the rest of the brain, as in the atlas
        tissues[index][brain] = ndi.map_coordinates(atlas.tissues[index], points, order=1, mode="nearest",
                                                    output=np.float32)
    # thicker or thinner cortex and white matter; CSF fills what they leave, as in the atlas
    jitter_gm, jitter_wm = warp.params.tissue_jitter
    tissues[0] *= 1.0 + jitter_gm
    tissues[1] *= 1.0 + jitter_wm
    parenchyma = tissues[0] + tissues[1]
    tissues[:2] /= np.maximum(parenchyma, 1.0)[None]
    tissues[2] = np.clip(1.0 - tissues[0] - tissues[1], 0.0, 1.0)
    tissues *= brain[None]
    ventricles = warp.pushes[0]
    # a separable Gaussian: the product of one profile per axis
    profiles = [np.exp(-0.5 * ((np.arange(s.start, s.stop) - c) / w) ** 2).astype(np.float32)
                for s, c, w in zip(box, ventricles.centre, ventricles.sigma, strict=True)]
    ventricle_weight = profiles[0][:, None, None] * profiles[1][None, :, None] * profiles[2][None, None, :]
    return SubjectAnatomy(box=box, tissues=tissues, brain=brain, ventricle_weight=ventricle_weight,
                          atlas_coords=local_coords)


def _bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, slice, slice]:
    slices = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        hits = np.flatnonzero(mask.any(axis=other))
        slices.append(slice(max(int(hits[0]) - margin, 0), min(int(hits[-1]) + 1 + margin, mask.shape[axis])))
    return tuple(slices)  # type: ignore[return-value]
