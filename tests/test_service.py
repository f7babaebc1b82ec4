"""End to end: `rtdecode replay` in a subprocess -> the service (reader, windower,
DecodeWorker with a real tiny encoder trained here, uvicorn on port 0) -> a websockets
client. Nothing is mocked."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import httpx
import numpy as np
import pytest
from websockets.sync.client import connect

from rtdecode.config import Settings
from rtdecode.server.protocol import decode_frame
from tests.helpers.lsl_source import poll

DEADLINE_S = 60.0


@pytest.fixture(scope="module")
def tiny_subject(tmp_path_factory):
    """A tiny simulated subject and an encoder trained on it for one epoch."""
    import torch

    torch.set_num_threads(1)
    from rtdecode.data.simulate import simulate_subject
    from rtdecode.training.encoder import train

    root = tmp_path_factory.mktemp("svc")
    data = simulate_subject(root / "sim", seed=3, size="tiny", progress=False)
    ckpt = train(data, root / "ckpt", preset="test", max_epochs=1, device="cpu", progress=False)
    return data, ckpt


@pytest.fixture
def replay(tiny_subject, unique_name):
    data, _ = tiny_subject
    proc = subprocess.Popen(
        [sys.executable, "-m", "rtdecode.cli", "--lsl-local", "replay", str(data / "replay_raw.fif"),
         "--name", unique_name, "--source-id", unique_name, "--loop", "--quiet"],
        env=dict(os.environ), stdin=subprocess.DEVNULL,
    )
    yield unique_name
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()


@pytest.fixture
def service(tiny_subject, replay):
    from rtdecode.service import Service

    data, ckpt = tiny_subject
    settings = Settings(
        stream=replay, source_id=replay, model=ckpt, decoder="none", gallery=data / "images",
        port=0, lsl_local=True, max_fps=5,
    )
    svc = Service(settings)
    svc.start()
    yield svc
    svc.stop()


def test_replay_to_service_to_websocket_client(service):
    poll(lambda: service.health()[0] == "ready", DEADLINE_S, "the service to become ready")
    r = httpx.get(f"{service.url}health", timeout=10)
    assert r.status_code == 200 and r.json()["state"] == "ready"
    frames = []
    with connect(f"ws://127.0.0.1:{service.server.port}/ws", open_timeout=10) as ws:
        deadline = time.monotonic() + DEADLINE_S
        while len(frames) < 20 and time.monotonic() < deadline:
            msg = ws.recv(timeout=10)
            if isinstance(msg, bytes):
                frames.append(decode_frame(msg))
    assert len(frames) == 20, "fewer than 20 frames arrived"
    seqs = [h["seq"] for h, _ in frames]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    for header, _image in frames:
        assert header["v"] == 1
        for stage in ("preprocess", "encode", "retrieve", "total"):
            assert header["latencies_ms"][stage] >= 0
        assert len(header["topk"]) == 5
        ids = [i for i, _ in header["topk"]]
        assert all(i in service.gallery for i in ids)
    # Windows are cut on a 50 ms hop: consecutive frames' first samples differ by multiples of it.
    starts = np.diff([h["first_sample"] for h, _ in frames])
    hop = round(0.05 * 1200)
    assert np.all(starts % hop == 0) and np.all(starts > 0)
    status = httpx.get(f"{service.url}api/status", timeout=10).json()["source"]
    assert status["worker"]["counters"]["frames"] >= 20
    assert status["reader"]["samples"] > 0


def test_frames_carry_the_true_stimulus_from_markers(service):
    poll(lambda: service.health()[0] == "ready", DEADLINE_S, "the service to become ready")
    seen = []
    with connect(f"ws://127.0.0.1:{service.server.port}/ws", open_timeout=10) as ws:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline and not seen:
            msg = ws.recv(timeout=10)
            if isinstance(msg, bytes):
                header, _ = decode_frame(msg)
                if header.get("true_id"):
                    seen.append(header)
    assert seen, "no frame named the stimulus on screen"
    h = seen[0]
    assert h["true_id"] in service.gallery
    assert 1 <= h["true_rank"] <= len(service.gallery)
