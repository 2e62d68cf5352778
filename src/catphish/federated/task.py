"""Framework-free pieces the Flower apps adapt: which data a client holds, local training, evaluation, metrics.

Training and prediction are the downstream classifier's own functions (``catphish.training.classifier``:
``build_classifier``, ``train_epochs``, ``predict_subjects``), exactly what the centralized mode calls; nothing here
imports Flower. The module holding those functions is named in the run setup so tests can inject a tiny stand-in.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from catphish.config import ClassifierConfig, StudyConfig, merge_dict
from catphish.data.prepared import PreparedSubject, load_prepared_dir
from catphish.errors import CatphishError

DEFAULT_TRAINER = "catphish.training.classifier"
_SUBJECT_CACHE: dict[tuple[str, tuple[str, ...] | None, str | None], list[PreparedSubject]] = {}
"""Per process (a Ray actor or a SuperNode's ClientApp process): subjects already read, so rounds do not re-read."""


class SimulatedDropout(RuntimeError):
    """A client failing on purpose (``federated.dropout_probability``) to test the federation's tolerance."""


@dataclass(frozen=True)
class ClassifierFunctions:
    build_classifier: Callable[..., torch.nn.Module]
    train_epochs: Callable[..., dict[str, Any]]
    predict_subjects: Callable[..., np.ndarray]


def classifier_functions(module: str = DEFAULT_TRAINER) -> ClassifierFunctions:
    """The classifier's training functions from ``module`` (the real one unless a test injects another)."""
    try:
        found = importlib.import_module(module)
    except ImportError as exc:
        raise CatphishError(f"cannot import the classifier training module '{module}' ({exc})") from None
    try:
        return ClassifierFunctions(found.build_classifier, found.train_epochs, found.predict_subjects)
    except AttributeError as exc:
        raise CatphishError(f"module '{module}' lacks a classifier training function ({exc})") from None


def classifier_config_from_dict(values: dict[str, Any]) -> ClassifierConfig:
    """Rebuild the classifier section sent by the server (lists back to tuples, keys checked)."""
    return merge_dict(StudyConfig(), {"classifier": dict(values)}).classifier


# ---------------------------------------------------------------------------------------------- client data
@dataclass(frozen=True)
class ClientSource:
    """Where one client's training subjects are: a prepared cache, optionally narrowed to a site or subject list."""

    name: str
    data_dir: str
    subject_ids: tuple[str, ...] | None = None
    site: str | None = None
    trainer: str = DEFAULT_TRAINER
    device: str = "cpu"

    @classmethod
    def from_node_config(cls, node_config: dict[str, Any]) -> ClientSource:
        """A deployed SuperNode's own settings (``--node-config "data-dir='…' site='TCGA'"``)."""
        data_dir = str(node_config.get("data-dir", ""))
        if not data_dir:
            raise CatphishError("this SuperNode has no data: start it with --node-config \"data-dir='/path/to/prepared'\" "
                                "(and optionally site='NAME')")
        site = str(node_config["site"]) if node_config.get("site") else None
        subject_ids = None
        if node_config.get("plan-file"):
            from catphish.artifacts import read_json
            from catphish.federated.partitions import PartitionPlan

            plan = PartitionPlan.from_dict(read_json(node_config["plan-file"]))
            client = plan.client(int(node_config.get("partition-id", 0)))
            subject_ids, site = client.subject_ids, None
            name = client.name
        else:
            name = site or Path(data_dir).name
        return cls(name=str(node_config.get("name", name)), data_dir=data_dir, subject_ids=subject_ids, site=site,
                   trainer=str(node_config.get("trainer", DEFAULT_TRAINER)),
                   device=str(node_config.get("device", "cpu")))


def load_client_subjects(source: ClientSource, task: str, class_names: Sequence[str],
                         relabel: dict[str, str] | None = None) -> list[PreparedSubject]:
    """The client's training subjects labelled for ``task`` (relabelled to a stage's classes when ``relabel`` is
    given); a client without any is a clear error."""
    key = (source.data_dir, source.subject_ids, source.site)
    if key not in _SUBJECT_CACHE:
        subjects = load_prepared_dir(source.data_dir, sites=[source.site] if source.site else None)
        if source.subject_ids is not None:
            wanted = set(source.subject_ids)
            subjects = [s for s in subjects if s.subject_id in wanted]
        else:  # a whole site's cache: its test-split subjects never train
            subjects = [s for s in subjects if s.split != "test"]
        _SUBJECT_CACHE[key] = subjects
    subjects = _SUBJECT_CACHE[key]
    if relabel is not None:
        subjects = [dataclasses.replace(s, **{task: relabel[s.label(task)]}) for s in subjects if s.label(task) in relabel]
    labelled = [s for s in subjects if s.label(task) in class_names]
    if not labelled:
        raise CatphishError(f"client '{source.name}' has no training subjects labelled for task '{task}' "
                            f"in {source.data_dir}")
    return labelled


def class_counts(subjects: Sequence[PreparedSubject], task: str, class_names: Sequence[str]) -> list[int]:
    labels = [s.label(task) for s in subjects]
    return [labels.count(name) for name in class_names]


def drops_out(seed: int, server_round: int, attempt: int, client: str, probability: float) -> bool:
    """Seeded coin flip: does this client fail in this round (and retry attempt)?"""
    if probability <= 0:
        return False
    digest = hashlib.sha256(f"{seed}:{server_round}:{attempt}:{client}".encode()).digest()
    return random.Random(digest).random() < probability


def round_seed(seed: int, server_round: int, client: str) -> int:
    """A distinct, reproducible seed for each client's local training in each round."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{server_round}:{client}".encode()).digest()[:4], "little")


# ------------------------------------------------------------------------------------------- model weights
def model_arrays(model: torch.nn.Module) -> dict[str, np.ndarray]:
    """The model's state dict as numpy arrays (CPU copies), in state-dict order."""
    return {name: value.detach().cpu().numpy().copy() for name, value in model.state_dict().items()}


def load_arrays(model: torch.nn.Module, arrays: dict[str, np.ndarray]) -> None:
    """Load numpy weights into ``model``; a missing or extra tensor means server and client built different models."""
    state = model.state_dict()
    missing, unexpected = sorted(set(state) - set(arrays)), sorted(set(arrays) - set(state))
    if missing or unexpected:
        raise CatphishError(f"model weights do not match the classifier (missing {missing[:3]}, unexpected "
                            f"{unexpected[:3]}); were server and client given the same classifier config?")
    model.load_state_dict({name: torch.from_numpy(np.array(arrays[name], dtype=state[name].detach().cpu().numpy().dtype))
                           for name in state})


# ---------------------------------------------------------------------------------------------------- metrics
def probability_metrics(probabilities: np.ndarray, labels: Sequence[str], class_names: Sequence[str]) -> dict[str, float]:
    """Cross-entropy, accuracy and (one-vs-rest macro) AUC of subject probabilities; AUC is NaN with one class."""
    from sklearn.metrics import roc_auc_score

    index = np.array([list(class_names).index(label) for label in labels])
    probabilities = np.clip(np.asarray(probabilities, dtype=float), 1e-7, 1.0)
    loss = float(-np.mean(np.log(probabilities[np.arange(len(index)), index]))) if len(index) else math.nan
    accuracy = float(np.mean(probabilities.argmax(axis=1) == index)) if len(index) else math.nan
    auc = math.nan
    if len(set(index.tolist())) > 1:
        if len(class_names) == 2:
            auc = float(roc_auc_score(index == 1, probabilities[:, 1]))
        else:
            present = sorted(set(index.tolist()))
            auc = float(np.mean([roc_auc_score(index == c, probabilities[:, c]) for c in present]))
    return {"loss": loss, "accuracy": accuracy, "auc": auc}


def finite(value: Any, default: float = 0.0) -> float:
    """A plain float for Flower's MetricRecord (which refuses numpy and tensor scalars); NaN becomes ``default``."""
    value = float(value)
    return value if math.isfinite(value) else default
