"""`qnode start`: runs one node in the foreground (the supervisor).

Loads node.toml (`--config`, optional: without it every key takes its default) with the flags
as overrides, validates everything before touching the data directory, then hands over to the
supervisor. Any refusal — a bad key or value, a data dir held by another node or belonging to
another node id — is one line on stderr and exit code 1.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer

from qnode.coordinator.meta_properties import MetaPropertiesError, ensure_meta_properties
from qnode.node.config import NodeConfigError, load_config
from qnode.node.lockfile import DataDirLockedError
from qnode.node.process_main import LOG_LEVEL_ENV
from qnode.node.supervisor import Supervisor

DEFAULT_CONFIG = "node.toml"


def _fail(message: str) -> None:
    print(f"qnode: {message}", file=sys.stderr)
    raise typer.Exit(1)


def start(
    config: Annotated[
        Path | None,
        typer.Option("--config", help="node.toml to load (default: ./node.toml if present)"),
    ] = None,
    data_dir: Annotated[str | None, typer.Option("--data-dir", help="data directory")] = None,
    node_id: Annotated[int | None, typer.Option("--node-id", help="this node's id")] = None,
    workers: Annotated[int | None, typer.Option("--workers", help="worker processes")] = None,
    listen: Annotated[str | None, typer.Option("--listen", help="tcp://HOST:PORT")] = None,
    peers: Annotated[str | None, typer.Option("--peers", help="ID@tcp://HOST:PORT,...")] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="DEBUG, INFO, WARNING")] = "INFO",
) -> None:
    """Start one node in the foreground: coordinator and workers; Ctrl-C stops it cleanly."""
    if config is None and Path(DEFAULT_CONFIG).is_file():
        config = Path(DEFAULT_CONFIG)  # `qnode start` in a directory holding node.toml
    overrides = {
        "data.dir": data_dir,
        "node.id": node_id,
        "workers": workers,
        "listen": listen,
        "peers": peers,
    }
    try:
        cfg = load_config(config, overrides)
    except NodeConfigError as exc:
        _fail(str(exc))
    if cfg.peers:
        # The metadata quorum is Raft-shaped, but votes and log replication between nodes are
        # not there yet: a node with peers could never elect a controller. Say so up front.
        _fail(
            "peers "
            + ",".join(f"{p.node_id}@{p.endpoint}" for p in cfg.peers)
            + ": multi-node clusters are not available in this version (the metadata quorum"
            " cannot replicate between nodes yet); start a single node without peers"
        )
    level = log_level.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        _fail(f"bad --log-level {log_level!r} (allowed: DEBUG, INFO, WARNING, ERROR)")
    os.environ[LOG_LEVEL_ENV] = level
    logging.basicConfig(
        level=level, format="%(asctime)s supervisor %(levelname)s %(name)s: %(message)s"
    )
    supervisor = Supervisor(cfg)
    try:
        supervisor.lock.acquire()
    except DataDirLockedError as exc:
        _fail(str(exc))
    except OSError as exc:
        _fail(f"cannot use data dir {cfg.data_dir}: {exc.strerror}")
    try:
        ensure_meta_properties(cfg.data_dir, cfg.node_id)
    except MetaPropertiesError as exc:
        supervisor.lock.release()
        _fail(str(exc))
    raise typer.Exit(supervisor.run())  # runs with the lock taken above, releases it


def register(app: typer.Typer) -> None:
    """Add the `start` command to the CLI."""
    app.command("start")(start)
