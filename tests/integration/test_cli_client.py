"""The client commands of the CLI, run as real processes against a real node."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator

import pytest
from conftest import NodeProcess, free_endpoint

LAUNCH = "import sys; from qnode.node.cli import main; sys.argv[0] = 'qnode'; main()"


@pytest.fixture(scope="module")
def bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    n = NodeProcess(tmp_path_factory.mktemp("cli-node"), workers=2)
    try:
        n.start()
        yield n.bootstrap
    finally:
        n.cleanup()


def qnode(*args: str, bootstrap: str | None = None, stdin: bytes | None = None,
          timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ)
    env.pop("QNODE_BOOTSTRAP", None)
    if bootstrap is not None:
        env["QNODE_BOOTSTRAP"] = bootstrap
    return subprocess.run([sys.executable, "-c", LAUNCH, *args], input=stdin,
                          capture_output=True, env=env, timeout=timeout)


def assert_one_line_error(res: subprocess.CompletedProcess[bytes], *words: str) -> None:
    assert res.returncode != 0
    err = res.stderr.decode()
    assert err.startswith("error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    for w in words:
        assert w in err, err


def test_topic_commands(bootstrap: str) -> None:
    res = qnode("topic", "create", "orders", "--partitions", "3", "--config",
                "retention.ms=86400000", bootstrap=bootstrap)
    assert res.returncode == 0, res.stderr
    assert b"created topic orders" in res.stdout
    assert "orders" in qnode("topic", "list", bootstrap=bootstrap).stdout.decode().split()
    out = qnode("topic", "describe", "orders", bootstrap=bootstrap).stdout.decode()
    lines = out.splitlines()
    assert "Partitions: 3" in lines[0] and "retention.ms=86400000" in lines[0]
    assert lines[1].split() == ["PARTITION", "LEADER", "REPLICAS", "ISR", "LOG-START", "HW",
                                "LEO"]
    assert [ln.split()[:6] for ln in lines[2:]] == [[str(p), "0", "0", "0", "0", "0"]
                                                     for p in range(3)]
    res = qnode("topic", "alter", "orders", "--config", "retention.ms=1000",
                bootstrap=bootstrap)
    assert res.returncode == 0, res.stderr
    assert "retention.ms=1000" in qnode("topic", "describe", "orders",
                                        bootstrap=bootstrap).stdout.decode()
    res = qnode("topic", "alter", "orders", "--partitions", "5", bootstrap=bootstrap)
    assert res.returncode == 0 and b"5 partitions" in res.stdout, res.stderr
    assert "Partitions: 5" in qnode("topic", "describe", "orders",
                                    bootstrap=bootstrap).stdout.decode()
    assert_one_line_error(qnode("topic", "alter", "orders", "--partitions", "4",
                                bootstrap=bootstrap), "INVALID_PARTITIONS", "only grow")
    res = qnode("topic", "alter", "orders", "--config", "retention.ms=", bootstrap=bootstrap)
    assert b"retention.ms back to the node default" in res.stdout, res.stderr
    assert_one_line_error(qnode("topic", "create", "orders", bootstrap=bootstrap),
                          "TOPIC_ALREADY_EXISTS")
    assert qnode("topic", "delete", "orders", bootstrap=bootstrap).returncode == 0
    assert "orders" not in qnode("topic", "list", bootstrap=bootstrap).stdout.decode().split()
    assert_one_line_error(qnode("topic", "describe", "orders", bootstrap=bootstrap),
                          "UNKNOWN_TOPIC_OR_PARTITION", "orders")
    assert_one_line_error(qnode("topic", "alter", "x", "--config", "novalue",
                                bootstrap=bootstrap), "key=value")


def test_produce_then_consume(bootstrap: str) -> None:
    assert qnode("topic", "create", "lines", "--partitions", "2",
                 bootstrap=bootstrap).returncode == 0
    lines = [f"line {i} ü".encode() for i in range(50)]
    res = qnode("produce", "lines", "--key", "k1", "--acks", "all",
                stdin=b"\n".join(lines) + b"\n", bootstrap=bootstrap)
    assert res.returncode == 0, res.stderr
    res = qnode("produce", "lines", "--partition", "1", "--acks", "0",
                stdin=b"extra\n", bootstrap=bootstrap)
    assert res.returncode == 0, res.stderr
    res = qnode("consume", "lines", "--from-beginning", "--max-messages", "51",
                bootstrap=bootstrap)
    assert res.returncode == 0, res.stderr
    got = res.stdout.splitlines()
    assert sorted(got) == sorted(lines + [b"extra"])
    keyed = [ln for ln in got if ln != b"extra"]
    assert keyed == lines  # one key: one partition, in order
    res = qnode("consume", "lines", "--partition", "1", "--offset", "0", "--max-messages",
                "1", "--print-offset", "--print-key", bootstrap=bootstrap)
    assert res.returncode == 0, res.stderr
    first = res.stdout.splitlines()[0]
    assert first.startswith(b"1:0\t")
    # no --from-beginning: starts at the end; --timeout-ms ends the run with nothing printed
    res = qnode("consume", "lines", "--timeout-ms", "500", bootstrap=bootstrap)
    assert res.returncode == 0 and res.stdout == b""


def test_key_separator(bootstrap: str) -> None:
    assert qnode("topic", "create", "kv", bootstrap=bootstrap).returncode == 0
    res = qnode("produce", "kv", "--key-separator", ":", stdin=b"a:1\nb:2\nnokey\n",
                bootstrap=bootstrap)
    assert res.returncode == 0, res.stderr
    res = qnode("consume", "kv", "--from-beginning", "-n", "3", "--print-key",
                bootstrap=bootstrap)
    assert res.stdout.splitlines() == [b"a\t1", b"b\t2", b"null\tnokey"]


def test_client_errors_are_one_line(bootstrap: str) -> None:
    assert_one_line_error(qnode("produce", "missing-topic", stdin=b"x\n",
                                bootstrap=bootstrap), "UNKNOWN_TOPIC_OR_PARTITION")
    assert_one_line_error(qnode("consume", "missing-topic", "-n", "1", bootstrap=bootstrap),
                          "missing-topic")
    assert_one_line_error(qnode("consume", "x", "--offset", "3", bootstrap=bootstrap),
                          "--partition")
    assert qnode("topic", "create", "onepart", bootstrap=bootstrap).returncode == 0
    assert_one_line_error(qnode("consume", "onepart", "--partition", "7", "-n", "1",
                                bootstrap=bootstrap), "no partition 7")
    dead = free_endpoint()
    res = qnode("topic", "list", "--bootstrap", dead, timeout=60)
    assert_one_line_error(res, dead)
    res = qnode("produce", "lines", "--acks", "2", stdin=b"", bootstrap=bootstrap)
    assert_one_line_error(res, "acks")


def test_default_bootstrap_comes_from_the_environment(bootstrap: str) -> None:
    res = qnode("cluster", "status", bootstrap=bootstrap)
    assert res.returncode == 0, res.stderr
    out = res.stdout.decode()
    assert "Controller: 0" in out and bootstrap in out and "Offline partitions: 0" in out


def test_bench_commands(bootstrap: str, tmp_path) -> None:
    res = qnode("bench", "produce", "--records", "20000", "--partitions", "2",
                bootstrap=bootstrap)
    assert res.returncode == 0, res.stderr
    out = res.stdout.decode()
    assert "records/s" in out and "MB/s" in out and "p50" in out and "p999" in out
    res = qnode("bench", "consume", "--records", "20000", "--partitions", "2",
                bootstrap=bootstrap)
    assert res.returncode == 0, res.stderr
    assert "consume: 20,000 records" in res.stdout.decode()
    res = qnode("bench", "e2e", "--records", "300", "--rate", "500", bootstrap=bootstrap)
    assert res.returncode == 0, res.stderr
    out = res.stdout.decode()
    assert "300 records" in out and "p99" in out
    assert "node worker.busy.poll.us=0" in out  # the setting the figure was taken under
    # the consumer is on the node's host: its caught-up fetches were answered by datagram
    assert int(re.search(r"([\d,]+) fetch answers by doorbell", out)[1].replace(",", "")) > 0
    assert int(re.search(r"([\d,]+) produce requests by datagram", out)[1].replace(",", "")) > 0
    assert "floor, raw pyzmq" in out and "(300 samples)" in out
    assert b"e2e: 300/300" in res.stderr  # the progress line
    res = qnode("bench", "produce", "--prebuilt", "--seconds", "0.5", "--dd-dir", str(tmp_path),
                bootstrap=bootstrap)
    assert res.returncode == 0, res.stderr
    assert "broker / raw" in res.stdout.decode()
    assert "dd bs=16k of the same bytes into" in res.stdout.decode()
    assert os.listdir(tmp_path) == []  # dd's file is gone
    res = qnode("bench", "produce", "--prebuilt", "--dd-dir", str(tmp_path / "missing"),
                bootstrap=bootstrap)
    assert res.returncode != 0
    assert b"is not a writable directory" in res.stdout + res.stderr


def test_consume_as_a_group_resumes_from_its_commit(bootstrap: str) -> None:
    assert qnode("topic", "create", "grouped", bootstrap=bootstrap).returncode == 0
    assert qnode("produce", "grouped", stdin=b"1\n2\n3\n", bootstrap=bootstrap).returncode == 0
    res = qnode("consume", "grouped", "--group", "cli-g", "--from-beginning", "-n", "3",
                bootstrap=bootstrap)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [b"1", b"2", b"3"]
    assert qnode("produce", "grouped", stdin=b"4\n", bootstrap=bootstrap).returncode == 0
    res = qnode("consume", "grouped", "--group", "cli-g", "--from-beginning", "-n", "1",
                bootstrap=bootstrap)
    assert res.returncode == 0, res.stderr
    assert res.stdout.splitlines() == [b"4"]  # the first run's offsets were committed


@pytest.mark.parametrize("command", [("topic", "list"), ("produce", "t"), ("consume", "t"),
                                     ("cluster", "status")])
def test_bad_bootstrap_is_one_line_error(command: tuple[str, ...]) -> None:
    """A mistyped endpoint: one line naming it, at once (`topic list` used to hang at exit)."""
    res = qnode(*command, "--bootstrap", "localhost", stdin=b"", timeout=30)
    assert_one_line_error(res, "tcp://localhost", "tcp://host:port")
