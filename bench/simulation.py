"""Benchmark of the simulated cohort: how long it takes, and how decodable it is.

For each difficulty it times ``simulate_cohort`` (wall and CPU time of this process), then,
per subject, fits a ridge readout (scikit-learn's RidgeCV, as ``rtdecode evaluate``'s
linear baseline) from a 250 ms window of the training trials to the images'
``handcrafted`` embeddings, and scores zero-shot retrieval among the test images at
several lags (window start after image onset): single trials and the per-image average
of the predictions. Windows are band-passed 0.5-40 Hz (causal, as online: a zero-phase
filter would smear post-onset responses into pre-onset windows), taken at 100 Hz and z-scored per channel with training statistics.

    PYTHONPATH=. LSLAPICFG=rtdecode/lsl/lsl_local.cfg python bench/simulation.py \
        --out /tmp/sim-bench --json bench/results/simulation.json

Writes JSON (``--json``) and prints a short table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from common import write_json  # bench/common.py, beside this script

LAGS_S = (-0.3, -0.2, 0.0, 0.1, 0.2, 0.3, 0.45, 0.55, 0.65, 0.8)
WINDOW_S = 0.25


def _simulate(out: Path, seed: int, n_subjects: int, difficulty: str, size: str) -> dict:
    from rtdecode.data.simulate import simulate_cohort

    t0, c0 = time.perf_counter(), time.process_time()
    simulate_cohort(out, seed=seed, n_subjects=n_subjects, difficulty=difficulty, size=size,
                    progress=False)
    du = sum(p.stat().st_size for p in out.rglob("*") if p.is_file() and p.stat().st_nlink == 1)
    return {"wall_s": round(time.perf_counter() - t0, 1),
            "cpu_s": round(time.process_time() - c0, 1), "disk_mb": round(du / 1e6)}


def _retrieval(data: Path, subject: str, lags_s=LAGS_S) -> dict:
    from rtdecode.evaluate import retrieval_scores, ridge_baseline
    from scipy.signal import butter, sosfilt

    from rtdecode.data.datasets import load_epochs
    from rtdecode.encoder.metrics import fit_target_stats, standardize
    from rtdecode.images import Gallery, get_image_encoder

    es = load_epochs(data, subjects=[subject], tmin_s=-0.5, tmax_s=1.1, progress=False)
    gallery = Gallery.from_folder(es.gallery_root)
    emb = np.asarray(gallery.embeddings(get_image_encoder("handcrafted"), progress=False),
                     dtype=np.float64).reshape(len(gallery.ids), -1)
    row = {i: k for k, i in enumerate(gallery.ids)}
    y = emb[[row[i] for i in es.image_ids]]
    train, test = np.flatnonzero(es.train_mask), np.flatnonzero(es.test_mask)
    stats = fit_target_stats(y[train])
    test_ids = sorted(set(np.asarray(es.image_ids)[test]))
    cand = standardize(emb[[row[i] for i in test_ids]], stats)
    sos = butter(4, [0.5, 40.0], btype="band", fs=es.sfreq_hz, output="sos")
    x = sosfilt(sos, es.X.astype(np.float64), axis=-1)[..., es.n_pad:]
    step = max(1, int(round(es.sfreq_hz / 100.0)))
    n_win = int(round(WINDOW_S * es.sfreq_hz))
    out = {"subject": f"sub-{subject}", "n_channels": int(es.X.shape[1]),
           "n_train": int(len(train)), "n_test": int(len(test)),
           "n_candidates": len(test_ids), "chance_top5": min(1.0, 5 / len(test_ids)),
           "lags": []}
    for lag in lags_s:
        start = int(np.searchsorted(es.times_s, lag - 1e-9))
        w = x[:, :, start:start + n_win:step]
        mu = w[train].mean(axis=(0, 2), keepdims=True)
        sd = w[train].std(axis=(0, 2), keepdims=True)
        w = ((w - mu) / sd).astype(np.float32)
        pred, alpha = ridge_baseline(w[train], standardize(y[train], stats), w[test])
        scores = retrieval_scores(pred, list(np.asarray(es.image_ids)[test]), test_ids, cand)
        out["lags"].append({
            "window_start_s": lag, "window_end_s": round(lag + WINDOW_S, 3),
            "single_top5": scores["single"]["top5"], "single_top1": scores["single"]["top1"],
            "average_top5": scores["average"]["top5"], "alpha": alpha,
        })
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True, help="scratch folder for the cohorts")
    p.add_argument("--difficulty", nargs="+", default=["demo", "paper"])
    p.add_argument("--size", default="full")
    p.add_argument("--subjects", type=int, default=4)
    p.add_argument("--score-subjects", nargs="+", default=["01", "02"],
                   help="subjects to score (sub-01 Neuromag, sub-02 CTF)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-simulation", action="store_true", help="score existing folders")
    p.add_argument("--json", type=Path, default=Path("bench/results/simulation.json"))
    args = p.parse_args()
    results = {"size": args.size, "n_subjects": args.subjects, "seed": args.seed,
               "window_s": WINDOW_S, "difficulties": {}}
    for diff in args.difficulty:
        folder = args.out / diff
        entry = {} if args.skip_simulation else _simulate(folder, args.seed, args.subjects,
                                                          diff, args.size)
        entry["scores"] = [_retrieval(folder, s) for s in args.score_subjects]
        results["difficulties"][diff] = entry
        print(f"\n{diff}: " + ", ".join(f"{k} {v}" for k, v in entry.items() if k != "scores"))
        print("window (s)      " + "  ".join(f"{s['subject']} single/avg" for s in entry["scores"]))
        for k, lag in enumerate(entry["scores"][0]["lags"]):
            cells = "  ".join(
                f"{100 * s['lags'][k]['single_top5']:5.1f} / {100 * s['lags'][k]['average_top5']:5.1f}"
                for s in entry["scores"])
            print(f"{lag['window_start_s']:+.2f}..{lag['window_end_s']:+.2f}    {cells}")
    write_json(args.json, results)
    print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
