"""The service: LSL stream -> reader -> windower -> DecodeWorker -> server.

Threading
---------
* StreamReader / MarkerReader threads own their pylsl inlets.
* The DecodeWorker thread owns the models.
* uvicorn runs its asyncio loop in its own thread (``run_server_in_thread``); it only
  moves bytes. The main thread waits for a signal and then shuts down in a fixed order:
  stop accepting clients and close them, stop the worker, stop the readers.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any

from rtdecode.config import Settings

log = logging.getLogger(__name__)


class Service:
    """Everything ``rtdecode serve`` runs, built from one Settings object."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.reader = None
        self.markers = None
        self.windower = None
        self.worker = None
        self.server = None
        self.gallery = None
        self.meta: dict[str, Any] = {}
        self.t_started = time.time()
        self._thumb_cache: dict[str, tuple[bytes, str]] = {}

    # ------------------------------------------------------------------ build
    def _load_models(self):
        from rtdecode.decoder.retrieval import Retrieval
        from rtdecode.encoder import load_checkpoint
        from rtdecode.images import Gallery, get_image_encoder
        from rtdecode.signal.preprocess import Preprocessor

        s = self.settings
        if s.model is None:
            raise ValueError("No brain encoder given; pass --model CKPT_DIR (a checkpoint folder).")
        device = resolve_device(s.device)
        model, meta = load_checkpoint(s.model, device=device)
        self.meta = meta
        pre = Preprocessor.from_dict(meta["preprocess"])
        target = meta.get("target", {})
        gallery_dir = s.gallery or _meta_path(
            s.model, target.get("gallery") or meta.get("provenance", {}).get("gallery")
        )
        if gallery_dir is None:
            raise ValueError(
                "No gallery for retrieval; pass --gallery DIR or use a checkpoint whose "
                "config.json names its gallery."
            )
        self.gallery = Gallery.from_folder(gallery_dir)
        enc = get_image_encoder(
            target.get("encoder", "handcrafted"),
            path=target.get("encoder_path"),
            readout=target.get("readout", "cls"),
        )
        retrieval = Retrieval(self.gallery.embeddings(enc), self.gallery.ids)
        decoder = None
        if s.decoder and s.decoder.lower() != "none":
            from rtdecode.decoder.diffusion import load_decoder

            decoder = load_decoder(s.decoder, device=device)
        return model, meta, pre, retrieval, decoder, device

    def start(self) -> None:
        """Load the models, connect to the stream, start the worker and the server."""
        from rtdecode.server.app import create_app, run_server_in_thread
        from rtdecode.stream import MarkerReader, StreamReader, Windower
        from rtdecode.worker import DecodeWorker, WorkerOptions

        s = self.settings
        if s.lsl_local:
            from rtdecode.lsl import use_local_config

            use_local_config()
        if s.host not in {"127.0.0.1", "localhost", "::1"} and not s.token:
            raise ValueError(
                f"Refusing to listen on {s.host} without a token: anyone on the network could "
                "watch the stream. Set --token (or RTDECODE_TOKEN), or bind 127.0.0.1."
            )
        if not s.stream:
            raise ValueError("No stream given; pass --stream NAME (the LSL stream to decode).")
        model, meta, pre, retrieval, decoder, device = self._load_models()
        window_s = float(meta.get("window_s", s.window_s))

        self.reader = StreamReader(
            name=s.stream,
            source_id=s.source_id,
            buffer_s=s.buffer_s,
            ch_names=s.ch_names,
        )
        self.reader.start()
        # The marker stream is optional: without it windows simply carry no true image.
        self.markers = MarkerReader(
            s.marker_stream or f"{s.stream}-markers", reader=self.reader, resolve_timeout_s=None
        )
        self.markers.start()
        self.windower = Windower(
            self.reader,
            window_s=window_s,
            hop_s=s.hop_s,
            pad_s=pre.config.pad_s,
            markers=self.markers,
        )
        app = create_app(s, self)
        broadcaster = app.state.broadcaster
        self.worker = DecodeWorker(
            self.windower,
            pre,
            model,
            retrieval,
            decoder,
            broadcaster.publish,
            device=device,
            options=WorkerOptions(
                topk=s.topk,
                max_fps=s.max_fps,
                diffusion_steps=s.diffusion_steps,
                seed=s.seed,
                image_format=s.image_format,
            ),
            target_stats=meta.get("target_stats"),
            gallery=self.gallery,
            window_shape=(len(pre.config.ch_names), pre.n_times_out(window_s)),
        )
        self.worker.start()
        self.server = run_server_in_thread(app, s.host, s.port)

    @property
    def url(self) -> str:
        host = self.settings.host
        return f"http://{host}:{self.server.port}/"

    # ------------------------------------------------------------------ source API
    def status(self) -> dict[str, Any]:
        """What /api/status shows."""
        s = self.settings
        out: dict[str, Any] = {
            "uptime_s": round(time.time() - self.t_started, 1),
            "stream": s.stream,
            "model": str(s.model),
            "decoder": s.decoder,
            "window_s": self.meta.get("window_s", s.window_s),
            "hop_s": s.hop_s,
        }
        if self.reader is not None:
            out["reader"] = self.reader.stats_dict()
        if self.windower is not None:
            out["windower"] = self.windower.stats_dict()
        if self.worker is not None:
            out["worker"] = self.worker.stats()
        return out

    def health(self) -> tuple[str, list[str]]:
        """('starting'|'ready'|'degraded'|'error', reasons)."""
        reasons: list[str] = []
        if self.worker is None or self.reader is None:
            return "starting", ["loading models"]
        if self.worker.error is not None:
            return "error", [f"decode worker stopped: {self.worker.error}"]
        if self.reader.error is not None:
            reasons.append(f"stream: {self.reader.error}")
        if not self.reader.connected:
            reasons.append(f"stream {self.settings.stream!r} not connected")
        if not self.worker.ready.is_set():
            return "starting", ["warming up models"] + reasons
        return ("degraded", reasons) if reasons else ("ready", [])

    def gallery_thumbnail(self, image_id: str) -> tuple[bytes, str] | None:
        if self.gallery is None or image_id not in self.gallery:
            return None
        if image_id not in self._thumb_cache:
            from rtdecode.worker import encode_image

            img = self.gallery.image(image_id)
            img.thumbnail((160, 160))
            self._thumb_cache[image_id] = (encode_image(img, "jpeg"), "image/jpeg")
        return self._thumb_cache[image_id]

    # ------------------------------------------------------------------ stop
    def stop(self) -> None:
        """Fixed order: clients and server, worker, readers."""
        if self.server is not None:
            self.server.stop()
        if self.worker is not None:
            self.worker.stop()
        for part in (self.markers, self.reader):
            if part is not None:
                part.stop()


def resolve_device(device: str) -> str:
    """'auto' -> 'cuda' when available, else 'cpu'."""
    if device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _meta_path(ckpt: Path, value: str | None) -> Path | None:
    if not value:
        return None
    p = Path(value)
    return p if p.is_absolute() else (Path(ckpt) / p).resolve()


def serve(settings: Settings) -> int:
    """Run the service until SIGINT/SIGTERM; returns the exit code."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    service = Service(settings)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    try:
        service.start()
        print(f"rtdecode serving {settings.stream!r} at {service.url}", flush=True)
        stop.wait()
    finally:
        service.stop()
    return 0
