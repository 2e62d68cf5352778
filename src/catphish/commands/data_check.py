"""`catphish data check` and `catphish data prepare`: validate a raw dataset, preprocess it into the cache."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer

if TYPE_CHECKING:
    from catphish.data.validation import CheckReport

_NAMING_HELP = "File naming: auto (detected per subject), brats2021 (= brats2020), brats2023, ucsf-pdgm or generic."
_RESAMPLE_HELP = ("For raw data whose sequences are not in one voxel grid: resample every sequence and the mask into "
                  "this sequence's grid by world coordinates (t1, t1c, t2 or flair).")


def register(app: typer.Typer) -> None:
    """Add `check` and `prepare` to the `data` group."""

    @app.command("check")
    def check(
        data_dir: Path = typer.Argument(..., help="Dataset folder: one folder per site plus labels.csv."),
        json_output: bool = typer.Option(False, "--json", help="Print one JSON object instead of tables."),
        naming: str | None = typer.Option(None, "--naming", help=_NAMING_HELP),
        resample_to: str | None = typer.Option(None, "--resample-to", help="Accept sequences in different grids "
                                               "(as `prepare --resample-to` does). " + _RESAMPLE_HELP),
        config: Path | None = typer.Option(None, "--config", help="YAML/JSON config (its data section is used)."),
        overrides: list[str] = typer.Option([], "--set", help="Override a config value: section.key=value."),
        workers: int | None = typer.Option(None, "--workers", help="Processes reading subjects (default data.workers)."),
    ) -> None:
        """Validate a dataset: labels, files, headers, voxel grids and values. Exit 0 if clean, 2 if problems."""
        from catphish.config import load_config
        from catphish.data.validation import check_dataset
        from catphish.runtime import progress_bar

        data = load_config(config, "demo", overrides).data
        with progress_bar(transient=True) as progress:
            task = progress.add_task("checking", total=None, status="")
            report = check_dataset(data_dir, naming or data.naming, tolerance_mm=data.affine_tolerance_mm,
                                   resample_to=resample_to or data.resample_to,
                                   workers=workers if workers is not None else data.workers,
                                   on_subject=lambda subject_id: progress.update(task, advance=1, status=subject_id))
        if json_output:
            typer.echo(json.dumps(report.as_json(), indent=2))
        else:
            _print_report(report)
        if not report.ok:
            raise typer.Exit(code=2)

    @app.command("prepare")
    def prepare(
        data_dir: Path = typer.Argument(..., help="Dataset folder: one folder per site plus labels.csv."),
        out: Path = typer.Option(..., "--out", help="Cache folder: <site>/<subject_id>.safetensors and run.json."),
        preset: str = typer.Option("demo", "--preset", help="demo (2D slices), small3d or paper (3D volumes)."),
        config: Path | None = typer.Option(None, "--config", help="YAML/JSON config file applied on top of the preset."),
        overrides: list[str] = typer.Option([], "--set", help="Override a config value: section.key=value (repeat)."),
        sites: list[str] = typer.Option([], "--sites", help="Only these sites (repeat, or comma-separated)."),
        skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Skip (and list) invalid subjects instead of "
                                          "stopping at the first."),
        workers: int | None = typer.Option(None, "--workers", help="Parallel processes (default data.workers)."),
        naming: str | None = typer.Option(None, "--naming", help=_NAMING_HELP),
        resample_to: str | None = typer.Option(None, "--resample-to", help=_RESAMPLE_HELP),
    ) -> None:
        """Preprocess a dataset into the prepared cache (reorient, crop, z-score, resample, fit to the preset grid).

        Unchanged subjects are reused from the cache, so a second run is near-instant.
        """
        from catphish.config import load_config
        from catphish.data.preprocess import prepare_dataset

        overrides = list(overrides)
        if resample_to:
            overrides.append(f"data.resample_to={resample_to}")
        study = load_config(config, preset, overrides)
        selected = [site.strip() for item in sites for site in item.split(",") if site.strip()] or None
        prepare_dataset(data_dir, study, out, sites=selected, skip_invalid=skip_invalid, workers=workers, naming=naming)


def _print_report(report: CheckReport) -> None:
    """Per-site table, then every problem (red) and warning (yellow), one line each."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    table = Table(title=f"catphish data check: {escape(str(report.root))}", title_justify="left",
                  caption="O/A/G: oligodendroglioma / astrocytoma / glioblastoma", caption_justify="left")
    widest_site = max((len(site) for site in report.sites), default=4)
    table.add_column("site", no_wrap=True, min_width=min(widest_site, 30))
    for name in ("subjects", "IDH mut/wt", "type O/A/G", "shape", "spacing mm", "problems"):
        table.add_column(name, justify="right" if name in ("subjects", "problems") else "left")
    for site, summary in report.sites.items():
        table.add_row(escape(site), str(summary.subjects), _counts(summary.idh), _counts(summary.tumor_type),
                      _range(summary.shape_range(), "{:d}"), _range(summary.spacing_range(), "{:g}"),
                      f"[red]{summary.problems}[/red]" if summary.problems else "0")
    console.print(table)
    for problem in report.problems:
        console.print(f"[red]problem[/red] {escape(_relative(problem.file, report.root))}: {escape(problem.problem)}",
                      highlight=False, soft_wrap=True)
    for warning in report.warnings:
        console.print(f"[yellow]warning[/yellow] {escape(_relative(warning.file, report.root))}: "
                      f"{escape(warning.problem)}", highlight=False, soft_wrap=True)
    if report.problems:
        console.print(f"[bold red]{len(report.problems)} problem{'s' if len(report.problems) > 1 else ''} found[/]")
    else:
        console.print("[bold green]no problems found[/]")


def _counts(counts: dict[str, int]) -> str:
    text = "/".join(str(v) for k, v in counts.items() if k != "unknown")
    return text + (f" (+{counts['unknown']} unknown)" if counts.get("unknown") else "")


def _range(span: dict[str, list] | None, fmt: str) -> str:
    if span is None:
        return "–"
    low, high = ("×".join(fmt.format(v) for v in span[key]) for key in ("min", "max"))
    return low if low == high else f"{low} – {high}"


def _relative(file: str, root: Path) -> str:
    try:
        return str(Path(file).relative_to(root))
    except ValueError:
        return file

