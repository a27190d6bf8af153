"""The coordinator's internal APIs for its node's workers: WorkerHello and MetadataLogFetch.

A worker says WorkerHello (node id, worker id, endpoint, pid) when it starts; a new endpoint
is written to the metadata log as a `worker` record, so every node learns where each worker
serves. Workers follow the metadata log with MetadataLogFetch: a fetch at the end of the log
parks until a commit (the store's listener wakes it, no polling) or its `max_wait_ms`; one
below the log start, or past the end (a log that was replaced), gets the whole image as a
snapshot instead of records.

A fetch at offset N also tells the coordinator the worker has applied every record below N.
`Propagation` uses that so an admin call (CreateTopics...) is answered once this node's live
workers have applied its records — bounded by the request's timeout — and a client can
produce to a topic as soon as its creation is acknowledged.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from qnode.coordinator.controller import Controller, ControllerError
from qnode.coordinator.server import Call, CoordinatorServer, HandlerError
from qnode.coordinator.store import MetadataStore
from qnode.transport.api import ApiKey
from qnode.transport.errors import ErrorCode

log = logging.getLogger(__name__)

MAX_FETCH_BYTES = 1 << 20
MAX_WAIT_MS = 60_000


@dataclass
class _Waiter:
    offset: int  # every live worker must have applied records below this
    done: Callable[[], None]
    timer: Any


class Propagation:
    """Tracks how far each live worker of the node has applied the metadata log."""

    def __init__(
        self, server: CoordinatorServer, is_live: Callable[[int], bool] = lambda worker_id: True
    ) -> None:
        self._server = server
        self.is_live = is_live  # a dead worker is not waited for (it catches up on restart)
        self.applied: dict[int, int] = {}  # worker id → next offset it asked for
        self._waiters: list[_Waiter] = []

    def forget(self, worker_id: int) -> None:
        """A worker restarted: until it fetches again it is not waited for... nor counted."""
        self.applied.pop(worker_id, None)
        self._check()

    def note(self, worker_id: int, next_offset: int) -> None:
        self.applied[worker_id] = next_offset
        self._check()

    def after_applied(self, offset: int, timeout_ms: int, done: Callable[[], None]) -> None:
        """Call `done()` once every live worker applied records below `offset`, or on timeout."""
        if self._all_past(offset):
            done()
            return
        waiter = _Waiter(offset, done, None)
        waiter.timer = self._server.call_later(timeout_ms, lambda: self._expire(waiter))
        self._waiters.append(waiter)

    def _all_past(self, offset: int) -> bool:
        return all(n >= offset or not self.is_live(w) for w, n in self.applied.items())

    def _expire(self, waiter: _Waiter) -> None:
        if waiter in self._waiters:
            self._waiters.remove(waiter)
            log.warning(
                "workers did not apply metadata up to %d in time: %s", waiter.offset, self.applied
            )
            waiter.done()

    def release_all(self) -> None:
        """Answer every waiting call now (shutdown: never leave a client hanging)."""
        waiters, self._waiters = self._waiters, []
        for w in waiters:
            w.timer.cancel()
            w.done()

    def _check(self) -> None:
        ready = [w for w in self._waiters if self._all_past(w.offset)]
        for w in ready:
            self._waiters.remove(w)
            w.timer.cancel()
            w.done()


@dataclass
class _ParkedFetch:
    call: Call
    timer: Any


class WorkerApi:
    """WorkerHello and MetadataLogFetch handlers."""

    def __init__(
        self,
        server: CoordinatorServer,
        store: MetadataStore,
        controller: Controller,
        propagation: Propagation,
        on_worker_synced: Callable[[int, int], None] | None = None,
        on_hello: list[Callable[[int, str | None, bool], None]] | None = None,
        cluster_id: str | None = None,
    ) -> None:
        self.server = server
        self.store = store
        self.controller = controller
        self.propagation = propagation
        self.on_worker_synced = on_worker_synced
        self.on_hello = on_hello if on_hello is not None else []
        self.cluster_id = cluster_id
        self._data_dir = os.path.realpath(controller.config.data_dir)
        self.worker_pids: dict[int, int] = {}
        # worker id → metadata offset it must reach (committed offset at its hello) before it
        # counts as serving: a fetch at that offset proves it applied everything before it.
        self._syncing: dict[int, int] = {}
        propagation.is_live = self._worker_alive
        self._identities: dict[bytes, int] = {}  # ROUTER identity → worker id (from hello)
        self._parked: list[_ParkedFetch] = []
        store.on_change(self._on_commit)

    def worker_down(self, worker_id: int) -> bool:
        """True when the worker said hello in this coordinator's life and has died since."""
        return worker_id in self.worker_pids and not self._worker_alive(worker_id)

    def _worker_alive(self, worker_id: int) -> bool:
        pid = self.worker_pids.get(worker_id)
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def install(self) -> None:
        self.server.register(ApiKey.WORKER_HELLO, self.worker_hello)
        self.server.register(ApiKey.METADATA_LOG_FETCH, self.metadata_log_fetch)

    def worker_hello(self, call: Call) -> dict[str, Any]:
        b = call.request.body
        self._check_belongs(b)
        wid = b["worker_id"]
        old_endpoint = self.controller.image.workers.get((self.controller.config.node_id, wid))
        try:
            self.controller.register_worker(wid, b["endpoint"])
        except ControllerError as exc:
            raise HandlerError(exc.code, exc.message) from None
        before = self.worker_pids.get(wid)
        if before != b["pid"]:
            self.propagation.forget(wid)
        # Another process than the one this coordinator knew: its predecessor is gone, and so
        # is every answer owed on the old connection. (A first hello since this coordinator
        # started proves nothing: the worker may have outlived the previous coordinator.)
        restarted = before is not None and before != b["pid"]
        self.worker_pids[wid] = b["pid"]
        self._identities[call.identity] = wid
        log.info("worker %d (pid %d) serves on %s", wid, b["pid"], b["endpoint"])
        self._syncing[wid] = self.store.committed_offset
        for listener in self.on_hello:
            listener(wid, old_endpoint, restarted)
        return {"error": 0, "metadata_offset": self.store.committed_offset}

    def _check_belongs(self, b: dict[str, Any]) -> None:
        """Refuse a worker of another node, data dir or cluster (e.g. a stray worker of another
        node that reached this endpoint): it would serve partitions this node does not own."""
        node_id = self.controller.config.node_id
        if b["node_id"] != node_id:
            raise HandlerError(
                ErrorCode.INVALID_REQUEST,
                f"worker of node {b['node_id']} said hello to node {node_id}",
            )
        data_dir = b.get("data_dir")
        if data_dir is not None and (
            not isinstance(data_dir, str) or os.path.realpath(data_dir) != self._data_dir
        ):
            raise HandlerError(
                ErrorCode.INVALID_REQUEST,
                f"worker {b['worker_id']} of data dir {data_dir!r} said hello to node {node_id} "
                f"of data dir {self._data_dir!r}",
            )
        cluster_id = b.get("cluster_id")
        if cluster_id is not None and self.cluster_id is not None and cluster_id != self.cluster_id:
            raise HandlerError(
                ErrorCode.INVALID_REQUEST,
                f"worker {b['worker_id']} of cluster {cluster_id!r} said hello to node "
                f"{node_id} of cluster {self.cluster_id!r}",
            )

    def metadata_log_fetch(self, call: Call) -> dict[str, Any] | None:
        b = call.request.body
        offset = b["offset"]
        wid = b.get("worker_id", self._identities.get(call.identity))
        if isinstance(wid, int) and not isinstance(wid, bool):
            self.propagation.note(wid, offset)
            target = self._syncing.get(wid)
            if target is not None and offset >= target:
                del self._syncing[wid]
                log.info("worker %d applied the metadata log up to %d", wid, offset)
                if self.on_worker_synced is not None:
                    self.on_worker_synced(wid, self.worker_pids[wid])
        committed = self.store.committed_offset
        if offset < self.store.log.start_offset or offset > committed or offset < 0:
            return self._snapshot()
        if offset < committed:
            return self._records(offset)
        wait = min(max(b["max_wait_ms"], 0), MAX_WAIT_MS)
        if wait == 0:
            return self._records(offset)
        parked = _ParkedFetch(call, None)
        parked.timer = self.server.call_later(wait, lambda: self._expire(parked))
        self._parked.append(parked)
        return None

    def release_all(self) -> None:
        """Answer every parked fetch with what there is (shutdown)."""
        self._on_commit(self.store.committed_offset)

    def _snapshot(self) -> dict[str, Any]:
        image = self.store.image
        return {"error": 0, "snapshot": image.to_dict(), "records": [], "next_offset": image.offset}

    def _records(self, offset: int) -> dict[str, Any]:
        entries = self.store.read(offset, MAX_FETCH_BYTES)
        next_offset = entries[-1].offset + 1 if entries else offset
        return {
            "error": 0,
            "snapshot": None,
            "records": [e.wire() for e in entries],
            "next_offset": next_offset,
        }

    def _expire(self, parked: _ParkedFetch) -> None:
        if parked in self._parked:
            self._parked.remove(parked)
            parked.call.reply(self._records(parked.call.request.body["offset"]))

    def _on_commit(self, committed: int) -> None:
        parked, self._parked = self._parked, []
        for p in parked:
            p.timer.cancel()
            p.call.reply(self._records(p.call.request.body["offset"]))
