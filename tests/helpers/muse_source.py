"""A live Muse stream as muse-lsl publishes it, for tests, run as a subprocess.

    python tests/helpers/muse_source.py --name Muse --csv RUN.csv [--speed 1] [--seconds 20]

The outlet is built as muse-lsl's ``stream()`` builds it (muselsl/stream.py), with pylsl
directly, as that peer does: ``StreamInfo(name, "EEG", 5, 256, "float32",
"Muse<address>")``, ``desc/manufacturer = Muse``, and per channel ``label`` (TP9 AF7 AF8
TP10 Right AUX), ``unit = microvolts``, ``type = EEG``; chunks of 12 samples. The
samples are the rows of an eeg-notebooks CSV (values in µV, as recorded), pushed at
``256 * speed`` samples per second, stamped with the LSL clock. It waits for a
consumer, prints ``{"event": "ready"}`` then ``{"event": "done", "n": N}`` on stdout.
The caller sets ``LSLAPICFG`` (the tests' conftest does).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

MUSE_CHANNELS = ("TP9", "AF7", "AF8", "TP10", "Right AUX")
MUSE_RATE_HZ = 256
CHUNK = 12  # muse-lsl's LSL_EEG_CHUNK


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--name", default="Muse")
    p.add_argument("--csv", required=True)
    p.add_argument("--speed", type=float, default=1.0)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--wait-consumer-s", type=float, default=30.0)
    args = p.parse_args()
    if not os.environ.get("LSLAPICFG"):
        sys.exit("muse_source.py: set LSLAPICFG (the loopback-only configuration) first.")
    from pylsl import StreamInfo, StreamOutlet, local_clock

    rows = np.loadtxt(args.csv, delimiter=",", skiprows=1, usecols=range(1, 6),
                      max_rows=int(args.seconds * MUSE_RATE_HZ), dtype=np.float32)
    info = StreamInfo(args.name, "EEG", len(MUSE_CHANNELS), MUSE_RATE_HZ, "float32",
                      "Muse00:55:DA:B0:00:01")
    info.desc().append_child_value("manufacturer", "Muse")
    channels = info.desc().append_child("channels")
    for c in MUSE_CHANNELS:
        channels.append_child("channel").append_child_value("label", c).append_child_value(
            "unit", "microvolts").append_child_value("type", "EEG")
    outlet = StreamOutlet(info, CHUNK)
    print(json.dumps({"event": "ready"}), flush=True)
    if not outlet.wait_for_consumers(args.wait_consumer_s):
        print(json.dumps({"event": "no_consumer"}), flush=True)
        return 3
    rate = MUSE_RATE_HZ * args.speed
    t0 = local_clock()
    for start in range(0, len(rows), CHUNK):
        chunk = rows[start:start + CHUNK]
        due = t0 + (start + len(chunk)) / rate
        while local_clock() < due:
            time.sleep(min(0.005, max(0.0, due - local_clock())))
        stamps = [t0 + (start + k) / rate for k in range(len(chunk))]
        outlet.push_chunk(chunk.tolist(), stamps)
    print(json.dumps({"event": "done", "n": len(rows)}), flush=True)
    time.sleep(1.0)  # let the consumer take the last chunk
    return 0


if __name__ == "__main__":
    sys.exit(main())
