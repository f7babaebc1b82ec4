"""The live service under test: the shared tiny model, synthetic LSL sources in its
channel layout, ``running_service``, ``Viewer``, ``metric`` and ``Live`` (the reliability
tests of tests/test_faults.py, tests/test_bad_input.py and tests/io/test_segments.py)."""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from rtdecode.config import Settings
from rtdecode.lsl.streams import COUNTER_CHANNEL
from rtdecode.server.protocol import decode_frame
from tests.helpers.lsl_source import SourceProcess, poll

DEADLINE_S = 30.0
SFREQ_HZ = 200.0  # the tiny simulated subject's rate


def build_tiny_model(tmp_path_factory) -> tuple[Path, Path]:
    """The tiny simulated subject and an encoder trained on it for one epoch, built once
    per test session (every module of the reliability tests shares it)."""
    import torch

    torch.set_num_threads(1)
    root = tmp_path_factory.getbasetemp() / "reliability-model"
    done = root / "paths.json"
    if not done.exists():
        from rtdecode.data.simulate import simulate_subject
        from rtdecode.training.encoder import train

        data = simulate_subject(root / "sim", seed=3, size="tiny", progress=False)
        ckpt = train(data, root / "ckpt", preset="test", max_epochs=1, device="cpu", progress=False)
        done.write_text(json.dumps({"data": str(data), "ckpt": str(ckpt)}))
    paths = json.loads(done.read_text())
    return Path(paths["data"]), Path(paths["ckpt"])


def model_ch_names(ckpt: Path) -> list[str]:
    """The channels a stream must carry for the checkpoint, plus the sample counter."""
    return json.loads((ckpt / "config.json").read_text())["ch_names"] + [COUNTER_CHANNEL]


def source_options(ckpt: Path, **changes) -> dict:
    """lsl_source.py options for a stream in the model's layout: 306 channels at the
    model's rate and a counter, without a description (the service is given the
    checkpoint's channel names, as for a peer stream), so the encoder really runs."""
    options = dict(n_channels=len(model_ch_names(ckpt)) - 1, sfreq=SFREQ_HZ, counter=True)
    options.update(no_desc=True, markers_every_s=0.5)
    options.update(changes)
    return options


def service_settings(tiny_model, name: str, **changes) -> Settings:
    data, ckpt = tiny_model
    values = dict(
        stream=name,
        source_id=name,
        model=ckpt,
        decoder="none",
        gallery=data / "images",
        ch_names=model_ch_names(ckpt),
        port=0,
        lsl_local=True,
        max_fps=5,
    )
    values.update(changes)
    return Settings(**values)


@contextlib.contextmanager
def running_service(tiny_model, name: str, **changes):
    """The real service on port 0, stopped on exit (also when the test fails)."""
    from rtdecode.service import Service

    service = Service(service_settings(tiny_model, name, **changes))
    try:
        service.start()
        yield service
    finally:
        service.stop()


def wait_ready(service, timeout_s: float = DEADLINE_S) -> None:
    poll(
        lambda: service.health()[0] == "ready",
        timeout_s,
        f"the service to become ready (health: {service.health()})",
    )


class Viewer(threading.Thread):
    """A websocket client that reads everything in the background: text messages (by
    arrival) and frame headers. ``query`` is appended to the URL (``?token=...``)."""

    def __init__(self, service, query: str = "") -> None:
        super().__init__(name="test-viewer", daemon=True)
        self.url = f"ws://127.0.0.1:{service.server.port}/ws{query}"
        self.texts: list[dict] = []
        self.frames: list[dict] = []
        self.closed: ConnectionClosed | None = None
        self._stop_event = threading.Event()
        self._connected = threading.Event()
        self.start()
        if not self._connected.wait(DEADLINE_S):
            raise AssertionError(f"The viewer could not connect to {self.url}.")

    def run(self) -> None:
        with connect(self.url, max_size=None, max_queue=None, open_timeout=10) as ws:
            self._connected.set()
            while not self._stop_event.is_set():
                try:
                    msg = ws.recv(timeout=0.2)
                except TimeoutError:
                    continue
                except ConnectionClosed as exc:
                    self.closed = exc
                    return
                if isinstance(msg, bytes):
                    self.frames.append(decode_frame(msg)[0])
                else:
                    self.texts.append(json.loads(msg))

    def of_type(self, type_: str) -> list[dict]:
        return [m for m in list(self.texts) if m["type"] == type_]

    def stop(self) -> None:
        self._stop_event.set()
        self.join(5.0)


def metric(service, name: str) -> float:
    """The value of one /metrics sample (token-free service)."""
    text = httpx.get(f"{service.url}metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return sample.value
    raise AssertionError(f"/metrics has no sample named {name}.")


def os_resources() -> tuple[int, int]:
    """(threads, open file descriptors) of this process, native threads included."""
    return len(os.listdir("/proc/self/task")), len(os.listdir("/proc/self/fd"))


class Live:
    """A source in the model's layout (``source``: lsl_source.py options to change), the
    service reading it and a viewer (``query``: its URL's query string); ``src`` is the
    current source process (tests replace it)."""

    def __init__(
        self, tiny_model, name: str, source: dict | None = None, query: str = "", **settings
    ) -> None:
        self.name = name
        self.query = query
        self.options = source_options(tiny_model[1], source_id=name, **(source or {}))
        self.src = SourceProcess(name, **self.options)
        self._service = running_service(tiny_model, name, **settings)
        self.service = None
        self.viewer = None

    def __enter__(self) -> Live:
        try:
            self.service = self._service.__enter__()
            wait_ready(self.service)
            self.viewer = Viewer(self.service, self.query)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            if self.viewer is not None:
                self.viewer.stop()
            self._service.__exit__(None, None, None)
        finally:
            self.src.kill()

    def restart_source(self, **changes) -> None:
        self.src.kill()
        self.src = SourceProcess(self.name, **{**self.options, **changes})

    def outage(self) -> float:
        """Kill the source and start it again; how long after the new outlet became
        visible the service had reconnected both of its inlets (s).

        The source sends only once each of its outlets has a consumer (lsl_source.py
        waits for the data reader and for the marker reader), so both reconnections are
        waited for, each step with its own deadline, and a step that fails says where
        each reader stands.
        """
        reader, markers = self.service.reader, self.service.markers
        reconnects, m_reconnects = reader.stats.reconnects, markers.stats.reconnects
        self.src.kill()
        self._step(lambda: not reader.connected, "the reader to notice the loss")
        self.restart_source()
        self.src.wait_event("ready", 20.0)  # the outlet exists: from here the clock runs
        t_visible = time.monotonic()
        self._step(
            lambda: reader.stats.reconnects > reconnects
            and markers.stats.reconnects > m_reconnects,
            "the data and marker readers' reconnection",
        )
        latency_s = time.monotonic() - t_visible
        # The source streams again before the next outage (else two outages are one gap).
        self.src.wait_event("started", 10.0)  # it saw both consumers and sends
        samples = reader.stats.samples
        self._step(lambda: reader.stats.samples > samples, "samples after the reconnection")
        return latency_s

    def _step(self, condition, what: str, timeout_s: float = 10.0) -> None:
        try:
            poll(condition, timeout_s, what)
        except AssertionError as exc:
            reader, markers = self.service.reader, self.service.markers
            raise AssertionError(
                f"{exc} Data reader: connected={reader.connected}, "
                f"{reader.stats.reconnects} reconnects, {reader.stats.samples} samples; "
                f"marker reader: connected={markers.connected}, "
                f"{markers.stats.reconnects} reconnects; source events: "
                f"{[e['event'] for e in self.src.events]}."
            ) from None
