"""Client commands of the CLI: topic, produce, consume, cluster (and the group/bench hooks).

Every command takes `--bootstrap` (default: $QNODE_BOOTSTRAP, else tcp://127.0.0.1:9700).
Failures print one line, `error: ...`, on stderr and exit 1; no traceback reaches the user.
`group` commands live in cli_group.py and `bench` in cli_bench.py; both register here.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

import typer

DEFAULT_BOOTSTRAP = "tcp://127.0.0.1:9700"
CLI_TIMEOUT_MS = 10000  # admin calls from a terminal: fail within seconds, not half a minute

F = TypeVar("F", bound=Callable[..., Any])

BootstrapOpt = typer.Option(
    None,
    "--bootstrap",
    "-b",
    help="node endpoint (default: $QNODE_BOOTSTRAP, else tcp://127.0.0.1:9700)",
)


def bootstrap_of(value: str | None) -> str:
    return value or os.environ.get("QNODE_BOOTSTRAP") or DEFAULT_BOOTSTRAP


def fail(message: str, code: int = 1) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(code)


def friendly_errors(fn: F) -> F:
    """Turn any error into one line on stderr and a non-zero exit."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from qnode.sdk.errors import QnodeError

        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, SystemExit):
            raise
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        except BrokenPipeError:  # `qnode consume ... | head`: the reader left, not an error
            try:
                sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the final flush
            except OSError:
                pass
            raise typer.Exit(0) from None
        except QnodeError as exc:
            fail(_with_hint(str(exc)))
        except (ValueError, TypeError, OSError) as exc:
            fail(str(exc) or type(exc).__name__)
        except Exception as exc:
            if os.environ.get("QNODE_DEBUG"):
                raise  # a developer asked for the traceback
            fail(f"{type(exc).__name__}: {exc} (set QNODE_DEBUG=1 for the traceback)")

    return wrapper  # type: ignore[return-value]


def _with_hint(message: str) -> str:
    if "cannot connect" in message or "timed out" in message:
        return f"{message} (is a node running there? see --bootstrap)"
    return message


def parse_configs(items: list[str] | None) -> dict[str, str]:
    """`k=v` items (each may also be a comma-separated list of them) → dict."""
    out: dict[str, str] = {}
    for item in items or []:
        for part in item.split(","):
            part = part.strip()
            if not part:
                continue
            key, sep, value = part.partition("=")
            if not sep or not key.strip():
                raise ValueError(f"--config {part!r} is not key=value")
            out[key.strip()] = value.strip()
    return out


def table(header: list[str], rows: list[list[Any]]) -> str:
    cells = [header] + [["-" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells
    )


def _admin(bootstrap: str | None) -> Any:
    from qnode.sdk import Admin  # imported late: `qnode --help` stays fast

    return Admin(bootstrap=bootstrap_of(bootstrap), request_timeout_ms=CLI_TIMEOUT_MS)


# ---------------------------------------------------------------------------------- topic
topic_app = typer.Typer(
    help="Create, list, describe, alter and delete topics.", no_args_is_help=True
)


@topic_app.command("create")
@friendly_errors
def topic_create(
    name: str = typer.Argument(..., help="topic name"),
    partitions: int = typer.Option(1, "--partitions", "-p", help="number of partitions"),
    replication_factor: int = typer.Option(
        1, "--replication-factor", "-r", help="replicas of each partition"
    ),
    config: list[str] = typer.Option(
        None, "--config", "-c", help="topic config k=v (repeat for several)"
    ),
    bootstrap: str = BootstrapOpt,
) -> None:
    """Create a topic."""
    with _admin(bootstrap) as admin:
        admin.create_topic(name, partitions, replication_factor, parse_configs(config))
    # -1 takes the node's num.partitions / default.replication.factor (Kafka's convention)
    count = "the node's default number of" if partitions == -1 else str(partitions)
    rf = "the node's default" if replication_factor == -1 else str(replication_factor)
    print(
        f"created topic {name} ({count} partitions, replication factor {rf})"
    )


@topic_app.command("list")
@friendly_errors
def topic_list(
    internal: bool = typer.Option(False, "--internal", help="also list internal topics"),
    bootstrap: str = BootstrapOpt,
) -> None:
    """List topic names, one per line."""
    with _admin(bootstrap) as admin:
        for name in admin.list_topics(internal=internal):
            print(name)


@topic_app.command("describe")
@friendly_errors
def topic_describe(name: str = typer.Argument(...), bootstrap: str = BootstrapOpt) -> None:
    """Per partition: leader, replicas, ISR, log start offset, high watermark."""
    with _admin(bootstrap) as admin:
        desc = admin.describe_topic(name)
        try:
            overrides = [c for c in admin.describe_configs(name) if c.source == "topic"]
        except Exception:  # configs are a bonus line; the partition table is the answer
            overrides = []
    cfg = ",".join(f"{c.name}={c.value}" for c in overrides)
    print(
        f"Topic: {desc.name}  Partitions: {len(desc.partitions)}  "
        f"ReplicationFactor: {len(desc.partitions[0].replicas) if desc.partitions else 0}"
        f"  Configs: {cfg or '-'}"
    )
    rows = [
        [
            p.id,
            p.leader if p.leader >= 0 else "none",
            ",".join(map(str, p.replicas)),
            ",".join(map(str, p.isr)),
            _off(p.log_start_offset),
            _off(p.high_watermark),
            _off(p.log_end_offset),
        ]
        for p in desc.partitions
    ]
    print(table(["PARTITION", "LEADER", "REPLICAS", "ISR", "LOG-START", "HW", "LEO"], rows))


def _off(value: int) -> str:
    return "-" if value is None or value < 0 else str(value)


@topic_app.command("delete")
@friendly_errors
def topic_delete(name: str = typer.Argument(...), bootstrap: str = BootstrapOpt) -> None:
    """Delete a topic and all its data."""
    with _admin(bootstrap) as admin:
        admin.delete_topic(name)
    print(f"deleted topic {name}")


@topic_app.command("alter")
@friendly_errors
def topic_alter(
    name: str = typer.Argument(...),
    config: list[str] = typer.Option(
        None, "--config", "-c", help="k=v to set, k= to remove an override (repeatable)"
    ),
    partitions: int = typer.Option(
        None, "--partitions", "-p",
        help="grow the topic to this many partitions (never fewer; keys then hash anew)"),
    bootstrap: str = BootstrapOpt,
) -> None:
    """Change topic configs, or grow its partition count."""
    configs = parse_configs(config)
    if not configs and partitions is None:
        raise ValueError("nothing to alter: give --config k=v or --partitions N")
    done = []
    with _admin(bootstrap) as admin:
        if partitions is not None:
            admin.create_partitions(name, partitions)
            done.append(f"{partitions} partitions")
        if configs:
            changes = {k: v or None for k, v in configs.items()}  # k= removes the override
            admin.alter_topic_config(name, changes)
            done += [f"{k}={v}" if v is not None else f"{k} back to the node default"
                     for k, v in changes.items()]
    print(f"altered topic {name}: " + ", ".join(done))


# ---------------------------------------------------------------------------------- produce
@friendly_errors
def produce(
    topic: str = typer.Argument(..., help="topic to write to"),
    key: str = typer.Option(None, "--key", "-k", help="key of every record"),
    key_separator: str = typer.Option(
        None, "--key-separator", help="split each line at the first SEP into key and value"
    ),
    acks: str = typer.Option("all", "--acks", help="all | 1 | 0"),
    partition: int = typer.Option(None, "--partition", "-p", help="write to this partition"),
    linger_ms: float = typer.Option(5, "--linger-ms"),
    compression: str = typer.Option(None, "--compression", help="gzip | lz4 | zstd"),
    bootstrap: str = BootstrapOpt,
) -> None:
    """Write one record per stdin line (the line without its newline is the value)."""
    from qnode.sdk import Producer
    from qnode.sdk.producer import parse_acks

    failures: list[BaseException] = []
    pending: deque[Any] = deque()
    count = 0
    producer = Producer(
        bootstrap_of(bootstrap),
        acks=parse_acks(acks),
        linger_ms=linger_ms,
        compression=compression,
        max_block_ms=CLI_TIMEOUT_MS,
        delivery_timeout_ms=max(30000, CLI_TIMEOUT_MS),
    )
    try:
        fixed_key = key.encode() if key is not None else None
        sep = key_separator.encode() if key_separator else None
        stdin = sys.stdin.buffer
        for raw in stdin:
            line = raw[:-1] if raw.endswith(b"\n") else raw
            if line.endswith(b"\r"):
                line = line[:-1]
            k = fixed_key
            if sep is not None and sep in line:
                k, line = line.split(sep, 1)
            pending.append(producer.send(topic, value=line, key=k, partition=partition))
            count += 1
            while pending and pending[0].done():  # settled records: keep only their errors
                _settle(pending.popleft(), failures)
        producer.flush()
        while pending:
            _settle(pending.popleft(), failures)
    finally:
        producer.close()
    if failures:
        fail(f"{len(failures)} of {count} records not written: {failures[0]}")


def _settle(fut: Any, failures: list[BaseException]) -> None:
    error = fut.exception(0) if fut.done() else None
    if error is not None:
        failures.append(error)


# ---------------------------------------------------------------------------------- consume
@friendly_errors
def consume(
    topic: str = typer.Argument(..., help="topic to read"),
    group: str = typer.Option(None, "--group", "-g", help="read as a member of this group"),
    from_beginning: bool = typer.Option(
        False, "--from-beginning", help="start at the log start, not the end"
    ),
    partition: int = typer.Option(None, "--partition", "-p", help="read only this partition"),
    offset: int = typer.Option(None, "--offset", "-o", help="start offset (needs --partition)"),
    max_messages: int = typer.Option(
        None, "--max-messages", "-n", help="exit after this many records"
    ),
    isolation: str = typer.Option(
        "read_uncommitted", "--isolation", help="read_uncommitted | read_committed"
    ),
    timeout_ms: int = typer.Option(
        None, "--timeout-ms", help="exit when no record arrives for this long"
    ),
    print_key: bool = typer.Option(False, "--print-key", help="print key<TAB>value"),
    print_offset: bool = typer.Option(
        False, "--print-offset", help="print partition:offset<TAB> first"
    ),
    bootstrap: str = BootstrapOpt,
) -> None:
    """Print one record per line (value bytes as they are; a null value prints `null`)."""
    from qnode.sdk import Consumer, TopicPartition

    if offset is not None and partition is None:
        raise ValueError("--offset needs --partition")
    if group is not None and (partition is not None or offset is not None):
        raise ValueError("--group reads what the group assigns: drop --partition/--offset")
    reset = "earliest" if from_beginning else "latest"
    consumer = Consumer(
        bootstrap=bootstrap_of(bootstrap),
        group_id=group,
        auto_offset_reset=reset,
        isolation_level=isolation,
        request_timeout_ms=CLI_TIMEOUT_MS,
        default_api_timeout_ms=CLI_TIMEOUT_MS,
    )
    out = sys.stdout.buffer
    seen = 0
    try:
        if group is not None:
            consumer.subscribe([topic])
        elif partition is not None:
            tp = TopicPartition(topic, partition)
            count = len(consumer.partitions_for_topic(topic))  # unknown topic: error now
            if not 0 <= partition < count:
                raise ValueError(f"topic {topic!r} has no partition {partition} "
                                 f"(it has {count})")
            consumer.assign([tp])
            if offset is not None:
                consumer.seek(tp, offset)
        else:
            consumer.assign(consumer.partitions_for_topic(topic))
        last = time.monotonic()
        while max_messages is None or seen < max_messages:
            left = None if max_messages is None else max_messages - seen
            records = consumer.poll(0.5, max_records=left)
            if not records:
                if timeout_ms is not None and (time.monotonic() - last) * 1000 >= timeout_ms:
                    break
                continue
            last = time.monotonic()
            for r in records:
                if print_offset:
                    out.write(f"{r.partition}:{r.offset}\t".encode())
                if print_key:
                    out.write((r.key if r.key is not None else b"null") + b"\t")
                out.write((r.value if r.value is not None else b"null") + b"\n")
            out.flush()
            seen += len(records)
    finally:
        consumer.close()


# ---------------------------------------------------------------------------------- cluster
cluster_app = typer.Typer(help="The cluster as the node sees it.", no_args_is_help=True)


@cluster_app.command("status")
@friendly_errors
def cluster_status(bootstrap: str = BootstrapOpt) -> None:
    """Cluster id, controller, nodes, and where each topic's partitions are served."""
    with _admin(bootstrap) as admin:
        cluster = admin.describe_cluster()
        topics = admin.list_topics(internal=True)
        descs = [admin.describe_topic(t) for t in topics]
    print(
        f"Cluster: {cluster.cluster_id or '-'}  Controller: {cluster.controller_id}  "
        f"Nodes: {len(cluster.nodes)}"
    )
    print(table(["NODE", "BOOTSTRAP"], [[n.node_id, n.bootstrap] for n in cluster.nodes]))
    workers: dict[str, int] = {}
    offline = 0
    for d in descs:
        for p in d.partitions:
            if p.leader < 0 or not p.endpoint:
                offline += 1
            else:
                workers[p.endpoint] = workers.get(p.endpoint, 0) + 1
    total = sum(len(d.partitions) for d in descs)
    print(f"Topics: {len(descs)}  Partitions: {total}  Offline partitions: {offline}")
    if workers:
        print(
            table(
                ["WORKER ENDPOINT", "LEADER PARTITIONS"],
                [[ep, n] for ep, n in sorted(workers.items())],
            )
        )


def register(app: typer.Typer) -> None:
    """Add the client commands to the CLI (and the group and bench ones where present)."""
    app.add_typer(topic_app, name="topic")
    app.command("produce")(produce)
    app.command("consume")(consume)
    app.add_typer(cluster_app, name="cluster")
    for module in ("qnode.node.cli_group", "qnode.node.cli_bench"):
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name != module:
                raise
            continue
        mod.register(app)
