"""`catphish demo`."""

from __future__ import annotations

import typer

from catphish.errors import CatphishError


def register(root: typer.Typer) -> None:
    @root.command(name="demo", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def demo() -> None:
        """Not built yet: arrives with issue 9 (the one-command demo study)."""
        raise CatphishError("catphish demo is not built yet in this version (see issue 9 (the one-command demo study))")
