"""Frame age at send time: a frame older than ``max_frame_age_s`` never leaves the
server; it is dropped, counted as ``stale`` (and ``dropped``) and reported in the next
``gap`` message. Real Broadcaster on a real asyncio loop."""

from __future__ import annotations

import asyncio
import json
import time

from rtdecode.server.broadcast import MAX_FRAME_AGE_S, Broadcaster
from tests.helpers.frames import make_frame, next_within, run, seq_of


def test_frames_older_than_the_limit_are_dropped_counted_and_reported():
    async def main():
        b = Broadcaster(client_queue=8, max_frame_age_s=0.3)
        b.start()
        client = b.add_client()
        for i in range(3):
            b.publish(make_frame(i, image=None))
        await asyncio.sleep(0.4)  # the client does not read: these three go stale
        b.publish(make_frame(3, image=None))
        t0 = time.monotonic()
        gap = json.loads(await next_within(client))
        assert gap["type"] == "gap" and gap["dropped"] == 3 and gap["stale_total"] == 3
        assert gap["next_seq"] == 3
        assert seq_of(await next_within(client)) == 3
        assert time.monotonic() - t0 < 0.3
        stats = client.stats
        assert stats.stale == 3 and stats.dropped == 3 and stats.sent == 1
        assert b.stats.dropped == 3

    run(main())


def test_fresh_frames_are_all_sent_and_the_default_limit_is_one_second():
    assert MAX_FRAME_AGE_S == 1.0

    async def main():
        b = Broadcaster(client_queue=8)
        b.start()
        client = b.add_client()
        for i in range(5):
            b.publish(make_frame(i, image=None))
        await asyncio.sleep(0)
        assert [seq_of(await next_within(client)) for _ in range(5)] == list(range(5))
        assert client.stale == 0

    run(main())
