"""Bad input (issue 3): every case is one clear line naming the file and the problem, exit 2, nothing half-written."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from typer.testing import CliRunner

from catphish.cli import app
from catphish.errors import CatphishError
from nifti_fixtures import LPS_SPACING_1MM, write_dataset, write_labels, write_nifti

SMALL_2D = ["--set", "data.grid=[16,16]", "--set", "data.spacing_mm=[1.5,1.5,1.5]", "--workers", "1"]


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("pristine")
    write_dataset(root, "brats2021", sites={"siteA": 2, "siteB": 1})
    return root


@pytest.fixture
def dataset(pristine: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(pristine, tmp_path / "data"))


def _file(root: Path, role: str, subject: str = "BraTS2021_siteA000") -> Path:
    return next(root.rglob(f"{subject}_{role}.nii.gz"))


def _rewrite(path: Path, data: np.ndarray, affine: np.ndarray = LPS_SPACING_1MM) -> None:
    path.unlink()
    write_nifti(path, data, affine)


def _missing_sequence(root: Path) -> tuple[Path, str]:
    path = _file(root, "t2")
    path.unlink()
    return path, "missing T2"


def _corrupt_gzip(root: Path) -> tuple[Path, str]:
    path = _file(root, "flair")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path, "corrupt or truncated"


def _not_nifti(root: Path) -> tuple[Path, str]:
    path = _file(root, "t1")
    path.unlink()
    path = path.with_name("BraTS2021_siteA000_t1.nii")
    path.write_text("this is a text file, not an image\n" * 20)
    return path, "not a valid NIfTI file"


def _four_d(root: Path) -> tuple[Path, str]:
    path = _file(root, "t1ce")
    _rewrite(path, np.ones((16, 16, 16, 2), dtype=np.int16))
    return path, "4D (2 volumes) image"


def _other_shape(root: Path) -> tuple[Path, str]:
    path = _file(root, "t2")
    _rewrite(path, np.asarray(nib.load(path).dataobj)[:, :, :15])
    return path, "shape 16×16×15 differs from T1 16×16×16"


def _shifted_affine(root: Path) -> tuple[Path, str]:
    path = _file(root, "flair")
    affine = LPS_SPACING_1MM.copy()
    affine[2, 3] = 2.5
    _rewrite(path, np.asarray(nib.load(path).dataobj), affine)
    return path, "affine differs from T1 by up to 2.50 mm"


def _empty_mask(root: Path) -> tuple[Path, str]:
    path = _file(root, "seg")
    _rewrite(path, np.zeros((16, 16, 16), dtype=np.int16))
    return path, "tumour segmentation is empty"


def _zero_sequence(root: Path) -> tuple[Path, str]:
    path = _file(root, "t1ce")
    _rewrite(path, np.zeros((16, 16, 16), dtype=np.int16))
    return path, "T1C is all zero"


def _nan_voxels(root: Path) -> tuple[Path, str]:
    path = _file(root, "flair")
    data = np.asarray(nib.load(path).dataobj).astype(np.float32)
    data[3, 4, 5], data[6, 6, 6] = np.nan, np.inf
    _rewrite(path, data)
    return path, "contains 2 NaN/Inf voxels"


def _no_labels(root: Path) -> tuple[Path, str]:
    path = root / "labels.csv"
    path.unlink()
    return path, "is missing"


def _label_column_missing(root: Path) -> tuple[Path, str]:
    path = root / "labels.csv"
    path.write_text(path.read_text().replace("tumor_type", "tumour"))
    return path, "missing column tumor_type"


def _unknown_class(root: Path) -> tuple[Path, str]:
    path = root / "labels.csv"
    path.write_text(path.read_text().replace("wildtype", "wild", 1))
    return path, "unknown idh value 'wild'"


def _duplicate_subject(root: Path) -> tuple[Path, str]:
    path = root / "labels.csv"
    lines = path.read_text().splitlines()
    path.write_text("\n".join([*lines, lines[1]]) + "\n")
    return path, "is listed twice"


DAMAGE: dict[str, Callable[[Path], tuple[Path, str]]] = {
    f.__name__.strip("_"): f for f in (
        _missing_sequence, _corrupt_gzip, _not_nifti, _four_d, _other_shape, _shifted_affine, _empty_mask,
        _zero_sequence, _nan_voxels, _no_labels, _label_column_missing, _unknown_class, _duplicate_subject)
}


def _invoke(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=True)


@pytest.mark.parametrize("case", DAMAGE)
def test_bad_input_is_reported_by_check_and_refused_by_prepare(dataset: Path, tmp_path: Path, case: str):
    path, problem = DAMAGE[case](dataset)
    checked = _invoke("data", "check", str(dataset), "--json", "--workers", "1")
    assert checked.exit_code == 2
    report = json.loads(checked.stdout)
    assert any(p["file"] == str(path) and problem in p["problem"] for p in report["problems"]), report["problems"]

    out = tmp_path / "cache"
    prepared = _invoke("data", "prepare", str(dataset), "--out", str(out), *SMALL_2D)
    assert isinstance(prepared.exception, CatphishError), prepared.output
    message = str(prepared.exception)
    assert "\n" not in message and message.startswith(f"{path.name}: ") and problem in message
    assert not out.exists()  # nothing half-written, not even an empty folder


def test_cli_prints_one_red_line_and_exits_2(dataset: Path, tmp_path: Path):
    path, _ = _missing_sequence(dataset)
    result = subprocess.run([sys.executable, "-c", "from catphish.cli import run; run()", "--quiet", "data", "prepare",
                             str(dataset), "--out", str(tmp_path / "cache"), *SMALL_2D],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and path.name in lines[0] and "missing T2" in lines[0], result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "cache").exists()


def test_data_error_found_late_leaves_an_existing_cache_untouched(dataset: Path, tmp_path: Path):
    out = tmp_path / "cache"
    assert _invoke("data", "prepare", str(dataset), "--out", str(out), *SMALL_2D).exit_code == 0
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*")}
    _nan_voxels(dataset)  # found only when voxels are read, after other subjects may be done
    result = _invoke("data", "prepare", str(dataset), "--out", str(out), *SMALL_2D)
    assert isinstance(result.exception, CatphishError)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*")} == before


def test_skip_invalid_prepares_the_rest_and_lists_what_was_skipped(dataset: Path, tmp_path: Path):
    missing, _ = _missing_sequence(dataset)
    seg = _file(dataset, "seg", "BraTS2021_siteA001")
    _rewrite(seg, np.zeros((16, 16, 16), dtype=np.int16))
    out = tmp_path / "cache"
    result = _invoke("data", "prepare", str(dataset), "--out", str(out), "--skip-invalid", *SMALL_2D)
    assert result.exit_code == 0, result.output
    assert [p.name for p in sorted(out.rglob("*.safetensors"))] == ["BraTS2021_siteB000.safetensors"]
    record = json.loads((out / "run.json").read_text())
    assert record["status"] == "finished" and record["prepared"] == 1
    skipped = {s["subject_id"]: s for s in record["skipped"]}
    assert set(skipped) == {"BraTS2021_siteA000", "BraTS2021_siteA001"}
    assert skipped["BraTS2021_siteA000"]["file"] == str(missing)
    assert "empty" in skipped["BraTS2021_siteA001"]["problem"]


def test_warnings_do_not_fail_check_or_prepare(dataset: Path, tmp_path: Path):
    rows = [line.split(",") for line in (dataset / "labels.csv").read_text().splitlines()]
    header, body = rows[0], rows[1:]
    kept = [dict(zip(header, row, strict=True)) for row in body if row[0] != "BraTS2021_siteB000"]  # files, no label
    write_labels(dataset, [*kept, {"subject_id": "ghost", "site": "siteB", "idh": "", "tumor_type": "", "split": ""}])
    checked = _invoke("data", "check", str(dataset), "--json", "--workers", "1")
    assert checked.exit_code == 0
    report = json.loads(checked.stdout)
    assert report["problems"] == []
    assert {w["problem"].split("'")[1] for w in report["sites"]["siteB"]["warnings"]} == {"BraTS2021_siteB000", "ghost"}
    out = tmp_path / "cache"
    assert _invoke("data", "prepare", str(dataset), "--out", str(out), *SMALL_2D).exit_code == 0
    assert len(list(out.rglob("*.safetensors"))) == 2


def test_path_that_does_not_exist(tmp_path: Path):
    for args in (("data", "check", str(tmp_path / "nope")),
                 ("data", "prepare", str(tmp_path / "nope"), "--out", str(tmp_path / "c"))):
        result = _invoke(*args)
        assert isinstance(result.exception, CatphishError)
        assert str(result.exception) == "nope: path does not exist"


def test_output_folder_that_cannot_be_written(dataset: Path, tmp_path: Path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    result = _invoke("data", "prepare", str(dataset), "--out", str(blocker / "cache"), *SMALL_2D)
    assert isinstance(result.exception, CatphishError)
    assert "cannot create the output folder" in str(result.exception) and "a_file is a file" in str(result.exception)
    assert blocker.read_text() == "not a folder"


def test_generic_naming_errors_name_the_subject_folder(tmp_path: Path):
    root = tmp_path / "data"
    write_dataset(root, "generic", sites={"siteA": 2})
    flair = next(root.rglob("flair.nii.gz"))
    volume = nib.load(flair).get_fdata().astype(np.float32)
    volume[0, 0, 0] = np.nan
    _rewrite(flair, volume)
    prepared = _invoke("data", "prepare", str(root), "--out", str(tmp_path / "cache"), *SMALL_2D)
    assert isinstance(prepared.exception, CatphishError), prepared.output
    assert str(prepared.exception).startswith(f"{flair.parent.name}/flair.nii.gz: ")
    assert "NaN" in str(prepared.exception)
