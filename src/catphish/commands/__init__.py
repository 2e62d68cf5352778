"""CLI command groups, one module each, registered on the root typer app by :func:`register`.

Each module only parses options, calls the library and prints; the work lives in the library packages.
"""

from __future__ import annotations

import importlib

import typer

# (module, name, help) — groups have subcommands; every module exposes `app` (a typer.Typer) or `command`.
_GROUPS: tuple[tuple[str, str, str], ...] = (
    ("data", "data", "Check, prepare, generate (phantom) and show datasets."),
    ("site", "site", "Site side: train the site latent diffusion model, export, verify, sample, audit."),
    ("hub", "hub", "Hub side: synthesize a cohort from site packages and filter it."),
    ("bench", "bench", "Measure speed, memory and communication; write BENCHMARKS.md."),
)
_COMMANDS: tuple[tuple[str, str], ...] = (
    ("train", "train"),
    ("predict", "predict"),
    ("evaluate", "evaluate"),
    ("report", "report"),
    ("demo", "demo"),
)


def register(root: typer.Typer) -> None:
    for module_name, name, help_text in _GROUPS:
        module = importlib.import_module(f"catphish.commands.{module_name}")
        root.add_typer(module.app, name=name, help=help_text)
    for module_name, _name in _COMMANDS:
        module = importlib.import_module(f"catphish.commands.{module_name}")
        module.register(root)
