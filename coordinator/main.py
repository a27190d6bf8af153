"""The coordinator process: metadata quorum member, controller and bootstrap endpoint.

`run_coordinator(config, notify)` loads the metadata log (checkpoint + replay), joins the
quorum (a single node is a one-voter quorum and leads at once), binds the node's `listen`
ROUTER, installs the API handlers and serves until SIGTERM/SIGINT, then closes the log
cleanly and returns 0.

Other coordinator modules plug in through `Coordinator`: if a module
`qnode.coordinator.group_service` exists, its `install(coordinator: Coordinator) -> None` is
called before serving starts; it may register handlers (`coordinator.server.register(...)`,
`register_body_handler(...)`), tickers and timers, create internal topics through
`coordinator.controller.ensure_internal_topic(...)`, and allocate producer ids with
`coordinator.controller.allocate_producer_id()`; `coordinator.on_close` callbacks run at exit.
"""

from __future__ import annotations

import importlib
import logging
import os
import resource
import signal
from collections.abc import Callable
from dataclasses import dataclass, field

import zmq

from qnode.coordinator.admin_api import AdminApi
from qnode.coordinator.controller import Controller
from qnode.coordinator.meta_properties import ensure_meta_properties
from qnode.coordinator.metadata_log import DIR_NAME, MetadataLog
from qnode.coordinator.offsets_view import OffsetsView
from qnode.coordinator.quorum import Quorum
from qnode.coordinator.server import CoordinatorServer, signal_pipe
from qnode.coordinator.store import MetadataStore
from qnode.coordinator.worker_api import Propagation, WorkerApi
from qnode.node.config import NodeConfig
from qnode.storage.log_manager import partition_capacity

log = logging.getLogger(__name__)

PLUGIN_MODULES = ("qnode.coordinator.group_service",)


@dataclass
class Coordinator:
    """Everything a coordinator module may need, built once per process."""

    config: NodeConfig
    cluster_id: str
    ctx: zmq.Context
    server: CoordinatorServer
    store: MetadataStore
    controller: Controller
    offsets: OffsetsView
    on_close: list[Callable[[], None]] = field(default_factory=list)
    # called on each WorkerHello: (worker id, its endpoint before, a new process?)
    worker_hellos: list[Callable[[int, str | None, bool], None]] = field(default_factory=list)


def _load_plugins(coordinator: Coordinator) -> None:
    for name in PLUGIN_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name:
                continue  # not written yet: the node runs without it
            raise
        module.install(coordinator)
        log.info("coordinator module %s installed", name)


def worker_partition_capacity() -> int | None:
    """Partitions a worker can keep open: workers raise their open-file limit to the hard
    limit this process was started with (node/worker.py), so that is the one that counts."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return None if hard == resource.RLIM_INFINITY else partition_capacity(hard)


def run_coordinator(config: NodeConfig, notify: Callable[[str], None] = lambda line: None) -> int:
    """Run the coordinator until SIGTERM/SIGINT. `notify(line)` reports readiness to the supervisor:
    "coordinator ready <endpoint>", then "worker <id> <pid>" once a worker said hello and
    applied the metadata log up to where it stood at its hello (it serves its partitions)."""
    meta = ensure_meta_properties(config.data_dir, config.node_id)
    mlog = MetadataLog(config.data_dir / DIR_NAME, config.get("metadata.log.segment.bytes"))
    voters = frozenset({config.node_id, *(p.node_id for p in config.peers)})
    quorum = Quorum(config.node_id, voters, mlog, config.data_dir / DIR_NAME / "quorum-state")
    store = MetadataStore(
        mlog, quorum, config.get("metadata.log.max.record.bytes.between.snapshots")
    )
    quorum.start_election()
    controller = Controller(config, store, worker_partition_capacity())
    if quorum.is_leader:
        controller.start()
    else:
        log.warning(
            "node %d is not the metadata quorum leader (voters %s): admin calls answer "
            "NOT_CONTROLLER",
            config.node_id,
            sorted(voters),
        )

    ctx = zmq.Context()
    server = CoordinatorServer(ctx, config.listen, config.socket_request_max_bytes)
    offsets = OffsetsView(config.node_id, config.data_dir)
    coordinator = Coordinator(config, meta.cluster_id, ctx, server, store, controller, offsets)
    propagation = Propagation(server)
    workers = WorkerApi(
        server,
        store,
        controller,
        propagation,
        on_worker_synced=lambda wid, pid: notify(f"worker {wid} {pid}"),
        on_hello=coordinator.worker_hellos,
        cluster_id=meta.cluster_id,
    )
    workers.install()
    AdminApi(
        server, controller, propagation, offsets, meta.cluster_id, worker_down=workers.worker_down
    ).install()
    _load_plugins(coordinator)

    r, w = signal_pipe()
    signal.set_wakeup_fd(w)

    def on_signal(signum: int, frame: object) -> None:
        log.info("coordinator got %s: stopping", signal.Signals(signum).name)
        server.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.add_reader(r, lambda: _drain_pipe(r))

    log.info(
        "coordinator of node %d serving on %s (metadata at offset %d, term %d)",
        config.node_id,
        server.endpoint,
        store.committed_offset,
        quorum.term,
    )
    notify(f"coordinator ready {server.endpoint}")
    try:
        server.run()
    finally:
        try:
            server.drain_pending()  # requests that arrived before the signal are answered
        except Exception:
            log.exception("draining queued requests failed")
        for fn in coordinator.on_close:
            try:
                fn()
            except Exception:
                log.exception("coordinator close callback failed")
        propagation.release_all()  # parked admin calls and metadata fetches get their answer
        workers.release_all()
        server.close()
        offsets.close()
        mlog.close()
        ctx.term()
    log.info("coordinator of node %d stopped", config.node_id)
    return 0


def _drain_pipe(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass
