"""`catphish bench` commands."""

from __future__ import annotations

import typer

from catphish.config import DEMO_PER_CLASS, DEMO_ROUNDS

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


@app.command("mi")
def mi(
    data: str = typer.Option(..., "--data", help="Dataset folder (site folders + labels.csv) or a prepared cache."),
    site: str = typer.Option(..., "--site", help="The site whose model is trained twice."),
    task: str = typer.Option("idh", "--task", help="idh or tumor_type."),
    out: str = typer.Option(..., "--out", help="Folder for both packages and the results (packages replaced)."),
    preset: str = typer.Option("demo", "--preset", help="demo, small3d or paper."),
    per_class: int = typer.Option(40, "--per-class", help="Generated cases per class for the class-fidelity judge."),
    audit_cases: int = typer.Option(32, "--audit-cases", help="Generated cases of each model's privacy audit."),
    config: str | None = typer.Option(None, "--config", help="YAML/JSON config file applied over the preset."),
    overrides: list[str] = typer.Option([], "--set", help="Override one setting: section.key=value (repeatable)."),
    benchmarks: str = typer.Option("BENCHMARKS.md", "--benchmarks", help="Benchmarks file whose 'mi' section is written."),
) -> None:
    """The MI regulariser measured: one site trained without and with it; memorisation (max Pearson, SSIM, MIA) and
    class fidelity of both → BENCHMARKS.md."""
    from pathlib import Path

    from catphish.config import load_config
    from catphish.modes.site_benchmark import run_mi_benchmark
    from catphish.runtime import console, resolve_device, seed_everything, settings

    study = load_config(config, preset, overrides)
    seed_everything(settings.seed)
    result = run_mi_benchmark(Path(data), site, task, study, Path(out), per_class=per_class, audit_cases=audit_cases,
                              seed=settings.seed, device=resolve_device(), benchmarks=Path(benchmarks),
                              show_progress=not settings.quiet)
    for label, values in result["variants"].items():
        console.print(f"{label}: max Pearson to training {values['memorisation_max_pearson']}, MIA AUC "
                      f"{values['membership_inference_auc']}, real→synthetic AUC {values['real_to_synthetic_auc']}, "
                      f"synthetic→real AUC {values['synthetic_to_real_auc']}", highlight=False)


@app.command("synth")
def synth(
    package: str = typer.Argument(..., help="A site package (the same package samples with every setting)."),
    data: str = typer.Option(..., "--data", help="The site's real data (dataset folder or prepared cache) for fidelity."),
    out: str = typer.Option(..., "--out", help="Folder for the results (synth_benchmark.json, run.json)."),
    per_class: int = typer.Option(8, "--per-class", help="Generated cases per class and setting."),
    settings_: list[str] = typer.Option(["ddpm:1000", "ddim:50", "ddim:20"], "--settings",
                                        help="Sampler settings SAMPLER:STEPS (repeat or comma-separate)."),
    cache: str | None = typer.Option(None, "--cache", help="Prepared-data cache for a raw dataset."),
    guidance: float | None = typer.Option(None, "--guidance", help="Classifier-free guidance of every setting "
                                          "(default: the hub's, synthesis.guidance)."),
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
                                 benchmarks=Path(benchmarks), show_progress=not settings.quiet, guidance=guidance)
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
    out: str = typer.Option("runs/demo", "--out", help="Folder of the demo study it runs; finished stages are reused "
                            "(the default is `make demo`'s folder)."),
    scale: float = typer.Option(0.1, "--scale", help="Phantom cohort scale of the demo."),
    preset: str = typer.Option("demo", "--preset", help="Preset of every demo stage."),
    per_class: int = typer.Option(DEMO_PER_CLASS, "--per-class", help="Hub: synthetic cases per class per site."),
    rounds: int = typer.Option(DEMO_ROUNDS, "--rounds", help="Federated rounds."),
    audit_cases: int = typer.Option(32, "--audit-cases", help="Cases generated by each site's privacy audit."),
    fidelity_samples: int = typer.Option(150, "--fidelity-samples", help="Slices per site for FID/KID."),
    synth_per_class: int = typer.Option(4, "--synth-per-class", help="bench synth: cases per class and setting."),
    settings_: list[str] = typer.Option(["ddpm:1000", "ddim:50", "ddim:20"], "--settings",
                                        help="bench synth sampler settings SAMPLER:STEPS."),
    overrides: list[str] = typer.Option([], "--set", help="section.key=value passed to every demo stage (repeat)."),
    benchmarks: str = typer.Option("BENCHMARKS.md", "--benchmarks", help="Benchmarks file to write."),
    readme: str | None = typer.Option("README.md", "--readme", help="README whose results block gets the demo's "
                                      "headline numbers ('' to leave it alone)."),
) -> None:
    """The demo timed per stage (wall, peak RSS), synthesis DDIM vs DDPM, communication, machine → BENCHMARKS.md,
    and the headline numbers → the README's results block."""
    from pathlib import Path

    from catphish.modes.bench_all import BenchAllOptions, run_bench_all
    from catphish.modes.demo import DemoOptions
    from catphish.modes.synthesis_benchmark import parse_settings
    from catphish.runtime import console, resolve_device, settings

    chosen = parse_settings(settings_)
    options = BenchAllOptions(DemoOptions(out=Path(out), scale=scale, preset=preset, per_class=per_class,
                                          rounds=rounds, audit_cases=audit_cases, fidelity_samples=fidelity_samples,
                                          overrides=list(overrides)),
                              benchmarks=Path(benchmarks), synth_settings=chosen, synth_per_class=synth_per_class,
                              readme=Path(readme) if readme else None)
    run_bench_all(options, settings.seed, resolve_device(), show_progress=not settings.quiet)
    console.print(f"[green]wrote[/green] {benchmarks}: machine, demo, synth and comms sections")


@app.command("federated")
def federated(
    data: str = typer.Option(..., "--data", help="Real dataset (site folders + labels.csv) or a prepared cache."),
    reference: str = typer.Option(..., "--reference", help="A finished centralized run folder (the reference mode)."),
    out: str = typer.Option(..., "--out", help="Folder for one run per variant (replaced) and the results."),
    task: str = typer.Option("idh", "--task", help="idh or tumor_type."),
    variants: str = typer.Option("", "--variants", help="Comma-separated subset of: fedavg, fedavg-dirichlet, "
                                 "fedprox-dirichlet, class-balanced-dirichlet, fedavg-uniform, dp (default: all)."),
    rounds: int | None = typer.Option(None, "--rounds", help="Rounds of every variant (= --set federated.rounds=R)."),
    target_epsilon: float = typer.Option(1.5, "--target-epsilon", help="DP variant: ε after all rounds (the noise "
                                         "multiplier is calibrated to it)."),
    bootstrap: int = typer.Option(1000, "--bootstrap", help="Bootstrap resamples of the AUC confidence interval."),
    cache: str | None = typer.Option(None, "--cache", help="Prepared-data cache for a raw dataset."),
    preset: str = typer.Option("demo", "--preset", help="demo, small3d or paper."),
    config: str | None = typer.Option(None, "--config", help="YAML/JSON config file applied over the preset."),
    overrides: list[str] = typer.Option([], "--set", help="Override one setting: section.key=value (repeatable)."),
    benchmarks: str = typer.Option("BENCHMARKS.md", "--benchmarks", help="File whose 'federated' section is written."),
) -> None:
    """FedAvg, FedProx and class-balanced weighting (natural sites and Dirichlet non-IID), and central DP at a target ε,
    each evaluated against the centralized reference → BENCHMARKS.md."""
    import sys
    from pathlib import Path

    from catphish.config import load_config
    from catphish.modes.classification import prepared_data_dir
    from catphish.modes.federated_benchmark import run_federated_benchmark, select_variants
    from catphish.runtime import console, settings

    chosen = select_variants([v.strip() for v in variants.split(",") if v.strip()])
    study = load_config(config, preset, [*overrides, *([f"federated.rounds={rounds}"] if rounds is not None else [])])
    prepared = prepared_data_dir(Path(data), study, Path(cache) if cache else None, False)
    result = run_federated_benchmark(study, prepared, Path(reference), Path(out), task, chosen,
                                     target_epsilon=target_epsilon, seed=settings.seed, bootstrap=bootstrap,
                                     benchmarks=Path(benchmarks), command="catphish " + " ".join(sys.argv[1:]))
    for row in result["rows"]:
        console.print(f"{row['mode']}: AUC {row['auc']}, accuracy {row['accuracy']}, McNemar {row['mcnemar']}"
                      + (f", ε {row['epsilon']:.2f}" if row["epsilon"] is not None else ""), highlight=False)
