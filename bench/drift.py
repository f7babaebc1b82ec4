"""Clock drift benchmark: sources whose sample clock is off by +/-0.05 % against the LSL
clock, read by StreamReader + Windower for ``--duration`` seconds.

    .venv/bin/python bench/drift.py                  # 10 minutes
    .venv/bin/python bench/drift.py --duration 60    # shorter

One synthetic outlet per drift (tests/helpers/lsl_source.py ``--clock-drift D``: it
declares the nominal rate but acquires ``sfreq * (1 + D)`` samples per LSL second and
stamps them with the LSL time of acquisition) runs in a subprocess; this process reads
each with its own StreamReader and a Windower (0.25 s windows every 0.05 s, every window
taken: ``latest_wins=False``) in one consumer thread per stream. Checked for every
window: it ends on the hop grid one hop after the previous one, its counter channel
continues the previous window's (no sample lost or repeated), and every sample's
corrected LSL timestamp is later than the one before. Measured per minute: pull -> window
latency (from the pull that brought a window's last sample to ``next_window`` returning
it), the samples' age (that sample's LSL timestamp to the pull), and the rate the
timestamps carry. A drift in latency would show as a slope of the per-minute medians.
JSON: bench/results/drift.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
from common import format_table, machine_info, percentiles, write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LSLAPICFG", str(ROOT / "rtdecode" / "lsl" / "lsl_local.cfg"))

from tests.helpers.lsl_source import SourceProcess  # noqa: E402

WARMUP_S = 2.0


class Consumer(threading.Thread):
    """One stream: its reader, windower and the per-window checks and measurements."""

    def __init__(self, name: str, drift: float, args) -> None:
        super().__init__(name=f"drift{drift:+g}", daemon=True)
        from rtdecode.stream import StreamReader

        self.drift, self.args = drift, args
        self.reader = StreamReader(name, buffer_s=30.0, resolve_timeout_s=30.0).start()
        self.rows: list[tuple[float, float, float]] = []  # (t since start s, pull ms, age ms)
        self.stamp_points: list[tuple[int, float]] = []  # (sample, t_lsl) once a second
        self.problems = {"off_grid": 0, "counter_lost": 0, "counter_repeated": 0,
                         "not_monotonic": 0}
        self.windows = 0
        self.error: BaseException | None = None
        self.stop_event = threading.Event()

    def run(self) -> None:
        try:
            self._run()
        except BaseException as exc:  # reported in the JSON and the exit code
            self.error = exc

    def _run(self) -> None:
        from rtdecode.lsl.streams import COUNTER_CHANNEL, local_clock
        from rtdecode.stream import Windower

        reader = self.reader
        reader.wait_ready(30.0)
        win = Windower(reader, window_s=0.25, hop_s=0.05, latest_wins=False)
        k_counter = None
        prev_end, prev_count, prev_t = None, None, None
        t_start = time.monotonic() + WARMUP_S
        next_point = 0
        while not self.stop_event.is_set():
            w = win.next_window(timeout_s=1.0)
            now = local_clock()
            if w is None:
                continue
            end = w.last_sample + 1
            if k_counter is None:
                k_counter = w.ch_names.index(COUNTER_CHANNEL)
            start = w.first_sample if prev_end is None else prev_end
            if prev_end is not None and end - prev_end != win.n_hop:
                self.problems["off_grid"] += 1
            counts = w.data[k_counter, start - w.first_sample :].astype(np.int64)
            steps = np.diff(counts if prev_count is None else np.r_[prev_count, counts])
            self.problems["counter_lost"] += int(np.sum(steps[steps > 1] - 1))
            self.problems["counter_repeated"] += int(np.sum(steps < 1))
            t = reader.ring.read_times(start, end)
            diffs = np.diff(t if prev_t is None else np.r_[prev_t, t])
            self.problems["not_monotonic"] += int(np.sum(diffs <= 0))
            prev_end, prev_count, prev_t = end, int(counts[-1]), float(t[-1])
            if end >= next_point:
                self.stamp_points.append((end - 1, float(t[-1])))
                next_point = end + round(reader.sfreq_hz)
            if time.monotonic() >= t_start:
                self.windows += 1
                self.rows.append((
                    time.monotonic() - t_start,
                    (now - w.t_arrived) * 1e3,
                    (w.t_arrived - w.t_last) * 1e3,
                ))
        self.stats = reader.stats
        reader.stop()

    def result(self, sfreq_hz: float) -> dict:
        rows = np.array(self.rows) if self.rows else np.zeros((0, 3))
        minutes = []
        n_min = int(np.ceil(rows[-1, 0] / 60)) if len(rows) else 0
        pts = np.array(self.stamp_points)
        for m in range(n_min):
            sel = rows[(rows[:, 0] >= 60 * m) & (rows[:, 0] < 60 * (m + 1))]
            minutes.append({
                "minute": m + 1,
                "windows": len(sel),
                "pull_ms": percentiles(sel[:, 1]),
                "age_ms": percentiles(sel[:, 2]),
            })
        p50 = [mi["pull_ms"].get("p50") for mi in minutes]
        age50 = [mi["age_ms"].get("p50") for mi in minutes]
        rate = None
        if len(pts) > 1:
            rate = (pts[-1, 0] - pts[0, 0]) / (pts[-1, 1] - pts[0, 1])
        s = self.stats
        return {
            "drift": self.drift,
            "windows": self.windows,
            "samples": s.samples,
            "reader": {k: getattr(s, k) for k in (
                "gaps", "lost_samples", "repeated_samples", "backwards_timestamps",
                "timestamp_jumps", "overflow", "reconnects")},
            "checks": self.problems,
            "stamped_rate_hz": rate,
            "stamped_drift": None if rate is None else rate / sfreq_hz - 1,
            "pull_ms_p50_first_last": [p50[0], p50[-1]] if p50 else None,
            "pull_ms_p50_slope_per_min": slope(p50),
            "age_ms_p50_first_last": [age50[0], age50[-1]] if age50 else None,
            "age_ms_p50_slope_per_min": slope(age50),
            "minutes": minutes,
            "error": None if self.error is None else repr(self.error),
        }


def slope(y: list[float]) -> float | None:
    """Least-squares slope of ``y`` per step (ms per minute for per-minute medians)."""
    return float(np.polyfit(np.arange(len(y)), y, 1)[0]) if len(y) > 1 else None


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=600.0, help="seconds measured")
    p.add_argument("--drifts", type=float, nargs="+", default=[5e-4, -5e-4])
    p.add_argument("--n-channels", type=int, default=64)
    p.add_argument("--sfreq", type=float, default=1200.0)
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "drift.json")
    args = p.parse_args(argv)

    base = f"rtd-drift-{os.getpid()}"
    sources, consumers = [], []
    machine_start = machine_info()
    try:
        for k, d in enumerate(args.drifts):
            name = f"{base}-{k}"
            sources.append(SourceProcess(
                name, counter=True, n_channels=args.n_channels, sfreq=args.sfreq,
                clock_drift=d, wait_consumer_s=60,
            ))
            consumers.append(Consumer(name, d, args))
        for c in consumers:
            c.start()
        t_end = time.monotonic() + WARMUP_S + args.duration
        while time.monotonic() < t_end:
            time.sleep(min(10.0, max(0.0, t_end - time.monotonic())))
            done = time.monotonic() - (t_end - args.duration)
            print(f"drift: {max(0.0, done):.0f} / {args.duration:.0f} s", file=sys.stderr)
    finally:
        for c in consumers:
            c.stop_event.set()
        for c in consumers:
            c.join(10)
        for s in sources:
            s.kill()

    results = [c.result(args.sfreq) for c in consumers]
    out = {
        "benchmark": "drift",
        "command": "bench/drift.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "duration_s": args.duration,
        "n_channels": args.n_channels + 1,
        "sfreq_hz": args.sfreq,
        "window_s": 0.25,
        "hop_s": 0.05,
        "machine_start": machine_start,
        "machine_end": machine_info(),
        "streams": results,
    }
    write_json(args.out, out)
    header = ["minute"] + [f"{r['drift']:+.2%} pull p50 / age p50 (ms)" for r in results]
    rows = []
    for m in range(max(len(r["minutes"]) for r in results)):
        row = [m + 1]
        for r in results:
            mi = r["minutes"][m] if m < len(r["minutes"]) else None
            row.append(
                "-" if mi is None or not mi["windows"]
                else f"{mi['pull_ms']['p50']:.2f} / {mi['age_ms']['p50']:.2f}"
            )
        rows.append(row)
    print(format_table(header, rows))
    for r in results:
        print(
            f"drift {r['drift']:+.2%}: {r['windows']} windows, checks {r['checks']}, reader "
            f"{r['reader']}, stamped drift {r['stamped_drift']:+.5%}, pull p50 first/last "
            f"{r['pull_ms_p50_first_last']} ms (slope {r['pull_ms_p50_slope_per_min']} ms/min)"
        )
    print(f"wrote {args.out}")
    bad = any(
        r["error"] or any(r["checks"].values()) or r["reader"]["lost_samples"] for r in results
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
