"""`catphish hub` commands: synthesize a cohort from site packages, filter it."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from catphish.config import SynthesisConfig
from catphish.runtime import console, resolve_device, settings

_SYNTHESIS = SynthesisConfig()

app = typer.Typer(no_args_is_help=True)


@app.command(context_settings={"allow_extra_args": True})
def synthesize(
    context: typer.Context,
    packages: list[Path] = typer.Option(..., "--packages", help="Site package folders, one per site: `--packages A B C` "
                                        "or `--packages A --packages B`."),
    per_class: int = typer.Option(..., help="Cases to generate per class per site."),
    out: Path = typer.Option(..., help="Output dataset folder (data contract, sites named synthetic-<site>)."),
    sampler: str = typer.Option(_SYNTHESIS.sampler, help="ddpm or ddim."),
    steps: int = typer.Option(_SYNTHESIS.steps, help="Sampling steps (DDPM uses the full training schedule when given "
                              "1000)."),
    guidance: float = typer.Option(_SYNTHESIS.guidance, help="Classifier-free guidance scale (1 = none)."),
    batch_size: int = typer.Option(16, help="Cases per sampling batch (also the unit of resume)."),
    workers: int | None = typer.Option(None, help="Parallel worker processes (default: one per GPU with CUDA, "
                                       "else 1; on CPU each worker gets cores / workers threads)."),
    backend: str = typer.Option("local", help="local (processes) or ray (a Ray cluster; see docs/hub.md)."),
    ray_address: str | None = typer.Option(None, help="Ray cluster address (default: start a local Ray instance)."),
    classes: list[str] | None = typer.Option(None, "--class", help="Only this class (repeatable; default: all)."),
    resume: bool = typer.Option(False, help="Continue an interrupted synthesis in OUT (finished batches are kept)."),
    overwrite: bool = typer.Option(False, help="Replace OUT if it holds another run."),
) -> None:
    """Verify every package, then sample N cases per class per site (deterministic per --seed)."""
    from catphish.modes.hub import SynthesisRequest
    from catphish.modes.hub import synthesize as run

    device = str(resolve_device())
    if workers is None:
        import torch

        workers = torch.cuda.device_count() if device.startswith("cuda") else 1
    packages = [*packages, *map(Path, context.args)]  # `--packages A B C`: click hands B and C over as extra args
    request = SynthesisRequest(packages=tuple(map(str, packages)), out=str(out), per_class=per_class, sampler=sampler,
                               steps=steps, guidance=guidance, batch_size=batch_size, workers=workers, backend=backend,
                               ray_address=ray_address, seed=settings.seed, device=device, resume=resume,
                               overwrite=overwrite, classes=tuple(classes) if classes else None)
    summary = run(request, config_dict={k: v for k, v in request.__dict__.items() if k != "packages"})
    table = Table(title=f"synthetic cohort ({summary['task']}): {summary['cases']} cases → {out}")
    for column in ("site", "class", "cases"):
        table.add_column(column)
    for row in summary["per_site_class"]:
        table.add_row(row["site"], row["class"], str(row["cases"]))
    if not settings.quiet:
        console.print(table)


@app.command(name="filter")
def filter_command(
    cohort: Path = typer.Argument(..., help="Synthetic cohort folder written by `hub synthesize`."),
    percentile: float = typer.Option(20.0, help="Drop samples in pairs closer than this percentile of distances."),
    out: Path | None = typer.Option(None, help="Filtered cohort folder (default: COHORT-filtered)."),
    min_mask_voxels: int = typer.Option(8, help="Quality gate: smallest tumour mask kept."),
    overwrite: bool = typer.Option(False, help="Replace OUT if it exists."),
    within: str = typer.Option("site-class", help="Compare distances within each class of a site (default: a class "
                               "whose samples are alike is not emptied) or within each site (`site`, the paper's "
                               "literal rule)."),
) -> None:
    """Quality gate + the paper's diversity filter; writes the kept cases, kept.csv and filter_report.json."""
    from catphish.modes.hub import FilterRequest, filter_cohort

    target = out or cohort.with_name(f"{cohort.name}-filtered")
    report = filter_cohort(FilterRequest(cohort=str(cohort), out=str(target), percentile=percentile,
                                         min_mask_voxels=min_mask_voxels, overwrite=overwrite, within=within),
                           seed=settings.seed)
    table = Table(title=f"diversity filter (percentile {percentile:g}) → {target}")
    for column in ("site", "class", "before", "after quality gate", "after"):
        table.add_column(column)
    for row in report["rows"]:
        table.add_row(row["site"], row["class"], str(row["before"]), str(row["after_quality_gate"]), str(row["after"]))
    totals = report["totals"]
    table.add_row("all", "", str(totals["before"]), str(totals["after_quality_gate"]), str(totals["after"]))
    if not settings.quiet:
        console.print(table)
