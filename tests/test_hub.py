"""Hub synthesis and filter, and the site-side audit, on tiny site packages (16×16 slices, 2 training steps)."""

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from catphish.artifacts import read_json, verify_folder
from catphish.errors import ArtifactError, CatphishError
from catphish.modes import hub
from catphish.modes.audit import audit_package, share_synthetic
from catphish.modes.site_package import TrainRequest, train_site_package
from ldm_fixtures import tiny_config, tiny_subjects, write_prepared


def _train(tmp, site, task="idh", classes=("mutant", "wildtype")):
    data = write_prepared(tmp / f"data-{site}-{task}", tiny_subjects(per_class=4, site=site, task=task, classes=classes))
    out = tmp / f"{site}-{task}.catphish"
    train_site_package(TrainRequest(data_dir=data, site=site, task=task, config=tiny_config(2), out=out,
                                    show_progress=False))
    return out, data


@pytest.fixture(scope="module")
def packages(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("packages")
    alpha, alpha_data = _train(tmp, "alpha")
    beta, _ = _train(tmp, "beta")
    return {"alpha": alpha, "beta": beta, "alpha_data": alpha_data, "tmp": tmp}


def _request(packages, out, **kw):
    values = {"packages": (str(packages["alpha"]), str(packages["beta"])), "out": str(out), "per_class": 3,
              "steps": 2, "batch_size": 2, "seed": 7}
    values.update(kw)
    return hub.SynthesisRequest(**values)


def _arrays(folder):
    return {p.name: np.asarray(nib.load(p).dataobj) for p in sorted(folder.rglob("*.nii.gz"))}


def _same_cohort(first, second):
    """Equal up to float rounding (worker processes run with fewer torch threads, which reorders sums)."""
    assert first.keys() == second.keys()
    for name in first:
        if name.endswith("_seg.nii.gz"):
            assert np.mean(first[name] != second[name]) < 0.02, name
        else:
            assert np.allclose(first[name], second[name], atol=1e-3), name


def test_synthesize_writes_the_data_contract_with_provenance(packages, tmp_path):
    summary = hub.synthesize(_request(packages, tmp_path / "syn"))
    assert summary["cases"] == 12
    rows = (tmp_path / "syn" / "labels.csv").read_text().splitlines()
    header = rows[0].split(",")
    assert {"source_task", "package_sha256", "seed", "sampler"} <= set(header)
    assert sum("synthetic-alpha" in r for r in rows) == 6 and sum(",mutant," in r for r in rows) == 6
    verify_folder(tmp_path / "syn", kind="synthetic-cohort")
    assert not (tmp_path / "syn" / ".batches").exists()
    assert read_json(tmp_path / "syn" / "run.json")["status"] == "finished"


def test_synthesis_is_deterministic_whatever_the_workers(packages, tmp_path):
    hub.synthesize(_request(packages, tmp_path / "one"))
    hub.synthesize(_request(packages, tmp_path / "two", workers=2))
    _same_cohort(_arrays(tmp_path / "one"), _arrays(tmp_path / "two"))


def test_killed_synthesis_resumes_keeping_finished_batches(packages, tmp_path, monkeypatch):
    real = hub.run_batch
    calls = []

    def flaky(job, out, device, threads=None):
        calls.append(job)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(job, out, device, threads)

    monkeypatch.setattr(hub, "run_batch", flaky)
    with pytest.raises(KeyboardInterrupt):
        hub.synthesize(_request(packages, tmp_path / "syn"))
    kept = list((tmp_path / "syn" / ".batches").rglob("*.safetensors"))
    assert len(kept) == 2
    monkeypatch.setattr(hub, "run_batch", real)
    with pytest.raises(CatphishError, match="already exists"):
        hub.synthesize(_request(packages, tmp_path / "syn"))
    hub.synthesize(_request(packages, tmp_path / "syn", resume=True))
    reference = tmp_path / "ref"
    hub.synthesize(_request(packages, reference))
    resumed, fresh = _arrays(tmp_path / "syn"), _arrays(reference)
    assert resumed.keys() == fresh.keys() and all(np.array_equal(resumed[k], fresh[k]) for k in fresh)


def test_output_folder_of_another_run_is_refused(packages, tmp_path):
    hub.synthesize(_request(packages, tmp_path / "syn", per_class=1))
    with pytest.raises(CatphishError, match="different run"):
        hub.synthesize(_request(packages, tmp_path / "syn", per_class=2, resume=True))
    hub.synthesize(_request(packages, tmp_path / "syn", per_class=2, overwrite=True))


@pytest.mark.parametrize(("change", "message"), [
    ({"per_class": 0}, "--per-class must be at least 1"),
    ({"classes": ("glioblastoma",)}, "class 'glioblastoma' is not in package"),
])
def test_bad_requests_are_clear_errors(packages, tmp_path, change, message):
    with pytest.raises(CatphishError, match=message):
        hub.synthesize(_request(packages, tmp_path / "syn", **change))
    assert not (tmp_path / "syn" / "labels.csv").exists()


def test_tampered_package_is_refused_before_any_sampling(packages, tmp_path):
    import shutil

    copy = tmp_path / "alpha.catphish"
    shutil.copytree(packages["alpha"], copy)
    card = json.loads((copy / "card.json").read_text())
    card["site"] = "evil"
    (copy / "card.json").write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match=r"alpha.catphish: refused, .*card.json"):
        hub.synthesize(_request({"alpha": copy, "beta": packages["beta"]}, tmp_path / "syn"))
    assert not (tmp_path / "syn").exists()


def test_packages_of_different_tasks_are_refused(packages, tmp_path):
    other, _ = _train(packages["tmp"], "gamma", task="tumor_type", classes=("astrocytoma", "glioblastoma"))
    with pytest.raises(CatphishError, match="different tasks"):
        hub.synthesize(_request({"alpha": packages["alpha"], "beta": other}, tmp_path / "syn"))


def test_cli_exit_2_with_one_line_for_a_corrupt_package(packages, tmp_path):
    import shutil

    copy = tmp_path / "alpha.catphish"
    shutil.copytree(packages["alpha"], copy)
    with (copy / "model.safetensors").open("r+b") as handle:
        handle.truncate(100)
    result = subprocess.run([sys.executable, "-c", "from catphish.cli import run; run()", "hub", "synthesize",
                             "--packages", str(copy), "--per-class", "2", "--out", str(tmp_path / "syn")],
                            capture_output=True, text=True, check=False)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "model.safetensors" in lines[0] and "Traceback" not in result.stderr


def test_filter_keeps_a_diverse_subset_and_reports_counts(packages, tmp_path):
    hub.synthesize(_request(packages, tmp_path / "syn", per_class=4))
    report = hub.filter_cohort(hub.FilterRequest(cohort=str(tmp_path / "syn"), out=str(tmp_path / "kept"),
                                                 percentile=30, min_mask_voxels=1))
    totals = report["totals"]
    assert totals["before"] == 16 and 0 < totals["after"] <= totals["after_quality_gate"] <= 16
    kept_rows = (tmp_path / "kept" / "labels.csv").read_text().splitlines()[1:]
    assert len(kept_rows) == totals["after"]
    decisions = (tmp_path / "kept" / "kept.csv").read_text().splitlines()
    assert len(decisions) == 17
    verify_folder(tmp_path / "kept", kind="synthetic-cohort")
    assert report["within"] == "site-class" and "within-site-class distances" in "".join(decisions)
    site_wide = hub.filter_cohort(hub.FilterRequest(cohort=str(tmp_path / "syn"), out=str(tmp_path / "kept-site"),
                                                    percentile=30, min_mask_voxels=1, within="site"))
    assert site_wide["within"] == "site"
    assert "within-site distances" in (tmp_path / "kept-site" / "kept.csv").read_text()
    with pytest.raises(CatphishError, match="--within must be site or site-class, got 'class'"):
        hub.filter_cohort(hub.FilterRequest(cohort=str(tmp_path / "syn"), out=str(tmp_path / "x"), within="class"))
    assert not (tmp_path / "x").exists()
    with pytest.raises(CatphishError) as refused:  # filter has no --resume, so the refusal does not suggest it
        hub.filter_cohort(hub.FilterRequest(cohort=str(tmp_path / "syn"), out=str(tmp_path / "kept"), percentile=30))
    expected = f"{tmp_path / 'kept'}: filtered cohort folder already exists (use --overwrite to replace it)"
    assert str(refused.value) == expected


def test_filter_drops_a_case_with_an_empty_segmentation_instead_of_failing(packages, tmp_path):
    from catphish.artifacts import write_manifest

    hub.synthesize(_request(packages, tmp_path / "syn", per_class=2))
    segmentation = sorted((tmp_path / "syn").rglob("*_seg.nii.gz"))[0]
    image = nib.load(segmentation)
    nib.save(nib.Nifti1Image(np.zeros(image.shape, np.uint8), image.affine), segmentation)
    write_manifest(tmp_path / "syn", kind="synthetic-cohort")  # as if the model had generated an empty mask
    report = hub.filter_cohort(hub.FilterRequest(cohort=str(tmp_path / "syn"), out=str(tmp_path / "kept"),
                                                 percentile=10, min_mask_voxels=1))
    assert report["dropped_by_reason"].get("empty mask") == 1 and report["totals"]["before"] == 8
    assert segmentation.parent.name not in (tmp_path / "kept" / "labels.csv").read_text()


@pytest.mark.parametrize("percentile", [0, 100, -5])
def test_filter_percentile_outside_open_interval_is_refused(tmp_path, percentile):
    with pytest.raises(CatphishError, match="percentile must be in"):
        hub.filter_cohort(hub.FilterRequest(cohort=str(tmp_path), out=str(tmp_path / "o"), percentile=percentile))


def test_site_audit_stores_aggregates_in_the_package(packages, tmp_path):
    import shutil

    package = tmp_path / "alpha.catphish"
    shutil.copytree(packages["alpha"], package)
    audit = audit_package(package, packages["alpha_data"], n=4, cache_dir=tmp_path / "cache")
    assert 0.0 <= audit["membership_inference"]["auc"] <= 1.0
    assert -1.0 <= audit["memorisation_max_pearson"] <= 1.0 and audit["passed"]
    card = read_json(package / "card.json")
    assert card["audit"]["generated_cases"] == 4 and (package / "audit.png").exists()
    verify_folder(package, kind="site-package")
    text = (package / "card.json").read_text()
    assert "PATIENT-" not in text
    with pytest.raises(CatphishError, match="FAILED"):
        audit_package(package, packages["alpha_data"], n=4, cache_dir=tmp_path / "cache", max_pearson_limit=-1.0)
    assert read_json(package / "card.json")["audit"]["passed"] is False


def test_share_synthetic_blocks_close_cases_and_reports(packages, tmp_path):
    report = share_synthetic(packages["alpha"], packages["alpha_data"], n=4, out=tmp_path / "shared",
                             cache_dir=tmp_path / "cache", percentile=50)
    assert report["generated"] == 4 and report["blocked"] + report["shared"] == 4
    assert (tmp_path / "shared" / "screen_report.json").exists()
    verify_folder(tmp_path / "shared", kind="synthetic-cohort")


def _catphish(*args):
    return subprocess.run([sys.executable, "-c", "from catphish.cli import run; run()", "--quiet", *map(str, args)],
                          capture_output=True, text=True)


def test_site_audit_and_share_synthetic_cli(packages, tmp_path):
    import shutil

    package = tmp_path / "alpha.catphish"
    shutil.copytree(packages["alpha"], package)
    failed = _catphish("site", "audit", package, "--data", packages["alpha_data"], "--n", 4, "--cache",
                       tmp_path / "cache", "--max-mia-auc", -1)
    assert failed.returncode == 2, failed.stderr
    message = [line for line in failed.stderr.splitlines() if line.strip()]
    assert len(message) == 1 and "FAILED" in message[0] and "membership-inference" in message[0]
    shared = _catphish("site", "share-synthetic", package, "--data", packages["alpha_data"], "--n", 4, "--out",
                       tmp_path / "shared", "--cache", tmp_path / "cache", "--percentile", 50)
    assert shared.returncode == 0, shared.stdout + shared.stderr
    report = read_json(tmp_path / "shared" / "screen_report.json")
    assert report["shared"] == len((tmp_path / "shared" / "labels.csv").read_text().splitlines()) - 1
    bad = _catphish("site", "share-synthetic", package, "--data", packages["alpha_data"], "--n", 4, "--out",
                    tmp_path / "other", "--percentile", 100)
    assert bad.returncode == 2 and "--percentile must be in (0, 100)" in bad.stderr
    assert not (tmp_path / "other").exists()


@pytest.mark.slow
def test_ray_backend_matches_local_processes(packages, tmp_path):
    hub.synthesize(_request(packages, tmp_path / "local"))
    hub.synthesize(_request(packages, tmp_path / "ray", backend="ray", workers=2))
    _same_cohort(_arrays(tmp_path / "local"), _arrays(tmp_path / "ray"))


def _claimed_device(barrier) -> str | None:
    barrier.wait(timeout=60)  # both tasks run at once, so each runs in its own worker process
    return hub.worker_device()


def test_each_local_worker_claims_its_own_gpu():
    import multiprocessing

    with multiprocessing.get_context("spawn").Manager() as manager, hub.worker_pool(workers=2, gpus=2) as pool:
        barrier = manager.Barrier(2)
        claimed = {future.result() for future in [pool.submit(_claimed_device, barrier) for _ in range(2)]}
    assert claimed == {"cuda:0", "cuda:1"}
