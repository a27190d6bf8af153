"""batch_stats.py and Timeline.add_batch: a batch counts exactly as its records one by one.

Locust monkey-patches the process that imports it, so the Locust half runs in a child
Python (never in pytest's own process); it prints what both ways gave, as JSON.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

from qnode.loadtest.timeline import CONSUME, PRODUCE, Timeline, load, summarize

T0 = 1_000_000.0

_CHILD = textwrap.dedent("""
    import json, time
    import numpy as np
    from locust.env import Environment
    from locust.stats import RequestStats
    from qnode.loadtest.batch_stats import log_batch

    rng = np.random.default_rng(7)
    rt = np.concatenate([rng.uniform(0, 99.9, 500), rng.uniform(100, 999, 300),
                         rng.uniform(1000, 9999, 150), rng.uniform(10000, 60000, 50),
                         [0.5, 1.5, 2.5, 150.0, 1250.0]])
    sizes = rng.integers(16, 5000, rt.size).astype(np.uint32)
    now = time.time()
    done = now - rng.uniform(0, 3, rt.size)

    def stats():
        return Environment(user_classes=[]).stats

    one, batch = stats(), stats()
    for r, n in zip(rt.tolist(), sizes.tolist()):
        one.log_request("consume", "t", r, n)
    half = rt.size // 2
    log_batch(batch, "consume", "t", done[:half], rt[:half], sizes[:half])
    log_batch(batch, "consume", "t", done[half:], rt[half:], sizes[half:])

    def view(s, e):
        return {"num_requests": e.num_requests, "bytes": e.total_content_length,
                "total_rt": round(e.total_response_time, 6), "min": e.min_response_time,
                "max": e.max_response_time,
                "hist": sorted(dict(e.response_times).items()),
                "per_sec_total": sum(e.num_reqs_per_sec.values()),
                "pct": [e.get_response_time_percentile(p) for p in (0.5, 0.9, 0.99, 0.999)]}

    out = {}
    for name, s in (("one", one), ("batch", batch)):
        out[name] = {"entry": view(s, s.get("t", "consume")), "total": view(s, s.total)}
    print(json.dumps(out))
""")


def test_log_batch_matches_logging_each_request() -> None:
    proc = subprocess.run([sys.executable, "-c", _CHILD], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.splitlines()[-1])
    assert out["one"]["entry"]["num_requests"] == 1005
    assert out["batch"] == out["one"]


def test_timeline_add_batch_matches_on_request(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    done = T0 + np.sort(rng.uniform(0, 6, 4000))
    rt = rng.uniform(0.5, 80.0, done.size)
    sizes = np.full(done.size, 200, dtype=np.uint32)
    one, batch = Timeline(T0), Timeline(T0)
    for tl in (one, batch):
        tl.mark(T0, "phase", "steady")
    for d, r in zip(done.tolist(), rt.tolist(), strict=True):
        one.on_request(CONSUME, "t", r, 200, None, start_time=d - r / 1000.0)
        one.on_request(PRODUCE, "t", r, 200, None, start_time=d - r / 1000.0)
    for part in np.array_split(np.arange(done.size), 7):
        batch.add_batch(CONSUME, done[part], rt[part], sizes[part])
        batch.add_batch(PRODUCE, done[part], rt[part], sizes[part])
    assert batch.totals == one.totals
    assert [vars(s) for s in batch.seconds] == [vars(s) for s in one.seconds]
    assert batch.latency_percentiles() == one.latency_percentiles()


def test_flatness_of_the_consume_rate(tmp_path: Path) -> None:
    tl = Timeline(T0)
    tl.mark(T0, "phase", "steady")
    consumed = [100] * 3 + [300, 300, 240, 300, 300, 300, 300, 330, 300, 300] + [100] * 4
    for sec, n in enumerate(consumed):
        if sec == 3:
            tl.mark(T0 + 3.0, "phase", "burst")
        if sec == 13:
            tl.mark(T0 + 13.0, "phase", "recovery")
        done = T0 + sec + np.linspace(0.01, 0.99, n)
        tl.add_batch(CONSUME, done, np.ones(n), np.full(n, 100, dtype=np.uint32))
    tl.add_lag(T0 + 0.5, 0, 0)
    tl.write(tmp_path)
    s = summarize(load(tmp_path), "burst", 0, consume_set_rps=300.0)
    f = s["consume_flatness_burst"]
    assert f["seconds"] == 10 and f["from_s"] == 3
    assert f["min_1s_rps"] == 240 and f["max_1s_rps"] == 330
    assert f["min_1s_pct"] == 80.0 and f["max_1s_pct"] == 110.0
    # The lowest 5-second window holds the 240: (300+300+240+300+300)/5 = 288 = 96 %.
    assert f["window_s"] == 5 and f["min_window_pct"] == 96.0
    assert f["mean_pct"] == 99.0
