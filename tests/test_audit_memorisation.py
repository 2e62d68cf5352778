import numpy as np
import pytest
from skimage.metrics import structural_similarity

from catphish.audit.memorisation import (
    PrivacyScreen,
    membership_inference_auc,
    nearest_neighbour_scores,
    pairwise_ssim,
)


def _images(rng, n, shape=(16, 16)):
    return rng.normal(size=(n, 5, *shape)).astype(np.float32)


def test_pairwise_ssim_is_one_for_identical_images_and_matches_skimage():
    rng = np.random.default_rng(0)
    a, b = _images(rng, 2), _images(rng, 3)
    ssim = pairwise_ssim(a, np.r_[a[:1], b], data_range=8.0)
    assert ssim[0, 0] == pytest.approx(1.0, abs=1e-5)
    oracle = np.mean([structural_similarity(a[1, c], b[0, c], data_range=8.0, gaussian_weights=True, sigma=1.5,
                                            use_sample_covariance=False, win_size=7) for c in range(4)])
    assert ssim[1, 1] == pytest.approx(oracle, abs=0.05)


def test_copies_are_flagged_as_memorised():
    rng = np.random.default_rng(1)
    training = _images(rng, 6)
    copies = training[:3] + rng.normal(0, 0.01, training[:3].shape).astype(np.float32)
    novel = _images(rng, 3)
    scores = nearest_neighbour_scores(np.r_[copies, novel], training)
    assert (scores.max_pearson[:3] > 0.99).all() and (scores.max_pearson[3:] < 0.5).all()
    assert (scores.min_rmse[:3] < 0.05).all() and (scores.max_ssim[:3] > scores.max_ssim[3:].max()).all()
    assert set(scores.summary()) >= {"max_pearson_mean", "max_ssim_max", "min_rmse_min"}


def test_membership_attack_detects_leaked_members_and_not_fresh_samples():
    rng = np.random.default_rng(2)
    members, non_members = _images(rng, 8), _images(rng, 8)
    leaked = members + rng.normal(0, 0.05, members.shape).astype(np.float32)
    assert membership_inference_auc(leaked, members, non_members) == 1.0
    fresh = _images(rng, 8)
    assert 0.2 < membership_inference_auc(fresh, members, non_members) < 0.8


def test_privacy_screen_blocks_near_copies_only():
    rng = np.random.default_rng(3)
    training = rng.normal(size=(40, 6))
    screen = PrivacyScreen(percentile=5).fit(training)
    copies = training[:5] + 1e-3
    fresh = rng.normal(size=(5, 6)) + 5.0
    allowed = screen.predict(np.r_[copies, fresh])
    assert not allowed[:5].any() and allowed[5:].all()
    with pytest.raises(ValueError, match="at least two"):
        PrivacyScreen().fit(training[:1])
