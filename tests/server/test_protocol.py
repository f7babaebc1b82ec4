"""Websocket protocol v1: frame encoding round trips, malformed input, client messages.

``jpeg_bytes`` and ``make_frame`` (tests/helpers/frames.py) are the synthetic data source.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import struct

import numpy as np
import pytest
from PIL import Image

from rtdecode.server.protocol import (
    MAX_CLIENT_MESSAGE_BYTES,
    MAX_HEADER_BYTES,
    PROTOCOL_VERSION,
    ClientMessage,
    ProtocolError,
    decode_frame,
    encode_frame,
    error_message,
    frame_header,
    jsonable,
    parse_client_message,
    text_message,
)
from tests.helpers.frames import make_frame


def test_round_trip_keeps_every_field_and_the_image():
    frame = make_frame(12)
    header, image = decode_frame(encode_frame(frame, t_sent=123.5))
    assert image == frame.image
    assert Image.open(io.BytesIO(image)).size == (96, 96)
    assert header["v"] == PROTOCOL_VERSION and header["type"] == "frame"
    assert header["seq"] == 12 and header["first_sample"] == frame.first_sample
    assert header["t_first"] == frame.t_first and header["t_last"] == frame.t_last
    assert header["t_arrived"] == frame.t_arrived and header["t_sent"] == 123.5
    assert header["latencies_ms"] == frame.latencies_ms
    assert header["topk"] == [[i, s] for i, s in frame.topk]
    assert header["true_id"] == "img_007" and header["true_rank"] == frame.true_rank
    assert header["mime"] == "image/jpeg" and header["n_bytes"] == len(image)
    assert header["extra"] == {"flagged": False, "n_gaps": 0}


def test_layout_is_length_prefix_then_json_then_image():
    frame = make_frame(3)
    data = encode_frame(frame)
    (n,) = struct.unpack(">I", data[:4])
    assert json.loads(data[4 : 4 + n].decode("utf-8"))["seq"] == 3
    assert data[4 + n :] == frame.image


def test_frame_without_image_and_numpy_or_nonfinite_values():
    frame = make_frame(5, image=None, true_id=None)
    frame = dataclasses.replace(
        frame,
        latencies_ms={"total": np.float64(3.5), "generate": float("nan")},
        topk=(("a", np.float32(0.5)),),
        first_sample=np.int64(42),
        extra={"arr": np.arange(2), "inf": math.inf},
    )
    header, image = decode_frame(encode_frame(frame))
    assert image == b"" and header["n_bytes"] == 0 and header["mime"] is None
    assert header["true_id"] is None and header["true_rank"] is None
    assert header["latencies_ms"] == {"total": 3.5, "generate": None}
    assert header["topk"] == [["a", 0.5]] and header["first_sample"] == 42
    assert header["extra"]["inf"] is None


@pytest.mark.parametrize(
    "data, match",
    [
        (b"", "at least 4 bytes"),
        (b"\x00\x00", "at least 4 bytes"),
        (struct.pack(">I", 50) + b"{}", "does not fit"),
        (struct.pack(">I", MAX_HEADER_BYTES + 1) + b"x" * 10, "does not fit"),
        (struct.pack(">I", 4) + b"\xff\xfe\xfd\xfc", "not UTF-8 JSON"),
        (struct.pack(">I", 3) + b"abc", "not UTF-8 JSON"),
        (struct.pack(">I", 2) + b"[]", "expected an object"),
    ],
)
def test_decode_rejects_malformed_messages(data, match):
    with pytest.raises(ProtocolError, match=match) as info:
        decode_frame(data)
    assert info.value.code == "malformed_frame"


def _with_header(**changes) -> bytes:
    frame = make_frame(1)
    header = {**frame_header(frame), **changes}
    raw = json.dumps(header).encode()
    return struct.pack(">I", len(raw)) + raw + frame.image


def test_decode_checks_version_type_and_image_length():
    with pytest.raises(ProtocolError, match="version 2") as info:
        decode_frame(_with_header(v=2))
    assert info.value.code == "unsupported_version"
    with pytest.raises(ProtocolError, match="expected 'frame'"):
        decode_frame(_with_header(type="status"))
    with pytest.raises(ProtocolError, match="n_bytes=7"):
        decode_frame(_with_header(n_bytes=7))
    truncated = encode_frame(make_frame(1))[:-10]
    with pytest.raises(ProtocolError, match="truncated"):
        decode_frame(truncated)


def test_text_messages_are_versioned_json():
    msg = json.loads(text_message("gap", dropped=3, next_seq=10))
    assert msg == {"v": 1, "type": "gap", "dropped": 3, "next_seq": 10}
    err = json.loads(error_message("unknown_type", "Nope.", close_code=None))
    assert err["type"] == "error" and err["code"] == "unknown_type" and err["message"] == "Nope."
    assert json.loads(text_message("status", x=float("nan")))["x"] is None


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"type": "ping"}', ClientMessage("ping")),
        ('{"type": "ping", "id": 7}', ClientMessage("ping", id=7)),
        ('{"v": 1, "type": "set_rate", "max_fps": 2.5}', ClientMessage("set_rate", 2.5)),
        ('{"type": "set_rate", "max_fps": 3}', ClientMessage("set_rate", 3.0)),
        ('{"type": "set_rate", "max_fps": null}', ClientMessage("set_rate", None)),
    ],
)
def test_parse_valid_client_messages(text, expected):
    assert parse_client_message(text) == expected


@pytest.mark.parametrize(
    "data, code",
    [
        (b"\x00\x01binary", "binary_not_accepted"),
        ("{not json", "invalid_json"),
        ("[1, 2]", "invalid_message"),
        ('{"type": 5}', "invalid_message"),
        ('{"type": "subscribe"}', "unknown_type"),
        ('{"v": 9, "type": "ping"}', "unsupported_version"),
        ('{"type": "set_rate", "max_fps": 0}', "invalid_field"),
        ('{"type": "set_rate", "max_fps": -1}', "invalid_field"),
        ('{"type": "set_rate", "max_fps": "fast"}', "invalid_field"),
        ('{"type": "set_rate", "max_fps": true}', "invalid_field"),
        ('{"type": "ping", "id": {"a": 1}}', "invalid_field"),
        ('{"type": "ping", "pad": "' + "x" * MAX_CLIENT_MESSAGE_BYTES + '"}', "message_too_large"),
    ],
)
def test_parse_rejects_bad_client_messages_with_a_code(data, code):
    with pytest.raises(ProtocolError) as info:
        parse_client_message(data)
    assert info.value.code == code
    assert str(info.value).endswith(".")  # a whole sentence


def test_jsonable_handles_nested_numpy_and_unknown_objects():
    out = jsonable({"a": (np.int32(1), np.float32(2.5)), 3: {"b": float("-inf")}, "c": object})
    assert out["a"] == [1, 2.5] and out["3"] == {"b": None} and isinstance(out["c"], str)
    json.dumps(out, allow_nan=False)
