"""Integration of consecutive windows' predictions: the live counterpart of averaging.

The paper averages the brain module's predictions over the repetitions of an image
before retrieval (Benchetrit et al. 2024); a live stream has no repetitions, but it has
consecutive, overlapping windows of the same presentation (a window every 50 ms). A
leaky integrator over those predictions trades a delay for a less noisy query:

    s_k = a_k * s_{k-1} + (1 - a_k) * p_k,    a_k = exp(-dt_k / tau)

where ``p_k`` is the k-th window's prediction, ``dt_k`` the time between the ends of
windows k-1 and k in the stream's samples (``(last_k - last_{k-1}) / sfreq``) and
``tau`` the time constant (``serve --smooth-s``). ``tau = 0`` is no smoothing. The
integrator restarts from the prediction itself when the stream jumps back or ahead by
more than ``reset_after`` time constants (a reconnection, a replay that loops, a gap):
predictions from another moment are not mixed in.

The same object runs live (the worker, one window at a time) and offline
(``rtdecode evaluate-online`` smooths the offline predictions of the same windows in
the same order), so online equals offline with smoothing on.

Threads: one instance belongs to one thread (the worker's lane 1).
"""

from __future__ import annotations

import math

import numpy as np

from rtdecode.contracts import ParameterError

__all__ = ["PredictionSmoother", "smooth_sequence"]


class PredictionSmoother:
    """Exponential integration of predictions over stream time.

    Parameters
    ----------
    tau_s : float
        Time constant in seconds; 0 turns smoothing off (each prediction passes through).
    reset_after : float
        Restart when consecutive windows are further apart than this many time constants
        (or go backwards).
    """

    def __init__(self, tau_s: float, reset_after: float = 5.0) -> None:
        if not math.isfinite(tau_s) or tau_s < 0:
            raise ParameterError(
                "smooth_s", f"{{param}}={tau_s!r}: the time constant must be >= 0 s (0 = off)."
            )
        if not reset_after > 0:
            raise ParameterError("reset_after", f"{{param}}={reset_after!r} must be > 0.")
        self.tau_s = float(tau_s)
        self.reset_after = float(reset_after)
        self._state: np.ndarray | None = None
        self._last_sample: int | None = None
        self.n_resets = 0

    @property
    def enabled(self) -> bool:
        """Whether predictions are integrated (a time constant above 0)."""
        return self.tau_s > 0

    def reset(self) -> None:
        """Forget the state: the next prediction passes through unchanged."""
        self._state = None
        self._last_sample = None

    def update(self, prediction: np.ndarray, last_sample: int, sfreq_hz: float) -> np.ndarray:
        """Fold one window's prediction in; returns the smoothed prediction (a new array).

        ``last_sample`` is the absolute index of the window's last sample and
        ``sfreq_hz`` the stream's rate: together they give the time since the previous
        window, the same live and offline.
        """
        p = np.asarray(prediction, dtype=np.float32)
        if not self.enabled:
            return p.copy()
        if self._state is not None and self._state.shape != p.shape:
            raise ValueError(
                f"prediction shape {p.shape} differs from the previous one "
                f"{self._state.shape}; one smoother follows one model."
            )
        if self._state is None or self._last_sample is None:
            self._state = p.copy()
        else:
            dt = (int(last_sample) - self._last_sample) / float(sfreq_hz)
            if dt <= 0 or dt > self.reset_after * self.tau_s:
                self._state = p.copy()
                self.n_resets += 1
            else:
                a = np.float32(math.exp(-dt / self.tau_s))
                self._state = a * self._state + (np.float32(1.0) - a) * p
        self._last_sample = int(last_sample)
        return self._state.copy()


def smooth_sequence(
    predictions: np.ndarray, last_samples: np.ndarray, sfreq_hz: float, tau_s: float,
    reset_after: float = 5.0,
) -> np.ndarray:
    """Smooth a sequence of windows' predictions, in order, as the live worker would.

    Parameters
    ----------
    predictions : ndarray, shape (n_windows, ...)
    last_samples : ndarray of int, shape (n_windows,)
        Absolute index of each window's last sample, in the order the windows were decoded.
    sfreq_hz : float
    tau_s : float

    Returns
    -------
    ndarray, same shape as ``predictions``, float32
    """
    predictions = np.asarray(predictions)
    last_samples = np.asarray(last_samples)
    if last_samples.shape != (predictions.shape[0],):
        raise ValueError(
            f"last_samples has shape {last_samples.shape}; expected ({predictions.shape[0]},)."
        )
    smoother = PredictionSmoother(tau_s, reset_after)
    out = np.empty(predictions.shape, dtype=np.float32)
    for i in range(predictions.shape[0]):
        out[i] = smoother.update(predictions[i], int(last_samples[i]), sfreq_hz)
    return out
