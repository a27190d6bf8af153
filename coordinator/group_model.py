"""Plain data of the group coordinator: group states, members, and the protocol's results.

The state machine itself lives in `group_coordinator.py`; this module only holds the data it
moves around, so the wire handlers and the offsets loader can share it without importing the
logic. Results are what a waiting request is eventually answered with (JoinGroup and SyncGroup
are parked until their barrier completes, so answers travel through callbacks).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from enum import Enum

from qnode.transport.errors import ErrorCode


class GroupState(Enum):
    EMPTY = "Empty"
    PREPARING_REBALANCE = "PreparingRebalance"
    COMPLETING_REBALANCE = "CompletingRebalance"
    STABLE = "Stable"
    DEAD = "Dead"


@dataclass(slots=True)
class JoinResult:
    error: ErrorCode
    generation_id: int = -1
    protocol_name: str | None = None
    leader: str = ""
    member_id: str = ""
    # (member_id, group_instance_id, metadata): filled for the leader only
    members: list[tuple[str, str | None, bytes]] = field(default_factory=list)
    # a static member that rejoined a stable group: the leader must not recompute (KIP-814)
    skip_assignment: bool = False

    def body(self) -> dict:
        return {
            "error": int(self.error), "generation_id": self.generation_id,
            "protocol_name": self.protocol_name, "leader": self.leader,
            "member_id": self.member_id, "skip_assignment": self.skip_assignment,
            "members": [{"member_id": m, "group_instance_id": i, "metadata": md}
                        for m, i, md in self.members],
        }


@dataclass(slots=True)
class SyncResult:
    error: ErrorCode
    assignment: bytes = b""

    def body(self) -> dict:
        return {"error": int(self.error), "assignment": self.assignment}


JoinCallback = Callable[[JoinResult], None]
SyncCallback = Callable[[SyncResult], None]


@dataclass(slots=True)
class JoinRequest:
    group_id: str
    member_id: str
    group_instance_id: str | None
    session_timeout_ms: int
    rebalance_timeout_ms: int
    protocol_type: str
    protocols: list[tuple[str, bytes]]
    client_id: str = ""
    client_host: str = ""


@dataclass(slots=True)
class Member:
    member_id: str
    group_instance_id: str | None
    client_id: str
    client_host: str
    session_timeout_ms: int
    rebalance_timeout_ms: int
    protocols: list[tuple[str, bytes]]
    assignment: bytes = b""
    last_heartbeat_ms: int = 0
    join_waiter: JoinCallback | None = None
    sync_waiter: SyncCallback | None = None

    def metadata_for(self, protocol: str) -> bytes:
        for name, md in self.protocols:
            if name == protocol:
                return md
        raise KeyError(protocol)

    def protocol_names(self) -> list[str]:
        return [name for name, _ in self.protocols]


@dataclass(slots=True)
class OffsetEntry:
    offset: int
    leader_epoch: int
    metadata: str
    commit_ts: int


@dataclass(slots=True)
class Group:
    group_id: str
    state: GroupState = GroupState.EMPTY
    protocol_type: str | None = None
    protocol: str | None = None
    generation: int = 0
    leader: str | None = None
    members: dict[str, Member] = field(default_factory=dict)
    # member ids handed out with MEMBER_ID_REQUIRED, not joined yet → deadline (ms)
    pending_members: dict[str, int] = field(default_factory=dict)
    static_members: dict[str, str] = field(default_factory=dict)  # instance id → member id
    offsets: dict[tuple[str, int], OffsetEntry] = field(default_factory=dict)
    rebalance_deadline_ms: int = 0
    initial_deadline_ms: int = 0  # delayed first join of an empty group
    synced: set[str] = field(default_factory=set)
    state_ts: int = 0  # when the state last changed (offsets of an empty group expire from it)
    rebalances: int = 0  # token: stale timers of an earlier rebalance do nothing

    def supports(self, protocol_type: str, protocols: list[str]) -> bool:
        """May a member with these protocols join (Kafka: a common protocol must remain)?"""
        if not protocol_type or not protocols:
            return False
        if not self.members:
            return self.protocol_type in (None, protocol_type)
        if protocol_type != self.protocol_type:
            return False
        common = set(protocols)
        for m in self.members.values():
            common &= set(m.protocol_names())
        return bool(common)

    def select_protocol(self) -> str:
        """The protocol every member supports that most members list first."""
        members = list(self.members.values())
        candidates = set(members[0].protocol_names())
        for m in members[1:]:
            candidates &= set(m.protocol_names())
        assert candidates, "join admitted a member without a common protocol"
        votes: dict[str, int] = {}
        for m in members:
            best = next(p for p in m.protocol_names() if p in candidates)
            votes[best] = votes.get(best, 0) + 1
        order = [p for p in members[0].protocol_names() if p in candidates]
        return max(order, key=lambda p: (votes.get(p, 0), -order.index(p)))
