"""Building blocks of the preprocessing: causal IIR filters and end-aligned resampling.

Everything here is a pure function of its arguments (no state, no threads): the
``Preprocessor`` in :mod:`rtdecode.signal.preprocess` designs filters and resampling plans
once per input rate, caches them, and applies them from whichever thread calls it (the
DecodeWorker online, the training process offline).

Arrays hold time on the LAST axis; any leading axes (channels, or epochs x channels) are
processed independently with the same arithmetic, which is what makes one vectorised
offline call give the same numbers as many single online calls.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

# scipy.signal takes seconds to import on a loaded machine; it is imported by the
# functions that need it (a dictionary lookup after the first time), so that
# `import rtdecode.signal` stays cheap for code that only needs the config.

# Ratios of sample counts are computed in floating point; this keeps e.g. 89.9999999999
# from being floored to 89 when the exact value is 90.
_EPS = 1e-9


def round_half_up(x: float) -> int:
    """Round to the nearest integer, halves away from zero.

    Python's ``round`` rounds halves to even, which would make 0.5-sample ties depend on
    parity.
    """
    return int(math.floor(x + 0.5)) if x >= 0 else -int(math.floor(-x + 0.5))


def design_lowpass(lowpass_hz: float, sfreq_hz: float, order: int) -> np.ndarray:
    """Butterworth lowpass as second-order sections.

    Parameters
    ----------
    lowpass_hz : float
        -3 dB cut-off in Hz; must lie below ``sfreq_hz / 2``.
    sfreq_hz : float
        Rate the filter runs at.
    order : int
        Butterworth order (the roll-off is ``6 * order`` dB per octave).

    Returns
    -------
    sos : ndarray, float64, shape (n_sections, 6)
    """
    from scipy import signal as sps

    if not 0 < lowpass_hz < sfreq_hz / 2:
        raise ValueError(
            f"lowpass_hz={lowpass_hz} must lie between 0 and the Nyquist frequency "
            f"{sfreq_hz / 2:g} Hz of data sampled at {sfreq_hz:g} Hz; lower lowpass_hz or "
            f"feed data at a higher rate."
        )
    return sps.butter(order, lowpass_hz, btype="lowpass", fs=sfreq_hz, output="sos")


def design_highpass(highpass_hz: float, sfreq_hz: float, order: int) -> np.ndarray:
    """Butterworth highpass as second-order sections; see :func:`design_lowpass`."""
    from scipy import signal as sps

    if not 0 < highpass_hz < sfreq_hz / 2:
        raise ValueError(
            f"highpass_hz={highpass_hz} must lie between 0 and the Nyquist frequency "
            f"{sfreq_hz / 2:g} Hz of data sampled at {sfreq_hz:g} Hz."
        )
    return sps.butter(order, highpass_hz, btype="highpass", fs=sfreq_hz, output="sos")


def steady_state(sos: np.ndarray) -> np.ndarray:
    """Filter state for a constant input of 1 (scale it by the level to start from).

    Returns
    -------
    zi : ndarray, float64, shape (n_sections, 2)
    """
    from scipy import signal as sps

    return sps.sosfilt_zi(sos)


def causal_filter(x: np.ndarray, sos: np.ndarray, zi_unit: np.ndarray,
                  level: np.ndarray) -> np.ndarray:
    """Run a causal IIR filter along the last axis, starting in steady state.

    The filter starts as if the signal had sat at ``level`` forever before ``x[..., 0]``,
    so a window whose history is near ``level`` shows no start-up transient.

    Parameters
    ----------
    x : ndarray, float64, shape (..., n_times)
    sos : ndarray, shape (n_sections, 6)
    zi_unit : ndarray, shape (n_sections, 2)
        :func:`steady_state` of ``sos``.
    level : ndarray, shape x.shape[:-1]
        Per-row starting level.

    Returns
    -------
    y : ndarray, float64, same shape as ``x``
    """
    from scipy import signal as sps

    lead = (slice(None),) + (None,) * level.ndim + (slice(None),)
    zi = zi_unit[lead] * level[None, ..., None]
    y, _ = sps.sosfilt(sos, x, axis=-1, zi=zi)
    return y


@dataclass(frozen=True, slots=True)
class ResamplePlan:
    """How to go from ``n_in`` samples at one rate to an end-aligned grid at another.

    Output sample ``k`` (``0 <= k < n_out_total``) sits at input position
    ``p_k = (n_in - 1) - (n_out_total - 1 - k) * sfreq_in / sfreq_out`` (in input samples),
    so the last output sample IS the newest input sample and outputs are spaced
    ``1 / sfreq_out`` apart going back in time. Each output is a 4-point (cubic) Lagrange
    interpolation of the input around ``p_k``.

    Attributes
    ----------
    index : ndarray, intp, shape (n_out_total, 4)
        Input samples used by each output sample.
    weight : ndarray, float64, shape (n_out_total, 4)
        Their interpolation weights (each row sums to 1).
    n_pad_out : int
        Leading output samples that fall in the history (dropped after filtering).
    n_out : int
        Output samples of the window proper.
    """

    index: np.ndarray
    weight: np.ndarray
    n_pad_out: int
    n_out: int

    @property
    def n_out_total(self) -> int:
        """Output samples including the padding (``n_pad_out + n_out``)."""
        return self.n_pad_out + self.n_out


def n_samples_out(n_times: int, sfreq_in_hz: float, sfreq_out_hz: float) -> int:
    """Output samples for ``n_times`` input samples: ``round(duration * sfreq_out_hz)``.

    A window of ``n`` samples lasts ``n / sfreq`` seconds (each sample stands for one
    sampling interval), at every rate; so 300 samples at 1200 Hz (0.25 s) give 30 at
    120 Hz, and 1810 samples at 1200 Hz give the paper's 181.
    """
    return max(1, round_half_up(n_times * sfreq_out_hz / sfreq_in_hz))


def resample_plan(n_in: int, n_out: int, sfreq_in_hz: float, sfreq_out_hz: float) -> ResamplePlan:
    """Plan an end-aligned resampling of ``n_in`` input samples.

    Parameters
    ----------
    n_in : int
        Input samples (history + window).
    n_out : int
        Output samples wanted for the window proper (see :func:`n_samples_out`).
    sfreq_in_hz, sfreq_out_hz : float
        Input and output rates; any ratio, integer or not, up or down.

    Returns
    -------
    ResamplePlan
        As many history samples as fit inside the input precede the ``n_out`` window
        samples.
    """
    if n_in < 4:
        raise ValueError(
            f"Cannot resample {n_in} input samples: cubic interpolation needs at least 4; "
            f"give longer windows."
        )
    step = sfreq_in_hz / sfreq_out_hz  # input samples per output sample
    n_fit = int(math.floor((n_in - 1) / step + _EPS)) + 1
    n_pad_out = max(0, n_fit - n_out)
    n_total = n_pad_out + n_out
    back = np.arange(n_total - 1, -1, -1, dtype=np.float64)  # outputs before the newest
    pos = (n_in - 1) - back * step
    # Snap positions that are integers up to rounding (e.g. 1200 -> 120 Hz) so that those
    # outputs copy an input sample exactly.
    near = np.round(pos)
    pos = np.where(np.abs(pos - near) < 1e-7, near, pos)
    # Stencil of 4 neighbours centred on the interval holding pos, shifted inwards at the
    # edges: exact for cubic polynomials everywhere, no edge replication.
    start = np.clip(np.floor(pos).astype(np.intp) - 1, 0, n_in - 4)
    index = start[:, None] + np.arange(4, dtype=np.intp)[None, :]
    u = pos - start  # position inside the stencil, in samples from its first node
    weight = np.ones((n_total, 4))
    for j in range(4):
        for m in range(4):
            if m != j:
                weight[:, j] *= (u - m) / (j - m)  # Lagrange basis polynomial of node j
    return ResamplePlan(index, weight, n_pad_out, n_out)


def apply_plan(x: np.ndarray, plan: ResamplePlan) -> np.ndarray:
    """Resample along the last axis with a :class:`ResamplePlan`.

    Parameters
    ----------
    x : ndarray, float64, shape (..., n_in)

    Returns
    -------
    y : ndarray, float64, shape (..., plan.n_out_total)
    """
    # Four elementwise terms rather than einsum/matmul: the result of each output sample
    # then does not depend on how many epochs are stacked (BLAS may reorder sums).
    y = x[..., plan.index[:, 0]] * plan.weight[:, 0]
    for j in range(1, 4):
        y += x[..., plan.index[:, j]] * plan.weight[:, j]
    return y


def sos_response(sos: np.ndarray, freqs_hz: np.ndarray, sfreq_hz: float) -> tuple[np.ndarray, np.ndarray]:
    """Complex response and group delay of a filter at given frequencies.

    The group delay is ``-d(phase)/d(omega)`` by a centred difference, which stays
    accurate for cut-offs close to 0 Hz where the transfer-function form is ill-conditioned.

    Returns
    -------
    h : ndarray, complex, shape (n_freqs,)
    group_delay_s : ndarray, float64, shape (n_freqs,)
    """
    from scipy import signal as sps

    freqs_hz = np.asarray(freqs_hz, dtype=np.float64)
    df = 1e-4 * sfreq_hz / 2
    grid = np.concatenate([freqs_hz - df / 2, freqs_hz, freqs_hz + df / 2])
    _, h = sps.sosfreqz(sos, worN=grid, fs=sfreq_hz)
    lo, mid, hi = np.split(h, 3)
    dphase = np.angle(hi / lo)  # phase step over df, free of wrapping
    return mid, -dphase / (2 * np.pi * df)
