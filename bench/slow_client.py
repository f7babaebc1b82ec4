"""Frame age at a slow client that never acks: a real uvicorn on 127.0.0.1 (port 0), a
producer publishing frames at the worker's rate, and a websockets client that reads one
message per second through a 4 KiB receive buffer (``max_queue=1``: its library does
not read ahead either), and never sends an ``ack``. A fast client reads everything
beside it.

For every frame the slow client receives it records its age: the time from the
producer's ``publish`` to the client's ``recv`` (same process, same monotonic clock).
It also adds up the drops its ``gap`` messages report, and compares them with the
server's counters.

Run it::

    .venv/bin/python bench/slow_client.py                 # 60 s
    .venv/bin/python bench/slow_client.py --duration 10

Writes ``bench/results/slow_client.json`` and prints a summary. ``tests/test_slow_client.py``
runs :func:`run_slow_client` for a few seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

from common import RESULTS_DIR, format_table, machine_info, percentiles, write_json

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
os.environ.setdefault("LSLAPICFG", str(ROOT / "rtdecode" / "lsl" / "lsl_local.cfg"))

from fuzz_api import FuzzSource  # noqa: E402


def _frame(seq: int, image: bytes):
    from rtdecode.contracts import Frame

    return Frame(
        seq=seq,
        first_sample=60 * seq,
        t_first=0.05 * seq,
        t_last=0.05 * seq + 0.25,
        t_arrived=time.monotonic(),
        latencies_ms={"total": 10.0},
        topk=(("img_001", 0.9),),
        image=image,
        mime="image/jpeg",
    )


def run_slow_client(
    duration_s: float, *, fps: float = 20.0, image_bytes: int = 20_000, read_every_s: float = 1.0
) -> dict[str, Any]:
    """Serve frames for ``duration_s`` to a fast client and a slow non-acking one.

    Returns
    -------
    dict
        ``slow``: ``messages`` read, ``frames`` received, ``ages_s`` (one per frame),
        ``age_s`` percentiles, ``gap_dropped`` (sum of its gap messages), ``server``
        (its counters on the server at the end), ``connected`` (still connected);
        ``fast``: frames and age percentiles; ``published``.
    """
    from websockets.sync.client import connect

    from rtdecode.config import Settings
    from rtdecode.server.app import create_app, run_server_in_thread
    from rtdecode.server.protocol import decode_frame

    app = create_app(Settings(), FuzzSource(), status_interval_s=1.0)
    published: dict[int, float] = {}
    stop = threading.Event()
    image = os.urandom(image_bytes)

    def produce() -> None:
        t_next = time.monotonic()
        seq = 0
        while not stop.is_set():
            published[seq] = time.monotonic()
            app.state.broadcaster.publish(_frame(seq, image))
            seq += 1
            t_next += 1.0 / fps
            stop.wait(max(0.0, t_next - time.monotonic()))

    fast_ages: list[float] = []

    def read_fast(ws: Any) -> None:
        while not stop.is_set():
            try:
                msg = ws.recv(timeout=0.5)
            except TimeoutError:
                continue
            except Exception:
                return
            if isinstance(msg, bytes):
                fast_ages.append(time.monotonic() - published[decode_frame(msg)[0]["seq"]])

    slow_ages: list[float] = []
    gap_dropped = n_messages = 0
    types: dict[str, int] = {}
    connected = True
    with run_server_in_thread(app, "127.0.0.1", 0) as server:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", server.port))
        fast = connect(server.ws_url, max_size=None, open_timeout=10)
        slow = connect(
            server.ws_url, sock=sock, max_size=None, max_queue=1, open_timeout=10, close_timeout=0.5
        )
        slow_id = json.loads(slow.recv(timeout=10))["client_id"]
        producer = threading.Thread(target=produce, daemon=True)
        fast_reader = threading.Thread(target=read_fast, args=(fast,), daemon=True)
        producer.start()
        fast_reader.start()
        t_end = time.monotonic() + duration_s
        try:
            while time.monotonic() < t_end:
                time.sleep(read_every_s)
                try:
                    msg = slow.recv(timeout=10)
                except Exception:
                    connected = False
                    break
                n_messages += 1
                if isinstance(msg, bytes):
                    slow_ages.append(time.monotonic() - published[decode_frame(msg)[0]["seq"]])
                    types["frame"] = types.get("frame", 0) + 1
                else:
                    body = json.loads(msg)
                    types[body["type"]] = types.get(body["type"], 0) + 1
                    if body["type"] == "gap":
                        gap_dropped += body["dropped"]
            stats = next(
                (c.as_dict() for c in app.state.broadcaster.stats.clients if c.id == slow_id), None
            )
        finally:
            stop.set()
            producer.join(5)
            fast_reader.join(5)
            for ws in (fast, slow):
                try:
                    ws.close()
                except Exception:
                    pass
    return {
        "duration_s": duration_s,
        "fps": fps,
        "image_bytes": image_bytes,
        "read_every_s": read_every_s,
        "published": len(published),
        "slow": {
            "messages": n_messages,
            "types": types,
            "frames": len(slow_ages),
            "ages_s": [round(a, 4) for a in slow_ages],
            "age_s": percentiles(slow_ages),
            "gap_dropped": gap_dropped,
            "server": stats,
            "connected": connected and stats is not None,
        },
        "fast": {"frames": len(fast_ages), "age_s": percentiles(fast_ages)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--fps", type=float, default=20.0)
    parser.add_argument("--image-bytes", type=int, default=20_000)
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "slow_client.json")
    args = parser.parse_args(argv)
    result = run_slow_client(args.duration, fps=args.fps, image_bytes=args.image_bytes)
    slow, fast = result["slow"], result["fast"]
    print(
        format_table(
            ["client", "frames", "age p50 (s)", "age max (s)", "drops reported", "drops on server"],
            [
                [
                    "slow, no ack",
                    slow["frames"],
                    slow["age_s"].get("p50"),
                    slow["age_s"].get("max"),
                    slow["gap_dropped"],
                    (slow["server"] or {}).get("dropped"),
                ],
                [
                    "fast",
                    fast["frames"],
                    fast["age_s"].get("p50"),
                    fast["age_s"].get("max"),
                    "",
                    "",
                ],
            ],
            floatfmt=".3f",
        )
    )
    write_json(args.out, {"machine": machine_info(), "command": " ".join(sys.argv), **result})
    return 0 if slow["frames"] and slow["age_s"]["max"] <= 2.0 else 1


if __name__ == "__main__":
    sys.exit(main())
