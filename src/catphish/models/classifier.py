"""Downstream tumour classifiers (DESIGN §1): a voxel-wise residual UNet and a subject-level CNN baseline.

The residual UNet labels every voxel with class logits; training and prediction look only at the tumour voxels, whose
mean softmax is the subject's probability. Its encoder can end in a Mamba-style selective state-space block (as the
paper's classifier does), written in plain PyTorch so it runs on CPU and any GPU. The CNN baseline pools its features
over the tumour (the mask is its last input channel) and gives one set of logits per image. Both serve 2D and 3D
through ``spatial_dims``; residual blocks and output heads come from MONAI's DynUNet blocks.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.networks.blocks.dynunet_block import UnetOutBlock, UnetResBlock, get_conv_layer
from torch import nn

NORM = ("instance", {"affine": True})


# ------------------------------------------------------------------------------------- selective state space
def segment_sums(x: torch.Tensor) -> torch.Tensor:
    """``out[..., i, j] = x[..., j+1] + … + x[..., i]`` for ``j <= i`` and ``-inf`` above the diagonal (stable decay)."""
    length = x.size(-1)
    x = x[..., None].expand(*x.shape, length)
    below = torch.tril(torch.ones(length, length, dtype=torch.bool, device=x.device), diagonal=-1)
    sums = torch.cumsum(x.masked_fill(~below, 0.0), dim=-2)
    on_or_below = torch.tril(torch.ones(length, length, dtype=torch.bool, device=x.device), diagonal=0)
    return sums.masked_fill(~on_or_below, float("-inf"))


def selective_scan(x: torch.Tensor, log_decay: torch.Tensor, b: torch.Tensor, c: torch.Tensor,
                   chunk: int = 64) -> torch.Tensor:
    """The linear recurrence ``h_t = exp(a_t) h_{t-1} + B_t x_t``, ``y_t = C_t h_t``, computed chunk-wise.

    Shapes: ``x`` (batch, length, heads, head_dim), ``log_decay`` (batch, length, heads) ≤ 0, ``b`` and ``c``
    (batch, length, heads, state). Within a chunk the recurrence is a masked matrix product; between chunks the
    states are carried by a short recurrence (the state-space duality of Mamba-2), so no custom kernel is needed.
    """
    batch, length, heads, head_dim = x.shape
    pad = (-length) % chunk
    if pad:  # zero input and zero decay after the sequence do not change earlier outputs
        x, log_decay, b, c = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, log_decay, b, c))
    n_chunks = x.size(1) // chunk

    def chunked(t: torch.Tensor) -> torch.Tensor:
        return t.reshape(batch, n_chunks, chunk, *t.shape[2:])

    x, b, c = chunked(x), chunked(b), chunked(c)
    a = chunked(log_decay).permute(0, 3, 1, 2)  # (batch, heads, chunks, chunk)
    a_cumsum = torch.cumsum(a, dim=-1)
    within = torch.exp(segment_sums(a))
    y_within = torch.einsum("bclhn,bcshn,bhcls,bcshp->bclhp", c, b, within, x)
    decay_to_end = torch.exp(a_cumsum[..., -1:] - a_cumsum)
    states = torch.einsum("bclhn,bhcl,bclhp->bchpn", b, decay_to_end, x)
    states = torch.cat([torch.zeros_like(states[:, :1]), states], dim=1)
    between = torch.exp(segment_sums(F.pad(a_cumsum[..., -1], (1, 0))))
    states = torch.einsum("bhzc,bchpn->bzhpn", between, states)[:, :-1]
    y_carried = torch.einsum("bclhn,bchpn,bhcl->bclhp", c, states, torch.exp(a_cumsum))
    y = (y_within + y_carried).reshape(batch, n_chunks * chunk, heads, head_dim)
    return y[:, :length]


class SelectiveStateSpace(nn.Module):
    """A Mamba-style block over a token sequence: input-dependent step size, B and C (the *selection*), gated output.

    Image tokens have no natural direction, so the scan runs both ways and the two results are added (as in Vision
    Mamba). Input and output: (batch, length, channels).
    """

    def __init__(self, channels: int, state_size: int = 16, expand: int = 2, head_dim: int = 16,
                 conv_kernel: int = 3, chunk: int = 64) -> None:
        super().__init__()
        inner = expand * channels
        head_dim = min(head_dim, inner)
        if inner % head_dim:
            raise ValueError(f"inner width {inner} is not divisible by head_dim {head_dim}")
        self.inner, self.state_size, self.chunk = inner, state_size, chunk
        self.heads, self.head_dim = inner // head_dim, head_dim
        self.norm = nn.LayerNorm(channels)
        self.in_proj = nn.Linear(channels, 2 * inner + 2 * state_size + self.heads)
        self.conv = nn.Conv1d(inner, inner, conv_kernel, padding=conv_kernel // 2, groups=inner)
        # Mamba-2 initialisation: decay rates spread over [1, 16], step sizes over [1e-3, 1e-1]
        self.log_rate = nn.Parameter(torch.log(torch.linspace(1.0, 16.0, self.heads)))
        step = torch.exp(torch.linspace(math.log(1e-3), math.log(1e-1), self.heads))
        self.step_bias = nn.Parameter(step + torch.log(-torch.expm1(-step)))  # inverse softplus
        self.skip = nn.Parameter(torch.ones(self.heads))
        self.out_norm = nn.LayerNorm(inner)
        self.out_proj = nn.Linear(inner, channels)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        batch, length, _ = tokens.shape
        z, x, b, c, step = torch.split(self.in_proj(self.norm(tokens)),
                                       [self.inner, self.inner, self.state_size, self.state_size, self.heads], dim=-1)
        x = F.silu(self.conv(x.transpose(1, 2)).transpose(1, 2))
        with torch.autocast(device_type=tokens.device.type, enabled=False):  # exp/cumsum need float32
            x, b, c, step = x.float(), b.float(), c.float(), step.float()
            step = F.softplus(step + self.step_bias)  # (batch, length, heads)
            log_decay = -torch.exp(self.log_rate) * step
            heads_x = x.reshape(batch, length, self.heads, self.head_dim)
            b_heads = b[:, :, None, :].expand(batch, length, self.heads, self.state_size)
            c_heads = c[:, :, None, :].expand(batch, length, self.heads, self.state_size)
            drive = heads_x * step[..., None]
            forward = selective_scan(drive, log_decay, b_heads, c_heads, self.chunk)
            backward = selective_scan(*(t.flip(1) for t in (drive, log_decay, b_heads, c_heads)), self.chunk).flip(1)
            y = forward + backward + heads_x * self.skip[:, None]
        y = self.out_norm(y.reshape(batch, length, self.inner).to(z.dtype)) * F.silu(z)
        return tokens + self.out_proj(y)


class SpatialStateSpace(nn.Module):
    """Applies :class:`SelectiveStateSpace` to a feature map by reading its voxels as a sequence."""

    def __init__(self, channels: int, state_size: int = 16) -> None:
        super().__init__()
        self.block = SelectiveStateSpace(channels, state_size=state_size)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        batch, channels, *spatial = features.shape
        tokens = features.flatten(2).transpose(1, 2)
        return self.block(tokens).transpose(1, 2).reshape(batch, channels, *spatial)


# ------------------------------------------------------------------------------------------------ classifiers
def _encoder(spatial_dims: int, in_channels: int, channels: tuple[int, ...]) -> nn.ModuleList:
    """Residual blocks; every level after the first halves the grid."""
    levels, previous = [], in_channels
    for level, width in enumerate(channels):
        levels.append(UnetResBlock(spatial_dims, previous, width, kernel_size=3, stride=1 if level == 0 else 2,
                                   norm_name=NORM))
        previous = width
    return nn.ModuleList(levels)


class ResidualUNet(nn.Module):
    """Voxel-wise classifier: per-voxel class logits of the same grid as the input (4 MR sequences)."""

    voxelwise = True
    uses_mask_input = False

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, channels: tuple[int, ...],
                 mamba: bool = False, mamba_state_size: int = 16) -> None:
        super().__init__()
        if len(channels) < 2:
            raise ValueError("a UNet needs at least two levels of channels")
        self.spatial_dims, self.in_channels, self.levels = spatial_dims, in_channels, len(channels)
        self.encoder = _encoder(spatial_dims, in_channels, channels)
        self.bottleneck = SpatialStateSpace(channels[-1], mamba_state_size) if mamba else nn.Identity()
        self.upsample = nn.ModuleList()
        self.decoder = nn.ModuleList()
        for deep, shallow in zip(channels[:0:-1], channels[-2::-1], strict=True):
            self.upsample.append(get_conv_layer(spatial_dims, deep, shallow, kernel_size=2, stride=2, conv_only=True,
                                                is_transposed=True))
            self.decoder.append(UnetResBlock(spatial_dims, 2 * shallow, shallow, kernel_size=3, stride=1,
                                             norm_name=NORM))
        self.head = UnetOutBlock(spatial_dims, channels[0], num_classes)

    @property
    def divisor(self) -> int:
        """Every spatial size of the input must be a multiple of this."""
        return 2 ** (self.levels - 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        skips = []
        x = image
        for block in self.encoder:
            x = block(x)
            skips.append(x)
        x = self.bottleneck(skips.pop())
        for upsample, block in zip(self.upsample, self.decoder, strict=True):
            x = block(torch.cat([upsample(x), skips.pop()], dim=1))
        return self.head(x)


class TumourCNN(nn.Module):
    """Subject-level baseline: a residual encoder whose deepest features are averaged over the tumour.

    Input: the MR sequences plus the whole-tumour mask as the last channel; output: (batch, classes) logits.
    """

    voxelwise = False
    uses_mask_input = True

    def __init__(self, spatial_dims: int, in_channels: int, num_classes: int, channels: tuple[int, ...]) -> None:
        super().__init__()
        self.spatial_dims, self.in_channels, self.levels = spatial_dims, in_channels, len(channels)
        self.encoder = _encoder(spatial_dims, in_channels + 1, channels)
        self.head = nn.Linear(channels[-1], num_classes)

    @property
    def divisor(self) -> int:
        return 2 ** (self.levels - 1)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = image
        for block in self.encoder:
            x = block(x)
        mask = F.adaptive_avg_pool2d if self.spatial_dims == 2 else F.adaptive_avg_pool3d
        weight = mask(image[:, -1:], x.shape[2:])
        # tumour-weighted average; images without tumour fall back to the plain average
        weight = torch.where(weight.flatten(1).sum(1).view(-1, *[1] * (x.dim() - 1)) > 0, weight, torch.ones_like(weight))
        pooled = (x * weight).flatten(2).sum(-1) / weight.flatten(2).sum(-1).clamp_min(1e-6)
        return self.head(pooled)
