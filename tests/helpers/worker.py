"""Real worker components at toy size, for tests of the DecodeWorker's lanes: a random
`test`-preset BrainModule, a Retrieval over random embeddings, a TinyDecoder from an
in-code config (``SlowDecoder`` adds a sleep to each generation and records when it ran
and on what), a window source that cuts a new Window every hop on the local clock
(latest wins, as the Windower), and a publisher that stamps each frame's arrival."""

from __future__ import annotations

import threading
import time

import numpy as np

from rtdecode.contracts import Frame, Window
from rtdecode.decoder.tiny import TinyDecoder, TinyDecoderConfig, TinyDecoderNet
from rtdecode.lsl.streams import local_clock

N_CHANNELS = 8
SFREQ_HZ = 200.0
EMBED_DIM = 16


class SlowDecoder(TinyDecoder):
    """A real TinyDecoder whose ``generate`` also sleeps ``delay_s`` (a slow GPU or a big
    model), recording ``(t_start, t_end, embedding)`` on the perf_counter clock."""

    def __init__(self, delay_s: float, fail: bool = False) -> None:
        config = TinyDecoderConfig(
            embed_dim=EMBED_DIM, image_size=16, block_out_channels=(16, 32), norm_num_groups=8,
            attention_head_dim=8, cond_hidden=32, mid_attention=False,
        )
        super().__init__(TinyDecoderNet(config), config.scheduler())
        self.delay_s = delay_s
        self.fail = fail
        self.calls: list[tuple[float, float, np.ndarray]] = []

    def generate(self, embedding, **kwargs):
        t0 = time.perf_counter()
        time.sleep(self.delay_s)
        if self.fail and self.calls:  # the warm-up succeeds, every later call fails
            self.calls.append((t0, time.perf_counter(), np.array(embedding)))
            raise RuntimeError("CUDA error: out of memory")
        img = super().generate(embedding, **{**kwargs, "steps": 1})
        self.calls.append((t0, time.perf_counter(), np.array(embedding)))
        return img


class PacedWindows:
    """A Window every ``hop_s`` of local clock, the newest only (skipped ones counted)."""

    def __init__(self, hop_s: float = 0.05, window_s: float = 0.25, pad_s: float = 0.5) -> None:
        self.hop_s = hop_s
        self.n_times = int(round(window_s * SFREQ_HZ))
        self.n_pad = int(round(pad_s * SFREQ_HZ))
        self.n_hop = int(round(hop_s * SFREQ_HZ))
        self.ch_names = tuple(f"MEG{i:03d}" for i in range(N_CHANNELS))
        self.rng = np.random.default_rng(0)
        self.t0 = None
        self.taken = 0
        self.skipped = 0

    def next_window(self, timeout_s: float) -> Window | None:
        now = local_clock()
        if self.t0 is None:
            self.t0 = now
        due = int((now - self.t0) / self.hop_s)
        if due < self.taken:
            wait = self.t0 + self.taken * self.hop_s - now
            if wait > timeout_s:
                time.sleep(timeout_s)
                return None
            time.sleep(max(0.0, wait))
            due = self.taken
        self.skipped += max(0, due - self.taken)
        self.taken = due + 1
        end = self.n_pad + self.n_times + due * self.n_hop
        n_all = self.n_pad + self.n_times
        return Window(
            data=self.rng.standard_normal((N_CHANNELS, n_all)).astype(np.float32),
            sfreq_hz=SFREQ_HZ, ch_names=self.ch_names, first_sample=end - n_all,
            t_first=(end - n_all) / SFREQ_HZ, t_last=(end - 1) / SFREQ_HZ,
            t_arrived=local_clock(), n_pad=self.n_pad,
        )


class Collector:
    """``publish`` for the worker: keeps ``(perf_counter at arrival, frame)``."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.items: list[tuple[float, Frame]] = []

    def __call__(self, frame: Frame) -> None:
        with self.lock:
            self.items.append((time.perf_counter(), frame))

    def frames(self) -> list[tuple[float, Frame]]:
        with self.lock:
            return list(self.items)


def build_worker(decoder, *, hop_s: float = 0.05, **options):
    """A DecodeWorker over real toy models; returns (worker, source, collector)."""
    from rtdecode.decoder.retrieval import Retrieval
    from rtdecode.encoder.model import build_model
    from rtdecode.signal import PreprocessConfig, Preprocessor
    from rtdecode.worker import DecodeWorker, WorkerOptions

    source = PacedWindows(hop_s=hop_s)
    pre = Preprocessor(PreprocessConfig(ch_names=source.ch_names))
    n_out = pre.n_times_out(0.25)
    rng = np.random.default_rng(1)
    encoder = build_model("test", N_CHANNELS, n_out, rng.random((N_CHANNELS, 2)), target_dim=EMBED_DIM)
    retrieval = Retrieval(rng.standard_normal((20, EMBED_DIM)).astype(np.float32),
                          [f"img{i:02d}" for i in range(20)])
    collector = Collector()
    worker = DecodeWorker(
        source, pre, encoder, retrieval, decoder, collector, options=WorkerOptions(**options),
        window_shape=(N_CHANNELS, n_out),
    )
    return worker, source, collector
