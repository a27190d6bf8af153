"""The group coordinator: Kafka's consumer-group state machine, without sockets or threads.

States Empty → PreparingRebalance → CompletingRebalance → Stable (→ Dead when deleted).
A JoinGroup parks until every known member has rejoined (or the rebalance timeout passes,
evicting the laggards); the first joiner — or the previous leader — leads and receives every
member's subscription; SyncGroup parks until the leader's assignment is persisted, then every
member gets its share. Heartbeats keep a member alive for `session_timeout_ms`; a stale
generation gets ILLEGAL_GENERATION, an unknown member UNKNOWN_MEMBER_ID, a replaced static
member FENCED_INSTANCE_ID.

Everything runs on the caller's thread. Time comes from an injected clock; `tick()` fires the
deadlines (the server's poll loop bounds its timeout with `next_deadline()`). Writes to
`__consumer_offsets` go through an `OffsetsWriter`, whose completion callback answers the
request (commits are acknowledged only once appended with acks=-1).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from qnode.coordinator import group_metadata as gm
from qnode.coordinator.group_model import (
    Group,
    GroupState,
    JoinCallback,
    JoinRequest,
    JoinResult,
    Member,
    OffsetEntry,
    SyncCallback,
    SyncResult,
)
from qnode.coordinator.group_timers import DeadlineHeap
from qnode.transport.errors import ErrorCode

Records = list[tuple[bytes, bytes | None]]
CommitCallback = Callable[[list[tuple[str, int, ErrorCode]]], None]
ErrorCallback = Callable[[ErrorCode], None]
E = ErrorCode
S = GroupState


class OffsetsWriter(Protocol):
    """Appends records to one partition of `__consumer_offsets`; `done` gets the outcome."""

    def append(self, partition: int, records: Records, done: ErrorCallback) -> None: ...


@dataclass(frozen=True)
class GroupConfig:
    """Broker settings of the group coordinator (Kafka's names in `from_config`)."""

    num_partitions: int = 50  # offsets.topic.num.partitions
    # Kafka's floor is 6000; ours is low so tests and demos can use short sessions.
    min_session_timeout_ms: int = 100  # group.min.session.timeout.ms
    max_session_timeout_ms: int = 1_800_000  # group.max.session.timeout.ms
    initial_rebalance_delay_ms: int = 0  # group.initial.rebalance.delay.ms
    offsets_retention_ms: int = 7 * 24 * 3600 * 1000  # offsets.retention.minutes
    retention_check_interval_ms: int = 600_000  # offsets.retention.check.interval.ms
    offset_metadata_max_bytes: int = 4096  # offset.metadata.max.bytes

    @classmethod
    def from_config(cls, cfg: dict[str, str]) -> GroupConfig:
        def num(key: str, default: int, scale: int = 1) -> int:
            raw = cfg.get(key)
            if raw is None:
                return default
            try:
                value = int(raw)
            except ValueError:
                raise ValueError(f"{key}={raw!r}: expected an integer") from None
            if value < 0:
                raise ValueError(f"{key}={raw!r}: must be >= 0")
            return value * scale

        d = cls()
        return cls(
            num_partitions=max(1, num("offsets.topic.num.partitions", d.num_partitions)),
            min_session_timeout_ms=num("group.min.session.timeout.ms", d.min_session_timeout_ms),
            max_session_timeout_ms=num("group.max.session.timeout.ms", d.max_session_timeout_ms),
            initial_rebalance_delay_ms=num("group.initial.rebalance.delay.ms",
                                           d.initial_rebalance_delay_ms),
            offsets_retention_ms=num("offsets.retention.minutes",
                                     d.offsets_retention_ms // 60_000, 60_000),
            retention_check_interval_ms=num("offsets.retention.check.interval.ms",
                                            d.retention_check_interval_ms),
            offset_metadata_max_bytes=num("offset.metadata.max.bytes",
                                          d.offset_metadata_max_bytes),
        )


@dataclass(slots=True)
class CommitItem:
    topic: str
    partition: int
    offset: int
    leader_epoch: int = -1
    metadata: str = ""


class GroupCoordinator:
    def __init__(self, config: GroupConfig, writer: OffsetsWriter,
                 clock: Callable[[], int], wall_clock: Callable[[], int] | None = None) -> None:
        """`clock`: monotonic ms for deadlines; `wall_clock`: epoch ms for what is persisted
        (commit and state timestamps must survive a restart, retention compares them)."""
        self.config = config
        self._writer = writer
        self._now = clock
        self._wall = wall_clock or clock
        self._groups: dict[str, Group] = {}
        self._timers = DeadlineHeap()
        self._timers.schedule(clock() + config.retention_check_interval_ms, ("expire",))

    # ---- queries ------------------------------------------------------------------------

    def group(self, group_id: str) -> Group | None:
        return self._groups.get(group_id)

    def groups(self) -> list[Group]:
        return list(self._groups.values())

    def partition_of(self, group_id: str) -> int:
        return gm.partition_for(group_id, self.config.num_partitions)

    def next_deadline(self) -> int | None:
        return self._timers.next_deadline()

    # ---- JoinGroup ----------------------------------------------------------------------

    def join_group(self, req: JoinRequest, reply: JoinCallback) -> None:
        def fail(code: ErrorCode) -> None:
            reply(JoinResult(code, member_id=req.member_id))

        cfg = self.config
        if not req.group_id:
            return fail(E.INVALID_GROUP_ID)
        if not cfg.min_session_timeout_ms <= req.session_timeout_ms <= cfg.max_session_timeout_ms:
            return fail(E.INVALID_SESSION_TIMEOUT)
        group = self._groups.get(req.group_id)
        if group is None:
            if req.member_id:
                return fail(E.UNKNOWN_MEMBER_ID)
            group = self._groups[req.group_id] = Group(req.group_id, state_ts=self._wall())
        if group.state is S.DEAD:
            return fail(E.COORDINATOR_NOT_AVAILABLE)
        if not group.supports(req.protocol_type, [p for p, _ in req.protocols]):
            return fail(E.INCONSISTENT_GROUP_PROTOCOL)
        if not req.member_id:
            if req.group_instance_id is None:
                # KIP-394: hand out an id first, so a client that dies before learning it
                # does not leave a ghost member behind for a whole session timeout.
                member_id = self._new_member_id(req.client_id)
                deadline = self._now() + req.session_timeout_ms
                group.pending_members[member_id] = deadline
                self._timers.schedule(deadline, ("pending", group.group_id, member_id))
                return reply(JoinResult(E.MEMBER_ID_REQUIRED, member_id=member_id))
            return self._join_static_new(group, req, reply)
        if req.member_id in group.pending_members:
            del group.pending_members[req.member_id]
            self._add_member(group, req, req.member_id, reply)
            return self._rebalance_or_complete(group, "new member joined")
        member = group.members.get(req.member_id)
        fenced = self._fenced(group, req.member_id, req.group_instance_id)
        if fenced:
            return fail(fenced)
        if member is None:
            return fail(E.UNKNOWN_MEMBER_ID)
        self._join_existing(group, member, req, reply)

    def _fenced(self, group: Group, member_id: str, instance_id: str | None) -> ErrorCode | None:
        if instance_id is None:
            return None
        known = group.static_members.get(instance_id)
        if known is not None and known != member_id:
            return E.FENCED_INSTANCE_ID
        return None

    def _join_static_new(self, group: Group, req: JoinRequest, reply: JoinCallback) -> None:
        assert req.group_instance_id is not None
        member_id = self._new_member_id(req.client_id)
        old_id = group.static_members.get(req.group_instance_id)
        old = group.members.get(old_id) if old_id else None
        if old is None:
            self._add_member(group, req, member_id, reply)
            return self._rebalance_or_complete(group, "new static member joined")
        # A known instance is back: it takes over the old slot; the old member id is fenced.
        del group.members[old.member_id]
        if old.join_waiter:
            old.join_waiter(JoinResult(E.FENCED_INSTANCE_ID, member_id=old.member_id))
        if old.sync_waiter:
            old.sync_waiter(SyncResult(E.FENCED_INSTANCE_ID))
        member = self._add_member(group, req, member_id, None)
        member.assignment = old.assignment
        if group.leader == old.member_id:
            group.leader = member_id
        # As Kafka: only a change of the group's selected protocol forces a rebalance; the
        # restarted member's subscription bytes differ anyway (it owns nothing yet).
        unchanged = (group.protocol in member.protocol_names()
                     and group.select_protocol() == group.protocol)
        if group.state is S.STABLE and unchanged:
            # No rebalance: same subscription, same slot, same assignment (KIP-345).
            self._persist_group(group, lambda _err: None)
            return reply(JoinResult(E.NONE, group.generation, group.protocol, group.leader or "",
                                    member_id, skip_assignment=True))
        member.join_waiter = reply
        self._rebalance_or_complete(group, "static member rejoined with new metadata")

    def _join_existing(self, group: Group, member: Member, req: JoinRequest,
                       reply: JoinCallback) -> None:
        changed = member.protocols != req.protocols
        member.protocols = req.protocols
        member.session_timeout_ms = req.session_timeout_ms
        member.rebalance_timeout_ms = req.rebalance_timeout_ms
        member.last_heartbeat_ms = self._now()
        if group.state is S.PREPARING_REBALANCE:
            if member.join_waiter is not None:  # a retry: never leave a request unanswered
                member.join_waiter(JoinResult(E.REBALANCE_IN_PROGRESS, member_id=member.member_id))
            member.join_waiter = reply
            return self._check_join_complete(group)
        is_leader = group.leader == member.member_id
        if group.state is S.COMPLETING_REBALANCE and not changed:
            return reply(self._join_result(group, member))
        if group.state is S.STABLE and not changed and not is_leader:
            return reply(self._join_result(group, member))
        # The leader rejoining a stable group, or changed metadata: a new generation.
        member.join_waiter = reply
        self._rebalance_or_complete(group, "member metadata changed or leader rejoined")

    def _add_member(self, group: Group, req: JoinRequest, member_id: str,
                    reply: JoinCallback | None) -> Member:
        member = Member(member_id, req.group_instance_id, req.client_id, req.client_host,
                        req.session_timeout_ms, req.rebalance_timeout_ms, list(req.protocols),
                        last_heartbeat_ms=self._now(), join_waiter=reply)
        if not group.members:
            group.protocol_type = req.protocol_type
        group.members[member_id] = member
        if req.group_instance_id is not None:
            group.static_members[req.group_instance_id] = member_id
        self._schedule_session(group, member)
        return member

    def _new_member_id(self, client_id: str) -> str:
        return f"{client_id or 'member'}-{uuid.uuid4()}"

    def _join_result(self, group: Group, member: Member) -> JoinResult:
        members = []
        if group.leader == member.member_id:
            assert group.protocol is not None
            members = [(m.member_id, m.group_instance_id, m.metadata_for(group.protocol))
                       for m in group.members.values()]
        return JoinResult(E.NONE, group.generation, group.protocol, group.leader or "",
                          member.member_id, members)

    # ---- the join barrier ---------------------------------------------------------------

    def _rebalance_or_complete(self, group: Group, reason: str) -> None:
        if group.state in (S.EMPTY, S.STABLE, S.COMPLETING_REBALANCE):
            self._prepare_rebalance(group, reason)
        self._check_join_complete(group)

    def _prepare_rebalance(self, group: Group, reason: str) -> None:
        now = self._now()
        if group.state is S.COMPLETING_REBALANCE:
            # The leader's assignment for this generation will never be used.
            for m in group.members.values():
                m.assignment = b""
                if m.sync_waiter:
                    m.sync_waiter(SyncResult(E.REBALANCE_IN_PROGRESS))
                    m.sync_waiter = None
        was_empty = group.state is S.EMPTY
        self._set_state(group, S.PREPARING_REBALANCE)
        group.rebalances += 1
        timeout = max((m.rebalance_timeout_ms for m in group.members.values()), default=0)
        group.rebalance_deadline_ms = now + timeout
        group.initial_deadline_ms = now + self.config.initial_rebalance_delay_ms if was_empty else 0
        self._timers.schedule(group.rebalance_deadline_ms, ("join", group.group_id,
                                                             group.rebalances))
        if group.initial_deadline_ms > now:
            self._timers.schedule(group.initial_deadline_ms, ("join-check", group.group_id,
                                                               group.rebalances))

    def _check_join_complete(self, group: Group) -> None:
        if group.state is not S.PREPARING_REBALANCE:
            return
        if group.initial_deadline_ms > self._now():
            return
        all_joined = all(m.join_waiter is not None for m in group.members.values())
        if all_joined and not group.pending_members:
            self._complete_join(group)

    def _complete_join(self, group: Group) -> None:
        for m in [m for m in group.members.values() if m.join_waiter is None]:
            self._remove_member(group, m)  # did not rejoin within the rebalance timeout
        group.generation += 1
        if not group.members:
            group.protocol = None
            group.leader = None
            self._set_state(group, S.EMPTY)
            self._persist_group(group, lambda _err: None)
            return
        group.protocol = group.select_protocol()
        if group.leader not in group.members:
            group.leader = next(iter(group.members))
        self._set_state(group, S.COMPLETING_REBALANCE)
        group.synced = set()
        now = self._now()
        timeout = max(m.rebalance_timeout_ms for m in group.members.values())
        self._timers.schedule(now + timeout, ("sync", group.group_id, group.generation))
        for m in group.members.values():
            waiter, m.join_waiter = m.join_waiter, None
            m.last_heartbeat_ms = now
            assert waiter is not None
            waiter(self._join_result(group, m))

    def _remove_member(self, group: Group, member: Member) -> None:
        del group.members[member.member_id]
        if member.group_instance_id is not None:
            if group.static_members.get(member.group_instance_id) == member.member_id:
                del group.static_members[member.group_instance_id]
        if member.join_waiter:
            member.join_waiter(JoinResult(E.UNKNOWN_MEMBER_ID, member_id=member.member_id))
            member.join_waiter = None
        if member.sync_waiter:
            member.sync_waiter(SyncResult(E.UNKNOWN_MEMBER_ID))
            member.sync_waiter = None
        if group.leader == member.member_id:
            group.leader = None

    def _member_gone(self, group: Group, member: Member, reason: str) -> None:
        """A member left or expired: the others must rebalance without it."""
        self._remove_member(group, member)
        if group.state in (S.STABLE, S.COMPLETING_REBALANCE):
            self._prepare_rebalance(group, reason)
        self._check_join_complete(group)

    def _set_state(self, group: Group, state: GroupState) -> None:
        group.state = state
        group.state_ts = self._wall()

    # ---- SyncGroup ----------------------------------------------------------------------

    def sync_group(self, group_id: str, generation_id: int, member_id: str,
                   instance_id: str | None, assignments: dict[str, bytes],
                   reply: SyncCallback) -> None:
        group = self._groups.get(group_id)
        if group is None:
            return reply(SyncResult(E.UNKNOWN_MEMBER_ID))
        if group.state is S.DEAD:
            return reply(SyncResult(E.COORDINATOR_NOT_AVAILABLE))
        fenced = self._fenced(group, member_id, instance_id)
        if fenced:
            return reply(SyncResult(fenced))
        member = group.members.get(member_id)
        if member is None:
            return reply(SyncResult(E.UNKNOWN_MEMBER_ID))
        if generation_id != group.generation:
            return reply(SyncResult(E.ILLEGAL_GENERATION))
        if group.state is S.PREPARING_REBALANCE:
            return reply(SyncResult(E.REBALANCE_IN_PROGRESS))
        member.last_heartbeat_ms = self._now()
        if group.state is S.STABLE:
            return reply(SyncResult(E.NONE, member.assignment))
        assert group.state is S.COMPLETING_REBALANCE
        if member.sync_waiter:
            member.sync_waiter(SyncResult(E.REBALANCE_IN_PROGRESS))
        member.sync_waiter = reply
        group.synced.add(member_id)
        if member_id != group.leader:
            return
        for m in group.members.values():
            m.assignment = assignments.get(m.member_id, b"")
        generation = group.generation

        def stored(err: ErrorCode) -> None:
            if group.state is not S.COMPLETING_REBALANCE or group.generation != generation:
                return  # a newer rebalance took over while the write was in flight
            if err:
                for m in group.members.values():
                    m.assignment = b""
                    if m.sync_waiter:
                        m.sync_waiter(SyncResult(err))
                        m.sync_waiter = None
                self._prepare_rebalance(group, f"storing the assignment failed: {err.name}")
                return
            self._set_state(group, S.STABLE)
            for m in group.members.values():
                if m.sync_waiter:
                    waiter, m.sync_waiter = m.sync_waiter, None
                    waiter(SyncResult(E.NONE, m.assignment))

        self._persist_group(group, stored)

    # ---- Heartbeat / LeaveGroup ---------------------------------------------------------

    def heartbeat(self, group_id: str, generation_id: int, member_id: str,
                  instance_id: str | None) -> ErrorCode:
        group = self._groups.get(group_id)
        if group is None or group.state is S.EMPTY:
            return E.UNKNOWN_MEMBER_ID
        if group.state is S.DEAD:
            return E.COORDINATOR_NOT_AVAILABLE
        fenced = self._fenced(group, member_id, instance_id)
        if fenced:
            return fenced
        member = group.members.get(member_id)
        if member is None:
            return E.UNKNOWN_MEMBER_ID
        if group.state is S.PREPARING_REBALANCE:
            member.last_heartbeat_ms = self._now()
            return E.REBALANCE_IN_PROGRESS
        if generation_id != group.generation:
            return E.ILLEGAL_GENERATION
        member.last_heartbeat_ms = self._now()
        return E.NONE

    def leave_group(self, group_id: str,
                    leavers: list[tuple[str, str | None]]) -> tuple[ErrorCode, list[ErrorCode]]:
        """Remove members (by member id, or by instance id for static members)."""
        group = self._groups.get(group_id)
        if group is None:
            return E.UNKNOWN_MEMBER_ID, [E.UNKNOWN_MEMBER_ID] * len(leavers)
        if group.state is S.DEAD:
            return E.COORDINATOR_NOT_AVAILABLE, [E.COORDINATOR_NOT_AVAILABLE] * len(leavers)
        results = []
        for member_id, instance_id in leavers:
            if instance_id is not None:
                known = group.static_members.get(instance_id)
                if known is None:
                    results.append(E.UNKNOWN_MEMBER_ID)
                    continue
                if member_id and member_id != known:
                    results.append(E.FENCED_INSTANCE_ID)
                    continue
                member_id = known
            if group.pending_members.pop(member_id, None) is not None:
                results.append(E.NONE)
                self._check_join_complete(group)
                continue
            member = group.members.get(member_id)
            if member is None:
                results.append(E.UNKNOWN_MEMBER_ID)
                continue
            self._member_gone(group, member, "member left")
            results.append(E.NONE)
        top = E.NONE if len(leavers) != 1 else results[0]
        return top, results

    # ---- offsets ------------------------------------------------------------------------

    def commit_offsets(self, group_id: str, generation_id: int, member_id: str,
                       instance_id: str | None, items: list[CommitItem],
                       reply: CommitCallback) -> None:
        def fail_all(code: ErrorCode) -> None:
            reply([(i.topic, i.partition, code) for i in items])

        if not group_id:
            return fail_all(E.INVALID_GROUP_ID)
        group = self._groups.get(group_id)
        if group is None:
            if generation_id >= 0:
                return fail_all(E.ILLEGAL_GENERATION)
            group = self._groups[group_id] = Group(group_id, state_ts=self._wall())
        if group.state is S.DEAD:
            return fail_all(E.COORDINATOR_NOT_AVAILABLE)
        if not (generation_id < 0 and group.state is S.EMPTY):
            fenced = self._fenced(group, member_id, instance_id)
            if fenced:
                return fail_all(fenced)
            if group.state is S.COMPLETING_REBALANCE:
                return fail_all(E.REBALANCE_IN_PROGRESS)
            member = group.members.get(member_id)
            if member is None:
                return fail_all(E.UNKNOWN_MEMBER_ID)
            if generation_id != group.generation:
                return fail_all(E.ILLEGAL_GENERATION)
            member.last_heartbeat_ms = self._now()
        now = self._wall()
        results: dict[tuple[str, int], ErrorCode] = {}
        accepted: list[tuple[CommitItem, gm.OffsetValue]] = []
        for item in items:
            key = (item.topic, item.partition)
            if item.offset < 0 or item.partition < 0 or not item.topic:
                results[key] = E.INVALID_COMMIT_OFFSET_SIZE
            elif len(item.metadata.encode()) > self.config.offset_metadata_max_bytes:
                results[key] = E.INVALID_COMMIT_OFFSET_SIZE
            else:
                accepted.append((item, gm.OffsetValue(item.offset, item.leader_epoch,
                                                      item.metadata, now)))

        def answer() -> None:
            reply([(i.topic, i.partition, results[(i.topic, i.partition)]) for i in items])

        if not accepted:
            return answer()
        records: Records = [(gm.offset_key(group_id, i.topic, i.partition),
                             gm.encode_offset_value(v)) for i, v in accepted]

        def stored(err: ErrorCode) -> None:
            for item, v in accepted:
                results[(item.topic, item.partition)] = err
                if not err and self._groups.get(group_id) is group:
                    group.offsets[(item.topic, item.partition)] = OffsetEntry(
                        v.offset, v.leader_epoch, v.metadata, v.commit_ts)
            answer()

        self._writer.append(self.partition_of(group_id), records, stored)

    def fetch_offsets(self, group_id: str,
                      wanted: list[tuple[str, int]] | None) -> dict[tuple[str, int], OffsetEntry]:
        """Committed offsets of a group (all of them when `wanted` is None)."""
        group = self._groups.get(group_id)
        offsets = group.offsets if group is not None else {}
        if wanted is None:
            return dict(offsets)
        return {tp: offsets[tp] for tp in wanted if tp in offsets}

    def delete_groups(self, group_ids: list[str],
                      reply: Callable[[list[tuple[str, ErrorCode]]], None]) -> None:
        results: dict[str, ErrorCode] = {}
        waiting = set()
        for gid in group_ids:
            group = self._groups.get(gid)
            if group is None or group.state is S.DEAD:
                results[gid] = E.GROUP_ID_NOT_FOUND
            elif group.state is not S.EMPTY:
                results[gid] = E.NON_EMPTY_GROUP
            else:
                waiting.add(gid)

        def answer() -> None:
            reply([(gid, results[gid]) for gid in group_ids])

        if not waiting:
            return answer()
        for gid in sorted(waiting):
            group = self._groups[gid]
            self._set_state(group, S.DEAD)  # refuse joins/commits while tombstones are written
            records: Records = [(gm.group_key(gid), None)]
            records += [(gm.offset_key(gid, t, p), None) for t, p in group.offsets]

            def done(err: ErrorCode, gid: str = gid, group: Group = group) -> None:
                results[gid] = err
                if err:
                    self._set_state(group, S.EMPTY)
                elif self._groups.get(gid) is group:
                    del self._groups[gid]
                waiting.discard(gid)
                if not waiting:
                    answer()

            self._writer.append(self.partition_of(gid), records, done)

    # ---- persistence of the group record ------------------------------------------------

    def _persist_group(self, group: Group, done: ErrorCallback) -> None:
        protocol = group.protocol
        value = gm.GroupValue(
            group.protocol_type or "", group.generation, protocol, group.leader, group.state_ts,
            [gm.MemberValue(m.member_id, m.group_instance_id, m.client_id, m.client_host,
                            m.session_timeout_ms, m.rebalance_timeout_ms,
                            m.metadata_for(protocol) if protocol else b"", m.assignment)
             for m in group.members.values()],
        )
        self._writer.append(self.partition_of(group.group_id),
                            [(gm.group_key(group.group_id), gm.encode_group_value(value))], done)

    # ---- loading ------------------------------------------------------------------------

    def load_record(self, key: bytes, value: bytes | None) -> None:
        """Replay one record of `__consumer_offsets` (in log order) into the cache."""
        k = gm.decode_key(key)
        if isinstance(k, gm.OffsetKey):
            if value is None:
                group = self._groups.get(k.group)
                if group is not None:
                    group.offsets.pop((k.topic, k.partition), None)
                return
            v = gm.decode_offset_value(value)
            group = self._groups.get(k.group)
            if group is None:
                group = self._groups[k.group] = Group(k.group, state_ts=v.commit_ts)
            group.offsets[(k.topic, k.partition)] = OffsetEntry(
                v.offset, v.leader_epoch, v.metadata, v.commit_ts)
            return
        if value is None:
            self._groups.pop(k.group, None)
            return
        gv = gm.decode_group_value(value)
        group = self._groups.get(k.group) or Group(k.group)
        self._groups[k.group] = group
        group.protocol_type = gv.protocol_type or None
        group.generation = gv.generation
        group.protocol = gv.protocol
        group.leader = gv.leader
        group.state_ts = gv.state_ts
        group.members = {}
        group.static_members = {}
        for mv in gv.members:
            protocols = [(gv.protocol, mv.subscription)] if gv.protocol else []
            group.members[mv.member_id] = Member(
                mv.member_id, mv.group_instance_id, mv.client_id, mv.client_host,
                mv.session_timeout_ms, mv.rebalance_timeout_ms, protocols, mv.assignment)
            if mv.group_instance_id is not None:
                group.static_members[mv.group_instance_id] = mv.member_id
        group.state = S.STABLE if group.members else S.EMPTY

    def finish_load(self, partition: int) -> None:
        """The partition is loaded: members found in it get a fresh session from now."""
        now = self._now()
        for group in self._groups.values():
            if self.partition_of(group.group_id) != partition:
                continue
            for m in group.members.values():
                m.last_heartbeat_ms = now
                self._schedule_session(group, m)

    def unload(self, partition: int) -> None:
        """Drop the groups of a partition this coordinator no longer leads."""
        for gid in [g for g in self._groups if self.partition_of(g) == partition]:
            group = self._groups.pop(gid)
            for m in group.members.values():
                if m.join_waiter:
                    m.join_waiter(JoinResult(E.NOT_COORDINATOR, member_id=m.member_id))
                if m.sync_waiter:
                    m.sync_waiter(SyncResult(E.NOT_COORDINATOR))

    # ---- time ---------------------------------------------------------------------------

    def _schedule_session(self, group: Group, member: Member) -> None:
        self._timers.schedule(member.last_heartbeat_ms + member.session_timeout_ms,
                              ("session", group.group_id, member.member_id))

    def tick(self) -> None:
        """Fire every deadline that has passed."""
        now = self._now()
        for key in self._timers.pop_due(now):
            kind = key[0]
            if kind == "expire":
                self.expire_offsets()
                self._timers.schedule(now + self.config.retention_check_interval_ms, ("expire",))
                continue
            group = self._groups.get(key[1])
            if group is None:
                continue
            if kind == "session":
                self._on_session_timer(group, key[2], now)
            elif kind == "pending":
                deadline = group.pending_members.get(key[2])
                if deadline is not None and deadline <= now:
                    del group.pending_members[key[2]]
                    self._check_join_complete(group)
            elif kind in ("join", "join-check"):
                if group.state is S.PREPARING_REBALANCE and group.rebalances == key[2]:
                    if kind == "join":
                        self._complete_join(group)
                    else:
                        self._check_join_complete(group)
            elif kind == "sync":
                self._on_sync_timer(group, key[2])

    def _on_session_timer(self, group: Group, member_id: str, now: int) -> None:
        member = group.members.get(member_id)
        if member is None:
            return
        if member.join_waiter is not None or member.sync_waiter is not None:
            # Parked in a barrier: the rebalance/sync timers bound that wait instead.
            member.last_heartbeat_ms = now
        deadline = member.last_heartbeat_ms + member.session_timeout_ms
        if deadline > now:
            self._timers.schedule(deadline, ("session", group.group_id, member_id))
            return
        self._member_gone(group, member, "session timeout")

    def _on_sync_timer(self, group: Group, generation: int) -> None:
        if group.state is not S.COMPLETING_REBALANCE or group.generation != generation:
            return
        # The leader's assignment never came (or not every member asked for its share).
        for m in [m for m in group.members.values() if m.member_id not in group.synced]:
            self._remove_member(group, m)
        self._prepare_rebalance(group, "members did not sync in time")
        self._check_join_complete(group)

    def expire_offsets(self) -> None:
        """Tombstone committed offsets of empty groups older than the retention (KIP-211)."""
        now = self._wall()
        retention = self.config.offsets_retention_ms
        for group in list(self._groups.values()):
            if group.state is not S.EMPTY:
                continue
            if not group.offsets and not group.pending_members:
                # An empty group with nothing committed (a consumer that joined and left, or
                # a first join that never came back) is forgotten, as Kafka does.
                self._set_state(group, S.DEAD)
                del self._groups[group.group_id]
                self._writer.append(self.partition_of(group.group_id),
                                    [(gm.group_key(group.group_id), None)], lambda _err: None)
                continue
            expired = [tp for tp, e in group.offsets.items()
                       if max(e.commit_ts, group.state_ts) + retention <= now]
            if not expired:
                continue
            records: Records = [(gm.offset_key(group.group_id, t, p), None) for t, p in expired]
            drop_group = len(expired) == len(group.offsets)
            if drop_group:
                records.append((gm.group_key(group.group_id), None))
            for tp in expired:
                del group.offsets[tp]
            if drop_group:
                self._set_state(group, S.DEAD)
                del self._groups[group.group_id]
            self._writer.append(self.partition_of(group.group_id), records, lambda _err: None)
