"""Soak: the demo pipeline for a long time, with three viewers, one of them slow.

    .venv/bin/python bench/soak.py [--duration 600] [--warmup 60] [--data DIR]
                                   [--model CKPT_DIR] [--decoder DIR|none] [--device cpu]

What runs
---------
* ``rtdecode replay --loop`` of ``data/sim/replay_raw.fif`` (306 MEG channels at 1200 Hz)
  in a child process, as a lab's acquisition would be; without that file, the replay of
  a tiny simulated subject built here.
* ``rtdecode serve`` in a child process of its own (port 0), as in a lab, with the demo
  models (``models/demo/{encoder,decoder}``) when they exist, else a one-epoch
  ``test``-preset encoder built here (bench/latency.py's ``resolve_inputs``).
* Three websocket viewers in threads of this process: two read every message; the slow
  one reads one message per second through a 4 KiB receive buffer, so that the server
  really feels it (backpressure) and must drop frames for it alone. A viewer whose
  connection closes reconnects after 1 s (counted, with the close code).

Reported
--------
* RSS of the service process every ``--sample-s``: growth after the warm-up = median RSS
  of the last minute over the median of the first minute after the warm-up (target
  < 5 %); its threads and open fds alongside (leaks).
* End-to-end latency per minute at the fast viewers (receive time - the window's
  ``t_arrived``, both ``rtdecode.lsl.local_clock``) and the worker's ``total``:
  p50/p95/p99 per minute; drift = slope of the per-minute p50.
* Per viewer: frames received, frames missed (``seq`` jumps), drops the server reported
  (``gap`` messages), reconnects and close codes; the server's own totals.
* The reader's gaps and lost samples, windows skipped, frame errors.

JSON to bench/results/soak.json, RSS and latency over time to bench/results/soak.png, a
short table on stdout. The machine is shared: the load average is recorded at the start
and the end.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from array import array
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import RESULTS_DIR, first_subject, format_table, machine_info, percentiles, write_json  # noqa: E402
from latency import resolve_inputs, stop_process  # noqa: E402

from rtdecode.lsl import use_local_config  # noqa: E402  (cheap: no liblsl)

#: Target of the soak: RSS growth after warm-up, percent.
RSS_GROWTH_TARGET_PCT = 5.0


def _proc_status(pid: int) -> dict[str, int]:
    """RSS (bytes), threads and open fds of process ``pid``."""
    rss_kb = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss_kb = int(line.split()[1])
    return {
        "rss_bytes": rss_kb * 1024,
        "threads": len(os.listdir(f"/proc/{pid}/task")),
        "fds": len(os.listdir(f"/proc/{pid}/fd")),
    }


class ServiceProcess:
    """``rtdecode serve`` in a child process; ``url`` once it listens."""

    def __init__(self, inputs, name: str, device: str, log_path: Path) -> None:
        env = dict(
            os.environ,
            RTDECODE_SOURCE_ID=name,
            RTDECODE_DEVICE=device,
            **({"RTDECODE_GALLERY": str(inputs.gallery)} if inputs.gallery else {}),
        )
        argv = [sys.executable, "-m", "rtdecode.cli", "--lsl-local", "serve", "--stream", name]
        argv += ["--model", str(inputs.encoder), "--decoder", inputs.decoder, "--port", "0"]
        subject = first_subject(inputs.encoder)
        if subject is not None:
            argv += ["--subject", subject]  # the replayed session is the first subject's
        self.log_path = log_path
        with log_path.open("w") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                argv, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self.pid = self.proc.pid
        self.url = None
        deadline = time.monotonic() + 180
        while self.url is None:  # its first stdout line says where it listens
            found = re.search(r"rtdecode serving .* at (http://\S+/)", log_path.read_text())
            if found:
                self.url = found.group(1)
            elif self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"rtdecode serve did not start; see {log_path}.")
            else:
                time.sleep(0.2)

    def get(self, path: str) -> dict:
        import httpx

        return httpx.get(self.url + path, timeout=10).json()

    def stop(self) -> None:
        stop_process(self.proc, 20.0)  # SIGTERM: the service's ordered shutdown


class Viewer(threading.Thread):
    """A websocket viewer that reconnects; ``slow`` reads one message per second."""

    def __init__(self, url: str, label: str, slow: bool, t0: float, stop: threading.Event):
        super().__init__(name=f"soak-{label}", daemon=True)
        self.url, self.label, self.slow, self.t0, self.stop = url, label, slow, t0, stop
        self.frames = 0
        self.missed = 0  # seq jumps within a connection
        self.server_drops = 0  # the last dropped_total of each connection's gap messages
        self.connections = 0
        self.close_codes: dict[str, int] = defaultdict(int)
        # Per frame: time (s), end to end (ms), the worker's total (ms). Compact arrays:
        # the measurement must not be what grows.
        self.t_s, self.e2e_ms, self.total_ms = array("d"), array("d"), array("d")

    def _socket(self) -> socket.socket | None:
        if not self.slow:
            return None
        host, port = self.url.split("//", 1)[1].split("/", 1)[0].rsplit(":", 1)
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect((host, int(port)))
        return sock

    def run(self) -> None:
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.client import connect

        while not self.stop.is_set():
            try:
                with connect(
                    self.url,
                    sock=self._socket(),
                    max_size=None,
                    max_queue=1 if self.slow else None,
                    # The slow viewer does not ping: it is the server's keepalive that
                    # decides what happens to a viewer this far behind.
                    ping_interval=None if self.slow else 20,
                    open_timeout=10,
                    close_timeout=1,
                ) as ws:
                    self.connections += 1
                    self._read(ws)
            except ConnectionClosed as exc:
                code = exc.rcvd.code if exc.rcvd is not None else "none"
                self.close_codes[str(code)] += 1
            except (OSError, TimeoutError) as exc:
                self.close_codes[type(exc).__name__] += 1
            self.stop.wait(1.0)

    def _read(self, ws) -> None:
        from rtdecode.lsl.streams import local_clock
        from rtdecode.server.protocol import decode_frame

        last_seq, dropped_total = None, 0
        try:
            while not self.stop.is_set():
                try:
                    msg = ws.recv(timeout=1.0)
                except TimeoutError:
                    continue
                t_recv = local_clock()
                if isinstance(msg, bytes):
                    header, _ = decode_frame(msg)
                    seq = header["seq"]
                    if last_seq is not None and seq > last_seq + 1:
                        self.missed += seq - last_seq - 1
                    last_seq = seq
                    self.frames += 1
                    self.t_s.append(time.monotonic() - self.t0)
                    self.e2e_ms.append((t_recv - header["t_arrived"]) * 1e3)
                    self.total_ms.append(header["latencies_ms"].get("total", np.nan))
                    # Acknowledge like the viewer page does (flow control: <= 2 in flight).
                    ws.send(json.dumps({"type": "ack", "seq": seq}))
                elif (text := json.loads(msg))["type"] == "gap":
                    dropped_total = text["dropped_total"]
                if self.slow:
                    self.stop.wait(1.0)
        finally:
            self.server_drops += dropped_total

    def series(self) -> np.ndarray:
        """(n_frames, 3): time (s), end to end (ms), worker total (ms)."""
        return np.column_stack([np.frombuffer(a) for a in (self.t_s, self.e2e_ms, self.total_ms)])

    def report(self, warmup_s: float) -> dict[str, Any]:
        x = self.series()
        age = x[x[:, 0] >= warmup_s, 1]
        return {
            "slow": self.slow,
            "frames": self.frames,
            "frame_age_ms": percentiles(age),
            "missed_seq": self.missed,
            "server_reported_drops": self.server_drops,
            "connections": self.connections,
            "reconnects": max(0, self.connections - 1),
            "close_codes": dict(self.close_codes),
        }


def soak(inputs, *, duration_s: float, warmup_s: float, sample_s: float, device: str) -> dict:
    """Run the pipeline for ``warmup_s + duration_s``; the raw series and counters."""
    use_local_config()
    from tqdm import tqdm

    from rtdecode.demo import start_replay

    name = f"rtd-soak-{uuid.uuid4().hex[:8]}"
    replay = start_replay(inputs.replay, name)
    log_path = Path(tempfile.mkdtemp(prefix="rtdecode-soak-log-")) / "service.log"
    service = ServiceProcess(inputs, name, device, log_path)
    stop = threading.Event()
    samples: list[dict[str, Any]] = []
    viewers: list[Viewer] = []
    try:
        deadline = time.monotonic() + 180
        while service.get("health")["state"] != "ready":
            if replay.poll() is not None or service.proc.poll() is not None:
                raise RuntimeError("The replay or the service ended before the service was ready.")
            if time.monotonic() > deadline:
                raise RuntimeError(f"The service did not become ready: {service.get('health')}.")
            time.sleep(0.2)
        t0 = time.monotonic()
        url = service.url.replace("http://", "ws://") + "ws"
        viewers = [
            Viewer(url, "fast-1", False, t0, stop),
            Viewer(url, "fast-2", False, t0, stop),
            Viewer(url, "slow", True, t0, stop),
        ]
        for v in viewers:
            v.start()
        total_s = warmup_s + duration_s
        with tqdm(total=int(total_s), desc="soak", unit="s", file=sys.stderr) as bar:
            while (t := time.monotonic() - t0) < total_s:
                if replay.poll() is not None or service.proc.poll() is not None:
                    raise RuntimeError("The replay or the service ended during the soak.")
                status = service.get("api/status")
                counters = status["source"]["worker"]["counters"]
                samples.append(
                    {
                        "t_s": round(t, 2),
                        **_proc_status(service.pid),
                        "frames": counters["frames"],
                        "frame_errors": counters["frame_errors"],
                        "reader_samples": status["source"]["reader"]["samples"],
                        "health": status["health"]["state"],
                        "load_1min": os.getloadavg()[0],  # the machine is shared
                    }
                )
                bar.update(int(t) - bar.n)
                bar.set_postfix_str(
                    f"RSS {samples[-1]['rss_bytes'] / 2**20:.0f} MB, {counters['frames']} frames",
                    refresh=False,
                )
                time.sleep(max(0.0, sample_s - (time.monotonic() - t0 - t)))
        final = service.get("api/status")
    finally:
        stop.set()
        for v in viewers:
            v.join(5)
        service.stop()
        stop_process(replay)
    return {
        "samples": samples,
        "viewers": {v.label: v for v in viewers},
        "final_status": final["source"],
        "server": final["server"],
        "health": [final["health"]["state"], final["health"]["reasons"]],
        "service_exit_code": service.proc.returncode,
        "service_log": str(log_path),
    }


def summarise(m: dict, config: dict, inputs, load_start: float) -> dict[str, Any]:
    warmup_s = config["warmup_s"]
    s = m["samples"]
    t = np.array([x["t_s"] for x in s])
    rss_mb = np.array([x["rss_bytes"] for x in s]) / 2**20
    after = t >= warmup_s
    first = rss_mb[after & (t < warmup_s + 60)]
    last = rss_mb[t >= t[-1] - 60]
    base, end = float(np.median(first)), float(np.median(last))
    growth_pct = (end - base) / base * 100
    # Latency per minute, fast viewers, after the warm-up.
    lat = np.vstack([v.series() for v in m["viewers"].values() if not v.slow])
    lat = lat[lat[:, 0] >= warmup_s]
    minutes = []
    for k in range(int(np.ceil(config["duration_s"] / 60))):
        lo = warmup_s + 60 * k
        sel = lat[(lat[:, 0] >= lo) & (lat[:, 0] < lo + 60)]
        in_min = (t >= lo) & (t < lo + 60)
        minutes.append(
            {
                "minute": k + 1,
                "e2e_ms": percentiles(sel[:, 1]),
                "worker_total_ms": percentiles(sel[:, 2]),
                "rss_mb": round(float(np.median(rss_mb[in_min])), 1) if in_min.any() else None,
            }
        )
    p50 = np.array([mm["e2e_ms"].get("p50", np.nan) for mm in minutes], dtype=float)
    ok = np.isfinite(p50)
    slope = float(np.polyfit(np.flatnonzero(ok), p50[ok], 1)[0]) if ok.sum() >= 2 else None
    final = m["final_status"]
    return {
        "benchmark": "soak",
        "machine": {**machine_info(), "load_average_1min_start": load_start},
        "config": config,
        "inputs": {
            "replay": str(inputs.replay),
            "encoder": str(inputs.encoder),
            "decoder": inputs.decoder,
            "origin": inputs.origin,
        },
        "rss": {
            "baseline_mb": round(base, 1),
            "end_mb": round(end, 1),
            "max_mb": round(float(rss_mb.max()), 1),
            "growth_after_warmup_pct": round(growth_pct, 2),
            "target_pct": RSS_GROWTH_TARGET_PCT,
            "met": bool(growth_pct < RSS_GROWTH_TARGET_PCT),
        },
        "threads": {"after_warmup": _at(s, after, "threads"), "end": s[-1]["threads"]},
        "fds": {"after_warmup": _at(s, after, "fds"), "end": s[-1]["fds"]},
        "latency_per_minute": minutes,
        "latency_drift_ms_per_min": None if slope is None else round(slope, 3),
        "latency_overall_ms": percentiles(lat[:, 1]),
        "viewers": {k: v.report(warmup_s) for k, v in m["viewers"].items()},
        "server": {k: v for k, v in m["server"].items() if k != "clients"},
        "reader": {
            k: final["reader"][k]
            for k in ("samples", "gaps", "lost_samples", "reconnects", "overflow", "restarts")
        },
        "windower": final["windower"],
        "worker": final["worker"]["counters"],
        "health_end": m["health"],
        "service_exit_code": m["service_exit_code"],
        "service_log": m["service_log"],
        "health_not_ready_samples": sum(x["health"] != "ready" for x in s),
        "series": {
            "t_s": t.tolist(),
            "rss_mb": np.round(rss_mb, 2).tolist(),
            "threads": [x["threads"] for x in s],
            "fds": [x["fds"] for x in s],
            "load_1min": [round(x["load_1min"], 2) for x in s],
        },
    }


def _at(samples: list[dict], mask: np.ndarray, key: str) -> int | None:
    idx = np.flatnonzero(mask)
    return None if idx.size == 0 else samples[int(idx[0])][key]


def plot(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series, warmup_s = report["series"], report["config"]["warmup_s"]
    t_min = np.array(series["t_s"]) / 60
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.2))
    ax1.plot(t_min, series["rss_mb"], lw=1)
    ax1.axvspan(0, warmup_s / 60, color="0.9", label="warm-up")
    r = report["rss"]
    ax1.axhline(r["baseline_mb"] * (1 + r["target_pct"] / 100), color="r", ls=":", lw=1,
                label=f"baseline + {r['target_pct']:g} %")  # fmt: skip
    ax1.set_xlabel("time (min)")
    ax1.set_ylabel("RSS (MB)")
    ax1.set_title(f"RSS: {r['growth_after_warmup_pct']:+.2f} % after warm-up", fontsize=10)
    ax1.legend(fontsize=8)
    mins = report["latency_per_minute"]
    x = [mm["minute"] for mm in mins]
    for q, style in (("p50", "-o"), ("p95", "-s"), ("p99", "-^")):
        ax2.plot(x, [mm["e2e_ms"].get(q, np.nan) for mm in mins], style, ms=3, label=f"e2e {q}")
    ax2.set_xlabel("minute after warm-up")
    ax2.set_ylabel("end-to-end latency at the viewer (ms)")
    ax2.set_title(f"drift {report['latency_drift_ms_per_min']} ms/min (p50)", fontsize=10)
    ax2.legend(fontsize=8)
    m, minutes = report["machine"], report["config"]["duration_s"] / 60
    title = f"rtdecode soak: {minutes:g} min, {report['inputs']['origin']} models"
    load = f"load {m['load_average_1min_start']} -> {m['load_average_1min']}"
    fig.suptitle(f"{title}, {m['n_cpus']} CPUs ({load})", fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)
    return path


def print_report(report: dict) -> None:
    rows = [
        [mm["minute"], mm["e2e_ms"].get("n", 0), mm["e2e_ms"].get("p50"), mm["e2e_ms"].get("p99"),
         mm["worker_total_ms"].get("p50"), mm["rss_mb"]]
        for mm in report["latency_per_minute"]
    ]  # fmt: skip
    header = ["minute", "frames (fast)", "e2e p50", "e2e p99", "worker p50", "RSS MB"]
    print(format_table(header, rows))
    rows = [
        [k, v["frames"], v["missed_seq"], v["server_reported_drops"], v["reconnects"],
         v["frame_age_ms"].get("p50"), v["frame_age_ms"].get("max"),
         ", ".join(f"{c}x{n}" for c, n in v["close_codes"].items()) or "-"]
        for k, v in report["viewers"].items()
    ]  # fmt: skip
    print()
    header = ["viewer", "frames", "missed", "drops", "reconnects", "age p50", "age max", "closes"]
    print(format_table(header, rows))
    r, rd = report["rss"], report["reader"]
    print(
        f"\nRSS {r['baseline_mb']} -> {r['end_mb']} MB ({r['growth_after_warmup_pct']:+.2f} % "
        f"after warm-up; target < {r['target_pct']:g} %: {'met' if r['met'] else 'NOT met'}); "
        f"threads {report['threads']}, fds {report['fds']}"
    )
    print(
        f"latency drift {report['latency_drift_ms_per_min']} ms/min; reader: {rd['samples']} "
        f"samples, {rd['gaps']} gaps, {rd['lost_samples']} lost; windows skipped "
        f"{report['windower']['skipped']}; frame errors {report['worker']['frame_errors']}; "
        f"load {report['machine']['load_average_1min_start']} -> "
        f"{report['machine']['load_average_1min']}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=600.0, help="seconds after the warm-up")
    p.add_argument("--warmup", type=float, default=60.0, help="seconds before RSS is compared")
    p.add_argument("--sample-s", type=float, default=5.0, help="seconds between RSS samples")
    p.add_argument(
        "--data", type=Path, default=None, help="folder with replay_raw.fif (default data/sim)"
    )
    p.add_argument(
        "--model", type=Path, default=None, help="encoder checkpoint (default models/demo/encoder)"
    )
    p.add_argument(
        "--decoder", default=None, help="decoder folder or 'none' (default models/demo/decoder)"
    )
    p.add_argument("--device", default="cpu")
    p.add_argument("--json", type=Path, default=RESULTS_DIR / "soak.json")
    p.add_argument("--png", type=Path, default=RESULTS_DIR / "soak.png")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    use_local_config()
    load_start = round(os.getloadavg()[0], 2)
    sim = ROOT / "data" / "sim"
    if args.data is None and (sim / "replay_raw.fif").is_file():
        args.data = sim  # the demo's replay, even when the encoder is built here
    with tempfile.TemporaryDirectory(prefix="rtdecode-soak-") as tmp:
        inputs = resolve_inputs(args, Path(tmp))
        print(
            f"soak: {inputs.origin} models, replay {inputs.replay}, {args.warmup:g} s warm-up "
            f"+ {args.duration:g} s, 3 viewers (1 slow)",
            flush=True,
        )
        m = soak(
            inputs, duration_s=args.duration, warmup_s=args.warmup, sample_s=args.sample_s,
            device=args.device,
        )  # fmt: skip
    config = {
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "sample_s": args.sample_s,
        "device": args.device,
        "viewers": "2 fast + 1 slow (1 message/s, 4 KiB receive buffer)",
    }
    report = summarise(m, config, inputs, load_start)
    png = plot(report, args.png)
    report["plot"] = str(png.relative_to(ROOT)) if png.is_relative_to(ROOT) else str(png)
    write_json(args.json, report)
    print_report(report)
    print(f"wrote {args.json} and {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
