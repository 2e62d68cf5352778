"""Losses of the site latent diffusion model.

- the autoencoder: L1 on the four sequences, BCE + Dice on the whole-tumour mask channel, the KL term, and an
  optional perceptual term from user-supplied ResNet weights (no perceptual network ships offline);
- the super-resolution phase: L1 + (1 − SSIM);
- the diffusion model: the noise-prediction loss, optionally 0.9·smoothL1 + 0.1·MI — the mutual-information
  regulariser of the DDPM memorisation paper, penalising MI between the predicted x0 and the real latent.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from monai.losses import DiceLoss, GlobalMutualInformationLoss, SSIMLoss
from monai.networks.nets import resnet
from torch import nn

from catphish.models.autoencoder import MASK_CHANNEL


def image_l1(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean absolute error over the four sequence channels."""
    return F.l1_loss(output[:, :MASK_CHANNEL], target[:, :MASK_CHANNEL])


class MaskLoss(nn.Module):
    """BCE + soft Dice between the decoder's mask logit and the (possibly soft) whole-tumour mask."""

    def __init__(self) -> None:
        super().__init__()
        self.dice = DiceLoss(sigmoid=True, smooth_nr=1e-5, smooth_dr=1e-5)

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = output[:, MASK_CHANNEL:].float()
        mask = target[:, MASK_CHANNEL:].float()
        return F.binary_cross_entropy_with_logits(logits, mask) + self.dice(logits, mask)


def kl_loss(z_mu: torch.Tensor, z_sigma: torch.Tensor) -> torch.Tensor:
    """KL divergence of the posterior N(mu, sigma²) from N(0, 1), summed over the latent, averaged over the batch."""
    dims = list(range(1, z_mu.dim()))
    kl = 0.5 * torch.sum(z_mu.pow(2) + z_sigma.pow(2) - torch.log(z_sigma.pow(2) + 1e-12) - 1, dim=dims)
    return kl.mean()


class SuperResolutionLoss(nn.Module):
    """L1 + ``ssim_weight``·(1 − SSIM) on the four sequences (SSIM data range from the target batch)."""

    def __init__(self, spatial_dims: int, ssim_weight: float) -> None:
        super().__init__()
        self.ssim_weight = ssim_weight
        self.ssim = SSIMLoss(spatial_dims=spatial_dims, data_range=1.0, win_size=7)

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        l1 = image_l1(output, target)
        if self.ssim_weight == 0:
            return l1
        images, reference = output[:, :MASK_CHANNEL].float(), target[:, :MASK_CHANNEL].float()
        low, high = reference.amin(), reference.amax()
        scale = (high - low).clamp_min(1e-6)
        return l1 + self.ssim_weight * self.ssim((images - low) / scale, (reference - low) / scale)


class MutualInformation(nn.Module):
    """Differentiable mutual information per sample (Gaussian Parzen-window joint histogram, MONAI).

    MONAI's ``GlobalMutualInformationLoss`` returns −MI for intensities in [0, 1]; each sample is min–max scaled
    first, so the estimate does not depend on the latent scale. Per-sample values keep the loss a sum over
    examples, as DP-SGD's per-example gradients require.
    """

    def __init__(self, num_bins: int = 23) -> None:
        super().__init__()
        self.estimator = GlobalMutualInformationLoss(kernel_type="gaussian", num_bins=num_bins, reduction="none")

    @staticmethod
    def _unit_range(x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        low = flat.amin(dim=1, keepdim=True)
        high = flat.amax(dim=1, keepdim=True)
        return ((flat - low) / (high - low).clamp_min(1e-6)).view_as(x)

    def forward(self, prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """MI (≥ 0, in nats) for each sample of the batch, shape ``(B,)``."""
        negative = self.estimator(self._unit_range(prediction.float()), self._unit_range(target.float()))
        return -negative.reshape(negative.shape[0], -1).mean(dim=1)


def diffusion_loss(noise_prediction: torch.Tensor, noise: torch.Tensor, predicted_x0: torch.Tensor | None = None,
                   real_x0: torch.Tensor | None = None, mutual_information: MutualInformation | None = None,
                   mi_weight: float = 0.1) -> tuple[torch.Tensor, dict[str, float]]:
    """Noise-prediction loss; with the MI regulariser ``(1 − w)·smoothL1 + w·MI(x̂0, x0)`` (paper: w = 0.1)."""
    if mutual_information is None:
        loss = F.mse_loss(noise_prediction.float(), noise.float())
        return loss, {"mse": loss.item()}
    if predicted_x0 is None or real_x0 is None:
        raise ValueError("the MI regulariser needs the predicted and the real x0")
    smooth = F.smooth_l1_loss(noise_prediction.float(), noise.float())
    # x0 predicted at large t explodes (division by √ᾱ_t → 0); clip to the latent's few-sigma range
    mi = mutual_information(predicted_x0.clamp(-4.0, 4.0), real_x0).mean()
    loss = (1 - mi_weight) * smooth + mi_weight * mi
    return loss, {"smooth_l1": smooth.item(), "mi": mi.item()}


# --------------------------------------------------------------------------------------------- perceptual loss
_RESNETS = ("resnet10", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnet200")


def perceptual_network_from_weights(weights: dict[str, torch.Tensor], spatial_dims: int) -> nn.Module:
    """A frozen MONAI ResNet (MedicalNet/RadImageNet layout) whose architecture matches the given state dict.

    The depth, shortcut type and input channels are found by trying each MONAI ResNet against the tensors, so
    converted MedicalNet (3D) or RadImageNet/ImageNet-style (2D) weights load without naming the architecture.
    """
    weights = {k.removeprefix("module."): v for k, v in weights.items()}
    weights = {k: v for k, v in weights.items() if not k.startswith("fc.")}
    if "conv1.weight" not in weights:
        raise ValueError("no 'conv1.weight' tensor: not ResNet weights")
    conv1 = weights["conv1.weight"]
    if conv1.dim() != spatial_dims + 2:
        raise ValueError(f"ResNet weights are {conv1.dim() - 2}D but the preset is {spatial_dims}D")
    for name in _RESNETS:
        for shortcut in ("A", "B"):
            for bias_downsample in (True, False):
                network = getattr(resnet, name)(spatial_dims=spatial_dims, n_input_channels=conv1.shape[1],
                                                shortcut_type=shortcut, bias_downsample=bias_downsample,
                                                feed_forward=False, conv1_t_size=conv1.shape[2], conv1_t_stride=2)
                expected = {k: v.shape for k, v in network.state_dict().items() if not k.startswith("fc.")}
                if expected == {k: v.shape for k, v in weights.items()}:
                    network.load_state_dict(weights, strict=False)
                    network.eval().requires_grad_(False)
                    return network
    raise ValueError("the tensors match no MONAI ResNet (10–200, shortcut A/B) architecture")


class ResNetPerceptualLoss(nn.Module):
    """LPIPS-style feature distance of a frozen ResNet, per sequence channel (each fed as a single-channel image)."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network.eval().requires_grad_(False)
        self.in_channels = network.conv1.in_channels

    def train(self, mode: bool = True) -> ResNetPerceptualLoss:
        super().train(mode)
        self.network.eval()  # frozen BatchNorm statistics
        return self

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        net = self.network
        x = net.act(net.bn1(net.conv1(x)))
        if not net.no_max_pool:
            x = net.maxpool(x)
        features = []
        for layer in (net.layer1, net.layer2, net.layer3, net.layer4):
            x = layer(x)
            features.append(x / (x.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-8))
        return features

    def forward(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total = output.new_zeros(())
        for channel in range(MASK_CHANNEL):
            a = output[:, channel:channel + 1].float().expand(-1, self.in_channels, *output.shape[2:])
            b = target[:, channel:channel + 1].float().expand(-1, self.in_channels, *target.shape[2:])
            for fa, fb in zip(self._features(a), self._features(b), strict=True):
                total = total + (fa - fb).pow(2).sum(dim=1).mean()
        return total / MASK_CHANNEL
