"""DecodeWorker: the two lanes that own the models.

Lanes and threads
-----------------
* **Lane 1** (the ``DecodeWorker`` thread itself, "retrieval") owns the brain encoder,
  the retrieval index and the preprocessing state (a
  :class:`~rtdecode.signal.streaming.StreamingPreprocessor` when the checkpoint's
  preprocessing is ``streaming``). At every hop it takes the newest
  Window from the window source (latest-wins: the source counts what it skipped),
  preprocesses, encodes, retrieves and publishes a retrieval frame. It never waits for
  generation: it only drops the window's prediction into a one-item latest-wins slot.
* **Lane 2** (a second thread, "image", started by lane 1 after warm-up) owns the image
  decoder. At most ``max_fps`` times per second it takes the NEWEST prediction from the
  slot (an older one that was never taken is replaced and counted in
  ``embeddings_skipped``), generates, and publishes an image frame that names the window
  it came from (its ``first_sample``/``t_*`` and ``window_seq``, the seq of that window's
  retrieval frame). On a GPU lane 2 runs on its own CUDA stream.
* The torch thread budget is split explicitly (:func:`lane_threads`): each lane sets its
  own intra-op threads in its own thread (torch's OpenMP setting is per thread).
* ``lanes=1`` keeps the single-lane behaviour: one thread, one frame per window, and the
  image (when due) generated inline in that frame.
* Frames of both lanes take their ``seq`` from one counter and are handed to ``publish``
  in that order, under one lock; ``publish`` must not block (the server's Broadcaster
  only schedules the hand-off onto the asyncio loop).
* Counters and latency samples are written by the lane they belong to, under the
  worker's lock; ``stats`` reads a snapshot from any thread.

An exception while decoding one window (lane 1) or generating one image (lane 2) skips
that frame, is counted and logged, and the lane goes on; failures on every try show on
/health. An exception while loading or warming up ends the worker and is kept in
``error``; lane 2 ending unexpectedly is kept in ``image_error`` while lane 1 goes on.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from rtdecode.contracts import Embedding, Frame, Window, lag_s
from rtdecode.decoder.normalize import rescale_prediction
from rtdecode.encoder.metrics import LagCurve
from rtdecode.images.codec import encode_image

log = logging.getLogger(__name__)

STAGES = ("queue", "preprocess", "encode", "retrieve", "generate", "encode_image", "total")
#: Stages timed by each lane (two-lane mode). ``wait``: from the prediction entering the
#: slot to lane 2 taking it; each lane's ``total`` runs from the window's arrival.
LANE_STAGES = {
    "retrieval": ("queue", "preprocess", "encode", "retrieve", "total"),
    "image": ("wait", "generate", "encode_image", "total"),
}


class WindowSource(Protocol):
    def next_window(self, timeout_s: float) -> Window | None: ...


@dataclass
class WorkerOptions:
    """How the worker paces itself.

    Attributes
    ----------
    topk : int
        Gallery images returned per frame.
    max_fps : float
        Most generated images per second; windows in between get retrieval only.
    diffusion_steps : int
    seed : int
        Seed of the decoder's noise (the same embedding gives the same image).
    img2img_strength : float | None
        When set, generation starts from the top retrieved image with this strength.
    image_format : str
        ``jpeg``, ``webp`` or ``png``.
    stimulus_hold_s : float
        A marker names the "true" image for windows ending up to this long after it
        (1.5 s: a whole THINGS-MEG trial, image and fixation, so the curve shows the
        return to chance before the next onset).
    lag_bin_s : float
        Width of the lag bins of the session's decoding curve (``online_eval``).
    latency_history : int
        Samples kept per stage for the percentiles in ``stats``.
    lanes : int
        2: retrieval and generation in two threads (lane 1 never waits for lane 2);
        1: the single-lane worker (generation inline, retrieval waits behind it).
    torch_threads : int | None
        Intra-op threads of lane 1 (and of the single lane); None leaves torch's default.
    thread_budget : int | None
        Threads both lanes may use together (None: the machine's cores); lane 2 gets
        ``thread_budget - torch_threads``, at least 1 (see :func:`lane_threads`).
    precision : str
        The encoder's precision at batch 1: ``auto`` (fp32 on CPU, bf16 or fp16 on CUDA),
        ``fp32``, ``bf16`` or ``fp16`` (:class:`rtdecode.encoder.runner.EncoderRunner`).
    cuda_graph : bool | None
        Replay the encoder as a captured CUDA graph (None: on CUDA).
    """

    topk: int = 5
    max_fps: float = 10.0
    diffusion_steps: int = 4
    seed: int = 0
    img2img_strength: float | None = None
    image_format: str = "jpeg"
    stimulus_hold_s: float = 1.5
    lag_bin_s: float = 0.05
    latency_history: int = 2048
    lanes: int = 2
    torch_threads: int | None = 1
    thread_budget: int | None = None
    precision: str = "auto"
    cuda_graph: bool | None = None

    def __post_init__(self) -> None:
        if self.lanes not in (1, 2):
            raise ValueError(f"lanes={self.lanes!r} must be 1 (single lane) or 2 (two lanes).")
        if not self.max_fps > 0:
            raise ValueError(f"max_fps={self.max_fps!r} must be a positive number of images per second.")


@dataclass(frozen=True, slots=True)
class WorkerStats:
    """Counters and latencies of a DecodeWorker (a snapshot; take a new one to see changes).

    Attributes
    ----------
    counters : dict of str to int
        Monotonic counters (``frames``, ``images``, ``frame_errors``, ...).
    latency_ms : dict of str to dict
        Per stage, ``{"p50", "p95", "p99", "n"}`` of the recent latencies in ms.
    lanes : dict
        ``n`` (1 or 2) and, per lane, its threads, counts, errors and latencies.
    ready : bool
        Warmed up and decoding.
    error : str | None
        ``repr`` of the error that stopped the worker.
    last_frame_error : str | None
        The latest window that failed, and why.
    consecutive_frame_errors : int
        Windows in a row that failed, up to now.
    online_eval : dict
        The live rank-by-lag curve (``LagCurve.as_dict()``).
    """

    counters: dict[str, int]
    latency_ms: dict[str, dict[str, float]]
    lanes: dict[str, Any]
    ready: bool
    error: str | None
    last_frame_error: str | None
    consecutive_frame_errors: int
    online_eval: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        """The snapshot as a JSON-able dict (for /api/status and /metrics)."""
        return asdict(self)


def lane_threads(options: WorkerOptions) -> tuple[int | None, int | None]:
    """Intra-op torch threads of (lane 1, lane 2).

    Lane 1 runs batch-1 encoder calls, which gain nothing from more threads and contend
    badly on a busy machine (bench/encoder.py: p50 5 ms with 1 thread vs 44 ms with 2), so
    it gets ``torch_threads`` (1). Lane 2 gets the rest of the budget, at least one. On 2
    cores that is 1 + 1: the lanes never oversubscribe the cores, and a generation is
    not slowed by lane 1 waking every hop (docs/latency.md measures 1 + 1 against 1 + 2).
    """
    first = options.torch_threads
    budget = options.thread_budget if options.thread_budget is not None else (os.cpu_count() or 1)
    second = max(1, int(budget) - (first or 1))
    return first, second


class _LatestSlot:
    """One-item latest-wins hand-off from lane 1 to lane 2; replaced items are counted."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: Any = None
        self.replaced = 0

    def put(self, item: Any) -> None:
        with self._cond:
            if self._item is not None:
                self.replaced += 1
            self._item = item
            self._cond.notify()

    def take(self, timeout_s: float) -> Any:
        with self._cond:
            if self._item is None:
                self._cond.wait(timeout_s)
            item, self._item = self._item, None
            return item


@dataclass(frozen=True, slots=True)
class _Job:
    """What lane 1 hands to lane 2: one window's prediction and its retrieval results."""

    window: Window
    window_seq: int
    mse_vec: np.ndarray
    topk: tuple[tuple[str, float], ...]
    true_id: str | None
    true_rank: int | None
    lag_s: float | None
    lane1_ms: dict[str, float]
    t_ready: float  # perf_counter when it entered the slot


class DecodeWorker(threading.Thread):
    """Decode windows into Frames, in one or two background threads (module docstring).

    Parameters
    ----------
    windows : WindowSource
        Gives the newest Window (``next_window(timeout_s)``).
    preprocessor : rtdecode.signal.preprocess.Preprocessor
    encoder : torch.nn.Module
        A BrainModule in eval mode; its output dict has ``clip`` and ``mse`` heads.
    retrieval : rtdecode.decoder.retrieval.Retrieval
        Searched with the CLIP head's output.
    decoder : ImageDecoder | None
        Fed with the MSE head's output through ``rescale_prediction`` (with the decoder's
        ``normalizer``); None for retrieval only.
    publish : callable(Frame) -> None
        Called from either lane for every frame; must not block.
    device : str
        torch device string.
    target_stats : dict | None
        ``{"mean": (D,), "std": (D,)}`` of the training embeddings.
    gallery : object | None
        With ``image(id) -> PIL.Image``, used for the img2img start.
    """

    def __init__(
        self,
        windows: WindowSource,
        preprocessor: Any,
        encoder: Any,
        retrieval: Any,
        decoder: Any | None,
        publish: Callable[[Frame], None],
        *,
        device: str = "cpu",
        options: WorkerOptions | None = None,
        target_stats: dict | None = None,
        gallery: Any | None = None,
        subject: int = 0,
        window_shape: tuple[int, int] | None = None,
    ) -> None:
        super().__init__(name="rtdecode-worker", daemon=True)
        self.windows = windows
        self.preprocessor = preprocessor
        self.encoder = encoder
        self.retrieval = retrieval
        self.decoder = decoder
        self.publish = publish
        self.device = device
        self.options = options or WorkerOptions()
        self.target_stats = target_stats
        self.gallery = gallery
        self.subject = subject
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
        self._runner = None  # EncoderRunner, built on lane 1 for the first window's shape
        self._stop_event = threading.Event()
        self._lock = threading.Lock()
        self._publish_lock = threading.Lock()
        self._seq = 0
        self._last_generate_t = -np.inf
        self._slot = _LatestSlot()
        self._image_thread: threading.Thread | None = None
        self._image_ready = threading.Event()
        self._threads_seen: dict[str, int] = {}
        self._counters = {
            "windows": 0,
            "frames": 0,
            "images": 0,
            "images_skipped": 0,
            "frame_errors": 0,
            "image_errors": 0,
            "flagged_windows": 0,
        }
        self._latencies: dict[str, deque[float]] = {
            s: deque(maxlen=self.options.latency_history) for s in STAGES
        }
        self._lane_latencies: dict[str, dict[str, deque[float]]] = {
            lane: {s: deque(maxlen=self.options.latency_history) for s in stages}
            for lane, stages in LANE_STAGES.items()
        }
        self._last_error_msg: str | None = None
        self._consecutive_errors = 0  # windows in a row that failed (0 after a success)
        self._last_image_error: str | None = None
        self._consecutive_image_errors = 0
        self.lag_curve = LagCurve(
            max(len(retrieval), 1), bin_s=self.options.lag_bin_s,
            max_lag_s=self.options.stimulus_hold_s + 1e-6,
        )

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
        with self._lock:
            counters = dict(self._counters)
            if self._two_lanes:
                counters["images_skipped"] = self._slot.replaced
            lat = {k: np.asarray(v, dtype=float) for k, v in self._latencies.items()}
            lane_lat = {
                lane: {k: np.asarray(v, dtype=float) for k, v in table.items()}
                for lane, table in self._lane_latencies.items()
            }
            last_err = self._last_error_msg
            failing = self._consecutive_errors
            last_img_err = self._last_image_error
            img_failing = self._consecutive_image_errors
            threads = dict(self._threads_seen)
        lanes: dict[str, Any] = {"n": self.n_lanes}
        if self._two_lanes:
            lanes["retrieval"] = {
                "threads": threads.get("retrieval"),
                "frames": counters["frames"] - counters["images"],
                "latency_ms": _percentiles(lane_lat["retrieval"]),
            }
            lanes["image"] = {
                "threads": threads.get("image"),
                "images": counters["images"],
                "embeddings_skipped": counters["images_skipped"],
                "errors": counters["image_errors"],
                "consecutive_errors": img_failing,
                "last_error": last_img_err,
                "error": None if self.image_error is None else repr(self.image_error),
                "latency_ms": _percentiles(lane_lat["image"]),
            }
        else:
            lanes["single"] = {"threads": threads.get("single")}
        return WorkerStats(
            counters=counters,
            latency_ms=_percentiles(lat),
            lanes=lanes,
            ready=self.ready.is_set(),
            error=None if self.error is None else repr(self.error),
            last_frame_error=last_err,
            consecutive_frame_errors=failing,
            online_eval=self.lag_curve.as_dict(),
        )

    def latency_samples(self, stage: str, lane: str | None = None) -> list[float]:
        """Recent latency samples (ms) of ``stage``, of one lane's table when ``lane``."""
        with self._lock:
            table = self._latencies if lane is None else self._lane_latencies[lane]
            return list(table[stage])

    # ------------------------------------------------------------------ lane 1
    def run(self) -> None:
        """Lane 1's thread: warm up (starting lane 2 if any), then process windows until stopped.

        A failure while warming up is kept in ``error`` (shown on /health) and ends the worker;
        a failing window is counted and the loop goes on.
        """
        try:
            import torch

            from rtdecode.lsl.streams import local_clock

            # Bound once here, not looked up again for every window.
            self._torch = torch
            self._local_clock = local_clock
            first, _ = lane_threads(self.options)
            self._set_threads("retrieval" if self._two_lanes else "single", first)
            self.encoder.eval()
            warm_vec = self._warm_up()
            if self._two_lanes:
                self._image_thread = threading.Thread(
                    target=self._image_lane, args=(warm_vec,), name="rtdecode-image-lane",
                    daemon=True,
                )
                self._image_thread.start()
                while not self._image_ready.wait(0.1):
                    if self.image_error is not None:
                        raise self.image_error
                    if self._stop_event.is_set():
                        return
                if self.image_error is not None:
                    raise self.image_error
        except BaseException as exc:  # surfaced on /health; the worker ends
            log.exception("Decode worker failed while warming up.")
            self.error = exc
            self._stop_event.set()
            return
        self.ready.set()
        while not self._stop_event.is_set():
            try:
                window = self.windows.next_window(timeout_s=0.2)
            except BaseException as exc:
                # The source failed (reader error); keep it for /health, wait and retry.
                self._note_error(f"window source: {exc}")
                self._stop_event.wait(0.2)
                continue
            if window is None:
                continue
            try:
                self._process(window)
            except Exception as exc:
                msg = f"{type(exc).__name__}: {exc}"
                with self._lock:
                    self._counters["frame_errors"] += 1
                    self._consecutive_errors += 1
                    repeated = self._consecutive_errors > 1 and msg == self._last_error_msg
                # A failure that repeats on every window (20 per second) is logged once and
                # counted; the log must not fill the disk during a long session.
                if not repeated:
                    log.exception(
                        "Decoding one window failed; the frame is skipped (identical "
                        "failures in a row are only counted, in frame_errors)."
                    )
                self._note_error(msg)
            else:
                if self._consecutive_errors:
                    log.info(
                        "Decoding works again after %d failed windows.", self._consecutive_errors
                    )
                    with self._lock:
                        self._consecutive_errors = 0

    def _set_threads(self, lane: str, n: int | None) -> None:
        """Apply this lane's intra-op thread count, in the lane's own thread."""
        if n:
            self._torch.set_num_threads(int(n))
        with self._lock:
            self._threads_seen[lane] = int(self._torch.get_num_threads())

    def _note_error(self, msg: str) -> None:
        with self._lock:
            self._last_error_msg = msg

    def _warm_up(self) -> np.ndarray | None:
        """Run the lane-1 models once so the first real frame pays no lazy-init cost.

        In single-lane mode the decoder too; return the prediction lane 2 warms up with.
        """
        if self.window_shape is None:
            return None
        vec, mse = self._encode(np.zeros(self.window_shape, dtype=np.float32))
        self.retrieval.topk(vec.reshape(-1)[: self.retrieval_dim], k=self.options.topk)
        if self.decoder is not None and not self._two_lanes:
            self._generate(mse, ())
        return mse

    @property
    def retrieval_dim(self) -> int:
        """Leading dimensions of the prediction the retrieval index compares (all when unknown)."""
        return int(getattr(self.retrieval, "dim", 0)) or 10**9

    def _encode(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Both heads' vectors for one preprocessed window (lane 1's thread)."""
        if self._runner is None or self._runner.shape[1:] != x.shape:
            from rtdecode.encoder.runner import EncoderRunner

            self._runner = EncoderRunner(
                self.encoder, self.device, *x.shape, subject=self.subject,
                precision=self.options.precision, cuda_graph=self.options.cuda_graph,
            )
            log.info("Encoder at batch 1: %s.", self._runner.describe())
        return self._runner(x)

    def _rescale(self, vec: np.ndarray) -> np.ndarray:
        """The MSE head's prediction as the decoder's input (the one rescale path)."""
        return rescale_prediction(vec, self.target_stats, getattr(self.decoder, "normalizer", None))

    def _generate(self, mse_vec: np.ndarray, topk: Any) -> Any:
        init = None
        if self.options.img2img_strength is not None and self.gallery is not None and topk:
            init = self.gallery.image(topk[0][0])
        return self.decoder.generate(
            self._rescale(mse_vec),
            seed=self.options.seed,
            steps=self.options.diffusion_steps,
            init_image=init,
            strength=self.options.img2img_strength or 0.6,
        )

    def _truth(self, window: Window) -> tuple[str | None, float | None]:
        """The stimulus on screen for this window and the window's lag since its onset.

        The lag is the window's end (one sample past its last) minus the latest onset
        (:func:`rtdecode.contracts.lag_s`), in the stream's samples when the marker was
        located, else the same rule on the LSL clock; training
        cuts its windows by the same rule (:func:`rtdecode.training.encoder.lagged_windows`).
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

    def _emit(self, window: Window, **fields: Any) -> int:
        """Give the frame the next seq and publish it; returns the seq."""
        with self._publish_lock:
            seq = self._seq
            self._seq += 1
            self.publish(Frame(
                seq=seq,
                first_sample=window.first_sample,
                t_first=window.t_first,
                t_last=window.t_last,
                t_arrived=window.t_arrived,
                extra={"flagged": window.flagged, "n_gaps": window.n_gaps},
                **fields,
            ))
        return seq

    def _process(self, window: Window) -> None:
        clock = time.perf_counter
        local_clock = self._local_clock

        lat: dict[str, float] = {}
        lat["queue"] = (local_clock() - window.t_arrived) * 1e3

        t0 = clock()
        x = self._lane1_preprocessor.transform_window(window)
        t1 = clock()
        clip_vec, mse_vec = self._encode(x)
        t2 = clock()
        lat["preprocess"] = (t1 - t0) * 1e3
        lat["encode"] = (t2 - t1) * 1e3
        emb = Embedding(window=window, vector=clip_vec, preprocess_ms=lat["preprocess"], encode_ms=lat["encode"])

        query = emb.vector.reshape(-1) if emb.vector.ndim > 1 else emb.vector
        topk = tuple((str(i), float(s)) for i, s in self.retrieval.topk(query, k=self.options.topk))
        true_id, lag_s = self._truth(window)
        true_rank = None
        if true_id is not None and true_id in self.retrieval:
            true_rank = int(self.retrieval.rank_of(query, true_id))
            self.lag_curve.add(lag_s, true_rank)
        t3 = clock()
        lat["retrieve"] = (t3 - t2) * 1e3

        image_bytes = None
        mime = f"image/{self.options.image_format}"
        due = (t3 - self._last_generate_t) >= 1.0 / self.options.max_fps
        if self.decoder is not None and due and not self._two_lanes:
            img = self._generate(mse_vec, topk)
            t4 = clock()
            image_bytes = encode_image(img, self.options.image_format)
            t5 = clock()
            lat["generate"] = (t4 - t3) * 1e3
            lat["encode_image"] = (t5 - t4) * 1e3
            self._last_generate_t = t3
        lat["total"] = (local_clock() - window.t_arrived) * 1e3

        rounded = {k: round(v, 3) for k, v in lat.items()}
        seq = self._emit(
            window,
            latencies_ms=rounded,
            topk=topk,
            true_id=true_id,
            true_rank=true_rank,
            lag_s=lag_s,
            embedding=emb,
            image=image_bytes,
            mime=mime,
            lane="retrieval" if self._two_lanes else None,
        )
        if self._two_lanes:
            self._slot.put(_Job(window, seq, mse_vec, topk, true_id, true_rank, lag_s, rounded, clock()))
        with self._lock:
            self._counters["windows"] += 1
            self._counters["frames"] += 1
            if window.flagged:
                self._counters["flagged_windows"] += 1
            if image_bytes is not None:
                self._counters["images"] += 1
            elif self.decoder is not None and not self._two_lanes:
                self._counters["images_skipped"] += 1
            for k, v in lat.items():
                self._latencies[k].append(v)
            if self._two_lanes:
                for k in LANE_STAGES["retrieval"]:
                    self._lane_latencies["retrieval"][k].append(lat[k])

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
        clock = time.perf_counter
        period_s = 1.0 / self.options.max_fps
        next_start = -np.inf
        while not self._stop_event.is_set():
            wait_s = next_start - clock()
            if wait_s > 0:
                self._stop_event.wait(wait_s)
                continue
            job = self._slot.take(timeout_s=0.2)  # the newest prediction (latest wins)
            if job is None:
                continue
            t_start = clock()
            next_start = t_start + period_s
            try:
                self._generate_frame(job, t_start)
            except Exception as exc:
                msg = f"{type(exc).__name__}: {exc}"
                with self._lock:
                    self._counters["image_errors"] += 1
                    self._consecutive_image_errors += 1
                    repeated = self._consecutive_image_errors > 1 and msg == self._last_image_error
                    self._last_image_error = msg
                if not repeated:
                    log.exception("Generating one image failed; the image is skipped.")
            else:
                with self._lock:
                    self._consecutive_image_errors = 0

    def _generate_frame(self, job: _Job, t_start: float) -> None:
        clock = time.perf_counter
        img = self._generate(job.mse_vec, job.topk)
        t_gen = clock()
        image_bytes = encode_image(img, self.options.image_format)
        t_enc = clock()
        lat = dict(job.lane1_ms)
        lat.pop("total", None)
        lat["wait"] = (t_start - job.t_ready) * 1e3
        lat["generate"] = (t_gen - t_start) * 1e3
        lat["encode_image"] = (t_enc - t_gen) * 1e3
        lat["total"] = (self._local_clock() - job.window.t_arrived) * 1e3
        self._emit(
            job.window,
            latencies_ms={k: round(v, 3) for k, v in lat.items()},
            topk=job.topk,
            true_id=job.true_id,
            true_rank=job.true_rank,
            lag_s=job.lag_s,
            image=image_bytes,
            mime=f"image/{self.options.image_format}",
            lane="image",
            window_seq=job.window_seq,
        )
        with self._lock:
            self._counters["images"] += 1
            self._counters["frames"] += 1
            for k in ("generate", "encode_image"):
                self._latencies[k].append(lat[k])
            for k in LANE_STAGES["image"]:
                self._lane_latencies["image"][k].append(lat[k])


def _percentiles(table: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """``{stage: {p50, p95, p99, n}}`` of the stages that have samples."""
    pct = {}
    for stage, arr in table.items():
        if arr.size:
            p50, p95, p99 = np.percentile(arr, [50, 95, 99])
            pct[stage] = {"p50": p50, "p95": p95, "p99": p99, "n": int(arr.size)}
    return pct


__all__ = ["DecodeWorker", "WorkerOptions", "WorkerStats", "lane_threads", "LANE_STAGES", "STAGES"]
