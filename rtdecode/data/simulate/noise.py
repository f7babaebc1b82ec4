"""Noise of the simulated recordings, added continuously over each run.

- background brain activity: random tangential cortical dipoles with independent pink
  (1/f) time courses;
- an alpha rhythm from two parieto-occipital dipoles, waxing and waning over seconds;
- white sensor noise at the system's noise floor;
- line interference at 50 Hz and slow drifts (larger on magnetometers and axial
  gradiometers than on planar gradiometers, which reject distant fields).

Threads: everything runs in the calling thread.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from rtdecode.data.simulate.sensors import LINE_FREQ_HZ, SPHERE_R0_HEAD_M
from rtdecode.data.simulate.sources import tangential


@dataclass(frozen=True)
class NoiseModel:
    """One subject's noise: its generators' fields and per-channel sensor terms.

    Attributes
    ----------
    gain_background : ndarray, shape (n_meg, n_background)
    gain_alpha : ndarray, shape (n_meg, 2)
    background_nam, alpha_nam : float
        RMS moment of each background / alpha dipole.
    alpha_hz : float
    white : ndarray, shape (n_meg,)
        White noise RMS at the stored rate is ``white * sqrt(sfreq_hz / 2)``.
    line_amp, line_phase, drift_amp : ndarray, shape (n_meg,)
    """

    gain_background: np.ndarray
    gain_alpha: np.ndarray
    background_nam: float
    alpha_nam: float
    alpha_hz: float
    white: np.ndarray
    line_amp: np.ndarray
    line_phase: np.ndarray
    drift_amp: np.ndarray


def random_cortex(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    """``n`` random dipoles 4.5-7 cm from the sphere centre (head coordinates), tangential."""
    d = rng.standard_normal((n, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    d[:, 2] = np.abs(d[:, 2]) * 0.8 + 0.1 * d[:, 2]  # cortex lies mostly above the centre
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    rel = d * rng.uniform(0.045, 0.07, (n, 1))
    ori = np.stack([tangential(r, rng) for r in rel])
    return rel + np.asarray(SPHERE_R0_HEAD_M), ori


def alpha_generators(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Two parieto-occipital dipoles (head coordinates) with tangential orientations."""
    r0 = np.asarray(SPHERE_R0_HEAD_M)
    rel = np.array([[-0.025, -0.055, 0.030], [0.025, -0.055, 0.030]]) + rng.normal(0, 0.004, (2, 3))
    return r0 + rel, np.stack([tangential(p, rng) for p in rel])


def colored_noise(
    rng: np.random.Generator,
    n_series: int,
    n_times: int,
    sfreq_hz: float,
    shape: str,
    centre_hz: float = 10.0,
) -> np.ndarray:
    """Unit-variance noise, shape (n_series, n_times): ``pink`` (1/f), ``alpha`` or ``drift``."""
    spec = np.fft.rfft(rng.standard_normal((n_series, n_times)), axis=1)
    f = np.fft.rfftfreq(n_times, 1.0 / sfreq_hz)
    if shape == "pink":
        w = 1.0 / np.sqrt(np.maximum(f, 0.1))
    elif shape == "alpha":
        w = np.exp(-0.5 * ((f - centre_hz) / 1.2) ** 2)
    elif shape == "drift":
        w = 1.0 / np.maximum(f, 0.005) * (f < 0.5)
    else:  # pragma: no cover - internal
        raise ValueError(shape)
    x = np.fft.irfft(spec * w, n=n_times, axis=1)
    x -= x.mean(axis=1, keepdims=True)
    return x / np.maximum(x.std(axis=1, keepdims=True), 1e-30)


def add_noise(
    data: np.ndarray, noise: NoiseModel, sfreq_hz: float, rng: np.random.Generator
) -> np.ndarray:
    """Add every noise term to ``data`` (n_meg, n_times) in place and return it."""
    n_times = data.shape[1]
    bg = colored_noise(rng, noise.gain_background.shape[1], n_times, sfreq_hz, "pink")
    data += noise.gain_background @ (bg * (noise.background_nam * 1e-9))
    del bg
    alpha = colored_noise(rng, 2, n_times, sfreq_hz, "alpha", noise.alpha_hz)
    envelope = (0.5 + colored_noise(rng, 1, n_times, sfreq_hz, "drift") ** 2) / 1.5  # mean 1
    data += noise.gain_alpha @ (alpha * envelope * (noise.alpha_nam * 1e-9))
    white = rng.standard_normal(data.shape, dtype=np.float32)
    data += white * (noise.white * np.sqrt(sfreq_hz / 2.0))[:, None]
    del white
    # amp * sin(wt + phase) = amp cos(phase) sin(wt) + amp sin(phase) cos(wt)
    wt = 2 * np.pi * LINE_FREQ_HZ * np.arange(n_times) / sfreq_hz
    line = np.stack([np.sin(wt), np.cos(wt)])
    phases = np.stack([np.cos(noise.line_phase), np.sin(noise.line_phase)], axis=1)
    data += (noise.line_amp[:, None] * phases) @ line
    drift = colored_noise(rng, 1, n_times, sfreq_hz, "drift")[0]
    data += noise.drift_amp[:, None] * rng.uniform(0.5, 1.5, (len(data), 1)) * drift
    return data
