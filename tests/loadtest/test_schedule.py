"""schedule.py: the scenarios' phase machines, driven with synthetic progress."""

from __future__ import annotations

from qnode.loadtest.schedule import (
    UNLIMITED,
    BacklogPlan,
    PeakShavingPlan,
    Progress,
    SteadyStatePlan,
)


def _ready(p: Progress, producers: int = 2, consumers: int = 2) -> Progress:
    p.ready_producers, p.ready_consumers, p.live_producers = producers, consumers, producers
    return p


def test_peak_shaving_schedule() -> None:
    plan = PeakShavingPlan(2, 2, base_rate=100, burst_factor=10, steady_s=5, burst_s=3,
                           recovery_min_s=2, recovery_max_s=30)
    p = Progress()
    step = plan.step(0.0, p)
    assert step is not None and step.phase == "warmup" and step.produce_rate == 0
    _ready(p)
    rates = {}
    # Consumers keep lag at 10 before the burst (6 s); it climbs in it and drains at 13 s.
    for t in range(0, 60):
        p.lag_at = t + 0.9
        p.lag = 10 if p.lag_at < 6 else (500 if p.lag_at < 13 else 3)
        if plan.phase == "drain":
            p.lag = 0
        step = plan.step(float(t + 1), p)
        if step is None:
            break
        rates[t + 1] = (step.phase, step.produce_rate, step.producers, step.consumers)
        if step.phase == "drain":
            p.live_producers = 0
            p.producers_done_at = p.producers_done_at or t + 1.0
    assert rates[2] == ("steady", 100, 2, 2)
    assert rates[6] == ("burst", 1000, 2, 2)
    assert rates[9] == ("recovery", 100, 2, 2)
    assert plan.drain_threshold == 10
    drains = [t for t, r in rates.items() if r[0] == "drain"]
    # Recovery from 9 s; drained (lag <= 10) at 14 s, past the 2 s minimum: drain.
    assert drains[0] == 14 and rates[drains[0]][2] == 0
    assert step is None and plan.failure is None and plan.phase == "done"


def test_drain_needs_a_lag_sample_after_the_producers_finished() -> None:
    plan = SteadyStatePlan(1, 1, rate=50, duration_s=1, drain_timeout_s=5)
    p = _ready(Progress(), 1, 1)
    plan.step(0.0, p)
    plan.step(2.0, p)  # steady over -> drain
    assert plan.phase == "drain"
    p.live_producers, p.producers_done_at = 0, 3.0
    p.lag, p.lag_at = 0, 2.5  # a zero read before the last producer finished proves nothing
    assert plan.step(3.5, p) is not None
    p.lag_at = 3.2
    assert plan.step(4.0, p) is None and plan.failure is None


def test_drain_timeout_fails_loudly() -> None:
    plan = SteadyStatePlan(1, 1, rate=50, duration_s=1, drain_timeout_s=5)
    p = _ready(Progress(), 1, 1)
    plan.step(0.0, p)
    plan.step(2.0, p)
    p.live_producers, p.producers_done_at, p.lag, p.lag_at = 0, 2.0, 7, 3.0
    assert plan.step(8.0, p) is None
    assert plan.failure and "did not reach 0" in plan.failure


def test_backlog_fills_without_consumers_then_drains() -> None:
    plan = BacklogPlan(2, 3, backlog_bytes=1000, produce_rate=UNLIMITED, fill_timeout_s=100)
    p = Progress(ready_producers=2, live_producers=2)
    step = plan.step(0.0, p)
    assert step is not None and (step.phase, step.consumers, step.produce_rate) == \
        ("fill", 0, UNLIMITED)
    p.acked_bytes = 999
    assert plan.step(1.0, p).phase == "fill"
    p.acked_bytes = 1000
    step = plan.step(2.0, p)
    assert (step.phase, step.producers, step.consumers) == ("drain", 0, 3)


def test_warmup_timeout() -> None:
    plan = SteadyStatePlan(1, 1, rate=1, duration_s=1, warmup_timeout_s=3)
    p = Progress(ready_producers=1)
    assert plan.step(0.0, p) is not None
    assert plan.step(4.0, p) is None
    assert plan.failure and "consumers 0/1" in plan.failure
