"""``catphish bench federated``: the federated variants of issue 8 against a centralized run, on one dataset.

Every variant is a real ``train --mode federated`` run (Flower simulation engine) into ``OUT/<variant>``; all are then
evaluated together with the reference (centralized) run on the same test subjects, each variant's predictions relabelled
as its own mode: overall AUC with its bootstrap CI, accuracy, McNemar and DeLong against the reference, and from the
run summaries ε (DP), mean round time and measured bytes per round. The table goes into the ``federated`` section of
BENCHMARKS.md and ``OUT/federated_benchmark.json``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catphish.artifacts import run_record, write_json
from catphish.config import StudyConfig, apply_override
from catphish.errors import CatphishError
from catphish.evaluation.classification import (
    OVERALL,
    EvaluationSettings,
    evaluate_predictions,
    load_test_predictions,
)
from catphish.modes.federated import run_federated
from catphish.reporting.benchmarks import machine_line, markdown_table, update_section
from catphish.runtime import log


@dataclass(frozen=True)
class Variant:
    name: str
    description: str
    overrides: tuple[str, ...]


FEDPROX_MU = 0.1
"""FedProx's μ in the benchmark: μ = 0.01 (the config default) left predictions equal to FedAvg's to four
decimals on the demo."""

VARIANTS: tuple[Variant, ...] = (
    Variant("fedavg", "FedAvg, natural sites, weights by sample count (the paper's baseline)", ()),
    Variant("fedavg-dirichlet", "FedAvg, Dirichlet non-IID re-split (α)", ("federated.partition=dirichlet",)),
    Variant("fedprox-dirichlet", f"FedProx (μ = {FEDPROX_MU:g}), Dirichlet non-IID re-split",
            ("federated.partition=dirichlet", "federated.strategy=fedprox", f"federated.proximal_mu={FEDPROX_MU}")),
    Variant("class-balanced-dirichlet", "FedAvg with class-balanced weights, Dirichlet non-IID re-split",
            ("federated.partition=dirichlet", "federated.weighting=class_balanced")),
    Variant("fedavg-uniform", "FedAvg, natural sites, uniform weights (the DP run's non-private twin)",
            ("federated.weighting=uniform",)),
    Variant("dp", "central DP (fixed clipping, noise calibrated to the target ε), natural sites, uniform weights",
            ("federated.differential_privacy=server_fixed",)),
)


def select_variants(names: Sequence[str]) -> list[Variant]:
    known = {v.name: v for v in VARIANTS}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise CatphishError(f"unknown federated variant '{unknown[0]}' (choose from {', '.join(known)})")
    return [known[n] for n in names] if names else list(VARIANTS)


def variant_config(config: StudyConfig, variant: Variant, target_epsilon: float) -> StudyConfig:
    for item in variant.overrides:
        config = apply_override(config, item)
    if config.federated.differential_privacy != "none":
        config = dataclasses.replace(config, federated=dataclasses.replace(config.federated,
                                                                           target_epsilon=target_epsilon))
    return config


def run_federated_benchmark(config: StudyConfig, data_dir: Path, reference: Path, out: Path, task: str,
                            variants: Sequence[Variant], *, target_epsilon: float, seed: int, bootstrap: int,
                            benchmarks: Path | None, command: str) -> dict[str, Any]:
    """Train every variant, evaluate them with the reference run, write the section; returns the result."""
    if target_epsilon <= 0:
        raise CatphishError(f"--target-epsilon must be positive, got {target_epsilon}")
    load_test_predictions([reference])  # a missing or empty reference fails before hours of training
    summaries: dict[str, dict[str, Any]] = {}
    with run_record(out, "bench federated", config.to_dict(), seed, inputs=[reference / "predictions.csv"]) as record:
        for variant in variants:
            log.info("bench federated: %s — %s", variant.name, variant.description)
            summaries[variant.name] = run_federated(variant_config(config, variant, target_epsilon), data_dir=data_dir,
                                                    task=task, out_dir=out / variant.name, overwrite=True, seed=seed)
        rows = load_test_predictions([reference, *(f"{v.name}={out / v.name}" for v in variants)])
        evaluation = evaluate_predictions(rows, EvaluationSettings(bootstrap_resamples=bootstrap, seed=seed))
        table = _result_rows(evaluation, variants, summaries)
        result = {"task": task, "reference": str(reference), "target_epsilon": target_epsilon,
                  "rounds": config.federated.rounds, "dirichlet_alpha": config.federated.dirichlet_alpha,
                  "proximal_mu": FEDPROX_MU,
                  "local_epochs": config.federated.local_epochs, "rows": table}
        write_json(out / "federated_benchmark.json", result)
        record.add(result=result)
    if benchmarks is not None:
        update_section(benchmarks, "federated", _markdown(result, command))
    return result


def _result_rows(evaluation: Any, variants: Sequence[Variant], summaries: dict[str, dict[str, Any]]
                 ) -> list[dict[str, Any]]:
    overall = {r["mode"]: r for r in evaluation.table("binary_metrics").rows
               if r["site"] == OVERALL and r["stage"] in ("combined", "stage1")}
    tests = {(r["mode"], str(r["test"]).split()[0].lower()): r for r in evaluation.table("paired_tests").rows
             if r["site"] == OVERALL and r["stage"] in ("combined", "stage1")}
    rows = []
    reference = next((mode for mode in overall if mode not in {v.name for v in variants}), None)
    for name in [reference, *(v.name for v in variants)]:
        if name is None or name not in overall:
            continue
        metrics = overall[name]
        summary = summaries.get(name, {})
        privacy = next(iter(summary.get("privacy", {}).values()), {})
        rows.append({
            "mode": name,
            "description": next((v.description for v in variants if v.name == name), "reference"),
            "auc": metrics.get("auc"), "auc_ci_low": metrics.get("auc_ci_low"), "auc_ci_high": metrics.get("auc_ci_high"),
            "accuracy": metrics.get("accuracy"),
            "mcnemar": tests.get((name, "mcnemar"), {}).get("reported", "reference" if name == reference else "–"),
            "delong_p": tests.get((name, "delong"), {}).get("p_value"),
            "epsilon": privacy.get("epsilon"), "noise_multiplier": privacy.get("noise_multiplier"),
            "round_time_s": summary.get("round_time_s_mean"), "bytes_per_round": summary.get("bytes_per_round_mean"),
        })
    return rows


def _number(value: Any, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _markdown(result: dict[str, Any], command: str) -> str:
    rows = [[r["mode"], _number(r["auc"]), f"{_number(r['auc_ci_low'])}–{_number(r['auc_ci_high'])}",
             _number(r["accuracy"]), r["mcnemar"], _number(r["delong_p"], 4), _number(r["epsilon"], 2),
             _number(r["round_time_s"], 1),
             "–" if r["bytes_per_round"] is None else f"{r['bytes_per_round'] / 1e6:.2f}"] for r in result["rows"]]
    return "\n".join([
        f"## Federated variants ({result['task']}, `catphish bench federated`)",
        "",
        f"`{command}` — {machine_line()}. {result['rounds']} rounds of {result.get('local_epochs', 1)} local "
        f"epoch(s) each; Dirichlet α = {result['dirichlet_alpha']}, "
        f"FedProx μ = {result['proximal_mu']}, DP target ε = {result['target_epsilon']} (δ from the config); "
        f"reference: `{result['reference']}`. AUC on the pooled test sites with its bootstrap 95 % CI; McNemar and "
        "DeLong against the reference on the same subjects.",
        "",
        markdown_table(["mode", "AUC", "95 % CI", "accuracy", "McNemar vs reference", "DeLong p", "ε", "s/round",
                        "MB/round"], rows),
        "",
        "; ".join(f"`{r['mode']}`: {r['description']}" for r in result["rows"]) + ".",
    ])
