"""`qnode start`: runs one node in the foreground (the supervisor)."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the `start` command to the CLI."""
