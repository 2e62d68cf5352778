"""Communication: exact bytes of the serialized Flower messages, update compression, and the mode comparison table.

Bytes are measured, not estimated: a message's size is the sum of its serialized Flower objects (Message, RecordDict,
records, arrays and array chunks), which is what the SuperLink and SuperNodes push and pull; HTTP/TLS framing is not
included. :class:`ByteCountingGrid` wraps the ServerApp's grid and logs every exchange per node.

Compression applies to the client's update (local weights minus the global weights it received), so the server
decompresses against the global model it sent: ``float16`` halves the upload, ``int8`` (per-tensor affine
quantisation to 256 levels) quarters it.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, Message
from flwr.supercore.inflatable.inflatable_object import get_all_nested_objects

from catphish.errors import CatphishError

COMPRESSIONS: tuple[str, ...] = ("none", "float16", "int8")
_Q8_PARAMS = "__int8_lo_scale__"
"""Key of the (n_tensors, 2) float32 array holding each quantised tensor's offset and step."""


# ------------------------------------------------------------------------------------------------ measuring
def wire_bytes(message: Message) -> int:
    """Serialized size of a message: every nested Flower object's deflated bytes (content-addressed objects)."""
    return sum(len(obj.deflate()) for obj in get_all_nested_objects(message).values())


@dataclass
class Exchange:
    """One ``send_and_receive`` of the ServerApp: bytes per node down (server→client) and up (client→server)."""

    kind: str
    seconds: float
    down: dict[int, int] = field(default_factory=dict)
    up: dict[int, int] = field(default_factory=dict)
    failed: list[int] = field(default_factory=list)


class ByteCountingGrid:
    """A transparent wrapper around a Flower ``Grid`` that measures every message it sends and receives."""

    def __init__(self, grid: Any) -> None:
        self._grid = grid
        self.exchanges: list[Exchange] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._grid, name)

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> Iterable[Message]:
        messages = list(messages)
        exchange = Exchange(kind=messages[0].metadata.message_type if messages else "", seconds=0.0)
        for message in messages:
            node = message.metadata.dst_node_id
            exchange.down[node] = exchange.down.get(node, 0) + wire_bytes(message)
        start = time.perf_counter()
        replies = list(self._grid.send_and_receive(messages, timeout=timeout))
        exchange.seconds = time.perf_counter() - start
        for reply in replies:
            node = reply.metadata.src_node_id
            exchange.up[node] = exchange.up.get(node, 0) + wire_bytes(reply)
            if reply.has_error():
                exchange.failed.append(node)
        self.exchanges.append(exchange)
        return replies

    def take(self) -> list[Exchange]:
        """The exchanges since the last call (one round's worth), clearing the log."""
        taken, self.exchanges = self.exchanges, []
        return taken


# ---------------------------------------------------------------------------------------------- compression
def arrays_to_numpy(record: ArrayRecord) -> dict[str, np.ndarray]:
    return {name: array.numpy() for name, array in record.items()}


def numpy_to_arrays(arrays: dict[str, np.ndarray]) -> ArrayRecord:
    return ArrayRecord({name: Array(np.ascontiguousarray(value)) for name, value in arrays.items()})


def compress_update(local: dict[str, np.ndarray], global_: dict[str, np.ndarray], method: str) -> ArrayRecord:
    """What a client uploads: its weights (``none``) or its compressed update against the global weights."""
    _check_method(method)
    if method == "none":
        return numpy_to_arrays(local)
    out: dict[str, np.ndarray] = {}
    q8_params: list[tuple[float, float]] = []
    for name, value in local.items():
        if not np.issubdtype(value.dtype, np.floating):
            out[name] = value  # integer buffers (e.g. BatchNorm step counters) travel as they are
            continue
        update = value.astype(np.float32) - global_[name].astype(np.float32)
        if method == "float16":
            out[name] = update.astype(np.float16)
            continue
        lo, hi = (float(update.min()), float(update.max())) if update.size else (0.0, 0.0)
        step = (hi - lo) / 255.0 if hi > lo else 1.0
        out[name] = np.clip(np.rint((update - lo) / step), 0, 255).astype(np.uint8)
        q8_params.append((lo, step))
    if method == "int8":
        out[_Q8_PARAMS] = np.asarray(q8_params, dtype=np.float32).reshape(-1, 2)
    return numpy_to_arrays(out)


def decompress_update(record: ArrayRecord, global_: dict[str, np.ndarray], method: str) -> ArrayRecord:
    """Inverse of :func:`compress_update` at the server: global weights plus the decoded update, in their dtypes."""
    _check_method(method)
    received = arrays_to_numpy(record)
    if method == "none":
        return numpy_to_arrays({name: received[name].astype(global_[name].dtype, copy=False) for name in global_})
    q8_params = received.pop(_Q8_PARAMS, np.zeros((0, 2), np.float32))
    restored: dict[str, np.ndarray] = {}
    q8_index = 0
    for name, reference in global_.items():
        if name not in received:
            raise CatphishError(f"client update lacks tensor '{name}' (model mismatch between server and client)")
        value = received[name]
        if not np.issubdtype(reference.dtype, np.floating):
            restored[name] = value.astype(reference.dtype, copy=False)
            continue
        if method == "int8":
            lo, step = q8_params[q8_index]
            q8_index += 1
            update = value.astype(np.float32) * step + lo
        else:
            update = value.astype(np.float32)
        restored[name] = (reference.astype(np.float32) + update).astype(reference.dtype)
    return numpy_to_arrays(restored)


def restore_dtypes(record: ArrayRecord, reference: dict[str, np.ndarray]) -> ArrayRecord:
    """Cast aggregated arrays back to the model's dtypes (weighted averages turn integer buffers into floats)."""
    arrays = arrays_to_numpy(record)
    return numpy_to_arrays({name: np.asarray(arrays[name]).astype(ref.dtype, copy=False) for name, ref in reference.items()})


def _check_method(method: str) -> None:
    if method not in COMPRESSIONS:
        raise CatphishError(f"unknown compression '{method}' (choose from {', '.join(COMPRESSIONS)})")


# --------------------------------------------------------------------------------------- mode comparison table
@dataclass(frozen=True)
class CommunicationRow:
    mode: str
    what_travels: str
    bytes: int
    ratio_to_catphishing: float | None


def federated_run_bytes(run_dir: str | Path) -> int:
    """Everything a federated run moved (all rounds of every stage, both directions), from its ``rounds.csv`` files."""
    run_dir = Path(run_dir)
    paths = [p for p in (run_dir / "rounds.csv", *sorted(run_dir.glob("*/rounds.csv"))) if p.is_file()]
    if not paths:
        raise CatphishError(f"{run_dir / 'rounds.csv'}: not found; is {run_dir.name} a federated run folder?")
    total = 0
    for path in paths:
        with path.open(newline="") as handle:
            total += sum(int(row["bytes_down"]) + int(row["bytes_up"]) for row in csv.DictReader(handle))
    return total


def communication_table(centralized_bytes: int, federated_bytes: int, catphishing_bytes: int, *,
                        rounds: int | None = None, sites: int | None = None) -> list[CommunicationRow]:
    """The paper's Supplementary Note 7 comparison: what each mode sends off the sites, with the ratio to CATphishing."""
    def ratio(value: int) -> float | None:
        return value / catphishing_bytes if catphishing_bytes > 0 else None

    fl_what = "classifier weights, down and up" + (f", {rounds} rounds" if rounds else "") + (
        f" × {sites} sites" if sites else "")
    return [
        CommunicationRow("centralized", "training images (copied once)", centralized_bytes, ratio(centralized_bytes)),
        CommunicationRow("federated", fl_what, federated_bytes, ratio(federated_bytes)),
        CommunicationRow("catphishing", "one site package per site (sent once)", catphishing_bytes,
                         ratio(catphishing_bytes)),
    ]


def communication_markdown(rows: Sequence[CommunicationRow]) -> str:
    """A Markdown table for BENCHMARKS.md."""
    lines = ["| mode | what leaves the sites | bytes | MB | × CATphishing |", "|---|---|---:|---:|---:|"]
    for row in rows:
        ratio = "–" if row.ratio_to_catphishing is None else f"{row.ratio_to_catphishing:.2f}"
        lines.append(f"| {row.mode} | {row.what_travels} | {row.bytes:,} | {row.bytes / 1e6:.2f} | {ratio} |")
    federated = next((r for r in rows if r.mode == "federated"), None)
    if federated is not None and federated.ratio_to_catphishing is not None:
        lines.append("")
        lines.append(f"FL / CATphishing communication ratio: **{federated.ratio_to_catphishing:.2f}**")
    return "\n".join(lines) + "\n"
