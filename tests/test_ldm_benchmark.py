"""The class-fidelity judge of `catphish bench ldm` (radiomics + logistic regression), on arrays."""

import numpy as np

from catphish.modes.site_benchmark import case_features, class_fidelity, fidelity_figure, real_features
from ldm_fixtures import tiny_subjects


def test_judge_recognises_cases_that_carry_the_class_phenotype(tmp_path):
    classes = ("mutant", "wildtype")
    real = real_features(tiny_subjects(per_class=5), "idh", classes)
    generated = tiny_subjects(per_class=4, seed=1)
    cases = np.stack([s.image[0] for s in generated])
    labels = [classes.index(s.idh) for s in generated]
    fidelity = class_fidelity(real, case_features(cases, labels), classes)
    assert fidelity["real_to_synthetic_auc"] > 0.9 and fidelity["real_to_real_cv_auc"] > 0.9
    assert fidelity["synthetic_assigned_to_own_class"]["wildtype"] > 0.5
    swapped = class_fidelity(real, case_features(cases, [1 - y for y in labels]), classes)
    assert swapped["real_to_synthetic_auc"] < 0.1
    assert fidelity_figure(tmp_path / "fidelity.png", fidelity, "tiny").stat().st_size > 0


def test_cases_with_an_empty_mask_are_left_out():
    cases = np.stack([s.image[0] for s in tiny_subjects(per_class=1)])
    cases[0, 4] = 0
    features = case_features(cases, [0, 1])
    assert len(features.labels) == 1 and features.labels[0] == 1


# ------------------------------------------------------------------------------------------ the bench commands
def _bench(*args):
    from typer.testing import CliRunner

    from catphish.cli import app

    result = CliRunner().invoke(app, ["--quiet", "bench", *args], catch_exceptions=True)
    assert result.exit_code == 0, result.output + repr(result.exception)
    return result


def _tiny_sets():
    from ldm_fixtures import TINY_2D

    return [arg for item in TINY_2D for arg in ("--set", item)]


def test_bench_ldm_trains_judges_and_writes_its_section(tmp_path):
    import json

    from ldm_fixtures import write_prepared

    data = write_prepared(tmp_path / "prepared", tiny_subjects(per_class=4))
    benchmarks = tmp_path / "BENCHMARKS.md"
    _bench("ldm", "--data", str(data), "--site", "alpha", "--out", str(tmp_path / "ldm"), "--per-class", "3",
           "--benchmarks", str(benchmarks), *_tiny_sets())
    result = json.loads((tmp_path / "ldm" / "ldm_benchmark.json").read_text())
    assert set(result["stages"]) == {"autoencoder", "diffusion"} and result["sampling"]["cases"] == 6
    assert 0.0 <= result["class_fidelity"]["real_to_real_cv_auc"] <= 1.0
    text = benchmarks.read_text()
    assert "<!-- bench:ldm -->" in text and "s/step" in text and "Class fidelity" in text


def test_bench_mi_trains_the_site_with_and_without_the_regulariser(tmp_path):
    import json

    from catphish.artifacts import read_json
    from ldm_fixtures import write_prepared

    data = write_prepared(tmp_path / "prepared", tiny_subjects(per_class=4))
    benchmarks = tmp_path / "BENCHMARKS.md"
    _bench("mi", "--data", str(data), "--site", "alpha", "--out", str(tmp_path / "mi"), "--per-class", "2",
           "--audit-cases", "4", "--benchmarks", str(benchmarks), *_tiny_sets())
    result = json.loads((tmp_path / "mi" / "mi_benchmark.json").read_text())
    assert list(result["variants"]) == ["without MI", "with MI"]
    # the two packages really differ in their loss: MSE without, smooth-L1 + MI with
    assert set(result["variants"]["without MI"]["final_losses"]) == {"loss", "mse"}
    assert {"smooth_l1", "mi"} <= set(result["variants"]["with MI"]["final_losses"])
    for values in result["variants"].values():
        assert -1.0 <= values["memorisation_max_pearson"] <= 1.0 and 0.0 <= values["membership_inference_auc"] <= 1.0
    assert read_json(tmp_path / "mi" / "with-mi" / "card.json")["audit"]["generated_cases"] == 4
    assert "<!-- bench:mi -->" in benchmarks.read_text() and "max Pearson to training" in benchmarks.read_text()
