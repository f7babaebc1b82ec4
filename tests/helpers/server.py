"""The server harness: a synthetic FrameSource, a producer thread publishing frames with
real JPEG bytes, a real uvicorn on port 0 in a thread, and websocket client helpers."""

from __future__ import annotations

import contextlib
import itertools
import json
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from rtdecode.config import Settings
from rtdecode.server.app import ServerHandle, create_app, run_server_in_thread
from tests.helpers.frames import STAGES, jpeg_bytes, make_frame

DEADLINE_S = 15.0


class SyntheticSource:
    """A FrameSource with settable health, counters shaped like the service's and
    thumbnails and concept names (``object 0`` ...) for ids ``img_000`` ... ``img_019``."""

    def __init__(self) -> None:
        self.state = "ready"
        self.reasons: list[str] = []
        self.counters = {"gaps": 2, "reconnects": 1, "windows_skipped": 5, "windows": 100}
        # A session's decoding curve: chance before 100 ms, a peak at 200-300 ms.
        from rtdecode.encoder.metrics import LagCurve

        self.curve = LagCurve(n_candidates=40)
        for k in range(30):
            lag = 0.025 + 0.05 * k
            for rep in range(8):
                good = 0.15 <= lag <= 0.35 and rep % 4 != 0
                self.curve.add(lag, 1 + rep % 3 if good else 10 + 3 * rep)

    def status(self) -> dict[str, Any]:
        return {
            "stream": {"name": "synthetic-meg", "sfreq_hz": 1000.0, "n_channels": 306},
            "model": {"name": "test-model", "decoder": "none"},
            "rates": {"windows_per_s": 20.0},
            "counters": dict(self.counters),
            "latency_ms": {s: {"p50": 5.0, "p95": 9.0, "p99": 12.0} for s in STAGES},
            "online_eval": self.curve.as_dict(),
        }

    def health(self) -> tuple[str, list[str]]:
        return self.state, list(self.reasons)

    def gallery_thumbnail(self, image_id: str) -> tuple[bytes, str] | None:
        if image_id.startswith("img_") and image_id[4:].isdigit() and int(image_id[4:]) < 20:
            return jpeg_bytes(int(image_id[4:]), size=64), "image/jpeg"
        return None

    def image_names(self) -> dict[str, str]:
        return {f"img_{k:03d}": f"object {k}" for k in range(20)}


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


def slow_socket(handle: ServerHandle) -> socket.socket:
    """A client socket with a tiny receive buffer (4 KiB), so backpressure reaches the
    server after a few frames instead of after megabytes of kernel buffering."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", handle.port))
    return sock
