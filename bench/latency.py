"""End-to-end latency of the service: replay -> LSL -> Service -> websocket client.

    .venv/bin/python bench/latency.py [--duration 60] [--data DIR] [--model CKPT_DIR]
                                      [--decoder DIR|none] [--hop 0.05] [--device cpu]

What runs
---------
* A replay of ``DATA/replay_raw.fif`` (306 MEG channels at 1200 Hz from ``rtdecode
  simulate``) in a child process, as a lab's acquisition would be, publishing on a
  loopback-only LSL stream with 10 ms chunks. The child is ``rtdecode.io.replay.replay_file``
  itself; a probe (a ``Pacer`` subclass) logs the moment each chunk is released to
  ``push_chunk`` on the LSL clock, and the log is read back when the child ends.
* The service in this process (``rtdecode.service.Service``, uvicorn on port 0) with the
  demo models (``models/demo/{encoder,decoder}``) when they exist, else a tiny simulated
  subject and a one-epoch ``test``-preset encoder built here (as tests/test_service.py).
* A websockets client in this process's main thread that stamps each frame's arrival with
  ``rtdecode.lsl.local_clock()`` right after ``recv`` returns.

Clocks
------
The replay gives sample ``i`` the LSL timestamp ``t0 + i / sfreq`` on ``pylsl.local_clock``
and releases a chunk when that clock reaches its last sample's stamp. The reader maps
timestamps onto this process's LSL clock (``proc_clocksync``; the offset it measured is
recorded, ~0 on one machine), so a frame's ``t_last`` is the stamp of the window's last
sample. ``pylsl.local_clock`` is the machine's monotonic clock (``CLOCK_MONOTONIC`` on
Linux, shared by all processes), which both processes check against
``time.monotonic``. End to end = arrival - push moment of the chunk that held the window's
last sample; sample age = arrival - ``t_last`` (adds the chunking delay when the window
ends inside a chunk). See docs/latency.md.

Reported: p50/p95/p99 of end to end, sample age, model compute (preprocess + encode +
retrieve + generate + encode_image, from each frame header's ``latencies_ms``) and every
stage; frames/s; windows skipped; the first vs last third of the run; the overhead ratio
(end to end / compute). JSON to bench/results/latency.json, plots to
bench/results/latency.png, a short table on stdout.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import RESULTS_DIR, first_subject, format_table, machine_info, percentiles, write_json  # noqa: E402

from rtdecode.lsl import LOCAL_CONFIG, use_local_config  # noqa: E402  (cheap: no liblsl)

MODEL_STAGES = ("preprocess", "encode", "retrieve", "generate", "encode_image")
STAGES = ("queue", *MODEL_STAGES, "total")
TARGETS = {"p50_ms": 30.0, "p99_ms": 80.0, "overhead_ratio": 1.5}


@dataclass
class Inputs:
    """What the benchmark decodes: the replay file and the service's models."""

    replay: Path
    encoder: Path
    decoder: str
    gallery: Path | None
    origin: str  # "demo", "given" or "tiny (built here)"


# ------------------------------------------------------------------ inputs
def build_tiny_inputs(workdir: Path, device: str = "cpu") -> Inputs:
    """A tiny simulated subject and a one-epoch ``test``-preset encoder (~30 s on CPU)."""
    from rtdecode.data.simulate import simulate_subject
    from rtdecode.training.encoder import train

    print(f"building a tiny simulated subject and encoder in {workdir} ...", flush=True)
    data = simulate_subject(workdir / "sim", seed=3, size="tiny", progress=False)
    ckpt = train(data, workdir / "ckpt", preset="test", max_epochs=1, device=device, progress=False)
    return Inputs(data / "replay_raw.fif", Path(ckpt), "none", data / "images", "tiny (built here)")


def resolve_inputs(args: argparse.Namespace, workdir: Path) -> Inputs:
    """--data/--model/--decoder, else data/sim and models/demo, else a tiny build."""
    data = args.data or ROOT / "data" / "sim"
    demo = ROOT / "models" / "demo"
    encoder = args.model or (demo / "encoder" if (demo / "encoder" / "config.json").is_file() else None)
    if encoder is None:
        tiny = build_tiny_inputs(workdir, args.device)
        if args.data is None:
            return tiny
        encoder, origin = tiny.encoder, tiny.origin
    else:
        origin = "given" if args.model else "demo"
    replay = data / "replay_raw.fif" if Path(data).is_dir() else Path(data)
    if not replay.is_file():
        raise FileNotFoundError(
            f"No replay file at {replay}; write one with `rtdecode simulate --out {data}` "
            "or pass --data DIR (a folder holding replay_raw.fif) or a recording's path."
        )
    decoder = args.decoder
    if decoder is None:
        decoder = str(demo / "decoder") if (demo / "decoder" / "config.json").is_file() else "none"
    gallery = replay.parent / "images"
    return Inputs(replay, Path(encoder), decoder, gallery if gallery.is_dir() else None, origin)


# ------------------------------------------------------------------ replay child
def replay_child(path: Path, name: str, chunk_ms: float, log_path: Path) -> int:
    """Run ``replay_file`` in a loop until SIGTERM; log each chunk's release moment.

    The log (``np.savez``) holds ``t_due`` (LSL stamp of each chunk's last sample),
    ``t_push`` (LSL clock when the chunk was released to ``push_chunk``) and this
    process's ``local_clock() - time.monotonic()``.
    """
    use_local_config()
    import rtdecode.io.replay as replay_mod
    from rtdecode.lsl.streams import local_clock

    released: list[tuple[float, float]] = []

    class ProbePacer(replay_mod.Pacer):
        """The replay's own pacing, plus a record of when each chunk is let go."""

        def wait_until(self, t_due: float) -> tuple[float, bool]:
            lag_s, stopped = super().wait_until(t_due)
            released.append((t_due, self.clock()))
            return lag_s, stopped

    replay_mod.Pacer = ProbePacer  # replay_file looks the class up at call time
    clock_check = local_clock() - time.monotonic()
    try:
        replay_mod.replay_file(
            path, name=name, source_id=name, loop=True, chunk_ms=chunk_ms, progress=False
        )
    finally:
        log = np.asarray(released, dtype=np.float64).reshape(-1, 2)
        np.savez(log_path, t_due=log[:, 0], t_push=log[:, 1], clock_minus_monotonic_s=clock_check)
    return 0


def start_replay(path: Path, name: str, chunk_ms: float, log_path: Path) -> subprocess.Popen:
    env = dict(os.environ, LSLAPICFG=str(LOCAL_CONFIG))
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--replay-child", str(path),
        "--name", name, "--chunk-ms", str(chunk_ms), "--push-log", str(log_path),
    ]
    return subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL)


def stop_process(proc: subprocess.Popen, timeout_s: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


# ------------------------------------------------------------------ measurement
def _snapshot(service) -> dict[str, Any]:
    return {
        "windower": service.windower.stats.as_dict(),
        "worker": service.worker.stats.counters,
        "reader": service.reader.stats.as_dict(),
        "server": service.server.app.state.broadcaster.stats.as_dict(),
        "lanes": service.worker.stats.lanes,
    }


def _delta(a: dict, b: dict, keys: tuple[str, ...]) -> dict[str, int]:
    return {k: int(b.get(k, 0)) - int(a.get(k, 0)) for k in keys if k in b}


def _poll(predicate, deadline_s: float, what: str, check=None) -> None:
    end = time.monotonic() + deadline_s
    while not predicate():
        if check is not None:
            check()
        if time.monotonic() > end:
            raise TimeoutError(f"Timed out after {deadline_s:g} s waiting for {what}.")
        time.sleep(0.05)


def measure(
    inputs: Inputs,
    *,
    duration_s: float = 60.0,
    warmup_s: float = 5.0,
    hop_s: float = 0.05,
    chunk_ms: float = 10.0,
    device: str = "cpu",
    max_fps: float = 10.0,
    diffusion_steps: int = 4,
    lanes: int = 2,
    progress: bool = True,
) -> dict[str, Any]:
    """Replay -> in-process Service -> websocket client for ``duration_s`` after a warm-up.

    Returns
    -------
    dict
        ``frames`` (list of per-frame dicts: arrival, header fields), ``before``/``after``
        counter snapshots, ``push_log`` (t_due, t_push arrays), the reader's clock offset,
        the stream's rate and the wall time measured. :func:`summarise` turns it into the
        report.
    """
    use_local_config()
    from websockets.sync.client import connect

    from rtdecode.config import Settings
    from rtdecode.lsl.streams import local_clock
    from rtdecode.server.protocol import decode_frame
    from rtdecode.service import Service

    name = f"rtd-bench-latency-{uuid.uuid4().hex[:8]}"
    tmp = Path(tempfile.mkdtemp(prefix="rtdecode-latency-"))
    log_path = tmp / "push_log.npz"
    replay = start_replay(inputs.replay, name, chunk_ms, log_path)

    def replay_alive() -> None:
        if replay.poll() is not None:
            raise RuntimeError(f"The replay process ended early (exit code {replay.returncode}).")

    settings = Settings(
        stream=name, source_id=name, model=inputs.encoder, decoder=inputs.decoder,
        gallery=inputs.gallery, port=0, lsl_local=True, hop_s=hop_s, device=device,
        max_fps=max_fps, diffusion_steps=diffusion_steps, lanes=lanes,
        # The demo replays subject 01's session; an older fixed-window checkpoint is
        # served too (latency does not depend on how the encoder was trained).
        subject=first_subject(inputs.encoder), allow_fixed_window=True,
    )
    service = Service(settings)
    raw: list[tuple[float, bytes]] = []
    try:
        service.start()
        _poll(lambda: service.health()[0] == "ready", 180.0, "the service to become ready", replay_alive)
        with connect(service.server.ws_url, open_timeout=10, max_size=None) as ws:
            load_before = os.getloadavg()
            t_warm_end = time.monotonic() + warmup_s
            while time.monotonic() < t_warm_end:
                ws.recv(timeout=10)
            before = _snapshot(service)
            t0_wall = time.monotonic()
            t_end = t0_wall + duration_s
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=int(duration_s), desc="latency", unit="s", file=sys.stderr)
            shown = 0
            while (now := time.monotonic()) < t_end:
                try:
                    msg = ws.recv(timeout=10)
                except TimeoutError as exc:
                    raise RuntimeError(
                        f"No message for 10 s; service health: {service.health()}."
                    ) from exc
                t_arrival = local_clock()
                if isinstance(msg, bytes):
                    raw.append((t_arrival, msg))
                if bar is not None and int(now - t0_wall) > shown:
                    bar.update(int(now - t0_wall) - shown)
                    shown = int(now - t0_wall)
                    bar.set_postfix_str(f"{len(raw)} frames", refresh=False)
            wall_s = time.monotonic() - t0_wall
            after = _snapshot(service)
            if bar is not None:
                bar.update(int(duration_s) - shown)
                bar.close()
        sfreq = float(service.reader.sfreq_hz)
        clock_offset_s = service.reader.stats.as_dict().get("clock_offset_s")
        torch_threads = _torch_threads()
    finally:
        service.stop()
        stop_process(replay)
    push = {"t_due": np.empty(0), "t_push": np.empty(0), "clock_minus_monotonic_s": np.nan}
    if log_path.is_file():
        with np.load(log_path) as z:
            push = {k: z[k] for k in z.files}
    shutil.rmtree(tmp, ignore_errors=True)
    frames = []
    for t_arrival, msg in raw:
        header, image = decode_frame(msg)
        header["t_arrival"] = t_arrival
        header["has_image"] = bool(image)
        frames.append(header)
    return {
        "frames": frames,
        "before": before,
        "after": after,
        "push_log": push,
        "sfreq_hz": sfreq,
        "chunk_ms": chunk_ms,
        "wall_s": wall_s,
        "lsl_clock_offset_s": clock_offset_s,
        "bench_clock_minus_monotonic_s": local_clock() - time.monotonic(),
        "torch_threads": torch_threads,
        "load_average": {"before": [round(v, 2) for v in load_before],
                         "after": [round(v, 2) for v in os.getloadavg()]},
    }


def _torch_threads() -> int | None:
    torch = sys.modules.get("torch")
    return None if torch is None else int(torch.get_num_threads())


# ------------------------------------------------------------------ report
def push_moments(t_last: np.ndarray, push: dict, sfreq_hz: float, chunk_ms: float) -> np.ndarray:
    """Release moment of the chunk that held each window's last sample (NaN if unknown).

    Chunks are found by their last sample's stamp: the first chunk whose last stamp is at
    or after ``t_last`` (half a sample of slack for the clock correction's rounding).
    """
    t_due, t_push = np.asarray(push["t_due"]), np.asarray(push["t_push"])
    out = np.full(t_last.shape, np.nan)
    if t_due.size == 0:
        return out
    slack_s = 0.5 / sfreq_hz
    idx = np.searchsorted(t_due, t_last - slack_s, side="left")
    ok = idx < t_due.size
    idx_ok = idx[ok]
    # The matched chunk must really hold the sample: its last stamp within one chunk.
    near = t_due[idx_ok] - t_last[ok] <= chunk_ms * 1e-3 + slack_s
    sel = np.flatnonzero(ok)[near]
    out[sel] = t_push[idx_ok[near]]
    return out


def summarise(m: dict[str, Any], config: dict[str, Any], inputs: Inputs) -> dict[str, Any]:
    """The JSON report from :func:`measure`'s raw result."""
    frames = m["frames"]
    if not frames:
        raise RuntimeError("No frame arrived during the measurement; nothing to report.")
    arrival = np.array([f["t_arrival"] for f in frames])
    t_last = np.array([f["t_last"] for f in frames])
    t_arrived = np.array([f["t_arrived"] for f in frames])
    t_sent = np.array([f["t_sent"] for f in frames])
    has_image = np.array([f["has_image"] for f in frames])
    lat = {s: np.array([f["latencies_ms"].get(s, np.nan) for f in frames]) for s in STAGES}
    compute = np.nansum(np.stack([lat[s] for s in MODEL_STAGES]), axis=0)
    t_push = push_moments(t_last, m["push_log"], m["sfreq_hz"], m["chunk_ms"])
    e2e = (arrival - t_push) * 1e3
    age = (arrival - t_last) * 1e3
    # Where the time goes between the push and the client.
    transport = (t_arrived - t_push) * 1e3  # LSL + the reader's pull
    delivery = (arrival - t_arrived) * 1e3 - lat["total"]  # publish, encode, socket, client
    server_to_client = (arrival - t_sent) * 1e3

    ratio = e2e / compute
    t_rel_s = arrival - arrival[0]
    finite = np.isfinite(e2e)
    seqs = np.array([f["seq"] for f in frames])
    before, after = m["before"], m["after"]
    windows = _delta(before["windower"], after["windower"], ("windows", "skipped", "overflow", "flagged"))
    worker = _delta(before["worker"], after["worker"], ("frames", "images", "images_skipped", "frame_errors"))
    server = _delta(before["server"], after["server"], ("published", "sent", "dropped"))
    reader = _delta(before["reader"], after["reader"], ("samples", "lost_samples", "gaps", "overflow"))
    push_lag = (np.asarray(m["push_log"]["t_push"]) - np.asarray(m["push_log"]["t_due"])) * 1e3
    offered = windows.get("windows", 0) + windows.get("skipped", 0)

    e2e_p = percentiles(e2e)
    ratio_median = round(float(np.nanmedian(ratio)), 3) if finite.any() else None
    report = {
        "benchmark": "latency",
        "config": config,
        "inputs": {
            "origin": inputs.origin,
            "replay": _rel(inputs.replay),
            "encoder": _rel(inputs.encoder),
            "decoder": inputs.decoder if inputs.decoder == "none" else _rel(Path(inputs.decoder)),
            "gallery": None if inputs.gallery is None else _rel(inputs.gallery),
        },
        "machine": {**machine_info(), "torch_threads": m["torch_threads"]},
        "clock": {
            "replay_local_minus_monotonic_s": float(m["push_log"]["clock_minus_monotonic_s"]),
            "bench_local_minus_monotonic_s": m["bench_clock_minus_monotonic_s"],
            "lsl_clock_offset_s": m["lsl_clock_offset_s"],
            "push_lag_ms": percentiles(push_lag),
            "frames_matched_to_a_push": int(finite.sum()),
        },
        "frames": {
            "n": len(frames),
            "with_image": int(has_image.sum()),
            "per_s": round(len(frames) / m["wall_s"], 2),
            "images_per_s": round(int(has_image.sum()) / m["wall_s"], 2),
            "seq_gaps_at_client": int(np.sum(np.diff(seqs) - 1)),
            "wall_s": round(m["wall_s"], 2),
        },
        "windows": {
            **windows,
            "skipped_share": round(windows.get("skipped", 0) / offered, 4) if offered else None,
        },
        "worker": worker,
        "server": server,
        "reader": reader,
        "latency_ms": {
            "end_to_end": e2e_p,
            "end_to_end_with_image": percentiles(e2e[has_image]),
            "end_to_end_without_image": percentiles(e2e[~has_image]),
            "sample_age": percentiles(age),
            "compute": percentiles(compute),
            "compute_with_image": percentiles(compute[has_image]),
            "compute_without_image": percentiles(compute[~has_image]),
            "stages": {s: percentiles(lat[s]) for s in STAGES},
            "path": {
                "transport": percentiles(transport),
                "worker_total": percentiles(lat["total"]),
                "delivery": percentiles(delivery),
                "server_to_client": percentiles(server_to_client),
            },
        },
        "overhead_ratio": {
            "median_per_frame": ratio_median,
            "mean_e2e_over_mean_compute": round(float(np.nanmean(e2e) / np.mean(compute)), 3),
            "median_per_frame_with_image": _nanmedian(ratio[has_image]),
            "median_per_frame_without_image": _nanmedian(ratio[~has_image]),
        },
        # A backlog would grow the time spent outside the models; the mix of frames with
        # and without an image moves the overall p50 between its two modes instead.
        "drift": {
            "end_to_end": _thirds(e2e, t_rel_s),
            "with_image": _thirds(np.where(has_image, e2e, np.nan), t_rel_s),
            "retrieval_only": _thirds(np.where(has_image, np.nan, e2e), t_rel_s),
            "outside_models": _thirds(e2e - compute, t_rel_s),
        },
    }
    report["load_average"] = m.get("load_average")
    report["lanes"] = lane_summary(frames, e2e, age, has_image, m["wall_s"], after.get("lanes"))
    report["targets"] = {
        "p50_ms": _target(e2e_p.get("p50"), TARGETS["p50_ms"]),
        "p99_ms": _target(e2e_p.get("p99"), TARGETS["p99_ms"]),
        "overhead_ratio": _target(ratio_median, TARGETS["overhead_ratio"]),
    }
    report["_series"] = {  # for the plot; dropped from the JSON
        "t_s": t_rel_s, "e2e_ms": e2e, "compute_ms": compute, "has_image": has_image,
    }
    return report


LANE_TARGETS = {
    "retrieval_e2e_p50_ms": 25.0, "retrieval_e2e_p99_ms": 60.0, "retrieval_frames_per_s": 19.0,
    "images_per_s": 5.0, "image_age_p50_ms": 200.0,
}


def lane_summary(frames: list[dict], e2e: np.ndarray, age: np.ndarray, has_image: np.ndarray,
                 wall_s: float, worker_lanes: dict | None) -> dict[str, Any]:
    """Per lane, as a viewer sees them: retrieval frames (every frame that updates the
    top-k strip: lane "retrieval", or every single-lane frame) and images."""
    lane = np.array([f.get("lane") or "" for f in frames])
    retrieval = lane != "image"
    out = {
        "retrieval_frames": {
            "n": int(retrieval.sum()),
            "per_s": round(int(retrieval.sum()) / wall_s, 2),
            "end_to_end_ms": percentiles(e2e[retrieval]),
        },
        "images": {
            "n": int(has_image.sum()),
            "per_s": round(int(has_image.sum()) / wall_s, 2),
            "age_at_client_ms": percentiles(e2e[has_image]),  # last sample pushed -> image
            "sample_age_ms": percentiles(age[has_image]),
        },
        "worker_lanes": worker_lanes,
    }
    r, i = out["retrieval_frames"], out["images"]
    out["targets"] = {
        "retrieval_e2e_p50_ms": _target(r["end_to_end_ms"].get("p50"), LANE_TARGETS["retrieval_e2e_p50_ms"]),
        "retrieval_e2e_p99_ms": _target(r["end_to_end_ms"].get("p99"), LANE_TARGETS["retrieval_e2e_p99_ms"]),
        "retrieval_frames_per_s": _at_least(r["per_s"], LANE_TARGETS["retrieval_frames_per_s"]),
        "images_per_s": _at_least(i["per_s"], LANE_TARGETS["images_per_s"]),
        "image_age_p50_ms": _target(i["age_at_client_ms"].get("p50"), LANE_TARGETS["image_age_p50_ms"]),
    }
    return out


def _at_least(measured: float | None, limit: float) -> dict[str, Any]:
    return {"measured": measured, "target": f">= {limit}", "met": measured is not None and measured >= limit}


def _thirds(values_ms: np.ndarray, t_s: np.ndarray) -> dict[str, float | None]:
    """p50/p99 of the first and last third of the run, and the linear trend (ms/min)."""
    ok = np.isfinite(values_ms)
    first, _, last = np.array_split(np.arange(values_ms.size), 3)
    out: dict[str, float | None] = {}
    for name, idx in (("first_third", first), ("last_third", last)):
        p = percentiles(values_ms[idx])
        out[f"{name}_p50_ms"], out[f"{name}_p99_ms"] = p.get("p50"), p.get("p99")
    trend = np.polyfit(t_s[ok], values_ms[ok], 1)[0] * 60.0 if ok.sum() > 2 else None
    out["slope_ms_per_min"] = None if trend is None else round(float(trend), 3)
    return out


def _nanmedian(a: np.ndarray) -> float | None:
    a = a[np.isfinite(a)]
    return round(float(np.median(a)), 3) if a.size else None


def _target(measured: float | None, limit: float) -> dict[str, Any]:
    return {"target": limit, "measured": measured, "met": None if measured is None else measured <= limit}


def _rel(p: Path) -> str:
    p = Path(p).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(p)


def plot(report: dict[str, Any], path: Path) -> Path:
    """Histogram of end-to-end and compute latency; end to end over time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = report["_series"]
    e2e, compute, t_s, img = s["e2e_ms"], s["compute_ms"], s["t_s"], s["has_image"]
    ok = np.isfinite(e2e)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    hi = float(np.nanpercentile(e2e, 99.5)) * 1.2 if ok.any() else 100.0
    bins = np.linspace(0, max(hi, TARGETS["p99_ms"] * 1.1), 80)
    ax1.hist(e2e[ok], bins=bins, alpha=0.75, label="end to end (push -> client)")
    ax1.hist(compute, bins=bins, alpha=0.6, label="model compute")
    p = report["latency_ms"]["end_to_end"]
    for q, style in (("p50", "-"), ("p99", "--")):
        if q in p:
            ax1.axvline(p[q], color="k", ls=style, lw=1, label=f"end to end {q} {p[q]:.1f} ms")
    ax1.axvline(TARGETS["p50_ms"], color="g", ls=":", lw=1, label="targets (p50, p99)")
    ax1.axvline(TARGETS["p99_ms"], color="g", ls=":", lw=1)
    ax1.set_xlabel("latency (ms)")
    ax1.set_ylabel("frames")
    ax1.legend(fontsize=8)
    ax2.scatter(t_s[img & ok], e2e[img & ok], s=4, label="frame with image")
    ax2.scatter(t_s[~img & ok], e2e[~img & ok], s=4, label="retrieval only")
    k = 25
    for mask, label, color in ((img & ok, "with image", "navy"), (~img & ok, "retrieval only", "darkred")):
        if mask.sum() >= k:
            v = e2e[mask]
            med = np.array([np.median(v[max(0, i - k + 1) : i + 1]) for i in range(v.size)])
            ax2.plot(t_s[mask], med, color=color, lw=1, label=f"running median, {label} ({k} frames)")
    ax2.set_xlabel("time since start of measurement (s)")
    ax2.set_ylabel("end-to-end latency (ms)")
    ax2.set_ylim(0, hi)
    ax2.legend(fontsize=8, loc="upper right")
    cfg, inp = report["config"], report["inputs"]
    fig.suptitle(
        f"rtdecode end-to-end latency: {inp['origin']} models, hop {cfg['hop_s'] * 1e3:.0f} ms, "
        f"{cfg['device']}, {report['machine']['n_cpus']} CPUs "
        f"(load {report['machine']['load_average_1min']})",
        fontsize=10,
    )
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def print_report(report: dict[str, Any]) -> None:
    lat = report["latency_ms"]
    rows = [
        ["end to end (push -> client)", *_pcts(lat["end_to_end"])],
        ["  with image", *_pcts(lat["end_to_end_with_image"])],
        ["  retrieval only", *_pcts(lat["end_to_end_without_image"])],
        ["sample age (t_last -> client)", *_pcts(lat["sample_age"])],
        ["model compute", *_pcts(lat["compute"])],
        *[[f"  {s}", *_pcts(lat["stages"][s])] for s in STAGES if lat["stages"][s].get("n")],
        *[[f"path: {k}", *_pcts(v)] for k, v in lat["path"].items()],
    ]
    print(format_table(["latency (ms)", "n", "p50", "p95", "p99"], rows))
    f, w, r, d = report["frames"], report["windows"], report["overhead_ratio"], report["drift"]
    print(
        f"\n{f['n']} frames in {f['wall_s']} s ({f['per_s']} frames/s, {f['images_per_s']} "
        f"images/s); windows skipped {w.get('skipped')} of {w.get('windows', 0) + w.get('skipped', 0)}; "
        f"frames lost before the client {f['seq_gaps_at_client']}"
    )
    print(
        f"overhead ratio (end to end / compute, per-frame median) {r['median_per_frame']}"
        f" (with image {r['median_per_frame_with_image']}, retrieval only "
        f"{r['median_per_frame_without_image']}; mean/mean {r['mean_e2e_over_mean_compute']})"
    )
    print(format_table(
        ["first vs last third (ms)", "p50 first", "p50 last", "p99 first", "p99 last", "ms/min"],
        [[k.replace("_", " "), v["first_third_p50_ms"], v["last_third_p50_ms"],
          v["first_third_p99_ms"], v["last_third_p99_ms"], v["slope_ms_per_min"]]
         for k, v in d.items()],
    ))
    met = ", ".join(
        f"{k} {v['measured']} (<= {v['target']}: {'met' if v['met'] else 'NOT met'})"
        for k, v in report["targets"].items()
    )
    print(f"targets: {met}")


def _pcts(p: dict) -> list:
    return [p.get("n", 0), p.get("p50"), p.get("p95"), p.get("p99")]


# ------------------------------------------------------------------ main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=60.0, help="seconds measured (after warm-up)")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds of frames ignored first")
    p.add_argument("--data", type=Path, default=None, help="folder with replay_raw.fif (default data/sim)")
    p.add_argument("--model", type=Path, default=None, help="encoder checkpoint (default models/demo/encoder)")
    p.add_argument("--decoder", default=None, help="decoder folder or 'none' (default models/demo/decoder)")
    p.add_argument("--hop", type=float, default=0.05, help="hop between windows, s")
    p.add_argument("--chunk-ms", type=float, default=10.0, help="replay chunk length, ms")
    p.add_argument("--device", default="cpu", help="'cpu' or 'cuda'")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--max-fps", type=float, default=10.0, help="most generated images per second")
    p.add_argument("--steps", type=int, default=4, help="diffusion steps per image")
    p.add_argument("--lanes", choices=["1", "2", "both"], default="both",
                   help="worker lanes; 'both' runs single-lane then two-lane in one run")
    p.add_argument("--json", type=Path, default=RESULTS_DIR / "latency.json")
    p.add_argument("--png", default=str(RESULTS_DIR / "latency.png"), help="'' for no plot")
    p.add_argument("--note", default=None, help="free text stored in the JSON (e.g. model provenance)")
    p.add_argument("--no-progress", action="store_true")
    # Internal: the replay child.
    p.add_argument("--replay-child", type=Path, default=None, help=argparse.SUPPRESS)
    p.add_argument("--name", default=None, help=argparse.SUPPRESS)
    p.add_argument("--push-log", type=Path, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Resolve inputs, measure (one or both worker modes), write JSON and PNG, print the
    tables; returns the report."""
    use_local_config()
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    modes = [1, 2] if args.lanes == "both" else [int(args.lanes)]
    reports: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="rtdecode-latency-inputs-") as tmp:
        inputs = resolve_inputs(args, Path(tmp))
        for lanes in modes:
            print(
                f"latency: {inputs.origin} models (encoder {_rel(inputs.encoder)}, decoder "
                f"{inputs.decoder}), replay {_rel(inputs.replay)}, {args.duration:g} s after "
                f"{args.warmup:g} s warm-up, hop {args.hop * 1e3:g} ms, {args.device}, "
                f"{lanes} lane(s)",
                flush=True,
            )
            m = measure(
                inputs, duration_s=args.duration, warmup_s=args.warmup, hop_s=args.hop,
                chunk_ms=args.chunk_ms, device=args.device, max_fps=args.max_fps,
                diffusion_steps=args.steps, lanes=lanes, progress=not args.no_progress,
            )
            config = {
                "duration_s": args.duration, "warmup_s": args.warmup, "hop_s": args.hop,
                "chunk_ms": args.chunk_ms, "device": args.device, "max_fps": args.max_fps,
                "diffusion_steps": args.steps, "sfreq_hz": m["sfreq_hz"], "lanes": lanes,
                "torch": torch.__version__,
            }
            report = summarise(m, config, inputs)
            if args.note:
                report["note"] = args.note
            if args.png and lanes == modes[-1]:
                report["plot"] = _rel(plot(report, Path(args.png)))
            report.pop("_series")
            print_report(report)
            reports["single_lane" if lanes == 1 else "two_lane"] = report
    out = reports[next(iter(reports))] if len(reports) == 1 else {
        "benchmark": "latency (single-lane vs two-lane, one run)", "runs": reports,
        "comparison": compare(reports),
    }
    if len(reports) > 1:
        print_comparison(out["comparison"])
    if args.json:
        write_json(args.json, out)
    print(f"wrote {args.json}" + (f" and {args.png}" if args.png else ""))
    return out


def compare(reports: dict[str, Any]) -> dict[str, Any]:
    """Per-lane numbers of both runs side by side, and two-lane / single-lane ratios."""
    rows = {}
    for key, r in reports.items():
        lanes = r["lanes"]
        rows[key] = {
            "retrieval_e2e_p50_ms": lanes["retrieval_frames"]["end_to_end_ms"].get("p50"),
            "retrieval_e2e_p99_ms": lanes["retrieval_frames"]["end_to_end_ms"].get("p99"),
            "retrieval_frames_per_s": lanes["retrieval_frames"]["per_s"],
            "images_per_s": lanes["images"]["per_s"],
            "image_age_p50_ms": lanes["images"]["age_at_client_ms"].get("p50"),
            "load_average_1min": (r.get("load_average") or {}).get("before", [None])[0],
            "targets_met": {k: v["met"] for k, v in lanes["targets"].items()},
        }
    a, b = rows.get("single_lane"), rows.get("two_lane")
    ratio = {}
    if a and b:
        for k in ("retrieval_e2e_p50_ms", "retrieval_e2e_p99_ms", "retrieval_frames_per_s",
                  "images_per_s", "image_age_p50_ms"):
            if a[k] and b[k] is not None:
                ratio[k] = round(b[k] / a[k], 3)
    return {"runs": rows, "two_lane_over_single_lane": ratio}


def print_comparison(c: dict[str, Any]) -> None:
    keys = ["retrieval_e2e_p50_ms", "retrieval_e2e_p99_ms", "retrieval_frames_per_s",
            "images_per_s", "image_age_p50_ms", "load_average_1min"]
    rows = [[k, *[c["runs"][run][k] for run in c["runs"]], c["two_lane_over_single_lane"].get(k)]
            for k in keys]
    print(format_table(["per lane", *c["runs"], "two / single"], rows))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.replay_child is not None:
        return replay_child(args.replay_child, args.name, args.chunk_ms, args.push_log)
    run(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
