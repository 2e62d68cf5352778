"""`catphish data` group: subcommands live in `data_check.py` (check, prepare) and `data_phantom.py` (phantom, show)."""

from __future__ import annotations

import typer

from catphish.commands import data_check, data_phantom

app = typer.Typer(no_args_is_help=True)
data_check.register(app)
data_phantom.register(app)
