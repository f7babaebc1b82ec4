"""Record an LSL stream and its markers to an XDF file, as LabRecorder does.

This is ``rtdecode record --out FILE.xdf``.

One :class:`~rtdecode.io.xdf.XdfWriter`, owned by the recording thread (the one that
calls :func:`record_xdf`, which also makes and pulls the inlets), gets a StreamHeader per
stream from the connected inlet's description (name, type, rate, format, source id,
channel labels, types and units), every sample with the source's own LSL timestamp, and a
ClockOffset chunk per stream every ``offset_every_s`` (readers such as pyxdf apply them),
then the footers on stop. Markers are a second stream: ``<name>-markers``, else mne-lsl's
``<name>-annotations``, or the one named.

The file is written under a hidden temporary name next to ``out`` and moved into place,
owner-only (0600), when it is complete. ``stop_event``, or (main thread) Ctrl-C or SIGTERM
end the recording and the file is still written (a signal sets the stop event; the pull
loop ends within one pull).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import numpy as np

from rtdecode._utils.files import PRIVATE, publish
from rtdecode._utils.progress import ProgressLine, stop_on_signals
from rtdecode.contracts import annotation_stream_name, marker_stream_name
from rtdecode.io.xdf import FORMATS, XdfWriter
from rtdecode.lsl.streams import describe, find_first, local_clock, open_inlet, resolve

__all__ = ["record_xdf"]


class _Stream:
    """One inlet and its stream in the file (recording thread only)."""

    def __init__(self, writer: XdfWriter, info, timeout_s: float, max_buflen_s: int) -> None:
        self.inlet = open_inlet(info, max_buflen_s=max_buflen_s, clocksync=False)
        self.inlet.open_stream(timeout_s)
        self.desc = describe(self.inlet.info(timeout_s))  # only a connected inlet has <desc>
        d = self.desc
        if d.channel_format not in FORMATS:
            raise RuntimeError(f"Stream {d.name!r} has the format {d.channel_format!r}, which XDF lacks.")
        names = list(d.ch_names) if d.has_description else [f"ch{i:03d}" for i in range(d.n_channels)]
        self.id = writer.add_stream(
            d.name,
            d.stype,
            names,
            d.sfreq_hz,
            d.channel_format,
            source_id=d.source_id,
            ch_units=list(d.units) if d.has_description else None,
            ch_types=list(d.ch_types) if d.has_description else None,
        )
        self.writer = writer
        self.n_samples = 0

    def pull(self, timeout_s: float, max_samples: int) -> int:
        values, stamps = self.inlet.pull_chunk(timeout=timeout_s, max_samples=max_samples)
        if not stamps:
            return 0
        if self.desc.channel_format != "string":
            values = np.asarray(values).reshape(len(stamps), self.desc.n_channels)
        self.writer.write_samples(self.id, stamps, values)
        self.n_samples += len(stamps)
        return len(stamps)

    def write_offset(self) -> None:
        offset_s = self.inlet.time_correction(2.0)
        self.writer.write_clock_offset(self.id, local_clock(), offset_s)


def record_xdf(
    name: str,
    out: str | Path,
    *,
    duration_s: float | None = None,
    source_id: str | None = None,
    timeout_s: float = 10.0,
    progress: bool = True,
    stop_event: threading.Event | None = None,
    markers_name: str | None = None,
    overwrite: bool = False,
    offset_every_s: float = 5.0,
) -> Path:
    """Record an LSL stream (and its markers) to an XDF file.

    Called by :func:`rtdecode.io.record.record_stream`, which checks the arguments.

    Parameters
    ----------
    name : str
        Data stream name.
    out : str | Path
        The ``.xdf`` file to write.
    duration_s : float | None
        Stop after this many seconds of data (``round(duration_s * sfreq)`` samples of
        a regular stream); None: until Ctrl-C, ``stop_event`` or ``timeout_s`` of silence.
    source_id : str | None
        Also match the data stream's source id.
    timeout_s : float
        How long to wait for the stream, and for data once it went silent.
    progress : bool
        Show a progress line on stderr.
    stop_event : threading.Event | None
        Set it to end the recording from another thread; the file is still written.
    markers_name : str | None
        Marker stream (default ``<name>-markers``, else ``<name>-annotations``; ``""``:
        none).
    overwrite : bool
        Replace ``out`` if it exists.
    offset_every_s : float
        Seconds between ClockOffset chunks.

    Returns
    -------
    Path
        ``out``.
    """
    out = Path(out).expanduser()
    stop = stop_event if stop_event is not None else threading.Event()

    info = resolve(name=name, source_id=source_id, timeout_s=timeout_s)
    names = (
        (marker_stream_name(name), annotation_stream_name(name))
        if markers_name is None
        else ((markers_name,) if markers_name else ())
    )
    m_info = find_first(names, None, min(timeout_s, 2.0)) if names else None
    tmp = out.with_name(f".{out.name}.part")
    writer = XdfWriter(tmp)
    bar = None
    try:
        # Subscribe to markers before data so no event of a recorded sample is missed.
        mrk = None if m_info is None else _Stream(writer, m_info, timeout_s, 360)
        data = _Stream(writer, info, timeout_s, 60)
        sfreq = data.desc.sfreq_hz
        n_target = None if duration_s is None or not sfreq > 0 else max(1, round(duration_s * sfreq))
        t_end = None if duration_s is None or sfreq > 0 else local_clock() + duration_s
        streams = [s for s in (data, mrk) if s is not None]
        bar = ProgressLine(f"record {name}", n_target, progress)
        t_offsets = -float("inf")
        t_last_data = local_clock()
        with stop_on_signals(stop):
            while not stop.is_set():
                if local_clock() - t_offsets >= offset_every_s:
                    for s in streams:
                        s.write_offset()
                    t_offsets = local_clock()
                if mrk is not None:
                    mrk.pull(0.0, 1024)
                left = 1024 if n_target is None else min(1024, n_target - data.n_samples)
                if left <= 0 or (t_end is not None and local_clock() >= t_end):
                    break
                n = data.pull(0.1, left)
                if n:
                    t_last_data = local_clock()
                    bar.update(n, f"{data.n_samples} samples, "
                               f"{0 if mrk is None else mrk.n_samples} markers")
                elif local_clock() - t_last_data > timeout_s:
                    break  # the source is gone: keep what we have
            if mrk is not None:  # markers of the last samples may still be on their way
                drain_until = local_clock() + 0.5
                while local_clock() < drain_until and mrk.pull(0.05, 1024):
                    pass
            for s in streams:
                s.write_offset()
            if data.n_samples == 0:
                raise RuntimeError(
                    f"Stream {name!r} sent no samples (waited {timeout_s:g} s); nothing was "
                    "written. Check that the source is running and sending data."
                )
            writer.close()  # a signal now does not interrupt the file's completion
            publish(tmp, out, mode=PRIVATE)
    finally:
        writer.close()
        if bar is not None:
            bar.close()
        tmp.unlink(missing_ok=True)
    if progress:
        print(
            f"record {name}: wrote {data.n_samples} samples and "
            f"{0 if mrk is None else mrk.n_samples} markers to {out}.",
            file=sys.stderr,
        )
    return out
