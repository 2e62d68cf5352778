"""The site latent diffusion model's networks, losses and schedulers, in 2D and 3D tiny configurations."""

import numpy as np
import pytest
import torch

from catphish.models.autoencoder import SiteAutoencoder, build_discriminator, latent_shape, to_image_space
from catphish.models.diffusion import ClassConditionedUNet, predicted_original, sampling_scheduler, training_scheduler
from catphish.models.losses import (
    MaskLoss,
    MutualInformation,
    ResNetPerceptualLoss,
    SuperResolutionLoss,
    diffusion_loss,
    kl_loss,
    perceptual_network_from_weights,
)
from catphish.synthesis.sampling import binary_segmentation, border_background, guided_noise
from ldm_fixtures import tiny_config


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("super_resolution", [False, True])
def test_autoencoder_encodes_five_channels_to_the_configured_latent(spatial_dims, super_resolution):
    config = tiny_config(spatial_dims, f"autoencoder.super_resolution={str(super_resolution).lower()}")
    model = SiteAutoencoder(spatial_dims, config.autoencoder)
    x = torch.randn(2, 5, *config.data.grid)
    mu, sigma = model.encode(x)
    assert tuple(mu.shape[1:]) == latent_shape(config.autoencoder, tuple(config.data.grid))
    assert (sigma > 0).all()
    decoded = model.decode(mu)
    assert decoded.shape == x.shape
    images = to_image_space(decoded)
    assert images[:, 4].min() >= 0 and images[:, 4].max() <= 1
    output, _, _ = model(x)
    assert output.shape == model.downsample(x).shape
    logits = build_discriminator(spatial_dims, config.autoencoder, tuple(config.data.grid))(output)[-1]
    assert logits.shape[0] == 2


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_class_conditioned_unet_predicts_noise_for_each_class_and_the_null_token(spatial_dims):
    config = tiny_config(spatial_dims)
    model = ClassConditionedUNet(spatial_dims, 2, 3, config.diffusion)
    latents = torch.randn(4, 2, *([4] * spatial_dims))
    labels = torch.tensor([0, 1, 2, model.null_label])
    out = model(latents, torch.randint(0, 1000, (4,)), labels)
    assert out.shape == latents.shape
    guided = guided_noise(model, latents, 500, torch.tensor([0, 1, 2, 0]), guidance=3.0)
    assert guided.shape == latents.shape and torch.isfinite(guided).all()


def test_mask_loss_prefers_logits_that_match_the_mask():
    target = torch.zeros(2, 5, 8, 8)
    target[:, 4, 2:6, 2:6] = 1
    good = torch.zeros_like(target)
    good[:, 4] = (target[:, 4] * 2 - 1) * 8
    bad = -good
    loss = MaskLoss()
    assert loss(good, target) < 0.2 < loss(bad, target)


def test_kl_is_zero_for_the_prior_and_positive_otherwise():
    assert kl_loss(torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)).item() == pytest.approx(0.0, abs=1e-5)
    assert kl_loss(torch.ones(2, 3, 4, 4), torch.ones(2, 3, 4, 4) * 0.5).item() > 0


def test_mutual_information_is_higher_for_dependent_images():
    torch.manual_seed(0)
    a = torch.randn(3, 2, 8, 8)
    mi = MutualInformation()
    same = mi(a, a * 2 + 1)
    independent = mi(a, torch.randn(3, 2, 8, 8))
    assert same.shape == (3,) and (same > independent).all()


def test_mi_regularised_loss_mixes_smooth_l1_and_mi_with_gradients():
    prediction = torch.randn(2, 2, 4, 4, requires_grad=True)
    x0 = torch.randn(2, 2, 4, 4)
    loss, parts = diffusion_loss(prediction, torch.randn(2, 2, 4, 4), prediction * 0.5, x0, MutualInformation(), 0.1)
    loss.backward()
    assert set(parts) == {"smooth_l1", "mi"}
    assert loss.item() == pytest.approx(0.9 * parts["smooth_l1"] + 0.1 * parts["mi"], rel=1e-5)
    assert prediction.grad is not None and prediction.grad.abs().sum() > 0


def test_super_resolution_loss_is_zero_for_a_perfect_output():
    x = torch.randn(2, 5, 16, 16)
    loss = SuperResolutionLoss(2, ssim_weight=0.5)
    assert loss(x, x).item() == pytest.approx(0.0, abs=1e-4)
    assert loss(x + torch.randn_like(x), x).item() > 0.1


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_perceptual_network_is_rebuilt_from_plain_resnet_weights(spatial_dims):
    from monai.networks.nets import resnet10

    source = resnet10(spatial_dims=spatial_dims, n_input_channels=1, feed_forward=False, conv1_t_size=7,
                      conv1_t_stride=2)
    network = perceptual_network_from_weights(source.state_dict(), spatial_dims)
    loss = ResNetPerceptualLoss(network)
    x = torch.randn(1, 5, *([16] * spatial_dims), requires_grad=True)
    value = loss(x, x.detach() + 1)
    value.backward()
    assert value.item() > 0 and x.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="not ResNet"):
        perceptual_network_from_weights({"weight": torch.zeros(3)}, spatial_dims)


def test_samplers_cover_full_ddpm_respaced_ddpm_and_ddim():
    config = tiny_config().diffusion
    full, eta = sampling_scheduler(config, "ddpm", 1000)
    assert type(full).__name__ == "DDPMScheduler" and len(full.timesteps) == 1000
    respaced, eta = sampling_scheduler(config, "ddpm", 10)
    assert type(respaced).__name__ == "DDIMScheduler" and eta == 1.0 and len(respaced.timesteps) == 10
    ddim, eta = sampling_scheduler(config, "ddim", 25)
    assert eta == 0.0 and len(ddim.timesteps) == 25
    with pytest.raises(ValueError):
        sampling_scheduler(config, "ddim", 0)


def test_clip_bounds_the_predicted_clean_latent_of_a_step():
    config = tiny_config().diffusion
    sample, wild = torch.zeros(1, 2, 4, 4), torch.full((1, 2, 4, 4), -50.0)  # an ε far off at large t
    free, _ = sampling_scheduler(config, "ddim", 10)
    clipped, _ = sampling_scheduler(config, "ddim", 10, clip=3.0)
    t = int(free.timesteps[0])
    _, x0_free = free.step(wild, t, sample)
    _, x0_clipped = clipped.step(wild, t, sample)
    assert x0_free.abs().max() > 100 and x0_clipped.abs().max() == pytest.approx(3.0)


def test_latent_normalisation_standardises_each_channel_and_round_trips():
    from catphish.models.autoencoder import LatentNormalisation

    latents = torch.randn(20, 3, 4, 4) * torch.tensor([0.1, 1.0, 3.0]).reshape(1, 3, 1, 1) \
        + torch.tensor([2.0, -1.0, 0.0]).reshape(1, 3, 1, 1)
    norm = LatentNormalisation.fit(latents)
    z = norm.normalise(latents)
    assert torch.allclose(z.mean((0, 2, 3)), torch.zeros(3), atol=1e-5)
    assert torch.allclose(z.std((0, 2, 3)), torch.ones(3), atol=1e-5)
    assert torch.allclose(norm.denormalise(z), latents, atol=1e-5)
    assert norm.clip == pytest.approx(1.5 * float(z.abs().max()), rel=1e-5)
    assert LatentNormalisation.from_tensor(norm.to_tensor()).clip == pytest.approx(norm.clip)


def test_predicted_original_inverts_the_forward_noising():
    scheduler = training_scheduler(tiny_config().diffusion)
    x0, noise = torch.randn(3, 2, 4, 4), torch.randn(3, 2, 4, 4)
    t = torch.tensor([10, 500, 900])
    noisy = scheduler.add_noise(original_samples=x0, noise=noise, timesteps=t)
    assert torch.allclose(predicted_original(scheduler, noisy, noise, t), x0, atol=1e-3)


def test_segmentation_drops_small_components_and_background_is_found_from_the_border():
    probability = np.zeros((16, 16), np.float32)
    probability[4:9, 4:9] = 0.9
    probability[14, 14] = 0.9
    mask = binary_segmentation(probability, 0.5, min_voxels=4)
    assert mask[6, 6] == 1 and mask[14, 14] == 0 and set(np.unique(mask)) == {0.0, 1.0}
    sequences = np.zeros((4, 16, 16), np.float32)
    sequences[:, 3:13, 3:13] = 1.0
    sequences[:, 7, 7] = 0.0  # a dark voxel inside the brain stays brain
    background = border_background(sequences, 0.25)
    assert background[0, 0] and not background[7, 7] and not background[5, 5]
