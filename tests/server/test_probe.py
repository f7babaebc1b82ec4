"""Clients that never ack: the server paces them with websocket pings
(rtdecode.server.probe), so a slow reader gets recent frames, and one that stops reading
is closed after ``STALL_S``. A real uvicorn on port 0 and real ``websockets`` clients
with a 4 KiB receive buffer; unit tests drive a Client on a real asyncio loop."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from rtdecode.server import broadcast
from rtdecode.server.app import ServerHandle
from rtdecode.server.broadcast import PROBE, PROBES_PER_MESSAGE, Broadcaster
from rtdecode.server.protocol import CLOSE_STALLED, decode_frame
from tests.helpers.frames import make_frame, next_within, run, seq_of
from tests.helpers.lsl_source import poll
from tests.helpers.server import (
    DEADLINE_S,
    client_stats,
    close_code,
    get,
    serving,
    slow_socket,
    ws_connect,
)

FPS = 25.0


def _published(handle: ServerHandle) -> int:
    return get(handle, "/api/status").json()["server"]["published"]


def test_a_client_that_never_acks_reads_recent_frames_and_its_drops_are_counted():
    """One message every 0.5 s, no acks, a library that reads nothing ahead: without
    pacing the socket buffers fill and every read is ~12 frames further behind (over a
    hundred after ten reads); paced, each frame is at most one read interval old."""
    read_every_s = 0.5
    with serving(fps=FPS, big=True, image_size=256) as (handle, _), ws_connect(
        handle, sock=slow_socket(handle), max_queue=0, close_timeout=0.5
    ) as ws:
        client_id = json.loads(ws.recv(timeout=DEADLINE_S))["client_id"]
        lags = []
        while len(lags) < 10:
            time.sleep(read_every_s)
            message = ws.recv(timeout=DEADLINE_S)
            if isinstance(message, bytes):  # a status now and then takes a frame's place
                lags.append(_published(handle) - decode_frame(message)[0]["seq"])
        stats = client_stats(handle, client_id)
    # published - seq counts frames (25/s) since the frame was made: about one read
    # interval (0.5 s + the test's own /api/status round trip); the margin is for a busy
    # machine, where the 4 KiB buffer's many small reads take a while.
    assert sorted(lags)[len(lags) // 2] <= FPS * 1.0, lags
    assert max(lags[1:]) <= FPS * 1.5, lags
    assert stats["dropped"] >= 50, stats  # 25 frames/s offered, 2/s read
    assert stats["flow"] == "probe" and stats["acked_seq"] is None
    assert stats["probes"] >= PROBES_PER_MESSAGE * 10


def test_a_client_that_stops_reading_is_closed_as_stalled(monkeypatch):
    monkeypatch.setattr(broadcast, "STALL_S", 1.0)
    with serving(fps=FPS, big=True, image_size=256) as (handle, _), ws_connect(
        handle, sock=slow_socket(handle), max_queue=0, close_timeout=0.5
    ) as ws:
        client_id = json.loads(ws.recv(timeout=DEADLINE_S))["client_id"]

        def gone() -> bool:
            clients = get(handle, "/api/status").json()["server"]["clients"]
            return all(c["id"] != client_id for c in clients)

        t0 = time.monotonic()
        poll(gone, DEADLINE_S, "the stalled client to be closed")
        assert time.monotonic() - t0 < 1.0 + DEADLINE_S / 2
        # What it had taken in is still readable, then the close and its reason.
        assert close_code(ws) == CLOSE_STALLED


def test_probed_client_gets_one_message_per_answered_pair_of_pings_newest_frame_first():
    async def main():
        b = Broadcaster(client_queue=8)
        b.start()
        client = b.add_client()
        client.can_probe = True
        loop = asyncio.get_running_loop()
        b.publish(make_frame(0, image=None))
        assert seq_of(await next_within(client)) == 0
        for _ in range(PROBES_PER_MESSAGE):
            assert await next_within(client) is PROBE
            pong = loop.create_future()
            client.probe_sent(pong)
            for i in range(1, 4):
                b.publish(make_frame(i, image=None))
            with pytest.raises(TimeoutError):  # nothing until the pong
                await next_within(client, 0.2)
            pong.set_result(0.001)
        # Frames 1-3 waited (twice over); the newest goes, the two older are dropped.
        assert seq_of(await next_within(client)) == 3
        stats = client.stats
        assert stats.flow == "probe" and stats.probes == PROBES_PER_MESSAGE
        assert stats.dropped >= 2 and stats.probe_rtt_ms == 1.0
        # An ack switches it to the ack window: no more pings.
        client.ack(3)
        b.publish(make_frame(10, image=None))
        assert seq_of(await next_within(client)) == 10
        assert client.stats.flow == "ack"

    run(main())


def test_an_unanswered_ping_stalls_the_client_after_the_limit(monkeypatch):
    monkeypatch.setattr(broadcast, "STALL_S", 0.3)

    async def main():
        b = Broadcaster(client_queue=8)
        b.start()
        client = b.add_client()
        client.can_probe = True
        b.publish(make_frame(0, image=None))
        await next_within(client)
        assert await next_within(client) is PROBE
        client.probe_sent(asyncio.get_running_loop().create_future())  # never answered
        t0 = time.monotonic()
        close = await next_within(client, 2.0)
        assert close.code == CLOSE_STALLED and "stalled" in close.reason
        assert 0.3 <= time.monotonic() - t0 < 1.5

    run(main())
