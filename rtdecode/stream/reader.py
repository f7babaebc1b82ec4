"""StreamReader: one background thread that pulls an LSL data stream into a RingBuffer.

This module holds rtdecode's one LSL pull loop (``_InletThread``): StreamReader (data ->
ring), MarkerReader (stream/markers.py: markers -> history) and StreamTap (any stream ->
sinks only) are its subclasses. Whatever else needs a stream's samples (``rtdecode
record``) registers a *sink* with one of them instead of opening its own inlet.

Threads
-------
- The reader thread (``rtdecode-reader-<name>``) owns every pylsl object: it resolves the
  stream, opens the inlet, pulls chunks, hands each to the sinks, and is the ring's only
  writer. It reconnects when the source disappears and comes back, and stores any error
  in ``.error`` before ending (never silently): ``wait_ready`` and
  ``Windower.next_window`` re-raise it.
- Any thread may read ``.ring`` (see ring.py), ``.stats`` (a snapshot taken under a
  small lock), ``.description``, ``.gaps()``, ``.clock_offset`` and ``.error``.
- Sinks run on the reader thread, with each chunk as sent (the stream's dtype, the
  source's timestamps and the clock offset; see :class:`Chunk`), before the rescaling
  to SI units and the copy into the float32 ring. They must be quick and copy what they
  keep (a recorder queues a copy for its own writer thread).

What is checked per chunk
-------------------------
- Timestamps (clock-corrected: the source's time plus ``inlet.time_correction()``, as
  liblsl's ``proc_clocksync`` does) going backwards: counted.
- A jump of more than ``gap_factor`` sample periods past the newest timestamp so far: a
  gap, with ``round(jump * sfreq) - 1`` lost samples. When the stream carries the
  sample-counter channel (``COUNTER_CHANNEL``), the counter decides instead (exact).
- NaN/Inf values: counted per sample (the Windower flags and zeroes them).
- An inlet backlog that reached the inlet's buffer: an overflow (liblsl dropped data).
"""

from __future__ import annotations

import collections
import logging
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, make_dataclass
from typing import Any

import numpy as np

from rtdecode.contracts import Gap  # re-exported: it used to live here
from rtdecode.lsl import streams as lsl
from rtdecode.signal.units import si_factors
from rtdecode.stream.ring import RingBuffer

log = logging.getLogger(__name__)

__all__ = [
    "Chunk",
    "Sink",
    "StreamReader",
    "StreamTap",
    "StreamStats",
    "Gap",
    "StreamError",
    "StreamFormatError",
    "ChannelMismatchError",
    "StreamNotFoundError",
]

StreamNotFoundError = lsl.StreamNotFoundError


class StreamError(RuntimeError):
    """The reader cannot (or can no longer) deliver this stream."""


class StreamFormatError(StreamError):
    """The stream is not something windows can be cut from.

    Strings, an irregular rate or no channel names.
    """


class ChannelMismatchError(StreamFormatError):
    """The channels differ from what was expected (given, or seen before a reconnect)."""


@dataclass(frozen=True, slots=True)
class StreamStats:
    """Counters of a StreamReader (a snapshot; take a new one to see changes).

    Attributes
    ----------
    samples, chunks : int
        Samples and chunks received.
    gaps, lost_samples : int
        Gaps detected and samples missing in them (reconnections included).
    repeated_samples : int
        Samples whose counter did not advance (sent twice, or the counter went back).
    backwards_timestamps : int
        Samples whose timestamp is earlier than the previous sample's.
    timestamp_jumps : int
        Timestamp jumps that the counter shows were not gaps (jitter at the source).
    nonfinite_values, nonfinite_samples : int
        NaN/Inf values, and samples holding at least one.
    overflow : int
        Times the inlet's backlog reached its buffer, so liblsl dropped old samples.
    reconnects : int
        Times the source was lost and found again.
    connected, stalled : bool
        Connected to a source; no sample for ``stall_s`` while connected.
    last_gap : Gap | None
    clock_offset_s : float
        Latest LSL time correction (source clock to local clock).
    cpu_s : float
        CPU time the reader thread has used (``time.thread_time``).
    t_last_pull : float
        Local clock of the last chunk received (0 before the first).
    """

    samples: int = 0
    chunks: int = 0
    gaps: int = 0
    lost_samples: int = 0
    repeated_samples: int = 0
    backwards_timestamps: int = 0
    timestamp_jumps: int = 0
    nonfinite_values: int = 0
    nonfinite_samples: int = 0
    overflow: int = 0
    reconnects: int = 0
    connected: bool = False
    stalled: bool = False
    last_gap: Gap | None = None
    clock_offset_s: float = 0.0
    cpu_s: float = 0.0
    t_last_pull: float = 0.0

    def as_dict(self) -> dict:
        """The counters as a JSON-able dict (for /api/status and /metrics)."""
        d = {f: getattr(self, f) for f in self.__dataclass_fields__}
        d["last_gap"] = (
            None
            if self.last_gap is None
            else {f: getattr(self.last_gap, f) for f in Gap.__dataclass_fields__}
        )
        return d


#: The counters a reader thread writes under its lock: StreamStats' fields (one list of
#: them), in a mutable class with slots (a misspelt counter raises where it is written).
_StreamCounts = make_dataclass(
    "_StreamCounts", [(f.name, f.type, f.default) for f in fields(StreamStats)], slots=True
)
_STATS_FIELDS = tuple(f.name for f in fields(StreamStats))
_NO_INDEX = np.empty(0, dtype=np.intp)


@dataclass(frozen=True, slots=True)
class Chunk:
    """One pull of a stream, as a sink receives it: the values and times as sent.

    Sinks run on the reader thread, before anything is rescaled or checked against the
    ring; a sink must be quick (copy, then hand over to its own writer thread) and copy
    what it keeps: ``values`` and ``t_source`` are views of buffers that the next pull
    overwrites.

    Attributes
    ----------
    values : ndarray, shape (n, n_channels), or list of n lists of str
        The samples in the stream's own dtype (``lsl.DTYPES``: float32, float64, int16,
        ...); the raw values, never rescaled. A string stream's samples are lists of str.
    t_source : ndarray, float64, shape (n,)
        Timestamps as the source stamped them (its LSL clock), not clock-corrected.
    clock_offset_s : float
        The clock correction in force (``inlet.time_correction``): ``t_source +
        clock_offset_s`` is on the local LSL clock, the ``t_lsl`` the ring holds.
    t_clock_offset : float
        Local clock when that correction was measured.
    t_arrived : float
        Local clock right after the pull.
    first_sample : int
        Index of ``values[0]`` among every sample the reader received, from 0 (for a
        StreamReader, its absolute ring index).
    gaps : tuple of Gap
        Gaps the reader found just before or inside this chunk (StreamReader only).
    """

    values: Any
    t_source: np.ndarray
    clock_offset_s: float
    t_clock_offset: float
    t_arrived: float
    first_sample: int
    gaps: tuple[Gap, ...] = ()

    @property
    def n(self) -> int:
        """Samples in the chunk."""
        return int(self.t_source.size)

    @property
    def t_lsl(self) -> np.ndarray:
        """Clock-corrected timestamps, shape (n,) (a new array)."""
        return self.t_source + self.clock_offset_s


Sink = Callable[[Chunk], None]
"""Called on the reader thread with every chunk pulled (see :class:`Chunk`)."""

#: Seconds between refreshes of the clock correction (liblsl's own ``proc_clocksync``
#: refreshes about as often; the estimate behind it changes every few seconds).
CLOCK_REFRESH_S = 0.5
#: Longest wait of one pull while draining a stopped reader.
_DRAIN_PULL_S = 0.05


class _InletThread:
    """Resolve a stream and keep an inlet open in a background thread.

    The one LSL pull loop of rtdecode: it pulls chunks, hands each to the registered
    sinks and to the subclass (``_handle``), reconnects when the source is lost, and
    never dies silently.

    The thread owns the pylsl objects; other threads see ``description``, ``error``,
    ``stats``, ``clock_offset`` and whatever the subclass publishes.

    Timestamps: the inlet gives the source's own timestamps, and the thread adds the
    clock correction (``inlet.time_correction()``, refreshed every ``CLOCK_REFRESH_S``),
    which is what liblsl's ``proc_clocksync`` does. Sinks get both (an XDF file keeps the
    source's times and the offsets apart); the subclass gets the corrected times.
    """

    kind = "stream"

    def __init__(
        self,
        name: str | None = None,
        stype: str | None = None,
        source_id: str | None = None,
        *,
        resolve_timeout_s: float | None = 10.0,
        reconnect: bool = True,
        max_buflen_s: int = 30,
        pull_timeout_s: float = 0.1,
        fallback_names: Sequence[str] = (),
        max_chunk: int | None = None,
    ):
        if not (name or stype or source_id):
            raise ValueError(
                f"{type(self).__name__} needs a stream name, stype or source_id to look for."
            )
        self.name, self.stype, self.source_id = name, stype, source_id
        # None: wait for the stream until stop() (e.g. an optional marker stream).
        self.resolve_timeout_s = None if resolve_timeout_s is None else float(resolve_timeout_s)
        self.reconnect = bool(reconnect)
        self.max_buflen_s = int(max_buflen_s)
        self.pull_timeout_s = float(pull_timeout_s)
        self.fallback_names = tuple(fallback_names)
        self.max_chunk = max_chunk
        self._stop = threading.Event()
        self._drain_s = 0.0
        self._ready = threading.Event()
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None
        self._description: lsl.StreamDescription | None = None
        self._sinks: list[Sink] = []
        self._uid = ""  # of the outlet connected to (reader thread)
        self._lock = threading.Lock()
        # Mutable counters, written by the thread under the lock; ``stats`` copies them
        # into a frozen StreamStats (cheaper per chunk than rebuilding a dataclass).
        self._counts = _StreamCounts()
        # Reader-thread state: the pull buffer, the clock correction, samples received.
        self._dest: np.ndarray | None = None
        self._max_chunk = 0
        self._offset_s = 0.0
        self._t_offset = -math.inf
        self._n_pulled = 0

    # --------------------------------------------------------------- public API
    def __repr__(self) -> str:
        what = self.name or self.stype or self.source_id
        return f"<{type(self).__name__} {what!r} alive={self.is_alive} error={self._error!r}>"

    def add_sink(self, sink: Sink) -> None:
        """Hand every chunk pulled to ``sink`` (on the reader thread; before ``start``).

        See :class:`Chunk` for what a sink receives and must do. An exception in a sink
        ends the reader with that error, as any other failure does.
        """
        if self._thread is not None:
            raise RuntimeError(f"Add sinks to {self!r} before start(), so none misses a sample.")
        self._sinks.append(sink)

    def start(self):
        """Start the background thread (once). Returns self."""
        if self._thread is not None:
            raise RuntimeError(f"{self!r} was already started; make a new one.")
        what = self.name or self.stype or self.source_id
        self._thread = threading.Thread(
            target=self._run, name=f"rtdecode-{self.kind}-{what}", daemon=True
        )
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0, *, drain_s: float = 0.0) -> None:
        """Ask the thread to end and wait for it (at most ``timeout_s``; 0: do not wait).

        ``drain_s``: first take what the inlet already holds (or receives meanwhile),
        for at most this long, so that a recording keeps every sample sent before the
        stop. A later call does not shorten a drain already asked for.
        """
        self._drain_s = max(self._drain_s, float(drain_s))
        self._stop.set()
        if (
            timeout_s > 0
            and self._thread is not None
            and self._thread is not threading.current_thread()
        ):
            self._thread.join(timeout_s)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def is_alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    @property
    def connected(self) -> bool:
        """Connected to a source now (False before, while reconnecting, after the end)."""
        with self._lock:
            return bool(self._counts.connected)

    @property
    def error(self) -> BaseException | None:
        """The exception that ended the thread, or None."""
        return self._error

    @property
    def description(self) -> lsl.StreamDescription | None:
        """The connected stream's description (None before the first connection)."""
        return self._description

    @property
    def stats(self) -> StreamStats:
        """A consistent snapshot of the counters."""
        with self._lock:
            c = self._counts
            return StreamStats(**{f: getattr(c, f) for f in _STATS_FIELDS})

    @property
    def clock_offset(self) -> tuple[float, float]:
        """(local clock when measured, offset in s) of the latest clock correction."""
        with self._lock:
            return self._t_offset, self._offset_s

    def raise_if_failed(self) -> None:
        """Re-raise the background thread's error, if there is one."""
        if self._error is not None:
            raise self._error

    def wait_ready(self, timeout_s: float = 10.0) -> lsl.StreamDescription:
        """Block until connected (stream found, validated, subscribed).

        Raises
        ------
        Exception
            The background thread's error (e.g. StreamNotFoundError, StreamFormatError).
        TimeoutError
            When not ready within ``timeout_s``.
        """
        if self._thread is None:
            raise RuntimeError(f"Call start() on {self!r} before wait_ready().")
        self._ready.wait(timeout_s)
        self.raise_if_failed()
        if not self._ready.is_set():
            raise TimeoutError(
                f"{type(self).__name__} found no stream matching {self._query()} within "
                f"{timeout_s:g} s; is the source running? (wait longer with timeout_s)"
            )
        return self._description

    # ----------------------------------------------------------- to override
    def _validate(self, desc: lsl.StreamDescription, first: bool) -> None:
        """Raise when this stream cannot be read; set up state on the first call."""

    def _handle(self, values, t_source: np.ndarray, t_arrived: float, backlog: int) -> None:
        """Take one chunk (``values`` as in :class:`Chunk`); call ``_emit`` for the sinks."""
        raise NotImplementedError

    def _idle(self, t_arrived: float) -> None:
        """A pull returned nothing."""

    def _on_lost(self) -> None:
        """The source is gone; a reconnection may follow."""

    def _finish(self) -> None:
        """The thread is ending (normally or with an error)."""

    # ------------------------------------------------------------------ thread
    def _query(self) -> str:
        parts = [
            f"{k}={v!r}"
            for k, v in (("name", self.name), ("type", self.stype), ("source_id", self.source_id))
            if v
        ]
        return ", ".join(parts)

    def _update(self, **changes: bool) -> None:
        with self._lock:
            for name, value in changes.items():
                setattr(self._counts, name, value)

    def _find(self, timeout_s: float | None, source_id: str | None, exclude_uids=()):
        """Resolve until found, ``timeout_s`` passes (None: no limit) or stop().

        With ``fallback_names``, the first of ``name`` and those names that is visible
        (``name`` preferred when several are).
        """
        if self.fallback_names:
            return lsl.find_first(
                (self.name, *self.fallback_names),
                source_id,
                timeout_s,
                exclude_uids=exclude_uids,
                should_stop=self._stop.is_set,
            )
        return lsl.find(
            self.name,
            self.stype,
            source_id,
            timeout_s,
            exclude_uids=exclude_uids,
            should_stop=self._stop.is_set,
        )

    def _connect(self, info, first: bool):
        # The source's own timestamps; the correction is added here (see the class doc).
        inlet = lsl.open_inlet(
            info, max_buflen_s=self.max_buflen_s, recover=False, clocksync=False
        )
        desc = lsl.inlet_description(inlet, timeout_s=5.0)
        self._validate(desc, first)
        self._setup_pull(desc)
        inlet.open_stream(5.0)
        offset = float(inlet.time_correction(5.0))
        if first:
            self._description = desc
        self._uid = info.uid()
        t_offset = lsl.local_clock()
        with self._lock:
            self._offset_s, self._t_offset = offset, t_offset
            c = self._counts
            c.connected, c.stalled, c.clock_offset_s = True, False, offset
            c.reconnects += 0 if first else 1
        return inlet

    def _setup_pull(self, desc: lsl.StreamDescription) -> None:
        """The pull buffer for this stream (on every connection)."""
        regular = desc.sfreq_hz > 0
        n = self.max_chunk or (max(32, int(math.ceil(0.1 * desc.sfreq_hz))) if regular else 64)
        self._max_chunk = int(n)
        dtype = lsl.DTYPES.get(desc.channel_format)
        # One pull buffer, reused for every chunk: (samples, channels) as liblsl writes.
        # A string stream is pulled as lists (there is no buffer for strings).
        self._dest = None if dtype is None else np.empty((self._max_chunk, desc.n_channels), dtype)

    def _pull(self, inlet, timeout_s: float) -> int:
        """Pull once (waiting up to ``timeout_s`` for a first sample); the samples taken."""
        if self._dest is not None:
            t_source = lsl.pull_into(inlet, self._dest, timeout_s)
            values = self._dest[: t_source.size]
        else:
            values, stamps = lsl.pull_markers(inlet, timeout_s, self._max_chunk)
            t_source = np.asarray(stamps, dtype=np.float64)
        t_arrived = lsl.local_clock()
        if t_arrived - self._t_offset >= CLOCK_REFRESH_S:
            self._refresh_offset(inlet, t_arrived)
        n = int(t_source.size)
        if n == 0:
            self._idle(t_arrived)
            return 0
        backlog = inlet.samples_available() if n == self._max_chunk else 0
        self._handle(values, t_source, t_arrived, backlog)
        self._n_pulled += n
        return n

    def _refresh_offset(self, inlet, t_now: float) -> None:
        try:
            offset = float(inlet.time_correction(0.5))
        except (lsl.LslTimeoutError, TimeoutError):
            return  # no new estimate yet (liblsl re-measures after a clock reset)
        with self._lock:
            self._offset_s, self._t_offset = offset, t_now
            self._counts.clock_offset_s = offset

    def _emit(self, values, t_source: np.ndarray, t_arrived: float, gaps=()) -> None:
        """Hand one chunk to every sink (reader thread)."""
        if not self._sinks:
            return
        chunk = Chunk(
            values=values,
            t_source=t_source,
            clock_offset_s=self._offset_s,
            t_clock_offset=self._t_offset,
            t_arrived=t_arrived,
            first_sample=self._n_pulled,
            gaps=tuple(gaps),
        )
        for sink in self._sinks:
            sink(chunk)

    def _run(self) -> None:
        inlet = None
        try:
            info = self._find(self.resolve_timeout_s, self.source_id)
            if info is None:
                if self._stop.is_set():
                    return
                raise lsl.not_found_error(
                    self.name, self.stype, self.source_id, self.resolve_timeout_s
                )
            inlet = self._connect(info, first=True)
            # Reconnect to the same source only (its source_id), when it has one.
            source_id = self.source_id or self._description.source_id or None
            self._ready.set()
            while not self._stop.is_set():
                try:
                    self._pull(inlet, self.pull_timeout_s)
                except lsl.LostError:
                    inlet = None
                    self._update(connected=False)
                    self._on_lost()
                    if not self.reconnect:
                        raise StreamError(
                            f"The source of stream {self._description.name!r} was lost and "
                            "reconnect=False; restart the source and the reader."
                        ) from None
                    inlet = self._reconnect(source_id)
                    if inlet is None:  # stopped while waiting
                        break
            if inlet is not None and self._drain_s > 0:
                self._drain(inlet)
        except BaseException as exc:  # noqa: BLE001 - stored and re-raised by consumers
            self._error = exc
        finally:
            inlet = None  # pylsl closes the inlet in this thread
            self._update(connected=False)
            self._ready.set()  # wake wait_ready, which then raises the error if any
            self._finish()

    def _drain(self, inlet) -> None:
        """After stop(drain_s=...): pull until the inlet stays empty or drain_s passes."""
        deadline = lsl.local_clock() + self._drain_s
        try:
            while lsl.local_clock() < deadline:
                if not self._pull(inlet, _DRAIN_PULL_S):
                    return
        except lsl.LostError:
            return  # the source went meanwhile: everything it sent was taken

    def _reconnect(self, source_id: str | None):
        """Wait for the source to come back (a new outlet, same source_id) and connect.

        The resolver remembers the vanished outlet for a few seconds, so its uid (and
        that of any outlet that vanishes while we connect) is skipped. An outlet that
        only answered slowly (a timeout while connecting, as on a loaded machine) is
        tried again: skipping it would leave the reader waiting for a source that is
        already back.
        """
        gone = {self._uid}
        while not self._stop.is_set():
            info = self._find(None, source_id, exclude_uids=gone)
            if info is None:
                return None
            try:
                return self._connect(info, first=False)
            except lsl.LostError:
                gone.add(info.uid())
            except (lsl.LslTimeoutError, TimeoutError):
                log.warning(
                    "Stream %r answered too slowly while reconnecting; trying again.",
                    self._description.name,
                )
        return None


class StreamTap(_InletThread):
    """Read any LSL stream only for its sinks: no ring, no history.

    For a recorder that must keep a stream as sent that a StreamReader does not take: a
    marker (string) stream, an irregular-rate stream. It reconnects like StreamReader
    and refuses a source that comes back with another format, channel count or rate.

    Parameters
    ----------
    name, stype, source_id : str, optional
        What to resolve (at least one).
    sinks : sequence of callables
        Registered before the thread starts (see :meth:`add_sink`).
    **options
        ``resolve_timeout_s``, ``reconnect``, ``max_buflen_s``, ``pull_timeout_s``,
        ``fallback_names``, ``max_chunk``, as for StreamReader and MarkerReader.
    """

    kind = "tap"

    def __init__(self, name=None, stype=None, source_id=None, *, sinks=(), **options):
        super().__init__(name, stype, source_id, **options)
        for sink in sinks:
            self.add_sink(sink)

    def _validate(self, desc: lsl.StreamDescription, first: bool) -> None:
        if desc.channel_format != "string" and desc.channel_format not in lsl.DTYPES:
            raise StreamFormatError(
                f"Stream {desc.name!r} has channel format {desc.channel_format!r}, which "
                "rtdecode cannot read; give a numeric or string stream."
            )
        before = self._description
        shape = (desc.channel_format, desc.n_channels, desc.sfreq_hz)
        if before is not None and (before.channel_format, before.n_channels, before.sfreq_hz) != shape:
            raise ChannelMismatchError(
                f"Stream {desc.name!r} came back as {shape[1]} {shape[0]} channels at "
                f"{shape[2]:g} Hz, but was {before.n_channels} {before.channel_format} "
                f"channels at {before.sfreq_hz:g} Hz: the source changed. Restart the tap."
            )

    def _handle(self, values, t_source, t_arrived, backlog) -> None:
        self._emit(values, t_source, t_arrived)
        with self._lock:
            c = self._counts
            c.samples += int(t_source.size)
            c.chunks += 1
            c.t_last_pull = t_arrived


class StreamReader(_InletThread):
    """Pull one LSL data stream into a :class:`RingBuffer` in a background thread.

    Parameters
    ----------
    name, stype, source_id : str, optional
        What to resolve (at least one). Reconnections match the source_id seen first.
    buffer_s : float
        Ring length in seconds.
    ch_names : sequence of str, optional
        Channel names for a stream that sends no channel description (required then,
        unless ``generic_names``); for a described stream they must match its labels.
    n_channels : int, optional
        Expected channel count (checked on connect and every reconnect).
    resolve_timeout_s : float | None
        How long the first resolution may take before ``.error`` is set (None: wait
        until the stream appears or ``stop()``).
    reconnect : bool
        Wait for the source (same source_id) to come back after it is lost.
    gap_factor : float
        Timestamp jumps above this many sample periods are gaps.
    stall_s : float
        No sample for this long while connected sets ``stats.stalled``.
    max_chunk : int, optional
        Samples per pull (default: 0.1 s of data, at least 32).
    max_gaps : int
        Gaps kept in ``gaps()`` (older ones only stay counted).
    generic_names : bool
        Name the channels of a stream without a description ``ch000``, ``ch001``, ...
        instead of refusing it (a recorder keeps such a stream; a model needs names).
    sinks : sequence of callables
        Called with every chunk before it is rescaled and written to the ring (see
        :class:`Chunk` and :meth:`add_sink`).

    Attributes
    ----------
    ring : RingBuffer | None
        Created on the first connection, shape (n_channels, buffer_s * sfreq).
    """

    kind = "reader"

    def __init__(
        self,
        name: str | None = None,
        stype: str | None = None,
        source_id: str | None = None,
        buffer_s: float = 30.0,
        ch_names=None,
        *,
        n_channels: int | None = None,
        resolve_timeout_s: float | None = 10.0,
        reconnect: bool = True,
        gap_factor: float = 1.5,
        stall_s: float = 1.0,
        max_chunk: int | None = None,
        max_buflen_s: int = 30,
        max_gaps: int = 1000,
        pull_timeout_s: float = 0.1,
        generic_names: bool = False,
        sinks: Sequence[Sink] = (),
    ):
        super().__init__(
            name,
            stype,
            source_id,
            resolve_timeout_s=resolve_timeout_s,
            reconnect=reconnect,
            max_buflen_s=max_buflen_s,
            pull_timeout_s=pull_timeout_s,
            max_chunk=max_chunk,
        )
        if buffer_s <= 0:
            raise ValueError(f"buffer_s={buffer_s} must be positive (seconds of data kept).")
        self.buffer_s = float(buffer_s)
        self.expected_ch_names = None if ch_names is None else tuple(str(c) for c in ch_names)
        if n_channels is None and self.expected_ch_names is not None:
            n_channels = len(self.expected_ch_names)
        self.expected_n_channels = n_channels
        self.gap_factor = float(gap_factor)
        self.stall_s = float(stall_s)
        self.generic_names = bool(generic_names)
        for sink in sinks:
            self.add_sink(sink)
        self.ring: RingBuffer | None = None
        self.ch_names: tuple[str, ...] = ()
        self.sfreq_hz: float = 0.0
        self._gaps: collections.deque[Gap] = collections.deque(maxlen=max_gaps)
        # Writer-thread state (touched only by the reader thread).
        self._counter_idx: int | None = None
        self._last_t: float | None = None
        self._max_t: float | None = None
        self._last_counter: float | None = None
        self._lost_at_t: float | None = None  # last timestamp before the source was lost
        self._in_overflow = False
        self._t_last_data = 0.0

    @property
    def n_channels(self) -> int:
        """Channels of the connected stream (0 before the ring exists)."""
        return 0 if self.ring is None else self.ring.n_channels

    def gaps(self) -> list[Gap]:
        """The most recent gaps (up to ``max_gaps``), oldest first."""
        with self._lock:
            return list(self._gaps)

    # --------------------------------------------------------------- checking
    def _validate(self, desc: lsl.StreamDescription, first: bool) -> None:
        where = f"Stream {desc.name!r} (source_id {desc.source_id!r})"
        if desc.channel_format not in lsl.DTYPES:
            raise StreamFormatError(
                f"{where} carries {desc.channel_format!r} values, not numeric samples; it is "
                "probably a marker stream. Give the data stream's name to StreamReader and "
                "read markers with MarkerReader."
            )
        if not desc.sfreq_hz > 0:
            raise StreamFormatError(
                f"{where} has an irregular sampling rate (nominal rate {desc.sfreq_hz:g} Hz), so "
                "windows cannot be cut by sample index. Give a regularly sampled data stream."
            )
        names = desc.ch_names
        expected = self.expected_ch_names
        if not first:
            if desc.n_channels != self.n_channels:
                raise ChannelMismatchError(
                    f"{where} came back with {desc.n_channels} channels but had "
                    f"{self.n_channels} before the reconnection: the source changed. "
                    "Check the montage and restart the reader to go on."
                )
            if desc.sfreq_hz != self.sfreq_hz or (desc.has_description and names != self.ch_names):
                raise ChannelMismatchError(
                    f"{where} came back with a different rate or channel names "
                    f"({desc.sfreq_hz:g} Hz, was {self.sfreq_hz:g} Hz); restart the reader."
                )
            return
        if expected is not None and len(expected) != desc.n_channels:
            raise ChannelMismatchError(
                f"{len(expected)} ch_names were given but {where} has {desc.n_channels} "
                "channels; give one name per channel."
            )
        if self.expected_n_channels is not None and desc.n_channels != self.expected_n_channels:
            raise ChannelMismatchError(
                f"{where} has {desc.n_channels} channels but n_channels="
                f"{self.expected_n_channels} was expected; check the stream name."
            )
        if not desc.has_description:
            if expected is None and self.generic_names:
                expected = tuple(f"ch{i:03d}" for i in range(desc.n_channels))
            if expected is None:
                raise StreamFormatError(
                    f"{where} sends no channel description (no <channels> block with "
                    f"labels for its {desc.n_channels} channels). Pass its channel names: "
                    "StreamReader(..., ch_names=[...]) or RTDECODE_CH_NAMES."
                )
            names = expected
        elif expected is not None and names != expected:
            diff = [
                f"{i}: {a!r} != {b!r}"
                for i, (a, b) in enumerate(zip(names, expected, strict=True))
                if a != b
            ][:5]
            raise ChannelMismatchError(
                f"{where} labels its channels differently from the ch_names given "
                f"(first differences: {diff}). Drop ch_names to use the stream's own "
                "labels, or fix them."
            )
        self.sfreq_hz = float(desc.sfreq_hz)
        self.ch_names = tuple(names)
        self._counter_idx = (
            self.ch_names.index(lsl.COUNTER_CHANNEL)
            if lsl.COUNTER_CHANNEL in self.ch_names
            else None
        )
        capacity = max(2, int(math.ceil(self.buffer_s * self.sfreq_hz)))
        self.ring = RingBuffer(desc.n_channels, capacity)

    def _setup_pull(self, desc: lsl.StreamDescription) -> None:
        super()._setup_pull(desc)
        # The chunk's clock-corrected timestamps (what the ring and the checks use).
        self._t_lsl = np.empty(self._max_chunk, dtype=np.float64)
        # Scratch rows for the per-chunk checks: the previous value, then the chunk's.
        self._ext_t = np.empty(self._max_chunk + 1, dtype=np.float64)
        self._ext_c = np.empty(self._max_chunk + 1, dtype=np.float64)
        self._lost_scratch = np.empty(self._max_chunk, dtype=np.int32)
        self._inlet_capacity = int(self.max_buflen_s * desc.sfreq_hz)
        # Channels declared in another unit than SI (muse-lsl: microvolts) are scaled to
        # SI as they are pulled, so that a model trained on V or T reads them alike.
        floating = np.issubdtype(self._dest.dtype, np.floating)
        self._si = si_factors(desc.units) if floating else None

    # ------------------------------------------------------------------ pulling
    def _idle(self, t_arrived: float) -> None:
        if (
            self._t_last_data
            and t_arrived - self._t_last_data > self.stall_s
            and not self._counts.stalled
        ):
            self._update(stalled=True)

    def _on_lost(self) -> None:
        self._lost_at_t = self._last_t
        self._last_counter = None

    def _finish(self) -> None:
        if self.ring is not None:
            self.ring.close()

    def _check_timestamps(self, ts: np.ndarray) -> tuple[int, np.ndarray, np.ndarray, float]:
        """Backwards steps and forward jumps of one chunk's timestamps.

        Steps are taken against the previous sample (backwards) and jumps against the
        newest timestamp so far, so a clock step back is one event, not a gap after it.

        Returns (n_backwards, jump_idx, jumps (n,), newest timestamp so far).
        """
        n = ts.size
        prev_t, prev_max = self._last_t, self._max_t
        if prev_t is None or self._lost_at_t is not None:
            prev_t = prev_max = float(ts[0])  # a reconnection gap is measured apart
        ext = self._ext_t[: n + 1]
        ext[0] = prev_max
        ext[1:] = ts
        steps = ext[1:] - ext[:-1]
        threshold = self.gap_factor / self.sfreq_hz
        if prev_t == prev_max and steps.min() >= 0:  # monotonic: the usual case
            idx = _NO_INDEX if steps.max() <= threshold else np.flatnonzero(steps > threshold)
            return 0, idx, steps, float(ts[-1])
        ext[0] = prev_t
        n_back = int(np.count_nonzero(ext[1:] < ext[:-1]))
        ext[0] = prev_max
        run_max = np.maximum.accumulate(ext)
        jumps = ts - run_max[:-1]
        return n_back, np.flatnonzero(jumps > threshold), jumps, float(run_max[-1])

    def _check_counter(
        self,
        block: np.ndarray,
        ts: np.ndarray,
        first_index: int,
        lost_before: np.ndarray,
        gaps: list[Gap],
    ) -> int:
        """Gaps from the sample counter (into ``lost_before``/``gaps``).

        Returns the samples whose counter did not advance.
        """
        n = ts.size
        counter = block[:, self._counter_idx]
        ext = self._ext_c[: n + 1]
        ext[1:] = counter  # float32 -> float64 is exact for integers below 2**24
        ext[0] = ext[1] - 1 if self._last_counter is None else self._last_counter
        self._last_counter = float(ext[-1])
        steps = ext[1:] - ext[:-1]
        if (steps == 1).all():
            return 0
        n_repeated = 0
        steps = np.rint(steps).astype(np.int64) % lsl.COUNTER_MODULUS
        for i in np.flatnonzero(steps != 1):
            d = int(steps[i])
            if 1 < d < lsl.COUNTER_MODULUS // 2:
                lost_before[i] = d - 1
                gaps.append(self._gap(first_index + i, d - 1, ts, i, "counter"))
            else:  # 0: sent twice; a big step: the counter went back
                n_repeated += 1
        return n_repeated

    def _handle(self, block: np.ndarray, t_source: np.ndarray, t_arrived: float, backlog: int):
        """Check one chunk, hand it to the sinks, write it to the ring (reader thread).

        block : (n, n_channels) view of the pull buffer, in the stream's dtype;
        t_source : (n,) float64, the source's timestamps.
        """
        n = t_source.size
        ts = np.add(t_source, self._offset_s, out=self._t_lsl[:n])
        first_index = self.ring.n_written
        lost_before = self._lost_scratch[:n]
        lost_before[:] = 0
        new_gaps: list[Gap] = []
        n_back, jump_idx, jumps, newest_t = self._check_timestamps(ts)

        n_jumps_ok = n_repeated = 0
        if self._counter_idx is not None:
            # The counter is exact: timestamp jumps it does not confirm are jitter.
            n_repeated = self._check_counter(block, ts, first_index, lost_before, new_gaps)
            if jump_idx.size:
                n_jumps_ok = int(np.count_nonzero(lost_before[jump_idx] == 0))
        else:
            for i in jump_idx:
                k = max(1, int(round(float(jumps[i]) * self.sfreq_hz)) - 1)
                lost_before[i] = k
                new_gaps.append(self._gap(first_index + i, k, ts, i, "timestamps"))

        if self._lost_at_t is not None:  # first chunk after a reconnection
            gap_s = float(ts[0]) - self._lost_at_t
            k = max(0, int(round(gap_s * self.sfreq_hz)) - 1)
            lost_before[0] += k
            new_gaps.insert(
                0,
                Gap(
                    sample=first_index,
                    n_lost=k,
                    duration_s=max(0.0, gap_s - 1.0 / self.sfreq_hz),
                    t_before=self._lost_at_t,
                    t_after=float(ts[0]),
                    reconnect=True,
                    detected_by="timestamps",
                ),
            )
            self._lost_at_t = None

        n_nonfinite = None
        n_bad_values = n_bad_samples = 0
        if block.dtype.kind == "f":
            finite = np.isfinite(block)
            n_bad_values = block.size - int(np.count_nonzero(finite))
            if n_bad_values:
                n_nonfinite = (block.shape[1] - finite.sum(axis=1)).astype(np.int32)
                n_bad_samples = int(np.count_nonzero(n_nonfinite))

        self._emit(block, t_source, t_arrived, new_gaps)  # as sent: before the rescaling
        if self._si is not None:
            block *= self._si
        self.ring.write(block.T, ts, t_arrived, n_nonfinite, lost_before)

        self._last_t = float(ts[-1])
        self._max_t = newest_t
        self._t_last_data = t_arrived
        overflow = backlog >= self._inlet_capacity - self._max_chunk
        new_overflow = overflow and not self._in_overflow
        self._in_overflow = overflow
        cpu_s = time.thread_time()
        with self._lock:
            c = self._counts
            c.samples += n
            c.chunks += 1
            c.backwards_timestamps += n_back
            c.timestamp_jumps += n_jumps_ok
            c.repeated_samples += n_repeated
            c.nonfinite_values += n_bad_values
            c.nonfinite_samples += n_bad_samples
            c.overflow += int(new_overflow)
            c.stalled = False
            c.cpu_s = cpu_s
            c.t_last_pull = t_arrived
            if new_gaps:
                self._gaps.extend(new_gaps)
                c.gaps += len(new_gaps)
                c.lost_samples += sum(g.n_lost for g in new_gaps)
                c.last_gap = new_gaps[-1]

    def _gap(self, sample: int, n_lost: int, ts: np.ndarray, i: int, how: str) -> Gap:
        t_after = float(ts[i])
        t_before = float(ts[i - 1]) if i > 0 else float(self._last_t)
        return Gap(
            sample=int(sample),
            n_lost=int(n_lost),
            duration_s=max(0.0, t_after - t_before - 1.0 / self.sfreq_hz),
            t_before=t_before,
            t_after=t_after,
            reconnect=False,
            detected_by=how,
        )
