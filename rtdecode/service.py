"""The service: LSL stream -> reader -> windower -> DecodeWorker -> server.

Threading
---------
* StreamReader / MarkerReader threads own their pylsl inlets.
* The DecodeWorker thread owns the models.
* uvicorn runs its asyncio loop in its own thread (``run_server_in_thread``); it only
  moves bytes. The main thread waits for a signal and then shuts down in a fixed order:
  stop accepting clients and close them, stop the worker, stop the readers, then let the
  SegmentRecorder (``--record``) write what the ring still holds.
* The StreamSupervisor's thread (``rtdecode-supervisor``, ``stream/supervisor.py``) owns
  the input: it replaces the reader, marker reader and windower when the reader ended
  with an error (the service then points the worker and the recorder at the new ones),
  and hands each stream gap to the service, which tells viewers (a ``stream_gap``
  message through ``ServerHandle.tell_viewers``). Counters of replaced readers and
  windowers stay in the totals of /api/status and /metrics.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import TYPE_CHECKING, Any

from rtdecode._utils.devices import device_name
from rtdecode.config import Settings
from rtdecode.contracts import ParameterError, annotation_stream_name

if TYPE_CHECKING:
    from rtdecode.decoding import Decoding

log = logging.getLogger(__name__)

#: Windows in a row that fail before /health calls decoding degraded (1 s at 20 Hz).
FAILING_WINDOWS = 20
# Images in a row whose generation failed before /health says so (2 s at 5 images/s).
FAILING_IMAGES = 10


class Service:
    """Everything ``rtdecode serve`` runs, built from one Settings object."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.supervisor = None
        self.worker = None
        self.server = None
        self.recorder = None
        self.gallery = None
        self.vocabulary = None
        self.decoding: Decoding | None = None
        self.t_started = time.time()
        self._thumb_cache: dict[str, tuple[bytes, str]] = {}
        self._names: dict[str, str] | None = None
        self._app = None

    # ------------------------------------------------------------------ build
    def _open_decoding(self) -> Decoding:
        """Open the checkpoint for decoding (rtdecode.decoding): models, subject, retrieval set."""
        from rtdecode.decoding import open_decoding

        s = self.settings
        if s.model is None:
            raise ParameterError(
                "model", "No brain encoder given; pass {param} CKPT_DIR (a checkpoint folder)."
            )
        return open_decoding(
            s.model, subject=s.subject, device=device_name(s.device), gallery=s.gallery,
            retrieval_set=s.retrieval_set, decoder=s.decoder,
            # a window length asked for must be the checkpoint's; unset, the checkpoint's is cut
            window_s=s.window_s if "window_s" in s.model_fields_set else None,
            allow_fixed_window=s.allow_fixed_window, hop_s=s.hop_s,
        )

    def _marker_vocabulary(self, retrieval):
        """What plain-string and code markers mean: gallery ids and the events table."""
        from rtdecode.stream.events import MarkerVocabulary, read_events_table

        s = self.settings
        table = None if s.events_table is None else read_events_table(s.events_table)
        ids = set(getattr(self.gallery, "ids", None) or ())
        ids |= set(getattr(retrieval, "ids", None) or ())
        if table is not None:
            unknown = sorted({i for i, _ in table.entries.values() if i is not None} - ids)
            log.info("Events table %s: %d codes.", table.path, len(table))
            if unknown and ids:
                log.warning(
                    "%d image ids of the events table are not in the gallery (e.g. %s); "
                    "their events have no rank.", len(unknown), unknown[:3],
                )
        return MarkerVocabulary(ids, table)

    @property
    def reader(self):
        """The current StreamReader (None before start)."""
        return None if self.supervisor is None else self.supervisor.reader

    @property
    def markers(self):
        """The current MarkerReader (None before start)."""
        return None if self.supervisor is None else self.supervisor.markers

    @property
    def windower(self):
        """The current Windower (None before start)."""
        return None if self.supervisor is None else self.supervisor.windower

    def start(self) -> None:
        """Load the models, connect to the stream, start the worker and the server."""
        from rtdecode.server.app import create_app, run_server_in_thread
        from rtdecode.stream.supervisor import StreamSupervisor
        from rtdecode.worker import WorkerOptions

        s = self.settings
        if s.lsl_local:
            from rtdecode.lsl import use_local_config

            use_local_config()
        if s.host not in {"127.0.0.1", "localhost", "::1"} and not s.token:
            raise ParameterError(
                "token",
                f"Refusing to listen on {s.host} without a token: anyone on the network could "
                "watch the stream. Set {param} (or RTDECODE_TOKEN), or bind 127.0.0.1.",
            )
        if not s.stream:
            raise ParameterError(
                "stream", "No stream given; pass {param} NAME (the LSL stream to decode)."
            )
        decoding = self.decoding = self._open_decoding()
        self.gallery = decoding.gallery
        self.vocabulary = self._marker_vocabulary(decoding.retrieval)

        self.supervisor = StreamSupervisor(
            s.stream,
            window_s=decoding.window_s,
            hop_s=s.hop_s,
            pad_s=decoding.preprocessor.config.pad_s,
            source_id=s.source_id,
            buffer_s=s.buffer_s,
            ch_names=s.ch_names,
            resolve_timeout_s=s.resolve_timeout_s,
            # The marker stream is optional: without it windows carry no true image.
            # Without one named, '<stream>-markers' or else mne-lsl's '<stream>-annotations'.
            marker_stream=s.marker_stream,
            marker_fallbacks=() if s.marker_stream else (annotation_stream_name(s.stream),),
            interpret=self.vocabulary,
            trigger_channel=s.trigger_channel,
            on_gap=self._tell_gap,
            on_restart=self._follow_input,
        ).open()
        if s.record is not None:
            from rtdecode.io.segments import SegmentRecorder

            self.recorder = SegmentRecorder(self.reader, s.record, markers=self.markers).start()
            log.info("Recording every received sample to %s.", self.recorder.session_dir)
        app = self._app = create_app(s, self)
        broadcaster = app.state.broadcaster
        self.worker = decoding.worker(
            self.windower,
            broadcaster.publish,
            WorkerOptions(
                topk=s.topk,
                max_fps=s.max_fps,
                diffusion_steps=s.diffusion_steps,
                seed=s.seed,
                image_format=s.image_format,
                lanes=s.lanes,
                precision=s.encoder_precision,
                cuda_graph=s.cuda_graphs if decoding.device.startswith("cuda") else None,
                smooth_s=s.smooth_s,
            ),
        )
        self.worker.start()
        self.server = run_server_in_thread(app, s.host, s.port)
        self.supervisor.start()

    @property
    def url(self) -> str:
        """The service's HTTP address."""
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
            "window_s": s.window_s if self.decoding is None else self.decoding.window_s,
            "hop_s": s.hop_s,
            "subject": s.subject,
            "retrieval_set": s.retrieval_set,
        }
        if self.supervisor is not None:
            out["reader"], out["windower"] = self.supervisor.totals()
        if self.worker is not None:
            worker = self.worker.stats.as_dict()
            out["online_eval"] = worker.pop("online_eval")
            out["worker"] = worker
        if self.recorder is not None:
            out["recorder"] = self.recorder.stats.as_dict()
        return out

    def health(self) -> tuple[str, list[str]]:
        """('starting'|'ready'|'degraded'|'error', reasons)."""
        reasons: list[str] = []
        if self.worker is None or self.reader is None:
            return "starting", ["loading models"]
        if self.worker.error is not None:
            return "error", [f"decode worker stopped: {self.worker.error}"]
        if self.reader.error is not None:
            # The reader thread ended: no data flows until the supervisor replaces it.
            return "error", [
                f"stream: {self.reader.error}",
                *filter(None, [self.supervisor.waiting_for]),
            ]
        if not self.reader.connected:
            last = self.supervisor.last_error
            if last is not None:  # a replacement is connecting; say why the last one failed
                return "error", [f"stream: {last}", *filter(None, [self.supervisor.waiting_for])]
            reasons.append(f"stream {self.settings.stream!r} not connected")
        else:
            self.supervisor.last_error = None
        worker = self.worker.stats
        if worker.consecutive_frame_errors >= FAILING_WINDOWS:
            reasons.append(f"decoding fails on every window: {worker.last_frame_error}")
        image_lane = worker.lanes.get("image") or {}
        if image_lane.get("error"):
            reasons.append(f"image lane stopped (retrieval goes on): {image_lane['error']}")
        elif image_lane.get("consecutive_errors", 0) >= FAILING_IMAGES:
            reasons.append(f"generation fails on every image: {image_lane['last_error']}")
        if self.recorder is not None and (problem := self.recorder.problem) is not None:
            reasons.append(problem)  # names the folder; "disk full" when that is why
        if not self.worker.ready.is_set():
            return "starting", ["warming up models"] + reasons
        return ("degraded", reasons) if reasons else ("ready", [])

    def gallery_thumbnail(self, image_id: str) -> tuple[bytes, str] | None:
        """A gallery image's thumbnail as (encoded bytes, media type), None if unknown."""
        if self.gallery is None or image_id not in self.gallery:
            return None
        if image_id not in self._thumb_cache:
            from rtdecode.images.codec import encode_image

            img = self.gallery.image(image_id)
            img.thumbnail((160, 160))
            self._thumb_cache[image_id] = (encode_image(img, "jpeg"), "image/jpeg")
        return self._thumb_cache[image_id]

    def image_names(self) -> dict[str, str]:
        """Each gallery image's concept name (gallery.csv's ``concept``), for the viewer.

        Ids whose row has no concept (a folder without gallery.csv) are left out: the viewer
        shows their id.
        """
        if getattr(self.gallery, "root", None) is None:
            return {}
        if self._names is None:
            from pathlib import Path

            from rtdecode.images.world import read_world_table

            csv_path = Path(self.gallery.root) / "gallery.csv"
            rows = read_world_table(csv_path) if csv_path.is_file() else []
            self._names = {r.id: r.concept for r in rows if r.concept and r.concept != r.id}
        return self._names

    # ------------------------------------------------------------------ stop
    def stop(self) -> None:
        """Stop everything in a fixed order.

        Supervisor, clients and server, worker, readers, then the recorder (which
        writes everything the ring still holds).
        """
        if self.supervisor is not None:
            self.supervisor.stop()
        if self.server is not None:
            self.server.stop()
        if self.worker is not None:
            self.worker.stop()
        if self.supervisor is not None:
            self.supervisor.close()
        if self.recorder is not None:
            self.recorder.stop()

    # ------------------------------------------------------------------ supervisor hooks
    def _tell_gap(self, fields: dict[str, Any]) -> None:
        """Tell every viewer about a stream gap (supervisor thread)."""
        if self.server is not None:
            self.server.tell_viewers("stream_gap", **fields)

    def _follow_input(self, reader, markers, windower) -> None:
        """Point the worker and the recorder at a replaced input (supervisor thread)."""
        self.worker.windows = windower  # the worker takes its next window from here
        if self.recorder is not None:
            self.recorder.follow(reader, markers)


def serve(settings: Settings) -> int:
    """Run the service until SIGINT/SIGTERM; returns the exit code."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
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
