"""The worker's pure parts: parked-fetch bookkeeping and the metadata follower."""

from __future__ import annotations

import pytest

from qnode.coordinator import records as rec
from qnode.coordinator.image import MetadataImage
from qnode.node.fetch_waiters import FetchWaiters, ParkedFetch
from qnode.node.metadata_follower import MetadataFollower, MetadataGapError
from qnode.node.worker import MAX_TICK_GAP_S, TICK_DUTY, tick_gap
from qnode.transport.errors import ErrorCode


def _fetch(deadline: float, *keys: tuple[str, int]) -> ParkedFetch:
    return ParkedFetch(b"id", 0, 1, {}, deadline, tuple(keys))


def test_waiters_wake_expire_remove_drain() -> None:
    w = FetchWaiters()
    a = _fetch(10.0, ("t", 0), ("t", 1))
    b = _fetch(5.0, ("t", 1))
    c = _fetch(20.0, ("u", 0))
    for f in (a, b, c):
        w.park(f)
    assert len(w) == 3 and w.next_deadline() == 5.0
    assert w.woken([("t", 1), ("t", 0)]) == [a, b]  # each once, in parking order
    assert w.woken([("x", 9)]) == []
    w.remove(a)
    assert w.woken([("t", 0)]) == [] and w.woken([("t", 1)]) == [b]
    assert not w.has_waiters(("t", 0))
    assert w.expired(4.0) == [] and w.expired(6.0) == [b]
    assert w.next_deadline() == 20.0  # a's stale heap entry was skipped
    assert len(w) == 1
    w.remove(b)  # already gone: no double count
    assert len(w) == 1
    assert w.drain() == [c] and len(w) == 0 and w.next_deadline() is None


def _wire(records: list[dict], start: int = 0) -> list[dict]:
    return [{**r, "offset": start + i, "term": 1} for i, r in enumerate(records)]


def test_follower_applies_in_order_and_reports_placement() -> None:
    f = MetadataFollower(node_id=0, worker_id=1)
    recs = [
        rec.topic("a", "id-a", {"retention.ms": "5"}),
        rec.partition("a", 0, [0], [0], 0, 3, 0),
        rec.partition("a", 1, [0], [0], 0, 4, 1),
        rec.topic("b", "id-b", {}),
        rec.partition("b", 0, [2], [2], 2, 0, 1),
    ]  # another node's replica
    assert f.apply_response({"records": _wire(recs), "next_offset": 5}) == 5
    owned = f.owned()
    assert list(owned) == [("a", 1)]
    p = owned[("a", 1)]
    assert (p.topic_id, p.leader_epoch, p.configs) == ("id-a", 4, {"retention.ms": "5"})
    assert f.missing_error("a", 0) == ErrorCode.NOT_LEADER_OR_FOLLOWER
    assert f.missing_error("a", 7) == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    assert f.missing_error("zz", 0) == ErrorCode.UNKNOWN_TOPIC_OR_PARTITION
    # a resent answer is not applied twice; offsets may jump (non-metadata log entries)
    assert f.apply_response({"records": _wire(recs), "next_offset": 5}) == 0
    more = _wire([rec.config("a", {"retention.ms": "9"})], start=7)
    assert f.apply_response({"records": more, "next_offset": 9}) == 1
    assert f.next_offset == 9
    assert f.owned()[("a", 1)].configs == {"retention.ms": "9"}
    assert f.owned()[("a", 1)].config_version == 1
    gone = _wire([rec.remove_topic("a")], start=9)
    f.apply_response({"records": gone, "next_offset": 10})
    assert f.owned() == {}


def test_follower_snapshot_replaces_state_and_bad_records_raise() -> None:
    img = MetadataImage()
    img.apply(rec.topic("s", "id-s", {}), 0)
    img.apply(rec.partition("s", 0, [0], [0], 0, 0, 0), 1)
    f = MetadataFollower(0, 0)
    f.apply_response({"records": _wire([rec.topic("old", "x", {})])})
    f.apply_response({"snapshot": img.to_dict(), "records": [], "next_offset": 2})
    assert list(f.owned()) == [("s", 0)] and "old" not in f.topic_names()
    with pytest.raises(rec.BadRecordError):
        f.apply_response({"records": [{"type": "nonsense", "offset": 2}]})
    with pytest.raises(MetadataGapError):
        f.apply_response({"records": [{"type": "topic"}]})
    assert f.next_offset == 2


def test_tick_gap_keeps_the_pace_for_few_logs_and_bounds_slow_ticks() -> None:
    assert tick_gap(0.25, 0.001) == 0.25  # a cheap tick: the configured interval
    slow = 0.010  # e.g. a thousand logs' files looked at
    assert tick_gap(0.25, slow) == pytest.approx(slow / TICK_DUTY)  # maintenance <= its share
    assert tick_gap(0.25, 10.0) == MAX_TICK_GAP_S  # never spaced out past the cap
    assert tick_gap(5.0, 10.0) == 5.0  # a configured interval above the cap stands
