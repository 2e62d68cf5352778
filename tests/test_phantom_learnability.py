"""The phantom is learnable but not trivial, and its sites differ: checked on the generator's own output.

Subjects come from :func:`generate_subject` (the same generator `catphish data phantom` writes) on the 4 mm atlas grid,
so the whole scale-0.1 consortium (~260 subjects) fits in the test budget.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from catphish.data.phantom import PhantomSubject, generate_subject, plan_cohort

SEED = 0
RESOLUTION_MM = 4.0
TRAINING_SITES = ("TCGA", "UTSW", "EGD")


def tumour_features(subject: PhantomSubject) -> list[float]:
    """Hand-made radiology features: per-sequence tumour intensity statistics relative to normal-appearing brain,
    the T1C/T1 enhancement ratio and the T2/FLAIR ratio (mismatch sign)."""
    images = subject.images.astype(np.float32)
    whole = subject.segmentation > 0
    core = np.isin(subject.segmentation, (1, 4))
    core = core if core.any() else whole
    normal = subject.brain & ~whole
    relative = images / np.array([np.median(images[c][normal]) for c in range(4)], np.float32)[:, None, None, None]
    features: list[float] = []
    for c in range(4):
        values = relative[c][whole]
        features += [values.mean(), values.std(), *np.percentile(values, [10, 90]), relative[c][core].mean()]
    enhancement = relative[1] / np.maximum(relative[0], 1e-3)
    t2_over_flair = relative[2] / np.maximum(relative[3], 1e-3)
    features += [enhancement[core].mean(), (enhancement[whole] > 1.3).mean(), np.percentile(enhancement[whole], 95),
                 t2_over_flair[core].mean(), t2_over_flair[whole].mean()]
    return [float(v) for v in features]


def brain_intensity_features(subject: PhantomSubject) -> tuple[list[float], list[float]]:
    """Whole-brain intensity statistics per sequence: raw, and divided by the median (scale removed)."""
    raw, shape = [], []
    for c in range(4):
        values = subject.images[c][subject.brain].astype(np.float32)
        quantiles = np.percentile(values, [1, 5, 25, 50, 75, 95, 99])
        raw += [*quantiles, values.mean(), values.std()]
        shape += [*(quantiles / quantiles[3]), values.std() / quantiles[3]]
    return raw, shape


@pytest.fixture(scope="module")
def consortium() -> dict[str, np.ndarray]:
    plans = plan_cohort(0.1, SEED)
    rows = {"tumour": [], "raw": [], "shape": [], "idh": [], "site": [], "split": []}
    for plan in plans:
        subject = generate_subject(plan, SEED, RESOLUTION_MM)
        raw, shape = brain_intensity_features(subject)
        rows["tumour"].append(tumour_features(subject))
        rows["raw"].append(raw)
        rows["shape"].append(shape)
        rows["idh"].append(plan.idh == "wildtype")
        rows["site"].append(plan.site)
        rows["split"].append(plan.split)
    return {key: np.array(value) for key, value in rows.items()}


def test_idh_is_learnable_across_sites_but_not_trivially(consortium: dict[str, np.ndarray]) -> None:
    train = np.isin(consortium["site"], TRAINING_SITES)
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(consortium["tumour"][train], consortium["idh"][train])
    scores = model.predict_proba(consortium["tumour"][~train])[:, 1]
    auc = roc_auc_score(consortium["idh"][~train], scores)
    print(f"IDH AUC on the test sites (NYU, UWM, UCSF, UPenn, UTSWp2): {auc:.3f}")
    assert set(consortium["site"][~train]) == {"NYU", "UWM", "UCSF", "UPenn", "UTSWp2"}
    assert 0.75 <= auc <= 0.98


def test_sites_are_identifiable_from_whole_brain_intensities(consortium: dict[str, np.ndarray]) -> None:
    folds = StratifiedKFold(3, shuffle=True, random_state=0)
    chance = 1 / len(set(consortium["site"]))
    for kind, floor in (("raw", 0.8), ("shape", 0.5)):
        model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=3000))
        accuracy = cross_val_score(model, consortium[kind], consortium["site"], cv=folds).mean()
        print(f"site identification from {kind} brain intensity statistics: {accuracy:.3f} (chance {chance:.3f})")
        assert accuracy >= floor > 3 * chance
