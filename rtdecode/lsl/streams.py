"""Thin helpers over pylsl: stream descriptions, outlets, resolution, inlets.

Every pylsl object must stay in the thread that created it (StreamReader makes its
resolver and inlet inside its own thread). The rest of rtdecode never imports pylsl:
what it needs (``local_clock``, ``LostError``, the format names) is re-exported here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass, field

import numpy as np
import pylsl
from pylsl.util import LostError
from pylsl.util import TimeoutError as LslTimeoutError

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
    "describe",
    "find",
    "inlet_description",
    "local_clock",
    "make_info",
    "make_outlet",
    "not_found_error",
    "open_inlet",
    "resolve",
    "visible_streams",
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
    sfreq : float
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
    """

    name: str
    stype: str
    source_id: str
    sfreq: float
    n_channels: int
    channel_format: str
    ch_names: tuple[str, ...] = ()
    ch_types: tuple[str, ...] = ()
    units: tuple[str, ...] = ()
    positions: np.ndarray | None = field(default=None, compare=False)
    has_description: bool = False
    hostname: str = ""

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
    sfreq: float,
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
    ``<location>`` with ``X``/``Y``/``Z`` in metres. ``sfreq=0`` makes an irregular
    stream (markers). ``describe_channels=False`` leaves ``<desc>`` empty, as some peer
    software does; only ``len(ch_names)`` is used then.
    """
    if channel_format not in FORMATS:
        raise ValueError(
            f"Unknown channel format {channel_format!r}; use one of {sorted(FORMATS)}."
        )
    n = len(ch_names)
    info = pylsl.StreamInfo(name, stype, n, float(sfreq), FORMATS[channel_format], source_id)
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
    return StreamDescription(
        name=info.name(),
        stype=info.type(),
        source_id=info.source_id(),
        sfreq=float(info.nominal_srate()),
        n_channels=n,
        channel_format=_FORMAT_NAMES.get(info.channel_format(), str(info.channel_format())),
        ch_names=tuple(names),
        ch_types=tuple(types),
        units=tuple(units),
        positions=pos if has_desc and np.isfinite(pos).any() else None,
        has_description=has_desc,
        hostname=info.hostname(),
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


def _predicate(name: str | None, stype: str | None, source_id: str | None) -> str:
    terms = []
    for prop, value in (("name", name), ("type", stype), ("source_id", source_id)):
        if value:
            terms.append(f"{prop}='{value}'")
    if not terms:
        raise ValueError("Give a stream name, type or source_id to resolve.")
    return " and ".join(terms)


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
    resolver = pylsl.ContinuousResolver(pred=_predicate(name, stype, source_id))
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while True:
        for info in resolver.results():
            if info.uid() not in exclude_uids:
                return info
        if deadline is not None and time.monotonic() >= deadline:
            return None
        if should_stop is not None and should_stop():
            return None
        time.sleep(poll_s)


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
        f"No LSL stream matching {_predicate(name, stype, source_id)} appeared within "
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
):
    """An inlet whose timestamps liblsl maps onto the local clock (``proc_clocksync``).

    Dejittering is off by default: it would smooth over the timestamp jumps that gap
    detection looks for, and monotonizing would hide timestamps that go backwards.
    """
    flags = pylsl.proc_clocksync | (pylsl.proc_dejitter if dejitter else 0)
    return pylsl.StreamInlet(info, max_buflen=max_buflen_s, recover=recover, processing_flags=flags)
