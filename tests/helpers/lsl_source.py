"""A synthetic LSL data source for tests and benchmarks, run as a subprocess.

    python tests/helpers/lsl_source.py --name NAME [--source-id ID] [--n-channels 306]
        [--sfreq 1200] [--chunk 12] [--counter] [--duration 10] [--speed 1]
        [--markers-every-s 1] [--nan-at 600 ...] [--inf-at 900 ...] [--drop-at 1200
        --drop-n 30] [--backwards-at 1500 --backwards-s 0.05] [--irregular]
        [--format float32|double64|string] [--no-desc] [--marker-ids ID ...]
        [--marker-format json|string|code] [--trigger-channel NAME]
        [--clock-drift 0.0005 [--stamp-clock lsl|source]]

Sample ``i`` of channel ``c`` is a pure function of ``(i, c)``, and sample ``i`` is
stamped ``t0 + i / (sfreq * speed)``: two runs at different speeds carry the same data.

``--clock-drift D`` gives the source a sample clock off by the fraction ``D`` against the
LSL clock (``0.0005``: 0.05 % fast), as an amplifier's crystal is: it still declares
``sfreq`` but acquires (and pushes) ``sfreq * (1 + D)`` samples per LSL second. Samples are
stamped with the LSL time they were acquired at (``--stamp-clock lsl``, what an outlet
that stamps with ``local_clock()`` does), or with the source's own clock,
``t0 + i / sfreq`` (``--stamp-clock source``), which then drifts from the LSL clock by
``D`` seconds per second.
The source waits for its first consumer(s) before it pushes sample 0, so a reader that
connects first receives every sample. With ``--counter`` a last channel ``RTD_COUNTER``
holds ``i``. Markers go to a second stream ``<name>-markers`` (JSON strings, stamped with
the time of the sample they mark: ``{"image_id": "img_003", "trial_type": "exp",
"sample": i}``). ``--marker-format string`` sends the image id as plain text, ``code``
the marker's code (``1 + n % len(marker_ids)``). ``--trigger-channel NAME`` adds a channel
(before the counter) that holds that code for 3 samples from each marker's sample.

It prints one JSON line per event on stdout (``ready``, ``started``, ``done``), keeps the
outlets open ``--linger-s`` seconds after the last sample, then exits. The caller must
set ``LSLAPICFG`` (the tests' conftest does; children inherit it).

Tests start it with :class:`SourceProcess` (``from lsl_source import SourceProcess``)
and wait for things with :func:`poll`.
"""

from __future__ import annotations

import argparse
import json
import os
import signal as _signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def poll(condition, timeout_s: float, what: str):
    """Wait for ``condition()`` to be truthy, checking every 10 ms, up to a deadline;
    returns its value (AssertionError naming ``what`` on timeout)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.01)
    raise AssertionError(f"Timed out after {timeout_s} s waiting for {what}.")


class SourceProcess:
    """This script in a subprocess; a context manager that kills it on exit.

    ``SourceProcess("name", counter=True, duration=3, nan_at=[5, 9])`` runs
    ``lsl_source.py --name name --counter --duration 3 --nan-at 5 9``.
    """

    def __init__(self, name: str, **options):
        self.name = name
        argv = [sys.executable, str(Path(__file__).resolve()), "--name", name]
        for key, value in options.items():
            flag = "--" + key.replace("_", "-")
            if value is True:
                argv.append(flag)
            elif isinstance(value, list | tuple):
                argv += [flag, *map(str, value)]
            elif value is not None and value is not False:
                argv += [flag, str(value)]
        self.argv = argv
        self.events: list[dict] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()

    def _read_stdout(self) -> None:
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            with self._cond:
                self.events.append(event)
                self._cond.notify_all()
        with self._cond:
            self.events.append({"event": "exit"})
            self._cond.notify_all()

    def wait_event(self, event: str, timeout_s: float = 30.0) -> dict:
        """The first ``event`` line printed (waits for it up to ``timeout_s``)."""

        def found():
            return next((e for e in self.events if e["event"] in (event, "exit")), None)

        with self._cond:
            got = self._cond.wait_for(found, timeout_s)
        if not got or got["event"] != event:
            raise TimeoutError(
                f"Source {self.name!r} printed no {event!r} within {timeout_s:g} s "
                f"(events: {self.events}, exit code {self.proc.poll()})."
            )
        return got

    def kill(self) -> None:
        """SIGKILL: the source vanishes without closing anything, like a crash."""
        if self.proc.poll() is None:
            self.proc.send_signal(_signal.SIGKILL)
        self.proc.wait(10)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.kill()
        self._reader.join(5)  # EOF follows the kill
        self.proc.stdout.close()


def _say(event: str, **fields) -> None:
    print(json.dumps({"event": event, **fields}), flush=True)


def signal(first: int, n: int, n_channels: int) -> np.ndarray:
    """Samples [first, first + n) of the synthetic signal, float64 (n, n_channels)."""
    i = np.arange(first, first + n, dtype=np.float64)[:, None]
    c = np.arange(n_channels, dtype=np.float64)[None, :]
    # One sinusoid per channel (5..45 Hz at 1200 Hz), in tesla-like units.
    return 1e-12 * np.sin(2 * np.pi * (5 + c % 41) * i / 1200.0 + c)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", required=True)
    p.add_argument("--stype", default="MEG")
    p.add_argument("--source-id", default="")
    p.add_argument("--n-channels", type=int, default=306, help="data channels (+1 with --counter)")
    p.add_argument("--sfreq", type=float, default=1200.0)
    p.add_argument("--chunk", type=int, default=12, help="samples per push")
    p.add_argument("--counter", action="store_true")
    p.add_argument("--counter-start", type=int, default=0)
    p.add_argument("--duration", type=float, default=None, help="stream seconds (default: forever)")
    p.add_argument("--speed", type=float, default=1.0)
    p.add_argument("--markers-every-s", type=float, default=0.0)
    p.add_argument("--markers-first-s", type=float, default=0.5)
    p.add_argument("--nan-at", type=int, nargs="*", default=[])
    p.add_argument("--inf-at", type=int, nargs="*", default=[])
    p.add_argument("--drop-at", type=int, default=None, help="first sample not sent")
    p.add_argument("--drop-n", type=int, default=0)
    p.add_argument("--backwards-at", type=int, default=None)
    p.add_argument("--backwards-s", type=float, default=0.05)
    p.add_argument("--irregular", action="store_true", help="nominal rate 0")
    p.add_argument("--format", default="float32", choices=["float32", "double64", "string"])
    p.add_argument("--no-desc", action="store_true", help="no <channels> description")
    p.add_argument("--marker-ids", nargs="*", default=None,
                   help="image ids the markers cycle through (default img_000, img_001, ...)")
    p.add_argument("--clock-drift", type=float, default=0.0,
                   help="fraction by which the sample clock runs fast (+) or slow (-)")
    p.add_argument("--stamp-clock", default="lsl", choices=["lsl", "source"],
                   help="stamp samples with the LSL time of acquisition or the source clock")
    p.add_argument("--marker-format", default="json", choices=["json", "string", "code"])
    p.add_argument("--trigger-channel", default=None, help="add a trigger channel of this name")
    p.add_argument("--wait-consumer-s", type=float, default=30.0)
    p.add_argument("--linger-s", type=float, default=2.0)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if not os.environ.get("LSLAPICFG"):
        sys.exit("lsl_source.py: set LSLAPICFG (the loopback-only configuration) first.")
    from rtdecode.lsl.streams import COUNTER_CHANNEL, local_clock, make_info, make_outlet

    n_data = args.n_channels
    trig = [args.trigger_channel] if args.trigger_channel else []
    ch_names = [f"MEG{k:04d}" for k in range(n_data)] + trig
    ch_names += [COUNTER_CHANNEL] if args.counter else []
    n_ch = len(ch_names)
    info = make_info(
        args.name,
        args.stype,
        0.0 if args.irregular else args.sfreq,
        ch_names,
        ch_types=["mag"] * n_data + ["stim"] * len(trig) + (["misc"] if args.counter else []),
        units=["T"] * n_data + [""] * len(trig) + (["n/a"] if args.counter else []),
        source_id=args.source_id,
        channel_format=args.format,
        describe_channels=not args.no_desc,
    )
    outlet = make_outlet(info, chunk_size=0, max_buffered=60)
    marker_outlet = None
    if args.markers_every_s > 0 and not trig:
        minfo = make_info(
            f"{args.name}-markers",
            "Markers",
            0.0,
            ["marker"],
            source_id=f"{args.source_id}-markers" if args.source_id else "",
            channel_format="string",
        )
        marker_outlet = make_outlet(minfo)
    _say("ready", name=args.name, n_channels=n_ch)

    deadline = time.monotonic() + args.wait_consumer_s
    for out in (outlet, marker_outlet):
        if out is not None and not out.wait_for_consumers(max(0.0, deadline - time.monotonic())):
            _say("no_consumer")
            return 3

    if not -0.1 < args.clock_drift < 0.1:
        sys.exit(f"lsl_source.py: --clock-drift {args.clock_drift} is not a small fraction.")
    # Samples per second of the LSL clock (the pace of pushing), and of the stamps.
    rate = args.sfreq * args.speed * (1.0 + args.clock_drift)
    stamp_rate = args.sfreq * args.speed if args.stamp_clock == "source" else rate
    n_total = None if args.duration is None else int(round(args.duration * args.sfreq))
    marker_every = int(round(args.markers_every_s * args.sfreq)) if marker_outlet or trig else 0
    marker_first = int(round(args.markers_first_s * args.sfreq))
    bad = {i: np.nan for i in args.nan_at} | {i: np.inf for i in args.inf_at}
    t0 = local_clock() + 0.01
    _say("started", t0=t0)
    first = 0
    n_markers = 0
    while n_total is None or first < n_total:
        n = args.chunk if n_total is None else min(args.chunk, n_total - first)
        idx = np.arange(first, first + n)
        ts = t0 + idx / stamp_rate
        if args.backwards_at is not None:
            ts = ts - args.backwards_s * (idx >= args.backwards_at)
        # Wait until the newest sample of the chunk has been "acquired".
        wait_s = t0 + (first + n - 1) / rate - local_clock()
        if wait_s > 0:
            time.sleep(wait_s)
        x = signal(first, n, n_ch)
        if trig:  # the code of the marker at or up to 2 samples before each sample
            for j, i in enumerate(idx):
                since = i - marker_first
                k = since // marker_every if marker_every else -1
                on = since >= 0 and since - k * marker_every < 3
                x[j, n_data] = 1 + k % len(args.marker_ids or [0] * 1000) if on else 0
        if args.counter:
            x[:, -1] = (idx + args.counter_start) % 2**24
        for i, value in bad.items():
            if first <= i < first + n:
                x[i - first, 0] = value
        keep = np.ones(n, dtype=bool)
        if args.drop_at is not None:
            keep &= ~((idx >= args.drop_at) & (idx < args.drop_at + args.drop_n))
        if keep.any():
            chunk = x[keep]
            if args.format == "string":
                outlet.push_chunk(
                    [[repr(float(v)) for v in row] for row in chunk], ts[keep].tolist()
                )
            else:
                outlet.push_chunk(
                    chunk.astype(np.float32 if args.format == "float32" else np.float64),
                    ts[keep].tolist(),
                )
        if marker_every:
            for i in idx:
                if i >= marker_first and (i - marker_first) % marker_every == 0:
                    image_id = (args.marker_ids[n_markers % len(args.marker_ids)]
                                if args.marker_ids else f"img_{n_markers:03d}")
                    payload = {"image_id": image_id, "trial_type": "exp", "sample": int(i)}
                    text = {
                        "json": json.dumps(payload),
                        "string": image_id,
                        "code": str(1 + n_markers % len(args.marker_ids or [0] * 1000)),
                    }[args.marker_format]
                    if marker_outlet is not None:
                        marker_outlet.push_sample([text], float(ts[i - first]))
                    n_markers += 1
        first += n
    _say("done", n_samples=first, n_markers=n_markers)
    time.sleep(args.linger_s)
    return 0


if __name__ == "__main__":
    sys.exit(main())
