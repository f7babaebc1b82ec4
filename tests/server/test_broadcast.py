"""Broadcaster on a real asyncio loop: hand-off from other threads, per-client bounded
queues (drop-oldest, counted), rate limits, client limit, control messages, stop."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading

import pytest

from rtdecode.server.broadcast import Broadcaster, CloseRequest, EncodedFrame, TooManyClients
from tests.helpers.frames import make_frame, next_within, run, seq_of


def test_publish_from_another_thread_reaches_every_client_in_order():
    async def main():
        b = Broadcaster(client_queue=64, max_frame_age_s=60.0)  # order, not age
        b.start()
        c1, c2 = b.add_client("a"), b.add_client("b")
        n = 20
        producer = threading.Thread(target=lambda: [b.publish(make_frame(i)) for i in range(n)])
        producer.start()
        got1 = [seq_of(await next_within(c1)) for _ in range(n)]
        got2 = [seq_of(await next_within(c2)) for _ in range(n)]
        producer.join()
        assert got1 == got2 == list(range(n))
        stats = b.stats
        assert stats.published == n and stats.sent == 2 * n and stats.dropped == 0
        assert [c.sent for c in stats.clients] == [n, n]
        # A frozen snapshot; its dict is what /api/status serves.
        with pytest.raises(dataclasses.FrozenInstanceError):
            stats.sent = 0  # type: ignore[misc]
        report = json.loads(json.dumps(stats.as_dict()))
        assert [c["sent"] for c in report["clients"]] == [n, n] and report["published"] == n

    run(main())


def test_full_queue_drops_oldest_counts_it_and_reports_a_gap():
    async def main():
        b = Broadcaster(client_queue=3)
        b.start()
        slow, fast = b.add_client(), b.add_client()
        for i in range(8):
            b.publish(make_frame(i, image=None))
            await asyncio.sleep(0)  # let the loop drain each hand-off
            assert seq_of(await next_within(fast)) == i  # the fast client keeps up
        assert slow.dropped == 5 and fast.dropped == 0
        gap = json.loads(await next_within(slow))
        assert gap["type"] == "gap" and gap["dropped"] == 5 and gap["next_seq"] == 5
        assert gap["dropped_total"] == 5
        assert [seq_of(await next_within(slow)) for _ in range(3)] == [5, 6, 7]
        assert b.stats.dropped == 5

    run(main())


def test_rate_limit_keeps_one_frame_per_period_and_counts_the_rest():
    async def main():
        b = Broadcaster(client_queue=1000)
        b.start()
        limited, full = b.add_client(), b.add_client()
        limited.set_rate(5.0)
        # Offer 4 s of frames at 40 fps on a simulated clock.
        for i in range(160):
            item = EncodedFrame(i, str(i).encode())
            for c in (limited, full):
                c.offer(item, now=1000.0 + i / 40.0)
        assert full.stats.queued == 160
        n = limited.stats.queued
        assert 19 <= n <= 21  # 5 fps over 4 s
        assert limited.skipped == 160 - n and limited.dropped == 0
        seqs = [int(await next_within(limited)) for _ in range(n)]
        assert {seqs[i + 1] - seqs[i] for i in range(n - 1)} == {8}
        limited.set_rate(None)
        limited.offer(EncodedFrame(999, b"x"), now=2000.0)
        limited.offer(EncodedFrame(1000, b"x"), now=2000.001)
        assert [await next_within(limited) for _ in range(2)] == [b"x", b"x"]
        assert limited.skipped == 160 - n

    run(main())


def test_client_limit_and_totals_survive_departures():
    async def main():
        b = Broadcaster(client_queue=2, max_clients=2)
        b.start()
        c1, _ = b.add_client(), b.add_client()
        with pytest.raises(TooManyClients, match="max_clients=2"):
            b.add_client()
        b.publish(make_frame(0, image=None))
        await asyncio.sleep(0)
        await next_within(c1)
        b.remove_client(c1)
        b.add_client()  # a slot is free again
        stats = b.stats
        assert stats.rejected == 1 and stats.connections == 3 and stats.sent == 1

    run(main())


def test_control_messages_go_first_and_close_ends_the_stream():
    async def main():
        b = Broadcaster()
        b.start()
        c = b.add_client()
        b.publish(make_frame(0, image=None))
        await asyncio.sleep(0)
        c.send_control('{"type":"hello"}')
        assert await next_within(c) == '{"type":"hello"}'
        assert seq_of(await next_within(c)) == 0
        b.publish(make_frame(1, image=None))
        await asyncio.sleep(0)
        b.broadcast_text('{"type":"status"}')
        b.close_all(1001, "bye")
        assert await next_within(c) == '{"type":"status"}'
        assert await next_within(c) == CloseRequest(1001, "bye")  # queued frame discarded
        waiter = asyncio.ensure_future(b.wait_closed(5.0))
        b.remove_client(c)
        assert await waiter

    run(main())


def test_status_snapshots_replace_each_other_and_wait_for_an_acking_clients_window():
    async def main():
        b = Broadcaster(client_queue=8)
        b.start()
        c = b.add_client()
        # Not yet taken: each newer snapshot replaces the one waiting.
        for i in range(3):
            c.send_status(json.dumps({"type": "status", "n": i}))
        assert json.loads(await next_within(c))["n"] == 2
        assert c.stats.status_replaced == 2
        # The client acks: with 2 frames in flight and none acked, status and frames wait.
        for i in range(4):
            b.publish(make_frame(i, image=None))
            await asyncio.sleep(0)
        c.ack(-1)
        assert [seq_of(await next_within(c)) for _ in range(2)] == [0, 1]
        c.send_status(json.dumps({"type": "status", "n": 3}))
        c.send_control('{"type":"pong"}')  # replies are not held back
        assert await next_within(c) == '{"type":"pong"}'
        with pytest.raises(TimeoutError):
            await next_within(c, 0.2)
        c.ack(0)  # room for one: the newest status first, then the next frame
        assert json.loads(await next_within(c))["n"] == 3
        assert seq_of(await next_within(c)) == 2
        with pytest.raises(TimeoutError):
            await next_within(c, 0.2)

    run(main())


def test_hand_off_is_bounded_when_the_loop_is_busy():
    async def main():
        b = Broadcaster(client_queue=100, handoff_size=8)
        b.start()
        c = b.add_client()
        for i in range(20):  # the loop cannot drain until this coroutine yields
            assert b.publish(make_frame(i, image=None))
        await asyncio.sleep(0)
        assert b.stats.handoff_dropped == 12
        assert [seq_of(await next_within(c)) for _ in range(8)] == list(range(12, 20))

    run(main())


def test_publish_without_a_running_loop_is_counted_not_raised():
    seen = []

    def observer(frame):
        seen.append(frame.seq)
        raise RuntimeError("metrics backend down")

    b = Broadcaster(on_frame=observer)
    assert b.publish(make_frame(0)) is False

    async def main():
        b.start()
        assert b.publish(make_frame(1)) is True
        b.stop()
        assert b.publish(make_frame(2)) is False

    run(main())
    stats = b.stats
    assert stats.published == 3 and stats.unserved >= 2 and seen == [0, 1, 2]


def test_invalid_sizes_are_refused_with_a_sentence():
    with pytest.raises(ValueError, match="must all be at least 1"):
        Broadcaster(client_queue=0)
