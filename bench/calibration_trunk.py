"""Selecting calibrate's trunk learning rate, on training images only.

``rtdecode calibrate`` learns the new subject's layer and fine-tunes the shared trunk at
a fraction of its learning rate (``trunk_lr_scale``). This benchmark is how that default
(``CALIBRATION_TRUNK_LR_SCALE``) was chosen: for each fraction (0 = the trunk frozen) the
base checkpoint is calibrated to the subject from its first M minutes (10 by default,
the issue's target amount), and scored on a **validation view**
(``calibration_curve.validation_view``): the subject's last recording, whose training
trials the first minutes do not reach, relabelled as test trials, its test trials left
out. Retrieval is among those trials' images, single trials, at the best window
position of ``evaluate``'s time-resolved curve. The test images are never scored here:
they are kept for the reported curve (``bench/calibration_curve.py``).

    PYTHONPATH=. LSLAPICFG=rtdecode/lsl/lsl_local.cfg nice -n 10 .venv/bin/python \\
        bench/calibration_trunk.py --base models/demo/encoder --data data/sim --subject 04 \\
        --json docs/results/calibration_trunk.json

Writes JSON (one row per fraction, written as each finishes; ``--resume`` keeps the rows
of an earlier run with the same settings) and prints a table.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from calibration_curve import (  # bench/calibration_curve.py, beside this script
    CURVE_RANGE_S,
    label_of,
    resume_rows,
    score,
    subject_arguments,
    subject_recordings,
    validation_view,
)
from common import format_table, machine_info, write_json

#: The fractions compared (0: only the subject's layer learns).
SCALES = (0.0, 0.03, 0.1, 0.3)


def _check_minutes(data_dir: Path, subject: str, minutes: float) -> None:
    """Refuse minutes that reach into the last recording (the validation trials)."""
    _, durations = subject_recordings(data_dir, subject)
    if minutes * 60.0 >= sum(durations[:-1]):
        raise ValueError(
            f"The first {minutes:g} minutes reach into {subject}'s last recording, whose "
            f"training trials are the validation trials; give --minutes below "
            f"{sum(durations[:-1]) / 60.0:.1f} (its earlier recordings' length)."
        )


def run(base: str | Path, data_dir: str | Path, subject: str, *, minutes: float = 10.0,
        scales: Sequence[float] = SCALES, curve_range_s: tuple[float, float] = CURVE_RANGE_S,
        work: str | Path = "runs/calibration-trunk", json_out: str | Path | None = None,
        resume: bool = False, device: str = "auto", command: str | None = None,
        progress: bool = True) -> dict[str, Any]:
    """Calibrate at each fraction, score on the validation view; the best fraction.

    Returns
    -------
    dict
        ``rows`` (``trunk_lr_scale``, ``top5``, ``top1``, ``median_rank``, ``lag_s``,
        ``seconds``) and ``best`` (the fraction of the highest top-5, the smallest of equals).
    """
    from tqdm.auto import tqdm

    from rtdecode.training.calibrate import calibrate

    name = f"sub-{str(subject).removeprefix('sub-')}"
    base, data_dir, work = Path(base), Path(data_dir), Path(work)
    _check_minutes(data_dir, name, minutes)
    view, n_val = validation_view(data_dir, name, work / "view-validation")
    settings = {"base": str(base), "data": str(data_dir), "subject": name,
                "minutes": float(minutes), "curve_range_s": list(curve_range_s)}
    result: dict[str, Any] = {
        **settings, "command": command, "n_validation_trials": n_val,
        "validation": ("the subject's last recording, training trials relabelled as test "
                       "trials, test trials left out; evaluate's single-trial retrieval among "
                       "those trials' images at the best window position over curve_range_s"),
        "machine": machine_info(), "rows": [],
    }
    path = None if json_out is None else Path(json_out)
    resume_rows(result, path, settings, resume)
    done = {r["trunk_lr_scale"] for r in result["rows"]}
    for scale in tqdm([s for s in scales if float(s) not in done], desc="trunk fractions",
                      disable=not progress):
        out = work / f"calibrated-{label_of(minutes)}-trunk{scale:g}"
        t0 = time.perf_counter()
        calibrate(base, data_dir, name, minutes, out, trunk_lr_scale=float(scale),
                  device=device, progress=False)
        seconds = time.perf_counter() - t0
        best, report = score(out, view, name, tuple(curve_range_s), device)
        result["rows"].append({"trunk_lr_scale": float(scale), "top5": best["top5"],
                               "top1": best["top1"], "median_rank": best["median_rank"],
                               "lag_s": best["lag_s"], "n_trials": report["n_test_trials"],
                               "n_images": report["n_test_images"],
                               "chance_top5": report["time_resolved"]["chance_top5"],
                               "calibration_seconds": round(seconds, 1), "checkpoint": out})
        result["rows"].sort(key=lambda r: r["trunk_lr_scale"])
        if path is not None:
            write_json(path, result)
    rows = result["rows"]
    if rows:
        top = max(r["top5"] for r in rows)
        result["best"] = min(r["trunk_lr_scale"] for r in rows if np.isclose(r["top5"], top))
    if path is not None:
        write_json(path, result)
    return result


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    import shlex
    import sys

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    subject_arguments(ap)
    ap.add_argument("--minutes", type=float, default=10.0, help="calibration minutes")
    ap.add_argument("--scales", default=",".join(f"{s:g}" for s in SCALES),
                    help="trunk_lr_scale values, comma-separated")
    ap.add_argument("--work", default="runs/calibration-trunk", help="views and checkpoints")
    ap.add_argument("--json", default="docs/results/calibration_trunk.json")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--resume", action="store_true",
                    help="keep the rows of an earlier run with the same settings")
    args = ap.parse_args(argv)
    scales = [float(v) for v in args.scales.split(",") if v.strip()]
    command = " ".join(["bench/calibration_trunk.py",
                        *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    result = run(args.base, args.data, args.subject, minutes=args.minutes, scales=scales,
                 work=args.work, json_out=args.json, resume=args.resume, device=args.device,
                 command=command)
    print(format_table(["trunk_lr_scale", "top-5 %", "top-1 %", "median rank", "window end ms",
                        "calibration s"],
                       [[f"{r['trunk_lr_scale']:g}", 100 * r["top5"], 100 * r["top1"], r["median_rank"],
                         1e3 * r["lag_s"], r["calibration_seconds"]] for r in result["rows"]],
                       floatfmt=".1f"))
    print(f"best trunk_lr_scale: {result.get('best')}")
    return result


if __name__ == "__main__":
    main()
