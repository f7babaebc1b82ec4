"""Preallocated ring buffer of samples, addressed by absolute sample index.

Threads: exactly one writer (the StreamReader thread) calls :meth:`RingBuffer.write`;
any number of reader threads call the ``read*`` methods and :meth:`RingBuffer.wait_for`.
Readers never change shared state. There is no lock around the arrays: before copying a
block the writer announces how far it will write (``_n_reserved``), after the copy it
publishes the block by advancing ``n_written``; every read checks, after its own copy,
that the writer has not reserved the columns it copied, so a reader either gets exactly
the samples it asked for or :class:`OverwrittenError`.

Waiting: :meth:`RingBuffer.wait_for` blocks on a condition variable; the writer notifies
only when the newest sample reaches the smallest index a waiter asked for (or on
``close``/``wake``), so a consumer waiting for a window's last sample wakes once, not
once per chunk.

Memory is allocated once, in the constructor: ``data`` (n_channels, capacity) float32,
``t_lsl`` and ``t_arrived`` (capacity,) float64, ``n_nonfinite`` and ``n_lost_before``
(capacity,) int32. Nothing grows per chunk.
"""

from __future__ import annotations

import threading
import time

import numpy as np

__all__ = [
    "RingBuffer",
    "OverwrittenError",
    "NotYetWrittenError",
    "locate_time",
    "nearest_index",
]


_NEVER = 2**63


class OverwrittenError(IndexError):
    """The requested samples were already overwritten by newer ones."""


class NotYetWrittenError(IndexError):
    """The requested samples have not arrived yet."""


class RingBuffer:
    """Fixed-size circular store of the newest ``capacity`` samples of a stream.

    Sample ``k`` (absolute index, counting every sample ever written from 0) lives at
    column ``k % capacity`` while ``oldest <= k < n_written``.

    Parameters
    ----------
    n_channels : int
        Rows of ``data``.
    capacity : int
        Samples kept (e.g. ``buffer_s * sfreq_hz``).

    Attributes
    ----------
    data : ndarray, float32, shape (n_channels, capacity)
    t_lsl : ndarray, float64, shape (capacity,)
        Corrected LSL timestamp of each sample.
    t_arrived : ndarray, float64, shape (capacity,)
        Local clock when the chunk holding the sample was pulled.
    n_nonfinite : ndarray, int32, shape (capacity,)
        NaN/Inf values in each sample (over channels).
    n_lost_before : ndarray, int32, shape (capacity,)
        Samples the reader found missing just before this one (0 when contiguous).
    """

    def __init__(self, n_channels: int, capacity: int):
        if n_channels < 1:
            raise ValueError(f"n_channels={n_channels} must be at least 1.")
        if capacity < 2:
            raise ValueError(f"capacity={capacity} must be at least 2 samples.")
        self.n_channels = int(n_channels)
        self.capacity = int(capacity)
        self.data = np.zeros((self.n_channels, self.capacity), dtype=np.float32)
        self.t_lsl = np.zeros(self.capacity, dtype=np.float64)
        self.t_arrived = np.zeros(self.capacity, dtype=np.float64)
        self.n_nonfinite = np.zeros(self.capacity, dtype=np.int32)
        self.n_lost_before = np.zeros(self.capacity, dtype=np.int32)
        # Written only by the writer, after the arrays: readers see either the old or
        # the new count, never a count ahead of the data.
        self._n_written = 0
        # >= _n_written; the columns of samples [_n_written, _n_reserved) are being written.
        self._n_reserved = 0
        self._cond = threading.Condition(threading.Lock())
        self._wake_at = _NEVER  # smallest n_written a waiter needs (under _cond)
        self._closed = False

    # ------------------------------------------------------------------ indices
    @property
    def n_written(self) -> int:
        """Absolute index one past the newest sample (= samples written so far)."""
        return self._n_written

    @property
    def oldest(self) -> int:
        """Absolute index of the oldest sample still held."""
        return max(0, self._n_written - self.capacity)

    @property
    def closed(self) -> bool:
        """True once the writer has said no more samples will come."""
        return self._closed

    def __len__(self) -> int:
        return min(self._n_written, self.capacity)

    # ------------------------------------------------------------------- writer
    def write(
        self,
        data: np.ndarray,
        t_lsl: np.ndarray,
        t_arrived: float,
        n_nonfinite: np.ndarray | None = None,
        n_lost_before: np.ndarray | None = None,
    ) -> int:
        """Append a block of samples (writer thread only).

        Parameters
        ----------
        data : ndarray, shape (n_channels, n)
            Any float dtype and strides; a transposed (n, n_channels) pull buffer works
            as is (``dest[:n].T``), the copy into the ring does the transpose.
        t_lsl : ndarray, float64, shape (n,)
        t_arrived : float
            Local clock when the block was pulled.
        n_nonfinite, n_lost_before : ndarray, int, shape (n,), optional
            Per-sample bookkeeping (zeros when omitted).

        Returns
        -------
        int
            Absolute index of the block's first sample.
        """
        n = int(data.shape[1])
        if data.shape[0] != self.n_channels:
            raise ValueError(
                f"Block has {data.shape[0]} channels but the ring holds {self.n_channels}; "
                "write (n_channels, n_samples) blocks."
            )
        first = self._n_written
        if n == 0:
            return first
        if n > self.capacity:
            # Only the newest capacity samples can be kept; skip the rest explicitly.
            skip = n - self.capacity
            self._n_reserved = self._n_written = first + skip
            self.write(
                data[:, skip:],
                t_lsl[skip:],
                t_arrived,
                None if n_nonfinite is None else n_nonfinite[skip:],
                None if n_lost_before is None else n_lost_before[skip:],
            )
            return first  # the block's first sample, kept or not
        self._n_reserved = first + n
        start = first % self.capacity
        split = min(n, self.capacity - start)  # columns before the wrap
        for src, dst in (
            (slice(0, split), slice(start, start + split)),
            (slice(split, n), slice(0, n - split)),
        ):
            if src.start == src.stop:
                continue
            self.data[:, dst] = data[:, src]
            self.t_lsl[dst] = t_lsl[src]
            self.t_arrived[dst] = t_arrived
            self.n_nonfinite[dst] = 0 if n_nonfinite is None else n_nonfinite[src]
            self.n_lost_before[dst] = 0 if n_lost_before is None else n_lost_before[src]
        with self._cond:
            self._n_written = first + n
            if self._n_written >= self._wake_at:
                self._wake_at = _NEVER
                self._cond.notify_all()
        return first

    def close(self) -> None:
        """Say no more samples will come; wakes every waiter (writer thread only)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def wake(self) -> None:
        """Wake every waiter without new data (e.g. the writer stored an error)."""
        with self._cond:
            self._cond.notify_all()

    # ------------------------------------------------------------------ readers
    def wait_for(self, n_written: int, timeout_s: float | None, predicate=None) -> bool:
        """Block until at least ``n_written`` samples exist.

        Also returns when the ring is closed or ``predicate()`` is true.

        Returns
        -------
        bool
            True when ``self.n_written >= n_written``.
        """

        def ready() -> bool:
            return (
                self._n_written >= n_written
                or self._closed
                or (predicate is not None and predicate())
            )

        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        with self._cond:
            while not ready():
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    break
                # Ask the writer to wake us only once our sample is in, not per chunk.
                self._wake_at = min(self._wake_at, n_written)
                self._cond.wait(remaining)
        return self._n_written >= n_written

    def _columns(self, start: int, stop: int) -> tuple[slice, slice | None]:
        """Ring columns holding absolute samples [start, stop), as one or two slices."""
        if stop < start:
            raise ValueError(f"Empty or reversed range [{start}, {stop}).")
        if stop > self._n_written:
            raise NotYetWrittenError(
                f"Samples [{start}, {stop}) were requested but only {self._n_written} "
                "have arrived; wait for them (wait_for) before reading."
            )
        self._check_retained(start)
        a = start % self.capacity
        n = stop - start
        if a + n <= self.capacity:
            return slice(a, a + n), None
        return slice(a, self.capacity), slice(0, a + n - self.capacity)

    def _check_retained(self, start: int) -> None:
        # Against what the writer has reserved, not published: those columns may be
        # half-written already.
        oldest = max(0, self._n_reserved - self.capacity)
        if start < oldest:
            raise OverwrittenError(
                f"Sample {start} was overwritten: the ring keeps {self.capacity} samples "
                f"and now starts at {oldest}. Read sooner or use a larger buffer_s."
            )

    def _gather(self, arr: np.ndarray, start: int, stop: int, out=None) -> np.ndarray:
        first, second = self._columns(start, stop)
        if out is None:
            shape = arr.shape[:-1] + (stop - start,)
            out = np.empty(shape, dtype=arr.dtype)
        k = first.stop - first.start
        out[..., :k] = arr[..., first]
        if second is not None:
            out[..., k:] = arr[..., second]
        # The writer may have lapped us while we copied: then the copy is torn.
        self._check_retained(start)
        return out

    def read(self, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Copy samples [start, stop) (absolute indices).

        Parameters
        ----------
        start, stop : int
            Absolute sample indices, ``oldest <= start <= stop <= n_written``.
        out : ndarray, shape (n_channels, stop - start), optional
            Destination (avoids an allocation).

        Returns
        -------
        ndarray, float32, shape (n_channels, stop - start)

        Raises
        ------
        OverwrittenError
            When part of the range is no longer (or, after the copy, no longer) held.
        NotYetWrittenError
            When part of the range has not arrived.
        """
        return self._gather(self.data, start, stop, out)

    def read_times(self, start: int, stop: int) -> np.ndarray:
        """LSL timestamps of samples [start, stop), float64 (stop - start,)."""
        return self._gather(self.t_lsl, start, stop)

    def _meta(self, name: str) -> np.ndarray:
        if name not in ("t_lsl", "t_arrived", "n_nonfinite", "n_lost_before"):
            raise ValueError(
                f"Unknown per-sample array {name!r}; use t_lsl, t_arrived, n_nonfinite "
                "or n_lost_before."
            )
        return getattr(self, name)

    def read_meta(self, name: str, start: int, stop: int) -> np.ndarray:
        """Copy of one per-sample array over samples [start, stop).

        One of ``t_lsl``, ``t_arrived``, ``n_nonfinite``, ``n_lost_before``.
        """
        return self._gather(self._meta(name), start, stop)

    def sample_at(self, name: str, index: int):
        """One per-sample value (e.g. ``sample_at("t_lsl", k)``) as a Python scalar."""
        arr = self._meta(name)
        self._columns(index, index + 1)  # raises when not held
        value = arr[index % self.capacity].item()
        self._check_retained(index)
        return value

    def index_of_time(
        self, t_lsl: float, tolerance_s: float = 0.0, *, tolerance_samples: float | None = None
    ) -> int | None:
        """Absolute index of the first held sample with ``t_lsl >= t - tolerance_s``.

        Assumes timestamps increase (a source whose clock stepped back gives the first
        match in buffer order). Returns None when no held sample is that late yet.
        ``tolerance_samples`` gives the tolerance in sample periods as the held timestamps
        space them, which stays right for a source replayed faster or slower than its
        nominal rate (a replay at 4x stamps its samples 4x closer).

        Raises
        ------
        OverwrittenError
            When ``t_lsl`` is older than the oldest held sample.
        """
        stop = self._n_written
        start = self.oldest
        if stop == start:
            return None
        times = self.read_times(start, stop)
        if tolerance_samples is not None and times.size > 1:
            tolerance_s = tolerance_samples * float(times[-1] - times[0]) / (times.size - 1)
        target = t_lsl - tolerance_s
        if times[0] > target and start > 0:
            raise OverwrittenError(
                f"Time {t_lsl:.4f} is older than the oldest held sample "
                f"({times[0]:.4f}); use a larger buffer_s."
            )
        k = int(np.searchsorted(times, target, side="left"))
        return None if k >= times.size else start + k


def locate_time(ring: RingBuffer, t_lsl: float, sfreq_hz: float) -> int | None:
    """Absolute index of the first held sample at or after ``t_lsl`` (a marker's time).

    The one rule that maps a marker onto the live stream: within half a sample period,
    measured on the held timestamps (so a replay faster than real time still lands a
    marker on its own sample), or ``0.5 / sfreq_hz`` while only one sample is held.

    Parameters
    ----------
    ring : RingBuffer
        The data stream's ring.
    t_lsl : float
        The marker's LSL time (clock-corrected).
    sfreq_hz : float
        The stream's nominal rate.

    Returns
    -------
    int or None
        None while no held sample is that late yet.

    Raises
    ------
    OverwrittenError
        When ``t_lsl`` is older than the oldest held sample.
    """
    return ring.index_of_time(t_lsl, tolerance_s=0.5 / sfreq_hz, tolerance_samples=0.5)


def nearest_index(t_lsl: np.ndarray, t: float) -> int:
    """Index of the sample whose time is nearest ``t`` (the earlier one on a tie).

    The rule that places a marker on a written file's samples (``rtdecode record`` and
    ``serve --record``).

    Parameters
    ----------
    t_lsl : ndarray, shape (n_samples,)
        Increasing sample times, n_samples >= 1.
    t : float
        The marker's time, on the same clock.
    """
    k = min(int(np.searchsorted(t_lsl, t)), len(t_lsl) - 1)
    if k > 0 and t - t_lsl[k - 1] <= t_lsl[k] - t:
        k -= 1
    return k
