"""`catphish predict`."""

from __future__ import annotations

import typer

from catphish.errors import CatphishError


def register(root: typer.Typer) -> None:
    @root.command(name="predict", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def predict() -> None:
        """Not built yet: arrives with issue 7 (downstream classifiers)."""
        raise CatphishError("catphish predict is not built yet in this version (see issue 7)")
