"""Classifier training modes without federation: centralized, local, synthetic and mixed (DESIGN §1–2).

| mode | trains on | predictions ``mode`` |
|---|---|---|
| ``centralized`` | the pooled real training sites (upper bound) | ``centralized`` |
| ``local`` | one training site at a time, a run per site in ``RUN/local-<site>/`` (lower bound) | ``local-<site>`` |
| ``synthetic`` | only the hub's synthetic cohort (CATphishing) | ``synthetic`` |
| ``mixed`` | real training sites plus the synthetic cohort | ``mixed`` |
| ``mixed --augment-only`` | the same real sites with augmentation only (the baseline of ``mixed``) | ``augment-only`` |

Every mode tests on the same subjects: every subject of the test sites plus the training sites' ``split=test``
subjects. Site roles default to DESIGN §1. A run folder holds ``model/`` (fold models, through artifacts),
``predictions.csv`` (ensemble rows for test subjects, out-of-fold rows for training subjects), ``folds.csv`` (time and
metrics per stage and fold), ``summary.json`` and ``run.json``. All input checks happen before the folder is made.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import io
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from catphish.artifacts import RunRecord, atomic_write_text, open_output_dir, read_json, run_record, write_json
from catphish.config import TASK_CLASSES, StudyConfig
from catphish.data.prepared import PreparedSubject, load_prepared, load_prepared_dir
from catphish.errors import CatphishError, InputFileError
from catphish.evaluation.predictions import Prediction, write_predictions
from catphish.runtime import log, progress_bar, resolve_device, settings
from catphish.training.classifier import build_classifier, check_grid, class_counts, labelled_subjects
from catphish.training.cross_validation import FoldResult, assign_folds, derived_seed, train_fold
from catphish.training.ensemble import Stage, combine_stages, save_ensemble, stage_rows, task_stages

MODES: tuple[str, ...] = ("centralized", "local", "synthetic", "mixed")
DEFAULT_SITE_ROLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # task: (training sites, test sites), DESIGN §1
    "idh": (("TCGA", "UTSW", "EGD"), ("NYU", "UWM", "UCSF", "UPenn", "UTSWp2")),
    "tumor_type": (("TCGA", "UTSW", "NYU"), ("UCSF", "EGD", "UWM", "UTSWp2")),
}
SYNTHETIC_PREFIX = "synthetic-"
LABELS_NAME = "labels.csv"
FOLDS_NAME = "folds.csv"
SUMMARY_NAME = "summary.json"
PREDICTIONS_NAME = "predictions.csv"


@dataclass(frozen=True)
class TrainingRequest:
    """What ``catphish train`` was asked to do (before any check)."""

    mode: str
    task: str
    data_dir: Path
    out_dir: Path
    synthetic_dir: Path | None = None
    train_sites: tuple[str, ...] | None = None
    test_sites: tuple[str, ...] | None = None
    augment_only: bool = False
    cache_dir: Path | None = None
    skip_invalid: bool = False
    resume: bool = False
    overwrite: bool = False
    seed: int | None = None


@dataclass
class Cohort:
    """The subjects of one training run (one per mode, one per site for ``local``)."""

    label: str
    """The ``mode`` column of its predictions."""
    folder: Path
    train: list[PreparedSubject]
    test: list[PreparedSubject]
    train_sites: tuple[str, ...]
    folds: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=int))


# ---------------------------------------------------------------------------------------------------- data
def is_prepared_folder(path: Path) -> bool:
    """A prepared cache (``<site>/<subject>.safetensors``, no ``labels.csv``) rather than a raw dataset."""
    return not (path / LABELS_NAME).exists() and any(path.glob("*/*.safetensors"))


def default_cache_dir(data_dir: Path, config: StudyConfig) -> Path:
    """Where a raw dataset is prepared when no ``--cache`` is given: one folder per dataset and data settings."""
    root = Path(os.environ.get("CATPHISH_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                / "catphish" / "prepared")
    key = json.dumps({"data": str(data_dir.resolve()), "settings": config.to_dict()["data"]}, sort_keys=True)
    return root / f"{data_dir.resolve().name}-{hashlib.sha256(key.encode()).hexdigest()[:10]}"


def dataset_sites(path: Path) -> list[str]:
    """The sites of a raw dataset (from ``labels.csv``) or of a prepared cache (its folders)."""
    if not path.is_dir():
        raise InputFileError(path, "dataset folder does not exist")
    if is_prepared_folder(path):
        return sorted(p.name for p in path.iterdir() if p.is_dir() and any(p.glob("*.safetensors")))
    from catphish.data.loading import read_labels

    labels, problems = read_labels(path / LABELS_NAME)
    if labels is None:
        raise InputFileError(problems[0].file, problems[0].problem)
    return sorted({label.site for label in labels.values() if label.site})


def load_subjects(path: Path, config: StudyConfig, sites: Sequence[str], cache_dir: Path | None,
                  skip_invalid: bool) -> list[PreparedSubject]:
    """The prepared subjects of ``sites``: read from a prepared cache, or a raw dataset prepared into the cache first."""
    if not sites:
        return []
    if is_prepared_folder(path):
        subjects = load_prepared_dir(path, sites=sites)
    else:
        from catphish.data.preprocess import prepare_dataset

        cache = cache_dir or default_cache_dir(path, config)
        files = prepare_dataset(path, config, cache, sites=list(sites), skip_invalid=skip_invalid)
        subjects = [load_prepared(file) for file in files]
    expected = (config.data.spatial_dims, tuple(config.data.grid))
    for subject in subjects:
        found = (subject.image.ndim - 2, tuple(subject.image.shape[2:]))
        if found != expected:
            raise InputFileError(path / subject.site / f"{subject.subject_id}.safetensors",
                                 f"prepared for a {found[0]}D grid {found[1]}, but the preset needs {expected[0]}D "
                                 f"{expected[1]}; prepare the data with the same preset")
    return subjects


def prepared_data_dir(path: Path, config: StudyConfig, cache_dir: Path | None, skip_invalid: bool) -> Path:
    """A prepared cache of the whole dataset (for modes that read the cache themselves, e.g. federated)."""
    if is_prepared_folder(path):
        return path
    from catphish.data.preprocess import prepare_dataset

    cache = cache_dir or default_cache_dir(path, config)
    prepare_dataset(path, config, cache, skip_invalid=skip_invalid)
    return cache


# ------------------------------------------------------------------------------------------------ site roles
def resolve_site_roles(task: str, present: Sequence[str], train_sites: Sequence[str] | None,
                       test_sites: Sequence[str] | None, data_dir: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Training and test sites: the ones named, or DESIGN §1's defaults that are in the data."""
    default_train, default_test = DEFAULT_SITE_ROLES[task]
    train = tuple(train_sites) if train_sites else tuple(s for s in default_train if s in present)
    test = tuple(test_sites) if test_sites else tuple(s for s in default_test if s in present)
    for role, names in (("training", train_sites or ()), ("test", test_sites or ())):
        for site in names:
            if site not in present:
                raise InputFileError(data_dir, f"{role} site '{site}' is not in the data (sites present: "
                                               f"{', '.join(present) or 'none'})")
    both = sorted(set(train) & set(test))
    if both:
        raise CatphishError(f"site '{both[0]}' is both a training and a test site; a site can only have one role")
    return train, test


def check_synthetic_source(synthetic_dir: Path, task: str) -> None:
    """Refuse a synthetic cohort made from packages of another task (``source_task`` in labels.csv or run.json)."""
    labels = synthetic_dir / LABELS_NAME
    if labels.is_file():
        with labels.open(newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [name.strip().lower() for name in reader.fieldnames or []]
            if "source_task" in header:
                column = (reader.fieldnames or [])[header.index("source_task")]
                tasks = sorted({(row.get(column) or "").strip() for row in reader} - {""})
                other = [t for t in tasks if t != task]
                if other:
                    raise InputFileError(labels, f"synthetic cases were generated for task '{other[0]}' (source_task "
                                                 f"column), not '{task}'; synthesize from site packages of '{task}'")
    record = synthetic_dir / "run.json"
    if record.is_file():
        values = read_json(record)
        source = values.get("source_task") or values.get("task") if isinstance(values, dict) else None
        if isinstance(source, str) and source and source != task:
            raise InputFileError(record, f"synthetic cohort was generated for task '{source}', not '{task}'")


def check_synthetic_labels(subjects: Sequence[PreparedSubject], synthetic_dir: Path, task: str) -> None:
    """Every synthetic case carries the task's label; none at all means packages of another task."""
    for subject in subjects:
        source = subject.extra.get("source_task", "")
        if source and source != task:
            raise InputFileError(synthetic_dir / subject.site / f"{subject.subject_id}.safetensors",
                                 f"synthetic case generated for task '{source}', not '{task}'")
    if subjects and not any(s.label(task) in TASK_CLASSES[task] for s in subjects):
        found = sorted({t for t in TASK_CLASSES if t != task and any(s.label(t) for s in subjects)})
        hint = f" (its labels are for {', '.join(found)}: packages of another task?)" if found else ""
        raise InputFileError(synthetic_dir / LABELS_NAME, f"no synthetic case has a {task} label{hint}")
    not_synthetic = sorted({s.site for s in subjects if not s.site.startswith(SYNTHETIC_PREFIX)})
    if not_synthetic:
        log.warning("%s: site(s) %s are not named %s<site>; is this the hub's synthetic cohort?", synthetic_dir,
                    ", ".join(not_synthetic), SYNTHETIC_PREFIX)


# ------------------------------------------------------------------------------------------------- cohorts
@dataclass
class CheckedRequest:
    """A request whose input passed every check, with the subjects loaded and the cohorts built."""

    request: TrainingRequest
    train_sites: tuple[str, ...]
    test_sites: tuple[str, ...]
    cohorts: list[Cohort]
    seed: int


def check_request(config: StudyConfig, request: TrainingRequest) -> CheckedRequest:
    """Every check of the input (and the data preparation) before anything is written into the run folder."""
    mode, task = request.mode, request.task
    if mode not in MODES:
        raise CatphishError(f"unknown mode '{mode}' (choose from {', '.join(MODES)}, or federated)")
    if task not in TASK_CLASSES:
        raise CatphishError(f"unknown task '{task}' (choose from {', '.join(TASK_CLASSES)})")
    if request.augment_only and mode != "mixed":
        raise CatphishError("--augment-only is the baseline of --mode mixed (real data with augmentation only)")
    needs_synthetic = mode == "synthetic" or (mode == "mixed" and not request.augment_only)
    if needs_synthetic and request.synthetic_dir is None:
        raise CatphishError(f"--mode {mode} needs --synthetic SYN (the hub's synthetic cohort)")
    if request.synthetic_dir is not None and not needs_synthetic:
        log.warning("--synthetic is not used by --mode %s%s", mode, " --augment-only" if request.augment_only else "")
    seed = settings.seed if request.seed is None else request.seed
    present = dataset_sites(request.data_dir)
    train_sites, test_sites = resolve_site_roles(task, present, request.train_sites, request.test_sites,
                                                 request.data_dir)
    if mode != "synthetic" and not train_sites:
        raise InputFileError(request.data_dir, f"none of the default training sites "
                                               f"({', '.join(DEFAULT_SITE_ROLES[task][0])}) is in the data (sites "
                                               f"present: {', '.join(present) or 'none'}); name them with --train-sites")
    if not test_sites:
        log.warning("no test site in the data: only out-of-fold predictions of the training subjects are written")
    real = load_subjects(request.data_dir, config, sorted({*train_sites, *test_sites}), request.cache_dir,
                         request.skip_invalid)
    synthetic: list[PreparedSubject] = []
    if needs_synthetic:
        synthetic = _load_synthetic(config, request, task)
    real_train = [s for s in real if s.site in train_sites and s.split != "test"]
    test = [s for s in real if s.site in test_sites or (s.site in train_sites and s.split == "test")]
    cohorts = _cohorts(request, real_train, synthetic, test, train_sites)
    for cohort in cohorts:
        cohort.train = _training_subjects(cohort, task)
        cohort.folds = assign_folds([s.label(task) for s in cohort.train], [s.site for s in cohort.train],
                                    config.classifier.folds, derived_seed(seed, "folds"))
    check_grid(config.classifier, config.data.grid)
    return CheckedRequest(request, train_sites, test_sites, cohorts, seed)


def _load_synthetic(config: StudyConfig, request: TrainingRequest, task: str) -> list[PreparedSubject]:
    synthetic_dir = request.synthetic_dir
    assert synthetic_dir is not None
    check_synthetic_source(synthetic_dir, task)
    sites = dataset_sites(synthetic_dir)
    if request.train_sites:  # --train-sites also picks which sites' synthetic cases train
        wanted = {f"{SYNTHETIC_PREFIX}{site}" for site in request.train_sites} | set(request.train_sites)
        sites = [site for site in sites if site in wanted]
        if not sites:
            raise InputFileError(synthetic_dir, f"no synthetic site for --train-sites {', '.join(request.train_sites)} "
                                                f"(expected {SYNTHETIC_PREFIX}<site> folders)")
    subjects = load_subjects(synthetic_dir, config, sites, request.cache_dir, request.skip_invalid)
    if not subjects:
        raise InputFileError(synthetic_dir, "no synthetic cases")
    check_synthetic_labels(subjects, synthetic_dir, task)
    return subjects


def _cohorts(request: TrainingRequest, real_train: list[PreparedSubject], synthetic: list[PreparedSubject],
             test: list[PreparedSubject], train_sites: tuple[str, ...]) -> list[Cohort]:
    out = request.out_dir
    if request.mode == "local":
        return [Cohort(f"local-{site}", out / f"local-{site}", [s for s in real_train if s.site == site], test, (site,))
                for site in train_sites]
    if request.mode == "synthetic":
        sites = tuple(sorted({s.site for s in synthetic}))
        return [Cohort("synthetic", out, list(synthetic), test, sites)]
    if request.mode == "mixed" and not request.augment_only:
        sites = (*train_sites, *sorted({s.site for s in synthetic}))
        return [Cohort("mixed", out, real_train + synthetic, test, sites)]
    return [Cohort("augment-only" if request.augment_only else "centralized", out, real_train, test, train_sites)]


def _training_subjects(cohort: Cohort, task: str) -> list[PreparedSubject]:
    """The cohort's subjects labelled for ``task`` (others skipped with a warning); every class needs a subject."""
    class_names = TASK_CLASSES[task]
    labelled = labelled_subjects(cohort.train, task, class_names, warn=False)
    skipped = len(cohort.train) - len(labelled)
    if skipped:
        log.warning("%s: %d training subject(s) without a %s label are skipped: %s", cohort.label, skipped, task,
                    ", ".join([s.subject_id for s in cohort.train if s.label(task) not in class_names][:5]))
    counts = class_counts(labelled, task, class_names)
    empty = [name for name, count in counts.items() if count == 0]
    if empty:
        where = ", ".join(cohort.train_sites) or "the training data"
        raise CatphishError(f"{cohort.label}: no training subject of class '{empty[0]}' for task {task} in "
                            f"{where} (class counts: {_counts_text(counts)}); every class needs training subjects")
    return labelled


def _counts_text(counts: dict[str, int]) -> str:
    return ", ".join(f"{name} {count}" for name, count in counts.items())


# --------------------------------------------------------------------------------------------------- training
def run_training(config: StudyConfig, request: TrainingRequest) -> dict[str, Any]:
    """Check the input, train every cohort of the mode with k-fold CV, and write the run folder(s)."""
    if request.augment_only:
        config = copy.deepcopy(config)
        config.classifier.augment = True
    checked = check_request(config, request)
    fingerprint = {"command": "train", "mode": request.mode, "task": request.task, "config": config.to_dict(),
                   "seed": checked.seed, "data": str(request.data_dir.resolve()),
                   "synthetic": str(request.synthetic_dir.resolve()) if request.synthetic_dir else None,
                   "train_sites": checked.train_sites, "test_sites": checked.test_sites,
                   "augment_only": request.augment_only}
    resuming = open_output_dir(request.out_dir, fingerprint, resume=request.resume, overwrite=request.overwrite,
                               what="run")
    device = resolve_device()
    inputs = [request.data_dir] + ([request.synthetic_dir] if request.synthetic_dir else [])
    command = f"train --mode {request.mode} --task {request.task}" + (" --augment-only" if request.augment_only else "")
    summaries = {}
    with run_record(request.out_dir, command, config.to_dict(), checked.seed, inputs=inputs) as record:
        record.add(mode=request.mode, task=request.task, train_sites=list(checked.train_sites),
                   test_sites=list(checked.test_sites), device=str(device), resumed=resuming)
        predictions: list[Prediction] = []
        for cohort in checked.cohorts:
            summary, rows = train_cohort(config, cohort, request.task, device, checked.seed, command, inputs)
            summaries[cohort.label] = summary
            predictions.extend(rows)
        if request.mode == "local":  # one file for evaluation, modes local-<site> kept apart
            write_predictions(request.out_dir / PREDICTIONS_NAME, predictions, TASK_CLASSES[request.task])
            write_json(request.out_dir / SUMMARY_NAME, summaries)
        record.add(results=summaries)
    return summaries


def train_cohort(config: StudyConfig, cohort: Cohort, task: str, device: torch.device, seed: int, command: str,
                 inputs: list[Path]) -> tuple[dict[str, Any], list[Prediction]]:
    """K-fold training of every stage on one cohort; writes its model, predictions, folds.csv and summary."""
    folder = cohort.folder
    folder.mkdir(parents=True, exist_ok=True)
    nested = cohort.label.startswith("local-")  # a local sub-run gets its own run.json
    record = RunRecord(folder, command + f" ({cohort.label})", config.to_dict(), seed, inputs) if nested else None
    stages = task_stages(task)
    folds = config.classifier.folds
    log.info("%s: %d training subjects (%s), %d test subjects, %d folds × %d epochs on %s", cohort.label,
             len(cohort.train), _counts_text(class_counts(cohort.train, task, TASK_CLASSES[task])), len(cohort.test),
             folds, config.classifier.epochs, device)
    oof: dict[str, np.ndarray] = {}
    test_probs: dict[str, np.ndarray] = {}
    models: dict[str, list[torch.nn.Module]] = {}
    fold_rows: list[dict[str, Any]] = []
    for stage in stages:
        results = _train_stage(config, cohort, stage, task, device, seed)
        models[stage.name] = [r.model for r in results]
        stage_oof, stage_test, rows = _stage_predictions(cohort, stage, task, results, device)
        oof[stage.name], test_probs[stage.name] = stage_oof, stage_test
        fold_rows.extend(rows)
    combined_test = combine_stages(task, test_probs) if cohort.test else np.zeros((0, len(TASK_CLASSES[task])))
    combined_oof = combine_stages(task, oof)
    predictions = _prediction_rows(cohort.test, cohort.label, task, "ensemble", combined_test, test_probs)
    for fold in range(folds):
        members = np.flatnonzero(cohort.folds == fold)
        subjects = [cohort.train[i] for i in members]
        predictions += _prediction_rows(subjects, cohort.label, task, str(fold), combined_oof[members],
                                        {name: probs[members] for name, probs in oof.items()})
    summary = _summary(cohort, task, stages, combined_test, test_probs, combined_oof, oof, fold_rows)
    save_ensemble(folder, task, cohort.label, config, stages, models,
                  {"train_sites": list(cohort.train_sites), "seed": seed, "folds": folds,
                   "train_class_counts": class_counts(cohort.train, task, TASK_CLASSES[task])})
    write_predictions(folder / PREDICTIONS_NAME, predictions, TASK_CLASSES[task])
    _write_folds(folder / FOLDS_NAME, fold_rows)
    write_json(folder / SUMMARY_NAME, summary)
    if record is not None:
        record.add(mode=cohort.label, task=task, results=summary)
        record.write("finished")
    return summary, predictions


def _train_stage(config: StudyConfig, cohort: Cohort, stage: Stage, task: str, device: torch.device,
                 seed: int) -> list[FoldResult]:
    """The fold models of one stage; fold k trains on the stage's subjects outside fold k."""
    classifier = config.classifier
    results = []
    with progress_bar() as progress:
        for fold in range(classifier.folds):
            subjects = [stage.relabelled(s, task) for s, f in zip(cohort.train, cohort.folds, strict=True)
                        if f != fold and stage.takes(s, task)]
            counts = class_counts(subjects, task, stage.class_names)
            if any(count == 0 for count in counts.values()):
                log.warning("%s %s fold %d: a class has no training subject (%s)", cohort.label, stage.name, fold,
                            _counts_text(counts))
            bar = progress.add_task(f"{cohort.label} {stage.name} fold {fold + 1}/{classifier.folds}",
                                    total=classifier.epochs, status="")
            progress.update(bar, completed=0)

            def advance(epoch: int, loss: float, bar: Any = bar) -> None:
                progress.update(bar, completed=epoch, status=f"loss {loss:.3f}")

            checkpoint = cohort.folder / "checkpoints" / f"{stage.name}-fold{fold}.safetensors"
            result = train_fold(
                lambda n=len(stage.class_names): build_classifier(classifier, config.data.spatial_dims, n),
                subjects, list(stage.class_names), task, classifier, device, derived_seed(seed, stage.name), fold,
                checkpoint=checkpoint, progress=advance)
            progress.update(bar, completed=classifier.epochs)
            log.info("%s %s fold %d: %d subjects, %.1f s (%.2f s/epoch), final loss %.3f", cohort.label, stage.name,
                     fold, len(subjects), result.seconds, result.seconds / max(classifier.epochs, 1), result.final_loss)
            results.append(result)
    return results


def _stage_predictions(cohort: Cohort, stage: Stage, task: str, results: list[FoldResult],
                       device: torch.device) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Out-of-fold probabilities (every training subject, by its fold's model), the test ensemble, fold metrics."""
    from catphish.training.classifier import predict_subjects

    oof = np.zeros((len(cohort.train), len(stage.class_names)))
    single_test = []
    rows = []
    for result in results:
        members = np.flatnonzero(cohort.folds == result.fold)
        started = time.perf_counter()
        oof[members] = predict_subjects(result.model, [cohort.train[i] for i in members], stage.class_names, device)
        test = predict_subjects(result.model, cohort.test, stage.class_names, device) if cohort.test else \
            np.zeros((0, len(stage.class_names)))
        predict_seconds = time.perf_counter() - started
        single_test.append(test)
        validation = [(cohort.train[i], oof[i]) for i in members if stage.takes(cohort.train[i], task)]
        rows.append({
            "mode": cohort.label, "stage": stage.name, "fold": result.fold, "train_subjects": result.train_subjects,
            "validation_subjects": len(validation), "epochs": result.epochs,
            "train_seconds": round(result.seconds, 3),
            "seconds_per_epoch": round(result.seconds / max(result.epochs, 1), 4),
            "predict_seconds": round(predict_seconds, 3), "final_loss": round(result.final_loss, 5),
            **_prefixed("validation", _binary_scores(stage, task, [s for s, _ in validation],
                                                      np.array([p for _, p in validation]))),
            **_prefixed("test", _binary_scores(stage, task, cohort.test, test)),
        })
    ensemble = np.mean(single_test, axis=0) if cohort.test else np.zeros((0, len(stage.class_names)))
    return oof, ensemble, rows


def _prefixed(prefix: str, values: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}_{name}": value for name, value in values.items()}


def _binary_scores(stage: Stage, task: str, subjects: Sequence[PreparedSubject], probs: np.ndarray) -> dict[str, float]:
    """AUC (positive = the stage's first class) and accuracy on the subjects with a label for the stage."""
    from sklearn.metrics import roc_auc_score

    keep = [i for i, s in enumerate(subjects) if stage.takes(s, task)]
    if not keep:
        return {"auc": float("nan"), "accuracy": float("nan"), "subjects": 0}
    truth = np.array([stage.class_names.index(stage.relabel[subjects[i].label(task)]) for i in keep])
    chosen = probs[keep]
    accuracy = float(np.mean(chosen.argmax(1) == truth))
    auc = float("nan")
    if len(stage.class_names) == 2 and len(set(truth.tolist())) == 2:
        auc = float(roc_auc_score(truth == 0, chosen[:, 0]))
    return {"auc": round(auc, 4), "accuracy": round(accuracy, 4), "subjects": len(keep)}


def _prediction_rows(subjects: Sequence[PreparedSubject], mode: str, task: str, fold: str, combined: np.ndarray,
                     per_stage: dict[str, np.ndarray]) -> list[Prediction]:
    """predictions.csv rows: the combined row per subject, and for tumour type its stage-1 and stage-2 rows."""
    class_names = TASK_CLASSES[task]
    rows = []
    for index, subject in enumerate(subjects):
        truth = subject.label(task) if subject.label(task) in class_names else ""
        rows.append(Prediction(subject.subject_id, subject.site, mode, task, fold, truth,
                               dict(zip(class_names, map(float, combined[index]), strict=True))))
        if task == "tumor_type":
            for stage in ("stage1", "stage2"):
                probabilities = stage_rows(task, stage, per_stage[stage][index:index + 1],
                                           per_stage["stage2"][index:index + 1])[0]
                rows.append(Prediction(subject.subject_id, subject.site, mode, task, fold, truth, probabilities,
                                       stage=stage))
    return rows


def _summary(cohort: Cohort, task: str, stages: list[Stage], combined_test: np.ndarray,
             test_probs: dict[str, np.ndarray], combined_oof: np.ndarray, oof: dict[str, np.ndarray],
             fold_rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Headline numbers of one cohort: per stage the ensemble on test (overall and per site), the mean single fold,
    out-of-fold; and for tumour type the 3-class accuracy."""
    summary: dict[str, Any] = {"mode": cohort.label, "task": task, "train_subjects": len(cohort.train),
                               "test_subjects": len(cohort.test), "train_sites": list(cohort.train_sites),
                               "train_seconds": round(sum(r["train_seconds"] for r in fold_rows), 2), "stages": {}}
    for stage in stages:
        rows = [r for r in fold_rows if r["stage"] == stage.name]
        per_site = {}
        for site in sorted({s.site for s in cohort.test}):
            members = [i for i, s in enumerate(cohort.test) if s.site == site]
            per_site[site] = _binary_scores(stage, task, [cohort.test[i] for i in members], test_probs[stage.name][members])
        summary["stages"][stage.name] = {
            "ensemble_test": _binary_scores(stage, task, cohort.test, test_probs[stage.name]),
            "ensemble_test_per_site": per_site,
            "single_fold_test_auc_mean": _nanmean([r["test_auc"] for r in rows]),
            "single_fold_test_accuracy_mean": _nanmean([r["test_accuracy"] for r in rows]),
            "out_of_fold": _binary_scores(stage, task, cohort.train, oof[stage.name]),
            "seconds_per_fold": [r["train_seconds"] for r in rows],
        }
    if task == "tumor_type":
        summary["combined_test_accuracy"] = _accuracy(cohort.test, task, combined_test)
        summary["combined_out_of_fold_accuracy"] = _accuracy(cohort.train, task, combined_oof)
    return summary


def _accuracy(subjects: Sequence[PreparedSubject], task: str, probs: np.ndarray) -> float:
    class_names = TASK_CLASSES[task]
    keep = [i for i, s in enumerate(subjects) if s.label(task) in class_names]
    if not keep:
        return float("nan")
    truth = np.array([class_names.index(subjects[i].label(task)) for i in keep])
    return round(float(np.mean(probs[keep].argmax(1) == truth)), 4)


def _nanmean(values: Sequence[float]) -> float:
    finite = [v for v in values if v == v]
    return round(float(np.mean(finite)), 4) if finite else float("nan")


def _write_folds(path: Path, rows: list[dict[str, Any]]) -> None:
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buffer.getvalue())


# ------------------------------------------------------------------------------------------------- prediction
def predict_dataset(run: Path, data_dir: Path, out: Path, sites: Sequence[str] | None = None,
                    cache_dir: Path | None = None, skip_invalid: bool = False) -> list[Prediction]:
    """Apply a trained ensemble to any dataset and write predictions.csv (``fold`` = ``ensemble``)."""
    from catphish.training.ensemble import load_ensemble

    device = resolve_device()
    ensemble = load_ensemble(run, device)
    present = dataset_sites(data_dir)
    for site in sites or ():
        if site not in present:
            raise InputFileError(data_dir, f"site '{site}' is not in the data (sites present: {', '.join(present)})")
    chosen = list(sites) if sites else present
    if out.is_dir():
        raise InputFileError(out, "is a folder; give the path of the predictions file to write")
    subjects = load_subjects(data_dir, ensemble.config, chosen, cache_dir, skip_invalid)
    if not subjects:
        raise InputFileError(data_dir, "no subjects to predict")
    record = RunRecord(out.parent, f"predict {run}", ensemble.config.to_dict(), settings.seed, inputs=[data_dir, run])
    record.path = _predict_record_path(out)
    combined, per_stage = ensemble.predict(subjects, device)
    rows = _prediction_rows(subjects, ensemble.mode, ensemble.task, "ensemble", combined, per_stage)
    write_predictions(out, rows, ensemble.class_names)
    record.add(run=str(run), predictions=str(out), subjects=len(subjects), task=ensemble.task, mode=ensemble.mode)
    record.write("finished")
    log.info("predicted %d subjects with %s (%s, %s) → %s", len(subjects), run, ensemble.task, ensemble.mode, out)
    return rows


def _predict_record_path(out: Path) -> Path:
    """``run.json`` beside the predictions, unless that would replace another command's record (then ``<name>.run.json``)."""
    record = out.parent / "run.json"
    if record.exists():
        try:
            command = str(read_json(record).get("command", ""))
        except CatphishError:
            command = ""
        if not command.startswith("predict"):
            return out.parent / f"{out.stem}.run.json"
    return record
