"""A source whose sample clock is off by +/-0.05 % against the LSL clock (a real outlet in
a subprocess: tests/helpers/lsl_source.py ``--clock-drift``; it declares the nominal rate
and acquires ``sfreq * (1 + drift)`` samples per LSL second).

24 s of stream at 2x speed (12 s of LSL clock), read by StreamReader + Windower: windows
stay cut by sample index (the counter channel shows no sample lost or repeated, every
window on the hop grid), timestamps stay strictly monotonic after LSL's clock correction
and carry the rate the source stamps, and the pull -> window latency does not drift.
The samples' age (pull time minus timestamp) is measured to the drift's own size: with
LSL stamps it stays flat; with the source's own stamps it falls by the drift, 0.5 ms per
second of LSL clock at 0.05 %, and the test measures that slope within 0.1 ms/s (the
slope of the per-second 10th percentiles, whose standard error here is about 0.01 ms/s).
The 10-minute measurement at 1x is bench/drift.py (bench/results/drift.json).
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from rtdecode.lsl.streams import COUNTER_CHANNEL, local_clock
from rtdecode.stream import StreamReader, Windower
from tests.helpers.lsl_source import SourceProcess

SFREQ, SPEED, DURATION_S = 1200.0, 2.0, 24.0
SLOPE_TOL_MS_PER_S = 0.1  # against 0.5 ms/s, the age slope a 0.05 % drift gives


@pytest.mark.parametrize(
    ("drift", "stamp_clock"), [(5e-4, "lsl"), (-5e-4, "lsl"), (5e-4, "source")]
)
def test_drifting_source_clock_keeps_windows_on_the_sample_grid(unique_name, drift, stamp_clock):
    n_total = int(DURATION_S * SFREQ)
    with (
        SourceProcess(
            unique_name,
            counter=True,
            n_channels=16,
            sfreq=SFREQ,
            speed=SPEED,
            duration=DURATION_S,
            clock_drift=drift,
            stamp_clock=stamp_clock,
        ),
        StreamReader(unique_name) as reader,
    ):
        reader.wait_ready(15.0)
        win = Windower(reader, window_s=0.25, hop_s=0.05, latest_wins=False)
        ends, counters, stamps, pull_ms, age_ms, arrived = [], [], [], [], [], []
        n_hop, n_times = round(0.05 * SFREQ), round(0.25 * SFREQ)
        last_end = n_total // n_hop * n_hop
        deadline = time.monotonic() + 60
        while not ends or ends[-1] < last_end:
            assert time.monotonic() < deadline, f"windows up to {ends[-1:]} of {last_end}"
            w = win.next_window(timeout_s=0.5)
            if w is None:
                continue
            returned = local_clock()
            end = w.last_sample + 1
            start = ends[-1] if ends else w.first_sample
            ends.append(end)
            counters.append(w.data[w.ch_names.index(COUNTER_CHANNEL), start - w.first_sample :])
            stamps.append(reader.ring.read_times(start, end))  # every sample, once
            pull_ms.append((returned - w.t_arrived) * 1e3)
            age_ms.append((w.t_arrived - w.t_last) * 1e3)
            arrived.append(w.t_arrived)
        stats, wstats = reader.stats, win.stats
    # Cut by sample index: every window ends on the hop grid, one hop after the last.
    assert (win.n_hop, win.n_times) == (n_hop, n_times)
    assert ends[0] == n_times and np.all(np.diff(ends) == n_hop)
    assert wstats.skipped == wstats.overflow == 0
    counter = np.concatenate(counters).astype(np.int64)
    np.testing.assert_array_equal(counter, np.arange(len(counter)))  # none lost or repeated
    assert stats.lost_samples == stats.repeated_samples == stats.gaps == 0
    assert stats.backwards_timestamps == 0
    # Timestamps: strictly monotonic after correction, at the rate the source really has.
    t = np.concatenate(stamps)
    assert len(t) == last_end and np.all(np.diff(t) > 0)
    rate_hz = (len(t) - 1) / (t[-1] - t[0]) / SPEED
    stamped_drift = drift if stamp_clock == "lsl" else 0.0
    assert rate_hz / SFREQ - 1 == pytest.approx(stamped_drift, abs=2e-5)
    # Drift of latency and age, in ms per second of LSL clock: the slope of the per-second
    # 10th percentiles (a stall of this shared machine delivers a burst of windows late at
    # any time; the lower envelope is what a clock drift moves).
    slopes = {name: p10_slope_ms_per_s(arrived, v) for name, v in (("pull", pull_ms),
                                                                   ("age", age_ms))}
    # LSL stamps: the age stays flat. The source's own stamps run slow (or fast) against
    # the LSL clock by the drift: each second of LSL clock, the age changes by -drift s.
    want_age = 0.0 if stamp_clock == "lsl" else -drift * 1e3
    print(
        f"drift {drift:+.2%} ({stamp_clock} stamps): stamped rate {rate_hz:.3f} Hz; slopes "
        f"of the per-second p10: pull->window {slopes['pull']:+.3f} ms/s, age "
        f"{slopes['age']:+.3f} ms/s (expected {want_age:+.3f})"
    )
    assert abs(slopes["pull"]) < SLOPE_TOL_MS_PER_S
    assert abs(slopes["age"] - want_age) < SLOPE_TOL_MS_PER_S


def p10_slope_ms_per_s(t_s: list[float], values_ms: list[float]) -> float:
    """Least-squares slope of the 10th percentile of ``values_ms`` in each second of
    ``t_s``, in ms per s (seconds with fewer than 10 values are left out)."""
    t = np.asarray(t_s) - t_s[0]
    v = np.asarray(values_ms)
    sec = np.floor(t).astype(int)
    x, y = [], []
    for k in np.unique(sec):
        sel = sec == k
        if sel.sum() >= 10:
            x.append(k + 0.5)
            y.append(np.percentile(v[sel], 10))
    assert len(x) >= 8, f"only {len(x)} seconds with 10 windows"
    return float(np.polyfit(x, y, 1)[0])
