"""The preprocessed cohort every model reads: one safetensors file per subject, in model order.

``image`` is float32 of shape ``(S, 5, *grid)``: ``S`` tumour-centred axial slices for 2D presets (``grid`` = H, W)
or ``S = 1`` for 3D presets (``grid`` = X, Y, Z). Channels are T1, T1C, T2, FLAIR (z-scored over the brain, 0 outside)
and the binary whole-tumour mask (0/1). Labels travel in the file's metadata, so a cache folder is self-contained.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from catphish.artifacts import load_state, load_state_values, save_state
from catphish.config import TASK_CLASSES
from catphish.errors import CatphishError


@dataclass
class PreparedSubject:
    subject_id: str
    site: str
    image: np.ndarray
    idh: str = ""
    tumor_type: str = ""
    split: str = ""
    extra: dict[str, str] = field(default_factory=dict)

    def label(self, task: str) -> str:
        """The subject's class for ``task`` (``idh`` or ``tumor_type``); empty when unknown."""
        if task not in TASK_CLASSES:
            raise CatphishError(f"unknown task '{task}' (choose from {', '.join(TASK_CLASSES)})")
        return getattr(self, task)

    @property
    def mask(self) -> np.ndarray:
        return self.image[:, 4]


def save_prepared(path: str | Path, subject: PreparedSubject, provenance: dict[str, str] | None = None) -> Path:
    """Write one prepared subject (atomically, through artifacts)."""
    meta = {"subject_id": subject.subject_id, "site": subject.site, "idh": subject.idh,
            "tumor_type": subject.tumor_type, "split": subject.split, "extra": subject.extra,
            "provenance": provenance or {}}
    return save_state(path, {"image": torch.from_numpy(np.ascontiguousarray(subject.image, dtype=np.float32)),
                             "meta": json.dumps(meta)})


def load_prepared(path: str | Path) -> PreparedSubject:
    state = load_state(path)
    meta = json.loads(state["meta"])
    return PreparedSubject(subject_id=meta["subject_id"], site=meta["site"], image=state["image"].numpy(),
                           idh=meta["idh"], tumor_type=meta["tumor_type"], split=meta["split"],
                           extra=dict(meta.get("extra", {})))


def read_provenance(path: str | Path) -> dict[str, str]:
    """The provenance stored with a prepared subject, read from the file header alone (fast on large caches)."""
    return dict(json.loads(load_state_values(path)["meta"]).get("provenance", {}))


def load_prepared_dir(folder: str | Path, sites: Iterable[str] | None = None) -> list[PreparedSubject]:
    """All prepared subjects under ``folder`` (``<site>/<subject>.safetensors``), optionally only some sites."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CatphishError(f"{folder}: prepared cache folder does not exist (run `catphish data prepare` first)")
    wanted = set(sites) if sites is not None else None
    subjects = [load_prepared(p) for p in sorted(folder.glob("*/*.safetensors"))]
    return [s for s in subjects if wanted is None or s.site in wanted]
