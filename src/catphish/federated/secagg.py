"""Secure aggregation (SecAgg+) on Flower's legacy stack: the server only ever sees the sum of the clients' updates.

In Flower 1.41/1.42 SecAgg+ exists only for the legacy (compat) stack: ``secaggplus_mod`` on a ``client_fn``
ClientApp whose client is a ``NumPyClient``, and ``SecAggPlusWorkflow`` driven with a ``LegacyContext`` and a
``flwr.server.strategy`` strategy. So this option runs a second, legacy pair of apps around the *same* training code
(``RoundInstructions``, ``train_epochs``) and the same round loop bookkeeping (retries, checkpoints, measured bytes,
rounds.csv). Differences from the Message-API apps, by construction of the protocol:
- clients send their *update* (weights − global); SecAgg+ clips each value to ±``clipping_range`` and quantises it;
- aggregation weights are what each client reports as its example count: ``samples`` or ``uniform`` (class-balanced
  weights need every client's counts before aggregation, which SecAgg+ does not allow);
- no update compression and no central DP (the server cannot clip individual updates it never sees);
- each round takes four exchanges (setup, share keys, masked vectors, unmask), all counted in ``rounds.csv``.
"""

from __future__ import annotations

import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message
from flwr.client import NumPyClient
from flwr.client.mod import secaggplus_mod
from flwr.clientapp import ClientApp
from flwr.common import GetPropertiesIns, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.constant import MessageTypeLegacy
from flwr.compat.common import recorddict_compat as compat
from flwr.server import LegacyContext, ServerConfig, SimpleClientManager
from flwr.server.compat.app_utils import start_update_client_manager_thread
from flwr.server.strategy import FedAvg as LegacyFedAvg
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD, Key

from catphish.errors import CatphishError
from catphish.federated.client_app import RoundInstructions, train_locally
from catphish.federated.comms import ByteCountingGrid
from catphish.federated.task import (
    ClientSource,
    SimulatedDropout,
    class_counts,
    classifier_functions,
    drops_out,
    load_client_subjects,
)
from catphish.runtime import log

CLIPPING_RANGE = 8.0
"""SecAgg+ clips every update value to ±8 before quantising (Flower's default); updates are far smaller."""


# ------------------------------------------------------------------------------------------------------ client
class SecureSiteClient(NumPyClient):
    """A legacy client around the same local training: returns its update and its aggregation weight."""

    def __init__(self, source: ClientSource) -> None:
        self.source = source

    def get_properties(self, config: dict[str, Any]) -> dict[str, Any]:
        task, classes = str(config["task"]), str(config["classes"]).split("|")
        subjects = load_client_subjects(self.source, task, classes)
        return {"name": self.source.name, "num-examples": len(subjects),
                "class-counts": "|".join(map(str, class_counts(subjects, task, classes)))}

    def fit(self, parameters: list[np.ndarray], config: dict[str, Any]) -> tuple[list[np.ndarray], int, dict[str, Any]]:
        todo = RoundInstructions.from_config(ConfigRecord(config))
        if drops_out(todo.seed, todo.server_round, todo.attempt, self.source.name, todo.dropout_probability):
            raise SimulatedDropout(f"simulated client dropout: '{self.source.name}' in round {todo.server_round}")
        functions = classifier_functions(self.source.trainer)
        names = list(functions.build_classifier(todo.classifier, todo.spatial_dims, len(todo.class_names)).state_dict())
        global_arrays = dict(zip(names, parameters, strict=True))
        local, result, subjects = train_locally(self.source, todo, global_arrays)
        update = [(local[n].astype(np.float64) - global_arrays[n].astype(np.float64)).astype(np.float32) for n in names]
        weight = len(subjects) if str(config.get("weighting", "samples")) == "samples" else 1
        return update, weight, {"train-loss": float(result.get("loss", float("nan")))}


def make_secure_client_app(sources: Sequence[ClientSource] | None = None) -> ClientApp:
    """The legacy ClientApp with the SecAgg+ mod (``sources[partition-id]`` in simulation, node config deployed)."""

    def client_fn(context: Context) -> Any:
        source = (ClientSource.from_node_config(dict(context.node_config)) if sources is None
                  else sources[int(context.node_config["partition-id"])])
        return SecureSiteClient(source).to_client()

    return ClientApp(client_fn=client_fn, mods=[secaggplus_mod])


secure_app = make_secure_client_app()
"""The deployed secure ClientApp (``catphish.federated.secagg:secure_app``)."""


# ------------------------------------------------------------------------------------------------------ server
class SecureFedAvg(LegacyFedAvg):
    """Legacy FedAvg whose clients send updates: the securely aggregated mean update is added to the global model."""

    def __init__(self, global_arrays: dict[str, np.ndarray], fit_config: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(on_fit_config_fn=lambda _round: dict(self.fit_config), fraction_evaluate=0.0,
                         min_evaluate_clients=0, accept_failures=True, **kwargs)
        self.global_arrays = global_arrays
        self.fit_config = fit_config
        self.outcome: dict[str, Any] | None = None

    def aggregate_fit(self, server_round: int, results: list[Any], failures: list[Any]) -> tuple[Any, dict[str, Any]]:
        if not results:
            self.outcome = None
            return None, {}
        # After unmasking, every result carries the same (weighted mean) update.
        mean_update = parameters_to_ndarrays(results[0][1].parameters)
        updated = {}
        for (name, current), update in zip(self.global_arrays.items(), mean_update, strict=True):
            value = current.astype(np.float64) + update.astype(np.float64)
            integer = not np.issubdtype(current.dtype, np.floating)
            updated[name] = np.asarray(np.rint(value) if integer else value).astype(current.dtype)
        losses = [float(fitres.metrics.get("train-loss", np.nan)) for _, fitres in results]
        self.outcome = {"arrays": updated, "ok": len(results), "failed": len(failures),
                        "train_loss": float(np.nanmean(losses)) if losses else float("nan")}
        return ndarrays_to_parameters(list(updated.values())), {}


def train_stage_secure(grid: ByteCountingGrid, setup: Any, stage: Any, roster: dict[int, Any], out: Path,
                       reference: dict[str, np.ndarray], functions: Any, model: Any, context: Context | None) -> Any:
    """The rounds of one stage with SecAgg+ on the legacy stack (the secure twin of ``server_app.train_stage``)."""
    from catphish.federated import server_app as plain

    federated = setup.federated_config
    if context is None:
        raise CatphishError("secure aggregation needs the ServerApp's context (legacy workflow)")
    stage_grid = plain.NodeSubset(grid, set(roster))
    names = sorted(info.name for info in roster.values())
    start_round, rows, arrays = 1, [], reference
    checkpoint = plain.load_checkpoint(out) if setup.resume else None
    if checkpoint is not None:
        start_round, rows, arrays = checkpoint["round"] + 1, checkpoint["rows"], checkpoint["arrays"]
    size = min(len(roster), max(int(len(roster) * federated.fraction_train), federated.min_clients))
    instructions = {**plain._instructions(setup, federated, stage), "weighting": federated.weighting,
                    "proximal-mu": federated.proximal_mu if federated.strategy == "fedprox" else 0.0}
    strategy = SecureFedAvg(arrays, instructions, fraction_fit=federated.fraction_train, min_fit_clients=size,
                            min_available_clients=len(roster))
    legacy = LegacyContext(context=context, config=ServerConfig(num_rounds=federated.rounds), strategy=strategy,
                           client_manager=SimpleClientManager())
    thread, stop, registered = start_update_client_manager_thread(stage_grid, legacy.client_manager)
    registered.wait()
    config = ConfigRecord({Key.START_TIME: time.time()})
    legacy.state.config_records[MAIN_CONFIGS_RECORD] = config
    workflow = SecAggPlusWorkflow(num_shares=max(3, size), reconstruction_threshold=max(2, (2 * size) // 3),
                                  max_weight=float(max(i.num_examples for i in roster.values())),
                                  clipping_range=CLIPPING_RANGE, timeout=federated.round_timeout_s)
    try:
        for server_round in range(start_round, federated.rounds + 1):
            started = time.perf_counter()
            config[Key.CURRENT_ROUND] = server_round
            row = _secure_round(workflow, stage_grid, legacy, strategy, arrays, server_round, federated, setup, out)
            arrays = strategy.outcome["arrays"]  # type: ignore[index]
            plain._add_exchanges(row, grid.take(), roster)
            row["round_time_s"] = time.perf_counter() - started
            rows.append(row)
            plain.write_rounds_csv(out / plain.ROUNDS_NAME, rows, names)
            plain.save_checkpoint(out, server_round, arrays, rows, 0)
            log.info("secure round %d/%d: %d/%d clients, %.1f s, %.2f MB", server_round, federated.rounds,
                     row["clients_ok"], row["clients_sampled"], row["round_time_s"],
                     (row["bytes_down"] + row["bytes_up"]) / 1e6)
    finally:
        stop.set()
        thread.join(timeout=10)
    plain.plot_rounds(out / plain.PLOT_NAME, rows, f"federated {federated.strategy} + SecAgg+ — {setup.task} {stage.name}")
    extra = {"secure_aggregation": {"protocol": "SecAgg+ (Flower legacy stack)", "num_shares": workflow.num_shares,
                                    "reconstruction_threshold": workflow.reconstruction_threshold,
                                    "clipping_range": CLIPPING_RANGE}}
    return plain.StageResult(arrays, rows, None, extra)


def _secure_round(workflow: SecAggPlusWorkflow, grid: Any, legacy: LegacyContext, strategy: SecureFedAvg,
                  arrays: dict[str, np.ndarray], server_round: int, federated: Any, setup: Any, out: Path) -> dict[str, Any]:
    """One secure round, retried while it cannot complete (too few clients for the reconstruction threshold)."""
    from catphish.federated.server_app import kept_message

    strategy.global_arrays = arrays
    for attempt in range(federated.retries + 1):
        random.seed(hash((setup.seed, server_round, attempt)) & 0xFFFFFFFF)
        strategy.fit_config["attempt"] = attempt
        legacy.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord([np.asarray(v) for v in arrays.values()])
        strategy.outcome = None
        workflow(grid, legacy)
        outcome = strategy.outcome
        if outcome is not None and outcome["ok"] >= federated.min_clients:
            return {"round": server_round, "attempts": attempt + 1, "clients_sampled": outcome["ok"] + outcome["failed"],
                    "clients_ok": outcome["ok"], "clients_failed": outcome["failed"], "train_loss": outcome["train_loss"]}
        log.warning("secure round %d attempt %d did not complete with federated.min_clients=%d clients",
                    server_round, attempt + 1, federated.min_clients)
    raise CatphishError(f"round {server_round}: secure aggregation did not complete with at least "
                        f"federated.min_clients={federated.min_clients} clients in {federated.retries + 1} attempt(s); "
                        + kept_message(out, server_round))


def describe_clients(grid: ByteCountingGrid, setup: Any, num_clients: int) -> dict[int, Any]:
    """The opening query of the plain apps, as legacy ``get_properties`` messages."""
    from catphish.federated.server_app import ClientInfo, _clean_reason

    deadline = time.monotonic() + setup.connect_timeout_s
    while len(nodes := list(grid.get_node_ids())) < num_clients:
        if time.monotonic() > deadline:
            raise CatphishError(f"only {len(nodes)} of {num_clients} clients connected within "
                                f"{setup.connect_timeout_s:.0f} s")
        time.sleep(0.5)
    content = compat.getpropertiesins_to_recorddict(GetPropertiesIns({"task": setup.task,
                                                                      "classes": "|".join(setup.class_names)}))
    messages = [Message(content, dst_node_id=node, message_type=MessageTypeLegacy.GET_PROPERTIES) for node in nodes]
    roster = {}
    for reply in grid.send_and_receive(messages, timeout=setup.connect_timeout_s):
        if reply.has_error():
            raise CatphishError(f"a client cannot take part: {_clean_reason(reply.error.reason)}")
        properties = compat.recorddict_to_getpropertiesres(reply.content).properties
        roster[reply.metadata.src_node_id] = ClientInfo(reply.metadata.src_node_id, str(properties["name"]),
                                                        int(properties["num-examples"]),
                                                        tuple(int(c) for c in str(properties["class-counts"]).split("|")))
    return roster
