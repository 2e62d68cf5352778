"""`catphish report`."""

from __future__ import annotations

import typer

from catphish.errors import CatphishError


def register(root: typer.Typer) -> None:
    @root.command(name="report", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def report() -> None:
        """Not built yet: arrives with issue 9 (HTML report)."""
        raise CatphishError("catphish report is not built yet in this version (see issue 9 (HTML report))")
