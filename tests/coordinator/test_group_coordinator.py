"""The group state machine, driven by a controllable clock and a recording offsets writer."""

from __future__ import annotations

import pytest

from qnode.coordinator import group_metadata as gm
from qnode.coordinator.group_coordinator import CommitItem, GroupConfig, GroupCoordinator
from qnode.coordinator.group_model import GroupState, JoinRequest, JoinResult, SyncResult
from qnode.transport.errors import ErrorCode as E

S = GroupState


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000

    def __call__(self) -> int:
        return self.now


class RecordingWriter:
    """Keeps every append in order; completes at once unless `hold` is set."""

    def __init__(self) -> None:
        self.records: list[tuple[int, bytes, bytes | None]] = []
        self.hold = False
        self.held: list = []
        self.error = E.NONE

    def append(self, partition, records, done) -> None:
        if self.hold:
            self.held.append((partition, records, done))
            return
        self._complete(partition, records, done)

    def _complete(self, partition, records, done) -> None:
        if not self.error:
            self.records += [(partition, k, v) for k, v in records]
        done(self.error)

    def release(self) -> None:
        held, self.held = self.held, []
        for args in held:
            self._complete(*args)


class Box:
    """Collects what a parked request was answered with."""

    def __init__(self) -> None:
        self.value = None

    def __call__(self, value) -> None:
        assert self.value is None, "a request was answered twice"
        self.value = value


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def writer() -> RecordingWriter:
    return RecordingWriter()


@pytest.fixture
def gc(clock, writer) -> GroupCoordinator:
    return GroupCoordinator(GroupConfig(num_partitions=4), writer, clock)


def req(member_id="", group="g", instance=None, protocols=None, session=1000, rebalance=2000):
    return JoinRequest(group, member_id, instance, session, rebalance, "consumer",
                       protocols or [("range", b"sub")], "client", "127.0.0.1")


def join(gc, **kw) -> Box:
    box = Box()
    gc.join_group(req(**kw), box)
    return box


def new_member(gc, **kw) -> Box:
    """Full KIP-394 join: MEMBER_ID_REQUIRED, then the join with the id handed out."""
    first = join(gc, **kw)
    assert first.value.error == E.MEMBER_ID_REQUIRED
    return join(gc, member_id=first.value.member_id, **kw)


def sync(gc, res: JoinResult, assignments=None, group="g") -> Box:
    box = Box()
    gc.sync_group(group, res.generation_id, res.member_id, None, assignments or {}, box)
    return box


def test_single_member_joins_leads_and_syncs(gc):
    j = new_member(gc)
    res = j.value
    assert res.error == E.NONE and res.generation_id == 1 and res.leader == res.member_id
    assert res.protocol_name == "range"
    assert [m[0] for m in res.members] == [res.member_id]
    assert gc.group("g").state is S.COMPLETING_REBALANCE
    s = sync(gc, res, {res.member_id: b"A"})
    assert s.value == SyncResult(E.NONE, b"A")
    assert gc.group("g").state is S.STABLE
    assert gc.heartbeat("g", 1, res.member_id, None) == E.NONE


def test_second_member_triggers_rebalance_and_first_joiner_leads(gc):
    a = new_member(gc).value
    sync(gc, a, {a.member_id: b"all"})
    b_box = new_member(gc)
    assert b_box.value is None  # parked until a rejoins
    assert gc.group("g").state is S.PREPARING_REBALANCE
    assert gc.heartbeat("g", 1, a.member_id, None) == E.REBALANCE_IN_PROGRESS
    a2 = join(gc, member_id=a.member_id).value
    b = b_box.value
    assert a2.generation_id == b.generation_id == 2
    assert a2.leader == b.leader == a.member_id
    assert len(a2.members) == 2 and b.members == []
    sb = sync(gc, b)
    assert sb.value is None  # waits for the leader's assignment
    sa = sync(gc, a2, {a.member_id: b"x", b.member_id: b"y"})
    assert sa.value.assignment == b"x" and sb.value.assignment == b"y"


def test_rebalance_timeout_evicts_members_that_do_not_rejoin(gc, clock):
    a = new_member(gc).value
    sync(gc, a, {})
    b_box = new_member(gc)
    clock.now += 2000  # a's rebalance timeout
    gc.tick()
    b = b_box.value
    assert b.error == E.NONE and b.generation_id == 2 and b.leader == b.member_id
    assert a.member_id not in gc.group("g").members
    assert gc.heartbeat("g", 2, a.member_id, None) == E.UNKNOWN_MEMBER_ID


def test_session_timeout_evicts_and_heartbeats_keep_alive(gc, clock):
    a = new_member(gc).value
    sync(gc, a, {})
    b_box = new_member(gc)
    a2 = join(gc, member_id=a.member_id).value
    b = b_box.value
    sync(gc, b)
    sync(gc, a2, {})
    clock.now += 600
    assert gc.heartbeat("g", 2, a.member_id, None) == E.NONE
    gc.tick()
    assert b.member_id in gc.group("g").members
    for _ in range(4):  # b is silent past its 1000 ms session; a keeps heartbeating
        clock.now += 600
        assert gc.heartbeat("g", 2, a.member_id, None) in (E.NONE, E.REBALANCE_IN_PROGRESS)
        gc.tick()
    group = gc.group("g")
    assert a.member_id in group.members and b.member_id not in group.members
    assert group.state is S.PREPARING_REBALANCE
    assert gc.next_deadline() is not None


def test_stale_generation_and_unknown_member(gc):
    a = new_member(gc).value
    sync(gc, a, {})
    assert gc.heartbeat("g", 0, a.member_id, None) == E.ILLEGAL_GENERATION
    assert gc.heartbeat("g", 1, "nobody", None) == E.UNKNOWN_MEMBER_ID
    box = Box()
    gc.commit_offsets("g", 0, a.member_id, None, [CommitItem("t", 0, 5)], box)
    assert box.value == [("t", 0, E.ILLEGAL_GENERATION)]
    box = Box()
    gc.commit_offsets("g", 1, "nobody", None, [CommitItem("t", 0, 5)], box)
    assert box.value == [("t", 0, E.UNKNOWN_MEMBER_ID)]
    assert join(gc, member_id="nobody").value.error == E.UNKNOWN_MEMBER_ID
    s = Box()
    gc.sync_group("g", 7, a.member_id, None, {}, s)
    assert s.value.error == E.ILLEGAL_GENERATION


def test_leave_rebalances_and_last_leave_empties(gc):
    a = new_member(gc).value
    sync(gc, a, {})
    b_box = new_member(gc)
    a2 = join(gc, member_id=a.member_id).value
    b = b_box.value
    sync(gc, b)
    sync(gc, a2, {})
    top, per = gc.leave_group("g", [(a.member_id, None)])
    assert top == E.NONE and per == [E.NONE]
    assert gc.group("g").state is S.PREPARING_REBALANCE
    b2 = join(gc, member_id=b.member_id).value
    assert b2.leader == b.member_id and b2.generation_id == 3
    sync(gc, b2, {})
    assert gc.leave_group("g", [(b.member_id, None)])[0] == E.NONE
    assert gc.group("g").state is S.EMPTY
    assert gc.leave_group("g", [("ghost", None)])[0] == E.UNKNOWN_MEMBER_ID


def test_static_member_rejoins_without_rebalance_and_old_id_is_fenced(gc):
    a = join(gc, instance="i-a").value
    assert a.error == E.NONE  # static members need no MEMBER_ID_REQUIRED round
    b_box = join(gc, instance="i-b")
    a2 = join(gc, member_id=a.member_id, instance="i-a").value
    b = b_box.value
    sync(gc, b)
    sync(gc, a2, {a.member_id: b"PA", b.member_id: b"PB"})
    group = gc.group("g")
    assert group.state is S.STABLE and group.generation == 2
    # i-b restarts: new member id, same slot, same assignment, no new generation
    b_new = join(gc, instance="i-b").value
    assert b_new.error == E.NONE and b_new.member_id != b.member_id
    assert b_new.generation_id == 2 and b_new.skip_assignment
    assert group.state is S.STABLE and group.generation == 2
    s = Box()
    gc.sync_group("g", 2, b_new.member_id, "i-b", {}, s)
    assert s.value == SyncResult(E.NONE, b"PB")
    assert gc.heartbeat("g", 2, b.member_id, "i-b") == E.FENCED_INSTANCE_ID
    box = Box()
    gc.commit_offsets("g", 2, b.member_id, "i-b", [CommitItem("t", 0, 1)], box)
    assert box.value[0][2] == E.FENCED_INSTANCE_ID
    assert gc.heartbeat("g", 2, a.member_id, "i-a") == E.NONE


def test_protocol_selection_and_inconsistent_protocol(gc):
    a = new_member(gc, protocols=[("cooperative-sticky", b"1"), ("range", b"2")]).value
    assert a.protocol_name == "cooperative-sticky"
    sync(gc, a, {})
    b_box = new_member(gc, protocols=[("range", b"3")])
    a2 = join(gc, member_id=a.member_id, protocols=[("cooperative-sticky", b"1"),
                                                     ("range", b"2")]).value
    assert a2.protocol_name == b_box.value.protocol_name == "range"
    assert dict((m, md) for m, _, md in a2.members)[b_box.value.member_id] == b"3"
    assert join(gc, protocols=[("roundrobin", b"")]).value.error == E.INCONSISTENT_GROUP_PROTOCOL


def test_invalid_group_and_session_timeout(gc):
    assert join(gc, group="").value.error == E.INVALID_GROUP_ID
    assert join(gc, session=10).value.error == E.INVALID_SESSION_TIMEOUT
    assert join(gc, session=10**9).value.error == E.INVALID_SESSION_TIMEOUT


def test_commit_is_acknowledged_only_once_stored(gc, writer):
    writer.hold = True
    box = Box()
    gc.commit_offsets("g", -1, "", None, [CommitItem("t", 0, 10, 3, "m"),
                                          CommitItem("t", 1, -5)], box)
    assert box.value is None and gc.fetch_offsets("g", None) == {}
    writer.release()
    assert box.value == [("t", 0, E.NONE), ("t", 1, E.INVALID_COMMIT_OFFSET_SIZE)]
    entry = gc.fetch_offsets("g", [("t", 0), ("t", 1)])
    assert list(entry) == [("t", 0)] and entry[("t", 0)].offset == 10
    assert entry[("t", 0)].leader_epoch == 3 and entry[("t", 0)].metadata == "m"
    writer.hold = False
    writer.error = E.NOT_ENOUGH_REPLICAS
    box = Box()
    gc.commit_offsets("g", -1, "", None, [CommitItem("t", 0, 99)], box)
    assert box.value == [("t", 0, E.NOT_ENOUGH_REPLICAS)]
    assert gc.fetch_offsets("g", None)[("t", 0)].offset == 10


def test_simple_commit_refused_for_active_group_and_during_sync(gc):
    a = new_member(gc).value
    box = Box()
    gc.commit_offsets("g", 1, a.member_id, None, [CommitItem("t", 0, 1)], box)
    assert box.value[0][2] == E.REBALANCE_IN_PROGRESS
    sync(gc, a, {})
    box = Box()
    gc.commit_offsets("g", -1, "", None, [CommitItem("t", 0, 1)], box)
    assert box.value[0][2] == E.UNKNOWN_MEMBER_ID
    box = Box()
    gc.commit_offsets("g", 1, a.member_id, None, [CommitItem("t", 0, 7)], box)
    assert box.value[0][2] == E.NONE
    box = Box()
    gc.commit_offsets("new-group", 3, "x", None, [CommitItem("t", 0, 7)], box)
    assert box.value[0][2] == E.ILLEGAL_GENERATION


def test_delete_groups(gc, writer):
    a = new_member(gc).value
    sync(gc, a, {})
    gc.commit_offsets("g", 1, a.member_id, None, [CommitItem("t", 0, 5)], Box())
    box = Box()
    gc.delete_groups(["g", "missing"], box)
    assert box.value == [("g", E.NON_EMPTY_GROUP), ("missing", E.GROUP_ID_NOT_FOUND)]
    gc.leave_group("g", [(a.member_id, None)])
    box = Box()
    gc.delete_groups(["g"], box)
    assert box.value == [("g", E.NONE)] and gc.group("g") is None
    tombstones = {k for _, k, v in writer.records if v is None}
    assert gm.group_key("g") in tombstones and gm.offset_key("g", "t", 0) in tombstones


def test_reload_from_records_restores_offsets_and_members(gc, writer, clock):
    a = new_member(gc).value
    sync(gc, a, {a.member_id: b"ASSIGN"})
    gc.commit_offsets("g", 1, a.member_id, None, [CommitItem("t", 0, 42)], Box())
    gc.commit_offsets("g", 1, a.member_id, None, [CommitItem("t", 0, 43)], Box())
    gc.commit_offsets("other", -1, "", None, [CommitItem("t", 1, 7)], Box())
    fresh = GroupCoordinator(GroupConfig(num_partitions=4), RecordingWriter(), clock)
    for _p, k, v in writer.records:
        fresh.load_record(k, v)
    for p in range(4):
        fresh.finish_load(p)
    assert fresh.fetch_offsets("g", None)[("t", 0)].offset == 43
    assert fresh.fetch_offsets("other", None)[("t", 1)].offset == 7
    group = fresh.group("g")
    assert group.state is S.STABLE and group.generation == 1
    assert group.members[a.member_id].assignment == b"ASSIGN"
    assert fresh.heartbeat("g", 1, a.member_id, None) == E.NONE
    assert fresh.group("other").state is S.EMPTY


def test_sync_timeout_removes_members_when_leader_never_syncs(gc, clock):
    a = new_member(gc).value
    sync(gc, a, {})
    b_box = new_member(gc)
    join(gc, member_id=a.member_id)
    b = b_box.value
    sb = sync(gc, b)
    for _ in range(4):  # b keeps heartbeating; a (the leader) never sends its assignment
        clock.now += 600
        gc.heartbeat("g", 2, b.member_id, None)
        gc.tick()
    assert sb.value.error == E.REBALANCE_IN_PROGRESS
    assert a.member_id not in gc.group("g").members
    b2 = join(gc, member_id=b.member_id).value
    assert b2.leader == b.member_id and b2.generation_id == 3


def test_pending_member_expires_and_unblocks_join(gc, clock):
    a = new_member(gc).value
    sync(gc, a, {})
    first = join(gc).value  # gets an id but never comes back
    assert first.error == E.MEMBER_ID_REQUIRED
    b_box = new_member(gc)  # a real newcomer
    a2 = join(gc, member_id=a.member_id)
    assert a2.value is None  # still waiting for the pending member
    clock.now += 1000
    gc.tick()
    assert a2.value.error == E.NONE and b_box.value.error == E.NONE
    assert len(gc.group("g").members) == 2


def test_offsets_of_empty_group_expire_to_tombstones(clock, writer):
    gc = GroupCoordinator(GroupConfig(num_partitions=4, offsets_retention_ms=10_000,
                                      retention_check_interval_ms=1000), writer, clock)
    gc.commit_offsets("g", -1, "", None, [CommitItem("t", 0, 1)], Box())
    clock.now += 5000
    gc.commit_offsets("g", -1, "", None, [CommitItem("t", 1, 1)], Box())
    clock.now += 6000
    gc.tick()
    assert list(gc.fetch_offsets("g", None)) == [("t", 1)]
    assert writer.records[-1][1:] == (gm.offset_key("g", "t", 0), None)
    clock.now += 6000
    gc.tick()
    assert gc.group("g") is None
    assert writer.records[-1][1:] == (gm.group_key("g"), None)


def test_parked_requests_get_answered_on_unload(gc):
    a = new_member(gc).value
    sync(gc, a, {})
    b_box = new_member(gc)
    gc.unload(gc.partition_of("g"))
    assert b_box.value.error == E.NOT_COORDINATOR
    assert gc.group("g") is None


def test_config_from_kafka_names():
    cfg = GroupConfig.from_config({"offsets.topic.num.partitions": "7",
                                   "offsets.retention.minutes": "2"})
    assert cfg.num_partitions == 7 and cfg.offsets_retention_ms == 120_000
    with pytest.raises(ValueError, match="group.min.session.timeout.ms"):
        GroupConfig.from_config({"group.min.session.timeout.ms": "soon"})


def test_partition_for_is_stable():
    assert gm.partition_for("orders-app", 50) == gm.partition_for("orders-app", 50)
    spread = {gm.partition_for(f"g{i}", 50) for i in range(500)}
    assert len(spread) > 40


def test_empty_group_without_offsets_is_forgotten(clock, writer):
    gc = GroupCoordinator(GroupConfig(num_partitions=4, retention_check_interval_ms=1000),
                          writer, clock)
    a = new_member(gc).value
    sync(gc, a, {})
    gc.leave_group("g", [(a.member_id, None)])
    assert gc.group("g").state is S.EMPTY
    clock.now += 1000
    gc.tick()
    assert gc.group("g") is None
    assert writer.records[-1][1:] == (gm.group_key("g"), None)
