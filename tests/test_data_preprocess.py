"""Preprocessing and the prepared cache: 2D and 3D presets in every naming convention, caching, orientation, real data."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import nibabel as nib
import nibabel.processing
import numpy as np
import pytest
from typer.testing import CliRunner

from catphish.cli import app
from catphish.config import load_config
from catphish.data.loading import discover_dataset
from catphish.data.prepared import load_prepared, load_prepared_dir
from catphish.data.preprocess import (
    fit_to_grid,
    prepare_dataset,
    resample_to_spacing,
    tumour_slice_indices,
    zscore_nonzero,
)
from catphish.data.validation import check_dataset
from catphish.data.volumes import load_subject_volumes, read_subject_volumes, reorient_to_ras
from catphish.errors import CatphishError
from nifti_fixtures import NAMINGS, synthetic_volumes, to_lps, write_dataset, write_labels, write_nifti

REAL_SUBJECT = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "TCGA-FG-6692"
TINY_2D = ["data.grid=[16,16]", "data.spacing_mm=[1.5,1.5,1.5]", "data.slice_stride=1"]
TINY_3D = ["data.grid=[16,16,12]", "data.spacing_mm=[1.5,1.5,1.5]"]


def _sets(values: list[str]) -> list[str]:
    return [arg for value in values for arg in ("--set", value)]


def _invoke(*args: str):
    return CliRunner().invoke(app, list(args), catch_exceptions=True)


@pytest.mark.parametrize("naming", NAMINGS)
def test_check_and_prepare_2d_and_3d_in_each_naming(tmp_path: Path, naming: str):
    rows = write_dataset(tmp_path / "data", naming, sites={"siteA": 2, "siteB": 1})
    checked = _invoke("data", "check", str(tmp_path / "data"), "--json", "--workers", "1")
    assert checked.exit_code == 0, checked.output
    report = json.loads(checked.stdout)
    assert report["problems"] == []
    assert report["sites"]["siteA"]["subjects"] == 2
    assert report["sites"]["siteA"]["idh"] == {"mutant": 1, "wildtype": 1}
    assert report["sites"]["siteB"]["tumor_type"] == {"oligodendroglioma": 0, "astrocytoma": 0, "glioblastoma": 1}
    assert report["sites"]["siteA"]["shape"] == {"min": [16, 16, 16], "max": [16, 16, 16]}

    for preset, values, shape in (("demo", TINY_2D, (3, 5, 16, 16)), ("small3d", TINY_3D, (1, 5, 16, 16, 12))):
        out = tmp_path / preset
        result = _invoke("data", "prepare", str(tmp_path / "data"), "--preset", preset, "--out", str(out),
                         "--workers", "1", *_sets(values))
        assert result.exit_code == 0, result.output
        subjects = load_prepared_dir(out)
        assert [s.subject_id for s in subjects] == [r["subject_id"] for r in rows]
        for subject, row in zip(subjects, rows, strict=True):
            assert subject.image.shape == shape and subject.image.dtype == np.float32
            assert (subject.site, subject.idh, subject.tumor_type, subject.split) == (
                row["site"], row["idh"], row["tumor_type"], row["split"])
            assert subject.extra == {"age": row["age"]}
            mask = subject.image[:, 4]
            assert set(np.unique(mask)) == {0.0, 1.0} and mask.sum() > 0
            brain = subject.image[:, 0] != 0
            assert abs(float(subject.image[:, 0][brain].mean())) < 0.5  # z-scored over the brain, 0 outside
        assert json.loads((out / "run.json").read_text())["status"] == "finished"


def _prepare(data: Path, out: Path, values: list[str] = TINY_2D, preset: str = "demo", workers: int = 1) -> dict:
    prepare_dataset(data, load_config(None, preset, values), out, workers=workers)
    return json.loads((out / "run.json").read_text())


def test_second_run_reuses_the_cache_and_changes_are_picked_up(tmp_path: Path):
    data, out = tmp_path / "data", tmp_path / "cache"
    rows = write_dataset(data, "brats2021", sites={"siteA": 3})
    assert _prepare(data, out)["prepared"] == 3
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")}
    second = _prepare(data, out)
    assert (second["prepared"], second["reused"]) == (0, 3)
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.safetensors")} == stamps

    t1 = next(data.rglob("BraTS2021_siteA000_t1.nii.gz"))
    os.utime(t1)  # touched but unchanged: still reused
    assert _prepare(data, out)["reused"] == 3
    image = nib.load(t1)
    write_nifti(t1, np.asarray(image.dataobj) * 2, image.affine)  # new content: only this subject again
    assert (_prepare(data, out)["prepared"], _prepare(data, out)["reused"]) == (1, 3)

    rows[1]["idh"] = "wildtype"  # a label change re-prepares that subject with the new label
    write_labels(data, rows[:2])  # … and a subject that left the dataset leaves the cache
    record = _prepare(data, out)
    assert (record["prepared"], record["reused"], record["removed_stale"]) == (1, 1, 1)
    assert load_prepared(out / "siteA" / "BraTS2021_siteA001.safetensors").idh == "wildtype"
    assert sorted(p.name for p in out.rglob("*.safetensors")) == ["BraTS2021_siteA000.safetensors",
                                                                   "BraTS2021_siteA001.safetensors"]
    assert _prepare(data, out, ["data.grid=[8,8]", *TINY_2D[1:]])["prepared"] == 2  # other settings: all again


def test_parallel_workers_give_the_same_result_as_one(tmp_path: Path):
    data = tmp_path / "data"
    write_dataset(data, "generic", sites={"siteA": 2, "siteB": 2})
    _prepare(data, tmp_path / "one", TINY_3D, "small3d", workers=1)
    record = _prepare(data, tmp_path / "two", TINY_3D, "small3d", workers=2)
    assert record["workers"] == 2 and record["prepared"] == 4
    for one, two in zip(load_prepared_dir(tmp_path / "one"), load_prepared_dir(tmp_path / "two"), strict=True):
        assert one.subject_id == two.subject_id
        np.testing.assert_array_equal(one.image, two.image)


def test_sites_selects_and_unknown_site_is_an_error(tmp_path: Path):
    data = tmp_path / "data"
    write_dataset(data, "brats2023", sites={"siteA": 1, "siteB": 1})
    paths = prepare_dataset(data, load_config(None, "demo", TINY_2D), tmp_path / "cache", sites=["siteB"], workers=1)
    assert [p.parent.name for p in paths] == ["siteB"]
    with pytest.raises(CatphishError, match="unknown site 'siteC'"):
        prepare_dataset(data, load_config(None, "demo", TINY_2D), tmp_path / "cache", sites=["siteC"], workers=1)


def test_storage_orientation_does_not_change_the_result(tmp_path: Path):
    volumes = synthetic_volumes((20, 18, 16), seed=3)
    for name, affine, transform in (("ras", np.diag([1.0, 1.0, 1.0, 1.0]), lambda v: v),
                                    ("lps", np.diag([-1.0, -1.0, 1.0, 1.0]), to_lps)):
        for role, stem in (("t1", "t1"), ("t1c", "t1c"), ("t2", "t2"), ("flair", "flair"), ("seg", "mask")):
            write_nifti(tmp_path / name / "site" / "s1" / f"{stem}.nii.gz", transform(volumes[role]), affine)
        write_labels(tmp_path / name, [{"subject_id": "s1", "site": "site", "idh": "", "tumor_type": "", "split": ""}])
        _prepare(tmp_path / name, tmp_path / f"{name}-cache", ["data.grid=[24,24,16]", "data.spacing_mm=[1,1,1]"],
                 "small3d")
    ras = load_prepared(tmp_path / "ras-cache" / "site" / "s1.safetensors").image
    lps = load_prepared(tmp_path / "lps-cache" / "site" / "s1.safetensors").image
    np.testing.assert_allclose(ras, lps, atol=1e-5)
    mask = ras[0, 4]
    assert np.argwhere(mask)[:, 0].mean() > mask.shape[0] / 2  # the fixture's tumour is in the right hemisphere (+x)


def test_load_subject_volumes_gives_ras_arrays_and_a_binary_mask(tmp_path: Path):
    write_dataset(tmp_path, "ucsf-pdgm", sites={"siteA": 1})
    subject = discover_dataset(tmp_path).subjects[0]
    arrays = load_subject_volumes(subject)
    assert sorted(arrays) == ["flair", "mask", "t1", "t1c", "t2"]
    assert arrays["t1"].dtype == np.float32 and arrays["mask"].dtype == np.uint8
    reference = synthetic_volumes((16, 16, 16), seed=0)  # fixture subject 0 of the first site uses seed 0
    np.testing.assert_array_equal(arrays["t1"], reference["t1"])
    np.testing.assert_array_equal(arrays["mask"], (reference["seg"] > 0).astype(np.uint8))


def test_array_transforms():
    image = np.zeros((6, 6, 6), dtype=np.float32)
    image[1:5, 1:5, 1:5] = np.arange(64, dtype=np.float32).reshape(4, 4, 4) + 1
    z = zscore_nonzero(image)
    inside = image != 0
    assert abs(z[inside].mean()) < 1e-5 and abs(z[inside].std() - 1) < 1e-4 and not z[~inside].any()

    assert resample_to_spacing(np.ones((30, 20, 10), np.float32), (1.0, 1.0, 2.0), (3.0, 2.0, 1.0)).shape == (10, 10, 20)

    volume = np.zeros((2, 40, 10), dtype=np.float32)
    volume[:, 30:36, 4:6] = 1  # tumour near one end of a long axis
    fitted = fit_to_grid(volume, (16, 16), focus=(slice(30, 36), slice(4, 6)))
    assert fitted.shape == (2, 16, 16) and fitted.sum() == volume.sum()  # cropped around it, padded elsewhere

    mask = np.zeros((4, 4, 20))
    mask[1, 1, 2:5], mask[:, :, 3] = 1, 1
    assert tumour_slice_indices(mask, 3, 2) == [1, 3, 5]  # the largest area (3) and neighbours 2 voxels away
    mask[:, :, 1] = 2
    assert tumour_slice_indices(mask, 3, 2) == [0, 2, 4]  # largest area at 1: shifted to stay inside
    assert tumour_slice_indices(mask[..., :3], 5, 1) == [0, 1, 2]  # too thin: each slice once
    assert tumour_slice_indices(mask[..., 1:2], 3, 2) == [0]  # a generated 2D case: its one slice


@pytest.mark.skipif(not REAL_SUBJECT.is_dir(), reason="shared real TCGA subject not available")
def test_real_raw_subject_is_checked_loaded_reoriented_and_resampled(tmp_path: Path):
    report = check_dataset(REAL_SUBJECT, workers=1)
    problems = {Path(p.file).name: p.problem for p in report.problems}
    assert "missing segmentation" in problems["TCGA-FG-6692_seg.nii.gz"]
    assert "shape 224×256×26 differs from T1 256×224×26" in problems["TCGA-FG-6692_t2.nii.gz"]
    assert "shape 208×256×26 differs from T1" in problems["TCGA-FG-6692_flair.nii.gz"]

    subject = discover_dataset(REAL_SUBJECT).unlabelled[0]
    with pytest.raises(CatphishError, match="TCGA-FG-6692_t2.nii.gz: shape"):
        read_subject_volumes(subject, require_segmentation=False)
    native = read_subject_volumes(subject, resample_to="t1", require_segmentation=False)
    assert native.axis_codes == ("L", "A", "S") and native.shape == (256, 224, 26)
    assert {a.shape for a in native.arrays.values()} == {(256, 224, 26)}
    t1, t2 = nib.load(subject.files["t1"]), nib.load(subject.files["t2"])
    np.testing.assert_array_equal(native.arrays["t1"], np.asarray(t1.dataobj, dtype=np.float32))
    expected_t2 = nib.processing.resample_from_to(t2, t1, order=1).get_fdata()  # independent world-coordinate path
    assert np.abs(native.arrays["t2"] - expected_t2).max() <= 0.5  # nibabel rounds back to int16

    ras = reorient_to_ras(native)
    assert ras.axis_codes == ("R", "A", "S")
    np.testing.assert_allclose(ras.spacing, (0.898, 0.898, 5.5), atol=1e-3)
    voxel = np.array([10, 20, 5, 1.0])
    flipped = np.array([255 - 10, 20, 5, 1.0])
    np.testing.assert_allclose(ras.affine @ voxel, native.affine @ flipped, atol=1e-4)  # same world point
    assert ras.arrays["flair"][10, 20, 5] == native.arrays["flair"][245, 20, 5]

    # the full pipeline runs on it once a (here: synthetic) segmentation is added beside the real sequences
    data = tmp_path / "data"
    shutil.copytree(REAL_SUBJECT, data / "tcga")
    seg = np.zeros((256, 224, 26), dtype=np.uint8)
    seg[100:140, 90:130, 10:16] = 1
    write_nifti(data / "tcga" / "TCGA-FG-6692_seg.nii.gz", seg, t1.affine)
    write_labels(data, [{"subject_id": "TCGA-FG-6692", "site": "tcga", "idh": "mutant", "tumor_type": "astrocytoma",
                         "split": "test"}])
    with pytest.raises(CatphishError, match="not in one voxel grid"):
        prepare_dataset(data, load_config(None, "small3d"), tmp_path / "cache", workers=1)
    [path] = prepare_dataset(data, load_config(None, "small3d", ["data.resample_to=t1"]), tmp_path / "cache", workers=1)
    image = load_prepared(path).image
    assert image.shape == (1, 5, 64, 64, 48) and image[0, 4].sum() > 0
    assert all(np.count_nonzero(image[0, c]) > 10_000 for c in range(4))
