"""Publish a recording as a live LSL stream, at real-time pace (``rtdecode replay``).

An MNE recording gets two outlets: the data stream (type ``MEG`` when the file has MEG channels, else
``EEG``; float32 in the file's SI units, Tesla, T/m, Volt) and an irregular-rate string
marker stream ``<name>-markers`` carrying one JSON object per event. An XDF file is
replayed by the same :class:`Player`, every stream as recorded
(:class:`rtdecode.io.xdf_replay.XdfReplay` is its source).

Pacing never accumulates sleep errors: sample ``i`` (counted from the start of the replay,
across loops) has the LSL timestamp ``t0 + i / (sfreq * speed)``, and each chunk is pushed
once the clock has reached its last sample's timestamp. A late wake-up makes that one
chunk late; it never shifts the ones after it.

Threads: :class:`Player` makes and uses its outlets in one thread: the caller's with
``run()`` / ``replay_file``, its own with ``start()``. ``stop()``, a ``threading.Event``
passed as ``stop_event``, or (run from the main thread) Ctrl-C or SIGTERM end it
cleanly: a signal sets the stop event, the loop ends at its next wait (within one chunk)
and the outlets are closed in order.
"""

from __future__ import annotations

import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rtdecode._utils.jsonable import jsonable
from rtdecode._utils.progress import ProgressLine, stop_on_signals
from rtdecode.contracts import ParameterError, format_marker, marker_stream_name
from rtdecode.io.playback import (
    MARKER_FORMS,
    Pacer,
    ReplayStats,
    check_replay_options,
    wait_for_consumer,
)
from rtdecode.lsl.streams import (
    COUNTER_CHANNEL,
    counter_values,
    local_clock,
    make_info,
    make_outlet,
    write_fiff_details,
)

if TYPE_CHECKING:  # pragma: no cover
    from rtdecode.data.recordings import Event, Recording
    from rtdecode.io.xdf_replay import XdfReplay

__all__ = ["MARKER_FORMS", "Pacer", "Player", "ReplayStats", "check_replay_options", "replay_file"]

MARKER_STREAM_TYPE = "Markers"

# FIFF unit codes -> the SI unit strings put in the stream description.
_UNIT_NAMES = {107: "V", 112: "T", 201: "T/m", 202: "Am", 114: "C", 6: "M", -1: ""}


# ---------------------------------------------------------------- stream description


def stream_type_for(ch_types: list[str]) -> str:
    """``"MEG"`` when any channel is a magnetometer or gradiometer, else ``"EEG"``."""
    return "MEG" if {"mag", "grad"} & set(ch_types) else "EEG"


def build_stream_infos(
    rec: Recording, name: str, source_id: str, *, counter: bool
) -> tuple[Any, Any]:
    """The data and marker StreamInfos for a recording.

    The data stream lists every channel (label, MNE type, SI unit, position =
    ``loc[:3]`` in the channel's coordinate frame, plus mne-lsl's FIFF fields) and, with
    ``counter``, a last ``COUNTER_CHANNEL`` of type ``misc``.
    """
    info = rec.raw.info
    ch_names = list(info["ch_names"])
    ch_types = rec.raw.get_channel_types(unique=False)
    units = [_UNIT_NAMES.get(int(ch["unit"]), "") for ch in info["chs"]]
    positions = np.array([ch["loc"][:3] for ch in info["chs"]], dtype=float).reshape(-1, 3)
    if counter:
        if COUNTER_CHANNEL in ch_names:
            raise ValueError(
                f"The recording already has a channel named {COUNTER_CHANNEL!r}; replay it "
                "without --counter (its own counter channel is streamed as is)."
            )
        ch_names.append(COUNTER_CHANNEL)
        ch_types.append("misc")
        units.append("")
        positions = np.vstack([positions, np.full((1, 3), np.nan)])
    data_info = make_info(
        name,
        stream_type_for(ch_types),
        rec.sfreq_hz,
        ch_names,
        ch_types=ch_types,
        units=units,
        positions=positions,
        source_id=source_id,
        channel_format="float32",
    )
    write_fiff_details(data_info, info)
    marker_info = make_info(
        marker_stream_name(name),
        MARKER_STREAM_TYPE,
        0.0,
        ["marker"],
        ch_types=["stim"],
        source_id=marker_stream_name(source_id),
        channel_format="string",
    )
    return data_info, marker_info


# ---------------------------------------------------------------- replay


def default_stream_name(path: Path) -> str:
    """The file's name without its extension (``sub-01_meg.fif.gz`` -> ``sub-01_meg``)."""
    name = path.name
    for ext in (".fif.gz", ".gz"):
        if name.lower().endswith(ext):
            return name[: -len(ext)].rsplit(".", 1)[0]
    return Path(name).stem or name


def _marker_payload(event: Event) -> dict[str, Any]:
    payload = {"image_id": None, "trial_type": None, "sample": None, "value": None}
    payload.update(jsonable(event.value))
    payload["file_sample"] = int(event.sample)
    return payload


def _marker_form(payload: dict[str, Any], form: str) -> str | None:
    """The marker text of an event in ``form`` (None: not sent)."""
    if form == "json":
        return format_marker(payload)
    if form == "string":  # the image id, else the code as recorded (a muse-lsl CSV's 1, 2)
        text = payload.get("image_id")
        text = payload.get("value") if text is None else text
        return None if text is None else str(text)
    return None


class Player:
    """A recording published on LSL at real-time pace, as an object (``rtdecode replay``).

    ``start()`` runs the replay in a thread of its own and returns once its outlets
    exist; ``stop()`` ends it and returns what it did. It is also a context manager, and
    ``run()`` replays in the calling thread (what :func:`replay_file` does).

    Parameters
    ----------
    path : str | Path | Recording
        Anything ``rtdecode.data.recordings.read_recording`` reads, or an XDF file (every
        stream replayed as recorded, see :class:`rtdecode.io.xdf_replay.XdfReplay`); read
        here, so a bad file is an error of the constructor.
    name : str | None
        Data stream name (default: the file's stem); the markers go to
        ``<name>-markers``. For XDF: the new name of the main stream and of the streams
        named after it.
    source_id : str | None
        LSL source id (default ``rtdecode-replay-<name>``); markers use
        ``<source_id>-markers``. XDF streams keep their recorded source ids.
    speed : float
        Pace relative to real time (> 0); timestamps are scaled by the same factor.
    loop : bool
        Start over at the end of the file; sample indices, timestamps and the counter
        keep increasing across passes.
    chunk_ms : float
        Samples per push, in ms of recording (at least one sample).
    counter : bool
        Add a last channel ``COUNTER_CHANNEL`` holding the absolute sample index modulo
        ``COUNTER_MODULUS`` (exact in float32); not for XDF files.
    progress : bool
        Show a progress line on stderr (stream seconds sent / total, samples, lag).
    max_duration_s : float | None
        Stop after this many seconds of recording were sent (across passes).
    wait_for_consumer_s : float | None
        Before sending, wait up to this long for a data consumer (so that a recorder
        started first gets every sample); RuntimeError when none comes.
    block_s : float
        Seconds of the file read from disk at a time.
    linger_s : float
        After the last sample, keep the outlets open this long so that consumers
        receive the last chunk (closing an outlet drops what it has not sent yet).

    Attributes
    ----------
    name, source_id : str
        The data stream's name and source id (the markers': ``marker_stream_name`` of
        each).
    recording : Recording | None
        The MNE recording replayed (None for an XDF file).
    stats : ReplayStats
        Updated while the replay runs.
    error : BaseException | None
        What ended a started replay's thread, if anything (``stop()`` re-raises it).

    Examples
    --------
    >>> with Player("sub-01_raw.fif", name="meg", speed=2.0, loop=True) as player:
    ...     run_the_service_on(player.name)  # doctest: +SKIP
    """

    def __init__(
        self,
        path: str | Path | Recording,
        *,
        name: str | None = None,
        source_id: str | None = None,
        speed: float = 1.0,
        loop: bool = False,
        chunk_ms: float = 10.0,
        counter: bool = False,
        progress: bool = False,
        max_duration_s: float | None = None,
        wait_for_consumer_s: float | None = None,
        block_s: float = 1.0,
        linger_s: float = 0.5,
        markers: str = "json",
    ) -> None:
        from rtdecode.data.recordings import Recording, read_recording

        check_replay_options(speed=speed, chunk_ms=chunk_ms, max_duration_s=max_duration_s,
                             markers=markers)
        self._xdf: XdfReplay | None = None
        self.recording: Recording | None = None
        if not isinstance(path, Recording) and Path(path).suffix.lower() == ".xdf":
            from rtdecode.io.xdf_replay import XdfReplay

            if counter:
                raise ParameterError(
                    "counter", "{param} adds a channel to an MNE recording; an XDF file is "
                    "replayed as recorded (record one with a counter channel instead).",
                )
            self._xdf = XdfReplay(
                path, name=name, speed=speed, loop=loop, chunk_ms=chunk_ms,
                progress=progress, max_duration_s=max_duration_s,
                wait_for_consumer_s=wait_for_consumer_s, linger_s=linger_s, markers=markers,
            )  # fmt: skip
            self.path, self.name, self.source_id = self._xdf.path, self._xdf.name, None
        else:
            # a Recording already read (e.g. with a dataset card's codes applied) is
            # replayed as is
            self.recording = path if isinstance(path, Recording) else read_recording(path)
            self.path = self.recording.path
            self.name = name or default_stream_name(self.recording.path)
            self.source_id = source_id or f"rtdecode-replay-{self.name}"
        self.speed, self.loop, self.chunk_ms, self.counter = speed, loop, chunk_ms, counter
        self.progress = progress
        self.max_duration_s = max_duration_s
        self.wait_for_consumer_s = wait_for_consumer_s
        self.block_s, self.linger_s = block_s, linger_s
        self.markers = markers
        self.stats = ReplayStats(name=self.name)
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._streaming = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"<Player {self.name!r} of {self.path.name} running={self.running}>"

    # ------------------------------------------------------------------ thread API
    @property
    def running(self) -> bool:
        """True while a started replay's thread runs."""
        return self._thread is not None and self._thread.is_alive()

    def start(self, timeout_s: float = 10.0) -> Player:
        """Replay in a background thread; return once the outlets exist.

        Raises
        ------
        RuntimeError
            When started twice, or when the outlets are not up within ``timeout_s``.
        """
        if self._thread is not None:
            raise RuntimeError(f"{self!r} was already started; make a new Player.")
        self._thread = threading.Thread(
            target=self._run_in_thread, name=f"rtdecode-replay-{self.name}", daemon=True
        )
        self._thread.start()
        if not self._streaming.wait(timeout_s):
            self.stop()
            raise RuntimeError(f"The replay of {self.name!r} did not start within {timeout_s} s.")
        if self.error is not None:
            self.stop()  # re-raises the error
        return self

    def stop(self, timeout_s: float = 10.0) -> ReplayStats:
        """End the replay (idempotent) and return its stats.

        Raises
        ------
        BaseException
            The error that ended the replay's thread, if there was one.
        """
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)
        if self.error is not None:
            error, self.error = self.error, None
            raise error
        return self.stats

    def wait(self, timeout_s: float | None = None) -> bool:
        """Wait for a started replay to end by itself; True when it has."""
        if self._thread is None:
            return True
        self._thread.join(timeout_s)
        return not self._thread.is_alive()

    def __enter__(self) -> Player:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run_in_thread(self) -> None:
        try:
            self.run()
        except BaseException as exc:  # surfaces in stop(), never lost
            self.error = exc
        finally:
            self._streaming.set()

    # ------------------------------------------------------------------ the replay
    def run(self, stop_event: threading.Event | None = None) -> ReplayStats:
        """Replay in the calling thread until the end, ``stop()`` or ``stop_event``.

        Called from the main thread, Ctrl-C and SIGTERM stop it too.
        """
        if stop_event is not None:
            self._stop = stop_event
        stop = self._stop
        if self._xdf is not None:
            return self._xdf.run(stop, self.stats, self._streaming)
        rec, name, progress, counter = self.recording, self.name, self.progress, self.counter
        sfreq = rec.sfreq_hz
        n_file = rec.n_times
        n_ch = len(rec.raw.ch_names)
        n_chunk = max(1, round(self.chunk_ms * 1e-3 * sfreq))
        n_block = n_chunk * max(1, round(self.block_s * sfreq / n_chunk))
        n_limit = None if self.loop else n_file
        if self.max_duration_s is not None:
            n_max = round(self.max_duration_s * sfreq)
            n_limit = n_max if n_limit is None else min(n_limit, n_max)

        events = rec.events
        ev_samples = np.array([e.sample for e in events], dtype=np.int64)
        payloads = [_marker_payload(e) for e in events]

        data_info, marker_info = build_stream_infos(rec, name, self.source_id, counter=counter)
        outlet = make_outlet(data_info, chunk_size=0, max_buffered=360)
        marker_outlet = None
        if self.markers != "none":
            marker_outlet = make_outlet(marker_info, chunk_size=0, max_buffered=360)
        stats = self.stats = ReplayStats(name=name)
        self._streaming.set()
        if progress:
            print(
                f"replay {name}: {rec.path.name}, {n_ch} channels at {sfreq:g} Hz, "
                f"{rec.duration_s:.1f} s, {len(events)} events ({rec.events_source}) -> LSL "
                f"stream {name!r}"
                f"{'' if marker_outlet is None else f' and {marker_info.name()!r} ({self.markers})'}"
                f"{' (waiting for a consumer)' if self.wait_for_consumer_s else ''}.",
                file=sys.stderr,
            )
            for note in rec.notes:
                print(f"replay {name}: note: {note}.", file=sys.stderr)
        block = np.empty((n_block, n_ch + int(counter)), dtype=np.float32)
        bar = ProgressLine(f"replay {name}", n_limit or n_file, progress)
        t_start = None
        try:
            with stop_on_signals(stop) as signals:
                if self.wait_for_consumer_s is not None:
                    wait_for_consumer(outlet, self.wait_for_consumer_s, stop, name)
                pacer = Pacer(sfreq, self.speed, wait=stop.wait)
                stats.t0_lsl = t_start = pacer.t0
                abs_i = 0
                while not stop.is_set() and (n_limit is None or abs_i < n_limit):
                    file_i = abs_i % n_file
                    if file_i == 0 and abs_i > 0 and n_limit is None:
                        bar.reset()  # an endless loop shows the progress of each pass
                    n = min(n_block, n_file - file_i)
                    if n_limit is not None:
                        n = min(n, n_limit - abs_i)
                    blk = block[:n]
                    blk[:, :n_ch] = rec.raw.get_data(start=file_i, stop=file_i + n).T
                    if counter:
                        blk[:, n_ch] = counter_values(abs_i, n)
                    stamps = pacer.timestamps(abs_i, n)
                    for j in range(0, n, n_chunk):
                        k = min(n_chunk, n - j)
                        lag_s, stopped = pacer.wait_until(stamps[j + k - 1])
                        if stopped:
                            break
                        outlet.push_chunk(blk[j : j + k], stamps[j : j + k])
                        # Markers go out with the chunk that holds their sample.
                        lo, hi = np.searchsorted(ev_samples, [file_i + j, file_i + j + k])
                        for e in range(lo, hi):
                            sample = abs_i + int(ev_samples[e]) - file_i
                            text = _marker_form(dict(payloads[e], sample=sample), self.markers)
                            if marker_outlet is not None and text is not None:
                                marker_outlet.push_sample([text], pacer.t_of(sample))
                                stats.markers_sent += 1
                        stats.samples_sent += k
                        stats.max_lag_ms = max(stats.max_lag_ms, float(lag_s) * 1e3)
                        sent_s = stats.samples_sent / sfreq
                        where = (
                            f"{sent_s:.1f}/{n_limit / sfreq:.1f} s"
                            if n_limit
                            else f"{sent_s:.1f} s (pass {abs_i // n_file + 1})"
                        )
                        bar.update(
                            k,
                            f"{where}, {stats.samples_sent} samples, lag {lag_s * 1e3:.1f} ms, "
                            f"{stats.markers_sent} markers",
                        )
                    abs_i += n
                stats.wall_s = local_clock() - t_start
                if stats.samples_sent and not stop.is_set():
                    stop.wait(self.linger_s)
            stats.stopped_by = signals.received
        finally:
            stats.finish(stopped=stop.is_set(), loop=self.loop, n_per_pass=n_file, t_start=t_start)
            bar.close()
            del outlet, marker_outlet  # closed before the summary says the replay ended
            if progress:
                print(
                    f"replay {name}: sent {stats.samples_sent} samples "
                    f"({stats.samples_sent / sfreq:.1f} s of recording) and "
                    f"{stats.markers_sent} markers in {stats.wall_s:.1f} s; "
                    f"max lag {stats.max_lag_ms:.1f} ms.",
                    file=sys.stderr,
                )
        return stats


def replay_file(
    path: str | Path,
    *,
    stop_event: threading.Event | None = None,
    progress: bool = True,
    **options: Any,
) -> ReplayStats:
    """Publish a recording on LSL at real-time pace, in the calling thread.

    A thin wrapper over :class:`Player` (``Player(path, progress=progress,
    **options).run(stop_event)``), what ``rtdecode replay`` runs.

    Parameters
    ----------
    path : str | Path
        Anything ``rtdecode.data.recordings.read_recording`` reads.
    stop_event : threading.Event | None
        Set it to stop the replay from another thread.
    progress : bool
        Show a progress line on stderr.
    **options
        ``name``, ``source_id``, ``speed``, ``loop``, ``chunk_ms``, ``counter``,
        ``max_duration_s``, ``wait_for_consumer_s``, ``block_s``, ``linger_s``,
        ``markers``: as for :class:`Player` (an ``.xdf`` file: every stream as
        recorded).

    Returns
    -------
    ReplayStats
    """
    return Player(path, progress=progress, **options).run(stop_event)
