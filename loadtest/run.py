"""One command per load-test scenario (Locust, headless, in-process).

    python -m qnode.loadtest.run peak-shaving [--kill-worker] [--smoke] [options]
    python -m qnode.loadtest.run backlog [--backlog-size 2GiB] [--smoke] [options]
    python -m qnode.loadtest.run steady-state [--rate 1000] [--smoke] [options]

Each starts a node (`qnode start`, free port, temporary data dir; or `--bootstrap` to use
one), runs the scenario's LoadTestShape, and writes CSVs, chart.png and summary.json under
loadtest/results/<scenario>-<time>/ (or --results). Exit status 1 when any acknowledged
record was lost or consumed twice, or anything else failed; the reason is printed.
`--smoke` shrinks everything to seconds and tiny rates (the test suite runs that).
"""

# Locust must monkey-patch before anything imports socket, threading or ssl.
from gevent import monkey

monkey.patch_all()

import argparse  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import re  # noqa: E402
import shlex  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from pathlib import Path  # noqa: E402

from qnode.loadtest.context import WorkloadConfig  # noqa: E402
from qnode.loadtest.scenarios import RunOptions, run_scenario  # noqa: E402
from qnode.loadtest.schedule import (  # noqa: E402
    UNLIMITED,
    BacklogPlan,
    PeakShavingPlan,
    SteadyStatePlan,
)
from qnode.loadtest.shapes import BacklogShape, PeakShavingShape, SteadyStateShape  # noqa: E402

RESULTS_ROOT = Path(__file__).resolve().parent / "results"
SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?\s*$", re.IGNORECASE)
UNITS = {"": 1, "B": 1, "K": 1e3, "KB": 1e3, "KIB": 1024, "M": 1e6, "MB": 1e6,
         "MIB": 1024**2, "G": 1e9, "GB": 1e9, "GIB": 1024**3, "T": 1e12, "TB": 1e12,
         "TIB": 1024**4}


def parse_size(text: str) -> int:
    """'2GiB' -> 2147483648, '500MB' -> 500000000, '4096' -> 4096."""
    m = SIZE.match(text)
    unit = (m.group(2) or "").upper() if m else None
    if not m or unit not in UNITS:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 4096, 500MB, 2GiB)")
    return int(float(m.group(1)) * UNITS[unit])


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--smoke", action="store_true", help="seconds, tiny rates (for the tests)")
    p.add_argument("--bootstrap", default=None, help="use this node instead of starting one")
    p.add_argument("--workers", type=int, default=None, help="node workers (default: cores)")
    p.add_argument("--node-config", type=Path, default=None, help="node.toml for the node")
    p.add_argument("--results", type=Path, default=None, help="results directory")
    p.add_argument("--topic", default=None)
    p.add_argument("--group", default=None)
    p.add_argument("--partitions", type=int, default=4)
    p.add_argument("--replication-factor", type=int, default=1)
    p.add_argument("--producers", type=int, default=None,
                   help="producer users, one process each (default 2)")
    p.add_argument("--consumers", type=int, default=None,
                   help="consumer users, one process each (default 2)")
    p.add_argument("--record-size", type=parse_size, default=None, help="bytes per record")
    p.add_argument("--acks", default="all", choices=["0", "1", "all", "-1"])
    p.add_argument("--linger-ms", type=float, default=None)
    p.add_argument("--compression", default="none")
    p.add_argument("--max-records", type=int, default=500, help="consumer poll size")
    p.add_argument("--max-duration", type=float, default=None, help="hard cap, seconds")
    p.add_argument("--lag-interval", type=float, default=0.5, help="describe_group period, s")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m qnode.loadtest.run",
                                     description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="scenario", required=True)
    p = sub.add_parser("peak-shaving", help="steady, 10x burst, steady; fixed-pace consumers")
    _common(p)
    # Rates the 2-core box carries with broker, producers, consumers and Locust on it (and
    # others' work): 500/s steady, 5,000/s in the burst, consumers 2 x 1,500/s between them.
    p.add_argument("--rate", type=float, default=500.0, help="steady produce rate, records/s")
    p.add_argument("--burst-factor", type=float, default=10.0)
    p.add_argument("--steady", type=float, default=20.0, help="seconds before the burst")
    p.add_argument("--burst", type=float, default=60.0, help="burst length, seconds")
    p.add_argument("--recovery-min", type=float, default=10.0, help="steady seconds after")
    p.add_argument("--recovery-max", type=float, default=300.0)
    p.add_argument("--consume-rate", type=float, default=1500.0,
                   help="processing pace of each consumer, records/s")
    p.add_argument("--kill-worker", action="store_true",
                   help="kill -9 one node worker during the burst")
    p.add_argument("--kill-target", default="any", choices=["any", "offsets", "other"],
                   help="which worker --kill-worker kills: any leader, the one holding the "
                        "group's offsets partition, or one that does not")
    p.add_argument("--kill-at", type=float, default=None,
                   help="seconds into the burst for --kill-worker (default: half way)")
    p = sub.add_parser("backlog", help="write a backlog with consumers stopped, then drain")
    _common(p)
    p.add_argument("--backlog-size", type=parse_size, default=parse_size("4GiB"))
    p.add_argument("--rate", type=float, default=UNLIMITED,
                   help="produce rate while filling, records/s (default: as fast as it goes)")
    p.add_argument("--consume-rate", type=float, default=0.0,
                   help="per-consumer pace while catching up (0: as fast as it goes)")
    p = sub.add_parser("steady-state", help="fixed-rate produce and consume; latency")
    _common(p)
    p.add_argument("--rate", type=float, default=1000.0, help="produce rate, records/s")
    p.add_argument("--duration", type=float, default=60.0, help="seconds")
    p.add_argument("--consume-rate", type=float, default=0.0,
                   help="per-consumer pace (0: as fast as it goes)")
    return parser


SMOKE = {
    "peak-shaving": {"rate": 40.0, "steady": 2.0, "burst": 2.0, "recovery_min": 1.0,
                     "recovery_max": 10.0, "consume_rate": 150.0, "record_size": 100,
                     "producers": 2, "consumers": 2},
    "backlog": {"backlog_size": 2_000_000, "record_size": 4096, "rate": UNLIMITED,
                "producers": 1, "consumers": 1},
    "steady-state": {"rate": 100.0, "duration": 2.0, "record_size": 100,
                     "producers": 1, "consumers": 1},
}
KEEP_IF_GIVEN = ("record_size", "producers", "consumers")
DEFAULT_RECORD_SIZE = {"peak-shaving": 200, "backlog": 16384, "steady-state": 200}


def configure(args: argparse.Namespace) -> tuple:
    """(RunOptions, WorkloadConfig, plan, shape class, drain threshold) for the arguments."""
    if args.smoke:
        for k, v in SMOKE[args.scenario].items():
            if k not in KEEP_IF_GIVEN or getattr(args, k) is None:
                setattr(args, k, v)
    args.producers = args.producers or 2
    args.consumers = args.consumers or 2
    record_size = args.record_size or DEFAULT_RECORD_SIZE[args.scenario]
    stamp = time.strftime("%Y%m%d-%H%M%S")
    results = args.results or RESULTS_ROOT / f"{args.scenario}-{stamp}"
    run_id = uuid.uuid4().hex[:8]
    linger = args.linger_ms
    if linger is None:
        linger = 0.0 if args.scenario == "steady-state" else 5.0
    acks = args.acks if args.acks == "all" else int(args.acks)
    workload = WorkloadConfig(
        bootstrap="", topic=args.topic or f"lt-{args.scenario}-{run_id}",
        group=args.group or f"lt-{args.scenario}-{run_id}", record_size=record_size,
        partitions=args.partitions, consume_rate=args.consume_rate, max_records=args.max_records,
        producer={"acks": acks, "linger_ms": linger, "compression": args.compression,
                  "enable_idempotence": True, "delivery_timeout_ms": 120000},
        # Heartbeats well under Kafka's 3 s, so a group settles in a second, not several.
        consumer={"heartbeat_interval_ms": 300 if args.smoke else 1000},
        ready_timeout_s=30.0 if args.smoke else 60.0,
        stop_timeout_s=30.0 if args.smoke else 180.0)
    opts = RunOptions(name=args.scenario, results_dir=results, producers=args.producers,
                      consumers=args.consumers, bootstrap=args.bootstrap, workers=args.workers,
                      node_config=args.node_config, replication_factor=args.replication_factor,
                      lag_interval_s=args.lag_interval if not args.smoke else 0.25,
                      command=shlex.join(["python", "-m", "qnode.loadtest.run", *sys.argv[1:]]))
    if args.scenario == "peak-shaving":
        plan = PeakShavingPlan(args.producers, args.consumers, args.rate, args.burst_factor,
                               args.steady, args.burst, args.recovery_min, args.recovery_max)
        if args.kill_worker:
            opts.kill_worker_after_s = args.kill_at if args.kill_at is not None else args.burst / 2
            opts.kill_target = args.kill_target
        opts.drain_from = "burst"
        bound = args.steady + args.burst + args.recovery_max + plan.drain_timeout_s + 120
        opts.max_duration_s = args.max_duration or bound
        return opts, workload, plan, PeakShavingShape, lambda: plan.drain_threshold
    if args.scenario == "backlog":
        plan = BacklogPlan(args.producers, args.consumers, args.backlog_size, args.rate,
                           fill_timeout_s=3600.0, drain_timeout_s=3600.0)
        opts.drain_from = "drain"
        opts.max_duration_s = args.max_duration or 7200.0
        # Each producer writes its share of the backlog and no more: the shape only looks
        # once a second, and an unpaced producer writes a lot in a second.
        workload.records_per_producer = -(-args.backlog_size // (record_size * args.producers))
        return opts, workload, plan, BacklogShape, 0
    plan = SteadyStatePlan(args.producers, args.consumers, args.rate, args.duration)
    opts.drain_from = "drain"
    opts.max_duration_s = args.max_duration or args.duration + plan.drain_timeout_s + 120
    return opts, workload, plan, SteadyStateShape, 0


def _flatness_lines(summary: dict) -> list[str]:
    out = []
    for key, what in (("consume_flatness_burst", "in the burst"),
                      ("consume_flatness_backlog", "while behind")):
        f = summary.get(key)
        if not f:
            continue
        out.append(f"consume {what:12} {f['mean_rps']:.0f}/s = {f['mean_pct']}% of the set "
                   f"{f['set_rps']:.0f}/s over {f['seconds']} s; per second "
                   f"{f['min_1s_rps']}..{f['max_1s_rps']} ({f['min_1s_pct']}..{f['max_1s_pct']}%)"
                   f"; lowest {f['window_s']} s window {f['min_window_pct']}%")
    return out


def report(summary: dict) -> str:
    lat = summary.get("latency_ms", {})
    lines = [
        f"scenario        {summary['scenario']}   ({'OK' if summary['ok'] else 'FAILED'})",
        f"chart           {summary['chart']}",
        f"peak produce    {summary['peak_produce_rps']:.0f} records/s "
        f"({summary['peak_produce_mbps']:.1f} MB/s; best 5 s; best 1 s "
        f"{summary['max_1s_produce_rps']})",
        f"steady consume  {summary['steady_consume_rps']:.0f} records/s",
        *_flatness_lines(summary),
        f"max lag         {summary['max_lag']} records",
        f"time to drain   {summary.get('time_to_drain_s')} s "
        f"(lag <= {summary.get('drain_threshold')}, from {summary.get('drain_from_s')} s)",
        f"produce latency {lat.get('produce', {})} ms (send -> ack)",
        f"consume latency {lat.get('consume', {})} ms (send -> processed)",
        f"acked/consumed  {summary['produced']} / {summary['consumed']}, "
        f"produce errors {summary['produce_errors']}",
    ]
    for phase, r in summary.get("phase_rates", {}).items():
        lines.append(f"phase {phase:9} {r['seconds']:4d} s: produce {r['produce_rps']:.0f}/s, "
                     f"consume {r['consume_rps']:.0f}/s")
    cpu = summary.get("cpu", {})
    if cpu.get("ms_per_1k_records"):
        lines.append("cpu ms/1k rec  " + ", ".join(
            f"{k} {v}" for k, v in cpu["ms_per_1k_records"].items()))
    for key in ("fill_produce_trend", "catchup_trend"):
        if key in summary:
            lines.append(f"{key:15} {summary[key]}")
    lines += summary["verification"]
    lines += [f"FAILURE: {f}" for f in summary["failures"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("qnode.loadtest").setLevel(logging.INFO)
    opts, workload, plan, shape_cls, threshold = configure(args)
    outcome = run_scenario(opts, workload, plan, shape_cls, threshold)
    print(report(outcome.summary))
    print(f"results: {outcome.results_dir}")
    if not outcome.ok:
        print("LOAD TEST FAILED", file=sys.stderr)
        print(json.dumps(outcome.summary["failures"]), file=sys.stderr)
    return 0 if outcome.ok else 1


if __name__ == "__main__":
    sys.exit(main())
