"""What a finished federated run leaves behind, in the same formats as every other mode: the global model(s) as a
classifier run ``model/`` folder (so ``catphish predict RUN`` applies them) and ``predictions.csv``."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from catphish.data.prepared import load_prepared_dir
from catphish.evaluation.predictions import Prediction, write_predictions
from catphish.runtime import log
from catphish.training.ensemble import combine_stages, save_ensemble, stage_rows, task_stages

if TYPE_CHECKING:
    from catphish.federated.server_app import FederatedSetup
    from catphish.federated.task import ClassifierFunctions

PREDICTIONS_NAME = "predictions.csv"


def save_federated_model(out: Path, models: dict[str, torch.nn.Module], setup: FederatedSetup) -> Path:
    """``out/model/``: one global model per stage (a one-model "ensemble"), config and manifest."""
    federated = setup.study["federated"]
    info = {"federated": {"strategy": federated["strategy"], "rounds": federated["rounds"],
                          "partition": federated["partition"], "clients": len(setup.plan["clients"])}}
    return save_ensemble(out, setup.task, "federated", setup.config, task_stages(setup.task),
                         {name: [model] for name, model in models.items()}, info)


def write_federated_predictions(out: Path, models: dict[str, torch.nn.Module], functions: ClassifierFunctions,
                                setup: FederatedSetup) -> int:
    """Predict every labelled subject of the test sites (``fold`` = ``ensemble``; tumour type adds stage rows)."""
    if not setup.data_dir or not setup.test_sites:
        log.warning("no test sites given: predictions.csv is not written")
        return 0
    class_names = setup.class_names
    subjects = [s for s in load_prepared_dir(setup.data_dir, sites=setup.test_sites) if s.label(setup.task) in class_names]
    if not subjects:
        log.warning("the test sites %s hold no subjects labelled for %s", ", ".join(setup.test_sites), setup.task)
        return 0
    device = torch.device(setup.device)
    per_stage = {stage.name: np.asarray(functions.predict_subjects(models[stage.name], subjects,
                                                                   list(stage.class_names), device))
                 for stage in task_stages(setup.task)}
    combined = combine_stages(setup.task, per_stage)
    rows = []
    for index, subject in enumerate(subjects):
        truth = subject.label(setup.task)
        rows.append(Prediction(subject.subject_id, subject.site, "federated", setup.task, "ensemble", truth,
                               dict(zip(class_names, map(float, combined[index]), strict=True))))
        if len(per_stage) > 1:
            for stage, probabilities in per_stage.items():
                values = stage_rows(setup.task, stage, probabilities[index:index + 1],
                                    per_stage["stage2"][index:index + 1])[0]
                rows.append(Prediction(subject.subject_id, subject.site, "federated", setup.task, "ensemble", truth,
                                       values, stage=stage))
    write_predictions(out / PREDICTIONS_NAME, rows, class_names)
    return len(subjects)
