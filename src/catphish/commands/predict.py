"""`catphish predict`: apply a trained classifier ensemble to any dataset (a user's new cases)."""

from __future__ import annotations

from pathlib import Path

import typer


def _sites(values: list[str]) -> list[str] | None:
    names = [site.strip() for value in values for site in value.split(",") if site.strip()]
    return names or None


def register(root: typer.Typer) -> None:
    @root.command(name="predict")
    def predict(
        run: Path = typer.Argument(..., help="A run folder of `catphish train` (or its model/ folder)."),
        data: Path = typer.Option(..., "--data", help="Dataset to classify: site folders + labels.csv (labels may be "
                                  "empty) or a prepared cache."),
        out: Path = typer.Option(Path("predictions.csv"), "--out", help="Predictions file to write."),
        sites: list[str] = typer.Option([], "--sites", help="Only these sites (repeat or comma-separated)."),
        cache: Path | None = typer.Option(None, "--cache", help="Prepared-data cache for a raw dataset."),
        skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Skip invalid subjects while preparing."),
    ) -> None:
        """Predict every subject of a dataset with a trained ensemble; writes predictions.csv (fold = ensemble)."""
        from catphish.modes.classification import predict_dataset

        predict_dataset(run, data, out, sites=_sites(sites), cache_dir=cache, skip_invalid=skip_invalid)
