"""Admin calls against a whole node: an acknowledged change is already applied by the workers,
and Metadata's offsets come from the workers' shared-memory tables."""

from __future__ import annotations

from conftest import RawClient

from qnode.storage.batch_builder import BatchBuilder
from qnode.transport.api import ApiKey
from qnode.transport.errors import ErrorCode


def produce_one(worker: RawClient, topic: str, partition: int) -> dict:
    b = BatchBuilder()
    b.append(b"k", b"v")
    body = {
        "acks": 1,
        "timeout_ms": 5000,
        "transactional_id": None,
        "topics": [{"name": topic, "partitions": [{"partition": partition, "frame": 0}]}],
    }
    return worker.call(ApiKey.PRODUCE, body, data=(b.build(),)).body["topics"][0]["partitions"][0]


def test_produce_right_after_create_and_delete(node, raw_client_factory) -> None:
    admin = raw_client_factory(node.bootstrap)
    for round_ in range(3):  # no retry anywhere: the ack means the workers have the change
        name = f"fresh{round_}"
        created = admin.call(
            ApiKey.CREATE_TOPICS,
            {
                "topics": [
                    {"name": name, "num_partitions": 4, "replication_factor": 1, "configs": {}}
                ]
            },
        )
        assert created.body["topics"][0]["error"] == 0
        md = admin.call(ApiKey.METADATA, {"topics": [name], "include_offsets": True}).body
        parts = md["topics"][0]["partitions"]
        assert all(p["error"] == 0 and p["endpoint"] for p in parts)
        assert all(
            (p["log_start_offset"], p["high_watermark"], p["log_end_offset"]) == (0, 0, 0)
            for p in parts
        ), "offsets come from the shm tables"
        for p in parts:
            result = produce_one(raw_client_factory(p["endpoint"]), name, p["partition"])
            assert result["error"] == 0 and result["base_offset"] == 0
        md = admin.call(ApiKey.METADATA, {"topics": [name], "include_offsets": True}).body
        assert [p["log_end_offset"] for p in md["topics"][0]["partitions"]] == [1, 1, 1, 1]

    deleted = admin.call(ApiKey.DELETE_TOPICS, {"topics": ["fresh0"]}).body
    assert deleted["topics"][0]["error"] == 0
    p0 = produce_one(raw_client_factory(parts[0]["endpoint"]), "fresh0", 0)
    assert p0["error"] in (ErrorCode.UNKNOWN_TOPIC_OR_PARTITION, ErrorCode.NOT_LEADER_OR_FOLLOWER)
    node.stop()
