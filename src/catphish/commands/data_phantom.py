"""`catphish data phantom` (generate the phantom consortium) and `catphish data show` (montage of subjects)."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from catphish.errors import CatphishError

PHANTOM_GENERATOR_VERSION = 1
"""Bumped whenever the generator changes what a seed produces (recorded in run.json, part of the resume check)."""


def _split_names(values: list[str] | None) -> list[str]:
    """Repeated options and comma-separated lists both work: ``--sites TCGA --sites UTSW`` = ``--sites TCGA,UTSW``."""
    return [part.strip() for value in values or [] for part in value.split(",") if part.strip()]


def register(app: typer.Typer) -> None:
    """Add this module's commands to the `data` group."""

    @app.command("phantom")
    def phantom(
        out: Path = typer.Argument(..., help="Output folder: <SITE>/<id>/<id>_{t1,t1ce,t2,flair,seg}.nii.gz + labels.csv."),
        scale: float = typer.Option(0.1, help="Fraction of the paper's cohort sizes (1.0 = 2491 subjects); every "
                                    "class keeps at least 3 subjects per site."),
        seed: int | None = typer.Option(None, help="Seed of the cohort (default: the global --seed)."),
        sites: list[str] | None = typer.Option(None, "--sites", help="Only these sites (repeat or comma-separate): "
                                               "TCGA, UTSW, EGD, NYU, UWM, UCSF, UPenn, UTSWp2."),
        resolution: int = typer.Option(2, help="Voxel size in mm: 2 (99×117×95, fast) or 1 (197×233×189)."),
        workers: int = typer.Option(0, help="Worker processes; 0 = one per available CPU core."),
        resume: bool = typer.Option(False, "--resume", help="Continue an interrupted run into the same folder."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing folder."),
    ) -> None:
        """Generate the phantom consortium: eight sites of synthetic glioma MRI on real (MNI152) brain anatomy."""
        from catphish.artifacts import open_output_dir, run_record
        from catphish.data.phantom import build_consortium, plan_cohort, resolve_sites
        from catphish.data.phantom.anatomy import MNI152_FILES, mni152_path
        from catphish.runtime import console, log, progress_bar, settings

        if resolution not in (1, 2):
            raise CatphishError(f"--resolution must be 1 or 2 (mm), got {resolution}")
        if workers < 0:
            raise CatphishError(f"--workers must be 0 (automatic) or more, got {workers}")
        seed = settings.seed if seed is None else seed
        site_names = [c.site for c in resolve_sites(_split_names(sites))]
        plans = plan_cohort(scale, seed, site_names)
        config = {"scale": scale, "seed": seed, "sites": site_names, "resolution_mm": resolution,
                  "generator_version": PHANTOM_GENERATOR_VERSION}
        open_output_dir(out, config, resume=resume, overwrite=overwrite, what="phantom cohort")
        templates = [mni152_path(name) for name in MNI152_FILES]  # the anatomy, hashed into run.json
        with run_record(out, "data phantom", config, seed, inputs=templates) as record, progress_bar() as progress:
            task = progress.add_task("phantom", total=len(plans), status="")

            def advance(subject_id: str) -> None:
                progress.update(task, advance=1, status=subject_id)

            summary = build_consortium(out, plans, seed, float(resolution), workers=workers, resume=resume,
                                       on_subject=advance)
            progress.update(task, completed=len(plans))
            record.add(summary=summary.as_record())
        if not settings.quiet:
            console.print(_counts_table(summary.counts, {c.site: c.split for c in resolve_sites(site_names)}))
        log.info("wrote %d subjects to %s in %.1f s (%.2f subjects/s with %d workers%s)", summary.subjects, out,
                 summary.seconds, summary.subjects_per_second, summary.workers,
                 f", {summary.skipped} kept from before" if summary.skipped else "")

    @app.command("show")
    def show(
        data_dir: Path = typer.Argument(..., help="Dataset folder (site folders + labels.csv), real or phantom."),
        subjects: list[str] | None = typer.Option(None, "--subjects", help="Subject ids, one row each (repeat or "
                                                  "comma-separate); default: one per site, up to 4."),
        out: Path = typer.Option(..., "--out", help="PNG file to write."),
        naming: str = typer.Option("auto", help="File naming convention (auto, brats2021, brats2023, ucsf-pdgm, "
                                   "generic)."),
        dpi: int = typer.Option(110, help="Resolution of the PNG (dots per inch; a panel is 1.9 inches wide)."),
    ) -> None:
        """Montage of T1, T1C, T2 and FLAIR with the tumour contour, one row per subject (largest tumour slice)."""
        from catphish.data.loading import discover_dataset, read_volume
        from catphish.reporting.montage import MontageRow, render_montage
        from catphish.runtime import log

        if out.suffix.lower() != ".png":
            raise CatphishError(f"{out.name}: --out must be a .png file")
        dataset = discover_dataset(data_dir, naming=naming)
        found = {s.subject_id: s for s in [*dataset.subjects, *dataset.unlabelled]}
        wanted = _split_names(subjects)
        if not wanted:
            by_site: dict[str, str] = {}
            for subject in sorted(found.values(), key=lambda s: (s.site, s.subject_id)):
                by_site.setdefault(subject.site, subject.subject_id)
            wanted = list(by_site.values())[:4]
        if not wanted:
            raise CatphishError(f"{data_dir}: no subjects found to show")
        rows = []
        for subject_id in wanted:
            if subject_id not in found:
                raise CatphishError(f"{data_dir}: no subject '{subject_id}' (found {len(found)} subjects)")
            subject = found[subject_id]
            missing = subject.missing_roles
            if missing:
                raise CatphishError(f"{subject_id}: missing {', '.join(missing)} file(s)")
            volumes, affine = {}, None
            for role in ("t1", "t1c", "t2", "flair"):
                volumes[role], affine = read_volume(subject.files[role])
            segmentation, _ = read_volume(subject.files["seg"])
            label = " · ".join(v for v in (subject.site, subject.idh and f"IDH-{subject.idh}", subject.tumor_type) if v)
            rows.append(MontageRow(caption=f"{subject_id}\n{label}", volumes=volumes, segmentation=segmentation,
                                   affine=affine))
        if not 30 <= dpi <= 600:
            raise CatphishError(f"--dpi must be between 30 and 600, got {dpi}")
        render_montage(rows, out, dpi=dpi)
        log.info("wrote %s (%d subjects)", out, len(rows))


def _counts_table(counts: dict[str, dict[str, int]], splits: dict[str, str]) -> Table:
    """Subjects per site and class; '–' where a site has no tumour-type labels (UPenn)."""
    table = Table(title="phantom consortium", show_edge=False)
    for column in ("site", "IDH role", "subjects", "IDH-mut", "IDH-wt", "oligo", "astro", "GBM"):
        table.add_column(column, justify="left" if column in ("site", "IDH role") else "right")
    for site, site_counts in counts.items():
        typed = any(site_counts.get(t, 0) for t in ("oligodendroglioma", "astrocytoma", "glioblastoma"))
        types = [str(site_counts.get(t, 0)) if typed else "–" for t in ("oligodendroglioma", "astrocytoma", "glioblastoma")]
        table.add_row(site, splits.get(site, ""), str(site_counts["subjects"]), str(site_counts.get("idh_mutant", 0)),
                      str(site_counts.get("idh_wildtype", 0)), *types)
    return table
