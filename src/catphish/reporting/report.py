"""The study report: one self-contained HTML file built from evaluation folders and, optionally, the study's inputs.

Sections appear only when their inputs are given: cohort (real dataset), real vs synthetic montages, classification
(the analogues of the paper's Tables 4–5 and Figure 3), fidelity (Tables 2–3), communication (Supplementary Note 7),
privacy audit (package cards), the diversity filter, and run metadata. Every number comes from a file written by a
catphish command; the report computes nothing new except figures of those numbers.
"""

from __future__ import annotations

import csv
import datetime as dt
import tempfile
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from catphish import __version__
from catphish.artifacts import atomic_write_text, read_json
from catphish.config import TASK_CLASSES
from catphish.errors import CatphishError
from catphish.evaluation.fidelity import real_baseline_summary
from catphish.reporting.benchmarks import stage_timeline
from catphish.reporting.html import Page

MODE_EXPLANATION = {
    "centralized": "all training sites' images pooled in one place (the upper bound; impossible under most rules)",
    "federated": "Flower FedAvg: sites exchange classifier weights every round; images stay home",
    "synthetic": "CATphishing: trained only on the hub's synthetic cohort from the site models",
    "local": "one site's own data only (the lower bound)",
    "mixed": "real training data plus the synthetic cohort",
}


@dataclass
class ReportInputs:
    evaluations: list[Path]
    data_dir: Path | None = None
    synthetic_dir: Path | None = None
    filtered_dir: Path | None = None
    packages: list[Path] = field(default_factory=list)
    runs: list[Path] = field(default_factory=list)
    communication: list[dict[str, Any]] | None = None
    title: str = "catphish study report"
    stage_times: dict[str, dict[str, float]] | None = None
    """Stage name → ``{"seconds", "peak_rss_mb"}`` in the order the stages ran (the demo's stage records)."""


def build_report(inputs: ReportInputs, out: str | Path) -> Path:
    """Write the report to ``out`` (atomically) and return its path."""
    for path in inputs.evaluations:
        if not path.is_dir():
            raise CatphishError(f"{path}: evaluation folder does not exist (run `catphish evaluate` first)")
    tables, figures = _load_evaluations(inputs.evaluations)
    page = Page(inputs.title, subtitle=f"Generated {dt.datetime.now().strftime('%Y-%m-%d %H:%M')} by catphish "
                f"{__version__}. Hospitals keep their scans; each site ships one latent diffusion model to a hub, "
                "which trains on a synthetic cohort. This report compares that with pooling the data and with "
                "federated learning.")
    _overview(page, tables, inputs)
    if inputs.data_dir is not None:
        _cohort(page, inputs.data_dir)
    if inputs.data_dir is not None and (inputs.filtered_dir or inputs.synthetic_dir):
        _montages(page, inputs.data_dir, inputs.filtered_dir or inputs.synthetic_dir)
    _classification(page, tables, figures)
    _fidelity(page, tables, figures)
    if inputs.filtered_dir is not None and (inputs.filtered_dir / "filter_report.json").exists():
        _filter(page, read_json(inputs.filtered_dir / "filter_report.json"))
    if inputs.communication:
        _communication(page, inputs.communication)
    if inputs.runs:
        _federated_rounds(page, inputs.runs)
    if inputs.packages:
        _privacy(page, inputs.packages)
    _glossary(page, tables)
    _metadata(page, inputs)
    return atomic_write_text(out, page.render(footer="Every number above comes from files written by catphish "
                                                     "commands; see the run metadata section for how to reproduce."))


# -------------------------------------------------------------------------------------------------- loading
def _load_evaluations(folders: Sequence[Path]) -> tuple[dict[str, dict[str, Any]], dict[str, Any]]:
    tables: dict[str, dict[str, Any]] = {}
    figures: dict[str, Any] = {}
    for folder in folders:
        for path in sorted(folder.glob("*.json")):
            if path.name in ("run.json", "manifest.json"):
                continue
            content = read_json(path)
            if path.name == "figures.json":
                figures.update(content)
            elif isinstance(content, dict) and "rows" in content and "table" in content:
                tables[content["table"]] = content
    if not tables:
        raise CatphishError(f"no evaluation tables found in {', '.join(map(str, folders))}")
    return tables, figures


def _mcnemar(tests: dict[tuple[str, str], dict[str, Any]], row: dict[str, Any]) -> str:
    """The paper's way of reporting the paired test, or 'reference' for the reference mode itself."""
    test = tests.get((row["task"], row["mode"]))
    if test is not None:
        return str(test.get("reported", "—"))
    return "reference" if row["mode"] == "centralized" else "—"


def _rows(tables: dict[str, dict[str, Any]], name: str, **where: str) -> list[dict[str, Any]]:
    rows = tables.get(name, {}).get("rows", [])
    return [r for r in rows if all(r.get(k) == v for k, v in where.items())]


# -------------------------------------------------------------------------------------------------- sections
def _overview(page: Page, tables: dict[str, dict[str, Any]], inputs: ReportInputs) -> None:
    section = page.section("Summary")
    overall = [r for r in _rows(tables, "binary_metrics", site="overall") if r.get("stage") in (None, "", "combined")]
    if overall:
        tests = {(r["task"], r["mode"]): r for r in _rows(tables, "paired_tests", site="overall")
                 if r.get("test", "").lower().startswith("mcnemar")}
        section.text("Pooled external test sites. McNemar compares each mode's per-subject correctness with the "
                     "reference (centralized) mode on the same subjects; p > 0.05 means no significant difference.")
        section.table([{"task": r["task"], "mode": r["mode"], "subjects": r.get("n"), "ACC": r.get("accuracy"),
                        "AUC": r.get("auc"), "AUC 95% CI": _ci(r),
                        "McNemar vs reference": _mcnemar(tests, r)} for r in overall])
    section.text("Modes: " + "; ".join(f"{m} — {t}" for m, t in MODE_EXPLANATION.items()) + ".")
    if inputs.stage_times:
        section.heading("Wall time per stage")
        section.table([{"stage": k, "seconds": round(v["seconds"], 1), "peak RSS MiB": round(v["peak_rss_mb"])}
                       for k, v in inputs.stage_times.items()]
                      + [_stage_total(list(inputs.stage_times.values()))])
        section.text("Total: time during which any stage ran (the site models train at the same time and count once) "
                     "and the largest sum of peak RSS over stages running at the same time.")


def _stage_total(records: list[dict[str, Any]]) -> dict[str, Any]:
    if all("started" in r and "ended" in r for r in records):
        timeline = stage_timeline(records)
        return {"stage": "total", "seconds": round(timeline.wall_seconds, 1), "peak RSS MiB": round(timeline.peak_rss_mb)}
    return {"stage": "total (sum)", "seconds": round(sum(r["seconds"] for r in records), 1),
            "peak RSS MiB": round(max(r["peak_rss_mb"] for r in records))}


def _ci(row: dict[str, Any]) -> str:
    low, high = row.get("auc_ci_low"), row.get("auc_ci_high")
    return f"{low:.3f}–{high:.3f}" if isinstance(low, float) and isinstance(high, float) else "–"


def _cohort(page: Page, data_dir: Path) -> None:
    from catphish.data.writing import read_label_rows

    rows = read_label_rows(data_dir / "labels.csv")
    if not rows:
        return
    section = page.section("Cohort")
    section.text("Subjects per site and class (Table 1 analogue). Roles follow DESIGN §1: IDH training sites TCGA, "
                 "UTSW, EGD; the others are external test sites.")
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for row in rows:
        counts[row["site"]]["n"] += 1
        for task in TASK_CLASSES:
            if row.get(task):
                counts[row["site"]][row[task]] += 1
    columns = ["n", *TASK_CLASSES["idh"], *TASK_CLASSES["tumor_type"]]
    section.table([{"site": site, **{c: counts[site].get(c, 0) for c in columns}} for site in sorted(counts)]
                  + [{"site": "all", **{c: sum(v.get(c, 0) for v in counts.values()) for c in columns}}])


def _montages(page: Page, data_dir: Path, synthetic_dir: Path) -> None:
    from catphish.data.loading import discover_dataset, load_subject_volumes
    from catphish.reporting.montage import MontageRow, render_montage

    synthetic = discover_dataset(synthetic_dir)
    real = discover_dataset(data_dir)
    pairs = []
    seen: set[tuple[str, str]] = set()
    for subject in synthetic.subjects:
        site = subject.site.removeprefix("synthetic-")
        label = subject.idh or subject.tumor_type
        if (site, label) in seen:
            continue
        match = next((s for s in real.subjects if s.site == site and label in (s.idh, s.tumor_type)), None)
        if match is not None:
            seen.add((site, label))
            pairs.append((site, label, match, subject))
    if not pairs:
        return
    section = page.section("Real vs synthetic cases")
    section.text("One real training case and one generated case per site and class (axial slice with the most "
                 "tumour; red: whole-tumour mask, which the site model generates as its fifth channel).")
    with tempfile.TemporaryDirectory() as tmp:
        for index, (site, label, real_subject, synthetic_subject) in enumerate(pairs):
            montage_rows = []
            for caption, subject in ((f"real {site} {label}", real_subject),
                                     (f"synthetic {site} {label}", synthetic_subject)):
                volumes = load_subject_volumes(subject)
                montage_rows.append(MontageRow(caption, volumes, volumes["mask"]))
            path = render_montage(montage_rows, Path(tmp) / f"m{index}.png", panel_inches=1.5, dpi=80)
            section.image(path, f"real vs synthetic, {site} {label}")


def _classification(page: Page, tables: dict[str, dict[str, Any]], figures: dict[str, Any]) -> None:
    if "binary_metrics" not in tables and "multiclass_metrics" not in tables:
        return
    section = page.section("Classification (Tables 4–5, Figure 3)")
    notes = tables.get("binary_metrics", {}).get("notes", {})
    section.text("ACC accuracy, SEN sensitivity and SPE specificity of the positive class "
                 f"({_positive_text(notes)}), AUC with a stratified bootstrap 95% confidence interval, per test site "
                 "and pooled ('overall').")
    binary = tables.get("binary_metrics", {}).get("rows", [])
    if binary:
        # The class names are in the sentence above; dropping them keeps the table within a laptop screen.
        hidden = {"task", "positive_class", "negative_class"} | ({"stage"} if _one_value(binary, "stage") else set())
        section.table(binary, columns=[c for c in tables["binary_metrics"]["columns"] if c not in hidden])
    rocs = figures.get("roc", [])
    if rocs:
        section.heading("ROC curves on the pooled test sites (Figure 3 analogue)")
        section.figures([(_roc_figure([r for r in rocs if r["task"] == task and r["stage"] == stage]),
                          f"ROC {task} {stage}") for task, stage in sorted({(r["task"], r["stage"]) for r in rocs})])
    multiclass = tables.get("multiclass_metrics", {}).get("rows", [])
    if multiclass:
        section.heading("Tumour type, 3 classes (Table 5 analogue)")
        section.table(multiclass)
    matrices = [m for m in figures.get("confusion_matrices", []) if m.get("site") == "overall"]
    if matrices:
        section.heading("Confusion matrices (pooled test sites; rows: true class, columns: predicted)")
        section.figures([(_confusion_figure(m), f"confusion {m['mode']}") for m in matrices])
    paired = tables.get("paired_tests", {}).get("rows", [])
    if paired:
        section.heading("Paired tests against the reference mode")
        section.text(tables["paired_tests"].get("description", ""))
        hidden = {"task", "reference"} | ({"stage"} if _one_value(paired, "stage") else set())
        section.table(paired, columns=[c for c in tables["paired_tests"]["columns"] if c not in hidden])


def _one_value(rows: list[dict[str, Any]], key: str) -> bool:
    return len({str(r.get(key)) for r in rows}) <= 1


def _positive_text(notes: dict[str, Any]) -> str:
    positive = notes.get("positive_class") if isinstance(notes, dict) else None
    if isinstance(positive, dict):
        return ", ".join(f"{k}: {v}" for k, v in positive.items())
    return str(positive) if positive else "IDH: mutant"


def _roc_figure(curves: list[dict[str, Any]]) -> plt.Figure:
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    for curve in curves:
        ax.plot(curve["fpr"], curve["tpr"], label=f"{curve['mode']} (AUC {curve['auc']:.3f})")
    ax.plot([0, 1], [0, 1], color="#999", linestyle=":", linewidth=1)
    ax.set_xlabel("1 − specificity")
    ax.set_ylabel("sensitivity")
    if curves:
        ax.set_title(f"{curves[0]['task']} {curves[0]['stage']}".replace(" combined", ""))
    ax.legend(fontsize=8, loc="lower right")
    return fig


def _confusion_figure(matrix: dict[str, Any]) -> plt.Figure:
    values = np.asarray(matrix["matrix"])
    fig, ax = plt.subplots(figsize=(2.6 + 0.5 * len(values), 2.3 + 0.5 * len(values)))
    ax.imshow(values, cmap="Blues")
    for (i, j), count in np.ndenumerate(values):
        ax.text(j, i, str(count), ha="center", va="center", color="black" if count < values.max() / 2 else "white")
    ax.set_xticks(range(len(values)), matrix["classes"], rotation=30, fontsize=8)
    ax.set_yticks(range(len(values)), matrix["classes"], fontsize=8)
    ax.set_title(f"{matrix['mode']} ({matrix['task']} {matrix['stage']})".replace(" combined", ""), fontsize=9)
    return fig


def _fidelity(page: Page, tables: dict[str, dict[str, Any]], figures: dict[str, Any]) -> None:
    if "fid_matrix" not in tables and "quality" not in tables:
        return
    section = page.section("Fidelity of the synthetic cohort (Tables 2–3)")
    notes = tables.get("fidelity_pairs", tables.get("fid_matrix", {})).get("notes", {})
    extractor = notes.get("feature_extractor", {}) if isinstance(notes, dict) else {}
    name = extractor.get("name", "the default extractor") if isinstance(extractor, dict) else str(extractor)
    section.text(f"FID per sequence between each site's synthetic cases and every site's real cases, with features "
                 f"from {name} (not Inception: no pretrained network can be downloaded here, so compare with the "
                 "real-vs-real baselines rather than with the paper's values). A good site model has its lowest "
                 "FID on the diagonal (its own site).")
    for metric in ("fid", "kid"):
        matrices = figures.get(f"{metric}_matrix", {})
        if matrices:
            section.figures([(_fid_figure(sequence, matrix, metric.upper()), f"{metric.upper()} {sequence}")
                             for sequence, matrix in matrices.items()])
    own_site = [{key: row.get(key) for key in ("sequence", "synthetic_site", "n_synthetic", "n_real", "fid", "kid",
                                               "precision", "recall")}
                for row in tables.get("fidelity_pairs", {}).get("rows", []) if row.get("same_site") == "yes"]
    if own_site:
        section.heading("Each synthetic site against its own real site: FID, KID and the precision/recall of the "
                        "generated distribution (k-NN manifolds; precision = share of synthetic slices inside the real "
                        "manifold, recall = share of real slices inside the synthetic one).")
        section.table(own_site)
    for name in ("fidelity_summary", "real_baselines", "quality"):
        if name in tables and tables[name]["rows"]:
            section.heading(tables[name]["description"])
            rows = tables[name]["rows"]
            section.table(real_baseline_summary(rows) if name == "real_baselines" else rows)


def _fid_figure(sequence: str, matrix: dict[str, Any], metric: str = "FID") -> plt.Figure:
    if isinstance(matrix, dict) and "values" in matrix:
        rows, columns = matrix["synthetic_sites"], matrix["real_sites"]
        values = np.asarray(matrix["values"], dtype=float)
    else:
        rows = sorted(matrix)
        columns = sorted({c for r in matrix.values() for c in r})
        values = np.array([[matrix[r].get(c, np.nan) for c in columns] for r in rows], dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 + 0.8 * len(columns), 1.0 + 0.6 * len(rows)))
    image = ax.imshow(values, cmap="viridis_r")
    for (i, j), value in np.ndenumerate(values):
        light = image.norm(value) < 0.5  # viridis_r is light (yellow) for low values: dark text there
        ax.text(j, i, f"{value:.1f}" if metric == "FID" else f"{value:.3g}", ha="center", va="center", fontsize=7,
                color="black" if light else "white")
    ax.set_xticks(range(len(columns)), [f"real {c}" for c in columns], rotation=30, fontsize=7)
    ax.set_yticks(range(len(rows)), [f"syn {r}" for r in rows], fontsize=7)
    ax.set_title(f"{metric}, {sequence}", fontsize=9)
    return fig


def _filter(page: Page, report: dict[str, Any]) -> None:
    section = page.section("Diversity filter at the hub")
    groups = "each class of a site" if report.get("within", "site") == "site-class" else "each site"
    section.text("Quality gate (empty, tiny or out-of-brain masks, non-finite images), then the paper's rule: "
                 f"{report.get('features', 'radiomics features')}, standardised; within {groups}, samples in pairs "
                 "closer than the chosen percentile of pairwise distances are dropped (the paper kept 4614 of 9600).")
    section.table(report["rows"] + [{"site": "all", "class": "", **report["totals"]}])


def _communication(page: Page, rows: list[dict[str, Any]]) -> None:
    section = page.section("Communication (Supplementary Note 7)")
    section.text("Bytes that leave the sites in each mode, measured: centralized = the training images; federated = "
                 "serialized Flower messages, all rounds, both directions; CATphishing = the site packages, sent once.")
    section.table(rows)


def _federated_rounds(page: Page, runs: Sequence[Path]) -> None:
    rounds_files = [run / "rounds.csv" for run in runs if (run / "rounds.csv").exists()]
    if not rounds_files:
        return
    section = page.section("Federated training rounds")
    for path in rounds_files:
        with path.open(newline="") as handle:
            rows = list(csv.DictReader(handle))
        section.heading(f"{path.parent.name}: {len(rows)} rounds")
        section.table(rows)


def _privacy(page: Page, packages: Sequence[Path]) -> None:
    from catphish.evaluation.privacy import privacy_rows

    audits = privacy_rows(packages)
    section = page.section("Site packages and privacy audit")
    section.text("Measured at each site on its own data; only these aggregate numbers leave the site. MIA AUC is the "
                 "SSIM-distance membership-inference attack (training cases vs held-out cases; 0.5 = the attacker "
                 "cannot tell members; the paper reports 0.493). Max Pearson is the memorisation measure of the "
                 "DDPM + mutual-information work.")
    section.table(audits)
    previews = [p / "preview.png" for p in packages if (p / "preview.png").exists()]
    for preview in previews:
        section.image(preview, f"samples from {preview.parent.name}")


GLOSSARY: dict[str, str] = {
    "AUC": "area under the ROC curve of the positive-class probability (0.5 = chance, 1 = perfect ranking)",
    "ACC / SEN / SPE": "accuracy, sensitivity (recall of the positive class), specificity (recall of the negative class) "
                       "at the 0.5 threshold",
    "McNemar": "paired test of correctness against the reference mode on the same subjects; reported as χ²(1) = …, "
               "p = … (or the exact binomial p when few pairs disagree); p > 0.05: no significant difference",
    "DeLong": "paired test of two AUCs on the same subjects",
    "FID / KID": "Fréchet and kernel (unbiased MMD²) distances between feature distributions of synthetic and real "
                 "slices, per sequence; lower = closer. Read them against the real-vs-real baselines",
    "precision / recall": "share of synthetic slices inside the real feature manifold (fidelity) and of real slices "
                          "inside the synthetic one (coverage)",
    "BRISQUE / PIQE": "no-reference image quality; lower is better; compare synthetic with real of the same site",
    "MIA AUC": "membership-inference attack: how well nearest-synthetic SSIM separates training from held-out cases "
               "(0.5 = no leakage)",
}
"""What each number in the report means; the evaluation notes (exact settings of this run) follow it."""


def _glossary(page: Page, tables: dict[str, dict[str, Any]]) -> None:
    section = page.section("How to read the numbers")
    section.table([{"number": k, "meaning": v} for k, v in GLOSSARY.items()])
    settings: dict[str, str] = {}
    for table in tables.values():
        for key, value in (table.get("notes") or {}).items():
            if key not in settings and not isinstance(value, dict | list):
                settings[key] = str(value)
            elif key not in settings and isinstance(value, dict) and key == "feature_extractor":
                settings[key] = f"{value.get('name')}: {value.get('description')}"
    if settings:
        section.heading("Settings of this evaluation")
        section.table([{"setting": k.replace("_", " "), "value": v} for k, v in settings.items()])


def _metadata(page: Page, inputs: ReportInputs) -> None:
    section = page.section("Run metadata")
    section.text("From the run.json written beside every output: command, seed, versions, git commit, host.")
    rows = []
    for folder in [*inputs.evaluations, *inputs.runs, *inputs.packages,
                   *(p for p in (inputs.synthetic_dir, inputs.filtered_dir) if p is not None)]:
        path = folder / "run.json"
        if not path.exists():
            continue
        record = read_json(path)
        versions = record.get("versions", {})
        rows.append({"output": folder.name, "command": record.get("command"), "seed": record.get("seed"),
                     "status": record.get("status"), "started": record.get("started"),
                     "git commit": (record.get("git_commit") or "–")[:12],
                     "torch": versions.get("torch"), "monai": versions.get("monai"),
                     "host": (record.get("host") or {}).get("cpu")})
    section.table(rows)
