"""Sampling synthetic cases from a site package: the loop that composes the diffusion model, a MONAI scheduler and
the decoder (like a diffusers pipeline), with class labels and classifier-free guidance.

``sample_cases`` returns ``(n, 5, *grid)`` float32 arrays in the prepared-data layout: four z-scored sequences
(background set to 0) and the whole-tumour mask as a binary segmentation (thresholded, small components removed).
A ``torch.Generator`` seeded with ``seed`` makes a call reproducible for the same batch size and device.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from monai.networks.schedulers import DDIMScheduler
from scipy import ndimage

from catphish.config import CHANNEL_NAMES
from catphish.errors import CatphishError
from catphish.models.autoencoder import MASK_CHANNEL, SiteAutoencoder, latent_shape, to_image_space
from catphish.models.diffusion import ClassConditionedUNet, sampling_scheduler
from catphish.runtime import progress_bar

if TYPE_CHECKING:
    from catphish.modes.site_package import SitePackage

SAMPLERS: tuple[str, ...] = ("ddpm", "ddim")


def guided_noise(model: ClassConditionedUNet, latents: torch.Tensor, timestep: int, labels: torch.Tensor,
                 guidance: float) -> torch.Tensor:
    """Classifier-free guidance: ``ε_null + G·(ε_class − ε_null)`` (one batched pass for both)."""
    timesteps = torch.full((len(latents),), int(timestep), device=latents.device, dtype=torch.long)
    if guidance == 1.0:
        return model(latents, timesteps, labels).float()
    null = torch.full_like(labels, model.null_label)
    both = model(torch.cat([latents, latents]), torch.cat([timesteps, timesteps]), torch.cat([labels, null])).float()
    conditional, unconditional = both.chunk(2)
    return unconditional + guidance * (conditional - unconditional)


def check_sampler_settings(sampler: str, steps: int, guidance: float, train_steps: int = 1000) -> None:
    """Refuse impossible sampler settings before anything is written (the same rules :func:`generate` applies)."""
    if sampler not in SAMPLERS:
        raise CatphishError(f"unknown sampler '{sampler}' (choose {' or '.join(SAMPLERS)})")
    if not 1 <= steps <= train_steps:
        raise CatphishError(f"--steps must be between 1 and {train_steps} (the training schedule), got {steps}")
    if not guidance >= 0:
        raise CatphishError(f"--guidance must be at least 0 (1 = no guidance), got {guidance}")


@torch.no_grad()
def generate(package: SitePackage, labels: Sequence[int], *, sampler: str = "ddim", steps: int = 25,
             guidance: float = 2.0, seed: int = 0, batch_size: int = 16, device: torch.device | None = None,
             show_progress: bool = True, description: str = "sampling") -> np.ndarray:
    """Decoded samples for class indices ``labels``: float32 ``(n, 5, *grid)``, mask channel as a probability."""
    check_sampler_settings(sampler, steps, guidance, package.config.diffusion.train_timesteps)
    if batch_size < 1:
        raise CatphishError(f"batch size must be at least 1, got {batch_size}")
    device = device or next(package.diffusion.parameters()).device
    autoencoder: SiteAutoencoder = package.autoencoder.to(device).eval()
    diffusion: ClassConditionedUNet = package.diffusion.to(device).eval()
    shape = latent_shape(package.config.autoencoder, tuple(package.config.data.grid))
    generator = torch.Generator(device=device).manual_seed(int(seed))
    all_labels = torch.as_tensor(list(labels), dtype=torch.long)
    batches = [all_labels[i:i + batch_size] for i in range(0, len(all_labels), batch_size)]
    outputs: list[np.ndarray] = []
    with progress_bar(transient=True) as progress:
        task = progress.add_task(description, total=steps * len(batches), status="")
        if not show_progress:
            progress.update(task, visible=False)
        for batch in batches:
            scheduler, eta = sampling_scheduler(package.config.diffusion, sampler, steps,
                                                clip=package.latent_normalisation.clip)
            y = batch.to(device)
            z = torch.randn((len(batch), *shape), generator=generator, device=device)
            for timestep in scheduler.timesteps:
                noise = guided_noise(diffusion, z, int(timestep), y, guidance)
                if isinstance(scheduler, DDIMScheduler):
                    z, _ = scheduler.step(noise, int(timestep), z, eta=eta, generator=generator)
                else:
                    z, _ = scheduler.step(noise, int(timestep), z, generator=generator)
                progress.advance(task)
            decoded = to_image_space(autoencoder.decode(package.latent_normalisation.denormalise(z)).float())
            outputs.append(decoded.cpu().numpy().astype(np.float32))
    return np.concatenate(outputs) if outputs else np.zeros((0, len(CHANNEL_NAMES), *package.config.data.grid),
                                                            np.float32)


def sample_cases(package: SitePackage, class_name: str, n: int, sampler: str | None = None, steps: int | None = None,
                 guidance: float | None = None, seed: int = 0, batch_size: int | None = None,
                 device: torch.device | str | None = None, show_progress: bool = True) -> np.ndarray:
    """``n`` synthetic cases of ``class_name`` from a site package, ready to train on or to write as NIfTI.

    Defaults (sampler, steps, guidance, batch size) come from the package's ``synthesis`` config.
    """
    if class_name not in package.class_names:
        raise CatphishError(f"class '{class_name}' is not in this site package (classes: "
                            f"{', '.join(package.class_names)})")
    if n < 1:
        raise CatphishError(f"number of cases must be at least 1, got {n}")
    synthesis = package.config.synthesis
    label = package.class_names.index(class_name)
    probabilities = generate(
        package, [label] * n, sampler=sampler or synthesis.sampler, steps=steps or synthesis.steps,
        guidance=synthesis.guidance if guidance is None else guidance, seed=seed,
        batch_size=batch_size or synthesis.batch_size, device=torch.device(device) if device else None,
        show_progress=show_progress, description=f"{package.site}: {class_name}")
    return finish_cases(probabilities, synthesis.mask_threshold, synthesis.min_mask_voxels,
                        synthesis.background_threshold)


def finish_cases(probabilities: np.ndarray, threshold: float, min_voxels: int, background_threshold: float) -> np.ndarray:
    """Decoded samples → data layout: binary segmentation in the mask channel, background sequences set to 0."""
    cases = probabilities.copy()
    for case in cases:
        segmentation = binary_segmentation(case[MASK_CHANNEL], threshold, min_voxels)
        case[MASK_CHANNEL] = segmentation
        background = border_background(case[:MASK_CHANNEL], background_threshold) & (segmentation == 0)
        case[:MASK_CHANNEL][:, background] = 0.0
    return cases


def binary_segmentation(probability: np.ndarray, threshold: float = 0.5, min_voxels: int = 8) -> np.ndarray:
    """Threshold a mask probability map and drop connected components smaller than ``min_voxels``."""
    mask = probability > threshold
    labels, count = ndimage.label(mask)
    if count:
        sizes = ndimage.sum(mask, labels, index=np.arange(1, count + 1))
        keep = np.zeros(count + 1, dtype=bool)
        keep[1:] = sizes >= min_voxels
        mask = keep[labels]
    return mask.astype(np.float32)


def border_background(sequences: np.ndarray, threshold: float) -> np.ndarray:
    """Voxels whose sequences are all near 0 and that connect to the image border: the area outside the brain."""
    low = np.all(np.abs(sequences) < threshold, axis=0)
    labels, count = ndimage.label(low)
    if not count:
        return low
    border = np.zeros_like(low)
    for axis in range(low.ndim):
        index = [slice(None)] * low.ndim
        for end in (0, -1):
            index[axis] = end
            border[tuple(index)] = True
    touching = np.unique(labels[border & low])
    return np.isin(labels, touching[touching > 0])


def write_cases_as_nifti(cases: np.ndarray, out_dir: str | Path, *, site: str, task: str, class_name: str,
                         spacing_mm: Sequence[float], extra: dict[str, str] | None = None) -> list[str]:
    """Write cases in the data contract (BraTS 2021 naming under ``synthetic-<site>/``, rows added to labels.csv).

    Returns the new subject ids; numbering continues after cases of the same site and class already there.
    """
    from catphish.data.writing import write_synthetic_cohort

    return write_synthetic_cohort(cases, out_dir, site=f"synthetic-{site}", task=task, class_name=class_name,
                                  spacing_mm=tuple(spacing_mm), extra=extra)
