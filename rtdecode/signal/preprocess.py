"""The preprocessing stage: raw MEG samples -> the model's input, online and offline alike.

Steps, in order (docs/signal.md explains each and why):

1. pick and reorder channels by name to the model's list (:class:`MissingChannelsError`
   names every channel the data lacks);
2. replace non-finite values by 0;
3. causal Butterworth lowpass at the input rate (the anti-alias filter), over the
   window's ``n_pad`` samples of history plus the window itself;
4. resample to the model rate on a grid aligned to the window's newest sample (cubic
   interpolation; any rate ratio);
5. causal Butterworth highpass at the model rate, still over history + window;
6. drop the history; optional baseline (mean over a sub-interval of the window);
7. robust scaling with per-channel median / IQR fitted offline, then clamp.

One private method (``Preprocessor._run``) holds all the arithmetic; online windows
(``transform``, ``transform_window``) and offline epochs (``transform_epochs``, ``fit``)
both call it, so the same samples give the same output whichever way they arrive.

Threads: a Preprocessor is configured (and fitted) once, then only read. The only state
that changes afterwards is a small cache of filter designs and resampling plans, filled
on first use of each (input rate, window length); entries are immutable and dictionary
updates are atomic, so the DecodeWorker thread may call it while other threads do too.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Hashable, Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any, SupportsFloat, TypeVar

import numpy as np
from numpy.typing import ArrayLike

from rtdecode.contracts import Window
from rtdecode.signal import filters

FORMAT_VERSION = 1
# Working-set size of one block of rows (float64 bytes): fits in a core's L2 cache and
# bounds the temporaries, however many epochs are transformed at once.
_BLOCK_BYTES = 1 << 20
# Plans kept per Preprocessor: one per (input rate, history, window length) in use.
_CACHE_SIZE = 16
# A channel whose IQR is below this fraction of the largest IQR is treated as flat.
_SCALE_FLOOR_REL = 1e-8


class MissingChannelsError(ValueError):
    """The data lacks channels that the model needs.

    Attributes
    ----------
    missing : tuple of str
        Every missing channel name, in the model's order.
    """

    def __init__(self, missing: Sequence[str], n_model: int):
        self.missing = tuple(missing)
        names = ", ".join(repr(m) for m in self.missing)
        super().__init__(
            f"The data lacks {len(self.missing)} of the model's {n_model} channels: {names}. "
            f"Feed a recording or stream that has these channels (names must match exactly), "
            f"or use a model trained on the channels you have."
        )


@dataclass(frozen=True)
class PreprocessConfig:
    """What the preprocessing does; stored in every checkpoint.

    Attributes
    ----------
    ch_names : tuple of str
        The model's channels, in the model's order.
    sfreq_model_hz : float
        Rate of the model's input (the paper: 120 Hz).
    highpass_hz : float | None
        Causal Butterworth highpass cut-off, applied at the model rate; None to skip.
    lowpass_hz : float | None
        Causal Butterworth lowpass cut-off, applied at the input rate before resampling
        (the anti-alias filter); must lie below the model rate's Nyquist frequency. None
        only when the input is never faster than the model rate.
    pad_s : float
        History a window carries before its first sample, run through the filters and
        then dropped (``Window.n_pad``; see :meth:`Preprocessor.pad_samples`).
    baseline_s : (float, float) | None
        Start and end, in seconds from the window's start, of the interval whose mean is
        subtracted per channel; None for no baseline.
    clamp : float | None
        Robust-scaled values are clipped to ``[-clamp, clamp]``; None to skip.
    lowpass_order, highpass_order : int
        Butterworth orders (roll-off 6 dB/octave per order; group delay grows with it).
    streaming : bool
        False (checkpoints made before it existed): every window is filtered afresh over
        its ``pad_s`` of history (the block path). True: the filters run continuously
        over the stream with their state carried across chunks
        (:mod:`rtdecode.signal.streaming`), online and offline.
    """

    ch_names: tuple[str, ...]
    sfreq_model_hz: float = 120.0
    highpass_hz: float | None = 0.1
    lowpass_hz: float | None = 40.0
    pad_s: float = 0.5
    baseline_s: tuple[float, float] | None = None
    clamp: float | None = 20.0
    lowpass_order: int = 4
    highpass_order: int = 2
    streaming: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.ch_names, str):
            raise ValueError(
                f"ch_names={self.ch_names!r} is one string; give a sequence of channel names."
            )
        names = tuple(str(c) for c in self.ch_names)
        object.__setattr__(self, "ch_names", names)
        if not names:
            raise ValueError("ch_names is empty; give the model's channel names in order.")
        dup = sorted({c for c in names if names.count(c) > 1})
        if dup:
            raise ValueError(f"ch_names repeats {dup}; each model channel must appear once.")
        fs = _positive(self.sfreq_model_hz, "sfreq_model_hz")
        object.__setattr__(self, "sfreq_model_hz", fs)
        nyq = fs / 2
        if self.lowpass_hz is not None:
            lp = _positive(self.lowpass_hz, "lowpass_hz")
            if lp >= nyq:
                raise ValueError(
                    f"lowpass_hz={lp} is not below the Nyquist frequency {nyq:g} Hz of the "
                    f"model rate sfreq_model_hz={fs:g}; choose lowpass_hz < {nyq:g} (e.g. "
                    f"{nyq / 1.5:g}) or raise sfreq_model_hz."
                )
            object.__setattr__(self, "lowpass_hz", lp)
        if self.highpass_hz is not None:
            hp = _positive(self.highpass_hz, "highpass_hz")
            top = self.lowpass_hz if self.lowpass_hz is not None else nyq
            if hp >= top:
                raise ValueError(
                    f"highpass_hz={hp} must lie below {top:g} Hz (the lowpass cut-off, or "
                    f"the model rate's Nyquist frequency); lower it or set it to None."
                )
            object.__setattr__(self, "highpass_hz", hp)
        pad = float(self.pad_s)
        if not math.isfinite(pad) or pad < 0:
            raise ValueError(
                f"pad_s={self.pad_s} must be a finite number of seconds >= 0 (0.5 is a good "
                f"default: it lets the filters settle before the window starts)."
            )
        object.__setattr__(self, "pad_s", pad)
        if self.baseline_s is not None:
            try:
                start, end = (float(v) for v in self.baseline_s)
            except (TypeError, ValueError):
                raise ValueError(
                    f"baseline_s={self.baseline_s!r} must be None or a pair (start_s, end_s)."
                ) from None
            if not (math.isfinite(start) and math.isfinite(end) and 0 <= start < end):
                raise ValueError(
                    f"baseline_s={self.baseline_s!r} must satisfy 0 <= start_s < end_s "
                    f"(seconds from the window's start)."
                )
            object.__setattr__(self, "baseline_s", (start, end))
        if self.clamp is not None:
            object.__setattr__(self, "clamp", _positive(self.clamp, "clamp"))
        for name in ("lowpass_order", "highpass_order"):
            order = getattr(self, name)
            if isinstance(order, bool) or not isinstance(order, int) or not 1 <= order <= 10:
                raise ValueError(f"{name}={order!r} must be an integer from 1 to 10.")

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict (tuples become lists)."""
        d = asdict(self)
        d["ch_names"] = list(self.ch_names)
        d["baseline_s"] = None if self.baseline_s is None else list(self.baseline_s)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreprocessConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error.

        They would be ignored settings, and a silently ignored filter breaks train/serve parity.
        """
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"Unknown preprocessing option(s) {unknown}; known options are {sorted(known)}."
            )
        d = dict(d)
        if d.get("baseline_s") is not None:
            d["baseline_s"] = tuple(d["baseline_s"])
        return cls(**d)


def _positive(value: SupportsFloat | str, name: str) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}={value!r} must be a positive number.") from None
    if not (math.isfinite(v) and v > 0):
        raise ValueError(f"{name}={value!r} must be a positive, finite number.")
    return v


@dataclass(frozen=True, slots=True)
class _Plan:
    """Everything precomputed for one (input rate, history samples, window samples)."""

    sos_low: np.ndarray | None
    zi_low: np.ndarray | None
    resample: filters.ResamplePlan
    baseline: slice | None


class Preprocessor:
    """Turns raw windows or epochs into the model's input (see the module docstring).

    Parameters
    ----------
    config : PreprocessConfig
    center, scale : ndarray, shape (n_model_channels,), optional
        Robust-scaling statistics (per-channel median and IQR of the unscaled output),
        usually from :meth:`fit`; both or neither. Without them, the output stays in the
        input's units and is not clamped.
    """

    def __init__(self, config: PreprocessConfig, center: np.ndarray | None = None,
                 scale: np.ndarray | None = None):
        if not isinstance(config, PreprocessConfig):
            raise TypeError(
                f"config must be a PreprocessConfig, not {type(config).__name__}; build one "
                f"with PreprocessConfig(ch_names=...)."
            )
        self._config = config
        self._center: np.ndarray | None = None
        self._scale: np.ndarray | None = None
        self._set_stats(center, scale)
        if config.highpass_hz is not None:
            self._sos_high = filters.design_highpass(
                config.highpass_hz, config.sfreq_model_hz, config.highpass_order
            )
            self._zi_high = filters.steady_state(self._sos_high)
        self._plans: OrderedDict[tuple, _Plan] = OrderedDict()
        self._picks: OrderedDict[tuple, np.ndarray] = OrderedDict()

    # -- properties ---------------------------------------------------------------------

    @property
    def config(self) -> PreprocessConfig:
        """The preprocessing configuration."""
        return self._config

    @property
    def ch_names(self) -> tuple[str, ...]:
        """Names of the input channels, in the order the model reads them."""
        return self._config.ch_names

    @property
    def n_channels(self) -> int:
        """Number of input channels."""
        return len(self._config.ch_names)

    @property
    def center(self) -> np.ndarray | None:
        """Per-channel median of the unscaled output, shape (n_model_channels,)."""
        return None if self._center is None else self._center.copy()

    @property
    def scale(self) -> np.ndarray | None:
        """Per-channel IQR (floored) of the unscaled output, shape (n_model_channels,)."""
        return None if self._scale is None else self._scale.copy()

    @property
    def fitted(self) -> bool:
        """True once the per-channel scaling has been fitted."""
        return self._scale is not None

    def __repr__(self) -> str:
        c = self._config
        return (
            f"Preprocessor({self.n_channels} channels, {c.highpass_hz}-{c.lowpass_hz} Hz, "
            f"{c.sfreq_model_hz:g} Hz, pad {c.pad_s:g} s, baseline {c.baseline_s}, "
            f"clamp {c.clamp}, {'fitted' if self.fitted else 'not fitted'})"
        )

    # -- sizes --------------------------------------------------------------------------

    def pad_samples(self, sfreq_in_hz: float) -> int:
        """Leading history samples a window must carry at ``sfreq_in_hz``.

        ``floor(pad_s * sfreq_in_hz)``, so that a cut made with any rounding of
        ``pad_s * sfreq`` (round, ceil) carries enough. Windows may carry more (the extra,
        oldest, samples are ignored and the output is unchanged) but not fewer.
        """
        return int(math.floor(self._config.pad_s * _positive(sfreq_in_hz, "sfreq_hz") + 1e-9))

    def window_samples(self, window_s: float, sfreq_in_hz: float) -> int:
        """Input samples of a window of ``window_s`` seconds: ``round(window_s * sfreq)``."""
        return filters.round_half_up(
            _positive(window_s, "window_s") * _positive(sfreq_in_hz, "sfreq_hz")
        )

    def n_times_out(self, window_s: float) -> int:
        """Output samples for a window of ``window_s`` seconds.

        ``round(window_s * sfreq_model_hz)`` (halves up): a window of n samples lasts
        n / sfreq seconds at any rate. 0.25 s -> 30 samples at 120 Hz; the paper's
        181-sample epochs (-0.5 .. 1.0 s, both ends included) are ``window_s = 181 / 120``.
        It equals the width of :meth:`transform`'s output for windows of
        :meth:`window_samples` samples whenever the input rate is at least the model rate
        and ``window_s * sfreq_model_hz`` is a whole number.
        """
        return max(1, filters.round_half_up(
            _positive(window_s, "window_s") * self._config.sfreq_model_hz
        ))

    def times_s(self, n_times: int, sfreq_in_hz: float) -> np.ndarray:
        """Times of the output samples, in seconds from the window's first sample.

        The grid is aligned to the window's END: the last output sample is the newest
        input sample, ``(n_times - 1) / sfreq_in_hz``, and outputs are ``1 /
        sfreq_model_hz`` apart before it (so the first output usually sits a fraction of
        a model sample after the window's start, e.g. 7.5 ms at 1200 -> 120 Hz).

        Parameters
        ----------
        n_times : int
            Input samples in the window proper (without history).
        sfreq_in_hz : float

        Returns
        -------
        times_s : ndarray, float64, shape (n_times_out,)
        """
        fs_in = _positive(sfreq_in_hz, "sfreq_hz")
        fs_model = self._config.sfreq_model_hz
        n_out = filters.n_samples_out(int(n_times), fs_in, fs_model)
        return (n_times - 1) / fs_in - np.arange(n_out - 1, -1, -1) / fs_model

    # -- transforms ---------------------------------------------------------------------

    def transform(self, data: np.ndarray, sfreq_hz: float, ch_names: Sequence[str],
                  n_pad: int) -> np.ndarray:
        """Preprocess one window.

        Parameters
        ----------
        data : ndarray, shape (n_channels_in, n_pad + n_times)
            Raw samples, oldest first, with ``n_pad >= pad_samples(sfreq_hz)`` samples
            of history before the window.
        sfreq_hz : float
            Input rate.
        ch_names : sequence of str, length n_channels_in
            Names of ``data``'s rows; extra channels are ignored.
        n_pad : int
            History samples at the start of ``data``.

        Returns
        -------
        out : ndarray, float32, shape (n_model_channels, n_times_out)
        """
        data = np.asarray(data)
        if data.ndim != 2:
            raise ValueError(
                f"data has shape {data.shape}; transform takes one window of shape "
                f"(n_channels, n_times) (use transform_epochs for a stack of epochs)."
            )
        return self._run(data[None], sfreq_hz, ch_names, n_pad, scaled=True)[0]

    def transform_window(self, window: Window) -> np.ndarray:
        """Preprocess a :class:`~rtdecode.contracts.Window` (same as :meth:`transform`).

        Returns
        -------
        out : ndarray, float32, shape (n_model_channels, n_times_out)
        """
        return self.transform(window.data, window.sfreq_hz, window.ch_names, window.n_pad)

    def transform_epochs(self, epochs: np.ndarray, sfreq_hz: float, ch_names: Sequence[str],
                         n_pad: int, *, scaled: bool = True) -> np.ndarray:
        """Preprocess a stack of epochs with the same arithmetic as :meth:`transform`.

        Parameters
        ----------
        epochs : ndarray, shape (n_epochs, n_channels_in, n_pad + n_times)
            Cut from the continuous recording with ``n_pad`` samples of history each.
        sfreq_hz, ch_names, n_pad
            As for :meth:`transform`.
        scaled : bool
            False: leave the robust scaling and clamp out (what :meth:`fit` measures).

        Returns
        -------
        out : ndarray, float32, shape (n_epochs, n_model_channels, n_times_out)
        """
        return self._run(epochs, sfreq_hz, ch_names, n_pad, scaled=scaled)

    def fit(self, epochs: np.ndarray, sfreq_hz: float, ch_names: Sequence[str],
            n_pad: int) -> Preprocessor:
        """Fit robust-scaling statistics on training epochs.

        ``center`` is each channel's median and ``scale`` its interquartile range, over
        all epochs and time points of the preprocessed but not yet scaled epochs (as
        scikit-learn's RobustScaler); a flat channel's scale is floored so that it maps
        to 0 instead of NaN.

        Parameters
        ----------
        epochs : ndarray, shape (n_epochs, n_channels_in, n_pad + n_times)
        sfreq_hz, ch_names, n_pad
            As for :meth:`transform`.

        Returns
        -------
        self
        """
        return self.fit_unscaled(self.transform_epochs(epochs, sfreq_hz, ch_names, n_pad,
                                                       scaled=False))

    def fit_unscaled(self, unscaled: np.ndarray) -> Preprocessor:
        """Fit robust-scaling statistics on preprocessed, not yet scaled, windows.

        The statistic of :meth:`fit` (which calls this); the streaming path gives it the
        training windows sliced from :func:`~rtdecode.signal.streaming.preprocess_recording`'s
        output and passed through ``finish(..., scaled=False)``.

        Parameters
        ----------
        unscaled : ndarray, shape (n_windows, n_model_channels, n_times_out)

        Returns
        -------
        self
        """
        unscaled = np.asarray(unscaled)
        if unscaled.ndim != 3 or unscaled.shape[1] != self.n_channels:
            raise ValueError(
                f"unscaled has shape {unscaled.shape}; give (n_windows, {self.n_channels}, "
                f"n_times_out) in the model's channel order."
            )
        # One channel at a time: a float64 copy of all channels at once can be GBs.
        q25, q50, q75 = np.array([
            np.percentile(unscaled[:, c].astype(np.float64), [25, 50, 75])
            for c in range(self.n_channels)
        ]).T
        iqr = q75 - q25
        positive = iqr[iqr > 0]
        floor = _SCALE_FLOOR_REL * positive.max() if positive.size else 1.0
        self._set_stats(q50, np.maximum(iqr, floor))
        return self

    def frequency_response(self, sfreq_in_hz: float,
                           freqs_hz: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
        """Gain and group delay of the filter chain for data at ``sfreq_in_hz``.

        The lowpass runs at the input rate and the highpass at the model rate; the cubic
        interpolation between them adds (almost) no delay and is not included.

        Parameters
        ----------
        sfreq_in_hz : float
        freqs_hz : sequence of float, shape (n_freqs,)
            Frequencies below the model rate's Nyquist frequency.

        Returns
        -------
        gain : ndarray, float64, shape (n_freqs,)
            Amplitude gain (1 = passed unchanged).
        group_delay_s : ndarray, float64, shape (n_freqs,)
            Seconds by which a narrow-band signal at each frequency comes out late.
        """
        freqs_hz = np.asarray(freqs_hz, dtype=np.float64)
        h = np.ones(freqs_hz.shape, dtype=complex)
        delay = np.zeros(freqs_hz.shape)
        stages = [(self._lowpass(_positive(sfreq_in_hz, "sfreq_hz")), sfreq_in_hz)]
        if self._config.highpass_hz is not None:
            stages.append((self._sos_high, self._config.sfreq_model_hz))
        for sos, fs in stages:
            if sos is not None:
                h_stage, d_stage = filters.sos_response(sos, freqs_hz, fs)
                h, delay = h * h_stage, delay + d_stage
        return np.abs(h), delay

    # -- serialisation ------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """JSON-able description: config and statistics (lists), for checkpoints."""
        return {
            "version": FORMAT_VERSION,
            "config": self._config.to_dict(),
            "center": None if self._center is None else self._center.tolist(),
            "scale": None if self._scale is None else self._scale.tolist(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Preprocessor:
        """Rebuild a Preprocessor from :meth:`to_dict`'s output."""
        version = d.get("version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"Preprocessor format version {version!r} is not supported (this rtdecode "
                f"reads version {FORMAT_VERSION}); re-export the checkpoint with it."
            )
        config = PreprocessConfig.from_dict(d["config"])
        return cls(config, center=d.get("center"), scale=d.get("scale"))

    # -- internals ----------------------------------------------------------------------

    def _set_stats(self, center: ArrayLike | None, scale: ArrayLike | None) -> None:
        if (center is None) != (scale is None):
            raise ValueError("Give both center and scale (robust-scaling statistics) or neither.")
        if center is None:
            self._center = self._scale = None
            return
        center = np.asarray(center, dtype=np.float64).reshape(-1)
        scale = np.asarray(scale, dtype=np.float64).reshape(-1)
        for name, arr in (("center", center), ("scale", scale)):
            if arr.shape != (self.n_channels,):
                raise ValueError(
                    f"{name} has {arr.size} values but the model has {self.n_channels} "
                    f"channels; give one value per channel."
                )
            if not np.all(np.isfinite(arr)):
                raise ValueError(f"{name} holds non-finite values; refit the statistics.")
        if np.any(scale <= 0):
            raise ValueError(
                f"scale holds {int(np.sum(scale <= 0))} value(s) <= 0; scales must be positive."
            )
        self._center, self._scale = center, scale

    def _pick(self, ch_names: Sequence[str], n_rows: int) -> np.ndarray:
        """Row indices taking the data's channels to the model's order."""
        key = tuple(ch_names)
        if len(key) != n_rows:
            raise ValueError(
                f"The data has {n_rows} channels but {len(key)} channel names were given; "
                f"give one name per row."
            )
        if key in self._picks:
            return self._picks[key]
        position: dict[str, int] = {}
        repeated = set()
        for i, name in enumerate(key):
            if name in position:
                repeated.add(name)
            position.setdefault(name, i)
        model = self._config.ch_names
        missing = [c for c in model if c not in position]
        if missing:
            raise MissingChannelsError(missing, len(model))
        ambiguous = sorted(repeated & set(model))
        if ambiguous:
            raise ValueError(
                f"The data names channel(s) {ambiguous} more than once; each channel the "
                f"model uses must appear once."
            )
        index = np.array([position[c] for c in model], dtype=np.intp)
        _remember(self._picks, key, index)
        return index

    def _lowpass(self, sfreq_hz: float) -> np.ndarray | None:
        """The anti-alias lowpass for input at ``sfreq_hz`` (None when configured off)."""
        c = self._config
        if c.lowpass_hz is not None:
            return filters.design_lowpass(c.lowpass_hz, sfreq_hz, c.lowpass_order)
        if sfreq_hz > c.sfreq_model_hz:
            raise ValueError(
                f"lowpass_hz is None but the input rate {sfreq_hz:g} Hz is above the model "
                f"rate {c.sfreq_model_hz:g} Hz, so resampling would alias; set lowpass_hz "
                f"(e.g. 40) to filter before resampling."
            )
        return None

    def _plan(self, sfreq_hz: float, n_pad: int, n_times: int) -> _Plan:
        key = (sfreq_hz, n_pad, n_times)
        plan = self._plans.get(key)
        if plan is not None:
            return plan
        c = self._config
        sos_low = self._lowpass(sfreq_hz)
        zi_low = None if sos_low is None else filters.steady_state(sos_low)
        n_out = filters.n_samples_out(n_times, sfreq_hz, c.sfreq_model_hz)
        resample = filters.resample_plan(n_pad + n_times, n_out, sfreq_hz, c.sfreq_model_hz)
        baseline = self._baseline_slice(n_out)
        plan = _Plan(sos_low, zi_low, resample, baseline)
        _remember(self._plans, key, plan)
        return plan

    def _check_layout(self, shape: tuple[int, ...], sfreq_hz: float,
                      n_pad: int | np.integer) -> tuple[float, int, int]:
        """Validate (rate, history) for data of ``shape``; return (rate, skip, history)."""
        sfreq_hz = _positive(sfreq_hz, "sfreq_hz")
        if isinstance(n_pad, bool) or int(n_pad) != n_pad or n_pad < 0:
            raise ValueError(f"n_pad={n_pad!r} must be a whole number of samples >= 0.")
        n_pad = int(n_pad)
        need = self.pad_samples(sfreq_hz)
        if n_pad < need:
            raise ValueError(
                f"The data carries n_pad={n_pad} samples of history but the filters need "
                f"{need} at {sfreq_hz:g} Hz (pad_s={self._config.pad_s:g}); cut windows and "
                f"epochs with Preprocessor.pad_samples(sfreq_hz) leading samples."
            )
        if shape[-1] - n_pad < 1:
            raise ValueError(
                f"The data has {shape[-1]} samples, all of them history (n_pad={n_pad}); "
                f"give at least one sample after the history."
            )
        return sfreq_hz, n_pad - need, need

    def _run(self, x: np.ndarray, sfreq_hz: float, ch_names: Sequence[str], n_pad: int,
             *, scaled: bool) -> np.ndarray:
        """The one code path, from raw epochs to model input.

        (n_epochs, n_channels_in, n_pad + n_times) -> float32 (n_epochs, n_model_channels,
        n_times_out). Rows (epoch x channel) go through :meth:`_rows` in blocks of a fixed byte
        size, so one window and a thousand epochs see the same per-row arithmetic.
        """
        x = np.asarray(x)
        if x.ndim != 3:
            raise ValueError(
                f"epochs has shape {x.shape}; give (n_epochs, n_channels, n_times) "
                f"(use transform for a single window)."
            )
        sfreq_hz, skip, n_hist = self._check_layout(x.shape, sfreq_hz, n_pad)
        pick = self._pick(ch_names, x.shape[1])
        n_epochs, _, n_all = x.shape
        n_model = self.n_channels
        plan = self._plan(sfreq_hz, n_hist, n_all - skip - n_hist)
        # Output row r is epoch r // n_model, input channel pick[r % n_model]. Indexing x
        # with both (not a reshaped copy) keeps views of a large recording uncopied.
        epoch_of = np.repeat(np.arange(n_epochs), n_model)
        channel_of = np.tile(pick, n_epochs)
        stats = None
        if scaled and self._scale is not None:
            stats = (np.tile(self._center, n_epochs), np.tile(self._scale, n_epochs))
        out = np.empty((epoch_of.size, plan.resample.n_out), dtype=np.float32)
        # Blocks of about _BLOCK_BYTES of float64: fresh multi-MB temporaries cost page
        # faults on every call (glibc maps and unmaps them), small ones are reused.
        step = max(1, _BLOCK_BYTES // (8 * (n_all - skip)))
        for i in range(0, epoch_of.size, step):
            rows = slice(i, i + step)
            out[rows] = self._rows(
                x[epoch_of[rows], channel_of[rows], skip:], plan, n_hist,
                None if stats is None else (stats[0][rows], stats[1][rows]),
            )
        return out.reshape(n_epochs, n_model, plan.resample.n_out)

    def _rows(self, raw: np.ndarray, plan: _Plan, n_hist: int,
              stats: tuple[np.ndarray, np.ndarray] | None) -> np.ndarray:
        """Per-row arithmetic. raw: (n_rows, n_hist + n_times) -> (n_rows, n_times_out)."""
        y = raw.astype(np.float64, copy=False)  # raw is already a fresh copy
        finite = np.isfinite(y)
        if not finite.all():
            y[~finite] = 0.0
        # Filters start in the steady state of the history's mean (of the first sample
        # without history): one sample's noise would otherwise become an offset.
        level = y[:, :n_hist].mean(axis=-1) if n_hist else y[:, 0].copy()
        if plan.sos_low is not None:
            y = filters.causal_filter(y, plan.sos_low, plan.zi_low, level)
        y = filters.apply_plan(y, plan.resample)
        if self._config.highpass_hz is not None:
            y = filters.causal_filter(y, self._sos_high, self._zi_high, level)
        y = y[:, plan.resample.n_pad_out:]
        return self._finish(y, plan.baseline, stats, to_float32=False)

    def finish(self, y: np.ndarray, *, scaled: bool = True) -> np.ndarray:
        """Baseline, then (``scaled``) robust scaling and clamp, of model-rate windows.

        The tail the streaming path applies to each slice of its model-rate output
        (:meth:`StreamingPreprocessor.window` calls the same arithmetic).

        Parameters
        ----------
        y : ndarray, shape (..., n_model_channels, n_times_out)
            Filtered and resampled, in the model's channel order.
        scaled : bool
            False: baseline only (the input of :meth:`fit_unscaled`).

        Returns
        -------
        ndarray, float32, same shape
        """
        y = np.asarray(y, dtype=np.float64)
        return self._finish(y, self._baseline_slice(y.shape[-1]), True if scaled else None)

    def _finish(self, y: np.ndarray, baseline: slice | None,
                stats: tuple[np.ndarray, np.ndarray] | None | bool = True,
                to_float32: bool = True) -> np.ndarray:
        """Baseline, robust scaling and clamp of model-rate rows.

        The block path's and the streaming path's one tail. ``stats=True``: this Preprocessor's
        own statistics.
        """
        if stats is True:
            stats = None if self._scale is None else (self._center, self._scale)
        if baseline is not None:
            y = y - y[..., baseline].mean(axis=-1, keepdims=True)
        if stats is not None:
            y = (y - stats[0][:, None]) / stats[1][:, None]
            if self._config.clamp is not None:
                np.clip(y, -self._config.clamp, self._config.clamp, out=y)
        return y.astype(np.float32) if to_float32 else y

    def _baseline_slice(self, n_out: int) -> slice | None:
        """Output samples of the baseline interval for a window of ``n_out`` outputs."""
        c = self._config
        if c.baseline_s is None:
            return None
        start = filters.round_half_up(c.baseline_s[0] * c.sfreq_model_hz)
        stop = filters.round_half_up(c.baseline_s[1] * c.sfreq_model_hz)
        if stop > n_out or stop <= start:
            raise ValueError(
                f"baseline_s={c.baseline_s} covers output samples {start}..{stop} but "
                f"the window has {n_out} ({n_out / c.sfreq_model_hz:g} s); choose a "
                f"baseline inside the window or lengthen the window."
            )
        return slice(start, stop)


_K = TypeVar("_K", bound=Hashable)
_V = TypeVar("_V")


def _remember(cache: OrderedDict[_K, _V], key: _K, value: _V) -> None:
    cache[key] = value
    while len(cache) > _CACHE_SIZE:
        cache.popitem(last=False)
