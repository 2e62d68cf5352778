"""Training the site model: stages, exact resume after an interrupt, options (SR, perceptual, MI, DP), bad input."""

import csv

import numpy as np
import pytest
import torch

import catphish.training.ldm as ldm
from catphish.artifacts import save_tensors
from catphish.errors import CatphishError
from catphish.models.losses import perceptual_network_from_weights
from catphish.training.ldm import select_site_cohort, train_site_model
from ldm_fixtures import tiny_config, tiny_subjects

CPU = torch.device("cpu")


def _train(tmp_path, config, subjects=None, name="work", **kwargs):
    cohort = select_site_cohort(subjects or tiny_subjects(), "alpha", "idh", config, seed=0)
    return train_site_model(cohort, config, tmp_path / name, device=CPU, seed=0, show_progress=False, **kwargs)


def _weights(model):
    state = {f"ae.{k}": v for k, v in model.autoencoder.state_dict().items()}
    state.update({f"diffusion.{k}": v for k, v in model.diffusion.state_dict().items()})
    return state


def _interrupt_on_call(monkeypatch, name, call):
    original = getattr(ldm, name)
    calls = {"n": 0}

    def wrapper(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            raise KeyboardInterrupt
        return original(*args, **kwargs)

    monkeypatch.setattr(ldm, name, wrapper)


def test_interrupted_training_resumes_to_identical_weights(tmp_path, monkeypatch):
    config = tiny_config(2, "autoencoder.steps=3", "diffusion.steps=3")
    reference = _weights(_train(tmp_path, config, name="uninterrupted"))

    # Ctrl-C inside the 3rd autoencoder step: the checkpoint after step 2 is kept
    with monkeypatch.context() as patch:
        _interrupt_on_call(patch, "kl_loss", 3)
        with pytest.raises(KeyboardInterrupt):
            _train(tmp_path, config, name="interrupted")
    assert (tmp_path / "interrupted" / "autoencoder.safetensors").exists()
    # resumed, then Ctrl-C inside the 2nd diffusion step
    with monkeypatch.context() as patch:
        _interrupt_on_call(patch, "diffusion_loss", 2)
        with pytest.raises(KeyboardInterrupt):
            _train(tmp_path, config, name="interrupted")
    resumed = _train(tmp_path, config, name="interrupted")

    for key, value in reference.items():
        assert torch.equal(value, _weights(resumed)[key]), key
    rows = list(csv.DictReader((tmp_path / "interrupted" / "metrics.csv").open()))
    steps = [(row["stage"], int(row["step"])) for row in rows]
    assert steps == [("autoencoder", 1), ("autoencoder", 2), ("autoencoder", 3),
                     ("diffusion", 1), ("diffusion", 2), ("diffusion", 3)]
    assert resumed.stages["autoencoder"]["steps"] == 3 and "l1" in resumed.stages["autoencoder"]["final_losses"]


def test_a_finished_stage_is_not_retrained(tmp_path, monkeypatch):
    config = tiny_config()
    first = _weights(_train(tmp_path, config))

    def fail(*args, **kwargs):
        raise AssertionError("a finished stage ran a training step")

    monkeypatch.setattr(ldm, "kl_loss", fail)
    monkeypatch.setattr(ldm, "diffusion_loss", fail)
    again = _weights(_train(tmp_path, config))
    assert all(torch.equal(first[k], again[k]) for k in first)


def test_options_super_resolution_perceptual_mutual_information_and_dp(tmp_path):
    from monai.networks.nets import resnet10

    weights = tmp_path / "resnet10.safetensors"
    save_tensors(weights, resnet10(spatial_dims=2, n_input_channels=1, feed_forward=False, conv1_t_size=7,
                                   conv1_t_stride=2).state_dict())
    config = tiny_config(2, "autoencoder.super_resolution=true", "autoencoder.super_resolution_steps=2",
                         "diffusion.mutual_information=true", "diffusion.differential_privacy=true",
                         "diffusion.dp_noise_multiplier=1.0", f"autoencoder.perceptual_weights={weights}")
    network = perceptual_network_from_weights(__import__("catphish.artifacts").artifacts.load_tensors(weights), 2)
    model = _train(tmp_path, config, perceptual_network=network)
    assert set(model.stages) == {"autoencoder", "super_resolution", "diffusion"}
    assert "perceptual" in model.stages["autoencoder"]["final_losses"]
    assert {"smooth_l1", "mi"} <= set(model.stages["diffusion"]["final_losses"])
    privacy = model.differential_privacy
    assert privacy["unit"] == "subject" and 0 < privacy["epsilon"] < float("inf") and privacy["delta"] == 1e-5
    decoded = model.autoencoder.decode(torch.zeros(1, 2, 4, 4))
    assert decoded.shape == (1, 5, 16, 16)  # the SR head restores the full grid from the half-resolution decoder


def test_three_dimensional_site_model_trains_and_reports_reconstruction(tmp_path):
    config = tiny_config(3)
    model = _train(tmp_path, config, subjects=tiny_subjects(spatial_dims=3))
    quality = model.reconstruction
    assert set(quality["psnr_db"]) == {"t1", "t1c", "t2", "flair"} and 0 <= quality["mask_dice"] <= 1
    norm = model.latent_normalisation
    assert len(norm.shift) == len(norm.scale) == config.autoencoder.latent_channels
    assert min(norm.scale) > 0 and norm.clip > 0


def test_out_of_gpu_memory_is_a_clear_error(tmp_path, monkeypatch):
    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(ldm, "kl_loss", out_of_memory)
    with pytest.raises(CatphishError, match="out of GPU memory.*autoencoder.batch_size=4.*smaller preset"):
        _train(tmp_path, tiny_config())


# ------------------------------------------------------------------------------------------------- bad input
def test_site_not_in_the_data_is_named():
    with pytest.raises(CatphishError, match="site 'omega' is not in the data \\(sites: alpha\\)"):
        select_site_cohort(tiny_subjects(), "omega", "idh", tiny_config(), seed=0)


def test_a_site_with_one_class_cannot_train_a_conditional_model():
    subjects = [s for s in tiny_subjects() if s.idh == "wildtype"]
    with pytest.raises(CatphishError, match="only class 'wildtype'.*at least two classes"):
        select_site_cohort(subjects, "alpha", "idh", tiny_config(), seed=0)


def test_too_few_subjects_for_the_held_out_split():
    with pytest.raises(CatphishError, match="too few subjects.*held-out split.*class 'mutant' has 2"):
        select_site_cohort(tiny_subjects(per_class=2), "alpha", "idh", tiny_config(2, "autoencoder.holdout_fraction=0.5"),
                           seed=0)


def test_prepared_data_of_another_grid_is_refused():
    with pytest.raises(CatphishError, match=r"shape \(5, 16, 16\).*needs \(5, 32, 32\)"):
        select_site_cohort(tiny_subjects(), "alpha", "idh", tiny_config(2, "data.grid=[32,32]"), seed=0)


def test_a_grid_the_data_cannot_fill_is_refused():
    subjects = tiny_subjects()
    for subject in subjects:  # a brain that covers a 3-voxel corner of the 16×16 grid
        subject.image[:, :4] = 0
        subject.image[:, :4, :3, :3] = 1.0
    with pytest.raises(CatphishError, match="cannot fill preset 'demo' grid"):
        select_site_cohort(subjects, "alpha", "idh", tiny_config(), seed=0)


def test_cohort_holds_out_subjects_stratified_and_keeps_test_subjects_out():
    subjects = tiny_subjects(per_class=4)
    subjects[0].split = "test"
    cohort = select_site_cohort(subjects, "alpha", "idh", tiny_config(), seed=0)
    assert cohort.holdout_subjects == {"mutant": 1, "wildtype": 1}
    assert cohort.train_subjects == {"mutant": 2, "wildtype": 3}
    assert len(cohort.train_images) == 5 * 3 and np.all(np.isin(cohort.train_labels, [0, 1]))
