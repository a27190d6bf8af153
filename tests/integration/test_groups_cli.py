"""`qnode group list | describe | reset-offsets | delete` through the real CLI process."""

from __future__ import annotations

import subprocess
import sys

from qnode.sdk import Admin, Consumer, Producer, TopicPartition

_LAUNCH = "import sys; from qnode.node.cli import main; sys.argv[0] = 'qnode'; main()"


def qnode(*args: str, bootstrap: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", _LAUNCH, *args, "--bootstrap", bootstrap],
                          capture_output=True, text=True, timeout=60)


def test_group_commands_show_lag_and_reset(node):
    bs = node.bootstrap
    with Admin(bootstrap=bs) as admin:
        admin.create_topic("cli", partitions=2)
    with Producer(bootstrap=bs, acks="all") as p:
        for i in range(10):
            p.send("cli", value=b"x", partition=i % 2)
        p.flush()
    with Consumer(bootstrap=bs, group_id="cli-g", enable_auto_commit=False) as c:
        c.commit({TopicPartition("cli", 0): 2, TopicPartition("cli", 1): 5})

    out = qnode("group", "list", bootstrap=bs)
    assert out.returncode == 0 and "cli-g" in out.stdout.split()

    out = qnode("group", "describe", "cli-g", bootstrap=bs)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    header = lines[1].split()
    assert header[:6] == ["GROUP", "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET",
                          "LAG"]
    rows = {int(f[2]): f for f in (line.split() for line in lines[2:])}
    assert rows[0][3:6] == ["2", "5", "3"] and rows[1][3:6] == ["5", "5", "0"]

    out = qnode("group", "reset-offsets", "cli-g", "--topic", "cli", "--to-earliest",
                bootstrap=bs)
    assert out.returncode == 0, out.stderr
    with Consumer(bootstrap=bs, group_id="cli-g") as c:
        assert c.committed([TopicPartition("cli", 0), TopicPartition("cli", 1)]) == {
            TopicPartition("cli", 0): 0, TopicPartition("cli", 1): 0}

    out = qnode("group", "reset-offsets", "cli-g", "--topic", "cli", bootstrap=bs)
    assert out.returncode != 0 and "exactly one" in out.stderr
    out = qnode("group", "describe", "no-such-group", bootstrap=bs)
    assert out.returncode != 0 and "does not exist" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1

    out = qnode("group", "delete", "cli-g", bootstrap=bs)
    assert out.returncode == 0, out.stderr
    assert "cli-g" not in qnode("group", "list", bootstrap=bs).stdout.split()
