"""Client commands of the CLI: topic, produce, consume, group, cluster, bench."""

from __future__ import annotations

import typer


def register(app: typer.Typer) -> None:
    """Add the client commands to the CLI."""
