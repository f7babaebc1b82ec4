"""The leaky integrator of consecutive predictions (serve --smooth-s)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from rtdecode.contracts import ParameterError
from rtdecode.decoder.smoothing import PredictionSmoother, smooth_sequence


def test_zero_time_constant_passes_predictions_through():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(6, 5)).astype(np.float32)
    out = smooth_sequence(p, np.arange(6) * 60, 1200.0, 0.0)
    np.testing.assert_array_equal(out, p)


def test_matches_a_hand_computed_exponential_average():
    # Windows every 60 samples at 1200 Hz (50 ms), tau = 100 ms: a = exp(-0.5).
    p = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], dtype=np.float32)
    out = smooth_sequence(p, np.array([100, 160, 220]), 1200.0, 0.1)
    a = math.exp(-0.5)
    s1 = np.array([a * 1.0, 1 - a])
    s2 = a * s1 + (1 - a) * np.array([0.0, 1.0])
    np.testing.assert_allclose(out[0], [1.0, 0.0])
    np.testing.assert_allclose(out[1], s1, rtol=1e-6)
    np.testing.assert_allclose(out[2], s2, rtol=1e-6)


def test_uneven_spacing_uses_the_true_time_between_windows():
    # A skipped window (120 samples apart) decays the state as two 60-sample steps would.
    p = np.array([[1.0], [0.0]], dtype=np.float32)
    out = smooth_sequence(p, np.array([0, 120]), 1200.0, 0.1)
    np.testing.assert_allclose(out[1], [math.exp(-1.0)], rtol=1e-6)


def test_a_jump_back_or_a_long_gap_restarts_from_the_prediction():
    sm = PredictionSmoother(0.1, reset_after=5.0)
    sm.update(np.array([1.0], np.float32), 1000, 1000.0)
    back = sm.update(np.array([3.0], np.float32), 900, 1000.0)  # stream restarted
    np.testing.assert_array_equal(back, [3.0])
    far = sm.update(np.array([7.0], np.float32), 900 + 600, 1000.0)  # 0.6 s > 5 tau
    np.testing.assert_array_equal(far, [7.0])
    assert sm.n_resets == 2


def test_smoothing_averages_out_noise_around_a_constant_signal():
    rng = np.random.default_rng(1)
    truth = rng.normal(size=64).astype(np.float32)
    noisy = truth + rng.normal(scale=2.0, size=(200, 64)).astype(np.float32)
    out = smooth_sequence(noisy, np.arange(200) * 60, 1200.0, 0.5)
    err_raw = np.linalg.norm(noisy[100:] - truth, axis=1).mean()
    err_smooth = np.linalg.norm(out[100:] - truth, axis=1).mean()
    # tau = 10 windows: the effective number of averaged windows is about 20, so the
    # error shrinks by roughly sqrt(20) (independent of the code: the theory of an EMA).
    a = math.exp(-0.05 / 0.5)
    expected_ratio = math.sqrt((1 - a) / (1 + a))
    assert err_smooth / err_raw == pytest.approx(expected_ratio, rel=0.15)


@pytest.mark.parametrize("tau", [-0.1, float("nan"), float("inf")])
def test_bad_time_constant_names_the_parameter(tau):
    with pytest.raises(ParameterError, match="smooth_s"):
        PredictionSmoother(tau)


def test_a_different_shape_is_refused():
    sm = PredictionSmoother(0.1)
    sm.update(np.zeros(3, np.float32), 0, 100.0)
    with pytest.raises(ValueError, match="shape"):
        sm.update(np.zeros(4, np.float32), 10, 100.0)
