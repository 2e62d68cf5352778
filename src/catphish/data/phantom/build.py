"""Writing the phantom consortium to disk as a BraTS 2021-named dataset with ``labels.csv`` (DESIGN §3).

Subjects are generated in a process pool (each worker inherits the atlas from the parent, so nothing is loaded twice)
and written file by file through a temporary name and a rename, so a folder never holds a half-written volume. A
subject is complete when its five files exist, which is what ``--resume`` relies on; ``labels.csv`` is written last.
"""

from __future__ import annotations

import csv
import io
import multiprocessing
import os
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from catphish.artifacts import atomic_output_path, atomic_write_text
from catphish.data.phantom.anatomy import load_atlas
from catphish.data.phantom.cohort import PhantomSubject, SubjectPlan, generate_subject
from catphish.data.phantom.tumour import TUMOUR_TYPES, location_prior

BRATS_SUFFIXES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
"""BraTS 2021 file suffixes of T1, T1C, T2, FLAIR (model channel order); the segmentation is ``_seg``."""
LABEL_COLUMNS: tuple[str, ...] = ("subject_id", "site", "idh", "tumor_type", "split")


def subject_folder(out_dir: Path, plan: SubjectPlan) -> Path:
    return out_dir / plan.site / plan.subject_id


def subject_files(out_dir: Path, plan: SubjectPlan) -> list[Path]:
    folder = subject_folder(out_dir, plan)
    return [folder / f"{plan.subject_id}_{suffix}.nii.gz" for suffix in (*BRATS_SUFFIXES, "seg")]


def nifti_gz_bytes(data: np.ndarray, affine: np.ndarray) -> bytes:
    """A gzipped NIfTI-1 file in memory; byte-identical for identical data (zlib's gzip header has no time stamp).

    Run-length deflate is twice as fast as gzip level 1 on skull-stripped MRI (long zero runs, noisy brain) and
    compresses slightly better; any gzip reader opens it.
    """
    image = nib.Nifti1Image(data, affine)
    image.header.set_xyzt_units("mm")
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    compressor = zlib.compressobj(1, zlib.DEFLATED, 31, 9, zlib.Z_RLE)  # wbits 31: gzip container
    return compressor.compress(image.to_bytes()) + compressor.flush()


def write_subject(subject: PhantomSubject, out_dir: Path) -> int:
    """Write the four sequences and the segmentation; returns the bytes written."""
    written = 0
    volumes = [*subject.images, subject.segmentation]
    for path, volume in zip(subject_files(out_dir, subject.plan), volumes, strict=True):
        payload = nifti_gz_bytes(volume, subject.affine)
        with atomic_output_path(path) as tmp:
            tmp.write_bytes(payload)
        written += len(payload)
    return written


def write_labels(out_dir: Path, plans: list[SubjectPlan]) -> Path:
    """``labels.csv`` with an empty ``split``: a site's role depends on the task (NYU trains tumour type but tests
    IDH), so roles come from the task's default site roles, not from a per-subject column."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(LABEL_COLUMNS)
    for plan in plans:
        writer.writerow([plan.subject_id, plan.site, plan.idh, plan.tumor_type, ""])
    return atomic_write_text(out_dir / "labels.csv", buffer.getvalue())


@dataclass
class BuildSummary:
    """What a build did and how fast, for ``run.json`` and the console."""

    subjects: int
    generated: int
    skipped: int
    seconds: float
    workers: int
    bytes_written: int
    counts: dict[str, dict[str, int]] = field(default_factory=dict)

    @property
    def subjects_per_second(self) -> float:
        return self.generated / self.seconds if self.seconds > 0 else 0.0

    def as_record(self) -> dict[str, object]:
        return {"subjects": self.subjects, "generated": self.generated, "skipped_existing": self.skipped,
                "seconds": round(self.seconds, 2), "workers": self.workers,
                "subjects_per_second": round(self.subjects_per_second, 2),
                "megabytes_written": round(self.bytes_written / 1e6, 1), "counts": self.counts}


def cohort_counts(plans: list[SubjectPlan]) -> dict[str, dict[str, int]]:
    """Per site: subjects, IDH classes and tumour-type labels."""
    counts: dict[str, Counter[str]] = {}
    for plan in plans:
        site = counts.setdefault(plan.site, Counter())
        site["subjects"] += 1
        site[f"idh_{plan.idh}"] += 1
        if plan.tumor_type:
            site[plan.tumor_type] += 1
    return {site: dict(counter) for site, counter in counts.items()}


# the worker's job: module-level so the pool can call it; the parent sets these before forking
_JOB: dict[str, object] = {}


def _generate_and_write(plan: SubjectPlan) -> tuple[str, int]:
    subject = generate_subject(plan, int(_JOB["seed"]), float(_JOB["resolution"]))  # type: ignore[arg-type]
    return plan.subject_id, write_subject(subject, Path(str(_JOB["out_dir"])))


def build_consortium(out_dir: str | Path, plans: list[SubjectPlan], seed: int, resolution: float = 2.0,
                     workers: int = 0, resume: bool = False,
                     on_subject: Callable[[str], None] | None = None) -> BuildSummary:
    """Generate and write ``plans`` into ``out_dir`` (an existing, writable folder), then ``labels.csv``.

    ``workers`` 0 means one per available CPU core; ``resume`` keeps subjects whose five files already exist.
    ``on_subject`` is called with each finished subject id (progress bars).
    """
    out = Path(out_dir)
    todo = [p for p in plans if not (resume and all(f.exists() for f in subject_files(out, p)))]
    workers = min(workers or available_cores(), max(len(todo), 1))
    # load everything the workers share once, in the parent: forked workers inherit it
    load_atlas(resolution)
    for tumour_type in TUMOUR_TYPES:
        location_prior(tumour_type)
    _JOB.update(seed=seed, resolution=resolution, out_dir=str(out))
    started = time.perf_counter()
    written = 0
    for subject_id, size in _run(todo, workers):
        written += size
        if on_subject is not None:
            on_subject(subject_id)
    seconds = time.perf_counter() - started
    write_labels(out, plans)
    return BuildSummary(subjects=len(plans), generated=len(todo), skipped=len(plans) - len(todo), seconds=seconds,
                        workers=workers, bytes_written=written, counts=cohort_counts(plans))


def _run(todo: list[SubjectPlan], workers: int) -> Iterator[tuple[str, int]]:
    if workers <= 1:
        yield from map(_generate_and_write, todo)
        return
    # fork: workers start in milliseconds and share the parent's atlas pages; no torch work happens in them
    context = multiprocessing.get_context("fork")
    pool = context.Pool(workers)
    try:
        yield from pool.imap_unordered(_generate_and_write, todo, chunksize=1)
        pool.close()
    except BaseException:
        pool.terminate()
        raise
    finally:
        pool.join()


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not on Linux
        return os.cpu_count() or 1
