"""Synthetic frames for the server tests: real JPEG bytes made by Pillow, frames shaped
like the worker's."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from rtdecode.contracts import Frame

STAGES = ("queue", "preprocess", "encode", "retrieve", "generate", "encode_image", "total")


def jpeg_bytes(seed: int, size: int = 96, quality: int = 85, noise: float = 0.15) -> bytes:
    """A real JPEG: a smooth colour gradient that depends on ``seed``, plus noise
    (``noise`` near 1 makes large, incompressible images)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / max(size - 1, 1)
    phase = rng.uniform(0, 2 * np.pi, 3)
    rgb = np.stack([0.5 + 0.5 * np.sin(2 * np.pi * (xx + yy) + p) for p in phase], axis=-1)
    rgb = (1 - noise) * rgb + noise * rng.random((size, size, 3))
    buf = io.BytesIO()
    Image.fromarray((rgb * 255).astype(np.uint8)).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def make_frame(seq: int, image: bytes | None = b"", *, true_id: str | None = "img_007") -> Frame:
    """A frame like the worker makes; ``image=b""`` means 'make a small JPEG'."""
    if image == b"":
        image = jpeg_bytes(seq)
    latencies = {
        stage: round(1.0 + 0.5 * i + (seq % 7) * 0.25, 3) for i, stage in enumerate(STAGES)
    }
    return Frame(
        seq=seq,
        first_sample=1000 + 6 * seq,
        t_first=100.0 + 0.05 * seq,
        t_last=100.25 + 0.05 * seq,
        t_arrived=100.26 + 0.05 * seq,
        latencies_ms=latencies,
        topk=tuple((f"img_{(seq + i) % 20:03d}", 0.9 - 0.1 * i) for i in range(5)),
        true_id=true_id,
        true_rank=None if true_id is None else 1 + seq % 9,
        image=image,
        mime="image/jpeg",
        extra={"flagged": False, "n_gaps": 0},
    )


def seq_of(message: bytes) -> int:
    """The ``seq`` of an encoded frame message."""
    from rtdecode.server.protocol import decode_frame

    return decode_frame(message)[0]["seq"]


async def next_within(client, timeout_s: float = 5.0):
    """A Broadcaster client's next message, or TimeoutError."""
    import asyncio

    return await asyncio.wait_for(client.next_message(), timeout_s)


def run(coro):
    """Run a test coroutine on a fresh loop, 30 s at most."""
    import asyncio

    return asyncio.run(asyncio.wait_for(coro, 30.0))
