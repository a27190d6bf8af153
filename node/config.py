"""Node configuration: node.toml plus command-line overrides, validated into a frozen `NodeConfig`.

Keys keep Kafka's names (`num.partitions`, `segment.bytes`, ...). In node.toml they are written
as bare dotted keys (`segment.bytes = 1073741824`), which TOML parses into nested tables; we
flatten them back to dotted names, so quoted keys and `[segment]` tables work too.

Every key has one entry in `KEYS`: its kind, default, what is allowed, and whether it is a
topic-level default (those are kept as Kafka strings in `NodeConfig.topic_defaults`, the form
CreateTopics configs take). A bad key or value raises `NodeConfigError` whose message names the
key, the value and what is allowed; an unknown key gets a "did you mean" when one is close.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from qnode.storage.errors import ConfigError
from qnode.storage.log_config import TOPIC_CONFIG_KEYS, LogConfig

LONG_MAX = 9223372036854775807
_ENDPOINT_RE = re.compile(r"^tcp://(?P<host>[A-Za-z0-9.\-\[\]:*]+):(?P<port>\d{1,5})$")
_PEER_RE = re.compile(r"^(?P<id>\d+)@(?P<endpoint>tcp://.+)$")


class NodeConfigError(ValueError):
    """A node.toml key or value that is not allowed; the message says which and what is."""


@dataclass(frozen=True)
class Key:
    """One configuration key: how to parse it, its default, and whether it is a topic default."""

    name: str
    kind: str  # "int" | "str" | "bool" | "list" | "float" | "endpoint" | "enum" | "policy"
    default: Any
    allowed: str
    minimum: int | float | None = None
    maximum: int | float | None = None
    choices: tuple[str, ...] = ()
    topic: bool = False  # a topic-level config: its node value is the default for new topics


def _int(
    name: str, default: int, lo: int, allowed: str = "", hi: int = LONG_MAX, topic: bool = False
) -> Key:
    return Key(
        name, "int", default, allowed or f"an integer from {lo} to {hi}", lo, hi, topic=topic
    )


KEYS: dict[str, Key] = {
    k.name: k
    for k in [
        # The node itself.
        _int("node.id", 0, 0, hi=2**31 - 1),
        Key("data.dir", "str", "./data", "a directory path (created when missing)"),
        Key("listen", "endpoint", "tcp://127.0.0.1:9700", "an endpoint tcp://HOST:PORT"),
        Key("workers", "int", None, "an integer from 1 to 1024 (default: the number of cores)", 1,
            1024),
        Key("peers", "list", [], "a list of ID@tcp://HOST:PORT (other voters of the cluster)"),
        _int("worker.port.base", 0, 0, "0 (random free ports) or a port 1024..65000", 65000),
        _int("worker.busy.poll.us", 0, 0, "0 (off) or microseconds up to 1000000", 1000000),
        _int("socket.request.max.bytes", 104857600, 1024, hi=2**31 - 1),
        _int("replica.lag.time.max.ms", 30000, 1),
        Key("auto.create.topics.enable", "bool", False, "true or false"),
        _int("num.partitions", 1, 1, hi=100000),
        _int("default.replication.factor", 1, 1, hi=1000),
        # Metadata log (coordinator/).
        _int("metadata.log.segment.bytes", 8388608, 1048576, hi=2**31 - 1),
        _int("metadata.log.max.record.bytes.between.snapshots", 20971520, 1),
        # Supervisor.
        _int("supervisor.restart.backoff.ms", 200, 0, hi=600000),
        _int("supervisor.restart.backoff.max.ms", 10000, 0, hi=3600000),
        _int("supervisor.shutdown.timeout.ms", 15000, 100, hi=3600000),
        # Consumer groups and transactions (coordinator/group_*).
        _int("offsets.topic.num.partitions", 50, 1, hi=10000),
        _int("offsets.topic.replication.factor", 1, 1, hi=1000),
        _int("offsets.topic.segment.bytes", 104857600, 14, hi=2**31 - 1),
        _int("offsets.retention.minutes", 10080, 1),
        _int("offsets.commit.timeout.ms", 5000, 1),
        _int("offsets.retention.check.interval.ms", 600000, 1),
        _int("offset.metadata.max.bytes", 4096, 0),
        _int("group.initial.rebalance.delay.ms", 0, 0),
        _int("group.min.session.timeout.ms", 100, 1),
        _int("group.max.session.timeout.ms", 1800000, 1),
        _int("transaction.state.log.num.partitions", 50, 1, hi=10000),
        _int("transaction.state.log.replication.factor", 1, 1, hi=1000),
        _int("transaction.max.timeout.ms", 900000, 1),
        _int("transactional.id.expiration.ms", 604800000, 1),
        # Topic defaults (topic-level configs, Kafka's names and defaults).
        Key("cleanup.policy", "policy", "delete", "delete, compact or compact,delete", topic=True),
        _int("segment.bytes", 1073741824, 14, hi=2**31 - 1, topic=True),
        _int("segment.ms", 604800000, 1, topic=True),
        _int("segment.index.bytes", 10485760, 8, hi=2**31 - 1, topic=True),
        _int("retention.ms", 604800000, -1, "-1 (unlimited) or an integer >= 0", topic=True),
        _int("retention.bytes", -1, -1, "-1 (unlimited) or an integer >= 0", topic=True),
        _int("min.insync.replicas", 1, 1, hi=1000, topic=True),
        Key("unclean.leader.election.enable", "bool", False, "true or false", topic=True),
        _int("flush.messages", LONG_MAX, 1, topic=True),
        _int("flush.ms", LONG_MAX, 0, topic=True),
        _int("max.message.bytes", 1048588, 0, hi=2**31 - 1, topic=True),
        _int("index.interval.bytes", 4096, 0, hi=2**31 - 1, topic=True),
        _int("delete.retention.ms", 86400000, 0, topic=True),
        _int("min.compaction.lag.ms", 0, 0, topic=True),
        _int("max.compaction.lag.ms", LONG_MAX, 1, topic=True),
        Key(
            "min.cleanable.dirty.ratio", "float", 0.5, "a number from 0 to 1", 0.0, 1.0, topic=True
        ),
        _int("file.delete.delay.ms", 60000, 0, topic=True),
        Key(
            "message.timestamp.type",
            "enum",
            "CreateTime",
            "CreateTime or LogAppendTime",
            choices=("CreateTime", "LogAppendTime"),
            topic=True,
        ),
        Key(
            "compression.type",
            "enum",
            "producer",
            "producer, uncompressed, gzip, lz4 or zstd",
            choices=("producer", "uncompressed", "gzip", "lz4", "zstd"),
            topic=True,
        ),
    ]
}

TOPIC_KEYS: frozenset[str] = frozenset(k.name for k in KEYS.values() if k.topic)


@dataclass(frozen=True)
class Peer:
    """Another voter of the cluster: its node id and bootstrap endpoint."""

    node_id: int
    endpoint: str


@dataclass(frozen=True)
class NodeConfig:
    """The validated configuration of one node. `settings` holds every key's typed value."""

    node_id: int
    data_dir: Path
    listen: str
    workers: int
    peers: tuple[Peer, ...]
    worker_port_base: int
    socket_request_max_bytes: int
    topic_defaults: Mapping[str, str]
    settings: Mapping[str, Any] = field(repr=False)

    def get(self, key: str) -> Any:
        """The typed value of any key of `KEYS` (raises KeyError for a name not in KEYS)."""
        if key not in KEYS:
            raise KeyError(key)
        return self.settings[key]

    @property
    def listen_host(self) -> str:
        return endpoint_host(self.listen)

    def to_json(self) -> str:
        """Every key's value as JSON: how the supervisor hands the config to its children."""
        values = dict(self.settings)
        values["data.dir"] = str(self.data_dir)
        values["peers"] = [f"{p.node_id}@{p.endpoint}" for p in self.peers]
        return json.dumps(values)

    @classmethod
    def from_json(cls, text: str) -> NodeConfig:
        return build_config(json.loads(text), source="config from supervisor")


def usable_cores() -> int:
    """Cores this process may run on (the container's CPU set, not the host's core count)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def endpoint_host(endpoint: str) -> str:
    """`tcp://HOST:PORT` → HOST."""
    m = _ENDPOINT_RE.match(endpoint)
    if not m:
        raise NodeConfigError(f"bad endpoint {endpoint!r} (allowed: tcp://HOST:PORT)")
    return m.group("host")


def _flatten(table: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in table.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def _bad(source: str, key: Key, value: Any) -> NodeConfigError:
    return NodeConfigError(
        f"{source}: bad value for {key.name!r}: {value!r} (allowed: {key.allowed})"
    )


def _parse_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return None


def _parse_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    return None


def _parse_peers(value: Any) -> tuple[Peer, ...] | None:
    if isinstance(value, str):
        value = [p for p in value.split(",") if p.strip()]
    if not isinstance(value, list | tuple):
        return None
    peers = []
    for item in value:
        if isinstance(item, Peer):
            peers.append(item)
            continue
        if isinstance(item, dict) and {"node_id", "endpoint"} <= item.keys():
            item = f"{item['node_id']}@{item['endpoint']}"
        m = _PEER_RE.match(item.strip()) if isinstance(item, str) else None
        if not m or not _ENDPOINT_RE.match(m.group("endpoint")):
            return None
        peers.append(Peer(int(m.group("id")), m.group("endpoint")))
    return tuple(peers)


def parse_value(key: Key, value: Any) -> Any:
    """The typed value of `value` for `key`, or None when it is not allowed."""
    if key.kind == "int":
        n = _parse_int(value)
        if (
            n is None
            or (key.minimum is not None and n < key.minimum)
            or (key.maximum is not None and n > key.maximum)
        ):
            return None
        return n
    if key.kind == "float":
        if isinstance(value, bool):
            return None
        try:
            x = float(value)
        except (TypeError, ValueError):
            return None
        return x if key.minimum <= x <= key.maximum else None  # type: ignore[operator]
    if key.kind == "bool":
        return _parse_bool(value)
    if key.kind == "str":
        return value if isinstance(value, str) and value.strip() else None
    if key.kind == "endpoint":
        if not isinstance(value, str):
            return None
        m = _ENDPOINT_RE.match(value)
        return value if m and 1 <= int(m.group("port")) <= 65535 else None
    if key.kind == "enum":
        return value if isinstance(value, str) and value in key.choices else None
    if key.kind == "policy":
        if not isinstance(value, str):
            return None
        parts = sorted({p.strip() for p in value.split(",")})
        ok = parts and all(p in ("delete", "compact") for p in parts)
        return ",".join(parts) if ok else None
    if key.kind == "list":
        return _parse_peers(value)
    raise AssertionError(f"unknown kind {key.kind}")


def kafka_string(value: Any) -> str:
    """A typed value in the string form Kafka configs take on the wire ("true", "1024"...)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def unknown_key_error(source: str, name: str, known: Mapping[str, Any] = KEYS) -> NodeConfigError:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.75)
    hint = f" (did you mean {close[0]!r}?)" if close else " (see node.toml for every key)"
    return NodeConfigError(f"{source}: unknown key {name!r}{hint}")


def build_config(values: Mapping[str, Any], source: str = "node.toml") -> NodeConfig:
    """Validate flat `{dotted key: value}` pairs (missing keys take defaults) into a NodeConfig."""
    settings: dict[str, Any] = {}
    for name, raw in values.items():
        key = KEYS.get(name)
        if key is None:
            raise unknown_key_error(source, name)
        if raw is None and name == "workers":
            continue
        parsed = parse_value(key, raw)
        if parsed is None:
            raise _bad(source, key, raw)
        settings[name] = parsed
    for name, key in KEYS.items():
        settings.setdefault(name, key.default)
    if settings["workers"] is None:
        settings["workers"] = usable_cores()
    if settings["supervisor.restart.backoff.max.ms"] < settings["supervisor.restart.backoff.ms"]:
        raise _bad(
            source,
            KEYS["supervisor.restart.backoff.max.ms"],
            settings["supervisor.restart.backoff.max.ms"],
        )
    settings["peers"] = tuple(settings["peers"])
    data_dir = Path(os.path.abspath(os.path.expanduser(settings["data.dir"])))
    settings["data.dir"] = str(data_dir)
    topic_defaults = {k: kafka_string(settings[k]) for k in sorted(TOPIC_KEYS)}
    try:  # the storage engine's rules are the last word on topic configs
        LogConfig.from_topic_config(topic_defaults)
    except ConfigError as exc:
        raise NodeConfigError(f"{source}: {exc}") from None
    return NodeConfig(
        node_id=settings["node.id"],
        data_dir=data_dir,
        listen=settings["listen"],
        workers=settings["workers"],
        peers=settings["peers"],
        worker_port_base=settings["worker.port.base"],
        socket_request_max_bytes=settings["socket.request.max.bytes"],
        topic_defaults=MappingProxyType(topic_defaults),
        settings=MappingProxyType(settings),
    )


def load_config(
    path: str | os.PathLike[str] | None = None, overrides: Mapping[str, Any] | None = None
) -> NodeConfig:
    """node.toml at `path` (None: defaults only) with `overrides` (flat keys, None = unset)."""
    values: dict[str, Any] = {}
    source = "defaults"
    if path is not None:
        source = str(path)
        try:
            with open(path, "rb") as f:
                values = _flatten(tomllib.load(f))
        except FileNotFoundError:
            raise NodeConfigError(f"{source}: config file not found") from None
        except tomllib.TOMLDecodeError as e:
            raise NodeConfigError(f"{source}: not valid TOML: {e}") from None
        except OSError as e:
            raise NodeConfigError(f"{source}: cannot read: {e.strerror}") from None
    for name, value in (overrides or {}).items():
        if value is not None:
            if name not in KEYS:
                raise unknown_key_error("command line", name)
            if parse_value(KEYS[name], value) is None:
                raise _bad("command line", KEYS[name], value)
            values[name] = value
    return build_config(values, source=source)


def validate_topic_config(
    configs: Mapping[str, Any], source: str = "topic config"
) -> dict[str, str]:
    """Topic-level configs (Kafka names, string or typed values) → normalized Kafka strings.

    The storage engine's `LogConfig` rules are the one source of truth for what a topic
    accepts; this adds the "did you mean" for unknown keys and names the source in errors.
    """
    known = {k: None for k in TOPIC_CONFIG_KEYS}
    for name in configs:
        if not isinstance(name, str) or name not in known:
            raise unknown_key_error(source, str(name), known)
    try:
        full = LogConfig.from_topic_config({k: kafka_string(v) for k, v in configs.items()})
    except ConfigError as exc:
        raise NodeConfigError(f"{source}: {exc}") from None
    normalized = full.to_topic_config()
    return {k: normalized[k] for k in configs}
