"""DecodeWorker: the two lanes that own the models (:meth:`rtdecode.decoding.Decoding.worker`).

Lanes and threads
-----------------
* **Lane 1** (the ``DecodeWorker`` thread itself, "retrieval") owns the brain encoder,
  the retrieval index and the preprocessing state (a
  :class:`~rtdecode.signal.streaming.StreamingPreprocessor` when the checkpoint's
  preprocessing is ``streaming``). At every hop it takes the newest Window from the
  window source (latest-wins: the source counts what it skipped) and runs
  :meth:`DecodeWorker._process`: encode (preprocess + encoder), retrieve (top-k),
  score (the true image's rank and the window's lag) and emit (publish a retrieval
  frame). With ``smooth_s`` the query is the leaky integral of consecutive windows'
  predictions (:mod:`rtdecode.decoder.smoothing`). It never waits for generation: it
  only drops the window's prediction into a one-item latest-wins slot.
* **Lane 2** (a second thread, "image", started by lane 1 after warm-up) owns the image
  decoder. At most ``max_fps`` times per second it takes the NEWEST prediction from the
  slot (an older one that was never taken is replaced and counted in
  ``embeddings_skipped``), generates, and publishes an image frame that names the window
  it came from (its ``first_sample``/``t_*`` and ``window_seq``, the seq of that window's
  retrieval frame). On a GPU lane 2 runs on its own CUDA stream.
* Each lane sets its own torch intra-op threads (:func:`~rtdecode.lanes.lane_threads`).
  ``lanes=1``: one thread, one frame per window, the image (when due) generated inline.
* Frames of both lanes take their ``seq`` from one counter and reach ``publish`` in that
  order, under one lock; ``publish`` must not block (the Broadcaster only schedules).
* Each lane writes its own counters and latencies in the
  :class:`~rtdecode.lanes.WorkerMeter`; ``stats`` reads a snapshot from any thread.

An exception while decoding one window (lane 1) or generating one image (lane 2) skips
that frame, is counted and logged, and the lane goes on; failures on every try show on
/health. An exception while loading or warming up ends the worker and is kept in
``error``; lane 2 ending unexpectedly is kept in ``image_error`` while lane 1 goes on.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from rtdecode.contracts import Embedding, Frame, Window, lag_s
from rtdecode.decoder.normalize import rescale_prediction
from rtdecode.decoder.smoothing import PredictionSmoother
from rtdecode.encoder.metrics import LagCurve
from rtdecode.images.codec import encode_image
from rtdecode.lanes import (
    LANE_STAGES,
    STAGES,
    ImageJob,
    LatestSlot,
    ScoredWindow,
    WindowSource,
    WorkerMeter,
    WorkerOptions,
    WorkerStats,
    lane_threads,
)

if TYPE_CHECKING:
    from PIL import Image

    from rtdecode.decoder.base import ImageDecoder
    from rtdecode.decoder.retrieval import Retrieval
    from rtdecode.encoder.model import BrainModule
    from rtdecode.images.categories import CategoryGallery
    from rtdecode.images.gallery import Gallery
    from rtdecode.signal.preprocess import Preprocessor

log = logging.getLogger(__name__)

__all__ = ["DecodeWorker", "WorkerOptions", "WorkerStats", "lane_threads", "LANE_STAGES", "STAGES"]


class DecodeWorker(threading.Thread):
    """Decode windows into Frames, in one or two background threads (module docstring).

    Parameters
    ----------
    windows : WindowSource
        Gives the newest Window (``next_window(timeout_s)``).
    preprocessor : rtdecode.signal.preprocess.Preprocessor
    encoder : BrainModule
        In eval mode; its output dict has ``clip`` and ``mse`` heads.
    retrieval : rtdecode.decoder.retrieval.Retrieval
        Searched with the CLIP head's output.
    decoder : ImageDecoder | None
        Fed with the MSE head's output through ``rescale_prediction`` (with the decoder's
        ``normalizer``); None for retrieval only.
    publish : callable(Frame) -> None
        Called from either lane for every frame; must not block.
    device : str
        torch device string.
    options : WorkerOptions, optional
    target_stats : dict | None
        ``{"mean": (D,), "std": (D,)}`` of the training embeddings.
    gallery : Gallery | CategoryGallery | None
        Its ``image(id)`` is the img2img start.
    subject : int
        Row of the encoder's subject layer.
    window_shape : (int, int), optional
        A preprocessed window's shape, to warm the models up before the first window.
    """

    def __init__(
        self, windows: WindowSource, preprocessor: Preprocessor, encoder: BrainModule,
        retrieval: Retrieval, decoder: ImageDecoder | None, publish: Callable[[Frame], None], *,
        device: str = "cpu", options: WorkerOptions | None = None, target_stats: dict | None = None,
        gallery: Gallery | CategoryGallery | None = None, subject: int = 0,
        window_shape: tuple[int, int] | None = None,
    ) -> None:
        from rtdecode.lsl.streams import local_clock

        super().__init__(name="rtdecode-worker", daemon=True)
        self.windows, self.preprocessor, self.encoder = windows, preprocessor, encoder
        self.retrieval, self.decoder, self.publish = retrieval, decoder, publish
        self.device, self.options = device, options or WorkerOptions()
        self.target_stats, self.gallery, self.subject = target_stats, gallery, subject
        self.window_shape = window_shape
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.image_error: BaseException | None = None
        self._two_lanes = self.options.lanes == 2 and decoder is not None
        # A streaming config keeps filter state across windows: it belongs to lane 1.
        self._lane1_preprocessor = preprocessor
        if getattr(getattr(preprocessor, "config", None), "streaming", False):
            from rtdecode.signal.streaming import StreamingPreprocessor

            self._lane1_preprocessor = StreamingPreprocessor(preprocessor)
        self._local_clock = local_clock
        self._runner = None  # EncoderRunner, built on lane 1 for the first window's shape
        self._stop_event = threading.Event()
        self._publish_lock = threading.Lock()
        self._seq = 0
        self._last_generate_t = -np.inf
        self._slot = LatestSlot()
        self._image_thread: threading.Thread | None = None
        self._image_ready = threading.Event()
        self.meter = WorkerMeter(self.options.latency_history)
        tau = self.options.smooth_s  # one integrator per head: the query and the MSE vector
        self._smoothers = [PredictionSmoother(tau), PredictionSmoother(tau)] if tau else []
        self.lag_curve = LagCurve(max(len(retrieval), 1), bin_s=self.options.lag_bin_s,
                                  max_lag_s=self.options.stimulus_hold_s + 1e-6)

    # ------------------------------------------------------------------ public
    @property
    def n_lanes(self) -> int:
        """2 when generation runs in its own lane, else 1 (also without a decoder)."""
        return 2 if self._two_lanes else 1

    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask both lanes to finish and wait for them."""
        self._stop_event.set()
        for thread in (self._image_thread, self):
            if thread is not None and thread.is_alive() and threading.current_thread() is not thread:
                thread.join(timeout_s)

    @property
    def stats(self) -> WorkerStats:
        """Counters and latency percentiles (p50/p95/p99, ms) per stage and per lane."""
        return self.meter.snapshot(
            two_lanes=self._two_lanes, images_skipped=self._slot.replaced if self._two_lanes else None,
            ready=self.ready.is_set(), error=self.error, image_error=self.image_error,
            online_eval=self.lag_curve.as_dict())

    def latency_samples(self, stage: str, lane: str | None = None) -> list[float]:
        """Recent latency samples (ms) of ``stage``, of one lane's table when ``lane``."""
        return self.meter.samples(stage, lane)

    # ------------------------------------------------------------------ lane 1
    def run(self) -> None:
        """Lane 1's thread: warm up (starting lane 2 if any), then process windows until stopped.

        A failure while warming up is kept in ``error`` (shown on /health) and ends the worker;
        a failing window is counted and the loop goes on.
        """
        try:
            import torch

            self._torch = torch  # bound once here, not looked up again for every window
            self._set_threads("retrieval" if self._two_lanes else "single",
                              lane_threads(self.options)[0])
            self.encoder.eval()
            warm_vec = self._warm_up()
            if self._two_lanes and not self._start_image_lane(warm_vec):
                return
        except BaseException as exc:  # surfaced on /health; the worker ends
            log.exception("Decode worker failed while warming up.")
            self.error = exc
            self._stop_event.set()
            return
        self.ready.set()
        meter = self.meter
        while not self._stop_event.is_set():
            try:
                window = self.windows.next_window(timeout_s=0.2)
            except BaseException as exc:
                # The source failed (reader error); keep it for /health, wait and retry.
                meter.note(meter.frames, f"window source: {exc}")
                self._stop_event.wait(0.2)
                continue
            if window is None:
                continue
            try:
                self._process(window)
            except Exception as exc:  # a repeating failure is logged once, then counted
                if not meter.fail(meter.frames, "frame_errors", f"{type(exc).__name__}: {exc}"):
                    log.exception("Decoding one window failed; the frame is skipped (identical "
                                  "failures in a row are only counted, in frame_errors).")
            else:
                if meter.frames.count:  # read by its only writer, this thread
                    log.info("Decoding works again after %d failed windows.",
                             meter.succeed(meter.frames))

    def _start_image_lane(self, warm_vec: np.ndarray | None) -> bool:
        """Start lane 2 and wait for its warm-up; False when asked to stop meanwhile."""
        self._image_thread = threading.Thread(target=self._image_lane, args=(warm_vec,),
                                              name="rtdecode-image-lane", daemon=True)
        self._image_thread.start()
        while not self._image_ready.wait(0.1):
            if self.image_error is not None:
                raise self.image_error
            if self._stop_event.is_set():
                return False
        if self.image_error is not None:
            raise self.image_error
        return True

    def _set_threads(self, lane: str, n: int | None) -> None:
        """Apply this lane's intra-op thread count, in the lane's own thread."""
        if n:
            self._torch.set_num_threads(int(n))
        self.meter.note_threads(lane, self._torch.get_num_threads())

    def _warm_up(self) -> np.ndarray | None:
        """Run the lane-1 models once so the first real frame pays no lazy-init cost.

        In single-lane mode the decoder too; return the prediction lane 2 warms up with.
        """
        if self.window_shape is None:
            return None
        vec, mse = self._encode(np.zeros(self.window_shape, dtype=np.float32))
        dim = int(getattr(self.retrieval, "dim", 0)) or None  # the dimensions it compares
        self.retrieval.topk(vec.reshape(-1)[:dim], k=self.options.topk)
        if self.decoder is not None and not self._two_lanes:
            self._generate(mse, ())
        return mse

    def _encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Both heads' vectors for one preprocessed window (lane 1's thread)."""
        if self._runner is None or self._runner.shape[1:] != x.shape:
            from rtdecode.encoder.runner import EncoderRunner

            self._runner = EncoderRunner(self.encoder, self.device, *x.shape, subject=self.subject,
                                         precision=self.options.precision,
                                         cuda_graph=self.options.cuda_graph)
            log.info("Encoder at batch 1: %s.", self._runner.describe())
        return self._runner(x)

    def _generate(self, mse_vec: np.ndarray, topk: tuple[tuple[str, float], ...]) -> Image.Image:
        """One image from the MSE head's prediction (rescaled by the one rescale path)."""
        init = None
        if self.options.img2img_strength is not None and self.gallery is not None and topk:
            init = self.gallery.image(topk[0][0])
        vec = rescale_prediction(mse_vec, self.target_stats, getattr(self.decoder, "normalizer", None))
        return self.decoder.generate(vec, seed=self.options.seed, steps=self.options.diffusion_steps,
                                     init_image=init, strength=self.options.img2img_strength or 0.6)

    def _process(self, window: Window) -> None:
        """One window on lane 1: encode -> retrieve -> score -> emit."""
        lat = {"queue": (self._local_clock() - window.t_arrived) * 1e3}
        embedding, mse_vec = self.encode_window(window, lat)
        t0 = time.perf_counter()
        query = embedding.vector.reshape(-1)
        if self._smoothers:
            query, mse_vec = (sm.update(v, window.last_sample, window.sfreq_hz)
                              for sm, v in zip(self._smoothers, (query, mse_vec), strict=True))
        topk = self.retrieve(query)
        true_id, true_rank, lag = self.score(window, query)
        lat["retrieve"] = (time.perf_counter() - t0) * 1e3
        self.emit(ScoredWindow(window, embedding, mse_vec, topk, true_id, true_rank, lag), lat)

    def encode_window(self, window: Window, lat: dict[str, float]) -> tuple[Embedding, np.ndarray]:
        """Preprocess and encode a window; its CLIP-head Embedding and MSE-head vector.

        ``preprocess`` and ``encode`` (ms) are added to ``lat``.
        """
        t0 = time.perf_counter()
        x = self._lane1_preprocessor.transform_window(window)
        t1 = time.perf_counter()
        clip_vec, mse_vec = self._encode(x)
        lat["preprocess"] = (t1 - t0) * 1e3
        lat["encode"] = (time.perf_counter() - t1) * 1e3
        return Embedding(window=window, vector=clip_vec, preprocess_ms=lat["preprocess"],
                         encode_ms=lat["encode"]), mse_vec

    def retrieve(self, query: np.ndarray) -> tuple[tuple[str, float], ...]:
        """The ``topk`` images of the retrieval set nearest to ``query``: ``((id, score), ...)``."""
        return tuple((str(i), float(s)) for i, s in self.retrieval.topk(query, k=self.options.topk))

    def score(self, window: Window, query: np.ndarray) -> tuple[str | None, int | None, float | None]:
        """The stimulus on screen, its rank within the retrieval set, and the window's lag.

        A ranked window is added to the session's curve (``lag_curve``).
        """
        true_id, lag = self._truth(window)
        true_rank = None
        if true_id is not None and true_id in self.retrieval:
            true_rank = int(self.retrieval.rank_of(query, true_id))
            self.lag_curve.add(lag, true_rank)
        return true_id, true_rank, lag

    def _truth(self, window: Window) -> tuple[str | None, float | None]:
        """The stimulus on screen and the window's lag since its onset (:func:`~rtdecode.contracts.lag_s`).

        In the stream's samples when the marker was located, else the same rule on the LSL
        clock; training cuts its windows by it (:func:`rtdecode.training.encoder.lagged_windows`).
        """
        m = window.marker
        if m is None:
            return None, None
        if m.sample is not None:
            lag = lag_s(window.last_sample, m.sample, window.sfreq_hz)
        else:
            lag = round(float(window.t_last + 1.0 / window.sfreq_hz - m.t_lsl), 6)
        if m.image_id is None or not 0.0 <= lag <= self.options.stimulus_hold_s:
            return None, lag
        return m.image_id, lag

    def emit(self, scored: ScoredWindow, lat: dict[str, float]) -> int:
        """Publish a window's retrieval frame (with its image when inline and due); its seq.

        Two lanes: the prediction goes to lane 2's slot. ``lat``: the window's stages so far.
        """
        t_ready = time.perf_counter()
        image_bytes = None
        due = (t_ready - self._last_generate_t) >= 1.0 / self.options.max_fps
        inline = self.decoder is not None and not self._two_lanes
        if inline and due:
            image_bytes = self._image_bytes(scored.mse_vec, scored.topk, lat)
            self._last_generate_t = t_ready
        lat["total"] = (self._local_clock() - scored.window.t_arrived) * 1e3
        lane = "retrieval" if self._two_lanes else None
        seq = self._emit(scored, lat, image_bytes, lane, embedding=scored.embedding)
        if self._two_lanes:
            self._slot.put(ImageJob(scored, seq, dict(lat), time.perf_counter()))
        counts = {"windows": 1, "frames": 1, "flagged_windows": int(scored.window.flagged),
                  "images": int(image_bytes is not None),
                  "images_skipped": int(inline and image_bytes is None)}
        self.meter.add(counts, lat, lane)
        return seq

    def _image_bytes(self, mse_vec: np.ndarray, topk: tuple[tuple[str, float], ...],
                     lat: dict[str, float]) -> bytes:
        """Generate and encode one image; ``generate`` and ``encode_image`` (ms) go to ``lat``."""
        t0 = time.perf_counter()
        img = self._generate(mse_vec, topk)
        t1 = time.perf_counter()
        image_bytes = encode_image(img, self.options.image_format)
        lat["generate"] = (t1 - t0) * 1e3
        lat["encode_image"] = (time.perf_counter() - t1) * 1e3
        return image_bytes

    def _emit(self, scored: ScoredWindow, lat: dict[str, float], image: bytes | None,
              lane: str | None, embedding: Embedding | None = None,
              window_seq: int | None = None) -> int:
        """Give the window's frame the next seq and publish it (either lane); returns the seq."""
        window = scored.window
        with self._publish_lock:
            seq = self._seq
            self._seq += 1
            self.publish(Frame(
                seq=seq, first_sample=window.first_sample, t_first=window.t_first,
                t_last=window.t_last, t_arrived=window.t_arrived,
                latencies_ms={k: round(v, 3) for k, v in lat.items()}, topk=scored.topk,
                true_id=scored.true_id, true_rank=scored.true_rank, lag_s=scored.lag_s,
                image=image, mime=f"image/{self.options.image_format}", lane=lane,
                extra={"flagged": window.flagged, "n_gaps": window.n_gaps},
                embedding=embedding, window_seq=window_seq,
            ))
        return seq

    # ------------------------------------------------------------------ lane 2
    def _image_lane(self, warm_vec: np.ndarray | None) -> None:
        """Lane 2's thread: warm the decoder up, then generate until stopped.

        Generates from the newest prediction at most ``max_fps`` times per second.
        """
        torch = self._torch
        try:
            self._set_threads("image", lane_threads(self.options)[1])
            stream_ctx: Any = contextlib.nullcontext()
            if str(self.device).startswith("cuda"):
                # Its own CUDA stream: generation kernels queue beside the encoder's.
                stream_ctx = torch.cuda.stream(torch.cuda.Stream(device=self.device))
            with stream_ctx:
                if warm_vec is not None:
                    self._generate(warm_vec, ())
                self._image_ready.set()
                self._image_loop()
        except BaseException as exc:  # lane 1 goes on; /health shows it
            log.exception("The image lane stopped; retrieval frames go on without images.")
            self.image_error = exc
            self._image_ready.set()

    def _image_loop(self) -> None:
        meter = self.meter
        period_s = 1.0 / self.options.max_fps
        next_start = -np.inf
        while not self._stop_event.is_set():
            wait_s = next_start - time.perf_counter()
            if wait_s > 0:
                self._stop_event.wait(wait_s)
                continue
            job = self._slot.take(timeout_s=0.2)  # the newest prediction (latest wins)
            if job is None:
                continue
            t_start = time.perf_counter()
            next_start = t_start + period_s
            try:
                self._generate_frame(job, t_start)
            except Exception as exc:
                if not meter.fail(meter.images, "image_errors", f"{type(exc).__name__}: {exc}"):
                    log.exception("Generating one image failed; the image is skipped.")
            else:
                meter.succeed(meter.images)

    def _generate_frame(self, job: ImageJob, t_start: float) -> None:
        """Lane 2's frame of one job: the window's lane-1 stages, ``wait`` and generation."""
        lat = {k: v for k, v in job.lane1_ms.items() if k != "total"}
        lat["wait"] = (t_start - job.t_ready) * 1e3
        image_bytes = self._image_bytes(job.scored.mse_vec, job.scored.topk, lat)
        lat["total"] = (self._local_clock() - job.scored.window.t_arrived) * 1e3
        self._emit(job.scored, lat, image_bytes, "image", window_seq=job.window_seq)
        own = {k: lat[k] for k in ("generate", "encode_image")}
        self.meter.add({"images": 1, "frames": 1}, own, "image", lat)
