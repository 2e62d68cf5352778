import numpy as np
import pytest
from scipy.spatial.distance import pdist, squareform

from catphish.synthesis.diversity import DiversityFilter, quality_problem
from catphish.synthesis.radiomics import feature_names, tumour_features


def _case(rng, shape=(24, 24), radius=5, center=(12, 12), bright=2.0):
    image = np.zeros((5, *shape), dtype=np.float32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    brain = (yy - shape[0] / 2) ** 2 + (xx - shape[1] / 2) ** 2 < (shape[0] / 2.2) ** 2
    image[:4] = np.where(brain, rng.normal(0, 1, (4, *shape)), 0)
    tumour = (yy - center[0]) ** 2 + (xx - center[1]) ** 2 < radius**2
    image[1][tumour] += bright
    image[4] = tumour
    return image


def test_features_have_names_and_respond_to_the_tumour():
    rng = np.random.default_rng(0)
    small, large = tumour_features(_case(rng, radius=3)), tumour_features(_case(rng, radius=7))
    names = feature_names()
    assert len(small) == len(names) and np.isfinite(small).all()
    volume = names.index("shape_log_volume")
    assert large[volume] > small[volume]
    assert tumour_features(_case(rng, bright=4.0))[names.index("t1c_mean")] > small[names.index("t1c_mean")]


def test_features_work_in_3d():
    rng = np.random.default_rng(1)
    volume = np.zeros((5, 16, 16, 16), dtype=np.float32)
    volume[:4] = rng.normal(size=(4, 16, 16, 16))
    volume[4, 5:10, 5:10, 6:9] = 1
    assert np.isfinite(tumour_features(volume)).all()


def test_empty_mask_gives_nan_features():
    assert np.isnan(tumour_features(np.zeros((5, 16, 16)))).all()


def _empty_mask(image):
    image[4] = 0


def _tiny_mask(image):
    image[4] = 0
    image[4, 12, 12] = 1


def _nan_voxel(image):
    image[0, 3, 3] = np.nan


def _mask_in_corner(image):
    image[4] = 0
    image[4, :4, :4] = 1


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [(_empty_mask, "empty mask"), (_tiny_mask, "tiny mask"), (_nan_voxel, "non-finite"),
     (_mask_in_corner, "outside the brain")],
)
def test_quality_gate_rejects_unusable_cases(mutate, reason):
    image = _case(np.random.default_rng(2))
    assert quality_problem(image) is None
    mutate(image)
    assert reason in quality_problem(image)


def test_diversity_filter_removes_every_close_pair_and_keeps_spread_samples():
    rng = np.random.default_rng(3)
    spread = rng.normal(0, 10, (30, 4))
    duplicates = spread[:10] + rng.normal(0, 0.01, (10, 4))
    features = np.r_[spread, duplicates]
    groups = ["A"] * 40
    flt = DiversityFilter(percentile=5).fit(features, groups)
    kept = flt.keep_
    # near-duplicates are resolved to one survivor per pair
    assert kept.sum() <= 30
    for i in range(10):
        assert not (kept[i] and kept[30 + i])
    # no kept pair is closer than the threshold (in standardised space)
    standardised = (features - features.mean(0)) / features.std(0)
    distances = squareform(pdist(standardised[kept]))
    np.fill_diagonal(distances, np.inf)
    assert distances.min() >= flt.thresholds_["A"]


def test_diversity_filter_works_per_group_and_is_deterministic():
    rng = np.random.default_rng(4)
    features = rng.normal(size=(60, 5))
    groups = ["A"] * 30 + ["B"] * 30
    first = DiversityFilter(20).fit_predict(features, groups)
    assert np.array_equal(first, DiversityFilter(20).fit_predict(features, groups))
    assert 0 < first[:30].sum() < 30 and 0 < first[30:].sum() < 30


def test_a_class_of_alike_samples_is_emptied_within_a_site_but_kept_within_its_class():
    """Why `hub filter` compares distances per class of a site by default: a site-wide percentile is set by the spread
    between classes, so the class whose samples are alike loses nearly all of them."""
    rng = np.random.default_rng(5)
    spread = rng.normal(0, 3, (40, 4))
    alike = rng.normal(0, 0.5, (40, 4)) + 8
    features = np.r_[spread, alike]
    within_site = DiversityFilter(20).fit_predict(features, ["site"] * 80)
    within_class = DiversityFilter(20).fit_predict(features, ["site/a"] * 40 + ["site/b"] * 40)
    assert within_site[40:].sum() <= 4 and within_site[:40].sum() >= 30
    assert abs(int(within_class[:40].sum()) - int(within_class[40:].sum())) <= 4


def test_percentile_outside_open_interval_is_refused():
    with pytest.raises(ValueError, match="percentile"):
        DiversityFilter(100)
    with pytest.raises(ValueError, match="percentile"):
        DiversityFilter(0)
