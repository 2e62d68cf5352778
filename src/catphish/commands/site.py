"""`catphish site` commands: train a site latent diffusion model into a package, inspect, verify and sample it."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from catphish.artifacts import read_json, run_record
from catphish.config import PRESETS, TASK_CLASSES, load_config
from catphish.errors import ArtifactError, CatphishError
from catphish.runtime import console, resolve_device, seed_everything, settings

app = typer.Typer(no_args_is_help=True)


@app.command("train")
def train(
    data: Path = typer.Option(..., "--data", help="Dataset folder (site folders + labels.csv) or a prepared cache."),
    site: str = typer.Option(..., "--site", help="The site whose subjects train the model (only these are read)."),
    task: str = typer.Option(..., "--task", help="Conditioning classes: idh or tumor_type."),
    out: Path = typer.Option(..., "--out", help="The site package folder to write."),
    preset: str = typer.Option("demo", "--preset", help=f"One of {', '.join(PRESETS)}."),
    resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run exactly where it stopped."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing package or unfinished run."),
    config: Path | None = typer.Option(None, "--config", help="YAML/JSON config file applied over the preset."),
    overrides: list[str] = typer.Option([], "--set", help="Override one setting: section.key=value (repeatable)."),
    cache: Path | None = typer.Option(None, "--cache", help="Keep prepared data here (default: inside the run folder)."),
) -> None:
    """Train the site's autoencoder + class-conditional latent diffusion model and export a verified site package."""
    from catphish.modes.site_package import TrainRequest, train_site_package

    if task not in TASK_CLASSES:
        raise CatphishError(f"unknown task '{task}' (choose from {', '.join(TASK_CLASSES)})")
    study = load_config(config, preset, overrides)
    seed_everything(settings.seed)
    request = TrainRequest(data_dir=data, site=site, task=task, config=study, out=out, resume=resume,
                           overwrite=overwrite, cache_dir=cache, device=resolve_device(), seed=settings.seed,
                           show_progress=not settings.quiet)
    path = train_site_package(request)
    card = read_json(path / "card.json")
    console.print(f"[green]site package[/green] {path}  (site {card['site']}, task {card['task']}, "
                  f"{card['wall_seconds']:.0f} s)")


@app.command("inspect")
def inspect(
    package: Path = typer.Argument(..., help="A site package folder."),
    as_json: bool = typer.Option(False, "--json", help="Print the whole card as JSON."),
) -> None:
    """Print a site package's card (site, classes, training, reconstruction quality, privacy)."""
    card_path = package / "card.json"
    if not card_path.is_file():
        raise ArtifactError(f"{package}: no card.json; not a site package")
    card = read_json(card_path)
    if as_json:
        typer.echo(json.dumps(card, indent=2))
        return
    table = Table(title=f"site package {package.name}", show_header=False)
    table.add_row("site / task", f"{card.get('site')} / {card.get('task')}")
    table.add_row("classes", ", ".join(f"{c['name']} ({c['training_subjects']} subjects)" for c in card.get("classes", [])))
    table.add_row("preset / grid", f"{card.get('preset')} / {card.get('grid')}  latent {card.get('latent_shape')}")
    for stage, summary in (card.get("training") or {}).items():
        losses = ", ".join(f"{k} {v:.4g}" for k, v in summary.get("final_losses", {}).items())
        table.add_row(stage, f"{summary.get('steps')} steps, {summary.get('seconds_per_step')} s/step; {losses}")
    quality = card.get("reconstruction_quality")
    if quality:
        table.add_row("held-out PSNR (dB)", ", ".join(f"{k} {v:.1f}" for k, v in quality["psnr_db"].items()))
        table.add_row("held-out SSIM", ", ".join(f"{k} {v:.3f}" for k, v in quality["ssim"].items()))
        table.add_row("held-out mask Dice", f"{quality['mask_dice']:.3f}")
    table.add_row("perceptual loss", "on" if card.get("perceptual_loss", {}).get("enabled") else
                  f"off — {card.get('perceptual_loss', {}).get('reason', '')}")
    privacy = card.get("differential_privacy")
    table.add_row("DP-SGD", f"ε = {privacy['epsilon']} at δ = {privacy['delta']} ({privacy['stage']} stage)"
                  if privacy else "off")
    table.add_row("MI regulariser", "on" if card.get("mutual_information", {}).get("enabled") else "off")
    table.add_row("wall time", f"{card.get('wall_seconds')} s")
    table.add_row("format version", str(card.get("format_version")))
    console.print(table)


@app.command("verify")
def verify(package: Path = typer.Argument(..., help="A site package folder.")) -> None:
    """Check hashes, format version and that the models load; exit 2 with the reason when not."""
    from catphish.modes.site_package import verify_site_package

    loaded = verify_site_package(package)
    console.print(f"[green]ok[/green] {package}: site {loaded.site}, task {loaded.task}, classes "
                  f"{', '.join(loaded.class_names)}; hashes, format version and weights verified")


@app.command("sample")
def sample(
    package: Path = typer.Argument(..., help="A site package folder."),
    class_name: str = typer.Option(..., "--class", help="Class to generate, or 'all' for every class of the package."),
    n: int = typer.Option(..., "--n", help="Cases to generate (per class)."),
    out: Path = typer.Option(..., "--out", help="Dataset folder to write (BraTS naming + labels.csv)."),
    sampler: str | None = typer.Option(None, "--sampler", help="ddpm or ddim (default: the package's config)."),
    steps: int | None = typer.Option(None, "--steps", help="Denoising steps (default: the package's config)."),
    guidance: float | None = typer.Option(None, "--guidance", help="Classifier-free guidance scale (1 = none)."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Cases per batch."),
) -> None:
    """Generate cases of a class and write them in the data contract, readable like real data (a folder that already
    holds generated cases gets more, numbered after the last)."""
    from catphish.modes.site_package import load_site_package
    from catphish.synthesis.sampling import check_sampler_settings, sample_cases, write_cases_as_nifti

    device = resolve_device()
    loaded = load_site_package(package, device=device)
    classes = list(loaded.class_names) if class_name == "all" else [class_name]
    unknown = [name for name in classes if name not in loaded.class_names]
    if unknown:
        raise CatphishError(f"class '{unknown[0]}' is not in this site package (classes: "
                            f"{', '.join(loaded.class_names)}, or all)")
    if n < 1:
        raise CatphishError(f"--n must be at least 1, got {n}")
    _refuse_non_synthetic_folder(out)
    synthesis = loaded.config.synthesis
    used = {"sampler": sampler or synthesis.sampler, "steps": steps or synthesis.steps,
            "guidance": synthesis.guidance if guidance is None else guidance}
    check_sampler_settings(used["sampler"], used["steps"], used["guidance"], loaded.config.diffusion.train_timesteps)
    with run_record(out, "site sample", loaded.config.to_dict(), settings.seed,
                    inputs=[package / "manifest.json"]) as rec:
        written: dict[str, list[str]] = {}
        for offset, name in enumerate(classes):
            cases = sample_cases(loaded, name, n, used["sampler"], used["steps"], used["guidance"],
                                 seed=settings.seed + offset, batch_size=batch_size, device=device,
                                 show_progress=not settings.quiet)
            written[name] = write_cases_as_nifti(cases, out, site=loaded.site, task=loaded.task, class_name=name,
                                                 spacing_mm=loaded.config.data.spacing_mm,
                                                 extra={"source": "synthetic"})
        rec.add(package_site=loaded.site, task=loaded.task, generated={k: len(v) for k, v in written.items()}, **used)
    console.print(f"[green]wrote[/green] {sum(map(len, written.values()))} synthetic cases of site {loaded.site} "
                  f"({', '.join(f'{k}: {len(v)}' for k, v in written.items())}) to {out}")


def _refuse_non_synthetic_folder(out: Path) -> None:
    """More generated cases may go into a folder of generated cases, never into a real dataset."""
    from catphish.data.writing import read_label_rows

    if out.exists() and not out.is_dir():
        raise CatphishError(f"{out}: exists and is not a folder")
    rows = read_label_rows(out / "labels.csv") if out.is_dir() else []
    real = [row["subject_id"] for row in rows if row.get("source") != "synthetic"]
    if real or (out.is_dir() and any(out.iterdir()) and not rows):
        raise CatphishError(f"{out}: holds data that `site sample` did not generate (e.g. a real dataset); "
                            "write the generated cases to an empty or new folder")


@app.command("audit")
def audit(
    package: Path = typer.Argument(..., help="The site's own package."),
    data: Path = typer.Option(..., "--data", help="The site's real data (dataset folder or prepared cache); never leaves."),
    n: int = typer.Option(64, "--n", help="Synthetic cases generated for the audit (balanced over classes)."),
    features: str | None = typer.Option(None, "--features", help="Feature space for distances: autoencoder, radiomics "
                                        "or a ResNet-18 .safetensors file (default: the package's "
                                        "evaluation.audit_features)."),
    cache: Path | None = typer.Option(None, "--cache", help="Prepared-data cache for a raw dataset."),
    max_pearson: float | None = typer.Option(None, "--max-pearson", help="Fail when any synthetic case correlates "
                                             "above this with a training case (memorisation)."),
    max_mia_auc: float | None = typer.Option(None, "--max-mia-auc", help="Fail when the membership-inference AUC "
                                             "exceeds this (0.5 = chance)."),
) -> None:
    """Privacy audit at the site: memorisation (NN SSIM/RMSE/Pearson), feature distance, membership inference."""
    from catphish.modes.audit import audit_package

    if n < 2:
        raise CatphishError(f"--n must be at least 2, got {n}")
    result = audit_package(package, data, n=n, features=features, cache_dir=cache, seed=settings.seed,
                           max_pearson_limit=max_pearson, mia_auc_limit=max_mia_auc)
    mia = result["membership_inference"]
    console.print(f"[green]audit passed[/green] {package}: {result['generated_cases']} cases; max Pearson to a training "
                  f"case {result['memorisation_max_pearson']:.3f}; membership-inference AUC {mia['auc']:.3f} "
                  f"(0.5 = chance); stored in card.json and audit.png")


@app.command("share-synthetic")
def share_synthetic_command(
    package: Path = typer.Argument(..., help="The site's own package."),
    data: Path = typer.Option(..., "--data", help="The site's real data (dataset folder or prepared cache); never leaves."),
    n: int = typer.Option(..., "--n", help="Cases to generate before screening (balanced over classes)."),
    out: Path = typer.Option(..., "--out", help="Folder for the screened synthetic cohort (data contract)."),
    percentile: float = typer.Option(5.0, "--percentile", help="Block cases nearer to a training case than this "
                                     "percentile of real-to-real nearest distances."),
    features: str | None = typer.Option(None, "--features", help="Feature space: autoencoder, radiomics or a "
                                        "ResNet-18 .safetensors file (default: the package's evaluation.audit_features)."),
    cache: Path | None = typer.Option(None, "--cache", help="Prepared-data cache for a raw dataset."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output folder."),
) -> None:
    """PE-LDM safeguard: share screened synthetic cases instead of the model (blocks near-copies of training cases)."""
    from catphish.modes.audit import share_synthetic

    report = share_synthetic(package, data, n=n, out=out, features=features, percentile=percentile, cache_dir=cache,
                             seed=settings.seed, overwrite=overwrite)
    console.print(f"[green]shared[/green] {report['shared']} of {report['generated']} cases "
                  f"({report['blocked']} blocked, threshold {report['threshold']:.4g} in {report['feature_space']} "
                  f"space) → {out}")
