"""The lag monitor: sets the topic up, then reads the group's lag from the broker on a timer.

One OS process (`python -m qnode.loadtest.proc_monitor CONFIG_JSON`) with a real SDK `Admin`:
waits for the node to answer, creates the scenario's topic, says ready, then every
`interval_s` asks `describe_group` for the per-partition lag and `describe_topic` for the log
ends, and sends `{"op": "lag", "t", "lag", "log_end", "endpoints"}` to the runner (every
tenth also with "offsets_endpoint", the worker holding the group's offsets partition). The lag is
what the broker reports, never the load generator's guess. Partitions the group has no
committed offset for count from the log start (the consumers start at the earliest offset).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any

from qnode.loadtest.channel import ChildChannel, child_main

OFFSETS_EVERY = 10  # samples between looks at where the group's offsets partition lives


@dataclass
class MonitorConfig:
    endpoint: str
    bootstrap: str
    topic: str
    group: str
    partitions: int = 4
    replication_factor: int = 1
    topic_config: dict[str, str] = field(default_factory=dict)
    interval_s: float = 0.5
    ready_timeout_s: float = 60.0


def _first(obj: Any, *names: str) -> Any:
    """The first of `names` that `obj` has (attribute or key), else None."""
    for name in names:
        if isinstance(obj, dict) and name in obj:
            return obj[name]
        if hasattr(obj, name):
            return getattr(obj, name)
    return None


class OffsetsUnknown(RuntimeError):
    """A partition's offsets are not known right now (e.g. its worker is restarting)."""


def topic_offsets(admin: Any, topic: str) -> tuple[dict[int, tuple[int, int]], list[str]]:
    """({partition: (log start, high watermark)}, the leaders' worker endpoints).

    Raises OffsetsUnknown rather than count a partition whose high watermark is unknown as
    empty: that would show a fake drop of the lag while a worker restarts.
    """
    desc = admin.describe_topic(topic)
    out, endpoints = {}, []
    for p in _first(desc, "partitions") or []:
        pid = int(_first(p, "id", "partition"))
        start = _first(p, "log_start_offset") or 0
        hw = _first(p, "high_watermark")
        if _first(p, "error") or hw is None or hw < 0:
            raise OffsetsUnknown(f"{topic}-{pid}: high watermark unknown "
                                 f"(error {_first(p, 'error')})")
        out[pid] = (max(int(start), 0), int(hw))
        endpoint = _first(p, "endpoint")
        if endpoint and endpoint not in endpoints:
            endpoints.append(endpoint)
    return out, endpoints


def group_lags(admin: Any, group: str, topic: str) -> dict[int, int]:
    """{partition: lag} of `topic` in `group` where describe_group reports a committed offset."""
    try:
        desc = admin.describe_group(group)
    except Exception:  # noqa: BLE001 - an unknown/empty group has committed nothing yet
        return {}
    if desc is None:
        return {}
    out = {}
    for p in _first(desc, "offsets", "partitions") or []:
        if _first(p, "topic") not in (None, topic):
            continue
        committed = _first(p, "committed", "committed_offset", "offset")
        lag = _first(p, "lag")
        end = _first(p, "log_end_offset")
        if end is not None and end < 0:
            raise OffsetsUnknown(f"{topic}-{_first(p, 'partition')}: log end unknown")
        if committed is not None and committed >= 0 and lag is not None and lag >= 0:
            out[int(_first(p, "partition", "id"))] = int(lag)
    return out


def offsets_endpoint(admin: Any, group: str) -> str | None:
    """The worker endpoint holding the group's `__consumer_offsets` partition (its commits)."""
    from qnode.coordinator.group_metadata import OFFSETS_TOPIC, partition_for

    parts = _first(admin.describe_topic(OFFSETS_TOPIC), "partitions") or []
    if not parts:
        return None
    return _first(parts[partition_for(group, len(parts))], "endpoint")


def sample(admin: Any, group: str, topic: str) -> dict[str, Any]:
    """The group's total lag on the topic, the total log end, and the worker endpoints."""
    ends, endpoints = topic_offsets(admin, topic)
    lags = group_lags(admin, group, topic)
    lag = sum(lags.get(pid, hw - start) for pid, (start, hw) in ends.items())
    return {"lag": max(lag, 0), "log_end": sum(hw for _, hw in ends.values()),
            "endpoints": endpoints}


def _wait_ready(admin: Any, cfg: MonitorConfig) -> None:
    deadline = time.monotonic() + cfg.ready_timeout_s
    last: Exception | None = None
    created = False
    while time.monotonic() < deadline:
        try:
            if not created and cfg.topic not in admin.list_topics():
                admin.create_topic(cfg.topic, partitions=cfg.partitions,
                                   replication_factor=cfg.replication_factor,
                                   config=cfg.topic_config)
            created = True
            parts = _first(admin.describe_topic(cfg.topic), "partitions") or []
            if len(parts) == cfg.partitions and all(
                    (_first(p, "leader") if _first(p, "leader") is not None else -1) >= 0
                    for p in parts):
                return
        except Exception as e:  # noqa: BLE001 - the node may still be starting
            last = e
        time.sleep(0.1)
    raise TimeoutError(f"node at {cfg.bootstrap} not ready within {cfg.ready_timeout_s:g} s: "
                       f"{last!r}")


def run(cfg: MonitorConfig, ch: ChildChannel) -> dict[str, int]:
    from qnode.sdk import Admin  # here, so a broken SDK is reported over the channel

    admin = Admin(bootstrap=cfg.bootstrap)
    counts = {"samples": 0, "failed_samples": 0}
    try:
        _wait_ready(admin, cfg)
        ch.send({"op": "ready", "pid": 0})
        next_at = time.monotonic()
        while True:
            if any(m["op"] == "stop" for m in ch.poll_control(
                    max(0.0, next_at - time.monotonic()))) or ch.orphaned():
                return counts
            next_at += cfg.interval_s
            t = time.time()
            try:
                msg = sample(admin, cfg.group, cfg.topic)
            except Exception as e:  # noqa: BLE001 - e.g. a worker restarting: say so, go on
                counts["failed_samples"] += 1
                ch.send({"op": "log", "msg": f"lag sample failed: {type(e).__name__}: {e}"})
                continue
            if counts["samples"] % OFFSETS_EVERY == 0:
                try:
                    msg["offsets_endpoint"] = offsets_endpoint(admin, cfg.group)
                except Exception:  # noqa: BLE001 - informative only (which worker to kill)
                    pass
            counts["samples"] += 1
            ch.send({"op": "lag", "t": t, **msg})
    finally:
        close = getattr(admin, "close", None)
        if close:
            close()


def main(argv: list[str] | None = None) -> int:
    return child_main(sys.argv[1:] if argv is None else argv, MonitorConfig, run)


if __name__ == "__main__":
    sys.exit(main())
