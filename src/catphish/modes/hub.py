"""The hub (DESIGN §1 steps 2–3): synthesize a cohort from verified site packages, then filter it.

Synthesis is split into batches (package × class × batch index). Each batch has its own seed derived from the study seed,
the package hash, the class and the batch index, so the cohort is the same whatever the number of workers or the order in
which batches finish. Finished batches are kept under ``SYN/.batches`` until the cohort is assembled, so a killed run
resumes where it stopped. Workers: local processes (CPU threads split between them, one process per GPU when CUDA is
present) or Ray tasks on a cluster (``backend="ray"``).
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import shutil
from collections import Counter
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from catphish.artifacts import (
    load_state,
    open_output_dir,
    read_json,
    run_record,
    save_state,
    sha256_file,
    verify_folder,
    write_json,
    write_manifest,
)
from catphish.data.writing import LABELS_NAME, write_case, write_label_rows
from catphish.errors import ArtifactError, CatphishError
from catphish.runtime import log, progress_bar
from catphish.synthesis.sampling import check_sampler_settings

COHORT_KIND = "synthetic-cohort"
BATCHES_DIR = ".batches"
BACKENDS: tuple[str, ...] = ("local", "ray")


@dataclass(frozen=True)
class SynthesisRequest:
    packages: tuple[str, ...]
    out: str
    per_class: int
    sampler: str = "ddim"
    steps: int = 25
    guidance: float = 2.0
    batch_size: int = 16
    workers: int = 1
    backend: str = "local"
    ray_address: str | None = None
    seed: int = 0
    device: str = "cpu"
    resume: bool = False
    overwrite: bool = False
    classes: tuple[str, ...] | None = None
    """Only these classes (default: every class of each package)."""


@dataclass(frozen=True)
class PackageInfo:
    path: str
    site: str
    task: str
    classes: tuple[str, ...]
    sha256: str
    spacing_mm: tuple[float, ...]


@dataclass(frozen=True)
class BatchJob:
    package: PackageInfo
    class_name: str
    index: int
    count: int
    seed: int
    sampler: str
    steps: int
    guidance: float
    batch_size: int

    @property
    def relative_path(self) -> str:
        return f"{BATCHES_DIR}/{self.package.site}/{self.class_name}/{self.index:05d}.safetensors"


# ----------------------------------------------------------------------------------------------- checking inputs
def inspect_packages(paths: list[str]) -> list[PackageInfo]:
    """Verify every package (refusing tampered ones) and check they were trained for one task."""
    from catphish.modes.site_package import verify_site_package

    if not paths:
        raise CatphishError("no site package given (--packages PKG ...)")
    infos = []
    for path in paths:
        try:
            package = verify_site_package(path)
        except ArtifactError as exc:
            raise ArtifactError(f"{Path(path).name}: refused, {exc}") from None
        infos.append(PackageInfo(path=str(Path(path).resolve()), site=package.site, task=package.task,
                                 classes=tuple(package.class_names), sha256=sha256_file(Path(path) / "manifest.json"),
                                 spacing_mm=tuple(package.config.data.spacing_mm)))
    tasks = sorted({info.task for info in infos})
    if len(tasks) > 1:
        detail = ", ".join(f"{Path(i.path).name} ({i.task})" for i in infos)
        raise CatphishError(f"packages were trained for different tasks ({', '.join(tasks)}): {detail}")
    sites = Counter(info.site for info in infos)
    duplicated = [site for site, count in sites.items() if count > 1]
    if duplicated:
        raise CatphishError(f"two packages come from the same site '{duplicated[0]}'; give one package per site")
    return infos


def plan_batches(infos: list[PackageInfo], request: SynthesisRequest, classes: list[str] | None = None) -> list[BatchJob]:
    """Every batch of the cohort, in a fixed order, each with a seed that does not depend on scheduling."""
    if request.per_class <= 0:
        raise CatphishError(f"--per-class must be at least 1, got {request.per_class}")
    check_sampler_settings(request.sampler, request.steps, request.guidance)
    if request.batch_size <= 0:
        raise CatphishError(f"batch size must be at least 1, got {request.batch_size}")
    jobs = []
    for info in infos:
        for class_name in classes or info.classes:
            if class_name not in info.classes:
                raise CatphishError(f"class '{class_name}' is not in package {Path(info.path).name} "
                                    f"(classes: {', '.join(info.classes)})")
            for index, start in enumerate(range(0, request.per_class, request.batch_size)):
                count = min(request.batch_size, request.per_class - start)
                jobs.append(BatchJob(info, class_name, index, count, _batch_seed(request.seed, info.sha256, class_name,
                                                                                 index),
                                     request.sampler, request.steps, request.guidance, request.batch_size))
    return jobs


def _batch_seed(seed: int, package_sha: str, class_name: str, index: int) -> int:
    digest = hashlib.sha256(f"{seed}:{package_sha}:{class_name}:{index}".encode()).hexdigest()
    return int(digest[:12], 16)


# ------------------------------------------------------------------------------------------------ running batches
_PACKAGE_CACHE: dict[tuple[str, str], Any] = {}


_WORKER_DEVICE: str | None = None
"""The GPU a local worker process claimed when it started (one process per GPU)."""


def _claim_device(devices: Any) -> None:
    """Worker-process initializer: take one GPU from the queue and keep it for the worker's lifetime."""
    global _WORKER_DEVICE
    _WORKER_DEVICE = devices.get()


def worker_pool(workers: int, gpus: int) -> ProcessPoolExecutor:
    """``workers`` spawned processes; with ``gpus`` > 0 each claims one GPU when it starts (``cuda:i mod gpus``)."""
    context = multiprocessing.get_context("spawn")
    if not gpus:
        return ProcessPoolExecutor(max_workers=workers, mp_context=context)
    devices = context.Queue()
    for index in range(workers):
        devices.put(f"cuda:{index % gpus}")
    return ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_claim_device, initargs=(devices,))


def worker_device() -> str | None:
    """The device this worker process claimed (``None`` outside a GPU pool)."""
    return _WORKER_DEVICE


def run_batch(job: BatchJob, out: str, device: str | None, threads: int | None = None) -> str:
    """Sample one batch and save it under ``out`` (atomic); returns its relative path. Runs in any worker;
    ``device=None`` means the GPU this worker process claimed."""
    from catphish.modes.site_package import load_site_package
    from catphish.synthesis.sampling import sample_cases

    if threads:
        torch.set_num_threads(threads)
    device = device or _WORKER_DEVICE or "cpu"
    key = (job.package.path, device)
    if key not in _PACKAGE_CACHE:
        _PACKAGE_CACHE[key] = load_site_package(job.package.path, device=device)
    package = _PACKAGE_CACHE[key]
    cases = sample_cases(package, job.class_name, job.count, sampler=job.sampler, steps=job.steps,
                         guidance=job.guidance, seed=job.seed, batch_size=job.batch_size, device=device,
                         show_progress=False)
    save_state(Path(out) / job.relative_path, {"cases": torch.from_numpy(cases), "job": json.dumps(asdict(job))})
    return job.relative_path


def _run_local(jobs: list[BatchJob], out: Path, workers: int, device: str, advance: Any) -> None:
    if workers <= 1:
        for job in jobs:
            run_batch(job, str(out), device)
            advance(job)
        return
    gpus = torch.cuda.device_count() if device.startswith("cuda") else 0
    threads = max(1, (os.cpu_count() or 1) // workers)
    with worker_pool(workers, gpus) as pool:
        futures = {pool.submit(run_batch, job, str(out), None if gpus else device, threads): job for job in jobs}
        for future in as_completed(futures):
            future.result()
            advance(futures[future])


def _run_ray(jobs: list[BatchJob], out: Path, address: str | None, device: str, workers: int, advance: Any) -> None:
    import ray

    started_here = not ray.is_initialized()
    if started_here:
        options: dict[str, Any] = {"address": address} if address else {"num_cpus": max(1, workers)}
        ray.init(include_dashboard=False, log_to_driver=False, ignore_reinit_error=True, **options)
    try:
        gpus = 1 if device.startswith("cuda") else 0
        remote = ray.remote(num_cpus=1, num_gpus=gpus)(run_batch)
        pending = {remote.remote(job, str(out), "cuda" if gpus else "cpu", 1): job for job in jobs}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                ray.get(ref)
                advance(pending.pop(ref))
    finally:
        if started_here:
            ray.shutdown()


# ------------------------------------------------------------------------------------------------------- synthesis
def synthesize(request: SynthesisRequest, config_dict: dict[str, Any] | None = None) -> dict[str, Any]:
    """Sample ``per_class`` cases per class per site and write them in the data contract; returns the summary."""
    if request.backend not in BACKENDS:
        raise CatphishError(f"unknown backend '{request.backend}' (choose {' or '.join(BACKENDS)})")
    if request.workers < 1:
        raise CatphishError(f"--workers must be at least 1, got {request.workers}")
    infos = inspect_packages(list(request.packages))
    jobs = plan_batches(infos, request, list(request.classes) if request.classes else None)
    out = Path(request.out)
    fingerprint = {"packages": [i.sha256 for i in infos], "per_class": request.per_class, "sampler": request.sampler,
                   "steps": request.steps, "guidance": request.guidance, "batch_size": request.batch_size,
                   "seed": request.seed, "classes": list(request.classes or [])}
    resumed = open_output_dir(out, fingerprint, resume=request.resume, overwrite=request.overwrite,
                              what="synthetic cohort")
    if resumed and (out / "manifest.json").exists():
        log.info("%s: synthesis already finished; nothing to do", out)
        return read_json(out / "synthesis.json")
    with run_record(out, "hub synthesize", config_dict, request.seed, inputs=[i.path for i in infos]) as record:
        todo = [job for job in jobs if not _batch_done(out / job.relative_path)]
        if resumed:
            log.info("resuming: %d of %d batches already done", len(jobs) - len(todo), len(jobs))
        total = sum(j.count for j in jobs)
        _sample_all(todo, out, request, total=total, done=total - sum(j.count for j in todo))
        summary = assemble_cohort(jobs, infos, out, request)
        record.add(summary=summary)
    write_manifest(out, kind=COHORT_KIND)
    return summary


def _sample_all(jobs: list[BatchJob], out: Path, request: SynthesisRequest, total: int, done: int) -> None:
    with progress_bar() as progress:
        task = progress.add_task("synthesizing", total=total, completed=done, status="cases")

        def advance(job: BatchJob) -> None:
            progress.update(task, advance=job.count, status=f"{job.package.site}/{job.class_name}")

        if request.backend == "ray":
            _run_ray(jobs, out, request.ray_address, request.device, request.workers, advance)
        else:
            _run_local(jobs, out, request.workers, request.device, advance)


def _batch_done(path: Path) -> bool:
    if not path.exists():
        return False
    try:
        load_state(path)
    except ArtifactError:
        path.unlink()
        return False
    return True


def assemble_cohort(jobs: list[BatchJob], infos: list[PackageInfo], out: Path, request: SynthesisRequest
                    ) -> dict[str, Any]:
    """Write every batch as NIfTI cases (BraTS 2021 naming) plus labels.csv, then drop the batch files."""
    for info in infos:
        shutil.rmtree(out / f"synthetic-{info.site}", ignore_errors=True)
    rows: list[dict[str, str]] = []
    counts: Counter[tuple[str, str]] = Counter()
    task = infos[0].task
    for job in jobs:
        cases = load_state(out / job.relative_path)["cases"].numpy()
        site = f"synthetic-{job.package.site}"
        for offset, case in enumerate(cases):
            number = job.index * request.batch_size + offset + 1
            subject_id = f"{site}-{job.class_name}-{number:05d}"
            write_case(out / site / subject_id, subject_id, case, job.package.spacing_mm)
            row = {"subject_id": subject_id, "site": site, "idh": "", "tumor_type": "", "split": "train",
                   "source_task": task, "package_sha256": job.package.sha256, "class": job.class_name,
                   "seed": str(job.seed), "sampler": job.sampler, "steps": str(job.steps),
                   "guidance": str(job.guidance)}
            row[task] = job.class_name
            rows.append(row)
            counts[(site, job.class_name)] += 1
    write_label_rows(out / LABELS_NAME, rows)
    shutil.rmtree(out / BATCHES_DIR, ignore_errors=True)
    summary = {"task": task, "cases": len(rows), "per_site_class": [
        {"site": site, "class": name, "cases": n} for (site, name), n in sorted(counts.items())],
        "packages": {info.site: info.sha256 for info in infos},
        "sampler": request.sampler, "steps": request.steps, "guidance": request.guidance, "seed": request.seed}
    write_json(out / "synthesis.json", summary)
    return summary


# ---------------------------------------------------------------------------------------------------------- filter
@dataclass(frozen=True)
class FilterRequest:
    cohort: str
    out: str
    percentile: float = 20.0
    min_mask_voxels: int = 8
    overwrite: bool = False
    within: str = "site-class"
    """Groups whose pairwise distances the rule compares: ``site-class`` (each class of a site on its own, so a class
    whose samples are alike is not thinned more than the other) or ``site`` (the paper's literal rule). On the demo
    (150 cases per class per site) ``site`` kept 11 of 124 wildtype cases at EGD and the synthetic-only classifier
    reached IDH AUC 0.77; ``site-class`` kept 28 and reached 0.83 (docs/hub.md)."""


FILTER_GROUPS: tuple[str, ...] = ("site", "site-class")


def filter_cohort(request: FilterRequest, seed: int = 0) -> dict[str, Any]:
    """Quality gate + diversity filter; writes the kept cases as a new dataset with the filter report."""
    from catphish.data.loading import discover_dataset
    from catphish.synthesis.diversity import DiversityFilter
    from catphish.synthesis.radiomics import tumour_features

    if not 0.0 < request.percentile < 100.0:
        raise CatphishError(f"--percentile must be in (0, 100), got {request.percentile}")
    if request.within not in FILTER_GROUPS:
        raise CatphishError(f"--within must be {' or '.join(FILTER_GROUPS)}, got '{request.within}'")
    source = Path(request.cohort)
    if not source.is_dir():
        raise CatphishError(f"{source}: synthetic cohort folder does not exist")
    if (source / "manifest.json").exists():
        verify_folder(source, kind=COHORT_KIND)
    dataset = discover_dataset(source)
    if dataset.dataset_problems:
        raise dataset.dataset_problems[0].as_error()
    if not dataset.subjects:
        raise CatphishError(f"{source}: no synthetic cases found")
    out = Path(request.out)
    settings = {"percentile": request.percentile, "min_mask_voxels": request.min_mask_voxels, "within": request.within}
    open_output_dir(out, {"cohort": str(source.resolve()), **settings}, overwrite=request.overwrite,
                    what="filtered cohort", resumable=False)
    with run_record(out, "hub filter", settings, seed, inputs=[source]) as record:
        decisions, features, names = [], [], []
        with progress_bar() as progress:
            task = progress.add_task("radiomics", total=len(dataset.subjects), status="")
            for subject in dataset.subjects:
                case, reason = _gate_case(subject, request.min_mask_voxels)
                decisions.append({"subject_id": subject.subject_id, "site": subject.site,
                                  "class": _class_of(subject), "kept": reason is None, "reason": reason or ""})
                if case is not None and reason is None:
                    features.append(tumour_features(case))
                    names.append(len(decisions) - 1)
                progress.advance(task)
        if features:
            groups = [decisions[i]["site"] + ("/" + decisions[i]["class"] if request.within == "site-class" else "")
                      for i in names]
            keep = DiversityFilter(request.percentile).fit_predict(np.array(features), groups)
            for index, kept in zip(names, keep, strict=True):
                if not kept:
                    decisions[index].update(kept=False, reason=f"too similar (below the {request.percentile:g}th "
                                                               f"percentile of within-{request.within} distances)")
        report = _filter_report(decisions)
        report["within"] = request.within
        _write_filtered(dataset, decisions, source, out)
        write_label_rows(out / "kept.csv", [{k: str(v) for k, v in d.items()} for d in decisions])
        write_json(out / "filter_report.json", report)
        record.add(report=report["totals"])
    write_manifest(out, kind=COHORT_KIND)
    return report


def _gate_case(subject: Any, min_mask_voxels: int) -> tuple[np.ndarray | None, str | None]:
    """A generated case ``(5, *grid)`` and why the quality gate drops it (``None``: it passes). A case the loader
    refuses (an empty segmentation, NaN voxels, …) is dropped with the loader's reason instead of stopping the filter."""
    from catphish.data.loading import load_subject_volumes
    from catphish.errors import InputFileError
    from catphish.synthesis.diversity import quality_problem

    try:
        volumes = load_subject_volumes(subject)
    except InputFileError as error:
        return None, "empty mask" if "empty" in error.problem else f"unreadable ({error.problem})"
    case = np.stack([volumes["t1"], volumes["t1c"], volumes["t2"], volumes["flair"], volumes["mask"].astype(np.float32)])
    return case, quality_problem(case, min_mask_voxels=min_mask_voxels)


def _class_of(subject: Any) -> str:
    labels = subject.labels
    return (labels.extra.get("class") if labels else "") or subject.idh or subject.tumor_type


def _filter_report(decisions: list[dict[str, Any]]) -> dict[str, Any]:
    groups: dict[tuple[str, str], dict[str, int]] = {}
    for d in decisions:
        entry = groups.setdefault((d["site"], d["class"]), {"before": 0, "after_quality_gate": 0, "after": 0})
        entry["before"] += 1
        entry["after_quality_gate"] += int(d["kept"] or d["reason"].startswith("too similar"))
        entry["after"] += int(d["kept"])
    rows = [{"site": site, "class": name, **counts} for (site, name), counts in sorted(groups.items())]
    totals = {key: sum(r[key] for r in rows) for key in ("before", "after_quality_gate", "after")}
    reasons = Counter(d["reason"].split(" (")[0] for d in decisions if not d["kept"])
    return {"rows": rows, "totals": totals, "dropped_by_reason": dict(reasons),
            "features": "whole-tumour radiomics (catphish.synthesis.radiomics): first-order per sequence, shape, GLCM"}


def _write_filtered(dataset: Any, decisions: list[dict[str, Any]], source: Path, out: Path) -> None:
    from catphish.data.writing import read_label_rows

    kept = {d["subject_id"] for d in decisions if d["kept"]}
    for subject in dataset.subjects:
        if subject.subject_id not in kept:
            continue
        target = out / subject.folder.relative_to(source)
        target.mkdir(parents=True, exist_ok=True)
        for path in subject.files.values():
            destination = target / path.name
            if destination.exists():
                destination.unlink()
            try:
                os.link(path, destination)
            except OSError:
                shutil.copy2(path, destination)
    rows = [r for r in read_label_rows(source / LABELS_NAME) if r.get("subject_id") in kept]
    write_label_rows(out / LABELS_NAME, rows)
