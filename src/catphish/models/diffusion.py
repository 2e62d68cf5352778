"""The class-conditional latent diffusion model: MONAI ``DiffusionModelUNet`` with cross-attention on a class embedding.

Each class (IDH mutant/wildtype, or the three tumour types) has a learned embedding; one more embedding is the
*null* condition used for condition dropout in training, so sampling can apply classifier-free guidance
(``eps_uncond + G·(eps_cond − eps_uncond)``). Schedulers are MONAI's (DDPM for training, DDPM/DDIM for sampling).
"""

from __future__ import annotations

import torch
from monai.networks.nets import DiffusionModelUNet
from monai.networks.schedulers import DDIMScheduler, DDPMScheduler
from torch import nn

from catphish.config import DiffusionConfig


class ClassConditionedUNet(nn.Module):
    """``DiffusionModelUNet`` whose cross-attention context is one learned token per class (plus a null token)."""

    def __init__(self, spatial_dims: int, latent_channels: int, num_classes: int, config: DiffusionConfig) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.class_embedding = nn.Embedding(num_classes + 1, config.cross_attention_dim)
        self.unet = DiffusionModelUNet(
            spatial_dims=spatial_dims, in_channels=latent_channels, out_channels=latent_channels,
            channels=tuple(config.channels), attention_levels=tuple(config.attention_levels),
            num_res_blocks=config.num_res_blocks, num_head_channels=config.num_head_channels,
            norm_num_groups=config.norm_num_groups, with_conditioning=True,
            cross_attention_dim=config.cross_attention_dim,
        )

    @property
    def null_label(self) -> int:
        """Index of the unconditional (dropped) condition."""
        return self.num_classes

    def forward(self, x: torch.Tensor, timesteps: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Predicted noise for noisy latents ``x`` at ``timesteps`` under class ``labels`` (``null_label`` = none)."""
        context = self.class_embedding(labels).unsqueeze(1)
        return self.unet(x, timesteps=timesteps, context=context)


def training_scheduler(config: DiffusionConfig) -> DDPMScheduler:
    """The DDPM noise schedule the model is trained with (``train_timesteps`` steps, latents are not clipped)."""
    return DDPMScheduler(num_train_timesteps=config.train_timesteps, schedule=config.schedule,
                         beta_start=config.beta_start, beta_end=config.beta_end, clip_sample=False)


def sampling_scheduler(config: DiffusionConfig, sampler: str, steps: int, clip: float | None = None
                       ) -> tuple[DDPMScheduler | DDIMScheduler, float]:
    """Scheduler and DDIM ``eta`` for ``sampler`` with ``steps`` denoising steps; ``clip`` bounds the predicted clean
    latent at every step (to the range of the normalised training latents), ``None`` leaves it free.

    ``ddpm`` with all training steps is MONAI's ``DDPMScheduler``. With fewer steps, MONAI's DDPM step still moves to
    ``t − 1`` (not to the previous kept timestep), so the respaced ancestral DDPM sampler is run as DDIM with
    ``eta = 1``, which has the same posterior mean and variance on the respaced schedule.
    """
    if steps < 1 or steps > config.train_timesteps:
        raise ValueError(f"steps must be in 1..{config.train_timesteps}, got {steps}")
    schedule = {"schedule": config.schedule, "beta_start": config.beta_start, "beta_end": config.beta_end,
                "clip_sample": clip is not None, "clip_sample_min": -(clip or 1.0), "clip_sample_max": clip or 1.0}
    if sampler == "ddpm" and steps == config.train_timesteps:
        scheduler: DDPMScheduler | DDIMScheduler = DDPMScheduler(num_train_timesteps=config.train_timesteps, **schedule)
        eta = 0.0
    elif sampler in ("ddpm", "ddim"):
        scheduler = DDIMScheduler(num_train_timesteps=config.train_timesteps, **schedule)
        eta = 1.0 if sampler == "ddpm" else 0.0
    else:
        raise ValueError(f"unknown sampler '{sampler}' (choose ddpm or ddim)")
    scheduler.set_timesteps(steps)
    return scheduler, eta


def predicted_original(scheduler: DDPMScheduler, noisy: torch.Tensor, noise_prediction: torch.Tensor,
                       timesteps: torch.Tensor) -> torch.Tensor:
    """x0 implied by an epsilon prediction: ``(x_t − √(1−ᾱ_t)·ε̂) / √ᾱ_t``."""
    alphas = scheduler.alphas_cumprod.to(noisy.device)[timesteps].float()
    shape = (-1,) + (1,) * (noisy.dim() - 1)
    alphas = alphas.view(shape)
    return (noisy - (1 - alphas).sqrt() * noise_prediction) / alphas.sqrt()
