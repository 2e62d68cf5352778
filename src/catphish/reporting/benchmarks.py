"""BENCHMARKS.md: one section per `catphish bench` subcommand, replaced in place when re-measured.

Each section sits between ``<!-- bench:NAME -->`` and ``<!-- /bench:NAME -->`` markers, so re-running one benchmark
keeps the others. Every section states the command that produced it and the machine it ran on.
"""

from __future__ import annotations

import datetime as dt
import platform
import re
import resource
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from catphish.artifacts import atomic_write_text, host_description

HEADER = ("# catphish benchmarks\n\nEvery figure below was produced by the `catphish bench …` command named in its "
          "section, on the machine described there. Re-run a command to refresh its section.\n")


def update_section(path: str | Path, name: str, body: str) -> Path:
    """Replace (or append) the section ``name`` of the benchmarks file."""
    path = Path(path)
    text = path.read_text() if path.exists() else HEADER
    block = f"<!-- bench:{name} -->\n{body.rstrip()}\n<!-- /bench:{name} -->"
    pattern = re.compile(rf"<!-- bench:{re.escape(name)} -->.*?<!-- /bench:{re.escape(name)} -->", re.DOTALL)
    text = pattern.sub(lambda _match: block, text) if pattern.search(text) else f"{text.rstrip()}\n\n{block}\n"
    return atomic_write_text(path, text)


def machine_line() -> str:
    host = host_description()
    gpu = ", ".join(host.get("gpus", [])) or "no GPU"
    return (f"{host['cpu']} × {host['cpu_count']} cores, {gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__}; measured {dt.date.today().isoformat()}")


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def peak_rss_mb() -> float:
    """Peak resident memory of this process and its finished children, in MiB (Linux reports KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(own, children) / 1024.0


def peak_gpu_mb() -> float | None:
    """Peak CUDA memory allocated by this process's tensors, in MiB; ``None`` without a GPU."""
    if not torch.cuda.is_available():
        return None
    return max(torch.cuda.max_memory_allocated(i) for i in range(torch.cuda.device_count())) / 2**20


def memory_line() -> str:
    """``peak RSS … MiB`` plus the GPU peak when a GPU was used."""
    gpu = peak_gpu_mb()
    return f"peak RSS {peak_rss_mb():.0f} MiB" + (f", peak GPU memory {gpu:.0f} MiB" if gpu else "")


@dataclass
class StageTimer:
    """Wall time per named stage, in order."""

    stages: dict[str, float] = field(default_factory=dict)

    @contextmanager
    def stage(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stages[name] = self.stages.get(name, 0.0) + time.perf_counter() - start

    @property
    def total(self) -> float:
        return sum(self.stages.values())


def _cell(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


@dataclass(frozen=True)
class Timeline:
    wall_seconds: float
    """Time during which at least one stage ran (parallel site models count once; resumed runs add up)."""
    peak_rss_mb: float
    """Largest sum of peak RSS over stages that ran at the same time (an upper bound of the study's memory)."""


def stage_timeline(records: Sequence[dict[str, Any]]) -> Timeline:
    """Wall time and concurrent peak memory of stage records holding ``started``/``ended`` epoch seconds."""
    intervals = sorted((float(r["started"]), float(r["ended"]), float(r["peak_rss_mb"])) for r in records)
    wall, covered_until = 0.0, float("-inf")
    for start, end, _ in intervals:
        wall += max(0.0, end - max(start, covered_until))
        covered_until = max(covered_until, end)
    peak = max((sum(rss for s, e, rss in intervals if s <= start < e) for start, _, _ in intervals), default=0.0)
    return Timeline(wall, peak)
