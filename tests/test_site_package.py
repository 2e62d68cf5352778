"""`catphish site train|inspect|verify|sample`: the package a site hands over, its checks, and sampling from it."""

import json
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from catphish.cli import app
from catphish.errors import ArtifactError, CatphishError
from catphish.modes.site_package import load_site_package
from catphish.synthesis.sampling import sample_cases
from ldm_fixtures import TINY_2D, tiny_subjects, write_prepared

SETS = [arg for item in TINY_2D for arg in ("--set", item)]


def _invoke(*args):
    return CliRunner().invoke(app, ["--quiet", *args], catch_exceptions=True)


def _catphish(*args):
    return subprocess.run([sys.executable, "-c", "from catphish.cli import run; run()", "--quiet", *args],
                          capture_output=True, text=True, check=False)


def _train_args(data, out, *extra):
    return ["site", "train", "--data", str(data), "--site", "alpha", "--task", "idh", "--out", str(out), *SETS, *extra]


@pytest.fixture(scope="module")
def cohort_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("prepared")
    subjects = tiny_subjects(per_class=4) + tiny_subjects(per_class=2, site="beta", seed=1)
    return write_prepared(folder, subjects)


@pytest.fixture(scope="module")
def package(cohort_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("packages") / "alpha.catphish"
    result = _invoke(*_train_args(cohort_dir, out))
    assert result.exit_code == 0, result.output + repr(result.exception)
    return out


def test_train_writes_a_complete_package_without_subject_data(package, cohort_dir):
    names = sorted(p.name for p in package.iterdir())
    assert names == ["card.json", "config.json", "manifest.json", "metrics.csv", "model.safetensors", "preview.png",
                     "run.json"]
    assert not package.with_name(package.name + ".partial").exists()
    card = json.loads((package / "card.json").read_text())
    assert card["site"] == "alpha" and card["task"] == "idh" and card["format_version"] == 2
    assert [(c["name"], c["training_subjects"], c["holdout_subjects"]) for c in card["classes"]] == [
        ("mutant", 3, 1), ("wildtype", 3, 1)]
    assert set(card["training"]) == {"autoencoder", "diffusion"}
    assert card["training"]["diffusion"]["steps"] == 2 and min(card["latent_normalisation"]["scale"]) > 0
    assert set(card["reconstruction_quality"]["ssim"]) == {"t1", "t1c", "t2", "flair"}
    assert card["perceptual_loss"]["enabled"] is False and "no perceptual network" in card["perceptual_loss"]["reason"]
    assert card["differential_privacy"] is None and card["versions"]["monai"]
    for path in package.iterdir():  # no subject ids or file names of patients anywhere in the package
        assert b"PATIENT-" not in path.read_bytes(), path.name
    assert card["training"]["autoencoder"]["seconds_per_step"] > 0 and card["wall_seconds"] > 0


def test_verify_and_inspect_a_good_package(package):
    result = _invoke("site", "verify", str(package))
    assert result.exit_code == 0 and "ok" in result.output
    shown = _invoke("site", "inspect", str(package))
    assert shown.exit_code == 0 and "mutant (3 subjects)" in shown.output and "perceptual loss" in shown.output
    as_json = _invoke("site", "inspect", str(package), "--json")
    assert json.loads(as_json.output)["site"] == "alpha"


def _damaged_copy(package, tmp_path, damage):
    copy = tmp_path / "copy.catphish"
    shutil.copytree(package, copy)
    damage(copy)
    return copy


def _truncate(folder):
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])


def _tamper(folder):
    data = bytearray((folder / "model.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (folder / "model.safetensors").write_bytes(bytes(data))


def _future_format(folder):
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["format_version"] = 99
    (folder / "manifest.json").write_text(json.dumps(manifest))


def _add_pickle(folder):
    torch.save({"x": 1}, folder / "extra.pt")


@pytest.mark.parametrize(("damage", "reason"), [
    (_truncate, "model.safetensors: sha256 does not match"),
    (_tamper, "model.safetensors: sha256 does not match"),
    (_future_format, "format version 99 is not supported"),
    (_add_pickle, "extra.pt: refusing to load a pickle"),
])
def test_verify_refuses_a_damaged_package_with_the_reason(package, tmp_path, damage, reason):
    copy = _damaged_copy(package, tmp_path, damage)
    result = _invoke("site", "verify", str(copy))
    assert result.exit_code != 0 and isinstance(result.exception, ArtifactError)
    assert reason in str(result.exception)


def test_verify_exits_2_with_one_red_line(package, tmp_path):
    copy = _damaged_copy(package, tmp_path, _tamper)
    result = _catphish("site", "verify", str(copy))
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "sha256 does not match" in lines[0] and "Traceback" not in result.stderr


def test_an_existing_package_is_refused_unless_overwrite(package, cohort_dir, tmp_path):
    copy = tmp_path / "again.catphish"
    shutil.copytree(package, copy)
    before = sorted(p.name for p in copy.iterdir())
    result = _invoke(*_train_args(cohort_dir, copy))
    assert isinstance(result.exception, CatphishError) and "already exists (use --overwrite" in str(result.exception)
    assert sorted(p.name for p in copy.iterdir()) == before
    resumed = _invoke(*_train_args(cohort_dir, copy, "--resume"))  # finished: nothing to do
    assert resumed.exit_code == 0


def test_bad_site_is_refused_and_nothing_is_left_behind(cohort_dir, tmp_path):
    out = tmp_path / "nowhere.catphish"
    result = _catphish(*_train_args(cohort_dir, out)[:5], "omega", *_train_args(cohort_dir, out)[6:])
    assert result.returncode == 2 and "site 'omega' is not in the data (sites: alpha, beta)" in result.stderr
    assert not out.exists()


def test_site_with_too_few_subjects_is_refused(cohort_dir, tmp_path):
    args = _train_args(cohort_dir, tmp_path / "beta.catphish")
    args[args.index("alpha")] = "beta"
    result = _invoke(*args, "--set", "autoencoder.holdout_fraction=0.5")
    assert isinstance(result.exception, CatphishError) and "too few subjects" in str(result.exception)
    assert not (tmp_path / "beta.catphish").exists()


def test_sample_writes_cases_readable_as_a_dataset(package, tmp_path):
    out = tmp_path / "synthetic"
    result = _invoke("site", "sample", str(package), "--class", "all", "--n", "2", "--sampler", "ddim", "--steps", "2",
                     "--guidance", "2.0", "--out", str(out))
    assert result.exit_code == 0, result.output + repr(result.exception)
    labels = (out / "labels.csv").read_text().splitlines()
    assert labels[0].startswith("subject_id,site,idh,tumor_type,split")
    assert len(labels) == 5 and all(",synthetic-alpha," in line for line in labels[1:])
    first = out / "synthetic-alpha" / "synthetic-alpha-mutant-00001"
    assert sorted(p.name for p in first.iterdir()) == sorted(
        f"synthetic-alpha-mutant-00001_{s}.nii.gz" for s in ("t1", "t1ce", "t2", "flair", "seg"))
    segmentation = np.asarray(nib.load(first / "synthetic-alpha-mutant-00001_seg.nii.gz").dataobj)
    assert segmentation.shape == (16, 16, 1) and set(np.unique(segmentation)) <= {0, 1}
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
    again = _invoke("site", "sample", str(package), "--class", "mutant", "--n", "1", "--steps", "2", "--out", str(out))
    assert again.exit_code == 0 and (out / "synthetic-alpha" / "synthetic-alpha-mutant-00003").is_dir()
    from catphish.data.loading import discover_dataset

    dataset = discover_dataset(out)
    assert len(dataset.subjects) == 5 and not dataset.problems


@pytest.mark.parametrize(("arguments", "message"), [
    (["--class", "glioblastoma", "--n", "1"], "class 'glioblastoma' is not in this site package"),
    (["--class", "all", "--n", "0"], "--n must be at least 1"),
    (["--class", "all", "--n", "1", "--sampler", "euler"], "unknown sampler 'euler'"),
    (["--class", "all", "--n", "1", "--steps", "5000"], "--steps must be between 1 and 1000"),
    (["--class", "all", "--n", "1", "--guidance", "-1"], "--guidance must be at least 0")])
def test_sample_refuses_bad_requests_before_writing_anything(package, tmp_path, arguments, message):
    out = tmp_path / "synthetic"
    result = _invoke("site", "sample", str(package), *arguments, "--out", str(out))
    assert isinstance(result.exception, CatphishError) and message in str(result.exception)
    assert not out.exists()


def test_sample_never_writes_into_a_real_dataset(package, tmp_path):
    from nifti_fixtures import write_dataset

    write_dataset(tmp_path / "real", sites={"alpha": 2})
    before = sorted(str(p) for p in (tmp_path / "real").rglob("*"))
    result = _catphish("site", "sample", str(package), "--class", "mutant", "--n", "1", "--steps", "2", "--out",
                       str(tmp_path / "real"))
    assert result.returncode == 2 and "holds data that `site sample` did not generate" in result.stderr
    assert sorted(str(p) for p in (tmp_path / "real").rglob("*")) == before


def test_sample_cases_is_reproducible_for_a_seed(package):
    loaded = load_site_package(package, device="cpu")
    first = sample_cases(loaded, "wildtype", 2, "ddpm", 3, 1.5, seed=7, batch_size=2, show_progress=False)
    second = sample_cases(loaded, "wildtype", 2, "ddpm", 3, 1.5, seed=7, batch_size=2, show_progress=False)
    other = sample_cases(loaded, "wildtype", 2, "ddpm", 3, 1.5, seed=8, batch_size=2, show_progress=False)
    assert first.shape == (2, 5, 16, 16) and np.array_equal(first, second) and not np.array_equal(first, other)
    assert set(np.unique(first[:, 4])) <= {0.0, 1.0}
    with pytest.raises(CatphishError, match="class 'glioblastoma' is not in this site package"):
        sample_cases(loaded, "glioblastoma", 1)


def test_ctrl_c_keeps_the_checkpoint_and_resume_finishes_the_package(cohort_dir, tmp_path, monkeypatch):
    import catphish.training.ldm as ldm

    out = tmp_path / "interrupted.catphish"
    original = ldm.diffusion_loss

    def interrupt(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(ldm, "diffusion_loss", interrupt)
    stopped = _invoke(*_train_args(cohort_dir, out))
    assert stopped.exit_code != 0
    partial = out.with_name(out.name + ".partial")
    assert not out.exists() and (partial / "training" / "autoencoder.safetensors").exists()
    assert json.loads((partial / "run.json").read_text())["status"] == "interrupted"
    monkeypatch.setattr(ldm, "diffusion_loss", original)
    refused = _invoke(*_train_args(cohort_dir, out))
    assert isinstance(refused.exception, CatphishError) and "--resume" in str(refused.exception)
    resumed = _invoke(*_train_args(cohort_dir, out, "--resume"))
    assert resumed.exit_code == 0, repr(resumed.exception)
    assert load_site_package(out).card["training"]["diffusion"]["steps"] == 2 and not partial.exists()


def test_train_prepares_a_raw_dataset_of_the_site(tmp_path):
    from nifti_fixtures import write_dataset

    write_dataset(tmp_path / "raw", sites={"siteA": 9, "siteB": 2})
    out = tmp_path / "siteA.catphish"
    result = _invoke("site", "train", "--data", str(tmp_path / "raw"), "--site", "siteA", "--task", "idh", "--out",
                     str(out), *SETS, "--set", "data.spacing_mm=[1,1,1]")
    assert result.exit_code == 0, repr(result.exception)
    card = json.loads((out / "card.json").read_text())
    assert {c["name"]: c["training_subjects"] for c in card["classes"]} == {"mutant": 2, "wildtype": 3}
    for path in out.iterdir():
        assert b"BraTS2021_siteA" not in path.read_bytes(), path.name
