"""The whole demo chain at a tiny scale (phantom → site LDMs → hub → centralized / federated / synthetic → evaluation
→ report), then `bench all` on the same folder: finished stages are skipped and BENCHMARKS.md gets its sections."""

import json
import subprocess
import sys

import pytest

from ldm_fixtures import TINY_2D

TINY = [*TINY_2D, "classifier.channels=[4,8]", "classifier.epochs=1", "classifier.folds=2", "classifier.batch_size=8",
        "classifier.augment=false"]
DEMO = ["--scale", "0.01", "--per-class", "4", "--rounds", "1", "--audit-cases", "4", "--fidelity-samples", "12",
        *(arg for item in TINY for arg in ("--set", item))]


def _catphish(*args, timeout=900):
    return subprocess.run([sys.executable, "-c", "from catphish.cli import run; run()", "--quiet", *map(str, args)],
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "study"
    result = _catphish("demo", "--out", out, *DEMO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return out, result


def test_demo_runs_the_whole_chain_and_ends_with_the_report(demo):
    out, result = demo
    assert result.stdout.strip().splitlines()[-1] == str((out / "report.html").resolve())
    summary = json.loads((out / "summary.json").read_text())
    assert [row["mode"] for row in summary["modes"]] == ["centralized", "federated", "synthetic"]
    assert all(0.0 <= row["AUC"] <= 1.0 for row in summary["modes"])
    baselines = json.loads((out / "eval-synthesis" / "real_baselines.json").read_text())["rows"]
    for row in summary["fidelity"]:  # the real-vs-real scale beside each sequence's synthetic FID
        split = [b["fid"] for b in baselines if b["sequence"] == row["sequence"] and b["kind"] == "split-half"]
        assert split and row["real_split_half_fid_mean"] == pytest.approx(sum(split) / len(split))
    html = (out / "report.html").read_text()
    for heading in ("Cohort", "Classification", "Fidelity", "Communication", "privacy audit", "Run metadata"):
        assert heading in html
    assert "src=\"data:image/png;base64," in html and "<script src=" not in html
    stages = {p.stem for p in (out / "stages").glob("*.json")}
    assert {"phantom", "site-TCGA", "synthesize", "train-federated", "report"} <= stages
    for site in ("TCGA", "UTSW", "EGD"):
        card = json.loads((out / "packages" / f"{site}.catphish" / "card.json").read_text())
        assert card["audit"]["passed"] and "PATIENT" not in json.dumps(card)
    privacy = json.loads((out / "eval-synthesis" / "privacy.json").read_text())["rows"]
    assert [row["site"] for row in privacy] == ["TCGA", "UTSW", "EGD"] and all("MIA AUC" in row for row in privacy)


def test_bench_all_reuses_the_demo_and_writes_every_section(demo, tmp_path):
    out, _ = demo
    before = {p.name: p.stat().st_mtime for p in (out / "stages").glob("*.json")}
    benchmarks, readme = tmp_path / "BENCHMARKS.md", tmp_path / "README.md"
    readme.write_text("# x\n\n<!-- bench:results -->\nold\n<!-- /bench:results -->\n\n## Later\n")
    result = _catphish("bench", "all", "--out", out, "--benchmarks", benchmarks, "--readme", readme,
                       "--settings", "ddpm:3,ddim:2", "--synth-per-class", 2, *DEMO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert {p.name: p.stat().st_mtime for p in (out / "stages").glob("*.json")} == before
    text = benchmarks.read_text()
    for section in ("machine", "demo", "synth", "comms"):
        assert f"<!-- bench:{section} -->" in text
    assert "DDPM-3" in text and "DDIM-2" in text and "site-TCGA" in text
    results = readme.read_text()
    assert "old" not in results and "| centralized |" in results and results.rstrip().endswith("## Later")


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--scale", "-1", "--scale must be positive"), ("--rounds", "0", "--rounds must be at least 1"),
    ("--per-class", "0", "--per-class must be at least 1"), ("--preset", "huge", "unknown preset 'huge'")])
def test_demo_refuses_bad_options_with_one_line_and_writes_nothing(tmp_path, option, value, message):
    result = _catphish("demo", "--out", tmp_path / "study", option, value)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "study").exists()


@pytest.mark.slow
def test_full_demo_at_its_default_size(tmp_path):
    result = _catphish("demo", "--out", tmp_path / "study", timeout=3600)  # a hung stage fails, a slow machine does not
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    summary = json.loads((tmp_path / "study" / "summary.json").read_text())
    auc = {row["mode"]: row["AUC"] for row in summary["modes"]}
    assert auc["centralized"] > 0.7
    # CATphishing's claim at demo size: the synthetic-only and the federated classifier learn IDH on unseen sites too
    # (measured 0.83 and 0.76 vs 0.79; the synthetic draw alone moves the synthetic AUC by about ±0.05)
    assert auc["synthetic"] > 0.65 and auc["federated"] > 0.65, auc
    # the scale-0.1 phantom consortium passes the same validation as real data
    checked = _catphish("data", "check", tmp_path / "study" / "data", "--json")
    assert checked.returncode == 0, checked.stdout[-2000:]
    report = json.loads(checked.stdout)
    assert len(report["sites"]) == 8 and not report["problems"]
