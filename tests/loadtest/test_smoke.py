"""Smoke runs of every load-test scenario, end to end, in seconds and at tiny rates.

Each runs the scenario's real command (`python -m qnode.loadtest.run <scenario> --smoke`) in
a child process -- Locust monkey-patches the process it runs in, so never in pytest's -- which
starts its own node with `qnode start`, drives it with SDK producers and a consumer group,
and exits non-zero unless every acknowledged record was consumed exactly once.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _run(tmp_path: Path, *args: str, timeout: float = 90.0) -> dict:
    results = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, "-m", "qnode.loadtest.run", *args, "--smoke", "--workers", "2",
         "--results", str(results)],
        capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    # Non-zero also when the node did not exit 0 on SIGTERM or left shm tables behind (the
    # runner unlinks those it finds for its own data dir, so nothing is leaked either way).
    assert proc.returncode == 0, f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-4000:]}"
    summary = json.loads((results / "summary.json").read_text())
    assert summary["ok"] and summary["exactly_once"], summary
    assert summary["node_exit_code"] == 0
    for name in ("locust_stats.csv", "locust_stats_history.csv", "timeline.csv", "lag.csv"):
        assert (results / name).stat().st_size > 0, name
    assert (results / "chart.png").read_bytes()[:4] == b"\x89PNG"
    stats = (results / "locust_stats.csv").read_text()
    assert "produce," in stats and "consume," in stats
    return summary


def test_peak_shaving_smoke_with_a_worker_killed(tmp_path: Path) -> None:
    # kill -9 of a node worker in the burst: the supervisor restarts it, and still every
    # acknowledged record is consumed exactly once (checked by the run itself).
    s = _run(tmp_path, "peak-shaving", "--kill-worker", "--kill-at", "0.5")
    # The burst reached the wire, the paced consumers fell behind, and the backlog drained.
    assert s["max_1s_produce_rps"] >= 150
    assert s["max_lag"] > 0
    assert s["time_to_drain_s"] is not None
    marks = (tmp_path / "results" / "marks.csv").read_text()
    assert "kill -9 worker" in marks and "worker restarted" in marks


def test_backlog_smoke(tmp_path: Path) -> None:
    s = _run(tmp_path, "backlog")
    assert s["produced"] * 4096 >= 2_000_000
    # Consumers were stopped while the backlog was written: lag reached all of it.
    assert s["max_lag"] >= s["produced"] * 0.9
    assert s["consumed"] == s["produced"]


def test_steady_state_smoke(tmp_path: Path) -> None:
    s = _run(tmp_path, "steady-state")
    lat = s["latency_ms"]
    assert lat["produce"]["count"] == s["produced"] > 0
    assert 0 < lat["produce"]["p50"] <= lat["produce"]["p99"]
    assert 0 < lat["consume"]["p50"] <= lat["consume"]["p99"]


@pytest.mark.parametrize("scenario", ["peak-shaving"])
def test_bad_option_fails_with_a_clear_line(scenario: str) -> None:
    proc = subprocess.run([sys.executable, "-m", "qnode.loadtest.run", scenario,
                           "--record-size", "lots"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert "not a size" in proc.stderr
