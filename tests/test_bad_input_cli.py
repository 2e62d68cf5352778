"""Bad input named in the issues, through the real entry point (`catphish.cli.run`): exit code 2, one red line that
names the file or value and the problem, no traceback, and nothing half-written (the folder tree is unchanged).

In-process (``run()`` with ``sys.argv``) so that one module of tiny packages serves every case; the error policy is the
same code path as the installed console script.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from catphish.cli import run
from ldm_fixtures import TINY_2D, tiny_subjects, write_prepared
from test_train_cli import TINY as TINY_CLASSIFIER
from test_train_cli import write_cohort

SETS = [arg for item in TINY_2D for arg in ("--set", item)]


def catphish(capfd, *args: str | Path) -> tuple[int, list[str]]:
    """Run ``catphish --quiet ARGS`` in-process; returns the exit code and the non-empty stderr lines."""
    argv = sys.argv
    sys.argv = ["catphish", "--quiet", *map(str, args)]
    try:
        with pytest.raises(SystemExit) as exited:
            run()
    finally:
        sys.argv = argv
    _, err = capfd.readouterr()
    return exited.value.code, [line for line in err.splitlines() if line.strip()]


def tree(folder: Path) -> dict[str, float]:
    """Every path below ``folder`` with its modification time: equal before and after = nothing was written."""
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in sorted(folder.rglob("*"))}


def refused(capfd, root: Path, *args: str | Path) -> str:
    """Assert the command is refused by the error policy without touching ``root``; returns the error line."""
    before = tree(root)
    code, lines = catphish(capfd, *args)
    assert code == 2, lines
    # the error is one line, the last; logged warnings may come before it (e.g. skipped unlabelled subjects)
    assert lines and lines[-1].startswith("error: "), lines
    assert all(line.startswith(("WARNING", " ")) for line in lines[:-1]), lines
    assert tree(root) == before, "a refused command changed the folder tree"
    return lines[-1]


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """alpha: two IDH classes, 4 subjects each; beta: 2 each; gamma: one class only; a tumour-type site; packages."""
    root = tmp_path_factory.mktemp("bad-input")
    small_brains = tiny_subjects(per_class=4, site="epsilon", seed=3)
    for subject in small_brains:  # a brain that covers a 3-voxel corner of the 16×16 grid
        subject.image[:, :4] = 0
        subject.image[:, :4, :3, :3] = 1.0
    subjects = (tiny_subjects(per_class=4) + tiny_subjects(per_class=2, site="beta", seed=1)
                + tiny_subjects(per_class=4, site="gamma", classes=("wildtype",), seed=2) + small_brains)
    write_prepared(root / "data", subjects)
    write_prepared(root / "types", tiny_subjects(per_class=3, site="delta", task="tumor_type",
                                                 classes=("oligodendroglioma", "astrocytoma", "glioblastoma")))
    for site, data, task in (("alpha", "data", "idh"), ("delta", "types", "tumor_type")):
        argv = sys.argv
        sys.argv = ["catphish", "--quiet", "site", "train", "--data", str(root / data), "--site", site, "--task", task,
                    "--out", str(root / f"{site}.catphish"), *SETS]
        try:
            with pytest.raises(SystemExit) as exited:
                run()
        finally:
            sys.argv = argv
        assert exited.value.code == 0
    return root


def train_args(study: Path, site: str, out: Path, *extra: str) -> list[str | Path]:
    return ["site", "train", "--data", study / "data", "--site", site, "--task", "idh", "--out", out, *SETS, *extra]


# ------------------------------------------------------------------------------------------------ site train (#5)
@pytest.mark.parametrize(("site", "extra", "message"), [
    ("omega", [], "site 'omega' is not in the data (sites: alpha, beta, epsilon, gamma)"),
    ("gamma", [], "site 'gamma' has only class 'wildtype' for task 'idh'"),
    ("beta", ["--set", "autoencoder.holdout_fraction=0.5"], "too few subjects at this site for the held-out split"),
    ("epsilon", [], "the data cannot fill preset 'demo' grid (16, 16)"),
    ("alpha", ["--set", "data.grid=[32,32]"], "prepare the data with the same preset"),
])
def test_site_train_bad_input_leaves_nothing_and_the_fixed_command_runs(capfd, study, tmp_path, site, extra, message):
    out = tmp_path / "pkg.catphish"
    line = refused(capfd, tmp_path, *train_args(study, site, out, *extra))
    assert message in line
    assert list(tmp_path.iterdir()) == []  # no unfinished package folder blocks the corrected command
    if site == "omega":
        code, lines = catphish(capfd, *train_args(study, "alpha", out))
        assert code == 0, lines


def test_an_existing_package_is_kept_unless_overwrite(capfd, study, tmp_path):
    package = tmp_path / "alpha.catphish"
    shutil.copytree(study / "alpha.catphish", package)
    line = refused(capfd, tmp_path, *train_args(study, "alpha", package))
    assert f"{package}: package folder already exists (use --overwrite" in line
    code, _ = catphish(capfd, *train_args(study, "alpha", package, "--overwrite"))
    assert code == 0 and (package / "manifest.json").exists()
    assert not package.with_name(package.name + ".partial").exists()


# --------------------------------------------------------------------------------------------- hub and audit (#6)
def synthesize_args(study: Path, out: Path, *extra: str) -> list[str | Path]:
    return ["hub", "synthesize", "--packages", study / "alpha.catphish", "--per-class", "2", "--steps", "2",
            "--out", out, *extra]


@pytest.mark.parametrize(("extra", "message"), [
    (["--class", "oligodendroglioma"], "class 'oligodendroglioma' is not in package alpha.catphish (classes: mutant, "
                                       "wildtype)"),
    (["--per-class", "0"], "--per-class must be at least 1, got 0"),
    (["--per-class", "-3"], "--per-class must be at least 1, got -3"),
])
def test_hub_synthesize_refuses_bad_requests(capfd, study, tmp_path, extra, message):
    assert message in refused(capfd, tmp_path, *synthesize_args(study, tmp_path / "syn", *extra))


def test_hub_synthesize_refuses_packages_of_different_tasks(capfd, study, tmp_path):
    line = refused(capfd, tmp_path, *synthesize_args(study, tmp_path / "syn"), "--packages", study / "delta.catphish")
    assert "packages were trained for different tasks (idh, tumor_type)" in line


def test_hub_synthesize_refuses_a_corrupt_package(capfd, study, tmp_path):
    broken = tmp_path / "alpha.catphish"
    shutil.copytree(study / "alpha.catphish", broken)
    with (broken / "model.safetensors").open("r+b") as handle:
        handle.truncate(1000)
    line = refused(capfd, tmp_path, "hub", "synthesize", "--packages", broken, "--per-class", "2", "--out",
                   tmp_path / "syn")
    assert "alpha.catphish: refused" in line and "model.safetensors" in line


def test_hub_output_holding_another_run_is_kept(capfd, study, tmp_path):
    out = tmp_path / "syn"
    code, _ = catphish(capfd, *synthesize_args(study, out))
    assert code == 0
    assert "already exists (use --resume" in refused(capfd, tmp_path, *synthesize_args(study, out, "--steps", "3"))
    line = refused(capfd, tmp_path, *synthesize_args(study, out, "--steps", "3", "--resume"))
    assert f"{out}: holds a different run" in line
    for percentile in ("0", "100", "-5", "150"):
        line = refused(capfd, tmp_path, "hub", "filter", out, "--percentile", percentile)
        assert f"percentile must be in (0, 100), got {float(percentile)}" in line


@pytest.mark.parametrize("command", ["audit", "share-synthetic"])
def test_site_privacy_commands_refuse_n_below_one(capfd, study, tmp_path, command):
    package = tmp_path / "alpha.catphish"
    shutil.copytree(study / "alpha.catphish", package)
    extra = ["--out", tmp_path / "shared"] if command == "share-synthetic" else []
    for n in ("0", "-2"):
        line = refused(capfd, tmp_path, "site", command, package, "--data", study / "data", "--n", n, *extra)
        assert "--n must be at least" in line and line.endswith(f"got {n}")


def test_share_synthetic_with_an_unknown_feature_space_writes_nothing(capfd, study, tmp_path):
    line = refused(capfd, tmp_path, "site", "share-synthetic", study / "alpha.catphish", "--data", study / "data",
                   "--n", "2", "--out", tmp_path / "shared", "--features", "inception")
    assert "inception" in line


# ------------------------------------------------------------------------------------------------ classifiers (#7)
@pytest.fixture(scope="module")
def real(tmp_path_factory) -> Path:
    return write_cohort(tmp_path_factory.mktemp("real"), {"TCGA": 6, "UTSW": 6, "NYU": 6, "UCSF": 4})


def classifier_args(data: Path, out: Path, *extra: str | Path, mode: str = "centralized") -> list[str | Path]:
    return ["train", *TINY_CLASSIFIER, "--mode", mode, "--task", "idh", "--data", data, "--out", out, *extra]


def test_a_class_left_empty_by_missing_labels_is_refused(capfd, tmp_path):
    data = write_cohort(tmp_path / "data", {"TCGA": 1, "UCSF": 2})
    write_cohort(tmp_path / "data", {"UTSW": 3}, prefix="nolabel", idh=False)
    line = refused(capfd, tmp_path, *classifier_args(data, tmp_path / "run"))
    assert "no training subject of class 'wildtype'" in line


def test_fewer_subjects_than_folds_is_refused(capfd, tmp_path):
    data = write_cohort(tmp_path / "data", {"TCGA": 3, "UCSF": 2})
    line = refused(capfd, tmp_path, *classifier_args(data, tmp_path / "run", "--set", "classifier.folds=5"))
    assert "3 training subject(s) are fewer than classifier.folds=5" in line


def test_synthetic_cases_of_another_task_are_refused(capfd, real, tmp_path):
    other = write_cohort(tmp_path / "syn", {"synthetic-TCGA": 4}, prefix="syn", idh=False,
                         extra={"source_task": "tumor_type"})
    line = refused(capfd, tmp_path, *classifier_args(real, tmp_path / "run", "--synthetic", other, mode="synthetic"))
    assert "generated for task 'tumor_type', not 'idh'" in line


def test_a_run_folder_of_another_config_is_kept(capfd, real, tmp_path):
    out = tmp_path / "run"
    code, _ = catphish(capfd, *classifier_args(real, out))
    assert code == 0
    assert "already exists (use --resume" in refused(capfd, tmp_path, *classifier_args(real, out))
    line = refused(capfd, tmp_path, *classifier_args(real, out, "--resume", "--set", "classifier.lr=0.5"))
    assert f"{out}: holds a different run" in line
    code, _ = catphish(capfd, *classifier_args(real, out, "--overwrite", "--set", "classifier.lr=0.5"))
    assert code == 0


# ------------------------------------------------------------------------------------------------------- config
@pytest.mark.parametrize("value", ["diffusion.channels=[8,", "diffusion.steps: {"])
def test_a_malformed_override_is_one_line(capfd, tmp_path, value):
    line = refused(capfd, tmp_path, "site", "train", "--data", tmp_path, "--site", "a", "--task", "idh", "--out",
                   tmp_path / "p", "--set", value)
    assert "diffusion" in line
