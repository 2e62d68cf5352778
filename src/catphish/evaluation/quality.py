"""No-reference image quality (the paper's Table 3): PIQE and BRISQUE, offline, plus the MRI slice protocol.

**MRI protocol** (:func:`mri_slice_protocol`). Both metrics were made for photographs and react strongly to a black
background and to the intensity scale, so every slice, real or synthetic, is treated alike: crop to the brain's
bounding box (pixels where any of the four z-scored sequences has ``|z| > 0.1``), then min–max scale the sequence
to [0, 1] inside that box. PIQE then works on ``round(255 · x / max x)`` and BRISQUE on ``255 · x``.

**PIQE** (Venkatanath et al. 2015), parameter-free: a NumPy/SciPy transcription of MATLAB's ``piqe`` as ported by
``pypiqe`` 1.2 (MIT), including its quirks (the centre–surround split drops columns 8 and 10 of each 16 × 16 block,
1-based); checked against ``pypiqe`` in the tests. 0 = best, 100 = worst.

**BRISQUE** (Mittal et al. 2012): the 36 natural-scene statistics of LIVE's ``brisque_feature.m`` (MSCN coefficients
with a 7 × 7 Gaussian window, σ = 7/6, C = 1 on a 0–255 scale; GGD and AGGD fits on a 0.001 grid; two scales, the
second by MATLAB's antialiased bicubic ``imresize(·, 0.5)``), mapped to a score by an RBF ε-SVR:

- default: the LIVE-trained SVR that ships with OpenCV's ``quality`` module (``brisque_model_live.yml`` +
  ``brisque_range_live.yml``, Apache-2.0, © OpenCV contributors), converted to ``brisque_opencv_live.safetensors``
  beside this file. OpenCV trained it on its own feature implementation, so scores differ somewhat from LIVE's MATLAB
  release; they still order images the same way (lower = better, roughly 0–100).
- LIVE's original model (``allmodel`` + ``allrange`` from LIVE's BRISQUE release; not shipped, its licence and the
  GPL package that redistributes it do not fit catphish's Apache-2.0): :func:`load_live_brisque_model` reads them by
  path (``catphish evaluate-synthesis --brisque-model DIR``), and the score then reproduces LIVE's ``brisquescore.m``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from scipy import ndimage
from scipy.special import gamma as gamma_function

from catphish.errors import CatphishError, InputFileError

BRAIN_THRESHOLD = 0.1
"""|z| above which a pixel of a z-scored slice counts as brain (real backgrounds are exactly 0)."""
PIQE_BLOCK = 16
_GAUSSIAN_WINDOW = 7
_GAUSSIAN_SIGMA = 7 / 6
_SHIPPED_BRISQUE_MODEL = Path(__file__).with_name("brisque_opencv_live.safetensors")


# ------------------------------------------------------------------------------------------------ MRI protocol
def brain_box(image: np.ndarray, threshold: float = BRAIN_THRESHOLD) -> tuple[slice, slice]:
    """Bounding box of the brain in a ``(C, H, W)`` z-scored slice (channels = sequences); whole slice if empty."""
    brain = (np.abs(image) > threshold).any(axis=0)
    if not brain.any():
        return slice(0, image.shape[-2]), slice(0, image.shape[-1])
    rows, cols = np.flatnonzero(brain.any(1)), np.flatnonzero(brain.any(0))
    return slice(int(rows[0]), int(rows[-1]) + 1), slice(int(cols[0]), int(cols[-1]) + 1)


def min_max(image: np.ndarray) -> np.ndarray:
    """Scale to [0, 1]; a constant image becomes all zeros."""
    image = image.astype(np.float64)
    low, high = image.min(), image.max()
    return (image - low) / (high - low) if high > low else np.zeros_like(image)


def mri_slice_protocol(slice_channels: np.ndarray, channel: int, sequences: int = 4) -> np.ndarray:
    """One sequence of a ``(5, H, W)`` slice, cropped to the brain box of the first ``sequences`` channels and
    min–max scaled to [0, 1]."""
    rows, cols = brain_box(slice_channels[:sequences])
    return min_max(slice_channels[channel, rows, cols])


# ---------------------------------------------------------------------------------------------------- shared
def _gaussian_kernel() -> np.ndarray:
    offsets = np.arange(_GAUSSIAN_WINDOW) - _GAUSSIAN_WINDOW // 2
    kernel = np.exp(-(offsets**2) / (2 * _GAUSSIAN_SIGMA**2))
    return kernel / kernel.sum()


def _blur(image: np.ndarray, mode: str) -> np.ndarray:
    kernel = _gaussian_kernel()
    return ndimage.correlate1d(ndimage.correlate1d(image, kernel, axis=0, mode=mode), kernel, axis=1, mode=mode)


def mscn(image: np.ndarray, mode: str) -> np.ndarray:
    """Mean-subtracted contrast-normalised coefficients (x − μ) / (σ + 1), local Gaussian-weighted μ and σ."""
    mu = _blur(image, mode)
    sigma = np.sqrt(np.abs(_blur(image * image, mode) - mu * mu))
    return (image - mu) / (sigma + 1)


# ------------------------------------------------------------------------------------------------------- PIQE
def piqe(image: np.ndarray) -> float:
    """PIQE score of a 2D grey image (any non-negative scale; 100 for a constant image)."""
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2 or not np.isfinite(image).all():
        raise CatphishError(f"PIQE needs a finite 2D image, got shape {image.shape}")
    pad = [(0, (-n) % PIQE_BLOCK) for n in image.shape]
    image = np.pad(image, pad, mode="symmetric")
    if image.max() <= 0 or image.max() == image.min():
        return 100.0
    image = np.round(255 * (image / image.max()))
    normalised = mscn(image, mode="nearest")
    rows, cols = image.shape[0] // PIQE_BLOCK, image.shape[1] // PIQE_BLOCK
    blocks = normalised.reshape(rows, PIQE_BLOCK, cols, PIQE_BLOCK).swapaxes(1, 2).reshape(-1, PIQE_BLOCK, PIQE_BLOCK)
    variance = blocks.reshape(len(blocks), -1).var(axis=1, ddof=1)
    active = variance > 0.1
    if not active.any():
        return 100.0  # no spatially active block: (0 + 1) / (1 + 0) · 100
    blocks, variance = blocks[active], variance[active]
    artifact = _noticeable_artifacts(blocks)
    noise = _gaussian_noise(blocks, variance)
    distortion = (artifact * (1 - variance) + noise * variance).sum()
    return float((distortion + 1) / (1 + active.sum()) * 100)


def _noticeable_artifacts(blocks: np.ndarray, window: int = 6, threshold: float = 0.1) -> np.ndarray:
    """A block edge with a 6-pixel segment of near-zero spread (std < 0.1) marks blockiness or a sudden artifact."""
    edges = np.stack([blocks[:, 0, :], blocks[:, :, -1], blocks[:, -1, :], blocks[:, :, 0]], axis=1)
    segments = np.lib.stride_tricks.sliding_window_view(edges, window, axis=2)
    return (segments.std(axis=-1, ddof=1) < threshold).any(axis=(1, 2))


def _gaussian_noise(blocks: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """Noise when the block's σ exceeds twice β, the relative gap between σ and the centre/surround std ratio."""
    centre_columns = (PIQE_BLOCK // 2 - 1, PIQE_BLOCK // 2)
    centre = blocks[:, :, list(centre_columns)].transpose(0, 2, 1).reshape(len(blocks), -1)
    # MATLAB deletes column 8, then column 9 of what is left (= original column 10), 1-based; pypiqe does the same
    surround = np.delete(blocks, [centre_columns[0], centre_columns[1] + 1], axis=2).reshape(len(blocks), -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = centre.std(axis=1, ddof=1) / surround.std(axis=1, ddof=1)
        ratio = np.where(np.isnan(ratio), 0.0, ratio)
        sigma = np.sqrt(variance)
        beta = np.abs(sigma - ratio) / np.maximum(sigma, ratio)
    return sigma > 2 * beta


# ---------------------------------------------------------------------------------------------------- BRISQUE
@dataclass(frozen=True)
class BrisqueModel:
    """An RBF ε-SVR on features scaled to [−1, 1] by per-feature ranges: score = Σ αᵢ exp(−γ‖svᵢ − x‖²) − ρ."""

    name: str
    support_vectors: np.ndarray
    coefficients: np.ndarray
    rho: float
    gamma: float
    feature_min: np.ndarray
    feature_max: np.ndarray
    feature_variant: str = "live"
    """Which :func:`brisque_features` variant the SVR was trained on."""
    libsvm_rounding: bool = False
    """Round like LIVE's pipeline (features printed with %f, scaled features with %g) to reproduce its scores."""

    def score(self, features: np.ndarray) -> np.ndarray:
        features = np.atleast_2d(np.asarray(features, dtype=np.float64))
        if self.libsvm_rounding:
            features = np.round(features, 6)
        span = np.where(self.feature_max > self.feature_min, self.feature_max - self.feature_min, 1.0)
        scaled = -1 + 2 * (features - self.feature_min) / span
        if self.libsvm_rounding:
            scaled = np.vectorize(lambda v: float(f"{v:.6g}"))(scaled)
        squared = ((scaled[:, None, :] - self.support_vectors[None]) ** 2).sum(-1)
        return np.exp(-self.gamma * squared) @ self.coefficients - self.rho


def brisque_features(image: np.ndarray, variant: str = "live") -> np.ndarray:
    """The 36 BRISQUE features of a grey image on a 0–255 scale, as LIVE's MATLAB release (``live``) or OpenCV's
    ``quality`` module (``opencv``) computes them; an SVR must be fed the variant it was trained on.

    ``live``: zero-padded Gaussian window; first-scale pair = GGD shape and σ²; circularly shifted neighbour products;
    second scale by MATLAB's antialiased bicubic ``imresize(·, 0.5)``. ``opencv``: replicated borders; first-scale
    pair = AGGD shape and (σ_l² + σ_r²) / 2; zero-filled shifted products; second scale by OpenCV's ``INTER_CUBIC``
    (a = −0.75, no antialiasing) to ⌊H/2⌋ × ⌊W/2⌋.
    """
    image = np.asarray(image, dtype=np.float64)
    if image.ndim != 2 or min(image.shape) < 8:
        raise CatphishError(f"BRISQUE needs a 2D image of at least 8x8 pixels, got shape {image.shape}")
    if variant not in ("live", "opencv"):
        raise CatphishError(f"unknown BRISQUE feature variant '{variant}' (live or opencv)")
    live = variant == "live"
    features: list[float] = []
    for scale in range(2):
        if scale:
            image = matlab_imresize_half(image) if live else opencv_resize_cubic(image, (image.shape[0] // 2,
                                                                                        image.shape[1] // 2))
        structure = mscn(image, mode="constant" if live else "nearest")
        if live:
            alpha, sigma = _ggd_fit(structure.ravel())
            features += [alpha, sigma**2]
        else:
            alpha, left, right = _aggd_fit(structure.ravel())
            features += [alpha, (left**2 + right**2) / 2]
        for shift in ((0, 1), (1, 0), (1, 1), (-1, 1)):
            neighbour = np.roll(structure, shift, axis=(0, 1)) if live else _shifted_zero_fill(structure, shift)
            shape, left, right = _aggd_fit((structure * neighbour).ravel())
            mean = (right - left) * (gamma_function(2 / shape) / gamma_function(1 / shape)) \
                * np.sqrt(gamma_function(1 / shape)) / np.sqrt(gamma_function(3 / shape))
            features += [shape, mean, left**2, right**2]
    return np.array(features)


def _shifted_zero_fill(image: np.ndarray, shift: tuple[int, int]) -> np.ndarray:
    """``out[i, j] = image[i + di, j + dj]`` inside the image, 0 outside (OpenCV's paired products)."""
    out = np.zeros_like(image)
    di, dj = shift
    rows, cols = image.shape
    out[max(0, -di):rows - max(0, di), max(0, -dj):cols - max(0, dj)] = \
        image[max(0, di):rows - max(0, -di), max(0, dj):cols - max(0, -dj)]
    return out


_SHAPES = np.arange(0.2, 10.0 + 0.0005, 0.001)
"""LIVE's grid of (A)GGD shapes, 0.2:0.001:10."""
_GGD_RATIOS = gamma_function(1 / _SHAPES) * gamma_function(3 / _SHAPES) / gamma_function(2 / _SHAPES) ** 2
_AGGD_RATIOS = gamma_function(2 / _SHAPES) ** 2 / (gamma_function(1 / _SHAPES) * gamma_function(3 / _SHAPES))


def _ggd_fit(values: np.ndarray) -> tuple[float, float]:
    """Generalised Gaussian shape by moment matching on LIVE's grid, and σ."""
    sigma_sq = np.mean(values**2)
    rho = sigma_sq / np.mean(np.abs(values)) ** 2 if sigma_sq > 0 else np.inf
    return float(_SHAPES[np.argmin(np.abs(rho - _GGD_RATIOS))]), float(np.sqrt(sigma_sq))


def _aggd_fit(values: np.ndarray) -> tuple[float, float, float]:
    """Asymmetric generalised Gaussian: shape, left σ, right σ (LIVE's estimateaggdparam)."""
    negative, positive = values[values < 0], values[values > 0]
    left = np.sqrt(np.mean(negative**2)) if negative.size else 0.0
    right = np.sqrt(np.mean(positive**2)) if positive.size else 0.0
    if left == 0 or right == 0:
        return float(_SHAPES[-1]), float(left), float(right)
    gamma_hat = left / right
    r_hat = np.mean(np.abs(values)) ** 2 / np.mean(values**2)
    r_hat_norm = r_hat * (gamma_hat**3 + 1) * (gamma_hat + 1) / (gamma_hat**2 + 1) ** 2
    return float(_SHAPES[np.argmin((_AGGD_RATIOS - r_hat_norm) ** 2)]), float(left), float(right)


def _cubic(x: np.ndarray) -> np.ndarray:
    ax = np.abs(x)
    return ((1.5 * ax**3 - 2.5 * ax**2 + 1) * (ax <= 1)
            + (-0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2)))


def _resize_weights(length: int, scale: float) -> np.ndarray:
    """MATLAB ``imresize`` bicubic contribution matrix (antialiased, symmetric boundary) for one axis."""
    out_length = int(np.ceil(length * scale))
    width = 4.0 / scale
    x = np.arange(1, out_length + 1)
    u = x / scale + 0.5 * (1 - 1 / scale)
    left = np.floor(u - width / 2)
    taps = int(np.ceil(width)) + 2
    indices = left[:, None] + np.arange(taps)[None, :]
    weights = scale * _cubic(scale * (u[:, None] - indices))
    weights /= weights.sum(axis=1, keepdims=True)
    mirror = np.concatenate([np.arange(1, length + 1), np.arange(length, 0, -1)])
    indices = mirror[((indices - 1) % len(mirror)).astype(int)] - 1
    matrix = np.zeros((out_length, length))
    np.add.at(matrix, (np.repeat(np.arange(out_length), taps), indices.ravel()), weights.ravel())
    return matrix


def _opencv_cubic_weights(length: int, out_length: int, a: float = -0.75) -> np.ndarray:
    """OpenCV ``INTER_CUBIC`` contribution matrix for one axis (half-pixel centres, replicated border)."""
    x = (np.arange(out_length) + 0.5) * (length / out_length) - 0.5
    left = np.floor(x)
    t = x - left
    distances = np.stack([1 + t, t, 1 - t, 2 - t], axis=1)
    d = np.abs(distances)
    inner = ((a + 2) * d - (a + 3)) * d * d + 1
    outer = ((a * d - 5 * a) * d + 8 * a) * d - 4 * a
    weights = np.where(d <= 1, inner, np.where(d < 2, outer, 0.0))
    indices = np.clip(left[:, None] + np.arange(-1, 3)[None, :], 0, length - 1).astype(int)
    matrix = np.zeros((out_length, length))
    np.add.at(matrix, (np.repeat(np.arange(out_length), 4), indices.ravel()), weights.ravel())
    return matrix


def opencv_resize_cubic(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``cv2.resize(image, (W, H), interpolation=INTER_CUBIC)`` for float images."""
    return _opencv_cubic_weights(image.shape[0], size[0]) @ image @ _opencv_cubic_weights(image.shape[1], size[1]).T


def matlab_imresize_half(image: np.ndarray) -> np.ndarray:
    """``imresize(image, 0.5)`` of MATLAB (bicubic with antialiasing), as LIVE's BRISQUE uses for its second scale."""
    return _resize_weights(image.shape[0], 0.5) @ image @ _resize_weights(image.shape[1], 0.5).T


def brisque(image: np.ndarray, model: BrisqueModel | None = None) -> float:
    """BRISQUE score of a 2D grey image in [0, 1] (multiplied by 255 first); NaN for a constant image."""
    image = np.asarray(image, dtype=np.float64)
    if image.size and image.max() == image.min():
        return float("nan")
    model = model or default_brisque_model()
    return float(model.score(brisque_features(255.0 * image, model.feature_variant))[0])


@cache
def default_brisque_model() -> BrisqueModel:
    """OpenCV's LIVE-trained BRISQUE SVR that ships with catphish (see the module docstring)."""
    from catphish.artifacts import load_tensors

    tensors = load_tensors(_SHIPPED_BRISQUE_MODEL)
    return BrisqueModel(name="opencv-live (OpenCV quality module brisque_model_live.yml, Apache-2.0)",
                        support_vectors=tensors["support_vectors"].double().numpy(),
                        coefficients=tensors["coefficients"].double().numpy(),
                        rho=float(tensors["rho"].item()), gamma=float(tensors["gamma"].item()),
                        feature_min=tensors["feature_min"].double().numpy(),
                        feature_max=tensors["feature_max"].double().numpy(), feature_variant="opencv")


def load_brisque_model(path: str | Path | None) -> BrisqueModel:
    """``None`` → the shipped model; a folder holding LIVE's ``allmodel`` and ``allrange`` → LIVE's original SVR."""
    if path is None:
        return default_brisque_model()
    path = Path(path)
    if path.is_dir():
        return load_live_brisque_model(path / "allmodel", path / "allrange")
    raise InputFileError(path, "BRISQUE model must be a folder holding LIVE's allmodel and allrange files")


def load_live_brisque_model(model_path: str | Path, range_path: str | Path) -> BrisqueModel:
    """LIVE's BRISQUE SVR: a LIBSVM ``epsilon_svr``/``rbf`` model file and the ``svm-scale`` range file."""
    model_path, range_path = Path(model_path), Path(range_path)
    header, vectors, coefficients = _read_libsvm_model(model_path)
    low, high = _read_svm_scale_range(range_path, vectors.shape[1])
    return BrisqueModel(name=f"live ({model_path})", support_vectors=vectors, coefficients=coefficients,
                        rho=float(header["rho"]), gamma=float(header["gamma"]), feature_min=low, feature_max=high,
                        feature_variant="live", libsvm_rounding=True)


def _read_libsvm_model(path: Path) -> tuple[dict[str, str], np.ndarray, np.ndarray]:
    if not path.is_file():
        raise InputFileError(path, "BRISQUE model file does not exist")
    lines = path.read_text(errors="replace").splitlines()
    try:
        start = lines.index("SV")
    except ValueError:
        raise InputFileError(path, "not a LIBSVM model file (no 'SV' line)") from None
    header = dict(line.split(maxsplit=1) for line in lines[:start] if " " in line)
    if header.get("svm_type") != "epsilon_svr" or header.get("kernel_type") != "rbf":
        raise InputFileError(path, "expected an epsilon_svr model with an rbf kernel")
    rows: list[dict[int, float]] = []
    coefficients = []
    try:
        for line in lines[start + 1:]:
            if not line.strip():
                continue
            coefficient, *pairs = line.split()
            coefficients.append(float(coefficient))
            rows.append({int(k): float(v) for k, v in (pair.split(":") for pair in pairs)})
    except ValueError:
        raise InputFileError(path, "malformed support vector line") from None
    size = max(max(row) for row in rows)
    vectors = np.zeros((len(rows), size))
    for i, row in enumerate(rows):
        for k, v in row.items():
            vectors[i, k - 1] = v
    return header, vectors, np.array(coefficients)


def _read_svm_scale_range(path: Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise InputFileError(path, "BRISQUE range file does not exist")
    lines = [line.split() for line in path.read_text(errors="replace").splitlines() if line.strip()]
    if not lines or lines[0] != ["x"] or [float(v) for v in lines[1]] != [-1.0, 1.0]:
        raise InputFileError(path, "not an svm-scale range file scaling to [-1, 1]")
    low, high = np.zeros(size), np.ones(size)
    for index, lo, hi in lines[2:]:
        low[int(index) - 1], high[int(index) - 1] = float(lo), float(hi)
    return low, high
