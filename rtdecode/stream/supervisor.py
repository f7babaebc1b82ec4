"""StreamSupervisor: the live input of one stream, kept running across failures.

It opens the input (a :class:`~rtdecode.stream.reader.StreamReader`, its
:class:`~rtdecode.stream.markers.MarkerReader` and a
:class:`~rtdecode.stream.windows.Windower`), reports each new stream gap, and replaces
the input when the reader ended with an error, as soon as a stream with the channel
count and rate first seen is visible again. An outlet of another shape is refused once
(never retried: no reconnect loop) and named in :attr:`StreamSupervisor.waiting_for`.
Counters of replaced readers and windowers stay in the totals it reports.

Threads
-------
- The supervisor thread (``rtdecode-supervisor``) owns the replacement: it swaps
  ``reader``, ``markers`` and ``windower`` under a small lock and calls ``on_gap`` and
  ``on_restart`` (both must return quickly and never block on clients).
- Any thread may read ``reader``, ``markers``, ``windower``, ``waiting_for``,
  ``restarts`` and the totals (taken under the same lock, so no counter is counted
  twice or not at all while the input is swapped).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any

from rtdecode.contracts import marker_stream_name

__all__ = ["StreamSupervisor", "SUPERVISE_S"]

log = logging.getLogger(__name__)

#: Seconds between the supervisor's looks at the reader (gaps, errors).
SUPERVISE_S = 0.1
#: Reader counters that add up over replaced readers (the other floats are gauges).
_SUMMED_READER_STATS = frozenset(
    {
        "samples",
        "chunks",
        "gaps",
        "lost_samples",
        "repeated_samples",
        "backwards_timestamps",
        "timestamp_jumps",
        "nonfinite_values",
        "nonfinite_samples",
        "overflow",
        "reconnects",
        "cpu_s",
    }
)


class StreamSupervisor:
    """Open one LSL stream's input, forward its gaps and replace it when it fails.

    Parameters
    ----------
    name : str
        The LSL data stream's name.
    window_s, hop_s, pad_s : float
        The Windower's window, hop and padding, in seconds.
    source_id : str or None
        Only a stream with this source id.
    buffer_s : float
        Seconds the ring buffer holds.
    ch_names : sequence of str or None
        Channels to read, in this order (None: all of them).
    resolve_timeout_s : float or None
        Seconds the first reader waits for the stream (None: no limit).
    marker_stream : str or None
        The marker stream's name (None: ``marker_stream_name(name)``). It is optional:
        without it windows carry no true image.
    marker_fallbacks : sequence of str
        Marker streams to use when ``marker_stream`` is not there (e.g. mne-lsl's
        ``<name>-annotations``).
    interpret : callable or None
        Gives a marker its meaning (plain strings, codes: ``stream.events.MarkerVocabulary``).
    latest_wins : bool
        The windower's policy (``Windower``): the newest window (serve), or every window
        in order while the ring holds it (``rtdecode evaluate-online``).
    trigger_channel : str or None
        An in-stream trigger channel whose rising edges are markers too; None looks for a
        usual one (STI101, UPPT001, a stim channel), ``"none"`` turns this off.
    on_gap : callable or None
        Called from the supervisor thread with the fields of each ``stream_gap`` message:
        the gap's fields, ``restart`` (the gap spans a replaced reader), ``run`` (1 +
        restarts), ``gaps_total`` and ``lost_samples_total`` as of that gap.
    on_restart : callable or None
        Called from the supervisor thread with ``(reader, markers, windower)`` after the
        input was replaced (for instance to point the worker at the new windower).
    interval_s : float
        Seconds between looks at the reader.
    """

    def __init__(
        self,
        name: str,
        *,
        window_s: float,
        hop_s: float,
        pad_s: float = 0.0,
        source_id: str | None = None,
        buffer_s: float = 30.0,
        ch_names: Sequence[str] | None = None,
        resolve_timeout_s: float | None = None,
        marker_stream: str | None = None,
        marker_fallbacks: Sequence[str] = (),
        interpret: Callable[[Any], Any] | None = None,
        trigger_channel: str | None = None,
        on_gap: Callable[[dict[str, Any]], None] | None = None,
        on_restart: Callable[[Any, Any, Any], None] | None = None,
        interval_s: float = SUPERVISE_S,
        latest_wins: bool = True,
    ) -> None:
        self.name = name
        self.window_s, self.hop_s, self.pad_s = window_s, hop_s, pad_s
        self.source_id = source_id
        self.buffer_s = buffer_s
        self.ch_names = None if ch_names is None else list(ch_names)
        self.resolve_timeout_s = resolve_timeout_s
        self.marker_stream = marker_stream or marker_stream_name(name)
        self.marker_fallbacks = tuple(marker_fallbacks)
        self.interpret = interpret
        self.trigger_channel = trigger_channel
        self.latest_wins = latest_wins
        self.on_gap = on_gap
        self.on_restart = on_restart
        self.interval_s = interval_s
        self.reader: Any = None
        self.markers: Any = None
        self.windower: Any = None
        self.restarts = 0
        self.waiting_for: str | None = None
        # The error of the last reader that failed, until a replacement connects: a
        # replacement that fails the same way would otherwise hide it for a moment.
        self.last_error: str | None = None
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._retired: dict[str, dict[str, float]] = {"reader": {}, "windower": {}}
        self._retired_last_gap: dict | None = None
        # The first stream's (n_channels, sfreq_hz, ch_names), and outlets refused.
        self._shape: tuple[int, float, list[str]] | None = None
        self._refused_uids: set[str] = set()
        self._restart_t_lsl: float | None = None  # newest sample time before a restart

    # ------------------------------------------------------------------ lifecycle
    def open(self) -> StreamSupervisor:
        """Start the first reader, marker reader and windower (returns immediately)."""
        self.reader, self.markers, self.windower = self._open_input(self.ch_names)
        return self

    def start(self) -> StreamSupervisor:
        """Start the supervisor thread (after :meth:`open`)."""
        if self.reader is None:
            raise RuntimeError("StreamSupervisor.start() needs open() first.")
        self._thread = threading.Thread(target=self._run, name="rtdecode-supervisor", daemon=True)
        self._thread.start()
        return self

    def is_alive(self) -> bool:
        """True while the supervisor thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the supervisor thread; the input keeps running (see :meth:`close`)."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout_s)

    def close(self) -> None:
        """Stop the supervisor thread, the marker reader and the reader."""
        self.stop()
        for part in (self.markers, self.reader):
            if part is not None:
                part.stop()

    # ------------------------------------------------------------------ totals
    def totals(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The reader's and the windower's counters, replaced ones included.

        Returns
        -------
        reader : dict
            The current reader's stats with every counter of replaced readers added,
            ``restarts``, and ``last_gap`` (a replaced reader's when this one has none).
        windower : dict
            The current windower's stats with replaced windowers' counters added.
        """
        with self._lock:
            reader = _add(self.reader.stats.as_dict(), self._retired["reader"])
            reader["restarts"] = self.restarts
            if reader["last_gap"] is None:
                reader["last_gap"] = self._retired_last_gap
            windower = _add(self.windower.stats.as_dict(), self._retired["windower"])
        return reader, windower

    # ------------------------------------------------------------------ thread
    def _open_input(self, ch_names: Sequence[str] | None) -> tuple[Any, Any, Any]:
        from rtdecode.stream.markers import MarkerReader
        from rtdecode.stream.reader import StreamReader
        from rtdecode.stream.windows import Windower

        reader = StreamReader(
            name=self.name,
            source_id=self.source_id,
            buffer_s=self.buffer_s,
            ch_names=ch_names,
            resolve_timeout_s=self.resolve_timeout_s,
        )
        reader.start()
        markers = MarkerReader(
            self.marker_stream, reader=reader, resolve_timeout_s=None,
            fallback_names=self.marker_fallbacks, interpret=self.interpret,
        )
        markers.start()
        events = markers
        if (self.trigger_channel or "").strip().lower() != "none":
            from rtdecode.stream.triggers import CombinedMarkers, TriggerMarkers

            # Rising edges of an in-stream trigger channel are markers too.
            triggers = TriggerMarkers(reader, self.trigger_channel, interpret=self.interpret)
            events = CombinedMarkers(markers, triggers)
        windower = Windower(
            reader, window_s=self.window_s, hop_s=self.hop_s, pad_s=self.pad_s, markers=events,
            latest_wins=self.latest_wins,
        )
        return reader, markers, windower

    def _run(self) -> None:
        """Forward new gaps; replace a reader that ended with an error."""
        last_gap_sample = -1
        while not self._stopping.wait(self.interval_s):
            try:
                last_gap_sample = self._forward_gaps(last_gap_sample)
                if self.reader.error is not None and self._restart():
                    last_gap_sample = -1
            except Exception:  # never die silently; the next look may succeed
                log.exception("The stream supervisor failed once; it goes on.")

    def _forward_gaps(self, last_sample: int) -> int:
        """Call ``on_gap`` once per gap newer than ``last_sample``."""
        reader = self.reader
        new: list[tuple[dict[str, Any], bool]] = []  # (gap, spans a restart)
        if self._restart_t_lsl is not None and reader.ring is not None and reader.ring.n_written:
            # The first sample after a restart: the gap since the old reader's last one.
            t_after = reader.ring.sample_at("t_lsl", reader.ring.oldest)
            duration_s = max(0.0, t_after - self._restart_t_lsl - 1.0 / reader.sfreq_hz)
            gap = {
                "sample": 0,
                "n_lost": max(0, round(duration_s * reader.sfreq_hz)),
                "duration_s": duration_s,
                "t_before": self._restart_t_lsl,
                "t_after": t_after,
                "reconnect": True,
                "detected_by": "timestamps",
            }
            self._restart_t_lsl = None
            with self._lock:
                self._retired_last_gap = gap
                _add(self._retired["reader"], {"gaps": 1, "lost_samples": gap["n_lost"]}, out=True)
            new.append((gap, True))
        for g in reader.gaps():
            if g.sample > last_sample:
                new.append(({f: getattr(g, f) for f in g.__dataclass_fields__}, False))
                last_sample = g.sample
        if not new or self.on_gap is None:
            return last_sample
        totals = self.totals()[0]
        # The totals hold the whole batch: each message gets the totals as of its gap.
        gaps_total, lost_total = totals["gaps"] - len(new), totals["lost_samples"]
        lost_total -= sum(gap["n_lost"] for gap, _ in new)
        for gap, restart in new:
            gaps_total, lost_total = gaps_total + 1, lost_total + gap["n_lost"]
            self.on_gap(
                {
                    **gap,
                    "restart": restart,
                    "run": self.restarts + 1,
                    "gaps_total": gaps_total,
                    "lost_samples_total": lost_total,
                }
            )
        return last_sample

    def _restart(self) -> bool:
        """Replace the failed input when a stream of the first one's shape is visible."""
        from rtdecode.lsl import streams as lsl

        old = self.reader
        if self._shape is None and old.ring is not None:
            self._shape = (old.n_channels, old.sfreq_hz, old.ch_names)
        info = lsl.find(
            self.name,
            None,
            self.source_id,
            timeout_s=1.0,
            exclude_uids=self._refused_uids,
            should_stop=self._stopping.is_set,
        )
        if info is None:
            return False
        # Whatever happens next, this outlet is not tried twice (no reconnect loop).
        self._refused_uids.add(info.uid())
        found = lsl.describe(info)
        if self._shape is not None and (found.n_channels, found.sfreq_hz) != self._shape[:2]:
            n, sfreq_hz, _ = self._shape
            self.waiting_for = (
                f"Stream {self.name!r} is back with {found.n_channels} channels at "
                f"{found.sfreq_hz:g} Hz, but the service started on {n} channels at {sfreq_hz:g} Hz; "
                "waiting for that stream to return (restart the service to use the new one)."
            )
            log.error(self.waiting_for)
            return False
        if old.error is not None:
            self.last_error = str(old.error)
        # The channels of the first stream when it was seen, else the ones asked for.
        new = self._open_input(self._shape[2] if self._shape else self.ch_names)
        old_markers, old_windower = self.markers, self.windower
        if old.ring is not None and old.ring.n_written:
            self._restart_t_lsl = old.ring.sample_at("t_lsl", old.ring.n_written - 1)
        with self._lock:
            retired = self._retired["reader"]
            old_stats = old.stats.as_dict()
            _add(retired, old_stats, out=True)
            _add(self._retired["windower"], old_windower.stats.as_dict(), out=True)
            retired["reconnects"] = retired.get("reconnects", 0) + 1
            self._retired_last_gap = old_stats["last_gap"] or self._retired_last_gap
            self.reader, self.markers, self.windower = new
            self.restarts += 1
        if self.on_restart is not None:
            self.on_restart(*new)
        self.waiting_for = None
        log.warning(
            "Stream %r is visible again with the original shape; reading it with a new "
            "reader (restart %d; the gap is reported to viewers).",
            self.name,
            self.restarts,
        )
        old_markers.stop()
        old.stop()
        return True


def _add(base: dict, more: dict, out: bool = False) -> dict:
    """``base`` with the counters of ``more`` added (in place when ``out``).

    Every int (windower and reader counts) and the reader's summable floats
    (``cpu_s``) add up; other values are left as they are in ``base``.
    """
    target = base if out else dict(base)
    for k, v in more.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if isinstance(v, int) or k in _SUMMED_READER_STATS:
            target[k] = target.get(k, 0) + v
    return target
