"""The phantom consortium on disk: cohort plan, determinism, the data contract (`data check`), `data show`, bad input."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from catphish.cli import app
from catphish.data.phantom import CONSORTIUM, build_consortium, plan_cohort, site_counts
from catphish.data.phantom.build import subject_files
from catphish.reporting.montage import MontageRow, render_montage, tumour_slice

SEED = 7
TINY_SITES = "UTSWp2"


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The real console entry point (error policy: one red line, exit 2)."""
    return subprocess.run([sys.executable, "-c", "from catphish.cli import run; run()", *args],
                          capture_output=True, text=True, timeout=300, check=False)


def catphish_error(*args: str) -> str:
    """Run in-process (fast) and return the CatphishError message the console entry point would print."""
    from catphish.errors import CatphishError

    result = CliRunner().invoke(app, list(args), catch_exceptions=True)
    assert isinstance(result.exception, CatphishError), (result.exception, result.output)
    return str(result.exception)


def digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and (p.name.endswith(".nii.gz") or p.name == "labels.csv")}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny two-site cohort written by the CLI with two worker processes."""
    out = tmp_path_factory.mktemp("phantom") / "cohort"
    result = run_cli("-q", "data", "phantom", str(out), "--scale", "0.005", "--seed", str(SEED), "--sites", TINY_SITES,
                     "--workers", "2")
    assert result.returncode == 0, result.stdout + result.stderr
    return out


# ------------------------------------------------------------------------------------------------------ the plan
def test_full_scale_counts_match_the_consortium_table() -> None:
    for site in CONSORTIUM:
        counts = site_counts(site, 1.0, min_per_class=0)
        assert counts["oligodendroglioma"] + counts["astrocytoma"] + counts["mutant_untyped"] == site.idh_mutant
        assert counts["glioblastoma"] + counts["wildtype_untyped"] == site.idh_wildtype
        if site.has_tumour_type:
            assert (counts["oligodendroglioma"], counts["astrocytoma"], counts["glioblastoma"]) == (
                site.oligodendroglioma, site.astrocytoma, site.glioblastoma)
    assert sum(len([p for p in plan_cohort(1.0, 0, [s.site], min_per_class=0)]) for s in CONSORTIUM) == 2491


def test_scaled_cohort_keeps_ratios_and_a_few_subjects_per_class() -> None:
    plans = plan_cohort(0.1, SEED)
    assert 240 <= len(plans) <= 270
    assert len({p.subject_id for p in plans}) == len(plans)
    for site in CONSORTIUM:
        mine = [p for p in plans if p.site == site.site]
        mutant = sum(p.idh == "mutant" for p in mine)
        assert mutant >= 3 and len(mine) - mutant >= 3
        if site.idh_mutant * 0.1 >= 10:  # classes large enough that the minimum does not distort them
            assert abs(mutant / len(mine) - site.idh_mutant / site.subjects) < 0.05
        if site.has_tumour_type:
            for tumour_type in ("oligodendroglioma", "astrocytoma", "glioblastoma"):
                assert sum(p.tumor_type == tumour_type for p in mine) >= 3
        else:
            assert all(p.tumor_type == "" for p in mine)  # UPenn: IDH labels only
        assert {p.split for p in mine} == {"train" if site.site in ("TCGA", "UTSW", "EGD") else "test"}
    for plan in plans:  # IDH and tumour type agree (WHO 2021)
        assert plan.idh == ("wildtype" if plan.kind == "glioblastoma" else "mutant")
        assert plan.tumor_type in ("", plan.kind)


def test_plan_is_a_function_of_the_seed() -> None:
    assert plan_cohort(0.05, 1) == plan_cohort(0.05, 1)
    assert [p.kind for p in plan_cohort(0.05, 1)] != [p.kind for p in plan_cohort(0.05, 2)]


# ------------------------------------------------------------------------------------------------- on disk
def test_cohort_follows_brats_naming_and_labels(cohort: Path) -> None:
    with (cohort / "labels.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == ["subject_id", "site", "idh", "tumor_type", "split"]
    plans = plan_cohort(0.005, SEED, TINY_SITES.split(","))
    assert [r["subject_id"] for r in rows] == [p.subject_id for p in plans]
    assert {r["split"] for r in rows} == {""}  # site roles depend on the task (NYU: tumour-type training, IDH test)
    for plan in plans:
        for path in subject_files(cohort, plan):
            assert path.is_file(), path
    first = plans[0]
    assert (cohort / first.site / first.subject_id / f"{first.subject_id}_t1ce.nii.gz").is_file()
    record = json.loads((cohort / "run.json").read_text())
    assert record["status"] == "finished" and record["summary"]["subjects"] == len(plans)


def test_same_seed_gives_identical_files_whatever_the_worker_count(cohort: Path, tmp_path: Path) -> None:
    plans = plan_cohort(0.005, SEED, TINY_SITES.split(","))
    again = tmp_path / "again"
    again.mkdir()
    build_consortium(again, plans, SEED, 2.0, workers=1)
    assert digests(again) == digests(cohort)
    # a resumed run regenerates exactly the missing subject
    missing = subject_files(again, plans[1])[2]
    missing.unlink()
    summary = build_consortium(again, plans, SEED, 2.0, workers=1, resume=True)
    assert summary.generated == 1 and digests(again) == digests(cohort)


def test_another_seed_gives_other_images(tmp_path: Path) -> None:
    plans = plan_cohort(0.005, SEED, ["UPenn"])[:1]
    first, second = tmp_path / "a", tmp_path / "b"
    first.mkdir(), second.mkdir()
    build_consortium(first, plans, SEED, 2.0, workers=1)
    build_consortium(second, plans, SEED + 1, 2.0, workers=1)
    name = f"UPenn/{plans[0].subject_id}/{plans[0].subject_id}_t1.nii.gz"
    assert digests(first)[name] != digests(second)[name]


def test_every_file_passes_data_check(cohort: Path) -> None:
    result = run_cli("-q", "data", "check", str(cohort), "--json")
    if "No such command 'check'" in result.stderr:  # pragma: no cover - only while `data check` is not built
        pytest.skip("`catphish data check` is not available")
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(result.stdout)
    assert report["problems"] == []
    assert sum(site["subjects"] for site in report["sites"].values()) == len(plan_cohort(0.005, SEED, TINY_SITES.split(",")))


def test_data_show_writes_a_montage(cohort: Path, tmp_path: Path) -> None:
    plans = plan_cohort(0.005, SEED, TINY_SITES.split(","))
    out = tmp_path / "figures" / "montage.png"
    result = run_cli("-q", "data", "show", str(cohort), "--subjects", f"{plans[0].subject_id},{plans[-1].subject_id}",
                     "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in out.parent.iterdir()] == ["montage.png"]  # no temporary file left behind


def test_data_show_names_an_unknown_subject(cohort: Path, tmp_path: Path) -> None:
    out = tmp_path / "montage.png"
    assert "NOPE-0001" in catphish_error("data", "show", str(cohort), "--subjects", "NOPE-0001", "--out", str(out))
    assert not out.exists()


# ------------------------------------------------------------------------------------------------ bad input
@pytest.mark.parametrize(("args", "message"), [
    (["--resolution", "3"], "--resolution must be 1 or 2"),
    (["--sites", "Mars"], "unknown phantom site 'mars'"),
    (["--scale", "0"], "--scale must be positive"),
])
def test_bad_options_are_one_clear_error(tmp_path: Path, args: list[str], message: str) -> None:
    out = tmp_path / "cohort"
    assert message in catphish_error("data", "phantom", str(out), *args)
    assert not out.exists() or not any(out.iterdir())


def test_bad_input_exits_2_with_one_line(tmp_path: Path) -> None:
    result = run_cli("data", "phantom", str(tmp_path / "cohort"), "--resolution", "3")
    assert result.returncode == 2
    assert "--resolution must be 1 or 2" in result.stdout + result.stderr
    assert "Traceback" not in result.stderr


def test_an_existing_cohort_is_not_overwritten_silently(cohort: Path) -> None:
    before = digests(cohort)
    assert "already exists" in catphish_error("data", "phantom", str(cohort), "--sites", "UPenn", "--scale", "0.005")
    assert digests(cohort) == before


# ------------------------------------------------------------------------------------------------- montage
def test_montage_uses_the_largest_tumour_slice(tmp_path: Path) -> None:
    segmentation = np.zeros((12, 12, 8), np.uint8)
    segmentation[3:6, 3:6, 2] = 2
    segmentation[2:9, 2:9, 5] = 1
    assert tumour_slice(segmentation) == 5
    assert tumour_slice(np.zeros((4, 4, 6))) == 3
    rng = np.random.default_rng(0)
    volumes = {name: rng.random((12, 12, 8)).astype(np.float32) + 0.1 for name in ("t1", "t1c", "t2", "flair")}
    out = render_montage([MontageRow("a", volumes, segmentation, np.eye(4))], tmp_path / "m.png")
    assert out.stat().st_size > 1000
