"""The server end to end: a real uvicorn on port 0 in a thread, real ``websockets``
clients, and a producer thread publishing synthetic Frames with real JPEG bytes.

``SyntheticSource``, ``FrameProducer`` and ``serving`` are the test's data source and
server harness; the viewer test uses them too.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from lsl_source import poll
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families
from test_protocol import STAGES, jpeg_bytes, make_frame
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from rtdecode.config import Settings
from rtdecode.server.app import ServerHandle, create_app, run_server_in_thread
from rtdecode.server.protocol import decode_frame

DEADLINE_S = 15.0


class SyntheticSource:
    """A FrameSource with settable health, counters shaped like the service's and
    thumbnails for ids ``img_000`` ... ``img_019``."""

    def __init__(self) -> None:
        self.state = "ready"
        self.reasons: list[str] = []
        self.counters = {"gaps": 2, "reconnects": 1, "windows_skipped": 5, "windows": 100}

    def status(self) -> dict[str, Any]:
        return {
            "stream": {"name": "synthetic-meg", "sfreq_hz": 1000.0, "n_channels": 306},
            "model": {"name": "test-model", "decoder": "none"},
            "rates": {"windows_per_s": 20.0},
            "counters": dict(self.counters),
            "latency_ms": {s: {"p50": 5.0, "p95": 9.0, "p99": 12.0} for s in STAGES},
        }

    def health(self) -> tuple[str, list[str]]:
        return self.state, list(self.reasons)

    def gallery_thumbnail(self, image_id: str) -> tuple[bytes, str] | None:
        if image_id.startswith("img_") and image_id[4:].isdigit() and int(image_id[4:]) < 20:
            return jpeg_bytes(int(image_id[4:]), size=64), "image/jpeg"
        return None


class FrameProducer(threading.Thread):
    """Publishes frames at ``fps`` from its own thread, as the DecodeWorker does.
    Images cycle through a pool made once with Pillow (``image_size`` px, noisy enough
    that ``big=True`` frames weigh ~100 KB)."""

    def __init__(self, publish, fps: float = 30.0, image_size: int = 96, big: bool = False):
        super().__init__(name="test-frame-producer", daemon=True)
        self.publish = publish
        self.period_s = 1.0 / fps
        noise = 1.0 if big else 0.15
        self.pool = [jpeg_bytes(i, size=image_size, noise=noise, quality=90) for i in range(6)]
        self.published = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        t_next = time.monotonic()
        for seq in itertools.count():
            if self._stop_event.is_set():
                return
            self.publish(make_frame(seq, image=self.pool[seq % len(self.pool)]))
            self.published = seq + 1
            t_next += self.period_s
            self._stop_event.wait(max(0.0, t_next - time.monotonic()))

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5.0)


@contextlib.contextmanager
def serving(
    *,
    fps: float | None = 30.0,
    big: bool = False,
    image_size: int = 96,
    status_interval_s: float = 0.25,
    **settings: Any,
) -> Iterator[tuple[ServerHandle, SyntheticSource]]:
    """Server on 127.0.0.1 port 0 (+ a producer when ``fps`` is given); stopped after."""
    source = SyntheticSource()
    app = create_app(Settings(**settings), source, status_interval_s=status_interval_s)
    handle = run_server_in_thread(app, "127.0.0.1", 0)
    producer = None
    if fps is not None:
        producer = FrameProducer(app.state.broadcaster.publish, fps, image_size, big)
        producer.start()
    try:
        yield handle, source
    finally:
        if producer is not None:
            producer.stop()
        handle.stop()


def ws_connect(handle: ServerHandle, query: str = "", **kwargs: Any) -> ClientConnection:
    """A websocket client; by default it buffers whatever arrives (``max_queue=None``),
    so it reads the server's close reply at once even when the test stopped reading."""
    kwargs.setdefault("max_size", None)
    kwargs.setdefault("max_queue", None)
    kwargs.setdefault("open_timeout", 10)
    return connect(handle.ws_url + query, **kwargs)


def recv_until(ws: ClientConnection, wanted: str, timeout_s: float = DEADLINE_S) -> dict | bytes:
    """Next message of type ``wanted`` ("frame" returns the raw bytes)."""
    deadline = time.monotonic() + timeout_s
    while True:
        msg = ws.recv(timeout=max(0.01, deadline - time.monotonic()))
        if isinstance(msg, bytes):
            if wanted == "frame":
                return msg
        elif json.loads(msg)["type"] == wanted:
            return json.loads(msg)


def close_code(ws: ClientConnection, timeout_s: float = DEADLINE_S) -> int:
    """Read until the server closes; return its close code."""
    deadline = time.monotonic() + timeout_s
    with pytest.raises(ConnectionClosed) as info:
        while time.monotonic() < deadline:
            ws.recv(timeout=max(0.01, deadline - time.monotonic()))
    return info.value.rcvd.code


def get(handle: ServerHandle, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.get(handle.url.rstrip("/") + path, timeout=10, **kwargs)


def client_stats(handle: ServerHandle, client_id: str) -> dict:
    clients = get(handle, "/api/status").json()["server"]["clients"]
    return next(c for c in clients if c["id"] == client_id)


# ---------------------------------------------------------------------------- frames
def test_frames_arrive_with_valid_headers_increasing_seq_and_real_images():
    with serving(fps=30) as (handle, _), ws_connect(handle) as ws:
        hello = json.loads(ws.recv(timeout=DEADLINE_S))
        assert hello["type"] == "hello" and hello["v"] == 1 and hello["client_id"].startswith("c")
        seqs, images = [], set()
        while len(seqs) < 12:
            header, image = decode_frame(recv_until(ws, "frame"))
            assert set(STAGES) <= set(header["latencies_ms"])
            assert len(header["topk"]) == 5 and header["true_id"] == "img_007"
            assert header["t_sent"] >= header["t_arrived"] - 1e6  # a float on the local clock
            assert Image.open(io.BytesIO(image)).convert("RGB").size == (96, 96)
            seqs.append(header["seq"])
            images.add(image)
        assert all(b > a for a, b in itertools.pairwise(seqs))
        assert len(images) > 1


def test_ping_and_periodic_status():
    with serving(fps=10) as (handle, _), ws_connect(handle) as ws:
        ws.send(json.dumps({"type": "ping", "id": "abc"}))
        assert recv_until(ws, "pong")["id"] == "abc"
        status = recv_until(ws, "status")
        assert status["health"]["state"] == "ready"
        assert status["source"]["stream"]["name"] == "synthetic-meg"
        assert status["client"]["id"].startswith("c") and "dropped" in status["client"]


def test_set_rate_lowers_this_clients_rate_only():
    with serving(fps=40) as (handle, _), ws_connect(handle) as limited, ws_connect(handle) as full:
        limited.send(json.dumps({"type": "set_rate", "max_fps": 4}))
        assert recv_until(limited, "rate")["max_fps"] == 4
        # Up to client_queue (4) frames queued before the request still come at full rate.
        headers = [decode_frame(recv_until(limited, "frame"))[0] for _ in range(11)][4:]
        seqs = [h["seq"] for h in headers]
        # Server-side send times: a test thread that lags does not bunch them up.
        rate = (len(headers) - 1) / (headers[-1]["t_sent"] - headers[0]["t_sent"])
        assert rate < 4 * 1.5, f"limited client got {rate:.1f} frames/s"
        assert (seqs[-1] - seqs[0]) / (len(seqs) - 1) >= 4  # producer is 40 fps
        full_seqs = [decode_frame(recv_until(full, "frame"))[0]["seq"] for _ in range(20)]
        steps = [b - a for a, b in itertools.pairwise(full_seqs)]
        assert steps.count(1) >= 15, f"full-rate client skipped frames: {steps}"
        limited_id = recv_until(limited, "status")["client"]["id"]
        assert client_stats(handle, limited_id)["skipped"] > 0


def _slow_socket(handle: ServerHandle) -> socket.socket:
    """A client socket with a tiny receive buffer, so backpressure reaches the server
    after a few frames instead of after megabytes of kernel buffering."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", handle.port))
    return sock


def test_slow_client_loses_frames_alone_and_they_are_counted():
    with serving(fps=25, big=True, image_size=256) as (handle, _), contextlib.ExitStack() as stack:
        fast = stack.enter_context(ws_connect(handle))
        # max_queue=1: the client library stops reading too; close_timeout: it cannot see
        # the server's close reply behind the unread frames, so do not wait for it.
        slow = stack.enter_context(
            ws_connect(handle, sock=_slow_socket(handle), max_queue=1, close_timeout=0.5)
        )
        fast_id = json.loads(fast.recv(timeout=DEADLINE_S))["client_id"]
        slow_id = json.loads(slow.recv(timeout=DEADLINE_S))["client_id"]
        fast_seqs: list[int] = []
        stop = threading.Event()

        def read_fast() -> None:
            while not stop.is_set():
                msg = fast.recv(timeout=DEADLINE_S)
                if isinstance(msg, bytes):
                    fast_seqs.append(decode_frame(msg)[0]["seq"])

        reader = threading.Thread(target=read_fast, daemon=True)
        reader.start()
        try:
            # The slow viewer reads one message now and then; its queue overflows.
            poll(
                lambda: (
                    slow.recv(timeout=DEADLINE_S) and client_stats(handle, slow_id)["dropped"] >= 10
                ),
                DEADLINE_S,
                "slow client's drops",
            )
            n_before = len(fast_seqs)
            poll(lambda: len(fast_seqs) >= n_before + 25, DEADLINE_S, "25 more frames to the fast client")
        finally:
            stop.set()
            reader.join(DEADLINE_S)
        steps = [b - a for a, b in itertools.pairwise(fast_seqs)]
        assert steps.count(1) >= 0.9 * len(steps), f"fast client lost frames: {steps}"
        assert client_stats(handle, fast_id)["dropped"] <= 0.05 * len(fast_seqs)
        slow_drops = client_stats(handle, slow_id)["dropped"]
        families = {f.name: f for f in text_string_to_metric_families(get(handle, "/metrics").text)}
        per_client = {
            s.labels["client"]: s.value
            for s in families["rtdecode_ws_client_frames_dropped"].samples
        }
        assert per_client[slow_id] >= slow_drops >= 10


def test_client_limit_refuses_one_too_many_with_1013():
    with serving(fps=None, max_clients=2) as (handle, _), contextlib.ExitStack() as stack:
        first = stack.enter_context(ws_connect(handle))
        second = stack.enter_context(ws_connect(handle))
        for ws in (first, second):
            assert recv_until(ws, "hello")
        with ws_connect(handle) as third:
            error = recv_until(third, "error")
            assert error["code"] == "too_many_clients" and "max_clients=2" in error["message"]
            assert close_code(third) == 1013
        first.close()

        def admitted() -> bool:  # the freed slot is reused once the server saw the close
            with ws_connect(handle) as again:
                msg = json.loads(again.recv(timeout=DEADLINE_S))
                return msg["type"] == "hello"

        poll(admitted, DEADLINE_S, "a new client admitted after one left")
        assert get(handle, "/api/status").json()["server"]["rejected"] >= 1


@pytest.mark.parametrize(
    "message, code",
    [
        ("{oops", "invalid_json"),
        (json.dumps({"type": "teleport"}), "unknown_type"),
        (bytes(range(256)), "binary_not_accepted"),
        (json.dumps({"type": "ping", "pad": "x" * 10_000}), "message_too_large"),
        (json.dumps({"type": "set_rate", "max_fps": -3}), "invalid_field"),
    ],
)
def test_bad_client_messages_get_an_error_and_keep_the_connection(message, code):
    with serving(fps=20) as (handle, _), ws_connect(handle) as ws:
        ws.send(message)
        error = recv_until(ws, "error")
        assert error["code"] == code and error["message"].endswith(".")
        ws.send(json.dumps({"type": "ping", "id": 1}))
        assert recv_until(ws, "pong")["id"] == 1
        assert decode_frame(recv_until(ws, "frame"))[0]["v"] == 1


def test_oversized_message_closes_with_1009_and_the_server_lives_on():
    with serving(fps=20) as (handle, _):
        with ws_connect(handle) as ws:
            ws.send("x" * 200_000)
            assert close_code(ws) == 1009
        assert get(handle, "/health").status_code == 200
        with ws_connect(handle) as ws:
            assert decode_frame(recv_until(ws, "frame"))[0]["type"] == "frame"


# ---------------------------------------------------------------------------- HTTP
def test_metrics_parse_as_prometheus_text():
    with serving(fps=40) as (handle, _), ws_connect(handle) as ws:
        for _ in range(5):
            recv_until(ws, "frame")
        response = get(handle, "/metrics")
        assert response.status_code == 200 and response.headers["content-type"].startswith(
            "text/plain"
        )
        families = {f.name: f for f in text_string_to_metric_families(response.text)}
        hist = families["rtdecode_stage_latency_seconds"]
        assert hist.type == "histogram"
        counts = {s.labels["stage"]: s.value for s in hist.samples if s.name.endswith("_count")}
        assert set(STAGES) <= set(counts) and min(counts.values()) >= 5
        for name in ("rtdecode_gaps", "rtdecode_reconnects", "rtdecode_windows_skipped"):
            assert families[name].type == "counter"
        assert families["rtdecode_gaps"].samples[0].value == 2
        assert families["rtdecode_ws_frames_sent"].samples[0].value >= 5
        assert families["rtdecode_ws_clients"].samples[0].value == 1
        quantiles = families["rtdecode_latency_quantile_ms"].samples
        assert {s.labels["stage"] for s in quantiles} == set(STAGES)
        health = {s.labels["state"]: s.value for s in families["rtdecode_health"].samples}
        assert health["ready"] == 1 and health["starting"] == 0


def test_health_is_503_until_the_source_is_ready():
    with serving(fps=None) as (handle, source):
        source.state, source.reasons = "starting", ["warming up models"]
        r = get(handle, "/health")
        assert r.status_code == 503
        assert r.json() == {"v": 1, "state": "starting", "reasons": ["warming up models"]}
        source.state, source.reasons = "ready", []
        r = get(handle, "/health")
        assert r.status_code == 200 and r.json()["state"] == "ready"
        source.state, source.reasons = "degraded", ["stream not connected"]
        assert get(handle, "/health").status_code == 503
        source.state = "confused"
        r = get(handle, "/health")
        assert r.status_code == 503 and r.json()["state"] == "error"
        assert "confused" in r.json()["reasons"][0]


def test_status_and_gallery_thumbnails():
    with serving(fps=None) as (handle, _):
        status = get(handle, "/api/status").json()
        assert status["v"] == 1 and status["source"]["counters"]["gaps"] == 2
        assert status["server"]["n_clients"] == 0 and status["health"]["state"] == "ready"
        r = get(handle, "/api/gallery/img_003")
        assert r.status_code == 200 and r.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(r.content)).size == (64, 64)
        r = get(handle, "/api/gallery/no_such_image")
        assert r.status_code == 404 and "no_such_image" in r.json()["detail"]
        r = get(handle, "/")
        assert r.status_code == 200 and "<html" in r.text.lower()


# ---------------------------------------------------------------------------- security
def test_token_guards_websocket_and_api_but_not_health():
    with serving(fps=10, token="s3cret") as (handle, _):
        for query in ("", "?token=wrong"):
            with ws_connect(handle, query) as ws:
                assert recv_until(ws, "error")["code"] == "unauthorized"
                assert close_code(ws) == 4401
        with ws_connect(handle, "?token=s3cret") as ws:
            assert recv_until(ws, "hello")["type"] == "hello"
            assert recv_until(ws, "frame")
        with ws_connect(handle, additional_headers={"Authorization": "Bearer s3cret"}) as ws:
            assert recv_until(ws, "hello")["type"] == "hello"
        for path in ("/api/status", "/metrics", "/api/gallery/img_001"):
            assert get(handle, path).status_code == 401
            assert get(handle, path + "?token=nope").status_code == 401
            assert get(handle, path + "?token=s3cret").status_code == 200
            assert get(handle, path, headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert get(handle, "/api/status").headers["www-authenticate"] == "Bearer"
        assert get(handle, "/health").status_code == 200
        assert get(handle, "/").status_code == 200  # the page itself carries ?token= on


def test_origin_from_another_host_is_refused():
    with serving(fps=None) as (handle, _):
        with ws_connect(handle, origin="http://evil.example") as ws:
            assert recv_until(ws, "error")["code"] == "forbidden_origin"
            assert close_code(ws) == 4403
        with ws_connect(handle, origin=f"http://127.0.0.1:{handle.port}") as ws:
            assert recv_until(ws, "hello")["type"] == "hello"


# ---------------------------------------------------------------------------- lifecycle
def test_shutdown_with_clients_connected_is_clean():
    threads_before = set(threading.enumerate())
    source = SyntheticSource()
    app = create_app(Settings(), source)
    handle = run_server_in_thread(app)
    producer = FrameProducer(app.state.broadcaster.publish, fps=30)
    producer.start()
    with contextlib.ExitStack() as stack:
        clients = [stack.enter_context(ws_connect(handle)) for _ in range(2)]
        for ws in clients:
            recv_until(ws, "frame")
        handle.stop()
        assert not handle.thread.is_alive()
        for ws in clients:
            assert close_code(ws) == 1001
    assert app.state.broadcaster.publish(make_frame(10_000)) is False  # counted, not raised
    producer.stop()
    poll(
        lambda: set(threading.enumerate()) <= threads_before,
        DEADLINE_S,
        f"no thread left (extra: {set(threading.enumerate()) - threads_before})",
    )
    handle.stop()  # idempotent


def test_port_in_use_is_a_clear_error():
    with serving(fps=None) as (handle, _):
        app = create_app(Settings(), SyntheticSource())
        with pytest.raises(RuntimeError, match="already in use"):
            run_server_in_thread(app, "127.0.0.1", handle.port)


def test_acking_slow_client_gets_fresh_frames_and_its_drops_are_counted():
    """A client that acks (as the viewer does) has at most 2 frames in flight, so even
    with large socket buffers a slow reader gets recent frames; the rest are dropped and
    counted."""
    with serving(fps=30) as (handle, _), ws_connect(handle) as ws:
        client_id = json.loads(ws.recv(timeout=DEADLINE_S))["client_id"]
        lags = []
        for _ in range(6):
            header, _ = decode_frame(recv_until(ws, "frame"))
            ws.send(json.dumps({"type": "ack", "seq": header["seq"]}))
            lags.append(get(handle, "/api/status").json()["server"]["published"] - header["seq"])
            time.sleep(0.5)  # a slow screen: one frame every half second
        stats = client_stats(handle, client_id)
        assert stats["acked_seq"] == header["seq"]
        assert stats["dropped"] >= 20, stats
        # Without flow control the lag grows by ~15 frames per read (3, 18, 33, ... 78);
        # with it, it stays bounded: the 2 in-flight frames wait at most one read (~15),
        # plus the queue (4) and what was published meanwhile.
        assert lags[-1] <= 45 and lags[-1] <= max(lags[1:4]) + 10, lags


def test_ack_with_a_bad_seq_is_an_error_and_the_connection_lives():
    with serving(fps=5) as (handle, _), ws_connect(handle) as ws:
        ws.send(json.dumps({"type": "ack", "seq": "x"}))
        assert recv_until(ws, "error")["code"] == "invalid_field"
        ws.send(json.dumps({"type": "ping", "id": 1}))
        assert recv_until(ws, "pong")["id"] == 1
