"""`catphish bench all`: the demo study timed stage by stage, synthesis speed DDIM vs DDPM on one of its packages, and
the communication table of its runs, all written to BENCHMARKS.md with the machine they ran on."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from catphish.errors import CatphishError
from catphish.modes.demo import TRAINING_SITES, Demo, DemoOptions
from catphish.modes.synthesis_benchmark import SamplerSetting, run_synth_benchmark
from catphish.reporting.benchmarks import machine_line, markdown_table, stage_timeline, update_section


@dataclass
class BenchAllOptions:
    demo: DemoOptions
    benchmarks: Path
    synth_settings: Sequence[SamplerSetting]
    synth_per_class: int = 4
    readme: Path | None = None
    """A README whose ``<!-- bench:results -->`` block gets the demo's headline numbers."""


def run_bench_all(options: BenchAllOptions, seed: int, device: torch.device, show_progress: bool) -> dict[str, Any]:
    """Run (or resume) the demo, then write the demo, synth, comms and machine sections."""
    demo = Demo(options.demo)
    summary = demo.run()
    update_section(options.benchmarks, "machine", _machine_markdown(device))
    update_section(options.benchmarks, "demo", demo_markdown(demo, summary))
    if options.readme is not None:
        update_readme_results(options.readme, demo, summary)
    package = demo.package(TRAINING_SITES[0])
    synth = run_synth_benchmark(package, demo.path("cache"), demo.path("bench-synth"), settings=options.synth_settings,
                                per_class=options.synth_per_class, seed=seed, device=device, cache_dir=None,
                                benchmarks=options.benchmarks, show_progress=show_progress)
    from catphish.modes.federated import communication_benchmark

    communication_benchmark(demo.run_dir("federated"), [demo.package(site) for site in TRAINING_SITES],
                            demo.path("data"), list(TRAINING_SITES), options.benchmarks)
    return {"demo": summary, "synth": synth}


def demo_markdown(demo: Demo, summary: dict[str, Any]) -> str:
    """Wall time and peak RSS per stage (from the stage records, which survive a resumed demo), and the results."""
    records = demo.stage_records()
    stages = markdown_table(["stage", "wall s", "peak RSS MiB"],
                            [[r["stage"], round(r["seconds"], 1), round(r["peak_rss_mb"])] for r in records])
    timeline = stage_timeline(records)
    modes = markdown_table(["mode", "IDH AUC (pooled test sites)", "accuracy", "McNemar vs centralized"],
                           [[m["mode"], m["AUC"], m["ACC"], m["McNemar vs centralized"]] for m in summary["modes"]])
    options = demo.options
    return "\n".join([
        "## Demo study (`catphish bench all`, which runs `catphish demo`)",
        "",
        f"Command: `catphish bench all --out {demo.out}` (demo: scale {options.scale}, preset {options.preset}, "
        f"{options.per_class} synthetic cases per class per site, {options.rounds} FedAvg rounds); "
        f"machine: {machine_line()}.",
        "",
        f"Total wall time **{timeline.wall_seconds / 60:.1f} min** (the three site models train at the same time, one "
        f"thread each, and count once); peak memory **{timeline.peak_rss_mb:.0f} MiB** (largest sum of the peak RSS of "
        "stages running at the same time; each stage is a separate `catphish` process).",
        "",
        stages,
        "",
        modes,
        "",
        "Fidelity (from `catphish evaluate-synthesis`): " + _fidelity_line(summary.get("fidelity", [])),
    ])


def update_readme_results(readme: Path, demo: Demo, summary: dict[str, Any]) -> None:
    """The README's results block: the demo's IDH comparison, fidelity and wall time, from this very run."""
    if not readme.is_file() or "<!-- bench:results -->" not in readme.read_text():
        raise CatphishError(f"{readme}: no '<!-- bench:results -->' block to fill in")
    timeline = stage_timeline(demo.stage_records())
    modes = markdown_table(["mode", "IDH AUC (5 external test sites pooled)", "accuracy", "McNemar vs centralized"],
                           [[m["mode"], m["AUC"], m["ACC"], m["McNemar vs centralized"]] for m in summary["modes"]])
    options = demo.options
    update_section(readme, "results", "\n".join([
        "## Results of the demo study",
        "",
        f"From `catphish bench all` (which runs `make demo`'s study: phantom scale {options.scale}, preset "
        f"`{options.preset}`) on {machine_line()}: the whole study took **{timeline.wall_seconds / 60:.1f} min** "
        f"(peak memory {timeline.peak_rss_mb / 1024:.1f} GiB). Phantom data, so the numbers show that the pipeline "
        "works and how the modes compare, not clinical performance.",
        "",
        modes,
        "",
        "Fidelity of the filtered synthetic cohort (`evaluate-synthesis`, handcrafted features, not Inception): "
        + _fidelity_line(summary.get("fidelity", [])),
        "Per-stage times, synthesis speed and the communication table: [BENCHMARKS.md](BENCHMARKS.md).",
    ]))


def _fidelity_line(rows: list[dict[str, Any]]) -> str:
    """Per sequence: mean FID of each synthetic site to its own real site (diagonal) and to the others, how many rows
    have their lowest FID on the diagonal, and the real-vs-real scale (split halves of a site, pairs of sites)."""
    parts = []
    for row in rows:
        diagonal, off = row.get("fid_diagonal_mean"), row.get("fid_off_diagonal_mean")
        if diagonal is None or off is None:
            continue
        text = (f"{row['sequence']} FID diagonal {diagonal:.2f} vs off-diagonal {off:.2f} (diagonal lowest in "
                f"{row.get('rows_where_diagonal_lowest')}/{row.get('rows_with_diagonal')} rows")
        split, between = row.get("real_split_half_fid_mean"), row.get("real_between_sites_fid_mean")
        if split is not None and between is not None:
            text += f"; real vs real: split halves {split:.2f}, between sites {between:.2f}"
        parts.append(text + ")")
    return "; ".join(parts) + "." if parts else "not available."


def _machine_markdown(device: torch.device) -> str:
    return "\n".join(["## Machine", "", f"{machine_line()}; catphish device {device}, torch threads "
                      f"{torch.get_num_threads()}."])
