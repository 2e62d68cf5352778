"""`catphish evaluate` (classification metrics and paired tests of runs) and `catphish evaluate-synthesis` (fidelity
and quality of a synthetic cohort against the real sites)."""

from __future__ import annotations

import contextlib
import math
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from catphish.config import EvaluationConfig
from catphish.errors import CatphishError

if TYPE_CHECKING:
    from catphish.evaluation.classification import ClassificationEvaluation
    from catphish.evaluation.synthetic_cohort import FidelityEvaluation

_DEFAULTS = EvaluationConfig()


def register(root: typer.Typer) -> None:
    @root.command(name="evaluate")
    def evaluate(
        runs: list[str] = typer.Argument(..., help="Run folders holding predictions.csv, or the csv files; LABEL=RUN "
                                         "evaluates a run's rows as mode LABEL (e.g. fedprox=runs/fl-prox)."),
        out: Path = typer.Option(..., "--out", help="Folder for the tables (CSV + JSON), figures.json and run.json."),
        reference: str = typer.Option(_DEFAULTS.reference_mode, "--reference",
                                      help="Mode every other mode is compared with on the same subjects."),
        bootstrap: int = typer.Option(_DEFAULTS.bootstrap_resamples, "--bootstrap",
                                      help="Bootstrap resamples for the AUC confidence interval."),
        confidence: float = typer.Option(_DEFAULTS.confidence, "--confidence", help="Confidence level of intervals."),
        seed: int | None = typer.Option(None, "--seed", help="Bootstrap seed (default: the global --seed)."),
    ) -> None:
        """Per test site and overall: ACC/SEN/SPE/AUC with bootstrap CI (binary), per-class accuracy, macro-F1 and
        confusion matrices (3-class), per stage; McNemar, DeLong and Stuart–Maxwell against the reference mode."""
        from catphish.evaluation.classification import EvaluationSettings, evaluate_runs, predictions_path
        from catphish.runtime import log, settings

        if bootstrap < 1:
            raise CatphishError(f"--bootstrap must be at least 1, got {bootstrap}")
        if not 0 < confidence < 1:
            raise CatphishError(f"--confidence must be between 0 and 1, got {confidence}")
        if bootstrap < 1000:
            log.warning("--bootstrap %d: fewer than 1000 resamples give unstable interval bounds", bootstrap)
        _check_output_folder(out)
        options = EvaluationSettings(reference, bootstrap, confidence, settings.seed if seed is None else seed)
        result = evaluate_runs(runs, options)  # every input is read and checked before anything is written
        _write_classification(out, result, options, [predictions_path(run) for run in runs])
        if not settings.quiet:
            _print_classification_summary(result, reference)
        log.info("evaluation written to %s", out)

    @root.command(name="evaluate-synthesis")
    def evaluate_synthesis(
        real: Path = typer.Option(..., "--real", help="Real dataset: site folders + labels.csv, or a prepared cache."),
        synthetic: Path = typer.Option(..., "--synthetic", help="Synthetic dataset (sites named synthetic-<site>), "
                                       "raw or prepared."),
        out: Path = typer.Option(..., "--out", help="Folder for the tables (CSV + JSON), figures.json and run.json."),
        samples: int | None = typer.Option(None, "--samples", help="Slices drawn per site and source (default: "
                                           f"evaluation.fid_samples, {_DEFAULTS.fid_samples})."),
        features: str | None = typer.Option(None, "--features", help="Feature extractor for FID/KID/precision-recall: "
                                            "handcrafted, or a .safetensors file of ResNet-18 weights (default: "
                                            "evaluation.feature_extractor, handcrafted)."),
        brisque_model: Path | None = typer.Option(None, "--brisque-model", help="Folder with LIVE's BRISQUE allmodel "
                                                  "and allrange (default: the shipped OpenCV LIVE model)."),
        no_quality: bool = typer.Option(False, "--no-quality", help="Skip BRISQUE and PIQE."),
        preset: str = typer.Option("demo", "--preset", help="Preset whose data settings prepare raw datasets."),
        config: Path | None = typer.Option(None, "--config", help="YAML/JSON config file applied on top of the preset."),
        overrides: list[str] = typer.Option([], "--set", help="Override a config value: section.key=value (repeat)."),
        cache: Path | None = typer.Option(None, "--cache", help="Keep prepared raw datasets here (default: a "
                                          "temporary folder, removed afterwards)."),
        skip_invalid: bool = typer.Option(False, "--skip-invalid", help="Skip invalid subjects of raw datasets."),
        seed: int | None = typer.Option(None, "--seed", help="Sampling seed (default: the global --seed)."),
        packages: list[Path] = typer.Option([], "--package", help="Site package whose audit numbers (membership "
                                            "inference, memorisation) go into the privacy table (repeat)."),
    ) -> None:
        """FID per sequence (real vs synthetic per site) and the cross-site FID matrix, KID, precision/recall,
        BRISQUE/PIQE per sequence, real vs synthetic, and the site audits' privacy numbers from the packages."""
        from catphish.config import load_config
        from catphish.evaluation import quality
        from catphish.evaluation.features import feature_extractor
        from catphish.evaluation.privacy import privacy_table
        from catphish.evaluation.synthetic_cohort import FidelitySettings, evaluate_synthetic_cohort, load_cohort_slices
        from catphish.runtime import log, resolve_device, settings

        study = load_config(config, preset, overrides)
        samples = study.evaluation.fid_samples if samples is None else samples
        if samples < 4:
            raise CatphishError(f"--samples must be at least 4, got {samples}")
        _check_output_folder(out)
        privacy = privacy_table(packages) if packages else None  # a tampered package is refused before any work
        extractor = feature_extractor(features or study.evaluation.feature_extractor, resolve_device())
        model = None if no_quality else quality.load_brisque_model(brisque_model)
        options = FidelitySettings(samples=samples, seed=settings.seed if seed is None else seed, quality=not no_quality)
        with _cache_folder(cache) as cache_dir:
            real_slices = load_cohort_slices(real, study, cache_dir / "real", skip_invalid)
            synthetic_slices = load_cohort_slices(synthetic, study, cache_dir / "synthetic", skip_invalid)
        result = evaluate_synthetic_cohort(real_slices, synthetic_slices, extractor, options, model)
        if privacy is not None:
            result.tables.append(privacy)
        _write_fidelity(out, result, options, study.to_dict(), [_dataset_fingerprint(real), _dataset_fingerprint(synthetic)])
        if not settings.quiet:
            _print_fidelity_summary(result)
        log.info("fidelity evaluation written to %s", out)


def _check_output_folder(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise CatphishError(f"{out}: output path exists and is not a folder")


def _dataset_fingerprint(path: Path) -> Path:
    """What run.json hashes for a dataset: its labels.csv (raw datasets can be gigabytes), else the whole folder."""
    labels = path / "labels.csv"
    return labels if labels.is_file() else path


@contextlib.contextmanager
def _cache_folder(cache: Path | None) -> Iterator[Path]:
    if cache is not None:
        yield cache
        return
    with tempfile.TemporaryDirectory(prefix="catphish-eval-") as folder:
        yield Path(folder)


def _write_classification(out: Path, result: ClassificationEvaluation, options: object, inputs: list[Path]) -> None:
    from dataclasses import asdict

    from catphish.artifacts import run_record, write_json
    from catphish.evaluation.tables import json_safe, write_tables

    config = asdict(options)  # type: ignore[call-overload]
    with run_record(out, "evaluate", config, config["seed"], inputs=list(inputs)) as record:
        files = write_tables(out, result.tables)
        files.append(write_json(out / "figures.json", json_safe(result.figures)))
        record.add(outputs=[path.name for path in files], notes=json_safe(result.notes))


def _write_fidelity(out: Path, result: FidelityEvaluation, options: object, study: dict, inputs: list[Path]) -> None:
    from dataclasses import asdict

    from catphish.artifacts import run_record, write_json
    from catphish.evaluation.tables import json_safe, write_tables

    config = {"fidelity": asdict(options), "study": study}  # type: ignore[call-overload]
    with run_record(out, "evaluate-synthesis", config, config["fidelity"]["seed"], inputs=list(inputs)) as record:
        files = write_tables(out, result.tables)
        files.append(write_json(out / "figures.json", json_safe(result.figures)))
        record.add(outputs=[path.name for path in files], notes=json_safe(result.notes))


def _number(value: object, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def _print_classification_summary(result: ClassificationEvaluation, reference: str) -> None:
    """One line per task/stage and mode on the pooled test sites, with the paired tests against the reference."""
    from rich.console import Console
    from rich.table import Table as RichTable

    tests = {(r["task"], r["stage"], r["mode"], r["test"]): r
             for r in result.table("paired_tests").rows if r["site"] == "overall"}
    table = RichTable(title=f"catphish evaluate: all test sites pooled (paired tests vs {reference})",
                      title_justify="left")
    for name in ("task", "mode", "n", "ACC", "SEN", "SPE", "AUC [95% CI]", "macro-F1", "McNemar",
                 "DeLong / Stuart–Maxwell"):
        table.add_column(name)
    for row in result.table("binary_metrics").rows:
        if row["site"] != "overall":
            continue
        key = (row["task"], row["stage"], row["mode"])
        table.add_row(_task_label(row), str(row["mode"]), str(row["n"]), _number(row["accuracy"]),
                      _number(row["sensitivity"]), _number(row["specificity"]),
                      f"{_number(row['auc'])} [{_number(row['auc_ci_low'])}, {_number(row['auc_ci_high'])}]", "",
                      _mcnemar_text(tests.get((*key, "McNemar"))), _p_text(tests.get((*key, "DeLong"))))
    for row in result.table("multiclass_metrics").rows:
        if row["site"] != "overall":
            continue
        key = (row["task"], row["stage"], row["mode"])
        table.add_row(_task_label(row), str(row["mode"]), str(row["n"]), _number(row["accuracy"]), "", "", "",
                      _number(row["macro_f1"]), _mcnemar_text(tests.get((*key, "McNemar"))),
                      str(tests.get((*key, "Stuart-Maxwell"), {}).get("reported", "")))
    Console().print(table)


def _task_label(row: dict) -> str:
    return str(row["task"]) if row["stage"] == "combined" else f"{row['task']} {row['stage']}"


def _mcnemar_text(row: dict | None) -> str:
    if not row:
        return ""
    return f"exact p = {row['p_value']:.4f}" if row["method"] == "exact binomial" else str(row["reported"])


def _p_text(row: dict | None) -> str:
    return f"p = {row['p_value']:.4f}" if row and isinstance(row.get("p_value"), float) else ""


def _print_fidelity_summary(result: FidelityEvaluation) -> None:
    from rich.console import Console
    from rich.table import Table as RichTable

    table = RichTable(title=f"catphish evaluate-synthesis: features {result.notes['feature_extractor']['name']}",
                      title_justify="left")
    for name in ("sequence", "FID diagonal", "FID off-diagonal", "KID diagonal", "KID off-diagonal",
                 "rows with diagonal lowest"):
        table.add_column(name)
    for row in result.table("fidelity_summary").rows:
        table.add_row(str(row["sequence"]), _number(row["fid_diagonal_mean"], 2), _number(row["fid_off_diagonal_mean"], 2),
                      _number(row["kid_diagonal_mean"], 4), _number(row["kid_off_diagonal_mean"], 4),
                      f"{row['rows_where_diagonal_lowest']} / {row['rows_with_diagonal']}")
    Console().print(table)
