"""The group coordinator inside the coordinator process: state machine, handlers, offsets I/O.

`GroupService(server, controller, store, config).install()` plugs the group APIs into the
server's registry, drives the state machine's deadlines from the server loop, and keeps the
in-memory cache in step with `__consumer_offsets`:

- the topic (compacted, `offsets.topic.num.partitions`, `offsets.topic.segment.bytes`) is
  created by the controller on the first FindCoordinator for a group;
- a group's coordinator is the leader of partition `partition_for(group) % N`; every partition
  this node leads is loaded (Fetch from its worker, replayed into the cache) before its groups
  are served — until then they get COORDINATOR_LOAD_IN_PROGRESS; a partition that moves away
  is unloaded (NOT_COORDINATOR);
- writes are coalesced per partition per loop turn and sent with Produce acks=-1; a write
  whose worker died or was replaced fails at once (offsets_io.py) and the client retries.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from qnode.coordinator.controller import Controller, ControllerError
from qnode.coordinator.group_coordinator import ErrorCallback, GroupConfig, GroupCoordinator
from qnode.coordinator.group_handlers import GroupHandlers, Handler
from qnode.coordinator.group_metadata import OFFSETS_TOPIC, partition_for
from qnode.coordinator.offsets_io import WorkerRequests
from qnode.coordinator.offsets_store import LoadProgress, OffsetsAppender, load_batches
from qnode.coordinator.server import Call, CoordinatorServer
from qnode.coordinator.store import MetadataStore
from qnode.node.config import NodeConfig
from qnode.transport.api import ApiKey
from qnode.transport.errors import ErrorCode
from qnode.transport.frame import Response, as_buffer

log = logging.getLogger(__name__)
E = ErrorCode

# Topic configs of __consumer_offsets at its creation; segment.bytes comes from
# `offsets.topic.segment.bytes` (node.toml).
OFFSETS_TOPIC_CONFIGS = {"cleanup.policy": "compact"}
LOAD_FETCH_BYTES = 16 << 20
RETRY_MS = 100
LOAD_FETCH_TIMEOUT_MS = 1000

# Produce errors as a committing client should see them (Kafka's mapping).
_COMMIT_ERRORS = {
    E.UNKNOWN_TOPIC_OR_PARTITION: E.COORDINATOR_NOT_AVAILABLE,
    E.NOT_ENOUGH_REPLICAS: E.COORDINATOR_NOT_AVAILABLE,
    E.NOT_ENOUGH_REPLICAS_AFTER_APPEND: E.COORDINATOR_NOT_AVAILABLE,
    E.REQUEST_TIMED_OUT: E.COORDINATOR_NOT_AVAILABLE,
    E.NETWORK_EXCEPTION: E.COORDINATOR_NOT_AVAILABLE,
    E.NOT_LEADER_OR_FOLLOWER: E.NOT_COORDINATOR,
    E.KAFKA_STORAGE_ERROR: E.NOT_COORDINATOR,
    E.MESSAGE_TOO_LARGE: E.INVALID_COMMIT_OFFSET_SIZE,
    E.RECORD_LIST_TOO_LARGE: E.INVALID_COMMIT_OFFSET_SIZE,
}


@dataclass
class _Load:
    """One partition being read back into the cache."""

    started: float
    progress: LoadProgress = field(default_factory=LoadProgress)
    endpoint: str | None = None  # where the fetch in flight went
    attempt: int = 0  # answers to an older attempt are ignored
    first_answer: float = 0.0


def _wall_ms() -> int:
    return time.time_ns() // 1_000_000


class GroupService:
    def __init__(self, server: CoordinatorServer, controller: Controller, store: MetadataStore,
                 config: NodeConfig) -> None:
        self.server = server
        self.controller = controller
        self.store = store
        self.node_id = config.node_id
        self.commit_timeout_ms = int(config.get("offsets.commit.timeout.ms"))
        self.topic_configs = {**OFFSETS_TOPIC_CONFIGS,
                              "segment.bytes": str(config.get("offsets.topic.segment.bytes"))}
        self.io = WorkerRequests(server)
        self.appender = OffsetsAppender(self._send_batch)
        self.coordinator = GroupCoordinator(GroupConfig.from_config(dict(config.settings)),
                                            self, server.now_ms, _wall_ms)
        self.handlers = GroupHandlers(self.coordinator, self)
        self._state: dict[int, str] = {}  # partition we lead → "loading" | "loaded"
        self._loads: dict[int, _Load] = {}  # partitions being loaded
        self._flush_timer: Any = None

    # ---- wiring -------------------------------------------------------------------------

    def install(self) -> None:
        for key, handler in self.handlers.handlers().items():
            self.server.register(key, _adapt(handler))
        self.server.add_ticker(self.coordinator.next_deadline, self.coordinator.tick)
        self.store.on_change(lambda _offset: self.refresh_ownership())
        self.refresh_ownership()

    def close(self) -> None:
        self.appender.fail_all(E.COORDINATOR_NOT_AVAILABLE)
        self.io.close()

    # ---- placement (GroupPlacement) -----------------------------------------------------

    def _topic(self) -> Any:
        return self.controller.image.topics.get(OFFSETS_TOPIC)

    def status(self, group_id: str) -> ErrorCode:
        topic = self._topic()
        if topic is None:
            return E.COORDINATOR_NOT_AVAILABLE
        p = partition_for(group_id, len(topic.partitions))
        part = topic.partitions.get(p)
        if part is None or part.leader != self.node_id:
            return E.NOT_COORDINATOR
        if self._state.get(p) != "loaded":
            return E.COORDINATOR_LOAD_IN_PROGRESS
        return E.NONE

    def find_coordinator(self, key: str, key_type: int) -> dict[str, Any]:
        none: dict[str, Any] = {"node_id": -1, "endpoint": ""}
        if key_type != 0:
            return {"error": int(E.COORDINATOR_NOT_AVAILABLE), **none,
                    "message": "no transaction coordinator on this node"}
        if self._topic() is None:
            try:
                self.controller.ensure_internal_topic(
                    OFFSETS_TOPIC, self.coordinator.config.num_partitions,
                    dict(self.topic_configs))
            except ControllerError as exc:
                return {"error": int(E.COORDINATOR_NOT_AVAILABLE), **none, "message": str(exc)}
            self.refresh_ownership()
        topic = self._topic()
        if topic is None:  # created on the controller but not applied here yet
            return {"error": int(E.COORDINATOR_NOT_AVAILABLE), **none}
        part = topic.partitions.get(partition_for(key, len(topic.partitions)))
        endpoint = self.controller.image.nodes.get(part.leader) if part else None
        if part is None or part.leader < 0 or not endpoint:
            return {"error": int(E.COORDINATOR_NOT_AVAILABLE), **none}
        return {"error": 0, "node_id": part.leader, "endpoint": endpoint}

    # ---- ownership and loading ----------------------------------------------------------

    def refresh_ownership(self) -> None:
        topic = self._topic()
        parts = topic.partitions if topic is not None else {}
        if parts and len(parts) != self.coordinator.config.num_partitions:
            # The topic was created with another count: it, not node.toml, decides the hash.
            self.coordinator.config = dataclasses.replace(self.coordinator.config,
                                                          num_partitions=len(parts))
        for p, info in parts.items():
            if info.leader == self.node_id and p not in self._state:
                self._state[p] = "loading"
                self._loads[p] = _Load(started=time.monotonic())
                self._load(p)
        for p in [p for p in self._state
                  if p not in parts or parts[p].leader != self.node_id]:
            del self._state[p]
            self._loads.pop(p, None)
            self.coordinator.unload(p)
        for p, load in self._loads.items():
            # A worker (re)registered on a new endpoint: do not wait for the old one to time out.
            if load.endpoint is not None and load.endpoint != self._endpoint(p):
                self._load(p)
        # A link to an endpoint no worker of this node serves on any more (the worker came
        # back on another port) would only ever time out: fail its requests and close it.
        live = set(self.controller.image.workers.values())
        for endpoint in self.io.endpoints():
            if endpoint not in live:
                self.io.forget(endpoint)

    def worker_registered(self, worker_id: int, old_endpoint: str | None,
                          restarted: bool) -> None:
        """WorkerHello of a worker of this node: a new process does not answer the requests
        its predecessor was sent, so they are failed now (the caller retries), not timed out."""
        if old_endpoint is not None and restarted:
            self.io.forget(old_endpoint)

    def _endpoint(self, partition: int) -> str | None:
        topic = self._topic()
        part = topic.partitions.get(partition) if topic is not None else None
        if part is None:
            return None
        return self.controller.image.workers.get((part.leader, part.worker))

    def _load(self, p: int) -> None:
        load = self._loads.get(p)
        if load is None:
            return
        load.attempt += 1
        attempt = load.attempt
        endpoint = load.endpoint = self._endpoint(p)
        if endpoint is None:  # its worker has not said hello yet
            self._retry_load(p, attempt)
            return
        body = {"replica_id": -1, "max_wait_ms": 0, "min_bytes": 0,
                "max_bytes": LOAD_FETCH_BYTES, "isolation_level": 0,
                "topics": [{"name": OFFSETS_TOPIC, "partitions": [{
                    "partition": p, "fetch_offset": load.progress.next_offset,
                    "partition_max_bytes": LOAD_FETCH_BYTES, "current_leader_epoch": -1}]}]}
        # max_wait_ms is 0, so a live worker answers at once: a short timeout gets past an
        # endpoint of the previous run (workers bind fresh ports) without stalling the load.
        self.io.send(endpoint, ApiKey.FETCH, body, [], LOAD_FETCH_TIMEOUT_MS,
                     lambda resp, err: self._loaded_chunk(p, attempt, resp, err))

    def _retry_load(self, p: int, attempt: int) -> None:
        def again() -> None:
            load = self._loads.get(p)
            if load is not None and load.attempt == attempt:
                self._load(p)
        self.server.call_later(RETRY_MS, again)

    def _loaded_chunk(self, p: int, attempt: int, resp: Response | None,
                      err: ErrorCode) -> None:
        load = self._loads.get(p)
        if load is None or load.attempt != attempt:
            return  # unloaded meanwhile, or superseded by a fetch to a newer endpoint
        if err or resp is None:
            return self._retry_load(p, attempt)
        try:
            part = resp.body["topics"][0]["partitions"][0]
        except (KeyError, IndexError, TypeError):
            return self._retry_load(p, attempt)
        progress = load.progress
        if part.get("error"):
            if part["error"] == E.OFFSET_OUT_OF_RANGE and "log_start_offset" in part:
                progress.next_offset = max(progress.next_offset, part["log_start_offset"])
                return self._load(p)
            # the worker has not opened the partition yet (metadata still propagating)
            return self._retry_load(p, attempt)
        if load.first_answer == 0.0:
            load.first_answer = time.monotonic()
        frames = [resp.data[k] for k in part.get("frames") or []]
        before = progress.next_offset
        if frames:
            data = b"".join(bytes(as_buffer(f)) for f in frames)
            load_batches(data, self.coordinator, progress)
        if progress.next_offset < part.get("high_watermark", 0) and progress.next_offset > before:
            return self._load(p)
        del self._loads[p]
        self._state[p] = "loaded"
        self.coordinator.finish_load(p)
        now = time.monotonic()
        log.log(logging.INFO if progress.records or progress.skipped else logging.DEBUG,
                "loaded %s-%d: %d records (%d unreadable) in %.3f s (%.3f s after its worker "
                "first answered)", OFFSETS_TOPIC, p, progress.records, progress.skipped,
                now - load.started, now - load.first_answer)

    # ---- writing (OffsetsWriter) --------------------------------------------------------

    def append(self, partition: int, records: list[tuple[bytes, bytes | None]],
               done: ErrorCallback) -> None:
        self.appender.append(partition, records, done)
        if self._flush_timer is None:
            # Runs after the server has drained this turn's requests: one batch for them all.
            self._flush_timer = self.server.call_later(0, self._flush)

    def _flush(self) -> None:
        self._flush_timer = None
        self.appender.flush()

    def _send_batch(self, partition: int, batch: bytes, done: ErrorCallback) -> None:
        endpoint = self._endpoint(partition)
        if endpoint is None:
            done(E.COORDINATOR_NOT_AVAILABLE)
            return
        body = {"acks": -1, "timeout_ms": self.commit_timeout_ms, "transactional_id": None,
                "topics": [{"name": OFFSETS_TOPIC,
                            "partitions": [{"partition": partition, "frame": 0}]}]}

        def answered(resp: Response | None, err: ErrorCode) -> None:
            if not err and resp is not None:
                try:
                    err = ErrorCode(resp.body["topics"][0]["partitions"][0]["error"])
                except (KeyError, IndexError, TypeError, ValueError):
                    err = E.UNKNOWN_SERVER_ERROR
            done(_COMMIT_ERRORS.get(err, err) if err else E.NONE)

        self.io.send(endpoint, ApiKey.PRODUCE, body, [batch], self.commit_timeout_ms + 1000,
                     answered)


def _adapt(handler: Handler) -> Any:
    """A group handler as a server handler: it always answers through `call.reply`."""
    def serve(call: Call) -> None:
        handler(call.request.body, call.request.client_id, call.reply)
    return serve


def install(coordinator: Any) -> None:
    """Plug-in entry point called by `coordinator/main.py` with its `Coordinator` bundle."""
    service = GroupService(coordinator.server, coordinator.controller, coordinator.store,
                           coordinator.config)
    service.install()
    coordinator.worker_hellos.append(service.worker_registered)
    coordinator.on_close.append(service.close)
