"""``catphish bench train``: the downstream classifier's numbers for BENCHMARKS.md (issue 7).

Trains the requested modes on one dataset (each into ``OUT/<mode>``) and writes one section: test AUC per site and
overall for every mode (the fold ensemble, and the mean of the single fold models beside it), and the training time
per fold. ``local`` contributes one row per training site.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from catphish.config import StudyConfig
from catphish.errors import CatphishError
from catphish.modes.classification import TrainingRequest, run_training
from catphish.reporting.benchmarks import machine_line, markdown_table, memory_line, update_section


def run_train_benchmark(config: StudyConfig, data_dir: Path, out_dir: Path, task: str, modes: Sequence[str],
                        synthetic_dir: Path | None, cache_dir: Path | None, benchmarks: Path,
                        command: str) -> dict[str, Any]:
    """Train every mode, then write the ``train`` section of ``benchmarks``; returns the summaries by mode."""
    if "synthetic" in modes and synthetic_dir is None:
        raise CatphishError("bench train: --modes synthetic needs --synthetic SYN (the hub's synthetic cohort)")
    summaries: dict[str, Any] = {}
    walls: dict[str, float] = {}
    for mode in modes:
        started = time.perf_counter()
        request = TrainingRequest(mode=mode, task=task, data_dir=data_dir, out_dir=out_dir / mode,
                                  synthetic_dir=synthetic_dir if mode in ("synthetic", "mixed") else None,
                                  cache_dir=cache_dir, overwrite=True)
        results = run_training(config, request)
        walls[mode] = time.perf_counter() - started
        summaries.update(results)
    update_section(benchmarks, "train", _section(config, task, summaries, walls, command))
    return summaries


def _section(config: StudyConfig, task: str, summaries: dict[str, Any], walls: dict[str, float], command: str) -> str:
    classifier = config.classifier
    lines = [
        f"## Downstream classifier ({task}, preset `{config.preset}`)",
        "",
        f"`{command}` — {machine_line()}; {memory_line()}.",
        f"Model `{classifier.model}` channels {tuple(classifier.channels)}"
        f"{' + Mamba block' if classifier.mamba else ''}, {classifier.folds}-fold CV × {classifier.epochs} epochs, "
        f"batch {classifier.batch_size}, SGD lr {classifier.lr} ({classifier.schedule}).",
        "",
    ]
    for stage in _stages(summaries):
        sites = sorted({site for s in summaries.values() for site in s["stages"][stage]["ensemble_test_per_site"]})
        header = ["mode", "train subjects", *sites, "overall (ensemble)", "mean single fold", "out-of-fold"]
        rows = []
        for label, summary in summaries.items():
            values = summary["stages"][stage]
            per_site = values["ensemble_test_per_site"]
            rows.append([label, summary["train_subjects"], *(per_site.get(site, {}).get("auc", "–") for site in sites),
                         values["ensemble_test"]["auc"], values["single_fold_test_auc_mean"], values["out_of_fold"]["auc"]])
        lines += [f"Test AUC, {stage} (positive class: the stage's first class):", "", markdown_table(header, rows), ""]
    header = ["mode", "stage", "s per fold (mean)", "s per fold (min–max)", "s per epoch", "mode wall time (s)"]
    rows = []
    for label, summary in summaries.items():
        for stage, values in summary["stages"].items():
            seconds = values["seconds_per_fold"]
            wall = walls.get(label, walls.get(label.split("-")[0], float("nan")))
            rows.append([label, stage, sum(seconds) / len(seconds), f"{min(seconds):.1f}–{max(seconds):.1f}",
                         sum(seconds) / len(seconds) / max(classifier.epochs, 1), wall])
    lines += ["Training time per fold:", "", markdown_table(header, rows)]
    return "\n".join(lines)


def _stages(summaries: dict[str, Any]) -> list[str]:
    stages: list[str] = []
    for summary in summaries.values():
        stages.extend(name for name in summary["stages"] if name not in stages)
    return stages
