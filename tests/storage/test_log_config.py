"""LogConfig: Kafka names, defaults, and ConfigError naming key, value and what is allowed."""

from __future__ import annotations

import pytest

from qnode.storage import ConfigError, LogConfig
from qnode.storage.log_config import TOPIC_CONFIG_KEYS


def test_defaults_are_kafkas():
    c = LogConfig.from_topic_config({})
    assert c.segment_bytes == 1 << 30 and c.segment_index_bytes == 10 << 20
    assert c.retention_ms == 7 * 24 * 3600 * 1000 and c.retention_bytes == -1
    assert c.cleanup_policy == ("delete",) and c.max_message_bytes == 1048588
    assert c.flush_messages is None and c.flush_ms is None  # rely on replication


def test_parses_kafka_names():
    c = LogConfig.from_topic_config({
        "segment.bytes": "1048576", "cleanup.policy": "compact,delete", "flush.messages": "1",
        "message.timestamp.type": "LogAppendTime", "min.cleanable.dirty.ratio": "0.25",
        "unclean.leader.election.enable": "true", "flush.ms": str(2**63 - 1),
    })
    assert c.segment_bytes == 1 << 20 and c.compact_enabled and c.delete_enabled
    assert c.flush_messages == 1 and c.flush_ms is None and c.log_append_time
    assert c.min_cleanable_dirty_ratio == 0.25 and c.unclean_leader_election_enable
    assert LogConfig.from_topic_config(c.to_topic_config()) == c
    assert set(c.to_topic_config()) == TOPIC_CONFIG_KEYS


@pytest.mark.parametrize("key, value, allowed", [
    ("segment.bytes", "big", "integer"),
    ("segment.bytes", "5", "[14,"),
    ("retention.ms", "-2", "[-1,"),
    ("cleanup.policy", "shred", "delete, compact"),
    ("message.timestamp.type", "Now", "CreateTime, LogAppendTime"),
    ("min.cleanable.dirty.ratio", "1.5", "[0, 1]"),
    ("preallocate", "yes", "true or false"),
    ("no.such.key", "1", "a topic config key"),
])
def test_config_error_names_key_value_and_allowed(key, value, allowed):
    with pytest.raises(ConfigError) as info:
        LogConfig.from_topic_config({key: value})
    err = info.value
    assert key in str(err) and repr(value) in str(err) and allowed in str(err)
    assert (err.key, err.value) == (key, value) and allowed in err.allowed


def test_unknown_keys_ignored_when_not_strict():
    assert LogConfig.from_topic_config({"x.y": "1"}, strict=False) == LogConfig()


def test_with_updates():
    c = LogConfig().with_updates({"retention.ms": "1000"})
    assert c.retention_ms == 1000 and c.segment_bytes == LogConfig().segment_bytes
