"""The classifier networks: voxel-wise residual UNet (with and without the state-space block) and the CNN baseline."""

import pytest
import torch

from catphish.config import ClassifierConfig
from catphish.errors import ConfigError
from catphish.models.classifier import ResidualUNet, SelectiveStateSpace, TumourCNN, selective_scan
from catphish.training.classifier import build_classifier, check_grid

SHAPES = {2: (16, 16), 3: (16, 16, 16)}


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("mamba", [False, True])
def test_residual_unet_gives_logits_for_every_voxel(spatial_dims, mamba):
    model = build_classifier(ClassifierConfig(channels=(4, 8), mamba=mamba), spatial_dims, num_classes=3)
    assert isinstance(model, ResidualUNet)
    logits = model(torch.randn(2, 4, *SHAPES[spatial_dims]))
    assert logits.shape == (2, 3, *SHAPES[spatial_dims])
    logits.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_cnn_baseline_gives_one_prediction_per_image(spatial_dims):
    model = build_classifier(ClassifierConfig(model="cnn", channels=(4, 8)), spatial_dims, num_classes=2)
    assert isinstance(model, TumourCNN) and model.uses_mask_input
    image = torch.randn(3, 5, *SHAPES[spatial_dims])
    image[:, 4] = (image[:, 4] > 0).float()
    assert model(image).shape == (3, 2)


def test_selective_scan_equals_the_sequential_recurrence():
    torch.manual_seed(0)
    batch, length, heads, head_dim, state = 2, 21, 3, 4, 5
    x = torch.randn(batch, length, heads, head_dim)
    log_decay = -torch.rand(batch, length, heads)
    b, c = torch.randn(batch, length, heads, state), torch.randn(batch, length, heads, state)
    h = torch.zeros(batch, heads, head_dim, state)
    expected = []
    for t in range(length):
        h = torch.exp(log_decay[:, t])[..., None, None] * h + x[:, t][..., None] * b[:, t][:, :, None, :]
        expected.append(torch.einsum("bhpn,bhn->bhp", h, c[:, t]))
    assert torch.allclose(selective_scan(x, log_decay, b, c, chunk=8), torch.stack(expected, 1), atol=1e-4)


def test_state_space_block_keeps_shape_and_mixes_tokens():
    torch.manual_seed(0)
    block = SelectiveStateSpace(8, state_size=4)
    tokens = torch.randn(1, 10, 8)
    out = block(tokens)
    assert out.shape == tokens.shape
    changed = tokens.clone()
    changed[0, 0] += torch.randn(8)
    assert (block(changed)[0, -1] - out[0, -1]).abs().max() > 1e-6  # the first token reaches the last one


def test_grid_that_does_not_halve_is_a_config_error():
    model = build_classifier(ClassifierConfig(channels=(4, 8, 16)), 2, num_classes=2)
    with pytest.raises(ConfigError, match="divisible by 4"):
        check_grid(model, (18, 16))


def test_unknown_model_and_too_few_classes_are_config_errors():
    with pytest.raises(ConfigError, match="two classes"):
        build_classifier(ClassifierConfig(channels=(4, 8)), 2, num_classes=1)
    config = ClassifierConfig(channels=(4, 8))
    config.model = "vit"  # type: ignore[assignment]
    with pytest.raises(ConfigError, match="unknown classifier.model"):
        build_classifier(config, 2, num_classes=2)
