"""The trained classifier of one run: its stages, the fold models of each stage, and the combined prediction.

IDH is one binary stage. Tumour type is two (DESIGN §1): stage 1 glioblastoma vs lower-grade on every subject, stage 2
oligodendroglioma vs astrocytoma on the lower-grade ones; the 3-class probability multiplies them
(p_oligo = p_lower-grade · p_oligo|lower-grade, p_astro likewise, p_GBM from stage 1).

On disk (through :mod:`catphish.artifacts`) a run's ``model/`` folder holds ``config.json`` (task, stages, classes,
the study config that rebuilds every network) and one ``<stage>-fold<k>.safetensors`` per fold model, with a
``manifest.json`` of sha256 hashes — a folder any tool can open, that :func:`load_ensemble` verifies before use.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from catphish.artifacts import load_tensors, read_json, save_tensors, verify_folder, write_json, write_manifest
from catphish.config import TASK_CLASSES, StudyConfig, config_from_dict
from catphish.data.prepared import PreparedSubject
from catphish.errors import ArtifactError, CatphishError
from catphish.training.classifier import build_classifier, predict_subjects

MODEL_FOLDER = "model"
MODEL_KIND = "classifier"
CONFIG_NAME = "config.json"
LOWER_GRADE = "lower-grade"


@dataclass(frozen=True)
class Stage:
    """One binary (or multi-class) model of a task: its classes and how a subject's task label maps onto them."""

    name: str
    class_names: tuple[str, ...]
    relabel: dict[str, str]
    """Task label → this stage's class; subjects with other labels are not trained on in this stage."""

    def takes(self, subject: PreparedSubject, task: str) -> bool:
        return subject.label(task) in self.relabel

    def relabelled(self, subject: PreparedSubject, task: str) -> PreparedSubject:
        """The subject with its stage class as the ``task`` label (the image is shared, not copied)."""
        return dataclasses.replace(subject, **{task: self.relabel[subject.label(task)]})


def task_stages(task: str) -> list[Stage]:
    """The stages of ``task``: one for IDH, two for tumour type."""
    if task == "idh":
        return [Stage("idh", TASK_CLASSES["idh"], {name: name for name in TASK_CLASSES["idh"]})]
    if task == "tumor_type":
        return [
            Stage("stage1", ("glioblastoma", LOWER_GRADE), {"glioblastoma": "glioblastoma",
                                                            "oligodendroglioma": LOWER_GRADE, "astrocytoma": LOWER_GRADE}),
            Stage("stage2", ("oligodendroglioma", "astrocytoma"), {"oligodendroglioma": "oligodendroglioma",
                                                                   "astrocytoma": "astrocytoma"}),
        ]
    raise CatphishError(f"unknown task '{task}' (choose from {', '.join(TASK_CLASSES)})")


def combine_stages(task: str, stage_probabilities: dict[str, np.ndarray]) -> np.ndarray:
    """Task-class probabilities (subjects, classes in ``TASK_CLASSES[task]`` order) from the stages' probabilities."""
    if task == "idh":
        return stage_probabilities["idh"]
    first, second = stage_probabilities["stage1"], stage_probabilities["stage2"]
    glioblastoma, lower_grade = first[:, 0], first[:, 1]
    return np.stack([lower_grade * second[:, 0], lower_grade * second[:, 1], glioblastoma], axis=1)


def stage_rows(task: str, stage: str, probabilities: np.ndarray, stage2: np.ndarray | None = None
               ) -> list[dict[str, float]]:
    """A stage's probabilities in the task's class columns (predictions.csv stage rows).

    Stage 1 puts p(glioblastoma) in its column and p(lower-grade) in the lower-grade class stage 2 finds more likely
    (``stage2``; split evenly without it), so that a stage-1 row's ``y_pred`` is glioblastoma exactly when stage 1
    says so; stage 2 puts its two classes in theirs and 0 for glioblastoma. Evaluation reads stage 1 as
    p_glioblastoma / Σp and stage 2 as p_oligodendroglioma / (p_oligodendroglioma + p_astrocytoma).
    """
    if stage == "stage1":
        rows = []
        for index, p in enumerate(probabilities):
            lower = 1.0 - float(p[0])
            if stage2 is None:
                split = {"oligodendroglioma": lower / 2, "astrocytoma": lower / 2}
            else:
                likely = "oligodendroglioma" if stage2[index][0] >= stage2[index][1] else "astrocytoma"
                split = {"oligodendroglioma": 0.0, "astrocytoma": 0.0, likely: lower}
            rows.append({**split, "glioblastoma": float(p[0])})
        return rows
    if stage == "stage2":
        return [{"oligodendroglioma": float(p[0]), "astrocytoma": float(p[1]), "glioblastoma": 0.0} for p in probabilities]
    return [dict(zip(TASK_CLASSES[task], map(float, p), strict=True)) for p in probabilities]


@dataclass
class ClassifierEnsemble:
    """The fold models of every stage of one trained run, ready to predict."""

    task: str
    mode: str
    config: StudyConfig
    stages: list[Stage]
    models: dict[str, list[nn.Module]]
    info: dict[str, Any]

    @property
    def class_names(self) -> tuple[str, ...]:
        return TASK_CLASSES[self.task]

    def predict(self, subjects: Sequence[PreparedSubject], device: torch.device) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Ensemble (mean over folds) probabilities per stage, and the combined task-class probabilities."""
        per_stage = {}
        for stage in self.stages:
            single = [predict_subjects(model, subjects, stage.class_names, device) for model in self.models[stage.name]]
            per_stage[stage.name] = np.mean(single, axis=0)
        return combine_stages(self.task, per_stage), per_stage


def weights_name(stage: str, fold: int) -> str:
    return f"{stage}-fold{fold}.safetensors"


def save_ensemble(run_dir: Path, task: str, mode: str, config: StudyConfig, stages: Sequence[Stage],
                  models: dict[str, list[nn.Module]], info: dict[str, Any]) -> Path:
    """Write ``run_dir/model/``: weights of every fold model, ``config.json``, then the manifest (last)."""
    folder = run_dir / MODEL_FOLDER
    files: dict[str, list[str]] = {}
    for stage in stages:
        files[stage.name] = []
        for fold, model in enumerate(models[stage.name]):
            name = weights_name(stage.name, fold)
            save_tensors(folder / name, dict(model.state_dict()),
                         metadata={"task": task, "stage": stage.name, "fold": str(fold), "mode": mode})
            files[stage.name].append(name)
    write_json(folder / CONFIG_NAME, {
        "kind": "catphish-classifier", "task": task, "mode": mode, "class_names": list(TASK_CLASSES[task]),
        "spatial_dims": config.data.spatial_dims, "grid": list(config.data.grid),
        "stages": [{"name": s.name, "class_names": list(s.class_names), "relabel": s.relabel, "files": files[s.name]}
                   for s in stages],
        "config": config.to_dict(), **info,
    })
    write_manifest(folder, MODEL_KIND, {"task": task, "mode": mode})
    return folder


def find_model_folder(run: Path) -> Path:
    """``run/model`` (or ``run`` itself when it is the model folder); a local-mode parent names its sub-runs."""
    run = Path(run)
    if (run / CONFIG_NAME).is_file() and (run / "manifest.json").is_file():
        return run
    if (run / MODEL_FOLDER).is_dir():
        return run / MODEL_FOLDER
    subruns = sorted(p.name for p in run.glob("local-*") if (p / MODEL_FOLDER).is_dir())
    if subruns:
        raise CatphishError(f"{run}: a local-mode run holds one model per site; give one of "
                            f"{', '.join(str(run / name) for name in subruns)}")
    raise ArtifactError(f"{run}: no trained classifier here (expected {MODEL_FOLDER}/ from `catphish train`)")


def load_ensemble(run: Path, device: torch.device | str = "cpu") -> ClassifierEnsemble:
    """Verify and load a run's fold models (hashes checked, no pickle)."""
    folder = find_model_folder(run)
    verify_folder(folder, kind=MODEL_KIND)
    meta = read_json(folder / CONFIG_NAME)
    try:
        task, mode = str(meta["task"]), str(meta["mode"])
        config = config_from_dict(meta["config"])
        stages = [Stage(s["name"], tuple(s["class_names"]), dict(s["relabel"])) for s in meta["stages"]]
        files = {s["name"]: list(s["files"]) for s in meta["stages"]}
    except (KeyError, TypeError) as exc:
        raise ArtifactError(f"{folder.name}/{CONFIG_NAME}: malformed classifier config (missing {exc})") from None
    models: dict[str, list[nn.Module]] = {}
    for stage in stages:
        models[stage.name] = []
        for name in files[stage.name]:
            model = build_classifier(config.classifier, config.data.spatial_dims, len(stage.class_names))
            try:
                model.load_state_dict(load_tensors(folder / name, device="cpu"))
            except RuntimeError as exc:
                raise ArtifactError(f"{name}: weights do not fit the network in {CONFIG_NAME} ({str(exc)[:200]})") from None
            models[stage.name].append(model.to(device).eval())
    info = {k: v for k, v in meta.items() if k not in ("config", "stages")}
    return ClassifierEnsemble(task=task, mode=mode, config=config, stages=stages, models=models, info=info)
