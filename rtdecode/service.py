"""The service: LSL stream -> reader -> windower -> DecodeWorker -> server.

Threading
---------
* StreamReader / MarkerReader threads own their pylsl inlets.
* The DecodeWorker thread owns the models.
* uvicorn runs its asyncio loop in its own thread (``run_server_in_thread``); it only
  moves bytes. The main thread waits for a signal and then shuts down in a fixed order:
  stop accepting clients and close them, stop the worker, stop the readers, then let the
  SegmentRecorder (``--record``) write what the ring still holds.
* The supervisor thread (``rtdecode-supervisor``) tells viewers about each stream gap as
  it is detected (a ``stream_gap`` message) and replaces the input (reader, marker reader,
  windower: a new run for the recorder) when the reader ended with an error, as soon as
  a stream with the channel count and rate first seen is visible again. Counters of
  replaced readers and windowers stay in the totals of /api/status and /metrics.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

from rtdecode._utils.devices import device_name
from rtdecode.config import Settings
from rtdecode.contracts import annotation_stream_name, marker_stream_name

log = logging.getLogger(__name__)

#: Seconds between the supervisor's looks at the reader (gaps, errors).
SUPERVISE_S = 0.1
#: Reader counters that add up over replaced readers (the rest are gauges).
_SUMMED_READER_STATS = (
    "samples",
    "chunks",
    "gaps",
    "lost_samples",
    "repeated_samples",
    "backwards_timestamps",
    "timestamp_jumps",
    "nonfinite_values",
    "nonfinite_samples",
    "overflow",
    "reconnects",
    "cpu_s",
)
#: Windows in a row that fail before /health calls decoding degraded (1 s at 20 Hz).
FAILING_WINDOWS = 20
# Images in a row whose generation failed before /health says so (2 s at 5 images/s).
FAILING_IMAGES = 10


class Service:
    """Everything ``rtdecode serve`` runs, built from one Settings object."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.reader = None
        self.markers = None
        self.windower = None
        self.worker = None
        self.server = None
        self.recorder = None
        self.gallery = None
        self.vocabulary = None
        self.meta: dict[str, Any] = {}
        self.t_started = time.time()
        self._thumb_cache: dict[str, tuple[bytes, str]] = {}
        self._app = None
        self._window_s = self._pad_s = 0.0
        self._stopping = threading.Event()
        self._supervisor: threading.Thread | None = None
        # Held while the supervisor swaps the input and while status() adds up totals,
        # so /metrics never sees a counter counted twice or not at all.
        self._input_lock = threading.Lock()
        # Supervisor state: totals of replaced readers/windowers, the first stream's
        # shape (n_channels, sfreq_hz, ch_names), outlets refused, what we wait for.
        self._retired: dict[str, dict[str, float]] = {"reader": {}, "windower": {}}
        self._retired_last_gap: dict | None = None
        self._restarts = 0
        self._shape: tuple[int, float, tuple[str, ...]] | None = None
        self._refused_uids: set[str] = set()
        self._waiting_for: str | None = None
        self._restart_t_lsl: float | None = None  # newest sample time before a restart

    # ------------------------------------------------------------------ build
    def _load_models(self):
        from rtdecode.encoder import load_checkpoint
        from rtdecode.signal.preprocess import Preprocessor
        from rtdecode.worker import check_image_space, check_window, load_retrieval

        s = self.settings
        if s.model is None:
            raise ValueError("No brain encoder given; pass --model CKPT_DIR (a checkpoint folder).")
        device = device_name(s.device)
        model, meta = load_checkpoint(s.model, device=device)
        self.meta = meta
        check_window(s, meta)  # before the (slow) gallery and decoder
        pre = Preprocessor.from_dict(meta["preprocess"])
        self.gallery, retrieval = load_retrieval(meta, s.model, s.gallery, s.retrieval_set)
        self.vocabulary = self._marker_vocabulary(retrieval)
        decoder = None
        if s.decoder and s.decoder.lower() != "none":
            from rtdecode.decoder.registry import load_decoder

            decoder = load_decoder(s.decoder, device=device)
            check_image_space(meta.get("target", {}), getattr(decoder, "image_encoder", None),
                              "the decoder's image encoder", "--decoder")
        return model, meta, pre, retrieval, decoder, device

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

    def _start_input(self, ch_names=None):
        """A started StreamReader, MarkerReader and Windower on the configured stream."""
        from rtdecode.stream import MarkerReader, StreamReader, Windower
        from rtdecode.stream.triggers import CombinedMarkers, TriggerMarkers

        s = self.settings
        reader = StreamReader(
            name=s.stream,
            source_id=s.source_id,
            buffer_s=s.buffer_s,
            ch_names=ch_names or s.ch_names,
            resolve_timeout_s=s.resolve_timeout_s,
        )
        reader.start()
        # The marker stream is optional: without it windows simply carry no true image.
        # Without one named, '<stream>-markers' or else mne-lsl's '<stream>-annotations'.
        markers = MarkerReader(
            s.marker_stream or marker_stream_name(s.stream),
            reader=reader,
            resolve_timeout_s=None,
            fallback_names=() if s.marker_stream else (annotation_stream_name(s.stream),),
            interpret=self.vocabulary,
        )
        markers.start()
        events = markers
        if (s.trigger_channel or "").strip().lower() != "none":
            triggers = TriggerMarkers(reader, s.trigger_channel, interpret=self.vocabulary)
            events = CombinedMarkers(markers, triggers)
        windower = Windower(
            reader, window_s=self._window_s, hop_s=s.hop_s, pad_s=self._pad_s, markers=events
        )
        return reader, markers, windower

    def start(self) -> None:
        """Load the models, connect to the stream, start the worker and the server."""
        from rtdecode.server.app import create_app, run_server_in_thread
        from rtdecode.worker import DecodeWorker, WorkerOptions, check_window, subject_index

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
        window_s = check_window(s, meta)
        subject = subject_index(s.subject, meta)
        self._window_s, self._pad_s = window_s, pre.config.pad_s

        self.reader, self.markers, self.windower = self._start_input()
        if s.record is not None:
            from rtdecode.io.segments import SegmentRecorder

            self.recorder = SegmentRecorder(self.reader, s.record, markers=self.markers).start()
            log.info("Recording every received sample to %s.", self.recorder.session_dir)
        app = self._app = create_app(s, self)
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
                lanes=s.lanes,
            ),
            target_stats=meta.get("target_stats"),
            gallery=self.gallery,
            subject=subject,
            window_shape=(len(pre.config.ch_names), pre.n_times_out(window_s)),
        )
        self.worker.start()
        self.server = run_server_in_thread(app, s.host, s.port)
        self._supervisor = threading.Thread(
            target=self._supervise, name="rtdecode-supervisor", daemon=True
        )
        self._supervisor.start()

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
            "subject": s.subject,
            "retrieval_set": s.retrieval_set,
        }
        with self._input_lock:
            if self.reader is not None:
                reader = _add(self.reader.stats_dict(), self._retired["reader"])
                reader["restarts"] = self._restarts
                if reader["last_gap"] is None:
                    reader["last_gap"] = self._retired_last_gap
                out["reader"] = reader
            if self.windower is not None:
                out["windower"] = _add(self.windower.stats_dict(), self._retired["windower"])
        if self.worker is not None:
            worker = self.worker.stats()
            out["online_eval"] = worker.pop("online_eval")
            out["worker"] = worker
        if self.recorder is not None:
            out["recorder"] = self.recorder.stats()
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
            return "error", [f"stream: {self.reader.error}", *filter(None, [self._waiting_for])]
        if not self.reader.connected:
            reasons.append(f"stream {self.settings.stream!r} not connected")
        worker = self.worker.stats()
        if worker["consecutive_frame_errors"] >= FAILING_WINDOWS:
            reasons.append(f"decoding fails on every window: {worker['last_frame_error']}")
        image_lane = worker["lanes"].get("image") or {}
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
        """Fixed order: supervisor, clients and server, worker, readers, recorder (which
        writes everything the ring still holds)."""
        self._stopping.set()
        if self._supervisor is not None:
            self._supervisor.join(5.0)
        if self.server is not None:
            self.server.stop()
        if self.worker is not None:
            self.worker.stop()
        for part in (self.markers, self.reader, self.recorder):
            if part is not None:
                part.stop()

    # ------------------------------------------------------------------ supervisor
    def _supervise(self) -> None:
        """Supervisor thread: forward new stream gaps to viewers; replace a reader that
        ended with an error once a stream of the first stream's shape is visible."""
        last_gap_sample = -1
        while not self._stopping.wait(SUPERVISE_S):
            try:
                last_gap_sample = self._forward_gaps(last_gap_sample)
                if self.reader.error is not None and self._restart_input():
                    last_gap_sample = -1
            except Exception:  # never die silently; the next look may succeed
                log.exception("The service supervisor failed once; it goes on.")

    def _tell_viewers(self, type_: str, **fields: Any) -> None:
        """Queue one JSON text message to every viewer (from any thread)."""
        from rtdecode.server.protocol import text_message

        state = self._app.state.server
        loop = state.loop
        if loop is None or loop.is_closed():
            return
        try:
            loop.call_soon_threadsafe(
                state.broadcaster.broadcast_text, text_message(type_, **fields)
            )
        except RuntimeError:  # the loop closed meanwhile: the server is stopping
            pass

    def _forward_gaps(self, last_sample: int) -> int:
        """Send a ``stream_gap`` message per gap newer than ``last_sample``."""
        reader = self.reader
        new: list[tuple[dict[str, Any], bool]] = []  # (gap, spans a restart)
        if self._restart_t_lsl is not None and reader.ring is not None and reader.ring.n_written:
            # The first sample after a restart: the gap since the old reader's last one.
            t_after = reader.ring.sample_at("t_lsl", reader.ring.oldest)
            duration_s = max(0.0, t_after - self._restart_t_lsl - 1.0 / reader.sfreq)
            gap = {
                "sample": 0,
                "n_lost": max(0, round(duration_s * reader.sfreq)),
                "duration_s": duration_s,
                "t_before": self._restart_t_lsl,
                "t_after": t_after,
                "reconnect": True,
                "detected_by": "timestamps",
            }
            self._restart_t_lsl = None
            with self._input_lock:
                self._retired_last_gap = gap
                _add(self._retired["reader"], {"gaps": 1, "lost_samples": gap["n_lost"]}, out=True)
            new.append((gap, True))
        for g in reader.gaps():
            if g.sample > last_sample:
                new.append(({f: getattr(g, f) for f in g.__dataclass_fields__}, False))
                last_sample = g.sample
        if not new:
            return last_sample
        totals = self.status()["reader"]
        # The totals hold the whole batch: each message gets the totals as of its gap.
        gaps_total, lost_total = totals["gaps"] - len(new), totals["lost_samples"]
        lost_total -= sum(gap["n_lost"] for gap, _ in new)
        for gap, restart in new:
            gaps_total, lost_total = gaps_total + 1, lost_total + gap["n_lost"]
            self._tell_viewers(
                "stream_gap",
                **gap,
                restart=restart,
                run=self._restarts + 1,
                gaps_total=gaps_total,
                lost_samples_total=lost_total,
            )
        return last_sample

    def _restart_input(self) -> bool:
        """Replace the failed reader when a stream of the first one's shape is visible."""
        from rtdecode.lsl import streams as lsl

        s, old = self.settings, self.reader
        if self._shape is None and old.ring is not None:
            self._shape = (old.n_channels, old.sfreq, old.ch_names)
        info = lsl.find(
            s.stream,
            None,
            s.source_id,
            timeout_s=1.0,
            exclude_uids=self._refused_uids,
            should_stop=self._stopping.is_set,
        )
        if info is None:
            return False
        # Whatever happens next, this outlet is not tried twice (no reconnect loop).
        self._refused_uids.add(info.uid())
        found = lsl.describe(info)
        if self._shape is not None and (found.n_channels, found.sfreq) != self._shape[:2]:
            n, sfreq, _ = self._shape
            self._waiting_for = (
                f"Stream {s.stream!r} is back with {found.n_channels} channels at "
                f"{found.sfreq:g} Hz, but the service started on {n} channels at {sfreq:g} Hz; "
                "waiting for that stream to return (restart the service to use the new one)."
            )
            log.error(self._waiting_for)
            return False
        new = self._start_input(ch_names=None if self._shape is None else self._shape[2])
        old_markers, old_windower = self.markers, self.windower
        if old.ring is not None and old.ring.n_written:
            self._restart_t_lsl = old.ring.sample_at("t_lsl", old.ring.n_written - 1)
        with self._input_lock:
            retired = self._retired["reader"]
            _add(retired, old.stats_dict(), out=True)
            _add(self._retired["windower"], old_windower.stats_dict(), out=True)
            retired["reconnects"] = retired.get("reconnects", 0) + 1
            self._retired_last_gap = old.stats_dict()["last_gap"] or self._retired_last_gap
            self.reader, self.markers, self.windower = new
            self._restarts += 1
        self.worker.windows = self.windower  # the worker takes its next window from here
        if self.recorder is not None:
            self.recorder.follow(self.reader, self.markers)
        self._waiting_for = None
        log.warning(
            "Stream %r is visible again with the original shape; reading it with a new "
            "reader (restart %d; the gap is reported to viewers).",
            s.stream,
            self._restarts,
        )
        old_markers.stop()
        old.stop()
        return True


def _add(base: dict, more: dict, out: bool = False) -> dict:
    """``base`` with the counters of ``more`` added (in place when ``out``): every int
    (windower and reader counts) and the reader's summable floats (``cpu_s``)."""
    target = base if out else dict(base)
    for k, v in more.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if isinstance(v, int) or k in _SUMMED_READER_STATS:
            target[k] = target.get(k, 0) + v
    return target


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
