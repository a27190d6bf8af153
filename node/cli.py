"""The `qnode` command line (Typer).

Commands live in modules of their own that register themselves here: `cli_start` (the node)
and `cli_client` (topics, produce, consume, groups, cluster, bench — clients of a node).
"""

from __future__ import annotations

import typer

from qnode.node import cli_client, cli_start

app = typer.Typer(
    name="qnode",
    help="qnode: a durable, partitioned, replicated commit-log broker.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback()
def _root() -> None:
    # A callback keeps Typer in command-group mode even while only one command is registered
    # (otherwise `qnode start` would be read as `qnode` with an extra argument).
    pass


cli_start.register(app)
cli_client.register(app)


def main() -> None:
    app()
