"""The two-lane worker behind a real server: a real uvicorn on port 0, a real websocket
client, and a DecodeWorker over toy models with a slow decoder publishing into the app's
Broadcaster. Frame headers name the lane and the image's window; /api/status and /metrics
show each lane's latencies."""

from __future__ import annotations

import json
import time

from prometheus_client.parser import text_string_to_metric_families

from rtdecode.config import Settings
from rtdecode.server.app import create_app, run_server_in_thread
from rtdecode.server.protocol import decode_frame
from tests.helpers.lsl_source import poll
from tests.helpers.server import get, ws_connect
from tests.helpers.worker import SlowDecoder, build_worker

DEADLINE_S = 60.0


class WorkerSource:
    """The service's status shape, from a live DecodeWorker."""

    def __init__(self, worker) -> None:
        self.worker = worker

    def status(self):
        stats = self.worker.stats.as_dict()
        return {"online_eval": stats.pop("online_eval"), "worker": stats}

    def health(self):
        return ("ready", []) if self.worker.ready.is_set() else ("starting", ["warming up"])

    def gallery_thumbnail(self, image_id):
        return None


def test_lanes_in_frame_headers_status_and_metrics():
    worker, _, _ = build_worker(SlowDecoder(0.2), max_fps=100.0)
    app = create_app(Settings(port=0), WorkerSource(worker), status_interval_s=0.25)
    worker.publish = app.state.broadcaster.publish
    handle = run_server_in_thread(app, "127.0.0.1", 0)
    worker.start()
    try:
        headers = []
        with ws_connect(handle) as ws:
            deadline = time.monotonic() + DEADLINE_S
            while sum(h["lane"] == "image" for h in headers) < 3 and time.monotonic() < deadline:
                msg = ws.recv(timeout=DEADLINE_S)
                if isinstance(msg, bytes):
                    header, image = decode_frame(msg)
                    headers.append(header)
                    ws.send(json.dumps({"type": "ack", "seq": header["seq"]}))
        by_seq = {h["seq"]: h for h in headers}
        images = [h for h in headers if h["lane"] == "image"]
        assert len(images) == 3 and all(h["n_bytes"] > 0 for h in images)
        for h in images:
            if h["window_seq"] in by_seq:  # the client may have joined after that frame
                assert by_seq[h["window_seq"]]["first_sample"] == h["first_sample"]
            assert {"wait", "generate", "total"} <= set(h["latencies_ms"])
        assert {h["lane"] for h in headers} == {"retrieval", "image"}
        assert all(h["window_seq"] is None for h in headers if h["lane"] == "retrieval")

        poll(lambda: "image" in get(handle, "/api/status").json()["source"]["worker"]["lanes"], DEADLINE_S,
             "lanes on /api/status")
        lanes = get(handle, "/api/status").json()["source"]["worker"]["lanes"]
        assert lanes["n"] == 2
        assert lanes["retrieval"]["latency_ms"]["total"]["p50"] > 0
        assert lanes["image"]["latency_ms"]["generate"]["p50"] >= 200
        text = get(handle, "/metrics").text
        tables = {
            (s.labels["table"], s.labels["stage"])
            for family in text_string_to_metric_families(text)
            if family.name == "rtdecode_latency_quantile_ms"
            for s in family.samples
        }
        assert ("worker.lanes.retrieval", "total") in tables
        assert ("worker.lanes.image", "total") in tables
        assert ("worker.lanes.image", "generate") in tables
        assert "rtdecode_worker_lanes_image_embeddings_skipped" in text
    finally:
        worker.stop()
        handle.stop()
