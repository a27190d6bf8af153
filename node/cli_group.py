"""`qnode group list | describe G | reset-offsets G | delete G` (registered by cli_client).

`describe` prints one row per partition as `kafka-consumer-groups.sh --describe` does: topic,
partition, committed offset, log end, LAG, and the member that owns it ("-" where unknown).
"""

from __future__ import annotations

import os
import sys
from datetime import datetime
from typing import Any

import typer

from qnode.sdk.errors import QnodeError

DEFAULT_BOOTSTRAP = "tcp://127.0.0.1:9700"

BootstrapOpt = typer.Option(
    None, "--bootstrap", help="node endpoint (default: $QNODE_BOOTSTRAP, else tcp://127.0.0.1:9700)"
)


def _bootstrap(value: str | None) -> str:
    return value or os.environ.get("QNODE_BOOTSTRAP") or DEFAULT_BOOTSTRAP


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(1)


def _admin(bootstrap: str | None) -> Any:
    from qnode.sdk import Admin  # imported late: `qnode --help` stays fast

    return Admin(bootstrap=_bootstrap(bootstrap), request_timeout_ms=10000)


def _table(header: list[str], rows: list[list[Any]]) -> str:
    cells = [header] + [[("-" if c is None else str(c)) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in cells
    )


def group_list(bootstrap: str | None = BootstrapOpt) -> None:
    """List the consumer groups."""
    admin = _admin(bootstrap)
    try:
        for g in admin.list_groups():
            print(g)
    except QnodeError as exc:
        _fail(str(exc))
    finally:
        admin.close()


def group_describe(
    group: str = typer.Argument(..., help="group id"), bootstrap: str | None = BootstrapOpt
) -> None:
    """Show state, members, and per partition committed offset, log end and LAG."""
    admin = _admin(bootstrap)
    try:
        d = admin.describe_group(group)
    except QnodeError as exc:
        _fail(str(exc))
        return
    finally:
        admin.close()
    print(
        f"Group {d.group_id}: state {d.state}, protocol {d.protocol or '-'}, "
        f"{len(d.members)} member(s)"
    )
    clients = {m.member_id: m.client_id for m in d.members}
    rows = [
        [
            d.group_id,
            o.topic,
            o.partition,
            o.committed if o.committed >= 0 else None,
            o.log_end_offset if o.log_end_offset >= 0 else None,
            o.lag if o.lag >= 0 else None,
            o.member_id,
            clients.get(o.member_id or ""),
        ]
        for o in d.offsets
    ]
    print(
        _table(
            [
                "GROUP",
                "TOPIC",
                "PARTITION",
                "CURRENT-OFFSET",
                "LOG-END-OFFSET",
                "LAG",
                "CONSUMER-ID",
                "CLIENT-ID",
            ],
            rows,
        )
    )


def group_reset_offsets(
    group: str = typer.Argument(..., help="group id"),
    topic: str = typer.Option(..., "--topic", help="topic whose offsets to reset"),
    to_earliest: bool = typer.Option(False, "--to-earliest"),
    to_latest: bool = typer.Option(False, "--to-latest"),
    to_offset: int | None = typer.Option(None, "--to-offset"),
    to_datetime: str | None = typer.Option(
        None, "--to-datetime", help="ISO 8601, e.g. 2024-05-01T12:00:00+00:00"
    ),
    bootstrap: str | None = BootstrapOpt,
) -> None:
    """Move a group's committed offsets (the group must have no active member)."""
    chosen = [
        x for x in (to_earliest, to_latest, to_offset is not None, to_datetime is not None) if x
    ]
    if len(chosen) != 1:
        _fail("give exactly one of --to-earliest, --to-latest, --to-offset N, --to-datetime ISO")
    to: Any
    if to_earliest:
        to = "earliest"
    elif to_latest:
        to = "latest"
    elif to_offset is not None:
        to = to_offset
    else:
        try:
            to = datetime.fromisoformat(str(to_datetime))
        except ValueError:
            _fail(f"--to-datetime {to_datetime!r} is not an ISO 8601 date-time")
            return
        if to.tzinfo is None:
            to = to.astimezone()  # a naive time is the local time, as Kafka's tool reads it
    admin = _admin(bootstrap)
    try:
        result = admin.reset_group_offsets(group, topic, to)
    except (QnodeError, ValueError) as exc:
        _fail(str(exc))
        return
    finally:
        admin.close()
    print(
        _table(
            ["GROUP", "TOPIC", "PARTITION", "NEW-OFFSET"],
            [[group, tp.topic, tp.partition, off] for tp, off in sorted(result.items())],
        )
    )


def group_delete(
    group: str = typer.Argument(..., help="group id"), bootstrap: str | None = BootstrapOpt
) -> None:
    """Delete a group with no active member, and its committed offsets."""
    admin = _admin(bootstrap)
    try:
        admin.delete_group(group)
    except QnodeError as exc:
        _fail(str(exc))
    finally:
        admin.close()
    print(f"deleted group {group}")


def register(app: typer.Typer) -> None:
    """Add `qnode group ...` to the CLI."""
    group_app = typer.Typer(
        help="Consumer groups: list, describe (with LAG), reset offsets.", no_args_is_help=True
    )
    group_app.command("list")(group_list)
    group_app.command("describe")(group_describe)
    group_app.command("reset-offsets")(group_reset_offsets)
    group_app.command("delete")(group_delete)
    app.add_typer(group_app, name="group")
