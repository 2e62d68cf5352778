"""Training of a site's latent diffusion model (DESIGN §1, step 1), on that site's training subjects only.

Stages, each checkpointed every ``checkpoint_every`` steps and skipped once finished:

1. ``autoencoder`` — 5-channel KL autoencoder: L1 (sequences) + BCE/Dice (mask) + KL (+ perceptual with user
   weights) + adversarial (PatchDiscriminator) after a warm-up;
2. ``super_resolution`` (when configured) — the SR head fine-tuned with L1 + SSIM on the frozen autoencoder;
3. ``diffusion`` — class-conditional latent diffusion with condition dropout, EMA weights, optionally the MI
   regulariser and DP-SGD (Opacus, subject-level: one slice per Poisson-sampled subject per step).

``--resume`` continues exactly: model, optimizer, EMA, random generators and step come back from the checkpoint,
so an interrupted and resumed run ends with the same weights as an uninterrupted one (same device).
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.losses import PatchAdversarialLoss
from monai.metrics import DiceMetric, PSNRMetric, SSIMMetric
from torch import nn
from torch.optim.swa_utils import AveragedModel

from catphish.config import SEQUENCES, TASK_CLASSES, StudyConfig
from catphish.data.prepared import PreparedSubject
from catphish.errors import CatphishError
from catphish.models.autoencoder import (
    MASK_CHANNEL,
    LatentNormalisation,
    SiteAutoencoder,
    build_discriminator,
    grid_divisor,
    to_image_space,
)
from catphish.models.diffusion import ClassConditionedUNet, predicted_original, training_scheduler
from catphish.models.losses import (
    MaskLoss,
    MutualInformation,
    ResNetPerceptualLoss,
    SuperResolutionLoss,
    diffusion_loss,
    image_l1,
    kl_loss,
)
from catphish.runtime import log, progress_bar
from catphish.training.checkpoint import (
    GracefulInterrupt,
    MetricsLog,
    load_checkpoint,
    restore_rng,
    rng_state,
    save_checkpoint,
)

MIN_GRID_FILL = 0.25
"""Smallest median fraction of a grid axis the brain may span before the preset is judged too big for the data."""


# ------------------------------------------------------------------------------------------------- site cohort
@dataclass
class SiteCohort:
    """One site's images for one task, split into training and autoencoder hold-out subjects (stratified)."""

    site: str
    task: str
    class_names: tuple[str, ...]
    train_images: np.ndarray
    """float32 ``(N, 5, *grid)``: every slice (2D) or volume (3D) of the training subjects."""
    train_labels: np.ndarray
    train_groups: np.ndarray
    """Subject index of each training image (DP-SGD samples subjects, not slices)."""
    holdout_images: np.ndarray
    holdout_labels: np.ndarray
    train_subjects: dict[str, int]
    holdout_subjects: dict[str, int]
    fingerprint: str
    """sha256 of the subject ids and images used: identifies the run's inputs without naming any subject."""

    @property
    def spatial_dims(self) -> int:
        return self.train_images.ndim - 2

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(self.train_images.shape[2:])


def select_site_cohort(subjects: Sequence[PreparedSubject], site: str, task: str, config: StudyConfig,
                       seed: int) -> SiteCohort:
    """The site's usable training subjects (split ≠ test, labelled for ``task``), checked for conditional training."""
    if task not in TASK_CLASSES:
        raise CatphishError(f"unknown task '{task}' (choose from {', '.join(TASK_CLASSES)})")
    sites = sorted({s.site for s in subjects})
    at_site = [s for s in subjects if s.site == site]
    if not at_site:
        raise CatphishError(f"site '{site}' is not in the data (sites: {', '.join(sites) or 'none'})")
    usable = [s for s in at_site if s.split != "test" and s.label(task)]
    if len(usable) < len(at_site):
        log.info("site %s: using %d of %d subjects for %s (others are test subjects or have no %s label)",
                 site, len(usable), len(at_site), task, task)
    if not usable:
        raise CatphishError(f"site '{site}' has no training subjects labelled for task '{task}' "
                            f"({len(at_site)} subjects, all test-split or unlabelled)")
    classes = tuple(name for name in TASK_CLASSES[task] if any(s.label(task) == name for s in usable))
    if len(classes) < 2:
        raise CatphishError(f"site '{site}' has only class '{classes[0]}' for task '{task}' ({len(usable)} subjects): "
                            "a class-conditional model needs at least two classes")
    _check_grid(usable, config)
    train, holdout = _holdout_split(usable, task, classes, config, seed)
    index = {name: i for i, name in enumerate(classes)}
    train_images, train_labels, train_groups = _stack(train, task, index)
    holdout_images, holdout_labels, _ = _stack(holdout, task, index)
    digest = hashlib.sha256()
    for subject in sorted(usable, key=lambda s: s.subject_id):
        digest.update(subject.subject_id.encode() + b"\0" + subject.label(task).encode())
        digest.update(hashlib.sha256(np.ascontiguousarray(subject.image, dtype=np.float32).tobytes()).digest())
    return SiteCohort(site=site, task=task, class_names=classes, train_images=train_images, train_labels=train_labels,
                      train_groups=train_groups, holdout_images=holdout_images, holdout_labels=holdout_labels,
                      train_subjects=_counts(train, task, classes), holdout_subjects=_counts(holdout, task, classes),
                      fingerprint=digest.hexdigest())


def _check_grid(subjects: Sequence[PreparedSubject], config: StudyConfig) -> None:
    grid = tuple(config.data.grid)
    divisor = grid_divisor(config.autoencoder)
    if any(size % divisor for size in grid):
        raise CatphishError(f"data.grid {grid} must be divisible by {divisor} (autoencoder levels × super-resolution "
                            "factor)")
    for subject in subjects:
        shape = tuple(subject.image.shape)
        if len(shape) != 2 + config.data.spatial_dims or shape[1] != 5 or shape[2:] != grid:
            raise CatphishError(f"prepared subjects have images of shape {shape[1:]}, but preset '{config.preset}' "
                                f"needs (5, {', '.join(map(str, grid))}): prepare the data with the same preset")
    fills = []
    for subject in subjects:
        brain = np.abs(subject.image[:, :MASK_CHANNEL]).sum(axis=(0, 1)) > 0
        axes = range(brain.ndim)
        fills.append([np.count_nonzero(brain.any(axis=tuple(a for a in axes if a != axis))) / brain.shape[axis]
                      for axis in axes])
    median = np.median(np.asarray(fills), axis=0)
    for axis, fill in enumerate(median):
        if fill < MIN_GRID_FILL:
            raise CatphishError(f"the data cannot fill preset '{config.preset}' grid {grid}: the brain spans only "
                                f"{fill:.0%} of axis {axis} (median over subjects); use a smaller preset or a coarser "
                                "data.spacing_mm")


def _holdout_split(subjects: Sequence[PreparedSubject], task: str, classes: tuple[str, ...], config: StudyConfig,
                   seed: int) -> tuple[list[PreparedSubject], list[PreparedSubject]]:
    fraction = config.autoencoder.holdout_fraction
    if not 0 <= fraction < 1:
        raise CatphishError(f"autoencoder.holdout_fraction must be in [0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    by_class = {name: sorted((s for s in subjects if s.label(task) == name), key=lambda s: s.subject_id)
                for name in classes}
    held = {name: round(fraction * len(members)) for name, members in by_class.items()}
    if fraction > 0 and sum(held.values()) == 0:
        held[max(by_class, key=lambda n: len(by_class[n]))] = 1
    need = config.diffusion.min_subjects_per_class
    for name, members in by_class.items():
        if len(members) - held[name] < need:
            raise CatphishError(
                f"too few subjects at this site for the held-out split: class '{name}' has {len(members)} subject(s); "
                f"holding out {held[name]} for the reconstruction check leaves {len(members) - held[name]}, and "
                f"conditional training needs at least {need} per class (lower autoencoder.holdout_fraction or "
                "diffusion.min_subjects_per_class, or add subjects)")
    train: list[PreparedSubject] = []
    holdout: list[PreparedSubject] = []
    for name, members in by_class.items():
        order = rng.permutation(len(members))
        holdout += [members[i] for i in order[:held[name]]]
        train += [members[i] for i in order[held[name]:]]
    return train, holdout


def _stack(subjects: Sequence[PreparedSubject], task: str, index: dict[str, int]
           ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not subjects:
        return np.zeros((0,), np.float32), np.zeros((0,), np.int64), np.zeros((0,), np.int64)
    images = np.concatenate([np.asarray(s.image, dtype=np.float32) for s in subjects])
    labels = np.concatenate([np.full(len(s.image), index[s.label(task)], np.int64) for s in subjects])
    groups = np.concatenate([np.full(len(s.image), i, np.int64) for i, s in enumerate(subjects)])
    return images, labels, groups


def _counts(subjects: Sequence[PreparedSubject], task: str, classes: tuple[str, ...]) -> dict[str, int]:
    return {name: sum(s.label(task) == name for s in subjects) for name in classes}


# -------------------------------------------------------------------------------------------------- the result
@dataclass
class SiteModel:
    """A trained site model: autoencoder, EMA diffusion model, latent normalisation, and what the card reports."""

    autoencoder: SiteAutoencoder
    diffusion: ClassConditionedUNet
    latent_normalisation: LatentNormalisation
    class_names: tuple[str, ...]
    stages: dict[str, dict[str, Any]] = field(default_factory=dict)
    reconstruction: dict[str, Any] | None = None
    differential_privacy: dict[str, Any] | None = None


@dataclass
class _Context:
    work_dir: Path
    device: torch.device
    seed: int
    metrics: MetricsLog
    interrupt: GracefulInterrupt
    show_progress: bool = True


def autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bfloat16 mixed precision on CUDA; full precision on CPU."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def train_site_model(cohort: SiteCohort, config: StudyConfig, work_dir: str | Path, *, device: torch.device,
                     seed: int, perceptual_network: nn.Module | None = None, show_progress: bool = True) -> SiteModel:
    """Run (or resume) every stage in ``work_dir`` and return the trained site model."""
    work_dir = Path(work_dir)
    work_dir.mkdir(parents=True, exist_ok=True)
    context = _Context(work_dir=work_dir, device=device, seed=seed, metrics=MetricsLog(work_dir / "metrics.csv"),
                       interrupt=GracefulInterrupt(), show_progress=show_progress)
    torch.manual_seed(_stage_seed(seed, "autoencoder/init"))  # same initial weights in a fresh and a resumed run
    autoencoder = SiteAutoencoder(cohort.spatial_dims, config.autoencoder).to(device)
    stages: dict[str, dict[str, Any]] = {}
    with context.interrupt.installed():
        with _out_of_memory_guard("autoencoder", f"autoencoder.batch_size={config.autoencoder.batch_size}", config):
            stages["autoencoder"] = _train_autoencoder(autoencoder, cohort, config, context, perceptual_network)
        if autoencoder.super_resolution is not None:
            with _out_of_memory_guard("super-resolution head", f"autoencoder.batch_size={config.autoencoder.batch_size}",
                                      config):
                stages["super_resolution"] = _train_super_resolution(autoencoder, cohort, config, context)
        autoencoder.eval().requires_grad_(False)
        with _out_of_memory_guard("diffusion model", f"diffusion.batch_size={config.diffusion.batch_size}", config):
            diffusion, summary, normalisation, privacy = _train_diffusion(autoencoder, cohort, config, context)
        stages["diffusion"] = summary
    reconstruction = reconstruction_quality(autoencoder, cohort.holdout_images, device, config.autoencoder.batch_size)
    return SiteModel(autoencoder=autoencoder, diffusion=diffusion, latent_normalisation=normalisation,
                     class_names=cohort.class_names, stages=stages, reconstruction=reconstruction,
                     differential_privacy=privacy)


@contextlib.contextmanager
def _out_of_memory_guard(stage: str, batch_setting: str, config: StudyConfig) -> Iterator[None]:
    try:
        yield
    except torch.OutOfMemoryError:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        raise CatphishError(f"out of GPU memory while training the {stage} (preset '{config.preset}', {batch_setting}): "
                            "use a smaller batch (--set ...batch_size=N), a smaller preset, or --device cpu; "
                            "checkpoints so far are kept, rerun with --resume") from None


# ----------------------------------------------------------------------------------------------- stage runner
@dataclass
class _Stage:
    """What one stage saves: modules (all restored on resume), optimizers, and the modules kept once done."""

    name: str
    steps: int
    checkpoint_every: int
    modules: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
    final_modules: tuple[str, ...]
    extra: dict[str, Any] = field(default_factory=dict)


def _stage_seed(seed: int, name: str) -> int:
    return (seed * 1_000_003 + int(hashlib.sha256(name.encode()).hexdigest()[:8], 16)) % (2**63)


def _run_stage(stage: _Stage, step: Callable[[int], dict[str, float]], generator: torch.Generator,
               context: _Context) -> dict[str, Any]:
    """Resume or start ``stage``, run its remaining steps with checkpoints, return its summary for the card."""
    path = context.work_dir / f"{stage.name}.safetensors"
    checkpoint = load_checkpoint(path)
    if checkpoint is not None and checkpoint["done"]:
        for name in stage.final_modules:
            stage.modules[name].load_state_dict(checkpoint["models"][name])
        stage.extra.update(checkpoint["extra"])
        log.info("%s: already trained (%d steps), not retrained", stage.name, checkpoint["step"])
        return dict(checkpoint["extra"]["summary"])
    start, seconds = 0, 0.0
    if checkpoint is None:
        torch.manual_seed(_stage_seed(context.seed, stage.name + "/global"))
    else:
        for name, module in stage.modules.items():
            module.load_state_dict(checkpoint["models"][name])
        for name, optimizer in stage.optimizers.items():
            optimizer.load_state_dict(checkpoint["optimizers"][name])
        restore_rng(generator, checkpoint["rng"])
        start = int(checkpoint["step"])
        seconds = float(checkpoint["extra"].get("seconds", 0.0))
        stage.extra.update({k: v for k, v in checkpoint["extra"].items() if k != "seconds"})
        log.info("%s: resuming after step %d of %d", stage.name, start, stage.steps)
    context.metrics.truncate(stage.name, start)
    began = time.perf_counter()

    def save(at: int, done: bool) -> None:
        elapsed = seconds + time.perf_counter() - began
        context.metrics.write()
        extra = {**stage.extra, "seconds": elapsed}
        if done:
            losses = context.metrics.last(stage.name, max(1, min(50, stage.steps // 10)))
            extra["summary"] = {"steps": stage.steps, "seconds": round(elapsed, 3),
                                "seconds_per_step": round(elapsed / max(stage.steps, 1), 4),
                                "final_losses": {k: round(v, 6) for k, v in losses.items()},
                                **stage.extra.get("summary_extra", {})}
            models = {name: stage.modules[name].state_dict() for name in stage.final_modules}
            save_checkpoint(path, step=at, done=True, models=models, extra=extra)
            stage.extra.update(extra)
        else:
            save_checkpoint(path, step=at, done=False,
                            models={name: module.state_dict() for name, module in stage.modules.items()},
                            optimizers={name: opt.state_dict() for name, opt in stage.optimizers.items()},
                            rng=rng_state(generator), extra=extra)

    with progress_bar() as progress:
        task = progress.add_task(stage.name, total=stage.steps, completed=start, status="")
        if not context.show_progress:
            progress.update(task, visible=False)
        for index in range(start + 1, stage.steps + 1):
            losses = step(index)
            context.metrics.add(stage.name, index, losses)
            progress.update(task, advance=1, status=" ".join(f"{k} {v:.4f}" for k, v in list(losses.items())[:3]))
            if index == stage.steps:
                break
            if index % max(stage.checkpoint_every, 1) == 0 or context.interrupt.requested:
                save(index, done=False)
            if context.interrupt.requested:
                raise KeyboardInterrupt
    save(stage.steps, done=True)
    return dict(stage.extra["summary"])


def _batch_indices(count: int, batch_size: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randint(0, count, (min(batch_size, count),), generator=generator)


def _flip(x: torch.Tensor, generator: torch.Generator, enabled: bool) -> torch.Tensor:
    """Left-right flip (first spatial axis, RAS x) of a random half of the batch."""
    if not enabled:
        return x
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    return torch.where(flip.view(-1, *([1] * (x.dim() - 1))), x.flip(2), x)


# ------------------------------------------------------------------------------------------ stage 1: autoencoder
def _train_autoencoder(autoencoder: SiteAutoencoder, cohort: SiteCohort, config: StudyConfig, context: _Context,
                       perceptual_network: nn.Module | None) -> dict[str, Any]:
    settings = config.autoencoder
    device = context.device
    images = torch.from_numpy(cohort.train_images)
    generator = torch.Generator().manual_seed(_stage_seed(context.seed, "autoencoder"))
    torch.manual_seed(_stage_seed(context.seed, "discriminator/init"))
    discriminator = build_discriminator(cohort.spatial_dims, settings, cohort.grid).to(device)
    optimizer = torch.optim.Adam(autoencoder.kl.parameters(), lr=settings.lr)
    optimizer_d = torch.optim.Adam(discriminator.parameters(), lr=settings.lr)
    mask_loss = MaskLoss().to(device)
    adversarial = PatchAdversarialLoss(criterion="least_squares")
    perceptual = ResNetPerceptualLoss(perceptual_network).to(device) if perceptual_network is not None else None

    def step(index: int) -> dict[str, float]:
        autoencoder.train()
        x = _flip(images[_batch_indices(len(images), settings.batch_size, generator)], generator,
                  settings.flip_augmentation).to(device)
        with autocast(device):
            output, z_mu, z_sigma = autoencoder(x)
        output, target = output.float(), autoencoder.downsample(x)
        losses = {"l1": image_l1(output, target), "mask": mask_loss(output, target), "kl": kl_loss(z_mu.float(),
                                                                                                     z_sigma.float())}
        loss = losses["l1"] + settings.mask_weight * losses["mask"] + settings.kl_weight * losses["kl"]
        if perceptual is not None:
            losses["perceptual"] = perceptual(output, target)
            loss = loss + settings.perceptual_weight * losses["perceptual"]
        adversarial_on = settings.adversarial_weight > 0 and index > settings.adversarial_warmup_steps
        if adversarial_on:
            with autocast(device):
                fake_logits = discriminator(to_image_space(output))[-1]
            losses["generator"] = adversarial(fake_logits.float(), target_is_real=True, for_discriminator=False)
            loss = loss + settings.adversarial_weight * losses["generator"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if adversarial_on:
            with autocast(device):
                fake = discriminator(to_image_space(output).detach())[-1].float()
                real = discriminator(target)[-1].float()
            loss_d = 0.5 * (adversarial(fake, target_is_real=False, for_discriminator=True)
                            + adversarial(real, target_is_real=True, for_discriminator=True))
            optimizer_d.zero_grad(set_to_none=True)
            loss_d.backward()
            optimizer_d.step()
            losses["discriminator"] = loss_d
        return {"loss": loss.item(), **{k: v.item() for k, v in losses.items()}}

    stage = _Stage("autoencoder", settings.steps, settings.checkpoint_every,
                   modules={"autoencoder": autoencoder, "discriminator": discriminator},
                   optimizers={"autoencoder": optimizer, "discriminator": optimizer_d}, final_modules=("autoencoder",))
    return _run_stage(stage, step, generator, context)


# ------------------------------------------------------------------------------------- stage 2: super-resolution
def _train_super_resolution(autoencoder: SiteAutoencoder, cohort: SiteCohort, config: StudyConfig,
                            context: _Context) -> dict[str, Any]:
    settings = config.autoencoder
    device = context.device
    head = autoencoder.super_resolution
    assert head is not None
    autoencoder.kl.eval().requires_grad_(False)
    images = torch.from_numpy(cohort.train_images)
    generator = torch.Generator().manual_seed(_stage_seed(context.seed, "super_resolution"))
    optimizer = torch.optim.Adam(head.parameters(), lr=settings.lr)
    sr_loss = SuperResolutionLoss(cohort.spatial_dims, settings.ssim_weight).to(device)
    mask_loss = MaskLoss().to(device)

    def step(index: int) -> dict[str, float]:
        head.train()
        x = _flip(images[_batch_indices(len(images), settings.batch_size, generator)], generator,
                  settings.flip_augmentation).to(device)
        with torch.no_grad(), autocast(device):
            z_mu, _ = autoencoder.encode(x)
            low = autoencoder.kl.decode(z_mu)
        with autocast(device):
            output = head(low.float())
        output = output.float()
        image_loss = sr_loss(output, x)
        masks = mask_loss(output, x)
        loss = image_loss + settings.mask_weight * masks
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return {"loss": loss.item(), "l1_ssim": image_loss.item(), "mask": masks.item()}

    stage = _Stage("super_resolution", settings.super_resolution_steps, settings.checkpoint_every,
                   modules={"super_resolution": head}, optimizers={"super_resolution": optimizer},
                   final_modules=("super_resolution",))
    return _run_stage(stage, step, generator, context)


# --------------------------------------------------------------------------------------------- stage 3: diffusion
@torch.no_grad()
def encode_latents(autoencoder: SiteAutoencoder, images: np.ndarray, device: torch.device, batch_size: int,
                   flip: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Posterior mean and standard deviation of every image's latent (on CPU)."""
    autoencoder.eval()
    means, sigmas = [], []
    for start in range(0, len(images), max(batch_size, 1)):
        x = torch.from_numpy(images[start:start + batch_size]).to(device)
        if flip:
            x = x.flip(2)
        with autocast(device):
            mu, sigma = autoencoder.encode(x)
        means.append(mu.float().cpu())
        sigmas.append(sigma.float().cpu())
    return torch.cat(means), torch.cat(sigmas)


def _train_diffusion(autoencoder: SiteAutoencoder, cohort: SiteCohort, config: StudyConfig, context: _Context
                     ) -> tuple[ClassConditionedUNet, dict[str, Any], LatentNormalisation, dict[str, Any] | None]:
    settings = config.diffusion
    device = context.device
    generator = torch.Generator().manual_seed(_stage_seed(context.seed, "diffusion"))
    # The diffusion model learns the posterior means: with the small KL weight of a short site run the posterior
    # spread is still wide, and sampled latents would teach it the encoder's noise instead of the anatomy.
    mu, _ = encode_latents(autoencoder, cohort.train_images, device, config.autoencoder.batch_size)
    versions = [mu]
    if config.autoencoder.flip_augmentation:
        versions.append(encode_latents(autoencoder, cohort.train_images, device, config.autoencoder.batch_size,
                                       flip=True)[0])
    latents = torch.stack(versions, 1)
    # per-channel shift and scale (the LDM scale factor per channel): the diffusion model sees zero mean, unit variance.
    # A function of the frozen autoencoder's latents, so a resumed run computes the same values.
    normalisation = LatentNormalisation.fit(mu)
    labels = torch.from_numpy(cohort.train_labels)
    groups = torch.from_numpy(cohort.train_groups)

    torch.manual_seed(_stage_seed(context.seed, "diffusion/init"))
    model = ClassConditionedUNet(cohort.spatial_dims, config.autoencoder.latent_channels, len(cohort.class_names),
                                 settings).to(device)
    ema = AveragedModel(model, multi_avg_fn=ema_with_warmup(settings.ema_decay), use_buffers=True)
    optimizer: torch.optim.Optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr)
    scheduler = training_scheduler(settings)
    mutual_information = MutualInformation().to(device) if settings.mutual_information else None
    trained: nn.Module = model
    privacy: dict[str, Any] | None = None
    subjects = int(groups.max()) + 1
    batch_size = min(settings.batch_size, len(labels))
    if settings.differential_privacy:
        trained, optimizer, privacy = _make_private(model, optimizer, settings, subjects, generator, device)

    def sample_batch() -> tuple[torch.Tensor, torch.Tensor]:
        if settings.differential_privacy:
            # Poisson sampling of subjects, one random image each: the per-example unit is the subject
            chosen = torch.nonzero(torch.rand(subjects, generator=generator) < privacy["sample_rate"]).flatten()
            picks = torch.rand(len(chosen), generator=generator)
            index = torch.stack([torch.nonzero(groups == g).flatten()[int(p * int((groups == g).sum()))]
                                 for g, p in zip(chosen.tolist(), picks.tolist(), strict=True)]) if len(chosen) else \
                torch.zeros(0, dtype=torch.long)
        else:
            index = _batch_indices(len(labels), batch_size, generator)
        version = torch.randint(0, latents.shape[1], (len(index),), generator=generator)
        return normalisation.normalise(latents[index, version]), labels[index].clone()

    def step(index: int) -> dict[str, float]:
        trained.train()
        z0, y = sample_batch()
        if len(y) == 0:  # an empty Poisson batch: no update (the accountant still counts the step)
            return {"loss": float("nan")}
        y[torch.rand(len(y), generator=generator) < settings.condition_dropout] = model.null_label
        noise = torch.randn(z0.shape, generator=generator)
        timesteps = torch.randint(0, settings.train_timesteps, (len(y),), generator=generator)
        z0, y, noise, timesteps = z0.to(device), y.to(device), noise.to(device), timesteps.to(device)
        noisy = scheduler.add_noise(original_samples=z0, noise=noise, timesteps=timesteps)
        with autocast(device):
            prediction = trained(noisy, timesteps, y)
        prediction = prediction.float()
        x0 = predicted_original(scheduler, noisy, prediction, timesteps) if mutual_information is not None else None
        loss, parts = diffusion_loss(prediction, noise, x0, z0, mutual_information, settings.mutual_information_weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        ema.update_parameters(model)
        return {"loss": loss.item(), **parts}

    stage = _Stage("diffusion", settings.steps, settings.checkpoint_every,
                   modules={"diffusion": model, "ema": ema}, optimizers={"diffusion": optimizer},
                   final_modules=("ema",),
                   extra={"summary_extra": {"latent_normalisation": normalisation.as_dict(), "batch_size": batch_size}})
    summary = _run_stage(stage, step, generator, context)
    if privacy is not None:
        privacy = _privacy_report(privacy, settings.steps)
        summary["differential_privacy"] = privacy
    final = copy.deepcopy(ema.module).eval().requires_grad_(False)
    return final, summary, normalisation, privacy


def ema_with_warmup(decay: float) -> Callable[[list[torch.Tensor], list[torch.Tensor], torch.Tensor], None]:
    """EMA update whose decay ramps up as ``min(decay, (1 + n) / (10 + n))`` over the first updates.

    A short site run (a few hundred steps) would otherwise average in its early, poor weights for too long.
    """

    @torch.no_grad()
    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], count: torch.Tensor) -> None:
        n = int(count)
        weight = 1.0 - min(decay, (1.0 + n) / (10.0 + n))
        if torch.is_floating_point(averaged[0]):
            torch._foreach_lerp_(averaged, current, weight)
        else:
            for a, c in zip(averaged, current, strict=True):
                a.copy_(c)

    return update


def _make_private(model: nn.Module, optimizer: torch.optim.Optimizer, settings: Any, subjects: int,
                  generator: torch.Generator, device: torch.device
                  ) -> tuple[nn.Module, torch.optim.Optimizer, dict[str, Any]]:
    """Opacus per-example gradients (hooks work for MONAI's conv/GroupNorm/linear/attention layers) + DP optimizer."""
    from opacus import GradSampleModule
    from opacus.optimizers import DPOptimizer
    from opacus.validators import ModuleValidator

    problems = ModuleValidator.validate(model, strict=False)
    if problems:
        raise CatphishError(f"the diffusion model has layers DP-SGD cannot handle: {problems[0]}")
    batch_size = min(settings.batch_size, subjects)
    sample_rate = batch_size / subjects
    private = GradSampleModule(model, loss_reduction="mean")
    dp_optimizer = DPOptimizer(optimizer, noise_multiplier=settings.dp_noise_multiplier,
                               max_grad_norm=settings.dp_max_grad_norm, expected_batch_size=batch_size,
                               loss_reduction="mean", generator=generator if device.type == "cpu" else None)
    return private, dp_optimizer, {"sample_rate": sample_rate, "expected_batch_size": batch_size,
                                   "noise_multiplier": settings.dp_noise_multiplier,
                                   "max_grad_norm": settings.dp_max_grad_norm, "delta": settings.dp_delta,
                                   "subjects": subjects}


def _privacy_report(privacy: dict[str, Any], steps: int) -> dict[str, Any]:
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = [(privacy["noise_multiplier"], privacy["sample_rate"], steps)]
    epsilon = accountant.get_epsilon(privacy["delta"]) if steps else 0.0
    return {"stage": "diffusion", "unit": "subject", "accountant": "rdp", "epsilon": round(float(epsilon), 4),
            "delta": privacy["delta"], "noise_multiplier": privacy["noise_multiplier"],
            "max_grad_norm": privacy["max_grad_norm"], "sample_rate": round(privacy["sample_rate"], 6), "steps": steps,
            "note": "DP-SGD covers the diffusion model only; the autoencoder (decoder) is trained without DP"}


# ------------------------------------------------------------------------------------ reconstruction quality
@torch.no_grad()
def reconstruction_quality(autoencoder: SiteAutoencoder, images: np.ndarray, device: torch.device,
                           batch_size: int) -> dict[str, Any] | None:
    """PSNR and SSIM per sequence and mask Dice of the autoencoder on held-out images (posterior-mean latents)."""
    if len(images) == 0:
        return None
    autoencoder.eval()
    outputs = []
    for start in range(0, len(images), max(batch_size, 1)):
        x = torch.from_numpy(images[start:start + batch_size]).to(device)
        with autocast(device):
            mu, _ = autoencoder.encode(x)
            outputs.append(to_image_space(autoencoder.decode(mu).float()).cpu())
    output = torch.cat(outputs)
    real = torch.from_numpy(images)
    spatial_dims = real.dim() - 2
    psnr, ssim = {}, {}
    for channel, name in enumerate(SEQUENCES):
        a, b = output[:, channel:channel + 1], real[:, channel:channel + 1]
        data_range = float(b.max() - b.min()) or 1.0
        psnr[name] = round(float(PSNRMetric(max_val=data_range)(a, b).mean()), 3)
        win = min(7, (min(real.shape[2:]) - 1) // 2 * 2 + 1)  # odd, and no larger than the image
        ssim[name] = round(float(SSIMMetric(spatial_dims=spatial_dims, data_range=data_range, win_size=win)(a, b).mean()),
                           4)
    predicted = (output[:, MASK_CHANNEL:] > 0.5).float()
    dice = DiceMetric(include_background=True, reduction="mean", ignore_empty=False)(predicted, real[:, MASK_CHANNEL:])
    return {"images": len(images), "psnr_db": psnr, "ssim": ssim,
            "mask_dice": round(float(torch.nan_to_num(dice, nan=0.0).mean()), 4),
            "note": "held-out subjects of this site, never seen in training; PSNR data range = real range per sequence"}

