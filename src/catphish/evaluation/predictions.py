"""``predictions.csv``: the single contract between training (every mode) and evaluation (DESIGN §5).

Columns: ``subject_id, site, mode, task, fold, y_true, p_<class>…, y_pred``. ``fold`` is ``ensemble`` for the
mean of the fold models on test subjects, or the fold index (``0``…) for out-of-fold predictions of training subjects.
For ``tumor_type`` the two-stage model also writes ``stage`` rows (``stage1``: glioblastoma vs lower-grade,
``stage2``: oligodendroglioma vs astrocytoma); the combined 3-class rows have ``stage`` = ``combined``.

Stage rows keep the three tumour-type ``p_<class>`` columns: a stage-1 row holds the stage-1 model's P(glioblastoma)
in ``p_glioblastoma`` (the lower-grade probability may be split over the other two columns in any way); a stage-2
row holds the stage-2 model's probabilities in ``p_oligodendroglioma`` and ``p_astrocytoma`` (``p_glioblastoma`` is
ignored). ``y_true`` is always the subject's 3-class label; evaluation scores stage 2 only on true lower-grade
subjects (see :mod:`catphish.evaluation.classification`).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from catphish.artifacts import atomic_write_text
from catphish.errors import InputFileError

BASE_COLUMNS: tuple[str, ...] = ("subject_id", "site", "mode", "task", "fold", "y_true")
OPTIONAL_COLUMNS: tuple[str, ...] = ("stage",)


@dataclass
class Prediction:
    subject_id: str
    site: str
    mode: str
    task: str
    fold: str
    y_true: str
    probabilities: dict[str, float]
    """Class name → probability (sums to 1)."""
    stage: str = "combined"
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def y_pred(self) -> str:
        return max(self.probabilities, key=lambda name: self.probabilities[name])


def write_predictions(path: str | Path, predictions: Iterable[Prediction], class_names: Sequence[str]) -> Path:
    """Write predictions atomically; class columns follow ``class_names`` order."""
    buffer = io.StringIO()
    columns = [*BASE_COLUMNS, "stage", *(f"p_{name}" for name in class_names), "y_pred"]
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for p in predictions:
        probs = [p.probabilities.get(name, 0.0) for name in class_names]
        writer.writerow([p.subject_id, p.site, p.mode, p.task, p.fold, p.y_true, p.stage,
                         *(f"{v:.6f}" for v in probs), p.y_pred])
    return atomic_write_text(path, buffer.getvalue())


def read_predictions(path: str | Path) -> list[Prediction]:
    """Read and validate a predictions file; problems name the file and the row."""
    path = Path(path)
    if not path.is_file():
        raise InputFileError(path, "predictions file does not exist")
    with path.open(newline="") as handle:
        reader = csv.DictReader(handle)
        header = reader.fieldnames or []
        missing = [c for c in (*BASE_COLUMNS, "y_pred") if c not in header]
        if missing:
            raise InputFileError(path, f"missing column(s) {', '.join(missing)}")
        class_columns = [c for c in header if c.startswith("p_")]
        if len(class_columns) < 2:
            raise InputFileError(path, "needs at least two p_<class> probability columns")
        class_names = [c[2:] for c in class_columns]
        rows = []
        for line, row in enumerate(reader, start=2):
            probs = {}
            for name, column in zip(class_names, class_columns, strict=True):
                try:
                    value = float(row[column])
                except (TypeError, ValueError):
                    raise InputFileError(path, f"row {line}: {column} is not a number ({row[column]!r})") from None
                if not math.isfinite(value) or not 0.0 <= value <= 1.0:
                    raise InputFileError(path, f"row {line}: {column}={value} is not a probability in [0, 1]")
                probs[name] = value
            if row["y_true"] and row["y_true"] not in class_names:
                raise InputFileError(path, f"row {line}: y_true '{row['y_true']}' is not one of {', '.join(class_names)}")
            rows.append(Prediction(subject_id=row["subject_id"], site=row["site"], mode=row["mode"], task=row["task"],
                                   fold=row["fold"], y_true=row["y_true"], probabilities=probs,
                                   stage=row.get("stage") or "combined"))
    if not rows:
        raise InputFileError(path, "no predictions in the file")
    return rows


def class_names_of(predictions: Sequence[Prediction]) -> list[str]:
    return list(predictions[0].probabilities)


def probability_matrix(predictions: Sequence[Prediction], class_names: Sequence[str]) -> np.ndarray:
    return np.array([[p.probabilities[name] for name in class_names] for p in predictions], dtype=float)
