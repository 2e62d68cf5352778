"""Flower's deployment engine end to end on 127.0.0.1: a SuperLink and three SuperNodes as separate processes
(started the way docs/federated.md tells a hub and its sites to), and a two-round study submitted to them."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from catphish.artifacts import read_json
from catphish.config import preset_config
from catphish.evaluation.predictions import read_predictions
from catphish.federated.node import flower_env, flower_executable
from catphish.federated.rounds import read_rounds_csv
from catphish.modes.federated import run_federated
from federated_standin import write_cohort


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port, timeout_s=60.0):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.5)
    raise TimeoutError(f"nothing listens on port {port}")


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_superlink_and_three_supernodes_run_a_two_round_study(tmp_path):
    data = write_cohort(tmp_path / "prepared", {"TCGA": 5, "UTSW": 6, "EGD": 5, "NYU": 4}, size=16)
    link_port = free_port()
    processes: list[subprocess.Popen] = []
    logs = []

    def start(name, command, home):
        log = (tmp_path / f"{name}.log").open("w")
        logs.append(log)
        processes.append(subprocess.Popen(command, env=flower_env(tmp_path / home), stdout=log,
                                          stderr=subprocess.STDOUT, start_new_session=True))

    try:
        start("superlink", [flower_executable("flower-superlink"), "--insecure", "--host", "127.0.0.1", "--port",
                            str(link_port), "--database", str(tmp_path / "state.db"),
                            "--disable-runtime-dependency-installation"], "hub")
        wait_for_port(link_port)
        for site in ("TCGA", "UTSW", "EGD"):
            start(site, [sys.executable, "-m", "catphish.federated.node", "--superlink", f"127.0.0.1:{link_port}",
                         "--data", str(data), "--site", site, "--insecure", "--port", str(free_port())], site)
        config = preset_config("demo")
        config.classifier.channels, config.classifier.batch_size, config.classifier.augment = (4, 8), 8, False
        config.federated.rounds = 2
        config.federated.engine = "deployment"
        config.federated.superlink = f"127.0.0.1:{link_port}"
        out = tmp_path / "run"
        summary = run_federated(config, data_dir=data, task="idh", out_dir=out)
        assert summary["rounds"] == 2 and sorted(summary["clients"]) == ["EGD", "TCGA", "UTSW"]
        rows = read_rounds_csv(out / "rounds.csv")
        assert [int(r["clients_ok"]) for r in rows] == [3, 3]
        assert all(int(r["bytes_up_TCGA"]) > 0 for r in rows)
        assert {p.site for p in read_predictions(out / "predictions.csv")} == {"NYU"}
        assert read_json(out / "run.json")["status"] == "finished"
    finally:
        for process in processes:
            with _suppress():
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                with _suppress():
                    os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        for log in logs:
            log.close()


def _suppress():
    import contextlib

    return contextlib.suppress(ProcessLookupError, PermissionError)
