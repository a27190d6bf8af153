"""Per-topic log configuration under Kafka's topic config names.

`LogConfig.from_topic_config({"segment.bytes": "1048576", ...})` validates every key and value
and raises `ConfigError` naming the key, the value and what is allowed. Defaults are Kafka's.
"never" limits (flush.messages, flush.ms, ...) are Kafka's Long.MAX_VALUE and become None.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any

from qnode.storage.errors import ConfigError

LONG_MAX = 2**63 - 1


def config_error(key: str, value: object, allowed: str) -> ConfigError:
    err = ConfigError(f"invalid config {key}={value!r}: allowed {allowed}")
    err.key, err.value, err.allowed = key, value, allowed  # type: ignore[attr-defined]
    return err


@dataclass(frozen=True)
class LogConfig:
    segment_bytes: int = 1024**3
    segment_ms: int = 7 * 24 * 3600 * 1000
    segment_jitter_ms: int = 0
    segment_index_bytes: int = 10 * 1024 * 1024
    index_interval_bytes: int = 4096
    retention_ms: int = 7 * 24 * 3600 * 1000  # -1: keep forever
    retention_bytes: int = -1  # -1: no size limit
    cleanup_policy: tuple[str, ...] = ("delete",)
    max_message_bytes: int = 1048588
    flush_messages: int | None = None  # None: never by count (rely on replication)
    flush_ms: int | None = None  # None: never by time
    delete_retention_ms: int = 24 * 3600 * 1000
    min_compaction_lag_ms: int = 0
    max_compaction_lag_ms: int | None = None
    min_cleanable_dirty_ratio: float = 0.5
    file_delete_delay_ms: int = 60000
    message_timestamp_type: str = "CreateTime"
    message_timestamp_difference_max_ms: int | None = None
    compression_type: str = "producer"
    min_insync_replicas: int = 1
    unclean_leader_election_enable: bool = False
    preallocate: bool = False
    message_downconversion_enable: bool = True

    @property
    def delete_enabled(self) -> bool:
        return "delete" in self.cleanup_policy

    @property
    def compact_enabled(self) -> bool:
        return "compact" in self.cleanup_policy

    @property
    def log_append_time(self) -> bool:
        return self.message_timestamp_type == "LogAppendTime"

    @classmethod
    def from_topic_config(
        cls, configs: Mapping[str, str | int | float | bool] | None = None, *, strict: bool = True
    ) -> LogConfig:
        """Build from Kafka names; unknown keys are a ConfigError unless strict=False."""
        values: dict[str, Any] = {}
        for key, raw in (configs or {}).items():
            parser = _PARSERS.get(key)
            if parser is None:
                if strict:
                    allowed = "a topic config key: " + ", ".join(sorted(_PARSERS))
                    raise config_error(key, raw, allowed)
                continue
            attr, parse = parser
            values[attr] = parse(key, raw)
        return cls(**values)

    def to_topic_config(self) -> dict[str, str]:
        """The Kafka-named view of this config (every key, as strings)."""
        out: dict[str, str] = {}
        for key, (attr, _) in _PARSERS.items():
            v = getattr(self, attr)
            if isinstance(v, tuple):
                out[key] = ",".join(v)
            elif isinstance(v, bool):
                out[key] = "true" if v else "false"
            elif v is None:
                out[key] = str(LONG_MAX)
            else:
                out[key] = str(v)
        return out

    def with_updates(self, configs: Mapping[str, str]) -> LogConfig:
        """A copy with some keys changed (topic config altered at runtime)."""
        merged = self.to_topic_config()
        merged.update({k: str(v) for k, v in configs.items()})
        return LogConfig.from_topic_config(merged)


def _int(minimum: int, maximum: int = LONG_MAX, never: bool = False) -> Callable[[str, Any], Any]:
    def parse(key: str, raw: Any) -> int | None:
        text = str(raw).strip()
        try:
            if isinstance(raw, bool):
                raise ValueError
            value = int(text)
        except ValueError:
            raise config_error(key, raw, f"an integer in [{minimum}, {maximum}]") from None
        if not minimum <= value <= maximum:
            raise config_error(key, raw, f"an integer in [{minimum}, {maximum}]")
        if never and value >= LONG_MAX:
            return None
        return value

    return parse


def _ratio(key: str, raw: Any) -> float:
    try:
        value = float(str(raw).strip())
    except ValueError:
        raise config_error(key, raw, "a number in [0, 1]") from None
    if not 0.0 <= value <= 1.0:
        raise config_error(key, raw, "a number in [0, 1]")
    return value


def _bool(key: str, raw: Any) -> bool:
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text not in ("true", "false"):
        raise config_error(key, raw, "true or false")
    return text == "true"


def _choice(*choices: str) -> Callable[[str, Any], str]:
    def parse(key: str, raw: Any) -> str:
        text = str(raw).strip()
        for c in choices:
            if text.lower() == c.lower():
                return c
        raise config_error(key, raw, "one of " + ", ".join(choices))

    return parse


def _policy(key: str, raw: Any) -> tuple[str, ...]:
    parts = tuple(sorted({p.strip().lower() for p in str(raw).split(",") if p.strip()}))
    if not parts or any(p not in ("delete", "compact") for p in parts):
        raise config_error(key, raw, "delete, compact, or compact,delete")
    return parts


_I32 = 2**31 - 1
_PARSERS: dict[str, tuple[str, Callable[[str, Any], Any]]] = {
    "segment.bytes": ("segment_bytes", _int(14, _I32)),
    "segment.ms": ("segment_ms", _int(1)),
    "segment.jitter.ms": ("segment_jitter_ms", _int(0)),
    "segment.index.bytes": ("segment_index_bytes", _int(8, _I32)),
    "index.interval.bytes": ("index_interval_bytes", _int(0, _I32)),
    "retention.ms": ("retention_ms", _int(-1)),
    "retention.bytes": ("retention_bytes", _int(-1)),
    "cleanup.policy": ("cleanup_policy", _policy),
    "max.message.bytes": ("max_message_bytes", _int(0, _I32)),
    "flush.messages": ("flush_messages", _int(1, never=True)),
    "flush.ms": ("flush_ms", _int(0, never=True)),
    "delete.retention.ms": ("delete_retention_ms", _int(0)),
    "min.compaction.lag.ms": ("min_compaction_lag_ms", _int(0)),
    "max.compaction.lag.ms": ("max_compaction_lag_ms", _int(1, never=True)),
    "min.cleanable.dirty.ratio": ("min_cleanable_dirty_ratio", _ratio),
    "file.delete.delay.ms": ("file_delete_delay_ms", _int(0)),
    "message.timestamp.type": ("message_timestamp_type", _choice("CreateTime", "LogAppendTime")),
    "message.timestamp.difference.max.ms": (
        "message_timestamp_difference_max_ms",
        _int(0, never=True),
    ),
    "compression.type": (
        "compression_type",
        _choice("producer", "uncompressed", "gzip", "snappy", "lz4", "zstd"),
    ),
    "min.insync.replicas": ("min_insync_replicas", _int(1, _I32)),
    "unclean.leader.election.enable": ("unclean_leader_election_enable", _bool),
    "preallocate": ("preallocate", _bool),
    "message.downconversion.enable": ("message_downconversion_enable", _bool),
}

TOPIC_CONFIG_KEYS: frozenset[str] = frozenset(_PARSERS)
assert {attr for attr, _ in _PARSERS.values()} == {f.name for f in fields(LogConfig)}
