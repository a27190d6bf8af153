"""node.toml loading and validation, and `qnode start` refusing a bad config."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from qnode.node.config import (
    KEYS,
    TOPIC_KEYS,
    NodeConfig,
    NodeConfigError,
    Peer,
    load_config,
    validate_topic_config,
)
from qnode.storage.log_config import LogConfig

REPO = Path(__file__).resolve().parents[2]
NODE_TOML = REPO / "node.toml"


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "node.toml"
    p.write_text(text)
    return p


def test_repo_node_toml_documents_every_key_with_its_default() -> None:
    text = NODE_TOML.read_text()
    lines = text.splitlines()
    documented = {}
    for i, line in enumerate(lines):
        m = re.match(r"^#?\s*([a-z][a-z0-9.]*)\s*=", line)
        if m and m.group(1) in KEYS:
            documented[m.group(1)] = i
            assert lines[i - 1].startswith("#") or lines[i - 2].startswith("#"), (
                f"{m.group(1)} has no comment above it"
            )
    assert set(documented) == set(KEYS), set(KEYS) ^ set(documented)
    cfg = load_config(NODE_TOML)
    for name, key in KEYS.items():
        if key.default is not None and name != "data.dir":
            assert cfg.get(name) == (tuple(key.default) if name == "peers" else key.default), name
    assert cfg.listen == "tcp://127.0.0.1:9700" and cfg.data_dir == Path.cwd() / "data"


def test_defaults_without_a_file() -> None:
    cfg = load_config()
    assert cfg.workers >= 1 and cfg.node_id == 0 and cfg.peers == ()
    assert cfg.get("offsets.topic.num.partitions") == 50
    assert cfg.topic_defaults["cleanup.policy"] == "delete"
    assert set(cfg.topic_defaults) == set(TOPIC_KEYS)
    LogConfig.from_topic_config(dict(cfg.topic_defaults))  # storage accepts every default


def test_dotted_tables_and_quoted_keys_mean_the_same(tmp_path: Path) -> None:
    a = load_config(write(tmp_path, 'segment.bytes = 2048\n"retention.ms" = 5\n'))
    b = load_config(write(tmp_path, "[segment]\nbytes = 2048\n[retention]\nms = 5\n"))
    assert a.topic_defaults == b.topic_defaults
    assert a.topic_defaults["segment.bytes"] == "2048"


def test_overrides_win_and_round_trip_json(tmp_path: Path) -> None:
    p = write(tmp_path, 'workers = 3\nlisten = "tcp://127.0.0.1:9800"\nnode.id = 4\n')
    cfg = load_config(
        p,
        {
            "workers": 1,
            "data.dir": str(tmp_path / "d"),
            "node.id": None,
            "peers": "1@tcp://10.0.0.1:9700,2@tcp://10.0.0.2:9700",
        },
    )
    assert cfg.workers == 1 and cfg.node_id == 4 and cfg.data_dir == tmp_path / "d"
    assert cfg.peers == (Peer(1, "tcp://10.0.0.1:9700"), Peer(2, "tcp://10.0.0.2:9700"))
    again = NodeConfig.from_json(cfg.to_json())
    assert again == cfg


@pytest.mark.parametrize(
    "text,needles",
    [
        ("workers = 0", ["'workers'", "0", "an integer from 1 to 1024"]),
        ('workers = "two"', ["'workers'", "'two'"]),
        ('listen = "localhost:9700"', ["'listen'", "localhost:9700", "tcp://HOST:PORT"]),
        ('cleanup.policy = "forever"', ["'cleanup.policy'", "forever", "delete, compact"]),
        ("segment.bytes = 10", ["'segment.bytes'", "10", "14"]),
        ("retention.ms = -2", ["'retention.ms'", "-2", "-1 (unlimited)"]),
        (
            "unclean.leader.election.enable = 1",
            ["'unclean.leader.election.enable'", "true or false"],
        ),
        ('peers = ["x"]', ["'peers'", "ID@tcp://HOST:PORT"]),
        ('message.timestamp.type = "Now"', ["'message.timestamp.type'", "LogAppendTime"]),
        ("worker.busy.poll.us = -5", ["'worker.busy.poll.us'", "-5", "0 (off)"]),
    ],
)
def test_bad_values_name_key_value_and_allowed(tmp_path: Path, text: str, needles) -> None:
    with pytest.raises(NodeConfigError) as e:
        load_config(write(tmp_path, text + "\n"))
    for needle in needles:
        assert needle in str(e.value)


def test_unknown_key_did_you_mean(tmp_path: Path) -> None:
    with pytest.raises(NodeConfigError) as e:
        load_config(write(tmp_path, "num.partition = 3\n"))
    assert "unknown key 'num.partition'" in str(e.value)
    assert "did you mean 'num.partitions'" in str(e.value)
    with pytest.raises(NodeConfigError) as e:
        load_config(write(tmp_path, "zzz = 3\n"))
    assert "unknown key 'zzz'" in str(e.value) and "did you mean" not in str(e.value)


def test_bad_override_and_bad_file(tmp_path: Path) -> None:
    with pytest.raises(NodeConfigError, match="command line: bad value for 'listen'"):
        load_config(None, {"listen": "udp://x:1"})
    with pytest.raises(NodeConfigError, match="not valid TOML"):
        load_config(write(tmp_path, "workers = = 2\n"))
    with pytest.raises(NodeConfigError, match="not found"):
        load_config(tmp_path / "missing.toml")


def test_topic_config_validation() -> None:
    assert validate_topic_config({"segment.bytes": 1024, "cleanup.policy": "compact"}) == {
        "segment.bytes": "1024",
        "cleanup.policy": "compact",
    }
    with pytest.raises(NodeConfigError, match="did you mean 'retention.bytes'"):
        validate_topic_config({"retention.byte": "1"})
    with pytest.raises(NodeConfigError, match="listen"):
        validate_topic_config({"listen": "tcp://x:1"})  # a node key is not a topic config


def run_start(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    launch = "import sys; from qnode.node.cli import main; sys.argv[0] = 'qnode'; main()"
    return subprocess.run(
        [sys.executable, "-c", launch, "start", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_qnode_start_refuses_bad_config_with_one_line(tmp_path: Path) -> None:
    cfg = write(tmp_path, "num.partitons = 3\n")
    r = run_start("--config", str(cfg), "--data-dir", str(tmp_path / "d"), cwd=tmp_path)
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "num.partitons" in lines[0] and "num.partitions" in lines[0]
    assert not (tmp_path / "d").exists(), "nothing touched before the config is valid"
    r = run_start("--workers", "0", "--data-dir", str(tmp_path / "d"), cwd=tmp_path)
    assert r.returncode == 1 and "'workers'" in r.stderr and r.stderr.count("\n") == 1


def test_toml_is_what_tomllib_reads() -> None:
    flat = tomllib.loads(NODE_TOML.read_text())
    assert flat["listen"] == "tcp://127.0.0.1:9700" and flat["data"]["dir"] == "./data"


def test_qnode_start_with_peers_says_clusters_are_not_available(tmp_path: Path) -> None:
    r = run_start(
        "--peers", "1@tcp://127.0.0.1:9801", "--data-dir", str(tmp_path / "d"), cwd=tmp_path
    )
    assert r.returncode == 1 and "multi-node clusters are not available" in r.stderr
    assert r.stderr.count("\n") == 1
