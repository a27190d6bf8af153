"""Consumer groups under faults: a consumer killed with -9, a node killed and restarted, many
rebalances (never two owners), stale generations, malformed group requests."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
import threading
import time

import msgpack

from qnode.sdk import Admin, Consumer, Producer, TopicPartition
from qnode.transport.api import ApiKey
from qnode.transport.errors import ErrorCode as E
from qnode.transport.frame import encode_request_header

FAST = {"session_timeout_ms": 1500, "heartbeat_interval_ms": 100}


def produce(bootstrap: str, topic: str, n: int, partitions: int) -> None:
    with Admin(bootstrap=bootstrap) as admin:
        admin.create_topic(topic, partitions=partitions)
    with Producer(bootstrap=bootstrap, acks="all", linger_ms=1) as p:
        for i in range(n):
            p.send(topic, value=b"%d" % i, partition=i % partitions)
        p.flush()


CONSUMER_SCRIPT = textwrap.dedent("""
    import sys, time
    from qnode.sdk import Consumer
    c = Consumer(bootstrap=sys.argv[1], group_id="killed", auto_offset_reset="earliest",
                 enable_auto_commit=False, session_timeout_ms=1500, heartbeat_interval_ms=100,
                 max_poll_records=5, client_id="victim")
    c.subscribe(["k"])
    while True:
        records = c.poll(0.1)
        for r in records:
            print("rec", r.partition, r.offset, flush=True)
        if records:
            c.commit()
            for tp, off in c._positions().items():
                print("commit", tp.partition, off, flush=True)
        time.sleep(0.02)
""")


def test_killed_consumer_partitions_move_and_resume_from_last_commit(node):
    produce(node.bootstrap, "k", 400, 2)
    victim = subprocess.Popen([sys.executable, "-c", CONSUMER_SCRIPT, node.bootstrap],
                              stdout=subprocess.PIPE, text=True)
    survivor = None
    victim_recs: dict[int, set[int]] = {0: set(), 1: set()}
    victim_commit: dict[int, int] = {}

    def parse(line: str) -> None:
        f = line.split()
        if f and f[0] == "rec":
            victim_recs[int(f[1])].add(int(f[2]))
        elif f and f[0] == "commit":
            victim_commit[int(f[1])] = int(f[2])

    try:
        assert victim.stdout is not None
        deadline = time.monotonic() + 30
        while sum(map(len, victim_recs.values())) < 40:  # it processes and commits a while
            assert time.monotonic() < deadline and victim.poll() is None, "victim stalled"
            parse(victim.stdout.readline())
        victim.kill()  # kill -9 mid-stream: no leave, no final commit
        victim.wait(10)
        for line in victim.stdout.read().splitlines():
            parse(line)
        assert victim_commit, "the victim committed nothing before it died"
        survivor = Consumer(bootstrap=node.bootstrap, group_id="killed",
                            auto_offset_reset="earliest", enable_auto_commit=False, **FAST)
        started = time.monotonic()
        survivor.subscribe(["k"])
        seen: dict[int, list[int]] = {0: [], 1: []}
        deadline = time.monotonic() + 30
        while any(not s or s[-1] < 199 for s in seen.values()):
            assert time.monotonic() < deadline, {p: len(s) for p, s in seen.items()}
            for r in survivor.poll(0.05):
                seen[r.partition].append(r.offset)
        # the victim's slot is freed only by its session timeout
        assert time.monotonic() - started >= 1.0
        for p in (0, 1):
            start = seen[p][0]
            # resumed at the last commit: nothing skipped, at most uncommitted work redone
            assert victim_commit.get(p, 0) <= start
            assert start <= (max(victim_recs[p]) + 1 if victim_recs[p] else 0)
            assert seen[p] == list(range(start, 200))
            assert victim_recs[p] | set(seen[p]) == set(range(200))
    finally:
        if victim.poll() is None:
            victim.kill()
            victim.wait(10)
        if survivor is not None:
            survivor.close()


def test_node_kill_and_restart_keeps_committed_offsets(node):
    produce(node.bootstrap, "dur", 30, 3)
    tps = [TopicPartition("dur", p) for p in range(3)]
    with Consumer(bootstrap=node.bootstrap, group_id="durable", auto_offset_reset="earliest",
                  enable_auto_commit=False, **FAST) as c:
        c.subscribe(["dur"])
        got = []
        deadline = time.monotonic() + 20
        while len(got) < 30:
            assert time.monotonic() < deadline
            got += c.poll(0.05)
        c.commit({tps[0]: 4, tps[1]: 7, tps[2]: 10})
    node.kill()  # kill -9 of supervisor, coordinator and workers at once
    node.restart()
    with Consumer(bootstrap=node.bootstrap, group_id="durable", auto_offset_reset="latest",
                  request_timeout_ms=10000, **FAST) as c:
        assert c.committed(tps) == {tps[0]: 4, tps[1]: 7, tps[2]: 10}
        c.subscribe(["dur"])
        got = []
        deadline = time.monotonic() + 20
        while len(got) < 30 - 21:
            assert time.monotonic() < deadline
            got += c.poll(0.05)
        assert sorted((r.partition, r.offset) for r in got) == \
            [(0, o) for o in range(4, 10)] + [(1, o) for o in range(7, 10)]


def test_never_two_owners_across_many_rebalances(node):
    produce(node.bootstrap, "own", 12, 12)
    owner: dict[tuple[str, TopicPartition], str] = {}  # (group, partition) → member
    violations: list[str] = []
    lock = threading.Lock()
    stop = time.monotonic() + 6
    rebalances = [0]

    def member(name: str, strategy: str, seed: int) -> None:
        rnd = random.Random(seed)
        while time.monotonic() < stop:
            def assigned(tps, me=name):
                with lock:
                    rebalances[0] += 1
                    for tp in tps:
                        held = owner.get((strategy, tp))
                        if held not in (None, me):
                            violations.append(f"{tp} to {me} while {held} owns it")
                        owner[(strategy, tp)] = me

            def revoked(tps, me=name):
                with lock:
                    for tp in tps:
                        if owner.get((strategy, tp)) == me:
                            del owner[(strategy, tp)]

            c = Consumer(bootstrap=node.bootstrap, group_id=f"own-{strategy}",
                         auto_offset_reset="earliest", partition_assignment_strategy=strategy,
                         **FAST)
            try:
                c.subscribe(["own"], on_assign=assigned, on_revoke=revoked, on_lost=revoked)
                life = time.monotonic() + rnd.uniform(0.5, 2.0)
                while time.monotonic() < min(life, stop):
                    c.poll(0.05)
            finally:
                c.close()  # revokes (on_revoke) then leaves: the others rebalance at once

    threads = [threading.Thread(target=member, args=(f"{s}-{i}", s, i))
               for s in ("range", "cooperative-sticky") for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads)
    assert not violations, violations[:5]
    assert rebalances[0] >= 10  # the check ran across many generations


def test_stale_generation_commit_is_rejected(node, raw_client_factory):
    produce(node.bootstrap, "stale", 2, 2)
    a = Consumer(bootstrap=node.bootstrap, group_id="stale", enable_auto_commit=False, **FAST)
    b = Consumer(bootstrap=node.bootstrap, group_id="stale", enable_auto_commit=False, **FAST)
    try:
        a.subscribe(["stale"])
        deadline = time.monotonic() + 20
        while len(a.assignment()) != 2:
            assert time.monotonic() < deadline
            a.poll(0.05)
        old = a.group_metadata()
        b.subscribe(["stale"])
        while len(b.assignment()) != 1 or len(a.assignment()) != 1:
            assert time.monotonic() < deadline
            a.poll(0.05)
            b.poll(0.05)
        assert a.group_metadata()["generation_id"] > old["generation_id"]
        raw = raw_client_factory(node.bootstrap)
        resp = raw.call(ApiKey.OFFSET_COMMIT, {
            "group_id": "stale", "generation_id": old["generation_id"],
            "member_id": old["member_id"], "group_instance_id": None,
            "topics": [{"name": "stale", "partitions": [{"partition": 0, "offset": 1}]}]})
        assert resp.body["topics"][0]["partitions"][0]["error"] == E.ILLEGAL_GENERATION
        assert a.committed(TopicPartition("stale", 0)) is None
    finally:
        a.close()
        b.close()


def test_malformed_group_requests_get_errors_and_node_keeps_serving(node, raw_client_factory):
    raw = raw_client_factory(node.bootstrap)
    r = raw.call(ApiKey.JOIN_GROUP, {"group_id": "g", "protocols": []})
    assert r.error_code == E.INVALID_REQUEST and "session_timeout_ms" in r.body["message"]
    r = raw.call(ApiKey.SYNC_GROUP, {"group_id": "g", "generation_id": 1, "member_id": "m",
                                     "assignments": [{"member_id": "m", "assignment": 5}]})
    assert r.error_code == E.INVALID_REQUEST
    r = raw.call(ApiKey.OFFSET_COMMIT, {"group_id": 7, "topics": []})
    assert r.error_code == E.INVALID_REQUEST and "group_id" in r.body["message"]
    raw.send([encode_request_header(ApiKey.HEARTBEAT, 0, 99, "t"), b"\xc1\xc1 not msgpack"])
    r = raw.recv()
    assert r.error_code == E.INVALID_REQUEST and r.correlation_id == 99
    raw.send([encode_request_header(ApiKey.LEAVE_GROUP, 0, 100, "t"),
              msgpack.packb(["a", "list"])])
    assert raw.recv().error_code == E.INVALID_REQUEST
    r = raw.call(ApiKey.HEARTBEAT, {"group_id": "", "generation_id": 1, "member_id": "m"})
    assert r.body["error"] == E.INVALID_GROUP_ID
    r = raw.call(ApiKey.JOIN_GROUP, {"group_id": "g", "session_timeout_ms": 10**9,
                                     "protocols": [{"name": "range", "metadata": b""}]})
    assert r.body["error"] in (E.INVALID_SESSION_TIMEOUT, E.COORDINATOR_NOT_AVAILABLE,
                               E.COORDINATOR_LOAD_IN_PROGRESS)
    # the group side still works afterwards
    r = raw.call(ApiKey.FIND_COORDINATOR, {"key": "g", "key_type": 0})
    assert r.body["error"] == 0 and r.body["endpoint"] == node.bootstrap
