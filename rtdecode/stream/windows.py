"""Windower: cut Windows from a StreamReader's ring, by absolute sample index.

Threads
-------
One consumer thread calls :meth:`Windower.next_window` (or iterates); it blocks on the
ring's condition variable, which the reader thread notifies after every chunk, so a
window is cut as soon as its last sample is in the ring (no polling, no sleeps). The
Windower's own counters belong to that consumer thread; ``stats`` returns a snapshot.

Sample grid
-----------
Windows never depend on wall-clock time. In continuous mode, window ends (exclusive
absolute indices) are the multiples of the hop in samples; a window holds the ``n_pad``
samples of filter history before its ``window_s`` of data. Replaying a stream at 10x
speed therefore yields exactly the windows of a 1x replay (sample 0 is the first sample
the reader received). In event mode each window starts at the sample of the marker's
time plus ``offset_s``.

Latest wins: when the consumer is slower than the hop, the windows it did not take are
skipped and counted (``stats.skipped``), and the newest complete window is returned.
With ``latest_wins=False`` every window is returned in order while the ring still holds
it; those it lost are counted in ``stats.overflow``.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, replace

import numpy as np

from rtdecode.contracts import Marker, Window
from rtdecode.stream.ring import OverwrittenError, locate_time

__all__ = ["Windower", "WindowerStats"]


@dataclass(frozen=True, slots=True)
class WindowerStats:
    """Counters of a Windower.

    Attributes
    ----------
    windows : int
        Windows returned.
    skipped : int
        Complete windows passed over because a newer one was ready (latest wins).
    overflow : int
        Windows lost because the ring had already overwritten their samples.
    markers_missed : int
        Event markers for which no window could be cut (their samples were before the
        stream's start, inside a gap, overwritten, or left the marker history).
    flagged : int
        Windows returned holding NaN/Inf values or a gap.
    """

    windows: int = 0
    skipped: int = 0
    overflow: int = 0
    markers_missed: int = 0
    flagged: int = 0

    def as_dict(self) -> dict[str, int]:
        """The counters as a JSON-able dict (for /api/status and /metrics)."""
        return asdict(self)


class Windower:
    """Cut fixed-length windows from a running StreamReader.

    Parameters
    ----------
    reader : StreamReader
        Started (``wait_ready`` may still be pending: the first call waits for it).
    window_s : float
        Window length in seconds (without the padding).
    hop_s : float
        Continuous mode: one window every ``hop_s`` seconds of stream.
    pad_s : float
        Leading history each window carries for the filters (``Window.n_pad`` samples).
    mode : {"continuous", "event"}
    offset_s : float
        Event mode: window start relative to the marker's time (may be negative).
    markers : MarkerReader, optional
        Required in event mode (its error is raised like the reader's); in continuous
        mode the latest marker at or before the window's last sample is attached to each
        window, and a marker reader that failed leaves windows without markers.
    latest_wins : bool
        Skip (and count) older ready windows when the consumer falls behind.
    zero_nonfinite : bool
        Replace NaN/Inf by 0 in the returned data (``Window.n_nonfinite`` counts them).
    """

    def __init__(
        self,
        reader,
        window_s: float = 0.25,
        hop_s: float = 0.05,
        pad_s: float = 0.0,
        mode: str = "continuous",
        offset_s: float = 0.0,
        markers=None,
        *,
        latest_wins: bool = True,
        zero_nonfinite: bool = True,
    ):
        if mode not in ("continuous", "event"):
            raise ValueError(f"mode={mode!r} is not known; use 'continuous' or 'event'.")
        if mode == "event" and markers is None:
            raise ValueError("mode='event' needs a MarkerReader: Windower(..., markers=...).")
        if window_s <= 0 or hop_s <= 0 or pad_s < 0:
            raise ValueError(
                f"window_s={window_s} and hop_s={hop_s} must be positive and pad_s={pad_s} "
                "not negative (seconds)."
            )
        self.reader = reader
        self.window_s, self.hop_s, self.pad_s = float(window_s), float(hop_s), float(pad_s)
        self.mode = mode
        self.offset_s = float(offset_s)
        self.markers = markers
        self.latest_wins = bool(latest_wins)
        self.zero_nonfinite = bool(zero_nonfinite)
        # Sample geometry, set once the reader knows its rate (first next_window call).
        self.n_times = self.n_hop = self.n_pad = self.n_offset = self.n_total = None
        self._geometry_ready = False
        self._next_end = 0
        self._marker_seq = 0
        self._pending: list[Marker] = []
        self._stats = WindowerStats()

    # ----------------------------------------------------------------- helpers
    @property
    def stats(self) -> WindowerStats:
        """Counters (a frozen snapshot)."""
        return self._stats

    def _count(self, **inc: int) -> None:
        s = self._stats
        self._stats = WindowerStats(
            **{f: getattr(s, f) + inc.get(f, 0) for f in WindowerStats.__dataclass_fields__}
        )

    def _setup(self, timeout_s: float | None) -> bool:
        """Sample geometry, once the reader knows the rate."""
        if self._geometry_ready:
            return True
        reader = self.reader
        if reader.ring is None:
            try:
                reader.wait_ready(3600.0 if timeout_s is None else timeout_s)
            except TimeoutError:
                return False
        sfreq = reader.sfreq_hz
        self.n_times = int(round(self.window_s * sfreq))
        self.n_hop = max(1, int(round(self.hop_s * sfreq)))
        self.n_pad = int(math.ceil(self.pad_s * sfreq - 1e-9))
        self.n_offset = int(round(self.offset_s * sfreq))
        self.n_total = self.n_pad + self.n_times
        if self.n_times < 1:
            raise ValueError(
                f"window_s={self.window_s} is shorter than one sample at {sfreq:g} Hz."
            )
        if self.n_total > reader.ring.capacity:
            raise ValueError(
                f"A window of {self.n_total} samples (window_s + pad_s) does not fit the "
                f"reader's ring of {reader.ring.capacity}; raise buffer_s."
            )
        # First grid end: the first multiple of the hop with a whole window before it.
        self._next_end = self.n_hop * math.ceil(self.n_total / self.n_hop)
        self._geometry_ready = True
        return True

    def _failed(self) -> bool:
        return self.reader.error is not None or (
            self.mode == "event" and self.markers.error is not None
        )

    def _raise_if_failed(self) -> None:
        self.reader.raise_if_failed()
        # Markers are what event mode cuts by; in continuous mode they only annotate
        # windows, so a missing marker stream (see markers.error) must not stop them.
        if self.mode == "event":
            self.markers.raise_if_failed()

    # --------------------------------------------------------------- cutting
    def _cut(self, start: int, stop: int, marker: Marker | None) -> Window:
        ring = self.reader.ring
        data = ring.read(start, stop)
        n_nonfinite = int(ring.read_meta("n_nonfinite", start, stop).sum())
        n_gaps = int(np.count_nonzero(ring.read_meta("n_lost_before", start + 1, stop)))
        t_first = ring.sample_at("t_lsl", start)
        t_last = ring.sample_at("t_lsl", stop - 1)
        t_arrived = ring.sample_at("t_arrived", stop - 1)
        if n_nonfinite and self.zero_nonfinite:
            data[~np.isfinite(data)] = 0.0
        if self.mode == "continuous" and self.markers is not None:
            marker = self.markers.latest(t_last)
        window = Window(
            data=data,
            sfreq_hz=self.reader.sfreq_hz,
            ch_names=self.reader.ch_names,
            first_sample=start,
            t_first=t_first,
            t_last=t_last,
            t_arrived=t_arrived,
            n_pad=self.n_pad,
            n_nonfinite=n_nonfinite,
            n_gaps=n_gaps,
            marker=marker,
        )
        self._count(windows=1, flagged=int(window.flagged))
        return window

    def _try_continuous(self) -> Window | None:
        ring = self.reader.ring
        n_written = ring.n_written
        end = self._next_end
        if n_written < end:
            return None
        newest = (n_written // self.n_hop) * self.n_hop
        oldest_end = ring.oldest + self.n_total
        if self.latest_wins and newest > end:
            self._count(skipped=(newest - end) // self.n_hop)
            end = newest
        elif end < oldest_end:
            lost_to = self.n_hop * math.ceil(oldest_end / self.n_hop)
            self._count(overflow=(lost_to - end) // self.n_hop)
            end = lost_to
            if end > n_written:  # the first end still held is not complete yet
                self._next_end = end
                return None
        try:
            window = self._cut(end - self.n_total, end, None)
        except OverwrittenError:
            self._count(overflow=1)
            self._next_end = end + self.n_hop
            return None
        self._next_end = end + self.n_hop
        return window

    def _locate(self, marker: Marker) -> Marker | None:
        """``marker`` with its data sample set; None while the data has not arrived.

        Raises OverwrittenError when the marker cannot get a window (its time is
        before the stream, inside a gap, or no longer held).
        """
        ring = self.reader.ring
        period = 1.0 / self.reader.sfreq_hz
        sample = marker.sample
        if sample is None:
            sample = locate_time(ring, marker.t_lsl, self.reader.sfreq_hz)
            if sample is None:
                return None
            marker = replace(marker, sample=sample)
        if ring.sample_at("t_lsl", sample) - marker.t_lsl > 1.5 * period:
            raise OverwrittenError(
                f"No sample at marker time {marker.t_lsl:.4f} (before the stream or in a gap)."
            )
        return marker

    def _try_event(self) -> Window | None:
        items, self._marker_seq, missed = self.markers.since(self._marker_seq)
        if missed:
            self._count(markers_missed=missed)
        self._pending.extend(items)
        ring = self.reader.ring
        ready: list[tuple[int, Marker]] = []
        waiting: list[Marker] = []
        for i, marker in enumerate(self._pending):
            try:
                located = self._locate(marker)
                start = None if located is None else located.sample + self.n_offset - self.n_pad
                if start is not None and start < ring.oldest:
                    raise OverwrittenError(f"Samples from {start} on are no longer held.")
            except OverwrittenError:
                self._count(markers_missed=1)
                continue
            if located is None or start + self.n_total > ring.n_written:
                # Later markers end later still; keep the located ones located.
                waiting = [marker if located is None else located, *self._pending[i + 1 :]]
                break
            ready.append((start, located))
        if self.latest_wins:
            self._count(skipped=max(0, len(ready) - 1))
            ready = ready[-1:]
        else:
            waiting = [m for _, m in ready[1:]] + waiting
        self._pending = waiting
        if not ready:
            return None
        start, marker = ready[0]
        try:
            return self._cut(start, start + self.n_total, marker)
        except OverwrittenError:
            self._count(markers_missed=1)
            return None

    # --------------------------------------------------------------- public API
    def next_window(self, timeout_s: float | None = None) -> Window | None:
        """The next window, blocking until it is complete.

        Parameters
        ----------
        timeout_s : float | None
            Longest wait in seconds (None: until a window or the reader's end).

        Returns
        -------
        Window | None
            ``data`` float32 (n_channels, n_pad + n_times); None on timeout or when
            the reader ended without error and no more windows can come.

        Raises
        ------
        Exception
            The reader's (or the marker reader's) background error.
        """
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        if not self._setup(timeout_s):
            return None
        ring = self.reader.ring
        attempt = self._try_continuous if self.mode == "continuous" else self._try_event
        while True:
            self._raise_if_failed()
            window = attempt()
            if window is not None:
                return window
            if ring.closed:
                self._raise_if_failed()
                window = attempt()  # the last samples may complete one more window
                return window
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return None
            # Continuous: wait for the next grid end. Event: any new chunk may complete a
            # pending window or map a marker (markers arrive with their data).
            need = self._next_end if self.mode == "continuous" else ring.n_written + 1
            ring.wait_for(need, remaining, predicate=self._failed)

    def __iter__(self):
        """Yield windows until the reader ends; re-raises its error."""
        while True:
            window = self.next_window(timeout_s=1.0)
            if window is not None:
                yield window
            elif self.reader.ring is not None and self.reader.ring.closed:
                return
