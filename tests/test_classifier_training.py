"""The framework-free classifier functions every mode calls: train_epochs, predict_subjects, folds, stages."""

import logging

import numpy as np
import pytest
import torch
from torch import nn

from catphish.config import ClassifierConfig
from catphish.data.prepared import PreparedSubject
from catphish.errors import CatphishError, ConfigError
from catphish.training.classifier import (
    build_classifier,
    check_grid,
    class_weights,
    learning_rate,
    predict_subjects,
    train_epochs,
    tumour_window,
    voxel_loss,
)
from catphish.training.cross_validation import assign_folds, train_fold
from catphish.training.ensemble import combine_stages, stage_rows, task_stages

IDH = ["mutant", "wildtype"]
TINY = ClassifierConfig(channels=(4, 8), batch_size=8, epochs=1, folds=2)


def subject(index: int, idh: str, spatial_dims: int = 2, site: str = "TCGA", slices: int = 2) -> PreparedSubject:
    """A subject whose FLAIR is brighter inside the tumour when IDH-mutant."""
    rng = np.random.default_rng(index)
    grid = (16, 16) if spatial_dims == 2 else (16, 16, 16)
    image = rng.normal(size=(slices if spatial_dims == 2 else 1, 5, *grid)).astype(np.float32)
    mask = np.zeros(grid, dtype=np.float32)
    mask[tuple(slice(4, 12) for _ in grid)] = 1
    image[:, 4] = mask
    image[:, 3] += (1.5 if idh == "mutant" else -1.5) * mask
    return PreparedSubject(f"{site}_{index}", site, image, idh=idh)


def cohort(count: int = 8, spatial_dims: int = 2) -> list[PreparedSubject]:
    return [subject(i, IDH[i % 2], spatial_dims) for i in range(count)]


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_train_epochs_reports_loss_counts_and_continuable_state(spatial_dims):
    model = build_classifier(TINY, spatial_dims, 2)
    result = train_epochs(model, cohort(6, spatial_dims), IDH, "idh", TINY, epochs=1, device="cpu", seed=0)
    assert np.isfinite(result["loss"])
    assert result["num_examples"] == 6 and result["class_counts"] == {"mutant": 3, "wildtype": 3}
    assert result["optimizer_state"]["epoch"] == 1 and result["optimizer_state"]["total_epochs"] == 1
    probabilities = predict_subjects(model, cohort(4, spatial_dims), IDH, "cpu")
    assert probabilities.shape == (4, 2)
    assert np.allclose(probabilities.sum(1), 1.0)


def test_subjects_without_the_task_label_are_skipped_with_a_warning(caplog):
    subjects = [*cohort(4), PreparedSubject("TCGA_x", "TCGA", cohort(1)[0].image, idh="")]
    with caplog.at_level(logging.WARNING, logger="catphish"):
        result = train_epochs(build_classifier(TINY, 2, 2), subjects, IDH, "idh", TINY, 1, "cpu", seed=0)
    assert result["num_examples"] == 4
    assert "TCGA_x" in caplog.text and "left out" in caplog.text
    with pytest.raises(CatphishError, match="no training subjects labelled"):
        train_epochs(build_classifier(TINY, 2, 2), subjects[-1:], IDH, "idh", TINY, 1, "cpu", seed=0)


def test_training_learns_a_visible_class_signal():
    config = ClassifierConfig(channels=(4, 8), batch_size=4, epochs=4, lr=0.02, augment=False)
    torch.manual_seed(0)
    model = build_classifier(config, 2, 2)
    train_epochs(model, cohort(8), IDH, "idh", config, epochs=4, device="cpu", seed=1)
    probabilities = predict_subjects(model, cohort(8), IDH, "cpu")
    truth = np.array([i % 2 for i in range(8)])
    assert np.mean(probabilities.argmax(1) == truth) == 1.0


def test_fedprox_term_keeps_weights_near_the_global_model():
    start = build_classifier(TINY, 2, 2)
    distances = []
    for mu in (0.0, 100.0):
        model = build_classifier(TINY, 2, 2)
        model.load_state_dict(start.state_dict())
        global_params = [p.detach().clone() for p in model.parameters()]
        train_epochs(model, cohort(8), IDH, "idh", TINY, 1, "cpu", seed=0, proximal_mu=mu, global_params=global_params)
        pairs = zip(model.parameters(), global_params, strict=True)
        distances.append(sum(float(((p.detach() - g) ** 2).sum()) for p, g in pairs))
    assert distances[1] < distances[0]


class _ChannelLogits(nn.Module):
    """Logits (c0, -c0) per voxel: the predicted 'mutant' probability is sigmoid(2·channel 0)."""

    voxelwise, uses_mask_input, in_channels, divisor = True, False, 4, 1

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.stack([image[:, 0], -image[:, 0]], dim=1)


def test_subject_probability_is_the_mean_over_tumour_voxels_of_all_slices():
    image = np.zeros((2, 5, 4, 4), dtype=np.float32)
    image[:, 0] = 5.0  # outside the tumour: would push towards mutant
    image[0, 4, 0, 0] = image[1, 4, 1, 1] = image[1, 4, 2, 2] = 1
    image[0, 0, 0, 0], image[1, 0, 1, 1], image[1, 0, 2, 2] = 0.0, 1.0, -1.0
    probabilities = predict_subjects(_ChannelLogits(), [PreparedSubject("s", "A", image)], IDH, "cpu")
    expected = np.mean([torch.sigmoid(torch.tensor(2.0 * v)).item() for v in (0.0, 1.0, -1.0)])
    assert probabilities[0, 0] == pytest.approx(expected, abs=1e-6)


def test_voxel_loss_counts_each_sample_once_and_weights_classes():
    logits = torch.zeros(2, 2, 4, 4)
    logits[0, 0] = 3.0  # sample 0 confidently class 0
    masks = torch.zeros(2, 4, 4)
    masks[0, :2] = 1  # 8 tumour voxels
    masks[1, 0, 0] = 1  # 1 tumour voxel
    labels = torch.tensor([0, 1])
    per_sample = torch.tensor([float(torch.nn.functional.cross_entropy(torch.tensor([[3.0, 0.0]]), torch.tensor([0]))),
                               float(np.log(2))])
    weights = torch.tensor([1.0, 3.0])
    expected = (per_sample * weights).sum() / weights.sum()
    assert float(voxel_loss(logits, masks, labels, weights)) == pytest.approx(float(expected), rel=1e-5)
    assert torch.allclose(class_weights([1, 3]), torch.tensor([1.5, 0.5]))
    assert torch.allclose(class_weights([0, 4]), torch.tensor([0.0, 1.0]))


def test_learning_rate_schedules_start_at_lr_and_end_at_zero():
    for schedule in ("poly", "cosine"):
        config = ClassifierConfig(lr=0.1, schedule=schedule)
        assert learning_rate(config, 0.0) == pytest.approx(0.1)
        assert learning_rate(config, 1.0) == pytest.approx(0.0, abs=1e-12)
    assert learning_rate(ClassifierConfig(lr=0.1, schedule="cosine"), 0.5) == pytest.approx(0.05)


def test_folds_are_stratified_by_class_and_site():
    labels = ["mutant", "wildtype"] * 10
    sites = ["A"] * 10 + ["B"] * 10
    folds = assign_folds(labels, sites, folds=5, seed=0)
    for fold in range(5):
        members = np.flatnonzero(folds == fold)
        assert len(members) == 4
        assert sorted(f"{labels[i]}|{sites[i]}" for i in members) == ["mutant|A", "mutant|B", "wildtype|A", "wildtype|B"]
    assert np.array_equal(folds, assign_folds(labels, sites, folds=5, seed=0))


def test_fewer_subjects_than_folds_is_an_error():
    with pytest.raises(CatphishError, match="3 training subject.*fewer than classifier.folds=5"):
        assign_folds(["mutant", "wildtype", "mutant"], ["A"] * 3, folds=5, seed=0)


def test_interrupted_fold_resumes_from_its_checkpoint_to_the_same_weights(tmp_path):
    config = ClassifierConfig(channels=(4, 8), batch_size=4, epochs=2)
    checkpoint = tmp_path / "fold0.safetensors"

    def make_model() -> nn.Module:
        return build_classifier(config, 2, 2)

    def stop_after_first_epoch(epoch: int, loss: float) -> None:
        if epoch == 1:
            raise KeyboardInterrupt

    cpu = torch.device("cpu")
    uninterrupted = train_fold(make_model, cohort(4), IDH, "idh", config, cpu, seed=3, fold=0)
    with pytest.raises(KeyboardInterrupt):
        train_fold(make_model, cohort(4), IDH, "idh", config, cpu, seed=3, fold=0, checkpoint=checkpoint,
                   progress=stop_after_first_epoch)
    resumed = train_fold(make_model, cohort(4), IDH, "idh", config, cpu, seed=3, fold=0, checkpoint=checkpoint)
    assert resumed.resumed_from_epoch == 1 and len(resumed.losses) == 2
    for a, b in zip(uninterrupted.model.state_dict().values(), resumed.model.state_dict().values(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_two_stage_tumour_type_combines_into_three_classes():
    stage1, stage2 = task_stages("tumor_type")
    assert stage1.class_names == ("glioblastoma", "lower-grade")
    assert stage2.relabel == {"oligodendroglioma": "oligodendroglioma", "astrocytoma": "astrocytoma"}
    combined = combine_stages("tumor_type", {"stage1": np.array([[0.2, 0.8]]), "stage2": np.array([[0.25, 0.75]])})
    assert np.allclose(combined, [[0.8 * 0.25, 0.8 * 0.75, 0.2]])
    row = stage_rows("tumor_type", "stage1", np.array([[0.2, 0.8]]))[0]
    assert row["glioblastoma"] == pytest.approx(0.2) and row["oligodendroglioma"] == pytest.approx(0.4)
    # p(GBM) = 0.4 < 0.5: with stage 2's choice the row's argmax is a lower-grade class, as stage 1 decides
    row = stage_rows("tumor_type", "stage1", np.array([[0.4, 0.6]]), np.array([[0.25, 0.75]]))[0]
    assert row == pytest.approx({"oligodendroglioma": 0.0, "astrocytoma": 0.6, "glioblastoma": 0.4})
    astro = PreparedSubject("s", "A", np.zeros((1, 5, 4, 4), np.float32), tumor_type="astrocytoma")
    assert stage1.relabelled(astro, "tumor_type").tumor_type == "lower-grade"
    assert stage1.relabelled(astro, "tumor_type").image is astro.image


def test_tumour_window_is_centred_on_the_tumour_and_stays_inside_the_grid():
    mask = np.zeros((16, 16), dtype=np.float32)
    mask[10:14, 2:4] = 1
    assert tumour_window(mask, (8, 8)) == (slice(8, 16), slice(0, 8))  # centre (12, 3), clipped at the edges
    mask[:] = 0
    mask[7:9, 7:9] = 1
    assert tumour_window(mask, (8, 8)) == (slice(4, 12), slice(4, 12))
    rng = np.random.default_rng(0)
    for _ in range(20):
        cut = tumour_window(mask, (8, 8), rng)
        assert all(2 <= s.start <= 6 and s.stop - s.start == 8 for s in cut)  # shifted by at most a quarter window


def test_windowed_model_trains_and_predicts_on_the_tumour_window():
    config = ClassifierConfig(channels=(4, 8), batch_size=8, window=8)
    model = build_classifier(config, 2, 2)
    assert model.window == 8
    result = train_epochs(model, cohort(4), IDH, "idh", config, 1, "cpu", seed=0)
    assert np.isfinite(result["loss"])
    assert predict_subjects(model, cohort(2), IDH, "cpu").shape == (2, 2)
    with pytest.raises(ConfigError, match="classifier.window"):
        check_grid(build_classifier(ClassifierConfig(channels=(4, 8, 16), window=6), 2, 2), (16, 16))
