"""Entry point of the supervisor's child processes: `python -m qnode.node.process_main ROLE`.

    python -m qnode.node.process_main coordinator
    python -m qnode.node.process_main worker <worker_id>

The supervisor passes the validated node config as JSON in the environment (`QNODE_NODE_CONFIG`)
so every child sees exactly the config it checked, and a pipe fd (`QNODE_NOTIFY_FD`) on which
the coordinator reports readiness and worker registrations, one line each. A child asks the
kernel for SIGTERM when the supervisor dies (PR_SET_PDEATHSIG), so a `kill -9` of the
supervisor never leaves orphans holding the node's ports, shm tables or data files.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
from collections.abc import Callable

from qnode.node.config import NodeConfig

CONFIG_ENV = "QNODE_NODE_CONFIG"
NOTIFY_ENV = "QNODE_NOTIFY_FD"
LOG_LEVEL_ENV = "QNODE_LOG_LEVEL"
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the supervisor's own cleanup must do
        return
    if os.getppid() == 1:  # the supervisor died before prctl took effect
        sys.exit(1)


def coordinator_connect_endpoint(listen: str) -> str:
    """Where a local process reaches the coordinator bound on `listen` (0.0.0.0 → loopback)."""
    head, _, port = listen.rpartition(":")
    host = head.split("://", 1)[1]
    if host in ("0.0.0.0", "*"):
        host = "127.0.0.1"
    elif host in ("::", "[::]"):
        host = "[::1]"
    return f"tcp://{host}:{port}"


def _notifier() -> Callable[[str], None]:
    fd = os.environ.get(NOTIFY_ENV)
    if not fd:
        return lambda line: None
    stream = os.fdopen(int(fd), "w", buffering=1)

    def notify(line: str) -> None:
        try:
            stream.write(line + "\n")
        except OSError:  # supervisor gone: nothing to tell
            pass

    return notify


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    text = os.environ.get(CONFIG_ENV)
    if not args or text is None:
        print(
            "usage: QNODE_NODE_CONFIG=<json> python -m qnode.node.process_main "
            "coordinator | worker <id>",
            file=sys.stderr,
        )
        return 2
    _die_with_parent()
    config = NodeConfig.from_json(text)
    level = os.environ.get(LOG_LEVEL_ENV, "INFO")
    if args[0] == "coordinator":
        logging.basicConfig(
            level=level, format="%(asctime)s coordinator %(levelname)s %(name)s: %(message)s"
        )
        from qnode.coordinator.main import run_coordinator

        return run_coordinator(config, _notifier())
    if args[0] == "worker" and len(args) == 2 and args[1].isdigit():
        from qnode.node.worker import WorkerConfig, run_worker

        wc = WorkerConfig.from_node_config(
            config, int(args[1]), coordinator_connect_endpoint(config.listen)
        )
        wc.log_level = level
        return run_worker(wc)
    print(f"unknown role {' '.join(args)!r}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
