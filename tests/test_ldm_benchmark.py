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
