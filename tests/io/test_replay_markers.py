"""``rtdecode replay --markers json|string|none``: events go out as labs send them."""

from __future__ import annotations

import json
import threading

import mne
import numpy as np
import pytest

from rtdecode.io.replay import replay_file
from rtdecode.lsl.streams import find, open_inlet, resolve

SFREQ = 200.0
EVENTS = (40, 140, 240)


@pytest.fixture(scope="module")
def fif(tmp_path_factory):
    info = mne.create_info(["MEG0111", "MEG0121"], SFREQ, "mag")
    raw = mne.io.RawArray(np.zeros((2, 400)), info, verbose="error")
    descs = [json.dumps({"image_id": f"img_{k}", "trial_type": "exp"}) for k in range(3)]
    raw.set_annotations(mne.Annotations([s / SFREQ for s in EVENTS], [0.0] * 3, descs))
    path = tmp_path_factory.mktemp("markers") / "events_raw.fif"
    raw.save(path, verbose="error")
    return path


@pytest.mark.parametrize("form", ["json", "string", "none"])
def test_replay_marker_forms(fif, unique_name, form):
    stop = threading.Event()
    done: dict = {}
    player = threading.Thread(
        target=lambda: done.setdefault("stats", replay_file(
            fif, name=unique_name, markers=form, speed=4.0, progress=False, stop_event=stop,
            wait_for_consumer_s=20.0)),
        daemon=True,
    )  # fmt: skip
    player.start()
    try:
        data = resolve(name=unique_name, timeout_s=10.0)
        m_info = find(name=f"{unique_name}-markers", timeout_s=1.0 if form == "none" else 10.0)
        texts = []
        if m_info is not None:
            m_inlet = open_inlet(m_info)
            m_inlet.open_stream(10.0)
        inlet = open_inlet(data)
        inlet.open_stream(10.0)  # the replay starts with this consumer
        while m_info is not None and len(texts) < len(EVENTS):
            values, _ = m_inlet.pull_chunk(timeout=10.0, max_samples=1, min_samples=1)
            assert values, f"no marker within 10 s after {texts}"
            texts += [v[0] for v in values]
        player.join(20.0)
    finally:
        stop.set()
        player.join(10.0)
    if form == "json":
        assert [json.loads(t)["image_id"] for t in texts] == ["img_0", "img_1", "img_2"]
        assert [json.loads(t)["sample"] for t in texts] == list(EVENTS)
    elif form == "string":
        assert texts == ["img_0", "img_1", "img_2"]
    else:
        assert m_info is None and done["stats"].markers_sent == 0
    assert done["stats"].samples_sent == 400
