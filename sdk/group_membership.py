"""The consumer side of the group protocol: join, sync, heartbeats, leave, commits.

A background thread (one per consumer) finds the group coordinator, joins and syncs, sends
heartbeats every `heartbeat_interval_ms`, leaves the group when the application stops calling
`poll()` for `max_poll_interval_ms`, and watches the subscription (regex matches, partition
counts) for changes that need a rebalance. Assignment changes are never applied behind the
application's back: the thread posts them as events and the consumer's thread applies them in
`poll()` (so rebalance callbacks and the commits they make run where Kafka runs them):

- eager protocol (range, roundrobin): before rejoining, everything owned is revoked — the
  thread waits until `poll()` has run `on_partitions_revoked` (which commits);
- cooperative protocol (cooperative-sticky): a member keeps fetching what it owns while the
  group rebalances; after the sync it revokes only what moved away and rejoins at once so the
  new owner gets it (KIP-429).

Commits made on the consumer's thread (`commit_sync`, `committed`) use that thread's own
connections; the background thread has its own (zmq sockets are single-threaded).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from qnode.sdk.assignors import Assignor, get_assignor
from qnode.sdk.connection import NetworkClient
from qnode.sdk.errors import (  # CommitFailedError, FencedInstanceError: re-exported (old home)
    CommitFailedError,
    CoordinatorError,
    FencedInstanceError,
    GroupError,
    NetworkError,
    QnodeError,
    error_for,
)
from qnode.sdk.group_protocol import Assignment, GroupProtocolError, Subscription
from qnode.sdk.metadata import Metadata
from qnode.sdk.types import TopicPartition
from qnode.transport.api import ApiKey
from qnode.transport.errors import ErrorCode

log = logging.getLogger(__name__)
E = ErrorCode
_COORDINATOR_MOVED = {E.NOT_COORDINATOR, E.COORDINATOR_NOT_AVAILABLE,
                      E.COORDINATOR_LOAD_IN_PROGRESS, E.REQUEST_TIMED_OUT,
                      E.NETWORK_EXCEPTION}


REBALANCE_COMMIT_RETRY_S = 3.0


class RebalanceListener(Protocol):
    """What the consumer does when its assignment changes (called from `poll()`)."""

    def on_partitions_revoked(self, partitions: list[TopicPartition]) -> None: ...

    def on_partitions_assigned(self, partitions: list[TopicPartition]) -> None: ...

    def on_partitions_lost(self, partitions: list[TopicPartition]) -> None: ...


@dataclass
class GroupSettings:
    group_id: str
    group_instance_id: str | None = None
    session_timeout_ms: int = 45000
    heartbeat_interval_ms: int = 3000
    max_poll_interval_ms: int = 300000
    rebalance_timeout_ms: int | None = None  # how long the coordinator waits for rejoins
    partition_assignment_strategy: list[str] = field(
        default_factory=lambda: ["range", "cooperative-sticky"])
    retry_backoff_ms: int = 100
    request_timeout_ms: int = 30000
    metadata_max_age_ms: int = 300000
    client_id: str = "qnode-consumer"

    def __post_init__(self) -> None:
        if not self.group_id:
            raise ValueError("group_id must be a non-empty string")
        if self.heartbeat_interval_ms >= self.session_timeout_ms:
            raise ValueError(f"heartbeat.interval.ms={self.heartbeat_interval_ms} must be lower "
                             f"than session.timeout.ms={self.session_timeout_ms}")
        if self.rebalance_timeout_ms is None:
            self.rebalance_timeout_ms = self.max_poll_interval_ms
        if not self.partition_assignment_strategy:
            raise ValueError("partition.assignment.strategy needs at least one assignor")


@dataclass(frozen=True, slots=True)
class OffsetAndMetadata:
    offset: int
    metadata: str = ""
    leader_epoch: int = -1


def _tps(items: Iterable[tuple[str, int]]) -> list[TopicPartition]:
    return sorted(TopicPartition(t, p) for t, p in items)


class _Stop(Exception):
    """The membership is closing: unwind the background thread."""


class GroupMembership:
    def __init__(self, settings: GroupSettings, bootstrap: Any,
                 listener: RebalanceListener) -> None:
        self.settings = settings
        self.listener = listener
        self._assignors: list[Assignor] = [get_assignor(n)
                                           for n in settings.partition_assignment_strategy]
        self.cooperative = all(a.cooperative for a in self._assignors)
        self._bootstrap = bootstrap
        self._lock = threading.RLock()
        self._coordinator: str | None = None
        self.member_id = ""
        self.generation = -1
        self.protocol: str | None = None
        self._topics: list[str] = []
        self._pattern: re.Pattern[str] | None = None
        self._owned: set[tuple[str, int]] = set()  # background view, what joins advertise
        self._need_join = False
        self._stable = False
        self._poll_expired = False
        self._fatal: QnodeError | None = None
        self._events: deque[tuple[Any, ...]] = deque()
        self._commits: deque[tuple[dict[TopicPartition, OffsetAndMetadata],
                                   Callable[..., None] | None]] = deque()
        self._stop = threading.Event()
        self._kick = threading.Event()
        self._last_poll = time.monotonic()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._fg = NetworkClient(settings.client_id, settings.request_timeout_ms)
        self._thread: threading.Thread | None = None
        self._next_metadata = 0.0
        self._partition_counts: dict[str, int] = {}
        self.rebalances = 0  # completed generations this member took part in (for tests/bench)

    # ================================================================ consumer thread API

    @property
    def wakeup_fd(self) -> int:
        """Readable when events wait for `poll()`: register it with the consumer's poller."""
        return self._wake_r

    def subscribe(self, topics: list[str] | None = None, pattern: str | None = None) -> None:
        with self._lock:
            self._topics = sorted(set(topics or []))
            self._pattern = re.compile(pattern) if pattern is not None else None
            self._next_metadata = 0.0
            self._need_join = True
        self._start_thread()
        self._kick.set()

    def _start_thread(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name=f"qnode-group-{self.settings.group_id}")
            self._thread.start()

    def subscription(self) -> list[str]:
        with self._lock:
            return list(self._topics)

    def poll(self) -> None:
        """Apply what the background thread decided; raise a fatal group error. Call it at
        the start of every consumer poll (it also proves the application is alive)."""
        self._last_poll = time.monotonic()
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        if self._poll_expired:
            with self._lock:
                self._poll_expired = False
                self._need_join = True
            self._kick.set()
        while self._events:
            kind, *args = self._events.popleft()
            if kind == "revoke":
                tps, done = args
                try:
                    self.listener.on_partitions_revoked(tps)
                finally:
                    done.set()
            elif kind == "lost":
                tps, done = args
                try:
                    self.listener.on_partitions_lost(tps)
                finally:
                    done.set()
            elif kind == "assign":
                self.listener.on_partitions_assigned(args[0])
            elif kind == "call":
                args[0]()
        if self._fatal is not None:
            raise self._fatal

    def is_stable(self) -> bool:
        return self._stable and not self._events

    def group_metadata(self) -> dict[str, Any]:
        """What `send_offsets_to_transaction` needs (Kafka's ConsumerGroupMetadata)."""
        with self._lock:
            return {"group_id": self.settings.group_id, "generation_id": self.generation,
                    "member_id": self.member_id,
                    "group_instance_id": self.settings.group_instance_id}

    def commit_sync(self, offsets: dict[TopicPartition, OffsetAndMetadata],
                    timeout_ms: int | None = None) -> None:
        """Commit and wait; CommitFailedError if the group moved on without us."""
        if not offsets:
            return
        deadline = time.monotonic() + (timeout_ms or self.settings.request_timeout_ms) / 1000
        errors = self._commit(self._fg, offsets, deadline)
        if errors:
            raise errors

    def commit_async(self, offsets: dict[TopicPartition, OffsetAndMetadata],
                     callback: Callable[[dict[TopicPartition, OffsetAndMetadata],
                                         QnodeError | None], None] | None = None) -> None:
        """Queue a commit for the background thread; `callback(offsets, error)` runs in a
        later `poll()`."""
        if offsets:
            self._commits.append((dict(offsets), callback))
            # A manually assigned consumer never subscribed: the thread then only sends
            # commits (no topics, so it never joins), as generation -1 / member "".
            self._start_thread()
            self._kick.set()

    def committed(self, partitions: Iterable[TopicPartition],
                  timeout_ms: int | None = None) -> dict[TopicPartition, OffsetAndMetadata | None]:
        parts = sorted(set(partitions))
        by_topic: dict[str, list[int]] = {}
        for tp in parts:
            by_topic.setdefault(tp.topic, []).append(tp.partition)
        body = {"group_id": self.settings.group_id,
                "topics": [{"name": t, "partitions": ps} for t, ps in by_topic.items()]}
        deadline = time.monotonic() + (timeout_ms or self.settings.request_timeout_ms) / 1000
        while True:
            resp = self._coord_request(self._fg, ApiKey.OFFSET_FETCH, body, deadline)
            err = resp.get("error", 0)
            if not err:
                break
            self._retry_or_raise(err, deadline, "OffsetFetch")
        out: dict[TopicPartition, OffsetAndMetadata | None] = {tp: None for tp in parts}
        for t in resp.get("topics") or []:
            for p in t["partitions"]:
                if p.get("offset", -1) >= 0 and not p.get("error"):
                    out[TopicPartition(t["name"], p["partition"])] = OffsetAndMetadata(
                        p["offset"], p.get("metadata") or "", p.get("leader_epoch", -1))
        return out

    def close(self, leave: bool = True, timeout_ms: int = 5000) -> None:
        """Stop the background thread and (dynamic members) leave the group at once so the
        others rebalance now rather than after a session timeout."""
        self._stop.set()
        self._kick.set()
        if self._thread is not None:
            self._thread.join(timeout_ms / 1000)
        try:
            with self._lock:
                member_id, static = self.member_id, self.settings.group_instance_id
            if leave and member_id and static is None:
                deadline = time.monotonic() + timeout_ms / 1000
                try:
                    self._coord_request(self._fg, ApiKey.LEAVE_GROUP, {
                        "group_id": self.settings.group_id,
                        "members": [{"member_id": member_id, "group_instance_id": None}]},
                        deadline, retries=False)
                except QnodeError as exc:
                    log.info("leaving group %s: %s", self.settings.group_id, exc)
        finally:
            self._fg.close()
            os.close(self._wake_r)
            os.close(self._wake_w)

    # ================================================================ shared helpers

    def _find_coordinator(self, client: NetworkClient, deadline: float) -> str:
        with self._lock:
            if self._coordinator:
                return self._coordinator
        md = Metadata(self._bootstrap)
        last: Exception | None = None
        while time.monotonic() < deadline and not self._stop_requested(client):
            ep = md.endpoint()
            try:
                body = self._request(client, ep, ApiKey.FIND_COORDINATOR,
                                     {"key": self.settings.group_id, "key_type": 0},
                                     self._timeout_ms(deadline))
            except QnodeError as exc:
                last = exc
                md.rotate()
                self._sleep(client, self.settings.retry_backoff_ms)
                continue
            if body.get("error"):
                last = error_for(body["error"], body.get("message"))
                if not last.retriable:
                    raise last
                self._sleep(client, self.settings.retry_backoff_ms)
                continue
            with self._lock:
                self._coordinator = body["endpoint"]
                return body["endpoint"]
        raise CoordinatorError(f"no coordinator found for group {self.settings.group_id!r}"
                               f"{f': {last}' if last else ''}")

    def _forget_coordinator(self, client: NetworkClient) -> None:
        with self._lock:
            ep, self._coordinator = self._coordinator, None
        if ep:
            client.disconnect(ep, "coordinator moved")

    def _coord_request(self, client: NetworkClient, api: ApiKey, body: dict[str, Any],
                       deadline: float, retries: bool = True,
                       wait_ms: int = 0) -> dict[str, Any]:
        """One group request to the coordinator, rediscovering it after network errors."""
        while True:
            ep = self._find_coordinator(client, deadline)
            try:
                return self._request(client, ep, api, body,
                                     max(self._timeout_ms(deadline), wait_ms))
            except (NetworkError, CoordinatorError) as exc:
                self._forget_coordinator(client)
                if not retries or time.monotonic() >= deadline:
                    raise
                log.debug("group request %s failed (%s): retrying", api.name, exc)
                self._sleep(client, self.settings.retry_backoff_ms)

    def _request(self, client: NetworkClient, endpoint: str, api: ApiKey,
                 body: dict[str, Any], timeout_ms: int) -> dict[str, Any]:
        """A request/response that `close()` can interrupt on the background thread."""
        if client is self._fg:
            return client.request(endpoint, api, body, timeout_ms=timeout_ms).body
        req = client.send(endpoint, api, body, timeout_ms=timeout_ms)
        while not req.done:
            if self._stop.is_set():
                client.disconnect(endpoint, "closing")
                raise _Stop
            client.poll(50)
        if req.error is not None:
            raise req.error
        assert req.response is not None
        return req.response.body

    def _retry_or_raise(self, err: int, deadline: float, what: str) -> None:
        if err in _COORDINATOR_MOVED:
            self._forget_coordinator(self._fg)
            if time.monotonic() < deadline:
                time.sleep(self.settings.retry_backoff_ms / 1000)
                return
        raise error_for(err, f"{what} for group {self.settings.group_id!r}: "
                             f"{ErrorCode(err).name if err in E._value2member_map_ else err}")

    def _timeout_ms(self, deadline: float) -> int:
        return max(1, int((deadline - time.monotonic()) * 1000))

    def _stop_requested(self, client: NetworkClient) -> bool:
        return client is not self._fg and self._stop.is_set()

    def _sleep(self, client: NetworkClient, ms: float) -> None:
        if client is self._fg:
            time.sleep(ms / 1000)
        else:
            self._stop.wait(ms / 1000)

    def _commit(self, client: NetworkClient, offsets: dict[TopicPartition, OffsetAndMetadata],
                deadline: float) -> QnodeError | None:
        by_topic: dict[str, list[dict[str, Any]]] = {}
        for tp, om in sorted(offsets.items()):
            by_topic.setdefault(tp.topic, []).append({
                "partition": tp.partition, "offset": om.offset,
                "leader_epoch": om.leader_epoch, "metadata": om.metadata})
        rebalance_deadline = min(deadline, time.monotonic() + REBALANCE_COMMIT_RETRY_S)
        while True:
            with self._lock:
                generation, member_id = self.generation, self.member_id
            body = {"group_id": self.settings.group_id, "generation_id": generation,
                    "member_id": member_id,
                    "group_instance_id": self.settings.group_instance_id,
                    "topics": [{"name": t, "partitions": ps} for t, ps in by_topic.items()]}
            try:
                resp = self._coord_request(client, ApiKey.OFFSET_COMMIT, body, deadline)
            except QnodeError as exc:
                return exc
            err = next((p["error"] for t in resp.get("topics") or []
                        for p in t["partitions"] if p.get("error")), 0)
            if not err:
                return None
            if err in _COORDINATOR_MOVED and time.monotonic() < deadline:
                self._forget_coordinator(client)
                self._sleep(client, self.settings.retry_backoff_ms)
                continue
            if err == E.REBALANCE_IN_PROGRESS and time.monotonic() < rebalance_deadline:
                # The group is completing a generation this member joined (e.g. on close):
                # once it is stable the commit goes through with the new generation.
                self._sleep(client, self.settings.retry_backoff_ms)
                continue
            if err in (E.ILLEGAL_GENERATION, E.UNKNOWN_MEMBER_ID, E.REBALANCE_IN_PROGRESS):
                with self._lock:
                    self._need_join = True
                self._kick.set()
                return CommitFailedError(
                    f"commit of group {self.settings.group_id!r} failed: "
                    f"{ErrorCode(err).name}: the group rebalanced (poll again and retry)",
                    code=err)
            if err == E.FENCED_INSTANCE_ID:
                return FencedInstanceError("this member's group.instance.id was taken over")
            return error_for(err, f"commit of group {self.settings.group_id!r}")

    # ================================================================ background thread

    def _post(self, *event: Any) -> None:
        self._events.append(event)
        try:
            os.write(self._wake_w, b"\x01")
        except (BlockingIOError, OSError):
            pass  # pipe full (already readable) or closing

    def _wait_for_poll(self, kind: str, tps: list[TopicPartition]) -> None:
        """Hand `tps` to the consumer thread and wait until its callback ran."""
        done = threading.Event()
        self._post(kind, tps, done)
        while not done.wait(0.05):
            if self._stop.is_set():
                raise _Stop
            if self._poll_expired_now():
                return  # the application is gone: do not block the group on it

    def _poll_expired_now(self) -> bool:
        return (time.monotonic() - self._last_poll) * 1000 > self.settings.max_poll_interval_ms

    def _run(self) -> None:
        client = NetworkClient(self.settings.client_id, self.settings.request_timeout_ms)
        try:
            next_hb = 0.0
            while not self._stop.is_set():
                try:
                    next_hb = self._step(client, next_hb)
                except _Stop:
                    return
                except FencedInstanceError as exc:
                    self._fatal = exc
                    self._post("call", lambda: None)
                    return
                except QnodeError as exc:
                    if exc.retriable or isinstance(exc, GroupError):
                        log.info("group %s: %s; retrying", self.settings.group_id, exc)
                        self._forget_coordinator(client)
                        self._stop.wait(self.settings.retry_backoff_ms / 1000)
                        continue
                    self._fatal = exc
                    self._post("call", lambda: None)
                    return
        except Exception:
            log.exception("group membership thread of %s failed", self.settings.group_id)
        finally:
            client.close()

    def _step(self, client: NetworkClient, next_hb: float) -> float:
        now = time.monotonic()
        if self._stable and self._poll_expired_now() and not self._poll_expired:
            self._leave_for_poll_timeout(client)
            return next_hb
        self._drain_commits(client)
        if now >= self._next_metadata and (self._pattern is not None or self._stable):
            self._refresh_subscription(client)
        if self._need_join and not self._poll_expired and (self._topics or self._pattern):
            self._rebalance(client)
            return time.monotonic() + self.settings.heartbeat_interval_ms / 1000
        if self._stable and now >= next_hb:
            self._heartbeat(client)
            next_hb = now + self.settings.heartbeat_interval_ms / 1000
        wait = max(0.0, min(next_hb, self._next_metadata) - time.monotonic())
        self._kick.wait(min(wait, 0.5) if self._stable else 0.5)
        self._kick.clear()
        return next_hb

    def _refresh_subscription(self, client: NetworkClient) -> None:
        """Resolve the regex and watch partition counts: a change means a new assignment."""
        self._next_metadata = time.monotonic() + self.settings.metadata_max_age_ms / 1000
        md = Metadata(self._bootstrap)
        with self._lock:
            pattern, topics = self._pattern, list(self._topics)
        body = md.fetch(client, None if pattern is not None else topics)
        names = [t["name"] for t in body.get("topics") or [] if not t.get("error")
                 and not t.get("internal")]
        counts = {t["name"]: len(t.get("partitions") or []) for t in body.get("topics") or []
                  if not t.get("error")}
        changed = False
        if pattern is not None:
            matched = sorted(n for n in names if pattern.fullmatch(n))
            with self._lock:
                if matched != self._topics:
                    self._topics = matched
                    changed = True
        wanted = {t: counts.get(t, 0) for t in self._topics}
        if self._partition_counts and wanted != self._partition_counts:
            changed = True
        self._partition_counts = wanted
        if changed and self._stable:
            with self._lock:
                self._need_join = True

    def _heartbeat(self, client: NetworkClient) -> None:
        with self._lock:
            body = {"group_id": self.settings.group_id, "generation_id": self.generation,
                    "member_id": self.member_id,
                    "group_instance_id": self.settings.group_instance_id}
        deadline = time.monotonic() + self.settings.session_timeout_ms / 1000
        err = self._coord_request(client, ApiKey.HEARTBEAT, body, deadline).get("error", 0)
        if err == E.REBALANCE_IN_PROGRESS:
            with self._lock:
                self._need_join = True
        elif err in (E.ILLEGAL_GENERATION, E.UNKNOWN_MEMBER_ID):
            self._reset_member(err)
        elif err == E.FENCED_INSTANCE_ID:
            raise FencedInstanceError("this member's group.instance.id was taken over")
        elif err in _COORDINATOR_MOVED:
            self._forget_coordinator(client)
        elif err:
            raise error_for(err, f"heartbeat of group {self.settings.group_id!r}")

    def _reset_member(self, err: int) -> None:
        """The coordinator no longer knows this member/generation: what it owned is lost."""
        with self._lock:
            if err == E.UNKNOWN_MEMBER_ID:
                self.member_id = ""
            self.generation = -1
            self._need_join = True
            self._stable = False
            lost, self._owned = self._owned, set()
        if lost:
            self._wait_for_poll("lost", _tps(lost))

    def _leave_for_poll_timeout(self, client: NetworkClient) -> None:
        log.warning("consumer of group %s did not poll within max.poll.interval.ms=%d: "
                    "leaving the group", self.settings.group_id,
                    self.settings.max_poll_interval_ms)
        with self._lock:
            member_id = self.member_id
            self._poll_expired = True
            self._stable = False
            lost, self._owned = self._owned, set()
            self.generation = -1
            if self.settings.group_instance_id is None:
                self.member_id = ""
        if member_id and self.settings.group_instance_id is None:
            deadline = time.monotonic() + self.settings.request_timeout_ms / 1000
            try:
                self._coord_request(client, ApiKey.LEAVE_GROUP, {
                    "group_id": self.settings.group_id,
                    "members": [{"member_id": member_id, "group_instance_id": None}]},
                    deadline, retries=False)
            except QnodeError as exc:
                log.info("leave after poll timeout failed: %s", exc)
        if lost:
            done = threading.Event()  # applied at the next poll; nobody waits for it here
            self._post("lost", _tps(lost), done)

    def _drain_commits(self, client: NetworkClient) -> None:
        while self._commits:
            offsets, callback = self._commits.popleft()
            deadline = time.monotonic() + self.settings.request_timeout_ms / 1000
            err = self._commit(client, offsets, deadline)
            if callback is not None:
                self._post("call", lambda cb=callback, o=offsets, e=err: cb(o, e))
            elif err is not None:
                log.warning("async commit of group %s failed: %s", self.settings.group_id, err)

    # ---- join and sync --------------------------------------------------------------------

    def _rebalance(self, client: NetworkClient) -> None:
        self._stable = False
        with self._lock:
            owned = set(self._owned)
        if owned and not self.cooperative:
            self._wait_for_poll("revoke", _tps(owned))  # eager: give everything up first
            with self._lock:
                self._owned = set()
        while not self._stop.is_set():
            with self._lock:
                self._need_join = False
            joined = self._join(client)
            if joined is None:
                continue
            assignment = self._sync(client, joined)
            if assignment is None:
                continue
            self._apply_assignment(joined, assignment)
            return
        raise _Stop

    def _rebalance_wait_ms(self) -> int:
        return int(self.settings.rebalance_timeout_ms or 0) + 5000

    def _join(self, client: NetworkClient) -> dict[str, Any] | None:
        s = self.settings
        with self._lock:
            topics, owned = list(self._topics), sorted(self._owned)
            body = {"group_id": s.group_id, "session_timeout_ms": s.session_timeout_ms,
                    "rebalance_timeout_ms": s.rebalance_timeout_ms,
                    "member_id": self.member_id, "group_instance_id": s.group_instance_id,
                    "protocol_type": "consumer",
                    "protocols": [{"name": a.name, "metadata": Subscription(
                        topics, owned if a.cooperative else [], self.generation).encode()}
                        for a in self._assignors]}
        # The coordinator parks a join for up to the rebalance timeout.
        wait_ms = self._rebalance_wait_ms()
        resp = self._coord_request(client, ApiKey.JOIN_GROUP, body,
                                   time.monotonic() + wait_ms / 1000, wait_ms=wait_ms)
        err = resp.get("error", 0)
        if err == E.MEMBER_ID_REQUIRED:
            with self._lock:
                self.member_id = resp["member_id"]
            return None
        if err in (E.UNKNOWN_MEMBER_ID, E.ILLEGAL_GENERATION):
            self._reset_member(err)
            return None
        if err == E.FENCED_INSTANCE_ID:
            raise FencedInstanceError("this member's group.instance.id was taken over")
        if err in _COORDINATOR_MOVED or err == E.REBALANCE_IN_PROGRESS:
            if err in _COORDINATOR_MOVED:
                self._forget_coordinator(client)
            self._stop.wait(s.retry_backoff_ms / 1000)
            return None
        if err:
            raise error_for(err, f"JoinGroup of group {s.group_id!r}")
        with self._lock:
            self.member_id = resp["member_id"]
            self.generation = resp["generation_id"]
            self.protocol = resp["protocol_name"]
        return resp

    def _sync(self, client: NetworkClient, joined: dict[str, Any]) -> Assignment | None:
        s = self.settings
        assignments: list[dict[str, Any]] = []
        if joined["leader"] == joined["member_id"] and not joined.get("skip_assignment"):
            assignments = self._lead(client, joined)
        body = {"group_id": s.group_id, "generation_id": joined["generation_id"],
                "member_id": joined["member_id"], "group_instance_id": s.group_instance_id,
                "assignments": assignments}
        wait_ms = self._rebalance_wait_ms()
        resp = self._coord_request(client, ApiKey.SYNC_GROUP, body,
                                   time.monotonic() + wait_ms / 1000, wait_ms=wait_ms)
        err = resp.get("error", 0)
        if err == E.REBALANCE_IN_PROGRESS:
            return None
        if err in (E.UNKNOWN_MEMBER_ID, E.ILLEGAL_GENERATION):
            self._reset_member(err)
            return None
        if err == E.FENCED_INSTANCE_ID:
            raise FencedInstanceError("this member's group.instance.id was taken over")
        if err in _COORDINATOR_MOVED:
            self._forget_coordinator(client)
            return None
        if err:
            raise error_for(err, f"SyncGroup of group {s.group_id!r}")
        try:
            return Assignment.decode(resp.get("assignment") or b"")
        except GroupProtocolError as exc:
            log.error("group %s: undecodable assignment (%s): rejoining", s.group_id, exc)
            return None

    def _lead(self, client: NetworkClient, joined: dict[str, Any]) -> list[dict[str, Any]]:
        """The leader's job: every member's subscription in, every member's assignment out."""
        assignor = next(a for a in self._assignors if a.name == joined["protocol_name"])
        subs: dict[str, Subscription] = {}
        for m in joined["members"]:
            try:
                subs[m["member_id"]] = Subscription.decode(m["metadata"])
            except GroupProtocolError as exc:
                log.error("member %s sent an undecodable subscription: %s", m["member_id"], exc)
                subs[m["member_id"]] = Subscription([])
        topics = sorted({t for sub in subs.values() for t in sub.topics})
        md = Metadata(self._bootstrap)
        body = md.fetch(client, topics) if topics else {"topics": []}
        counts = {t["name"]: len(t.get("partitions") or []) for t in body.get("topics") or []
                  if not t.get("error")}
        result = assignor.assign(counts, subs)
        return [{"member_id": m, "assignment": Assignment(tps).encode()}
                for m, tps in result.items()]

    def _apply_assignment(self, joined: dict[str, Any], assignment: Assignment) -> None:
        assigned = set(assignment.partitions)
        with self._lock:
            owned = set(self._owned)
        if self.cooperative:
            revoked = owned - assigned
            added = assigned - owned
            if revoked:
                self._wait_for_poll("revoke", _tps(revoked))
                with self._lock:
                    self._need_join = True  # second phase: let the new owners have them
        else:
            added = assigned
        with self._lock:
            self._owned = assigned
            self._stable = True
            self.rebalances += 1
        self._post("assign", _tps(added))
