"""The site package: what a site hands to the hub, once (DESIGN §1 step 2, §5).

A folder with ``model.safetensors`` (autoencoder + EMA diffusion weights), ``config.json``, ``card.json`` (site,
task, classes and counts, training settings and losses, held-out reconstruction quality, privacy settings,
versions), ``preview.png`` (generated cases per class), ``metrics.csv``, ``run.json`` and ``manifest.json`` (sha256 of
every file, format version). No images, subject ids or patient file names go in.

Training writes into ``<PKG>.partial/`` (checkpoints, prepared data, metrics); the finished package is built in a
staging folder, verified, and renamed to ``<PKG>`` — so ``<PKG>`` is either absent or complete.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from catphish.artifacts import (
    MANIFEST_NAME,
    RunRecord,
    atomic_output_path,
    discard_on_error,
    load_tensors,
    open_output_dir,
    package_versions,
    read_json,
    run_record,
    save_tensors,
    sha256_file,
    verify_folder,
    write_json,
    write_manifest,
)
from catphish.config import CHANNEL_NAMES, StudyConfig, config_from_dict
from catphish.data.prepared import PreparedSubject, load_prepared, load_prepared_dir
from catphish.errors import ArtifactError, CatphishError, ConfigError
from catphish.models.autoencoder import MASK_CHANNEL, LatentNormalisation, SiteAutoencoder, latent_shape
from catphish.models.diffusion import ClassConditionedUNet
from catphish.models.losses import perceptual_network_from_weights
from catphish.reporting.benchmarks import peak_gpu_mb, peak_rss_mb
from catphish.runtime import log
from catphish.training.ldm import SiteCohort, SiteModel, select_site_cohort, train_site_model

PACKAGE_KIND = "site-package"
PACKAGE_FORMAT_VERSION = 2
"""2: per-channel latent normalisation (shift, scale, sampling clip) instead of one scale factor."""
LATENT_NORMALISATION = "latent_normalisation"
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
CARD_FILE = "card.json"
PREVIEW_FILE = "preview.png"
METRICS_FILE = "metrics.csv"
PACKAGE_FILES = (MODEL_FILE, CONFIG_FILE, CARD_FILE, PREVIEW_FILE)


@dataclass
class SitePackage:
    """A loaded (verified) site package, ready to sample from."""

    card: dict[str, Any]
    config: StudyConfig
    class_names: tuple[str, ...]
    autoencoder: SiteAutoencoder
    diffusion: ClassConditionedUNet
    latent_normalisation: LatentNormalisation
    path: Path | None = None

    @property
    def site(self) -> str:
        return str(self.card["site"])

    @property
    def task(self) -> str:
        return str(self.card["task"])

    @property
    def spatial_dims(self) -> int:
        return self.config.data.spatial_dims

    @property
    def grid(self) -> tuple[int, ...]:
        return tuple(self.config.data.grid)


# --------------------------------------------------------------------------------------------------- loading
def load_site_package(path: str | Path, device: str | torch.device | None = None) -> SitePackage:
    """Verify a site package (manifest hashes, format versions, no pickles) and rebuild its models on ``device``."""
    folder = Path(path)
    try:
        verify_folder(folder, kind=PACKAGE_KIND)
    except ArtifactError as exc:
        raise ArtifactError(f"not a valid site package: {exc}") from None
    for name in PACKAGE_FILES:
        if not (folder / name).is_file():
            raise ArtifactError(f"{folder.name}/{name}: missing from the site package")
    card = read_json(folder / CARD_FILE)
    if not isinstance(card, dict) or card.get("kind") != PACKAGE_KIND:
        raise ArtifactError(f"{folder.name}/{CARD_FILE}: not a site-package card")
    version = card.get("format_version")
    if version != PACKAGE_FORMAT_VERSION:
        raise ArtifactError(f"{folder.name}/{CARD_FILE}: package format version {version!r} is not supported by this "
                            f"catphish (supports {PACKAGE_FORMAT_VERSION})")
    try:
        config = config_from_dict(read_json(folder / CONFIG_FILE))
    except ConfigError as exc:
        raise ArtifactError(f"{folder.name}/{CONFIG_FILE}: {exc}") from None
    tensors = load_tensors(folder / MODEL_FILE)
    class_names = tuple(c["name"] for c in card.get("classes", []))
    return _assemble(card, config, class_names, tensors, folder, device)


def verify_site_package(path: str | Path) -> SitePackage:
    """Everything :func:`load_site_package` checks, on CPU; raises :class:`ArtifactError` with the reason."""
    return load_site_package(path, device="cpu")


def _assemble(card: dict[str, Any], config: StudyConfig, class_names: tuple[str, ...], tensors: dict[str, torch.Tensor],
              folder: Path | None, device: str | torch.device | None) -> SitePackage:
    name = folder.name if folder else "package"
    if len(class_names) < 2:
        raise ArtifactError(f"{name}/{CARD_FILE}: lists {len(class_names)} class(es); a site package needs at least two")
    autoencoder = SiteAutoencoder(config.data.spatial_dims, config.autoencoder)
    diffusion = ClassConditionedUNet(config.data.spatial_dims, config.autoencoder.latent_channels, len(class_names),
                                     config.diffusion)
    for prefix, module in (("autoencoder.", autoencoder), ("diffusion.", diffusion)):
        state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
        try:
            module.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0] if str(exc) else "shape mismatch"
            raise ArtifactError(f"{name}/{MODEL_FILE}: weights do not match {CONFIG_FILE} ({first})") from None
    stored = tensors.get(LATENT_NORMALISATION)
    channels = config.autoencoder.latent_channels
    if stored is None or tuple(stored.shape) != (3, channels):
        raise ArtifactError(f"{name}/{MODEL_FILE}: no latent normalisation of shape (3, {channels})")
    normalisation = LatentNormalisation.from_tensor(stored)
    if not torch.isfinite(stored).all() or min(normalisation.scale) <= 0 or normalisation.clip <= 0:
        raise ArtifactError(f"{name}/{MODEL_FILE}: invalid latent normalisation {normalisation.as_dict()}")
    if any(not torch.isfinite(t).all() for t in tensors.values() if t.is_floating_point()):
        raise ArtifactError(f"{name}/{MODEL_FILE}: weights contain NaN or Inf")
    target = torch.device(device) if device is not None else torch.device("cpu")
    return SitePackage(card=card, config=config, class_names=class_names,
                       autoencoder=autoencoder.to(target).eval().requires_grad_(False),
                       diffusion=diffusion.to(target).eval().requires_grad_(False),
                       latent_normalisation=normalisation, path=folder)


def package_from_model(model: SiteModel, config: StudyConfig, card: dict[str, Any]) -> SitePackage:
    """An in-memory package for a freshly trained model (used for the preview before export)."""
    return SitePackage(card=card, config=config, class_names=model.class_names, autoencoder=model.autoencoder,
                       diffusion=model.diffusion, latent_normalisation=model.latent_normalisation)


# --------------------------------------------------------------------------------------------------- writing
def model_tensors(model: SiteModel) -> dict[str, torch.Tensor]:
    """The flat tensor mapping stored in ``model.safetensors``."""
    tensors = {f"autoencoder.{k}": v for k, v in model.autoencoder.state_dict().items()}
    tensors.update({f"diffusion.{k}": v for k, v in model.diffusion.state_dict().items()})
    tensors[LATENT_NORMALISATION] = model.latent_normalisation.to_tensor()
    return tensors


def _training_summary(model: Any) -> dict[str, Any]:
    """Steps, time and final losses per stage; under DP-SGD the diffusion stage's losses are left out, since they are
    computed on the private data outside the ε guarantee (as metrics.csv is)."""
    if model.differential_privacy is None:
        return model.stages
    return {name: ({k: v for k, v in stage.items() if k != "final_losses"} if name == "diffusion" else stage)
            for name, stage in model.stages.items()}


def build_card(model: SiteModel, cohort: SiteCohort, config: StudyConfig, *, seed: int, wall_seconds: float,
               perceptual: dict[str, Any], resources: dict[str, Any] | None = None) -> dict[str, Any]:
    """The package card: aggregate numbers only (class counts, losses, quality), never subject-level data."""
    classes = [{"name": name, "index": i, "training_subjects": cohort.train_subjects[name],
                "holdout_subjects": cohort.holdout_subjects[name],
                "training_images": int(np.sum(cohort.train_labels == i))} for i, name in enumerate(cohort.class_names)]
    diffusion = config.diffusion
    return {
        "kind": PACKAGE_KIND,
        "format_version": PACKAGE_FORMAT_VERSION,
        "site": cohort.site,
        "task": cohort.task,
        "classes": classes,
        "preset": config.preset,
        "spatial_dims": config.data.spatial_dims,
        "grid": list(config.data.grid),
        "channels": list(CHANNEL_NAMES),
        "latent_shape": list(latent_shape(config.autoencoder, tuple(config.data.grid))),
        "latent_normalisation": model.latent_normalisation.as_dict(),
        "training": _training_summary(model),
        "conditioning": {"type": "cross-attention on a learned class embedding", "null_token": len(cohort.class_names),
                         "condition_dropout": diffusion.condition_dropout, "classifier_free_guidance": True},
        "schedule": {"train_timesteps": diffusion.train_timesteps, "schedule": diffusion.schedule,
                     "beta_start": diffusion.beta_start, "beta_end": diffusion.beta_end, "ema_decay": diffusion.ema_decay},
        "reconstruction_quality": model.reconstruction,
        "perceptual_loss": perceptual,
        "mutual_information": ({"enabled": True, "weight": diffusion.mutual_information_weight,
                                "loss": "(1-w)·smoothL1(eps) + w·MI(x0_pred, x0), Gaussian Parzen MI on latents"}
                               if diffusion.mutual_information else {"enabled": False}),
        "differential_privacy": model.differential_privacy,
        "seed": seed,
        "wall_seconds": round(wall_seconds, 2),
        "resources": resources or {},
        "versions": package_versions(),
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def write_package_files(folder: Path, model: SiteModel, config: StudyConfig, card: dict[str, Any],
                        metrics_path: Path | None, preview_seed: int) -> None:
    """Model, config, card, metrics and preview into ``folder`` (the manifest comes last, separately)."""
    save_tensors(folder / MODEL_FILE, model_tensors(model),
                 metadata={"kind": PACKAGE_KIND, "format_version": str(PACKAGE_FORMAT_VERSION)})
    write_json(folder / CONFIG_FILE, config.to_dict())
    write_json(folder / CARD_FILE, card)
    if metrics_path is not None and metrics_path.exists() and model.differential_privacy is None:
        shutil.copyfile(metrics_path, folder / METRICS_FILE)  # per-step losses; left out under DP (not covered by ε)
    write_preview(folder / PREVIEW_FILE, package_from_model(model, config, card), seed=preview_seed)


def write_preview(path: Path, package: SitePackage, seed: int = 0, per_class: int | None = None) -> Path:
    """A montage of generated cases: one row per case, columns T1, T1C, T2, FLAIR (mask outline on FLAIR)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from catphish.synthesis.sampling import finish_cases, generate

    synthesis = package.config.synthesis
    per_class = per_class or synthesis.preview_per_class
    labels = [i for i in range(len(package.class_names)) for _ in range(per_class)]
    decoded = generate(package, labels, sampler=synthesis.sampler, steps=synthesis.steps, guidance=synthesis.guidance,
                       seed=seed, batch_size=max(len(labels), 1), show_progress=False, description="preview")
    cases = finish_cases(decoded, synthesis.mask_threshold, synthesis.min_mask_voxels, synthesis.background_threshold)
    figure, axes = plt.subplots(len(cases), 4, figsize=(6.4, 1.7 * len(cases)), squeeze=False)
    for row, (case, label) in enumerate(zip(cases, labels, strict=True)):
        image = _display_slice(case)
        for column in range(4):
            axis = axes[row, column]
            axis.imshow(image[column].T, cmap="gray", origin="lower")
            if column == 3 and image[MASK_CHANNEL].any():
                axis.contour(image[MASK_CHANNEL].T, levels=[0.5], colors="red", linewidths=0.6, origin="lower")
            axis.set_xticks([])
            axis.set_yticks([])
            if row == 0:
                axis.set_title(CHANNEL_NAMES[column].upper(), fontsize=8)
        axes[row, 0].set_ylabel(package.class_names[label], fontsize=7)
    figure.suptitle(f"site {package.site}: generated cases ({synthesis.sampler}, {synthesis.steps} steps, "
                    f"guidance {synthesis.guidance})", fontsize=8)
    figure.tight_layout()
    with atomic_output_path(path) as tmp:
        figure.savefig(tmp, dpi=80, format="png")
    plt.close(figure)
    return path


def _display_slice(case: np.ndarray) -> np.ndarray:
    """2D cases as they are; 3D cases: the axial slice with the largest tumour area."""
    if case.ndim == 3:
        return case
    depth = int(np.argmax(case[MASK_CHANNEL].sum(axis=(0, 1)))) if case[MASK_CHANNEL].any() else case.shape[-1] // 2
    return case[..., depth]


# -------------------------------------------------------------------------------------------- train and export
@dataclass
class TrainRequest:
    """Everything `catphish site train` was asked to do."""

    data_dir: Path
    site: str
    task: str
    config: StudyConfig
    out: Path
    resume: bool = False
    overwrite: bool = False
    cache_dir: Path | None = None
    device: torch.device | None = None
    seed: int = 0
    show_progress: bool = True


def partial_dir(out: Path) -> Path:
    """Where an unfinished package's training state lives (removed once the package is complete)."""
    return out.with_name(out.name + ".partial")


def train_site_package(request: TrainRequest) -> Path:
    """Prepare the site's data, train (or resume) its model, and export the verified package to ``request.out``."""
    started = time.perf_counter()
    out = request.out
    work = partial_dir(out)
    if _is_finished_package(out) and not request.overwrite:
        if request.resume:
            log.info("%s is already a finished site package; nothing to resume", out)
            if work.exists():
                shutil.rmtree(work, ignore_errors=True)
            return out
        raise CatphishError(f"{out}: package folder already exists (use --overwrite to replace it)")
    if out.exists() and not out.is_dir():
        raise CatphishError(f"{out}: exists and is not a folder")
    if out.exists() and any(out.iterdir()) and not request.overwrite:
        raise CatphishError(f"{out}: folder already exists and is not a site package (use --overwrite to replace it, "
                            "or choose another --out)")
    config = request.config
    fingerprint = {"site": request.site, "task": request.task, "config": config.to_dict(), "seed": request.seed}
    resumed = open_output_dir(work, fingerprint, resume=request.resume, overwrite=request.overwrite,
                              what="unfinished site package")
    with discard_on_error(work, created=not resumed):  # bad input leaves no unfinished package behind
        subjects = _prepared_subjects(request, work)
        cohort = select_site_cohort(subjects, request.site, request.task, config, request.seed)
        _check_same_data(work, cohort, resumed)
        perceptual_network, perceptual = _perceptual(config)
    device = request.device or torch.device("cpu")
    inputs = [p for p in (request.data_dir / "labels.csv",) if p.exists()]
    with run_record(work, "site train", config.to_dict(), request.seed, inputs=inputs) as record:
        record.add(site=request.site, task=request.task, data_fingerprint=cohort.fingerprint, device=str(device))
        training_started = time.perf_counter()
        model = train_site_model(cohort, config, work / "training", device=device, seed=request.seed,
                                 perceptual_network=perceptual_network, show_progress=request.show_progress)
        this_run_training = time.perf_counter() - training_started
        # stage seconds add up every (resumed) run's training; the rest is this run's preparation and evaluation
        wall = sum(s.get("seconds", 0.0) for s in model.stages.values()) + time.perf_counter() - started - this_run_training
        card = build_card(model, cohort, config, seed=request.seed, wall_seconds=wall, perceptual=perceptual,
                          resources={"device": str(device), "peak_rss_mb": round(peak_rss_mb()),
                                     "peak_gpu_mb": _rounded(peak_gpu_mb())})
        staging = work / "package"
        if staging.exists():
            shutil.rmtree(staging)
        staging.mkdir()
        write_package_files(staging, model, config, card, work / "training" / "metrics.csv", preview_seed=request.seed)
        record.add(card={k: card[k] for k in ("site", "task", "classes", "training", "reconstruction_quality")})
    _publish(work, staging, out, record)
    log.info("site package written to %s", out)
    return out


def _publish(work: Path, staging: Path, out: Path, record: RunRecord) -> None:
    """run.json + manifest into the staging folder, verify it, then swap it in as ``out`` and drop the work folder."""
    shutil.copyfile(work / "run.json", staging / "run.json")
    write_manifest(staging, kind=PACKAGE_KIND)
    verify_site_package(staging)
    if out.exists():
        shutil.rmtree(out)
    os.replace(staging, out)
    shutil.rmtree(work, ignore_errors=True)


def _is_finished_package(out: Path) -> bool:
    return out.is_dir() and (out / MANIFEST_NAME).is_file()


def _prepared_subjects(request: TrainRequest, work: Path) -> list[PreparedSubject]:
    """The site's prepared subjects: from a prepared cache folder as given, or prepared now from a raw dataset."""
    data_dir = request.data_dir
    if not data_dir.exists():
        raise CatphishError(f"{data_dir}: path does not exist")
    if not (data_dir / "labels.csv").exists() and any(data_dir.glob("*/*.safetensors")):
        subjects = load_prepared_dir(data_dir)
        if request.site not in {s.site for s in subjects}:
            sites = sorted({s.site for s in subjects})
            raise CatphishError(f"site '{request.site}' is not in the data (sites: {', '.join(sites) or 'none'})")
        return [s for s in subjects if s.site == request.site]
    from catphish.data.preprocess import prepare_dataset

    cache = request.cache_dir or work / "prepared"
    paths = prepare_dataset(data_dir, request.config, cache, sites=[request.site])
    return [load_prepared(p) for p in paths]


def _check_same_data(work: Path, cohort: SiteCohort, resumed: bool) -> None:
    marker = work / ".data.json"
    if resumed and marker.exists() and read_json(marker).get("fingerprint") != cohort.fingerprint:
        raise CatphishError(f"{work}: the site's data changed since the interrupted run; use --overwrite to start again")
    write_json(marker, {"fingerprint": cohort.fingerprint})


def _perceptual(config: StudyConfig) -> tuple[torch.nn.Module | None, dict[str, Any]]:
    """The user's perceptual network (MONAI ResNet weights as safetensors), or the reason the loss is off."""
    weights = config.autoencoder.perceptual_weights
    if not weights:
        return None, {"enabled": False,
                      "reason": "no perceptual network weights given (autoencoder.perceptual_weights); none ships "
                                "offline, so the autoencoder was trained without a perceptual loss"}
    path = Path(weights)
    try:
        network = perceptual_network_from_weights(load_tensors(path), config.data.spatial_dims)
    except ValueError as exc:
        raise CatphishError(f"{path.name}: cannot use as perceptual network weights ({exc})") from None
    return network, {"enabled": True, "weight": config.autoencoder.perceptual_weight,
                     "network": f"MONAI ResNet ({network.conv1.in_channels}-channel input)",
                     "weights_sha256": sha256_file(path)}


def _rounded(value: float | None) -> int | None:
    return None if value is None else round(value)
