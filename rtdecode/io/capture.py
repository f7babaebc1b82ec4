"""The LSL side of ``rtdecode record``: a data stream and its markers, handed to a writer.

There is no inlet here. The stream layer's readers pull (stream/reader.py holds the one
LSL pull loop): a :class:`~rtdecode.stream.reader.StreamReader` reads a regularly
sampled numeric data stream (its gap detection runs as in the service; its small ring
is not read), a :class:`~rtdecode.stream.reader.StreamTap` reads an irregular or string
data stream (XDF only) and the marker stream. Each has a *sink* that puts a copy of every
chunk, exactly as sent (the stream's own dtype, the source's timestamps and the clock
offset in force: :class:`~rtdecode.stream.reader.Chunk`), on one bounded queue.

:meth:`Capture.run` takes the chunks off the queue in the thread that calls it (the
recording thread) and hands them to the file writer (the FIF spool, the XDF writer).
It also owns the stop rules: ``stop`` (Ctrl-C, SIGTERM, another thread), a number of
data samples or a duration, ``timeout_s`` of silence (a source gone for good; one that
comes back sooner is reconnected to, and the gap is counted), or a reader's error. At the
end the data reader takes what its inlet still holds, then the marker reader does (the
markers of the last samples may still be on their way), and the writer gets it all.

Threads
-------
- Each reader's thread owns its pylsl objects and runs its sink: the sink copies the
  chunk and puts it on the queue, waiting while the queue is full (the inlet's own buffer
  holds the stream meanwhile, and an overflow shows as a gap); after :meth:`Capture.close`
  nothing waits and chunks are dropped.
- The recording thread (the caller of :meth:`open`, :meth:`run`, :meth:`close`) owns the
  queue's consumer side and the writer.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Callable, Sequence

import numpy as np

from rtdecode.contracts import Gap
from rtdecode.lsl.streams import DTYPES, describe, find_first, local_clock, resolve
from rtdecode.stream.reader import Chunk, StreamReader, StreamTap

__all__ = ["Capture", "DATA", "MARKERS"]

#: Queue keys: which stream a chunk comes from.
DATA, MARKERS = "data", "markers"
#: Longest a stopped reader keeps taking what its inlet holds.
DRAIN_S = 0.5
#: Chunks the queue holds (each at most 0.1 s of data) before the readers wait; the
#: inlets' own buffers (60 s of data, 360 s of markers) hold the stream meanwhile.
QUEUE_CHUNKS = 64
#: Longest wait on the queue between looks at the stop rules.
_TICK_S = 0.1


class _QueueSink:
    """A reader's sink: a copy of each chunk onto the recording queue (reader thread)."""

    def __init__(self, key: str, q: queue.Queue, closed: threading.Event) -> None:
        self.key, self._queue, self._closed = key, q, closed

    def __call__(self, chunk: Chunk) -> None:
        values = chunk.values
        values = values.copy() if isinstance(values, np.ndarray) else list(values)
        item = (self.key, dataclasses.replace(chunk, values=values, t_source=chunk.t_source.copy()))
        while not self._closed.is_set():
            try:
                self._queue.put(item, timeout=_TICK_S)
                return
            except queue.Full:
                continue


@dataclasses.dataclass
class _GapTally:
    """Gaps the data reader reported while recording (the first ``MAX_LISTED`` listed)."""

    MAX_LISTED = 100

    n: int = 0
    lost_samples: int = 0
    listed: list[Gap] = dataclasses.field(default_factory=list)

    def add(self, gaps: Sequence[Gap]) -> None:
        self.n += len(gaps)
        self.lost_samples += sum(g.n_lost for g in gaps)
        self.listed.extend(gaps[: self.MAX_LISTED - len(self.listed)])


class Capture:
    """Read a data stream and its marker stream for a recording (see the module doc).

    Parameters
    ----------
    name : str
        The data stream's name.
    source_id : str | None
        Also match the data stream's source id.
    timeout_s : float
        How long to wait for the stream to appear, and for data once it went silent.
    marker_names : sequence of str
        Marker streams to look for, the first visible one wins (empty: none).
    marker_source_id : str | None
        Also match the marker stream's source id.
    regular_only : bool
        Refuse a data stream that is not numeric and regularly sampled (FIF needs one).

    Attributes
    ----------
    data, markers : StreamReader | StreamTap | None
        The readers, once :meth:`open` returned (``markers`` None without a marker stream).
    n_data : int
        Data samples handed to the writer.
    gaps : _GapTally
        Gaps in the data the reader found (counter or timestamps, reconnections); see
        :meth:`gap_summary`.
    """

    def __init__(
        self,
        name: str,
        *,
        source_id: str | None = None,
        timeout_s: float = 10.0,
        marker_names: Sequence[str] = (),
        marker_source_id: str | None = None,
        regular_only: bool = False,
    ) -> None:
        self.name, self.source_id, self.timeout_s = name, source_id, float(timeout_s)
        self.marker_names = tuple(n for n in marker_names if n)
        self.marker_source_id = marker_source_id
        self.regular_only = regular_only
        self.data: StreamReader | StreamTap | None = None
        self.markers: StreamTap | None = None
        self.n_data = 0
        self.gaps = _GapTally()
        self._queue: queue.Queue = queue.Queue(maxsize=QUEUE_CHUNKS)
        self._closed = threading.Event()

    # ------------------------------------------------------------------ open
    def open(self) -> None:
        """Find the streams and connect: markers first, so no event of a sample is missed.

        Raises
        ------
        rtdecode.lsl.streams.StreamNotFoundError
            No data stream called ``name`` appeared within ``timeout_s``.
        RuntimeError
            ``regular_only`` and the stream is not numeric or not regularly sampled.
        """
        found = describe(resolve(name=self.name, source_id=self.source_id, timeout_s=self.timeout_s))
        numeric = found.channel_format in DTYPES
        regular = found.sfreq_hz > 0
        if self.regular_only and not numeric:
            raise RuntimeError(
                f"Stream {self.name!r} carries {found.channel_format} values; rtdecode record "
                "writes numeric streams only to FIF (record its data stream, not a marker "
                "stream, or record to an .xdf file)."
            )
        if self.regular_only and not regular:
            raise RuntimeError(
                f"Stream {self.name!r} has an irregular rate (nominal rate {found.sfreq_hz}); "
                "FIF needs a regularly sampled stream (record it to an .xdf file instead)."
            )
        if self.marker_names:
            m_info = find_first(self.marker_names, self.marker_source_id, min(self.timeout_s, 2.0))
            if m_info is not None:
                self.markers = self._start(
                    StreamTap(
                        m_info.name(),
                        source_id=m_info.source_id() or None,
                        resolve_timeout_s=self.timeout_s,
                        max_buflen_s=360,  # markers are sparse: a long buffer costs nothing
                        sinks=[_QueueSink(MARKERS, self._queue, self._closed)],
                    )
                )
        sink = _QueueSink(DATA, self._queue, self._closed)
        options = dict(resolve_timeout_s=self.timeout_s, max_buflen_s=60, sinks=[sink])
        if numeric and regular:
            # A short ring: the recording takes the chunks from the sink, not the ring.
            reader = StreamReader(self.name, source_id=self.source_id, buffer_s=2.0,
                                  generic_names=True, **options)  # fmt: skip
        else:
            reader = StreamTap(self.name, source_id=self.source_id, **options)
        self.data = self._start(reader)

    def _start(self, reader):
        reader.start()
        try:
            reader.wait_ready(self.timeout_s + 10.0)
        except BaseException:
            reader.stop()
            raise
        return reader

    # ------------------------------------------------------------------- run
    def run(
        self,
        write: Callable[[str, Chunk], None],
        stop: threading.Event,
        *,
        n_target: int | None = None,
        duration_s: float | None = None,
        tick: Callable[[], None] | None = None,
    ) -> None:
        """Hand every chunk to ``write(key, chunk)`` until a stop rule holds, then drain.

        Parameters
        ----------
        write : callable(str, Chunk)
            ``key`` is ``DATA`` or ``MARKERS``; the chunk's arrays are the writer's to
            keep. Data chunks past ``n_target`` samples are cut off. An exception ends the
            recording (the caller closes the capture).
        stop : threading.Event
            Set it to end the recording.
        n_target : int | None
            Data samples to record.
        duration_s : float | None
            Seconds to record, on the local clock (for an irregular stream).
        tick : callable, optional
            Called on every turn of the loop (about every 0.1 s), e.g. for clock offsets.
        """
        try:
            self._run(write, stop, n_target, duration_s, tick)
        except BaseException:
            self.close()  # the writer failed (a full disk): stop reading at once
            raise

    def _run(self, write, stop, n_target, duration_s, tick) -> None:
        t_end = None if duration_s is None else local_clock() + duration_s
        t_last_data = local_clock()
        while not stop.is_set() and not self._reached(n_target, t_end):
            if self._failed() is not None:
                break
            if tick is not None:
                tick()
            try:
                key, chunk = self._queue.get(timeout=_TICK_S)
            except queue.Empty:
                if local_clock() - t_last_data > self.timeout_s:
                    break  # the source is gone: keep what we have
                continue
            if key == DATA:
                t_last_data = local_clock()
            self._dispatch(write, key, chunk, n_target)
        reached = self._reached(n_target, t_end)
        # The data reader first (what its inlet holds), then the markers, which may still
        # be on their way for the last samples.
        for reader, drain_s in ((self.data, 0.0 if reached else DRAIN_S), (self.markers, DRAIN_S)):
            if reader is not None:
                reader.stop(0, drain_s=drain_s)
                self._consume_until_ended(reader, write, n_target)
        while True:
            try:
                key, chunk = self._queue.get_nowait()
            except queue.Empty:
                break
            self._dispatch(write, key, chunk, n_target)

    def _reached(self, n_target: int | None, t_end: float | None) -> bool:
        if n_target is not None and self.n_data >= n_target:
            return True
        return t_end is not None and local_clock() >= t_end

    def _failed(self) -> BaseException | None:
        for reader in (self.data, self.markers):
            if reader is not None and reader.error is not None:
                return reader.error
        return None

    @property
    def error(self) -> BaseException | None:
        """A reader's error that ended the recording early, or None."""
        return self._failed()

    def raise_if_cut_short(self, out) -> None:
        """Raise a reader's error that ended the recording early (the file is written)."""
        error = self._failed()
        if error is not None:
            raise RuntimeError(
                f"The recording of {self.name!r} stopped early: {error} The samples "
                f"received until then are in {out}."
            ) from error

    def _consume_until_ended(self, reader, write, n_target, max_s: float = DRAIN_S + 5.0):
        """Take chunks off the queue until ``reader``'s thread ended (it may wait on us)."""
        deadline = local_clock() + max_s
        while reader.is_alive and local_clock() < deadline:
            try:
                key, chunk = self._queue.get(timeout=0.02)
            except queue.Empty:
                continue
            self._dispatch(write, key, chunk, n_target)

    def _dispatch(self, write, key: str, chunk: Chunk, n_target: int | None) -> None:
        if key == DATA:
            if n_target is not None:
                left = n_target - self.n_data
                if left <= 0:
                    return
                if chunk.n > left:
                    chunk = dataclasses.replace(
                        chunk, values=chunk.values[:left], t_source=chunk.t_source[:left]
                    )
            self.n_data += chunk.n
            if chunk.gaps:
                end = chunk.first_sample + chunk.n  # gaps past a cut-off end are not in it
                self.gaps.add([g for g in chunk.gaps if g.sample < end])
        write(key, chunk)

    # ----------------------------------------------------------------- close
    def close(self) -> None:
        """Stop the readers (nothing waits on the queue any more); again: nothing."""
        self._closed.set()
        for reader in (self.data, self.markers):
            if reader is not None:
                reader.stop(5.0)

    def __enter__(self) -> Capture:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def gap_summary(self) -> dict:
        """Gaps in the recorded data, JSON-able.

        ``n``, ``lost_samples``, ``reconnects`` and ``first`` (up to 100 gaps, each
        ``{sample, n_lost, duration_s, reconnect, detected_by}``; ``sample`` is the index
        in the recording of the first sample after the gap).
        """
        reconnects = 0 if self.data is None else self.data.stats.reconnects
        return {
            "n": self.gaps.n,
            "lost_samples": self.gaps.lost_samples,
            "reconnects": reconnects,
            "first": [
                {"sample": g.sample, "n_lost": g.n_lost, "duration_s": g.duration_s,
                 "reconnect": g.reconnect, "detected_by": g.detected_by}
                for g in self.gaps.listed
            ],  # fmt: skip
        }

    def gap_note(self) -> str:
        """``"; N gaps (M samples lost, R reconnections)"`` for a summary line, or ``""``."""
        g = self.gap_summary()
        if not g["n"]:
            return ""
        return (
            f"; {g['n']} gap(s) in the stream ({g['lost_samples']} samples lost, "
            f"{g['reconnects']} reconnection(s))"
        )
