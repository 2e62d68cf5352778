"""Checkpoint/resume pieces shared by training loops: stage checkpoints, RNG states, a metrics log, Ctrl-C handling.

A stage checkpoint holds everything needed to continue *exactly*: model and optimizer states, the EMA, the stage's
random generator and torch's global RNG (the autoencoder samples its latent with it), the step and the stage's
running totals. Files go through :mod:`catphish.artifacts` (safetensors + JSON metadata, atomic writes, no pickle).
"""

from __future__ import annotations

import contextlib
import csv
import io
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from catphish.artifacts import atomic_write_text, load_state, save_state


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    """The stage generator's state and torch's global CPU (and CUDA) RNG states."""
    state: dict[str, Any] = {"generator": generator.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng(generator: torch.Generator, state: dict[str, Any]) -> None:
    generator.set_state(state["generator"].cpu())
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


def save_checkpoint(path: str | Path, *, step: int, done: bool, models: dict[str, dict[str, torch.Tensor]],
                    optimizers: dict[str, dict[str, Any]] | None = None, rng: dict[str, Any] | None = None,
                    extra: dict[str, Any] | None = None) -> Path:
    """Write one stage checkpoint atomically (a crash mid-write leaves the previous one intact)."""
    return save_state(path, {"step": step, "done": done, "models": models, "optimizers": optimizers or {},
                             "rng": rng or {}, "extra": extra or {}})


def load_checkpoint(path: str | Path) -> dict[str, Any] | None:
    """The stage checkpoint at ``path``, or ``None`` when the stage has not checkpointed yet."""
    path = Path(path)
    return load_state(path) if path.exists() else None


class MetricsLog:
    """Per-step losses of every stage, written as ``metrics.csv`` together with each checkpoint.

    Rows logged after the last checkpoint are dropped on resume, so the file always matches the weights.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.rows: list[dict[str, Any]] = []
        if self.path.exists():
            with self.path.open(newline="") as handle:
                self.rows = [dict(row) for row in csv.DictReader(handle)]

    def add(self, stage: str, step: int, values: dict[str, float]) -> None:
        self.rows.append({"stage": stage, "step": step, **{k: f"{v:.6g}" for k, v in values.items()}})

    def truncate(self, stage: str, step: int) -> None:
        """Forget rows of ``stage`` beyond ``step`` (written after the checkpoint being resumed)."""
        self.rows = [row for row in self.rows if row["stage"] != stage or int(row["step"]) <= step]

    def last(self, stage: str, count: int) -> dict[str, float]:
        """Mean of each loss over the stage's last ``count`` logged steps."""
        rows = [row for row in self.rows if row["stage"] == stage][-count:]
        names = [k for k in (rows[0] if rows else {}) if k not in ("stage", "step")]
        means: dict[str, float] = {}
        for name in names:
            values = [float(row[name]) for row in rows if row.get(name) not in (None, "")]
            if values:
                means[name] = sum(values) / len(values)
        return means

    def write(self) -> None:
        columns: list[str] = []
        for row in self.rows:
            columns.extend(k for k in row if k not in columns)
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=columns or ["stage", "step"], restval="", lineterminator="\n")
        writer.writeheader()
        writer.writerows(self.rows)
        atomic_write_text(self.path, buffer.getvalue())


class GracefulInterrupt:
    """Turn the first Ctrl-C into a request to stop after the current step (with a checkpoint); a second one stops now.

    Only the main thread can install signal handlers; elsewhere Ctrl-C behaves as usual.
    """

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    @contextlib.contextmanager
    def installed(self) -> Iterator[GracefulInterrupt]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        self._previous = signal.signal(signal.SIGINT, self._handle)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, self._previous)
