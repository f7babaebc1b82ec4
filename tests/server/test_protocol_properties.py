"""Property-based tests (Hypothesis) of the websocket codec (rtdecode/server/protocol.py):
any frame round-trips, any byte string either decodes or raises ProtocolError, any
client text is a request or a ProtocolError with a code, never another exception."""

from __future__ import annotations

import json
import math
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtdecode.contracts import Frame
from rtdecode.server.protocol import (
    MAX_CLIENT_MESSAGE_BYTES,
    ProtocolError,
    decode_frame,
    encode_frame,
    parse_client_message,
)

PROPS = settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ERROR_CODES = {
    "invalid_json",
    "invalid_message",
    "unknown_type",
    "invalid_field",
    "unsupported_version",
    "binary_not_accepted",
    "message_too_large",
    "malformed_frame",
}

floats = st.floats(allow_nan=True, allow_infinity=True)
json_leaf = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
frames = st.builds(
    Frame,
    seq=st.integers(0, 2**62),
    first_sample=st.integers(0, 2**62),
    t_first=floats,
    t_last=floats,
    t_arrived=floats,
    latencies_ms=st.dictionaries(st.text(max_size=12), floats, max_size=8),
    topk=st.lists(st.tuples(st.text(max_size=30), floats), max_size=10).map(tuple),
    true_id=st.none() | st.text(max_size=40),
    true_rank=st.none() | st.integers(1, 10**6),
    image=st.none() | st.binary(max_size=2048),
    mime=st.sampled_from(["image/jpeg", "image/png", "image/webp"]),
    extra=st.dictionaries(st.text(max_size=12), json_leaf, max_size=5),
)


def same_number(sent: float, got: float | None) -> bool:
    """Non-finite numbers travel as null (JSON has no NaN)."""
    return got is None if not math.isfinite(sent) else got == sent


@PROPS
@given(frame=frames, t_sent=st.floats(0, 1e9))
def test_any_frame_round_trips(frame, t_sent):
    header, image = decode_frame(encode_frame(frame, t_sent=t_sent))
    assert image == (frame.image or b"")
    assert header["n_bytes"] == len(image)
    assert header["mime"] == (frame.mime if frame.image else None)
    assert header["seq"] == frame.seq and header["first_sample"] == frame.first_sample
    for name in ("t_first", "t_last", "t_arrived"):
        assert same_number(getattr(frame, name), header[name])
    assert header["t_sent"] == t_sent
    assert header["latencies_ms"].keys() == frame.latencies_ms.keys()
    for stage, ms in frame.latencies_ms.items():
        assert same_number(ms, header["latencies_ms"][stage])
    assert [g for g, _ in header["topk"]] == [g for g, _ in frame.topk]
    assert all(same_number(s, h[1]) for (_, s), h in zip(frame.topk, header["topk"], strict=True))
    assert header["true_id"] == frame.true_id and header["true_rank"] == frame.true_rank
    assert header["extra"] == frame.extra


@PROPS
@given(data=st.binary(max_size=600))
def test_arbitrary_bytes_decode_or_raise_protocol_error(data):
    try:
        header, image = decode_frame(data)
    except ProtocolError as exc:
        assert exc.code in ERROR_CODES and str(exc)
        return
    assert header["type"] == "frame" and header["n_bytes"] == len(image)


@PROPS
@given(frame=frames, cut=st.integers(0, 10_000), flip=st.integers(0, 10_000))
def test_truncated_or_corrupted_frames_never_crash_the_decoder(frame, cut, flip):
    message = encode_frame(frame, t_sent=1.0)
    truncated = message[: cut % (len(message) + 1)]
    corrupted = bytearray(message)
    corrupted[flip % len(corrupted)] ^= 0xFF
    for data in (truncated, bytes(corrupted)):
        try:
            header, image = decode_frame(data)
        except ProtocolError as exc:
            assert exc.code in ERROR_CODES
        else:
            assert header["n_bytes"] == len(image)
    if len(truncated) < len(message):
        # A frame cut anywhere is never taken for a whole one with the same image.
        try:
            _, image = decode_frame(truncated)
        except ProtocolError:
            pass
        else:
            assert image != (frame.image or b"") or not frame.image


@PROPS
@given(n_header=st.integers(0, 2**32 - 1), tail=st.binary(max_size=64))
def test_any_header_length_prefix_is_checked_before_use(n_header, tail):
    try:
        decode_frame(struct.pack(">I", n_header) + tail)
    except ProtocolError as exc:
        assert exc.code in ERROR_CODES


client_objects = st.dictionaries(
    st.sampled_from(["type", "v", "max_fps", "id", "seq", "x"]),
    st.none()
    | st.booleans()
    | st.integers()
    | floats
    | st.text(max_size=80)
    | st.sampled_from(["ping", "set_rate", "ack"]),
    max_size=4,
)


@PROPS
@given(
    text=st.text(max_size=300)
    | client_objects.map(lambda o: json.dumps(o))
    | st.binary(max_size=50)
    | st.none()
)
def test_any_client_message_is_a_request_or_a_protocol_error(text):
    try:
        request = parse_client_message(text)
    except ProtocolError as exc:
        assert exc.code in ERROR_CODES and str(exc)
        return
    obj = json.loads(text)
    assert request.type == obj["type"] in {"ping", "set_rate", "ack"}
    assert obj.get("v", 1) == 1
    if request.type == "set_rate":
        assert request.max_fps is None or (math.isfinite(request.max_fps) and request.max_fps > 0)
    if request.type == "ack":
        assert isinstance(request.seq, int) and request.seq >= 0


@PROPS
@given(pad=st.integers(0, 3 * MAX_CLIENT_MESSAGE_BYTES))
def test_the_size_limit_is_in_bytes(pad):
    text = json.dumps({"type": "ping", "id": 1, "pad": "é" * pad})
    try:
        parse_client_message(text)
    except ProtocolError as exc:
        assert exc.code == "message_too_large"
        assert len(text.encode("utf-8")) > MAX_CLIENT_MESSAGE_BYTES
    else:
        assert len(text.encode("utf-8")) <= MAX_CLIENT_MESSAGE_BYTES
