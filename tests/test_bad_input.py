"""The bad-input corpus and the security checks, against the real commands and the real
service (tests/helpers/service.py: the tiny model, synthetic LSL sources in its
channel layout, a websocket viewer).

Every bad input gets a clear error, the service stays alive, and what was already
received is not lost (the reader's sample count keeps growing, frames keep coming).
What tests/data/test_recordings.py, encoder/test_checkpoint.py, stream/test_reader.py and
server/test_app.py already prove at their level is not repeated; the corpus table in
docs/reliability.md lists every case with the test that covers it.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import sys
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import mne
import pytest
from starlette.routing import Route, WebSocketRoute
from websockets.sync.client import connect

from rtdecode.config import Settings
from tests.helpers.lsl_source import SourceProcess, poll
from tests.helpers.server import close_code, recv_until
from tests.helpers.service import (
    DEADLINE_S,
    Live,
    build_tiny_model,
    running_service,
    service_settings,
    source_options,
)

TOKEN = "q7Rz-reliability-secret-value"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory)


# ---------------------------------------------------------------------------- commands
def _bad_inputs(root: Path, data: Path, ckpt: Path) -> dict[str, tuple[list[str], str]]:
    """name -> (rtdecode arguments, a phrase the error must contain)."""
    import torch

    fif = data / "replay_raw.fif"
    (root / "trunc_raw.fif").write_bytes(fif.read_bytes()[:100_000])
    (root / "empty_raw.fif").touch()
    (root / "notes.txt").write_text("not a recording")
    (root / "junk_raw.fif").write_bytes(b"not a fif file" * 50)
    # A BIDS dataset whose recording has no events: no events.tsv, no stim channel.
    bids = root / "bids"
    meg = bids / "sub-01" / "ses-01" / "meg"
    meg.mkdir(parents=True)
    for name in ("dataset_description.json", "participants.tsv"):
        shutil.copy(data / name, bids / name)
    (source,) = (data / "sub-01" / "ses-01" / "meg").glob("*_meg.fif")
    raw = mne.io.read_raw_fif(source, verbose="error").pick("meg").load_data()
    raw.set_annotations(None).save(meg / source.name, verbose="error")
    # Checkpoints: truncated tensors, a config that disagrees, pickle files.
    truncated = shutil.copytree(ckpt, root / "ck_truncated")
    weights = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    disagrees = shutil.copytree(ckpt, root / "ck_disagrees")
    config = json.loads((disagrees / "config.json").read_text())
    config["architecture"]["hidden"] *= 2
    (disagrees / "config.json").write_text(json.dumps(config))
    legacy = root / "ck_pickle"
    legacy.mkdir()
    torch.save({"w": torch.zeros(2)}, legacy / "pytorch_model.bin")  # never loaded
    torch.save({"w": torch.zeros(2)}, root / "model.pt")

    serve = ["serve", "--stream", "nothing", "--decoder", "none", "--model"]
    return {
        "replay-truncated-fif": (["replay", str(root / "trunc_raw.fif")], "looks truncated"),
        "replay-empty-file": (["replay", str(root / "empty_raw.fif")], "is empty (0 bytes)"),
        "replay-wrong-extension": (["replay", str(root / "notes.txt")], "not a recording format"),
        "replay-garbage-fif": (["replay", str(root / "junk_raw.fif")], "as FIF"),
        "replay-missing-file": (["replay", str(root / "nope_raw.fif")], "does not exist"),
        "train-bids-without-events": (
            ["train", "--data", str(bids), "--out", str(root / "out"), "--device", "cpu"],
            "name no images",
        ),
        "serve-truncated-safetensors": (
            serve + [str(truncated)],
            "truncated or not a safetensors file",
        ),
        "serve-config-disagrees-with-tensors": (
            serve + [str(disagrees)],
            "does not match its config.json",
        ),
        "serve-pickle-file": (serve + [str(root / "model.pt")], "never unpickles"),
        "serve-pickle-folder": (serve + [str(legacy)], "pickle-based"),
        "serve-missing-checkpoint": (serve + [str(root / "nowhere")], "does not exist"),
        "serve-public-address-without-token": (
            serve + [str(ckpt), "--host", "0.0.0.0"],
            "Refusing to listen on 0.0.0.0 without a token",
        ),
        "serve-invalid-option": (serve + [str(ckpt), "--port", "99999"], "port=99999"),
    }


@pytest.fixture(scope="module")
def cli_runs(tiny_model, tmp_path_factory):
    """Every bad command line, run (four at a time): name -> (phrase, CompletedProcess)."""
    cases = _bad_inputs(tmp_path_factory.mktemp("bad-input"), *tiny_model)

    def run(argv):
        return subprocess.run(
            [sys.executable, "-m", "rtdecode.cli", "--lsl-local", *argv],
            capture_output=True,
            text=True,
            timeout=180,
            stdin=subprocess.DEVNULL,
        )

    with ThreadPoolExecutor(4) as pool:
        done = {name: pool.submit(run, argv) for name, (argv, _) in cases.items()}
    return {name: (cases[name][1], future.result()) for name, future in done.items()}


CLI_CASES = [
    "replay-truncated-fif",
    "replay-empty-file",
    "replay-wrong-extension",
    "replay-garbage-fif",
    "replay-missing-file",
    "train-bids-without-events",
    "serve-truncated-safetensors",
    "serve-config-disagrees-with-tensors",
    "serve-pickle-file",
    "serve-pickle-folder",
    "serve-missing-checkpoint",
    "serve-public-address-without-token",
    "serve-invalid-option",
]


@pytest.mark.parametrize("case", CLI_CASES)
def test_bad_files_checkpoints_and_options_exit_with_one_clear_error_line(cli_runs, case):
    phrase, result = cli_runs[case]
    command = case.split("-")[0]
    errors = [
        line for line in result.stderr.splitlines() if line.startswith(f"rtdecode {command}:")
    ]
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    assert len(errors) == 1, result.stderr
    (line,) = errors
    assert line.startswith(f"rtdecode {command}: error: ") and line.endswith("."), line
    assert phrase in line, line


# ---------------------------------------------------------------------------- streams
def test_nonfinite_backwards_and_missing_samples_are_counted_and_decoding_goes_on(
    tiny_model, unique_name
):
    bad = dict(nan_at=[300, 301], inf_at=[500], backwards_at=700, drop_at=900, drop_n=20)
    with Live(tiny_model, unique_name, source=bad) as live:
        service = live.service
        reader = service.reader
        poll(lambda: reader.stats.samples > 1400, DEADLINE_S, "the bad samples and more")
        n_frames = len(live.viewer.frames)
        n_samples = reader.stats.samples
        poll(
            lambda: len(live.viewer.frames) > n_frames + 10 and reader.stats.samples > n_samples,
            DEADLINE_S,
            "frames and samples after the bad ones",
        )
        stats, worker, health = reader.stats, service.worker.stats, service.health()
        flagged = [f for f in live.viewer.frames if f["extra"]["flagged"]]
    assert stats.nonfinite_values == 3 and stats.nonfinite_samples == 3
    assert stats.backwards_timestamps == 1
    assert stats.gaps == 1 and stats.lost_samples == 20 and stats.repeated_samples == 0
    assert flagged, "no frame says its window held NaN/Inf or a gap"
    assert worker.counters["frame_errors"] == 0 and worker.counters["flagged_windows"] > 0
    assert health == ("ready", [])


def test_one_huge_chunk_is_received_whole_or_its_losses_counted(tiny_model, unique_name):
    """40 s of samples pushed at once (the inlet buffers 30 s): every sample arrives or
    is counted as lost; decoding takes the newest windows and counts those it skipped."""
    huge = dict(chunk=8000, duration=40.0, speed=10.0, linger_s=60.0)
    with Live(tiny_model, unique_name, source=huge) as live:
        reader = live.service.reader
        poll(
            lambda: reader.stats.samples + reader.stats.lost_samples >= 8000,
            DEADLINE_S,
            "the huge chunk",
        )
        # No sample came before the chunk: any frame is cut from it.
        poll(
            lambda: live.service.worker.stats.counters["frames"] > 0,
            DEADLINE_S,
            "a frame from the huge chunk",
        )
        stats = reader.stats
        ring = reader.ring
        last = ring.read(ring.n_written - 1, ring.n_written)[-1, 0]
        status = live.service.status()
        health = live.service.health()
    # What liblsl dropped from its full inlet buffer is a counted gap (the counter shows
    # it); the rest arrived, up to the last sample.
    assert stats.samples + stats.lost_samples == 8000 and int(last) == 7999
    assert stats.gaps >= (stats.lost_samples > 0)
    assert status["windower"]["skipped"] > 0
    assert status["worker"]["counters"]["frame_errors"] == 0
    assert health == ("ready", [])


@pytest.mark.parametrize(
    ("source", "settings", "state", "says"),
    [
        ({"format": "string"}, {}, "error", "carries 'string' values"),
        ({"irregular": True}, {}, "error", "irregular sampling rate"),
        ({"no_desc": True}, {"ch_names": None}, "error", "sends no channel description"),
        ({"no_desc": False}, {"ch_names": None}, "degraded", "decoding fails on every window"),
    ],
    ids=["string-values", "irregular-rate", "no-description", "not-the-model-channels"],
)
def test_unusable_streams_are_named_on_health_and_the_service_lives(
    tiny_model, unique_name, caplog, source, settings, state, says
):
    options = source_options(tiny_model[1], source_id=unique_name, n_channels=4, **source)
    caplog.set_level(logging.ERROR, logger="rtdecode.worker")
    with SourceProcess(unique_name, **options):
        with running_service(tiny_model, unique_name, **settings) as service:
            poll(
                lambda: service.health()[0] == state and says in str(service.health()),
                DEADLINE_S,
                f"/health to say {says!r} (now {service.health()})",
            )
            response = httpx.get(f"{service.url}health", timeout=10)
            alive = service.worker.is_alive() and service.supervisor.is_alive()
            frame_errors = service.worker.stats.counters["frame_errors"]
    assert response.status_code == 503 and says in str(response.json()["reasons"])
    assert alive
    # A failure on every window is logged once, not 20 times a second.
    logged = [r for r in caplog.records if "Decoding one window failed" in r.message]
    assert len(logged) == (1 if state == "degraded" else 0)
    assert frame_errors >= (20 if state == "degraded" else 0)


def test_a_stream_that_is_not_there_yet_is_an_error_until_it_appears(tiny_model, unique_name):
    with running_service(tiny_model, unique_name, resolve_timeout_s=1.0) as service:
        poll(
            lambda: service.health()[0] == "error" and "appeared within" in str(service.health()),
            DEADLINE_S,
            "/health to say the stream was not found",
        )
        assert httpx.get(f"{service.url}health", timeout=10).status_code == 503
        with SourceProcess(unique_name, **source_options(tiny_model[1], source_id=unique_name)):
            poll(lambda: service.health()[0] == "ready", DEADLINE_S, "the late stream's frames")
            poll(lambda: service.worker.stats.counters["frames"] > 0, DEADLINE_S, "frames")
            assert service.status()["reader"]["restarts"] == 1


# ---------------------------------------------------------------------------- server
@pytest.fixture(scope="module")
def guarded(tiny_model):
    """One service with a token and room for two viewers (Live's viewer is the first)."""
    name = f"rtd-guarded-{uuid.uuid4().hex[:8]}"
    with Live(tiny_model, name, query=f"?token={TOKEN}", token=TOKEN, max_clients=2) as live:
        yield live


def _get(live: Live, path: str, **kwargs) -> httpx.Response:
    return httpx.get(live.service.url.rstrip("/") + path, timeout=10, **kwargs)


def _ws_url(live: Live, token: str | None = TOKEN) -> str:
    query = "" if token is None else f"?token={token}"
    return f"ws://127.0.0.1:{live.service.server.port}/ws{query}"


def test_bad_client_messages_and_one_client_too_many_leave_the_data_intact(guarded):
    live = guarded
    reader = live.service.reader
    n_samples, n_frames = reader.stats.samples, len(live.viewer.frames)
    with connect(_ws_url(live), max_size=None, max_queue=None, open_timeout=10) as ws:
        assert recv_until(ws, "hello")["client_id"]
        for message, code in [
            ("{oops", "invalid_json"),
            (json.dumps({"type": "teleport"}), "unknown_type"),
            (bytes(range(256)) * 8, "binary_not_accepted"),
            (json.dumps({"type": "ping", "pad": "x" * 10_000}), "message_too_large"),
        ]:
            ws.send(message)
            assert recv_until(ws, "error")["code"] == code
        ws.send(json.dumps({"type": "ping", "id": 7}))
        assert recv_until(ws, "pong")["id"] == 7
        with connect(_ws_url(live), max_size=None, max_queue=None) as third:
            assert recv_until(third, "error")["code"] == "too_many_clients"
            assert close_code(third) == 1013
    with connect(_ws_url(live), max_size=None, max_queue=None) as ws:
        ws.send("x" * 200_000)  # over the transport's 64 KiB: the connection is closed
        assert close_code(ws) == 1009
    poll(
        lambda: reader.stats.samples > n_samples + 200 and len(live.viewer.frames) > n_frames + 5,
        DEADLINE_S,
        "samples and frames after the bad clients",
    )
    assert live.viewer.closed is None and live.service.health() == ("ready", [])


def test_unknown_routes_and_bad_parameters_are_4xx_and_reveal_nothing(guarded):
    auth = {"Authorization": f"Bearer {TOKEN}"}
    for path in ("/nope", "/api/nope", "/api/status/extra", "/metrics/x", "/index.php"):
        assert _get(guarded, path, headers=auth).status_code == 404, path
    missing = _get(guarded, "/api/gallery/no_such_image", headers=auth)
    assert missing.status_code == 404 and "no_such_image" in missing.json()["detail"]
    for path in ("/api/gallery/..%2F..%2F..%2Fetc%2Fpasswd", "/..%2F..%2Fetc%2Fpasswd"):
        response = _get(guarded, path, headers=auth)
        assert response.status_code == 404 and "root:" not in response.text, path
    url = guarded.service.url
    assert httpx.post(f"{url}health", timeout=10).status_code == 405
    assert httpx.delete(f"{url}api/status", headers=auth, timeout=10).status_code == 405
    for header in ("Bearer", "Bearer wrong", f"Basic {TOKEN}", f"bearer{TOKEN}", TOKEN):
        assert _get(guarded, "/api/status", headers={"Authorization": header}).status_code == 401
    assert _get(guarded, "/health").status_code == 200


# ---------------------------------------------------------------------------- security
def test_binds_loopback_by_default_and_refuses_a_public_address_without_token(guarded, tiny_model):
    assert Settings().host == "127.0.0.1"
    (sock,) = guarded.service.server.server.servers[0].sockets
    assert sock.getsockname()[0] == "127.0.0.1"
    from rtdecode.service import Service

    for host in ("0.0.0.0", "::", "192.168.1.20"):
        service = Service(service_settings(tiny_model, "unused", host=host))
        with pytest.raises(ValueError, match=f"Refusing to listen on {re.escape(host)} without"):
            service.start()
        assert service.server is None and service.reader is None  # nothing was opened


def test_every_route_but_health_needs_the_token(guarded):
    app = guarded.service._app
    http = [r.path for r in app.routes if isinstance(r, Route) and r.path != "/health"]
    sockets = [r.path for r in app.routes if isinstance(r, WebSocketRoute)]
    assert {"/api/status", "/metrics", "/api/gallery/{image_id:path}"} <= set(http)
    assert sockets == ["/ws"]
    for route in http:
        path = route.replace("{image_id:path}", "img_000")
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            assert _get(guarded, path, headers=headers).status_code == 401, path
        assert _get(guarded, path + "?token=wrong").status_code == 401, path
        assert _get(guarded, f"{path}?token={TOKEN}").status_code != 401, path
        assert _get(guarded, path, headers={"Authorization": f"Bearer {TOKEN}"}).status_code != 401
    for token in (None, "wrong", TOKEN[:-1]):
        with connect(_ws_url(guarded, token), max_size=None, max_queue=None) as ws:
            assert recv_until(ws, "error")["code"] == "unauthorized"
            assert close_code(ws) == 4401


def test_the_token_is_compared_in_constant_time(guarded, monkeypatch):
    import hmac

    real, compared = hmac.compare_digest, []

    def spy(a, b):
        compared.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert _get(guarded, "/api/status?token=not-it").status_code == 401
    assert _get(guarded, f"/api/status?token={TOKEN}").status_code == 200
    assert (b"not-it", TOKEN.encode()) in compared and (TOKEN.encode(),) * 2 in compared


class _Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.lines: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append((record.name, self.format(record)))


def test_the_token_never_reaches_the_logs(guarded):
    """Everything the service process logs, at DEBUG and with the server stack's loggers
    turned up too, while clients use the token in URLs and headers, right and wrong."""
    capture = _Capture()
    root = logging.getLogger()
    stack = ["uvicorn", "uvicorn.error", "uvicorn.access", "websockets", "websockets.server"]
    levels = {n: logging.getLogger(n).level for n in ["", *stack]}
    root.addHandler(capture)
    for name in ["", *stack]:
        logging.getLogger(name).setLevel(logging.DEBUG)
    try:
        for path in ("/api/status", "/metrics", "/health", "/nope", "/api/gallery/img_000"):
            for token in (TOKEN, f"x{TOKEN}"):
                _get(guarded, f"{path}?token={token}")
                _get(guarded, path, headers={"Authorization": f"Bearer {token}"})
        for token in (TOKEN, f"x{TOKEN}"):
            with connect(_ws_url(guarded, token), max_size=None, max_queue=None) as ws:
                ws.recv(timeout=DEADLINE_S)
        status = _get(guarded, "/api/status", headers={"Authorization": f"Bearer {TOKEN}"})
    finally:
        root.removeHandler(capture)
        for name, level in levels.items():
            logging.getLogger(name).setLevel(level)
    # The test's own HTTP and websocket clients log their request URLs; the service never.
    client_side = ("httpx", "httpcore", "websockets.client")
    server_lines = [(n, m) for n, m in capture.lines if not n.startswith(client_side)]
    assert any(n.startswith("uvicorn") for n, _ in server_lines), "the capture saw no server log"
    leaks = [(n, m) for n, m in server_lines if TOKEN in m]
    assert leaks == [], leaks
    assert TOKEN not in status.text


def test_nothing_is_ever_unpickled(tmp_path, monkeypatch):
    """No pickle in the code, and pretrained folders with pickle weights are refused
    without torch.load running (checkpoints: tests/encoder/test_checkpoint.py)."""
    sources = {p: p.read_text() for p in (ROOT / "rtdecode").rglob("*.py")}
    for path, text in sources.items():
        assert not re.search(r"^\s*(import|from) (c?pickle|joblib|dill)\b", text, re.M), path
        assert "allow_pickle=True" not in text, path
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (path, call)
        for match in re.finditer(r"(\w+)\.from_pretrained\(", text):
            args = text[match.end() : match.end() + 200]
            config_only = match.group(1) in {"AutoImageProcessor", "DDIMScheduler"}
            assert config_only or "use_safetensors=True" in args, (path, match.group(0))

    import torch
    import transformers as tf

    config = tf.Dinov2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8,
        image_size=28, patch_size=14,
    )  # fmt: skip
    config.save_pretrained(tmp_path)
    torch.save(tf.Dinov2Model(config).state_dict(), tmp_path / "pytorch_model.bin")
    tf.BitImageProcessor(
        size={"shortest_edge": 28}, crop_size={"height": 28, "width": 28}
    ).save_pretrained(tmp_path)
    loads = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: loads.append(a))
    from rtdecode.images import get_image_encoder

    with pytest.raises(OSError, match="safetensors"):
        get_image_encoder("dinov2", path=tmp_path)
    assert loads == []
