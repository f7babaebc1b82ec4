"""Write an LSL stream, and its marker stream, to a FIF file (``rtdecode record``).

Everything received is kept, from the first sample the reader delivers: samples go from a
preallocated block buffer to a spool file on disk, one block at a time, so memory does not
grow with the length of the recording. At the end the spool becomes a FIF file (float32, or
float64 for double streams), markers become annotations whose description is the marker
text (rtdecode's JSON payload), placed on the sample whose LSL timestamp is nearest.

The file appears atomically: it is written in a private temporary folder next to ``out``
and renamed into place, with owner-only permissions (0600).

Channel names, types, units, positions (and mne-lsl's FIFF fields, when the source sent
them) come from the stream description; a stream without one gets ``ch000``, ``ch001``...
Data in scaled units (uV, fT ...) are stored with the matching calibration so that MNE
reads them back in SI units.

A full disk ends the recording with :class:`DiskFullError`, after the file of what was
kept is written: the spool never grows past what the disk can still turn into the FIF file
(it keeps room for the file next to it), so the samples spooled before the disk filled
become a valid FIF file, and the error names the file, what it holds and from which
sample on nothing was recorded. If the disk fills from elsewhere while the file is being
written, the longest start of the recording that fits is written instead (and said so).

Where the samples come from: ``record`` opens no inlet of its own. The stream layer's
StreamReader pulls the data stream and a StreamTap the marker stream (the one LSL pull
loop, stream/reader.py); each hands every chunk, as sent (the stream's dtype, before any
rescaling), to a sink that queues a copy for the recording thread (io/capture.py). The
timestamps kept are the reader's clock-corrected ones (the source's time plus the clock
offset, as the service's ring holds them). Gaps the reader finds (the counter channel,
timestamps, a source that went and came back within ``timeout_s``) are counted in the
file's summary (``gaps``) and in the last line printed.

Threads: the reader threads pull; the thread that calls ``record_stream`` (the
recording thread) spools what they queue. ``stop_event``, or (main thread) Ctrl-C or
SIGTERM end it and the file is still written: a signal sets the stop event, the loop
ends within 0.1 s, the readers hand over what their inlets still hold, and a signal while
the file is written does not interrupt the write (a second Ctrl-C does).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import sys
import tempfile
import threading
import time
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, BinaryIO

import mne
import numpy as np

from rtdecode._utils.files import PRIVATE, free_bytes, is_disk_full, publish
from rtdecode._utils.progress import ProgressLine, stop_on_signals
from rtdecode.contracts import ParameterError, marker_stream_name, marker_text, parse_marker
from rtdecode.io.capture import DATA, Capture
from rtdecode.io.fif import build_info
from rtdecode.lsl.streams import (
    COUNTER_CHANNEL,
    COUNTER_MODULUS,
    DTYPES,
    local_clock,
    unwrap_counter,
)
from rtdecode.stream.reader import Chunk
from rtdecode.stream.ring import nearest_index

__all__ = ["record_stream", "marker_stream_name", "DiskFullError"]


class DiskFullError(RuntimeError):
    """The disk filled up while recording; what was kept is in a valid file.

    Attributes
    ----------
    path : Path
        The FIF file written (None when not even one sample fitted).
    n_kept : int
        Samples in it (the first ``n_kept`` the stream sent after subscribing).
    n_received : int
        Samples received before the recording stopped.
    """

    def __init__(self, message: str, path: Path | None, n_kept: int, n_received: int):
        super().__init__(message)
        self.path, self.n_kept, self.n_received = path, n_kept, n_received


class _SpoolFull(Exception):
    """The spool cannot grow: the disk is full or could not hold the FIF file too."""


# What the spool (and the FIF) store for each stream format: exact for every value.
_SPOOL_DTYPES = {"float32": np.float32, "int8": np.float32, "int16": np.float32}


def record_stream(
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
    block_s: float = 1.0,
) -> Path:
    """Record an LSL stream (and its markers) to a FIF file.

    Parameters
    ----------
    name : str
        Data stream name.
    out : str | Path
        The FIF file to write (``.fif`` or ``.fif.gz``). Longer recordings than FIF's
        2 GB per file are split into ``<stem>-1.fif``, ... next to it (MNE reads them
        all when given ``out``). An ``.xdf`` file is written by
        :func:`rtdecode.io.xdf_record.record_xdf` instead.
    duration_s : float | None
        Stop after this many seconds of data (``round(duration_s * sfreq)`` samples).
        None: until Ctrl-C, ``stop_event``, or the stream going silent for ``timeout_s``.
    source_id : str | None
        Also match the data stream's source id (markers: ``<source_id>-markers``).
    timeout_s : float
        How long to wait for the stream to appear, and for data once it went silent.
    progress : bool
        Show a progress line on stderr (seconds recorded, samples, markers, lag).
    stop_event : threading.Event | None
        Set it to end the recording from another thread; the file is still written.
    markers_name : str | None
        Marker stream to record (default ``<name>-markers``; ``""``: none).
    overwrite : bool
        Replace ``out`` if it exists (default: refuse, before recording anything).
    block_s : float
        Seconds of samples buffered in memory between writes to the spool.

    Returns
    -------
    Path
        ``out``.

    Raises
    ------
    ValueError
        ``out`` is not a .fif file, or exists and ``overwrite`` is False.
    rtdecode.lsl.streams.StreamNotFoundError
        No stream called ``name`` appeared within ``timeout_s``.
    RuntimeError
        The stream is not numeric or regularly sampled, or sent no sample at all.
    DiskFullError
        The disk filled up; the samples kept until then were written to ``out``.
    """
    out = Path(out).expanduser()
    _check_out(out, overwrite)
    if duration_s is not None and not duration_s > 0:
        raise ParameterError(
            "duration_s", f"{{param}} must be a positive number of seconds, got {duration_s!r}."
        )
    if out.suffix.lower() == ".xdf":
        from rtdecode.io.xdf_record import record_xdf

        return record_xdf(
            name, out, duration_s=duration_s, source_id=source_id, timeout_s=timeout_s,
            progress=progress, stop_event=stop_event, markers_name=markers_name,
            overwrite=overwrite,
        )  # fmt: skip
    stop = stop_event if stop_event is not None else threading.Event()
    m_name = marker_stream_name(name) if markers_name is None else markers_name
    capture = Capture(
        name,
        source_id=source_id,
        timeout_s=timeout_s,
        marker_names=(m_name,) if m_name else (),
        marker_source_id=marker_stream_name(source_id) if source_id else None,
        regular_only=True,
    )
    with capture:
        capture.open()
        n_total, summary = _record_fif(
            capture, out, stop, duration_s, progress, block_s
        )
    if progress:
        counter = summary.get("counter")
        lost = (
            ""
            if counter is None
            else (f"; counter: {counter['lost']} samples lost, {counter['repeated']} repeated")
        )
        sfreq = capture.data.description.sfreq_hz
        print(
            f"record {name}: wrote {n_total} samples ({n_total / sfreq:.1f} s) and "
            f"{summary['n_markers']} markers to {out}{lost}{capture.gap_note()}.",
            file=sys.stderr,
        )
    capture.raise_if_cut_short(out)
    return out


def _record_fif(capture: Capture, out: Path, stop, duration_s, progress, block_s):
    """Spool what ``capture`` hands over, then write the FIF file; (n_samples, summary)."""
    desc = capture.data.description
    name, sfreq = desc.name, desc.sfreq_hz
    spool_dtype = _SPOOL_DTYPES.get(desc.channel_format, np.float64)
    n_target = None if duration_s is None else max(1, round(duration_s * sfreq))
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    bar = ProgressLine(f"record {name}", n_target, progress)
    signals = contextlib.ExitStack()
    try:
        signals.enter_context(stop_on_signals(stop))  # in force until the file is written
        spooler = _Spooler(tmp_dir, desc, spool_dtype, max(1, round(block_s * sfreq)), bar)
        with spooler:
            try:
                capture.run(spooler.take, stop, n_target=n_target)
            except _SpoolFull:
                pass  # the disk is full: write what the spool holds, then say so
        bar.close()
        if spooler.n_total == 0:
            raise RuntimeError(
                f"Stream {name!r} sent no samples (waited {capture.timeout_s:g} s); nothing "
                "was written. Check that the source is running and sending data."
            )
        n_total, full = spooler.n_spooled, spooler.full

        def write(n: int) -> dict[str, Any]:
            summary = _write_fif(
                out, tmp_dir, desc, spool_dtype, n, spooler.markers, spooler.wall_first,
                capture.gap_summary(),
            )  # fmt: skip
            return summary

        try:
            summary = write(n_total) if n_total else None
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            # The disk filled from elsewhere meanwhile: keep the start that fits.
            _remove_staged(tmp_dir)
            full = True
            n_total = _samples_that_fit(tmp_dir, desc.n_channels, spool_dtype, n_total)
            summary = write(n_total) if n_total else None
        if full:
            raise _disk_full_error(out, desc, n_total, spooler, summary)
    finally:
        signals.close()
        bar.close()
        shutil.rmtree(tmp_dir, ignore_errors=True)
    return n_total, summary


# ---------------------------------------------------------------- helpers


def _check_out(out: Path, overwrite: bool) -> None:
    name = out.name.lower()
    if not (name.endswith(".fif") or name.endswith(".fif.gz") or name.endswith(".xdf")):
        raise ValueError(
            f"--out {str(out)!r} must be a FIF file name ending in .fif (e.g. "
            f"{out.with_suffix('').name}_raw.fif), or an XDF file name ending in .xdf."
        )
    if not out.parent.is_dir():
        raise ValueError(f"The folder of --out {str(out)!r} does not exist; create it first.")
    if out.exists() and not overwrite:
        raise ValueError(
            f"{str(out)!r} exists already; choose another --out (recordings are never "
            "overwritten silently)."
        )


def _open_private(path: Path) -> BinaryIO:
    """A new binary file that only its owner can read.

    Unbuffered: a failed write leaves nothing pending in a buffer.
    """
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb", buffering=0)


def _write_all(f, data: bytes) -> None:
    view = memoryview(data)
    while view:
        n = f.write(view)
        if not n:
            raise OSError(errno.ENOSPC, "No space left on device (nothing written)")
        view = view[n:]


#: Room kept beyond the data for the FIF file's header, channel records and annotations.
def _fif_overhead_bytes(n_channels: int, n_markers: int) -> int:
    return 256 * 1024 + 1024 * n_channels + 512 * n_markers


def _samples_that_fit(tmp_dir: Path, n_channels: int, spool_dtype, n_max: int) -> int:
    """How many samples a FIF file can hold in the space left next to the spool."""
    free = free_bytes(tmp_dir) or 0
    room = free - _fif_overhead_bytes(n_channels, 0)
    return int(min(n_max, max(0, room // (n_channels * np.dtype(spool_dtype).itemsize))))


def _remove_staged(tmp_dir: Path) -> None:
    """Remove a half-written FIF (its parts) from the private folder."""
    for part in tmp_dir.iterdir():
        if part.suffix != ".spool":
            part.unlink(missing_ok=True)


def _disk_full_error(out: Path, desc, n_kept: int, spooler, summary) -> DiskFullError:
    sfreq, n_received = desc.sfreq_hz, spooler.n_total
    free = free_bytes(out.parent)
    room = "" if free is None else f" ({free / 1e6:.1f} MB free)"
    if summary is None:
        kept = "Nothing could be written."
        path = None
    else:
        kept = (
            f"Kept: the first {n_kept} samples ({n_kept / sfreq:.1f} s) and "
            f"{summary['n_markers']} markers, in {out} (a complete FIF file)."
        )
        path = out
    return DiskFullError(
        f"The disk of {out.parent} is full{room}: the recording of {desc.name!r} stopped "
        f"after {n_received} samples ({n_received / sfreq:.1f} s) were received. {kept} "
        f"Samples from {n_kept} on were not recorded ({(n_received - n_kept) / sfreq:.1f} s "
        "received but not written, and nothing after). Free space or record to another "
        "disk.",
        path,
        n_kept,
        n_received,
    )


class _Spooler:
    """The recording thread's writer: chunks -> preallocated block -> spool files.

    Markers go to a list of (LSL time, text). Used by one thread (the recording thread).
    """

    def __init__(self, tmp_dir: Path, desc, spool_dtype, n_block: int, bar) -> None:
        self.sfreq_hz = desc.sfreq_hz
        self.spool_dtype = np.dtype(spool_dtype)
        self.buf = np.empty((n_block, desc.n_channels), dtype=DTYPES[desc.channel_format])
        self.ts_buf = np.empty(n_block, dtype=np.float64)
        self.fill = 0
        self.n_total = 0  # received
        self.n_spooled = 0  # on disk in the spool
        self.full = False
        self.tmp_dir = tmp_dir
        self.bar = bar
        self.wall_first: float | None = None
        self.markers: list[tuple[float, str]] = []
        self.f_data = _open_private(tmp_dir / "data.spool")
        self.f_times = _open_private(tmp_dir / "times.spool")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self.flush()
        except _SpoolFull:
            pass  # ``full`` is set: record_stream writes what is kept and says so
        finally:
            self.f_data.close()
            self.f_times.close()

    def flush(self) -> None:
        """Append the block to the spool, unless the disk could then not hold the FIF too.

        Then raise ``_SpoolFull``; the spool stays whole and ``full`` is set.
        """
        if not self.fill or self.full:
            return
        block = self.buf[: self.fill]
        if block.dtype != self.spool_dtype:
            block = block.astype(self.spool_dtype)
        row_bytes = block.shape[1] * self.spool_dtype.itemsize
        # The FIF file is written next to the spool: keep room for it at every step.
        # (the spool so far is on disk already; the block goes to the spool and later,
        # with the rest, to the FIF file)
        need = (self.n_spooled + 2 * self.fill) * row_bytes + 8 * self.fill
        need += _fif_overhead_bytes(block.shape[1], len(self.markers))
        free = free_bytes(self.tmp_dir)
        if free is not None and free < need:
            self.full = True
            raise _SpoolFull
        try:
            _write_all(self.f_data, block.tobytes())
            _write_all(self.f_times, self.ts_buf[: self.fill].tobytes())
        except OSError as exc:
            if not is_disk_full(exc):
                raise
            # Back to the last whole block, so data and times stay in step.
            os.ftruncate(self.f_data.fileno(), self.n_spooled * row_bytes)
            os.ftruncate(self.f_times.fileno(), self.n_spooled * 8)
            self.full = True
            raise _SpoolFull from exc
        self.n_spooled += self.fill
        self.fill = 0

    def take(self, key: str, chunk: Chunk) -> None:
        """One chunk from the capture: samples into the block (spooled when full), or markers."""
        t_lsl = chunk.t_lsl  # clock-corrected, as the service's ring holds them
        if key != DATA:
            rows = chunk.values.tolist() if isinstance(chunk.values, np.ndarray) else chunk.values
            self.markers.extend(zip(t_lsl.tolist(), map(marker_text, rows), strict=True))
            return
        n = chunk.n
        if self.wall_first is None:
            self.wall_first = time.time() - (local_clock() - float(t_lsl[0]))
        done = 0
        while done < n:
            k = min(n - done, len(self.buf) - self.fill)
            self.buf[self.fill : self.fill + k] = chunk.values[done : done + k]
            self.ts_buf[self.fill : self.fill + k] = t_lsl[done : done + k]
            self.fill += k
            self.n_total += k
            done += k
            if self.fill == len(self.buf):
                self.flush()
        lag_s = chunk.t_arrived - float(t_lsl[-1])
        self.bar.update(
            n,
            f"{self.n_total / self.sfreq_hz:.1f} s, {self.n_total} samples, "
            f"{len(self.markers)} markers, lag {lag_s * 1e3:.1f} ms",
        )


class _SpoolRaw(mne.io.BaseRaw):
    """Raw view of the sample-major spool file, so ``save`` streams it block by block."""

    def __init__(self, info, spool_path: Path, n_times: int, dtype):
        super().__init__(
            info,
            preload=False,
            first_samps=(0,),
            last_samps=(n_times - 1,),
            filenames=(spool_path,),
            raw_extras=[{"dtype": np.dtype(dtype), "n_times": n_times, "n_ch": info["nchan"]}],
            orig_format="single" if np.dtype(dtype) == np.float32 else "double",
            verbose="error",
        )

    def _read_segment_file(self, data, idx, fi, start, stop, cals, mult):
        extra = self._raw_extras[fi]
        # In blocks: a long request (get_data of one channel) must not convert every
        # channel of the whole span to float64 at once.
        for a, b in _blocks(data.shape[1], extra["n_ch"]):
            one = _read_spool(
                self.filenames[fi], extra["dtype"], extra["n_ch"], start + a, start + b
            )
            one = one.astype(np.float64).T
            if mult is not None:
                data[:, a:b] = mult @ one[idx]
            else:
                data[:, a:b] = one[idx] * cals


def _read_spool(path, dtype, n_ch: int, start: int, stop: int) -> np.ndarray:
    """Samples [start, stop) of the sample-major spool file, shape (stop - start, n_ch).

    Plain reads, not a memmap: mapped pages would count as resident memory for the whole
    recording.
    """
    itemsize = np.dtype(dtype).itemsize
    values = np.fromfile(
        path, dtype=dtype, count=(stop - start) * n_ch, offset=start * n_ch * itemsize
    )
    return values.reshape(-1, n_ch)


def _blocks(n: int, n_ch: int, max_values: int = 2**22):
    """(start, stop) ranges over ``n`` samples of about ``max_values`` values each."""
    step = max(1, max_values // max(1, n_ch))
    return [(a, min(n, a + step)) for a in range(0, n, step)]


def _counter_check(
    path, dtype, n_total: int, n_ch: int, index: int, max_values: int = 2**22
) -> dict[str, int]:
    """Samples lost or repeated, from the counter channel (which wraps at 2**24)."""
    lost = repeated = 0
    first = last = None
    for a, b in _blocks(n_total, n_ch, max_values):
        values = _read_spool(path, dtype, n_ch, a, b)[:, index]
        absolute = unwrap_counter(values, reference=last)
        steps = np.diff(absolute if last is None else np.r_[last, absolute])
        lost += int(np.sum(steps[steps > 1] - 1))
        repeated += int(np.sum(steps < 1))
        first = int(absolute[0]) if first is None else first
        last = int(absolute[-1])
    return {
        "first": first,
        "last": last,
        "lost": lost,
        "repeated": repeated,
        "modulus": COUNTER_MODULUS,
    }


def _marker_sample(text: str) -> int | None:
    """The absolute sample a marker names in its JSON payload (our replay's do), if any."""
    sample = parse_marker(text).get("sample")
    return sample if isinstance(sample, int) and not isinstance(sample, bool) else None


def _markers_to_annotations(
    marker_log: list[tuple[float, str]],
    stamps: np.ndarray,
    sfreq_hz: float,
    counter_at=None,
) -> tuple[mne.Annotations, int]:
    """Place each marker on the sample with the nearest timestamp; drop those outside.

    The data and marker inlets estimate their clock offsets separately, so under load a
    marker stamped exactly on a sample can land on its neighbour. When the stream has a
    counter channel and the marker names its sample, ``counter_at(a, b)`` (counter values
    of samples a..b-1) moves it to the sample that carries that count, within 2 samples.
    """
    dt = float(np.median(np.diff(stamps[:10_000]))) if len(stamps) > 1 else 1.0 / sfreq_hz
    onsets, texts, dropped = [], [], 0
    for t, text in sorted(marker_log):
        if t < stamps[0] - 0.5 * dt or t > stamps[-1] + 0.5 * dt:  # not on a kept sample
            dropped += 1
            continue
        i = nearest_index(stamps, t)
        named = _marker_sample(text) if counter_at is not None else None
        if named is not None:
            a, b = max(0, i - 2), min(len(stamps), i + 3)
            hits = np.flatnonzero(counter_at(a, b) == named % COUNTER_MODULUS)
            if hits.size:
                i = a + int(hits[np.argmin(np.abs(a + hits - i))])
        onsets.append(i / sfreq_hz)
        texts.append(text)
    ann = mne.Annotations(onsets, [0.0] * len(onsets), texts, orig_time=None)
    return ann, dropped


def _write_fif(
    out, tmp_dir, desc, spool_dtype, n_total, marker_log, wall_first, gaps
) -> dict[str, Any]:
    info = build_info(desc, list(desc.fiff_chs), desc.filters)
    if wall_first is not None:
        info.set_meas_date(datetime.fromtimestamp(wall_first, tz=UTC))
    stamps = np.fromfile(tmp_dir / "times.spool", dtype=np.float64, count=n_total)
    raw = _SpoolRaw(info, tmp_dir / "data.spool", n_total, spool_dtype)
    counter_at = None
    if COUNTER_CHANNEL in info["ch_names"]:
        k = info["ch_names"].index(COUNTER_CHANNEL)

        def counter_at(a: int, b: int) -> np.ndarray:
            return _read_spool(tmp_dir / "data.spool", spool_dtype, info["nchan"], a, b)[:, k]

    ann, dropped = _markers_to_annotations(marker_log, stamps, desc.sfreq_hz, counter_at)
    raw.set_annotations(ann)
    span = float(stamps[-1] - stamps[0])
    summary: dict[str, Any] = {
        "recorded_by": "rtdecode record",
        "stream": {
            "name": desc.name,
            "type": desc.stype,
            "source_id": desc.source_id,
            "hostname": desc.hostname,
            "nominal_srate": desc.sfreq_hz,
            "channel_format": desc.channel_format,
            "has_description": desc.has_description,
        },
        "t_first_lsl": float(stamps[0]),
        "t_last_lsl": float(stamps[-1]),
        "measured_srate": (n_total - 1) / span if span > 0 else None,
        "n_samples": int(n_total),
        "n_markers": len(ann),
        "n_markers_outside": dropped,
        "counter": None,
        "gaps": gaps,
    }
    if COUNTER_CHANNEL in raw.ch_names:
        summary["counter"] = _counter_check(
            tmp_dir / "data.spool",
            spool_dtype,
            n_total,
            info["nchan"],
            raw.ch_names.index(COUNTER_CHANNEL),
        )
    raw.info["description"] = json.dumps(summary)

    # Write under the final name inside the private folder (split parts name each
    # other), then move every part into place.
    staged = tmp_dir / out.name
    fmt = "single" if np.dtype(spool_dtype) == np.float32 else "double"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # MNE's file-naming advice
        raw.save(staged, fmt=fmt, overwrite=True, verbose="error")
    parts = sorted(p for p in tmp_dir.iterdir() if p.suffix != ".spool")
    for part in parts:
        publish(part, out.parent / part.name, mode=PRIVATE)
    return summary
