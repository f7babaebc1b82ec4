"""SegmentRecorder: every received sample and marker on disk, continuously.

Small FIF files, so that a crash of the service loses at most the newest couple of
seconds.

``rtdecode serve --record DIR`` (``Settings.record``) runs one. It follows the
StreamReader's RingBuffer by absolute sample index, as the Windower does, and writes each
stretch of at most ``segment_s`` seconds as its own FIF file, plus a JSON sidecar:

    DIR/session-20261127T172100Z/          (0700: one folder per service start)
        seg-r01-000000000000_raw.fif        (0600) samples [0, 2400) of run 1
        seg-r01-000000000000.json           (0600) the sidecar (see below)
        seg-r01-000000002400_raw.fif
        ...

A *run* is one StreamReader: its sample indices start at 0. The service starts a new run
when it has to replace its reader (the source came back with other channels, then the
right one returned). Within a run, segment ``k + 1`` starts where segment ``k`` ended
unless samples were missing in between (a gap the reader detected, or samples the
recorder could not save in time); a segment never spans a gap, so every file is
contiguous in time as MNE assumes. Each file's ``raw.first_samp`` is the absolute index
of its first sample, and markers are annotations on the sample nearest their time
(``mne.events_from_annotations`` gives absolute indices back).

Sidecar (the same JSON is also in the FIF's ``info["description"]``): ``v``, ``file``,
``run``, ``first_sample``, ``n_samples``, ``sfreq_hz``, ``t_first``/``t_last`` (LSL clock),
``wall_first`` (Unix time of the first sample), ``stream`` (name, source_id, type),
``markers`` ([{sample, t_lsl, value}] inside the segment), ``late_markers`` (markers that
arrived after the segment holding their sample was written), ``gap_before`` (samples the
reader found missing right before ``first_sample``), ``recorder_lost_before`` (samples the
recorder could not save: see below), ``n_nonfinite``.

What a crash can lose: a segment is written once it holds ``segment_s`` of samples (plus
``marker_margin_s`` so that markers have arrived), or as soon as its oldest sample has
waited ``segment_s + marker_margin_s``; files appear atomically (temporary name, fsync,
rename, fsync of the folder), so a SIGKILL leaves whole segments and loses only what was
still waiting: the samples that arrived in the last ``segment_s + marker_margin_s``
(2 s with the defaults) plus those that arrived while a segment was being written.

Bounded memory, no silent loss: the recorder reads the ring and never holds more than one
segment. If the disk is so slow that the ring overwrites samples before they are written
(more than ``buffer_s`` behind), the overwritten samples are counted in
``stats.counters["lost_samples"]``, logged as an error, and named in the next
sidecar's ``recorder_lost_before``. A write that fails is retried every second;
``error`` holds the failure and ``problem`` a sentence for people meanwhile (the service
shows it on /health).

A full disk is one such failure: the half-written temporary files are removed (they
would hold the space), segments already on disk are left as they are, and the samples
wait in the ring. Once space is freed the recorder writes what the ring still holds and
goes on; only samples the ring overwrote meanwhile are lost, counted (``lost_samples``,
``lost_s``), logged, and named in the next sidecar's ``recorder_lost_before``.

Threads
-------
* The recorder thread (``rtdecode-recorder``) owns the output folder and everything it
  writes. It only reads the ring (never changes it) and the MarkerReader's history.
* :meth:`SegmentRecorder.follow` (any thread) hands over a new reader (and marker
  reader); the recorder first writes what is left of the old ring, then starts a new run.
* :meth:`SegmentRecorder.stats` and ``error`` may be read from any thread.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rtdecode._utils.files import (
    PRIVATE,
    free_bytes,
    fsync_dir,
    is_disk_full,
    publish,
    temporary_sibling,
)
from rtdecode.contracts import format_marker
from rtdecode.lsl.streams import local_clock
from rtdecode.stream.ring import OverwrittenError, nearest_index

if TYPE_CHECKING:
    from rtdecode.stream.markers import MarkerReader
    from rtdecode.stream.reader import StreamReader

log = logging.getLogger(__name__)

__all__ = ["RecorderStats", "SegmentRecorder", "read_index", "SIDECAR_VERSION"]

SIDECAR_VERSION = 1
#: Seconds between retries after a failed write (disk full, folder removed).
RETRY_S = 1.0
#: Longest wait between checks of the ring (stop requests, deadlines).
_TICK_S = 0.25


@dataclasses.dataclass(frozen=True, slots=True)
class RecorderStats:
    """Counters of a SegmentRecorder (a snapshot; take a new one to see changes).

    Attributes
    ----------
    dir : str
        The session folder.
    counters : dict of str to int
        Monotonic counters (``segments``, ``samples``, ``lost_samples``, ...).
    lost_s : float
        Seconds of stream that were not recorded.
    lag_s : float
        How far the recording is behind the stream, in seconds.
    last_write_ms : float
        Duration of the latest segment write.
    error : str | None
        The latest write error, while writing fails.
    disk_full : bool
        The latest write failed for lack of space.
    problem : str | None
        What is wrong, in a sentence for the health check (None when all is well).
    """

    dir: str
    counters: dict[str, int]
    lost_s: float
    lag_s: float
    last_write_ms: float
    error: str | None
    disk_full: bool
    problem: str | None

    def as_dict(self) -> dict[str, Any]:
        """The snapshot as a JSON-able dict (for /api/status)."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(slots=True)
class _RecorderCounts:
    """A recorder's monotonic counters (``RecorderStats.counters``), written under its lock."""

    segments: int = 0
    samples: int = 0
    bytes: int = 0
    markers: int = 0
    late_markers: int = 0
    markers_missed: int = 0
    lost_samples: int = 0
    write_errors: int = 0
    runs: int = 0


class SegmentRecorder:
    """Write every sample a StreamReader receives to small FIF files, in one thread.

    Parameters
    ----------
    reader : rtdecode.stream.StreamReader
        Started; the recorder waits for its ring (first connection).
    out_dir : str | Path
        Parent folder; a new ``session-<UTC time>`` folder (0700) is made inside it.
    markers : rtdecode.stream.MarkerReader, optional
        Markers become annotations of the segment holding their sample.
    segment_s : float
        Longest segment, in seconds of samples (default 1.8: with the margin, every
        sample is on disk at most 2 s after it arrived).
    marker_margin_s : float
        A full segment waits this much newer data before it is written, so markers
        pushed with their sample arrive first.

    Attributes
    ----------
    session_dir : Path
        Where the segments go (made by the constructor).
    error : BaseException | None
        The last write failure while it persists (None once a write succeeds again).
    """

    #: What ``problem`` says while the disk is full (the service's /health reason).
    DISK_FULL = "disk full"

    def __init__(
        self,
        reader: StreamReader,
        out_dir: str | Path,
        *,
        markers: MarkerReader | None = None,
        segment_s: float = 1.8,
        marker_margin_s: float = 0.2,
    ) -> None:
        if not segment_s > 0 or marker_margin_s < 0:
            raise ValueError(
                f"segment_s={segment_s} must be positive and marker_margin_s="
                f"{marker_margin_s} not negative (seconds)."
            )
        self.segment_s = float(segment_s)
        self.marker_margin_s = float(marker_margin_s)
        self.session_dir = _new_session_dir(Path(out_dir).expanduser())
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._next_source: tuple[StreamReader, MarkerReader | None] | None = None
        self._reader, self._markers = reader, markers
        self._thread = threading.Thread(target=self._run, name="rtdecode-recorder", daemon=True)
        self._counts = _RecorderCounts()
        self._lag_s = 0.0
        self._last_write_ms = 0.0
        self._lost_s = 0.0
        # Local clock when the disk was found full, and lost samples then (for the log
        # line when writes resume).
        self._full_since: float | None = None
        self._lost_at_full = (0, 0.0)

    # ------------------------------------------------------------------ public
    def start(self) -> SegmentRecorder:
        """Start the writer thread; returns the recorder itself."""
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 15.0) -> None:
        """Write everything the ring still holds, then end the thread."""
        self._stop.set()
        if self._thread.is_alive() and threading.current_thread() is not self._thread:
            self._thread.join(timeout_s)
            if self._thread.is_alive():
                log.error("The recorder did not finish writing within %.0f s.", timeout_s)

    @property
    def is_alive(self) -> bool:
        """True while the writer thread runs."""
        return self._thread.is_alive()

    def follow(self, reader: StreamReader, markers: MarkerReader | None = None) -> None:
        """Record ``reader`` (a new run) once the current reader's samples are written."""
        with self._lock:
            self._next_source = (reader, markers)

    @property
    def disk_full(self) -> bool:
        """True while writes fail because the disk (or the quota) is full."""
        error = self.error
        return error is not None and is_disk_full(error)

    @property
    def problem(self) -> str | None:
        """A sentence naming the folder and what is wrong while writes fail, else None."""
        error = self.error
        if error is None:
            return None
        with self._lock:
            lost_n, lost_s = self._counts.lost_samples, self._lost_s
        lost = f"{lost_n} samples ({lost_s:.1f} s) lost so far"
        if is_disk_full(error):
            free = free_bytes(self.session_dir)
            room = "" if free is None else f", {free / 1e6:.1f} MB free"
            return (
                f"recording to {self.session_dir}: {self.DISK_FULL} (no space left on its "
                f"disk{room}); samples wait in the ring and recording resumes when space is "
                f"freed; {lost}"
            )
        return (
            f"recording to {self.session_dir} fails: {error}; retrying every "
            f"{RETRY_S:.0f} s; {lost}"
        )

    @property
    def stats(self) -> RecorderStats:
        """Counters, seconds lost, the lag behind the stream, the folder and what is wrong."""
        with self._lock:
            counts = dataclasses.asdict(self._counts)
            lag_s, last_ms, lost_s = self._lag_s, self._last_write_ms, self._lost_s
        return RecorderStats(
            dir=str(self.session_dir),
            counters=counts,
            lost_s=round(lost_s, 3),
            lag_s=round(lag_s, 3),
            last_write_ms=round(last_ms, 2),
            error=None if self.error is None else str(self.error),
            disk_full=self.disk_full,
            problem=self.problem,
        )

    # ------------------------------------------------------------------ thread
    def _count(self, **inc: int) -> None:
        with self._lock:
            for name, n in inc.items():
                setattr(self._counts, name, getattr(self._counts, name) + n)

    def _run(self) -> None:
        run = _Run(self, self._reader, self._markers, 1)
        failures_while_stopping = 0
        while True:
            stopping = self._stop.is_set()
            with self._lock:
                switch = self._next_source
            final = stopping or switch is not None
            caught_up = True
            if run.ring is not None or run.wait_ring(wait=not final):
                try:
                    caught_up = run.step(final)
                except Exception as exc:  # a full disk, a removed folder: retry, never die
                    self._write_failed(exc)
                    failures_while_stopping += stopping
                    if failures_while_stopping < 3:
                        time.sleep(RETRY_S)  # a full disk may free up; stop() waits
                        continue
                    log.error(
                        "Stopping with %d samples of run %d not saved: the last writes failed.",
                        run.ring.n_written - run.next_sample,
                        run.number,
                    )
                    return
            if not (final and caught_up):
                continue
            run.finish()
            if switch is None:
                return
            with self._lock:
                self._next_source = None
            run = _Run(self, switch[0], switch[1], run.number + 1, previous=run)

    def _write_failed(self, exc: Exception) -> None:
        if self.error is None or str(self.error) != str(exc):
            if is_disk_full(exc):
                free = free_bytes(self.session_dir)
                log.error(
                    "Recording to %s: disk full (%r, %s bytes free). Segments already "
                    "written are kept; samples wait in the ring and recording resumes when "
                    "space is freed (retried every %.0f s); any sample the ring overwrites "
                    "first is counted as lost.",
                    self.session_dir,
                    exc,
                    free,
                    RETRY_S,
                )
            else:
                log.error(
                    "Recording to %s failed (%r); retrying every %.0f s. Samples wait in the "
                    "ring meanwhile; any it overwrites are counted as lost.",
                    self.session_dir,
                    exc,
                    RETRY_S,
                )
        if self._full_since is None and is_disk_full(exc):
            with self._lock:
                self._full_since = time.monotonic()
                self._lost_at_full = (self._counts.lost_samples, self._lost_s)
        self.error = exc
        self._count(write_errors=1)

    def _write_succeeded(self) -> None:
        """A segment is on disk: clear the error; after a full disk, say what it cost."""
        if self.error is None:
            return
        with self._lock:
            since, (n0, s0) = self._full_since, self._lost_at_full
            lost_n, lost_s = self._counts.lost_samples - n0, self._lost_s - s0
            self._full_since = None
        if since is not None:
            log.warning(
                "Recording to %s resumed: the disk was full for %.1f s; %d samples (%.2f s) "
                "could not be written in that time and are lost (each range is in the log "
                "above and in the next sidecar's recorder_lost_before).",
                self.session_dir,
                time.monotonic() - since,
                lost_n,
                lost_s,
            )
        else:
            log.warning("Recording to %s resumed.", self.session_dir)
        self.error = None


class _Run:
    """One reader's samples: the cursor, pending markers and the FIF info.

    Used by the recorder thread only.
    """

    def __init__(self, rec: SegmentRecorder, reader: StreamReader, markers: MarkerReader | None,
                 number: int, previous: _Run | None = None):
        self.rec = rec
        self.reader = reader
        self.markers = markers
        self.number = number
        self.ring = None
        self.sfreq_hz = 0.0
        self.next_sample = 0
        self.marker_seq = 0
        self.pending_markers: list = []
        self.lost_before = 0
        self.info = None
        self.cal: np.ndarray | None = None
        # The previous run's newest written sample time: the gap before this run.
        self.t_previous = None if previous is None else previous.t_last_written
        self.t_last_written = self.t_previous

    def wait_ring(self, wait: bool) -> bool:
        """True once the reader has connected (its ring exists)."""
        if self.reader.ring is None:
            if wait:
                self.rec._stop.wait(_TICK_S)
            return False
        self.ring = self.reader.ring
        self.sfreq_hz = float(self.reader.sfreq_hz)
        self.rec._count(runs=1)
        return True

    def finish(self) -> None:
        if self.pending_markers:
            log.warning(
                "%d markers of run %d came after its last sample and are not in the recording.",
                len(self.pending_markers),
                self.number,
            )
            self.rec._count(markers_missed=len(self.pending_markers))

    # -------------------------------------------------------------- one step
    def step(self, final: bool) -> bool:
        """Write one segment if one is due, else wait a little for data.

        Returns True when every sample in the ring is written.
        """
        ring, rec = self.ring, self.rec
        n_seg = max(1, round(rec.segment_s * self.sfreq_hz))
        n_margin = round(rec.marker_margin_s * self.sfreq_hz)
        a = self._skip_overwritten()
        n_written = ring.n_written
        with rec._lock:
            rec._lag_s = (n_written - a) / self.sfreq_hz
        if n_written <= a:
            if not final:
                ring.wait_for(a + 1, _TICK_S)
            return True
        b_full = a + n_seg
        b = min(n_written, b_full)
        try:
            gap = _first_gap(ring, a, b)
            if gap is not None:
                b = gap  # a segment never spans a gap: the samples before it are complete
            elif not final and n_written < b_full + n_margin:
                waited_s = local_clock() - ring.sample_at("t_arrived", a)
                left_s = rec.segment_s + rec.marker_margin_s - waited_s
                if left_s > 0:
                    ring.wait_for(b_full + n_margin, min(_TICK_S, left_s))
                    return False
            self._write(a, b)
        except OverwrittenError:
            pass  # the next step counts what the ring overwrote and moves on
        return False

    def _skip_overwritten(self) -> int:
        """The cursor, moved past samples the ring no longer holds (counted as lost)."""
        ring, a = self.ring, self.next_sample
        if a >= ring.oldest:
            return a
        # Jump a little ahead of the writer so the next read is not overwritten again.
        new_a = min(ring.n_written, ring.oldest + max(1, ring.capacity // 10))
        lost = new_a - a
        why = (
            "The disk is full: free space on it."
            if self.rec.disk_full
            else "Record to a faster disk or raise buffer_s."
        )
        log.error(
            "The recorder fell %.1f s behind the stream (more than the ring's %.1f s): "
            "samples %d..%d of run %d were overwritten before they could be written and "
            "are lost (%d samples, %.2f s). %s",
            (ring.n_written - a) / self.sfreq_hz,
            ring.capacity / self.sfreq_hz,
            a,
            new_a - 1,
            self.number,
            lost,
            lost / self.sfreq_hz,
            why,
        )
        self.rec._count(lost_samples=lost)
        with self.rec._lock:
            self.rec._lost_s += lost / self.sfreq_hz
        self.lost_before += lost
        self.next_sample = new_a
        return new_a

    def _write(self, a: int, b: int) -> None:
        ring = self.ring
        data = ring.read(a, b)
        t_lsl = ring.read_times(a, b)
        gap_before = int(ring.sample_at("n_lost_before", a))
        n_nonfinite = int(ring.read_meta("n_nonfinite", a, b).sum())
        t0 = time.perf_counter()
        half = 0.5 / self.sfreq_hz
        t_until = float(t_lsl[-1]) + half
        inside, late = [], []
        for m in self._due_markers(t_until):
            if m.t_lsl < t_lsl[0] - half:
                late.append(_marker_json(m, None))  # its segment is written already
                continue
            inside.append((a + nearest_index(t_lsl, m.t_lsl), m))
        if a == 0 and self.t_previous is not None:  # a new run: the gap since the old one
            gap_before = max(0, round((float(t_lsl[0]) - self.t_previous) * self.sfreq_hz) - 1)
        sidecar = {
            "v": SIDECAR_VERSION,
            "file": None,
            "run": self.number,
            "first_sample": int(a),
            "n_samples": int(b - a),
            "sfreq_hz": self.sfreq_hz,
            "t_first": float(t_lsl[0]),
            "t_last": float(t_lsl[-1]),
            "wall_first": time.time() - (local_clock() - float(t_lsl[0])),
            "stream": self._stream_fields(),
            "markers": [_marker_json(m, k) for k, m in inside],
            "late_markers": late,
            "gap_before": gap_before,
            "recorder_lost_before": self.lost_before,
            "n_nonfinite": n_nonfinite,
        }
        n_bytes = _write_segment(self, data, a, sidecar, inside)
        # Written: only now do the markers and counts move on (a failed write retries).
        self.pending_markers = [m for m in self.pending_markers if m.t_lsl > t_until]
        self.rec._count(
            segments=1,
            samples=b - a,
            bytes=n_bytes,
            markers=len(inside),
            late_markers=len(late),
        )
        self.lost_before = 0
        self.next_sample = b
        self.t_last_written = float(t_lsl[-1])
        self.rec._write_succeeded()
        with self.rec._lock:
            self.rec._last_write_ms = (time.perf_counter() - t0) * 1e3

    # -------------------------------------------------------------- markers
    def _due_markers(self, t_until: float) -> list:
        """Markers up to ``t_until`` (LSL time) not yet written.

        They stay pending until the segment is written.
        """
        if self.markers is not None:
            items, self.marker_seq, missed = self.markers.since(self.marker_seq)
            if missed:
                log.error("%d markers left the marker history before they were recorded.", missed)
                self.rec._count(markers_missed=missed)
            self.pending_markers.extend(items)
        return [m for m in self.pending_markers if m.t_lsl <= t_until]

    def _stream_fields(self) -> dict[str, Any]:
        d = self.reader.description
        return {
            "name": d.name,
            "source_id": d.source_id,
            "type": d.stype,
            "channel_format": d.channel_format,
        }


def _first_gap(ring, a: int, b: int) -> int | None:
    """Absolute index of the first sample in (a, b) that follows missing samples."""
    if b - a < 2:
        return None
    lost = ring.read_meta("n_lost_before", a + 1, b)
    k = np.flatnonzero(lost)
    return None if k.size == 0 else a + 1 + int(k[0])


def _marker_json(marker, sample: int | None) -> dict[str, Any]:
    return {"sample": sample, "t_lsl": float(marker.t_lsl), "value": marker.value}


def _run_info(run: _Run):
    """mne.Info for a run (built once): the stream's channels, calibrated to SI."""
    if run.info is None:
        from rtdecode.io.fif import build_info  # one place builds Info from a description

        desc = run.reader.description
        if not desc.has_description:
            n = len(run.reader.ch_names)
            desc = dataclasses.replace(
                desc,
                ch_names=tuple(run.reader.ch_names),
                ch_types=("",) * n,
                units=("",) * n,
                has_description=True,
            )
        run.info = build_info(desc, [], {})
        run.cal = np.array([ch["cal"] for ch in run.info["chs"]], dtype=np.float64)[:, None]
    return run.info


def _write_segment(run: _Run, data: np.ndarray, first: int, sidecar: dict, inside) -> int:
    """Write one FIF segment and its sidecar atomically (0600); returns bytes written."""
    import mne

    info = _run_info(run).copy()
    info.set_meas_date(datetime.fromtimestamp(sidecar["wall_first"], tz=UTC))
    stem = f"seg-r{run.number:02d}-{first:012d}"
    fif = run.rec.session_dir / f"{stem}_raw.fif"
    sidecar["file"] = fif.name
    text = json.dumps(sidecar, separators=(",", ":"), allow_nan=False, default=str)
    with info._unlock():
        info["description"] = text
    # Stored values are what the source sent; the calibration maps them to SI (as record).
    raw = mne.io.RawArray(
        data.astype(np.float64) * run.cal, info, first_samp=first, verbose="error"
    )
    if inside:
        onsets = [(k - first) / run.sfreq_hz for k, _ in inside]
        raw.set_annotations(
            mne.Annotations(
                onsets,
                [0.0] * len(inside),
                [format_marker(m.value) for _, m in inside],
                orig_time=None,
            )
        )
    side = run.rec.session_dir / f"{stem}.json"
    tmp, side_tmp = fif.with_name(f".{stem}.tmp_raw.fif"), temporary_sibling(side)
    published = False
    try:
        # Both files are whole on disk before either is renamed into place, so a full
        # disk never leaves a segment without its sidecar.
        # The ring holds float32: "single" keeps every value exactly.
        raw.save(tmp, fmt="single", overwrite=True, verbose="error")
        fd = os.open(side_tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, PRIVATE)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
        n_bytes = publish(tmp, fif, mode=PRIVATE)
        published = True
        n_bytes += publish(side_tmp, side, mode=PRIVATE)
    except BaseException:
        # Half-written files would hold the space a full disk needs back.
        for path in (tmp, side_tmp) + ((fif,) if published else ()):
            with contextlib.suppress(OSError):
                path.unlink(missing_ok=True)
        raise
    fsync_dir(run.rec.session_dir)  # the renames survive a power cut too
    return n_bytes


def _new_session_dir(parent: Path) -> Path:
    parent.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    for k in range(1, 1000):
        path = parent / (f"session-{stamp}" if k == 1 else f"session-{stamp}-{k}")
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            continue
        os.chmod(path, 0o700)  # whatever the umask: other users cannot even list it
        return path
    raise RuntimeError(f"Could not make a new session folder in {parent}; clean it up.")


def read_index(session_dir: str | Path) -> list[dict[str, Any]]:
    """The sidecars of a recording session, in order (run, first_sample).

    Parameters
    ----------
    session_dir : str | Path
        A ``session-*`` folder written by :class:`SegmentRecorder`.

    Returns
    -------
    list of dict
        One sidecar per segment whose FIF file exists (see the module docstring); each
        has ``path``, the FIF file's full path, added.
    """
    session_dir = Path(session_dir)
    out = []
    for side in sorted(session_dir.glob("seg-r*.json")):
        entry = json.loads(side.read_text(encoding="utf-8"))
        path = session_dir / entry["file"]
        if path.is_file():
            entry["path"] = str(path)
            out.append(entry)
    out.sort(key=lambda e: (e["run"], e["first_sample"]))
    return out
