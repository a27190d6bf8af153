"""Assignors: every partition to exactly one subscriber, balance, and cooperative stickiness."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qnode.sdk.assignors import (
    CooperativeStickyAssignor,
    RangeAssignor,
    RoundRobinAssignor,
    get_assignor,
)
from qnode.sdk.group_protocol import Assignment, GroupProtocolError, Subscription


def subs(members: dict[str, list[str]], owned=None, generation=1):
    owned = owned or {}
    return {m: Subscription(t, owned.get(m, []), generation) for m, t in members.items()}


def check_complete(result, partitions, members):
    seen = {}
    for m, tps in result.items():
        for tp in tps:
            assert tp not in seen, f"{tp} given to {seen.get(tp)} and {m}"
            assert tp[0] in members[m], f"{m} got {tp} without subscribing"
            seen[tp] = m
    wanted = {(t, p) for t, n in partitions.items() if any(t in ts for ts in members.values())
              for p in range(n)}
    assert set(seen) == wanted


def test_range_gives_contiguous_ranges():
    r = RangeAssignor().assign({"t": 7}, subs({"b": ["t"], "a": ["t"], "c": ["t"]}))
    assert r == {"a": [("t", 0), ("t", 1), ("t", 2)], "b": [("t", 3), ("t", 4)],
                 "c": [("t", 5), ("t", 6)]}


def test_roundrobin_deals_in_turn_and_skips_non_subscribers():
    r = RoundRobinAssignor().assign({"x": 3, "y": 2}, subs({"a": ["x", "y"], "b": ["x"]}))
    assert r == {"a": [("x", 0), ("x", 2), ("y", 0), ("y", 1)], "b": [("x", 1)]}


members_st = st.dictionaries(
    st.sampled_from([f"m{i}" for i in range(8)]),
    st.lists(st.sampled_from(["t0", "t1", "t2"]), min_size=1, max_size=3, unique=True),
    min_size=1, max_size=8)
parts_st = st.fixed_dictionaries({"t0": st.integers(0, 12), "t1": st.integers(0, 12),
                                  "t2": st.integers(0, 5)})


@settings(max_examples=150, deadline=None)
@given(members_st, parts_st)
def test_eager_assignors_cover_everything_once(members, partitions):
    for assignor in (RangeAssignor(), RoundRobinAssignor()):
        check_complete(assignor.assign(partitions, subs(members)), partitions, members)


def converge(partitions, members, owned, generation=1, max_rounds=4):
    """Run cooperative rebalances until stable; check no two owners at any point."""
    a = CooperativeStickyAssignor()
    rounds = []
    for _ in range(max_rounds):
        result = a.assign(partitions, subs(members, owned, generation))
        # members revoke what they lost; nobody receives a partition someone still owns
        for m, tps in result.items():
            for tp in tps:
                holders = [o for o, ps in owned.items() if tp in ps and o != m and o in members]
                assert not holders, f"{tp} given to {m} while {holders} still own it"
        rounds.append(result)
        revoked = any(set(owned.get(m, [])) - set(tps) for m, tps in result.items())
        owned = {m: list(tps) for m, tps in result.items()}
        generation += 1
        if not revoked:
            return owned, rounds
    raise AssertionError("cooperative rebalance did not converge")


@settings(max_examples=150, deadline=None)
@given(members_st, parts_st)
def test_cooperative_sticky_converges_to_complete_assignment(members, partitions):
    final, _ = converge(partitions, members, {})
    check_complete(final, partitions, members)


def test_cooperative_sticky_is_balanced_and_keeps_partitions_when_a_member_joins():
    members = {f"m{i}": ["t"] for i in range(3)}
    final, _ = converge({"t": 12}, members, {})
    assert sorted(len(v) for v in final.values()) == [4, 4, 4]
    members["m3"] = ["t"]
    first_phase = CooperativeStickyAssignor().assign({"t": 12}, subs(members, final, 2))
    # phase one: the newcomer gets nothing yet, the others only lose (never gain or swap)
    assert first_phase["m3"] == []
    for m in ("m0", "m1", "m2"):
        assert set(first_phase[m]) <= set(final[m]) and len(first_phase[m]) == 3
    after, _ = converge({"t": 12}, members, final, generation=2)
    assert sorted(len(v) for v in after.values()) == [3, 3, 3, 3]
    moved = sum(len(set(final[m]) - set(after[m])) for m in final)
    assert moved == 3  # the minimum: exactly the newcomer's share


def test_cooperative_sticky_member_leaving_moves_only_its_partitions():
    members = {f"m{i}": ["t"] for i in range(4)}
    final, _ = converge({"t": 10}, members, {})
    del members["m1"]
    owned = {m: v for m, v in final.items() if m != "m1"}
    after, rounds = converge({"t": 10}, members, owned, generation=2)
    assert len(rounds) == 1  # nothing to revoke: one rebalance
    for m in members:
        assert set(final[m]) <= set(after[m])
    check_complete(after, {"t": 10}, members)


def test_conflicting_claims_prefer_newest_generation():
    a = CooperativeStickyAssignor()
    s = {"a": Subscription(["t"], [("t", 0)], 5), "b": Subscription(["t"], [("t", 0)], 3)}
    r = a.assign({"t": 2}, s)
    assert ("t", 0) in r["a"] and ("t", 0) not in r["b"]


def test_formats_round_trip_and_reject_garbage():
    s = Subscription(["b", "a"], [("a", 1), ("a", 0)], 7, b"u")
    back = Subscription.decode(s.encode())
    assert back.topics == ["a", "b"] and back.owned_partitions == [("a", 0), ("a", 1)]
    assert back.generation == 7 and back.user_data == b"u"
    asg = Assignment([("t", 2), ("s", 0)], b"x")
    assert Assignment.decode(asg.encode()) == Assignment([("s", 0), ("t", 2)], b"x")
    assert Assignment.decode(b"") == Assignment()
    for bad in (b"\xc1", b"\x93\x00\x01\x02", b"\x92\x01\x05"):
        with pytest.raises(GroupProtocolError):
            Subscription.decode(bad)


def test_get_assignor_names():
    assert get_assignor("cooperative-sticky").cooperative
    with pytest.raises(ValueError, match="allowed are range"):
        get_assignor("sticky-ish")
