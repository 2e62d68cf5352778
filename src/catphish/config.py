"""Typed configuration of a catphish study, its presets, and loading/overriding from files and the CLI.

One place for defaults: every stage reads its section of :class:`StudyConfig`. Presets (DESIGN §4) differ only
in numbers, never in code path; ``spatial_dims`` selects 2D or 3D everywhere.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from catphish.errors import ConfigError

SEQUENCES: tuple[str, ...] = ("t1", "t1c", "t2", "flair")
"""Image channels in model order; the whole-tumour mask is the fifth channel."""
CHANNEL_NAMES: tuple[str, ...] = (*SEQUENCES, "mask")
TASK_CLASSES: dict[str, tuple[str, ...]] = {
    "idh": ("mutant", "wildtype"),
    "tumor_type": ("oligodendroglioma", "astrocytoma", "glioblastoma"),
}
PRESETS: tuple[str, ...] = ("demo", "small3d", "paper")
DEMO_PER_CLASS: int = 150
"""`catphish demo`: cases per class per site at the hub. The diversity filter keeps about a quarter, and the
synthetic-only classifier did better on 150 than on 60 (IDH AUC 0.76 vs 0.70 on the demo's external test sites, one
draw of each; another draw of 150 reached 0.83, so the draw alone moves it by several points)."""
DEMO_ROUNDS: int = 20
"""`catphish demo`: FedAvg rounds (of ``federated.local_epochs`` = 2 in the demo preset)."""


@dataclass
class DataConfig:
    spatial_dims: int = 2
    grid: tuple[int, ...] = (64, 64)
    """Model grid in voxels: (H, W) for 2D presets, (X, Y, Z) for 3D presets."""
    spacing_mm: tuple[float, ...] = (3.0, 3.0, 3.0)
    """Voxel size the volume is resampled to before padding/cropping to ``grid``."""
    slices_per_subject: int = 3
    """2D presets: the largest-tumour-area axial slice and its neighbours (odd number)."""
    slice_stride: int = 2
    """2D presets: voxels between neighbouring slices taken from one subject."""
    naming: str = "auto"
    workers: int = 2
    affine_tolerance_mm: float = 1.0
    """Largest allowed difference of voxel-to-world positions between a subject's sequences."""
    resample_to: str | None = None
    """Opt-in for raw (not co-registered) data: resample every sequence and the mask into this sequence's voxel grid
    by world coordinates (``t1``, ``t1c``, ``t2`` or ``flair``) instead of requiring one shared grid."""


@dataclass
class AutoencoderConfig:
    channels: tuple[int, ...] = (16, 32, 32)
    latent_channels: int = 4
    num_res_blocks: int = 1
    attention_levels: tuple[bool, ...] = (False, False, False)
    norm_num_groups: int = 8
    batch_size: int = 16
    steps: int = 300
    lr: float = 2e-3
    """Demo: a high rate so the small autoencoder converges in a few hundred steps (`catphish site train` on the demo's
    TCGA, card's held-out T1 SSIM: 0.47 at 300 steps with 2e-3, 0.36 at 400 steps with 2e-4); the 3D presets use 2e-4."""
    kl_weight: float = 1e-6
    mask_weight: float = 1.0
    adversarial_weight: float = 0.01
    adversarial_warmup_steps: int = 200
    discriminator_channels: int = 16
    perceptual_weights: str | None = None
    """Path to user-supplied perceptual-network weights; perceptual loss is off without them."""
    perceptual_weight: float = 0.001
    super_resolution: bool = False
    super_resolution_steps: int = 0
    holdout_fraction: float = 0.2
    checkpoint_every: int = 100
    discriminator_layers: int = 3
    """Strided layers of the PatchDiscriminator (fewer for tiny grids)."""
    super_resolution_factor: int = 2
    """With ``super_resolution``: the autoencoder works at grid / factor and the SR head restores the full grid."""
    super_resolution_channels: int = 16
    ssim_weight: float = 0.5
    """Weight of (1 - SSIM) beside L1 in the super-resolution phase."""
    flip_augmentation: bool = True
    """Left-right flips of training images (autoencoder) and of the latents the diffusion model learns from."""


@dataclass
class DiffusionConfig:
    channels: tuple[int, ...] = (32, 64)
    attention_levels: tuple[bool, ...] = (False, True)
    num_res_blocks: int = 1
    num_head_channels: int = 16
    norm_num_groups: int = 8
    cross_attention_dim: int = 32
    batch_size: int = 32
    steps: int = 700
    lr: float = 2e-3
    """Demo: sized by measurement (BENCHMARKS.md, `catphish bench ldm`); the 3D presets use 5e-4 / 1e-4."""
    train_timesteps: int = 1000
    schedule: str = "scaled_linear_beta"
    beta_start: float = 0.0015
    beta_end: float = 0.0195
    condition_dropout: float = 0.15
    ema_decay: float = 0.995
    mutual_information: bool = False
    mutual_information_weight: float = 0.1
    differential_privacy: bool = False
    dp_noise_multiplier: float = 1.0
    dp_max_grad_norm: float = 1.0
    dp_delta: float = 1e-5
    checkpoint_every: int = 100
    min_subjects_per_class: int = 2
    """Training subjects each class needs at a site (after the autoencoder hold-out) for conditional training."""


@dataclass
class SynthesisConfig:
    per_class: int = 40
    sampler: Literal["ddpm", "ddim"] = "ddim"
    steps: int = 25
    guidance: float = 1.0
    """Classifier-free guidance scale (1 = none). On the demo, the synthetic-only classifier trained on cases generated
    without guidance did best on the real test sites (guidance 2 and 4 exaggerate the phenotypes); measure before
    raising it (`catphish hub synthesize --guidance G`, then `train --mode synthetic` and `evaluate`)."""
    batch_size: int = 32
    workers: int = 1
    filter_percentile: float = 20.0
    min_mask_voxels: int = 8
    mask_threshold: float = 0.5
    preview_per_class: int = 3
    """Generated cases per class shown in a site package's preview.png."""
    background_threshold: float = 0.25
    """Generated voxels connected to the image border whose four sequences all stay below this |z| are set to 0
    (background), as in the prepared real data."""


@dataclass
class ClassifierConfig:
    model: Literal["resunet", "cnn"] = "resunet"
    channels: tuple[int, ...] = (16, 32, 64)
    mamba: bool = False
    in_channels: int = 4
    folds: int = 5
    epochs: int = 10
    batch_size: int = 32
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    schedule: Literal["poly", "cosine"] = "poly"
    class_weighting: bool = True
    augment: bool = True
    mamba_state_size: int = 16
    """State size of the Mamba-style block at the end of the encoder (with ``mamba``)."""
    checkpoint_every: int = 1
    """Epochs between checkpoints of a fold (``--resume`` continues from the last one)."""
    window: int = 32
    """Train and predict on a window of this many voxels per axis centred on the tumour (nnU-Net-style patches,
    capped by the grid); 0 = the whole grid."""


@dataclass
class FederatedConfig:
    rounds: int = 10
    local_epochs: int = 1
    strategy: Literal["fedavg", "fedprox"] = "fedavg"
    proximal_mu: float = 0.01
    weighting: Literal["samples", "uniform", "class_balanced"] = "samples"
    fraction_train: float = 1.0
    min_clients: int = 2
    dropout_probability: float = 0.0
    retries: int = 2
    differential_privacy: Literal["none", "server_fixed"] = "none"
    """``server_fixed``: Flower's central DP with fixed clipping and the RDP accountant (client-level ε, δ)."""
    noise_multiplier: float = 0.5
    clipping_norm: float = 1.0
    dp_delta: float = 1e-5
    target_epsilon: float = 0.0
    """Central DP: when > 0, the noise multiplier is calibrated so that ε after all rounds is this (at dp_delta)."""
    secure_aggregation: bool = False
    compression: Literal["none", "float16", "int8"] = "none"
    partition: Literal["sites", "iid", "dirichlet", "label_skew"] = "sites"
    dirichlet_alpha: float = 0.3
    shared_holdout_fraction: float = 0.05
    round_timeout_s: float = 600.0
    num_clients: int = 0
    """Clients of the re-split partitions (iid, dirichlet, label_skew); 0 = one per training site."""
    evaluate_clients: bool = False
    """Also evaluate the global model on each client's own data every round (a second model download per round)."""
    init_from: str = ""
    """Synthetic pre-training then FL fine-tuning: start from the model of this classifier run folder."""
    engine: Literal["simulation", "deployment"] = "simulation"
    superlink: str = "127.0.0.1:8000"
    """Deployment engine: the SuperLink's Control API address (host:port) the run is submitted to."""
    root_certificates: str = ""
    """Deployment engine: CA certificate (PEM) that signed the SuperLink's TLS certificate; empty = insecure."""


@dataclass
class EvaluationConfig:
    reference_mode: str = "centralized"
    bootstrap_resamples: int = 1000
    confidence: float = 0.95
    fid_samples: int = 300
    feature_extractor: str = "handcrafted"
    """FID/KID feature extractor for 2D slices: ``handcrafted`` (scikit-image texture features, no download) or a
    ``.safetensors`` file of user-supplied ResNet-18 weights."""
    audit_features: str = "autoencoder"
    """Feature space of the site audit and privacy screen: ``autoencoder``, ``radiomics`` or a ResNet-18 weights file."""


@dataclass
class StudyConfig:
    preset: str = "demo"
    data: DataConfig = field(default_factory=DataConfig)
    autoencoder: AutoencoderConfig = field(default_factory=AutoencoderConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    synthesis: SynthesisConfig = field(default_factory=SynthesisConfig)
    classifier: ClassifierConfig = field(default_factory=ClassifierConfig)
    federated: FederatedConfig = field(default_factory=FederatedConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)

    def to_dict(self) -> dict[str, Any]:
        return _jsonable(dataclasses.asdict(self))


_PRESET_OVERRIDES: dict[str, dict[str, dict[str, Any]]] = {
    # 2D tumour-centred slices sized by measurement on 2 CPU cores (see shared notes/cpu_budget.md).
    # FedAvg: 20 rounds of 2 local epochs (10 × 1 left the federated IDH AUC 0.09 below centralized on the demo).
    "demo": {"federated": {"rounds": 20, "local_epochs": 2}},
    "small3d": {
        "data": {"spatial_dims": 3, "grid": (64, 64, 48), "spacing_mm": (3.0, 3.6, 3.0)},
        "autoencoder": {"channels": (16, 32, 64), "batch_size": 2, "steps": 5000, "adversarial_warmup_steps": 1000,
                        "lr": 2e-4},
        "diffusion": {"channels": (64, 128, 128), "attention_levels": (False, True, True), "batch_size": 4,
                      "steps": 20000, "cross_attention_dim": 64, "lr": 5e-4},
        "synthesis": {"per_class": 200, "steps": 50, "batch_size": 4},
        "classifier": {"channels": (16, 32, 64, 128), "batch_size": 2, "epochs": 50, "window": 0},
        "federated": {"rounds": 50},
    },
    "paper": {
        "data": {"spatial_dims": 3, "grid": (128, 192, 192), "spacing_mm": (1.2, 1.0, 1.0)},
        # grid / 8 (SR factor 2 × two strided levels): latent 8×16×24×24, the nearest a uniform downsampling comes to
        # the paper's 8×16×32×32 (DESIGN §4), which no single factor reaches from 128×192×192
        "autoencoder": {"channels": (64, 128, 256), "latent_channels": 8, "num_res_blocks": 2,
                        "attention_levels": (False, False, True), "norm_num_groups": 32,
                        "batch_size": 1, "steps": 100000, "adversarial_warmup_steps": 10000, "lr": 2e-4,
                        "discriminator_channels": 64, "super_resolution": True, "super_resolution_steps": 20000},
        "diffusion": {"channels": (256, 512, 768), "attention_levels": (False, True, True), "num_res_blocks": 2,
                      "num_head_channels": 64, "norm_num_groups": 32, "cross_attention_dim": 512,
                      "batch_size": 2, "steps": 200000, "lr": 1e-4},
        "synthesis": {"per_class": 1600, "steps": 50, "batch_size": 8},
        "classifier": {"channels": (32, 64, 128, 256, 320), "mamba": True, "batch_size": 2, "epochs": 300,
                       "window": 0},
        "federated": {"rounds": 100},
    },
}


def preset_config(name: str) -> StudyConfig:
    """The configuration of a named preset (``demo``, ``small3d`` or ``paper``)."""
    if name not in _PRESET_OVERRIDES:
        raise ConfigError(f"unknown preset '{name}' (choose from {', '.join(PRESETS)})")
    config = merge_dict(StudyConfig(), _PRESET_OVERRIDES[name])
    config.preset = name
    return config


def load_config(path: str | Path | None = None, preset: str = "demo", overrides: list[str] | None = None) -> StudyConfig:
    """Start from ``preset``, apply a YAML/JSON file (which may name its own preset), then ``--set`` overrides."""
    values: dict[str, Any] = {}
    if path is not None:
        values = _read_config_file(Path(path))
        preset = str(values.pop("preset", preset))
    config = merge_dict(preset_config(preset), values)
    for item in overrides or []:
        config = apply_override(config, item)
    validate(config)
    return config


def config_from_dict(values: dict[str, Any]) -> StudyConfig:
    """Rebuild a saved configuration (``config.json`` of a package or run)."""
    values = dict(values)
    preset = str(values.pop("preset", "demo"))
    config = merge_dict(preset_config(preset), values)
    validate(config)
    return config


def apply_override(config: StudyConfig, item: str) -> StudyConfig:
    """Apply one ``section.key=value`` override; the value is parsed as YAML (numbers, lists, booleans)."""
    if "=" not in item:
        raise ConfigError(f"override '{item}' is not of the form section.key=value")
    dotted, raw = item.split("=", 1)
    parts = dotted.strip().split(".")
    if len(parts) != 2:
        raise ConfigError(f"override key '{dotted}' must be section.key (e.g. diffusion.steps)")
    try:
        value = yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{item}': cannot parse value ({exc})") from None
    return merge_dict(config, {parts[0]: {parts[1]: value}})


def merge_dict(config: StudyConfig, values: dict[str, Any]) -> StudyConfig:
    """A copy of ``config`` with ``values`` applied; unknown keys and wrong types are errors naming the key."""
    merged = copy.deepcopy(config)
    for section_name, section_values in values.items():
        if section_name == "preset":
            merged.preset = str(section_values)
            continue
        if section_name not in _section_types():
            raise ConfigError(f"unknown config section '{section_name}' (known: {', '.join(_section_types())})")
        if not isinstance(section_values, dict):
            raise ConfigError(f"config section '{section_name}' must be a mapping, got {type(section_values).__name__}")
        section = getattr(merged, section_name)
        hints = typing.get_type_hints(type(section))
        for key, value in section_values.items():
            if key not in hints:
                raise ConfigError(f"unknown config key '{section_name}.{key}'")
            setattr(section, key, _coerce(value, hints[key], f"{section_name}.{key}"))
    return merged


def validate(config: StudyConfig) -> None:
    """Cross-field checks that a type alone cannot express."""
    data = config.data
    if data.spatial_dims not in (2, 3):
        raise ConfigError(f"data.spatial_dims must be 2 or 3, got {data.spatial_dims}")
    if len(data.grid) != data.spatial_dims:
        raise ConfigError(f"data.grid {data.grid} must have {data.spatial_dims} sizes for spatial_dims={data.spatial_dims}")
    if len(data.spacing_mm) != 3:
        raise ConfigError(f"data.spacing_mm must have 3 values, got {data.spacing_mm}")
    if data.slices_per_subject < 1 or data.slices_per_subject % 2 == 0:
        raise ConfigError(f"data.slices_per_subject must be a positive odd number, got {data.slices_per_subject}")
    downsample = 2 ** (len(config.autoencoder.channels) - 1)
    if any(size % downsample for size in data.grid):
        raise ConfigError(f"data.grid {data.grid} must be divisible by {downsample} (autoencoder.channels has "
                          f"{len(config.autoencoder.channels)} levels)")
    if len(config.autoencoder.attention_levels) != len(config.autoencoder.channels):
        raise ConfigError("autoencoder.attention_levels must have one entry per autoencoder.channels level")
    if len(config.diffusion.attention_levels) != len(config.diffusion.channels):
        raise ConfigError("diffusion.attention_levels must have one entry per diffusion.channels level")
    if not 0 < config.synthesis.filter_percentile < 100:
        raise ConfigError(f"synthesis.filter_percentile must be in (0, 100), got {config.synthesis.filter_percentile}")
    if config.classifier.folds < 2:
        raise ConfigError(f"classifier.folds must be at least 2, got {config.classifier.folds}")
    if config.federated.rounds < 1:
        raise ConfigError(f"federated.rounds must be at least 1, got {config.federated.rounds}")
    for name in ("steps",):
        for section in (config.autoencoder, config.diffusion, config.synthesis):
            if getattr(section, name) < 0:
                raise ConfigError(f"{type(section).__name__}.{name} must not be negative")


def save_dict(config: StudyConfig) -> dict[str, Any]:
    """Plain JSON-able form, the inverse of :func:`config_from_dict`."""
    return config.to_dict()


def _read_config_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        raise ConfigError(f"{path}: config file does not exist")
    try:
        text = path.read_text()
        values = json.loads(text) if path.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path.name}: not valid {'JSON' if path.suffix == '.json' else 'YAML'} ({exc})") from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{path.name}: top level must be a mapping of sections")
    return values


def _section_types() -> dict[str, type]:
    hints = typing.get_type_hints(StudyConfig)
    return {name: hint for name, hint in hints.items() if dataclasses.is_dataclass(hint)}


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``hint`` (int→float and list→tuple allowed)."""
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, option, key)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0])
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"config key '{key}' must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key '{key}' must be a list, got {type(value).__name__} {value!r}")
        item_type = args[0]
        return tuple(_coerce(item, item_type, key) for item in value)
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-3 (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
        return value
    raise ConfigError(f"config key '{key}' has an unsupported type {hint}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value
