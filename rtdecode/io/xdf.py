"""XDF files (LabRecorder's format): read with pyxdf, written by our own writer.

XDF (https://github.com/sccn/xdf/wiki/Specifications) is the magic bytes ``XDF:`` and a
sequence of chunks, each ``[NumLengthBytes][Length][Tag][Content]``: the length is a
variable-length integer (one byte saying 1, 4 or 8, then that many little-endian bytes)
and counts the 2-byte tag and the content. Tags:

1. FileHeader: XML ``<info><version>1.0</version>...``;
2. StreamHeader: stream id (uint32) + the stream's XML info (name, type, channel count,
   nominal rate, channel format, source id, channel labels in ``desc/channels``);
3. Samples: stream id + number of samples (variable-length int) + per sample a
   timestamp (a byte 8 then a float64, or 0 for "deduce it") and the values (numbers in
   the channel format, little endian; strings as variable-length length + UTF-8 bytes);
4. ClockOffset: stream id + collection time (float64) + offset (float64);
5. Boundary: a fixed 16-byte UUID that lets a reader resynchronise in a damaged file;
6. StreamFooter: stream id + XML (first and last timestamp, sample count, offsets).

:func:`read_xdf` returns :class:`XdfStream` objects (data and marker streams alike,
regular or irregular). :class:`XdfWriter` writes a file chunk by chunk (every timestamp
written, so a round trip is exact); :func:`write_xdf` writes whole streams at once.

Threads: an XdfWriter belongs to the thread that made it; reading is a plain function.
"""

from __future__ import annotations

import struct
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any
from xml.sax.saxutils import escape

import numpy as np
import numpy.typing as npt

__all__ = ["XdfStream", "XdfWriter", "read_xdf", "write_xdf"]

MAGIC = b"XDF:"
BOUNDARY_UUID = bytes(
    [0x43, 0xA5, 0x46, 0xDC, 0xCB, 0xF5, 0x41, 0x0F, 0xB3, 0x0E, 0xD5, 0x46, 0x73, 0x83, 0xCB, 0xE4]
)
TAG_FILE_HEADER, TAG_STREAM_HEADER, TAG_SAMPLES = 1, 2, 3
TAG_CLOCK_OFFSET, TAG_BOUNDARY, TAG_STREAM_FOOTER = 4, 5, 6
# XDF channel format -> little-endian numpy dtype (None: strings)
FORMATS: dict[str, str | None] = {
    "float32": "<f4",
    "double64": "<f8",
    "int8": "<i1",
    "int16": "<i2",
    "int32": "<i4",
    "int64": "<i8",
    "string": None,
}


@dataclass
class XdfStream:
    """One stream of an XDF file.

    Attributes
    ----------
    name, type, source_id : str
    channel_format : str
        One of ``float32``, ``double64``, ``int8``, ``int16``, ``int32``, ``int64``,
        ``string``.
    nominal_srate_hz : float
        0 for an irregular stream (markers).
    ch_names : list of str, length n_channels
        From ``desc/channels/channel/label``; ``ch0``, ``ch1`` ... where absent.
    data : ndarray, shape (n_samples, n_channels), or list of lists of str
        Samples in the channel format; strings for a ``string`` stream.
    timestamps : ndarray, float64, shape (n_samples,)
        LSL time of each sample as recorded (clock offsets applied by the reader).
    ch_units, ch_types : list of str
        From the channel descriptions ('' where absent).
    """

    name: str
    type: str
    channel_format: str
    nominal_srate_hz: float
    ch_names: list[str]
    data: Any
    timestamps: np.ndarray
    source_id: str = ""
    ch_units: list[str] = field(default_factory=list)
    ch_types: list[str] = field(default_factory=list)

    @property
    def n_channels(self) -> int:
        """Number of channels."""
        return len(self.ch_names)

    @property
    def n_samples(self) -> int:
        """Number of samples (one per timestamp)."""
        return int(len(self.timestamps))

    @property
    def is_irregular(self) -> bool:
        """No nominal rate: samples come when they come (markers, events)."""
        return self.nominal_srate_hz == 0

    @property
    def is_strings(self) -> bool:
        """True when the stream's channel format is ``string``."""
        return self.channel_format == "string"


# ---------------------------------------------------------------- reading


def _first(d: dict, key: str, default: str = "") -> str:
    v = d.get(key) if d else None
    if not v or v[0] is None:
        return default
    return str(v[0])


def _channels(info: dict) -> list[dict]:
    try:
        return list(info["desc"][0]["channels"][0]["channel"])
    except (KeyError, IndexError, TypeError):
        return []


def read_xdf(path: str | Path, *, dejitter: bool = False) -> list[XdfStream]:
    """Read every stream of an XDF file with pyxdf.

    Parameters
    ----------
    path : path-like
    dejitter : bool
        Let pyxdf smooth regular streams' timestamps (a linear fit). Default off, so the
        timestamps are those recorded (with clock offsets applied).

    Returns
    -------
    list of XdfStream
        In the file's stream order.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        Not an XDF file.
    """
    import pyxdf

    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"XDF file {str(p)!r} does not exist.")
    with p.open("rb") as f:
        if f.read(4) != MAGIC:
            raise ValueError(
                f"{str(p)!r} is not an XDF file (it does not start with 'XDF:'); give a file "
                "written by LabRecorder or `rtdecode record --out FILE.xdf`."
            )
    raw_streams, _ = pyxdf.load_xdf(str(p), dejitter_timestamps=dejitter)
    streams = []
    for s in raw_streams:
        info = s["info"]
        n_ch = int(_first(info, "channel_count", "0"))
        chans = _channels(info)
        names = [_first(c, "label", f"ch{i}") for i, c in enumerate(chans)]
        if len(names) != n_ch:
            names = [f"ch{i}" for i in range(n_ch)]
        fmt = _first(info, "channel_format", "float32")
        data = s["time_series"]
        if fmt != "string":
            data = np.asarray(data).reshape(-1, n_ch)
        streams.append(
            XdfStream(
                name=_first(info, "name"),
                type=_first(info, "type"),
                channel_format=fmt,
                nominal_srate_hz=float(_first(info, "nominal_srate", "0")),
                ch_names=names,
                data=data,
                timestamps=np.asarray(s["time_stamps"], dtype=np.float64),
                source_id=_first(info, "source_id"),
                ch_units=[_first(c, "unit") for c in chans] if len(chans) == n_ch else [],
                ch_types=[_first(c, "type") for c in chans] if len(chans) == n_ch else [],
            )
        )
    return streams


# ---------------------------------------------------------------- writing


def _varlen(n: int) -> bytes:
    """XDF variable-length integer: 1, 4 or 8 bytes, announced by one byte."""
    if n < 0:
        raise ValueError(f"XDF lengths and counts are non-negative; got {n}.")
    if n < 1 << 8:
        return b"\x01" + struct.pack("<B", n)
    if n < 1 << 32:
        return b"\x04" + struct.pack("<I", n)
    return b"\x08" + struct.pack("<Q", n)


def _xml_text(tag: str, value: object) -> str:
    return f"<{tag}>{escape(str(value))}</{tag}>"


class XdfWriter:
    """Write an XDF file chunk by chunk.

    Usage::

        with XdfWriter("rec.xdf") as w:
            meg = w.add_stream("MEG", "MEG", ch_names, 1200.0, "float32")
            mrk = w.add_stream("MEG-markers", "Markers", ["marker"], 0.0, "string")
            w.write_samples(meg, timestamps, samples)         # (n,), (n, n_channels)
            w.write_samples(mrk, [t0], [['{"image_id": "cat_03"}']])

    Footers (first/last timestamp, sample count, clock offsets) are written by
    :meth:`close`. A Boundary chunk follows every ``boundary_s`` of data.

    Parameters
    ----------
    path : path-like
        Created or overwritten.
    boundary_s : float
        Seconds of data between Boundary chunks (LabRecorder writes one every 10 s).
    """

    def __init__(self, path: str | Path, *, boundary_s: float = 10.0) -> None:
        self.path = Path(path).expanduser()
        self._f: IO[bytes] | None = self.path.open("wb")
        self._streams: dict[int, dict[str, Any]] = {}
        self._boundary_s = float(boundary_s)
        self._last_boundary_t: float | None = None
        self._f.write(MAGIC)
        header = (
            '<?xml version="1.0"?><info>'
            + _xml_text("version", "1.0")
            + _xml_text("datetime", time.strftime("%Y-%m-%dT%H:%M:%S%z"))
            + "</info>"
        )
        self._chunk(TAG_FILE_HEADER, header.encode("utf-8"))

    def __enter__(self) -> XdfWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _chunk(self, tag: int, content: bytes) -> None:
        if self._f is None:
            raise ValueError(f"The XDF writer of {str(self.path)!r} is closed.")
        self._f.write(_varlen(len(content) + 2) + struct.pack("<H", tag) + content)

    def add_stream(
        self,
        name: str,
        type: str,
        ch_names: Sequence[str],
        nominal_srate_hz: float,
        channel_format: str = "float32",
        *,
        source_id: str = "",
        ch_units: Sequence[str] | None = None,
        ch_types: Sequence[str] | None = None,
    ) -> int:
        """Write a StreamHeader; returns the stream id to give :meth:`write_samples`."""
        if channel_format not in FORMATS:
            raise ValueError(
                f"channel_format {channel_format!r} is not an XDF format; use one of "
                f"{', '.join(FORMATS)}."
            )
        if not ch_names:
            raise ValueError(f"Stream {name!r} needs at least one channel name.")
        stream_id = len(self._streams) + 1
        chans = []
        for i, ch in enumerate(ch_names):
            parts = _xml_text("label", ch)
            if ch_units:
                parts += _xml_text("unit", ch_units[i])
            if ch_types:
                parts += _xml_text("type", ch_types[i])
            chans.append(f"<channel>{parts}</channel>")
        xml = (
            '<?xml version="1.0"?><info>'
            + _xml_text("name", name)
            + _xml_text("type", type)
            + _xml_text("channel_count", len(ch_names))
            + _xml_text("nominal_srate", repr(float(nominal_srate_hz)))
            + _xml_text("channel_format", channel_format)
            + _xml_text("source_id", source_id)
            + _xml_text("version", "1.1")
            + _xml_text("created_at", "0")
            + "<desc><channels>"
            + "".join(chans)
            + "</channels></desc></info>"
        )
        self._chunk(TAG_STREAM_HEADER, struct.pack("<I", stream_id) + xml.encode("utf-8"))
        self._streams[stream_id] = {
            "n_channels": len(ch_names),
            "format": channel_format,
            "first_t": None,
            "last_t": None,
            "count": 0,
            "offsets": [],
        }
        return stream_id

    def write_samples(self, stream_id: int, timestamps: Sequence[float], samples: npt.ArrayLike) -> None:
        """Write one Samples chunk.

        Parameters
        ----------
        stream_id : int
            From :meth:`add_stream`.
        timestamps : sequence of float, length n_samples
            LSL time of each sample.
        samples : array-like, shape (n_samples, n_channels)
            Numbers for a numeric stream; strings for a ``string`` stream.
        """
        st = self._streams.get(stream_id)
        if st is None:
            raise ValueError(f"Stream id {stream_id} was not added to {str(self.path)!r}.")
        ts = np.asarray(timestamps, dtype="<f8").reshape(-1)
        n, n_ch = len(ts), st["n_channels"]
        if n == 0:
            return
        dtype = FORMATS[st["format"]]
        out = bytearray(struct.pack("<I", stream_id) + _varlen(n))
        if dtype is None:
            rows = [list(r) for r in samples]
            if len(rows) != n or any(len(r) != n_ch for r in rows):
                raise ValueError(
                    f"Stream {stream_id} takes {n_ch} string(s) per sample for {n} timestamps."
                )
            for t, row in zip(ts, rows, strict=True):
                out += b"\x08" + struct.pack("<d", t)
                for text in row:
                    raw = str(text).encode("utf-8")
                    out += _varlen(len(raw)) + raw
        else:
            values = np.asarray(samples)
            if values.shape != (n, n_ch):
                raise ValueError(
                    f"Stream {stream_id} takes samples of shape ({n}, {n_ch}); got {values.shape}."
                )
            values = np.ascontiguousarray(values, dtype=dtype)
            stamp = np.zeros(n, dtype=[("flag", "u1"), ("t", "<f8"), ("v", dtype, (n_ch,))])
            stamp["flag"], stamp["t"], stamp["v"] = 8, ts, values
            out += stamp.tobytes()
        self._chunk(TAG_SAMPLES, bytes(out))
        st["first_t"] = float(ts[0]) if st["first_t"] is None else st["first_t"]
        st["last_t"] = float(ts[-1])
        st["count"] += n
        if self._last_boundary_t is None:
            self._last_boundary_t = float(ts[0])
        elif ts[-1] - self._last_boundary_t >= self._boundary_s:
            self._chunk(TAG_BOUNDARY, BOUNDARY_UUID)
            self._last_boundary_t = float(ts[-1])

    def write_clock_offset(self, stream_id: int, collection_time: float, offset_s: float) -> None:
        """Write a ClockOffset chunk: the stream's clock minus the recorder's, at a time."""
        if stream_id not in self._streams:
            raise ValueError(f"Stream id {stream_id} was not added to {str(self.path)!r}.")
        self._chunk(TAG_CLOCK_OFFSET, struct.pack("<Idd", stream_id, collection_time, offset_s))
        self._streams[stream_id]["offsets"].append((collection_time, offset_s))

    def close(self) -> None:
        """Write the StreamFooters and close the file (again: nothing)."""
        if self._f is None:
            return
        for stream_id, st in self._streams.items():
            offsets = "".join(
                f"<offset>{_xml_text('time', repr(t))}{_xml_text('value', repr(v))}</offset>"
                for t, v in st["offsets"]
            )
            xml = (
                '<?xml version="1.0"?><info>'
                + _xml_text("first_timestamp", repr(st["first_t"] or 0.0))
                + _xml_text("last_timestamp", repr(st["last_t"] or 0.0))
                + _xml_text("sample_count", st["count"])
                + f"<clock_offsets>{offsets}</clock_offsets></info>"
            )
            self._chunk(TAG_STREAM_FOOTER, struct.pack("<I", stream_id) + xml.encode("utf-8"))
        self._f.close()
        self._f = None


def write_xdf(path: str | Path, streams: Sequence[XdfStream], *, chunk_samples: int = 1024) -> Path:
    """Write whole streams to an XDF file, interleaved in time as a recorder would.

    Parameters
    ----------
    path : path-like
    streams : sequence of XdfStream
    chunk_samples : int
        Samples per Samples chunk of a regular stream.

    Returns
    -------
    Path
    """
    with XdfWriter(path) as w:
        ids = [
            w.add_stream(
                s.name,
                s.type,
                s.ch_names,
                s.nominal_srate_hz,
                s.channel_format,
                source_id=s.source_id,
                ch_units=s.ch_units or None,
                ch_types=s.ch_types or None,
            )
            for s in streams
        ]
        pieces = []  # (first timestamp, stream index, start, stop)
        for k, s in enumerate(streams):
            step = 1 if s.is_irregular else max(1, int(chunk_samples))
            for a in range(0, s.n_samples, step):
                pieces.append((float(s.timestamps[a]), k, a, min(a + step, s.n_samples)))
        for _, k, a, b in sorted(pieces):
            s = streams[k]
            w.write_samples(ids[k], s.timestamps[a:b], s.data[a:b])
    return Path(path)
