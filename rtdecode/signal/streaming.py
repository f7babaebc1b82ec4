"""Streaming preprocessing: filter and resample as samples arrive; a window is a slice.

For a Preprocessor whose config has ``streaming=True``, :class:`StreamingPreprocessor`
runs the same chain as the block path (pick channels, non-finite -> 0, causal lowpass at
the input rate, cubic resampling to the model rate, causal highpass at the model rate,
baseline, robust scaling, clamp) but with the filter states carried from one chunk to
the next, so each input sample is filtered once. The model-rate output (unscaled) goes
into a small ring; cutting a window is slicing its newest outputs, then scaling.

Grid. Model sample ``k`` (``k = 0, 1, ...`` from the stream's first sample) sits at input
position ``p_k = (k + 1) * step - 1`` with ``step = sfreq_in / sfreq_model`` (the last
input sample of the k-th model interval; at 1200 -> 120 Hz every 10th sample exactly).
It is a 4-point Lagrange interpolation of the lowpassed input over the samples
``ceil(p_k) - 3 .. ceil(p_k)``: causal, so it is ready as soon as sample ``ceil(p_k)``
is. A window ending at sample ``stop`` (exclusive) gets the ``n_times_out`` newest model
samples with ``p_k <= stop - 1``, the same end alignment as the block path when ``stop``
is a multiple of ``step`` (a 50 ms hop at 1200 Hz).

Start. The filters start in the steady state of the stream's first sample. Offline,
:func:`preprocess_recording` runs this very code over the continuous recording from its
first sample, so a window cut at sample ``s`` has the same values online and offline
when the live state also started at sample 0; a state started later (a service started
mid-stream, or restarted after a gap) converges to it as the 0.1 Hz highpass forgets its
start (time constant 1.6 s).

Threads. A StreamingPreprocessor belongs to one thread: online, the worker's lane 1,
which feeds it the samples of each window it has not seen yet (:meth:`transform_window`);
when lane 1 skipped more than a window's length of samples, it restarts from the new
window and counts it in ``restarts``. The reader and the Windower are untouched: the
state lives between the Windower and the encoder, in the one thread that reads it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from rtdecode.contracts import Window
from rtdecode.signal import filters

__all__ = ["StreamingPreprocessor", "model_index", "preprocess_recording"]

_EPS = 1e-9


class StreamingPreprocessor:
    """Incremental preprocessing of one stream (see the module docstring).

    Parameters
    ----------
    preprocessor : rtdecode.signal.Preprocessor
        Gives the config, the channel pick and the robust-scaling statistics.
    buffer_s : float | None
        Model-rate output kept for slicing (4 s); None keeps everything (offline).
    """

    def __init__(self, preprocessor, buffer_s: float | None = 4.0) -> None:
        self.pre = preprocessor
        self.buffer_s = buffer_s
        self.restarts = 0
        self._key: tuple | None = None
        self._next_sample: int | None = None  # absolute index of the next sample expected

    # -------------------------------------------------------------- state
    def reset(self, sfreq_hz: float, ch_names: Sequence[str], first_sample: int = 0,
              capacity: int | None = None) -> None:
        """Forget the state; the next :meth:`push` must start at ``first_sample``."""
        pre = self.pre
        c = pre.config
        self.sfreq_hz = float(sfreq_hz)
        self._pick = pre._pick(ch_names, len(ch_names))
        self._key = (self.sfreq_hz, tuple(ch_names))
        self._step = self.sfreq_hz / c.sfreq_model_hz
        self._sos_low = pre._lowpass(self.sfreq_hz)
        self._sos_high = pre._sos_high if c.highpass_hz is not None else None
        self._zi_low = self._zi_high = None  # set from the first sample's level
        self._first = int(first_sample)
        self._next_sample = self._first
        self._next_k = 0  # next model sample to compute (stream-relative)
        self._tail = np.zeros((len(self._pick), 0))  # last lowpassed samples (stencils)
        if capacity is None:
            capacity = int(math.ceil((self.buffer_s or 4.0) * c.sfreq_model_hz)) + 8
        self._cap = int(capacity)
        self._out = np.zeros((len(self._pick), self._cap))

    @property
    def n_model_written(self) -> int:
        """Model samples computed so far (stream-relative)."""
        return self._next_k

    def push(self, data: np.ndarray, first_sample: int) -> None:
        """Filter and resample new samples.

        Parameters
        ----------
        data : ndarray, shape (n_channels_in, n_new)
            Raw samples, in the channel order given to :meth:`reset`.
        first_sample : int
            Absolute index of ``data[:, 0]``; must be the next sample expected.
        """
        if first_sample != self._next_sample:
            raise ValueError(
                f"push got samples from {first_sample} on but the stream state expects "
                f"{self._next_sample}; push contiguous samples, or reset() after a gap."
            )
        n_new = data.shape[1]
        if n_new == 0:
            return
        x = data[self._pick].astype(np.float64)
        finite = np.isfinite(x)
        if not finite.all():
            x[~finite] = 0.0
        if self._zi_low is None and self._sos_low is not None:
            self._zi_low = filters.steady_state(self._sos_low)[:, None, :] * x[None, :, 0, None]
        if self._zi_high is None and self._sos_high is not None:
            self._zi_high = filters.steady_state(self._sos_high)[:, None, :] * x[None, :, 0, None]
        if self._sos_low is not None:
            from scipy import signal as sps

            x, self._zi_low = sps.sosfilt(self._sos_low, x, axis=-1, zi=self._zi_low)
        # Stream-relative index of ext[:, 0]: the kept tail, then the new samples.
        ext = np.concatenate([self._tail, x], axis=1) if self._tail.shape[1] else x
        ext_first = (first_sample - self._first) - self._tail.shape[1]
        n_have = first_sample - self._first + n_new  # samples seen, stream-relative
        self._next_sample = first_sample + n_new
        k_hi = int(math.floor(n_have / self._step + _EPS)) - 1  # p_k <= n_have - 1
        if n_have >= 4 and k_hi >= self._next_k:
            ks = np.arange(self._next_k, k_hi + 1)
            index, weight = _stencils(ks, self._step, n_have)
            y = ext[:, index[:, 0] - ext_first] * weight[:, 0]
            for j in range(1, 4):
                y += ext[:, index[:, j] - ext_first] * weight[:, j]
            if self._sos_high is not None:
                from scipy import signal as sps

                y, self._zi_high = sps.sosfilt(self._sos_high, y, axis=-1, zi=self._zi_high)
            self._write(ks, y)
            self._next_k = k_hi + 1
        # Keep what the next stencils may reach back to (at most 3 before ceil(p)).
        keep = min(ext.shape[1], 4 + int(math.ceil(self._step)))
        self._tail = ext[:, ext.shape[1] - keep:].copy()

    def _write(self, ks: np.ndarray, y: np.ndarray) -> None:
        if ks.size > self._cap:
            ks, y = ks[-self._cap:], y[:, -self._cap:]
        self._out[:, ks % self._cap] = y

    def window(self, stop_sample: int, n_times: int) -> np.ndarray:
        """The preprocessed window whose last input sample is ``stop_sample - 1``.

        Parameters
        ----------
        stop_sample : int
            Absolute index one past the window's last sample (already pushed).
        n_times : int
            Input samples of the window proper (without history).

        Returns
        -------
        out : ndarray, float32, shape (n_model_channels, n_times_out)
        """
        c = self.pre.config
        n_out = filters.n_samples_out(int(n_times), self.sfreq_hz, c.sfreq_model_hz)
        rel_stop = stop_sample - self._first
        k_end = int(model_index(rel_stop, self._step))
        if rel_stop > self._next_sample - self._first or k_end >= self._next_k:
            raise ValueError(
                f"Window up to sample {stop_sample} asked before its samples were pushed "
                f"(pushed up to {self._next_sample}); push first."
            )
        k0 = k_end - n_out + 1
        if k0 < max(0, self._next_k - self._cap):
            raise ValueError(
                f"Window of {n_out} model samples ending at model sample {k_end} is no "
                f"longer (or not yet) held; raise buffer_s or cut newer windows."
            )
        y = self._out[:, np.arange(k0, k_end + 1) % self._cap]
        return self.pre.finish(y)

    def model_samples(self) -> np.ndarray:
        """Every model sample computed so far, unscaled (offline: ``buffer_s=None``).

        Returns
        -------
        out : ndarray, float64, shape (n_model_channels, n_model_written)
            Column ``k`` is model sample ``k`` of the stream.
        """
        if self._next_k > self._cap:
            raise ValueError(
                f"Only the newest {self._cap} of {self._next_k} model samples are held; "
                f"use preprocess_recording (which keeps them all) for a whole recording."
            )
        return self._out[:, :self._next_k]

    # -------------------------------------------------------------- online
    def transform_window(self, window: Window) -> np.ndarray:
        """Push the samples of ``window`` not seen yet and return its slice.

        Restarts (counted in ``restarts``) when the stream's rate or channels change or
        when samples between the last window and this one were never pushed.

        Returns
        -------
        out : ndarray, float32, shape (n_model_channels, n_times_out)
        """
        stop = window.last_sample + 1
        key = (float(window.sfreq_hz), tuple(window.ch_names))
        if (self._key != key or self._next_sample is None
                or window.first_sample > self._next_sample or stop < self._next_sample):
            if self._key is not None:
                self.restarts += 1
            self.reset(window.sfreq_hz, window.ch_names, window.first_sample)
        new_from = self._next_sample - window.first_sample
        if new_from < window.data.shape[1]:
            self.push(window.data[:, new_from:], self._next_sample)
        return self.window(stop, window.n_times)


def model_index(stop_samples, step: float):
    """Newest model sample of the window that ends at ``stop_samples`` (exclusive).

    Both counted from the stream's first sample: ``floor(stop / step) - 1`` with ``step
    = sfreq_in / sfreq_model`` (model sample ``k`` sits at input ``(k + 1) * step - 1``).
    Works on ints and on int arrays.
    """
    return np.floor(np.asarray(stop_samples) / step + _EPS).astype(np.int64) - 1


def _stencils(ks: np.ndarray, step: float, n_have: int) -> tuple[np.ndarray, np.ndarray]:
    """Causal 4-point stencils and Lagrange weights of model samples ``ks``.

    Stencils are stream-relative input indices; sample k sits at position
    ``(k + 1) * step - 1``.
    """
    pos = (ks + 1) * step - 1.0
    near = np.round(pos)
    pos = np.where(np.abs(pos - near) < 1e-7, near, pos)
    start = np.clip(np.ceil(pos).astype(np.intp) - 3, 0, max(0, n_have - 4))
    index = start[:, None] + np.arange(4, dtype=np.intp)[None, :]
    u = pos - start
    weight = np.ones((ks.size, 4))
    for j in range(4):
        for m in range(4):
            if m != j:
                weight[:, j] *= (u - m) / (j - m)
    return index, weight


def preprocess_recording(preprocessor, data: np.ndarray, sfreq_hz: float,
                         ch_names: Sequence[str], chunk_samples: int = 12_000
                         ) -> StreamingPreprocessor:
    """Run the streaming code over a whole continuous recording (offline).

    Parameters
    ----------
    data : ndarray, shape (n_channels_in, n_samples)
        The raw recording from its first sample (index 0).
    chunk_samples : int
        Samples pushed at a time (the result does not depend on it).

    Returns
    -------
    StreamingPreprocessor
        Holding every model sample; ``.window(stop_sample, n_times)`` cuts any window.
    """
    sp = StreamingPreprocessor(preprocessor, buffer_s=None)
    n = data.shape[1]
    cap = int(math.floor(n / (sfreq_hz / preprocessor.config.sfreq_model_hz) + _EPS)) + 1
    sp.reset(sfreq_hz, ch_names, 0, capacity=cap)
    for i in range(0, n, chunk_samples):
        sp.push(data[:, i:i + chunk_samples], i)
    return sp
