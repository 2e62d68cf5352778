"""`catphish bench` commands."""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True)


@app.command("ldm")
def ldm(
    data: str = typer.Option(..., "--data", help="Dataset folder (site folders + labels.csv) or a prepared cache."),
    site: str = typer.Option(..., "--site", help="The site whose model is trained and judged."),
    task: str = typer.Option("idh", "--task", help="idh or tumor_type."),
    out: str = typer.Option(..., "--out", help="Folder for the package, figure and results (replaced)."),
    preset: str = typer.Option("demo", "--preset", help="demo, small3d or paper."),
    per_class: int = typer.Option(40, "--per-class", help="Generated cases per class for the class-fidelity judge."),
    config: str | None = typer.Option(None, "--config", help="YAML/JSON config file applied over the preset."),
    overrides: list[str] = typer.Option([], "--set", help="Override one setting: section.key=value (repeatable)."),
    benchmarks: str = typer.Option("BENCHMARKS.md", "--benchmarks", help="Benchmarks file whose 'ldm' section is written."),
) -> None:
    """Site LDM cost (s/step per stage, peak memory, wall time) and class fidelity of its samples → BENCHMARKS.md."""
    from pathlib import Path

    from catphish.config import load_config
    from catphish.modes.site_benchmark import run_ldm_benchmark
    from catphish.runtime import resolve_device, seed_everything, settings

    study = load_config(config, preset, overrides)
    seed_everything(settings.seed)
    run_ldm_benchmark(Path(data), site, task, study, Path(out), per_class=per_class, seed=settings.seed,
                      device=resolve_device(), benchmarks=Path(benchmarks), show_progress=not settings.quiet)


@app.command("synth")
def synth(
    package: str = typer.Argument(..., help="A site package (the same package samples with every setting)."),
    data: str = typer.Option(..., "--data", help="The site's real data (dataset folder or prepared cache) for fidelity."),
    out: str = typer.Option(..., "--out", help="Folder for the results (synth_benchmark.json, run.json)."),
    per_class: int = typer.Option(8, "--per-class", help="Generated cases per class and setting."),
    settings_: list[str] = typer.Option(["ddpm:1000", "ddim:50", "ddim:20"], "--settings",
                                        help="Sampler settings SAMPLER:STEPS (repeat or comma-separate)."),
    cache: str | None = typer.Option(None, "--cache", help="Prepared-data cache for a raw dataset."),
    benchmarks: str = typer.Option("BENCHMARKS.md", "--benchmarks", help="File whose 'synth' section is written."),
) -> None:
    """Synthesis speed (cases/s) and fidelity (FID per sequence, class fidelity) for DDPM vs DDIM → BENCHMARKS.md."""
    from pathlib import Path

    from catphish.modes.synthesis_benchmark import parse_settings, run_synth_benchmark
    from catphish.runtime import console, resolve_device, seed_everything, settings

    chosen = parse_settings(settings_)
    seed_everything(settings.seed)
    result = run_synth_benchmark(Path(package), Path(data), Path(out), settings=chosen, per_class=per_class,
                                 seed=settings.seed, device=resolve_device(), cache_dir=Path(cache) if cache else None,
                                 benchmarks=Path(benchmarks), show_progress=not settings.quiet)
    for row in result["settings"]:
        console.print(f"{row['setting']}: {row['cases_per_second']} cases/s, mean FID {row['fid_mean']}, "
                      f"real→synthetic AUC {row['real_to_synthetic_auc']}", highlight=False)


@app.command("comms")
def comms(
    federated: str = typer.Option(..., "--federated", help="A finished `catphish train --mode federated` run folder."),
    data: str = typer.Option(..., "--data", help="The real dataset whose training sites' images centralized copies."),
    packages: list[str] = typer.Option(..., "--packages", help="Site packages CATphishing sends (repeat)."),
    train_sites: list[str] = typer.Option([], "--train-sites", help="Training sites (default: the federated run's)."),
    benchmarks: str = typer.Option("BENCHMARKS.md", "--benchmarks", help="File whose 'comms' section is written."),
) -> None:
    """Bytes leaving the sites: centralized images, federated rounds (measured), CATphishing packages → BENCHMARKS.md."""
    from pathlib import Path

    from catphish.modes.federated import communication_benchmark
    from catphish.runtime import console

    sites = [s.strip() for value in train_sites for s in value.split(",") if s.strip()] or None
    body = communication_benchmark(Path(federated), [Path(p) for p in packages], Path(data), sites, Path(benchmarks))
    console.print(body, highlight=False, markup=False)


@app.command("train")
def train(
    data: str = typer.Option(..., "--data", help="Real dataset (site folders + labels.csv) or a prepared cache."),
    out: str = typer.Option(..., "--out", help="Folder for the runs, one per mode (replaced)."),
    task: str = typer.Option("idh", "--task", help="idh or tumor_type."),
    modes: str = typer.Option("centralized,local", "--modes", help="Comma-separated: centralized, local, synthetic, "
                              "mixed."),
    synthetic: str | None = typer.Option(None, "--synthetic", help="The hub's synthetic cohort (for synthetic/mixed)."),
    cache: str | None = typer.Option(None, "--cache", help="Prepared-data cache for a raw dataset."),
    preset: str = typer.Option("demo", "--preset", help="demo, small3d or paper."),
    config: str | None = typer.Option(None, "--config", help="YAML/JSON config file applied over the preset."),
    overrides: list[str] = typer.Option([], "--set", help="Override one setting: section.key=value (repeatable)."),
    benchmarks: str = typer.Option("BENCHMARKS.md", "--benchmarks", help="Benchmarks file whose 'train' section is "
                                   "written."),
) -> None:
    """Downstream classifier: test AUC per site and mode (ensemble vs single folds), time per fold → BENCHMARKS.md."""
    import sys
    from pathlib import Path

    from catphish.config import load_config
    from catphish.modes.classification_benchmark import run_train_benchmark

    study = load_config(config, preset, overrides)
    chosen = [mode.strip() for mode in modes.split(",") if mode.strip()]
    run_train_benchmark(study, Path(data), Path(out), task, chosen, Path(synthetic) if synthetic else None,
                        Path(cache) if cache else None, Path(benchmarks), "catphish " + " ".join(sys.argv[1:]))


@app.command("all")
def all_(
    out: str = typer.Option("runs/bench", "--out", help="Folder of the demo study it runs (re-running skips finished "
                            "stages)."),
    scale: float = typer.Option(0.1, "--scale", help="Phantom cohort scale of the demo."),
    preset: str = typer.Option("demo", "--preset", help="Preset of every demo stage."),
    per_class: int = typer.Option(60, "--per-class", help="Hub: synthetic cases per class per site."),
    rounds: int = typer.Option(10, "--rounds", help="Federated rounds."),
    synth_per_class: int = typer.Option(4, "--synth-per-class", help="bench synth: cases per class and setting."),
    settings_: list[str] = typer.Option(["ddpm:1000", "ddim:50", "ddim:20"], "--settings",
                                        help="bench synth sampler settings SAMPLER:STEPS."),
    overrides: list[str] = typer.Option([], "--set", help="section.key=value passed to every demo stage (repeat)."),
    benchmarks: str = typer.Option("BENCHMARKS.md", "--benchmarks", help="Benchmarks file to write."),
) -> None:
    """The demo timed per stage (wall, peak RSS), synthesis DDIM vs DDPM, communication, machine → BENCHMARKS.md."""
    from pathlib import Path

    from catphish.modes.bench_all import BenchAllOptions, run_bench_all
    from catphish.modes.demo import DemoOptions
    from catphish.modes.synthesis_benchmark import parse_settings
    from catphish.runtime import console, resolve_device, settings

    chosen = parse_settings(settings_)
    options = BenchAllOptions(DemoOptions(out=Path(out), scale=scale, preset=preset, per_class=per_class,
                                          rounds=rounds, overrides=list(overrides)),
                              benchmarks=Path(benchmarks), synth_settings=chosen, synth_per_class=synth_per_class)
    run_bench_all(options, settings.seed, resolve_device(), show_progress=not settings.quiet)
    console.print(f"[green]wrote[/green] {benchmarks}: machine, demo, synth and comms sections")
