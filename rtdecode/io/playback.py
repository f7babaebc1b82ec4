"""What every replay source shares: pacing, stats, the options' check, consumer wait.

:class:`rtdecode.io.replay.Player` replays an MNE recording itself and an XDF file
through :class:`rtdecode.io.xdf_replay.XdfReplay`; both import these pieces from here,
so neither replay module imports the other's internals back.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from rtdecode.contracts import ParameterError
from rtdecode.lsl.streams import local_clock

__all__ = [
    "MARKER_FORMS",
    "Pacer",
    "ReplayStats",
    "check_replay_options",
    "wait_for_consumer",
]

#: ``rtdecode replay --markers``: the forms in which events go out.
MARKER_FORMS = ("json", "string", "none")


class Pacer:
    """Due times computed from the start time and the sample index.

    Parameters
    ----------
    sfreq_hz : float
        The recording's sampling rate.
    speed : float
        1 = real time; 10 = ten times faster (timestamps are 10x closer too).
    t0 : float | None
        LSL time of sample 0 (default: ``clock()`` now).
    clock : callable
        Returns the current LSL time in seconds (default ``rtdecode.lsl.streams.local_clock``).
    wait : callable
        ``wait(delay_s) -> bool`` sleeps up to ``delay_s`` and returns True when asked to
        stop (``threading.Event().wait`` by default).
    """

    def __init__(
        self,
        sfreq_hz: float,
        speed: float = 1.0,
        *,
        t0: float | None = None,
        clock: Callable[[], float] | None = None,
        wait: Callable[[float], bool] | None = None,
    ) -> None:
        clock = local_clock if clock is None else clock
        self.rate_hz = float(sfreq_hz) * float(speed)
        self.clock = clock
        self.wait = wait if wait is not None else threading.Event().wait
        self.t0 = float(clock() if t0 is None else t0)

    def t_of(self, sample: int) -> float:
        """LSL timestamp of absolute sample ``sample``."""
        return self.t0 + sample / self.rate_hz

    def timestamps(self, first_sample: int, n: int) -> np.ndarray:
        """Timestamps of ``n`` samples from ``first_sample``, float64 shape (n,)."""
        return self.t0 + (first_sample + np.arange(n, dtype=np.float64)) / self.rate_hz

    def wait_until(self, t_due: float) -> tuple[float, bool]:
        """Sleep until ``t_due``; return (lag_s, stopped).

        ``lag_s`` is how late the clock is past ``t_due`` on return (>= 0 when the wait
        completed). Nothing is carried over to the next call: no drift.
        """
        delay = t_due - self.clock()
        if delay > 0 and self.wait(delay):
            return 0.0, True
        return self.clock() - t_due, False


@dataclass
class ReplayStats:
    """What a replay did.

    Attributes
    ----------
    name : str
        Data stream name (markers: ``name + "-markers"``).
    samples_sent : int
    markers_sent : int
    passes_completed : int
        Full passes over the file (``--loop`` starts a new one at the end).
    t0_lsl : float
        LSL timestamp of sample 0.
    wall_s : float
        Seconds from sample 0's due time to the last push.
    max_lag_ms : float
        Largest delay of a push past its due time.
    stopped : bool
        True when a stop request (stop_event, a signal, max_duration_s) ended it early.
    stopped_by : str | None
        ``"SIGINT"`` (Ctrl-C) or ``"SIGTERM"`` when a signal ended it.
    """

    name: str
    samples_sent: int = 0
    markers_sent: int = 0
    passes_completed: int = 0
    t0_lsl: float = 0.0
    wall_s: float = 0.0
    max_lag_ms: float = 0.0
    stopped: bool = False
    stopped_by: str | None = None

    def finish(self, *, stopped: bool, loop: bool, n_per_pass: int, t_start: float | None) -> None:
        """The totals at the end of a replay (``n_per_pass``: samples in one pass).

        ``stopped`` says whether a stop request came; a loop, or a pass not sent in full,
        also counts as stopped early.
        """
        self.passes_completed = self.samples_sent // n_per_pass
        self.stopped = stopped or loop or self.samples_sent < n_per_pass
        if t_start is not None and not self.wall_s:
            self.wall_s = local_clock() - t_start


class Outlet(Protocol):
    """What :func:`wait_for_consumer` asks of an outlet (``pylsl.StreamOutlet`` has it)."""

    def wait_for_consumers(self, timeout: float) -> bool: ...


def wait_for_consumer(outlet: Outlet, timeout_s: float, stop: threading.Event, name: str) -> None:
    """Wait until ``outlet`` has a consumer (RuntimeError after ``timeout_s``), or ``stop``."""
    deadline = local_clock() + timeout_s
    while not outlet.wait_for_consumers(0.05):
        if stop.is_set():
            return
        if local_clock() > deadline:
            raise RuntimeError(
                f"No consumer connected to stream {name!r} within {timeout_s:g} s; start "
                "the reader first or replay without waiting for one."
            )


def check_replay_options(
    *,
    speed: float = 1.0,
    chunk_ms: float = 10.0,
    max_duration_s: float | None = None,
    markers: str = "json",
) -> None:
    """Refuse replay options that cannot work, naming the parameter (any file type)."""
    if markers not in MARKER_FORMS:
        raise ParameterError(
            "markers", f"{{param}} {markers!r} is not known; use one of {', '.join(MARKER_FORMS)}."
        )

    if not speed > 0 or not math.isfinite(speed):
        raise ParameterError(
            "speed", f"{{param}} must be a positive number, got {speed!r}; 1 is real time."
        )
    if not chunk_ms > 0 or not math.isfinite(chunk_ms):
        raise ParameterError(
            "chunk_ms", f"{{param}} must be a positive number of ms, got {chunk_ms!r}."
        )
    if max_duration_s is not None and not max_duration_s > 0:
        raise ParameterError(
            "max_duration_s", f"{{param}} must be positive, got {max_duration_s!r}."
        )
