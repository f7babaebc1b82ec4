"""``rtdecode demo --example n170``: run 5 of the real N170 recordings, decoded live.

The demo's own settings and replay (``rtdecode.demo``), on port 0: frames name the
category shown (face or house) and the decoded one, the viewer's thumbnail of a category
is a sheet of its pictures, and the live per-lag curve fills.
"""

from __future__ import annotations

import httpx
from PIL import Image

from rtdecode.demo import _n170_settings_and_replay, example_n170
from rtdecode.io.replay import Player
from rtdecode.service import Service
from tests.helpers.lsl_source import poll
from tests.helpers.service import Viewer


def test_the_n170_example_decodes_faces_and_houses_live(unique_name):
    card, run, encoder = example_n170()
    assert card.is_file() and run.name == "data_2017-09-13-15.42.33.csv"
    assert (encoder / "model.safetensors").is_file()
    settings, recording = _n170_settings_and_replay(unique_name, port=0)
    assert {e.value["image_id"] for e in recording.events} == {"face", "house"}
    replay = Player(recording, name=unique_name, source_id=unique_name, speed=2.0).start()
    service = Service(settings)
    try:
        service.start()
        poll(lambda: service.health()[0] == "ready", 60.0, f"ready ({service.health()})")
        viewer = Viewer(service)
        poll(lambda: sum(f.get("true_id") is not None for f in viewer.frames) >= 20, 60.0,
             "20 frames with a stimulus")
        viewer.stop()
        frames = [f for f in viewer.frames if f.get("true_id") is not None]
        assert {f["true_id"] for f in frames} <= {"face", "house"}
        assert all({i for i, _ in f["topk"]} == {"face", "house"} for f in frames)
        assert all(f["true_rank"] in (1, 2) for f in frames)
        base = f"http://127.0.0.1:{service.server.port}"
        resp = httpx.get(f"{base}/api/gallery/face", timeout=10.0)
        assert resp.status_code == 200 and resp.headers["content-type"] == "image/jpeg"
        curve = service.worker.stats.as_dict()["online_eval"]  # what the viewer plots
        assert curve["n_candidates"] == 2 and curve["chance_top1"] == 0.5
        assert sum(row["n"] for row in curve["per_lag"]) >= 20
    finally:
        service.stop()
        replay.stop()
    sheet = service.gallery.image("house")
    assert isinstance(sheet, Image.Image) and sheet.size[0] == sheet.size[1]
