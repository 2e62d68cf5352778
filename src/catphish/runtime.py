"""Process-wide settings shared by every command: device, seed, logging and progress bars."""

from __future__ import annotations

import logging
import os
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import numpy as np
import torch
from rich.console import Console
from rich.logging import RichHandler
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from catphish.errors import CatphishError

T = TypeVar("T")
log = logging.getLogger("catphish")
console = Console(stderr=True)


@dataclass
class Settings:
    device: str = "auto"
    seed: int = 0
    quiet: bool = False
    debug: bool = False
    log_file: str | None = None


settings = Settings()


def resolve_device(name: str | None = None) -> torch.device:
    """``auto`` picks CUDA when present, else CPU; asking for CUDA without one is a clear error."""
    name = name or settings.device
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise CatphishError("--device cuda was requested but no CUDA GPU is available (use --device auto or cpu)")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise CatphishError(f"unknown device '{name}' (choose auto, cpu or cuda)")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) for a reproducible run."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
    os.environ.setdefault("PYTHONHASHSEED", str(seed))


def configure_logging(quiet: bool = False, log_file: str | None = None, debug: bool = False) -> None:
    """Rich console logging (warnings only with ``--quiet``) plus an optional plain-text log file."""
    log.handlers.clear()
    log.setLevel(logging.DEBUG if debug else logging.INFO)
    log.propagate = False
    handler = RichHandler(console=console, show_path=False, show_time=False, markup=False)
    handler.setLevel(logging.WARNING if quiet else (logging.DEBUG if debug else logging.INFO))
    log.addHandler(handler)
    if log_file:
        try:
            file_handler = logging.FileHandler(log_file)
        except OSError as exc:
            raise CatphishError(f"{log_file}: cannot open the log file ({exc.strerror or exc})") from None
        file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        file_handler.setLevel(logging.DEBUG)
        log.addHandler(file_handler)


def progress_bar(transient: bool = False) -> Progress:
    """A rich progress bar with count, elapsed time and ETA; silent with ``--quiet`` or without a terminal."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
        disable=settings.quiet,
        transient=transient,
    )


def track(items: Iterable[T], description: str, total: int | None = None) -> Iterator[T]:
    """Iterate with a progress bar."""
    items = list(items) if total is None else items
    total = len(items) if total is None else total  # type: ignore[arg-type]
    with progress_bar() as progress:
        task = progress.add_task(description, total=total, status="")
        for item in items:
            yield item
            progress.advance(task)
