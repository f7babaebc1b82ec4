"""DecodeWorker: the one thread that owns the models.

Threading
---------
* The DecodeWorker thread owns the brain encoder, the retrieval index and the image
  decoder (and therefore torch and the GPU). Nothing else calls them.
* It takes the newest Window from a window source (latest-wins: the source counts what
  it skipped), and hands each Frame to ``publish`` — a callable that must not block
  (the server's Broadcaster only schedules the hand-off onto the asyncio loop).
* Counters and latency samples are written by this thread only; ``stats()`` reads a
  snapshot under a lock, from any thread.

An exception while decoding one window skips that frame, is counted and logged, and the
worker goes on; an exception while loading or warming up ends the thread and is kept in
``error`` (surfaced on /health).
"""

from __future__ import annotations

import io
import logging
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from rtdecode.contracts import Embedding, Frame, Window
from rtdecode.decoder.normalize import rescale_prediction
from rtdecode.encoder.metrics import LagCurve

log = logging.getLogger(__name__)

STAGES = ("queue", "preprocess", "encode", "retrieve", "generate", "encode_image", "total")


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
        Samples kept per stage for the percentiles in ``stats()``.
    torch_threads : int | None
        Threads torch may use (process-wide); None leaves torch's default.
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
    torch_threads: int | None = 1


class DecodeWorker(threading.Thread):
    """Decode windows into Frames, in one background thread.

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
        Called from this thread for every frame; must not block.
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
        self._stop_event = threading.Event()
        self._lock = threading.Lock()
        self._seq = 0
        self._last_generate_t = -np.inf
        self._counters = {
            "windows": 0,
            "frames": 0,
            "images": 0,
            "images_skipped": 0,
            "frame_errors": 0,
            "flagged_windows": 0,
        }
        self._latencies: dict[str, deque[float]] = {
            s: deque(maxlen=self.options.latency_history) for s in STAGES
        }
        self._last_error_msg: str | None = None
        self._consecutive_errors = 0  # windows in a row that failed (0 after a success)
        self.lag_curve = LagCurve(
            max(len(retrieval), 1), bin_s=self.options.lag_bin_s,
            max_lag_s=self.options.stimulus_hold_s + 1e-6,
        )

    # ------------------------------------------------------------------ public
    def stop(self, timeout_s: float = 5.0) -> None:
        """Ask the thread to finish and wait for it."""
        self._stop_event.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout_s)

    def stats(self) -> dict[str, Any]:
        """Counters and latency percentiles (p50/p95/p99, ms) per stage;
        ``consecutive_frame_errors``: windows in a row that failed, up to now."""
        with self._lock:
            counters = dict(self._counters)
            lat = {k: np.asarray(v, dtype=float) for k, v in self._latencies.items()}
            last_err = self._last_error_msg
            failing = self._consecutive_errors
        pct = {}
        for stage, arr in lat.items():
            if arr.size:
                p50, p95, p99 = np.percentile(arr, [50, 95, 99])
                pct[stage] = {"p50": p50, "p95": p95, "p99": p99, "n": int(arr.size)}
        return {
            "counters": counters,
            "latency_ms": pct,
            "ready": self.ready.is_set(),
            "error": None if self.error is None else repr(self.error),
            "last_frame_error": last_err,
            "consecutive_frame_errors": failing,
            "online_eval": self.lag_curve.as_dict(),
        }

    def latency_samples(self, stage: str) -> list[float]:
        with self._lock:
            return list(self._latencies[stage])

    # ------------------------------------------------------------------ thread
    def run(self) -> None:
        try:
            import torch

            from rtdecode.lsl.streams import local_clock

            # Bound once here, not looked up again for every window.
            self._torch = torch
            self._local_clock = local_clock
            if self.options.torch_threads:
                # Batch-1 inference gains nothing from more threads, and on a busy machine
                # two threads contend badly (bench/encoder.py: p50 5 ms vs 44 ms).
                torch.set_num_threads(self.options.torch_threads)
            self.encoder.eval()
            self._warm_up()
        except BaseException as exc:  # surfaced on /health; the thread ends
            log.exception("Decode worker failed while warming up.")
            self.error = exc
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

    def _note_error(self, msg: str) -> None:
        with self._lock:
            self._last_error_msg = msg

    def _warm_up(self) -> None:
        """Run every model once so the first real frame pays no lazy-init cost."""
        if self.window_shape is not None:
            n_ch, n_t = self.window_shape
            x = self._torch.zeros((1, n_ch, n_t), dtype=self._torch.float32, device=self.device)
            out = self._encode_tensor(x)
            vec = out["clip"][0].detach().cpu().numpy()
            self.retrieval.topk(vec.reshape(-1)[: self.retrieval_dim], k=self.options.topk)
            if self.decoder is not None:
                mse = self._rescale(out["mse"][0].detach().cpu().numpy())
                self.decoder.generate(mse, seed=self.options.seed, steps=self.options.diffusion_steps)

    @property
    def retrieval_dim(self) -> int:
        return int(getattr(self.retrieval, "dim", 0)) or 10**9

    def _encode_tensor(self, x):
        torch = self._torch
        subject = torch.full((x.shape[0],), self.subject, dtype=torch.long, device=self.device)
        with torch.inference_mode():
            return self.encoder(x, subject)

    def _rescale(self, vec: np.ndarray) -> np.ndarray:
        """The MSE head's prediction as the decoder's input (the one rescale path)."""
        return rescale_prediction(vec, self.target_stats, getattr(self.decoder, "normalizer", None))

    def _truth(self, window: Window) -> tuple[str | None, float | None]:
        """The stimulus on screen for this window and the window's lag since its onset.

        The lag is the window's end (one sample past its last) minus the latest onset, in
        the stream's samples when the marker was located, else on the LSL clock; training
        cuts its windows by the same rule (:func:`rtdecode.training.encoder.lagged_windows`).
        """
        m = window.marker
        if m is None:
            return None, None
        if m.sample is not None:
            lag = (window.last_sample + 1 - m.sample) / window.sfreq
        else:
            lag = window.t_last + 1.0 / window.sfreq - m.t_lsl
        lag = round(float(lag), 6)
        if m.image_id is None or not 0.0 <= lag <= self.options.stimulus_hold_s:
            return None, lag
        return m.image_id, lag

    def _process(self, window: Window) -> None:
        torch = self._torch
        clock = time.perf_counter
        local_clock = self._local_clock

        lat: dict[str, float] = {}
        lat["queue"] = (local_clock() - window.t_arrived) * 1e3

        t0 = clock()
        x = self.preprocessor.transform_window(window)
        t1 = clock()
        out = self._encode_tensor(torch.from_numpy(x)[None].to(self.device))
        clip_vec = out["clip"][0].detach().float().cpu().numpy()
        mse_vec = out["mse"][0].detach().float().cpu().numpy()
        t2 = clock()
        lat["preprocess"] = (t1 - t0) * 1e3
        lat["encode"] = (t2 - t1) * 1e3
        emb = Embedding(window=window, vector=clip_vec, preprocess_ms=lat["preprocess"], encode_ms=lat["encode"])

        query = emb.vector.reshape(-1) if emb.vector.ndim > 1 else emb.vector
        topk = self.retrieval.topk(query, k=self.options.topk)
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
        if self.decoder is not None and due:
            init = None
            if self.options.img2img_strength is not None and self.gallery is not None and topk:
                init = self.gallery.image(topk[0][0])
            img = self.decoder.generate(
                self._rescale(mse_vec),
                seed=self.options.seed,
                steps=self.options.diffusion_steps,
                init_image=init,
                strength=self.options.img2img_strength or 0.6,
            )
            t4 = clock()
            image_bytes = encode_image(img, self.options.image_format)
            t5 = clock()
            lat["generate"] = (t4 - t3) * 1e3
            lat["encode_image"] = (t5 - t4) * 1e3
            self._last_generate_t = t3
        lat["total"] = (local_clock() - window.t_arrived) * 1e3

        frame = Frame(
            seq=self._seq,
            first_sample=window.first_sample,
            t_first=window.t_first,
            t_last=window.t_last,
            t_arrived=window.t_arrived,
            latencies_ms={k: round(v, 3) for k, v in lat.items()},
            topk=tuple((str(i), float(s)) for i, s in topk),
            true_id=true_id,
            true_rank=true_rank,
            lag_s=lag_s,
            embedding=emb,
            image=image_bytes,
            mime=mime,
            extra={"flagged": window.flagged, "n_gaps": window.n_gaps},
        )
        with self._lock:
            self._seq += 1
            self._counters["windows"] += 1
            self._counters["frames"] += 1
            if window.flagged:
                self._counters["flagged_windows"] += 1
            if image_bytes is not None:
                self._counters["images"] += 1
            elif self.decoder is not None:
                self._counters["images_skipped"] += 1
            for k, v in lat.items():
                self._latencies[k].append(v)
        self.publish(frame)


def encode_image(img: Any, fmt: str = "jpeg", quality: int = 85) -> bytes:
    """Encode a PIL image to bytes in ``fmt`` (jpeg, webp or png)."""
    buf = io.BytesIO()
    pil_fmt = {"jpeg": "JPEG", "webp": "WEBP", "png": "PNG"}[fmt]
    kwargs = {"quality": quality} if pil_fmt in {"JPEG", "WEBP"} else {}
    img.convert("RGB").save(buf, format=pil_fmt, **kwargs)
    return buf.getvalue()


__all__ = ["DecodeWorker", "WorkerOptions", "encode_image", "STAGES"]


# --------------------------------------------------------------------------- retrieval set
RETRIEVAL_SETS = ("test", "all")


def load_retrieval(
    meta: dict[str, Any], ckpt_dir: Any, gallery_dir: Any = None, retrieval_set: str = "all"
) -> tuple[Any, Any]:
    """The gallery and the retrieval index a checkpoint decodes into (serve and
    ``rtdecode evaluate-online`` build theirs here, so both search the same set).

    Parameters
    ----------
    meta : dict
        The checkpoint's ``config.json``.
    ckpt_dir : path
        The checkpoint folder (a relative gallery path in ``meta`` is relative to it).
    gallery_dir : path, optional
        Gallery folder (default: the one the checkpoint names).
    retrieval_set : str
        ``"test"`` (the checkpoint's held-out test images, the paper's small test set),
        ``"all"`` (every gallery image) or a folder of images to retrieve among.

    Returns
    -------
    gallery : Gallery
        Thumbnails and embeddings come from it.
    retrieval : Retrieval
        Over the z-scored embeddings of the retrieval set (the CLIP head's space).
    """
    from pathlib import Path

    from rtdecode.decoder.retrieval import Retrieval
    from rtdecode.encoder.metrics import standardize
    from rtdecode.images import Gallery, get_image_encoder

    target = meta.get("target", {})
    if retrieval_set not in RETRIEVAL_SETS:
        gallery_dir = Path(retrieval_set).expanduser()  # a folder of images
    elif gallery_dir is None:
        named = target.get("gallery") or meta.get("provenance", {}).get("gallery")
        if named:
            gallery_dir = Path(named) if Path(named).is_absolute() else (Path(ckpt_dir) / named).resolve()
    if gallery_dir is None:
        raise ValueError(
            "No gallery for retrieval; pass --gallery DIR or use a checkpoint whose "
            "config.json names its gallery."
        )
    gallery = Gallery.from_folder(gallery_dir)
    enc = get_image_encoder(
        target.get("encoder", "handcrafted"),
        path=target.get("encoder_path"),
        readout=target.get("readout", "cls"),
    )
    check_image_space(target, enc.name, "the gallery's image encoder", "--gallery")
    ids = retrieval_ids(retrieval_set, meta, gallery)
    rows = [gallery.index(i) for i in ids]
    # The CLIP head was trained against z-scored embeddings: search in that space.
    z = standardize(gallery.embeddings(enc)[rows], meta.get("target_stats"))
    return gallery, Retrieval(z, ids)


def retrieval_ids(retrieval_set: str, meta: dict[str, Any], gallery: Any) -> list[str]:
    """Ids of the images to retrieve among (``--retrieval-set``).

    ``test``: the checkpoint's held-out (zero-shot) test images, the paper's "small test
    set"; ``all`` or a folder: every image of the gallery.
    """
    if retrieval_set != "test":
        return list(gallery.ids)
    test = [str(i) for i in meta.get("test_images") or []]
    if not test:
        raise ValueError(
            "--retrieval-set test needs the checkpoint's list of held-out test images, and "
            "this checkpoint has none (config.json 'test_images'); retrain it with this "
            "rtdecode, or use --retrieval-set all or a folder of images."
        )
    missing = [i for i in test if i not in gallery]
    if missing:
        raise ValueError(
            f"The gallery {gallery.root} lacks {len(missing)} of the checkpoint's test images, "
            f"e.g. {missing[:3]}; pass the gallery it was trained with (--gallery)."
        )
    return test


def check_image_space(target: dict[str, Any], name: str | None, what: str, flag: str) -> None:
    """Refuse embeddings of another image encoder than the one the model was trained on."""
    expected = target.get("name")
    if expected is None or name is None or name == expected:
        return
    raise ValueError(
        f"The encoder was trained to predict {expected!r} embeddings but {what} is "
        f"{name!r}; give a {flag} made with {expected!r} (or retrain the encoder on {name!r})."
    )


def subject_index(subject: str | None, meta: dict[str, Any]) -> int:
    """Row of the model's subject layer to decode with (``--subject``)."""
    known = [str(v) for v in meta.get("subjects") or []]
    if subject is None:
        if len(known) > 1:
            raise ValueError(
                f"This encoder was trained on {len(known)} subjects ({', '.join(known)}); pass "
                "--subject with the one whose stream you decode."
            )
        return 0
    wanted = str(subject)
    candidates = {wanted, wanted.removeprefix("sub-"), f"sub-{wanted.removeprefix('sub-')}"}
    for i, name in enumerate(known):
        if name in candidates or name.removeprefix("sub-") in candidates:
            return i
    raise ValueError(
        f"--subject {subject!r} is not one of the encoder's subjects ({', '.join(known) or 'none'})."
    )


def check_window(settings: Any, meta: dict[str, Any]) -> float:
    """The window length to cut, after checking the checkpoint was trained for streaming.

    Returns
    -------
    float
        ``window_s`` of the checkpoint.
    """
    window_s = float(meta.get("window_s", settings.window_s))
    if "window_s" in settings.model_fields_set and abs(settings.window_s - window_s) > 1e-9:
        raise ValueError(
            f"The encoder was trained on {window_s} s windows but window_s={settings.window_s} "
            "was asked for; leave window_s unset (the checkpoint's is used) or retrain with "
            f"window_s = {settings.window_s} in the recipe."
        )
    offsets = meta.get("offsets") or {}
    sampling = offsets.get("sampling", "fixed" if "window_start_s" in offsets else "stream")
    if sampling == "fixed" and not settings.allow_fixed_window:
        start = offsets.get("window_start_s")
        raise ValueError(
            f"This encoder was trained on one window ({window_s} s starting {start} s after "
            f"onset), but serve cuts a window every {settings.hop_s} s at every lag, most of "
            "which it never saw. Retrain it with the streaming recipe (window_sampling = "
            '"stream" in the [train] table, the default), or pass --allow-fixed-window.'
        )
    return window_s
