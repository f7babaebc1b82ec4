"""Streaming preprocessing (rtdecode.signal.streaming): pushing a recording in chunks of
any size gives the same windows as one pass of scipy's filters over the whole recording
(an independent reference written here), online windows equal offline cuts, and a
window costs a slice."""

from __future__ import annotations

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy import signal as sps

from rtdecode.contracts import Window
from rtdecode.signal import PreprocessConfig, Preprocessor
from rtdecode.signal.streaming import StreamingPreprocessor, preprocess_recording

N_CH = 5
NAMES = tuple(f"MEG{i}" for i in range(N_CH))


def _recording(sfreq_hz: float, seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * sfreq_hz)
    t = np.arange(n) / sfreq_hz
    x = 1e-12 * rng.standard_normal((N_CH, n)) + 3e-13 * np.sin(2 * np.pi * 7 * t)
    x += 1e-11 * rng.standard_normal((N_CH, 1)) + 1e-13 * np.cumsum(rng.standard_normal((N_CH, n)), 1) / 30
    return x


def _fitted(**config) -> Preprocessor:
    pre = Preprocessor(PreprocessConfig(ch_names=NAMES, streaming=True, **config))
    return Preprocessor(pre.config, center=np.full(N_CH, 1e-11), scale=np.full(N_CH, 2e-12))


def _reference(pre: Preprocessor, x: np.ndarray, sfreq_hz: float) -> np.ndarray:
    """The whole chain in one pass, unscaled: lowpass, causal cubic grid, highpass."""
    c = pre.config
    sos_low = sps.butter(c.lowpass_order, c.lowpass_hz, "lowpass", fs=sfreq_hz, output="sos")
    sos_high = sps.butter(c.highpass_order, c.highpass_hz, "highpass", fs=c.sfreq_model_hz,
                          output="sos")
    zi = sps.sosfilt_zi(sos_low)[:, None, :] * x[None, :, :1]
    lp, _ = sps.sosfilt(sos_low, x, axis=-1, zi=zi)
    step = sfreq_hz / c.sfreq_model_hz
    n_out = int(np.floor(x.shape[1] / step + 1e-9))
    out = np.empty((N_CH, n_out))
    for k in range(n_out):
        p = (k + 1) * step - 1
        p = round(p) if abs(p - round(p)) < 1e-7 else p
        start = max(0, int(np.ceil(p)) - 3)
        nodes = np.arange(start, start + 4)
        w = [np.prod([(p - nodes[m]) / (nodes[j] - nodes[m]) for m in range(4) if m != j])
             for j in range(4)]
        out[:, k] = lp[:, nodes] @ np.array(w)
    zi = sps.sosfilt_zi(sos_high)[:, None, :] * x[None, :, :1]
    hp, _ = sps.sosfilt(sos_high, out, axis=-1, zi=zi)
    return hp


def _scaled(pre, y):
    return np.clip((y - pre.center[:, None]) / pre.scale[:, None], -20, 20)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sfreq_hz=st.sampled_from([1200.0, 1000.0, 600.614]),
    cuts=st.lists(st.integers(1, 400), min_size=1, max_size=40),
)
def test_any_chunking_equals_one_pass_over_the_recording(sfreq_hz, cuts):
    pre = _fitted()
    x = _recording(sfreq_hz, 3.0)
    sp = StreamingPreprocessor(pre, buffer_s=None)
    n = x.shape[1]
    sp.reset(sfreq_hz, NAMES, 0, capacity=n)
    i = 0
    for size in cuts * (n // max(1, sum(cuts)) + 1):
        if i >= n:
            break
        sp.push(x[:, i:i + size], i)
        i += size
    ref = _scaled(pre, _reference(pre, x, sfreq_hz))
    n_times = int(round(0.25 * sfreq_hz))
    for stop in range(n_times + 60, n + 1, 97):
        got = sp.window(stop, n_times)
        k_end = int(np.floor(stop / (sfreq_hz / 120.0) + 1e-9)) - 1
        want = ref[:, k_end - got.shape[1] + 1:k_end + 1]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5 * np.abs(want).max())


def test_online_windows_equal_offline_cuts_and_restart_after_a_long_skip():
    sfreq_hz, hop, n_times, n_pad = 1200.0, 60, 300, 600
    pre = _fitted()
    x = _recording(sfreq_hz, 6.0, seed=4)
    offline = preprocess_recording(pre, x, sfreq_hz, NAMES, chunk_samples=1234)
    online = StreamingPreprocessor(pre)
    online.reset(sfreq_hz, NAMES, 0)
    online.push(x[:, :hop], 0)
    ends = list(range(n_pad + n_times, x.shape[1] + 1, hop))
    taken = ends[::3][:20]  # latest wins: lane 1 took every third window
    for stop in taken:
        w = Window(data=x[:, stop - n_pad - n_times:stop].astype(np.float32), sfreq_hz=sfreq_hz,
                   ch_names=NAMES, first_sample=stop - n_pad - n_times, t_first=0.0,
                   t_last=0.0, t_arrived=0.0, n_pad=n_pad)
        np.testing.assert_allclose(online.transform_window(w), offline.window(stop, n_times),
                                   rtol=1e-5, atol=1e-6)
    assert online.restarts == 0
    later = taken[-1] + 2 * (n_pad + n_times)  # a skip longer than a window: restart
    w = Window(data=x[:, later - n_pad - n_times:later].astype(np.float32), sfreq_hz=sfreq_hz,
               ch_names=NAMES, first_sample=later - n_pad - n_times, t_first=0.0, t_last=0.0,
               t_arrived=0.0, n_pad=n_pad)
    assert online.transform_window(w).shape == (N_CH, 30)
    assert online.restarts == 1


def test_config_without_streaming_key_loads_as_block_preprocessing():
    d = Preprocessor(PreprocessConfig(ch_names=NAMES)).to_dict()
    del d["config"]["streaming"]  # a checkpoint written before the option existed
    assert Preprocessor.from_dict(d).config.streaming is False
