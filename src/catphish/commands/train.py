"""`catphish train`."""

from __future__ import annotations

import typer

from catphish.errors import CatphishError


def register(root: typer.Typer) -> None:
    @root.command(name="train", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
    def train() -> None:
        """Not built yet: arrives with issue 7 (downstream classifiers) and issue 8 (federated)."""
        raise CatphishError("catphish train is not built yet in this version (issues 7 and 8)")
