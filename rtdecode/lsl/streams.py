"""Thin helpers over pylsl: stream descriptions, outlets, resolution, inlets.

Every pylsl object must stay in the thread that created it (StreamReader makes its
resolver and inlet inside its own thread). The rest of rtdecode never imports pylsl:
what it needs (``local_clock``, ``LostError``, the format names) is re-exported here.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pylsl
from pylsl.util import LostError
from pylsl.util import TimeoutError as LslTimeoutError

if TYPE_CHECKING:
    import mne

local_clock = pylsl.local_clock
"""Local LSL clock in seconds (monotonic); the clock that corrected timestamps use."""

__all__ = [
    "COUNTER_CHANNEL",
    "COUNTER_MODULUS",
    "FORMATS",
    "LostError",
    "LslTimeoutError",
    "StreamDescription",
    "StreamNotFoundError",
    "DTYPES",
    "counter_values",
    "describe",
    "find",
    "find_first",
    "inlet_description",
    "local_clock",
    "make_info",
    "make_outlet",
    "not_found_error",
    "open_inlet",
    "pull_into",
    "pull_markers",
    "read_fiff_details",
    "resolve",
    "unwrap_counter",
    "visible_streams",
    "write_fiff_details",
]

FORMATS = {
    "float32": pylsl.cf_float32,
    "double64": pylsl.cf_double64,
    "int16": pylsl.cf_int16,
    "int32": pylsl.cf_int32,
    "string": pylsl.cf_string,
}
_FORMAT_NAMES = {v: k for k, v in FORMATS.items()}
_FORMAT_NAMES.update({pylsl.cf_int8: "int8", pylsl.cf_int64: "int64"})

DTYPES = {
    "float32": np.float32,
    "double64": np.float64,
    "int8": np.int8,
    "int16": np.int16,
    "int32": np.int32,
    "int64": np.int64,
}
"""numpy dtype of each numeric channel format (the layout ``pull_chunk`` writes)."""

COUNTER_CHANNEL = "RTD_COUNTER"
"""Name of the optional sample-counter channel (``rtdecode replay --counter``).

The channel holds the sample's index in the source, counting up by one per sample.
"""

COUNTER_MODULUS = 2**24
"""float32 holds every integer below 2**24 exactly (3.9 h at 1200 Hz); a source may
wrap its counter at this value and readers compare counters modulo it."""


class StreamNotFoundError(RuntimeError):
    """No stream matched; the message lists the streams that were visible."""


@dataclass(frozen=True)
class StreamDescription:
    """What rtdecode knows about a stream, read from (or written to) its LSL info.

    Attributes
    ----------
    name, stype, source_id : str
    sfreq_hz : float
        Nominal rate in Hz (0 for irregular streams).
    n_channels : int
    channel_format : str
        One of ``float32``, ``double64``, ``int16``, ``int32``, ``string``, ...
    ch_names, ch_types, units : tuple of str
        Empty strings where the description does not say.
    positions : ndarray, float, shape (n_channels, 3) or None
        Sensor positions in metres (head frame), NaN where unknown.
    has_description : bool
        False for a peer stream that sent no ``<channels>`` block.
    hostname : str
    fiff_chs : tuple of dict
        mne-lsl's per-channel FIFF fields, where the source sent them (see
        :func:`read_fiff_details`); empty for a resolved (not connected) stream.
    filters : dict
        ``highpass``/``lowpass`` in Hz, where the source sent them.
    """

    name: str
    stype: str
    source_id: str
    sfreq_hz: float
    n_channels: int
    channel_format: str
    ch_names: tuple[str, ...] = ()
    ch_types: tuple[str, ...] = ()
    units: tuple[str, ...] = ()
    positions: np.ndarray | None = field(default=None, compare=False)
    has_description: bool = False
    hostname: str = ""
    fiff_chs: tuple[dict[str, Any], ...] = field(default=(), compare=False)
    filters: dict[str, float] = field(default_factory=dict, compare=False)

    @property
    def counter_index(self) -> int | None:
        """Row of the sample-counter channel, if the stream carries one."""
        try:
            return self.ch_names.index(COUNTER_CHANNEL)
        except ValueError:
            return None


def make_info(
    name: str,
    stype: str,
    sfreq_hz: float,
    ch_names: Sequence[str],
    *,
    ch_types: Sequence[str] | None = None,
    units: Sequence[str] | None = None,
    positions: np.ndarray | None = None,
    source_id: str = "",
    channel_format: str = "float32",
    describe_channels: bool = True,
) -> pylsl.StreamInfo:
    """Build a StreamInfo whose ``<desc>`` lists channels as mne-lsl's player does.

    Each ``<channel>`` has ``label``, ``type``, ``unit`` and, when known, a
    ``<location>`` with ``X``/``Y``/``Z`` in metres. ``sfreq_hz=0`` makes an irregular
    stream (markers). ``describe_channels=False`` leaves ``<desc>`` empty, as some peer
    software does; only ``len(ch_names)`` is used then.
    """
    if channel_format not in FORMATS:
        raise ValueError(
            f"Unknown channel format {channel_format!r}; use one of {sorted(FORMATS)}."
        )
    n = len(ch_names)
    info = pylsl.StreamInfo(name, stype, n, float(sfreq_hz), FORMATS[channel_format], source_id)
    if not describe_channels:
        return info
    chans = info.desc().append_child("channels")
    for i, ch in enumerate(ch_names):
        c = chans.append_child("channel")
        c.append_child_value("label", str(ch))
        c.append_child_value("type", str(ch_types[i]) if ch_types is not None else "")
        c.append_child_value("unit", str(units[i]) if units is not None else "")
        if positions is not None and np.all(np.isfinite(positions[i])):
            loc = c.append_child("location")
            for axis, value in zip("XYZ", positions[i], strict=True):
                loc.append_child_value(axis, repr(float(value)))
    info.desc().append_child_value("manufacturer", "rtdecode")
    return info


def describe(info: pylsl.StreamInfo) -> StreamDescription:
    """Read a StreamInfo (as returned by ``inlet.info()``) into a StreamDescription."""
    n = info.channel_count()
    names: list[str] = []
    types: list[str] = []
    units: list[str] = []
    pos = np.full((n, 3), np.nan)
    ch = info.desc().child("channels").child("channel")
    while not ch.empty() and len(names) < n:
        names.append(ch.child_value("label"))
        types.append(ch.child_value("type"))
        units.append(ch.child_value("unit"))
        loc = ch.child("location")
        if not loc.empty():
            try:
                pos[len(names) - 1] = [float(loc.child_value(a)) for a in "XYZ"]
            except ValueError:
                pass
        ch = ch.next_sibling()
    has_desc = len(names) == n and all(names)
    if not has_desc:
        names, types, units = [], [], []
    fiff_chs, filters = read_fiff_details(info)
    return StreamDescription(
        name=info.name(),
        stype=info.type(),
        source_id=info.source_id(),
        sfreq_hz=float(info.nominal_srate()),
        n_channels=n,
        channel_format=_FORMAT_NAMES.get(info.channel_format(), str(info.channel_format())),
        ch_names=tuple(names),
        ch_types=tuple(types),
        units=tuple(units),
        positions=pos if has_desc and np.isfinite(pos).any() else None,
        has_description=has_desc,
        hostname=info.hostname(),
        fiff_chs=tuple(fiff_chs),
        filters=filters,
    )


def make_outlet(info: pylsl.StreamInfo, chunk_size: int = 0, max_buffered: int = 360):
    """Create an outlet; ``max_buffered`` is in seconds."""
    return pylsl.StreamOutlet(info, chunk_size, max_buffered)


def visible_streams(wait_s: float = 1.0) -> list[StreamDescription]:
    """All streams visible within ``wait_s`` seconds."""
    # A continuous resolver takes the time asked for; liblsl's one-shot resolve can
    # overrun its timeout by seconds when other LSL programs query on the same machine.
    resolver = pylsl.ContinuousResolver(forget_after=max(1.0, 2 * wait_s))
    time.sleep(wait_s)
    return [describe(i) for i in resolver.results()]


#: Longest value put into a resolver's XPath query; longer ones (and values with control
#: characters, which cannot cross liblsl's line-based query packets) are matched in Python.
_MAX_QUERY_VALUE = 512


def _xpath_literal(value: str) -> str:
    """``value`` as an XPath 1.0 string literal, whatever quotes it holds.

    XPath 1.0 has no escapes: a literal is delimited by ``'`` or ``"``, and a value with
    both is built with ``concat()``.

    ``MEG`` gives ``'MEG'``, ``it's`` gives ``"it's"``, and ``a'b"c`` gives
    ``concat('a', "'", 'b"c')``.
    """
    if "'" not in value:
        return f"'{value}'"
    if '"' not in value:
        return f'"{value}"'
    parts = value.split("'")
    return "concat(" + ', "\'", '.join(f"'{p}'" for p in parts) + ")"


def _queryable(value: str) -> bool:
    return len(value) <= _MAX_QUERY_VALUE and value.isprintable()


def _predicate(name: str | None, stype: str | None, source_id: str | None) -> str:
    """The XPath predicate a resolver sends.

    Values that cannot be queried are left out: :func:`_matches` checks every value on what
    comes back.
    """
    terms = []
    given = False
    for prop, value in (("name", name), ("type", stype), ("source_id", source_id)):
        if value:
            given = True
            if _queryable(value):
                terms.append(f"{prop}={_xpath_literal(value)}")
    if not given:
        raise ValueError("Give a stream name, type or source_id to resolve.")
    return " and ".join(terms)


def _matches(
    info: pylsl.StreamInfo, name: str | None, stype: str | None, source_id: str | None
) -> bool:
    """Exact comparison of a resolved stream with what was asked."""
    return all(
        not want or got == want
        for want, got in ((name, info.name()), (stype, info.type()), (source_id, info.source_id()))
    )


def _shown(name: str | None, stype: str | None, source_id: str | None) -> str:
    """What was asked, for messages (long values shortened)."""
    return " and ".join(
        f"{prop}={value[:80] + '...' if len(value) > 80 else value!r}"
        for prop, value in (("name", name), ("type", stype), ("source_id", source_id))
        if value
    )


def find(
    name: str | None = None,
    stype: str | None = None,
    source_id: str | None = None,
    timeout_s: float | None = 1.0,
    *,
    exclude_uids: Collection[str] = (),
    should_stop: Callable[[], bool] | None = None,
    poll_s: float = 0.02,
) -> pylsl.StreamInfo | None:
    """The first stream matching name, type and/or source_id, or None.

    Returns as soon as one is seen; None after ``timeout_s`` (None: no limit) or once
    ``should_stop()`` is true. ``exclude_uids`` skips outlets known to be gone (a
    resolver remembers a vanished stream for a few seconds). Quiet: for retry loops.
    """
    predicate = _predicate(name, stype, source_id)

    def pick(infos: list[pylsl.StreamInfo]) -> pylsl.StreamInfo | None:
        return next((i for i in infos if _matches(i, name, stype, source_id)), None)

    return _resolve_until(predicate, pick, timeout_s, exclude_uids, should_stop, poll_s)


def _resolve_until(
    predicate: str,
    pick: Callable[[list[pylsl.StreamInfo]], pylsl.StreamInfo | None],
    timeout_s: float | None,
    exclude_uids: Collection[str],
    should_stop: Callable[[], bool] | None,
    poll_s: float,
) -> pylsl.StreamInfo | None:
    """Resolve continuously until ``pick`` chooses one of the streams seen.

    Outlets in ``exclude_uids`` are left out; gives up when ``timeout_s`` passes or
    ``should_stop()``.
    """
    # Nothing queryable: every stream comes back and is filtered by ``pick``.
    resolver = pylsl.ContinuousResolver(pred=predicate) if predicate else pylsl.ContinuousResolver()
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        info = pick([i for i in resolver.results() if i.uid() not in exclude_uids])
        if info is not None:
            return info
        if deadline is not None and time.monotonic() >= deadline:
            return None
        if should_stop is not None and should_stop():
            return None
        time.sleep(poll_s)


def find_first(
    names: Sequence[str],
    source_id: str | None = None,
    timeout_s: float | None = 1.0,
    *,
    exclude_uids: Collection[str] = (),
    should_stop: Callable[[], bool] | None = None,
    poll_s: float = 0.02,
) -> pylsl.StreamInfo | None:
    """The first visible stream named one of ``names``, or None.

    An earlier name wins among the streams seen at once; otherwise as :func:`find`.
    """
    names = [n for n in names if n]
    if not names:
        raise ValueError("Give at least one stream name to resolve.")
    queried = [f"name={_xpath_literal(n)}" for n in names if _queryable(n)]
    pred = " or ".join(queried) if len(queried) == len(names) else ""
    if source_id and _queryable(source_id) and pred:
        pred = f"({pred}) and source_id={_xpath_literal(source_id)}"

    def pick(infos: list[pylsl.StreamInfo]) -> pylsl.StreamInfo | None:
        seen = [i for i in infos if not source_id or i.source_id() == source_id]
        return next((i for n in names for i in seen if i.name() == n), None)

    return _resolve_until(pred, pick, timeout_s, exclude_uids, should_stop, poll_s)


def not_found_error(
    name: str | None = None,
    stype: str | None = None,
    source_id: str | None = None,
    timeout_s: float = 0.0,
) -> StreamNotFoundError:
    """The error for a failed resolution; its message lists the streams visible now."""
    seen = visible_streams(1.0)
    listing = (
        ", ".join(f"{s.name!r} (type {s.stype!r}, source_id {s.source_id!r})" for s in seen)
        or "none"
    )
    return StreamNotFoundError(
        f"No LSL stream matching {_shown(name, stype, source_id)} appeared within "
        f"{timeout_s:g} s. Streams visible now: {listing}. Check the name, or that the "
        "source is running and uses the same LSL configuration (--lsl-local for loopback)."
    )


def resolve(
    name: str | None = None,
    stype: str | None = None,
    source_id: str | None = None,
    timeout_s: float = 5.0,
) -> pylsl.StreamInfo:
    """Find one stream by name, type and/or source_id.

    Raises
    ------
    StreamNotFoundError
        When nothing matches within ``timeout_s``; the message lists what was seen.
    """
    info = find(name, stype, source_id, timeout_s)
    if info is None:
        raise not_found_error(name, stype, source_id, timeout_s)
    return info


def inlet_description(inlet, timeout_s: float = 5.0) -> StreamDescription:
    """The full description of a connected inlet's stream.

    Only ``inlet.info()`` carries the ``<desc>`` block (resolved infos do not).
    """
    return describe(inlet.info(timeout_s))


def open_inlet(
    info: pylsl.StreamInfo,
    max_buflen_s: int = 30,
    recover: bool = True,
    dejitter: bool = False,
    clocksync: bool = True,
):
    """An inlet whose timestamps liblsl maps onto the local clock (``proc_clocksync``).

    Dejittering is off by default: it would smooth over the timestamp jumps that gap
    detection looks for, and monotonizing would hide timestamps that go backwards.
    ``clocksync=False`` gives the source's own timestamps (an XDF file stores those and
    the clock offsets separately, as LabRecorder does).
    """
    flags = (pylsl.proc_clocksync if clocksync else 0) | (pylsl.proc_dejitter if dejitter else 0)
    return pylsl.StreamInlet(info, max_buflen=max_buflen_s, recover=recover, processing_flags=flags)


def pull_into(inlet, dest: np.ndarray, timeout_s: float) -> np.ndarray:
    """Pull up to ``len(dest)`` samples straight into ``dest``; the one data pull.

    Waits at most ``timeout_s`` for the first sample and returns as soon as one is there
    (no fixed chunk to fill), without allocating per chunk.

    Parameters
    ----------
    inlet : pylsl.StreamInlet
        A numeric stream's inlet (see :func:`open_inlet`).
    dest : ndarray, shape (n_max, n_channels)
        C-contiguous, of the stream's dtype (``DTYPES``); rows ``[:n]`` are written.
    timeout_s : float
        Seconds to wait for the first sample (0: only what is queued).

    Returns
    -------
    ndarray, shape (n,)
        The samples' timestamps (clock-corrected); ``n`` may be 0.
    """
    _, stamps = inlet.pull_chunk(
        timeout=timeout_s, max_samples=len(dest), dest_obj=dest, min_samples=1, as_numpy=True
    )
    return stamps


def pull_markers(inlet, timeout_s: float, max_samples: int = 64) -> tuple[list, list[float]]:
    """Pull up to ``max_samples`` markers; the one marker pull.

    Returns
    -------
    samples : list
        One list of channel values per marker (strings or numbers), as sent; read them
        with :func:`rtdecode.contracts.marker_text`.
    stamps : list of float
        Their timestamps (clock-corrected).
    """
    return inlet.pull_chunk(timeout=timeout_s, max_samples=max_samples, min_samples=1)


# ---------------------------------------------------------------- sample counter


def counter_values(first_sample: int, n: int) -> np.ndarray:
    """Counter channel values for ``n`` samples starting at absolute index ``first_sample``.

    Returns
    -------
    ndarray, float32, shape (n,)
        ``(first_sample + arange(n)) % COUNTER_MODULUS``, exact in float32.
    """
    idx = (first_sample + np.arange(n, dtype=np.int64)) % COUNTER_MODULUS
    return idx.astype(np.float32)


def unwrap_counter(values: np.ndarray, reference: int | None = None) -> np.ndarray:
    """Absolute sample indices from received counter values (which wrap at 2**24).

    Parameters
    ----------
    values : ndarray, shape (n,)
        Counter channel values in arrival order (float32 or any numeric type).
    reference : int | None
        An absolute index at or before ``values[0]`` and less than 2**24 samples before
        it, e.g. the last index seen in the previous chunk. ``None``: ``values[0]`` is
        taken as absolute (true for the first 2**24 samples of a replay).

    Returns
    -------
    ndarray, int64, shape (n,)
        Assumes the counter only moves forward, by less than 2**24 between two values.
    """
    wrapped = np.asarray(values, dtype=np.float64).astype(np.int64)
    out = np.empty(wrapped.shape, dtype=np.int64)
    if wrapped.size == 0:
        return out
    first = int(wrapped[0])
    if reference is not None:
        first = int(reference) + (first - int(reference)) % COUNTER_MODULUS
    out[0] = first
    out[1:] = first + np.cumsum(np.diff(wrapped) % COUNTER_MODULUS)
    return out


# ------------------------------------------------ FIFF fields in a stream description

# mne-lsl's names for the 12 values of a channel's ``loc`` in the description.
LOC_NAMES = ("R0x", "R0y", "R0z", "Exx", "Exy", "Exz", "Eyx", "Eyy", "Eyz", "Ezx", "Ezy", "Ezz")
FIFF_INT_KEYS = ("kind", "coil_type", "coord_frame")


def write_fiff_details(lsl_info: pylsl.StreamInfo, raw_info: mne.Info) -> None:
    """Add mne-lsl's per-channel FIFF fields and the filter band to a StreamInfo.

    The fields are kind, coil_type, coord_frame and loc from ``raw_info`` (an ``mne.Info``),
    so that mne-lsl and ``rtdecode record`` (:func:`read_fiff_details`) rebuild the full
    ``mne.Info``. Channels past ``raw_info``'s (the counter) are left without them.
    """
    desc = lsl_info.desc()
    ch = desc.child("channels").child("channel")
    for chan in raw_info["chs"]:
        for key in FIFF_INT_KEYS:
            ch.append_child_value(key, str(int(chan[key])))
        loc = ch.append_child("loc")
        for key, value in zip(LOC_NAMES, chan["loc"], strict=True):
            loc.append_child_value(key, repr(float(value)))
        ch = ch.next_sibling()
    filters = desc.append_child("filters")
    filters.append_child_value("highpass", repr(float(raw_info["highpass"])))
    filters.append_child_value("lowpass", repr(float(raw_info["lowpass"])))


def read_fiff_details(lsl_info: pylsl.StreamInfo) -> tuple[list[dict[str, Any]], dict[str, float]]:
    """Per-channel FIFF fields and the filter band from a stream description.

    Returns
    -------
    chs : list of dict
        One dict per ``<channel>``, with the keys that were present among ``kind``,
        ``coil_type``, ``coord_frame`` (int) and ``loc`` (float ndarray, shape (12,)).
    filters : dict
        ``highpass``/``lowpass`` in Hz where present.
    """
    desc = lsl_info.desc()
    chs: list[dict[str, Any]] = []
    ch = desc.child("channels").child("channel")
    while not ch.empty():
        d: dict[str, Any] = {}
        for key in FIFF_INT_KEYS:
            text = ch.child_value(key)
            with contextlib.suppress(ValueError):
                d[key] = int(text)
        loc = ch.child("loc")
        if not loc.empty():
            with contextlib.suppress(ValueError):
                d["loc"] = np.array([float(loc.child_value(k)) for k in LOC_NAMES])
        chs.append(d)
        ch = ch.next_sibling()
    filters: dict[str, float] = {}
    node = desc.child("filters")
    for key in ("highpass", "lowpass"):
        with contextlib.suppress(ValueError):
            filters[key] = float(node.child_value(key))
    return chs, filters
