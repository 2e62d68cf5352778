"""No-reference quality: PIQE against pypiqe, BRISQUE against OpenCV's reference features, the MRI slice protocol."""

import os

import numpy as np
import pytest
from scipy import ndimage
from skimage import data

from catphish.errors import InputFileError
from catphish.evaluation import quality

CAMERA = data.camera()[96:224, 160:288].astype(np.float64) / 255.0  # 128 × 128 crop of scikit-image's camera

# cv2.quality.QualityBRISQUE_computeFeatures / _compute (opencv-contrib-python-headless 5.0.0, brisque_model_live.yml)
# on the uint8 crop above; computed once, the oracle is not a dependency of the tests.
OPENCV_FEATURES = [
    2.2880001068115234, 0.24161000549793243, 0.6549999713897705, 0.051291998475790024, 0.0539110004901886,
    0.09928400069475174, 0.6759999990463257, 0.010569999925792217, 0.06877700239419937, 0.0779149979352951,
    0.699999988079071, -0.03715600073337555, 0.08861099928617477, 0.057172998785972595, 0.6840000152587891,
    -0.02232700027525425, 0.08212199807167053, 0.06303799897432327, 2.503000020980835, 0.2992669939994812,
    0.6899999976158142, 0.049017999321222305, 0.09111899882555008, 0.14404700696468353, 0.7540000081062317,
    -0.03163199871778488, 0.1282079964876175, 0.09578099846839905, 0.7509999871253967, -0.026673000305891037,
    0.11814499646425247, 0.09163100272417068, 0.7519999742507935, -0.0653889998793602, 0.14441800117492676,
    0.07812900096178055]
OPENCV_SCORE = 6.575399875640869


def _mri_like(size=(70, 58), seed=0):
    """A brain-like slice: smooth tissue texture with a bright lesion inside an ellipse, black background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: size[0], : size[1]]
    brain = ((yy - size[0] / 2) / (size[0] * 0.42)) ** 2 + ((xx - size[1] / 2) / (size[1] * 0.4)) ** 2 < 1
    tissue = ndimage.gaussian_filter(rng.normal(size=size), 1.5) * 3 + 2
    lesion = np.exp(-((yy - size[0] * 0.4) ** 2 + (xx - size[1] * 0.55) ** 2) / 30) * 4
    return np.where(brain, tissue + lesion, 0.0)


def _piqe_cases():
    rng = np.random.default_rng(1)
    return {"camera": CAMERA, "random": rng.random((45, 61)), "mri": quality.min_max(_mri_like()),
            "blurred": ndimage.gaussian_filter(CAMERA, 2),
            "noisy": np.clip(CAMERA + rng.normal(0, 0.08, CAMERA.shape), 0, 1)}


# pypiqe 1.2 (MIT, reproduces MATLAB's piqe) on the cases above, computed once so the test runs without it
PYPIQE_SCORES = {"camera": 38.081026221435124, "random": 80.6916750997297, "mri": 70.93222902798728,
                 "blurred": 92.07050337753726, "noisy": 57.97000440188443}


def test_piqe_equals_pypiqe_reference_scores():
    for name, image in _piqe_cases().items():
        assert quality.piqe(image) == pytest.approx(PYPIQE_SCORES[name], abs=1e-9), name


def test_piqe_equals_pypiqe_when_installed():
    pypiqe = pytest.importorskip("pypiqe")
    for name, image in _piqe_cases().items():
        assert quality.piqe(image) == pytest.approx(pypiqe.piqe(image.copy())[0], abs=1e-9), name


def test_piqe_of_a_constant_image_is_100():
    assert quality.piqe(np.full((32, 32), 0.3)) == 100.0 and quality.piqe(np.zeros((20, 20))) == 100.0


def test_brisque_reproduces_opencv_features_and_score():
    features = quality.brisque_features(CAMERA * 255, variant="opencv")
    np.testing.assert_allclose(features, OPENCV_FEATURES, atol=1e-4)
    assert quality.brisque(CAMERA) == pytest.approx(OPENCV_SCORE, abs=0.01)


@pytest.mark.parametrize("metric", [quality.brisque, quality.piqe])
def test_quality_worsens_with_noise_and_blur(metric):
    rng = np.random.default_rng(0)
    clean = metric(CAMERA)
    noisy = [metric(np.clip(CAMERA + rng.normal(0, sigma, CAMERA.shape), 0, 1)) for sigma in (0.05, 0.1)]
    blurred = [metric(ndimage.gaussian_filter(CAMERA, sigma)) for sigma in (1.0, 2.0)]
    assert clean < noisy[0] < noisy[1]
    assert clean < blurred[0] < blurred[1]


@pytest.mark.parametrize("metric", [quality.brisque, quality.piqe])
def test_quality_of_an_mri_slice_worsens_with_strong_noise_and_blur(metric):
    rng = np.random.default_rng(0)
    image = np.stack([_mri_like((96, 80))] * 4)
    clean = metric(quality.mri_slice_protocol(image, 0))
    noisy = image + np.where(image != 0, rng.normal(0, 1.5, image.shape), 0)
    blurred = ndimage.gaussian_filter(image, (0, 2.5, 2.5))
    assert metric(quality.mri_slice_protocol(noisy, 0)) > clean
    assert metric(quality.mri_slice_protocol(blurred, 0)) > clean


def test_mri_protocol_crops_to_the_brain_and_scales_to_unit_range():
    image = np.zeros((5, 40, 50))
    image[:4, 10:30, 5:45] = np.random.default_rng(0).normal(size=(4, 20, 40))
    image[:4, 10:30, 5:45] += 0.5  # no |z| <= 0.1 exactly on the border rows
    out = quality.mri_slice_protocol(image, 2)
    assert out.shape == (20, 40) and out.min() == 0.0 and out.max() == 1.0
    assert quality.mri_slice_protocol(np.zeros((5, 8, 8)), 0).shape == (8, 8)


def test_resizers_sample_a_linear_ramp_at_the_right_positions():
    ramp = np.tile(np.arange(40.0), (40, 1))
    matlab = quality.matlab_imresize_half(ramp)  # MATLAB: output k samples input position 2k + 0.5 (0-based)
    np.testing.assert_allclose(matlab[5, 3:-3], 2 * np.arange(3, 17) + 0.5, atol=1e-9)
    opencv = quality.opencv_resize_cubic(ramp, (20, 20))  # OpenCV: (k + 0.5) · 2 − 0.5
    np.testing.assert_allclose(opencv[5, 2:-2], 2 * np.arange(2, 18) + 0.5, atol=1e-9)


def test_live_brisque_model_files_are_read_and_applied(tmp_path):
    (tmp_path / "allmodel").write_text("svm_type epsilon_svr\nkernel_type rbf\ngamma 0.5\nnr_class 2\ntotal_sv 2\n"
                                       "rho 1.5\nSV\n2 1:0.5 2:-0.5\n-1 1:0 2:1\n")
    (tmp_path / "allrange").write_text("x\n-1 1\n1 0 2\n2 -1 3\n")
    model = quality.load_brisque_model(tmp_path)
    features = np.array([[1.5, 0.0]])  # scaled: [0.5, -0.5]
    expected = 2 * np.exp(-0.5 * 0.0) - 1 * np.exp(-0.5 * (0.25 + 2.25)) - 1.5
    assert model.score(features)[0] == pytest.approx(expected, abs=1e-6)
    assert model.feature_variant == "live"
    (tmp_path / "allmodel").write_text("not a model\n")
    with pytest.raises(InputFileError, match="allmodel: not a LIBSVM model file"):
        quality.load_brisque_model(tmp_path)


LIVE_DIR = os.environ.get("CATPHISH_BRISQUE_LIVE_DIR")


@pytest.mark.skipif(not LIVE_DIR, reason="CATPHISH_BRISQUE_LIVE_DIR unset: `make test` fetches LIVE's allmodel, allrange "
                    "and the calibration images I03/I04/I06/I08.bmp with tests/fetch_reference_data.py")
def test_live_model_reproduces_the_published_brisque_values():
    from skimage.io import imread

    model = quality.load_brisque_model(LIVE_DIR)
    for name, expected in (("I03", 94.642), ("I04", -0.108), ("I06", 0.993), ("I08", 5.358)):
        rgb = imread(os.path.join(LIVE_DIR, f"{name}.bmp")).astype(np.float64)
        grey = np.round(rgb[..., :3] @ [0.298936021293775, 0.587043074451121, 0.114020904255103])  # rgb2gray, uint8
        assert model.score(quality.brisque_features(grey, "live"))[0] == pytest.approx(expected, abs=0.35)
