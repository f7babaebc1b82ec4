"""Write an LSL stream, and its marker stream, to a FIF file (``rtdecode record``).

Everything received is kept, from the first sample the inlet delivers: samples go from a
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

Threads: ``record_stream`` makes its inlets and pulls in the thread that calls it (a
simple pull loop); ``stop_event``, Ctrl-C or SIGTERM (main thread) end it and the file is
still written.
"""

from __future__ import annotations

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

from rtdecode._utils.files import PRIVATE, publish
from rtdecode._utils.progress import ProgressLine, stop_on_sigterm
from rtdecode.contracts import ParameterError, marker_stream_name, marker_text, parse_marker
from rtdecode.io.fif import build_info
from rtdecode.lsl.streams import (
    COUNTER_CHANNEL,
    COUNTER_MODULUS,
    DTYPES,
    describe,
    find,
    local_clock,
    open_inlet,
    pull_into,
    pull_markers,
    read_fiff_details,
    resolve,
    unwrap_counter,
)
from rtdecode.stream.ring import nearest_index

__all__ = ["record_stream", "marker_stream_name"]

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
        all when given ``out``).
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
    """
    out = Path(out).expanduser()
    _check_out(out, overwrite)
    if duration_s is not None and not duration_s > 0:
        raise ParameterError(
            "duration_s", f"{{param}} must be a positive number of seconds, got {duration_s!r}."
        )
    stop = stop_event if stop_event is not None else threading.Event()

    info = resolve(name=name, source_id=source_id, timeout_s=timeout_s)
    m_name = marker_stream_name(name) if markers_name is None else markers_name
    m_info = None
    if m_name:
        m_source = marker_stream_name(source_id) if source_id else None
        m_info = find(name=m_name, source_id=m_source, timeout_s=min(timeout_s, 2.0))
    m_inlet = None
    if m_info is not None:
        # Subscribe to markers before data so no event of a recorded sample is missed.
        m_inlet = open_inlet(m_info, max_buflen_s=360)
        m_inlet.open_stream(timeout_s)
    inlet = open_inlet(info, max_buflen_s=60)
    inlet.open_stream(timeout_s)
    full_info = inlet.info(timeout_s)  # only a connected inlet's info has <desc>
    desc = describe(full_info)
    fiff_chs, filters = read_fiff_details(full_info)
    if desc.channel_format not in DTYPES:
        raise RuntimeError(
            f"Stream {name!r} carries {desc.channel_format} values; rtdecode record writes "
            "numeric streams only (record its data stream, not a marker stream)."
        )
    if not desc.sfreq > 0:
        raise RuntimeError(
            f"Stream {name!r} has an irregular rate (nominal rate {desc.sfreq}); FIF needs a "
            "regularly sampled stream."
        )

    sfreq = desc.sfreq
    spool_dtype = _SPOOL_DTYPES.get(desc.channel_format, np.float64)
    n_target = None if duration_s is None else max(1, round(duration_s * sfreq))
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    bar = ProgressLine(f"record {name}", n_target, progress)
    try:
        with stop_on_sigterm(stop):
            spooler = _Spooler(
                inlet, m_inlet, tmp_dir, desc, spool_dtype, max(1, round(block_s * sfreq))
            )
            with spooler:
                try:
                    spooler.run(stop, n_target, timeout_s, bar)
                except KeyboardInterrupt:
                    pass  # Ctrl-C ends the recording; the file is still written.
                spooler.drain(n_target)
        bar.close()
        if spooler.n_total == 0:
            raise RuntimeError(
                f"Stream {name!r} sent no samples (waited {timeout_s:g} s); nothing was "
                "written. Check that the source is running and sending data."
            )
        del inlet, m_inlet
        summary = _write_fif(
            out,
            tmp_dir,
            desc,
            fiff_chs,
            filters,
            spool_dtype,
            spooler.n_total,
            spooler.markers,
            spooler.wall_first,
        )
    finally:
        bar.close()
        shutil.rmtree(tmp_dir, ignore_errors=True)
    n_total = spooler.n_total
    if progress:
        counter = summary.get("counter")
        lost = (
            ""
            if counter is None
            else (f"; counter: {counter['lost']} samples lost, {counter['repeated']} repeated")
        )
        print(
            f"record {name}: wrote {n_total} samples ({n_total / sfreq:.1f} s) and "
            f"{summary['n_markers']} markers to {out}{lost}.",
            file=sys.stderr,
        )
    return out


# ---------------------------------------------------------------- helpers


def _check_out(out: Path, overwrite: bool) -> None:
    name = out.name.lower()
    if not (name.endswith(".fif") or name.endswith(".fif.gz")):
        raise ValueError(
            f"--out {str(out)!r} must be a FIF file name ending in .fif (e.g. "
            f"{out.with_suffix('').name}_raw.fif)."
        )
    if not out.parent.is_dir():
        raise ValueError(f"The folder of --out {str(out)!r} does not exist; create it first.")
    if out.exists() and not overwrite:
        raise ValueError(
            f"{str(out)!r} exists already; choose another --out (recordings are never "
            "overwritten silently)."
        )


def _open_private(path: Path) -> BinaryIO:
    """A new binary file that only its owner can read."""
    return os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")


class _Spooler:
    """The pull loop: inlet -> preallocated block -> spool files, plus the marker log.

    Used by one thread (the one that made the inlets).
    """

    def __init__(self, inlet, m_inlet, tmp_dir: Path, desc, spool_dtype, n_block: int):
        self.inlet, self.m_inlet = inlet, m_inlet
        self.sfreq = desc.sfreq
        self.spool_dtype = np.dtype(spool_dtype)
        self.buf = np.empty((n_block, desc.n_channels), dtype=DTYPES[desc.channel_format])
        self.ts_buf = np.empty(n_block, dtype=np.float64)
        self.fill = 0
        self.n_total = 0
        self.wall_first: float | None = None
        self.markers: list[tuple[float, str]] = []
        self.f_data = _open_private(tmp_dir / "data.spool")
        self.f_times = _open_private(tmp_dir / "times.spool")

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self.flush()
        finally:
            self.f_data.close()
            self.f_times.close()

    def flush(self) -> None:
        if self.fill:
            block = self.buf[: self.fill]
            if block.dtype != self.spool_dtype:
                block = block.astype(self.spool_dtype)
            block.tofile(self.f_data)
            self.ts_buf[: self.fill].tofile(self.f_times)
            self.fill = 0

    def pull(self, timeout_s: float, n_max: int | None) -> tuple[int, float]:
        """One pull of data (up to the block's free room) and of markers.

        Returns the number of samples and the lag of the newest one (s).
        """
        if self.m_inlet is not None:
            texts, stamps = pull_markers(self.m_inlet, 0.0, max_samples=1024)
            self.markers.extend(zip(stamps, map(marker_text, texts), strict=True))
        want = len(self.buf) - self.fill
        if n_max is not None:
            want = min(want, n_max)
        if want <= 0:
            return 0, 0.0
        stamps = pull_into(self.inlet, self.buf[self.fill : self.fill + want], timeout_s)
        n = len(stamps)
        if n == 0:
            return 0, 0.0
        now = local_clock()
        if self.wall_first is None:
            self.wall_first = time.time() - (now - float(stamps[0]))
        self.ts_buf[self.fill : self.fill + n] = stamps
        self.fill += n
        self.n_total += n
        if self.fill == len(self.buf):
            self.flush()
        return n, now - float(stamps[-1])

    def run(self, stop: threading.Event, n_target: int | None, timeout_s: float, bar) -> None:
        """Pull until ``n_target`` samples, ``stop``, or ``timeout_s`` of silence."""
        t_last_data = local_clock()
        while not stop.is_set():
            left = None if n_target is None else n_target - self.n_total
            if left is not None and left <= 0:
                return
            n, lag_s = self.pull(0.1, left)
            if n == 0:
                if local_clock() - t_last_data > timeout_s:
                    break  # the source is gone: keep what we have
                continue
            t_last_data = local_clock()
            bar.update(
                n,
                f"{self.n_total / self.sfreq:.1f} s, {self.n_total} samples, "
                f"{len(self.markers)} markers, lag {lag_s * 1e3:.1f} ms",
            )

    def drain(self, n_target: int | None, max_s: float = 0.5) -> None:
        """Take what is already queued: a stop request does not drop received samples."""
        drain_until = local_clock() + max_s
        while local_clock() < drain_until:
            left = None if n_target is None else n_target - self.n_total
            n, _ = self.pull(0.0, left)
            if n == 0:
                return


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
    recording."""
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
    sfreq: float,
    counter_at=None,
) -> tuple[mne.Annotations, int]:
    """Place each marker on the sample with the nearest timestamp; drop those outside.

    The data and marker inlets estimate their clock offsets separately, so under load a
    marker stamped exactly on a sample can land on its neighbour. When the stream has a
    counter channel and the marker names its sample, ``counter_at(a, b)`` (counter values
    of samples a..b-1) moves it to the sample that carries that count, within 2 samples.
    """
    dt = float(np.median(np.diff(stamps[:10_000]))) if len(stamps) > 1 else 1.0 / sfreq
    onsets, texts, dropped = [], [], 0
    for t, text in sorted(marker_log):
        if t < stamps[0] - dt or t > stamps[-1] + dt:
            dropped += 1
            continue
        i = nearest_index(stamps, t)
        named = _marker_sample(text) if counter_at is not None else None
        if named is not None:
            a, b = max(0, i - 2), min(len(stamps), i + 3)
            hits = np.flatnonzero(counter_at(a, b) == named % COUNTER_MODULUS)
            if hits.size:
                i = a + int(hits[np.argmin(np.abs(a + hits - i))])
        onsets.append(i / sfreq)
        texts.append(text)
    ann = mne.Annotations(onsets, [0.0] * len(onsets), texts, orig_time=None)
    return ann, dropped


def _write_fif(
    out, tmp_dir, desc, fiff_chs, filters, spool_dtype, n_total, marker_log, wall_first
) -> dict[str, Any]:
    info = build_info(desc, fiff_chs, filters)
    if wall_first is not None:
        info.set_meas_date(datetime.fromtimestamp(wall_first, tz=UTC))
    stamps = np.fromfile(tmp_dir / "times.spool", dtype=np.float64)
    raw = _SpoolRaw(info, tmp_dir / "data.spool", n_total, spool_dtype)
    counter_at = None
    if COUNTER_CHANNEL in info["ch_names"]:
        k = info["ch_names"].index(COUNTER_CHANNEL)

        def counter_at(a: int, b: int) -> np.ndarray:
            return _read_spool(tmp_dir / "data.spool", spool_dtype, info["nchan"], a, b)[:, k]

    ann, dropped = _markers_to_annotations(marker_log, stamps, desc.sfreq, counter_at)
    raw.set_annotations(ann)
    span = float(stamps[-1] - stamps[0])
    summary: dict[str, Any] = {
        "recorded_by": "rtdecode record",
        "stream": {
            "name": desc.name,
            "type": desc.stype,
            "source_id": desc.source_id,
            "hostname": desc.hostname,
            "nominal_srate": desc.sfreq,
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
