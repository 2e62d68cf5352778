"""Synthesis speed against fidelity on one site package (`catphish bench synth`).

The same package samples the same number of cases per class with each sampler setting (DDPM with its full training
schedule, DDIM with fewer steps); for each we record cases per second and two fidelity measures against the site's
real images: FID/KID per sequence in the default feature space of ``catphish evaluate-synthesis`` and the class-fidelity
judge of ``catphish bench ldm`` (does a real-data radiomics classifier recognise the generated class?).
Runs at the site (it reads the site's real images); only aggregate numbers are written.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from catphish.artifacts import run_record, write_json
from catphish.config import SEQUENCES, SynthesisConfig
from catphish.errors import CatphishError
from catphish.evaluation.synthetic_cohort import FidelitySettings, evaluate_synthetic_cohort, slices_of_cases
from catphish.modes.classification import load_subjects
from catphish.modes.site_benchmark import case_features, class_fidelity, real_features
from catphish.modes.site_package import load_site_package
from catphish.reporting.benchmarks import machine_line, markdown_table, peak_rss_mb, update_section
from catphish.runtime import log
from catphish.synthesis.sampling import sample_cases

DEFAULT_SETTINGS = ("ddpm:1000", "ddim:50", "ddim:20")


@dataclass(frozen=True)
class SamplerSetting:
    sampler: str
    steps: int

    @property
    def label(self) -> str:
        return f"{self.sampler.upper()}-{self.steps}"


def parse_settings(values: Sequence[str]) -> list[SamplerSetting]:
    """``["ddpm:1000", "ddim:50,ddim:20"]`` → sampler settings; a clear error for anything else."""
    settings = []
    for value in (item.strip() for text in values for item in text.split(",") if item.strip()):
        sampler, _, steps = value.partition(":")
        if sampler not in ("ddpm", "ddim") or not steps.isdigit() or int(steps) < 1:
            raise CatphishError(f"sampler setting '{value}' is not SAMPLER:STEPS with SAMPLER ddpm or ddim and STEPS ≥ 1")
        settings.append(SamplerSetting(sampler, int(steps)))
    if not settings:
        raise CatphishError("give at least one sampler setting (e.g. ddim:50)")
    return settings


def run_synth_benchmark(package_dir: Path, data_dir: Path, out: Path, *, settings: Sequence[SamplerSetting],
                        per_class: int, seed: int, device: torch.device, cache_dir: Path | None,
                        benchmarks: Path | None, show_progress: bool = True, guidance: float | None = None
                        ) -> dict[str, Any]:
    """Sample ``per_class`` cases per class with every setting, time it and measure fidelity; write the results.
    ``guidance`` (default: the hub's, ``SynthesisConfig().guidance``) is the same for every setting."""
    if per_class < 2:
        raise CatphishError(f"--per-class must be at least 2 (FID needs a covariance), got {per_class}")
    package = load_site_package(package_dir, device=device)
    guidance = SynthesisConfig().guidance if guidance is None else guidance
    with run_record(out, "bench synth", package.config.to_dict(), seed, inputs=[package_dir / "manifest.json"]) as rec:
        subjects = load_subjects(data_dir, package.config, [package.site], cache_dir, skip_invalid=False)
        if not subjects:
            raise CatphishError(f"{data_dir}: no subjects of site '{package.site}' (the package's site)")
        real = real_features(subjects, package.task, package.class_names)
        real_slices = slices_of_cases(np.concatenate([s.image for s in subjects]))
        rows = [_measure(package, setting, per_class, seed, device, real, real_slices, show_progress, guidance)
                for setting in settings]
        result = {"package": str(package_dir), "site": package.site, "task": package.task,
                  "preset": package.config.preset, "device": str(device), "per_class": per_class,
                  "guidance": guidance, "torch_threads": torch.get_num_threads(),
                  "real_images": len(real_slices), "peak_rss_mb": round(peak_rss_mb()), "settings": rows}
        write_json(out / "synth_benchmark.json", result)
        rec.add(result=result)
    if benchmarks is not None:
        update_section(benchmarks, "synth", _markdown(result, package_dir, data_dir))
    return result


def _measure(package: Any, setting: SamplerSetting, per_class: int, seed: int, device: torch.device,
             real: Any, real_slices: np.ndarray, show_progress: bool, guidance: float) -> dict[str, Any]:
    cases, labels = [], []
    started = time.perf_counter()
    for index, name in enumerate(package.class_names):
        # Same seed per class for every setting: the settings start from the same noise.
        cases.append(sample_cases(package, name, per_class, sampler=setting.sampler, steps=setting.steps,
                                  guidance=guidance, seed=seed + index, device=device, show_progress=show_progress))
        labels += [index] * per_class
    seconds = time.perf_counter() - started
    generated = np.concatenate(cases)
    fidelity = evaluate_synthetic_cohort({package.site: real_slices}, {package.site: slices_of_cases(generated)},
                                         settings=FidelitySettings(seed=seed, quality=False))
    pairs = fidelity.table("fidelity_pairs").rows
    judge = class_fidelity(real, case_features(generated, labels), package.class_names, seed)
    row = {"setting": setting.label, "sampler": setting.sampler, "steps": setting.steps, "cases": len(generated),
           "seconds": round(seconds, 2), "cases_per_second": round(len(generated) / seconds, 4),
           "fid": {r["sequence"]: r["fid"] for r in pairs}, "kid": {r["sequence"]: r["kid"] for r in pairs},
           "fid_mean": round(float(np.mean([r["fid"] for r in pairs])), 4),
           "real_to_synthetic_auc": judge["real_to_synthetic_auc"], "feature_extractor": fidelity.notes["feature_extractor"]}
    log.info("%s: %d cases in %.1f s (%.3f cases/s), mean FID %.3f, real→synthetic AUC %s", setting.label,
             len(generated), seconds, row["cases_per_second"], row["fid_mean"], row["real_to_synthetic_auc"])
    return row


def _markdown(result: dict[str, Any], package_dir: Path, data_dir: Path) -> str:
    settings = ",".join(f"{r['sampler']}:{r['steps']}" for r in result["settings"])
    table = markdown_table(
        ["setting", "cases", "seconds", "cases/s", *(f"FID {s}" for s in SEQUENCES), "FID mean",
         "real→synthetic AUC"],
        [[r["setting"], r["cases"], r["seconds"], r["cases_per_second"], *(_round(r["fid"].get(s)) for s in SEQUENCES),
          _round(r["fid_mean"]), r["real_to_synthetic_auc"]] for r in result["settings"]])
    return "\n".join([
        "## Hub synthesis speed and fidelity (`catphish bench synth`)",
        "",
        f"Command: `catphish bench synth {package_dir} --data {data_dir} --per-class {result['per_class']} "
        f"--settings {settings}`; machine: {machine_line()}; device {result['device']}, torch threads "
        f"{result['torch_threads']}; preset {result['preset']}, site {result['site']}, task {result['task']}, guidance "
        f"{result['guidance']}.",
        "",
        table,
        "",
        f"FID/KID: each setting's generated cases against the site's {result['real_images']} real images in the default "
        "feature space of `catphish evaluate-synthesis` (lower is closer; values are only comparable within this table). "
        "Real→synthetic AUC: a radiomics judge trained on the site's real images labels the generated classes (0.5 = the "
        f"classes are not recognisable). Peak RSS {result['peak_rss_mb']} MiB.",
    ])


def _round(value: Any) -> Any:
    return round(value, 3) if isinstance(value, float) else value
