"""Feature extractors for 2D slices, the space in which FID, KID and precision/recall are measured.

No pretrained Inception, RadImageNet or MedicalNet weights can be had offline here (see the shared note on quality
metrics), so catphish's FID is **not** Inception FID and its values are not comparable with the paper's. Every output
names the extractor; compare real-vs-synthetic against real-vs-real baselines computed the same way.

An extractor is any object with a ``name``, a ``description``, an ``input_size`` (the (H, W) slices are resized to,
or ``None`` for any size) and ``__call__(slices) -> features``: ``slices`` is ``(N, H, W)`` float in [0, 1] (one
sequence, brain-cropped and min–max scaled by :func:`catphish.evaluation.quality.mri_slice_protocol`), the result is
``(N, D)`` float64. Two are built in:

- :class:`HandcraftedSliceFeatures` (``handcrafted``, the default): needs no weights; see its docstring for the list.
- :class:`TorchModuleFeatures`: wraps any ``torch.nn.Module`` (e.g. an encoder a user trained or loaded from
  weights), global-average-pooling its output.

From the command line (``--features`` / ``evaluation.feature_extractor``) a path to a ``.safetensors`` file selects a
MONAI ResNet-18 (2D, one input channel, MedicalNet layout ``conv1``, ``layer1``…``layer4``) with the user's weights:
512 global-average-pooled features per slice resized to 128 × 128 and scaled to [−1, 1].
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from scipy import ndimage
from skimage.feature import graycomatrix, graycoprops, local_binary_pattern
from skimage.transform import resize

from catphish.artifacts import load_tensors
from catphish.errors import CatphishError


@runtime_checkable
class SliceFeatureExtractor(Protocol):
    name: str
    description: str
    input_size: tuple[int, int] | None

    def __call__(self, slices: np.ndarray) -> np.ndarray: ...


def describe(extractor: SliceFeatureExtractor) -> dict[str, object]:
    """What every output says about the features it was computed on."""
    return {"name": extractor.name, "description": extractor.description,
            "input_size": list(extractor.input_size) if extractor.input_size else None}


class HandcraftedSliceFeatures:
    """Multi-scale intensity, gradient, texture (GLCM) and local-binary-pattern statistics of a slice (82 values).

    On the slice resized to 64 × 64 (values in [0, 1]):

    - intensity (23): mean, standard deviation, 10/25/50/75/90th percentiles, 16-bin histogram over [0, 1];
    - gradient and detail (21), at scales 1, ½ and ¼ (Gaussian-smoothed 2× decimation): Sobel gradient magnitude
      mean, standard deviation, 50/90/99th percentiles; mean and standard deviation of |Laplacian|;
    - GLCM texture (18), scikit-image ``graycomatrix`` with 32 grey levels, distances 1, 2 and 4, angles 0°, 45°,
      90°, 135° averaged, symmetric and normalised: contrast, dissimilarity, homogeneity, energy, correlation, ASM;
    - local binary patterns (20): 10-bin histogram of rotation-invariant uniform LBP (8 neighbours, radius 1) at
      scales 1 and ½.

    The features have different units; the fidelity workflow standardises them with the real slices' mean and standard
    deviation before computing distances.
    """

    name = "handcrafted-v1"
    description = ("82 handcrafted features per 64x64 slice (scikit-image): intensity mean/std/percentiles/16-bin "
                   "histogram; Sobel gradient and |Laplacian| statistics at scales 1, 1/2, 1/4; GLCM contrast, "
                   "dissimilarity, homogeneity, energy, correlation, ASM (32 levels, distances 1, 2, 4, 4 angles); "
                   "uniform LBP histograms (P=8, R=1) at scales 1 and 1/2")
    input_size: tuple[int, int] | None = (64, 64)
    glcm_levels = 32
    glcm_distances = (1, 2, 4)
    glcm_properties = ("contrast", "dissimilarity", "homogeneity", "energy", "correlation", "ASM")

    def __call__(self, slices: np.ndarray) -> np.ndarray:
        slices = np.clip(_check_slices(slices).astype(np.float64), 0.0, 1.0)
        if not len(slices):
            return np.zeros((0, 82))
        # intensity and gradient statistics vectorised over the batch; texture per slice
        parts = [_intensity(slices)]
        scaled = slices
        for scale in range(3):
            if scale:
                scaled = ndimage.gaussian_filter(scaled, (0, 1.0, 1.0))[:, ::2, ::2]
            parts.append(_gradient(scaled))
        parts.append(np.stack([self._glcm(image) for image in slices]))
        parts.append(np.stack([_lbp(image) for image in slices]))
        half = ndimage.gaussian_filter(slices, (0, 1.0, 1.0))[:, ::2, ::2]
        parts.append(np.stack([_lbp(image) for image in half]))
        return np.concatenate(parts, axis=1)

    def features(self, image: np.ndarray) -> np.ndarray:
        """The feature vector of one slice."""
        return self(image[None])[0]

    def _glcm(self, image: np.ndarray) -> np.ndarray:
        levels = np.minimum((image * self.glcm_levels).astype(np.uint8), self.glcm_levels - 1)
        matrix = graycomatrix(levels, distances=self.glcm_distances, angles=(0, np.pi / 4, np.pi / 2, 3 * np.pi / 4),
                              levels=self.glcm_levels, symmetric=True, normed=True)
        # (distances, angles) per property → mean over angles; a constant slice has an undefined correlation
        values = [np.nan_to_num(graycoprops(matrix, prop).mean(axis=1), nan=1.0) for prop in self.glcm_properties]
        return np.concatenate(values)


def _intensity(slices: np.ndarray) -> np.ndarray:
    """(N, 23): mean, std, 10/25/50/75/90th percentiles, 16-bin histogram over [0, 1]."""
    flat = slices.reshape(len(slices), -1)
    bins = np.minimum((flat * 16).astype(int), 15)
    histogram = np.stack([np.bincount(row, minlength=16) for row in bins]) / flat.shape[1]
    return np.concatenate([flat.mean(1, keepdims=True), flat.std(1, keepdims=True),
                           np.percentile(flat, [10, 25, 50, 75, 90], axis=1).T, histogram], axis=1)


def _gradient(slices: np.ndarray) -> np.ndarray:
    """(N, 7): Sobel magnitude mean, std, 50/90/99th percentiles; |Laplacian| mean and std (per slice, 2D)."""
    magnitude = np.hypot(_sobel(slices, axis=1), _sobel(slices, axis=2)).reshape(len(slices), -1)
    laplacian = np.abs(sum(ndimage.correlate1d(slices, [1.0, -2.0, 1.0], axis=axis, mode="reflect")
                           for axis in (1, 2))).reshape(len(slices), -1)
    return np.concatenate([magnitude.mean(1, keepdims=True), magnitude.std(1, keepdims=True),
                           np.percentile(magnitude, [50, 90, 99], axis=1).T, laplacian.mean(1, keepdims=True),
                           laplacian.std(1, keepdims=True)], axis=1)


def _sobel(slices: np.ndarray, axis: int) -> np.ndarray:
    """Sobel derivative along ``axis`` (1 or 2) of each slice, smoothing along the other in-plane axis only."""
    other = 3 - axis
    derivative = ndimage.correlate1d(slices, [-1.0, 0.0, 1.0], axis=axis, mode="reflect")
    return ndimage.correlate1d(derivative, [1.0, 2.0, 1.0], axis=other, mode="reflect")


def _lbp(image: np.ndarray) -> np.ndarray:
    codes = local_binary_pattern((image * 255).astype(np.uint8), P=8, R=1, method="uniform")
    histogram, _ = np.histogram(codes, bins=10, range=(0, 10))
    return histogram / codes.size


class TorchModuleFeatures:
    """Features from a ``torch.nn.Module``: slices → ``(N, channels, H, W)`` → module → global average pool.

    ``channels`` = 3 repeats the grey slice (ImageNet-style networks); ``mean``/``std`` normalise the [0, 1] input
    (e.g. 0.5/0.5 for a network trained on [-1, 1]). The module is run in eval mode without gradients.
    """

    def __init__(self, module: torch.nn.Module, name: str, input_size: tuple[int, int], channels: int = 1,
                 mean: float = 0.0, std: float = 1.0, batch_size: int = 32, device: str | torch.device = "cpu",
                 description: str | None = None) -> None:
        self.module = module.eval().to(device)
        self.name = name
        self.input_size: tuple[int, int] | None = input_size
        self.channels, self.mean, self.std = channels, mean, std
        self.batch_size, self.device = batch_size, torch.device(device)
        self.description = description or f"global-average-pooled output of {type(module).__name__} on " \
                                          f"{input_size[0]}x{input_size[1]} slices, {channels} channel(s)"

    @torch.no_grad()
    def __call__(self, slices: np.ndarray) -> np.ndarray:
        slices = _check_slices(slices)
        outputs = []
        for start in range(0, len(slices), self.batch_size):
            batch = torch.from_numpy(slices[start:start + self.batch_size]).float().to(self.device)
            batch = ((batch - self.mean) / self.std)[:, None].expand(-1, self.channels, -1, -1)
            out = self.module(batch)
            outputs.append((out.flatten(2).mean(-1) if out.ndim > 2 else out).double().cpu().numpy())
        return np.concatenate(outputs) if outputs else np.zeros((0, 0))


ExtractorFactory = Callable[[], SliceFeatureExtractor]
EXTRACTORS: dict[str, ExtractorFactory] = {"handcrafted": HandcraftedSliceFeatures}


def feature_extractor(spec: str, device: str | torch.device = "cpu") -> SliceFeatureExtractor:
    """The extractor named ``spec`` (``handcrafted``), or a ResNet-18 with the user's weights from a ``.safetensors``
    path; any other network plugs in from Python through :class:`TorchModuleFeatures`."""
    if spec in EXTRACTORS:
        return EXTRACTORS[spec]()
    path = Path(spec)
    if path.suffix == ".safetensors":
        network = resnet18_from_weights(path, spatial_dims=2)
        return TorchModuleFeatures(network, name=f"resnet18:{path.name}", input_size=(128, 128), mean=0.5, std=0.5,
                                   device=device, description=f"MONAI ResNet-18 (2D, 1 channel) with user-supplied "
                                   f"weights {path.name}: 512 global-average-pooled features per 128x128 slice in "
                                   "[-1, 1]")
    raise CatphishError(f"unknown feature extractor '{spec}' (choose from {', '.join(EXTRACTORS)}, or give a "
                        ".safetensors file of ResNet-18 weights)")


def resnet18_from_weights(path: Path, spatial_dims: int) -> torch.nn.Module:
    """A MONAI ResNet-18 feature network (one input channel, no classifier head) with the user's weights."""
    from monai.networks.nets import resnet18

    if not path.is_file():
        raise CatphishError(f"{path}: feature-network weights not found")
    network = resnet18(spatial_dims=spatial_dims, n_input_channels=1, feed_forward=False, shortcut_type="A")
    state = {k.removeprefix("module."): v for k, v in load_tensors(path).items()}
    expected = network.state_dict()
    fitting = {k: v for k, v in state.items() if k in expected and expected[k].shape == v.shape}
    if len(fitting) < len(expected) // 2:
        raise CatphishError(f"{path.name}: these weights do not fit a {spatial_dims}D ResNet-18 ({len(fitting)} of "
                            f"{len(expected)} tensors match by name and shape)")
    network.load_state_dict(fitting, strict=False)
    return network.eval()


def resize_slice(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize one slice to an extractor's input size (linear, anti-aliased when shrinking)."""
    if image.shape == tuple(size):
        return image
    return resize(image, size, order=1, anti_aliasing=image.shape[0] > size[0] or image.shape[1] > size[1],
                  preserve_range=True)


def _check_slices(slices: np.ndarray) -> np.ndarray:
    slices = np.asarray(slices)
    if slices.ndim != 3:
        raise CatphishError(f"feature extractors take (N, H, W) slices, got shape {slices.shape}")
    return slices.astype(np.float32, copy=False)
