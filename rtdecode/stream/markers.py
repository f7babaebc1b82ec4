"""MarkerReader: the event stream (image shown, trial type) with clock-corrected times.

Threads
-------
- The marker thread (``rtdecode-markers-<name>``) owns its pylsl inlet, appends each
  marker to a bounded history under a lock and notifies waiters. It reconnects like
  StreamReader and stores errors in ``.error`` (see reader.py).
- Any thread reads the history (``markers``, ``since``, ``latest``) and maps a marker's
  time onto the data stream's absolute sample index (``locate``) through the data
  reader's ring; a mapped marker is cached in the history.

Markers are strings carrying JSON objects, e.g. ``{"image_id": "cat_03",
"trial_type": "exp"}``. Anything else is kept as ``{"raw": "<text>"}``.
"""

from __future__ import annotations

import collections
import threading
from dataclasses import replace

from rtdecode.contracts import Marker, marker_text, parse_marker
from rtdecode.lsl import streams as lsl
from rtdecode.stream.reader import StreamFormatError, StreamReader, _InletThread
from rtdecode.stream.ring import OverwrittenError, locate_time

__all__ = ["MarkerReader", "parse_marker"]


class MarkerReader(_InletThread):
    """Read an LSL marker stream in a background thread and keep the latest markers.

    Parameters
    ----------
    name, stype, source_id : str, optional
        What to resolve (at least one), e.g. ``"<data stream>-markers"``.
    reader : StreamReader, optional
        The data stream's reader, whose ring maps marker times to sample indices.
    history : int
        Markers kept (oldest dropped first; ``n_dropped`` counts them).
    **options
        ``resolve_timeout_s``, ``reconnect``, ``max_buflen_s``, ``pull_timeout_s``, as
        for StreamReader.
    """

    kind = "markers"

    def __init__(
        self,
        name: str | None = None,
        stype: str | None = None,
        source_id: str | None = None,
        *,
        reader: StreamReader | None = None,
        history: int = 1000,
        **options,
    ):
        # Markers are sparse: a generous inlet buffer costs nothing.
        options.setdefault("max_buflen_s", 360)
        super().__init__(name, stype, source_id, **options)
        if history < 1:
            raise ValueError(f"history={history} must keep at least one marker.")
        self.reader = reader
        self._history: collections.deque[Marker] = collections.deque(maxlen=int(history))
        self._n_received = 0
        self._cond = threading.Condition(self._lock)

    # ------------------------------------------------------------------ thread
    def _validate(self, desc: lsl.StreamDescription, first: bool) -> None:
        if desc.channel_format != "string" and desc.channel_format not in lsl.DTYPES:
            raise StreamFormatError(
                f"Marker stream {desc.name!r} has channel format {desc.channel_format!r}; "
                "give a stream of strings (JSON markers) or numbers."
            )

    def _pull(self, inlet) -> int:
        samples, ts = lsl.pull_markers(inlet, self.pull_timeout_s)
        if not ts:
            return 0
        new = [
            Marker(t_lsl=float(t), value=parse_marker(marker_text(s)))
            for s, t in zip(samples, ts, strict=True)
        ]
        with self._cond:
            self._history.extend(new)
            self._n_received += len(new)
            self._counts["samples"] += len(new)
            self._counts["chunks"] += 1
            self._cond.notify_all()
        return len(new)

    def _finish(self) -> None:
        with self._cond:
            self._cond.notify_all()  # waiters see the error (or the end)

    # --------------------------------------------------------------- public API
    @property
    def n_received(self) -> int:
        """Markers received so far (also the sequence number of the next one)."""
        return self._n_received

    @property
    def n_dropped(self) -> int:
        """Markers that fell out of the bounded history."""
        with self._lock:
            return self._n_received - len(self._history)

    def _first_seq(self) -> int:
        return self._n_received - len(self._history)

    def _located(self, seq: int, marker: Marker) -> Marker:
        """``locate`` and cache the result in the history (any thread)."""
        located = self.locate(marker)
        if located is not marker:
            with self._lock:
                i = seq - self._first_seq()
                if 0 <= i < len(self._history) and self._history[i] is marker:
                    self._history[i] = located
        return located

    def markers(self) -> list[Marker]:
        """The markers in the history, oldest first (with ``sample`` where mapped)."""
        items, _, _ = self.since(0)
        return items

    def since(self, seq: int) -> tuple[list[Marker], int, int]:
        """Markers with sequence number >= ``seq`` (``sample`` set where mapped).

        Returns
        -------
        markers : list of Marker
            Oldest first.
        next_seq : int
            Pass it to the next call.
        n_missed : int
            Markers from ``seq`` on that already left the history.
        """
        with self._lock:
            first_seq = self._first_seq()
            start = max(seq, first_seq)
            items = list(self._history)[start - first_seq :]
            next_seq = self._n_received
        located = [self._located(start + i, m) for i, m in enumerate(items)]
        return located, next_seq, start - seq

    def wait(self, seq: int, timeout_s: float | None) -> bool:
        """Block until marker number ``seq`` has arrived (True) or the timeout."""
        with self._cond:
            self._cond.wait_for(
                lambda: self._n_received > seq or self._error is not None, timeout_s
            )
            return self._n_received > seq

    def latest(self, t_lsl_max: float | None = None) -> Marker | None:
        """The newest marker whose time is at or before ``t_lsl_max`` (any if None)."""
        with self._lock:
            first_seq = self._first_seq()
            for i in range(len(self._history) - 1, -1, -1):
                m = self._history[i]
                if t_lsl_max is None or m.t_lsl <= t_lsl_max:
                    break
            else:
                return None
        return self._located(first_seq + i, m)

    def locate(self, marker: Marker) -> Marker:
        """``marker`` with ``sample`` set to the data stream's absolute index of the first
        sample at or after the marker's time (within half a sample period).

        Unchanged when there is no data reader, the data has not arrived yet, or it has
        left the ring.
        """
        data = self.reader
        if marker.sample is not None or data is None or data.ring is None:
            return marker
        try:
            k = locate_time(data.ring, marker.t_lsl, data.sfreq)
        except OverwrittenError:
            return marker
        return marker if k is None else replace(marker, sample=k)
