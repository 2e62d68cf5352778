"""`catphish report`: one self-contained HTML report."""

from __future__ import annotations

from pathlib import Path

import typer

from catphish.runtime import console, settings


def register(root: typer.Typer) -> None:
    @root.command(name="report")
    def report(
        evaluations: list[Path] = typer.Argument(..., help="Folders written by `catphish evaluate` / `evaluate-synthesis`."),
        out: Path = typer.Option(..., "--out", help="The HTML file to write."),
        data: Path | None = typer.Option(None, help="The real dataset (cohort table, real montages)."),
        synthetic: Path | None = typer.Option(None, help="The hub's synthetic cohort (montages)."),
        filtered: Path | None = typer.Option(None, help="The filtered synthetic cohort (filter report, montages)."),
        packages: list[Path] = typer.Option([], "--package", help="Site package folders (privacy audit; repeatable)."),
        runs: list[Path] = typer.Option([], "--run", help="Training run folders (federated rounds; repeatable)."),
        communication: Path | None = typer.Option(None, help="communication.json (bytes per mode) to include."),
        stage_times: Path | None = typer.Option(None, help="Folder of stage records (demo) for the wall-time table."),
        title: str = typer.Option("catphish study report", help="Report title."),
    ) -> None:
        """Cohort, montages, classification (Tables 4–5, Figure 3), fidelity (Tables 2–3), privacy and metadata."""
        from catphish.artifacts import read_json
        from catphish.reporting.report import ReportInputs, build_report

        times = ({p.stem: read_json(p) for p in sorted(stage_times.glob("*.json"), key=lambda p: p.stat().st_mtime)}
                 if stage_times is not None and stage_times.is_dir() else None)
        path = build_report(ReportInputs(evaluations=evaluations, data_dir=data, synthetic_dir=synthetic,
                                         filtered_dir=filtered, packages=packages, runs=runs, title=title,
                                         communication=read_json(communication) if communication else None,
                                         stage_times=times), out)
        if not settings.quiet:
            console.print(f"report written: {path.resolve()}")
