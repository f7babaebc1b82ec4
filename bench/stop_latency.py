"""How long ``rtdecode replay`` and ``rtdecode record`` take to end after Ctrl-C while
two busy-loop processes load both cores (target: 2 s).

Each run: replay a 3 s MEG file in a loop, connect a consumer that takes some data and
then stops reading (it stays connected), record the stream with ``rtdecode record``,
Ctrl-C the recorder, then the replay. The time is from the signal to the end of the
process, so it includes the interpreter's own exit. tests/io/test_stop.py runs the same
scenario once with a looser bound.

    python bench/stop_latency.py [--runs 5] [--busy 2] [--json bench/results/stop_latency.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import uuid
from pathlib import Path

from common import RESULTS_DIR, format_table, machine_info, percentiles, write_json

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LSLAPICFG", str(ROOT / "rtdecode" / "lsl" / "lsl_local.cfg"))

from tests.helpers.recording import make_meg_file  # noqa: E402
from tests.helpers.stop import busy_cores, stop_replay_and_record  # noqa: E402

TARGET_S = 2.0
#: A run that takes longer than this is a failure to stop, recorded as such.
BOUND_S = 30.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--busy", type=int, default=2, help="busy-loop processes")
    parser.add_argument("--json", type=Path, default=RESULTS_DIR / "stop_latency.json")
    args = parser.parse_args(argv)

    runs = []
    machine_before = machine_info()
    with tempfile.TemporaryDirectory() as tmp:
        recording = make_meg_file(Path(tmp) / "meg3s_raw.fif", 3000)
        with busy_cores(args.busy, max_s=60.0 * args.runs + 120.0):
            for k in range(args.runs):
                name = f"rtd-stop-bench-{uuid.uuid4().hex[:8]}"
                out = Path(tmp) / f"run{k}_raw.fif"
                r = stop_replay_and_record(recording, out, name, BOUND_S)
                run = {
                    "replay_stop_s": round(r["replay_stop_s"], 3),
                    "record_stop_s": round(r["record_stop_s"], 3),
                    "replay_done_s": r["replay_done_s"] and round(r["replay_done_s"], 3),
                    "record_done_s": r["record_done_s"] and round(r["record_done_s"], 3),
                    "replay_code": r["replay_code"],
                    "record_code": r["record_code"],
                    "record_file_written": r["record_stdout"].strip() == str(out),
                }
                runs.append(run)
                print(f"run {k + 1}/{args.runs}: {run}", flush=True)
    machine = machine_info()
    machine["load_average_1min_before"] = machine_before["load_average_1min"]
    replay = percentiles([r["replay_stop_s"] for r in runs], qs=(50,))
    record = percentiles([r["record_stop_s"] for r in runs], qs=(50,))
    replay_done = percentiles([r["replay_done_s"] for r in runs if r["replay_done_s"]], qs=(50,))
    record_done = percentiles([r["record_done_s"] for r in runs if r["record_done_s"]], qs=(50,))
    worst = max(max(r["replay_stop_s"], r["record_stop_s"]) for r in runs)
    result = {
        "benchmark": "stop_latency",
        "command": "python bench/stop_latency.py " + " ".join(argv or sys.argv[1:]),
        "machine": machine,
        "busy_loops": args.busy,
        "scenario": (
            "replay --loop --counter of a 3 s, 21-channel 1 kHz FIF; a consumer connected "
            "(took 200 samples, then stopped reading); rtdecode record of the stream; "
            "Ctrl-C the recorder, then the replay; seconds from SIGINT to process end"
        ),
        "runs": runs,
        "replay_stop_s": replay,
        "record_stop_s": record,
        "replay_done_s": replay_done,
        "record_done_s": record_done,
        "note": (
            "*_done_s: Ctrl-C to the command's summary line (replay: outlets closed; record: "
            "file written); *_stop_s adds the interpreter's exit, which the machine's load "
            "stretches"
        ),
        "targets": {
            "stop_s": {
                "target": TARGET_S,
                "statistic": "max",
                "measured": worst,
                "met": worst <= TARGET_S,
            },
            "clean_exit": {
                "target": "replay 130, record 0 with its file",
                "met": all(
                    r["replay_code"] == 130 and r["record_code"] == 0 and r["record_file_written"]
                    for r in runs
                ),
            },
        },
    }
    write_json(args.json, result)
    rows = [
        ["replay", replay.get("p50"), replay.get("max"), replay_done.get("p50")],
        ["record", record.get("p50"), record.get("max"), record_done.get("p50")],
    ]
    print(format_table(["command", "stop p50 s", "stop max s", "own clean-up p50 s"], rows))
    print(f"target <= {TARGET_S} s (max): {'met' if worst <= TARGET_S else 'NOT met'}; "
          f"load {machine['load_average_1min']}; -> {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
