"""The worker process: one single-threaded zmq loop serving the partitions placed on it.

Sockets: a ROUTER for clients (Produce, Fetch, ListOffsets, DeleteRecords, ApiVersions) and a
DEALER to the node's coordinator (WorkerHello, then MetadataLogFetch long-polls, applied in
order before the next fetch is sent, so the coordinator knows what this worker has applied).
Each loop iteration drains up to `batch` client messages, then answers the parked fetches
that the appends woke, then the ones that expired; the poll timeout is the nearest deadline,
so nothing sleeps. SIGTERM/SIGINT: stop reading, answer what is parked, flush the logs, write
checkpoints, unlink the shm table, exit 0.
"""

from __future__ import annotations

import dataclasses
import errno
import gc
import json
import logging
import os
import resource
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from qnode.coordinator.meta_properties import read_meta_properties
from qnode.node.fetch_waiters import FetchWaiters, ParkedFetch
from qnode.node.metadata_follower import MetadataFollower
from qnode.node.partition_server import PartitionServer
from qnode.node.replica_set import ReplicaSet
from qnode.node.shm_table import DEFAULT_CAPACITY, ShmTable, shm_name
from qnode.storage.cleaner import Cleaner, CleanerConfig
from qnode.storage.log_manager import LogManager
from qnode.transport.api import WORKER_APIS, ApiKey, api_versions_body
from qnode.transport.doorbell import (
    Doorbell,
    DoorbellError,
    DoorbellSender,
    LocalListener,
    parse_doorbell,
)
from qnode.transport.errors import ErrorCode
from qnode.transport.frame import (
    FrameError,
    Request,
    RequestError,
    RequestHeader,
    decode_response,
    encode_request,
    encode_response,
    error_response,
    response_for_error,
)
from qnode.transport.messages import parse_request
from qnode.transport.sockets import (
    NOBLOCK,
    SocketOptions,
    close_monitored,
    dealer_client,
    has_message,
    monitor_events,
    recv_frames,
    router_server,
    send_frames,
    split_endpoint,
)

log = logging.getLogger(__name__)

_PRODUCE = int(ApiKey.PRODUCE)
HELLO_RETRY_S = 1.0
DRAIN_S = 1.0  # at most this long serving requests already queued when SIGTERM came
# a metadata fetch unanswered this long past its max wait: re-hello. Only a fallback: the
# monitor of the coordinator DEALER says hello again as soon as a lost connection is back
METADATA_GRACE_S = 5.0
OPEN_SLICE_S = 0.02  # at most this long opening logs per loop turn (requests served between)
METADATA_RETRY_S = 0.5  # after an error answer, ask again this much later
TICK_DUTY = 0.02  # log maintenance takes at most this share of the loop...
MAX_TICK_GAP_S = 2.0  # ...unless that would space ticks further apart than this


@dataclass
class WorkerConfig:
    node_id: int
    worker_id: int
    data_dir: str
    coordinator: str  # the coordinator's endpoint (the node's bootstrap)
    listen_host: str = "127.0.0.1"
    port: int = 0  # 0: a random free port
    advertised_host: str | None = None  # what clients connect to, when listen_host is 0.0.0.0
    topic_defaults: dict[str, str] = field(default_factory=dict)
    max_request_bytes: int = 104857600
    shm_capacity: int = DEFAULT_CAPACITY
    # LogManager.tick: flush.ms, rolled-segment flush, retention (spaced out when slow: tick_gap)
    tick_interval_ms: int = 250
    logs_per_tick: int = 256  # logs one maintenance tick looks at (~0.3 ms)
    metadata_max_wait_ms: int = 1000
    batch: int = 64  # client messages handled per loop iteration
    busy_poll_us: int = 0  # worker.busy.poll.us: keep polling this long after a request
    log_level: str = "INFO"
    # ports a random bind must not take: the node's and its peers' bootstrap ports (a worker
    # may start before its coordinator binds; tests pick such ports from the random range)
    reserved_ports: list[int] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, text: str) -> WorkerConfig:
        return cls(**json.loads(text))

    @classmethod
    def from_node_config(cls, node: Any, worker_id: int, coordinator: str) -> WorkerConfig:
        """From a `qnode.node.config.NodeConfig`."""
        host = node.listen_host
        base = node.worker_port_base
        wildcard = host in ("*", "0.0.0.0", "::", "")
        return cls(
            node_id=node.node_id,
            worker_id=worker_id,
            data_dir=str(node.data_dir),
            coordinator=coordinator,
            listen_host=host,
            port=base + worker_id if base else 0,
            # bound on every interface: tell clients a name they can reach
            advertised_host=socket.gethostname() if wildcard else None,
            topic_defaults=dict(node.topic_defaults),
            max_request_bytes=node.socket_request_max_bytes,
            busy_poll_us=node.get("worker.busy.poll.us"),
            reserved_ports=sorted({port for ep in (node.listen, *(p.endpoint for p in node.peers))
                                   if (port := split_endpoint(ep)[2])}),
        )


class Worker:
    """One worker: its sockets, replicas, parked fetches and the loop that serves them."""

    def __init__(self, config: WorkerConfig, ctx: zmq.Context | None = None) -> None:
        self.config = config
        self.ctx = ctx or zmq.Context()
        self.stopping = False
        opts = SocketOptions(max_msg_bytes=config.max_request_bytes)
        bind = f"tcp://{config.listen_host}:{config.port}"
        self.router, bound = router_server(self.ctx, bind, opts, avoid=config.reserved_ports)
        host = config.advertised_host or config.listen_host
        self.endpoint = f"tcp://{host}:{bound.rsplit(':', 1)[1]}"
        # Produce requests of same-host clients by datagram (transport/doorbell.py), answered
        # on their doorbells; None where there are no abstract Unix sockets
        self.local: LocalListener | None = None
        try:
            self.local = LocalListener(self.endpoint)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                # Same-host producers send their records to whoever holds the name: serving
                # without it would leave them to another process, as a taken port would
                # (which fails the start too).
                self.router.close(linger=0)
                raise OSError(
                    exc.errno,
                    f"the local socket name of {self.endpoint} is held by another process "
                    "(two workers advertising one endpoint, or another program)",
                ) from None
            log.warning("no local socket for %s (clients use zmq only): %s", self.endpoint, exc)
        self.coord = dealer_client(self.ctx, config.coordinator)
        # Connection events of the coordinator DEALER: a coordinator restarted loses what was
        # in flight to it (our hello, our parked MetadataLogFetch), so once the connection is
        # back we say hello again at once instead of waiting out METADATA_GRACE_S.
        self.coord_events = self.coord.get_monitor_socket(
            zmq.EVENT_DISCONNECTED | zmq.EVENT_HANDSHAKE_SUCCEEDED
        )
        self._coord_lost = False
        self.shm = ShmTable(
            shm_name(config.node_id, config.data_dir, config.worker_id), config.shm_capacity
        )
        self.follower = MetadataFollower(config.node_id, config.worker_id)
        self.logs = LogManager(config.data_dir, f"worker-{config.worker_id}")
        # Compacted topics (cleanup.policy=compact, e.g. __consumer_offsets) are cleaned on the
        # LogManager tick; the offset map is allocated on first clean and bounded per worker.
        self.logs.cleaners.append(Cleaner(CleanerConfig(dedupe_buffer_size=32 * 1024 * 1024)))
        self.replicas = ReplicaSet(
            config.node_id, self.logs, self.shm, self.follower, config.topic_defaults
        )
        self.server = PartitionServer(self.replicas)
        self.waiters = FetchWaiters()
        self.doorbells = DoorbellSender()
        self.local_answers = DoorbellSender(per_destination=True)
        self.local_lost = 0  # answers to datagram requests that could not be delivered
        self._peers: dict[str, Doorbell] = {}  # doorbell values already parsed
        self._corr = 0
        self._hello_corr: int | None = None
        self._hello_at = 0.0
        self._hello_done = False
        self._meta_corr: int | None = None
        self._meta_deadline = 0.0
        self._meta_retry_at = 0.0
        self._meta_fetch_when_open = False
        self._next_tick = 0.0

    # -- coordinator -------------------------------------------------------------------------

    def _next_corr(self) -> int:
        self._corr = (self._corr + 1) & 0xFFFFFFFF
        return self._corr

    def _send_hello(self, now: float) -> None:
        c = self.config
        self._hello_corr = self._next_corr()
        self._hello_at = now
        body = {
            "node_id": c.node_id,
            "worker_id": c.worker_id,
            "endpoint": self.endpoint,
            "pid": os.getpid(),
            "data_dir": os.path.abspath(c.data_dir),  # the coordinator checks it is its node's
        }
        meta = read_meta_properties(Path(c.data_dir))  # written by the coordinator's first start
        if meta is not None:
            body["cluster_id"] = meta.cluster_id
        self.coord.send_multipart(
            encode_request(
                ApiKey.WORKER_HELLO, 0, self._hello_corr, body, client_id=f"worker-{c.worker_id}"
            )
        )

    def _send_metadata_fetch(self, now: float) -> None:
        if self.replicas.pending:
            # asking for the next offset tells the coordinator everything below is applied,
            # logs opened included: ask once the last pending log is open (`_open_slice`)
            self._meta_corr = None
            self._meta_fetch_when_open = True
            return
        wait = self.config.metadata_max_wait_ms if self.follower.synced else 0
        self._meta_corr = self._next_corr()
        self._meta_deadline = now + wait / 1000 + METADATA_GRACE_S
        body = {"offset": self.follower.next_offset, "max_wait_ms": wait}
        self.coord.send_multipart(
            encode_request(
                ApiKey.METADATA_LOG_FETCH,
                0,
                self._meta_corr,
                body,
                client_id=f"worker-{self.config.worker_id}",
            )
        )

    def _on_coordinator(self, now: float) -> None:
        while True:
            try:
                frames = self.coord.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            try:
                resp = decode_response(frames)
            except FrameError as exc:
                log.error("bad response from the coordinator: %s", exc)
                continue
            if resp.correlation_id == self._hello_corr:
                self._hello_corr = None
                if resp.error_code or resp.body.get("error"):
                    log.error("WorkerHello refused: %s", resp.body)
                    continue  # retried by the timer
                self._hello_done = True
                self._send_metadata_fetch(now)
            elif resp.correlation_id == self._meta_corr:
                self._meta_corr = None
                now = time.monotonic()
                if self._on_metadata(resp.error_code or resp.body.get("error", 0), resp.body):
                    self._send_metadata_fetch(now)
                else:  # do not hammer a coordinator that answers errors: ask again later
                    self._meta_retry_at = now + METADATA_RETRY_S

    def _on_coord_event(self, now: float) -> None:
        """A connection event of the coordinator DEALER: after a loss, re-hello on reconnect."""
        for event in monitor_events(self.coord_events):
            if event == zmq.EVENT_DISCONNECTED:
                self._coord_lost = True
            elif event == zmq.EVENT_HANDSHAKE_SUCCEEDED and self._coord_lost:
                self._coord_lost = False
                log.warning("connection to the coordinator is back: saying hello again")
                self._meta_corr = None  # lost with the old connection
                self._meta_retry_at = 0.0
                self._hello_done = False
                self._send_hello(now)

    def _open_slice(self, now: float) -> None:
        """Open a slice of the logs placed here but not open yet (see ReplicaSet.open_pending);
        once all are open, send the metadata fetch that waited for them."""
        self.replicas.open_pending(OPEN_SLICE_S, lambda: self.stopping)
        self._wake_dirty()
        if not self.replicas.pending and self._meta_fetch_when_open:
            self._meta_fetch_when_open = False
            if self._hello_done and self._meta_corr is None and not self._meta_retry_at:
                self._send_metadata_fetch(now)

    def _on_metadata(self, error: int, body: dict[str, Any]) -> bool:
        """Apply a MetadataLogFetch answer; False when it was an error (retry later)."""
        if error:
            log.warning("MetadataLogFetch error %s: %s", error, body.get("message"))
            return False
        try:
            applied = self.follower.apply_response(body)
        except Exception as exc:
            log.error("metadata response not applied: %s", exc)
            return False
        if applied or body.get("snapshot") is not None:
            self.replicas.reconcile()
            self._wake_dirty()
        return True

    # -- clients -----------------------------------------------------------------------------

    def _on_clients(self) -> None:
        """Handle up to `batch` queued client messages. Produce requests are gathered and
        appended together (one write per partition), flushed before any other request so
        each client's requests still take effect in order."""
        router = self.router
        produces: list[tuple[Any, Request]] = []
        for i in range(self.config.batch):
            # the poll said readable; after the first, ask before each receive (cheaper than
            # a receive that raises zmq.Again to end the drain)
            if i and not has_message(router):
                break
            try:
                frames = recv_frames(router, NOBLOCK)
            except zmq.Again:
                break
            identity = frames[0]
            try:
                req = parse_request(frames[1:], WORKER_APIS)
            except RequestError as exc:
                self._reply(identity, response_for_error(exc))
                continue
            if req.api_key == ApiKey.PRODUCE:
                produces.append((identity, req))
                continue
            if produces:
                self._produce(produces)
                produces = []
            self._handle(identity, req)
        if produces:
            self._produce(produces)
        self._wake_dirty()

    def _on_local(self) -> bool:
        """One request from the local socket (one per loop turn: the poll reports the socket
        again while more are queued); False when none was there."""
        assert self.local is not None
        try:
            got = self.local.receive()
        except FrameError as exc:
            log.debug("local datagram dropped: %s", exc)
            return True
        if got is None:
            return False
        reply, frames = got
        try:
            peer = self._peer(reply)
        except DoorbellError as exc:  # nowhere to answer: the client's request times out
            log.debug("local request dropped: %s", exc)
            return True
        try:
            req = parse_request(frames, WORKER_APIS)
        except RequestError as exc:
            self._reply(peer, response_for_error(exc))
            return True
        if req.api_key != ApiKey.PRODUCE:
            msg = "only Produce requests may come by the local socket"
            self._reply(peer, error_response(req.header, ErrorCode.INVALID_REQUEST, msg))
            return True
        self._produce([(peer, req)])
        return True

    def _peer(self, doorbell: str) -> Doorbell:
        """The doorbell a request names (parsed once per client: a consumer names it in every
        Fetch, a producer in every datagram request). Raises DoorbellError."""
        peer = self._peers.get(doorbell)
        if peer is None:
            peer = parse_doorbell(doorbell)
            if len(self._peers) >= 1024:
                self._peers.clear()
            self._peers[doorbell] = peer
        return peer

    def _reply(self, identity: Any, frames: list[Any]) -> None:
        if identity.__class__ is Doorbell:
            if not self.local_answers.send(identity.address, identity.token, frames):
                self.local_lost += 1  # the client is gone: its request times out there
                log.debug("answer to a local request not delivered")
            return
        try:
            send_frames(self.router, [identity, *frames], NOBLOCK)
        except zmq.ZMQError as exc:  # a peer gone or over its HWM: its loss, not ours
            log.debug("reply dropped: %s", exc)

    def _internal_error(self, identity: Any, req: Request, exc: Exception) -> None:
        log.exception("request %s failed", req.header)
        self._reply(
            identity,
            error_response(req.header, ErrorCode.UNKNOWN_SERVER_ERROR, f"internal error: {exc}"),
        )

    def _produce(self, produces: list[tuple[Any, Request]]) -> None:
        try:
            bodies = self.server.produce_many([(req.body, req.data) for _, req in produces])
        except Exception as exc:  # a bug must cost these requests, never the worker
            for identity, req in produces:
                self._internal_error(identity, req, exc)
            return
        # The fetches these appends satisfy are answered first: a consumer waiting at the log
        # end is the end-to-end path, the producer's ack can come a few µs later.
        self._wake_dirty()
        for (identity, req), body in zip(produces, bodies, strict=True):
            if req.body["acks"] != 0:  # acks=0: no answer at all
                corr = req.correlation_id
                self._reply(identity, encode_response(_PRODUCE, req.version, corr, body))

    def _handle(self, identity: Any, req: Request) -> None:
        key = req.api_key
        try:
            if key == ApiKey.FETCH:
                self._fetch(identity.bytes, req.version, req.correlation_id, req.body)
                return
            if key == ApiKey.LIST_OFFSETS:
                body = self.server.list_offsets(req.body)
            elif key == ApiKey.DELETE_RECORDS:
                body = self.server.delete_records(req.body)
            elif key == ApiKey.PRODUCE:
                self._produce([(identity, req)])
                return
            else:
                body = api_versions_body(WORKER_APIS)
        except Exception as exc:  # a handler bug must cost one request, never the worker
            self._internal_error(identity, req, exc)
            return
        self._reply(identity, encode_response(key, req.version, req.correlation_id, body))

    def _fetch(self, identity: bytes, version: int, corr: int, body: dict[str, Any]) -> None:
        bell = body["doorbell"]
        if bell is not None:
            try:
                bell = self._peer(bell)
            except DoorbellError as exc:
                header = RequestHeader(ApiKey.FETCH, version, corr, "")
                self._reply(identity, error_response(header, ErrorCode.INVALID_REQUEST, str(exc)))
                return
        res = self.server.fetch(body)
        if res.error or res.bytes >= body["min_bytes"] or body["max_wait_ms"] <= 0 or self.stopping:
            frames = encode_response(ApiKey.FETCH, version, corr, res.body, res.frames)
            self._reply_fetch(identity, bell, frames)
            return
        keys = tuple((t["name"], p["partition"]) for t in body["topics"] for p in t["partitions"])
        deadline = time.monotonic() + body["max_wait_ms"] / 1000
        self.waiters.park(ParkedFetch(identity, version, corr, body, deadline, keys, bell))

    def _reply_fetch(self, identity: bytes, bell: Doorbell | None, frames: list[Any]) -> None:
        """A Fetch answer: as a datagram to the consumer's doorbell when it names one and the
        datagram goes (same host, small answer), else through zmq."""
        if bell is not None and self.doorbells.send(bell.address, bell.token, frames):
            return
        self._reply(identity, frames)

    def _answer(self, f: ParkedFetch, force: bool) -> bool:
        """Answer a parked fetch if it is satisfied (or `force`); True when answered."""
        try:
            res = self.server.fetch(f.body)
        except Exception as exc:  # a bug must cost this fetch, never the worker
            log.exception("parked fetch failed")
            if not f.done:
                self.waiters.remove(f)
            header = RequestHeader(ApiKey.FETCH, f.api_version, f.correlation_id, "")
            msg = f"internal error: {exc}"
            self._reply(f.identity, error_response(header, ErrorCode.UNKNOWN_SERVER_ERROR, msg))
            return True
        if not (force or res.error or res.bytes >= f.body["min_bytes"]):
            return False
        if not f.done:
            self.waiters.remove(f)
        corr = f.correlation_id
        frames = encode_response(ApiKey.FETCH, f.api_version, corr, res.body, res.frames)
        self._reply_fetch(f.identity, f.doorbell, frames)
        return True

    def _wake_dirty(self) -> None:
        dirty = self.replicas.dirty
        if not dirty:
            return
        if len(self.waiters):
            for f in self.waiters.woken(dirty):
                self._answer(f, force=False)
        dirty.clear()

    # -- loop --------------------------------------------------------------------------------

    def _timers(self, now: float) -> None:
        if not self._hello_done and self._hello_at + HELLO_RETRY_S <= now:
            self._send_hello(now)
        if self._meta_corr is not None and now >= self._meta_deadline:
            # the coordinator may have restarted: say hello again, then fetch from where we are
            log.warning("MetadataLogFetch unanswered: saying hello again")
            self._meta_corr = None
            self._hello_done = False
            self._send_hello(now)
        if self._meta_retry_at and now >= self._meta_retry_at:
            self._meta_retry_at = 0.0
            self._send_metadata_fetch(now)
        for f in self.waiters.expired(now):
            self._answer(f, force=True)
        if now >= self._next_tick:
            per_tick = self.config.logs_per_tick
            try:
                self.replicas.tick(per_tick)
            except Exception:
                log.exception("log maintenance failed")
            spent = time.monotonic() - now
            # a pass over every log still takes about tick_interval_ms: in more, shorter ticks
            interval = self.config.tick_interval_ms / 1000 / self.replicas.tick_slices(per_tick)
            self._next_tick = now + tick_gap(interval, spent)

    def _poll_timeout_ms(self, now: float) -> int:
        if self.replicas.pending:
            return 0  # logs still to open: serve what is queued, then open the next slice
        nearest = self._next_tick
        deadline = self.waiters.next_deadline()
        if deadline is not None:
            nearest = min(nearest, deadline)
        if self._meta_corr is not None:
            nearest = min(nearest, self._meta_deadline)
        if self._meta_retry_at:
            nearest = min(nearest, self._meta_retry_at)
        if not self._hello_done:
            nearest = min(nearest, self._hello_at + HELLO_RETRY_S)
        return max(0, min(int((nearest - now) * 1000) + 1, 100))

    def run(self, wakeup_fd: int | None = None) -> None:
        """Serve until `stop()`; `wakeup_fd` (a signal wake-up pipe) interrupts the poll."""
        poller = zmq.Poller()
        poller.register(self.router, zmq.POLLIN)
        poller.register(self.coord, zmq.POLLIN)
        poller.register(self.coord_events, zmq.POLLIN)
        if wakeup_fd is not None:
            poller.register(wakeup_fd, zmq.POLLIN)
        local_fd = self.local.fileno() if self.local is not None else None
        if local_fd is not None:
            poller.register(local_fd, zmq.POLLIN)
        self._send_hello(time.monotonic())
        busy_s = self.config.busy_poll_us / 1e6
        busy_until = 0.0
        while not self.stopping:
            now = time.monotonic()
            # worker.busy.poll.us: for a while after a request, look again without sleeping.
            # On a VM whose idle vCPUs halt, the next request then finds this vCPU awake
            # instead of paying its wake-up (tens of µs per hand-off, several per request).
            timeout = 0 if now < busy_until else self._poll_timeout_ms(now)
            events = dict(poller.poll(timeout))
            if not events and not timeout:
                # a thread woken onto this vCPU (a consumer our doorbell datagram woke) runs
                # now, not after our time slice: with the yield, e2e p50 with doorbell and
                # busy poll 300-358 µs, without it 369-393 µs (paired runs, one node)
                os.sched_yield()
            local = local_fd is not None and local_fd in events
            clients = self.router in events
            if busy_s and (local or clients):
                busy_until = time.monotonic() + busy_s
            if local:
                self._on_local()
            if clients:
                self._on_clients()
            if self.coord_events in events:
                self._on_coord_event(time.monotonic())
            if self.coord in events:
                self._on_coordinator(time.monotonic())
            if self.replicas.pending and not self.stopping:
                self._open_slice(time.monotonic())
            if wakeup_fd is not None and wakeup_fd in events:
                _drain_fd(wakeup_fd)
            self._timers(time.monotonic())

    def stop(self) -> None:
        self.stopping = True

    def close(self) -> bool:
        """Serve what is already queued, answer parked fetches, flush logs, write checkpoints,
        unlink the shm table. False when the logs could not be closed cleanly (e.g. a full
        disk: checkpoints unwritten, so the next start recovers more, and loses nothing)."""
        deadline = time.monotonic() + DRAIN_S
        while time.monotonic() < deadline and self.router.poll(0):
            self._on_clients()
        while time.monotonic() < deadline and self.local is not None and self._on_local():
            pass
        for f in self.waiters.drain():
            self._answer(f, force=True)
        clean = True
        try:
            self.replicas.close()
        except Exception as exc:
            log.error("logs not closed cleanly (the next start recovers them): %s", exc)
            clean = False
        finally:
            self.shm.close()
            self.doorbells.close()
            self.local_answers.close()
            if self.local is not None:
                self.local.close()
            self.router.close(linger=200)
            close_monitored(self.coord, self.coord_events)
        return clean


def tick_gap(interval_s: float, spent_s: float) -> float:
    """Seconds from one log-maintenance tick to the next, given how long it took. A tick
    looks at `logs_per_tick` logs (~0.3 ms), but one that flushes or cleans inline, or
    checks files on a slow disk, can cost milliseconds, which every few ms would take the
    loop from requests. So a slow tick pushes the next one out, keeping maintenance under
    TICK_DUTY of the loop, but never past MAX_TICK_GAP_S; cheap ticks keep the pace asked.
    """
    return min(max(interval_s, spent_s / TICK_DUTY), max(interval_s, MAX_TICK_GAP_S))


def run_worker(config: WorkerConfig) -> int:
    """The worker process's main: serve until SIGTERM/SIGINT, then shut down cleanly (0)."""
    logging.basicConfig(
        level=config.log_level,
        format=f"%(asctime)s worker-{config.worker_id} %(levelname)s %(name)s: %(message)s",
    )
    _raise_fd_limit()
    # Handlers first: a SIGTERM while the worker is still starting (opening its logs) must
    # end it cleanly too, not kill it with its logs half recovered.
    stop_requested: list[Worker | None] = [None]
    asked = [False]

    def on_signal(signum: int, frame: Any) -> None:
        asked[0] = True
        if stop_requested[0] is not None:
            stop_requested[0].stop()

    r, w = os.pipe()
    os.set_blocking(r, False)
    os.set_blocking(w, False)
    signal.set_wakeup_fd(w)  # a signal wakes the poll at once instead of at its timeout
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        worker = Worker(config)
    except BaseException:
        signal.set_wakeup_fd(-1)
        os.close(r)
        os.close(w)
        raise
    stop_requested[0] = worker
    worker.stopping = asked[0]
    # The hot path allocates many short-lived containers and makes no reference cycles: keep
    # the start-up objects out of the collector and let it run far less often.
    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    log.info(
        "worker %d of node %d serving on %s", config.worker_id, config.node_id, worker.endpoint
    )
    clean = False
    try:
        worker.run(r)
    finally:
        signal.set_wakeup_fd(-1)
        os.close(r)
        os.close(w)
        clean = worker.close()
        worker.ctx.term()
    if not clean:
        return 1
    log.info("worker %d stopped cleanly", config.worker_id)
    return 0


def _raise_fd_limit() -> None:
    """Each open log holds a few files and mappings: allow as many as the system lets us."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def _drain_fd(fd: int) -> None:
    try:
        while os.read(fd, 512):
            pass
    except BlockingIOError:
        pass


def main(argv: list[str] | None = None) -> None:
    """`python -m qnode.node.worker '<WorkerConfig JSON>'`."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m qnode.node.worker '<WorkerConfig JSON>'", file=sys.stderr)
        sys.exit(2)
    sys.exit(run_worker(WorkerConfig.from_json(args[0])))


if __name__ == "__main__":
    main()
