"""kill -9 of the whole node (a power cut) then restart: topics, configs, placement and
acknowledged records (flush.messages=1) are all there; no shm name of the dead node leaks."""

from __future__ import annotations

from conftest import RawClient, wait_for

from qnode.storage.batch_builder import BatchBuilder
from qnode.storage.batch_reader import iter_records
from qnode.transport.api import ApiKey


def produce(client: RawClient, topic: str, partition: int, values: list[bytes]) -> int:
    b = BatchBuilder()
    for v in values:
        b.append(None, v)
    body = {
        "acks": 1,
        "timeout_ms": 5000,
        "transactional_id": None,
        "topics": [{"name": topic, "partitions": [{"partition": partition, "frame": 0}]}],
    }
    resp = client.call(ApiKey.PRODUCE, body, data=(b.build(),))
    p = resp.body["topics"][0]["partitions"][0]
    assert resp.error_code == 0 and p["error"] == 0, resp.body
    return p["base_offset"]


def fetch_values(client: RawClient, topic: str, partition: int) -> list[bytes]:
    body = {
        "replica_id": -1,
        "max_wait_ms": 0,
        "min_bytes": 1,
        "max_bytes": 1 << 20,
        "isolation_level": 0,
        "topics": [{"name": topic, "partitions": [{"partition": partition, "fetch_offset": 0}]}],
    }
    resp = client.call(ApiKey.FETCH, body)
    p = resp.body["topics"][0]["partitions"][0]
    assert p["error"] == 0, resp.body
    data = b"".join(bytes(resp.data[k]) for k in p["frames"])
    return [r.value for r in iter_records(data)]


def partitions(client: RawClient, topic: str) -> list[dict]:
    md = client.call(ApiKey.METADATA, {"topics": [topic], "include_offsets": True}).body
    return md["topics"][0]["partitions"]


def test_power_cut_then_restart_keeps_topics_and_acked_records(
    node_factory, raw_client_factory
) -> None:
    n = node_factory(workers=2, config={"flush.messages": 1})
    admin = raw_client_factory(n.bootstrap)
    created = admin.call(
        ApiKey.CREATE_TOPICS,
        {
            "topics": [
                {
                    "name": "orders",
                    "num_partitions": 2,
                    "replication_factor": 1,
                    "configs": {"retention.ms": "86400000"},
                }
            ]
        },
    ).body
    assert created["topics"][0]["error"] == 0
    before = partitions(admin, "orders")
    sent = {}
    for p in before:
        worker = raw_client_factory(p["endpoint"])
        values = [f"p{p['partition']}-{i}".encode() for i in range(50)]
        assert produce(worker, "orders", p["partition"], values[:25]) == 0
        assert produce(worker, "orders", p["partition"], values[25:]) == 25
        sent[p["partition"]] = values

    n.kill()  # supervisor and every child at once, SIGKILL
    assert n.returncode == -9
    n.restart()

    after = wait_for(
        lambda: (
            [p for p in partitions(admin, "orders") if p["endpoint"]]
            if all(p["endpoint"] and p["high_watermark"] == 50 for p in partitions(admin, "orders"))
            else None
        ),
        20,
        "both partitions served again with all 50 records",
    )
    assert [(p["partition"], p["worker"], p["leader_epoch"]) for p in after] == [
        (p["partition"], p["worker"], p["leader_epoch"]) for p in before
    ]
    for p in after:
        worker = raw_client_factory(p["endpoint"])
        assert fetch_values(worker, "orders", p["partition"]) == sent[p["partition"]]
    desc = admin.call(
        ApiKey.DESCRIBE_CONFIGS,
        {
            "resources": [
                {"type": "topic", "name": "orders", "keys": ["retention.ms", "flush.messages"]}
            ]
        },
    ).body
    values = {c["name"]: c["value"] for c in desc["resources"][0]["configs"]}
    assert values == {"retention.ms": "86400000", "flush.messages": "1"}
    n.stop()
    assert n.shm_names() == []
