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
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from catphish.artifacts import file_bytes, read_json, write_json
from catphish.config import DEMO_PER_CLASS, DEMO_ROUNDS
from catphish.errors import CatphishError
from catphish.evaluation.fidelity import real_baseline_summary
from catphish.reporting.benchmarks import stage_timeline
from catphish.runtime import console, log, progress_bar, resolve_device, settings

TRAINING_SITES: tuple[str, ...] = ("TCGA", "UTSW", "EGD")
MODES: tuple[str, ...] = ("centralized", "federated", "synthetic")


@dataclass
class DemoOptions:
    out: Path
    scale: float = 0.1
    preset: str = "demo"
    task: str = "idh"
    per_class: int = DEMO_PER_CLASS
    rounds: int = DEMO_ROUNDS
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
        self.validate()
        data, cache = self.path("data"), self.path("cache")
        self.stage("phantom", ["data", "phantom", str(data), "--scale", str(options.scale),
                               "--resolution", str(options.phantom_resolution)])
        self.stage("prepare", ["data", "prepare", str(data), "--out", str(cache), *self.preset_args()])
        self.site_models(cache)
        # each site checks its own package, at the same time as the others
        self.parallel_stages("verify", {f"verify-{site}": ["site", "verify", str(self.package(site))]
                                        for site in TRAINING_SITES})
        self.parallel_stages("audit", {f"audit-{site}": ["site", "audit", str(self.package(site)), "--data", str(cache),
                                                         "--n", str(options.audit_cases)] for site in TRAINING_SITES})
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
                                          str(options.fidelity_samples), *_repeat("--package", packages),
                                          *self.preset_args()])
        self.communication(data, packages)
        self.stage("report", ["report", str(self.path("eval")), str(self.path("eval-synthesis")), "--out",
                              str(self.path("report.html")), "--data", str(data), "--filtered",
                              str(self.path("synthetic-filtered")), "--communication",
                              str(self.path("communication.json")), "--stage-times", str(self.path("stages")),
                              *_repeat("--package", packages),
                              *_repeat("--run", [str(self.run_dir(m)) for m in MODES]),
                              "--title", "catphish demo study (phantom data)"])
        return self.summary()

    def validate(self) -> None:
        """Refuse bad options before any stage runs (a child failing later would leave a half-built study)."""
        from catphish.config import load_config

        options = self.options
        if options.scale <= 0:
            raise CatphishError(f"--scale must be positive, got {options.scale}")
        for name, value, least in (("--per-class", options.per_class, 1), ("--rounds", options.rounds, 1),
                                   ("--audit-cases", options.audit_cases, 2),
                                   ("--fidelity-samples", options.fidelity_samples, 4)):
            if value < least:
                raise CatphishError(f"{name} must be at least {least}, got {value}")
        load_config(options.config_file, options.preset, options.overrides)

    def preset_args(self) -> list[str]:
        args = ["--preset", self.options.preset]
        if self.options.config_file is not None:
            args += ["--config", str(self.options.config_file)]
        for item in self.options.overrides:
            args += ["--set", item]
        return args

    # ------------------------------------------------------------------------------------------ stages
    def finished(self, name: str) -> StageResult | None:
        """The result of a stage that finished in an earlier run (its record exists), else ``None``."""
        record = self.path("stages", f"{name}.json")
        if not record.exists():
            return None
        previous = read_json(record)
        result = StageResult(name, float(previous["seconds"]), float(previous["peak_rss_mb"]), skipped=True)
        log.info("stage %s: finished before (%.0f s), skipped", name, result.seconds)
        self.results.append(result)
        return result

    def stage(self, name: str, args: Sequence[str]) -> StageResult:
        """Run ``catphish ARGS`` unless the stage finished before; record wall time and peak RSS."""
        done = self.finished(name)
        if done is not None:
            return done
        console.rule(f"[bold]{name}")
        started = time.perf_counter()
        process = subprocess.Popen(_command(args, quiet=settings.quiet))
        try:
            _, status, usage = os.wait4(process.pid, 0)
        except KeyboardInterrupt:
            process.terminate()
            process.wait()
            raise
        if os.waitstatus_to_exitcode(status) != 0:
            raise CatphishError(f"demo stage '{name}' failed (exit {os.waitstatus_to_exitcode(status)}): "
                                f"catphish {' '.join(args)}")
        return self.record(name, args, time.perf_counter() - started, usage.ru_maxrss / 1024.0)

    def record(self, name: str, args: Sequence[str], seconds: float, peak_rss_mb: float) -> StageResult:
        result = StageResult(name, seconds, peak_rss_mb)
        ended = time.time()
        write_json(self.path("stages", f"{name}.json"), {"stage": name, "seconds": seconds,
                                                          "peak_rss_mb": peak_rss_mb, "started": ended - seconds,
                                                          "ended": ended, "command": ["catphish", *args]})
        self.results.append(result)
        return result

    def site_models(self, cache: Path) -> None:
        """Train the sites' models at the same time, as independent sites would, one CPU thread each (small models
        use two threads poorly, so this finishes sooner than one after another); logs go to ``DIR/logs``."""
        from catphish.config import load_config

        options = self.options
        stages = {f"site-{site}": ["site", "train", "--data", str(cache), "--site", site, "--task", options.task,
                                   "--out", str(self.package(site)), "--resume", *self.preset_args()]
                  for site in TRAINING_SITES}
        config = load_config(options.config_file, options.preset, options.overrides)
        total = config.autoencoder.steps + config.autoencoder.super_resolution_steps + config.diffusion.steps
        self.parallel_stages("site models", stages, total, lambda name: self._steps_done(name.removeprefix("site-")))

    def parallel_stages(self, label: str, stages: dict[str, list[str]], total: int = 1,
                        steps_done: Callable[[str], int] | None = None) -> None:
        """Run independent stages as parallel child processes (threads shared out over the CPU cores); stages that
        finished before are skipped; one GPU runs them one after another. Logs go to ``DIR/logs``."""
        pending = {name: args for name, args in stages.items() if self.finished(name) is None}
        if len(pending) <= 1 or resolve_device().type == "cuda":  # one GPU: one site after another
            for name, args in pending.items():
                self.stage(name, args)
            return
        threads = max(1, (os.cpu_count() or 1) // len(pending))
        environment = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        self.path("logs").mkdir(parents=True, exist_ok=True)
        console.rule(f"[bold]{label} ({', '.join(pending)}) in parallel, {threads} thread(s) each")
        running: dict[int, tuple[str, subprocess.Popen, float]] = {}
        try:
            for name, args in pending.items():
                with self.path("logs", f"{name}.log").open("w") as log_file:
                    process = subprocess.Popen(_command(args, quiet=True), stdout=log_file, stderr=subprocess.STDOUT,
                                               env=environment)
                running[process.pid] = (name, process, time.perf_counter())
            self._wait_for(running, pending, total, steps_done)
        finally:
            for _, process, _ in running.values():
                process.terminate()
                process.wait()

    def _wait_for(self, running: dict[int, tuple[str, subprocess.Popen, float]], stages: dict[str, list[str]],
                  total: int, steps_done: Callable[[str], int] | None) -> None:
        with progress_bar(transient=True) as progress:
            tasks = {name: progress.add_task(name, total=total, status="") for name, _, _ in running.values()}
            while running:
                pid, status, usage = os.wait4(-1, os.WNOHANG)
                if pid == 0:
                    for name, task in tasks.items():
                        if steps_done is not None:
                            progress.update(task, completed=steps_done(name))
                    time.sleep(0.5)
                    continue
                if pid not in running:  # not one of these stages (nothing else is started meanwhile)
                    continue
                name, _, started = running.pop(pid)
                if os.waitstatus_to_exitcode(status) != 0:
                    tail = self.path("logs", f"{name}.log").read_text().strip().splitlines()[-1:]
                    raise CatphishError(f"demo stage '{name}' failed: {' '.join(tail)} (log: "
                                        f"{self.path('logs', name + '.log')})")
                progress.update(tasks[name], completed=total)
                result = self.record(name, stages[name], time.perf_counter() - started, usage.ru_maxrss / 1024.0)
                console.print(f"{name}: finished in {result.seconds:.0f} s")

    def _steps_done(self, site: str) -> int:
        """Training steps a site has logged so far (lines of its unfinished package's metrics.csv)."""
        metrics = self.package(site).with_name(f"{site}.catphish.partial") / "training" / "metrics.csv"
        try:
            with metrics.open() as handle:
                return max(sum(1 for _ in handle) - 1, 0)
        except OSError:
            return 0

    def communication(self, data: Path, packages: Sequence[str]) -> None:
        """Exact bytes leaving the sites per mode (paper, Supplementary Note 7), for the report and BENCHMARKS.md:
        centralized sends the training sites' NIfTI files, as `catphish bench comms` counts them."""
        from catphish.federated.comms import communication_table, federated_run_bytes

        centralized = file_bytes([data / site for site in TRAINING_SITES])
        rows = communication_table(centralized, federated_run_bytes(self.run_dir("federated")),
                                   file_bytes(packages), rounds=self.options.rounds, sites=len(TRAINING_SITES))
        write_json(self.path("communication.json"),
                   [{"mode": r.mode, "what leaves the sites": r.what_travels, "bytes": r.bytes,
                     "MB": round(r.bytes / 1e6, 3), "× CATphishing": r.ratio_to_catphishing} for r in rows])

    # ------------------------------------------------------------------------------------------ summary
    def stage_records(self) -> list[dict[str, Any]]:
        """Every finished stage's record (this run's and earlier runs'), in the order the stages ended."""
        records = []
        for path in self.path("stages").glob("*.json"):
            record = read_json(path)
            if "ended" not in record:  # written by catphish 0.1.0 before stage times were recorded: the file's mtime
                record["ended"] = path.stat().st_mtime
                record["started"] = record["ended"] - float(record["seconds"])
            records.append(record)
        return sorted(records, key=lambda r: r["ended"])

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
            reference = "reference" if row["mode"] == "centralized" else "—"
            rows.append({"mode": row["mode"], "AUC": row.get("auc"), "ACC": row.get("accuracy"),
                         "McNemar vs centralized": (mcnemar or {}).get("reported", reference),
                         "McNemar p": (mcnemar or {}).get("p_value")})
        fidelity = read_json(self.path("eval-synthesis", "fidelity_summary.json"))["rows"]
        baselines = real_baseline_summary(read_json(self.path("eval-synthesis", "real_baselines.json"))["rows"])
        fid_means = {(b["sequence"], b["kind"]): b["FID mean"] for b in baselines}
        for row in fidelity:  # the real-vs-real scale against which the synthetic distances are read
            for kind in ("split-half", "between-sites"):
                row[f"real_{kind.replace('-', '_')}_fid_mean"] = fid_means.get((row["sequence"], kind))
        timeline = stage_timeline(self.stage_records())
        summary = {"report": str(self.path("report.html").resolve()), "modes": rows, "fidelity": fidelity,
                   "stages": {r.name: round(r.seconds, 1) for r in self.results},
                   "wall_seconds": round(timeline.wall_seconds, 1),
                   "peak_rss_mb": round(timeline.peak_rss_mb, 1)}
        write_json(self.path("summary.json"), summary)
        return summary


def _command(args: Sequence[str], quiet: bool) -> list[str]:
    """``catphish ARGS`` as a child process with this run's seed and device."""
    return [sys.executable, "-c", "from catphish.cli import run; run()", "--seed", str(settings.seed), "--device",
            settings.device, *(["--quiet"] if quiet else []), *args]


def _repeat(option: str, values: Sequence[str]) -> list[str]:
    """``--option a --option b`` for a repeatable CLI option."""
    return [item for value in values for item in (option, value)]
