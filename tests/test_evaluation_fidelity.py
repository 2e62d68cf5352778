"""FID, KID, precision/recall, the slice feature extractors and the synthetic-cohort fidelity workflow."""

import json

import numpy as np
import pytest
import torch
from monai.metrics import FIDMetric
from scipy import ndimage
from typer.testing import CliRunner

from catphish.cli import app
from catphish.errors import CatphishError
from catphish.evaluation import fidelity
from catphish.evaluation.features import (
    HandcraftedSliceFeatures,
    SliceFeatureExtractor,
    TorchModuleFeatures,
    feature_extractor,
)
from catphish.evaluation.synthetic_cohort import (
    FidelitySettings,
    evaluate_synthetic_cohort,
    sample_slices,
    site_of_synthetic,
    slices_by_site,
)
from catphish.evaluation.tables import write_tables
from nifti_fixtures import write_dataset

RNG = np.random.default_rng(3)


def test_fid_equals_monai_fid_metric():
    generated, real = RNG.normal(0.2, 1.0, (120, 6)), RNG.normal(0.0, 1.3, (150, 6)) @ RNG.normal(size=(6, 6))
    expected = FIDMetric()(torch.from_numpy(generated), torch.from_numpy(real)).item()
    assert fidelity.frechet_distance(generated, real) == pytest.approx(expected, rel=1e-8)
    wide = RNG.normal(size=(10, 30)), RNG.normal(size=(12, 30))  # fewer samples than features: singular covariances
    expected = FIDMetric()(torch.from_numpy(wide[0]), torch.from_numpy(wide[1])).item()
    assert fidelity.frechet_distance(*wide) == pytest.approx(expected, rel=1e-6)


def test_fid_of_the_same_distribution_is_far_below_a_shifted_one():
    a, b = RNG.normal(size=(300, 8)), RNG.normal(size=(300, 8))
    shifted = RNG.normal(size=(300, 8)) + 1.0
    same, other = fidelity.frechet_distance(a, b), fidelity.frechet_distance(a, shifted)
    assert same < 0.5 and other > 7.5 and other > 20 * same


def _mmd2_loops(x, y):
    d = x.shape[1]
    k = lambda u, v: (u @ v / d + 1) ** 3  # noqa: E731
    m, n = len(x), len(y)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return xx + yy - 2 * xy


def test_kid_is_the_unbiased_polynomial_mmd():
    x, y = RNG.normal(size=(12, 4)), RNG.normal(0.5, 1, size=(15, 4))
    assert fidelity.unbiased_mmd2(x, y) == pytest.approx(_mmd2_loops(x, y), rel=1e-10)
    # one subset holding every sample is the whole-set statistic (MMD² does not depend on order)
    whole = fidelity.kernel_inception_distance(x, y[:12], subsets=1, subset_size=100)
    assert whole.mean == pytest.approx(_mmd2_loops(x, y[:12]), rel=1e-10) and whole.subset_size == 12


def test_kid_is_near_zero_for_one_distribution_and_positive_for_a_shifted_one():
    a, b, shifted = RNG.normal(size=(200, 8)), RNG.normal(size=(200, 8)), RNG.normal(size=(200, 8)) + 1.0
    same = fidelity.kernel_inception_distance(a, b, subsets=20, subset_size=100, seed=1)
    other = fidelity.kernel_inception_distance(a, shifted, subsets=20, subset_size=100, seed=1)
    assert abs(same.mean) < 3 * same.std + 0.05
    assert other.mean > 10 * max(abs(same.mean), same.std)


def _precision_recall_loops(generated, real, k):
    def radii(points):
        return [sorted(np.linalg.norm(points - p, axis=1))[k] for p in points]

    real_r, gen_r = radii(real), radii(generated)
    precision = np.mean([any(np.linalg.norm(g - r) <= rr for r, rr in zip(real, real_r, strict=True)) for g in generated])
    recall = np.mean([any(np.linalg.norm(r - g) <= gr for g, gr in zip(generated, gen_r, strict=True)) for r in real])
    return precision, recall


def test_precision_recall_equal_brute_force_knn_manifolds():
    generated, real = RNG.normal(0.4, 0.8, size=(40, 3)), RNG.normal(size=(50, 3))
    result = fidelity.precision_recall(generated, real, k=3)
    assert (result.precision, result.recall) == pytest.approx(_precision_recall_loops(generated, real, 3))
    same = fidelity.precision_recall(real, real)
    assert (same.precision, same.recall) == (1.0, 1.0)
    far = fidelity.precision_recall(real + 100, real)
    assert (far.precision, far.recall) == (0.0, 0.0)


def test_bad_feature_matrices_are_refused():
    with pytest.raises(CatphishError, match="feature sizes differ"):
        fidelity.frechet_distance(np.zeros((5, 3)), np.zeros((5, 4)))
    with pytest.raises(CatphishError, match="NaN"):
        fidelity.frechet_distance(np.full((5, 3), np.nan), np.zeros((5, 3)))


# ---------------------------------------------------------------------------------------------- extractors
def _texture(n, size, smooth, brightness=0.0, seed=0):
    """MRI-like slices: a smooth random texture inside an elliptic brain, 0 outside, ``(n, size, size)``."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / (size - 1) - 0.5
    brain = (yy / 0.42) ** 2 + (xx / 0.36) ** 2 < 1
    fields = ndimage.gaussian_filter(rng.normal(size=(n, size, size)), (0, smooth, smooth))
    fields = fields / fields.std() + brightness + 2.0
    return np.where(brain, fields, 0.0)


def test_handcrafted_features_are_named_finite_and_deterministic():
    extractor = feature_extractor("handcrafted")
    assert isinstance(extractor, SliceFeatureExtractor) and extractor.name == "handcrafted-v1"
    slices = np.clip(_texture(3, 64, 2.0) / 4, 0, 1)
    features = extractor(slices)
    assert features.shape == (3, 82) and np.isfinite(features).all()
    np.testing.assert_array_equal(features, HandcraftedSliceFeatures()(slices))
    assert np.isfinite(extractor(np.zeros((1, 64, 64)))).all()  # a blank slice does not break it
    with pytest.raises(CatphishError, match="unknown feature extractor"):
        feature_extractor("inception")


def test_user_resnet18_weights_by_path_are_an_extractor(tmp_path):
    from monai.networks.nets import resnet18

    from catphish.artifacts import save_tensors

    torch.manual_seed(0)
    network = resnet18(spatial_dims=2, n_input_channels=1, feed_forward=False, shortcut_type="A")
    weights = save_tensors(tmp_path / "resnet18.safetensors", dict(network.state_dict()))
    extractor = feature_extractor(str(weights))
    assert extractor.name == "resnet18:resnet18.safetensors" and extractor.input_size == (128, 128)
    slices = np.random.default_rng(0).random((3, 128, 128))
    features = extractor(slices)
    assert features.shape == (3, 512) and np.isfinite(features).all()
    with torch.no_grad():
        expected = network.eval()(torch.from_numpy((slices[:, None] - 0.5) / 0.5).float()).double().numpy()
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)  # the user's weights, not random ones
    save_tensors(tmp_path / "other.safetensors", {"conv.weight": torch.zeros(3, 3)})
    with pytest.raises(CatphishError, match="other.safetensors: these weights do not fit a 2D ResNet-18"):
        feature_extractor(str(tmp_path / "other.safetensors"))
    with pytest.raises(CatphishError, match="feature-network weights not found"):
        feature_extractor(str(tmp_path / "missing.safetensors"))


def test_a_torch_module_plugs_in_as_extractor():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 5, 3))
    extractor = TorchModuleFeatures(net, name="tiny-cnn", input_size=(32, 32), channels=3, mean=0.5, std=0.5,
                                    batch_size=2)
    assert isinstance(extractor, SliceFeatureExtractor)
    features = extractor(np.random.default_rng(0).random((5, 32, 32)))
    assert features.shape == (5, 5) and features.dtype == np.float64


def test_fid_on_handcrafted_features_separates_shifted_textures():
    extractor = HandcraftedSliceFeatures()
    def features(smooth, seed):
        return extractor(np.clip(_texture(40, 64, smooth, seed=seed) / 5, 0, 1))
    a, b, shifted = features(2.0, 1), features(2.0, 2), features(4.0, 3)
    scale = np.concatenate([a, b]).std(0) + 1e-9
    same = fidelity.frechet_distance(a / scale, b / scale)
    other = fidelity.frechet_distance(a / scale, shifted / scale)
    assert other > 5 * same


# ------------------------------------------------------------------------------------------- whole workflow
def _site_slices(n, smooth, brightness, seed, size=32):
    """(n, 5, H, W): four z-scored-like sequences of one 'site' texture + an empty mask channel."""
    channels = [_texture(n, size, smooth + c * 0.3, brightness, seed * 10 + c) - 2.0 * (c % 2) for c in range(4)]
    return np.stack([*channels, np.zeros((n, size, size))], axis=1).astype(np.float32)


def test_synthetic_cohort_fidelity_has_lowest_fid_on_the_diagonal(tmp_path):
    sites = {"A": (1.0, 0.0), "B": (2.5, 0.8), "C": (4.0, -0.8)}
    real = {site: _site_slices(20, s, b, seed=i) for i, (site, (s, b)) in enumerate(sites.items())}
    synthetic = {f"synthetic-{site}": _site_slices(20, s, b, seed=10 + i) for i, (site, (s, b)) in enumerate(sites.items())}
    settings = FidelitySettings(samples=16, kid_subsets=10, seed=0, quality=True)
    result = evaluate_synthetic_cohort(real, synthetic, settings=settings)
    summary = result.table("fidelity_summary").rows
    assert [row["sequence"] for row in summary] == ["t1", "t1c", "t2", "flair"]
    for row in summary:
        assert row["rows_where_diagonal_lowest"] == row["rows_with_diagonal"] == 3
        assert row["fid_diagonal_mean"] < row["fid_off_diagonal_mean"]
        assert row["kid_diagonal_mean"] < row["kid_off_diagonal_mean"]
    pairs = result.table("fidelity_pairs").rows
    assert len(pairs) == 4 * 3 * 3 and {r["n_real"] for r in pairs} == {16}
    assert {r["kind"] for r in result.table("real_baselines").rows} == {"split-half", "between-sites"}
    quality_rows = result.table("quality").rows
    assert len(quality_rows) == 4 * 6 and all(np.isfinite(r["piqe_mean"]) for r in quality_rows)
    assert result.notes["feature_extractor"]["name"] == "handcrafted-v1"
    assert "OpenCV" in result.notes["brisque_model"]
    write_tables(tmp_path, result.tables)
    matrix = json.loads((tmp_path / "fid_matrix.json").read_text())
    assert matrix["rows"][0]["synthetic_site"] == "A" and "real_C" in matrix["columns"]


def test_sampling_is_seeded_and_capped():
    slices = np.arange(50)[:, None, None, None] * np.ones((1, 5, 2, 2))
    first, again = sample_slices(slices, 10, 0, "real/A"), sample_slices(slices, 10, 0, "real/A")
    np.testing.assert_array_equal(first, again)
    assert len(first) == 10 and len(sample_slices(slices, 300, 0, "real/A")) == 50
    assert site_of_synthetic("synthetic-TCGA") == "TCGA" and site_of_synthetic("TCGA") == "TCGA"


def test_prepared_subjects_become_slices_per_site():
    from catphish.data.prepared import PreparedSubject

    two_d = PreparedSubject("s1", "A", np.zeros((3, 5, 8, 8), np.float32))
    volume = np.zeros((1, 5, 8, 8, 6), np.float32)
    volume[0, 4, 2:4, 2:4, 4] = 1  # largest tumour area on axial slice 4
    volume[0, 0, ..., 4] = 7.0
    slices = slices_by_site([two_d, PreparedSubject("s2", "B", volume)])
    assert slices["A"].shape == (3, 5, 8, 8) and slices["B"].shape == (1, 5, 8, 8)
    assert slices["B"][0, 0].max() == 7.0


def test_too_few_slices_are_refused():
    real = {"A": _site_slices(3, 1.0, 0.0, 0)}
    with pytest.raises(CatphishError, match="at least 4 slices"):
        evaluate_synthetic_cohort(real, {"synthetic-A": _site_slices(8, 1.0, 0.0, 1)})


def _write_prepared(folder, site, slices, per_subject=3):
    from catphish.data.prepared import PreparedSubject, save_prepared

    for i in range(0, len(slices), per_subject):
        subject = PreparedSubject(f"{site}-{i:03d}", site, slices[i:i + per_subject], idh="mutant")
        save_prepared(folder / site / f"{subject.subject_id}.safetensors", subject)


def test_cli_evaluate_synthesis_on_prepared_caches(tmp_path):
    real, synthetic, out = tmp_path / "real", tmp_path / "synthetic", tmp_path / "eval"
    for i, (site, smooth) in enumerate((("A", 1.0), ("B", 3.5))):
        _write_prepared(real, site, _site_slices(12, smooth, 0.0, seed=i))
        _write_prepared(synthetic, f"synthetic-{site}", _site_slices(12, smooth, 0.0, seed=20 + i))
    result = CliRunner().invoke(app, ["evaluate-synthesis", "--real", str(real), "--synthetic", str(synthetic),
                                      "--out", str(out), "--samples", "10", "--no-quality"])
    assert result.exit_code == 0, result.output
    for name in ("fidelity_pairs", "fid_matrix", "fidelity_summary", "real_baselines"):
        assert (out / f"{name}.csv").is_file() and (out / f"{name}.json").is_file()
    assert not (out / "quality.csv").exists()
    figures = json.loads((out / "figures.json").read_text())
    assert figures["fid_matrix"]["t1"]["real_sites"] == ["A", "B"]
    assert figures["notes"]["feature_extractor"]["name"] == "handcrafted-v1"
    assert json.loads((out / "run.json").read_text())["status"] == "finished"
    assert "handcrafted-v1" in result.output


def test_cli_evaluate_synthesis_refuses_a_missing_dataset_and_writes_nothing(tmp_path):
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["evaluate-synthesis", "--real", str(tmp_path / "none"), "--synthetic",
                                      str(tmp_path / "none"), "--out", str(out)], catch_exceptions=True)
    assert isinstance(result.exception, CatphishError) and "none" in str(result.exception)
    assert not out.exists()


def test_cli_evaluate_synthesis_prepares_raw_datasets(tmp_path):
    write_dataset(tmp_path / "real", sites={"A": 2, "B": 2})
    write_dataset(tmp_path / "synthetic", sites={"synthetic-A": 2, "synthetic-B": 2}, seed=50)
    out = tmp_path / "eval"
    result = CliRunner().invoke(app, ["evaluate-synthesis", "--real", str(tmp_path / "real"), "--synthetic",
                                      str(tmp_path / "synthetic"), "--out", str(out), "--set", "data.workers=1",
                                      "--set", "data.grid=[32,32]"])
    assert result.exit_code == 0, result.output
    pairs = json.loads((out / "fidelity_pairs.json").read_text())["rows"]
    assert {(r["synthetic_site"], r["real_site"]) for r in pairs} == {(s, r) for s in "AB" for r in "AB"}
    assert {r["n_real"] for r in pairs} == {5}  # 2 subjects × up to 3 slices; a thin volume gives each slice once
    quality_rows = json.loads((out / "quality.json").read_text())["rows"]
    assert {r["source"] for r in quality_rows} == {"real", "synthetic"}


def test_real_baseline_summary_groups_by_sequence_and_kind():
    rows = [{"sequence": "t1", "kind": "split-half", "fid": 2.0, "kid": 0.1},
            {"sequence": "t1", "kind": "split-half", "fid": 4.0, "kid": 0.3},
            {"sequence": "t1", "kind": "between-sites", "fid": 9.0, "kid": None},
            {"sequence": "t2", "kind": "split-half", "fid": 1.0, "kid": 0.0}]
    summary = {(r["sequence"], r["kind"]): r for r in fidelity.real_baseline_summary(rows)}
    assert summary[("t1", "split-half")] == {"sequence": "t1", "kind": "split-half", "pairs": 2, "FID mean": 3.0,
                                             "FID min": 2.0, "FID max": 4.0, "KID mean": pytest.approx(0.2)}
    assert summary[("t1", "between-sites")]["KID mean"] is None and summary[("t2", "split-half")]["pairs"] == 1
