"""The server end to end: a real uvicorn on port 0 in a thread, real ``websockets``
clients, and a producer thread publishing synthetic Frames with real JPEG bytes.

``SyntheticSource``, ``FrameProducer`` and ``serving`` (tests/helpers/server.py) are the
test's data source and server harness.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import threading
import time

import pytest
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from rtdecode.config import Settings
from rtdecode.server.app import create_app, run_server_in_thread
from rtdecode.server.protocol import decode_frame
from tests.helpers.frames import STAGES, make_frame
from tests.helpers.lsl_source import poll
from tests.helpers.server import (
    DEADLINE_S,
    FrameProducer,
    SyntheticSource,
    client_stats,
    close_code,
    get,
    recv_until,
    serving,
    slow_socket,
    ws_connect,
)


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


#: The slow viewer takes one message every 200 ms: 5 a second against the producer's 25.
#: A schedule, not a wait for readiness: a viewer that reads "as fast as the test loop
#: goes" is slow on a loaded machine and faster than 25 a second on a quick one.
SLOW_READ_PERIOD_S = 0.2


def test_slow_client_loses_frames_alone_and_they_are_counted():
    with serving(fps=25, big=True, image_size=256) as (handle, _), contextlib.ExitStack() as stack:
        fast = stack.enter_context(ws_connect(handle))
        # max_queue=1: the client library stops reading too; close_timeout: it cannot see
        # the server's close reply behind the unread frames, so do not wait for it.
        slow = stack.enter_context(
            ws_connect(handle, sock=slow_socket(handle), max_queue=1, close_timeout=0.5)
        )
        fast_id = json.loads(fast.recv(timeout=DEADLINE_S))["client_id"]
        slow_id = json.loads(slow.recv(timeout=DEADLINE_S))["client_id"]
        fast_seqs: list[int] = []
        slow_seqs: list[int] = []
        stop = threading.Event()

        def read_fast() -> None:
            while not stop.is_set():
                msg = fast.recv(timeout=DEADLINE_S)
                if isinstance(msg, bytes):
                    fast_seqs.append(decode_frame(msg)[0]["seq"])

        reader = threading.Thread(target=read_fast, daemon=True)
        reader.start()
        try:
            # Counted from the fast reader's first frames: before its thread ran, it was
            # a client that did not read.
            poll(lambda: len(fast_seqs) >= 3, DEADLINE_S, "the fast client's first frames")
            i_fast, fast_drops_before = len(fast_seqs), client_stats(handle, fast_id)["dropped"]
            t_next = time.monotonic()
            deadline = t_next + DEADLINE_S
            while client_stats(handle, slow_id)["dropped"] < 10 or len(slow_seqs) < 5:
                assert time.monotonic() < deadline, (
                    f"Timed out after {DEADLINE_S} s waiting for the slow client's drops: "
                    f"{client_stats(handle, slow_id)}"
                )
                msg = slow.recv(timeout=DEADLINE_S)
                if isinstance(msg, bytes):
                    slow_seqs.append(decode_frame(msg)[0]["seq"])
                t_next += SLOW_READ_PERIOD_S
                stop.wait(max(0.0, t_next - time.monotonic()))
            n_before = len(fast_seqs)
            poll(
                lambda: len(fast_seqs) >= n_before + 25,
                DEADLINE_S,
                "25 more frames to the fast client",
            )
        finally:
            stop.set()
            reader.join(DEADLINE_S)
        fast_seqs = fast_seqs[i_fast:]
        steps = [b - a for a, b in itertools.pairwise(fast_seqs)]
        assert steps.count(1) >= 0.9 * len(steps), f"fast client lost frames: {steps}"
        fast_drops = client_stats(handle, fast_id)["dropped"] - fast_drops_before
        assert fast_drops <= 0.05 * len(fast_seqs)
        # The slow viewer is handed the newest frame, not a backlog: its seq jumps by about
        # the 5 frames published between two of its reads (1 would mean queued frames).
        slow_steps = sorted(b - a for a, b in itertools.pairwise(slow_seqs))
        assert slow_steps[len(slow_steps) // 2] >= 3, f"slow client got a backlog: {slow_seqs}"
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
        names = get(handle, "/api/names").json()
        assert names["v"] == 1 and names["names"]["img_003"] == "object 3"
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
        for path in ("/api/status", "/metrics", "/api/gallery/img_001", "/api/names"):
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
