"""Federated mode: the downstream classifier trained by Flower across the training sites (DESIGN §2).

:func:`run_federated` checks the input, partitions the training subjects into clients, writes the run's setup,
and runs the Flower apps in the simulation engine (default: every client a virtual SuperNode on this machine) or
through a running Flower deployment (SuperLink + one SuperNode per site, see docs/federated.md). Outputs in the run
folder: ``predictions.csv`` (test sites, ``mode=federated``, ``fold=ensemble``), ``rounds.csv`` + ``rounds.png``,
``global_model.safetensors`` (+ ``global_model.json``), ``partitions.json``, ``summary.json``, ``run.json`` and
``checkpoint.safetensors`` (the global model after the last finished round, for ``--resume``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from catphish.artifacts import open_output_dir, run_record, write_json
from catphish.config import TASK_CLASSES, StudyConfig
from catphish.data.prepared import PreparedSubject, load_prepared_dir
from catphish.errors import CatphishError
from catphish.federated.partitions import LabelledSubject, PartitionPlan, make_partition_plan
from catphish.federated.strategies import check_federated_config
from catphish.federated.task import DEFAULT_TRAINER, ClientSource
from catphish.runtime import log, resolve_device, settings
from catphish.training.ensemble import task_stages

PARTITIONS_NAME = "partitions.json"


@dataclass(frozen=True)
class FederatedInputs:
    """The checked input of a federated run: who trains on what, and where the test subjects are."""

    plan: PartitionPlan
    train_sites: tuple[str, ...]
    test_sites: tuple[str, ...]
    class_names: tuple[str, ...]


def run_federated(config: StudyConfig, *, data_dir: str | Path, task: str, out_dir: str | Path,
                  train_sites: Sequence[str] | None = None, test_sites: Sequence[str] | None = None,
                  resume: bool = False, overwrite: bool = False, seed: int | None = None,
                  trainer: str = DEFAULT_TRAINER) -> dict[str, Any]:
    """Train the classifier federatedly and write the run folder; returns the run summary (bytes, ε, …)."""
    seed = settings.seed if seed is None else seed
    data_dir, out = Path(data_dir), Path(out_dir)
    inputs = check_inputs(config, data_dir, task, train_sites, test_sites, seed)
    federated = config.federated
    fingerprint = {"command": "train", "mode": "federated", "task": task, "config": config.to_dict(), "seed": seed,
                   "data": str(data_dir.resolve()), "train_sites": inputs.train_sites, "test_sites": inputs.test_sites}
    resuming = open_output_dir(out, fingerprint, resume=resume, overwrite=overwrite, what="run")
    device = resolve_device()
    setup = _setup(config, inputs, data_dir, out, task, seed, str(device), trainer, resuming)
    with run_record(out, "train --mode federated", config.to_dict(), seed, inputs=[data_dir]) as record:
        write_json(out / PARTITIONS_NAME, inputs.plan.to_dict())
        setup.save(out / "setup.json")
        log.info("federated %s on %d clients (%s partition): %s", federated.strategy, len(inputs.plan.clients),
                 inputs.plan.kind, ", ".join(inputs.plan.names))
        if federated.engine == "deployment":
            from catphish.federated.deployment import run_deployed

            summary = run_deployed(setup, out)
        else:
            summary = run_simulated(setup, inputs.plan, data_dir, out, trainer, str(device))
        record.add(federated=summary, train_sites=list(inputs.train_sites), test_sites=list(inputs.test_sites))
    return summary


def check_inputs(config: StudyConfig, data_dir: Path, task: str, train_sites: Sequence[str] | None,
                 test_sites: Sequence[str] | None, seed: int) -> FederatedInputs:
    """Every check that needs no Flower: task, config values, sites, a client without data for the task."""
    if task not in TASK_CLASSES:
        raise CatphishError(f"unknown task '{task}' (choose from {', '.join(TASK_CLASSES)})")
    class_names = TASK_CLASSES[task]
    from catphish.modes.classification import DEFAULT_SITE_ROLES, resolve_site_roles

    subjects = _read_labels(data_dir)
    present = sorted({s.site for s in subjects})
    train, test = resolve_site_roles(task, present, train_sites, test_sites, data_dir)
    if not train:
        raise CatphishError(f"{data_dir}: none of the default training sites ({', '.join(DEFAULT_SITE_ROLES[task][0])}) "
                            f"is in the data (sites present: {', '.join(present) or 'none'}); name them with --train-sites")
    training = [s for s in subjects if s.site in train and s.split != "test"]
    labelled = [LabelledSubject(s.subject_id, s.site, s.label(task)) for s in training if s.label(task) in class_names]
    if config.federated.partition == "sites":
        for site in train:
            if not any(s.site == site for s in labelled):
                raise CatphishError(f"site '{site}' has no training subjects labelled for task '{task}'; "
                                    "leave it out of --train-sites")
    skipped = len(training) - len(labelled)
    if skipped:
        log.warning("%d training subject(s) have no %s label and are left out", skipped, task)
    federated = config.federated
    plan = make_partition_plan(federated.partition, labelled, class_names, num_clients=federated.num_clients,
                               seed=seed, alpha=federated.dirichlet_alpha,
                               holdout_fraction=federated.shared_holdout_fraction)
    check_federated_config(federated, len(plan.clients))
    if federated.secure_aggregation and len(plan.clients) < 3:
        raise CatphishError("secure aggregation (SecAgg+) needs at least 3 clients")
    counts = plan.class_counts(labelled, class_names)
    for stage in task_stages(task):
        holders = [c.name for c, row in zip(plan.clients, counts, strict=True)
                   if sum(n for name, n in zip(class_names, row, strict=True) if name in stage.relabel) > 0]
        if len(holders) < federated.min_clients:
            raise CatphishError(f"stage '{stage.name}': only {len(holders)} client(s) hold "
                                f"{'/'.join(stage.class_names)} subjects, fewer than federated.min_clients="
                                f"{federated.min_clients}")
    return FederatedInputs(plan, train, test, class_names)


def run_simulated(setup: Any, plan: PartitionPlan, data_dir: Path, out: Path, trainer: str, device: str) -> dict[str, Any]:
    """Every client a virtual SuperNode in Flower's simulation engine (Ray), on this machine."""
    from flwr.simulation import run_simulation

    sources = [ClientSource(c.name, str(data_dir), c.subject_ids, trainer=trainer, device=device) for c in plan.clients]
    from catphish.federated.server_app import make_server_app

    outcome: dict[str, Any] = {}
    server_app = make_server_app(setup, outcome)
    if setup.federated_config.secure_aggregation:
        from catphish.federated.secagg import make_secure_client_app

        client_app = make_secure_client_app(sources)
    else:
        from catphish.federated.client_app import make_client_app

        client_app = make_client_app(sources)
    cpus = max(1, min(len(sources), os.cpu_count() or 1))
    gpus = 1.0 / len(sources) if device.startswith("cuda") else 0.0
    backend = {"client_resources": {"num_cpus": 1, "num_gpus": gpus},
               "init_args": {"num_cpus": cpus, "include_dashboard": False, "log_to_driver": settings.debug}}
    with flower_environment(out):
        run_simulation(server_app=server_app, client_app=client_app, num_supernodes=len(sources),
                       backend_config=backend)
    if "summary" not in outcome:
        raise CatphishError("the federated simulation ended without a result (see the log above)")
    return outcome["summary"]


@contextlib.contextmanager
def flower_environment(out: Path) -> Iterator[None]:
    """Offline, quiet Flower with its state inside the run folder; the previous environment is restored after."""
    values = {"FLWR_HOME": str((out / ".flwr").resolve()), "FLWR_TELEMETRY_ENABLED": "0",
              "FLWR_DISABLE_UPDATE_CHECK": "1", "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1",
              "RAY_USAGE_STATS_ENABLED": "0", "RAY_DEDUP_LOGS": "0", "RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO": "0"}
    previous = {name: os.environ.get(name) for name in values}
    flower_log = logging.getLogger("flwr")
    level = flower_log.level
    os.environ.update(values)
    flower_log.setLevel(logging.DEBUG if settings.debug else logging.WARNING)
    quiet = _KnownNotices()
    flower_log.addFilter(quiet)
    try:
        yield
    finally:
        flower_log.removeFilter(quiet)
        flower_log.setLevel(level)
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


class _KnownNotices(logging.Filter):
    """Drop Flower's notice that ``run_simulation`` is deprecated: catphish uses it on purpose (docs/federated.md)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "run_simulation" not in record.getMessage()


def _setup(config: StudyConfig, inputs: FederatedInputs, data_dir: Path, out: Path, task: str, seed: int, device: str,
           trainer: str, resuming: bool) -> Any:
    from catphish.federated.server_app import FederatedSetup

    return FederatedSetup(out_dir=str(out.resolve()), task=task, study=config.to_dict(), plan=inputs.plan.to_dict(),
                          data_dir=str(data_dir.resolve()), test_sites=list(inputs.test_sites), seed=seed,
                          device=device, trainer=trainer, initial_weights=_initial_weights(config, task),
                          resume=resuming)


def _initial_weights(config: StudyConfig, task: str) -> str:
    """Synthetic pre-training (``--set federated.init_from=RUN``): checked now, so a bad run fails before Flower."""
    if not config.federated.init_from:
        return ""
    from catphish.federated.pretrained import initial_weights_file

    for stage in task_stages(task):
        initial_weights_file(config.federated.init_from, stage.name)
    return str(Path(config.federated.init_from).expanduser().resolve())


def _read_labels(data_dir: Path) -> list[PreparedSubject]:
    """Subject labels without the images (the file headers), for partitioning in the driver process."""
    if not data_dir.is_dir():
        raise CatphishError(f"{data_dir}: prepared cache folder does not exist (run `catphish data prepare` first)")
    try:
        from catphish.artifacts import load_state_values
    except ImportError:  # older artifacts module: read whole files
        return load_prepared_dir(data_dir)
    subjects = []
    for path in sorted(data_dir.glob("*/*.safetensors")):
        meta = json.loads(load_state_values(path)["meta"])
        subjects.append(PreparedSubject(meta["subject_id"], meta["site"], image=None,  # type: ignore[arg-type]
                                        idh=meta["idh"], tumor_type=meta["tumor_type"], split=meta["split"]))
    if not subjects:
        raise CatphishError(f"{data_dir}: no prepared subjects (expected <site>/<subject>.safetensors)")
    return subjects


def communication_benchmark(run: Path, packages: Sequence[Path], data: Path, train_sites: Sequence[str] | None = None,
                            benchmarks: Path | None = None) -> str:
    """``catphish bench comms``: bytes off the sites in each mode (the paper's Supplementary Note 7).

    Centralized: the training sites' image files (``data/<site>``); federated: every message of the FL run, measured;
    CATphishing: the site packages, each sent once. The Markdown goes into the ``comms`` section of BENCHMARKS.md.
    """
    from catphish.artifacts import file_bytes, read_json
    from catphish.federated.comms import communication_markdown, communication_table, federated_run_bytes
    from catphish.federated.rounds import read_rounds_csv
    from catphish.reporting.benchmarks import machine_line, update_section

    record = read_json(run / "run.json")
    sites = list(train_sites or record.get("train_sites") or [])
    if not sites:
        raise CatphishError(f"{run / 'run.json'}: names no training sites; give --train-sites")
    missing = [site for site in sites if not (data / site).is_dir()]
    if missing:
        raise CatphishError(f"{data}: has no folder for training site '{missing[0]}'")
    if not packages:
        raise CatphishError("give the site packages (--packages) whose size CATphishing sends")
    federated = record.get("federated", {})
    rows = communication_table(file_bytes([data / site for site in sites]), federated_run_bytes(run),
                               file_bytes(packages), rounds=federated.get("rounds"), sites=len(sites))
    rounds = [r for path in (run / "rounds.csv", *sorted(run.glob("*/rounds.csv"))) if path.is_file()
              for r in read_rounds_csv(path)]
    per_round = sum(int(r["bytes_down"]) + int(r["bytes_up"]) for r in rounds) / max(len(rounds), 1)
    seconds = sum(float(r["round_time_s"]) for r in rounds) / max(len(rounds), 1)
    body = "\n".join([
        "## Communication per mode (Supplementary Note 7)", "",
        f"`catphish bench comms --federated {run} --data {data} --packages {' '.join(map(str, packages))}`  ",
        machine_line(), "",
        communication_markdown(rows).rstrip(), "",
        f"Federated run: {len(rounds)} rounds × {federated.get('clients') and len(federated['clients'])} clients, "
        f"{per_round / 1e6:.3f} MB per round (measured from the serialized Flower messages, both directions), "
        f"{seconds:.1f} s per round. Centralized counts the training sites' image files; CATphishing counts the "
        f"site packages ({len(packages)}), each sent once.",
    ])
    if benchmarks is not None:
        update_section(benchmarks, "comms", body)
    return body
