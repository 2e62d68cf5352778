"""Tiny site cohorts and configs for the latent diffusion tests (16×16 slices or 16³ volumes, 2 training steps)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from catphish.config import StudyConfig, apply_override, preset_config
from catphish.data.prepared import PreparedSubject, save_prepared

TINY_2D = (
    "data.grid=[16,16]",
    "autoencoder.channels=[4,8]", "autoencoder.attention_levels=[false,false]", "autoencoder.norm_num_groups=4",
    "autoencoder.latent_channels=2", "autoencoder.steps=2", "autoencoder.adversarial_warmup_steps=1",
    "autoencoder.discriminator_channels=4", "autoencoder.batch_size=4", "autoencoder.checkpoint_every=1",
    "autoencoder.holdout_fraction=0.25",
    "diffusion.channels=[8,16]", "diffusion.attention_levels=[false,true]", "diffusion.norm_num_groups=4",
    "diffusion.num_head_channels=8", "diffusion.cross_attention_dim=8", "diffusion.steps=2", "diffusion.batch_size=4",
    "diffusion.checkpoint_every=1",
    "synthesis.steps=2", "synthesis.batch_size=4", "synthesis.preview_per_class=1", "synthesis.min_mask_voxels=1",
)
TINY_3D = (*TINY_2D, "data.spatial_dims=3", "data.grid=[16,16,16]")


def tiny_config(spatial_dims: int = 2, *overrides: str) -> StudyConfig:
    """The demo preset shrunk to a few seconds of CPU; ``overrides`` are ``section.key=value`` strings."""
    config = preset_config("demo")
    for item in (*(TINY_2D if spatial_dims == 2 else TINY_3D), *overrides):
        config = apply_override(config, item)
    return config


def tiny_subjects(per_class: int = 4, spatial_dims: int = 2, site: str = "alpha", task: str = "idh",
                  classes: tuple[str, ...] = ("mutant", "wildtype"), size: int = 16, slices: int = 3,
                  seed: int = 0) -> list[PreparedSubject]:
    """Synthetic prepared subjects: a round 'brain', a tumour, and a class phenotype in T1C (bright vs dark)."""
    rng = np.random.default_rng(seed)
    grid = (size,) * spatial_dims
    count = slices if spatial_dims == 2 else 1
    axes = np.meshgrid(*(np.arange(size) - size / 2 + 0.5 for _ in grid), indexing="ij")
    radius = np.sqrt(sum(a**2 for a in axes))
    brain = radius < size * 0.45
    subjects = []
    for index in range(per_class * len(classes)):
        name = classes[index % len(classes)]
        image = np.zeros((count, 5, *grid), np.float32)
        image[:, :4] = rng.normal(0, 1, (count, 4, *grid)) * brain
        shift = np.sqrt((axes[0] - 2) ** 2 + sum(a**2 for a in axes[1:]))
        tumour = shift < 3
        image[:, 4] = tumour
        image[:, 1] += tumour * (2.0 if classes.index(name) % 2 else -1.5)
        labels = {"idh": "", "tumor_type": ""}
        labels[task] = name
        subjects.append(PreparedSubject(f"PATIENT-{site}-{index:04d}", site, image, split="train", **labels))
    return subjects


def write_prepared(folder: Path, subjects: list[PreparedSubject]) -> Path:
    """A prepared cache folder (``<site>/<subject>.safetensors``) as `catphish site train --data` accepts it."""
    for subject in subjects:
        save_prepared(folder / subject.site / f"{subject.subject_id}.safetensors", subject)
    return folder
