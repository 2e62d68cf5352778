"""Training and prediction of the downstream classifier, free of any framework (DESIGN §1, downstream).

Every mode calls these three functions — centralized, local, synthetic and mixed training here, and the Flower
ClientApp of the federated mode (``catphish.federated``) — so a model means the same thing in each:

- :func:`build_classifier` makes the network of ``classifier.model`` (voxel-wise residual UNet or CNN baseline);
- :func:`train_epochs` trains it on prepared subjects: cross-entropy on the tumour voxels, every voxel labelled with the
  subject's class, class-weighted, SGD with momentum and a poly or cosine schedule, MONAI augmentations;
- :func:`predict_subjects` gives each subject's class probabilities: the mean softmax over its tumour voxels.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from catphish.config import ClassifierConfig
from catphish.data.prepared import PreparedSubject
from catphish.errors import CatphishError, ConfigError
from catphish.models.classifier import ResidualUNet, TumourCNN
from catphish.runtime import log

MASK_CHANNEL = 4
POLY_POWER = 0.9
PREDICT_VOXELS_PER_BATCH = 1 << 20
"""Prediction batches hold about this many voxels (many 2D slices, one large 3D volume)."""


# --------------------------------------------------------------------------------------------------- model
def build_classifier(config: ClassifierConfig, spatial_dims: int, num_classes: int) -> nn.Module:
    """The network named by ``config.model`` for ``spatial_dims`` (2 or 3) and ``num_classes`` outputs."""
    if spatial_dims not in (2, 3):
        raise ConfigError(f"spatial_dims must be 2 or 3, got {spatial_dims}")
    if num_classes < 2:
        raise ConfigError(f"a classifier needs at least two classes, got {num_classes}")
    if len(config.channels) < 2:
        raise ConfigError(f"classifier.channels needs at least two levels, got {config.channels}")
    model: nn.Module
    if config.model == "cnn":
        model = TumourCNN(spatial_dims, config.in_channels, num_classes, tuple(config.channels))
    elif config.model == "resunet":
        model = ResidualUNet(spatial_dims, config.in_channels, num_classes, tuple(config.channels), mamba=config.mamba,
                             mamba_state_size=config.mamba_state_size)
    else:
        raise ConfigError(f"unknown classifier.model '{config.model}' (choose resunet or cnn)")
    model.window = int(config.window)  # the input window travels with the model, so prediction needs no config
    return model


def check_grid(model: nn.Module | ClassifierConfig, grid: Sequence[int]) -> None:
    """Every spatial size of the input window must halve cleanly at each level of the network."""
    is_config = isinstance(model, ClassifierConfig)
    divisor = 2 ** (len(model.channels) - 1) if is_config else int(getattr(model, "divisor", 1))
    window = window_size(int(getattr(model, "window", 0)), grid)
    if any(size % divisor for size in window):
        what = "classifier.window" if window != tuple(grid) else "data.grid"
        raise ConfigError(f"{what} {window} must be divisible by {divisor} for a classifier with "
                          f"{int(math.log2(divisor)) + 1} levels (classifier.channels); change one of them")


def window_size(window: int, grid: Sequence[int]) -> tuple[int, ...]:
    """The network's input: ``window`` voxels along each axis (capped by the grid), or the whole grid when 0."""
    return tuple(grid) if window <= 0 else tuple(min(window, size) for size in grid)


def tumour_window(mask: np.ndarray, size: Sequence[int], rng: np.random.Generator | None = None) -> tuple[slice, ...]:
    """Slices of a ``size`` window centred on the tumour's bounding box, inside the grid.

    With ``rng`` (training) the window shifts by up to a quarter of its size, so the tumour is not always central.
    """
    found = np.argwhere(mask > 0)
    centre = (found.min(0) + found.max(0) + 1) / 2 if len(found) else np.array(mask.shape) / 2
    window = []
    for middle, width, length in zip(centre, size, mask.shape, strict=True):
        start = round(float(middle) - width / 2)
        if rng is not None and width < length:
            start += int(rng.integers(-(width // 4), width // 4 + 1))
        start = min(max(start, 0), length - width)
        window.append(slice(start, start + width))
    return tuple(window)


def model_inputs(model: nn.Module, images: torch.Tensor, in_channels: int) -> torch.Tensor:
    """The channels the network reads: the MR sequences, plus the mask for models that pool over the tumour."""
    if getattr(model, "uses_mask_input", False):
        return torch.cat([images[:, :in_channels], images[:, MASK_CHANNEL:MASK_CHANNEL + 1]], dim=1)
    return images[:, :in_channels]


# ----------------------------------------------------------------------------------------------- samples
def labelled_subjects(subjects: Sequence[PreparedSubject], task: str, class_names: Sequence[str],
                      warn: bool = True) -> list[PreparedSubject]:
    """The subjects whose ``task`` label is one of ``class_names``; the others are left out with a warning."""
    kept = [s for s in subjects if s.label(task) in class_names]
    if warn and len(kept) < len(subjects):
        missing = [s for s in subjects if s.label(task) not in class_names]
        log.warning("%d subject(s) have no %s label among %s and are left out of training: %s", len(missing), task,
                    "/".join(class_names), ", ".join(s.subject_id for s in missing[:5]) + (" …" if len(missing) > 5 else ""))
    return kept


def class_counts(subjects: Sequence[PreparedSubject], task: str, class_names: Sequence[str]) -> dict[str, int]:
    labels = [s.label(task) for s in subjects]
    return {name: labels.count(name) for name in class_names}


def class_weights(counts: Sequence[int]) -> torch.Tensor:
    """Inverse-frequency weights (mean 1 over the classes present); a class without subjects gets 0."""
    counts_t = torch.tensor(counts, dtype=torch.float32)
    present = counts_t > 0
    weights = torch.zeros_like(counts_t)
    weights[present] = 1.0 / counts_t[present]
    return weights * present.sum() / weights.sum().clamp_min(1e-12)


def tumour_slices(subjects: Sequence[PreparedSubject], task: str, class_names: Sequence[str]) -> list[tuple[int, int, int]]:
    """(subject index, slice index, class index) of every slice (2D) or volume (3D) that contains tumour."""
    samples = []
    for index, subject in enumerate(subjects):
        label = class_names.index(subject.label(task))
        for slice_index in range(subject.image.shape[0]):
            if subject.image[slice_index, MASK_CHANNEL].any():
                samples.append((index, slice_index, label))
    return samples


# ---------------------------------------------------------------------------------------------- augmentation
def make_augmentation(spatial_dims: int, seed: int) -> Any:
    """MONAI dictionary transforms on ``{"image", "mask"}``: flips, a small affine, intensity scale/shift/noise."""
    from monai.transforms import (
        Compose,
        RandAffined,
        RandFlipd,
        RandGaussianNoised,
        RandScaleIntensityd,
        RandShiftIntensityd,
    )

    both = ["image", "mask"]
    transforms = [RandFlipd(both, prob=0.5, spatial_axis=axis) for axis in range(spatial_dims)]
    transforms += [
        RandAffined(both, prob=0.3, rotate_range=[0.26] * (1 if spatial_dims == 2 else 3), scale_range=0.1,
                    translate_range=2, mode=("bilinear", "nearest"), padding_mode="zeros"),
        RandScaleIntensityd("image", factors=0.1, prob=0.3),
        RandShiftIntensityd("image", offsets=0.1, prob=0.3),
        RandGaussianNoised("image", std=0.05, prob=0.2),
    ]
    augmentation = Compose(transforms)
    augmentation.set_random_state(seed=seed % (2**32))
    return augmentation


def augment_batch(augmentation: Any, images: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Apply the (per-sample) transforms to each sample of a batch, on the batch's device."""
    from monai.utils import convert_to_tensor

    out_images, out_masks = [], []
    for image, mask in zip(images, masks, strict=True):
        sample = augmentation({"image": image, "mask": mask[None]})
        # plain tensors: MONAI's MetaTensor would slow every later operation of the step
        out_images.append(convert_to_tensor(sample["image"], track_meta=False))
        out_masks.append(convert_to_tensor(sample["mask"], track_meta=False)[0])
    return torch.stack(out_images), torch.stack(out_masks)


# --------------------------------------------------------------------------------------------------- loss
def voxel_loss(logits: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Class-weighted cross-entropy over tumour voxels; each sample counts once, whatever its tumour size."""
    if logits.dim() == 2:  # subject-level model: one prediction per sample
        per_sample = F.cross_entropy(logits.float(), labels, reduction="none")
        has_tumour = torch.ones_like(per_sample)
    else:
        target = labels.view(-1, *[1] * (logits.dim() - 2)).expand(-1, *logits.shape[2:])
        voxel = F.cross_entropy(logits.float(), target, reduction="none")
        tumour = masks.flatten(1).sum(1)
        per_sample = (voxel * masks).flatten(1).sum(1) / tumour.clamp_min(1.0)
        has_tumour = (tumour > 0).float()  # augmentation may shift a small tumour out of view
    sample_weight = weights[labels] * has_tumour
    return (per_sample * sample_weight).sum() / sample_weight.sum().clamp_min(1e-12)


def learning_rate(config: ClassifierConfig, progress: float) -> float:
    """The scheduled learning rate at ``progress`` ∈ [0, 1] of training (poly with power 0.9, or cosine)."""
    progress = min(max(progress, 0.0), 1.0)
    if config.schedule == "cosine":
        return 0.5 * config.lr * (1.0 + math.cos(math.pi * progress))
    return config.lr * (1.0 - progress) ** POLY_POWER


def proximal_term(model: nn.Module, global_params: Sequence[torch.Tensor]) -> torch.Tensor:
    """FedProx: ||w - w0||² over the trainable parameters."""
    params = list(model.parameters())
    if len(params) != len(global_params):
        raise CatphishError(f"global_params has {len(global_params)} tensors, the model {len(params)}")
    return sum(((p - g.to(p.device)) ** 2).sum() for p, g in zip(params, global_params, strict=True))  # type: ignore[return-value]


@contextlib.contextmanager
def _autocast(device: torch.device) -> Iterator[None]:
    """Mixed precision on CUDA only (bfloat16 where supported); CPU stays float32."""
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        with torch.autocast("cuda", dtype=dtype):
            yield
    else:
        yield


# ------------------------------------------------------------------------------------------------- training
def train_epochs(model: nn.Module, subjects: list[PreparedSubject], class_names: list[str], task: str,
                 config: ClassifierConfig, epochs: int, device: torch.device | str, seed: int,
                 proximal_mu: float = 0.0, global_params: list[torch.Tensor] | None = None,
                 optimizer_state: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``model`` in place for ``epochs`` passes over the tumour slices (2D) or volumes (3D) of ``subjects``.

    ``optimizer_state`` (from a previous call's result) continues the SGD momentum and the learning-rate schedule:
    its ``epoch`` and ``total_epochs`` place this call within the whole training; without it the schedule spans
    ``epochs``. With ``proximal_mu`` > 0 the FedProx term mu/2·||w - w0||² (w0 = ``global_params``) is added.
    Returns the mean loss, the number of subjects used, their class counts and the optimizer state to continue.
    """
    device = torch.device(device)
    subjects = labelled_subjects(subjects, task, class_names)
    if not subjects:
        raise CatphishError(f"no training subjects labelled for task '{task}' ({'/'.join(class_names)})")
    samples = tumour_slices(subjects, task, class_names)
    if not samples:
        raise CatphishError("none of the training subjects has tumour voxels in its mask")
    grid = subjects[0].image.shape[2:]
    check_grid(model, grid)
    window = window_size(int(getattr(model, "window", 0)), grid)
    counts = class_counts(subjects, task, class_names)
    weights = (class_weights(list(counts.values())) if config.class_weighting
               else torch.ones(len(class_names))).to(device)
    state = dict(optimizer_state or {})
    start_epoch, total_epochs = int(state.get("epoch", 0)), int(state.get("total_epochs", epochs))
    model.to(device).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                weight_decay=config.weight_decay, nesterov=config.momentum > 0)
    if state.get("optimizer"):
        optimizer.load_state_dict(state["optimizer"])
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and not torch.cuda.is_bf16_supported())
    generator = torch.Generator().manual_seed(seed)
    augmentation = make_augmentation(subjects[0].image.ndim - 2, seed) if config.augment else None
    shifts = np.random.default_rng(seed) if config.augment else None
    batch_size = max(1, config.batch_size)
    steps_per_epoch = math.ceil(len(samples) / batch_size)
    losses: list[float] = []
    for epoch in range(epochs):
        order = torch.randperm(len(samples), generator=generator).tolist()
        for step in range(steps_per_epoch):
            progress = (start_epoch + epoch + step / steps_per_epoch) / max(total_epochs, 1)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, progress)
            batch = [samples[i] for i in order[step * batch_size:(step + 1) * batch_size]]
            images = np.stack([_windowed(subjects[i].image[s], window, shifts) for i, s, _ in batch])
            loss = _train_step(model, optimizer, scaler, images, [label for _, _, label in batch], config, weights,
                               device, augmentation, proximal_mu, global_params)
            losses.append(loss)
    return {
        "loss": float(np.mean(losses)) if losses else float("nan"),
        "num_examples": len(subjects),
        "num_samples": len(samples),
        "class_counts": counts,
        "steps": len(losses),
        "optimizer_state": {"optimizer": optimizer.state_dict(), "epoch": start_epoch + epochs,
                            "total_epochs": total_epochs},
    }


def _windowed(image: np.ndarray, window: tuple[int, ...], rng: np.random.Generator | None) -> np.ndarray:
    """One slice (2D) or volume (3D), channels first, cut to the tumour-centred window."""
    if window == image.shape[1:]:
        return image
    return image[(slice(None), *tumour_window(image[MASK_CHANNEL], window, rng))]


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                batch_images: np.ndarray, batch_labels: list[int], config: ClassifierConfig, weights: torch.Tensor,
                device: torch.device, augmentation: Any, proximal_mu: float,
                global_params: Sequence[torch.Tensor] | None) -> float:
    images = torch.from_numpy(batch_images).to(device)
    labels = torch.tensor(batch_labels, device=device)
    masks = images[:, MASK_CHANNEL]
    if augmentation is not None:
        sequences, masks = augment_batch(augmentation, images[:, :MASK_CHANNEL], masks)
        images = torch.cat([sequences, masks[:, None]], dim=1)
    with _autocast(device):
        logits = model(model_inputs(model, images, config.in_channels))
    loss = voxel_loss(logits, masks, labels, weights)
    if proximal_mu > 0 and global_params is not None:
        loss = loss + proximal_mu / 2 * proximal_term(model, global_params)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return float(loss.detach())


# ------------------------------------------------------------------------------------------------ prediction
@torch.no_grad()
def predict_subjects(model: nn.Module, subjects: Sequence[PreparedSubject], class_names: Sequence[str],
                     device: torch.device | str) -> np.ndarray:
    """Class probabilities per subject, shape (subjects, classes): the mean softmax over the subject's tumour voxels.

    All slices of a 2D subject count together. A subject whose mask is empty (a synthetic case whose mask vanished)
    falls back to its brain voxels, with a warning.
    """
    device = torch.device(device)
    model.to(device).eval()
    in_channels = int(getattr(model, "in_channels", MASK_CHANNEL))
    out = np.zeros((len(subjects), len(class_names)), dtype=np.float64)
    for row, subject in enumerate(subjects):
        grid = subject.image.shape[2:]
        check_grid(model, grid)
        window = window_size(int(getattr(model, "window", 0)), grid)
        totals, weight = torch.zeros(len(class_names), dtype=torch.float64), 0.0
        per_batch = max(1, PREDICT_VOXELS_PER_BATCH // int(np.prod(window)))
        region = subject.image[:, MASK_CHANNEL] > 0
        if not region.any():
            log.warning("%s: empty tumour mask; its probability is the mean over brain voxels", subject.subject_id)
            region = np.abs(subject.image[:, :MASK_CHANNEL]).sum(1) > 0
        # slices without tumour add nothing to the mean; each remaining one is cut around its own tumour
        crops = [(slice_index, tumour_window(region[slice_index], window)) for slice_index in range(len(region))
                 if region[slice_index].any()]
        for start in range(0, len(crops), per_batch):
            chosen = crops[start:start + per_batch]
            images = torch.from_numpy(np.stack([subject.image[(i, slice(None), *cut)] for i, cut in chosen])).to(device)
            voxels = torch.from_numpy(np.stack([region[(i, *cut)] for i, cut in chosen])).to(device).float()
            with _autocast(device):
                logits = model(model_inputs(model, images, in_channels))
            probs = torch.softmax(logits.float(), dim=1)
            if probs.dim() == 2:  # one prediction per slice: weighted by the slice's tumour voxels
                counts = voxels.flatten(1).sum(1)
                totals += (probs * counts[:, None]).sum(0).double().cpu()
                weight += float(counts.sum())
            else:
                totals += (probs * voxels[:, None]).flatten(2).sum(-1).sum(0).double().cpu()
                weight += float(voxels.sum())
        out[row] = (totals / weight).numpy() if weight > 0 else np.full(len(class_names), 1.0 / len(class_names))
    return out

