"""Per-round record of a federated run: ``rounds.csv`` (metrics, time, measured bytes per client) and its plot.

One row per completed round. Columns: ``round, attempts, clients_sampled, clients_ok, clients_failed, train_loss,
[val_loss, val_accuracy, val_auc] (server-side validation on the shared holdout), [eval_loss, eval_accuracy]
(clients' own data), epsilon (central DP), round_time_s, bytes_down, bytes_up`` and then ``bytes_down_<client>,
bytes_up_<client>`` for every client. Bytes include every exchange of the round (retries and evaluation too).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from catphish.artifacts import atomic_output_path, atomic_write_text

BASE_COLUMNS: tuple[str, ...] = ("round", "attempts", "clients_sampled", "clients_ok", "clients_failed", "train_loss",
                                 "val_loss", "val_accuracy", "val_auc", "eval_loss", "eval_accuracy", "epsilon",
                                 "round_time_s", "bytes_down", "bytes_up")


def client_columns(client_names: Sequence[str]) -> list[str]:
    return [f"bytes_{direction}_{name}" for name in client_names for direction in ("down", "up")]


def write_rounds_csv(path: str | Path, rows: Sequence[dict[str, Any]], client_names: Sequence[str]) -> Path:
    """Write all rows so far (atomically: a killed run never leaves a half-written file)."""
    columns = [*BASE_COLUMNS, *client_columns(client_names)]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({column: _format(row.get(column, "")) for column in columns})
    return atomic_write_text(path, buffer.getvalue())


def read_rounds_csv(path: str | Path) -> list[dict[str, str]]:
    with Path(path).open(newline="") as handle:
        return list(csv.DictReader(handle))


def plot_rounds(path: str | Path, rows: Sequence[dict[str, Any]], title: str) -> Path:
    """Training loss and validation AUC per round (left) and megabytes moved per round (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [int(r["round"]) for r in rows]
    figure, (left, right) = plt.subplots(1, 2, figsize=(9, 3.4), constrained_layout=True)
    left.plot(rounds, [_number(r.get("train_loss")) for r in rows], "o-", label="train loss (clients)")
    left.set_xlabel("round")
    left.set_ylabel("loss")
    auc = [_number(r.get("val_auc")) for r in rows]
    if any(math.isfinite(v) for v in auc):
        twin = left.twinx()
        twin.plot(rounds, auc, "s--", color="tab:green", label="validation AUC (server holdout)")
        twin.set_ylabel("AUC")
        twin.set_ylim(0, 1)
        twin.legend(loc="lower right", fontsize=8)
    left.legend(loc="upper right", fontsize=8)
    down = [_number(r.get("bytes_down")) / 1e6 for r in rows]
    up = [_number(r.get("bytes_up")) / 1e6 for r in rows]
    right.bar(rounds, down, label="server → clients")
    right.bar(rounds, up, bottom=down, label="clients → server")
    right.set_xlabel("round")
    right.set_ylabel("MB per round (measured)")
    right.legend(fontsize=8)
    figure.suptitle(title, fontsize=10)
    with atomic_output_path(path) as tmp:
        figure.savefig(tmp, dpi=110, format=Path(path).suffix.lstrip(".") or "png")
    plt.close(figure)
    return Path(path)


def _format(value: Any) -> Any:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.6g}"
    return value


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan
