"""Frame age at slow clients that never ack: a real uvicorn on 127.0.0.1 (port 0), a
producer publishing frames at the worker's rate (20 frames/s of 20 kB), and three
websockets clients that each read one message per second through a 4 KiB receive buffer
and never send an ``ack``. They differ in how far their library reads ahead of the
application (websockets' ``max_queue``: 0, 1 and the default 16). A fast client reads
everything beside them.

The server paces such clients with websocket pings (rtdecode.server.probe): one message,
a ping, nothing more until the pong. So at most one message is on its way, and a frame's
age at the client is its read interval times one plus what the client's own library
buffers ahead (its ``max_queue``): the server cannot see into that buffer.

For every frame a slow client receives it records its age: the time from the producer's
``publish`` to the client's ``recv`` (same process, same monotonic clock). It also adds
up the drops its ``gap`` messages report, and reads the server's counters for it.

Run it::

    .venv/bin/python bench/slow_client.py                 # 60 s
    .venv/bin/python bench/slow_client.py --duration 10

Writes ``bench/results/slow_client.json`` and prints a summary; exits 1 when the client
that reads nothing ahead got no frame or one older than 2 s.
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


#: The slow clients: websockets' ``max_queue`` (messages its library reads ahead of the
#: application before it stops reading the socket: it pauses above this many, so 0 reads
#: nothing ahead, 1 up to 2, and 16, the library's default, up to 17).
READ_AHEAD = (0, 1, 16)


def run_slow_client(
    duration_s: float,
    *,
    fps: float = 20.0,
    image_bytes: int = 20_000,
    read_every_s: float = 1.0,
    read_ahead: tuple[int, ...] = READ_AHEAD,
) -> dict[str, Any]:
    """Serve frames for ``duration_s`` to a fast client and slow non-acking ones.

    Returns
    -------
    dict
        ``slow``: one entry per ``read_ahead`` value (key ``"max_queue=N"``) with
        ``messages`` read, ``types`` (count per message type), ``frames`` received,
        ``ages_s`` (one per frame), ``age_s`` percentiles, ``over_2s`` (frames older than
        2 s), ``gap_dropped`` (sum of its gap messages), ``server`` (its counters on the
        server at the end), ``connected``; ``fast``: frames and age percentiles;
        ``published``.
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

    def read_slow(ws: Any, record: dict[str, Any], t_end: float) -> None:
        # One message per read_every_s, never an ack.
        while time.monotonic() < t_end:
            time.sleep(read_every_s)
            try:
                msg = ws.recv(timeout=10)
            except Exception as exc:
                record["connected"] = False
                record["ended_by"] = repr(exc)
                return
            record["messages"] += 1
            if isinstance(msg, bytes):
                record["ages_s"].append(time.monotonic() - published[decode_frame(msg)[0]["seq"]])
                kind = "frame"
            else:
                body = json.loads(msg)
                kind = body["type"]
                if kind == "gap":
                    record["gap_dropped"] += body["dropped"]
            record["types"][kind] = record["types"].get(kind, 0) + 1

    slow: dict[str, dict[str, Any]] = {}
    with run_server_in_thread(app, "127.0.0.1", 0) as server, connect(
        server.ws_url, max_size=None, open_timeout=10
    ) as fast:
        sockets = []
        for depth in read_ahead:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.connect(("127.0.0.1", server.port))
            ws = connect(
                server.ws_url, sock=sock, max_size=None, max_queue=depth,
                open_timeout=10, close_timeout=0.5,
            )
            client_id = json.loads(ws.recv(timeout=10))["client_id"]
            slow[f"max_queue={depth}"] = {
                "max_queue": depth, "client_id": client_id, "ws": ws, "messages": 0,
                "types": {}, "ages_s": [], "gap_dropped": 0, "connected": True,
            }
            sockets.append(ws)
        producer = threading.Thread(target=produce, daemon=True)
        fast_reader = threading.Thread(target=read_fast, args=(fast,), daemon=True)
        t_end = time.monotonic() + duration_s
        readers = [
            threading.Thread(target=read_slow, args=(r["ws"], r, t_end), daemon=True)
            for r in slow.values()
        ]
        for thread in (producer, fast_reader, *readers):
            thread.start()
        try:
            for thread in readers:
                thread.join(duration_s + 30)
            clients = {c.id: c.as_dict() for c in app.state.broadcaster.stats.clients}
        finally:
            stop.set()
            producer.join(5)
            fast_reader.join(5)
            for ws in sockets:
                try:
                    ws.close()
                except Exception:
                    pass
    for record in slow.values():
        del record["ws"]
        ages = record["ages_s"]
        record["server"] = clients.get(record["client_id"])
        record["connected"] = record["connected"] and record["server"] is not None
        record["frames"] = len(ages)
        record["age_s"] = percentiles(ages)
        record["over_2s"] = sum(a > 2.0 for a in ages)
        record["ages_s"] = [round(a, 4) for a in ages]
    return {
        "duration_s": duration_s,
        "fps": fps,
        "image_bytes": image_bytes,
        "read_every_s": read_every_s,
        "published": len(published),
        "slow": slow,
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
    rows = [
        [
            f"slow, no ack, {name}",
            r["frames"],
            r["age_s"].get("p50"),
            r["age_s"].get("max"),
            r["over_2s"],
            (r["server"] or {}).get("dropped"),
            (r["server"] or {}).get("flow"),
        ]
        for name, r in result["slow"].items()
    ]
    fast = result["fast"]
    rows.append(["fast", fast["frames"], fast["age_s"].get("p50"), fast["age_s"].get("max"), "", "", ""])
    print(
        format_table(
            ["client", "frames", "age p50 (s)", "age max (s)", "> 2 s", "dropped (server)", "flow"],
            rows,
            floatfmt=".3f",
        )
    )
    write_json(args.out, {"machine": machine_info(), "command": " ".join(sys.argv), **result})
    # The bound the server can keep: a client that reads nothing ahead.
    no_read_ahead = result["slow"].get("max_queue=0")
    ok = no_read_ahead is None or (no_read_ahead["frames"] and no_read_ahead["over_2s"] == 0)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
