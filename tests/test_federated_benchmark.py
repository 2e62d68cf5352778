"""``catphish bench federated``: variant configs, the evaluated table (fast, on written predictions) and one real
two-variant run in Flower's simulation engine (slow: each variant starts Ray)."""

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from catphish.cli import app
from catphish.config import preset_config
from catphish.errors import CatphishError
from catphish.evaluation.classification import EvaluationSettings, evaluate_predictions, load_test_predictions
from catphish.evaluation.predictions import Prediction, write_predictions
from catphish.modes import federated_benchmark as bench
from federated_standin import write_cohort


def test_variants_set_what_their_names_say():
    config = preset_config("demo")
    chosen = {v.name: bench.variant_config(config, v, 1.5) for v in bench.select_variants([])}
    assert chosen["fedavg"].federated == config.federated
    assert chosen["fedprox-dirichlet"].federated.strategy == "fedprox"
    assert chosen["fedprox-dirichlet"].federated.partition == "dirichlet"
    assert chosen["class-balanced-dirichlet"].federated.weighting == "class_balanced"
    assert chosen["dp"].federated.differential_privacy == "server_fixed"
    assert chosen["dp"].federated.target_epsilon == 1.5 and chosen["fedavg"].federated.target_epsilon == 0.0
    with pytest.raises(CatphishError, match="unknown federated variant 'fedsgd'"):
        bench.select_variants(["fedsgd"])


def _predictions(folder, mode, noise, seed):
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(40):
        truth = ("mutant", "wildtype")[i % 2]
        p = float(np.clip((0.8 if truth == "mutant" else 0.2) + rng.normal(0, noise), 0.01, 0.99))
        rows.append(Prediction(f"S{i:02d}", "NYU", mode, "idh", "ensemble", truth, {"mutant": p, "wildtype": 1 - p}))
    write_predictions(folder / "predictions.csv", rows, ("mutant", "wildtype"))
    return folder


def test_table_has_the_reference_then_each_variant_with_tests_and_run_numbers(tmp_path):
    reference = _predictions(tmp_path / "central", "centralized", 0.2, 0)
    variants = bench.select_variants(["fedavg", "dp"])
    for index, variant in enumerate(variants):
        _predictions(tmp_path / variant.name, "federated", 0.3 + 0.3 * index, index + 1)
    rows = load_test_predictions([reference, *(f"{v.name}={tmp_path / v.name}" for v in variants)])
    evaluation = evaluate_predictions(rows, EvaluationSettings(bootstrap_resamples=100, seed=0))
    summaries = {"fedavg": {"round_time_s_mean": 2.0, "bytes_per_round_mean": 3e6},
                 "dp": {"round_time_s_mean": 2.5, "bytes_per_round_mean": 3e6,
                        "privacy": {"idh": {"epsilon": 1.49, "noise_multiplier": 9.8}}}}
    table = bench._result_rows(evaluation, variants, summaries)
    assert [r["mode"] for r in table] == ["centralized", "fedavg", "dp"]
    assert table[0]["mcnemar"] == "reference" and table[1]["mcnemar"].startswith(("χ²(1)", "exact"))
    assert table[2]["epsilon"] == 1.49 and table[1]["epsilon"] is None and 0 <= table[2]["delong_p"] <= 1
    markdown = bench._markdown({"task": "idh", "reference": str(reference), "target_epsilon": 1.5, "rounds": 10,
                                "dirichlet_alpha": 0.3, "proximal_mu": 0.01, "rows": table}, "catphish bench federated")
    assert "| dp |" in markdown and "1.49" in markdown and "3.00" in markdown


@pytest.mark.slow
def test_bench_federated_runs_variants_in_the_simulation_engine(tmp_path):
    data = write_cohort(tmp_path / "prepared", {"TCGA": 6, "UTSW": 6, "EGD": 6, "NYU": 6}, size=16)
    tiny = ["--set", "classifier.channels=[4,8]", "--set", "classifier.batch_size=8", "--set", "classifier.augment=false",
            "--set", "classifier.epochs=1", "--set", "classifier.folds=2", "--set", "data.grid=[16,16]"]
    runner = CliRunner()
    central = runner.invoke(app, ["--quiet", "train", "--mode", "centralized", "--data", str(data), "--out",
                                  str(tmp_path / "central"), *tiny])
    assert central.exit_code == 0, central.output + repr(central.exception)
    benchmarks = tmp_path / "BENCHMARKS.md"
    result = runner.invoke(app, ["--quiet", "bench", "federated", "--data", str(data), "--reference",
                                 str(tmp_path / "central"), "--out", str(tmp_path / "fl"), "--variants", "fedavg,dp",
                                 "--rounds", "2", "--bootstrap", "100", "--benchmarks", str(benchmarks), *tiny])
    assert result.exit_code == 0, result.output + repr(result.exception)
    saved = json.loads((tmp_path / "fl" / "federated_benchmark.json").read_text())
    assert [r["mode"] for r in saved["rows"]] == ["centralized", "fedavg", "dp"]
    assert saved["rows"][2]["epsilon"] == pytest.approx(1.5, abs=0.01) and saved["rows"][1]["bytes_per_round"] > 0
    assert "<!-- bench:federated -->" in benchmarks.read_text()
