"""`catphish train` and `catphish predict` end to end on tiny prepared cohorts (16×16 slices, 2 folds, 1 epoch)."""

import csv
import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from catphish.artifacts import verify_folder
from catphish.cli import app
from catphish.config import load_config
from catphish.data.prepared import PreparedSubject, save_prepared
from catphish.errors import CatphishError
from catphish.evaluation.predictions import read_predictions
from catphish.modes.classification import TrainingRequest, run_training

TINY = ["--set", "classifier.channels=[4,8]", "--set", "classifier.epochs=1", "--set", "classifier.folds=2",
        "--set", "classifier.batch_size=8", "--set", "data.grid=[16,16]"]
TUMOUR_TYPES = ("oligodendroglioma", "astrocytoma", "glioblastoma")


def write_cohort(folder: Path, sites: dict[str, int], prefix: str = "", extra: dict[str, str] | None = None,
                 idh: bool = True, tumor_type: bool = True) -> Path:
    """A prepared cache: ``sites`` = {site: subjects}; IDH visible as FLAIR brightness inside the tumour."""
    rng = np.random.default_rng(len(prefix) + sum(sites.values()))
    for site, count in sites.items():
        for index in range(count):
            label = ("mutant", "wildtype")[index % 2]
            image = rng.normal(size=(1, 5, 16, 16)).astype(np.float32)
            mask = np.zeros((16, 16), np.float32)
            mask[4:12, 4:12] = 1
            image[:, 4] = mask
            image[:, 3] += (1.5 if label == "mutant" else -1.5) * mask
            subject_id = f"{prefix}{site}_{index:02d}"
            save_prepared(folder / site / f"{subject_id}.safetensors",
                          PreparedSubject(subject_id, site, image, idh=label if idh else "",
                                          tumor_type=TUMOUR_TYPES[index % 3] if tumor_type else "", split="train",
                                          extra=dict(extra or {})))
    return folder


@pytest.fixture(scope="module")
def real(tmp_path_factory) -> Path:
    return write_cohort(tmp_path_factory.mktemp("real"), {"TCGA": 6, "UTSW": 6, "NYU": 6, "UCSF": 4})


def train(*args: str) -> object:
    result = CliRunner().invoke(app, ["--quiet", "train", *TINY, *args], catch_exceptions=True)
    if result.exception is not None and not isinstance(result.exception, CatphishError):
        raise result.exception
    return result


def rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def test_centralized_idh_run_writes_models_predictions_and_fold_metrics(real, tmp_path):
    out = tmp_path / "run"
    result = train("--mode", "centralized", "--task", "idh", "--data", str(real), "--out", str(out))
    assert result.exit_code == 0, result.output
    manifest = verify_folder(out / "model", kind="classifier")
    assert {"idh-fold0.safetensors", "idh-fold1.safetensors", "config.json"} <= set(manifest["files"])
    predictions = read_predictions(out / "predictions.csv")
    test = [p for p in predictions if p.fold == "ensemble"]
    assert sorted({p.site for p in test}) == ["NYU", "UCSF"] and len(test) == 10  # IDH default test sites present
    oof = [p for p in predictions if p.fold != "ensemble"]
    assert sorted({p.site for p in oof}) == ["TCGA", "UTSW"] and len(oof) == 12 and {p.fold for p in oof} == {"0", "1"}
    assert all(p.mode == "centralized" and p.task == "idh" for p in predictions)
    folds = rows(out / "folds.csv")
    assert [r["fold"] for r in folds] == ["0", "1"] and all(float(r["train_seconds"]) > 0 for r in folds)
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "finished" and record["train_sites"] == ["TCGA", "UTSW"]
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["stages"]["idh"]["ensemble_test_per_site"]) == {"NYU", "UCSF"}

    # predict applies the same ensemble to any data and reproduces the test rows
    new = tmp_path / "new.csv"
    predicted = CliRunner().invoke(app, ["--quiet", "predict", str(out), "--data", str(real), "--sites", "NYU,UCSF",
                                         "--out", str(new)])
    assert predicted.exit_code == 0, predicted.output
    again = {p.subject_id: p.probabilities for p in read_predictions(new)}
    for p in test:
        assert again[p.subject_id]["mutant"] == pytest.approx(p.probabilities["mutant"], abs=1e-5)
    assert json.loads((tmp_path / "run.json").read_text())["command"].startswith("predict")

    # the same folder again: refused without --resume/--overwrite; a different config is refused even with --resume
    assert "already exists" in str(train("--mode", "centralized", "--data", str(real), "--out", str(out)).exception)
    other = train("--mode", "centralized", "--data", str(real), "--out", str(out), "--resume",
                  "--set", "classifier.lr=0.5")
    assert "different run" in str(other.exception)
    resumed = train("--mode", "centralized", "--data", str(real), "--out", str(out), "--resume")
    assert resumed.exit_code == 0
    assert [p.probabilities for p in read_predictions(out / "predictions.csv")] == [p.probabilities for p in predictions]


def test_tumour_type_writes_combined_and_stage_rows(real, tmp_path):
    out = tmp_path / "tt"
    result = train("--mode", "centralized", "--task", "tumor_type", "--data", str(real), "--out", str(out),
                   "--test-sites", "UCSF")
    assert result.exit_code == 0, result.output
    predictions = [p for p in read_predictions(out / "predictions.csv") if p.fold == "ensemble"]
    assert {p.stage for p in predictions} == {"combined", "stage1", "stage2"}
    for p in predictions:
        assert set(p.probabilities) == set(TUMOUR_TYPES) and sum(p.probabilities.values()) == pytest.approx(1, abs=1e-4)
    manifest = verify_folder(out / "model", kind="classifier")
    assert {"stage1-fold0.safetensors", "stage2-fold1.safetensors"} <= set(manifest["files"])
    assert {r["stage"] for r in rows(out / "folds.csv")} == {"stage1", "stage2"}


def test_local_mode_trains_one_run_per_site(real, tmp_path):
    out = tmp_path / "local"
    result = train("--mode", "local", "--data", str(real), "--out", str(out), "--test-sites", "UCSF")
    assert result.exit_code == 0, result.output
    for site in ("TCGA", "UTSW"):
        assert verify_folder(out / f"local-{site}" / "model", kind="classifier")["mode"] == f"local-{site}"
        assert json.loads((out / f"local-{site}" / "run.json").read_text())["status"] == "finished"
    modes = {p.mode for p in read_predictions(out / "predictions.csv") if p.fold == "ensemble"}
    assert modes == {"local-TCGA", "local-UTSW"}
    refused = CliRunner().invoke(app, ["predict", str(out), "--data", str(real), "--out", str(tmp_path / "p.csv")])
    assert "local-TCGA" in str(refused.exception)


def test_synthetic_and_mixed_modes_train_on_the_hub_cohort(real, tmp_path):
    synthetic = write_cohort(tmp_path / "syn", {"synthetic-TCGA": 4, "synthetic-UTSW": 4}, prefix="syn",
                             extra={"source_task": "idh"}, tumor_type=False)
    out = tmp_path / "synthetic"
    result = train("--mode", "synthetic", "--data", str(real), "--synthetic", str(synthetic), "--out", str(out))
    assert result.exit_code == 0, result.output
    predictions = read_predictions(out / "predictions.csv")
    assert {p.site for p in predictions if p.fold == "ensemble"} >= {"NYU", "UCSF"}
    assert {p.site for p in predictions if p.fold != "ensemble"} == {"synthetic-TCGA", "synthetic-UTSW"}
    mixed = train("--mode", "mixed", "--data", str(real), "--synthetic", str(synthetic), "--out", str(tmp_path / "mixed"))
    assert mixed.exit_code == 0, mixed.output
    oof_sites = {p.site for p in read_predictions(tmp_path / "mixed" / "predictions.csv") if p.fold != "ensemble"}
    assert oof_sites == {"TCGA", "UTSW", "synthetic-TCGA", "synthetic-UTSW"}
    baseline = train("--mode", "mixed", "--augment-only", "--data", str(real), "--out", str(tmp_path / "aug"))
    assert baseline.exit_code == 0, baseline.output
    assert {p.mode for p in read_predictions(tmp_path / "aug" / "predictions.csv")} == {"augment-only"}


def test_synthetic_data_of_another_task_is_refused(real, tmp_path):
    other_task = write_cohort(tmp_path / "syn", {"synthetic-TCGA": 4}, prefix="syn", idh=False,
                              extra={"source_task": "tumor_type"})
    out = tmp_path / "run"
    result = train("--mode", "synthetic", "--data", str(real), "--synthetic", str(other_task), "--out", str(out))
    assert "generated for task 'tumor_type', not 'idh'" in str(result.exception)
    unlabelled = write_cohort(tmp_path / "syn2", {"synthetic-TCGA": 4}, prefix="syn", idh=False)
    result = train("--mode", "synthetic", "--data", str(real), "--synthetic", str(unlabelled), "--out", str(out))
    assert "no synthetic case has a idh label" in str(result.exception)
    assert "tumor_type" in str(result.exception)
    raw = tmp_path / "raw_syn"
    raw.mkdir()
    (raw / "labels.csv").write_text("subject_id,site,idh,tumor_type,split,source_task\ns1,synthetic-TCGA,,glioblastoma,,"
                                    "tumor_type\n")
    result = train("--mode", "synthetic", "--data", str(real), "--synthetic", str(raw), "--out", str(out))
    assert str(result.exception).startswith("labels.csv: synthetic cases were generated for task 'tumor_type'")
    assert not out.exists()


def test_missing_labels_are_skipped_and_an_empty_class_is_an_error(tmp_path, caplog):
    data = write_cohort(tmp_path / "data", {"TCGA": 6, "UCSF": 2})
    write_cohort(tmp_path / "data", {"UTSW": 3}, prefix="nolabel", idh=False)
    out = tmp_path / "run"
    config = load_config(None, "demo", [item for item in TINY if item != "--set"])
    request = TrainingRequest("centralized", "idh", data, out, train_sites=("TCGA", "UTSW"))
    logger = logging.getLogger("catphish")
    logger.addHandler(caplog.handler)  # the CLI's logging setup does not propagate to the root logger
    try:
        run_training(config, request)
    finally:
        logger.removeHandler(caplog.handler)
    assert "3 training subject(s) without a idh label are skipped" in caplog.text
    assert not any(p.site == "UTSW" for p in read_predictions(out / "predictions.csv"))
    only_wildtype = write_cohort(tmp_path / "wt", {"TCGA": 1, "UCSF": 2})  # index 0 is the only subject: mutant
    result = train("--mode", "centralized", "--data", str(only_wildtype), "--out", str(tmp_path / "run2"))
    assert "no training subject of class 'wildtype'" in str(result.exception)
    assert not (tmp_path / "run2").exists()


def test_fewer_subjects_than_folds_is_refused_before_writing(tmp_path):
    data = write_cohort(tmp_path / "data", {"TCGA": 3, "UCSF": 2})
    out = tmp_path / "run"
    result = train("--mode", "centralized", "--data", str(data), "--out", str(out), "--set", "classifier.folds=5")
    assert "3 training subject(s) are fewer than classifier.folds=5" in str(result.exception)
    assert not out.exists()


def test_absent_test_site_is_one_red_line_exit_2_and_no_output(real, tmp_path):
    out = tmp_path / "run"
    result = subprocess.run([sys.executable, "-c", "from catphish.cli import run; run()", "train", "--mode",
                             "centralized", "--data", str(real), "--out", str(out), "--test-sites", "UPenn", *TINY],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "test site 'UPenn' is not in the data" in lines[0] and real.name in lines[0]
    assert not out.exists()


def test_raw_dataset_is_prepared_into_the_cache_first(tmp_path):
    from nifti_fixtures import write_dataset

    write_dataset(tmp_path / "raw", sites={"TCGA": 4, "UCSF": 2})
    cache, out = tmp_path / "cache", tmp_path / "run"
    result = train("--mode", "centralized", "--data", str(tmp_path / "raw"), "--cache", str(cache), "--out", str(out),
                   "--train-sites", "TCGA", "--test-sites", "UCSF")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in cache.iterdir() if p.is_dir()) == ["TCGA", "UCSF"]
    test = [p for p in read_predictions(out / "predictions.csv") if p.fold == "ensemble"]
    assert {p.site for p in test} == {"TCGA", "UCSF"}  # TCGA's split=test subject is a test subject too
