"""Choose the N170 model by leave-one-run-out validation on runs 1-4 only.

    .venv/bin/python models/n170/select_model.py --json models/n170/selection.json

Reads ``models/n170/train_runs.toml`` (runs 1-4; runs 5 and 6, the example's test
split, are never read). For each preprocessing (highpass cut-off; streaming, as the
live service runs it) and each window (start after onset, length), a ridge from the
preprocessed window to the category's mean image embedding is fitted on three runs and
scored on the fourth, four times; the mean AUC (face vs house) and top-1 over the four
held-out runs rank the candidates. The Riemannian model (``riemann`` preset: Xdawn
covariances, tangent space, ridge onto the embedding) is scored the same way on each
preprocessing, for epoch-long windows, Xdawn filter counts and covariance estimators
(``RIEMANN_*``). The deep model (``demo`` preset) is scored on the best ridge setting.
The best candidate of the three families by mean held-out AUC is written to
``models/n170/recipe.toml`` by hand from this script's output (see
docs/results/real_eeg.md).

Uses the library's own pieces: the card loader, ``load_epochs_for`` (streamed windows,
as ``rtdecode train`` cuts them), ``fit_scaler``/``preprocess_windows``, the category
targets (``CategoryGallery``) and ``retrieval_metrics``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
CARD = HERE / "train_runs.toml"
HIGHPASS_HZ = (0.1, 1.0)
LOWPASS_HZ = 30.0
#: (model rate, lowpass cut-off): the paper's 120 Hz, or 64 Hz (fewer ridge features)
RATES = ((120.0, 30.0), (64.0, 20.0))
#: (start after onset, length, baseline within the window or None), in s
WINDOWS = ((0.0, 0.6, None), (0.05, 0.45, None), (0.1, 0.3, None), (0.1, 0.25, None),
           (0.15, 0.25, None), (0.0, 0.8, None), (-0.1, 0.5, (0.0, 0.1)),
           (-0.1, 0.7, (0.0, 0.1)), (-0.1, 0.9, (0.0, 0.1)))
IMAGE_ENCODER = "handcrafted"
#: riemann: (start after onset, length) in s, Xdawn filters per class, (estimator, shrinkage)
RIEMANN_WINDOWS = ((0.0, 0.5), (0.05, 0.55), (0.1, 0.5), (0.0, 0.6), (0.0, 0.8), (-0.1, 0.8),
                   (-0.1, 0.9))
RIEMANN_FILTERS = (2, 4)
RIEMANN_COVARIANCES = (("oas", 0.0), ("scm", 0.05))


def _folds(es, pre_for, start_s, window_s):
    """Per held-out run: its index, the masks, and the preprocessed windows of each side.

    The scaler is fitted on the three training runs only.
    """
    from rtdecode.training.encoder import fit_scaler, preprocess_windows

    for r in np.unique(es.recording_index):
        tr, va = es.recording_index != r, es.recording_index == r
        pre = pre_for(es.ch_names)
        fit_scaler(es.select(tr), pre, start_s, window_s)
        xt = preprocess_windows(es.select(tr), pre, start_s, window_s)
        xv = preprocess_windows(es.select(va), pre, start_s, window_s)
        yield int(r), tr, va, xt, xv


def _targets(es, gallery, encoder):
    from rtdecode.encoder.metrics import fit_target_stats, standardize
    from rtdecode.training.encoder import image_targets

    Y = image_targets(gallery, encoder, list(es.image_ids), progress=False)
    stats = fit_target_stats(Y)
    cands = standardize(gallery.embeddings(encoder, progress=False), stats)
    truth = np.array([gallery.index(i) for i in es.image_ids])
    return standardize(Y, stats), cands, truth, Y


def ridge_cv(es, pre_for, start_s, window_s, gallery, encoder):
    """Leave-one-run-out ridge: mean AUC / top-1 over the held-out runs."""
    from rtdecode.encoder.metrics import retrieval_metrics
    from rtdecode.training.evaluate import ridge_baseline

    Y, cands, truth, _ = _targets(es, gallery, encoder)
    per_run = []
    for r, tr, va, xt, xv in _folds(es, pre_for, start_s, window_s):
        pred, alpha = ridge_baseline(xt, Y[tr], xv)
        m = retrieval_metrics(pred, cands, truth[va], ks=(1,))
        per_run.append({"run": Path(es.recordings[r]).name, "auc": m["auc"], "top1": m["top1"],
                        "alpha": alpha})
    return per_run


def riemann_cv(es, pre_for, start_s, window_s, gallery, encoder, options):
    """Leave-one-run-out riemann model (``riemann`` preset with ``options``)."""
    import torch

    from rtdecode.encoder.metrics import retrieval_metrics
    from rtdecode.encoder.presets import get_preset
    from rtdecode.encoder.riemann import fit_riemann
    from rtdecode.training.evaluate import RIDGE_ALPHAS

    Y, cands, truth, _ = _targets(es, gallery, encoder)
    labels = np.asarray(es.image_ids)
    per_run = []
    for r, tr, va, xt, xv in _folds(es, pre_for, start_s, window_s):
        model, alpha = fit_riemann(xt, Y[tr], labels[tr], es.positions_2d,
                                   get_preset("riemann").replace(**options), RIDGE_ALPHAS)
        with torch.no_grad():
            pred = model(torch.from_numpy(xv))["clip"].numpy()
        m = retrieval_metrics(pred, cands, truth[va], ks=(1,))
        per_run.append({"run": Path(es.recordings[r]).name, "auc": m["auc"], "top1": m["top1"],
                        "alpha": alpha})
    return per_run


def deep_cv(es, pre_for, start_s, window_s, gallery, encoder, max_epochs):
    """Leave-one-run-out deep model (``demo`` preset, one fixed window)."""
    from rtdecode.encoder.metrics import retrieval_metrics, standardize
    from rtdecode.training.encoder import load_recipe, predict, train_arrays

    _, _, truth, Y = _targets(es, gallery, encoder)
    per_run = []
    for r, tr, va, xt, xv in _folds(es, pre_for, start_s, window_s):
        rc = load_recipe({"preset": "demo", "window_s": window_s, "window_start_s": start_s,
                          "window_sampling": "fixed", "max_epochs": max_epochs,
                          "val_fraction": 0.0, "batch_size": 64, "seed": 0})
        fit = train_arrays(
            xt, Y[tr], positions=es.positions_2d,
            subject_index=np.zeros(int(tr.sum()), dtype=np.int64), n_subjects=1,
            groups=np.asarray(es.image_ids)[tr], recipe=rc, device="cpu", progress=False)
        pred = predict(fit.model, xv, np.zeros(int(va.sum()), dtype=np.int64))["clip"]
        cands = standardize(gallery.embeddings(encoder, progress=False), fit.target_stats)
        m = retrieval_metrics(pred, cands, truth[va], ks=(1,))
        per_run.append({"run": Path(es.recordings[r]).name, "auc": m["auc"], "top1": m["top1"]})
    return per_run


def main() -> None:
    """Score every candidate and write the JSON."""
    from rtdecode.images import image_encoder_for
    from rtdecode.images.categories import open_gallery
    from rtdecode.signal import PreprocessConfig, Preprocessor
    from rtdecode.training.encoder import load_epochs_for

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path, default=HERE / "selection.json")
    ap.add_argument("--deep-epochs", type=int, default=0,
                    help="also score the deep model on the best ridge setting (0: skip)")
    ap.add_argument("--keep-deep", type=Path, default=None, metavar="JSON",
                    help="take the deep rows from an earlier selection JSON instead of "
                         "training them again (the same data, folds and seed)")
    args = ap.parse_args()
    encoder = image_encoder_for({"encoder": IMAGE_ENCODER})
    rows, loaded = [], {}
    t0 = time.perf_counter()
    best = None
    for (rate, lp), hp, (start_s, window_s, base) in itertools.product(RATES, HIGHPASS_HZ,
                                                                        WINDOWS):
        def pre_for(names, hp=hp, rate=rate, lp=lp, base=base):
            return Preprocessor(PreprocessConfig(
                ch_names=tuple(names), sfreq_model_hz=rate, highpass_hz=hp, lowpass_hz=lp,
                baseline_s=base, streaming=True))
        key = (rate, lp, hp)
        if key not in loaded:
            es = load_epochs_for(CARD, pre_for, tmin_s=-0.2, tmax_s=1.0, progress=False)
            assert not es.test_mask.any()  # runs 1-4 only: the card has no test split
            loaded = {key: es}
        es = loaded[key]
        gallery = open_gallery(es.gallery_root, es.labels)
        if True:
            per_run = ridge_cv(es, pre_for, start_s, window_s, gallery, encoder)
            row = {"model": "ridge", "sfreq_model_hz": rate, "highpass_hz": hp,
                   "lowpass_hz": lp, "baseline_s": base,
                   "window_start_s": start_s, "window_s": window_s,
                   "auc": float(np.mean([p["auc"] for p in per_run])),
                   "top1": float(np.mean([p["top1"] for p in per_run])), "per_run": per_run}
            rows.append(row)
            print(f"ridge {rate:g} Hz lp={lp:g} hp={hp:<4} baseline={base} window {start_s:.2f}+{window_s:.2f} s: AUC {row['auc']:.3f} "
                  f"top-1 {row['top1']:.3f}  ({time.perf_counter() - t0:.0f} s)", flush=True)
            if best is None or row["auc"] > best[0]["auc"]:
                best = (row, es, pre_for, gallery)
        if (start_s, window_s, base) != WINDOWS[-1]:
            continue  # the riemann candidates: once per preprocessing
        for (r_start, r_len), n_filters, (est, shrink) in itertools.product(
                RIEMANN_WINDOWS, RIEMANN_FILTERS, RIEMANN_COVARIANCES):
            options = {"riemann_filters": n_filters, "riemann_estimator": est,
                       "riemann_shrinkage": shrink}
            per_run = riemann_cv(es, pre_for, r_start, r_len, gallery, encoder, options)
            row = {"model": "riemann", "sfreq_model_hz": rate, "highpass_hz": hp,
                   "lowpass_hz": lp, "baseline_s": None, "window_start_s": r_start,
                   "window_s": r_len, **options,
                   "auc": float(np.mean([p["auc"] for p in per_run])),
                   "top1": float(np.mean([p["top1"] for p in per_run])), "per_run": per_run}
            rows.append(row)
            print(f"riemann {rate:g} Hz lp={lp:g} hp={hp:<4} window {r_start:.2f}+{r_len:.2f} s "
                  f"{n_filters} filters {est}+{shrink:g}: AUC {row['auc']:.3f} top-1 "
                  f"{row['top1']:.3f}  ({time.perf_counter() - t0:.0f} s)", flush=True)
    if args.deep_epochs:
        row, es, pre_for, gallery = best
        per_run = deep_cv(es, pre_for, row["window_start_s"], row["window_s"], gallery, encoder,
                          args.deep_epochs)
        deep = {**{k: row[k] for k in ("sfreq_model_hz", "highpass_hz", "lowpass_hz",
                                        "baseline_s", "window_start_s", "window_s")}, "model": "deep (demo preset)",
                "max_epochs": args.deep_epochs,
                "auc": float(np.mean([p["auc"] for p in per_run])),
                "top1": float(np.mean([p["top1"] for p in per_run])), "per_run": per_run}
        rows.append(deep)
        print(f"deep on the best ridge setting: AUC {deep['auc']:.3f} top-1 {deep['top1']:.3f}")
    if args.keep_deep:
        rows += [r for r in json.loads(args.keep_deep.read_text())["candidates"]
                 if r["model"].startswith("deep")]
    rows.sort(key=lambda r: -r["auc"])
    out = {"card": str(CARD.relative_to(HERE.parents[1])), "validation": "leave-one-run-out over runs 1-4",
           "image_encoder": IMAGE_ENCODER, "chance_top1": 0.5, "chance_auc": 0.5,
           "best": {k: v for k, v in rows[0].items() if k != "per_run"}, "candidates": rows}
    args.json.write_text(json.dumps(out, indent=1) + "\n")
    print(f"best: {out['best']}  -> {args.json}")


if __name__ == "__main__":
    main()
