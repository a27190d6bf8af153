"""The scenarios as Locust `LoadTestShape`s: peak shaving, backlog, steady state.

Each shape wraps a plan from schedule.py (the state machine, testable without Locust) and,
once per tick, turns its `Step` into what Locust wants -- a user count and the user classes
to run -- and publishes the step's produce rate for the producer users to read. Phase changes
are marked on the timeline, so charts and figures know where the burst was.
"""

from __future__ import annotations

import time

from locust import LoadTestShape
from locust.dispatch import UsersDispatcher

from qnode.loadtest.context import ScenarioContext
from qnode.loadtest.schedule import (
    UNLIMITED,
    BacklogPlan,
    PeakShavingPlan,
    Plan,
    SteadyStatePlan,
    Step,
)
from qnode.loadtest.users import ConsumeUser, ProduceUser

SPAWN_RATE = 50.0


class ExactDispatcher(UsersDispatcher):
    """Dispatches straight to each listed user class's `fixed_count`, every other class to 0.

    Locust's own dispatcher ramps by weights and keeps the class mix it has: measured here,
    a shape going from [ProduceUser] to [ProduceUser, ConsumeUser] to [ConsumeUser] never
    started a consumer (fixed_count) or kept producers running (weights). A scenario needs
    exact counts per phase -- "consumers stopped while producers write" -- so the local runner
    gets this dispatcher (`Environment(dispatcher_class=ExactDispatcher)`).
    """

    def new_dispatch(self, target_user_count: int, spawn_rate: float,
                     user_classes: list | None = None) -> None:
        listed = user_classes if user_classes is not None else self._original_user_classes
        counts = {u.__name__: 0 for u in self._original_user_classes}
        for u in listed:
            counts[u.__name__] = u.fixed_count
        assert sum(counts.values()) == target_user_count, (counts, target_user_count)
        self._pending = [{w.id: dict(counts) for w in self._worker_nodes}]

    def __next__(self) -> dict[str, dict[str, int]]:
        if not getattr(self, "_pending", None):
            raise StopIteration
        return self._pending.pop()


class ScenarioShape(LoadTestShape):
    abstract = True

    def __init__(self, ctx: ScenarioContext, plan: Plan, produce_cls: type[ProduceUser],
                 consume_cls: type[ConsumeUser]) -> None:
        super().__init__()
        self.ctx = ctx
        self.plan = plan
        self.produce_cls = produce_cls
        self.consume_cls = consume_cls
        self.current: Step | None = None
        ctx.shape = self

    def produce_rate_per_user(self) -> float:
        step = self.current
        if step is None or step.producers == 0 or step.produce_rate == 0:
            return 0.0
        if step.produce_rate < 0:
            return UNLIMITED
        return step.produce_rate / step.producers

    def tick(self) -> tuple[int, float, list] | None:
        now = time.time()
        if self.ctx.failures:
            self.ctx.timeline.mark(now, "phase", "aborted")
            return None
        step = self.plan.step(now, self.ctx.progress)
        if step is None:
            if self.plan.failure:
                self.ctx.fail(self.plan.failure)
            self.ctx.timeline.mark(now, "phase", "end")
            self.current = None
            return None
        if self.current is None or step.phase != self.current.phase:
            self.ctx.timeline.mark(now, "phase", step.phase)
            self.ctx.note(f"phase {step.phase}: {step.producers} producers at "
                          f"{step.produce_rate:g} records/s, {step.consumers} consumers")
        self.current = step
        classes: list = []
        if step.producers:
            assert step.producers == self.produce_cls.fixed_count
            classes.append(self.produce_cls)
        if step.consumers:
            assert step.consumers == self.consume_cls.fixed_count
            classes.append(self.consume_cls)
        return step.producers + step.consumers, SPAWN_RATE, classes


class PeakShavingShape(ScenarioShape):
    """Steady rate, a burst of `burst_factor` x for `burst_s`, steady again until drained."""

    def __init__(self, ctx: ScenarioContext, plan: PeakShavingPlan,
                 produce_cls: type[ProduceUser], consume_cls: type[ConsumeUser]) -> None:
        super().__init__(ctx, plan, produce_cls, consume_cls)


class BacklogShape(ScenarioShape):
    """Producers alone until the backlog is written, then consumers alone until it is read."""

    def __init__(self, ctx: ScenarioContext, plan: BacklogPlan,
                 produce_cls: type[ProduceUser], consume_cls: type[ConsumeUser]) -> None:
        super().__init__(ctx, plan, produce_cls, consume_cls)


class SteadyStateShape(ScenarioShape):
    """Producers and consumers together at one fixed rate, for latency percentiles."""

    def __init__(self, ctx: ScenarioContext, plan: SteadyStatePlan,
                 produce_cls: type[ProduceUser], consume_cls: type[ConsumeUser]) -> None:
        super().__init__(ctx, plan, produce_cls, consume_cls)
