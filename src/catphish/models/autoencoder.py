"""The site autoencoder: a 5-channel KL autoencoder (MONAI ``AutoencoderKL``) and its optional super-resolution head.

Channels are T1, T1C, T2, FLAIR and the whole-tumour mask, so every decoded case carries its own segmentation. The
decoder's mask channel is a logit (trained with BCE + Dice); :func:`to_image_space` turns it into a probability.
With ``super_resolution`` the autoencoder works at ``grid / factor`` and a small head, fine-tuned in a second phase,
restores the full grid (DESIGN §1: the paper's decoder has an SR stage).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from monai.networks.layers import Conv
from monai.networks.nets import AutoencoderKL, PatchDiscriminator
from torch import nn

from catphish.config import CHANNEL_NAMES, AutoencoderConfig

IMAGE_CHANNELS = len(CHANNEL_NAMES)
"""T1, T1C, T2, FLAIR and the whole-tumour mask."""
MASK_CHANNEL = IMAGE_CHANNELS - 1


class SuperResolutionHead(nn.Module):
    """Upsample the decoder output by ``factor`` and add a learned residual correction.

    The last convolution starts at zero, so before fine-tuning the head is plain (bi/tri)linear upsampling.
    """

    def __init__(self, spatial_dims: int, channels: int = IMAGE_CHANNELS, features: int = 16, factor: int = 2) -> None:
        super().__init__()
        conv = Conv[Conv.CONV, spatial_dims]
        self.factor = factor
        self.mode = "bilinear" if spatial_dims == 2 else "trilinear"
        self.refine = nn.Sequential(
            conv(channels, features, kernel_size=3, padding=1), nn.SiLU(),
            conv(features, features, kernel_size=3, padding=1), nn.SiLU(),
            conv(features, channels, kernel_size=3, padding=1),
        )
        nn.init.zeros_(self.refine[-1].weight)
        nn.init.zeros_(self.refine[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        upsampled = F.interpolate(x, scale_factor=self.factor, mode=self.mode, align_corners=False)
        return upsampled + self.refine(upsampled)


class SiteAutoencoder(nn.Module):
    """KL autoencoder over the 5 channels, plus the super-resolution head when configured."""

    def __init__(self, spatial_dims: int, config: AutoencoderConfig) -> None:
        super().__init__()
        self.spatial_dims = spatial_dims
        self.kl = AutoencoderKL(
            spatial_dims=spatial_dims, in_channels=IMAGE_CHANNELS, out_channels=IMAGE_CHANNELS,
            channels=tuple(config.channels), latent_channels=config.latent_channels,
            num_res_blocks=config.num_res_blocks, attention_levels=tuple(config.attention_levels),
            norm_num_groups=config.norm_num_groups,
        )
        self.factor = config.super_resolution_factor if config.super_resolution else 1
        self.super_resolution = (SuperResolutionHead(spatial_dims, IMAGE_CHANNELS, config.super_resolution_channels,
                                                     self.factor) if config.super_resolution else None)

    def downsample(self, x: torch.Tensor) -> torch.Tensor:
        """The input at the autoencoder's own resolution (the full grid unless super-resolution is on)."""
        return x if self.factor == 1 else F.avg_pool2d(x, self.factor) if self.spatial_dims == 2 else F.avg_pool3d(
            x, self.factor)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior mean and standard deviation of the latent for full-grid input ``x``."""
        return self.kl.encode(self.downsample(x))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Full-grid output (mask channel as a logit) for latent ``z``."""
        x = self.kl.decode(z)
        return x if self.super_resolution is None else self.super_resolution(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Phase-1 reconstruction at the autoencoder's resolution: ``(output, z_mu, z_sigma)``."""
        return self.kl(self.downsample(x))


def to_image_space(output: torch.Tensor) -> torch.Tensor:
    """Decoder output → images: sequences unchanged, mask logit → probability."""
    return torch.cat([output[:, :MASK_CHANNEL], torch.sigmoid(output[:, MASK_CHANNEL:])], dim=1)


def latent_shape(config: AutoencoderConfig, grid: tuple[int, ...]) -> tuple[int, ...]:
    """``(latent_channels, *spatial)`` of the latent for a full-grid input."""
    factor = (config.super_resolution_factor if config.super_resolution else 1) * 2 ** (len(config.channels) - 1)
    return (config.latent_channels, *(size // factor for size in grid))


def grid_divisor(config: AutoencoderConfig) -> int:
    """Every grid size must be a multiple of this (autoencoder downsampling × super-resolution factor)."""
    return (config.super_resolution_factor if config.super_resolution else 1) * 2 ** (len(config.channels) - 1)


def build_discriminator(spatial_dims: int, config: AutoencoderConfig, grid: tuple[int, ...]) -> PatchDiscriminator:
    """MONAI ``PatchDiscriminator`` on the 5 channels; fewer layers when the grid is too small for the default."""
    smallest = min(grid) // (config.super_resolution_factor if config.super_resolution else 1)
    layers = max(1, min(config.discriminator_layers, int(math.log2(max(smallest, 2))) - 2))
    return PatchDiscriminator(spatial_dims=spatial_dims, channels=config.discriminator_channels,
                              in_channels=IMAGE_CHANNELS, num_layers_d=layers)


@dataclass(frozen=True)
class LatentNormalisation:
    """Per-channel standardisation of the autoencoder's latents for the diffusion model (the LDM "scale factor",
    per channel and with a shift): KL autoencoders trained briefly leave channels with very different means and
    spreads, and a diffusion model learns unit-variance, zero-mean data best. ``clip`` bounds the predicted
    clean latent while sampling (a few-step DDIM sampler otherwise amplifies the error of an ε prediction at large t)."""

    shift: tuple[float, ...]
    scale: tuple[float, ...]
    clip: float

    @classmethod
    def fit(cls, latents: torch.Tensor, clip_margin: float = 1.5) -> LatentNormalisation:
        """From training latents ``(N, C, *spatial)``: channel mean and 1/std; clip = margin × the largest |value|."""
        axes = [0, *range(2, latents.ndim)]
        shift = latents.mean(dim=axes)
        scale = 1.0 / latents.std(dim=axes).clamp_min(1e-6)
        normalised = (latents - _per_channel(shift, latents)) * _per_channel(scale, latents)
        return cls(tuple(shift.tolist()), tuple(scale.tolist()), float(normalised.abs().max()) * clip_margin)

    def normalise(self, latents: torch.Tensor) -> torch.Tensor:
        return (latents - _per_channel(self.shift, latents)) * _per_channel(self.scale, latents)

    def denormalise(self, z: torch.Tensor) -> torch.Tensor:
        return z / _per_channel(self.scale, z) + _per_channel(self.shift, z)

    def to_tensor(self) -> torch.Tensor:
        """``(3, C)``: shift, scale and the clip value repeated (how a package stores it)."""
        return torch.tensor([self.shift, self.scale, [self.clip] * len(self.shift)], dtype=torch.float32)

    @classmethod
    def from_tensor(cls, tensor: torch.Tensor) -> LatentNormalisation:
        values = tensor.double()
        return cls(tuple(values[0].tolist()), tuple(values[1].tolist()), float(values[2, 0]))

    def as_dict(self) -> dict[str, object]:
        return {"shift": [round(v, 6) for v in self.shift], "scale": [round(v, 6) for v in self.scale],
                "clip": round(self.clip, 4)}


def _per_channel(values: tuple[float, ...] | torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    vector = torch.as_tensor(values, dtype=like.dtype, device=like.device)
    return vector.reshape(1, -1, *([1] * (like.ndim - 2)))
