"""Record an LSL stream and its markers to an XDF file, as LabRecorder does.

This is ``rtdecode record --out FILE.xdf``.

The samples come from the stream layer's readers (io/capture.py: a StreamReader for a
regularly sampled numeric stream, a StreamTap for an irregular or string stream and for
the markers), never from an inlet of this module. Each chunk arrives as sent: values in
the stream's own format, the source's own LSL timestamps, and the clock offset the
reader measured.

One :class:`~rtdecode.io.xdf.XdfWriter`, owned by the recording thread (the one that
calls :func:`record_xdf`), gets a StreamHeader per stream from the connected reader's
description (name, type, rate, format, source id, channel labels, types and units), every
sample with the source's own LSL timestamp, and a ClockOffset chunk per stream every
``offset_every_s`` (readers such as pyxdf apply them), then the footers on stop. Markers
are a second stream: ``<name>-markers``, else mne-lsl's ``<name>-annotations``, or the
one named.

The file is written under a hidden temporary name next to ``out`` and moved into place,
owner-only (0600), when it is complete. ``stop_event``, or (main thread) Ctrl-C or SIGTERM
end the recording and the file is still written (a signal sets the stop event; the loop
ends within 0.1 s and the readers hand over what their inlets still hold).
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from rtdecode._utils.files import PRIVATE, publish
from rtdecode._utils.progress import ProgressLine, stop_on_signals
from rtdecode.contracts import annotation_stream_name, marker_stream_name
from rtdecode.io.capture import DATA, Capture
from rtdecode.io.xdf import FORMATS, XdfWriter
from rtdecode.lsl.streams import local_clock
from rtdecode.stream.reader import Chunk

__all__ = ["record_xdf"]


class _Stream:
    """One reader's stream in the file (recording thread only)."""

    def __init__(self, writer: XdfWriter, reader) -> None:
        d = self.desc = reader.description
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
        self.writer, self.reader = writer, reader
        self.n_samples = 0
        self._t_offset = -float("inf")  # collection time of the last offset written

    def write(self, chunk: Chunk) -> None:
        self.writer.write_samples(self.id, chunk.t_source, chunk.values)
        self.n_samples += chunk.n

    def write_offset(self) -> None:
        """The reader's latest clock offset, unless it was written already."""
        t, offset_s = self.reader.clock_offset
        if t > self._t_offset:
            self.writer.write_clock_offset(self.id, t, offset_s)
            self._t_offset = t


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
    names = (
        (marker_stream_name(name), annotation_stream_name(name))
        if markers_name is None
        else ((markers_name,) if markers_name else ())
    )
    tmp = out.with_name(f".{out.name}.part")
    bar = None
    with Capture(name, source_id=source_id, timeout_s=timeout_s, marker_names=names) as capture:
        capture.open()
        writer = XdfWriter(tmp)
        try:
            # Stream ids in the order of subscription: markers, then data.
            mrk = None if capture.markers is None else _Stream(writer, capture.markers)
            data = _Stream(writer, capture.data)
            streams = [s for s in (data, mrk) if s is not None]
            sfreq = data.desc.sfreq_hz
            regular = sfreq > 0
            n_target = None if duration_s is None or not regular else max(1, round(duration_s * sfreq))
            bar = ProgressLine(f"record {name}", n_target, progress)
            t_offsets = [-float("inf")]

            def tick() -> None:
                if local_clock() - t_offsets[0] >= offset_every_s:
                    for s in streams:
                        s.write_offset()
                    t_offsets[0] = local_clock()

            def write(key: str, chunk: Chunk) -> None:
                if key != DATA:
                    mrk.write(chunk)
                    return
                data.write(chunk)
                bar.update(chunk.n, f"{data.n_samples} samples, "
                           f"{0 if mrk is None else mrk.n_samples} markers")  # fmt: skip

            with stop_on_signals(stop):
                capture.run(
                    write,
                    stop,
                    n_target=n_target,
                    duration_s=None if regular else duration_s,
                    tick=tick,
                )
                for s in streams:
                    s.write_offset()
                if data.n_samples == 0:
                    raise RuntimeError(
                        f"Stream {name!r} sent no samples (waited {timeout_s:g} s); nothing "
                        "was written. Check that the source is running and sending data."
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
            f"{0 if mrk is None else mrk.n_samples} markers to {out}{capture.gap_note()}.",
            file=sys.stderr,
        )
    capture.raise_if_cut_short(out)
    return out
