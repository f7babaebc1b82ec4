"""MarkerReader: the event stream (image shown, trial type) with clock-corrected times.

Threads
-------
- The marker thread (``rtdecode-markers-<name>``) owns its pylsl inlet (the pull loop of
  reader.py), hands each chunk to its sinks, appends each marker to a bounded history
  under a lock and notifies waiters. It reconnects like StreamReader and stores errors in
  ``.error`` (see reader.py). The history is for the live path; a recorder that must
  keep every marker registers a sink (or reads the stream with a StreamTap).
- Any thread reads the history (``markers``, ``since``, ``latest``) and maps a marker's
  time onto the data stream's absolute sample index (``locate``) through the data
  reader's ring; a mapped marker is cached in the history.

Markers are strings carrying JSON objects, e.g. ``{"image_id": "cat_03",
"trial_type": "exp"}``. Anything else is kept as ``{"raw": "<text>"}``, and ``interpret``
(a :class:`rtdecode.stream.events.MarkerVocabulary`) adds what a plain string or a code
means. A numeric stream of several channels is one-hot (mne-lsl's annotations): each
non-zero channel of a sample is a marker whose text is that channel's name.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np

from rtdecode.contracts import Marker, marker_text, parse_marker
from rtdecode.lsl import streams as lsl
from rtdecode.stream.reader import StreamFormatError, StreamReader, _InletThread
from rtdecode.stream.ring import OverwrittenError, locate_time

__all__ = ["MarkerReader", "parse_marker"]

log = logging.getLogger(__name__)


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
    fallback_names : sequence of str
        Names also accepted when no stream called ``name`` is visible (e.g. mne-lsl's
        ``<stream>-annotations``); ``name`` is preferred when both are.
    interpret : callable(dict) -> dict, optional
        Applied to each marker's payload (e.g. a MarkerVocabulary).
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
        fallback_names: Sequence[str] = (),
        interpret: Callable[[dict], dict] | None = None,
        **options,
    ):
        # Markers are sparse: a generous inlet buffer costs nothing.
        options.setdefault("max_buflen_s", 360)
        super().__init__(name, stype, source_id, fallback_names=fallback_names, **options)
        if history < 1:
            raise ValueError(f"history={history} must keep at least one marker.")
        self.reader = reader
        self.interpret = interpret
        self._onehot: tuple[str, ...] = ()
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
        one_hot = desc.channel_format != "string" and desc.n_channels > 1
        self._onehot = tuple(desc.ch_names) if one_hot else ()
        if one_hot and len(set(self._onehot)) != desc.n_channels:
            raise StreamFormatError(
                f"Marker stream {desc.name!r} has {desc.n_channels} numeric channels but not "
                "one distinct name per channel; a one-hot marker stream names each channel "
                "after its event (as mne-lsl's annotations do)."
            )
        if first:
            log.info("Markers from stream %r (%s).", desc.name,
                     "one-hot" if one_hot else desc.channel_format)

    def _texts(self, sample) -> list[str]:
        """The marker text(s) of one sample: one per non-zero channel when one-hot."""
        if self._onehot:
            return [name for name, v in zip(self._onehot, sample, strict=True) if v]
        return [marker_text(sample)]

    def _handle(self, values, t_source, t_arrived, backlog) -> None:
        self._emit(values, t_source, t_arrived)
        # A numeric stream comes as an array: its rows as Python numbers, as pylsl's
        # lists give them (the marker text of 3.0 stays "3.0").
        samples = values.tolist() if isinstance(values, np.ndarray) else values
        interpret = self.interpret or (lambda value: value)
        ts = t_source + self._offset_s
        new = [
            Marker(t_lsl=float(t), value=interpret(parse_marker(text)))
            for s, t in zip(samples, ts.tolist(), strict=True)
            for text in self._texts(s)
        ]
        if not new:
            return
        with self._cond:
            self._history.extend(new)
            self._n_received += len(new)
            self._counts.samples += len(new)
            self._counts.chunks += 1
            self._cond.notify_all()

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
        """``marker`` with ``sample`` set to its index in the data stream.

        The absolute index of the first sample at or after the marker's time (within half a
        sample period).

        Unchanged when there is no data reader, the data has not arrived yet, or it has
        left the ring.
        """
        data = self.reader
        if marker.sample is not None or data is None or data.ring is None:
            return marker
        try:
            k = locate_time(data.ring, marker.t_lsl, data.sfreq_hz)
        except OverwrittenError:
            return marker
        return marker if k is None else replace(marker, sample=k)
