"""Site-side privacy work (runs where the real data are; only aggregate numbers and screened synthetic cases leave).

``audit_package``: generate M cases and compare them with the site's training cases and its held-out cases
(nearest-neighbour SSIM / RMSE / max Pearson, feature-space distance, SSIM-distance membership-inference attack); the
numbers and a histogram figure go into the package (card ``audit`` section, manifest rewritten through artifacts).

``share_synthetic``: the PE-LDM safeguard — generate N cases and block every case whose nearest training case in feature
space is closer than a threshold calibrated on real-to-real nearest distances; writes the screened cohort and a report.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from catphish.artifacts import (
    atomic_output_path,
    open_output_dir,
    read_json,
    run_record,
    updated_folder,
    write_json,
    write_manifest,
)
from catphish.audit.features import FeatureSpace, feature_space
from catphish.audit.memorisation import PrivacyScreen, membership_inference_auc, nearest_neighbour_scores
from catphish.data.writing import LABELS_NAME, write_case, write_label_rows
from catphish.errors import CatphishError
from catphish.runtime import log, resolve_device

AUDIT_FIGURE = "audit.png"


@dataclass(frozen=True)
class SiteData:
    train_images: np.ndarray
    holdout_images: np.ndarray


def site_images(package: Any, data_dir: Path, cache_dir: Path | None) -> SiteData:
    """The site's training and held-out images, split exactly as when the package was trained (same seed)."""
    from catphish.modes.classification import load_subjects
    from catphish.training.ldm import select_site_cohort

    subjects = load_subjects(data_dir, package.config, [package.site], cache_dir, skip_invalid=False)
    cohort = select_site_cohort(subjects, package.site, package.task, package.config, seed=int(package.card["seed"]))
    if len(cohort.holdout_images) == 0:
        raise CatphishError(f"site '{package.site}': the package was trained without held-out subjects "
                            "(autoencoder.holdout_fraction = 0); the membership attack needs non-members")
    return SiteData(cohort.train_images, cohort.holdout_images)


def generate_balanced(package: Any, n: int, seed: int, device: Any) -> tuple[np.ndarray, list[str]]:
    """``n`` cases spread evenly over the package's classes."""
    from catphish.synthesis.sampling import sample_cases

    if n <= 0:
        raise CatphishError(f"number of generated cases must be at least 1, got {n}")
    classes = list(package.class_names)
    counts = [n // len(classes) + (i < n % len(classes)) for i in range(len(classes))]
    cases, labels = [], []
    for index, (name, count) in enumerate(zip(classes, counts, strict=True)):
        if count:
            cases.append(sample_cases(package, name, count, seed=seed + index, device=device))
            labels += [name] * count
    return np.concatenate(cases), labels


# ---------------------------------------------------------------------------------------------------------- audit
def audit_package(package_dir: str | Path, data_dir: str | Path, n: int = 64, features: str | None = None,
                  cache_dir: str | Path | None = None, seed: int = 0, max_pearson_limit: float | None = None,
                  mia_auc_limit: float | None = None) -> dict[str, Any]:
    """Run the audit, store it in the package and return it; raise when a limit is exceeded (after storing)."""
    from catphish.modes.site_package import CARD_FILE, PACKAGE_KIND, load_site_package

    folder = Path(package_dir)
    device = resolve_device()
    package = load_site_package(folder, device=device)
    data = site_images(package, Path(data_dir), Path(cache_dir) if cache_dir else None)
    space = feature_space(features or package.config.evaluation.audit_features, package, device)
    synthetic, _ = generate_balanced(package, n, seed, device)
    audit = _measure(synthetic, data, space)
    limits = {"max_pearson": max_pearson_limit, "mia_auc": mia_auc_limit}
    failures = _failures(audit, limits)
    audit.update(generated_cases=len(synthetic), seed=seed, limits=limits, passed=not failures,
                 failures=failures)
    distributions = audit.pop("_distributions")
    card = read_json(folder / CARD_FILE)
    card["audit"] = audit
    with updated_folder(folder) as staging:  # a kill mid-way leaves the package as it was, never half-updated
        _histograms(staging / AUDIT_FIGURE, distributions, package.site)
        write_json(staging / CARD_FILE, card)
        write_manifest(staging, kind=PACKAGE_KIND)
    if failures:
        raise CatphishError(f"privacy audit of site '{package.site}' FAILED: {'; '.join(failures)} "
                            "(numbers stored in the package card)")
    return audit


def _measure(synthetic: np.ndarray, data: SiteData, space: FeatureSpace) -> dict[str, Any]:
    to_train = nearest_neighbour_scores(synthetic, data.train_images)
    to_holdout = nearest_neighbour_scores(synthetic, data.holdout_images)
    train_features = space.embed(data.train_images)
    screen = PrivacyScreen().fit(train_features)
    synthetic_distance = screen.nearest_distance(space.embed(synthetic))
    holdout_distance = screen.nearest_distance(space.embed(data.holdout_images))
    mia = membership_inference_auc(synthetic, data.train_images, data.holdout_images)
    return {
        "training_images": len(data.train_images),
        "holdout_images": len(data.holdout_images),
        "nearest_to_training": to_train.summary(),
        "nearest_to_holdout": to_holdout.summary(),
        "memorisation_max_pearson": float(to_train.max_pearson.max()),
        "feature_space": {"name": space.name, "description": space.description,
                          "synthetic_to_training_median": float(np.median(synthetic_distance)),
                          "holdout_to_training_median": float(np.median(holdout_distance)),
                          "real_to_real_median": float(np.median(screen.real_nearest_)),
                          "synthetic_closer_than_5th_percentile_real": float(np.mean(synthetic_distance
                                                                                      < screen.threshold_))},
        "membership_inference": {"attack": "SSIM distance (members: training, non-members: held-out)",
                                 "auc": mia, "reference": "CATphishing reports 0.493; 0.5 = no leakage"},
        "_distributions": {"ssim_train": to_train.max_ssim, "ssim_holdout": to_holdout.max_ssim,
                           "pearson_train": to_train.max_pearson, "pearson_holdout": to_holdout.max_pearson,
                           "feature_synthetic": synthetic_distance, "feature_holdout": holdout_distance,
                           "feature_real": screen.real_nearest_},
    }


def _failures(audit: dict[str, Any], limits: dict[str, float | None]) -> list[str]:
    failures = []
    if limits["max_pearson"] is not None and audit["memorisation_max_pearson"] > limits["max_pearson"]:
        failures.append(f"max Pearson correlation to a training case {audit['memorisation_max_pearson']:.3f} > "
                        f"limit {limits['max_pearson']}")
    if limits["mia_auc"] is not None and audit["membership_inference"]["auc"] > limits["mia_auc"]:
        failures.append(f"membership-inference AUC {audit['membership_inference']['auc']:.3f} > limit "
                        f"{limits['mia_auc']}")
    return failures


def _histograms(path: Path, d: dict[str, np.ndarray], site: str) -> None:
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.4))
    panels = (("max SSIM to a real case", "ssim"), ("max Pearson r to a real case", "pearson"))
    for ax, (title, key) in zip(axes[:2], panels, strict=True):
        ax.hist(d[f"{key}_train"], bins=20, alpha=0.6, label="synthetic → training")
        ax.hist(d[f"{key}_holdout"], bins=20, alpha=0.6, label="synthetic → held-out")
        ax.set_title(title)
        ax.legend(fontsize=8)
    axes[2].hist(d["feature_real"], bins=20, alpha=0.5, label="training → training (real)")
    axes[2].hist(d["feature_holdout"], bins=20, alpha=0.5, label="held-out → training")
    axes[2].hist(d["feature_synthetic"], bins=20, alpha=0.5, label="synthetic → training")
    axes[2].set_title("nearest distance in feature space")
    axes[2].legend(fontsize=8)
    fig.suptitle(f"Privacy audit, site {site} (aggregate distributions only)")
    fig.tight_layout()
    with atomic_output_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


# ---------------------------------------------------------------------------------------------- synthetic sharing
def share_synthetic(package_dir: str | Path, data_dir: str | Path, n: int, out: str | Path,
                    features: str | None = None, percentile: float = 5.0, cache_dir: str | Path | None = None,
                    seed: int = 0, overwrite: bool = False) -> dict[str, Any]:
    """Generate ``n`` cases, block those too close to a training case, write the rest in the data contract."""
    from catphish.modes.site_package import load_site_package

    if not 0.0 < percentile < 100.0:
        raise CatphishError(f"--percentile must be in (0, 100), got {percentile}")
    if n <= 0:
        raise CatphishError(f"--n must be at least 1, got {n}")
    device = resolve_device()
    package = load_site_package(package_dir, device=device)
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise CatphishError(f"{out}: shared cohort folder already exists (use --overwrite to replace it)")
    # everything that can fail on bad input happens before the output folder is made
    data = site_images(package, Path(data_dir), Path(cache_dir) if cache_dir else None)
    space = feature_space(features or package.config.evaluation.audit_features, package, device)
    screen = PrivacyScreen(percentile).fit(space.embed(data.train_images))
    synthetic, labels = generate_balanced(package, n, seed, device)
    distance = screen.nearest_distance(space.embed(synthetic))
    allowed = distance >= screen.threshold_
    open_output_dir(out, {"package": str(Path(package_dir).resolve()), "n": n, "percentile": percentile,
                          "features": features, "seed": seed}, overwrite=overwrite, what="shared cohort",
                    resumable=False)
    with run_record(out, "site share-synthetic", None, seed, inputs=[package_dir]) as record:
        rows = _write_shared(out, package, synthetic[allowed], [c for c, a in zip(labels, allowed, strict=True) if a])
        report = {"site": package.site, "task": package.task, "generated": int(n), "blocked": int((~allowed).sum()),
                  "shared": len(rows), "threshold": screen.threshold_, "percentile": percentile,
                  "feature_space": space.name, "real_to_real_nearest_median": float(np.median(screen.real_nearest_)),
                  "blocked_by_class": {c: int(sum(1 for lab, a in zip(labels, allowed, strict=True)
                                                  if lab == c and not a)) for c in package.class_names}}
        write_json(out / "screen_report.json", report)
        record.add(report=report)
    write_manifest(out, kind="synthetic-cohort")
    log.info("%s: %d generated, %d blocked, %d shared", package.site, n, report["blocked"], report["shared"])
    return report


def _write_shared(out: Path, package: Any, cases: np.ndarray, labels: list[str]) -> list[dict[str, str]]:
    site = f"synthetic-{package.site}"
    rows = []
    for number, (case, class_name) in enumerate(zip(cases, labels, strict=True), start=1):
        subject_id = f"{site}-{class_name}-{number:05d}"
        write_case(out / site / subject_id, subject_id, case, package.config.data.spacing_mm)
        row = {"subject_id": subject_id, "site": site, "idh": "", "tumor_type": "", "split": "train",
               "source_task": package.task, "screened": "pe-ldm"}
        row[package.task] = class_name
        rows.append(row)
    write_label_rows(out / LABELS_NAME, rows)
    return rows
