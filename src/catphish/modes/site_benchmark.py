"""Does a site package carry its classes' phenotypes? And what did it cost to train? (`catphish bench ldm`)

Class fidelity is judged with whole-tumour radiomics features (``synthesis.radiomics``) and a logistic regression:

- **real → synthetic**: a judge trained on the site's real images labels generated cases of each class
  (AUC, and the share of each generated class the judge assigns to it);
- **synthetic → real**: the same model trained on generated cases only, tested on the site's real images;
- **real → real**: subject-grouped 5-fold cross-validation on the real images, the reference.

Everything runs at the site: real images never leave it; only these aggregate numbers are written.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupKFold
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from catphish.artifacts import atomic_output_path, run_record, write_json
from catphish.config import StudyConfig
from catphish.data.prepared import PreparedSubject
from catphish.errors import CatphishError
from catphish.modes.classification import load_subjects
from catphish.modes.site_package import SitePackage, TrainRequest, load_site_package, train_site_package
from catphish.reporting.benchmarks import machine_line, markdown_table, peak_gpu_mb, peak_rss_mb, update_section
from catphish.runtime import log
from catphish.synthesis.radiomics import tumour_features
from catphish.synthesis.sampling import sample_cases


@dataclass
class FeatureSet:
    features: np.ndarray
    labels: np.ndarray
    groups: np.ndarray


def case_features(cases: np.ndarray, labels: Sequence[int], groups: Sequence[int] | None = None) -> FeatureSet:
    """Radiomics features of every case ``(5, *grid)``; cases with an empty mask are dropped."""
    rows = np.stack([tumour_features(case) for case in cases]) if len(cases) else np.zeros((0, 1))
    keep = np.isfinite(rows).all(axis=1)
    labels = np.asarray(labels)
    groups = np.asarray(groups if groups is not None else np.arange(len(cases)))
    return FeatureSet(rows[keep], labels[keep], groups[keep])


def real_features(subjects: Sequence[PreparedSubject], task: str, class_names: Sequence[str]) -> FeatureSet:
    """Features of every real image (each 2D slice or 3D volume) of the site's subjects labelled for ``task``."""
    cases, labels, groups = [], [], []
    for index, subject in enumerate(subjects):
        if subject.label(task) not in class_names:
            continue
        for image in subject.image:
            cases.append(image)
            labels.append(list(class_names).index(subject.label(task)))
            groups.append(index)
    return case_features(np.asarray(cases), labels, groups)


def _judge() -> Any:
    return make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=2000, class_weight="balanced"))


def _auc(labels: np.ndarray, probabilities: np.ndarray) -> float:
    if len(np.unique(labels)) < 2:
        return float("nan")
    if probabilities.shape[1] == 2:
        return float(roc_auc_score(labels, probabilities[:, 1]))
    return float(roc_auc_score(labels, probabilities, multi_class="ovr", average="macro",
                               labels=list(range(probabilities.shape[1]))))


def class_fidelity(real: FeatureSet, synthetic: FeatureSet, class_names: Sequence[str], seed: int = 0) -> dict[str, Any]:
    """Real→synthetic, synthetic→real and real→real (grouped CV) AUCs of a radiomics logistic-regression judge."""
    judge = _judge().fit(real.features, real.labels)
    on_synthetic = (judge.predict_proba(synthetic.features) if len(synthetic.labels)
                    else np.zeros((0, len(class_names))))
    predicted = on_synthetic.argmax(axis=1)
    per_class = {name: float(np.mean(predicted[synthetic.labels == i] == i)) if np.any(synthetic.labels == i) else None
                 for i, name in enumerate(class_names)}
    reverse = _judge().fit(synthetic.features, synthetic.labels) if len(np.unique(synthetic.labels)) > 1 else None
    folds = min(5, len(np.unique(real.groups)))
    reference = np.zeros((len(real.labels), len(class_names)))
    for train, test in GroupKFold(n_splits=folds).split(real.features, real.labels, real.groups):
        model = _judge().fit(real.features[train], real.labels[train])
        reference[test] = model.predict_proba(real.features[test])
    return {
        "real_to_synthetic_auc": round(_auc(synthetic.labels, on_synthetic), 4),
        "synthetic_assigned_to_own_class": {k: (round(v, 4) if v is not None else None) for k, v in per_class.items()},
        "synthetic_to_real_auc": round(_auc(real.labels, reverse.predict_proba(real.features)), 4) if reverse else None,
        "real_to_real_cv_auc": round(_auc(real.labels, reference), 4),
        "synthetic_cases": len(synthetic.labels),
        "real_images": len(real.labels),
        "judge": "radiomics (first order, shape, GLCM) + standardised logistic regression",
    }


def sample_for_fidelity(package: SitePackage, per_class: int, seed: int, show_progress: bool = True
                        ) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` generated cases of every class of the package, and their class indices."""
    cases, labels = [], []
    for index, name in enumerate(package.class_names):
        generated = sample_cases(package, name, per_class, seed=seed + index, show_progress=show_progress)
        cases.append(generated)
        labels += [index] * len(generated)
    return np.concatenate(cases), np.asarray(labels)


def fidelity_figure(path: Path, fidelity: dict[str, Any], title: str) -> Path:
    """Bar chart: share of each generated class the real-data judge assigns to that class, chance level marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shares = fidelity["synthetic_assigned_to_own_class"]
    names = list(shares)
    figure, axis = plt.subplots(figsize=(4.2, 3.0))
    axis.bar(names, [shares[n] or 0.0 for n in names], color="#4c72b0")
    axis.axhline(1 / len(names), color="grey", linestyle="--", linewidth=1, label="chance")
    axis.set_ylim(0, 1)
    axis.set_ylabel("judged as its own class")
    axis.set_title(f"{title}\nreal→synthetic AUC {fidelity['real_to_synthetic_auc']:.2f}, "
                   f"synthetic→real {fidelity['synthetic_to_real_auc'] or float('nan'):.2f}, "
                   f"real→real {fidelity['real_to_real_cv_auc']:.2f}", fontsize=8)
    axis.legend(fontsize=7)
    figure.tight_layout()
    with atomic_output_path(path) as tmp:
        figure.savefig(tmp, dpi=100, format="png")
    plt.close(figure)
    return path


def run_ldm_benchmark(data_dir: Path, site: str, task: str, config: StudyConfig, out: Path, *, per_class: int, seed: int,
                      device: torch.device, benchmarks: Path | None, show_progress: bool = True) -> dict[str, Any]:
    """Train one site model (timed), sample ``per_class`` cases per class, judge class fidelity, write the results."""
    package_dir = out / "package"
    with run_record(out, "bench ldm", config.to_dict(), seed, inputs=[]) as record:
        started, cpu = time.perf_counter(), time.process_time()
        train_site_package(TrainRequest(data_dir=data_dir, site=site, task=task, config=config, out=package_dir,
                                        overwrite=True, cache_dir=out / "prepared", device=device, seed=seed,
                                        show_progress=show_progress))
        train_wall, train_cpu = time.perf_counter() - started, time.process_time() - cpu
        package = load_site_package(package_dir, device=device)
        started = time.perf_counter()
        cases, labels = sample_for_fidelity(package, per_class, seed, show_progress)
        sample_wall = time.perf_counter() - started
        subjects = [s for s in load_subjects(data_dir, config, [site], out / "prepared", skip_invalid=False)
                    if s.split != "test"]
        fidelity = class_fidelity(real_features(subjects, task, package.class_names), case_features(cases, labels),
                                  package.class_names, seed)
        fidelity_figure(out / "class_fidelity.png", fidelity, f"site {site}, task {task}, preset {config.preset}")
        card = package.card
        result = {
            "site": site, "task": task, "preset": config.preset, "device": str(device),
            "torch_threads": torch.get_num_threads(),
            "train_wall_seconds": round(train_wall, 1), "train_cpu_seconds": round(train_cpu, 1),
            "stages": {name: {k: stage[k] for k in ("steps", "seconds", "seconds_per_step", "final_losses")}
                       for name, stage in card["training"].items()},
            "sampling": {"cases": len(cases), "seconds": round(sample_wall, 1), "sampler": config.synthesis.sampler,
                         "steps": config.synthesis.steps, "guidance": config.synthesis.guidance},
            "peak_rss_mb": round(peak_rss_mb()), "peak_gpu_mb": peak_gpu_mb(),
            "reconstruction_quality": card["reconstruction_quality"],
            "class_fidelity": fidelity,
            "training_subjects": {c["name"]: c["training_subjects"] for c in card["classes"]},
        }
        write_json(out / "ldm_benchmark.json", result)
        record.add(result=result)
    if benchmarks is not None:
        update_section(benchmarks, "ldm", _benchmark_markdown(result, out, data_dir))
    log.info("ldm benchmark: %.0f s to train, peak RSS %d MiB, real→synthetic AUC %s", result["train_wall_seconds"],
             result["peak_rss_mb"], fidelity["real_to_synthetic_auc"])
    return result


def _benchmark_markdown(result: dict[str, Any], out: Path, data_dir: Path) -> str:
    stages = markdown_table(["stage", "steps", "seconds", "s/step", "final losses"], [
        [name, s["steps"], s["seconds"], s["seconds_per_step"],
         ", ".join(f"{k} {v:.3g}" for k, v in s["final_losses"].items())] for name, s in result["stages"].items()])
    quality = result["reconstruction_quality"] or {}
    fidelity = result["class_fidelity"]
    shares = ", ".join(f"{k} {v:.2f}" for k, v in fidelity["synthetic_assigned_to_own_class"].items() if v is not None)
    return "\n".join([
        "## Site latent diffusion model (`catphish bench ldm`)",
        "",
        f"Command: `catphish bench ldm --data {data_dir} --site {result['site']} --task {result['task']} "
        f"--preset {result['preset']}`; machine: {machine_line()}; torch threads {result['torch_threads']}.",
        "",
        f"One site model ({', '.join(f'{k} {v}' for k, v in result['training_subjects'].items())} training subjects): "
        f"**{result['train_wall_seconds']} s** wall (train + held-out check + preview), "
        f"{result['train_cpu_seconds']} s CPU, peak RSS **{result['peak_rss_mb']} MiB**"
        + (f", peak GPU memory {result['peak_gpu_mb']:.0f} MiB." if result.get("peak_gpu_mb") else "."),
        "",
        stages,
        "",
        f"Held-out reconstruction (site subjects never trained on): PSNR {_per_sequence(quality.get('psnr_db'))} dB; "
        f"SSIM {_per_sequence(quality.get('ssim'))}; mask Dice {quality.get('mask_dice')}.",
        "",
        f"Sampling {result['sampling']['cases']} cases ({result['sampling']['sampler']}, {result['sampling']['steps']} "
        f"steps, guidance {result['sampling']['guidance']}): {result['sampling']['seconds']} s.",
        "",
        f"Class fidelity ({fidelity['judge']}): real→synthetic AUC **{fidelity['real_to_synthetic_auc']}** "
        f"(generated cases judged as their own class: {shares}); synthetic→real AUC "
        f"{fidelity['synthetic_to_real_auc']}; real→real (5-fold, grouped by subject) {fidelity['real_to_real_cv_auc']}. "
        f"Figure: `{out / 'class_fidelity.png'}`.",
    ])


def _per_sequence(values: Any) -> str:
    if not isinstance(values, dict):
        return str(values)
    return ", ".join(f"{name} {value:.3g}" for name, value in values.items())


# ------------------------------------------------------------------------------------- mutual-information regulariser
MI_VARIANTS: tuple[tuple[str, bool], ...] = (("without MI", False), ("with MI", True))


def run_mi_benchmark(data_dir: Path, site: str, task: str, config: StudyConfig, out: Path, *, per_class: int,
                     audit_cases: int, seed: int, device: torch.device, benchmarks: Path | None,
                     show_progress: bool = True) -> dict[str, Any]:
    """The same site trained twice, without and with the MI regulariser (same data, seed and steps): memorisation
    (the site audit: max Pearson and SSIM to a training case, membership inference) and class fidelity of each."""
    from catphish.modes.audit import audit_package

    if audit_cases < 2:
        raise CatphishError(f"--audit-cases must be at least 2, got {audit_cases}")
    if per_class < 2:
        raise CatphishError(f"--per-class must be at least 2, got {per_class}")
    results: dict[str, Any] = {}
    with run_record(out, "bench mi", config.to_dict(), seed, inputs=[]) as record:
        real: FeatureSet | None = None
        for label, enabled in MI_VARIANTS:
            variant = dataclasses.replace(config, diffusion=dataclasses.replace(config.diffusion,
                                                                               mutual_information=enabled))
            package_dir = out / ("with-mi" if enabled else "without-mi")
            started = time.perf_counter()
            train_site_package(TrainRequest(data_dir=data_dir, site=site, task=task, config=variant, out=package_dir,
                                            overwrite=True, cache_dir=out / "prepared", device=device, seed=seed,
                                            show_progress=show_progress))
            train_seconds = time.perf_counter() - started
            audit = audit_package(package_dir, data_dir, n=audit_cases, cache_dir=out / "prepared", seed=seed)
            package = load_site_package(package_dir, device=device)
            if real is None:
                subjects = [s for s in load_subjects(data_dir, config, [site], out / "prepared", skip_invalid=False)
                            if s.split != "test"]
                real = real_features(subjects, task, package.class_names)
            cases, labels = sample_for_fidelity(package, per_class, seed, show_progress)
            fidelity = class_fidelity(real, case_features(cases, labels), package.class_names, seed)
            diffusion = package.card["training"]["diffusion"]
            results[label] = {
                "mutual_information": enabled, "train_seconds": round(train_seconds, 1),
                "diffusion_seconds_per_step": diffusion["seconds_per_step"],
                "final_losses": diffusion.get("final_losses", {}),
                "memorisation_max_pearson": round(audit["memorisation_max_pearson"], 4),
                "nearest_training_ssim_max": round(audit["nearest_to_training"]["max_ssim_max"], 4),
                "nearest_holdout_ssim_max": round(audit["nearest_to_holdout"]["max_ssim_max"], 4),
                "membership_inference_auc": round(audit["membership_inference"]["auc"], 4),
                "real_to_synthetic_auc": fidelity["real_to_synthetic_auc"],
                "synthetic_to_real_auc": fidelity["synthetic_to_real_auc"],
                "real_to_real_cv_auc": fidelity["real_to_real_cv_auc"],
            }
        summary = {"site": site, "task": task, "preset": config.preset, "audit_cases": audit_cases,
                   "per_class": per_class, "seed": seed, "variants": results}
        write_json(out / "mi_benchmark.json", summary)
        record.add(result=summary)
    if benchmarks is not None:
        update_section(benchmarks, "mi", _mi_markdown(summary, data_dir))
    return summary


def _mi_markdown(summary: dict[str, Any], data_dir: Path) -> str:
    rows = [[label, v["train_seconds"], v["diffusion_seconds_per_step"], v["memorisation_max_pearson"],
             v["nearest_training_ssim_max"], v["nearest_holdout_ssim_max"], v["membership_inference_auc"],
             v["real_to_synthetic_auc"], v["synthetic_to_real_auc"]] for label, v in summary["variants"].items()]
    return "\n".join([
        "## Mutual-information regulariser (`catphish bench mi`)",
        "",
        f"Command: `catphish bench mi --data {data_dir} --site {summary['site']} --task {summary['task']} --preset "
        f"{summary['preset']}`; machine: {machine_line()}. The same site model trained twice with the same data, seed "
        "and steps: diffusion loss MSE, or 0.9·smooth-L1 + 0.1·MI(x̂0, x0) between predicted and real latents. "
        f"Memorisation from the site audit ({summary['audit_cases']} generated cases vs the site's training and "
        f"held-out images); class fidelity from {summary['per_class']} generated cases per class (radiomics judge).",
        "",
        markdown_table(["diffusion loss", "train s", "diffusion s/step", "max Pearson to training",
                        "max SSIM to training", "max SSIM to held-out", "membership-inference AUC",
                        "real→synthetic AUC", "synthetic→real AUC"], rows),
        "",
        f"real→real reference (5-fold, grouped by subject): "
        f"{next(iter(summary['variants'].values()))['real_to_real_cv_auc']}. Lower max Pearson/SSIM to training "
        "(relative to held-out) means less memorisation; MIA AUC 0.5 = no membership leakage.",
    ])
