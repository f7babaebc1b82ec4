"""Soak: the demo pipeline for a long time, three viewers (one slow, never acking), and
source outages.

    .venv/bin/python bench/soak.py [--duration 3600] [--warmup 60] [--restarts 10]
                                   [--outage-s 5] [--seed 0] [--data DIR]
                                   [--model CKPT_DIR] [--decoder DIR|none] [--device cpu]

What runs
---------
* ``rtdecode replay --loop --counter`` of ``data/sim/replay_raw.fif`` (306 MEG channels
  at 1200 Hz, plus the sample-counter channel so that the reader counts lost samples
  exactly) in a child process, as a lab's acquisition would be; without that file, the
  replay of a tiny simulated subject built here.
* ``rtdecode serve --lanes 2`` (the two-lane worker) in a child process of its own
  (port 0), with the demo models (``models/demo/{encoder,decoder}``) when they exist,
  else a one-epoch ``test``-preset encoder built here (bench/latency.py's
  ``resolve_inputs``).
* Three websocket viewers in threads of this process: two read every message and
  acknowledge every frame (as the viewer page does); the slow one reads one message per
  second through a 4 KiB receive buffer with ``max_queue=1`` and never acknowledges, so
  that the server really feels it (backpressure) and must drop frames for it alone. A
  viewer whose connection closes reconnects after 1 s (counted, with the close code).
* ``--restarts`` source outages spread evenly over the run after the warm-up: the replay
  is killed with SIGKILL (as a crashed acquisition), kept down for a length drawn
  between 0.6 and 1.6 x ``--outage-s`` (deterministic by ``--seed``), then started again
  from scratch (same stream name and source_id; its counter and timestamps start over).

Reported
--------
* RSS of the service process every ``--sample-s``: growth after the warm-up = median RSS
  of the last minute over the median of the first minute after the warm-up (target
  < 5 %); its threads and open fds alongside (leaks).
* End-to-end latency per minute at the fast viewers (receive time - the window's
  ``t_arrived``, both ``rtdecode.lsl.local_clock``) and the worker's ``total``:
  p50/p95/p99 per minute, per lane; drift = slope of the per-minute p50.
* Frame age per viewer (the same difference, every frame): p50/p95/p99/max, frames older
  than 2 s, and p50/max per minute.
* Per viewer: frames received, frames missed (``seq`` jumps), drops the server reported
  (``gap`` messages), reconnects and close codes; the server's own per-client counters.
* Each outage: its planned length (kill -> restart), the reader's gap for it (from the
  ``stream_gap`` messages the fast viewers receive: length in seconds and samples), the
  time from the restart to the source's first sample and to the first frame of new data
  at a fast viewer. Samples lost outside outages = the reader's ``lost_samples`` total
  (``/api/status``) minus the samples of the gaps that overlap an outage.
* The reader's, windower's and worker's counters, the worker's lane statistics, the load
  average at the start and the end (the machine is shared).

JSON to bench/results/soak.json, RSS, threads/fds, latency and frame age over time (the
outages shaded) to bench/results/soak.png, a short table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
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
#: Frames older than this at a viewer are counted (seconds).
OLD_FRAME_S = 2.0
#: Worker lanes the soak runs (the two-lane worker, passed explicitly).
LANES = 2
#: Outage lengths are drawn in [LOW, HIGH] x --outage-s.
OUTAGE_SPREAD = (0.6, 1.6)
#: Seconds kept free after each outage's restart (the replay starts, the reader
#: reconnects) before the next may begin.
OUTAGE_MARGIN_S = 15.0
#: Lane codes kept per frame.
LANE_CODES = {None: 0, "retrieval": 1, "image": 2}


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


def plan_outages(
    n: int, duration_s: float, warmup_s: float, outage_s: float, seed: int
) -> list[tuple[float, float]]:
    """(start s after t0, planned length s) of ``n`` outages spread over the run.

    Outage k starts at ``warmup_s + (k + 0.5) * duration_s / n``; its length is drawn
    uniformly in ``OUTAGE_SPREAD`` x ``outage_s`` by ``seed``, so lengths differ.
    """
    if n < 0 or outage_s <= 0:
        raise ValueError(f"--restarts {n} and --outage-s {outage_s:g} must be >= 0 and > 0.")
    if n == 0:
        return []
    lo, hi = OUTAGE_SPREAD[0] * outage_s, OUTAGE_SPREAD[1] * outage_s
    slot_s = duration_s / n
    if slot_s < hi + OUTAGE_MARGIN_S:
        raise ValueError(
            f"{n} outages of up to {hi:g} s do not fit in {duration_s:g} s: each needs "
            f"{hi + OUTAGE_MARGIN_S:g} s (outage + {OUTAGE_MARGIN_S:g} s to recover). "
            "Lower --restarts or --outage-s, or raise --duration."
        )
    lengths = np.random.default_rng(seed).uniform(lo, hi, n)
    return [(warmup_s + (k + 0.5) * slot_s, round(float(lengths[k]), 2)) for k in range(n)]


class ReplayProcess:
    """``rtdecode replay --loop --counter`` in a child process that can be killed and restarted."""

    def __init__(self, path: Path, name: str, log_path: Path) -> None:
        self.argv = [
            sys.executable, "-m", "rtdecode.cli", "--lsl-local", "replay", str(path),
            "--name", name, "--source-id", name, "--loop", "--counter", "--quiet",
        ]  # fmt: skip
        self.log_path = log_path
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        with self.log_path.open("a") as log:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                self.argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
            )
        self.starts += 1

    def kill(self) -> None:
        """SIGKILL, as a crashed acquisition: no goodbye to the inlets."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)


class Outages(threading.Thread):
    """Kills and restarts the replay on the plan; the times on ``local_clock``."""

    def __init__(self, replay: ReplayProcess, plan, t0_mono: float, stop: threading.Event):
        super().__init__(name="soak-outages", daemon=True)
        self.replay, self.plan, self.t0_mono, self.stop = replay, plan, t0_mono, stop
        self.records: list[dict[str, Any]] = []
        self.down = threading.Event()  # set while the replay is down on purpose
        self.error: BaseException | None = None

    def run(self) -> None:
        from rtdecode.lsl.streams import local_clock

        try:
            for k, (t_start_s, length_s) in enumerate(self.plan):
                if self.stop.wait(max(0.0, self.t0_mono + t_start_s - time.monotonic())):
                    return
                self.down.set()
                t_kill = local_clock()
                self.replay.kill()
                rec = {"k": k + 1, "t_s": round(time.monotonic() - self.t0_mono, 2),
                       "planned_s": length_s, "t_kill": t_kill}  # fmt: skip
                self.records.append(rec)
                if self.stop.wait(length_s):
                    return
                rec["t_restart"] = local_clock()
                rec["down_s"] = round(rec["t_restart"] - t_kill, 3)
                self.replay.start()
                self.down.clear()
        except BaseException as exc:  # noqa: BLE001 - reported by the main loop
            self.error = exc
            self.down.clear()


class ServiceProcess:
    """``rtdecode serve --lanes 2`` in a child process; ``url`` once it listens."""

    def __init__(self, inputs, name: str, device: str, log_path: Path) -> None:
        env = dict(
            os.environ,
            RTDECODE_SOURCE_ID=name,
            RTDECODE_DEVICE=device,
            **({"RTDECODE_GALLERY": str(inputs.gallery)} if inputs.gallery else {}),
        )
        argv = [sys.executable, "-m", "rtdecode.cli", "--lsl-local", "serve", "--stream", name]
        argv += ["--model", str(inputs.encoder), "--decoder", inputs.decoder, "--port", "0"]
        argv += ["--lanes", str(LANES)]
        subject = first_subject(inputs.encoder)
        if subject is not None:
            argv += ["--subject", subject]  # the replayed session is the first subject's
        self.argv = argv
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
    """A websocket viewer that reconnects.

    A fast viewer reads every message and acknowledges every frame; the slow one reads
    one message per second through a 4 KiB receive buffer and never acknowledges.
    """

    def __init__(self, url: str, label: str, slow: bool, t0: float, stop: threading.Event):
        super().__init__(name=f"soak-{label}", daemon=True)
        self.url, self.label, self.slow, self.t0, self.stop = url, label, slow, t0, stop
        self.frames = 0
        self.missed = 0  # seq jumps within a connection
        self.server_drops = 0  # the last dropped_total of each connection's gap messages
        self.connections = 0
        self.close_codes: dict[str, int] = defaultdict(int)
        self.stream_gaps: list[dict[str, Any]] = []  # the service's stream_gap messages
        # Per frame: receive time (local_clock - t0, s), frame age = receive time -
        # t_arrived (ms), the worker's total (ms), the lane (LANE_CODES). Compact
        # arrays: the measurement must not be what grows.
        self.t_s, self.age_ms, self.total_ms = array("d"), array("d"), array("d")
        self.t_arrived_s = array("d")  # the window's t_arrived - t0 (s)
        self.lane = array("b")

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
                    self.t_s.append(t_recv - self.t0)
                    self.t_arrived_s.append(header["t_arrived"] - self.t0)
                    self.age_ms.append((t_recv - header["t_arrived"]) * 1e3)
                    self.total_ms.append(header["latencies_ms"].get("total", np.nan))
                    self.lane.append(LANE_CODES.get(header.get("lane"), 0))
                    if not self.slow:
                        # Acknowledge like the viewer page does (flow control: <= 2 in
                        # flight). The slow viewer never does.
                        ws.send(json.dumps({"type": "ack", "seq": seq}))
                else:
                    text = json.loads(msg)
                    if text["type"] == "gap":
                        dropped_total = text["dropped_total"]
                    elif text["type"] == "stream_gap":
                        self.stream_gaps.append({**text, "t_recv": t_recv})
                if self.slow:
                    self.stop.wait(1.0)
        finally:
            self.server_drops += dropped_total

    def series(self) -> np.ndarray:
        """(n_frames, 5): receive time (s), age (ms), worker total (ms), lane, t_arrived (s)."""
        cols = [np.frombuffer(a) for a in (self.t_s, self.age_ms, self.total_ms)]
        n = len(cols[0])  # the thread may be appending: cut every column to one length
        lane = np.frombuffer(self.lane, dtype=np.int8)[:n].astype(float)
        return np.column_stack([c[:n] for c in cols] + [lane, np.frombuffer(self.t_arrived_s)[:n]])

    def report(self, warmup_s: float, duration_s: float) -> dict[str, Any]:
        x = self.series()
        x = x[x[:, 0] >= warmup_s]
        age = x[:, 1]
        per_minute = []
        for k in range(int(np.ceil(duration_s / 60))):
            lo = warmup_s + 60 * k
            a = age[(x[:, 0] >= lo) & (x[:, 0] < lo + 60)]
            per_minute.append(
                {"minute": k + 1, "n": int(a.size),
                 "p50_ms": round(float(np.median(a)), 1) if a.size else None,
                 "max_ms": round(float(a.max()), 1) if a.size else None}
            )  # fmt: skip
        return {
            "slow": self.slow,
            "acks": not self.slow,
            "frames": self.frames,
            "frames_after_warmup": int(age.size),
            "frame_age_ms": percentiles(age),
            f"frames_older_than_{OLD_FRAME_S:g}s": int(np.count_nonzero(age > OLD_FRAME_S * 1e3)),
            "frame_age_per_minute": per_minute,
            "missed_seq": self.missed,
            "server_reported_drops": self.server_drops,
            "stream_gap_messages": len(self.stream_gaps),
            "connections": self.connections,
            "reconnects": max(0, self.connections - 1),
            "close_codes": dict(self.close_codes),
        }


def _wait_ready(service: ServiceProcess, replay: ReplayProcess) -> None:
    deadline = time.monotonic() + 180
    while service.get("health")["state"] != "ready":
        if not replay.alive() or service.proc.poll() is not None:
            raise RuntimeError(
                f"The replay or the service ended before the service was ready; see "
                f"{replay.log_path} and {service.log_path}."
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"The service did not become ready: {service.get('health')}.")
        time.sleep(0.2)


def soak(inputs, *, duration_s: float, warmup_s: float, sample_s: float, device: str, plan) -> dict:
    """Run the pipeline for ``warmup_s + duration_s`` with the outages of ``plan``."""
    use_local_config()
    from tqdm import tqdm

    from rtdecode.lsl.streams import local_clock

    name = f"rtd-soak-{uuid.uuid4().hex[:8]}"
    log_dir = Path(tempfile.mkdtemp(prefix="rtdecode-soak-log-"))
    replay = ReplayProcess(inputs.replay, name, log_dir / "replay.log")
    replay.start()
    service = None
    stop = threading.Event()
    samples: list[dict[str, Any]] = []
    viewers: list[Viewer] = []
    outages = None
    clients: dict[str, dict[str, Any]] = {}  # the server's per-client counters, last seen
    try:
        service = ServiceProcess(inputs, name, device, log_dir / "service.log")
        _wait_ready(service, replay)
        t0_mono, t0 = time.monotonic(), local_clock()
        url = service.url.replace("http://", "ws://") + "ws"
        viewers = [
            Viewer(url, "fast-1", False, t0, stop),
            Viewer(url, "fast-2", False, t0, stop),
            Viewer(url, "slow", True, t0, stop),
        ]
        for v in viewers:
            v.start()
        outages = Outages(replay, plan, t0_mono, stop)
        outages.start()
        total_s = warmup_s + duration_s
        with tqdm(total=int(total_s), desc="soak", unit="s", file=sys.stderr) as bar:
            while (t := time.monotonic() - t0_mono) < total_s:
                if outages.error is not None:
                    raise RuntimeError(f"Could not kill or restart the replay: {outages.error!r}")
                if not outages.down.is_set() and not replay.alive():
                    raise RuntimeError(f"The replay ended during the soak; see {replay.log_path}.")
                if service.proc.poll() is not None:
                    raise RuntimeError(
                        f"The service ended during the soak; see {service.log_path}."
                    )
                status = service.get("api/status")
                src = status["source"]
                counters = src["worker"]["counters"]
                for c in status["server"].get("clients", []):
                    first_s = clients.get(c["id"], {}).get("first_seen_s", round(t, 2))
                    clients[c["id"]] = {**c, "first_seen_s": first_s, "last_seen_s": round(t, 2)}
                samples.append(
                    {
                        "t_s": round(t, 2),
                        **_proc_status(service.pid),
                        "frames": counters["frames"],
                        "frame_errors": counters["frame_errors"],
                        "reader_samples": src["reader"]["samples"],
                        "reader_lost_samples": src["reader"]["lost_samples"],
                        "health": status["health"]["state"],
                        "source_down": outages.down.is_set(),
                        "load_1min": os.getloadavg()[0],  # the machine is shared
                    }
                )
                bar.update(int(t) - bar.n)
                bar.set_postfix_str(
                    f"RSS {samples[-1]['rss_bytes'] / 2**20:.0f} MB, {counters['frames']} frames, "
                    f"{len(outages.records)}/{len(plan)} outages",
                    refresh=False,
                )
                time.sleep(max(0.0, sample_s - (time.monotonic() - t0_mono - t)))
        final = service.get("api/status")
        for c in final["server"].get("clients", []):
            clients[c["id"]] = {**clients.get(c["id"], {}), **c, "last_seen_s": None}
        metrics = _metrics(service)
    finally:
        stop.set()
        if outages is not None:
            outages.join(15)
        for v in viewers:
            v.join(5)
        if service is not None:
            service.stop()
        replay.stop()
    return {
        "t0": t0,
        "samples": samples,
        "viewers": {v.label: v for v in viewers},
        "outages": outages.records,
        "replay_starts": replay.starts,
        "final_status": final["source"],
        "server": final["server"],
        "clients": list(clients.values()),
        "metrics": metrics,
        "health": [final["health"]["state"], final["health"]["reasons"]],
        "service_argv": service.argv[2:],
        "service_exit_code": service.proc.returncode,
        "service_log": str(service.log_path),
        "replay_log": str(replay.log_path),
    }


def _metrics(service: ServiceProcess) -> dict[str, float]:
    """The reader's counters from /metrics (they never go backwards)."""
    import httpx

    text = httpx.get(service.url + "metrics", timeout=10).text
    out = {}
    for line in text.splitlines():
        if line.startswith("rtdecode_reader_") and " " in line:
            key, value = line.rsplit(" ", 1)
            try:
                out[key] = float(value)
            except ValueError:
                pass
    return out


def gap_accounting(m: dict) -> dict[str, Any]:
    """The reader's gaps matched to the outages; samples lost outside them.

    The gaps come from the ``stream_gap`` messages every viewer receives (one per gap,
    with its first sample, length and the timestamps around it); a gap belongs to an
    outage when it overlaps it (its last sample before <= the restart, its first sample
    after >= the kill). Samples lost outside outages = the reader's total (``/api/status``,
    replaced readers included) minus the samples of the gaps matched to an outage, so a
    gap message a viewer missed cannot hide a loss.
    """
    t0 = m["t0"]
    seen: dict[tuple, dict] = {}
    for v in m["viewers"].values():
        for g in v.stream_gaps:
            seen.setdefault((g.get("run"), g["sample"], g["n_lost"]), g)
    gaps = sorted(seen.values(), key=lambda g: g["t_after"])
    fast = [v.series() for v in m["viewers"].values() if not v.slow]
    fast = np.vstack(fast) if fast else np.empty((0, 5))
    outages, outside = [], []
    for g in gaps:
        g["outage"] = None
    for o in m["outages"]:
        t_restart = o.get("t_restart", np.inf)
        mine = [g for g in gaps if g["t_before"] <= t_restart and g["t_after"] >= o["t_kill"]]
        for g in mine:
            g["outage"] = o["k"]
        rec = {
            "k": o["k"],
            "at_s": o["t_s"],
            "planned_s": o["planned_s"],
            "down_s": o.get("down_s"),  # kill -> restart, measured
            "reader_gaps": len(mine),
            "reader_gap_s": round(sum(g["duration_s"] for g in mine), 3) if mine else None,
            "reader_lost_samples": int(sum(g["n_lost"] for g in mine)),
            "reconnect": any(g.get("reconnect") for g in mine),
            "reader_replaced": any(g.get("restart") for g in mine),
            "detected_by": sorted({g.get("detected_by") for g in mine}),
            "restart_to_first_sample_s": None,
            "restart_to_first_frame_s": None,
        }
        if mine and np.isfinite(t_restart):
            rec["restart_to_first_sample_s"] = round(max(g["t_after"] for g in mine) - t_restart, 3)
        if np.isfinite(t_restart):
            # The first frame at a fast viewer made of data that arrived after the restart.
            new = fast[fast[:, 4] > t_restart - t0]
            if new.size:
                rec["restart_to_first_frame_s"] = round(
                    float(new[:, 0].min() - (t_restart - t0)), 3
                )
        outages.append(rec)
    for g in gaps:
        if g["outage"] is None:
            outside.append(
                {"at_s": round(g["t_after"] - t0, 2), "n_lost": g["n_lost"],
                 "duration_s": g["duration_s"], "detected_by": g.get("detected_by"),
                 "reconnect": g.get("reconnect"), "restart": g.get("restart")}
            )  # fmt: skip
    reader = m["final_status"]["reader"]
    total_lost, total_gaps = int(reader["lost_samples"]), int(reader["gaps"])
    in_outages = sum(o["reader_lost_samples"] for o in outages)
    listed = sum(g["n_lost"] for g in gaps)
    return {
        "samples_lost_total": total_lost,
        "gaps_total": total_gaps,
        "samples_lost_in_outages": in_outages,
        "samples_lost_outside_outages": total_lost - in_outages,
        "gaps_outside_outages": outside,
        "gap_messages_complete": bool(len(gaps) == total_gaps and listed == total_lost),
        "outages_without_a_gap": [o["k"] for o in outages if o["reader_gaps"] == 0],
        "how": (
            "Gaps from the service's stream_gap messages (every viewer gets one per gap), "
            "matched to an outage when they overlap it (t_before <= restart, t_after >= "
            "kill). Lost outside = the reader's lost_samples total from /api/status minus "
            "the samples of the matched gaps. The replay carries the sample-counter "
            "channel, so in-stream gaps are counted exactly; an outage's gap is measured "
            "from timestamps (the counter starts over with the restarted replay) and "
            "includes the replay's start-up time after the restart."
        ),
        "outages": outages,
    }


def summarise(m: dict, config: dict, inputs, load_start: float) -> dict[str, Any]:
    warmup_s, duration_s = config["warmup_s"], config["duration_s"]
    s = m["samples"]
    t = np.array([x["t_s"] for x in s])
    rss_mb = np.array([x["rss_bytes"] for x in s]) / 2**20
    after = t >= warmup_s
    first = rss_mb[after & (t < warmup_s + 60)]
    last = rss_mb[t >= t[-1] - 60]
    base = float(np.median(first)) if first.size else float("nan")
    end = float(np.median(last))
    growth_pct = (end - base) / base * 100
    # Latency per minute, fast viewers, after the warm-up.
    lat = np.vstack([v.series() for v in m["viewers"].values() if not v.slow])
    lat = lat[lat[:, 0] >= warmup_s]
    minutes = []
    for k in range(int(np.ceil(duration_s / 60))):
        lo = warmup_s + 60 * k
        sel = lat[(lat[:, 0] >= lo) & (lat[:, 0] < lo + 60)]
        in_min = (t >= lo) & (t < lo + 60)
        span_s = min(60.0, warmup_s + duration_s - lo)
        n_fast = sum(not v.slow for v in m["viewers"].values())
        minutes.append(
            {
                "minute": k + 1,
                "e2e_ms": percentiles(sel[:, 1]),
                "e2e_retrieval_ms": percentiles(sel[sel[:, 3] == 1, 1]),
                "e2e_image_ms": percentiles(sel[sel[:, 3] == 2, 1]),
                "worker_total_ms": percentiles(sel[:, 2]),
                "images_per_s": round(int(np.sum(sel[:, 3] == 2)) / n_fast / span_s, 3),
                "rss_mb": round(float(np.median(rss_mb[in_min])), 1) if in_min.any() else None,
            }
        )
    p50 = np.array([mm["e2e_ms"].get("p50", np.nan) for mm in minutes], dtype=float)
    ok = np.isfinite(p50)
    slope = float(np.polyfit(np.flatnonzero(ok), p50[ok], 1)[0]) if ok.sum() >= 2 else None
    final = m["final_status"]
    worker = final["worker"]
    gaps = gap_accounting(m)
    return {
        "benchmark": "soak",
        "machine": {**machine_info(), "load_average_1min_start": load_start},
        "config": config,
        "service_argv": m["service_argv"],
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
        "threads": {
            "after_warmup": _at(s, after, "threads"),
            "end": s[-1]["threads"],
            "max": max(x["threads"] for x in s),
        },  # fmt: skip
        "fds": {
            "after_warmup": _at(s, after, "fds"),
            "end": s[-1]["fds"],
            "max": max(x["fds"] for x in s),
        },  # fmt: skip
        "latency_per_minute": minutes,
        "latency_drift_ms_per_min": None if slope is None else round(slope, 3),
        "latency_overall_ms": percentiles(lat[:, 1]),
        "viewers": {k: v.report(warmup_s, duration_s) for k, v in m["viewers"].items()},
        "samples_lost_outside_outages": gaps["samples_lost_outside_outages"],
        "outages": gaps.pop("outages"),
        "gaps": gaps,
        "server": {k: v for k, v in m["server"].items() if k != "clients"},
        # Every client the server had, with its counters when last seen in /api/status
        # (last_seen_s None: still connected at the end; else it was gone by the next
        # sample, e.g. closed by the server's keepalive).
        "server_clients": m["clients"],
        "reader": {
            k: final["reader"].get(k)
            for k in (
                "samples",
                "gaps",
                "lost_samples",
                "reconnects",
                "overflow",
                "restarts",
                "repeated_samples",
                "timestamp_jumps",
                "backwards_timestamps",
            )
        },  # fmt: skip
        "reader_metrics": m["metrics"],
        "replay_starts": m["replay_starts"],
        "windower": final["windower"],
        "worker": worker["counters"],
        "worker_lanes": worker.get("lanes"),
        "health_end": m["health"],
        "service_exit_code": m["service_exit_code"],
        "service_log": m["service_log"],
        "replay_log": m["replay_log"],
        "health_not_ready_samples": sum(x["health"] != "ready" for x in s),
        "health_not_ready_samples_source_up": sum(
            x["health"] != "ready" and not x["source_down"] for x in s
        ),
        "series": {
            "t_s": t.tolist(),
            "rss_mb": np.round(rss_mb, 2).tolist(),
            "threads": [x["threads"] for x in s],
            "fds": [x["fds"] for x in s],
            "reader_lost_samples": [x["reader_lost_samples"] for x in s],
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
    fig, axes = plt.subplots(2, 2, figsize=(13, 8))
    (ax1, ax2), (ax3, ax4) = axes

    def outages(ax, minute_axis: bool) -> None:
        # minute_axis: x is "minute after warm-up" (1-based bins), else minutes since t0.
        for i, o in enumerate(report["outages"]):
            a = o["at_s"] / 60
            b = a + (o["down_s"] or o["planned_s"]) / 60
            if minute_axis:
                a, b = a - warmup_s / 60 + 0.5, b - warmup_s / 60 + 0.5
            ax.axvspan(a, b, color="tab:red", alpha=0.2, lw=0, label="outage" if i == 0 else None)

    ax1.plot(t_min, series["rss_mb"], lw=1)
    ax1.axvspan(0, warmup_s / 60, color="0.9", label="warm-up")
    outages(ax1, False)
    r = report["rss"]
    ax1.axhline(r["baseline_mb"] * (1 + r["target_pct"] / 100), color="r", ls=":", lw=1,
                label=f"baseline + {r['target_pct']:g} %")  # fmt: skip
    ax1.set_xlabel("time (min)")
    ax1.set_ylabel("service RSS (MB)")
    ax1.set_title(f"RSS: {r['growth_after_warmup_pct']:+.2f} % after warm-up", fontsize=10)
    ax1.legend(fontsize=8)

    ax2.plot(t_min, series["threads"], lw=1, label="threads")
    ax2.plot(t_min, series["fds"], lw=1, label="open fds")
    outages(ax2, False)
    ax2.set_xlabel("time (min)")
    ax2.set_ylabel("count")
    ax2.set_title("service threads and file descriptors", fontsize=10)
    ax2.legend(fontsize=8)

    mins = report["latency_per_minute"]
    x = [mm["minute"] for mm in mins]
    for q, style in (("p50", "-o"), ("p95", "-s"), ("p99", "-^")):
        ax3.plot(x, [mm["e2e_ms"].get(q, np.nan) for mm in mins], style, ms=3, label=f"e2e {q}")
    ax3.plot(x, [mm["worker_total_ms"].get("p50", np.nan) for mm in mins], "--", lw=1,
             label="worker total p50")  # fmt: skip
    outages(ax3, True)
    ax3.set_xlabel("minute after warm-up")
    ax3.set_ylabel("latency at the fast viewers (ms)")
    ax3.set_title(f"drift {report['latency_drift_ms_per_min']} ms/min (p50)", fontsize=10)
    ax3.legend(fontsize=8)

    for name, v in report["viewers"].items():
        pm = v["frame_age_per_minute"]
        xm = [p["minute"] for p in pm]
        line = ax4.plot(xm, [np.nan if p["p50_ms"] is None else p["p50_ms"] for p in pm], "-o",
                        ms=3, label=f"{name} p50")[0]  # fmt: skip
        ax4.plot(xm, [np.nan if p["max_ms"] is None else p["max_ms"] for p in pm], ":",
                 color=line.get_color(), label=f"{name} max")  # fmt: skip
    ax4.axhline(OLD_FRAME_S * 1e3, color="r", ls=":", lw=1, label=f"{OLD_FRAME_S:g} s")
    outages(ax4, True)
    ax4.set_yscale("log")
    ax4.set_xlabel("minute after warm-up")
    ax4.set_ylabel("frame age at the viewer (ms)")
    ax4.set_title("frame age per viewer (slow: never acks)", fontsize=10)
    ax4.legend(fontsize=7, ncol=2)

    m, minutes = report["machine"], report["config"]["duration_s"] / 60
    title = (f"rtdecode soak: {minutes:g} min, {report['inputs']['origin']} models, "
             f"{report['config']['lanes']} lanes, {len(report['outages'])} outages")  # fmt: skip
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
    slow = next((k for k, v in report["viewers"].items() if v["slow"]), None)
    slow_pm = report["viewers"][slow]["frame_age_per_minute"] if slow else []
    rows = [
        [mm["minute"], mm["e2e_ms"].get("n", 0), mm["e2e_ms"].get("p50"), mm["e2e_ms"].get("p99"),
         mm["worker_total_ms"].get("p50"), mm["images_per_s"], mm["rss_mb"],
         slow_pm[i]["p50_ms"] if i < len(slow_pm) else None]
        for i, mm in enumerate(report["latency_per_minute"])
    ]  # fmt: skip
    header = ["minute", "frames (fast)", "e2e p50", "e2e p99", "worker p50", "images/s",
              "RSS MB", "slow age p50"]  # fmt: skip
    print(format_table(header, rows))
    old = f"frames_older_than_{OLD_FRAME_S:g}s"
    rows = [
        [k, v["frames"], v["missed_seq"], v["server_reported_drops"], v["reconnects"],
         v["frame_age_ms"].get("p50"), v["frame_age_ms"].get("p99"), v["frame_age_ms"].get("max"),
         v[old], ", ".join(f"{c}x{n}" for c, n in v["close_codes"].items()) or "-"]
        for k, v in report["viewers"].items()
    ]  # fmt: skip
    print()
    header = ["viewer", "frames", "missed", "drops", "reconnects", "age p50", "age p99",
              "age max", f"> {OLD_FRAME_S:g} s", "closes"]  # fmt: skip
    print(format_table(header, rows))
    if report["outages"]:
        rows = [
            [o["k"], round(o["at_s"] / 60, 2), o["planned_s"], o["down_s"], o["reader_gap_s"],
             o["reader_lost_samples"], o["restart_to_first_sample_s"], o["restart_to_first_frame_s"]]
            for o in report["outages"]
        ]  # fmt: skip
        header = ["outage", "at min", "planned s", "down s", "reader gap s", "lost samples",
                  "restart->1st sample s", "restart->1st frame s"]  # fmt: skip
        print()
        print(format_table(header, rows))
    rows = [
        [c["id"], c.get("sent"), c.get("dropped"), c.get("stale"), c.get("acked_seq"),
         c.get("first_seen_s"), "end" if c.get("last_seen_s") is None else c["last_seen_s"]]
        for c in report["server_clients"]
    ]  # fmt: skip
    print()
    print(format_table(["server client", "sent", "dropped", "stale", "acked seq",
                        "first seen s", "last seen s"], rows))  # fmt: skip
    r, rd, g = report["rss"], report["reader"], report["gaps"]
    print(
        f"\nRSS {r['baseline_mb']} -> {r['end_mb']} MB ({r['growth_after_warmup_pct']:+.2f} % "
        f"after warm-up; target < {r['target_pct']:g} %: {'met' if r['met'] else 'NOT met'}); "
        f"threads {report['threads']}, fds {report['fds']}"
    )
    print(
        f"samples lost: {g['samples_lost_total']} in {g['gaps_total']} gaps, "
        f"{g['samples_lost_in_outages']} in the {len(report['outages'])} outages, "
        f"{g['samples_lost_outside_outages']} outside them (target 0; "
        f"{len(g['gaps_outside_outages'])} gaps outside); gap messages complete: "
        f"{g['gap_messages_complete']}"
    )
    print(
        f"latency drift {report['latency_drift_ms_per_min']} ms/min; reader: {rd['samples']} "
        f"samples, {rd['reconnects']} reconnects, {rd['restarts']} restarts; windows skipped "
        f"{report['windower'].get('skipped')}; frame errors {report['worker']['frame_errors']}; "
        f"load {report['machine']['load_average_1min_start']} -> "
        f"{report['machine']['load_average_1min']}"
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--duration", type=float, default=600.0, help="seconds after the warm-up")
    p.add_argument("--warmup", type=float, default=60.0, help="seconds before RSS is compared")
    p.add_argument("--sample-s", type=float, default=5.0, help="seconds between RSS samples")
    p.add_argument("--restarts", type=int, default=10, help="source outages after the warm-up")
    p.add_argument(
        "--outage-s", type=float, default=5.0,
        help="typical outage length; each is drawn in 0.6-1.6 x this (by --seed)",
    )  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed of the outage lengths")
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
    try:
        plan = plan_outages(args.restarts, args.duration, args.warmup, args.outage_s, args.seed)
    except ValueError as exc:
        print(f"soak: {exc}", file=sys.stderr)
        return 2
    use_local_config()
    load_start = round(os.getloadavg()[0], 2)
    sim = ROOT / "data" / "sim"
    if args.data is None and (sim / "replay_raw.fif").is_file():
        args.data = sim  # the demo's replay, even when the encoder is built here
    with tempfile.TemporaryDirectory(prefix="rtdecode-soak-") as tmp:
        inputs = resolve_inputs(args, Path(tmp))
        print(
            f"soak: {inputs.origin} models, replay {inputs.replay}, {args.warmup:g} s warm-up "
            f"+ {args.duration:g} s, {LANES} lanes, 3 viewers (1 slow, never acking), "
            f"{len(plan)} outages of {', '.join(f'{x:g}' for _, x in plan) or '-'} s",
            flush=True,
        )
        m = soak(
            inputs, duration_s=args.duration, warmup_s=args.warmup, sample_s=args.sample_s,
            device=args.device, plan=plan,
        )  # fmt: skip
    config = {
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "sample_s": args.sample_s,
        "device": args.device,
        "lanes": LANES,
        "restarts": args.restarts,
        "outage_s": args.outage_s,
        "outage_spread": list(OUTAGE_SPREAD),
        "seed": args.seed,
        "outage_plan": [{"at_s": round(a, 2), "planned_s": b} for a, b in plan],
        "viewers": "2 fast (ack every frame) + 1 slow (1 message/s, 4 KiB receive buffer, "
        "max_queue=1, never acks)",
        "replay": "rtdecode replay --loop --counter, killed with SIGKILL for each outage",
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
