"""Runs one scenario end to end: node, topic, Locust in-process, figures, chart, verification.

`run_scenario` starts a node with `qnode start` (free port, temporary data dir) unless given
a bootstrap, starts the lag monitor (which creates the topic), runs Locust headless through
its library API (Environment, LocalRunner, the scenario's LoadTestShape, the stats CSV
writer) until the shape ends or `max_duration_s` passes, stops every child cleanly, stops
the node, then writes into the results directory:

    locust_stats.csv, locust_stats_history.csv, locust_failures.csv, locust_exceptions.csv
    timeline.csv, lag.csv, marks.csv (timeline.py), chart.png (chart.py), summary.json
    ids/ (acknowledged and consumed record ids), logs/ (node and child processes)

and checks that every acknowledged record was consumed exactly once by the group. Must run
in a gevent-patched process (run.py patches first thing).
"""

from __future__ import annotations

import json
import logging
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gevent
from gevent.event import Event
from locust.env import Environment
from locust.stats import CSV_STATS_INTERVAL_SEC, PERCENTILES_TO_REPORT, StatsCSVFileWriter

from qnode.loadtest import chart
from qnode.loadtest.client_process import ClientProcess, ClientProcessError
from qnode.loadtest.context import ScenarioContext, WorkloadConfig
from qnode.loadtest.local_node import LocalNode, NodeError, port_of, sweep_stale_data_dirs
from qnode.loadtest.schedule import Plan
from qnode.loadtest.shapes import ExactDispatcher, ScenarioShape
from qnode.loadtest.timeline import load, rate_trend, summarize
from qnode.loadtest.users import user_classes
from qnode.loadtest.verify import verify

log = logging.getLogger("qnode.loadtest")
PROGRESS_EVERY_S = 5.0


@dataclass
class RunOptions:
    name: str                       # scenario name, for titles and the results
    results_dir: Path
    producers: int
    consumers: int
    bootstrap: str | None = None    # an existing node; None starts one
    workers: int | None = None
    node_config: Path | None = None
    replication_factor: int = 1
    topic_config: dict[str, str] = field(default_factory=dict)
    lag_interval_s: float = 0.5
    max_duration_s: float = 900.0
    kill_worker_after_s: float | None = None  # into the burst (peak shaving)
    kill_target: str = "any"  # "offsets": the group's offsets worker; "other": one that is not
    drain_from: str | None = None   # phase whose end (burst) or start (drain) starts the clock
    command: str = ""


@dataclass
class Outcome:
    ok: bool
    summary: dict[str, Any]
    results_dir: Path


class _Run:
    """The moving parts of one run, so that `finish` can stop whatever got started."""

    def __init__(self, opts: RunOptions, workload: WorkloadConfig) -> None:
        self.opts = opts
        self.workload = workload
        self.node: LocalNode | None = None
        self.monitor: ClientProcess | None = None
        self.endpoints: list[str] = []
        self.offsets_endpoint: str | None = None  # the worker writing the group's commits
        self.greenlets: list[gevent.Greenlet] = []
        self.ctx = ScenarioContext(workload, opts.results_dir, time.time())
        self.node_exit: int | None = None
        self.node_cpu_s: float | None = None
        self.client_stats: dict[str, Any] = {}
        self.aborted = Event()

    def on_sigterm(self) -> None:
        """SIGTERM (e.g. a test runner's timeout): stop like a failed run, cleaning up."""
        if not self.aborted.is_set():
            self.ctx.fail("terminated by SIGTERM")
            self.aborted.set()

    def on_monitor(self, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op == "lag":
            p = self.ctx.progress
            p.lag, p.lag_at = msg["lag"], msg["t"]
            self.ctx.timeline.add_lag(msg["t"], msg["lag"], msg.get("log_end"))
            self.endpoints = msg.get("endpoints") or self.endpoints
            self.offsets_endpoint = msg.get("offsets_endpoint") or self.offsets_endpoint
        elif op == "log":
            self.ctx.note(msg["msg"])
        elif op == "fatal":
            self.ctx.fail(f"lag monitor failed:\n{msg['msg']}")

    def start_node_and_topic(self) -> None:
        if self.opts.bootstrap is None:
            for d in sweep_stale_data_dirs():
                self.ctx.note(f"removed the data dir of an earlier, killed run: {d}")
            self.node = LocalNode.start(self.ctx.logs_dir, self.opts.workers, self.opts.node_config)
            self.workload.bootstrap = self.node.bootstrap
            self.ctx.note(f"node started: {self.node.bootstrap}, data {self.node.data_dir}")
        else:
            self.workload.bootstrap = self.opts.bootstrap
        cfg = {"bootstrap": self.workload.bootstrap, "topic": self.workload.topic,
               "group": self.workload.group, "partitions": self.workload.partitions,
               "replication_factor": self.opts.replication_factor,
               "topic_config": self.opts.topic_config, "interval_s": self.opts.lag_interval_s,
               "ready_timeout_s": self.workload.ready_timeout_s}
        self.monitor = ClientProcess("monitor", "qnode.loadtest.proc_monitor", cfg,
                                     self.ctx.logs_dir, self.on_monitor)
        self.monitor.wait_ready(self.workload.ready_timeout_s)
        self.greenlets.append(gevent.spawn(self._pump_monitor))

    def _pump_monitor(self) -> None:
        assert self.monitor is not None
        while not self.monitor.finished:
            self.monitor.pump(0.5)

    def _progress(self) -> None:
        last = dict(self.ctx.timeline.totals)
        while True:
            gevent.sleep(PROGRESS_EVERY_S)
            now = dict(self.ctx.timeline.totals)
            rate = {k: (now[k] - last[k]) / PROGRESS_EVERY_S for k in ("produce", "consume")}
            last = now
            self.ctx.note(
                f"[{time.time() - self.ctx.timeline.t0:6.1f}s] {self.ctx.timeline.phase}: "
                f"produce {rate['produce']:.0f}/s consume {rate['consume']:.0f}/s "
                f"lag {self.ctx.progress.lag} acked {now['produce']} consumed {now['consume']} "
                f"errors {now['errors']}")

    def _kill_worker(self, after_s: float) -> None:
        tl = self.ctx.timeline
        while True:
            burst = [m for m in tl.marks if m.kind == "phase" and m.label == "burst"]
            if burst and time.time() - burst[0].t >= after_s:
                break
            gevent.sleep(0.1)
        assert self.node is not None
        before = len(self.node.descendants())
        candidates = kill_candidates(self.endpoints, self.offsets_endpoint,
                                     self.opts.kill_target)
        try:
            pid, endpoint = self.node.kill9_worker(candidates), None
            endpoint = next((e for e in candidates if self.node.pid_listening_on(
                port_of(e)) is None), None)
        except NodeError as e:
            self.ctx.fail(f"kill -9 of a worker failed: {e}")
            return
        offsets = "" if endpoint is None or self.offsets_endpoint is None else (
            ", which held the group's offsets" if endpoint == self.offsets_endpoint else
            ", not the group's offsets")
        self.ctx.mark_event(f"kill -9 worker {pid}{offsets}")
        deadline = time.time() + 60
        while time.time() < deadline:
            gevent.sleep(0.1)
            alive = [p for p in self.node.descendants() if p.pid != pid and p.is_running()]
            if len(alive) >= before:
                self.ctx.mark_event("worker restarted")
                return
        self.ctx.fail("the supervisor did not restart the killed worker within 60 s")

    def run_locust(self, plan: Plan, shape_cls: type[ScenarioShape]) -> None:
        produce_cls, consume_cls = user_classes(self.opts.producers, self.opts.consumers)
        shape = shape_cls(self.ctx, plan, produce_cls, consume_cls)
        env = Environment(user_classes=[produce_cls, consume_cls], shape_class=shape,
                          stop_timeout=self.workload.stop_timeout_s,
                          dispatcher_class=ExactDispatcher)
        env.qnode = self.ctx  # type: ignore[attr-defined]  # how users find the context
        env.events.request.add_listener(self.ctx.timeline.on_request)
        runner = env.create_local_runner()
        writer = StatsCSVFileWriter(env, PERCENTILES_TO_REPORT,
                                    str(self.opts.results_dir / "locust"), full_history=True)
        stopped = Event()
        env.events.test_stop.add_listener(lambda **_: stopped.set())
        writer_greenlet = gevent.spawn(writer)
        self.greenlets.append(gevent.spawn(self._progress))
        if self.opts.kill_worker_after_s is not None:
            self.greenlets.append(gevent.spawn(self._kill_worker, self.opts.kill_worker_after_s))
        runner.start_shape()
        gevent.wait([stopped, self.aborted], timeout=self.opts.max_duration_s, count=1)
        if not stopped.is_set():
            if not self.aborted.is_set():
                self.ctx.fail(f"scenario did not finish within {self.opts.max_duration_s:g} s")
            runner.stop()
        runner.quit()
        # One more turn of the CSV writer, so the files hold the final totals.
        gevent.sleep(CSV_STATS_INTERVAL_SEC + 0.2)
        writer_greenlet.kill()
        writer.close_files()

    def finish(self) -> None:
        self.ctx.stop_all()
        for c in self.ctx.clients:
            if c.stats is not None:
                self.client_stats[c.name] = c.stats
        if self.monitor is not None:
            self.monitor.stop(10.0)
        for g in self.greenlets:
            g.kill()
        if self.node is not None:
            self.node_cpu_s = self.node.cpu_seconds()
            self.node_exit = self.node.stop()
            if self.node_exit != 0:
                self.ctx.fail(f"node exited with {self.node_exit} on SIGTERM "
                              f"(log: {self.node.log_path})")
            leftovers = self.node.shm_leftovers()
            if leftovers:
                self.ctx.fail(f"node left shared memory behind (now unlinked): {leftovers}")


def _phase_seconds(values: Any, phases: list[str], phase: str) -> Any:
    import numpy as np

    idx = [i for i, p in enumerate(phases) if p == phase]
    return values[idx] if idx else np.zeros(0)


def kill_candidates(endpoints: list[str], offsets_endpoint: str | None,
                    target: str) -> list[str]:
    """The leader endpoints to try killing, in order, for `--kill-target`."""
    if target == "offsets" and offsets_endpoint is not None:
        return [offsets_endpoint]
    if target == "other" and offsets_endpoint is not None:
        return [e for e in endpoints if e != offsets_endpoint]
    return list(endpoints)


def cpu_figures(run: _Run, locust_cpu_s: float, records: int) -> dict[str, Any]:
    """CPU seconds by role (load generator vs node), and per thousand acknowledged records."""
    by_role: dict[str, float] = {"locust": locust_cpu_s}
    for name, stats in run.client_stats.items():
        role = name.split("-")[0] + "s"
        by_role[role] = by_role.get(role, 0.0) + float(stats.get("cpu_s", 0.0))
    if run.node_cpu_s is not None:
        by_role["node"] = run.node_cpu_s  # a killed worker's CPU is gone with it
    out: dict[str, Any] = {"seconds": {k: round(v, 1) for k, v in by_role.items()}}
    if records:
        out["ms_per_1k_records"] = {k: round(v * 1e6 / records, 1) for k, v in by_role.items()}
    return out


def run_scenario(opts: RunOptions, workload: WorkloadConfig, plan: Plan,
                 shape_cls: type[ScenarioShape], drain_threshold: Any = 0) -> Outcome:
    """Run it, write everything under `opts.results_dir`, return the figures."""
    opts.results_dir.mkdir(parents=True, exist_ok=True)
    # The id logs are appended to: ids of an earlier run in the same directory would be
    # counted as this run's acknowledged records (and reported missing).
    shutil.rmtree(opts.results_dir / "ids", ignore_errors=True)
    run = _Run(opts, workload)
    handler = gevent.signal_handler(signal.SIGTERM, run.on_sigterm)
    try:
        run.start_node_and_topic()
        run.run_locust(plan, shape_cls)
    except (ClientProcessError, NodeError) as e:
        run.ctx.fail(str(e))
    except KeyboardInterrupt:
        run.ctx.fail("interrupted (SIGINT)")
    finally:
        run.finish()
        handler.cancel()
    ctx = run.ctx
    ctx.timeline.write(opts.results_dir)
    data = load(opts.results_dir)
    threshold = drain_threshold() if callable(drain_threshold) else drain_threshold
    set_rps = workload.consume_rate * opts.consumers if workload.consume_rate > 0 else 0.0
    summary = summarize(data, opts.drain_from, threshold, set_rps)
    summary["scenario"] = opts.name
    summary["latency_ms"] = ctx.timeline.latency_percentiles()
    summary["produce_errors"] = ctx.timeline.totals["errors"]
    if "fill" in data.phase:
        summary["fill_produce_trend"] = rate_trend(_phase_seconds(data.produced, data.phase,
                                                                  "fill"))
        catchup = _phase_seconds(data.consumed, data.phase, "drain")
        summary["catchup_trend"] = rate_trend(catchup)
        summary["catchup_mbps_peak"] = float(_phase_seconds(data.consumed_mb, data.phase,
                                                            "drain").max(initial=0.0))
    result = verify(ctx.ids_dir, [workload.group])
    summary["verification"] = result.lines()
    summary["exactly_once"] = result.ok
    summary["failures"] = ctx.failures
    summary["clients"] = run.client_stats
    summary["cpu"] = cpu_figures(run, time.process_time(), summary["produced"])
    summary["node_exit_code"] = run.node_exit
    summary["command"] = opts.command
    unit = "MB" if workload.record_size >= 4096 else "records"
    title = (f"qnode {opts.name}: {opts.producers} producers, {opts.consumers} consumers, "
             f"{workload.partitions} partitions, {workload.record_size} B records")
    summary["chart"] = str(chart.plot(opts.results_dir, opts.results_dir / "chart.png", title,
                                      unit))
    ok = result.ok and not ctx.failures
    summary["ok"] = ok
    (opts.results_dir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return Outcome(ok, summary, opts.results_dir)
