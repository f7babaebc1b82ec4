"""The live decoding curve with and without integrating consecutive windows
(``serve --smooth-s``): `rtdecode evaluate-online` once per time constant on the same
held-out recording, the best lag bin and the whole curve of each, as JSON and a PNG.

    python bench/smoothing.py [--ckpt models/demo/encoder] [--recording data/sim/replay_raw.fif]
        [--subject 01] [--taus 0 0.1 0.2 0.4] [--speed 2]
        [--json docs/results/smoothing.json] [--png docs/results/smoothing.png]

Every run decodes the same windows (the ring holds the whole replay, windows are taken
in order), so the curves differ only by the integration; each run's online = offline
parity is kept in the JSON.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from common import format_table, machine_info, save_figure, write_json

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("LSLAPICFG", str(ROOT / "rtdecode" / "lsl" / "lsl_local.cfg"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt", type=Path, default=ROOT / "models" / "demo" / "encoder")
    parser.add_argument("--recording", type=Path, default=ROOT / "data" / "sim" / "replay_raw.fif")
    parser.add_argument("--subject", default="01")
    parser.add_argument("--retrieval-set", default="test")
    parser.add_argument("--taus", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.4])
    parser.add_argument("--speed", type=float, default=2.0)
    parser.add_argument("--json", type=Path, default=ROOT / "docs" / "results" / "smoothing.json")
    parser.add_argument("--png", type=Path, default=ROOT / "docs" / "results" / "smoothing.png")
    args = parser.parse_args(argv)

    from tqdm.auto import tqdm

    from rtdecode._utils.paths import portable_paths
    from rtdecode.lsl import use_local_config
    from rtdecode.training.online import evaluate_online

    use_local_config()
    runs = []
    for tau in tqdm(args.taus, desc="time constants", unit="run"):
        report = evaluate_online(
            args.ckpt, args.recording, subject=args.subject, retrieval_set=args.retrieval_set,
            speed=args.speed, smooth_s=tau, progress=False,
        )
        parity = report["parity"]
        runs.append({
            "smooth_s": tau,
            "best": report["best"],
            "per_lag": report["per_lag"],
            "chance_top5": report["chance_top5"],
            "n_candidates": report["n_candidates"],
            "n_ranked": report["n_ranked"],
            "parity": {k: parity[k] for k in ("n_windows", "max_rel_err", "ranks_equal",
                                              "n_late_marker_windows")},
        })
    result = portable_paths({
        "checkpoint": str(args.ckpt.resolve()),
        "recording": str(args.recording.resolve()),
        "subject": args.subject,
        "retrieval_set": args.retrieval_set,
        "speed": args.speed,
        "runs": runs,
        "machine": machine_info(),
    })
    write_json(args.json, result)
    rows = [[f"{r['smooth_s']:.2f}", f"{r['best']['lag_s'] * 1e3:.0f}",
             f"{100 * r['best']['top5']:.1f}", f"{r['best']['median_rank']:.0f}",
             str(r["parity"]["ranks_equal"])] for r in runs]
    print(format_table(["smooth_s", "best bin (ms)", "top-5 %", "median rank", "ranks equal"], rows))
    if args.png is not None:
        _plot(runs, args.png)
    return 0


def _plot(runs: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.8))
    for r in runs:
        lags = [row["lag_s"] * 1e3 for row in r["per_lag"]]
        ax.plot(lags, [100 * row["top5"] for row in r["per_lag"]], marker=".",
                label=f"smooth {r['smooth_s']:g} s" if r["smooth_s"] else "each window alone")
    ax.axhline(100 * runs[0]["chance_top5"], color="grey", ls=":", label="chance")
    ax.axvspan(0, 500, color="0.92", zorder=0)
    ax.set_xlabel("window end after image onset (ms)")
    ax.set_ylabel(f"top-5 among {runs[0]['n_candidates']} (%)")
    ax.set_title("Live decoding curve, integrating consecutive windows")
    ax.legend(fontsize=8)
    save_figure(fig, path, dpi=120)


if __name__ == "__main__":
    raise SystemExit(main())
