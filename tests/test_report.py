"""`catphish report` builds one self-contained HTML page from evaluation folders."""

import importlib.util
import os
import re
import shutil

import numpy as np
import pytest
from typer.testing import CliRunner

from catphish.cli import app
from catphish.evaluation.predictions import Prediction, write_predictions
from ldm_fixtures import tiny_subjects, write_prepared

SITES = ("NYU", "UCSF")


def _predictions(mode, strength, seed):
    rng = np.random.default_rng(seed)
    truths = np.random.default_rng(99).random(len(SITES) * 25) < 0.4
    rows = []
    for s, site in enumerate(SITES):
        for i in range(25):
            truth = "mutant" if truths[s * 25 + i] else "wildtype"
            logit = strength * (1 if truth == "mutant" else -1) + rng.normal(0, 1.0)
            p = float(1 / (1 + np.exp(-logit)))
            probabilities = {"mutant": p, "wildtype": 1 - p}
            rows.append(Prediction(f"{site}-{i:03d}", site, mode, "idh", "ensemble", truth, probabilities))
    return rows


@pytest.fixture(scope="module")
def evaluations(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    runs = []
    for seed, (mode, strength) in enumerate({"centralized": 2.0, "federated": 1.8, "synthetic": 1.5}.items()):
        write_predictions(root / mode / "predictions.csv", _predictions(mode, strength, seed), ("mutant", "wildtype"))
        runs.append(str(root / mode))
    runner = CliRunner()
    result = runner.invoke(app, ["evaluate", *runs, "--out", str(root / "eval"), "--bootstrap", "200"])
    assert result.exit_code == 0, result.output
    real = write_prepared(root / "real", [*tiny_subjects(site="alpha", size=32), *tiny_subjects(site="beta", size=32,
                                                                                               seed=1)])
    synthetic = write_prepared(root / "syn", [*tiny_subjects(site="synthetic-alpha", size=32, seed=2),
                                              *tiny_subjects(site="synthetic-beta", size=32, seed=3)])
    result = runner.invoke(app, ["evaluate-synthesis", "--real", str(real), "--synthetic", str(synthetic),
                                 "--out", str(root / "fidelity"), "--no-quality"])
    assert result.exit_code == 0, result.output
    return root


def test_report_is_self_contained_and_has_the_paper_sections(evaluations, tmp_path):
    out = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["report", str(evaluations / "eval"), str(evaluations / "fidelity"),
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    html = out.read_text()
    for heading in ("Summary", "Classification (Tables 4–5, Figure 3)", "Fidelity of the synthetic cohort",
                    "Run metadata"):
        assert heading in html
    assert len(re.findall(r'src="data:image/png;base64,', html)) >= 3  # ROC, confusion matrices, FID matrices
    assert not re.search(r'(src|href)="https?://', html), "the report must not load anything from the network"
    assert "McNemar" in html and "federated" in html and "handcrafted" in html
    # what each number means, and this evaluation's exact settings
    assert "How to read the numbers" in html and "stratified percentile bootstrap, 200 resamples" in html


def test_report_shows_cohort_montages_quality_and_kid(evaluations, tmp_path):
    from nifti_fixtures import write_dataset

    write_dataset(tmp_path / "real", sites={"TCGA": 3}, shape=(32, 32, 16))
    write_dataset(tmp_path / "syn", sites={"synthetic-TCGA": 3}, shape=(32, 32, 16), seed=7)
    quality = tmp_path / "fidelity"
    result = CliRunner().invoke(app, ["evaluate-synthesis", "--real", str(evaluations / "real"), "--synthetic",
                                      str(evaluations / "syn"), "--out", str(quality)])
    assert result.exit_code == 0, result.output
    out = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["report", str(evaluations / "eval"), str(quality), "--out", str(out),
                                      "--data", str(tmp_path / "real"), "--filtered", str(tmp_path / "syn")])
    assert result.exit_code == 0, result.output
    html = out.read_text()
    assert "Cohort" in html and "Real vs synthetic cases" in html and "real vs synthetic, TCGA" in html
    assert "BRISQUE" in html and "PIQE" in html  # Table 3
    assert "KID alpha" not in html and "KID t1" in html and "FID t1" in html  # both cross-site matrices
    assert "precision/recall of the generated distribution" in html


def test_report_without_evaluations_is_a_clear_error(tmp_path):
    result = CliRunner().invoke(app, ["report", str(tmp_path / "missing"), "--out", str(tmp_path / "r.html")])
    assert result.exit_code != 0
    assert "evaluation folder does not exist" in str(result.exception)
    assert not (tmp_path / "r.html").exists()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
BROWSER_REQUIRED = os.environ.get("CATPHISH_REQUIRE_BROWSER") == "1"  # set by .ci/run, which installs Chromium


def test_report_reads_on_a_laptop_screen_in_headless_chromium(evaluations, tmp_path):
    """Rendered by a real browser at 1366 × 768: every image decodes, nothing overflows sideways, no console errors."""
    if CHROMIUM is None or importlib.util.find_spec("playwright") is None:
        message = "needs Chromium (Debian package chromium) and the playwright Python package"
        if BROWSER_REQUIRED:
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    out = tmp_path / "report.html"
    result = CliRunner().invoke(app, ["report", str(evaluations / "eval"), str(evaluations / "fidelity"),
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"])
        page = browser.new_page(viewport={"width": 1366, "height": 768})
        errors: list[str] = []
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("requestfailed", lambda request: errors.append(f"request failed: {request.url}"))
        page.goto(out.as_uri())
        layout = page.evaluate("""() => ({
            overflow: document.documentElement.scrollWidth - window.innerWidth,
            images: [...document.images].map(i => i.complete && i.naturalWidth > 0),
            headings: [...document.querySelectorAll('h2')].map(h => h.textContent),
            widest: Math.max(...[...document.querySelectorAll('img')].map(i => i.getBoundingClientRect().right)),
        })""")
        page.screenshot(path=str(tmp_path / "report.png"), full_page=True)
        browser.close()
    assert layout["overflow"] <= 1, f"the page is {layout['overflow']} px wider than a 1366 px screen"
    assert layout["images"] and all(layout["images"]), "an embedded figure did not decode"
    assert layout["widest"] <= 1366
    assert any("Classification" in h for h in layout["headings"]) and not errors, errors
    assert (tmp_path / "report.png").stat().st_size > 20_000
