"""K-fold cross-validation of the downstream classifier: stratified folds, resumable fold training, the fold ensemble.

Folds are stratified by class × site, so every fold sees each site's class mix (the paper's 5-fold set-up). Each fold
model trains on the other folds; its predictions on its own fold are the out-of-fold predictions of the training
subjects, and the mean probability of all fold models is the ensemble prediction on test subjects.

A fold checkpoints after every ``classifier.checkpoint_every`` epochs (weights, SGD momentum, schedule position,
losses, time) through :mod:`catphish.artifacts`; training that stopped continues from there with ``--resume``.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from catphish.artifacts import load_state, save_state
from catphish.config import ClassifierConfig
from catphish.data.prepared import PreparedSubject
from catphish.errors import CatphishError
from catphish.runtime import log
from catphish.training.classifier import predict_subjects, train_epochs


def assign_folds(labels: Sequence[str], sites: Sequence[str], folds: int, seed: int) -> np.ndarray:
    """Fold index of every subject, stratified by class × site (by class alone where class × site groups are tiny).

    Fewer subjects than folds is an error: some fold would have no subject to validate on.
    """
    from sklearn.model_selection import KFold, StratifiedKFold

    count = len(labels)
    if count < folds:
        raise CatphishError(f"{count} training subject(s) are fewer than classifier.folds={folds}; use more subjects "
                            f"or fewer folds (--set classifier.folds=N, at least 2)")
    assignment = np.zeros(count, dtype=int)
    index = np.arange(count)
    for strata in ([f"{label}|{site}" for label, site in zip(labels, sites, strict=True)], list(labels)):
        _, sizes = np.unique(strata, return_counts=True)
        if sizes.max() >= folds:
            splitter: Any = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed % (2**32))
            with warnings.catch_warnings():  # small strata simply spread over fewer folds
                warnings.simplefilter("ignore", UserWarning)
                for fold, (_, held_out) in enumerate(splitter.split(index, strata)):
                    assignment[held_out] = fold
            return assignment
    for fold, (_, held_out) in enumerate(KFold(n_splits=folds, shuffle=True, random_state=seed % (2**32)).split(index)):
        assignment[held_out] = fold
    return assignment


def derived_seed(seed: int, *parts: object) -> int:
    """A reproducible seed for one piece of the run (a stage, a fold, an epoch)."""
    text = ":".join(map(str, (seed, *parts)))
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:4], "little")


@dataclass
class FoldResult:
    """One trained fold model and what it cost."""

    fold: int
    model: nn.Module
    train_subjects: int
    epochs: int
    seconds: float
    losses: list[float] = field(default_factory=list)
    resumed_from_epoch: int = 0

    @property
    def final_loss(self) -> float:
        return self.losses[-1] if self.losses else float("nan")


def train_fold(make_model: Callable[[], nn.Module], subjects: list[PreparedSubject], class_names: list[str], task: str,
               config: ClassifierConfig, device: torch.device, seed: int, fold: int,
               checkpoint: Path | None = None, progress: Callable[[int, float], None] | None = None) -> FoldResult:
    """Train one fold model for ``config.epochs`` epochs, continuing from ``checkpoint`` when it exists."""
    torch.manual_seed(derived_seed(seed, fold, "init"))  # the same initial weights on every run of this fold
    model = make_model()
    optimizer_state: dict[str, Any] = {"epoch": 0, "total_epochs": config.epochs}
    losses: list[float] = []
    seconds = 0.0
    saved = load_state(checkpoint) if checkpoint is not None and checkpoint.exists() else None
    if saved is not None:
        model.load_state_dict(saved["model"])
        optimizer_state, losses, seconds = saved["optimizer_state"], list(saved["losses"]), float(saved["seconds"])
    resumed = int(optimizer_state["epoch"])
    if resumed:
        log.info("fold %d: resuming after epoch %d of %d", fold, resumed, config.epochs)
    for epoch in range(resumed, config.epochs):
        started = time.perf_counter()
        result = train_epochs(model, subjects, class_names, task, config, 1, device, derived_seed(seed, fold, epoch),
                              optimizer_state=optimizer_state)
        seconds += time.perf_counter() - started
        optimizer_state = result["optimizer_state"]
        losses.append(result["loss"])
        last = epoch + 1 == config.epochs
        if checkpoint is not None and (last or (epoch + 1) % max(1, config.checkpoint_every) == 0):
            save_state(checkpoint, {"model": model.state_dict(), "optimizer_state": optimizer_state,
                                    "losses": losses, "seconds": seconds, "done": last})
        if progress is not None:
            progress(epoch + 1, result["loss"])
    return FoldResult(fold=fold, model=model, train_subjects=len(subjects), epochs=config.epochs, seconds=seconds,
                      losses=losses, resumed_from_epoch=resumed)


def ensemble_probabilities(models: Sequence[nn.Module], subjects: Sequence[PreparedSubject], class_names: Sequence[str],
                           device: torch.device) -> tuple[np.ndarray, list[np.ndarray]]:
    """The mean probability of the fold models, and each fold model's own probabilities."""
    if not subjects:
        empty = np.zeros((0, len(class_names)))
        return empty, [empty for _ in models]
    single = [predict_subjects(model, subjects, class_names, device) for model in models]
    return np.mean(single, axis=0), single
