"""Per-second timeline of a scenario: produce/consume rates, broker-reported lag, phases.

The users feed `Timeline.add_batch` with each batch of acknowledged or consumed records a
child reported (Locust request events, e.g. failed sends, reach `on_request`); the lag
monitor feeds `add_lag` with what the broker's describe_group reported; the shape feeds
`mark` with phase changes. `write` puts three CSVs in a directory:

    timeline.csv  t_s, produced, consumed, produced_mb, consumed_mb, produce_errors, lag, phase
    lag.csv       t_s, lag, log_end                      (every sample, as read from the broker)
    marks.csv     t_s, kind, label                        (phase starts, injected faults)

`load` reads them back and `summarize` derives the figures of the closing note. Latency
percentiles are exact (kept in memory per request type and phase), unlike Locust's own stats
which round every sub-100 ms time to a whole millisecond.
"""

from __future__ import annotations

import csv
import math
from array import array
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

PRODUCE = "produce"
CONSUME = "consume"
TIMELINE_CSV = "timeline.csv"
LAG_CSV = "lag.csv"
MARKS_CSV = "marks.csv"
PERCENTILES = (50.0, 99.0, 99.9)
PEAK_WINDOW_S = 5


@dataclass
class Second:
    produced: int = 0
    consumed: int = 0
    produced_bytes: int = 0
    consumed_bytes: int = 0
    produce_errors: int = 0


@dataclass
class Mark:
    t: float
    kind: str  # "phase" or "event"
    label: str


@dataclass
class LagSample:
    t: float
    lag: int | None
    log_end: int | None


class Timeline:
    """Collects one scenario's per-second counts, lag samples and marks (times: epoch seconds)."""

    def __init__(self, t0: float) -> None:
        self.t0 = t0
        self.seconds: list[Second] = []
        self.lags: list[LagSample] = []
        self.marks: list[Mark] = []
        self.phase = "start"
        self.latencies: dict[tuple[str, str], array] = {}
        self.totals = {PRODUCE: 0, CONSUME: 0, "produce_bytes": 0, "errors": 0}

    def _second(self, t: float) -> Second:
        i = max(0, int(t - self.t0))
        while len(self.seconds) <= i:
            self.seconds.append(Second())
        return self.seconds[i]

    def on_request(
        self,
        request_type: str,
        name: str,
        response_time: float,
        response_length: int,
        exception: BaseException | None = None,
        start_time: float | None = None,
        **_: object,
    ) -> None:
        """Locust `events.request` listener; `start_time` is when the request began (epoch s)."""
        done = (start_time if start_time is not None else self.t0) + response_time / 1000.0
        sec = self._second(done)
        if request_type == PRODUCE:
            if exception is not None:
                sec.produce_errors += 1
                self.totals["errors"] += 1
                return
            sec.produced += 1
            sec.produced_bytes += response_length
            self.totals[PRODUCE] += 1
            self.totals["produce_bytes"] += response_length
        elif request_type == CONSUME:
            sec.consumed += 1
            sec.consumed_bytes += response_length
            self.totals[CONSUME] += 1
        else:
            return
        key = (request_type, self.phase)
        lat = self.latencies.get(key)
        if lat is None:
            lat = self.latencies[key] = array("d")
        lat.append(response_time)

    def add_batch(self, request_type: str, done_s: np.ndarray, rt_ms: np.ndarray,
                  sizes: np.ndarray) -> None:
        """A batch of successful records (users.py), as `on_request` would count them."""
        if rt_ms.size == 0 or request_type not in (PRODUCE, CONSUME):
            return
        idx = np.maximum((done_s - self.t0).astype(np.int64), 0)
        secs = np.unique(idx)
        self._second(self.t0 + int(secs[-1]))  # make room up to the last second
        counts = np.bincount(idx - secs[0])
        nbytes = np.bincount(idx - secs[0], weights=sizes.astype(np.float64))
        produce = request_type == PRODUCE
        for i in secs.tolist():
            sec = self.seconds[i]
            n, b = int(counts[i - secs[0]]), int(nbytes[i - secs[0]])
            if produce:
                sec.produced += n
                sec.produced_bytes += b
            else:
                sec.consumed += n
                sec.consumed_bytes += b
        n, total = int(rt_ms.size), int(sizes.sum(dtype=np.int64))
        self.totals[request_type] += n
        if produce:
            self.totals["produce_bytes"] += total
        key = (request_type, self.phase)
        lat = self.latencies.get(key)
        if lat is None:
            lat = self.latencies[key] = array("d")
        lat.frombytes(rt_ms.astype(np.float64).tobytes())

    def add_lag(self, t: float, lag: int | None, log_end: int | None) -> None:
        self.lags.append(LagSample(t, lag, log_end))

    def mark(self, t: float, kind: str, label: str) -> None:
        if kind == "phase":
            self.phase = label
        self.marks.append(Mark(t, kind, label))

    def latency_percentiles(self) -> dict[str, dict[str, float]]:
        """{"produce": {"p50": ms, ...}, "produce/burst": {...}, ...} over successful requests."""
        out: dict[str, dict[str, float]] = {}
        by_type: dict[str, list[array]] = {}
        for (rtype, phase), lat in self.latencies.items():
            by_type.setdefault(rtype, []).append(lat)
            out[f"{rtype}/{phase}"] = _percentiles(np.frombuffer(lat, dtype=np.float64))
        for rtype, parts in by_type.items():
            out[rtype] = _percentiles(np.concatenate([np.frombuffer(p, np.float64) for p in parts]))
        return out

    def write(self, out_dir: Path) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        phases = self._phase_per_second()
        last_lag = self._lag_per_second()
        with open(out_dir / TIMELINE_CSV, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["t_s", "produced", "consumed", "produced_mb", "consumed_mb",
                        "produce_errors", "lag", "phase"])
            for i, s in enumerate(self.seconds):
                lag = last_lag.get(i)
                w.writerow([i, s.produced, s.consumed, f"{s.produced_bytes / 1e6:.3f}",
                            f"{s.consumed_bytes / 1e6:.3f}", s.produce_errors,
                            "" if lag is None else lag, phases[i] if i < len(phases) else ""])
        with open(out_dir / LAG_CSV, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["t_s", "lag", "log_end"])
            for s in self.lags:
                w.writerow([f"{s.t - self.t0:.3f}", "" if s.lag is None else s.lag,
                            "" if s.log_end is None else s.log_end])
        with open(out_dir / MARKS_CSV, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["t_s", "kind", "label"])
            for m in self.marks:
                w.writerow([f"{m.t - self.t0:.3f}", m.kind, m.label])

    def _phase_per_second(self) -> list[str]:
        phases = []
        for i in range(len(self.seconds)):
            label = ""
            for m in self.marks:
                if m.kind == "phase" and m.t - self.t0 <= i + 0.5:
                    label = m.label
            phases.append(label)
        return phases

    def _lag_per_second(self) -> dict[int, int]:
        out: dict[int, int] = {}
        for s in self.lags:
            if s.lag is not None:
                out[max(0, int(s.t - self.t0))] = s.lag
        return out


def _percentiles(values: np.ndarray) -> dict[str, float]:
    if values.size == 0:
        return {"count": 0}
    res = {f"p{p:g}": round(float(np.percentile(values, p)), 3) for p in PERCENTILES}
    res["count"] = int(values.size)
    return res


@dataclass
class TimelineData:
    """A written timeline read back (times in seconds since the scenario start)."""

    t: np.ndarray
    produced: np.ndarray
    consumed: np.ndarray
    produced_mb: np.ndarray
    consumed_mb: np.ndarray
    phase: list[str]
    lag_t: np.ndarray
    lag: np.ndarray
    marks: list[Mark] = field(default_factory=list)

    def phase_span(self, label: str) -> tuple[float, float] | None:
        """(start, end) of the first phase called `label`; end = start of the next phase."""
        phases = [m for m in self.marks if m.kind == "phase"]
        for i, m in enumerate(phases):
            if m.label == label:
                end = phases[i + 1].t if i + 1 < len(phases) else float(self.t[-1] + 1)
                return m.t, end
        return None


def load(out_dir: Path) -> TimelineData:
    def rows(name: str) -> list[dict[str, str]]:
        with open(out_dir / name, newline="") as f:
            return list(csv.DictReader(f))

    tl = rows(TIMELINE_CSV)
    lag = [r for r in rows(LAG_CSV) if r["lag"] != ""]
    marks = [Mark(float(r["t_s"]), r["kind"], r["label"]) for r in rows(MARKS_CSV)]
    return TimelineData(
        t=np.array([float(r["t_s"]) for r in tl]),
        produced=np.array([int(r["produced"]) for r in tl]),
        consumed=np.array([int(r["consumed"]) for r in tl]),
        produced_mb=np.array([float(r["produced_mb"]) for r in tl]),
        consumed_mb=np.array([float(r["consumed_mb"]) for r in tl]),
        phase=[r["phase"] for r in tl],
        lag_t=np.array([float(r["t_s"]) for r in lag]),
        lag=np.array([int(r["lag"]) for r in lag]),
        marks=marks,
    )


def phase_rates(data: TimelineData) -> dict[str, dict[str, float]]:
    """Mean produce/consume records/s of each phase over its whole seconds."""
    out = {}
    for label in dict.fromkeys(p for p in data.phase if p):
        idx = [i for i, p in enumerate(data.phase) if p == label]
        whole = idx[1:-1] if len(idx) > 2 else idx  # the edge seconds are shared
        out[label] = {"seconds": len(idx),
                      "produce_rps": round(float(data.produced[whole].mean()), 1),
                      "consume_rps": round(float(data.consumed[whole].mean()), 1)}
    return out


def _peak_mean(values: np.ndarray, window: int) -> float:
    """Highest mean of `window` consecutive seconds (of all of them if fewer)."""
    if values.size == 0:
        return 0.0
    if values.size <= window:
        return float(values.mean())
    sums = np.convolve(values.astype(np.float64), np.ones(window), mode="valid")
    return float(sums.max() / window)


def _whole_seconds(start: float, end: float, n: int) -> list[int]:
    """Indices of the timeline seconds lying wholly inside [start, end)."""
    return list(range(max(0, math.ceil(start)), min(n, math.floor(end))))


def flatness(data: TimelineData, set_rps: float, start: float, end: float) -> dict:
    """How flat the consume rate stayed at `set_rps` over the whole seconds in [start, end).

    Per second (min/max) and as the lowest and highest mean of `window_s` (5) consecutive
    seconds, all also as a percentage of the set rate: a lowest window at 98 % means the
    consumers lost 2 % of their pace there.
    """
    secs = _whole_seconds(start, end, data.consumed.size)
    if not secs or set_rps <= 0:
        return {}
    values = data.consumed[secs].astype(np.float64)
    window = min(PEAK_WINDOW_S, values.size)
    means = np.convolve(values, np.ones(window), mode="valid") / window

    def pct(x: float) -> float:
        return round(100.0 * x / set_rps, 1)

    return {"from_s": secs[0], "seconds": len(secs), "set_rps": set_rps,
            "mean_rps": round(float(values.mean()), 1), "mean_pct": pct(float(values.mean())),
            "min_1s_rps": int(values.min()), "max_1s_rps": int(values.max()),
            "min_1s_pct": pct(float(values.min())), "max_1s_pct": pct(float(values.max())),
            "window_s": window, "min_window_pct": pct(float(means.min())),
            "max_window_pct": pct(float(means.max()))}


def time_to_drain(data: TimelineData, after: float, threshold: float) -> float | None:
    """Seconds from `after` to the first lag sample at or below `threshold`, None if never."""
    for t, lag in zip(data.lag_t, data.lag, strict=True):
        if t >= after and lag <= threshold:
            return round(float(t - after), 3)
    return None


def summarize(data: TimelineData, drain_from: str | None, drain_threshold: float,
              consume_set_rps: float = 0.0) -> dict:
    """Rates, lag and drain figures of a timeline (latencies come from `Timeline`).

    With `consume_set_rps` (the consumers' summed pace) and a burst phase, also the
    flatness of the consume rate through the burst, and through the whole time the
    consumers had a backlog (burst start to drained).
    """
    busy = data.produced + data.consumed
    active = np.nonzero(busy)[0]
    summary: dict = {
        "duration_s": float(data.t[-1] + 1) if data.t.size else 0.0,
        "produced": int(data.produced.sum()),
        "consumed": int(data.consumed.sum()),
        # Acks come in clumps when the box is busy; the peak is that of a 5 s moving average.
        "peak_produce_rps": round(_peak_mean(data.produced, PEAK_WINDOW_S), 1),
        "peak_produce_mbps": round(_peak_mean(data.produced_mb, PEAK_WINDOW_S), 2),
        "max_1s_produce_rps": int(data.produced.max()) if data.produced.size else 0,
        "peak_consume_rps": int(data.consumed.max()) if data.consumed.size else 0,
        "max_lag": int(data.lag.max()) if data.lag.size else None,
    }
    # Steady consume rate: the median over the seconds in which the consumers had a backlog
    # to work on (lag above the threshold) -- their own pace, not the producers'. Seconds
    # with a backlog and nothing consumed (e.g. a worker restarting) are counted apart.
    backlog_secs = set()
    for t, lag in zip(data.lag_t, data.lag, strict=True):
        if lag > max(drain_threshold, 1):
            backlog_secs.add(int(t))
    inner = [s for s in sorted(backlog_secs) if s + 1 in backlog_secs and s - 1 in backlog_secs]
    secs = inner or (list(active[1:-1]) if active.size > 2 else list(active))
    consuming = np.nonzero(data.consumed)[0]
    first_consume = int(consuming[0]) if consuming.size else data.consumed.size
    rates = [int(data.consumed[s]) for s in secs if first_consume <= s < data.consumed.size]
    working = [r for r in rates if r > 0]
    summary["steady_consume_rps"] = float(np.median(working)) if working else 0.0
    summary["consume_stalled_s"] = len(rates) - len(working)
    summary["phase_rates"] = phase_rates(data)
    if drain_from is not None:
        span = data.phase_span(drain_from)
        if span is not None:
            start = span[1] if drain_from == "burst" else span[0]
            summary["drain_from_s"] = round(start, 3)
            summary["drain_threshold"] = drain_threshold
            summary["time_to_drain_s"] = time_to_drain(data, start, drain_threshold)
    burst = data.phase_span("burst")
    if consume_set_rps > 0 and burst is not None:
        summary["consume_flatness_burst"] = flatness(data, consume_set_rps, *burst)
        drained = summary.get("time_to_drain_s")
        if drain_from == "burst" and drained is not None:
            # The backlog ran out up to a lag sample (and a second bucket) before the lag
            # read drained: leave the last two seconds out, they are partly idle.
            summary["consume_flatness_backlog"] = flatness(
                data, consume_set_rps, burst[0], burst[1] + drained - 2.0)
    return summary


def rate_trend(values: np.ndarray) -> dict[str, float]:
    """Median rate of the first and last quarter of the busy seconds, and last/first.

    The first and last busy seconds are partial (the phase began or ended inside them) and
    are left out; fewer than 6 busy seconds give no trend ({}), as one second is no trend.
    """
    nz = values[values > 0]
    body = nz[1:-1]
    if body.size < 4:
        return {}
    q = max(1, body.size // 4)
    first, last = float(np.median(body[:q])), float(np.median(body[-q:]))
    return {"seconds": int(body.size), "first_quarter_rps": first, "last_quarter_rps": last,
            "last_over_first": round(last / first, 3) if first else math.nan}
