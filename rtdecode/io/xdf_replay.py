"""Replay every stream of an XDF file on LSL with its recorded timing.

This is ``rtdecode replay FILE.xdf``.

Each stream of the file (data streams, marker streams, irregular streams of numbers)
gets an outlet with the stream's name, type, source id, channel labels, types and units.
A sample recorded at ``t`` (the file's LSL time, clock offsets applied by pyxdf) goes out
stamped ``t_start + (t - t_first) / speed``, where ``t_first`` is the file's earliest
sample: the streams keep their relative timing exactly, and a marker keeps the timestamp
of the data sample it was recorded on. Regular streams are pushed ``chunk_ms`` at a time,
once the clock reaches the chunk's last sample; an irregular stream's samples one by one
at their own time. With ``loop`` every pass is shifted by the file's span plus one sample
period of its main stream, so timestamps keep increasing.

:class:`XdfReplay` is the source :class:`rtdecode.io.replay.Player` uses for an ``.xdf``
path: the file is read when the Player is made, and :meth:`XdfReplay.run` makes and uses
the outlets in the Player's thread; its stop event, or (main thread) Ctrl-C or SIGTERM
end it.
"""

from __future__ import annotations

import heapq
import math
import sys
import threading
from pathlib import Path

import numpy as np

from rtdecode._utils.progress import ProgressLine, stop_on_signals
from rtdecode.io.playback import ReplayStats, wait_for_consumer
from rtdecode.io.xdf import XdfStream, read_xdf
from rtdecode.lsl.streams import DTYPES, local_clock, make_info, make_outlet

__all__ = ["XdfReplay"]

# XDF formats liblsl outlets here take as they are; the others are widened exactly.
_OUTLET_FORMAT = {"int8": "int16", "int64": "double64"}


def is_marker_stream(s: XdfStream) -> bool:
    """An irregular stream of strings, or one typed as markers/annotations."""
    return s.is_irregular and (s.is_strings or s.type.strip().lower() in {"markers", "annotations"})


def _main_stream(streams: list[XdfStream]) -> XdfStream:
    regular = [s for s in streams if not s.is_irregular and s.n_samples]
    if not regular:
        raise ValueError(
            "The XDF file has no regularly sampled stream with samples; there is no data to "
            "replay (give a recording with a data stream)."
        )
    return max(regular, key=lambda s: s.n_samples * s.n_channels)


def _renamed(stream_name: str, main_name: str, name: str | None) -> str:
    """The name ``stream_name`` is replayed under.

    ``--name`` replaces the main stream's name, also as the prefix of its companions
    (``MEG`` -> ``NAME``, ``MEG-markers`` -> ``NAME-markers``).
    """
    if not name:
        return stream_name
    if stream_name == main_name or stream_name.startswith(main_name + "-"):
        return name + stream_name[len(main_name) :]
    return stream_name


def _pieces(stream: XdfStream, n_chunk: int) -> list[tuple[int, int]]:
    if stream.is_irregular:
        return [(i, i + 1) for i in range(stream.n_samples)]
    return [(a, min(a + n_chunk, stream.n_samples)) for a in range(0, stream.n_samples, n_chunk)]


class XdfReplay:
    """Every stream of an XDF file, published on LSL with its recorded timing.

    The source of :class:`rtdecode.io.replay.Player` for an ``.xdf`` path, which checks
    the options first.

    Parameters
    ----------
    path : str | Path
        An XDF file (LabRecorder's, or ``rtdecode record --out FILE.xdf``); read here.
    name : str | None
        New name for the main data stream (the regular stream with the most values) and
        for streams named after it (``<main>-markers`` -> ``<name>-markers``).
    speed : float
        Pace relative to real time (> 0); timestamps are scaled by the same factor.
    loop : bool
        Start over at the end; timestamps keep increasing.
    chunk_ms : float
        Samples per push of a regular stream, in ms of recording.
    progress : bool
        Show a progress line on stderr.
    max_duration_s : float | None
        Stop after this many seconds of recording (across passes).
    wait_for_consumer_s : float | None
        Wait up to this long for a consumer of the main stream before sending.
    linger_s : float
        Keep the outlets open this long after the last push.
    markers : {"json", "string", "none"}
        ``none`` leaves out the marker streams; otherwise they go out as recorded.

    Attributes
    ----------
    path : Path
    name : str
        The main stream's name on LSL.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        name: str | None = None,
        speed: float = 1.0,
        loop: bool = False,
        chunk_ms: float = 10.0,
        progress: bool = True,
        max_duration_s: float | None = None,
        wait_for_consumer_s: float | None = None,
        linger_s: float = 0.5,
        markers: str = "json",
    ) -> None:
        self.path = Path(path).expanduser()
        streams = read_xdf(self.path)
        if markers == "none":
            streams = [s for s in streams if not is_marker_stream(s)]
        self.streams, self.main = streams, _main_stream(streams)
        self.new_name = name
        self.name = _renamed(self.main.name, self.main.name, name)
        self.speed, self.loop, self.chunk_ms = speed, loop, chunk_ms
        self.progress, self.wait_for_consumer_s, self.linger_s = progress, wait_for_consumer_s, linger_s
        live = [s for s in streams if s.n_samples]
        self.t_first = min(float(s.timestamps[0]) for s in live)
        t_last = max(float(s.timestamps[-1]) for s in live)
        self.pass_s = t_last - self.t_first + 1.0 / self.main.nominal_srate_hz
        self.limit_s = math.inf if loop else self.pass_s
        if max_duration_s is not None:
            self.limit_s = min(self.limit_s, float(max_duration_s))

    def run(
        self, stop: threading.Event, stats: ReplayStats, streaming: threading.Event
    ) -> ReplayStats:
        """Replay in the calling thread until the end or ``stop``.

        ``streaming`` is set once the outlets exist; ``stats`` is updated as it goes and
        returned: ``samples_sent`` counts the main stream's samples, ``markers_sent`` the samples
        of irregular streams.
        """
        streams, main, name = self.streams, self.main, self.new_name
        speed, loop, chunk_ms, progress = self.speed, self.loop, self.chunk_ms, self.progress
        wait_for_consumer_s, linger_s = self.wait_for_consumer_s, self.linger_s
        t_first, pass_s, limit_s, path = self.t_first, self.pass_s, self.limit_s, self.path

        outlets, dtypes = [], []
        for s in streams:
            fmt = _OUTLET_FORMAT.get(s.channel_format, s.channel_format)
            stream_name = _renamed(s.name, main.name, name)
            info = make_info(
                stream_name,
                s.type,
                s.nominal_srate_hz,
                s.ch_names,
                ch_types=s.ch_types or None,
                units=s.ch_units or None,
                source_id=s.source_id or f"rtdecode-replay-{stream_name}",
                channel_format=fmt,
            )
            outlets.append(make_outlet(info, chunk_size=0, max_buffered=360))
            dtypes.append(DTYPES.get(fmt))
        main_k = streams.index(main)
        main_name = self.name
        streaming.set()
        if progress:
            listed = ", ".join(
                f"{_renamed(s.name, main.name, name)!r} ({s.n_samples} samples)" for s in streams
            )
            print(
                f"replay {main_name}: {path.name}, {len(streams)} streams over "
                f"{pass_s:.1f} s -> LSL streams {listed}"
                f"{' (waiting for a consumer)' if wait_for_consumer_s else ''}.",
                file=sys.stderr,
            )
        chunks = {
            k: _pieces(s, max(1, round(chunk_ms * 1e-3 * (s.nominal_srate_hz or 1.0))))
            for k, s in enumerate(streams)
        }
        bar = ProgressLine(f"replay {main_name}", main.n_samples, progress)
        t_start = None
        try:
            with stop_on_signals(stop) as signals:
                if wait_for_consumer_s is not None:
                    wait_for_consumer(outlets[main_k], wait_for_consumer_s, stop, main_name)
                t_start = local_clock() + 0.01
                stats.t0_lsl = t_start + (float(main.timestamps[0]) - t_first) / speed
                n_pass = 0
                while not stop.is_set():
                    shift_s = n_pass * pass_s
                    if shift_s >= limit_s:
                        break
                    # One pass: the pieces of every stream in order of their last sample.
                    queue = [
                        (float(s.timestamps[b - 1]), k, a, b)
                        for k, s in enumerate(streams)
                        for a, b in chunks[k][:1]
                    ]
                    heapq.heapify(queue)
                    position = {k: 0 for k in chunks}
                    while queue and not stop.is_set():
                        t_due_file, k, a, b = heapq.heappop(queue)
                        position[k] += 1
                        if position[k] < len(chunks[k]):
                            a2, b2 = chunks[k][position[k]]
                            heapq.heappush(queue, (float(streams[k].timestamps[b2 - 1]), k, a2, b2))
                        s = streams[k]
                        rel = s.timestamps[a:b] - t_first + shift_s
                        keep = rel < limit_s
                        if not keep.any():
                            continue
                        stamps = t_start + rel[keep] / speed
                        delay = float(stamps[-1]) - local_clock()
                        if delay > 0 and stop.wait(delay):
                            break
                        lag_s = max(0.0, local_clock() - float(stamps[-1]))
                        values = s.data[a:b]
                        if s.is_strings:
                            values = [list(map(str, row)) for row, ok in zip(values, keep, strict=True) if ok]
                        else:
                            values = np.ascontiguousarray(np.asarray(values)[keep], dtype=dtypes[k])
                        outlets[k].push_chunk(values, stamps.tolist())
                        n = int(keep.sum())
                        if k == main_k:
                            stats.samples_sent += n
                            stats.max_lag_ms = max(stats.max_lag_ms, lag_s * 1e3)
                            bar.update(
                                n,
                                f"{stats.samples_sent} samples, {stats.markers_sent} events, "
                                f"lag {lag_s * 1e3:.1f} ms",
                            )
                        elif s.is_irregular:
                            stats.markers_sent += n
                    if stop.is_set():
                        break
                    n_pass += 1
                    if n_pass * pass_s < limit_s:
                        bar.reset()
                stats.wall_s = local_clock() - t_start
                if stats.samples_sent and not stop.is_set():
                    stop.wait(linger_s)
            stats.stopped_by = signals.received
        finally:
            stats.finish(
                stopped=stop.is_set(), loop=loop, n_per_pass=main.n_samples, t_start=t_start
            )
            bar.close()
            if progress:
                print(
                    f"replay {main_name}: sent {stats.samples_sent} samples of {main_name!r} and "
                    f"{stats.markers_sent} events in {stats.wall_s:.1f} s; max lag "
                    f"{stats.max_lag_ms:.1f} ms.",
                    file=sys.stderr,
                )
            del outlets
        return stats
