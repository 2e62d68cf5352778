"""`catphish evaluate`: metrics per site and overall, paired tests between modes, outputs and bad input."""

import json

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, f1_score, recall_score, roc_auc_score
from statsmodels.stats.contingency_tables import SquareTable, mcnemar
from typer.testing import CliRunner

from catphish.cli import app
from catphish.errors import CatphishError, InputFileError
from catphish.evaluation.classification import EvaluationSettings, evaluate_runs
from catphish.evaluation.predictions import Prediction, write_predictions

SITES = ("NYU", "UCSF")
TUMOUR_CLASSES = ("oligodendroglioma", "astrocytoma", "glioblastoma")
MODES = {"centralized": 1.6, "federated": 1.5, "synthetic": 1.2}  # signal strength per mode


def _subjects(n_per_site=30, seed=0):
    rng = np.random.default_rng(seed)
    return [(site, f"{site}-{i:03d}", rng.random()) for site in SITES for i in range(n_per_site)]


def _idh_rows(mode, strength, seed):
    rng = np.random.default_rng(seed)
    rows = []
    for site, subject, u in _subjects():
        truth = "mutant" if u < 0.35 else "wildtype"
        logit = strength * (1 if truth == "mutant" else -1) + rng.normal(0, 1.2)
        p_mutant = float(1 / (1 + np.exp(-logit)))
        rows.append(Prediction(subject, site, mode, "idh", "ensemble", truth,
                               {"mutant": p_mutant, "wildtype": 1 - p_mutant}))
        rows.append(Prediction(subject, site, mode, "idh", "0", truth, {"mutant": 0.5, "wildtype": 0.5}))
    return rows


def _tumour_rows(mode, strength, seed):
    rng = np.random.default_rng(seed + 100)
    rows = []
    for site, subject, u in _subjects():
        truth = TUMOUR_CLASSES[0 if u < 0.2 else 1 if u < 0.45 else 2]
        logits = rng.normal(0, 1, 3)
        logits[TUMOUR_CLASSES.index(truth)] += strength
        p = np.exp(logits) / np.exp(logits).sum()
        probs = dict(zip(TUMOUR_CLASSES, map(float, p), strict=True))
        rows.append(Prediction(subject, site, mode, "tumor_type", "ensemble", truth, probs, stage="combined"))
        stage1 = float(rng.beta(5, 2) if truth == "glioblastoma" else rng.beta(2, 5))
        rows.append(Prediction(subject, site, mode, "tumor_type", "ensemble", truth,
                               {"oligodendroglioma": (1 - stage1) / 2, "astrocytoma": (1 - stage1) / 2,
                                "glioblastoma": stage1}, stage="stage1"))
        oligo = float(rng.beta(4, 2) if truth == "oligodendroglioma" else rng.beta(2, 4))
        rows.append(Prediction(subject, site, mode, "tumor_type", "ensemble", truth,
                               {"oligodendroglioma": oligo, "astrocytoma": 1 - oligo, "glioblastoma": 0.0},
                               stage="stage2"))
    return rows


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    folders = []
    for seed, (mode, strength) in enumerate(MODES.items()):
        folder = root / mode
        write_predictions(folder / "predictions.csv", _idh_rows(mode, strength, seed), ("mutant", "wildtype"))
        folders.append(folder)
        write_predictions(root / f"{mode}-tumour.csv", _tumour_rows(mode, 2.0 - 0.3 * seed, seed), TUMOUR_CLASSES)
        folders.append(root / f"{mode}-tumour.csv")
    return folders


@pytest.fixture(scope="module")
def evaluation(runs):
    return evaluate_runs(runs, EvaluationSettings(bootstrap_resamples=300, seed=1))


def _rows(evaluation, table, **where):
    return [r for r in evaluation.table(table).rows if all(r[k] == v for k, v in where.items())]


def _truth_and_score(mode, site=None):
    rows = [r for r in _idh_rows(mode, MODES[mode], list(MODES).index(mode)) if r.fold == "ensemble"]
    rows = [r for r in rows if site is None or r.site == site]
    return np.array([r.y_true == "mutant" for r in rows], int), np.array([r.probabilities["mutant"] for r in rows])


def test_idh_metrics_per_site_and_overall_equal_sklearn_with_mutant_positive(evaluation):
    for site in (*SITES, "overall"):
        truth, score = _truth_and_score("federated", None if site == "overall" else site)
        predicted = (score >= 0.5).astype(int)
        (row,) = _rows(evaluation, "binary_metrics", task="idh", mode="federated", site=site)
        assert row["positive_class"] == "mutant"
        assert row["n"] == len(truth) and row["n_positive"] == truth.sum()
        assert row["accuracy"] == pytest.approx(accuracy_score(truth, predicted))
        assert row["sensitivity"] == pytest.approx(recall_score(truth, predicted, pos_label=1))
        assert row["specificity"] == pytest.approx(recall_score(truth, predicted, pos_label=0))
        assert row["auc"] == pytest.approx(roc_auc_score(truth, score))
        assert row["auc_ci_low"] < row["auc"] < row["auc_ci_high"]


def test_only_ensemble_rows_are_evaluated(evaluation):
    (row,) = _rows(evaluation, "binary_metrics", task="idh", mode="centralized", site="overall")
    assert row["n"] == 60


def test_paired_tests_against_centralized_equal_statsmodels(evaluation):
    truth, reference = _truth_and_score("centralized")
    _, synthetic = _truth_and_score("synthetic")
    ref_ok, syn_ok = (reference >= 0.5) == truth, (synthetic >= 0.5) == truth
    table = np.array([[np.sum(ref_ok & syn_ok), np.sum(ref_ok & ~syn_ok)],
                      [np.sum(~ref_ok & syn_ok), np.sum(~ref_ok & ~syn_ok)]])
    (row,) = _rows(evaluation, "paired_tests", task="idh", mode="synthetic", site="overall", test="McNemar")
    exact = table[0, 1] + table[1, 0] < 25
    assert row["method"] == ("exact binomial" if exact else "chi-square with continuity correction")
    assert row["p_value"] == pytest.approx(mcnemar(table, exact=exact).pvalue)
    (delong,) = _rows(evaluation, "paired_tests", task="idh", mode="synthetic", site="overall", test="DeLong")
    assert delong["auc_reference"] == pytest.approx(roc_auc_score(truth, reference))
    assert delong["auc_mode"] == pytest.approx(roc_auc_score(truth, synthetic))
    assert not _rows(evaluation, "paired_tests", mode="centralized")


def test_three_class_metrics_and_stuart_maxwell(evaluation):
    rows = [r for r in _tumour_rows("centralized", 2.0, 0) if r.stage == "combined"]
    truth = [TUMOUR_CLASSES.index(r.y_true) for r in rows]
    predicted = [TUMOUR_CLASSES.index(r.y_pred) for r in rows]
    (row,) = _rows(evaluation, "multiclass_metrics", task="tumor_type", mode="centralized", site="overall")
    assert row["accuracy"] == pytest.approx(accuracy_score(truth, predicted))
    assert row["macro_f1"] == pytest.approx(f1_score(truth, predicted, average="macro"))
    recalls = recall_score(truth, predicted, average=None)
    assert [row[f"accuracy_{c}"] for c in TUMOUR_CLASSES] == pytest.approx(list(recalls))
    other = [TUMOUR_CLASSES.index(r.y_pred) for r in _tumour_rows("federated", 1.7, 1) if r.stage == "combined"]
    paired = np.zeros((3, 3), int)
    np.add.at(paired, (predicted, other), 1)
    (test,) = _rows(evaluation, "paired_tests", task="tumor_type", stage="combined", mode="federated", site="overall",
                    test="Stuart-Maxwell")
    oracle = SquareTable(paired, shift_zeros=False).homogeneity()
    assert test["statistic"] == pytest.approx(oracle.statistic)
    assert test["p_value"] == pytest.approx(oracle.pvalue)
    assert test["reported"].startswith("χ²(2) = ")


def test_stages_use_their_own_positive_class_and_subjects(evaluation):
    rows = [r for r in _tumour_rows("centralized", 2.0, 0) if r.stage == "stage2"]
    lower_grade = [r for r in rows if r.y_true != "glioblastoma"]
    (row,) = _rows(evaluation, "binary_metrics", task="tumor_type", stage="stage2", mode="centralized", site="overall")
    assert (row["positive_class"], row["n"]) == ("oligodendroglioma", len(lower_grade))
    truth = [r.y_true == "oligodendroglioma" for r in lower_grade]
    assert row["auc"] == pytest.approx(roc_auc_score(truth, [r.probabilities["oligodendroglioma"] for r in lower_grade]))
    (stage1,) = _rows(evaluation, "binary_metrics", task="tumor_type", stage="stage1", mode="centralized",
                      site="overall")
    assert (stage1["positive_class"], stage1["n"]) == ("glioblastoma", 60)


def test_cli_writes_every_table_figures_and_run_record(runs, tmp_path):
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["evaluate", *map(str, runs), "--out", str(out), "--bootstrap", "200",
                                      "--seed", "5"])
    assert result.exit_code == 0, result.output
    for name in ("binary_metrics", "multiclass_metrics", "confusion_matrices", "paired_tests"):
        assert (out / f"{name}.csv").is_file()
        assert json.loads((out / f"{name}.json").read_text())["rows"]
    figures = json.loads((out / "figures.json").read_text())
    roc = [f for f in figures["roc"] if f["task"] == "idh"]
    assert sorted(f["mode"] for f in roc) == sorted(MODES)
    assert all(f["fpr"][0] == 0 and f["tpr"][-1] == 1 for f in roc)
    assert figures["notes"]["positive_class"]["idh"] == "mutant"
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "finished" and record["seed"] == 5
    assert "McNemar" in result.output or "χ²" in result.output


def test_bad_probability_names_file_and_leaves_no_output(tmp_path):
    bad = tmp_path / "predictions.csv"
    write_predictions(bad, _idh_rows("centralized", 1.0, 0)[:4], ("mutant", "wildtype"))
    bad.write_text(bad.read_text().replace("0.5", "1.7", 1))
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["evaluate", str(bad), "--out", str(out)], catch_exceptions=True)
    assert isinstance(result.exception, InputFileError)
    assert "predictions.csv" in str(result.exception) and "not a probability" in str(result.exception)
    assert not out.exists()


def test_same_subject_twice_is_refused(runs):
    with pytest.raises(InputFileError, match="appears twice"):
        evaluate_runs([runs[0], runs[0]])


def test_label_prefix_evaluates_two_runs_of_one_mode_side_by_side(runs):
    """``LABEL=RUN``: two runs of one mode (e.g. FedAvg, FedProx) compared with the reference on the same subjects."""
    result = evaluate_runs([runs[0], f"again={runs[0]}"], EvaluationSettings(bootstrap_resamples=50, seed=1))
    overall = {r["mode"]: r for r in result.table("binary_metrics").rows if r["site"] == "overall"}
    assert set(overall) == {runs[0].name, "again"}
    assert overall["again"]["auc"] == overall[runs[0].name]["auc"]
    paired = [r for r in result.table("paired_tests").rows if r["mode"] == "again" and r["site"] == "overall"]
    assert paired and all(r["p_value"] == 1.0 for r in paired if str(r["test"]).startswith("McNemar"))


def test_missing_run_and_run_without_test_rows_are_refused(tmp_path):
    with pytest.raises(InputFileError, match="does not exist"):
        evaluate_runs([tmp_path / "nowhere"])
    only_folds = tmp_path / "folds.csv"
    write_predictions(only_folds, [r for r in _idh_rows("centralized", 1.0, 0) if r.fold != "ensemble"],
                      ("mutant", "wildtype"))
    with pytest.raises(CatphishError, match="no test predictions"):
        evaluate_runs([only_folds])
