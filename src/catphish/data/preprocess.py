"""Preprocessing raw subjects into the prepared cache every model reads (``catphish data prepare``).

Per subject: reorient to RAS → crop to the brain's bounding box → z-score each sequence over its non-zero voxels →
resample to ``data.spacing_mm`` → 3D presets: pad/crop to ``data.grid``; 2D presets: the largest-tumour-area axial
slice and its neighbours, padded/cropped in-plane to ``data.grid``. Channel 5 is the binary whole-tumour mask.

The cache holds one file per subject, keyed by the sha256 of its source files, its labels and the preprocessing
settings (stored in the file's provenance), so an unchanged subject is never processed twice. New files are staged
in a hidden folder and moved into place only when the whole run succeeds: a failed run leaves the cache as it was.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import shutil
import time
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage

from catphish import __version__
from catphish.config import SEQUENCES, DataConfig, StudyConfig
from catphish.data.loading import Dataset, Problem, Subject, discover_dataset
from catphish.data.validation import check_resample_to, check_subject_headers
from catphish.data.volumes import MASK, SubjectVolumes, read_subject_volumes, reorient_to_ras
from catphish.errors import CatphishError, InputFileError

PREPROCESSING_VERSION = 2
"""Bump when the pipeline's output changes, so every cached subject is recomputed (2: a volume thinner than the 2D
slice group gives each of its slices once, not repeated copies)."""
PREPARED_SUFFIX = ".safetensors"


# ------------------------------------------------------------------------------------------ array transforms
def bounding_box(mask: np.ndarray) -> tuple[slice, ...]:
    """The smallest box holding every true voxel (the whole array when none is)."""
    if not mask.any():
        return tuple(slice(0, n) for n in mask.shape)
    box = []
    for axis in range(mask.ndim):
        present = np.flatnonzero(mask.any(axis=tuple(a for a in range(mask.ndim) if a != axis)))
        box.append(slice(int(present[0]), int(present[-1]) + 1))
    return tuple(box)


def zscore_nonzero(image: np.ndarray) -> np.ndarray:
    """(x − mean) / std over the non-zero voxels (the brain); zero stays zero, so background is 0 afterwards."""
    inside = image != 0
    values = image[inside]
    out = np.zeros(image.shape, dtype=np.float32)
    if values.size:
        mean = float(values.mean(dtype=np.float64))
        std = float(np.sqrt(np.mean(np.square(values - mean, dtype=np.float64))))
        out[inside] = (values - np.float32(mean)) / np.float32(std if std > 0 else 1.0)
    return out


def resample_to_spacing(image: np.ndarray, spacing: tuple[float, ...], target: tuple[float, ...]) -> np.ndarray:
    """Linear resampling from voxel size ``spacing`` to ``target`` (mm), Gaussian-smoothed first when shrinking.

    The smoothing (σ = (factor − 1) / 2 output voxels, as scikit-image's ``resize``) keeps downsampled intensities
    an average of the region a voxel covers instead of a noisy point sample.
    """
    factors = np.asarray(spacing, dtype=np.float64) / np.asarray(target, dtype=np.float64)
    out_shape = [max(1, round(n * f)) for n, f in zip(image.shape, factors, strict=True)]
    if list(image.shape) == out_shape:
        return image.astype(np.float32, copy=False)
    sigma = np.maximum(0.0, (1.0 / factors - 1.0) / 2.0)
    source = ndimage.gaussian_filter(image.astype(np.float32, copy=False), sigma) if sigma.any() else image
    zoom = [o / n for o, n in zip(out_shape, image.shape, strict=True)]
    return ndimage.zoom(source.astype(np.float32, copy=False), zoom, order=1, grid_mode=True, mode="grid-constant",
                        cval=0.0, prefilter=False)


def window_start(length: int, size: int, focus: tuple[int, int] | None = None) -> int:
    """Start of a ``size``-voxel window on an axis of ``length`` voxels: centred, shifted to keep ``focus``.

    Negative when the axis is shorter than the window (it is padded). When the axis is longer, the window moves as
    little as needed to hold the tumour extent ``focus`` (or centres on it when the tumour is larger).
    """
    start = (length - size) // 2
    if length <= size or focus is None:
        return start
    low, high = focus
    start = min(max(start, high - size), low) if high - low <= size else (low + high) // 2 - size // 2
    return min(max(start, 0), length - size)


def fit_to_grid(array: np.ndarray, grid: tuple[int, ...], focus: tuple[slice, ...] | None = None) -> np.ndarray:
    """Crop/zero-pad the trailing ``len(grid)`` axes of ``array`` to ``grid`` (see :func:`window_start`)."""
    lead = array.ndim - len(grid)
    crops: list[slice] = [slice(None)] * lead
    pads: list[tuple[int, int]] = [(0, 0)] * lead
    for axis, size in enumerate(grid):
        length = array.shape[lead + axis]
        start = window_start(length, size, (focus[axis].start, focus[axis].stop) if focus else None)
        if start >= 0:
            crops.append(slice(start, start + size))
            pads.append((0, 0))
        else:
            crops.append(slice(None))
            pads.append((-start, size - length + start))
    return np.pad(array[tuple(crops)], pads)


def tumour_slice_indices(mask: np.ndarray, count: int, stride: int) -> list[int]:
    """Axial (last-axis) indices: the slice with the largest tumour area and ``count // 2`` neighbours each side,
    ``stride`` voxels apart; the group is shifted (not clipped) to stay inside the volume when it can. A volume too
    thin for the group (a generated 2D case is one slice) gives each slice it has once, not repeated copies."""
    depth = mask.shape[-1]
    centre = int(np.argmax(mask.sum(axis=tuple(range(mask.ndim - 1)))))
    reach = (count // 2) * stride
    if depth > 2 * reach:
        centre = min(max(centre, reach), depth - 1 - reach)
    clipped = [min(max(centre + k * stride, 0), depth - 1) for k in range(-(count // 2), count // 2 + 1)]
    return list(dict.fromkeys(clipped))


def preprocess_volumes(volumes: SubjectVolumes, data: DataConfig) -> np.ndarray:
    """One subject's volumes (one grid, any orientation) → float32 ``(S, 5, *data.grid)``."""
    volumes = reorient_to_ras(volumes, contiguous=False)
    spacing = volumes.spacing
    brain = np.zeros(volumes.shape, dtype=bool)
    for name in SEQUENCES:
        brain |= volumes.arrays[name] != 0
    box = bounding_box(brain)
    target = tuple(float(v) for v in data.spacing_mm)
    sequences = [resample_to_spacing(zscore_nonzero(volumes.arrays[name][box]), spacing, target) for name in SEQUENCES]
    inside = resample_to_spacing(brain[box].astype(np.float32), spacing, target) >= 0.5
    mask_float = resample_to_spacing(volumes.arrays[MASK][box].astype(np.float32), spacing, target)
    mask = mask_float >= 0.5
    if not mask.any():  # a tumour smaller than one output voxel: keep the voxels it touches
        mask = mask_float > 0
    stack = np.stack([*(s * inside for s in sequences), mask.astype(np.float32)]).astype(np.float32)
    tumour = bounding_box(mask)
    grid = tuple(int(n) for n in data.grid)
    if data.spatial_dims == 3:
        return fit_to_grid(stack, grid, tumour)[None]
    indices = tumour_slice_indices(mask, data.slices_per_subject, data.slice_stride)
    slices = np.moveaxis(stack[..., indices], -1, 0)  # (S, 5, X, Y): axial slices in RAS voxel order
    return np.ascontiguousarray(fit_to_grid(slices, grid, tumour[:2]))


# ------------------------------------------------------------------------------------------------- one subject
@dataclass(frozen=True)
class PreparationSettings:
    """Everything that decides a prepared file's content (part of its cache key), picklable for workers."""

    spatial_dims: int
    grid: tuple[int, ...]
    spacing_mm: tuple[float, ...]
    slices_per_subject: int
    slice_stride: int
    resample_to: str | None
    affine_tolerance_mm: float

    @classmethod
    def from_config(cls, data: DataConfig) -> PreparationSettings:
        return cls(spatial_dims=data.spatial_dims, grid=tuple(data.grid), spacing_mm=tuple(data.spacing_mm),
                   slices_per_subject=data.slices_per_subject, slice_stride=data.slice_stride,
                   resample_to=check_resample_to(data.resample_to), affine_tolerance_mm=data.affine_tolerance_mm)

    def data_config(self) -> DataConfig:
        return DataConfig(spatial_dims=self.spatial_dims, grid=self.grid, spacing_mm=self.spacing_mm,
                          slices_per_subject=self.slices_per_subject, slice_stride=self.slice_stride,
                          resample_to=self.resample_to, affine_tolerance_mm=self.affine_tolerance_mm)

    def key_fields(self) -> dict[str, object]:
        fields = dataclasses.asdict(self)
        fields.pop("affine_tolerance_mm")  # decides whether a subject is accepted, not what it becomes
        return {"preprocessing_version": PREPROCESSING_VERSION, **fields}


@dataclass
class SubjectOutcome:
    """What a worker sends back: the prepared image and source fingerprints, or the problem that stopped it."""

    subject: Subject
    image: np.ndarray | None = None
    sources: dict[str, dict[str, object]] | None = None
    problem: Problem | None = None
    seconds: float = 0.0


def source_fingerprints(subject: Subject, known: dict[str, dict[str, object]] | None = None
                        ) -> dict[str, dict[str, object]]:
    """Per role: path, size, mtime and sha256 of the file; the hash is reused from ``known`` when the path, size and
    mtime are unchanged (so a second run does not re-read every file)."""
    fingerprints: dict[str, dict[str, object]] = {}
    for role, path in sorted(subject.files.items()):
        stat = path.stat()
        entry: dict[str, object] = {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
        previous = (known or {}).get(role)
        same = previous is not None and all(previous.get(k) == entry[k] for k in ("path", "size", "mtime_ns"))
        entry["sha256"] = previous["sha256"] if same else _sha256(path)  # type: ignore[index]
        fingerprints[role] = entry
    return fingerprints


def cache_key(settings: PreparationSettings, subject: Subject, sources: dict[str, dict[str, object]]) -> str:
    """sha256 over the source contents, the subject's labels and the preprocessing settings."""
    labels = subject.labels
    content = {
        "settings": settings.key_fields(),
        "sources": {role: entry["sha256"] for role, entry in sorted(sources.items())},
        "labels": {"subject_id": subject.subject_id, "site": subject.site, "idh": subject.idh,
                   "tumor_type": subject.tumor_type, "split": subject.split,
                   "extra": dict(sorted((labels.extra if labels else {}).items()))},
    }
    return hashlib.sha256(json.dumps(content, sort_keys=True).encode()).hexdigest()


def prepare_subject(subject: Subject, settings: PreparationSettings) -> SubjectOutcome:
    """Read, validate and preprocess one subject (runs in a worker process; bad input becomes ``problem``)."""
    started = time.perf_counter()
    try:
        sources = source_fingerprints(subject)
        volumes = read_subject_volumes(subject, settings.affine_tolerance_mm, settings.resample_to)
        image = preprocess_volumes(volumes, settings.data_config())
    except InputFileError as exc:
        return SubjectOutcome(subject, problem=Problem(exc.path, exc.problem, subject.subject_id, subject.site),
                              seconds=time.perf_counter() - started)
    except OSError as exc:
        path = exc.filename or subject.folder
        return SubjectOutcome(subject, problem=Problem(str(path), f"cannot read ({exc.strerror or exc})",
                                                       subject.subject_id, subject.site),
                              seconds=time.perf_counter() - started)
    return SubjectOutcome(subject, image=image, sources=sources, seconds=time.perf_counter() - started)


def _sha256(path: Path) -> str:
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


# ------------------------------------------------------------------------------------------------ whole dataset
@dataclass
class PreparationPlan:
    """Which subjects a run reuses, processes or skips, decided before anything is written."""

    reuse: list[tuple[Subject, Path]]
    process: list[Subject]
    invalid: list[Problem]


def prepare_dataset(data_dir: str | Path, config: StudyConfig, cache_dir: str | Path, sites: list[str] | None = None,
                    skip_invalid: bool = False, workers: int | None = None, naming: str | None = None) -> list[Path]:
    """Preprocess every labelled subject of ``data_dir`` into ``cache_dir/<site>/<subject_id>.safetensors``.

    Subjects whose cached file has the same key are reused. Bad input raises :class:`CatphishError` naming the file,
    and the cache is left exactly as it was; with ``skip_invalid`` the subject is skipped and listed in ``run.json``.
    Returns the prepared files of the selected subjects, reused or new.
    """
    from catphish.artifacts import run_record
    from catphish.runtime import log, settings

    started = time.perf_counter()
    cache_dir = Path(cache_dir)
    settings_ = PreparationSettings.from_config(config.data)
    workers = config.data.workers if workers is None else workers
    if workers < 1:
        raise CatphishError(f"--workers must be at least 1, got {workers}")
    dataset = discover_dataset(data_dir, naming or config.data.naming)
    _raise_dataset_problems(dataset)
    _ensure_writable(cache_dir)
    subjects = _select_sites(dataset, sites)
    _log_warnings(dataset)
    plan = _plan(dataset, subjects, settings_, cache_dir)
    if plan.invalid and not skip_invalid:
        _raise_first(plan.invalid)
    if not plan.process and not plan.reuse:
        raise CatphishError(f"{dataset.root}: nothing to prepare: all {len(subjects)} selected subjects are invalid"
                            if subjects else f"{dataset.root}: no labelled subjects with image files were found")
    created = not cache_dir.exists()
    staging = cache_dir / f".staging-{os.getpid()}"
    try:
        staged, failed = _run_jobs(plan.process, settings_, config, workers, skip_invalid, staging)
        skipped = plan.invalid + failed
        if not staged and not plan.reuse:
            raise CatphishError(f"{dataset.root}: nothing to prepare: all {len(subjects)} selected subjects are invalid")
        with run_record(cache_dir, "data prepare", config.to_dict(), settings.seed,
                        inputs=[dataset.labels_path]) as record:
            written = _commit(staged)
            reused = [path for _, path in plan.reuse]
            removed = _remove_stale(cache_dir, {s.site for s in subjects}, set(written) | set(reused))
            wall = time.perf_counter() - started
            record.add(data_dir=str(dataset.root), sites=sorted({s.site for s in subjects}), workers=workers,
                       prepared=len(written), reused=len(reused), removed_stale=len(removed),
                       skipped=[{"subject_id": p.subject_id, "site": p.site, **p.as_record()} for p in skipped],
                       wall_seconds=round(wall, 3), subject_seconds=round(sum(s.seconds for s in staged), 3),
                       throughput_subjects_per_s=round(len(written) / wall, 4) if written else None)
    finally:
        with contextlib.suppress(OSError):
            shutil.rmtree(staging)
        if created and cache_dir.is_dir() and not any(cache_dir.iterdir()):
            cache_dir.rmdir()  # a failed first run leaves no empty cache behind
    if skipped:
        log.warning("skipped %d of %d subjects: %s", len(skipped), len(subjects),
                    "; ".join(f"{p.site}/{p.subject_id} ({p.message()})" for p in skipped[:10])
                    + (f"; … and {len(skipped) - 10} more (see run.json)" if len(skipped) > 10 else ""))
    log.info("prepared %d subjects, reused %d from the cache, skipped %d, in %.1f s → %s",
             len(written), len(reused), len(skipped), time.perf_counter() - started, cache_dir)
    return sorted(written + reused)


def prepared_path(cache_dir: Path, subject: Subject) -> Path:
    return cache_dir / subject.site / f"{subject.subject_id}{PREPARED_SUFFIX}"


def _raise_dataset_problems(dataset: Dataset) -> None:
    fatal = dataset.dataset_problems
    if fatal:
        _raise_first(fatal)


def _raise_first(problems: list[Problem]) -> None:
    first = problems[0]
    more = len(problems) - 1
    suffix = (f" (and {more} more problem{'s' if more > 1 else ''}: `catphish data check` lists them"
              f"{', --skip-invalid skips such subjects' if first.subject_id else ''})") if more else ""
    raise InputFileError(first.file, first.problem + suffix)


def _ensure_writable(folder: Path) -> None:
    """Refuse an output folder that cannot be written, before any work is done."""
    if folder.exists() and not folder.is_dir():
        raise InputFileError(folder, "output path exists and is not a folder")
    ancestor = folder
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise InputFileError(folder, f"cannot create the output folder: {ancestor} is a file, not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise InputFileError(folder, f"output folder cannot be written ({ancestor} is not writable)")


def _select_sites(dataset: Dataset, sites: list[str] | None) -> list[Subject]:
    if not sites:
        return list(dataset.subjects)
    known = sorted({s.site for s in dataset.subjects})
    unknown = [site for site in sites if site not in known]
    if unknown:
        raise CatphishError(f"unknown site '{unknown[0]}' (sites with labelled subjects: {', '.join(known) or 'none'})")
    return [s for s in dataset.subjects if s.site in set(sites)]


def _log_warnings(dataset: Dataset) -> None:
    from catphish.runtime import log

    for warning in dataset.warnings[:5]:
        log.warning("%s", warning.message())
    if len(dataset.warnings) > 5:
        log.warning("… and %d more warnings (`catphish data check` lists them)", len(dataset.warnings) - 5)


def _plan(dataset: Dataset, subjects: list[Subject], settings: PreparationSettings, cache_dir: Path) -> PreparationPlan:
    """Split subjects into reusable cache entries, work to do, and invalid ones (from file names and headers)."""
    plan = PreparationPlan(reuse=[], process=[], invalid=[])
    for subject in subjects:
        problems = dataset.subject_problems(subject.subject_id)
        if problems:
            plan.invalid.append(problems[0])
            continue
        cached = prepared_path(cache_dir, subject)
        if _is_current(cached, subject, settings):
            plan.reuse.append((subject, cached))
            continue
        _, header_problems = check_subject_headers(subject, settings.affine_tolerance_mm, settings.resample_to)
        if header_problems:
            plan.invalid.append(header_problems[0])
            continue
        plan.process.append(subject)
    return plan


def _is_current(path: Path, subject: Subject, settings: PreparationSettings) -> bool:
    """Whether the cached file was made from these exact sources, labels and settings."""
    from catphish.data.prepared import read_provenance

    if not path.is_file():
        return False
    try:
        provenance = read_provenance(path)
        known = json.loads(provenance.get("sources", "{}"))
        sources = source_fingerprints(subject, known)
    except (CatphishError, OSError, ValueError, KeyError, TypeError):
        return False
    return provenance.get("cache_key") == cache_key(settings, subject, sources)


@dataclass
class StagedSubject:
    """A prepared subject written to the staging folder, waiting for the run to succeed."""

    staged: Path
    target: Path
    seconds: float


def _run_jobs(subjects: list[Subject], settings: PreparationSettings, config: StudyConfig, workers: int,
              skip_invalid: bool, staging: Path) -> tuple[list[StagedSubject], list[Problem]]:
    """Preprocess subjects (in ``workers`` processes) with a progress bar, staging each result as it arrives.

    Stops at the first problem unless ``skip_invalid``.
    """
    from catphish.runtime import log, progress_bar

    staged: list[StagedSubject] = []
    failed: list[Problem] = []
    if not subjects:
        return staged, failed
    with progress_bar() as progress:
        task = progress.add_task("preparing", total=len(subjects), status="")
        for outcome in _outcomes(subjects, settings, workers):
            progress.update(task, advance=1, status=f"{outcome.subject.site}/{outcome.subject.subject_id}")
            if outcome.problem is None:
                staged.append(_stage(outcome, settings, config, staging))
                continue
            if not skip_invalid:
                _raise_first([outcome.problem])
            log.warning("skipping %s/%s: %s", outcome.subject.site, outcome.subject.subject_id, outcome.problem.message())
            failed.append(outcome.problem)
    return staged, failed


def _outcomes(subjects: list[Subject], settings: PreparationSettings, workers: int) -> Iterator[SubjectOutcome]:
    if workers == 1 or len(subjects) == 1:
        for subject in subjects:
            yield prepare_subject(subject, settings)
        return
    pool = ProcessPoolExecutor(max_workers=min(workers, len(subjects)))
    try:
        futures: list[Future[SubjectOutcome]] = [pool.submit(prepare_subject, s, settings) for s in subjects]
        for future in as_completed(futures):
            yield future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _stage(outcome: SubjectOutcome, settings: PreparationSettings, config: StudyConfig, staging: Path) -> StagedSubject:
    """Write one prepared subject (image + labels + provenance with its cache key) into the staging folder."""
    from catphish.data.prepared import PreparedSubject, save_prepared

    subject = outcome.subject
    labels = subject.labels
    prepared = PreparedSubject(subject_id=subject.subject_id, site=subject.site, image=outcome.image,
                               idh=subject.idh, tumor_type=subject.tumor_type, split=subject.split,
                               extra=dict(labels.extra) if labels else {})
    provenance = {
        "cache_key": cache_key(settings, subject, outcome.sources or {}),
        "sources": json.dumps(outcome.sources),
        "settings": json.dumps(settings.key_fields()),
        "preset": config.preset,
        "naming": subject.naming,
        "catphish_version": __version__,
    }
    target = prepared_path(staging.parent, subject)
    staged = staging / target.relative_to(staging.parent)
    save_prepared(staged, prepared, provenance)
    return StagedSubject(staged=staged, target=target, seconds=outcome.seconds)


def _commit(staged: list[StagedSubject]) -> list[Path]:
    """Move staged files into place (each move is atomic)."""
    for item in staged:
        item.target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(item.staged, item.target)
    return [item.target for item in staged]


def _remove_stale(cache_dir: Path, sites: set[str], keep: set[Path]) -> list[Path]:
    """Drop cached subjects of the prepared sites that are no longer in the dataset (or were skipped)."""
    from catphish.runtime import log

    removed = []
    for site in sorted(sites):
        for path in sorted((cache_dir / site).glob(f"*{PREPARED_SUFFIX}")):
            if path not in keep:
                path.unlink()
                removed.append(path)
    if removed:
        log.info("removed %d cached subjects that are no longer prepared from this dataset", len(removed))
    return removed
