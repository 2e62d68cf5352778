"""Synthetic pre-training then FL fine-tuning: find the initial weights in a finished classifier run folder.

``--set federated.init_from=RUN`` names a classifier run (typically ``catphish train --mode synthetic``, trained on
the hub's synthetic cohort) or a ``.safetensors`` state dict. The federation then starts from those weights instead
of a random model; the classifier config of both runs must describe the same network.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from catphish.artifacts import MANIFEST_NAME, load_state, load_tensors, refuse_pickle, verify_folder
from catphish.errors import CatphishError

_CANDIDATES: tuple[str, ...] = ("global_model.safetensors", "model.safetensors", "fold0/model.safetensors",
                                "models/fold0.safetensors", "fold_0/model.safetensors", "folds/0/model.safetensors")
"""Weight files looked for, in order: a federated run, a single model, then the first fold model of an ensemble."""


def initial_weights_file(init_from: str | Path, stage: str | None = None) -> Path:
    """The weights file to start from; a run folder with a manifest is verified first (tampering, truncation).

    In a classifier run (``model/<stage>-fold<k>.safetensors``) the first fold model of ``stage`` is taken.
    """
    path = Path(init_from).expanduser()
    if path.is_file():
        refuse_pickle(path)
        if path.suffix != ".safetensors":
            raise CatphishError(f"{path.name}: initial weights must be a .safetensors file or a classifier run folder")
        return path.resolve()
    if not path.is_dir():
        raise CatphishError(f"{path}: federated.init_from names no file or run folder")
    if (path / "model" / MANIFEST_NAME).exists():
        path = path / "model"
    if (path / MANIFEST_NAME).exists():
        verify_folder(path)
    if stage is not None and (path / f"{stage}-fold0.safetensors").is_file():
        return (path / f"{stage}-fold0.safetensors").resolve()
    if stage is not None and any(path.glob("*-fold0.safetensors")):
        raise CatphishError(f"{path}: this classifier run has no '{stage}' model (another task?)")
    for name in _CANDIDATES:
        if (path / name).is_file():
            return (path / name).resolve()
    found = sorted(path.rglob("*.safetensors"))
    models = [p for p in found if "checkpoint" not in p.name and p.parent.name != "cache"]
    if not models:
        raise CatphishError(f"{path}: no model weights (.safetensors) in this run folder")
    return models[0].resolve()


def load_initial_arrays(path: str | Path, expected: set[str]) -> dict[str, np.ndarray]:
    """The state dict in ``path``: a plain safetensors state dict, or a catphish checkpoint holding ``model``."""
    tensors = load_tensors(path)
    if expected <= set(tensors):
        return {name: tensors[name].numpy() for name in expected}
    try:
        state = load_state(path)
    except CatphishError:
        state = {}
    model = state.get("model") if isinstance(state, dict) else None
    if isinstance(model, dict) and expected <= set(model):
        return {name: model[name].numpy() for name in expected}
    raise CatphishError(f"{Path(path).name}: its weights do not fit the classifier of this run (missing "
                        f"{sorted(expected - set(tensors))[:3]}); use the same classifier config as the pre-training run")
