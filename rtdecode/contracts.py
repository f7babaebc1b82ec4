"""Small frozen dataclasses that the pipeline stages exchange (DESIGN.md, "Contracts").

Nothing here imports torch, pylsl or the server: every stage may import this module.
Arrays are numpy; times are seconds. ``t_lsl``-style times are on the LSL clock of the
source (already corrected to the local LSL clock), ``t_arrived`` is ``time.perf_counter``-
independent local ``pylsl.local_clock()``-compatible time (seconds, monotonic).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from rtdecode._utils.jsonable import jsonable

PROTOCOL_VERSION = 1


@dataclass(frozen=True, slots=True)
class Marker:
    """One event from the marker stream.

    Attributes
    ----------
    t_lsl : float
        Event time on the (corrected) LSL clock.
    value : dict
        Parsed JSON payload, e.g. ``{"image_id": "cat_03", "trial_type": "exp"}``.
        A marker that is not JSON is kept as ``{"raw": "<text>"}``.
    sample : int | None
        Absolute sample index in the data stream, when it could be mapped.
    """

    t_lsl: float
    value: dict[str, Any]
    sample: int | None = None

    @property
    def image_id(self) -> str | None:
        """The payload's ``image_id`` as a string, or None when the marker names no image."""
        v = self.value.get("image_id")
        return None if v is None else str(v)


@dataclass(frozen=True, slots=True)
class Window:
    """A slice of the stream, cut by absolute sample index.

    Attributes
    ----------
    data : ndarray, float32, shape (n_channels, n_times)
        Raw samples, including ``n_pad`` leading samples of history for the filters.
    sfreq_hz : float
        Nominal sampling rate of ``data`` in Hz.
    ch_names : tuple of str
        Channel names, one per row of ``data``.
    first_sample : int
        Absolute stream index of ``data[:, 0]``.
    t_first, t_last : float
        LSL times (clock-corrected) of the first and last sample.
    t_arrived : float
        Local clock (``rtdecode.lsl.local_clock``) when the last sample was pulled.
    n_pad : int
        Leading samples that are filter history, not part of the window proper.
    n_nonfinite : int
        NaN/Inf values found in ``data`` (they are replaced by 0 before preprocessing).
    n_gaps : int
        Gaps (lost samples) detected inside this window.
    marker : Marker | None
        The event that this window is locked to (event-locked mode) or the latest event
        whose onset lies inside or before the window (continuous mode).
    """

    data: np.ndarray
    sfreq_hz: float
    ch_names: tuple[str, ...]
    first_sample: int
    t_first: float
    t_last: float
    t_arrived: float
    n_pad: int = 0
    n_nonfinite: int = 0
    n_gaps: int = 0
    marker: Marker | None = None

    @property
    def n_times(self) -> int:
        """Samples in the window proper, without the leading padding."""
        return int(self.data.shape[1]) - self.n_pad

    @property
    def last_sample(self) -> int:
        """Absolute index of the window's last sample."""
        return self.first_sample + int(self.data.shape[1]) - 1

    @property
    def flagged(self) -> bool:
        """True when the window holds non-finite values or a gap."""
        return self.n_nonfinite > 0 or self.n_gaps > 0


@dataclass(frozen=True, slots=True)
class Gap:
    """Samples missing from a stream before ``sample``.

    The StreamReader detects gaps; the service reports them to viewers and a recording
    keeps them in its summary.

    Attributes
    ----------
    sample : int
        Absolute index (in the reader's ring) of the first sample after the gap.
    n_lost : int
        Samples missing (from the counter when the stream has one, else from time).
    duration_s : float
        Time no sample covers: ``t_after - t_before - 1 / sfreq``.
    t_before, t_after : float
        LSL times (clock-corrected) of the samples on either side.
    reconnect : bool
        True when the source was lost and this gap spans the reconnection.
    detected_by : str
        ``"counter"`` or ``"timestamps"``.
    """

    sample: int
    n_lost: int
    duration_s: float
    t_before: float
    t_after: float
    reconnect: bool = False
    detected_by: str = "timestamps"


@dataclass(frozen=True, slots=True)
class Embedding:
    """What the brain encoder made of one window.

    Attributes
    ----------
    window : Window
    vector : ndarray, float32, shape (dim,) or (n_tokens, dim)
    preprocess_ms, encode_ms : float
    """

    window: Window
    vector: np.ndarray
    preprocess_ms: float
    encode_ms: float


@dataclass(frozen=True, slots=True)
class Frame:
    """One decoded result, as pushed to viewers.

    Attributes
    ----------
    seq : int
        Increases by one per frame produced by the worker.
    first_sample, t_first, t_last, t_arrived : window provenance
    latencies_ms : dict
        Per-stage latency in ms (``queue``, ``preprocess``, ``encode``, ``retrieve``,
        ``generate``, ``encode_image``, ``total``).
    topk : tuple of (gallery_id, score)
    true_id : str | None
        Stimulus shown, when the marker stream says so.
    true_rank : int | None
        Rank (1 = best) of ``true_id`` within the retrieval set, when known.
    lag_s : float | None
        Window end minus the latest stimulus onset (s), None when no onset is known.
        The window ends ``lag_s`` after onset: it covers ``[lag_s - window_s, lag_s)``.
    embedding : Embedding | None
        What the encoder made of the window (in-process consumers such as
        ``rtdecode evaluate-online`` read it; it never goes on the wire).
    image : bytes | None
        Encoded image (``mime``), or None when only retrieval ran for this frame.
    lane : str | None
        Which worker lane made the frame: ``"retrieval"`` (every hop, no image) or
        ``"image"`` (a generated image); None from the single-lane worker, whose frames
        carry retrieval results and, when due, an image.
    window_seq : int | None
        Image frames: the ``seq`` of the retrieval frame of the window the image was
        generated from (the window itself is named by ``first_sample`` and ``t_*``).
    """

    seq: int
    first_sample: int
    t_first: float
    t_last: float
    t_arrived: float
    latencies_ms: dict[str, float]
    topk: tuple[tuple[str, float], ...]
    true_id: str | None = None
    true_rank: int | None = None
    lag_s: float | None = None
    embedding: Embedding | None = None
    image: bytes | None = None
    mime: str = "image/jpeg"
    extra: dict[str, Any] = field(default_factory=dict)
    lane: str | None = None
    window_seq: int | None = None


# ----------------------------------------------------------------- lag
def lag_s(last_sample: int, onset_sample: int, sfreq_hz: float) -> float:
    """A window's lag since a stimulus onset: its end (one sample past its last) minus the onset.

    The one rule of the live worker (``Frame.lag_s``) and of ``rtdecode evaluate-online``'s
    offline scoring; training cuts its windows by the same rule. Rounded to the microsecond.

    Parameters
    ----------
    last_sample : int
        Index of the window's last sample.
    onset_sample : int
        Index of the onset's sample, on the same stream.
    sfreq_hz : float
        The stream's sampling rate.

    Examples
    --------
    >>> lag_s(last_sample=249, onset_sample=0, sfreq_hz=1000.0)
    0.25
    """
    return round((int(last_sample) + 1 - int(onset_sample)) / float(sfreq_hz), 6)


# ----------------------------------------------------------------- errors
class ParameterError(ValueError):
    """A bad argument to a library call; it names the parameter.

    The message is a whole sentence in which ``{param}`` stands for the parameter, so
    that a library caller reads ``speed=0 ...`` and the command line reads
    ``--speed 0 ...`` (``rtdecode.cli`` maps each parameter to its flag).

    Parameters
    ----------
    parameter : str
        The library parameter's name (``"speed"``, ``"window_s"``).
    message : str
        The sentence, with ``{param}`` where the parameter is named.

    Examples
    --------
    >>> str(ParameterError("speed", "{param}=0 must be positive; 1 is real time."))
    'speed=0 must be positive; 1 is real time.'
    """

    def __init__(self, parameter: str, message: str) -> None:
        self.parameter = parameter
        self.template = message
        super().__init__(message.replace("{param}", parameter))

    def naming(self, name: str) -> str:
        """The message with the parameter called ``name`` (a flag, a variable)."""
        return self.template.replace("{param}", name)


# ----------------------------------------------------------------- marker codec
#: A data stream's markers travel on a second stream named ``<name>-markers``.
MARKER_STREAM_SUFFIX = "-markers"


#: mne-lsl's player publishes a file's annotations on ``<name>-annotations``.
ANNOTATION_STREAM_SUFFIX = "-annotations"


def marker_stream_name(name: str) -> str:
    """The name (or source_id) of the marker stream that goes with stream ``name``."""
    return f"{name}{MARKER_STREAM_SUFFIX}"


def annotation_stream_name(name: str) -> str:
    """The name of mne-lsl's annotation stream for stream ``name``.

    It is used as the marker stream when there is no ``<name>-markers``.
    """
    return f"{name}{ANNOTATION_STREAM_SUFFIX}"


def marker_text(sample: Sequence[Any]) -> str:
    """One LSL marker sample as text: one channel as its string, several as a JSON list."""
    if len(sample) == 1:
        return str(sample[0])
    return json.dumps([str(v) if isinstance(v, bytes) else v for v in sample])


def parse_marker(text: str) -> dict[str, Any]:
    """The payload of one marker: its JSON object, or ``{"raw": text}``.

    Examples
    --------
    >>> parse_marker('{"image_id": "cat_03"}')
    {'image_id': 'cat_03'}
    >>> parse_marker("stim/12")
    {'raw': 'stim/12'}
    """
    try:
        value = json.loads(text)
    except (ValueError, TypeError):
        return {"raw": text}
    return value if isinstance(value, dict) else {"raw": text}


def format_marker(value: Mapping[str, Any]) -> str:
    """The text of a marker payload: compact JSON, or the raw text of a non-JSON marker.

    The inverse of :func:`parse_marker`: ``parse_marker(format_marker(v)) == v`` for
    payloads made of JSON values.
    """
    if set(value) == {"raw"}:
        return str(value["raw"])
    return json.dumps(jsonable(dict(value)), separators=(",", ":"), allow_nan=False)
