"""PNG chart of a scenario: produce and consume rates (top) and broker-reported lag (bottom).

Reads the CSVs that timeline.py writes; phases are shaded and labelled, injected faults are
drawn as vertical lines. Uses matplotlib's Agg backend (no display needed).

`python -m qnode.loadtest.chart RESULTS_DIR [--out chart.png] [--title T]`
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from qnode.loadtest.timeline import TimelineData, load  # noqa: E402

PHASE_COLOURS = ("#f2f2f2", "#ffe0b2", "#e3f2fd", "#e8f5e9", "#fce4ec", "#ede7f6")


def _shade_phases(ax: plt.Axes, data: TimelineData, label: bool) -> None:
    phases = [m for m in data.marks if m.kind == "phase"]
    end_all = float(data.t[-1] + 1) if data.t.size else 1.0
    for i, m in enumerate(phases):
        end = phases[i + 1].t if i + 1 < len(phases) else end_all
        ax.axvspan(m.t, end, color=PHASE_COLOURS[i % len(PHASE_COLOURS)], zorder=0)
        if label:
            ax.text(m.t, 1.0 - 0.05 * (i % 2), f" {m.label}", transform=ax.get_xaxis_transform(),
                    va="top", ha="left", fontsize=8, color="#555555")
    events = [m for m in data.marks if m.kind == "event"]
    for i, m in enumerate(events):
        ax.axvline(m.t, color="red", linestyle="--", linewidth=1)
        if label:  # staggered, so that close events stay readable
            ax.text(m.t, 0.88 - 0.07 * (i % 4), f" {m.label}", transform=ax.get_xaxis_transform(),
                    va="top", ha="left", fontsize=8, color="red")


def plot(results_dir: Path, out: Path, title: str, unit: str = "records") -> Path:
    """Draw the chart of the timeline in `results_dir` into `out` (PNG); returns `out`.

    `unit` "records" plots records/s, "MB" plots MB/s (for large records: the backlog).
    """
    data = load(results_dir)
    fig, (ax_rate, ax_lag) = plt.subplots(2, 1, sharex=True, figsize=(11, 7),
                                          gridspec_kw={"height_ratios": [3, 2]})
    _shade_phases(ax_rate, data, label=True)
    _shade_phases(ax_lag, data, label=False)
    # Rates are plotted at the middle of their one-second bucket.
    produced, consumed = data.produced, data.consumed
    if unit == "MB":
        produced, consumed = data.produced_mb, data.consumed_mb
    per_s = "MB/s" if unit == "MB" else "records/s"
    ax_rate.plot(data.t + 0.5, produced, label=f"produce (acked, {per_s})", color="#1f77b4")
    ax_rate.plot(data.t + 0.5, consumed, label=f"consume ({per_s})", color="#2ca02c")
    ax_rate.set_ylabel(per_s)
    ax_rate.set_ylim(bottom=0)
    ax_rate.legend(loc="upper right")
    ax_rate.set_title(title)
    ax_rate.grid(True, alpha=0.3)
    if data.lag.size:
        ax_lag.plot(data.lag_t, data.lag, color="#d62728", label="lag (describe_group)")
        ax_lag.fill_between(data.lag_t, data.lag, color="#d62728", alpha=0.15)
    ax_lag.set_ylabel("lag (records)")
    ax_lag.set_xlabel("seconds since start")
    ax_lag.set_ylim(bottom=0)
    ax_lag.legend(loc="upper right")
    ax_lag.grid(True, alpha=0.3)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Chart a load-test timeline as PNG.")
    parser.add_argument("results_dir", type=Path)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--title", default="qnode load test")
    parser.add_argument("--unit", choices=["records", "MB"], default="records")
    args = parser.parse_args(argv)
    out = plot(args.results_dir, args.out or args.results_dir / "chart.png", args.title,
               args.unit)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
