"""timeline.py and chart.py: per-second counts, figures and a PNG from synthetic events."""

from __future__ import annotations

from pathlib import Path

from qnode.loadtest.chart import plot
from qnode.loadtest.timeline import Timeline, load, rate_trend, summarize

T0 = 1_000_000.0


def _synthetic(tmp_path: Path) -> Timeline:
    tl = Timeline(T0)
    phases = {0: "steady", 4: "burst", 6: "recovery"}
    produce = [10, 10, 10, 10, 100, 100, 10, 10, 10, 10, 10, 10]
    for sec, n in enumerate(produce):
        if sec in phases:  # events arrive in time order, phase marks among them
            tl.mark(T0 + sec, "phase", phases[sec])
        if sec == 5:
            tl.mark(T0 + 5, "event", "kill -9 worker 123")
        for i in range(n):
            tl.on_request("produce", "t", 2.0, 100, None, start_time=T0 + sec + i / (n + 1))
        for i in range(40 if 4 <= sec <= 9 else 10):
            tl.on_request("consume", "t", 5.0 + sec, 100, None, start_time=T0 + sec + 0.01 * i)
    tl.on_request("produce", "t", 1.0, 100, RuntimeError("x"), start_time=T0 + 5)
    lags = [0, 0, 0, 0, 60, 120, 90, 60, 30, 0, 0, 0]
    for sec, lag in enumerate(lags):
        tl.add_lag(T0 + sec + 0.5, lag, 1000 + sec)
    tl.write(tmp_path)
    return tl


def test_counts_figures_and_latency(tmp_path: Path) -> None:
    tl = _synthetic(tmp_path)
    data = load(tmp_path)
    assert list(data.produced[:6]) == [10, 10, 10, 10, 100, 100]
    assert data.phase[5] == "burst"
    summary = summarize(data, drain_from="burst", drain_threshold=0)
    assert summary["max_1s_produce_rps"] == 100
    assert summary["peak_produce_rps"] == (10 + 10 + 100 + 100 + 10) / 5
    assert summary["max_lag"] == 120
    # Burst ends at 6 s; lag reads 0 at 9.5 s.
    assert summary["time_to_drain_s"] == 3.5
    assert summary["steady_consume_rps"] == 40
    assert summary["phase_rates"]["burst"] == {"seconds": 2, "produce_rps": 100.0,
                                              "consume_rps": 40.0}
    lat = tl.latency_percentiles()
    assert lat["produce"]["p50"] == 2.0 and lat["produce"]["count"] == 300
    assert lat["consume/burst"]["count"] == 80
    assert tl.totals["errors"] == 1


def test_chart_is_a_png(tmp_path: Path) -> None:
    _synthetic(tmp_path)
    for unit in ("records", "MB"):
        out = plot(tmp_path, tmp_path / f"chart-{unit}.png", "synthetic", unit)
        data = out.read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


def test_rate_trend_sees_a_falling_rate() -> None:
    import numpy as np

    flat = rate_trend(np.array([5] + [100] * 20 + [7]))
    assert flat["last_over_first"] == 1.0 and flat["seconds"] == 20
    falling = rate_trend(np.array([100] * 10 + [40] * 10))
    assert falling["last_over_first"] < 0.5
    assert rate_trend(np.array([0, 3, 100, 100, 9, 0])) == {}  # too short to be a trend
