"""End to end: `rtdecode replay` in a subprocess -> the service (reader, windower,
DecodeWorker with a real tiny encoder trained here, uvicorn on port 0) -> a websockets
client. Nothing is mocked."""

from __future__ import annotations

import csv
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
from tests.helpers.service import build_tiny_model

DEADLINE_S = 60.0


@pytest.fixture(scope="module")
def tiny_subject(tmp_path_factory):
    """The tiny simulated subject and an encoder trained on it for one epoch."""
    return build_tiny_model(tmp_path_factory)


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
    # the window ends lag_s after the onset: at most the hold, and on the 50 ms hop grid
    assert 0.0 <= h["lag_s"] <= 1.5
    # the viewer names the stimulus by its concept, from the gallery's gallery.csv
    names = httpx.get(f"{service.url}api/names", timeout=10).json()["names"]
    with open(service.gallery.root / "gallery.csv", newline="") as fh:
        concept_of = {r["id"]: r["concept"] for r in csv.DictReader(fh)}
    assert names[h["true_id"]] == concept_of[h["true_id"]] and len(names) == len(service.gallery)


def test_status_and_metrics_carry_the_sessions_decoding_curve(service):
    """Every ranked frame lands in one 50 ms lag bin of /api/status's online_eval, and
    /metrics exports the same curve."""
    poll(lambda: service.health()[0] == "ready", DEADLINE_S, "the service to become ready")
    lags, ranks = [], []
    with connect(f"ws://127.0.0.1:{service.server.port}/ws", open_timeout=10) as ws:
        deadline = time.monotonic() + DEADLINE_S
        while time.monotonic() < deadline and len(ranks) < 10:
            msg = ws.recv(timeout=10)
            if isinstance(msg, bytes):
                header, _ = decode_frame(msg)
                if header.get("true_rank") is not None:
                    lags.append(header["lag_s"])
                    ranks.append(header["true_rank"])
    assert len(ranks) >= 10, "fewer than 10 frames knew the true image"
    status = httpx.get(f"{service.url}api/status", timeout=10).json()["source"]
    curve = status["online_eval"]
    n = len(service.gallery)
    assert curve["n_candidates"] == n and curve["chance_top5"] == pytest.approx(min(5, n) / n)
    rows = {round(r["lag_s"], 3): r for r in curve["per_lag"]}
    assert sum(r["n"] for r in rows.values()) >= len(ranks)
    for lag in lags:  # each frame's lag has its bin (centre = floor(lag / 50 ms) + 25 ms)
        centre = round((np.floor(lag / 0.05 + 1e-9) + 0.5) * 0.05, 3)
        assert centre in rows, f"lag {lag} s has no bin in {sorted(rows)}"
    for r in rows.values():
        assert 0.0 <= r["top1"] <= r["top5"] <= 1.0 and 1 <= r["median_rank"] <= n
    metrics = httpx.get(f"{service.url}metrics", timeout=10).text
    assert "rtdecode_online_eval_top5{" in metrics
    assert "rtdecode_online_eval_chance_top5 " in metrics


def test_retrieval_set_test_searches_only_the_held_out_images(tiny_subject, replay):
    """--retrieval-set test: top-k and ranks are among the checkpoint's test images."""
    import json

    from rtdecode.service import Service

    data, ckpt = tiny_subject
    test_images = json.loads((ckpt / "config.json").read_text())["test_images"]
    assert test_images, "the checkpoint names no held-out test image"
    settings = Settings(
        stream=replay, source_id=replay, model=ckpt, decoder="none", gallery=data / "images",
        port=0, lsl_local=True, retrieval_set="test",
    )
    svc = Service(settings)
    svc.start()
    try:
        poll(lambda: svc.health()[0] == "ready", DEADLINE_S, "the service to become ready")
        with connect(f"ws://127.0.0.1:{svc.server.port}/ws", open_timeout=10) as ws:
            header = None
            while header is None:
                msg = ws.recv(timeout=DEADLINE_S)
                if isinstance(msg, bytes):
                    header, _ = decode_frame(msg)
        assert {i for i, _ in header["topk"]} <= set(test_images)
        curve = svc.status()["online_eval"]
        assert curve["n_candidates"] == len(test_images)
    finally:
        svc.stop()



# --------------------------------------------------------------------------- checks
def _card(**changes):
    """A checkpoint card of two channels (the checks read nothing else)."""
    from rtdecode.encoder.card import CheckpointCard

    config = {"window_s": 0.25, "subjects": ["sub-01"], "target": {"name": "handcrafted-v1"},
              "offsets": {"window_start_s": 0.1, "sampling": "stream", "lag_min_s": -0.2,
                          "lag_max_s": 1.0, "lag_step_s": 0.05},
              "ch_names": ["a", "b"], "positions": [[0.0, 0.0], [1.0, 1.0]]}
    config.update(changes)
    config["architecture"] = {"n_channels": 2, "n_times": 4, "target_shape": [4],
                              "n_subjects": len(config["subjects"])}
    return CheckpointCard.from_config(config)


def test_serve_needs_the_subject_of_a_multi_subject_encoder():
    from rtdecode.contracts import ParameterError

    card = _card(subjects=["sub-01", "sub-02", "sub-03"])
    with pytest.raises(ParameterError, match="trained on 3 subjects .*pass subject") as bad:
        card.subject_index(None)
    assert bad.value.parameter == "subject"
    assert card.subject_index("02") == 1
    assert card.subject_index("sub-03") == 2
    with pytest.raises(ValueError, match="'07' is not one of the encoder's subjects"):
        card.subject_index("07")
    assert _card().subject_index(None) == 0


def test_serve_refuses_a_fixed_window_encoder_and_a_window_it_would_not_cut():
    from rtdecode.contracts import ParameterError
    from rtdecode.decoding import check_window

    legacy = _card(offsets={"window_start_s": 0.1})  # checkpoints before streaming training
    with pytest.raises(ParameterError, match="trained on one window .*streaming recipe") as bad:
        check_window(legacy)
    assert bad.value.parameter == "allow_fixed_window"
    assert check_window(legacy, allow_fixed_window=True) == 0.25
    assert check_window(_card()) == 0.25
    assert check_window(_card(), 0.25) == 0.25
    with pytest.raises(ParameterError, match="trained on 0.25 s windows but window_s=0.5") as bad:
        check_window(_card(), 0.5)
    assert bad.value.parameter == "window_s"
    with pytest.raises(ParameterError, match="does not record its window length"):
        check_window(_card(window_s=None))
    assert check_window(_card(window_s=None), 0.3) == 0.3


def test_serve_refuses_embeddings_of_another_image_encoder():
    from rtdecode.contracts import ParameterError
    from rtdecode.decoding import check_image_space

    card = _card(target={"name": "clip-vit-h-14"})
    check_image_space(card, "clip-vit-h-14", "the decoder's image encoder", "decoder")
    check_image_space(card, None, "the decoder's image encoder", "decoder")  # unknown: accepted
    with pytest.raises(ParameterError, match="'clip-vit-h-14' embeddings but the decoder's image "
                       "encoder is 'handcrafted-v1'") as bad:
        check_image_space(card, "handcrafted-v1", "the decoder's image encoder", "decoder")
    assert "give a --decoder made with 'clip-vit-h-14'" in bad.value.naming("--decoder")
    with pytest.raises(ValueError, match="use the same image encoder"):
        check_image_space(card, "handcrafted-v1", "the image encoder built here")


def test_retrieval_set_test_needs_the_checkpoints_test_images(tmp_path):
    from rtdecode.contracts import ParameterError
    from rtdecode.decoding import retrieval_ids

    class _Gallery:
        root = tmp_path
        ids = ("a", "b", "c")

        def __contains__(self, i):
            return i in self.ids

    assert retrieval_ids("all", _card(), _Gallery()) == ["a", "b", "c"]
    assert retrieval_ids("test", _card(test_images=["c", "a"]), _Gallery()) == ["c", "a"]
    with pytest.raises(ParameterError, match="has none .*use retrieval_set all") as bad:
        retrieval_ids("test", _card(), _Gallery())
    assert bad.value.naming("--retrieval-set").startswith("--retrieval-set test needs")
    with pytest.raises(ParameterError, match="lacks 1 of the checkpoint's test images") as bad:
        retrieval_ids("test", _card(test_images=["z"]), _Gallery())
    assert bad.value.parameter == "gallery"


def _checkpoint(folder, subjects=("sub-01", "sub-02")):
    """A random two-subject `test`-preset checkpoint whose card names no gallery."""
    from rtdecode.encoder import build_model
    from rtdecode.encoder.checkpoint import save_checkpoint

    positions = np.random.default_rng(0).normal(size=(4, 2))
    model = build_model("test", 4, 12, positions, n_subjects=len(subjects), target_dim=8)
    save_checkpoint(folder, model, {
        "ch_names": ["a", "b", "c", "d"], "positions": positions, "window_s": 0.1,
        "offsets": {"window_start_s": 0.0, "sampling": "stream"}, "subjects": list(subjects),
        "preprocess": {"version": 1, "config": {"ch_names": ["a", "b", "c", "d"]}},
    })
    return folder


@pytest.mark.parametrize(
    "argv, says",
    [
        ([], "pass --subject with the one whose stream you decode"),
        (["--subject", "01", "--window-s", "0.5"], "but --window-s=0.5 was asked for"),
        (["--subject", "01"], "No gallery for retrieval; pass --gallery DIR"),
    ],
)
def test_serve_errors_name_the_flags(tmp_path, capsys, argv, says):
    """The library names its parameters (ParameterError); the command line names the flags."""
    import signal

    from rtdecode.cli import main

    ckpt = _checkpoint(tmp_path / "ckpt")
    handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = main(["serve", "--model", str(ckpt), "--stream", "nothing", "--decoder", "none",
                     *argv])
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    err = capsys.readouterr().err
    assert code == 2 and "rtdecode serve: error: " in err and says in err, err


def test_evaluate_online_names_the_subject_flag(tmp_path, capsys):
    from rtdecode.cli import main

    ckpt = _checkpoint(tmp_path / "ckpt")
    assert main(["evaluate-online", str(ckpt), "--recording", str(tmp_path / "x_raw.fif")]) == 2
    err = capsys.readouterr().err
    assert "rtdecode evaluate-online: error: This encoder was trained on 2 subjects" in err
    assert "pass --subject with the one" in err


def test_every_parameter_the_seam_names_has_a_serve_flag():
    from rtdecode.cli import build_parser, flag_for

    parser = build_parser()
    flags = {p: flag_for(parser, "serve", p) for p in (
        "subject", "gallery", "retrieval_set", "window_s", "allow_fixed_window", "decoder",
        "model", "stream", "token")}
    assert flags == {"subject": "--subject", "gallery": "--gallery",
                     "retrieval_set": "--retrieval-set", "window_s": "--window-s",
                     "allow_fixed_window": "--allow-fixed-window", "decoder": "--decoder",
                     "model": "--model", "stream": "--stream", "token": "--token"}
