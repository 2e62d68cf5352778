"""`catphish evaluate`."""

from __future__ import annotations

import typer

from catphish.errors import CatphishError


def register(root: typer.Typer) -> None:
    @root.command(name="evaluate", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def evaluate() -> None:
        """Not built yet: arrives with issue 9 (evaluation and statistics)."""
        raise CatphishError("catphish evaluate is not built yet in this version (see issue 9 (evaluation and statistics))")
