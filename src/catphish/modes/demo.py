"""The one-command demo study (`catphish demo`): the whole CATphishing comparison on the embedded phantom data.

phantom cohort → prepare → one site latent diffusion model per training site → packages verified and audited at their
sites → hub synthesis + diversity filter → classifiers in centralized, federated (FedAvg) and synthetic modes →
evaluation (classification and fidelity) → communication table → HTML report.

Every stage is the same `catphish` command a user would type, run as a child process, so the demo exercises exactly
the public interface; its wall time and peak memory (RSS) are recorded in ``DIR/stages/<stage>.json``. A stage whose
record exists is skipped when the demo is run again, and stages that train pass ``--resume``, so a killed demo goes on
where it stopped.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from catphish.artifacts import read_json, write_json
from catphish.errors import CatphishError
from catphish.runtime import console, log, settings

TRAINING_SITES: tuple[str, ...] = ("TCGA", "UTSW", "EGD")
MODES: tuple[str, ...] = ("centralized", "federated", "synthetic")


@dataclass
class DemoOptions:
    out: Path
    scale: float = 0.1
    preset: str = "demo"
    task: str = "idh"
    per_class: int = 60
    rounds: int = 10
    audit_cases: int = 32
    fidelity_samples: int = 150
    overrides: list[str] = field(default_factory=list)
    """``section.key=value`` overrides passed to every stage that takes a preset."""
    config_file: Path | None = None
    phantom_resolution: int = 2


@dataclass
class StageResult:
    name: str
    seconds: float
    peak_rss_mb: float
    skipped: bool = False


@dataclass
class Demo:
    options: DemoOptions
    results: list[StageResult] = field(default_factory=list)

    # ---------------------------------------------------------------------------------------------- layout
    @property
    def out(self) -> Path:
        return self.options.out

    def path(self, *parts: str) -> Path:
        return self.out.joinpath(*parts)

    def package(self, site: str) -> Path:
        return self.path("packages", f"{site}.catphish")

    def run_dir(self, mode: str) -> Path:
        return self.path("runs", mode)

    # ------------------------------------------------------------------------------------------- the study
    def run(self) -> dict[str, Any]:
        options = self.options
        data, cache = self.path("data"), self.path("cache")
        self.stage("phantom", ["data", "phantom", str(data), "--scale", str(options.scale),
                               "--resolution", str(options.phantom_resolution)])
        self.stage("prepare", ["data", "prepare", str(data), "--out", str(cache), *self.preset_args()])
        for site in TRAINING_SITES:
            self.stage(f"site-{site}", ["site", "train", "--data", str(cache), "--site", site, "--task", options.task,
                                        "--out", str(self.package(site)), "--resume", *self.preset_args()])
            self.stage(f"verify-{site}", ["site", "verify", str(self.package(site))])
            self.stage(f"audit-{site}", ["site", "audit", str(self.package(site)), "--data", str(cache),
                                         "--n", str(options.audit_cases)])
        packages = [str(self.package(site)) for site in TRAINING_SITES]
        self.stage("synthesize", ["hub", "synthesize", *_repeat("--packages", packages),
                                  "--per-class", str(options.per_class), "--out", str(self.path("synthetic")),
                                  "--resume"])
        self.stage("filter", ["hub", "filter", str(self.path("synthetic")), "--out",
                              str(self.path("synthetic-filtered")), "--overwrite"])
        common = ["--task", options.task, "--data", str(cache), *self.preset_args()]
        self.stage("train-centralized", ["train", "--mode", "centralized", *common, "--out",
                                         str(self.run_dir("centralized")), "--resume"])
        self.stage("train-federated", ["train", "--mode", "federated", *common, "--rounds", str(options.rounds),
                                       "--out", str(self.run_dir("federated")), "--resume"])
        self.stage("train-synthetic", ["train", "--mode", "synthetic", *common, "--synthetic",
                                       str(self.path("synthetic-filtered")), "--out", str(self.run_dir("synthetic")),
                                       "--resume"])
        self.stage("evaluate", ["evaluate", *(str(self.run_dir(m)) for m in MODES), "--out", str(self.path("eval"))])
        self.stage("evaluate-synthesis", ["evaluate-synthesis", "--real", str(cache), "--synthetic",
                                          str(self.path("synthetic-filtered")), "--out",
                                          str(self.path("eval-synthesis")), "--samples",
                                          str(options.fidelity_samples), *self.preset_args()])
        self.communication(cache, packages)
        self.stage("report", ["report", str(self.path("eval")), str(self.path("eval-synthesis")), "--out",
                              str(self.path("report.html")), "--data", str(data), "--filtered",
                              str(self.path("synthetic-filtered")), "--communication",
                              str(self.path("communication.json")), "--stage-times", str(self.path("stages")),
                              *_repeat("--package", packages),
                              "--run", str(self.run_dir("federated")), "--title", "catphish demo study (phantom data)"])
        return self.summary()

    def preset_args(self) -> list[str]:
        args = ["--preset", self.options.preset]
        if self.options.config_file is not None:
            args += ["--config", str(self.options.config_file)]
        for item in self.options.overrides:
            args += ["--set", item]
        return args

    # ------------------------------------------------------------------------------------------ stages
    def stage(self, name: str, args: Sequence[str]) -> StageResult:
        """Run ``catphish ARGS`` unless the stage finished before; record wall time and peak RSS."""
        record = self.path("stages", f"{name}.json")
        if record.exists():
            previous = read_json(record)
            result = StageResult(name, float(previous["seconds"]), float(previous["peak_rss_mb"]), skipped=True)
            log.info("stage %s: finished before (%.0f s), skipped", name, result.seconds)
            self.results.append(result)
            return result
        command = [sys.executable, "-c", "from catphish.cli import run; run()", "--seed", str(settings.seed),
                   "--device", settings.device, *(["--quiet"] if settings.quiet else []), *args]
        console.rule(f"[bold]{name}")
        log.debug("running %s", " ".join(command))
        started = time.perf_counter()
        process = subprocess.Popen(command)
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except KeyboardInterrupt:
            process.terminate()
            process.wait()
            raise
        process.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - started
        if process.returncode != 0:
            raise CatphishError(f"demo stage '{name}' failed (exit {process.returncode}): catphish {' '.join(args)}")
        result = StageResult(name, seconds, usage.ru_maxrss / 1024.0)
        write_json(record, {"stage": name, "seconds": seconds, "peak_rss_mb": result.peak_rss_mb,
                            "command": ["catphish", *args]})
        self.results.append(result)
        return result

    def communication(self, cache: Path, packages: Sequence[str]) -> None:
        """Exact bytes leaving the sites per mode (paper, Supplementary Note 7), for the report and BENCHMARKS.md."""
        from catphish.federated.comms import communication_table, federated_run_bytes, file_bytes

        training_images = [p for site in TRAINING_SITES for p in (cache / site).glob("*.safetensors")]
        rows = communication_table(file_bytes(training_images), federated_run_bytes(self.run_dir("federated")),
                                   file_bytes(packages), rounds=self.options.rounds, sites=len(TRAINING_SITES))
        write_json(self.path("communication.json"),
                   [{"mode": r.mode, "what leaves the sites": r.what_travels, "bytes": r.bytes,
                     "MB": round(r.bytes / 1e6, 3), "× CATphishing": r.ratio_to_catphishing} for r in rows])

    # ------------------------------------------------------------------------------------------ summary
    def summary(self) -> dict[str, Any]:
        evaluation = self.path("eval")
        metrics = read_json(evaluation / "binary_metrics.json")["rows"]
        tests = read_json(evaluation / "paired_tests.json")["rows"]
        rows = []
        for row in metrics:
            if row.get("site") != "overall":
                continue
            mcnemar = next((t for t in tests if t.get("site") == "overall" and t.get("mode") == row["mode"]
                            and str(t.get("test", "")).lower().startswith("mcnemar")), None)
            rows.append({"mode": row["mode"], "AUC": row.get("auc"), "ACC": row.get("accuracy"),
                         "McNemar vs centralized": (mcnemar or {}).get("report", "reference")})
        fidelity = read_json(self.path("eval-synthesis", "fidelity_summary.json"))["rows"]
        summary = {"report": str(self.path("report.html").resolve()), "modes": rows, "fidelity": fidelity,
                   "stages": {r.name: round(r.seconds, 1) for r in self.results},
                   "wall_seconds": round(sum(r.seconds for r in self.results if not r.skipped), 1),
                   "peak_rss_mb": round(max((r.peak_rss_mb for r in self.results), default=0.0), 1)}
        write_json(self.path("summary.json"), summary)
        return summary


def _repeat(option: str, values: Sequence[str]) -> list[str]:
    """``--option a --option b`` for a repeatable CLI option."""
    return [item for value in values for item in (option, value)]
