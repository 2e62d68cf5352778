"""Test doubles for the federated tests: a tiny classifier with the real module's signatures, an in-process grid,
and a phantom-free prepared cache. Imported by name (``federated_standin``) in Ray workers too, via PYTHONPATH."""

from __future__ import annotations

import copy
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import torch
from flwr.app import Array, ArrayRecord, Context, Message, RecordDict
from flwr.app.error import Error
from flwr.clientapp import ClientApp
from flwr.common.constant import ErrorCode
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from torch import nn

from catphish.data.prepared import PreparedSubject, save_prepared

KILL_AT_ROUND: dict[str, int] = {}
"""Set ``KILL_AT_ROUND["round"] = r`` to make the in-process grid raise KeyboardInterrupt in round ``r``."""
CALLS: list[dict] = []
"""Every ``train_epochs`` call in this process: the proximal mu, the optimizer state and the received weights."""
FAIL_AFTER_CALLS: dict[str, int] = {}
"""Set ``FAIL_AFTER_CALLS["n"] = n``: every ``train_epochs`` call after the n-th raises (a site that breaks)."""


# ------------------------------------------------------------------------------ classifier stand-in (same API)
def build_classifier(config, spatial_dims: int, num_classes: int) -> nn.Module:
    pool = nn.AdaptiveAvgPool2d(1) if spatial_dims == 2 else nn.AdaptiveAvgPool3d(1)
    return nn.Sequential(pool, nn.Flatten(), nn.BatchNorm1d(5), nn.Linear(5, 256), nn.ReLU(), nn.Linear(256, num_classes))


def train_epochs(model, subjects, class_names, task, config, epochs, device, seed, proximal_mu=0.0, global_params=None,
                 optimizer_state=None) -> dict:
    CALLS.append({"proximal_mu": proximal_mu, "optimizer_state": optimizer_state,
                  "weights": {k: v.detach().clone() for k, v in model.state_dict().items()}})
    if "n" in FAIL_AFTER_CALLS and len(CALLS) > FAIL_AFTER_CALLS["n"]:
        raise RuntimeError("the site's GPU fell over")
    torch.manual_seed(seed)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    losses = []
    for _ in range(epochs):
        for batch in (subjects,) if len(subjects) > 1 else ():  # one full batch per epoch (BatchNorm needs two)
            x = torch.from_numpy(np.concatenate([s.image for s in batch]))
            y = torch.tensor([class_names.index(s.label(task)) for s in batch for _ in range(s.image.shape[0])])
            loss = nn.functional.cross_entropy(model(x), y)
            if proximal_mu > 0 and global_params is not None:
                loss = loss + proximal_mu / 2 * sum(((p - g) ** 2).sum() for p, g in zip(model.parameters(), global_params,
                                                                                        strict=True))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
    labels = [s.label(task) for s in subjects]
    return {"loss": float(np.mean(losses)), "num_examples": len(subjects),
            "class_counts": [labels.count(c) for c in class_names]}


def predict_subjects(model, subjects, class_names, device) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return np.stack([torch.softmax(model(torch.from_numpy(s.image)), dim=1).mean(0).numpy() for s in subjects])


# --------------------------------------------------------------------------------------------- prepared data
def write_cohort(folder: Path, sites: dict[str, int], seed: int = 0, size: int = 8) -> Path:
    """A tiny prepared cache: per site ``n`` subjects, IDH class visible in the FLAIR channel mean."""
    rng = np.random.default_rng(seed)
    classes = ("mutant", "wildtype", "")
    tumour = ("oligodendroglioma", "astrocytoma", "glioblastoma")
    for site, count in sites.items():
        for i in range(count):
            label = classes[i % 2]
            image = rng.normal(size=(1, 5, size, size)).astype(np.float32)
            image[:, 3] += 1.5 if label == "mutant" else -1.5
            image[:, 4] = (rng.random((1, size, size)) > 0.5).astype(np.float32)
            save_prepared(folder / site / f"{site}_{i:03d}.safetensors",
                          PreparedSubject(f"{site}_{i:03d}", site, image, idh=label,
                                          tumor_type=tumour[i % 3] if site != "NOTT" else "", split="train"))
    return folder


# ---------------------------------------------------------------------------------------------- in-process grid
def copy_content(content: RecordDict) -> RecordDict:
    """A deep copy of a message's records (arrays copied; Flower's records are not deep-copyable)."""
    copied = RecordDict()
    for key, record in content.items():
        if isinstance(record, ArrayRecord):
            copied[key] = ArrayRecord({name: Array(array.numpy().copy()) for name, array in record.items()})
        else:
            copied[key] = type(record)(copy.deepcopy(dict(record)))
    return copied


class InProcessGrid:
    """A Flower Grid that calls a ClientApp directly, node by node, in this process (no Ray, no network)."""

    def __init__(self, client_app: ClientApp, num_nodes: int) -> None:
        TaskIdentity.task_id, TaskIdentity.run_id, TaskIdentity.node_id = 1, 4242, 0
        self.run = Run.create_empty(run_id=4242)
        self.client_app = client_app
        self.contexts = {100 + k: Context(run_id=4242, node_id=100 + k,
                                          node_config={"partition-id": k, "num-partitions": num_nodes},
                                          state=RecordDict(), run_config={}) for k in range(num_nodes)}

    def get_node_ids(self) -> Iterable[int]:
        return list(self.contexts)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        replies = []
        for message in messages:
            config = message.content.get("config")
            if config is not None and "round" in KILL_AT_ROUND and KILL_AT_ROUND["round"] == config.get("server-round"):
                raise KeyboardInterrupt  # the whole run is killed mid-round
            # a real transport serializes: every client gets its own copy of the content
            delivered = Message(copy_content(message.content), dst_node_id=message.metadata.dst_node_id,
                                message_type=message.metadata.message_type, group_id=message.metadata.group_id)
            try:
                replies.append(self.client_app(delivered, self.contexts[message.metadata.dst_node_id]))
            except Exception as exc:  # Flower turns a ClientApp's exception into an error reply
                reason = f"<class 'ClientAppException'>:<'Message: {exc}'>"
                replies.append(Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason),
                                       reply_to=message))
        return replies
