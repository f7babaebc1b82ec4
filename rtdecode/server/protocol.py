"""The websocket protocol between the server and its viewers, version 1 (docs/protocol.md).

Server to client
----------------
* One decoded frame = one **binary** message::

      [4 bytes: header length N, unsigned, big-endian][N bytes: UTF-8 JSON header][image bytes]

  The header is a JSON object with ``"v": 1`` and ``"type": "frame"`` (see
  :func:`frame_header` for every field). ``n_bytes`` is the length of the image that
  follows the header (0 when the frame carries retrieval results only).
* Everything else is a **text** message holding one JSON object with ``"v"`` and
  ``"type"``: ``hello``, ``status``, ``gap``, ``rate``, ``pong``, ``error``.

Client to server
----------------
Text messages holding one JSON object: ``{"type": "set_rate", "max_fps": N}`` (N > 0, or
null for the full rate) and ``{"type": "ping", "id": ...}`` (id optional, echoed). Anything else is answered with an
``error`` message and the connection stays open.

Threading: pure functions without state; :func:`encode_frame` runs on the worker thread
(through ``Broadcaster.publish``), the parsers on the asyncio loop.
"""

from __future__ import annotations

import json
import math
import struct
import time
from dataclasses import dataclass
from typing import Any

from rtdecode._utils.jsonable import jsonable
from rtdecode.contracts import PROTOCOL_VERSION, Frame

__all__ = [
    "PROTOCOL_VERSION",
    "HEADER_PREFIX_BYTES",
    "MAX_HEADER_BYTES",
    "MAX_CLIENT_MESSAGE_BYTES",
    "MAX_CLIENT_FRAME_BYTES",
    "HEALTH_STATES",
    "CLOSE_GOING_AWAY",
    "CLOSE_TOO_BIG",
    "CLOSE_TRY_AGAIN_LATER",
    "CLOSE_UNAUTHORIZED",
    "CLOSE_FORBIDDEN_ORIGIN",
    "CLOSE_FORBIDDEN_HOST",
    "ProtocolError",
    "ClientMessage",
    "jsonable",
    "frame_header",
    "encode_frame",
    "decode_frame",
    "text_message",
    "error_message",
    "parse_client_message",
]

#: Length of the big-endian unsigned prefix that gives the header size.
HEADER_PREFIX_BYTES = 4
#: Largest JSON header a decoder accepts; real headers are well under 2 KiB.
MAX_HEADER_BYTES = 256 * 1024
#: Largest client message the server reads; longer ones are answered with an error.
MAX_CLIENT_MESSAGE_BYTES = 4096
#: Largest websocket message the transport accepts at all (uvicorn ``ws_max_size``);
#: beyond it the server closes the connection with :data:`CLOSE_TOO_BIG`.
MAX_CLIENT_FRAME_BYTES = 64 * 1024

#: States of /health: the source's four, and ``stopping`` while the server shuts down.
HEALTH_STATES = ("starting", "ready", "degraded", "error", "stopping")

# Close codes (RFC 6455 section 7.4; 4xxx are ours, mirroring HTTP statuses).
CLOSE_GOING_AWAY = 1001  # the server shuts down
CLOSE_TOO_BIG = 1009  # a client message exceeded MAX_CLIENT_FRAME_BYTES
CLOSE_TRY_AGAIN_LATER = 1013  # too many clients
CLOSE_UNAUTHORIZED = 4401  # missing or wrong token
CLOSE_FORBIDDEN_ORIGIN = 4403  # Origin header from another host
CLOSE_FORBIDDEN_HOST = 4400  # Host header not a name of this server (DNS rebinding)
CLOSE_STALLED = 1008  # a client that never acks left a ping unanswered (STALL_S)

#: The ASGI scope extension through which the server's websocket protocol offers pings
#: the app can await (rtdecode.server.probe).
PROBE_EXTENSION = "rtdecode.probe"

_PREFIX = struct.Struct(">I")


class ProtocolError(ValueError):
    """A message that does not follow the protocol.

    Attributes
    ----------
    code : str
        Machine-readable reason, sent as ``"code"`` in the ``error`` message:
        ``invalid_json``, ``invalid_message``, ``unknown_type``, ``invalid_field``,
        ``unsupported_version``, ``binary_not_accepted``, ``message_too_large`` or
        ``malformed_frame``.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True, slots=True)
class ClientMessage:
    """A parsed client request.

    Attributes
    ----------
    type : str
        ``"set_rate"``, ``"ping"`` or ``"ack"``.
    max_fps : float | None
        For ``set_rate``: the most frames per second the client wants, or None for the
        full rate.
    id : str | int | float | None
        For ``ping``: echoed in the ``pong`` so the client can pair them (round trips).
    seq : int | None
        For ``ack``: the newest frame the client has taken in (flow control).
    """

    type: str
    max_fps: float | None = None
    id: str | int | float | None = None
    seq: int | None = None


def _dumps(obj: dict[str, Any]) -> str:
    return json.dumps(jsonable(obj), separators=(",", ":"), allow_nan=False)


def frame_header(frame: Frame, *, t_sent: float | None = None) -> dict[str, Any]:
    """The JSON header of one frame message.

    Parameters
    ----------
    frame : Frame
    t_sent : float | None
        Local monotonic clock (the same clock as ``rtdecode.lsl.local_clock``) when the
        server took the frame for sending; now when None.

    Returns
    -------
    dict
        ``v``, ``type`` ("frame"), ``seq``, ``first_sample``, ``t_first``, ``t_last``
        (LSL clock, s), ``t_arrived``, ``t_sent`` (local clock, s), ``latencies_ms``
        ({stage: ms}), ``topk`` ([[id, score], ...], best first), ``true_id``,
        ``true_rank`` (1 = best, or None), ``mime`` (None without image), ``n_bytes``,
        ``extra`` (free-form, JSON-able), ``lane`` ("retrieval", "image" or None) and
        ``window_seq`` (an image frame's source window's seq, or None); the last two are
        optional keys of protocol v1 (older servers omit them).
    """
    image = frame.image or b""
    return {
        "v": PROTOCOL_VERSION,
        "type": "frame",
        "seq": int(frame.seq),
        "first_sample": int(frame.first_sample),
        "t_first": float(frame.t_first),
        "t_last": float(frame.t_last),
        "t_arrived": float(frame.t_arrived),
        "t_sent": time.monotonic() if t_sent is None else float(t_sent),
        "latencies_ms": {str(k): float(v) for k, v in frame.latencies_ms.items()},
        "topk": [[str(gid), float(score)] for gid, score in frame.topk],
        "true_id": None if frame.true_id is None else str(frame.true_id),
        "true_rank": None if frame.true_rank is None else int(frame.true_rank),
        "lag_s": None if frame.lag_s is None else float(frame.lag_s),
        "mime": frame.mime if image else None,
        "n_bytes": len(image),
        "extra": dict(frame.extra),
        "lane": None if frame.lane is None else str(frame.lane),
        "window_seq": None if frame.window_seq is None else int(frame.window_seq),
    }


def encode_frame(frame: Frame, *, t_sent: float | None = None) -> bytes:
    """Encode a frame as one binary websocket message.

    Parameters
    ----------
    frame : Frame
    t_sent : float | None
        See :func:`frame_header`.

    Returns
    -------
    bytes
        ``4-byte big-endian header length + UTF-8 JSON header + image bytes``.
    """
    header = _dumps(frame_header(frame, t_sent=t_sent)).encode("utf-8")
    return b"".join((_PREFIX.pack(len(header)), header, frame.image or b""))


def decode_frame(data: bytes | bytearray | memoryview) -> tuple[dict[str, Any], bytes]:
    """Split a binary frame message into its header and image.

    Parameters
    ----------
    data : bytes
        One binary websocket message as made by :func:`encode_frame`.

    Returns
    -------
    header : dict
    image : bytes
        Empty when the frame carries no image.

    Raises
    ------
    ProtocolError
        With code ``malformed_frame`` (truncated data, header not UTF-8 JSON, image size
        not ``n_bytes``) or ``unsupported_version``.
    """
    data = bytes(data)
    if len(data) < HEADER_PREFIX_BYTES:
        raise ProtocolError(
            "malformed_frame",
            f"Frame message is {len(data)} bytes long; it needs at least "
            f"{HEADER_PREFIX_BYTES} bytes for the header length.",
        )
    (n_header,) = _PREFIX.unpack_from(data)
    if n_header > MAX_HEADER_BYTES or HEADER_PREFIX_BYTES + n_header > len(data):
        raise ProtocolError(
            "malformed_frame",
            f"Frame header length {n_header} does not fit a {len(data)}-byte message "
            f"(limit {MAX_HEADER_BYTES}); the message is truncated or not a v{PROTOCOL_VERSION} frame.",
        )
    raw = data[HEADER_PREFIX_BYTES : HEADER_PREFIX_BYTES + n_header]
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ProtocolError(
            "malformed_frame", f"Frame header is not UTF-8 JSON ({exc}); is this a frame message?"
        ) from exc
    if not isinstance(header, dict):
        raise ProtocolError(
            "malformed_frame",
            f"Frame header is a JSON {type(header).__name__}; expected an object.",
        )
    if header.get("v") != PROTOCOL_VERSION:
        raise ProtocolError(
            "unsupported_version",
            f"Frame header has protocol version {header.get('v')!r}; this code reads "
            f"version {PROTOCOL_VERSION}.",
        )
    if header.get("type") != "frame":
        raise ProtocolError(
            "malformed_frame", f"Binary message has type {header.get('type')!r}; expected 'frame'."
        )
    image = data[HEADER_PREFIX_BYTES + n_header :]
    if header.get("n_bytes") != len(image):
        raise ProtocolError(
            "malformed_frame",
            f"Frame header says n_bytes={header.get('n_bytes')!r} but {len(image)} image "
            "bytes follow it; the message is truncated or corrupt.",
        )
    return header, image


def text_message(type_: str, **fields: object) -> str:
    """A server-to-client JSON text message ``{"v": 1, "type": type_, **fields}``."""
    return _dumps({"v": PROTOCOL_VERSION, "type": type_, **fields})


def error_message(code: str, message: str, **fields: object) -> str:
    """An ``error`` text message; ``message`` is a sentence for people, ``code`` for code."""
    return text_message("error", code=code, message=message, **fields)


def parse_client_message(data: str | bytes | None) -> ClientMessage:
    """Parse and validate one client message.

    Parameters
    ----------
    data : str or bytes
        A text message (str) or a binary message (bytes) from a client.

    Returns
    -------
    ClientMessage

    Raises
    ------
    ProtocolError
        For binary data, oversized, non-JSON or unknown messages and invalid fields;
        ``code`` says which.
    """
    if not isinstance(data, str):
        raise ProtocolError(
            "binary_not_accepted",
            "Binary messages from clients are not part of the protocol; send JSON text "
            'such as {"type": "ping"}.',
        )
    n_bytes = len(data.encode("utf-8"))
    if n_bytes > MAX_CLIENT_MESSAGE_BYTES:
        raise ProtocolError(
            "message_too_large",
            f"Message of {n_bytes} bytes exceeds the limit of {MAX_CLIENT_MESSAGE_BYTES} "
            "bytes; client messages are small JSON objects.",
        )
    try:
        obj = json.loads(data)
    except json.JSONDecodeError as exc:
        raise ProtocolError("invalid_json", f"Message is not valid JSON ({exc}).") from exc
    if not isinstance(obj, dict) or not isinstance(obj.get("type"), str):
        raise ProtocolError(
            "invalid_message",
            'Message must be a JSON object with a string "type", e.g. {"type": "ping"}.',
        )
    if "v" in obj and obj["v"] != PROTOCOL_VERSION:
        raise ProtocolError(
            "unsupported_version",
            f"Message has protocol version {obj['v']!r}; this server speaks version "
            f"{PROTOCOL_VERSION}.",
        )
    kind = obj["type"]
    if kind == "ping":
        ping_id = obj.get("id")
        if not (ping_id is None or isinstance(ping_id, (str, int, float))) or (
            isinstance(ping_id, str) and len(ping_id) > 64
        ):
            raise ProtocolError(
                "invalid_field",
                f"ping id {ping_id!r} is not a number or a string of at most 64 characters.",
            )
        return ClientMessage("ping", id=ping_id)
    if kind == "set_rate":
        fps = obj.get("max_fps")
        if fps is None:
            return ClientMessage("set_rate", None)
        if (
            isinstance(fps, bool)
            or not isinstance(fps, (int, float))
            or not math.isfinite(fps)
            or fps <= 0
        ):
            raise ProtocolError(
                "invalid_field",
                f"set_rate max_fps={fps!r} is not a positive number; send a rate in "
                "frames per second, or null for the full rate.",
            )
        return ClientMessage("set_rate", float(fps))
    if kind == "ack":
        seq = obj.get("seq")
        if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
            raise ProtocolError(
                "invalid_field",
                f"ack seq={seq!r} is not a frame's seq; send the seq of the newest frame "
                "received.",
            )
        return ClientMessage("ack", seq=seq)
    raise ProtocolError(
        "unknown_type",
        f"Unknown message type {kind!r}; clients may send 'set_rate', 'ping' or 'ack'.",
    )
