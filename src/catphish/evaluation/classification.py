"""Evaluate the test predictions of one or more runs: metrics per test site and overall, paired tests between modes.

Conventions (also written into every output's notes):

- Only ``fold == "ensemble"`` rows are used: the fold-model ensemble on the test subjects.
- **Positive classes.** IDH: ``mutant`` (as the paper reports IDH). Tumour type stage 1: ``glioblastoma`` vs lower-grade
  (oligodendroglioma + astrocytoma). Stage 2: ``oligodendroglioma`` vs ``astrocytoma``. Any other binary task: its first
  class column. The rule: the class the paper names first is the positive one.
- **Stage rows.** They carry the same ``p_<class>`` columns as the 3-class rows: stage 1 is scored with
  ``p_glioblastoma`` / Σp; stage 2 with ``p_oligodendroglioma / (p_oligodendroglioma + p_astrocytoma)`` and only on
  subjects whose true class is oligodendroglioma or astrocytoma (a glioblastoma has no stage-2 truth).
- A binary subject is predicted positive when its score ≥ 0.5; a multi-class subject gets the arg-max class.
- **Paired tests** compare every mode with the reference mode on the subjects both have (same site and subject id):
  McNemar on correctness (see :mod:`catphish.evaluation.statistics` for exact vs χ²) for every task; DeLong for binary
  tasks; Stuart–Maxwell on the predicted classes for multi-class tasks.
"""

from __future__ import annotations

import dataclasses
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from catphish.errors import CatphishError, InputFileError
from catphish.evaluation import metrics, statistics
from catphish.evaluation.predictions import Prediction, read_predictions
from catphish.evaluation.tables import Table, Value
from catphish.runtime import log

ENSEMBLE_FOLD = "ensemble"
OVERALL = "overall"
THRESHOLD = 0.5
POSITIVE_CLASS: dict[str, str] = {"idh": "mutant"}
LOWER_GRADE = ("oligodendroglioma", "astrocytoma")
STAGE_POSITIVE: dict[str, str] = {"stage1": "glioblastoma", "stage2": "oligodendroglioma"}
STAGE_NEGATIVE: dict[str, str] = {"stage1": "lower-grade", "stage2": "astrocytoma"}


@dataclass(frozen=True)
class EvaluationSettings:
    reference_mode: str = "centralized"
    bootstrap_resamples: int = 1000
    confidence: float = 0.95
    seed: int = 0


@dataclass
class Outcome:
    """One test subject's truth and prediction in one (task, stage, mode)."""

    site: str
    subject_id: str
    truth: int
    """Binary: 1 = positive class. Multi-class: class index."""
    predicted: int
    score: float
    """Binary: probability of the positive class. Multi-class: unused (NaN)."""

    @property
    def key(self) -> tuple[str, str]:
        return (self.site, self.subject_id)


@dataclass
class Analysis:
    """All subjects of one (task, stage, mode) in a shape the metrics read."""

    task: str
    stage: str
    mode: str
    classes: tuple[str, ...]
    """Binary: (positive, negative). Multi-class: class names in column order."""
    outcomes: list[Outcome]

    @property
    def binary(self) -> bool:
        return len(self.classes) == 2

    def arrays(self, subset: Iterable[Outcome] | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        chosen = list(self.outcomes if subset is None else subset)
        return (np.array([o.truth for o in chosen], dtype=int), np.array([o.predicted for o in chosen], dtype=int),
                np.array([o.score for o in chosen], dtype=float))

    def by_site(self) -> dict[str, list[Outcome]]:
        groups: dict[str, list[Outcome]] = defaultdict(list)
        for outcome in self.outcomes:
            groups[outcome.site].append(outcome)
        ordered = {site: groups[site] for site in sorted(groups)}
        ordered[OVERALL] = list(self.outcomes)
        return ordered


@dataclass
class ClassificationEvaluation:
    tables: list[Table]
    figures: dict[str, Any]
    notes: dict[str, Any]

    def table(self, name: str) -> Table:
        return next(t for t in self.tables if t.name == name)


# -------------------------------------------------------------------------------------------------- reading
def split_label(run: str | Path) -> tuple[str | None, Path]:
    """``LABEL=RUN`` → (label, run): the run's rows are evaluated as mode LABEL (to compare several runs of one mode,
    e.g. FedAvg and FedProx); a plain ``RUN`` keeps the modes written in its predictions."""
    text = str(run)
    label, separator, path = text.partition("=")
    if separator and label and "/" not in label and not Path(text).exists():
        return label, Path(path)
    return None, Path(text)


def predictions_path(run: str | Path) -> Path:
    """A run folder's ``predictions.csv``, or the csv file itself (``LABEL=`` prefixes are allowed)."""
    run = split_label(run)[1]
    if run.is_dir():
        run = run / "predictions.csv"
    if not run.is_file():
        raise InputFileError(run, "predictions file does not exist (give a run folder with predictions.csv or the csv)")
    return run


def load_test_predictions(runs: Sequence[str | Path]) -> list[tuple[Path, Prediction]]:
    """The ensemble rows of every run; the same (mode, task, stage, site, subject) twice is an error."""
    rows: list[tuple[Path, Prediction]] = []
    seen: dict[tuple[str, ...], Path] = {}
    for run in runs:
        label, path = split_label(run)[0], predictions_path(run)
        ensemble = [p for p in read_predictions(path) if p.fold == ENSEMBLE_FOLD]
        if label is not None:
            ensemble = [dataclasses.replace(p, mode=label) for p in ensemble]
        if not ensemble:
            raise InputFileError(path, f"no test predictions (rows with fold = {ENSEMBLE_FOLD})")
        for prediction in ensemble:
            key = (prediction.mode, prediction.task, prediction.stage, prediction.site, prediction.subject_id)
            if key in seen:
                raise InputFileError(path, f"subject {prediction.subject_id} of site {prediction.site} appears twice for "
                                     f"mode {prediction.mode}, task {prediction.task}, stage {prediction.stage}"
                                     + ("" if seen[key] == path else f" (also in {seen[key].name})"))
            seen[key] = path
            rows.append((path, prediction))
    return rows


def build_analyses(rows: Sequence[tuple[Path, Prediction]]) -> list[Analysis]:
    """Group rows by (task, stage, mode) and turn each row into an :class:`Outcome`."""
    groups: dict[tuple[str, str, str], list[tuple[Path, Prediction]]] = defaultdict(list)
    for path, prediction in rows:
        groups[(prediction.task, prediction.stage, prediction.mode)].append((path, prediction))
    analyses = []
    for (task, stage, mode), members in sorted(groups.items()):
        labelled = [(path, p) for path, p in members if p.y_true]
        if len(labelled) < len(members):
            log.warning("%s %s %s: %d test subject(s) without a true label are left out", task, stage, mode,
                        len(members) - len(labelled))
        analysis = _analysis(task, stage, mode, labelled)
        if analysis.outcomes:
            analyses.append(analysis)
    return analyses


def _analysis(task: str, stage: str, mode: str, rows: list[tuple[Path, Prediction]]) -> Analysis:
    if stage in STAGE_POSITIVE:
        return _stage_analysis(task, stage, mode, rows)
    if stage != "combined":
        path = rows[0][0] if rows else Path("predictions.csv")
        raise InputFileError(path, f"unknown stage '{stage}' (expected combined, stage1 or stage2)")
    class_names = tuple(rows[0][1].probabilities) if rows else ()
    if len(class_names) == 2:
        positive = POSITIVE_CLASS.get(task, class_names[0])
        positive = positive if positive in class_names else class_names[0]
        negative = next(name for name in class_names if name != positive)
        outcomes = [_binary_outcome(p, p.y_true == positive, _share(p, positive, (positive, negative)))
                    for _, p in rows]
        return Analysis(task, stage, mode, (positive, negative), outcomes)
    lookup = {name: i for i, name in enumerate(class_names)}
    outcomes = [Outcome(p.site, p.subject_id, lookup[p.y_true], lookup[p.y_pred], float("nan")) for _, p in rows]
    return Analysis(task, stage, mode, class_names, outcomes)


def _stage_analysis(task: str, stage: str, mode: str, rows: list[tuple[Path, Prediction]]) -> Analysis:
    positive = STAGE_POSITIVE[stage]
    for path, p in rows:
        missing = [c for c in (*LOWER_GRADE, "glioblastoma") if c not in p.probabilities]
        if missing:
            raise InputFileError(path, f"{stage} rows need p_{' and p_'.join(missing)} columns (tumour-type classes)")
    if stage == "stage1":
        outcomes = [_binary_outcome(p, p.y_true == positive, _share(p, positive, tuple(p.probabilities)))
                    for _, p in rows]
    else:
        lower_grade = [(path, p) for path, p in rows if p.y_true in LOWER_GRADE]
        outcomes = [_binary_outcome(p, p.y_true == positive, _share(p, positive, LOWER_GRADE)) for _, p in lower_grade]
    return Analysis(task, stage, mode, (positive, STAGE_NEGATIVE[stage]), outcomes)


def _share(prediction: Prediction, positive: str, among: Sequence[str]) -> float:
    """Probability of ``positive`` renormalised over the classes ``among`` (½ when they are all zero)."""
    total = sum(prediction.probabilities[name] for name in among)
    return prediction.probabilities[positive] / total if total > 0 else 0.5


def _binary_outcome(prediction: Prediction, is_positive: bool, score: float) -> Outcome:
    return Outcome(prediction.site, prediction.subject_id, int(is_positive), int(score >= THRESHOLD), score)


# ------------------------------------------------------------------------------------------------- metrics
def evaluate_runs(runs: Sequence[str | Path], settings: EvaluationSettings | None = None) -> ClassificationEvaluation:
    """Read the runs' predictions and compute every table and figure."""
    return evaluate_predictions(load_test_predictions(runs), settings)


def evaluate_predictions(rows: Sequence[tuple[Path, Prediction]],
                         settings: EvaluationSettings | None = None) -> ClassificationEvaluation:
    settings = settings or EvaluationSettings()
    analyses = build_analyses(rows)
    if not analyses:
        raise CatphishError("no labelled test predictions to evaluate")
    binary_rows: list[dict[str, Value]] = []
    multiclass_rows: list[dict[str, Value]] = []
    confusion_rows: list[dict[str, Value]] = []
    figures: dict[str, list[dict[str, Any]]] = {"roc": [], "confusion_matrices": []}
    for analysis in analyses:
        for site, outcomes in analysis.by_site().items():
            truth, predicted, score = analysis.arrays(outcomes)
            head: dict[str, Value] = {"task": analysis.task, "stage": analysis.stage, "mode": analysis.mode, "site": site}
            if analysis.binary:
                binary_rows.append(head | _binary_row(analysis, truth, score, settings))
                matrix = metrics.confusion_matrix(1 - truth, 1 - predicted, 2)  # row/column 0 = positive class
            else:
                result = metrics.multiclass_metrics(truth, predicted, len(analysis.classes))
                multiclass_rows.append(head | _multiclass_row(analysis, result))
                matrix = result.confusion
            confusion_rows.extend(head | {"true_class": analysis.classes[i], "predicted_class": analysis.classes[j],
                                          "count": int(matrix[i, j])}
                                  for i in range(len(analysis.classes)) for j in range(len(analysis.classes)))
            figures["confusion_matrices"].append(head | {"classes": list(analysis.classes), "matrix": matrix.tolist()})
            if analysis.binary and site == OVERALL:
                auc = metrics.mann_whitney_auc(score[truth == 1], score[truth == 0])
                figures["roc"].append(head | {"positive_class": analysis.classes[0], "auc": auc,
                                              **metrics.roc_points(truth, score)})
    notes = evaluation_notes(settings)
    tables = [
        Table("binary_metrics", "Binary tasks (IDH, tumour-type stages 1 and 2): accuracy, sensitivity, specificity and "
              "AUC with its bootstrap confidence interval, per test site and overall (all test sites pooled).",
              binary_rows, notes),
        Table("multiclass_metrics", "Multi-class tasks (tumour type, 3 classes): accuracy, macro-F1 and per-class accuracy "
              "(the class's recall), per test site and overall.", multiclass_rows, notes),
        Table("confusion_matrices", "Counts of subjects per true and predicted class, per task, stage, mode and site.",
              confusion_rows, notes),
        Table("paired_tests", f"Each mode against the reference mode '{settings.reference_mode}' on the same test "
              "subjects: McNemar on correctness, DeLong on AUC (binary), Stuart–Maxwell on predicted classes "
              "(multi-class).", paired_comparisons(analyses, settings), notes),
    ]
    return ClassificationEvaluation(tables=tables, figures={"notes": notes, **figures}, notes=notes)


def _binary_row(analysis: Analysis, truth: np.ndarray, score: np.ndarray,
                settings: EvaluationSettings) -> dict[str, Value]:
    result = metrics.binary_metrics(truth, score, THRESHOLD)
    interval = statistics.bootstrap_auc_ci(truth, score, settings.bootstrap_resamples, settings.confidence, settings.seed)
    return {"positive_class": analysis.classes[0], "negative_class": analysis.classes[1], "n": result.n,
            "n_positive": result.n_positive, "n_negative": result.n_negative, "accuracy": result.accuracy,
            "sensitivity": result.sensitivity, "specificity": result.specificity, "auc": result.auc,
            "auc_ci_low": interval.low, "auc_ci_high": interval.high}


def _multiclass_row(analysis: Analysis, result: metrics.MulticlassMetrics) -> dict[str, Value]:
    row: dict[str, Value] = {"n": result.n, "accuracy": result.accuracy, "macro_f1": result.macro_f1}
    for name, value in zip(analysis.classes, result.per_class_accuracy, strict=True):
        row[f"n_{name}"] = int(result.confusion[analysis.classes.index(name)].sum())
        row[f"accuracy_{name}"] = value
    return row


# ---------------------------------------------------------------------------------------------- paired tests
def paired_comparisons(analyses: Sequence[Analysis], settings: EvaluationSettings) -> list[dict[str, Value]]:
    """Every non-reference mode against the reference mode, per test site and overall, on shared subjects."""
    reference = {(a.task, a.stage): a for a in analyses if a.mode == settings.reference_mode}
    if not reference:
        log.warning("reference mode '%s' is not among the evaluated modes: no paired tests", settings.reference_mode)
    rows: list[dict[str, Value]] = []
    for analysis in analyses:
        base = reference.get((analysis.task, analysis.stage))
        if analysis.mode == settings.reference_mode or base is None:
            continue
        other_sites = analysis.by_site()
        for site, base_outcomes in base.by_site().items():
            pairs = _pair(base_outcomes, other_sites.get(site, []), analysis)
            if not pairs:
                continue
            head: dict[str, Value] = {"task": analysis.task, "stage": analysis.stage, "mode": analysis.mode,
                                      "reference": base.mode, "site": site, "n_paired": len(pairs)}
            rows.extend(head | row for row in _tests(analysis, pairs))
    return rows


def _pair(base: list[Outcome], other: list[Outcome], analysis: Analysis) -> list[tuple[Outcome, Outcome]]:
    lookup = {o.key: o for o in other}
    pairs = [(b, lookup[b.key]) for b in base if b.key in lookup]
    for b, o in pairs:
        if b.truth != o.truth:
            raise CatphishError(f"subject {b.subject_id} of site {b.site} has different true labels in modes "
                                f"{analysis.mode} and the reference ({analysis.task}, {analysis.stage})")
    return pairs


def _tests(analysis: Analysis, pairs: list[tuple[Outcome, Outcome]]) -> list[dict[str, Value]]:
    truth = np.array([b.truth for b, _ in pairs])
    base_pred = np.array([b.predicted for b, _ in pairs])
    other_pred = np.array([o.predicted for _, o in pairs])
    mcnemar = statistics.mcnemar_test(base_pred == truth, other_pred == truth)
    rows: list[dict[str, Value]] = [{
        "test": "McNemar", "statistic": mcnemar.statistic, "df": 1, "p_value": mcnemar.p_value,
        "method": mcnemar.method, "reported": mcnemar.reported, "b_reference_only_correct": mcnemar.b,
        "c_mode_only_correct": mcnemar.c}]
    if analysis.binary:
        delong = statistics.delong_test(truth, [b.score for b, _ in pairs], [o.score for _, o in pairs])
        rows.append({"test": "DeLong", "statistic": delong.z, "df": None, "p_value": delong.p_value,
                     "method": "DeLong (paired AUCs, two-sided z)", "reported": delong.reported,
                     "auc_reference": delong.auc_a, "auc_mode": delong.auc_b, "auc_difference": delong.difference,
                     "standard_error": delong.standard_error})
    else:
        table = statistics.paired_table(base_pred, other_pred, len(analysis.classes))
        result = statistics.stuart_maxwell_test(table)
        rows.append({"test": "Stuart-Maxwell", "statistic": result.statistic, "df": result.df, "p_value": result.p_value,
                     "method": "Stuart-Maxwell marginal homogeneity of predicted classes", "reported": result.reported})
    return rows


def evaluation_notes(settings: EvaluationSettings) -> dict[str, Any]:
    """What the numbers mean: written beside every table."""
    return {
        "rows_used": f"predictions with fold = {ENSEMBLE_FOLD} (the fold-model ensemble on the test subjects)",
        "positive_class": {"idh": POSITIVE_CLASS["idh"], "tumor_type stage1": "glioblastoma (vs lower-grade)",
                           "tumor_type stage2": "oligodendroglioma (vs astrocytoma)",
                           "other binary tasks": "the first class column"},
        "threshold": f"predicted positive when the positive-class probability >= {THRESHOLD}",
        "stage2_subjects": "stage-2 rows of subjects whose true class is oligodendroglioma or astrocytoma",
        "overall": f"site '{OVERALL}' pools every test site",
        "auc_ci": f"stratified percentile bootstrap, {settings.bootstrap_resamples} resamples, "
                  f"{settings.confidence:.0%} interval, seed {settings.seed}",
        "reference_mode": settings.reference_mode,
        "mcnemar": f"on paired correctness; exact binomial when discordant pairs < "
                   f"{statistics.EXACT_BELOW_DISCORDANT}, otherwise chi-square with continuity correction",
        "delong": "DeLong test of two correlated AUCs (fast mid-rank algorithm), two-sided",
        "stuart_maxwell": "Stuart-Maxwell test of marginal homogeneity of the two modes' predicted classes",
    }
