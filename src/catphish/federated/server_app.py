"""The Flower ServerApp: rounds of FedAvg/FedProx over the sites, with retries, checkpoints and measured bytes.

:func:`serve` is the whole server side and takes any Flower ``Grid``: the simulation engine's, the deployment
engine's, or a test's in-process one. It drives a Flower strategy round by round itself (rather than
``strategy.start``) so that it can retry a round that too few clients answered, checkpoint the global model after
every round (a killed run resumes from there), and log the bytes of every exchange per client.

In simulation :func:`make_server_app` closes over the run's :class:`FederatedSetup`; deployed, the module-level
:data:`app` reads it from the file named by the run config key ``setup-file``.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from catphish.artifacts import load_state, read_json, save_state, write_json
from catphish.config import TASK_CLASSES, FederatedConfig, StudyConfig, config_from_dict
from catphish.data.prepared import PreparedSubject, load_prepared_dir
from catphish.errors import CatphishError
from catphish.federated.comms import (
    ByteCountingGrid,
    Exchange,
    arrays_to_numpy,
    decompress_update,
    numpy_to_arrays,
    restore_dtypes,
)
from catphish.federated.partitions import PartitionPlan
from catphish.federated.rounds import plot_rounds, write_rounds_csv
from catphish.federated.strategies import CLASS_COUNTS, NUM_EXAMPLES, StrategyPlan, build_strategy
from catphish.federated.task import (
    DEFAULT_TRAINER,
    ClassifierFunctions,
    classifier_functions,
    load_arrays,
    model_arrays,
    probability_metrics,
)
from catphish.runtime import log
from catphish.training.ensemble import Stage, task_stages

CHECKPOINT_NAME = "checkpoint.safetensors"
SETUP_NAME = "setup.json"
SUMMARY_NAME = "summary.json"
ROUNDS_NAME = "rounds.csv"
PLOT_NAME = "rounds.png"


@dataclass
class FederatedSetup:
    """Everything the server needs for one run; JSON-able so a deployed ServerApp can read it from a file."""

    out_dir: str
    task: str
    study: dict[str, Any]
    """The whole study config (``StudyConfig.to_dict()``): classifier, federated and data sections."""
    plan: dict[str, Any]
    data_dir: str = ""
    """Prepared cache the hub can read: shared-holdout validation and the test-site predictions (may be empty)."""
    test_sites: list[str] = field(default_factory=list)
    seed: int = 0
    device: str = "cpu"
    trainer: str = DEFAULT_TRAINER
    initial_weights: str = ""
    """Synthetic pre-training: a classifier run folder (or weights file) whose model the federation starts from."""
    resume: bool = False
    connect_timeout_s: float = 120.0

    @property
    def config(self) -> StudyConfig:
        return config_from_dict(self.study)

    @property
    def federated_config(self) -> FederatedConfig:
        return self.config.federated

    @property
    def class_names(self) -> list[str]:
        return list(TASK_CLASSES[self.task])

    def save(self, path: str | Path) -> Path:
        return write_json(path, asdict(self))

    @classmethod
    def load(cls, path: str | Path) -> FederatedSetup:
        values = read_json(path)
        try:
            return cls(**values)
        except TypeError as exc:
            raise CatphishError(f"{Path(path).name}: not a federated setup file ({exc})") from None


@dataclass(frozen=True)
class ClientInfo:
    node_id: int
    name: str
    num_examples: int
    class_counts: tuple[int, ...]
    """Subjects per task class (``TASK_CLASSES[task]`` order)."""


@dataclass
class StageResult:
    """One stage's federated training: the final global weights, the round log, and the DP wrapper if any."""

    arrays: dict[str, np.ndarray]
    rows: list[dict[str, Any]]
    private: Any = None
    extra: dict[str, Any] = field(default_factory=dict)


class NodeSubset:
    """The grid seen by one stage: only the clients that hold subjects of that stage's classes can be sampled."""

    def __init__(self, grid: Any, nodes: set[int]) -> None:
        self._grid, self._nodes = grid, nodes

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def get_node_ids(self) -> list[int]:
        return [node for node in self._grid.get_node_ids() if node in self._nodes]


# ----------------------------------------------------------------------------------------------------- serve
def serve(grid: Grid, setup: FederatedSetup, context: Context | None = None) -> dict[str, Any]:
    """Run the federated study on ``grid`` and write its outputs into ``setup.out_dir``; returns the summary.

    Every stage of the task (one for IDH; two for tumour type, like the other modes) is its own federated training
    over the clients that hold subjects of that stage. Secure aggregation runs the stages on Flower's legacy stack.
    """
    out = Path(setup.out_dir)
    federated = setup.federated_config
    plan = PartitionPlan.from_dict(setup.plan)
    counting = ByteCountingGrid(grid)
    if federated.secure_aggregation:
        from catphish.federated.secagg import describe_clients, train_stage_secure

        roster, train = describe_clients(counting, setup, len(plan.clients)), train_stage_secure
    else:
        roster, train = connect_clients(counting, setup, len(plan.clients)), train_stage
    connect_bytes = _totals(counting.take())
    functions = classifier_functions(setup.trainer)
    stages = task_stages(setup.task)
    models: dict[str, torch.nn.Module] = {}
    results: dict[str, StageResult] = {}
    for stage in stages:
        stage_out = out if len(stages) == 1 else out / stage.name
        stage_out.mkdir(parents=True, exist_ok=True)
        eligible = stage_roster(roster, stage, setup.class_names, federated.min_clients)
        torch.manual_seed(setup.seed)
        model = functions.build_classifier(setup.config.classifier, setup.config.data.spatial_dims,
                                           len(stage.class_names))
        if setup.initial_weights:
            _initial_weights(setup.initial_weights, stage.name, model)
        if len(stages) > 1:
            log.info("stage %s (%s) on %d clients", stage.name, " vs ".join(stage.class_names), len(eligible))
        results[stage.name] = train(counting, setup, stage, eligible, stage_out, model_arrays(model), functions,
                                    model, context)
        load_arrays(model, results[stage.name].arrays)
        models[stage.name] = model
    return finish(out, models, functions, setup, results, roster, connect_bytes)


def stage_roster(roster: dict[int, ClientInfo], stage: Stage, class_names: Sequence[str],
                 min_clients: int) -> dict[int, ClientInfo]:
    """The clients holding subjects of ``stage``'s classes; too few of them is a clear error."""
    eligible = {node: info for node, info in roster.items()
                if sum(count for name, count in zip(class_names, info.class_counts, strict=True)
                       if name in stage.relabel) > 0}
    if len(eligible) < min_clients:
        raise CatphishError(f"stage '{stage.name}': only {len(eligible)} client(s) hold {'/'.join(stage.class_names)} "
                            f"subjects, fewer than federated.min_clients={min_clients}")
    return eligible


def train_stage(grid: ByteCountingGrid, setup: FederatedSetup, stage: Stage, roster: dict[int, ClientInfo], out: Path,
                reference: dict[str, np.ndarray], functions: ClassifierFunctions, model: torch.nn.Module,
                context: Context | None = None) -> StageResult:
    """The rounds of one stage with the Message-API strategies; resumes from ``out``'s checkpoint when asked."""
    federated = setup.federated_config
    strategy = build_strategy(federated, len(roster))
    stage_grid = NodeSubset(grid, set(roster))
    names = sorted(info.name for info in roster.values())
    holdout = _holdout_subjects(setup, stage)
    start_round, rows, releases, arrays = 1, [], 0, reference
    checkpoint = load_checkpoint(out) if setup.resume else None
    if checkpoint is not None:
        start_round, rows, releases, arrays = (checkpoint["round"] + 1, checkpoint["rows"], checkpoint["releases"],
                                               checkpoint["arrays"])
        _replay_privacy(strategy, releases)
        log.info("resuming %s after round %d", stage.name, checkpoint["round"])
    instructions = _instructions(setup, federated, stage)
    global_record = numpy_to_arrays(arrays)
    for server_round in range(start_round, federated.rounds + 1):
        started = time.perf_counter()
        global_record, row = run_round(stage_grid, strategy, global_record, reference, instructions, server_round,
                                       federated, setup, roster, out)
        _add_validation(row, functions, model, global_record, holdout, setup, stage)
        if federated.evaluate_clients:
            _add_client_evaluation(row, stage_grid, strategy, global_record, instructions, server_round, federated)
        _add_exchanges(row, grid.take(), roster)
        row["round_time_s"] = time.perf_counter() - started
        if strategy.private is not None:
            spent = strategy.private.privacy_spent()
            row["epsilon"], releases = spent.epsilon, spent.num_releases
        rows.append(row)
        write_rounds_csv(out / ROUNDS_NAME, rows, names)
        save_checkpoint(out, server_round, arrays_to_numpy(global_record), rows, releases)
        log.info("round %d/%d: %d/%d clients, train loss %.4f, %.1f s, %.2f MB", server_round, federated.rounds,
                 row["clients_ok"], row["clients_sampled"], row.get("train_loss", float("nan")), row["round_time_s"],
                 (row["bytes_down"] + row["bytes_up"]) / 1e6)
    plot_rounds(out / PLOT_NAME, rows, f"federated {federated.strategy} — {setup.task} {stage.name}")
    return StageResult(arrays_to_numpy(global_record), rows, strategy.private)


def run_round(grid: Any, plan: StrategyPlan, global_record: ArrayRecord, reference: dict[str, np.ndarray],
              instructions: dict[str, Any], server_round: int, federated: FederatedConfig, setup: FederatedSetup,
              roster: dict[int, ClientInfo], out: Path) -> tuple[ArrayRecord, dict[str, Any]]:
    """One training round, retried up to ``federated.retries`` times while fewer than ``min_clients`` answer."""
    global_arrays = arrays_to_numpy(global_record)
    failures: list[str] = []
    for attempt in range(federated.retries + 1):
        random.seed(hash((setup.seed, server_round, attempt)) & 0xFFFFFFFF)  # Flower samples clients with `random`
        config = ConfigRecord({**instructions, "attempt": attempt})
        messages = list(plan.strategy.configure_train(server_round, global_record, config, grid))
        replies = list(grid.send_and_receive(messages, timeout=federated.round_timeout_s))
        valid = [reply for reply in replies if not reply.has_error()]
        for reply in valid:
            arrays = decompress_update(reply.content["arrays"], global_arrays, federated.compression)
            if plan.private is not None:  # Flower's DP clipping scales in place, which integer buffers cannot take
                arrays = numpy_to_arrays({k: v.astype(np.float64) if not np.issubdtype(v.dtype, np.floating) else v
                                          for k, v in arrays_to_numpy(arrays).items()})
            reply.content["arrays"] = arrays
        failures = [_reason(reply, roster) for reply in replies if reply.has_error()]
        failures += [f"'{roster[m.metadata.dst_node_id].name}' did not answer within {federated.round_timeout_s:.0f} s"
                     for m in messages if m.metadata.dst_node_id not in {r.metadata.src_node_id for r in replies}]
        aggregated, _ = plan.strategy.aggregate_train(server_round, replies)
        for reason in failures:
            log.warning("round %d attempt %d: %s", server_round, attempt + 1, reason)
        if aggregated is not None and len(valid) >= federated.min_clients:
            row = {"round": server_round, "attempts": attempt + 1, "clients_sampled": len(messages),
                   "clients_ok": len(valid), "clients_failed": len(messages) - len(valid),
                   "train_loss": _mean_loss(valid)}
            return restore_dtypes(aggregated, reference), row
        log.warning("round %d attempt %d: %d of %d sampled clients returned an update (federated.min_clients=%d)",
                    server_round, attempt + 1, len(valid), len(messages), federated.min_clients)
    raise CatphishError(
        f"round {server_round}: fewer than federated.min_clients={federated.min_clients} clients returned an update in "
        f"{federated.retries + 1} attempt(s) ({'; '.join(failures[:3]) or 'no replies'}); "
        + kept_message(out, server_round))


def kept_message(out: Path, server_round: int) -> str:
    """Where the last good global model is, for the error that stops a run."""
    if server_round <= 1:
        return "no round was completed"
    return (f"the last global model (round {server_round - 1}) is kept in {out / CHECKPOINT_NAME}; "
            "rerun with --resume to continue")


def connect_clients(grid: Grid, setup: FederatedSetup, num_clients: int) -> dict[int, ClientInfo]:
    """Wait for every client to connect, then ask each who it is and what it holds (``query`` messages)."""
    deadline = time.monotonic() + setup.connect_timeout_s
    while len(nodes := list(grid.get_node_ids())) < num_clients:
        if time.monotonic() > deadline:
            raise CatphishError(f"only {len(nodes)} of {num_clients} clients connected within "
                                f"{setup.connect_timeout_s:.0f} s; are all SuperNodes running and reaching the SuperLink?")
        time.sleep(0.5)
    config = ConfigRecord({"task": setup.task, "classes": json.dumps(setup.class_names)})
    messages = [Message(RecordDict({"config": config}), dst_node_id=node, message_type=MessageType.QUERY)
                for node in nodes]
    replies = list(grid.send_and_receive(messages, timeout=setup.connect_timeout_s))
    roster: dict[int, ClientInfo] = {}
    for reply in replies:
        if reply.has_error():
            raise CatphishError(f"a client cannot take part: {_clean_reason(reply.error.reason)}")
        info, metrics = reply.content["info"], reply.content["metrics"]
        roster[reply.metadata.src_node_id] = ClientInfo(reply.metadata.src_node_id, str(info["name"]),
                                                        int(metrics[NUM_EXAMPLES]),
                                                        tuple(int(c) for c in metrics[CLASS_COUNTS]))  # type: ignore[union-attr]
    if len(roster) < len(messages):
        raise CatphishError(f"only {len(roster)} of {len(messages)} clients answered the opening query")
    duplicates = sorted({i.name for i in roster.values() if [j.name for j in roster.values()].count(i.name) > 1})
    if duplicates:
        raise CatphishError(f"two clients call themselves '{duplicates[0]}'; give every SuperNode its own site or name")
    for info in sorted(roster.values(), key=lambda i: i.name):
        log.info("client %s: %d subjects (%s)", info.name, info.num_examples,
                 ", ".join(f"{n} {c}" for n, c in zip(setup.class_names, info.class_counts, strict=True)))
    return roster


# ------------------------------------------------------------------------------------------------- outputs
def finish(out: Path, models: dict[str, torch.nn.Module], functions: ClassifierFunctions, setup: FederatedSetup,
           results: dict[str, StageResult], roster: dict[int, ClientInfo], connect_bytes: tuple[int, int]) -> dict[str, Any]:
    """The final global model(s) as a classifier run ``model/``, test-site predictions and the summary."""
    from catphish.federated.outputs import save_federated_model, write_federated_predictions

    save_federated_model(out, models, setup)
    predictions = write_federated_predictions(out, models, functions, setup)
    rows = [row for result in results.values() for row in result.rows]
    total_down = sum(int(r["bytes_down"]) for r in rows)
    total_up = sum(int(r["bytes_up"]) for r in rows)
    summary: dict[str, Any] = {
        "rounds": max(len(r.rows) for r in results.values()), "stages": list(results),
        "clients": sorted(info.name for info in roster.values()),
        "subjects_per_client": {i.name: i.num_examples for i in roster.values()},
        "bytes_down": total_down, "bytes_up": total_up, "bytes_total": total_down + total_up,
        "bytes_per_round_mean": (total_down + total_up) / max(len(rows), 1),
        "connect_bytes": sum(connect_bytes),
        "round_time_s_mean": float(np.mean([r["round_time_s"] for r in rows])) if rows else 0.0,
        "test_subjects": predictions,
    }
    for name, result in results.items():
        if result.private is not None:
            spent = result.private.privacy_spent()
            summary.setdefault("privacy", {})[name] = {
                "epsilon": spent.epsilon, "delta": spent.delta, "releases": spent.num_releases,
                "noise_multiplier": result.private.noise_multiplier, "clipping_norm": result.private.clipping_norm,
                "accounting": spent.accounting_method, "level": "client-level, model updates only"}
        summary.update(result.extra)
    write_json(out / SUMMARY_NAME, summary)
    return summary


def save_checkpoint(out: Path, server_round: int, arrays: dict[str, np.ndarray], rows: list[dict[str, Any]],
                    releases: int) -> Path:
    """The global model after ``server_round`` plus the round log, so a killed run resumes at the next round."""
    return save_state(out / CHECKPOINT_NAME, {"round": server_round, "releases": releases, "rows": rows,
                                              "arrays": {name: torch.from_numpy(np.ascontiguousarray(v))
                                                         for name, v in arrays.items()}})


def load_checkpoint(out: Path) -> dict[str, Any] | None:
    path = out / CHECKPOINT_NAME
    if not path.exists():
        return None
    state = load_state(path)
    state["arrays"] = {name: tensor.numpy() for name, tensor in state["arrays"].items()}
    return state


# ------------------------------------------------------------------------------------------------- helpers
def _instructions(setup: FederatedSetup, federated: FederatedConfig, stage: Stage) -> dict[str, Any]:
    """The train/evaluate ConfigRecord: what to train (stage classes, relabelling) and how (classifier, epochs, …)."""
    return {"task": setup.task, "classes": json.dumps(list(stage.class_names)), "relabel": json.dumps(stage.relabel),
            "spatial-dims": setup.config.data.spatial_dims, "classifier": json.dumps(setup.study["classifier"]),
            "local-epochs": federated.local_epochs,
            "rounds": federated.rounds, "seed": setup.seed,
            "compression": federated.compression, "dropout-probability": federated.dropout_probability}


def _initial_weights(path: str, stage: str, model: torch.nn.Module) -> None:
    """Synthetic pre-training: the federation starts from these weights instead of a fresh model."""
    from catphish.federated.pretrained import initial_weights_file, load_initial_arrays

    weights = initial_weights_file(path, stage)
    load_arrays(model, load_initial_arrays(weights, set(model.state_dict())))
    log.info("%s starts from the pre-trained weights in %s", stage, weights)


def _holdout_subjects(setup: FederatedSetup, stage: Stage) -> list[PreparedSubject]:
    """The shared holdout (label-skew partitions) relabelled for ``stage``; empty for other partitions."""
    holdout = PartitionPlan.from_dict(setup.plan).holdout
    if not holdout or not setup.data_dir:
        return []
    wanted = set(holdout)
    return [stage.relabelled(s, setup.task) for s in load_prepared_dir(setup.data_dir)
            if s.subject_id in wanted and stage.takes(s, setup.task)]


def _add_validation(row: dict[str, Any], functions: ClassifierFunctions, model: torch.nn.Module, record: ArrayRecord,
                    holdout: list[PreparedSubject], setup: FederatedSetup, stage: Stage) -> None:
    """Server-side validation of the new global model on the shared holdout (label-skew partitions)."""
    if not holdout:
        return
    load_arrays(model, arrays_to_numpy(record))
    probabilities = functions.predict_subjects(model, holdout, list(stage.class_names), torch.device(setup.device))
    scores = probability_metrics(probabilities, [s.label(setup.task) for s in holdout], stage.class_names)
    row.update({"val_loss": scores["loss"], "val_accuracy": scores["accuracy"], "val_auc": scores["auc"]})


def _add_client_evaluation(row: dict[str, Any], grid: Any, plan: StrategyPlan, record: ArrayRecord,
                           instructions: dict[str, Any], server_round: int, federated: FederatedConfig) -> None:
    """The global model's loss and accuracy on every client's own subjects, averaged by subject count."""
    messages = plan.strategy.configure_evaluate(server_round, record, ConfigRecord(dict(instructions)), grid)
    replies = [r for r in grid.send_and_receive(messages, timeout=federated.round_timeout_s) if not r.has_error()]
    if not replies:
        return
    metrics = [next(iter(r.content.metric_records.values())) for r in replies]
    weights = [float(m[NUM_EXAMPLES]) for m in metrics]  # type: ignore[arg-type]
    row["eval_loss"] = float(np.average([float(m["eval-loss"]) for m in metrics], weights=weights))  # type: ignore[arg-type]
    row["eval_accuracy"] = float(np.average([float(m["eval-accuracy"]) for m in metrics],  # type: ignore[arg-type]
                                            weights=weights))


def _add_exchanges(row: dict[str, Any], exchanges: list[Exchange], roster: dict[int, ClientInfo]) -> None:
    row["bytes_down"], row["bytes_up"] = _totals(exchanges)
    for info in roster.values():
        row[f"bytes_down_{info.name}"] = sum(e.down.get(info.node_id, 0) for e in exchanges)
        row[f"bytes_up_{info.name}"] = sum(e.up.get(info.node_id, 0) for e in exchanges)


def _totals(exchanges: list[Exchange]) -> tuple[int, int]:
    return sum(sum(e.down.values()) for e in exchanges), sum(sum(e.up.values()) for e in exchanges)


def _mean_loss(replies: list[Message]) -> float:
    losses = [float(next(iter(r.content.metric_records.values()))["train-loss"]) for r in replies]  # type: ignore[arg-type]
    weights = [float(next(iter(r.content.metric_records.values()))[NUM_EXAMPLES]) for r in replies]  # type: ignore[arg-type]
    return float(np.average(losses, weights=weights)) if losses else float("nan")


def _replay_privacy(plan: StrategyPlan, releases: int) -> None:
    """Re-compose the DP releases of the rounds before a resume, so ε keeps counting from where it stopped."""
    if plan.private is None or releases <= 0 or plan.private.accountant is None:
        return
    from flwr.serverapp import GaussianPrivacyEvent

    accountant = plan.private.accountant
    accountant.compose(GaussianPrivacyEvent(noise_multiplier=plan.private.noise_multiplier,
                                            sample_size=plan.sample_size,
                                            population_size=accountant.config.population_size), count=releases)


def _reason(reply: Message, roster: dict[int, ClientInfo]) -> str:
    info = roster.get(reply.metadata.src_node_id)
    return f"'{info.name if info else reply.metadata.src_node_id}' failed: {_clean_reason(reply.error.reason)}"


def _clean_reason(reason: str) -> str:
    """Flower wraps a ClientApp's exception as ``<class …>:<'…Message: text'>``; keep the text."""
    text = reason.split("Message: ", 1)[-1]
    return text.rstrip("'>").strip()


# -------------------------------------------------------------------------------------------------- the apps
def make_server_app(setup: FederatedSetup, outcome: dict[str, Any] | None = None) -> ServerApp:
    """A ServerApp that serves ``setup`` (simulation: the setup travels in the closure, not in the run config)."""
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        summary = serve(grid, setup, context)
        if outcome is not None:
            outcome["summary"] = summary

    return app


app = ServerApp()
"""The deployed ServerApp (``catphish.federated.server_app:app``): run config ``setup-file`` names the setup."""


@app.main()
def _deployed_main(grid: Grid, context: Context) -> None:
    setup_file = str(context.run_config.get("setup-file", ""))
    if not setup_file:
        raise CatphishError("the federated run config has no 'setup-file' (start it with `catphish train --mode federated`)")
    from catphish.runtime import configure_logging

    configure_logging()
    setup = FederatedSetup.load(setup_file)
    try:
        serve(grid, setup, context)
    except CatphishError as exc:  # the submitting `catphish train` reads this and prints it as its own error
        write_json(Path(setup.out_dir) / "failure.json", {"error": str(exc)})
        raise
