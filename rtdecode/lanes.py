"""What the worker's two lanes share besides the models (``rtdecode.worker``).

* :class:`WorkerOptions`: how the worker paces itself, and :func:`lane_threads`, the
  torch thread budget of each lane;
* :class:`WindowSource`: where lane 1 takes its windows;
* :class:`ScoredWindow`, what lane 1 knows of a window, and :class:`ImageJob`, what it hands
  to lane 2 through :class:`LatestSlot`, the one-item latest-wins hand-off;
* :class:`WorkerMeter`: counters, latency samples per stage and per lane, threads and
  runs of failures, written by the lane they belong to under one lock, read as a
  :class:`WorkerStats` snapshot from any thread (/api/status, /metrics, /health).

No torch here. Threads: as said of each class.
"""

from __future__ import annotations

import os
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import numpy as np

from rtdecode.contracts import Embedding, Window

__all__ = [
    "COUNTERS",
    "LANE_STAGES",
    "STAGES",
    "FailureRun",
    "ImageJob",
    "LatestSlot",
    "ScoredWindow",
    "WindowSource",
    "WorkerMeter",
    "WorkerOptions",
    "WorkerStats",
    "lane_threads",
]

STAGES = ("queue", "preprocess", "encode", "retrieve", "generate", "encode_image", "total")
#: Stages timed by each lane (two-lane mode). ``wait``: from the prediction entering the
#: slot to lane 2 taking it; each lane's ``total`` runs from the window's arrival.
LANE_STAGES = {
    "retrieval": ("queue", "preprocess", "encode", "retrieve", "total"),
    "image": ("wait", "generate", "encode_image", "total"),
}
COUNTERS = ("windows", "frames", "images", "images_skipped", "frame_errors", "image_errors",
            "flagged_windows")


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
    smooth_s : float
        Time constant (s) of the leaky integration of consecutive windows' predictions
        before retrieval and generation (:mod:`rtdecode.decoder.smoothing`); 0 is off.
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
    smooth_s: float = 0.0

    def __post_init__(self) -> None:
        if self.lanes not in (1, 2):
            raise ValueError(f"lanes={self.lanes!r} must be 1 (single lane) or 2 (two lanes).")
        if not self.max_fps > 0:
            raise ValueError(f"max_fps={self.max_fps!r} must be a positive number of images per second.")


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


class WindowSource(Protocol):
    """Where lane 1 takes its windows (a :class:`~rtdecode.stream.windows.Windower`)."""

    def next_window(self, timeout_s: float) -> Window | None:
        """The newest window, or None when none came within ``timeout_s``."""
        ...


@dataclass(frozen=True, slots=True)
class ScoredWindow:
    """What lane 1 knows of one window after encode, retrieve and score (``emit`` sends it)."""

    window: Window
    embedding: Embedding
    mse_vec: np.ndarray
    topk: tuple[tuple[str, float], ...]
    true_id: str | None
    true_rank: int | None
    lag_s: float | None


@dataclass(frozen=True, slots=True)
class ImageJob:
    """What lane 1 hands to lane 2: a scored window, its frame's seq and lane-1 stages."""

    scored: ScoredWindow
    window_seq: int
    lane1_ms: dict[str, float]
    t_ready: float  # perf_counter when it entered the slot


class LatestSlot:
    """One-item latest-wins hand-off from lane 1 to lane 2; replaced items are counted."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._item: ImageJob | None = None
        self.replaced = 0

    def put(self, item: ImageJob) -> None:
        """Leave ``item`` for the taker, replacing (and counting) one it never took."""
        with self._cond:
            if self._item is not None:
                self.replaced += 1
            self._item = item
            self._cond.notify()

    def take(self, timeout_s: float) -> ImageJob | None:
        """The item, waiting up to ``timeout_s`` for one; None when none came."""
        with self._cond:
            if self._item is None:
                self._cond.wait(timeout_s)
            item, self._item = self._item, None
            return item


class FailureRun:
    """One lane's failures in a row and the latest one's message (under the meter's lock)."""

    def __init__(self) -> None:
        self.count = 0
        self.last: str | None = None

    def fail(self, message: str) -> bool:
        """Count a failure; True when it repeats the previous one (log it only once)."""
        repeated = self.count > 0 and message == self.last
        self.count += 1
        self.last = message
        return repeated

    def succeed(self) -> int:
        """End the run; returns how many failures it had."""
        n, self.count = self.count, 0
        return n


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


class WorkerMeter:
    """A worker's counters, latency samples, threads and failure runs.

    Each lane writes its own entries (``add``, ``note_threads``, ``fail``/``succeed`` of
    ``frames`` for lane 1 and ``images`` for lane 2) under ``lock``; ``snapshot`` reads
    them all at once from any thread.

    Parameters
    ----------
    history : int
        Latency samples kept per stage (the percentiles are over these).
    """

    def __init__(self, history: int) -> None:
        self.lock = threading.Lock()
        self.counters = dict.fromkeys(COUNTERS, 0)
        self.latencies = {s: deque(maxlen=history) for s in STAGES}
        self.lane_latencies = {lane: {s: deque(maxlen=history) for s in stages}
                               for lane, stages in LANE_STAGES.items()}
        self.threads: dict[str, int] = {}
        self.frames = FailureRun()  # lane 1: windows that failed
        self.images = FailureRun()  # lane 2: generations that failed

    def add(self, counts: Mapping[str, int], stages_ms: Mapping[str, float],
            lane: str | None = None, lane_ms: Mapping[str, float] | None = None) -> None:
        """Add to the counters and keep one sample per stage.

        ``stages_ms`` go to the worker's table; with ``lane``, that lane's stages of
        ``lane_ms`` (default ``stages_ms``) go to the lane's table.
        """
        with self.lock:
            for key, n in counts.items():
                self.counters[key] += n
            for stage, ms in stages_ms.items():
                self.latencies[stage].append(ms)
            if lane is not None:
                lane_ms = stages_ms if lane_ms is None else lane_ms
                for stage in LANE_STAGES[lane]:
                    self.lane_latencies[lane][stage].append(lane_ms[stage])

    def fail(self, run: FailureRun, counter: str, message: str) -> bool:
        """Count one failure of a lane; True when it repeats the previous one."""
        with self.lock:
            self.counters[counter] += 1
            return run.fail(message)

    def succeed(self, run: FailureRun) -> int:
        """End a lane's run of failures; returns how many it had."""
        with self.lock:
            return run.succeed()

    def note(self, run: FailureRun, message: str) -> None:
        """Keep ``message`` as the lane's latest problem without counting a failure."""
        with self.lock:
            run.last = message

    def note_threads(self, lane: str, n: int) -> None:
        """The intra-op threads a lane runs with (lane 1: ``retrieval`` or ``single``)."""
        with self.lock:
            self.threads[lane] = int(n)

    def samples(self, stage: str, lane: str | None = None) -> list[float]:
        """Recent latency samples (ms) of ``stage``, of one lane's table when ``lane``."""
        with self.lock:
            table = self.latencies if lane is None else self.lane_latencies[lane]
            return list(table[stage])

    def snapshot(self, *, two_lanes: bool, images_skipped: int | None, ready: bool,
                 error: BaseException | None, image_error: BaseException | None,
                 online_eval: dict[str, Any]) -> WorkerStats:
        """The stats now (``images_skipped``: the slot's count in two-lane mode)."""
        with self.lock:
            counters = dict(self.counters)
            lat = {k: np.asarray(v, dtype=float) for k, v in self.latencies.items()}
            lane_lat = {lane: {k: np.asarray(v, dtype=float) for k, v in table.items()}
                        for lane, table in self.lane_latencies.items()}
            frames = (self.frames.last, self.frames.count)
            images = (self.images.last, self.images.count)
            threads = dict(self.threads)
        if images_skipped is not None:
            counters["images_skipped"] = images_skipped
        lanes: dict[str, Any] = {"n": 2 if two_lanes else 1}
        if two_lanes:
            lanes["retrieval"] = {
                "threads": threads.get("retrieval"),
                "frames": counters["frames"] - counters["images"],
                "latency_ms": percentiles(lane_lat["retrieval"]),
            }
            lanes["image"] = {
                "threads": threads.get("image"),
                "images": counters["images"],
                "embeddings_skipped": counters["images_skipped"],
                "errors": counters["image_errors"],
                "consecutive_errors": images[1],
                "last_error": images[0],
                "error": None if image_error is None else repr(image_error),
                "latency_ms": percentiles(lane_lat["image"]),
            }
        else:
            lanes["single"] = {"threads": threads.get("single")}
        return WorkerStats(
            counters=counters,
            latency_ms=percentiles(lat),
            lanes=lanes,
            ready=ready,
            error=None if error is None else repr(error),
            last_frame_error=frames[0],
            consecutive_frame_errors=frames[1],
            online_eval=online_eval,
        )


def percentiles(table: Mapping[str, np.ndarray]) -> dict[str, dict[str, float]]:
    """``{stage: {p50, p95, p99, n}}`` of the stages that have samples."""
    pct = {}
    for stage, arr in table.items():
        if arr.size:
            p50, p95, p99 = np.percentile(arr, [50, 95, 99])
            pct[stage] = {"p50": p50, "p95": p95, "p99": p99, "n": int(arr.size)}
    return pct
