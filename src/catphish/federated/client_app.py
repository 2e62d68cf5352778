"""The Flower ClientApp: one per training site, a thin adapter over the classifier's own training functions.

Message handlers (Flower's Message API):
- ``query``: who am I (client name) and how much data do I hold for the task (subjects per class), sent once at the
  start so the server can name clients, weight them class-balanced and refuse a client with no data early;
- ``train``: load the global weights, run ``train_epochs`` for the local epochs (with FedProx's proximal term when
  the server asks for it), send back the (optionally compressed) weights and the counts the server weights by;
- ``evaluate``: the global model's loss/accuracy/AUC on the client's own subjects (optional, off by default).

In simulation each client's data source comes from the run's partition plan (``partition-id`` → client); deployed,
a SuperNode names its data with ``--node-config "data-dir='…' site='…'"`` and the module-level :data:`app` is used.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.app.error import Error
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode

from catphish.config import ClassifierConfig
from catphish.data.prepared import PreparedSubject
from catphish.federated.comms import arrays_to_numpy, compress_update
from catphish.federated.strategies import CLASS_COUNTS, NUM_EXAMPLES, UNIT_WEIGHT
from catphish.federated.task import (
    ClientSource,
    class_counts,
    classifier_config_from_dict,
    classifier_functions,
    drops_out,
    finite,
    load_arrays,
    load_client_subjects,
    model_arrays,
    probability_metrics,
    round_seed,
)

DROPOUT_REASON = "simulated client dropout"


@dataclass(frozen=True)
class RoundInstructions:
    """What the server's ConfigRecord tells a client to do in one round."""

    task: str
    class_names: tuple[str, ...]
    """The classes of the stage being trained (the task's classes for IDH)."""
    spatial_dims: int
    classifier: ClassifierConfig
    local_epochs: int = 1
    rounds: int = 1
    seed: int = 0
    server_round: int = 0
    attempt: int = 0
    proximal_mu: float = 0.0
    compression: str = "none"
    dropout_probability: float = 0.0
    relabel: dict[str, str] | None = None
    """Task label → stage class (tumour type's two stages); subjects with other labels sit the stage out."""

    @classmethod
    def from_config(cls, config: ConfigRecord) -> RoundInstructions:
        return cls(task=str(config["task"]), class_names=tuple(json.loads(str(config["classes"]))),
                   spatial_dims=int(config["spatial-dims"]),
                   classifier=classifier_config_from_dict(json.loads(str(config["classifier"]))),
                   local_epochs=int(config.get("local-epochs", 1)), rounds=int(config.get("rounds", 1)),
                   seed=int(config.get("seed", 0)),
                   server_round=int(config.get("server-round", 0)), attempt=int(config.get("attempt", 0)),
                   proximal_mu=float(config.get("proximal-mu", 0.0)),
                   compression=str(config.get("compression", "none")),
                   dropout_probability=float(config.get("dropout-probability", 0.0)),
                   relabel=json.loads(str(config["relabel"])) if "relabel" in config else None)


def train_locally(source: ClientSource, todo: RoundInstructions, global_arrays: dict[str, np.ndarray]
                  ) -> tuple[dict[str, np.ndarray], dict[str, Any], list[PreparedSubject]]:
    """One client's local training in one round: the classifier's own ``train_epochs`` from the global weights.

    Clients are stateless between rounds (fresh SGD momentum, as in FedAvg), but the learning-rate schedule spans
    the whole federated training (``rounds × local_epochs`` epochs) like the centralized schedule does.
    """
    subjects = load_client_subjects(source, todo.task, todo.class_names, todo.relabel)
    functions = classifier_functions(source.trainer)
    model = functions.build_classifier(todo.classifier, todo.spatial_dims, len(todo.class_names))
    load_arrays(model, global_arrays)
    global_params = [p.detach().clone() for p in model.parameters()] if todo.proximal_mu > 0 else None
    schedule = {"epoch": (todo.server_round - 1) * todo.local_epochs,
                "total_epochs": max(todo.rounds, todo.server_round) * todo.local_epochs}
    result = functions.train_epochs(model, subjects, list(todo.class_names), todo.task, todo.classifier,
                                    todo.local_epochs, torch.device(source.device),
                                    round_seed(todo.seed, todo.server_round, source.name),
                                    proximal_mu=todo.proximal_mu, global_params=global_params, optimizer_state=schedule)
    return model_arrays(model), result, subjects


def make_client_app(sources: Sequence[ClientSource] | None = None) -> ClientApp:
    """A ClientApp whose data source is ``sources[partition-id]`` (simulation) or the SuperNode's node config."""
    app = ClientApp()

    def source_of(context: Context) -> ClientSource:
        if sources is None:
            return ClientSource.from_node_config(dict(context.node_config))
        return sources[int(context.node_config["partition-id"])]

    @app.query()
    def describe(msg: Message, context: Context) -> Message:
        source = source_of(context)
        config = msg.content["config"]
        task, classes = str(config["task"]), json.loads(str(config["classes"]))
        subjects = load_client_subjects(source, task, classes)
        info = ConfigRecord({"name": source.name, "partition-id": int(context.node_config.get("partition-id", -1))})
        metrics = MetricRecord({NUM_EXAMPLES: len(subjects), CLASS_COUNTS: class_counts(subjects, task, classes)})
        return Message(RecordDict({"info": info, "metrics": metrics}), reply_to=msg)

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        source = source_of(context)
        todo = RoundInstructions.from_config(msg.content["config"])
        if drops_out(todo.seed, todo.server_round, todo.attempt, source.name, todo.dropout_probability):
            reason = f"{DROPOUT_REASON}: '{source.name}' in round {todo.server_round} (p={todo.dropout_probability})"
            return Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=msg)
        global_arrays = arrays_to_numpy(msg.content["arrays"])
        local, result, subjects = train_locally(source, todo, global_arrays)
        arrays = compress_update(local, global_arrays, todo.compression)
        metrics = MetricRecord({
            "train-loss": finite(result.get("loss", float("nan"))),
            NUM_EXAMPLES: len(subjects),
            UNIT_WEIGHT: 1,
            CLASS_COUNTS: class_counts(subjects, todo.task, todo.class_names),
        })
        return Message(RecordDict({"arrays": arrays, "metrics": metrics}), reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, context: Context) -> Message:
        source = source_of(context)
        todo = RoundInstructions.from_config(msg.content["config"])
        subjects = load_client_subjects(source, todo.task, todo.class_names, todo.relabel)
        functions = classifier_functions(source.trainer)
        model = functions.build_classifier(todo.classifier, todo.spatial_dims, len(todo.class_names))
        load_arrays(model, arrays_to_numpy(msg.content["arrays"]))
        probabilities = functions.predict_subjects(model, subjects, list(todo.class_names), torch.device(source.device))
        scores = probability_metrics(probabilities, [s.label(todo.task) for s in subjects], todo.class_names)
        metrics = MetricRecord({"eval-loss": finite(scores["loss"]), "eval-accuracy": finite(scores["accuracy"]),
                                NUM_EXAMPLES: len(subjects)})
        return Message(RecordDict({"metrics": metrics}), reply_to=msg)

    return app


app = make_client_app()
"""The deployed ClientApp (``catphish.federated.client_app:app``): data named by each SuperNode's node config."""
