"""``run_federated``: input checks (fast, nothing written on bad input) and one tiny run in Flower's simulation
engine (Ray start-up costs ~12 s, so it is the only simulation in the default suite)."""

import subprocess
import sys

import pytest

from catphish.artifacts import read_json
from catphish.config import preset_config
from catphish.errors import CatphishError
from catphish.evaluation.predictions import read_predictions
from catphish.federated.rounds import read_rounds_csv
from catphish.modes.federated import run_federated
from federated_standin import write_cohort

SITES = {"TCGA": 5, "UTSW": 6, "EGD": 5, "NYU": 4, "NOTT": 3}


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return write_cohort(tmp_path_factory.mktemp("sim") / "prepared", SITES, size=16)


def tiny_config(**federated):
    config = preset_config("demo")
    config.classifier.channels, config.classifier.batch_size, config.classifier.augment = (4, 8), 8, False
    for key, value in {"rounds": 2, **federated}.items():
        setattr(config.federated, key, value)
    return config


def free_port():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_simulation_engine_runs_a_federated_study(cohort, tmp_path):
    out = tmp_path / "run"
    summary = run_federated(tiny_config(), data_dir=cohort, task="idh", out_dir=out, seed=3)
    assert summary["rounds"] == 2 and summary["clients"] == ["EGD", "TCGA", "UTSW"]
    rows = read_rounds_csv(out / "rounds.csv")
    assert [int(r["clients_ok"]) for r in rows] == [3, 3] and all(float(r["round_time_s"]) > 0 for r in rows)
    predictions = read_predictions(out / "predictions.csv")
    assert {p.site for p in predictions} == {"NYU"} and {p.mode for p in predictions} == {"federated"}
    record = read_json(out / "run.json")
    assert record["status"] == "finished" and record["seed"] == 3
    assert record["federated"]["bytes_total"] == summary["bytes_total"] > 0
    assert read_json(out / "partitions.json")["kind"] == "sites"
    assert (out / "model" / "idh-fold0.safetensors").exists() and (out / "rounds.png").exists()


@pytest.mark.parametrize(("change", "message"), [
    ({"federated": {"rounds": 0}}, "federated.rounds must be at least 1"),
    ({"federated": {"min_clients": 5}}, "min_clients=5 but the federation has only 3"),
    ({"task": "tumor_type", "train_sites": ["TCGA", "NOTT"]}, "site 'NOTT' has no training subjects labelled"),
    ({"train_sites": ["TCGA", "Mars"]}, "training site .Mars. is not in the data"),
    ({"task": "grade"}, "unknown task 'grade'"),
])
def test_bad_input_is_refused_before_anything_is_written(cohort, tmp_path, change, message):
    out = tmp_path / "run"
    with pytest.raises(CatphishError, match=message):
        run_federated(tiny_config(**change.get("federated", {})), data_dir=cohort, task=change.get("task", "idh"),
                      out_dir=out, train_sites=change.get("train_sites"))
    assert not out.exists()


def test_unreachable_superlink_is_a_clear_error(cohort, tmp_path):
    config = tiny_config(engine="deployment", superlink=f"127.0.0.1:{free_port()}")
    with pytest.raises(CatphishError, match="cannot reach the SuperLink at 127.0.0.1:.* is it running"):
        run_federated(config, data_dir=cohort, task="idh", out_dir=tmp_path / "run")


def test_supernode_that_cannot_reach_the_superlink_exits_with_a_message(cohort):
    port = free_port()
    done = subprocess.run([sys.executable, "-m", "catphish.federated.node", "--superlink", f"127.0.0.1:{port}",
                           "--data", str(cohort), "--site", "TCGA", "--insecure"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert f"cannot reach the SuperLink at 127.0.0.1:{port}" in done.stderr
    missing = subprocess.run([sys.executable, "-m", "catphish.federated.node", "--superlink", f"127.0.0.1:{port}",
                              "--data", str(cohort), "--site", "Atlantis", "--insecure"],
                             capture_output=True, text=True, timeout=60)
    assert missing.returncode == 2 and "has no site 'Atlantis'" in missing.stderr


@pytest.mark.parametrize(("arguments", "message"), [
    (["--rounds", "0"], "federated.rounds must be at least 1"),
    (["--strategy", "fedsgd"], "federated.strategy' must be one of fedavg, fedprox"),
    (["--task", "tumor_type", "--train-sites", "TCGA,NOTT"], "site 'NOTT' has no training subjects labelled"),
])
def test_cli_refuses_bad_federated_input_with_one_line_and_exit_code_2(cohort, tmp_path, arguments, message):
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", "from catphish.cli import run; run()", "train", "--mode", "federated",
                           "--data", str(cohort), "--out", str(out), *arguments],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert message in " ".join(done.stderr.split())
    assert "Traceback" not in done.stderr and not out.exists()


@pytest.mark.slow
def test_all_clients_dropping_through_the_cli_fails_after_the_retries(cohort, tmp_path):
    out = tmp_path / "run"
    done = subprocess.run([sys.executable, "-c", "from catphish.cli import run; run()", "--quiet", "train", "--mode",
                           "federated", "--data", str(cohort), "--out", str(out), "--rounds", "2",
                           "--set", "federated.dropout_probability=1.0", "--set", "federated.retries=1",
                           "--set", "classifier.channels=[4,8]", "--set", "classifier.augment=false"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 2, done.stderr[-2000:]
    errors = [line for line in done.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "round 1: fewer than federated.min_clients=2 clients" in errors[0], done.stderr[-2000:]
    assert "in 2 attempt" in errors[0] and "Traceback" not in done.stderr
