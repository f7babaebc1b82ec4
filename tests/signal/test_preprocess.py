"""Tests of rtdecode.signal: channel picking, filters, resampling, scaling, parity."""

import json

import numpy as np
import pytest
from scipy import signal as sps

from rtdecode.contracts import Window
from rtdecode.signal import (
    MissingChannelsError,
    PreprocessConfig,
    Preprocessor,
    filters,
    preprocess,
)

RATES_HZ = (1200.0, 1000.0, 600.614)
CH = tuple(f"MEG{i:04d}" for i in range(1, 13))


def make(**kw) -> Preprocessor:
    kw.setdefault("ch_names", CH)
    return Preprocessor(PreprocessConfig(**kw))


def window_of(x: np.ndarray, sfreq_hz: float, ch_names, n_pad: int, first_sample: int = 0):
    """A Window as the stream's Windower would cut it from a continuous array."""
    n = x.shape[1]
    return Window(
        data=np.ascontiguousarray(x, dtype=np.float32), sfreq_hz=sfreq_hz,
        ch_names=tuple(ch_names), first_sample=first_sample,
        t_first=first_sample / sfreq_hz, t_last=(first_sample + n - 1) / sfreq_hz,
        t_arrived=0.0, n_pad=n_pad,
    )


def noise(shape, seed=0, scale=1e-12):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def sines(t_s: np.ndarray, freqs_hz, phase=0.3) -> np.ndarray:
    return sum(np.sin(2 * np.pi * f * t_s + phase * (i + 1)) for i, f in enumerate(freqs_hz))


# -- channels -----------------------------------------------------------------------------

def test_channels_are_picked_and_reordered_by_name_and_extras_ignored():
    p = make()
    fs = 1200.0
    n = p.pad_samples(fs) + p.window_samples(0.25, fs)
    x = noise((len(CH), n))
    ref = p.transform(x, fs, CH, p.pad_samples(fs))

    order = np.random.default_rng(1).permutation(len(CH))
    extras = noise((3, n), seed=5, scale=1.0)
    shuffled = np.concatenate([x[order], extras])
    names = [CH[i] for i in order] + ["STI101", "EOG061", "MISC001"]
    out = p.transform(shuffled, fs, names, p.pad_samples(fs))
    np.testing.assert_array_equal(out, ref)
    assert out.shape[0] == len(CH)


def test_missing_channels_error_names_every_missing_channel():
    p = make()
    missing = (CH[0], CH[5], CH[11])
    present = [c for c in CH if c not in missing]
    x = noise((len(present), 900))
    with pytest.raises(MissingChannelsError) as info:
        p.transform(x, 1200.0, present, 600)
    assert info.value.missing == missing
    for name in missing:
        assert repr(name) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_channel_name_count_must_match_rows():
    p = make()
    with pytest.raises(ValueError, match="12 channel names"):
        p.transform(noise((11, 900)), 1200.0, CH, 600)


def test_duplicated_input_channel_is_an_error():
    p = make()
    names = list(CH) + [CH[3]]
    with pytest.raises(ValueError, match="more than once"):
        p.transform(noise((len(names), 900)), 1200.0, names, 600)


# -- shapes -------------------------------------------------------------------------------

def test_n_times_out_rule():
    p = make()
    assert p.n_times_out(0.25) == 30
    assert p.n_times_out(1.5) == 180
    assert p.n_times_out(181 / 120) == 181  # the paper's -0.5 .. 1.0 s epochs
    assert p.window_samples(0.25, 600.614) == 150
    assert p.pad_samples(1200.0) == 600
    assert p.pad_samples(600.614) == 300
    assert p.pad_samples(1001.0) == 500  # floor: windows cut with round() or ceil() suffice


@pytest.mark.parametrize("sfreq_hz", RATES_HZ)
@pytest.mark.parametrize("window_s", [0.25, 1.5, 181 / 120])
def test_output_shape_for_any_rate_and_window(sfreq_hz, window_s):
    p = make()
    n_pad = p.pad_samples(sfreq_hz)
    n = n_pad + p.window_samples(window_s, sfreq_hz)
    out = p.transform(noise((len(CH), n)), sfreq_hz, CH, n_pad)
    assert out.shape == (len(CH), p.n_times_out(window_s))
    assert out.dtype == np.float32
    epochs = p.transform_epochs(noise((3, len(CH), n)), sfreq_hz, CH, n_pad)
    assert epochs.shape == (3, len(CH), p.n_times_out(window_s))
    assert epochs.dtype == np.float32


# -- resampling and filters -----------------------------------------------------------------

@pytest.mark.parametrize("sfreq_hz", [1200.0, 600.614, 100.0])
def test_resample_plan_interpolates_end_aligned(sfreq_hz):
    n_in = filters.round_half_up(0.75 * sfreq_hz)
    n_out = filters.n_samples_out(filters.round_half_up(0.25 * sfreq_hz), sfreq_hz, 120.0)
    plan = filters.resample_plan(n_in, n_out, sfreq_hz, 120.0)
    t_in = np.arange(n_in) / sfreq_hz
    t_out = t_in[-1] - np.arange(plan.n_out_total - 1, -1, -1) / 120.0
    y = filters.apply_plan(sines(t_in, [3.0, 7.0])[None], plan)[0]
    tol = 1e-4 if sfreq_hz > 120 else 2e-3
    np.testing.assert_allclose(y, sines(t_out, [3.0, 7.0]), atol=tol)
    assert y[-1] == pytest.approx(sines(t_in[-1:], [3.0, 7.0])[0], abs=1e-12)


@pytest.mark.parametrize("sfreq_hz", [1200.0, 600.614])
def test_low_frequency_sine_comes_out_sampled_at_model_rate(sfreq_hz):
    """Through the whole pipeline (lowpass 40 Hz): the 120 Hz samples of the same sine,
    shifted and scaled by the lowpass's own response at that frequency."""
    f_hz = 4.0
    p = make(highpass_hz=None)
    n_pad = p.pad_samples(sfreq_hz)
    n = n_pad + p.window_samples(1.0, sfreq_hz)
    t_in = np.arange(n) / sfreq_hz
    x = np.tile(np.sin(2 * np.pi * f_hz * t_in), (len(CH), 1))
    out = p.transform(x, sfreq_hz, CH, n_pad)[0]

    sos = filters.design_lowpass(40.0, sfreq_hz, 4)
    _, h = sps.sosfreqz(sos, worN=[f_hz], fs=sfreq_hz)
    t_out = t_in[-1] - np.arange(out.size - 1, -1, -1) / 120.0
    expected = np.abs(h[0]) * np.sin(2 * np.pi * f_hz * t_out + np.angle(h[0]))
    np.testing.assert_allclose(out, expected, atol=5e-3)


def test_lowpass_removes_line_noise_and_passes_band():
    fs = 1200.0
    p = make(highpass_hz=None)
    n_pad = p.pad_samples(fs)
    t = np.arange(n_pad + p.window_samples(1.0, fs)) / fs
    out_60 = p.transform(np.tile(np.sin(2 * np.pi * 60 * t + 0.7), (len(CH), 1)), fs, CH, n_pad)
    out_10 = p.transform(np.tile(np.sin(2 * np.pi * 10 * t + 0.7), (len(CH), 1)), fs, CH, n_pad)
    assert np.abs(out_60).max() < 0.25  # about -14 dB for the order-4 Butterworth
    rms_10 = np.sqrt(np.mean(out_10.astype(np.float64) ** 2))
    assert rms_10 == pytest.approx(1 / np.sqrt(2), rel=0.05)


def test_highpass_removes_offset_and_keeps_signal():
    fs = 1000.0
    p = make()
    n_pad = p.pad_samples(fs)
    t = np.arange(n_pad + p.window_samples(1.0, fs)) / fs
    x = np.tile(5.0 + np.sin(2 * np.pi * 10 * t), (len(CH), 1))
    out = p.transform(x, fs, CH, n_pad).astype(np.float64)
    assert abs(out.mean()) < 0.05
    assert np.sqrt(np.mean(out**2)) == pytest.approx(1 / np.sqrt(2), rel=0.05)


def test_baseline_zeroes_the_interval_mean():
    fs = 1200.0
    p = make(baseline_s=(0.0, 0.1), highpass_hz=None)
    n_pad = p.pad_samples(fs)
    x = noise((len(CH), n_pad + p.window_samples(0.5, fs)), scale=1.0) + 3.0
    out = p.transform(x, fs, CH, n_pad)
    np.testing.assert_allclose(out[:, :12].mean(axis=1), 0.0, atol=1e-5)
    assert np.abs(out[:, 12:].mean()) > 0.0


# -- offline / online parity ----------------------------------------------------------------

@pytest.mark.parametrize("sfreq_hz", [1200.0, 600.614])
def test_offline_epochs_match_online_windows(sfreq_hz):
    rng = np.random.default_rng(3)
    n_total = int(6 * sfreq_hz)
    t = np.arange(n_total) / sfreq_hz
    gains = rng.uniform(0.5, 3.0, (len(CH), 1)) * 1e-12
    continuous = (gains * (sines(t, [2.0, 11.0, 23.0, 70.0]) + 0.5)
                  + noise((len(CH), n_total), seed=4)).astype(np.float32)
    names = list(CH[::-1]) + ["STI101"]
    continuous = np.concatenate([continuous[::-1], np.zeros((1, n_total), np.float32)])

    train = make(baseline_s=(0.0, 0.1))
    n_pad = train.pad_samples(sfreq_hz)
    n_times = train.window_samples(0.5, sfreq_hz)
    onsets = [n_pad + 57, 1500, 2400, n_total - n_times - 5]
    epochs = np.stack([continuous[:, s - n_pad:s + n_times] for s in onsets])
    train.fit(epochs, sfreq_hz, names, n_pad)
    offline = train.transform_epochs(epochs, sfreq_hz, names, n_pad)

    # The service side: a checkpoint round trip, then one Window at a time.
    live = Preprocessor.from_dict(json.loads(json.dumps(train.to_dict())))
    for i, s in enumerate(onsets):
        w = window_of(continuous[:, s - n_pad:s + n_times], sfreq_hz, names, n_pad, s - n_pad)
        online = live.transform_window(w)
        err = np.linalg.norm(online - offline[i]) / np.linalg.norm(offline[i])
        assert err <= 1e-5
        # A window carrying more history than needed gives the same result.
        extra = 40
        w2 = window_of(continuous[:, s - n_pad - extra:s + n_times], sfreq_hz, names,
                       n_pad + extra)
        np.testing.assert_array_equal(live.transform_window(w2), online)


def test_history_pad_makes_windowed_lowpass_match_a_continuous_filter():
    """Independent reference: one causal lowpass over the whole recording, read at the
    window's output samples (1200 -> 120 Hz keeps every 10th sample). The 0.5 s history
    is enough for the windowed filter to forget how it started."""
    fs = 1200.0
    p = make(highpass_hz=None)
    n_total = int(4 * fs)
    t = np.arange(n_total) / fs
    x = (np.tile(sines(t, [1.5, 9.0, 31.0, 75.0]), (len(CH), 1))
         + noise((len(CH), n_total), seed=9, scale=0.3)).astype(np.float32)
    sos = filters.design_lowpass(40.0, fs, 4)
    continuous = sps.sosfilt(sos, x.astype(np.float64), axis=-1,
                             zi=sps.sosfilt_zi(sos)[:, None, :] * x[None, :, :1])[0]
    n_pad = p.pad_samples(fs)
    n_times = p.window_samples(0.25, fs)
    for last in (n_pad + n_times + 123, 2500, n_total - 1):
        first = last + 1 - n_times
        out = p.transform(x[:, first - n_pad:last + 1], fs, CH, n_pad)
        expected = continuous[:, last - 10 * (out.shape[1] - 1):last + 1:10]
        np.testing.assert_allclose(out, expected, atol=1e-5)


def test_transform_epochs_equals_per_window_transform_whatever_the_block_size(monkeypatch):
    fs = 1000.0
    p = make()
    n_pad = p.pad_samples(fs)
    epochs = noise((5, len(CH), n_pad + p.window_samples(0.25, fs)), seed=8)
    stacked = p.transform_epochs(epochs, fs, CH, n_pad)
    one_by_one = np.stack([p.transform(e, fs, CH, n_pad) for e in epochs])
    np.testing.assert_array_equal(stacked, one_by_one)
    monkeypatch.setattr(preprocess, "_BLOCK_BYTES", 8 * 5 * epochs.shape[2])  # 5-row blocks
    np.testing.assert_array_equal(p.transform_epochs(epochs, fs, CH, n_pad), stacked)
    # Epochs as a strided view into a larger array (as cut from a recording) work the same.
    larger = np.zeros(epochs.shape[:2] + (epochs.shape[2] + 9,), dtype=np.float32)
    larger[..., 4:-5] = epochs
    view = larger[..., 4:-5]
    assert not view.flags.c_contiguous
    np.testing.assert_array_equal(p.transform_epochs(view, fs, CH, n_pad), stacked)


# -- scaling, clamp, non-finite values --------------------------------------------------------

def fitted(fs=600.614, n_epochs=40, seed=0):
    p = make()
    n_pad = p.pad_samples(fs)
    scales = np.geomspace(1e-13, 1e-11, len(CH))[None, :, None]
    epochs = noise((n_epochs, len(CH), n_pad + p.window_samples(0.25, fs)), seed, 1.0) * scales
    epochs[:, 2] = 7e-12  # a flat channel
    p.fit(epochs, fs, CH, n_pad)
    return p, epochs, fs, n_pad


def test_robust_scaling_gives_zero_median_unit_iqr_on_training_data():
    p, epochs, fs, n_pad = fitted()
    out = p.transform_epochs(epochs, fs, CH, n_pad).astype(np.float64)
    per_ch = np.moveaxis(out, 1, 0).reshape(len(CH), -1)
    q25, q50, q75 = np.percentile(per_ch, [25, 50, 75], axis=1)
    live = [i for i in range(len(CH)) if i != 2]
    np.testing.assert_allclose(q50[live], 0.0, atol=1e-4)
    np.testing.assert_allclose((q75 - q25)[live], 1.0, rtol=1e-4)
    assert np.all(np.isfinite(out))
    np.testing.assert_allclose(out[:, 2], 0.0, atol=1e-3)  # flat channel: 0, not NaN
    assert p.fitted and np.all(p.scale > 0)


def test_clamp_limits_outliers():
    p, epochs, fs, n_pad = fitted()
    spiky = epochs[0].copy()
    spiky[5, -20:] = 1e-6  # a SQUID jump, far outside the training range
    out = p.transform(spiky, fs, CH, n_pad)
    assert np.abs(out).max() == pytest.approx(20.0)
    unclamped = Preprocessor(PreprocessConfig(ch_names=CH, clamp=None), p.center, p.scale)
    assert np.abs(unclamped.transform(spiky, fs, CH, n_pad)).max() > 1e3


def test_nonfinite_input_is_zeroed_and_does_not_propagate():
    p, epochs, fs, n_pad = fitted()
    x = epochs[0].copy()
    x[1, 100] = np.nan
    x[4, 10:20] = np.inf
    x[7, -1] = -np.inf
    out = p.transform(x, fs, CH, n_pad)
    assert np.all(np.isfinite(out))
    zeroed = np.where(np.isfinite(x), x, 0.0)
    np.testing.assert_array_equal(out, p.transform(zeroed, fs, CH, n_pad))


def test_to_dict_from_dict_round_trip_is_exact():
    p, epochs, fs, n_pad = fitted()
    d = json.loads(json.dumps(p.to_dict()))
    assert isinstance(d["center"], list) and isinstance(d["scale"], list)
    q = Preprocessor.from_dict(d)
    assert q.config == p.config
    np.testing.assert_array_equal(q.transform_epochs(epochs, fs, CH, n_pad),
                                  p.transform_epochs(epochs, fs, CH, n_pad))
    unfitted = Preprocessor.from_dict(json.loads(json.dumps(make(baseline_s=(0, 0.1)).to_dict())))
    assert not unfitted.fitted and unfitted.config.baseline_s == (0.0, 0.1)


# -- invalid configuration and input ----------------------------------------------------------

@pytest.mark.parametrize("kw, match", [
    ({"lowpass_hz": 70.0}, "lowpass_hz=70.0 is not below the Nyquist"),
    ({"pad_s": -0.1}, "pad_s=-0.1"),
    ({"highpass_hz": 45.0}, "highpass_hz=45.0"),
    ({"highpass_hz": 0.0}, "highpass_hz=0.0"),
    ({"sfreq_model_hz": -120}, "sfreq_model_hz=-120"),
    ({"baseline_s": (0.2, 0.1)}, "baseline_s"),
    ({"clamp": 0}, "clamp=0"),
    ({"lowpass_order": 0}, "lowpass_order=0"),
    ({"ch_names": ("A", "B", "A")}, "repeats"),
    ({"ch_names": "MEG0111"}, "one string"),
])
def test_invalid_config_is_a_clear_error(kw, match):
    with pytest.raises(ValueError, match=match):
        make(**kw)


def test_invalid_inputs_are_clear_errors():
    p = make()
    x = noise((len(CH), 900))
    with pytest.raises(ValueError, match="n_pad=100 samples of history but the filters need 600"):
        p.transform(x, 1200.0, CH, 100)
    with pytest.raises(ValueError, match="n_pad=-1"):
        p.transform(x, 1200.0, CH, -1)
    with pytest.raises(ValueError, match="sfreq_hz"):
        p.transform(x, 0.0, CH, 600)
    with pytest.raises(ValueError, match="baseline_s"):
        make(baseline_s=(0.0, 0.5)).transform(x, 1200.0, CH, 600)  # window is 0.25 s
    with pytest.raises(ValueError, match="resampling would alias"):
        make(lowpass_hz=None).transform(x, 1200.0, CH, 600)
    with pytest.raises(ValueError, match="Nyquist"):
        p.transform(noise((len(CH), 60)), 60.0, CH, 30)  # 40 Hz lowpass on 60 Hz data
    with pytest.raises(ValueError, match="Unknown preprocessing option"):
        PreprocessConfig.from_dict({"ch_names": ["A"], "notch_hz": 50})
    with pytest.raises(ValueError, match="scale holds"):
        Preprocessor(PreprocessConfig(ch_names=CH), np.zeros(len(CH)), np.zeros(len(CH)))


def test_frequency_response_reports_passband_and_delay():
    p = make(baseline_s=(0.0, 0.1))
    gain, delay_s = p.frequency_response(1200.0, [0.1, 10.0, 40.0, 59.0])
    np.testing.assert_allclose(20 * np.log10(gain[[0, 2]]), -3.01, atol=0.05)
    assert gain[1] == pytest.approx(1.0, abs=1e-3)
    assert gain[3] < 0.25
    assert 0.005 < delay_s[1] < 0.02  # order-4 Butterworth at 40 Hz: about 11 ms at 10 Hz


@pytest.mark.parametrize("sfreq_hz", RATES_HZ)
def test_output_times_are_end_aligned(sfreq_hz):
    p = make(highpass_hz=None, sfreq_model_hz=sfreq_hz / 3)
    n_pad = p.pad_samples(sfreq_hz)
    n_times = p.window_samples(0.5, sfreq_hz)
    times = p.times_s(n_times, sfreq_hz)
    assert times[-1] == pytest.approx((n_times - 1) / sfreq_hz)
    np.testing.assert_allclose(np.diff(times), 3 / sfreq_hz)
    assert 0 <= times[0] < 3 / sfreq_hz
    # A ramp comes out as the ramp read at those times, late by the lowpass's delay.
    _, (delay_s,) = p.frequency_response(sfreq_hz, [1e-3])
    ramp = np.tile(np.arange(n_pad + n_times) / sfreq_hz, (len(CH), 1))
    out = p.transform(ramp, sfreq_hz, CH, n_pad)
    np.testing.assert_allclose(out[0], times + n_pad / sfreq_hz - delay_s, atol=1e-5)
