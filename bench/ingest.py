"""Ingest benchmark: rtdecode's StreamReader + Windower vs mne-lsl's StreamLSL.

    .venv/bin/python bench/ingest.py [--duration 60] [--n-channels 306] [--sfreq 1200]

One synthetic outlet (tests/helpers/lsl_source.py: 306 channels + a counter channel, 1200 Hz,
pushed in 10 ms chunks) runs in a subprocess for the whole benchmark. Each reader then
runs in a process of its own that does nothing else, one after the other on the same
stream (so they do not compete for the CPU), for ``--duration`` seconds after a 2 s
warm-up:

- rtdecode: StreamReader (its thread pulls into the ring) + Windower in the main thread
  calling ``next_window`` (0.25 s windows every 0.05 s).
- mne-lsl: ``StreamLSL(bufsize).connect(processing_flags=["clocksync"])`` (its own
  acquisition thread polls every 1 ms) and a main thread that takes ``get_data(0.25)``
  each time ``n_new_samples`` reaches a hop (checked every 1 ms).

Reported per stream second (CPU s / s): the reader thread's own CPU time (rtdecode only,
``time.thread_time`` in that thread), the acquisition side (process CPU minus the main
thread's, so liblsl's threads count for both), and the whole process. Latency
(rtdecode): from the pull that brought a window's last sample (``Window.t_arrived``) to
``next_window`` returning it; age (both): from that sample's LSL timestamp to the
window being in the consumer's hands. JSON goes to bench/results/ingest.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from common import write_json  # noqa: E402  (bench/common.py, beside this script)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WARMUP_S = 2.0


def _process_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _percentiles(values_ms: list[float]) -> dict:
    import numpy as np

    if not values_ms:
        return {"n": 0}
    a = np.asarray(values_ms)
    return {
        "n": int(a.size),
        "p50": round(float(np.percentile(a, 50)), 3),
        "p99": round(float(np.percentile(a, 99)), 3),
        "max": round(float(a.max()), 3),
    }


def _per_stream_s(cpu: dict, wall_s: float) -> dict:
    return {k: round(v / wall_s, 5) for k, v in cpu.items()}


# ---------------------------------------------------------------- child: rtdecode
def child_rtdecode(args) -> dict:
    from rtdecode.lsl.streams import local_clock
    from rtdecode.stream import StreamReader, Windower

    reader = StreamReader(args.name, buffer_s=30.0, resolve_timeout_s=30.0).start()
    reader.wait_ready(30.0)
    win = Windower(reader, window_s=args.window_s, hop_s=args.hop_s, pad_s=args.pad_s)
    t_end = time.monotonic() + WARMUP_S
    while time.monotonic() < t_end:
        win.next_window(timeout_s=1.0)

    s0, w0 = reader.stats, win.stats
    cpu0, main0, t0 = _process_cpu_s(), time.thread_time(), time.monotonic()
    latency_ms, age_ms = [], []
    t_end = t0 + args.duration
    while time.monotonic() < t_end:
        w = win.next_window(timeout_s=1.0)
        now = local_clock()
        if w is None:
            continue
        latency_ms.append((now - w.t_arrived) * 1e3)
        age_ms.append((now - w.t_last) * 1e3)
    wall_s = time.monotonic() - t0
    cpu = {
        "reader_thread": reader.stats.cpu_s - s0.cpu_s,
        "acquisition": (_process_cpu_s() - cpu0) - (time.thread_time() - main0),
        "process": _process_cpu_s() - cpu0,
    }
    s1, w1 = reader.stats, win.stats
    reader.stop()
    reader.raise_if_failed()
    return {
        "wall_s": round(wall_s, 3),
        "stream_s": round((s1.samples - s0.samples) / reader.sfreq_hz, 3),
        "samples": s1.samples - s0.samples,
        "lost_samples": s1.lost_samples - s0.lost_samples,
        "overflow": s1.overflow - s0.overflow,
        "windows": w1.windows - w0.windows,
        "skipped": w1.skipped - w0.skipped,
        "cpu_s": {k: round(v, 4) for k, v in cpu.items()},
        "cpu_per_stream_s": _per_stream_s(cpu, wall_s),
        "latency_ms": _percentiles(latency_ms),
        "age_ms": _percentiles(age_ms),
    }


# ----------------------------------------------------------------- child: mne-lsl
def child_mne_lsl(args) -> dict:
    from mne_lsl.lsl import local_clock
    from mne_lsl.stream import StreamLSL

    stream = StreamLSL(bufsize=2.0, name=args.name)
    stream.connect(acquisition_delay=0.001, processing_flags=["clocksync"], timeout=30)
    sfreq = stream.info["sfreq"]
    n_hop = int(round(args.hop_s * sfreq))

    def run(seconds: float, age_ms: list | None) -> int:
        n = 0
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end:
            if stream.n_new_samples < n_hop:
                time.sleep(0.001)
                continue
            _, ts = stream.get_data(winsize=args.window_s + args.pad_s)
            if age_ms is not None:
                age_ms.append((local_clock() - ts[-1]) * 1e3)
            n += 1
        return n

    run(WARMUP_S, None)
    cpu0, main0, t0 = _process_cpu_s(), time.thread_time(), time.monotonic()
    age_ms: list[float] = []
    n_windows = run(args.duration, age_ms)
    wall_s = time.monotonic() - t0
    cpu = {
        "acquisition": (_process_cpu_s() - cpu0) - (time.thread_time() - main0),
        "process": _process_cpu_s() - cpu0,
    }
    stream.disconnect()
    return {
        "wall_s": round(wall_s, 3),
        "windows": n_windows,
        "cpu_s": {k: round(v, 4) for k, v in cpu.items()},
        "cpu_per_stream_s": _per_stream_s(cpu, wall_s),
        "age_ms": _percentiles(age_ms),
    }


# ------------------------------------------------------------------------ parent
def run_child(kind: str, args, progress) -> dict:
    argv = [sys.executable, __file__, "--child", kind, "--name", args.name]
    for key in ("duration", "window_s", "hop_s", "pad_s"):
        argv += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
    task = progress.add_task(f"{kind:>8}", total=args.duration + WARMUP_S)
    t0 = time.monotonic()
    while proc.poll() is None:
        progress.update(task, completed=min(time.monotonic() - t0, args.duration + WARMUP_S))
        time.sleep(0.25)
    progress.update(task, completed=args.duration + WARMUP_S)
    out = proc.stdout.read()
    if proc.returncode != 0:
        raise RuntimeError(f"The {kind} reader failed (exit code {proc.returncode}).")
    return json.loads(out.strip().splitlines()[-1])


def print_table(result: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    ours, theirs = result["rtdecode"], result.get("mne_lsl")
    cfg = result["config"]
    t = Table(
        title=f"Ingest: {cfg['n_channels']} ch x {cfg['sfreq_hz']:g} Hz, "
        f"{cfg['duration_s']:g} s per reader"
    )
    t.add_column("metric")
    t.add_column("rtdecode", justify="right")
    t.add_column("mne-lsl StreamLSL", justify="right")

    def cell(d, *keys):
        for k in keys:
            if d is None or k not in d:
                return "-"
            d = d[k]
        return f"{d:g}" if isinstance(d, float) else str(d)

    rows = [
        ("reader thread CPU s / stream s", ("cpu_per_stream_s", "reader_thread")),
        ("acquisition CPU s / stream s", ("cpu_per_stream_s", "acquisition")),
        ("process CPU s / stream s", ("cpu_per_stream_s", "process")),
        ("windows", ("windows",)),
        ("windows skipped (latest wins)", ("skipped",)),
        ("lost samples", ("lost_samples",)),
        ("pull -> window p50 (ms)", ("latency_ms", "p50")),
        ("pull -> window p99 (ms)", ("latency_ms", "p99")),
        ("sample age at window p50 (ms)", ("age_ms", "p50")),
        ("sample age at window p99 (ms)", ("age_ms", "p99")),
    ]
    for label, keys in rows:
        t.add_row(label, cell(ours, *keys), cell(theirs, *keys))
    Console().print(t)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--duration", type=float, default=60.0, help="seconds measured per reader")
    p.add_argument("--n-channels", type=int, default=306)
    p.add_argument("--sfreq", type=float, default=1200.0)
    p.add_argument("--chunk", type=int, default=12, help="samples per pushed chunk")
    p.add_argument("--window-s", type=float, default=0.25)
    p.add_argument("--hop-s", type=float, default=0.05)
    p.add_argument("--pad-s", type=float, default=0.0)
    p.add_argument("--skip-mne-lsl", action="store_true")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "ingest.json")
    p.add_argument("--child", choices=["rtdecode", "mne-lsl"], help=argparse.SUPPRESS)
    p.add_argument("--name", default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    from rtdecode.lsl import use_local_config

    use_local_config()  # before any liblsl object, here and in the children
    if args.child:
        fn = child_rtdecode if args.child == "rtdecode" else child_mne_lsl
        print(json.dumps(fn(args)), flush=True)
        return 0

    import uuid

    import pylsl
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    from tests.helpers.lsl_source import SourceProcess

    args.name = f"rtd-bench-ingest-{uuid.uuid4().hex[:8]}"
    load_before = os.getloadavg()
    result: dict = {}
    with SourceProcess(
        args.name,
        source_id=args.name,
        n_channels=args.n_channels,
        sfreq=args.sfreq,
        chunk=args.chunk,
        counter=True,
        wait_consumer_s=60,
    ) as src:
        src.wait_event("ready", 30.0)
        with Progress(
            TextColumn("{task.description}"), BarColumn(), TimeRemainingColumn()
        ) as progress:
            result["rtdecode"] = run_child("rtdecode", args, progress)
            if not args.skip_mne_lsl:
                result["mne_lsl"] = run_child("mne-lsl", args, progress)
    import mne_lsl

    result["config"] = {
        "n_channels": args.n_channels + 1,
        "sfreq_hz": args.sfreq,
        "chunk_samples": args.chunk,
        "duration_s": args.duration,
        "window_s": args.window_s,
        "hop_s": args.hop_s,
        "pad_s": args.pad_s,
        "cpu_count": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in load_before],
        "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "pylsl": pylsl.__version__,
        "liblsl": pylsl.library_version(),
        "mne_lsl": mne_lsl.__version__,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    write_json(args.out, result)
    print_table(result)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
