"""Feature spaces for the site audit and the privacy screen (PE-LDM) — pluggable, none needs a download.

- ``autoencoder`` (default): the site package's own autoencoder, posterior mean of the latent, flattened. It is the space
  the diffusion model generates in, so closeness there is closeness of what the model learned.
- ``radiomics``: whole-tumour radiomics (:mod:`catphish.synthesis.radiomics`), standardised on the reference cases.
- a path to a ``.safetensors`` file: weights of a MONAI ResNet-18 (MedicalNet layout: one input channel, ``conv1``,
  ``layer1``…``layer4``) supplied by the user; each sequence is embedded separately and the global-average-pooled
  features are concatenated.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from catphish.errors import CatphishError
from catphish.evaluation.features import resnet18_from_weights

Embed = Callable[[np.ndarray], np.ndarray]


@dataclass
class FeatureSpace:
    name: str
    description: str
    embed: Embed


def feature_space(spec: str, package: object, device: torch.device, batch_size: int = 32) -> FeatureSpace:
    """The feature space named by ``spec`` for cases of ``package``'s grid."""
    if spec == "autoencoder":
        return FeatureSpace("autoencoder", "site autoencoder latent (posterior mean), flattened",
                            lambda images: _latents(package, images, device, batch_size))
    if spec == "radiomics":
        from catphish.synthesis.radiomics import tumour_features

        return FeatureSpace("radiomics", "whole-tumour radiomics: first order, shape, GLCM (catphish.synthesis.radiomics)",
                            lambda images: np.nan_to_num(np.stack([tumour_features(c) for c in images])))
    path = Path(spec)
    if path.suffix == ".safetensors":
        network = resnet18_from_weights(path, package.config.data.spatial_dims).to(device).eval()  # type: ignore[attr-defined]
        return FeatureSpace(f"resnet18:{path.name}", f"user-supplied ResNet-18 weights {path.name}, GAP features "
                            "per sequence", lambda images: _network_features(network, images, device, batch_size))
    raise CatphishError(f"unknown feature space '{spec}' (choose autoencoder, radiomics, or a .safetensors file of "
                        "ResNet-18 weights)")


@torch.no_grad()
def _latents(package: object, images: np.ndarray, device: torch.device, batch_size: int) -> np.ndarray:
    from catphish.training.ldm import encode_latents

    autoencoder = package.autoencoder.to(device)  # type: ignore[attr-defined]
    means, _ = encode_latents(autoencoder, np.ascontiguousarray(images, dtype=np.float32), device, batch_size)
    return means.flatten(1).double().numpy()


@torch.no_grad()
def _network_features(network: torch.nn.Module, images: np.ndarray, device: torch.device, batch_size: int) -> np.ndarray:
    features = []
    for start in range(0, len(images), batch_size):
        batch = torch.as_tensor(images[start:start + batch_size, :4], dtype=torch.float32, device=device)
        per_sequence = [network(batch[:, c:c + 1]).flatten(1) for c in range(batch.shape[1])]
        features.append(torch.cat(per_sequence, dim=1).double().cpu().numpy())
    return np.concatenate(features)
