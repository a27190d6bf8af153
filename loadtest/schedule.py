"""The schedules of the scenarios, as plain state machines (no Locust, testable on their own).

A plan answers `step(now, progress)` once per Locust shape tick with what should run now: a
`Step` (phase name, producer and consumer user counts, total produce rate) or None when the
scenario is over (check `failure` then). `progress` is what the runner has observed: users
ready, bytes acknowledged, producers still alive, and the lag last read from the broker.
Every plan ends the same way: producers stop, consumers run until the broker reports zero
lag in a sample taken after the last producer finished, then the test stops.

Rates: `produce_rate` is records/s summed over all producer users; 0 pauses them and
UNLIMITED lets them send as fast as the producer's back-pressure allows.
"""

from __future__ import annotations

from dataclasses import dataclass

UNLIMITED = -1.0


@dataclass(frozen=True)
class Step:
    phase: str
    producers: int
    consumers: int
    produce_rate: float


@dataclass
class Progress:
    """What the runner knows; times are epoch seconds like `now`."""

    ready_producers: int = 0
    ready_consumers: int = 0
    live_producers: int = 0
    acked_bytes: int = 0
    lag: int | None = None
    lag_at: float = 0.0
    producers_done_at: float | None = None


class Plan:
    """Phase bookkeeping shared by the scenario plans."""

    def __init__(self, producers: int, consumers: int, warmup_timeout_s: float,
                 drain_timeout_s: float) -> None:
        assert producers >= 1 and consumers >= 1
        self.producers = producers
        self.consumers = consumers
        self.warmup_timeout_s = warmup_timeout_s
        self.drain_timeout_s = drain_timeout_s
        self.phase = "warmup"
        self.phase_started: float | None = None
        self.started: float | None = None
        self.failure: str | None = None
        self.phases: list[tuple[float, str]] = []

    def _enter(self, phase: str, now: float) -> None:
        self.phase = phase
        self.phase_started = now
        self.phases.append((now, phase))

    def _elapsed(self, now: float) -> float:
        assert self.phase_started is not None
        return now - self.phase_started

    def _fail(self, why: str) -> None:
        self.failure = why
        self.phase = "failed"

    def _warmup(self, now: float, progress: Progress, need_consumers: bool,
                first_phase: str) -> tuple[bool, Step | None]:
        """(True, None) once every user that must be ready is (entering `first_phase`), else
        (False, the warmup step to run meanwhile, or None when the warmup timed out)."""
        if self.phase != "warmup":
            return True, None
        if self.started is None:
            self.started = now
            self._enter("warmup", now)
        ready = progress.ready_producers >= self.producers and (
            not need_consumers or progress.ready_consumers >= self.consumers)
        if ready:
            self._enter(first_phase, now)
            return True, None
        if now - self.started > self.warmup_timeout_s:
            self._fail(f"users not ready after {self.warmup_timeout_s:g} s "
                       f"(producers {progress.ready_producers}/{self.producers}, "
                       f"consumers {progress.ready_consumers}/{self.consumers})")
            return False, None
        return False, Step("warmup", self.producers, self.consumers if need_consumers else 0,
                           0.0)

    def _drain(self, now: float, progress: Progress) -> Step | None:
        """Producers stopped; consumers run until a post-producer lag sample reads zero."""
        if self.phase != "drain":
            self._enter("drain", now)
        done_at = progress.producers_done_at
        if (progress.live_producers == 0 and done_at is not None and progress.lag == 0
                and progress.lag_at > done_at):
            self._enter("done", now)
            return None
        if self._elapsed(now) > self.drain_timeout_s:
            self._fail(f"lag did not reach 0 within {self.drain_timeout_s:g} s of draining "
                       f"(last lag {progress.lag}, producers alive {progress.live_producers})")
            return None
        return Step("drain", 0, self.consumers, 0.0)


class PeakShavingPlan(Plan):
    """steady -> burst (rate x factor) -> recovery (until drained) -> drain."""

    def __init__(self, producers: int, consumers: int, base_rate: float, burst_factor: float,
                 steady_s: float, burst_s: float, recovery_min_s: float, recovery_max_s: float,
                 warmup_timeout_s: float = 60.0, drain_timeout_s: float = 120.0) -> None:
        super().__init__(producers, consumers, warmup_timeout_s, drain_timeout_s)
        self.base_rate = base_rate
        self.burst_factor = burst_factor
        self.steady_s = steady_s
        self.burst_s = burst_s
        self.recovery_min_s = recovery_min_s
        self.recovery_max_s = recovery_max_s
        self.baseline_lag = 0
        self.drained_at: float | None = None

    @property
    def drain_threshold(self) -> int:
        """Lag counted as drained: the most seen in the steady phase before the burst."""
        return max(self.baseline_lag, 1)

    def step(self, now: float, progress: Progress) -> Step | None:
        ready, waiting = self._warmup(now, progress, True, "steady")
        if not ready:
            return waiting
        if self.phase == "steady":
            if progress.lag is not None and progress.lag_at > (self.phase_started or now) + 1:
                self.baseline_lag = max(self.baseline_lag, progress.lag)
            if self._elapsed(now) >= self.steady_s:
                self._enter("burst", now)
        if self.phase == "burst" and self._elapsed(now) >= self.burst_s:
            self._enter("recovery", now)
        if self.phase == "recovery":
            t = self._elapsed(now)
            fresh = progress.lag_at > (self.phase_started or now)
            if (self.drained_at is None and fresh and progress.lag is not None
                    and progress.lag <= self.drain_threshold):
                self.drained_at = now
            if (self.drained_at is not None and t >= self.recovery_min_s) or \
                    t >= self.recovery_max_s:
                return self._drain(now, progress)
        if self.phase in ("drain", "done"):
            return self._drain(now, progress)
        if self.phase == "failed":
            return None
        factor = self.burst_factor if self.phase == "burst" else 1.0
        return Step(self.phase, self.producers, self.consumers, self.base_rate * factor)


class BacklogPlan(Plan):
    """fill (consumers stopped, until `backlog_bytes` acked) -> drain (catch-up from the start)."""

    def __init__(self, producers: int, consumers: int, backlog_bytes: int, produce_rate: float,
                 fill_timeout_s: float, warmup_timeout_s: float = 60.0,
                 drain_timeout_s: float = 600.0) -> None:
        super().__init__(producers, consumers, warmup_timeout_s, drain_timeout_s)
        self.backlog_bytes = backlog_bytes
        self.produce_rate = produce_rate
        self.fill_timeout_s = fill_timeout_s

    def step(self, now: float, progress: Progress) -> Step | None:
        ready, waiting = self._warmup(now, progress, False, "fill")
        if not ready:
            return waiting
        if self.phase == "fill":
            if progress.acked_bytes >= self.backlog_bytes:
                self._enter("drain", now)
            elif self._elapsed(now) > self.fill_timeout_s:
                self._fail(f"only {progress.acked_bytes} of {self.backlog_bytes} bytes "
                           f"acknowledged within {self.fill_timeout_s:g} s")
                return None
            else:
                return Step("fill", self.producers, 0, self.produce_rate)
        if self.phase in ("drain", "done"):
            return self._drain(now, progress)
        return None


class SteadyStatePlan(Plan):
    """steady (fixed produce rate, consumers keeping up) for `duration_s` -> drain."""

    def __init__(self, producers: int, consumers: int, rate: float, duration_s: float,
                 warmup_timeout_s: float = 60.0, drain_timeout_s: float = 120.0) -> None:
        super().__init__(producers, consumers, warmup_timeout_s, drain_timeout_s)
        self.rate = rate
        self.duration_s = duration_s

    def step(self, now: float, progress: Progress) -> Step | None:
        ready, waiting = self._warmup(now, progress, True, "steady")
        if not ready:
            return waiting
        if self.phase == "steady":
            if self._elapsed(now) < self.duration_s:
                return Step("steady", self.producers, self.consumers, self.rate)
            self._enter("drain", now)
        if self.phase in ("drain", "done"):
            return self._drain(now, progress)
        return None
