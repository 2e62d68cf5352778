"""`catphish train`: the downstream classifier in every mode (centralized, local, synthetic, mixed, federated)."""

from __future__ import annotations

from pathlib import Path

import typer

from catphish.errors import CatphishError

_MODES = ("centralized", "local", "synthetic", "mixed", "federated")


def _sites(values: list[str]) -> tuple[str, ...] | None:
    """Repeated and/or comma-separated site names; ``None`` when none were given (use the defaults)."""
    names = tuple(site.strip() for value in values for site in value.split(",") if site.strip())
    return names or None


def register(root: typer.Typer) -> None:
    @root.command(name="train")
    def train(
        mode: str = typer.Option(..., "--mode", help="centralized (pooled real sites), local (one run per site), "
                                 "synthetic (hub's synthetic cohort only), mixed (real + synthetic) or federated."),
        task: str = typer.Option("idh", "--task", help="idh (mutant vs wildtype) or tumor_type (two stages: GBM vs "
                                 "lower-grade, then oligodendroglioma vs astrocytoma)."),
        data: Path = typer.Option(..., "--data", help="Real dataset (site folders + labels.csv) or a prepared cache; "
                                  "its test sites are always the test set."),
        synthetic: Path | None = typer.Option(None, "--synthetic", help="The hub's synthetic cohort (sites "
                                              "synthetic-<site>) for --mode synthetic and mixed."),
        train_sites: list[str] = typer.Option([], "--train-sites", help="Training sites (repeat or comma-separated; "
                                              "default: DESIGN §1 roles present in the data)."),
        test_sites: list[str] = typer.Option([], "--test-sites", help="Test sites (repeat or comma-separated)."),
        augment_only: bool = typer.Option(False, "--augment-only", help="With --mode mixed: the baseline trained on "
                                          "the same real sites with augmentation only (mode augment-only)."),
        preset: str = typer.Option("demo", "--preset", help="demo (2D slices), small3d or paper (3D volumes)."),
        out: Path = typer.Option(..., "--out", help="Run folder: model/, predictions.csv, folds.csv, summary.json, "
                                 "run.json."),
        resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run of the same config."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run folder."),
        config: Path | None = typer.Option(None, "--config", help="YAML/JSON config file applied on top of the preset."),
        overrides: list[str] = typer.Option([], "--set", help="Override a config value: section.key=value (repeat)."),
        cache: Path | None = typer.Option(None, "--cache", help="Prepared-data cache for a raw dataset (default: "
                                          "~/.cache/catphish/prepared/<dataset>-<hash>)."),
        skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Skip invalid subjects while preparing."),
        rounds: int | None = typer.Option(None, "--rounds", help="Federated: rounds (= --set federated.rounds=R)."),
        local_epochs: int | None = typer.Option(None, "--local-epochs", help="Federated: local epochs per round."),
        strategy: str | None = typer.Option(None, "--strategy", help="Federated: fedavg or fedprox (other options: "
                                            "--set federated.KEY=VALUE, see docs/federated.md)."),
    ) -> None:
        """Train the downstream classifier: 5-fold CV, fold models ensembled, predictions.csv for every test subject."""
        from catphish.config import load_config

        if mode not in _MODES:
            raise CatphishError(f"unknown --mode '{mode}' (choose from {', '.join(_MODES)})")
        study = load_config(config, preset, [*overrides, *_federated_overrides(rounds, local_epochs, strategy)])
        if mode == "federated":
            _train_federated(study, data, task, out, _sites(train_sites), _sites(test_sites), resume, overwrite, cache,
                             skip_invalid)
            return
        from catphish.modes.classification import TrainingRequest, run_training

        request = TrainingRequest(mode=mode, task=task, data_dir=data, out_dir=out, synthetic_dir=synthetic,
                                  train_sites=_sites(train_sites), test_sites=_sites(test_sites),
                                  augment_only=augment_only, cache_dir=cache, skip_invalid=skip_invalid,
                                  resume=resume, overwrite=overwrite)
        summaries = run_training(study, request)
        _print_summary(summaries)


def _train_federated(study, data: Path, task: str, out: Path, train_sites, test_sites, resume: bool, overwrite: bool,
                     cache: Path | None, skip_invalid: bool) -> None:
    """Federated mode (issue 8): Flower over the training sites, reading a prepared cache."""
    from catphish.modes.classification import prepared_data_dir
    from catphish.modes.federated import run_federated

    prepared = prepared_data_dir(data, study, cache, skip_invalid)
    summary = run_federated(study, data_dir=prepared, task=task, out_dir=out, train_sites=train_sites,
                            test_sites=test_sites, resume=resume, overwrite=overwrite)
    from catphish.runtime import console, settings

    if not settings.quiet:
        console.print(f"federated {task}: {summary['rounds']} rounds on {len(summary['clients'])} clients, "
                      f"{summary['bytes_total'] / 1e6:.2f} MB moved ({summary['bytes_per_round_mean'] / 1e6:.2f} MB per "
                      f"round), {summary['round_time_s_mean']:.1f} s per round; {summary['test_subjects']} test subjects "
                      f"predicted → {out / 'predictions.csv'}", highlight=False)


def _federated_overrides(rounds: int | None, local_epochs: int | None, strategy: str | None) -> list[str]:
    """The federated shortcut options as ``--set`` overrides (validated by the config like any other)."""
    values = {"rounds": rounds, "local_epochs": local_epochs, "strategy": strategy}
    return [f"federated.{key}={value}" for key, value in values.items() if value is not None]


def _print_summary(summaries: dict) -> None:
    """One line per mode and stage: ensemble test AUC/accuracy, mean single-fold AUC, training time."""
    from catphish.runtime import console, settings

    if settings.quiet:
        return
    for label, summary in summaries.items():
        for stage, values in summary["stages"].items():
            test = values["ensemble_test"]
            console.print(f"{label} {stage}: ensemble test AUC {test['auc']} (accuracy {test['accuracy']}, "
                          f"{test['subjects']} subjects); mean single-fold AUC {values['single_fold_test_auc_mean']}; "
                          f"out-of-fold AUC {values['out_of_fold']['auc']}; "
                          f"{sum(values['seconds_per_fold']):.1f} s training", highlight=False)
        if "combined_test_accuracy" in summary:
            console.print(f"{label} 3-class: test accuracy {summary['combined_test_accuracy']}", highlight=False)
