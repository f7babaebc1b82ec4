"""Score an encoder checkpoint: ``rtdecode evaluate CKPT_DIR --data DIR``.

On the dataset's (zero-shot) test trials, with the checkpoint's own preprocessing and
window:

* retrieval by the CLIP head: top-1 / top-5 accuracy and relative median rank, on
  single trials and on the average of the predictions for the repeated presentations of
  each image, among two retrieval sets: ``test`` (the test images) and ``gallery``
  (the test images plus every other gallery image as distractors);
* the linear baseline of Benchetrit et al.: scikit-learn's RidgeCV from the flattened
  preprocessed window to the standardised embedding, fitted on the training trials;
* time-resolved retrieval: 250 ms windows slid across the epoch; at each shift, a ridge
  fitted for that shift and the deep model (trained at one shift) are scored, plotted to
  ``time_resolved.png``;
* ``examples.png``: the top-5 retrieved images of sample test images.

All numbers go into the returned dict (and ``--json``). Threading: runs in the caller's
thread.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rtdecode._utils.paths import portable_paths
from rtdecode.encoder.card import CheckpointCard
from rtdecode.encoder.metrics import (
    average_by_group,
    cosine_similarity,
    retrieval_metrics,
    standardize,
)
from rtdecode.encoder.presets import RIDGE_ALPHAS

if TYPE_CHECKING:
    from rtdecode.data.datasets import EpochSet

__all__ = ["evaluate", "retrieval_scores", "ridge_baseline"]

CURVE_RANGE_S = (-0.2, 1.0)


def retrieval_scores(
    pred: np.ndarray,
    image_ids: Sequence[str],
    candidate_ids: Sequence[str],
    candidates: np.ndarray,
) -> dict[str, dict[str, float]]:
    """Retrieval metrics on single trials and on per-image averages of the predictions.

    Parameters
    ----------
    pred : array, shape (n_trials, D)
        Predictions (standardised space).
    image_ids : sequence of str, length n_trials
        True image of each trial; every one must be in ``candidate_ids``.
    candidate_ids : sequence of str, length M
    candidates : array, shape (M, D)
        Standardised embeddings of the retrieval set.

    Returns
    -------
    dict
        ``{"single": metrics, "average": metrics}`` (see
        :func:`rtdecode.encoder.metrics.retrieval_metrics`); ``average`` also has
        ``n_repetitions_mean``.
    """
    index = {c: i for i, c in enumerate(candidate_ids)}
    missing = sorted({i for i in image_ids if i not in index})
    if missing:
        raise ValueError(f"Images {missing[:5]} are not in the retrieval set.")
    true = np.array([index[i] for i in image_ids])
    single = retrieval_metrics(pred, candidates, true)
    means, labels, counts = average_by_group(pred, list(image_ids))
    average = retrieval_metrics(means, candidates, np.array([index[i] for i in labels]))
    average["n_repetitions_mean"] = float(np.mean(counts))
    return {"single": single, "average": average}


def ridge_baseline(X_train: np.ndarray, Y_train: np.ndarray, X_test: np.ndarray,
                   alphas: Sequence[float] = RIDGE_ALPHAS) -> tuple[np.ndarray, float]:
    """Fit RidgeCV on flattened windows and predict the test windows.

    Parameters
    ----------
    X_train : array, shape (n, C, T)
    Y_train : array, shape (n, D) or (n, N, D)
        Standardised targets.
    X_test : array, shape (m, C, T)

    Returns
    -------
    pred : ndarray, float32, shape (m, ...) like ``Y_train``
    alpha : float
        The regularisation RidgeCV chose (efficient leave-one-out).
    """
    from rtdecode.encoder.model import fit_ridge  # the ridge preset's fit, too

    weight, bias, alpha = fit_ridge(X_train, Y_train, alphas)
    pred = X_test.reshape(len(X_test), -1).astype(np.float64) @ weight.T + bias
    return pred.astype(np.float32).reshape((len(X_test),) + Y_train.shape[1:]), alpha


def _subject_indices(card: CheckpointCard, epochs: EpochSet) -> np.ndarray:
    """Map the data's subjects onto the model's subject layers."""
    known = list(card.subjects)
    names = [epochs.subjects[i] for i in epochs.subject_index]
    if len(known) <= 1:
        return np.zeros(len(names), dtype=np.int64)
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise ValueError(
            f"The data has subjects {unknown} the checkpoint was not trained on (it knows "
            f"{known}); evaluate on its subjects."
        )
    return np.array([known.index(n) for n in names], dtype=np.int64)


def evaluate(
    ckpt_dir: str | Path,
    data_dir: str | Path,
    *,
    json_out: str | Path | None = None,
    plots_dir: str | Path | None = None,
    device: str = "auto",
    time_resolved: bool = True,
    hop_s: float = 0.05,
    curve_range_s: tuple[float, float] = CURVE_RANGE_S,
    n_examples: int = 6,
    subjects: Sequence[str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluate a checkpoint on a dataset's test trials.

    Parameters
    ----------
    ckpt_dir : path
        Encoder checkpoint folder.
    data_dir : path
        Dataset folder (as for ``rtdecode train``).
    json_out : path, optional
        Write the metrics there as JSON.
    plots_dir : path, optional
        Write ``time_resolved.png`` and ``examples.png`` there.
    device : str
        Device for the deep model (``"auto"``: CUDA when present).
    time_resolved : bool
        Slide the window across ``curve_range_s`` (ridge per shift + the model).
    hop_s : float
        Step between window starts for the time-resolved curve.
    curve_range_s : (float, float)
        Epoch span the sliding windows cover, relative to image onset.
    n_examples : int
        Test images shown in ``examples.png``.
    subjects : sequence of str, optional
        Score these of the checkpoint's subjects only (``"04"`` or ``"sub-04"``; default:
        all of them), e.g. a subject added by ``rtdecode calibrate``.
    progress : bool

    Returns
    -------
    dict
        ``summary`` (the headline numbers), ``retrieval`` (model and ridge, per retrieval
        set, single and averaged), ``time_resolved``, counts and plot paths.
    """
    from tqdm.auto import tqdm

    from rtdecode.decoding import check_window, gallery_space
    from rtdecode.encoder.checkpoint import open_checkpoint
    from rtdecode.training.encoder import (
        image_targets,
        load_epochs_for,
        predict,
        preprocess_windows,
    )

    model, card = open_checkpoint(ckpt_dir, device=device)
    window_s = check_window(card, allow_fixed_window=True)  # both samplings are scored here
    start_s = card.window.start_s
    tmin, tmax = start_s, start_s + window_s
    if time_resolved:
        tmin, tmax = min(tmin, curve_range_s[0]), max(tmax, curve_range_s[1])
    # The checkpoint's subjects (a cohort may hold others), one part per sensor system, each
    # read with its system's channels and preprocessing; the parts' predictions are pooled.
    # Streaming checkpoints: windows cut from each recording's streamed output, by sample.
    wanted = None if subjects is None else {card.subjects[card.subject_position(s)] for s in subjects}
    parts = []
    for system in card.systems:
        chosen = [n for n in system.subjects or card.subjects if wanted is None or n in wanted]
        if wanted is not None and not chosen:
            continue  # none of the subjects asked for reads this system
        pre = system.preprocessor()
        parts.append((load_epochs_for(
            data_dir, lambda names, pre=pre: pre, tmin_s=tmin, tmax_s=tmax,
            ch_names=list(system.ch_names), subjects=chosen or None, progress=progress), pre))
    es = parts[0][0]
    tests = [part.test for part, _ in parts]
    trains = [part.train for part, _ in parts]
    if sum(len(t) for t in tests) == 0:
        raise ValueError(f"{data_dir} has no test trials (trial_type 'test'); nothing to evaluate.")
    if es.gallery_root is None:
        raise ValueError(f"The images of {data_dir} were not found; retrieval needs the gallery.")
    # trials that name a category: retrieval among the categories' mean embeddings
    space = gallery_space(card, es.gallery_root, labels=es.labels, progress=progress)
    gallery, encoder, gallery_z = space.gallery, space.image_encoder, space.embeddings
    stats = card.target.stats
    test_ids = [str(i) for t in tests for i in t.image_ids]
    test_images = list(dict.fromkeys(test_ids))
    image_targets(gallery, encoder, test_images, progress=False)  # names missing ids
    sets = {
        "test": (test_images, gallery_z[[gallery.index(i) for i in test_images]]),
        "gallery": (list(gallery.ids), gallery_z),
    }
    s_test = [_subject_indices(card, t) for t in tests]

    def score(pred: np.ndarray) -> dict[str, Any]:
        return {name: retrieval_scores(pred, test_ids, ids, emb) for name, (ids, emb) in sets.items()}

    def windows(splits: list, offset_s: float) -> list[np.ndarray]:
        return [preprocess_windows(split, pre, offset_s, window_s)
                for split, (_, pre) in zip(splits, parts, strict=True)]

    def model_pred(xs: list[np.ndarray]) -> np.ndarray:
        return np.concatenate([predict(model, x, s)["clip"] for x, s in zip(xs, s_test, strict=True)])

    def ridge_pred(xrs: list[np.ndarray], xts: list[np.ndarray]) -> tuple[np.ndarray, list[float]]:
        # one ridge per sensor system: their windows have different channels
        fits = [ridge_baseline(xr, y, xt) for xr, y, xt in zip(xrs, Y_trains, xts, strict=True)]
        return np.concatenate([p for p, _ in fits]), [a for _, a in fits]

    X_test = windows(tests, start_s)
    pred_model = model_pred(X_test)
    results: dict[str, Any] = {"model": score(pred_model)}
    have_ridge = all(len(t) >= 2 for t in trains)
    if have_ridge:
        Y_trains = [standardize(image_targets(gallery, encoder, t.image_ids, progress=False), stats)
                    for t in trains]
        pred_ridge, alphas = ridge_pred(windows(trains, start_s), X_test)
        results["ridge"] = score(pred_ridge)
        results["ridge"]["alpha"] = alphas[0] if len(alphas) == 1 else alphas

    curve = None
    if time_resolved:
        offsets = np.round(np.arange(tmin, tmax - window_s + 1e-9, hop_s), 6) + 0.0  # no -0.0
        tracks = ("single_top1", "single_top5", "single_median_rank", "average_top5") + (
            ("single_auc",) if len(test_images) == 2 else ())
        curve = {"window_s": window_s, "hop_s": hop_s, "offsets_s": offsets.tolist(),
                 "chance_top1": 1 / len(test_images),
                 "chance_top5": min(5, len(test_images)) / len(test_images),
                 "model": {t: [] for t in tracks}, "ridge": {t: [] for t in tracks}}
        for off in tqdm(offsets, desc="time-resolved", unit="window", disable=not progress):
            xt = windows(tests, float(off))
            preds = {"model": model_pred(xt)}
            if have_ridge:
                preds["ridge"] = ridge_pred(windows(trains, float(off)), xt)[0]
            for name, p in preds.items():
                r = retrieval_scores(p, test_ids, *sets["test"])
                for t in tracks:
                    mode, metric = t.split("_", 1)
                    curve[name][t].append(r[mode][metric])
        if not have_ridge:
            del curve["ridge"]

    report: dict[str, Any] = {
        "checkpoint": str(Path(ckpt_dir).resolve()),
        "data": str(Path(data_dir).resolve()),
        "window_s": window_s,
        "window_start_s": start_s,
        "target": card.target.name,
        "n_train_trials": sum(len(t) for t in trains),
        "n_test_trials": len(test_ids),
        "n_test_images": len(test_images),
        "n_gallery_images": len(gallery),
        "labels": card.target.labels or es.labels,
        "chance_top1": 1 / len(test_images),
        "drop_log": {k: sum(int(part.drop_log.get(k, 0)) for part, _ in parts)
                     for k in es.drop_log},
        "retrieval": results,
        "time_resolved": curve,
    }
    report["summary"] = _summary(results)
    if plots_dir is not None:
        plots = Path(plots_dir)
        plots.mkdir(parents=True, exist_ok=True)
        report["plots"] = {}
        if curve is not None:
            report["plots"]["time_resolved"] = str(_plot_curve(curve, start_s, plots / "time_resolved.png"))
        report["plots"]["examples"] = str(
            _plot_examples(pred_model, test_ids, gallery, gallery_z, n_examples, plots / "examples.png")
        )
    if json_out is not None:
        path = Path(json_out)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(portable_paths(report), indent=2))
    return report


def _summary(results: dict[str, Any]) -> dict[str, float]:
    out = {}
    for method, by_set in results.items():
        for set_name, by_mode in by_set.items():
            if not isinstance(by_mode, dict):
                continue
            for mode, m in by_mode.items():
                key = f"{method}_{set_name}_{mode}"
                out[f"{key}_top1"] = m["top1"]
                out[f"{key}_chance_top1"] = m["chance_top1"]
                out[f"{key}_top5"] = m["top5"]
                out[f"{key}_relative_median_rank"] = m["relative_median_rank"]
                if "auc" in m:  # two categories
                    out[f"{key}_auc"] = m["auc"]
    return out


def _plot_curve(curve: dict[str, Any], start_s: float, path: Path) -> Path:
    from matplotlib.figure import Figure

    t_ms = (np.asarray(curve["offsets_s"]) + curve["window_s"] / 2) * 1e3
    fig = Figure(figsize=(7.5, 4.2), dpi=110)
    ax = fig.add_subplot()
    styles = {"model": "tab:blue", "ridge": "tab:orange"}
    # few candidates (categories): top-5 is always 1, so the curve is top-1
    k = 1 if curve["chance_top5"] >= 1 else 5
    for name, color in styles.items():
        if name not in curve:
            continue
        ax.plot(t_ms, 100 * np.asarray(curve[name][f"single_top{k}"]), color=color, lw=1.5,
                label=f"{name}, single trial")
        if k == 5:
            ax.plot(t_ms, 100 * np.asarray(curve[name]["average_top5"]), color=color, lw=1.5,
                    ls="--", label=f"{name}, averaged repetitions")
    ax.axhline(100 * curve[f"chance_top{k}"], color="grey", lw=1, ls=":", label="chance")
    ax.axvspan(start_s * 1e3, (start_s + curve["window_s"]) * 1e3, color="tab:blue", alpha=0.08,
               label="model's training window")
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("window centre relative to image onset (ms)")
    ax.set_ylabel(f"top-{k} accuracy, test {'images' if k == 5 else 'candidates'} (%)")
    ax.set_title(f"Time-resolved retrieval ({curve['window_s'] * 1e3:.0f} ms windows)")
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return path


def _plot_examples(pred, test_ids, gallery, gallery_z, n_examples, path: Path, k: int = 5) -> Path:
    """A grid of test images and their top-k retrieved gallery images.

    Each row is a test image (left) and the top-k gallery images retrieved from the average of
    its predictions, with cosine scores; correct ones framed in green.
    """
    from matplotlib.figure import Figure

    means, labels, _ = average_by_group(pred, test_ids)
    rows = min(n_examples, len(labels))
    sims = cosine_similarity(means[:rows], gallery_z)
    fig = Figure(figsize=(1.6 * (k + 1), 1.75 * rows), dpi=100)
    axes = fig.subplots(rows, k + 1, squeeze=False)
    for r in range(rows):
        order = np.argsort(-sims[r])[:k]
        true_id = labels[r]
        cells = [(true_id, None)] + [(gallery.ids[j], sims[r, j]) for j in order]
        for c, (image_id, s) in enumerate(cells):
            ax = axes[r, c]
            ax.imshow(gallery.image(image_id).resize((96, 96)))
            ax.set_xticks([])
            ax.set_yticks([])
            if s is None:
                ax.set_title(f"shown: {image_id}", fontsize=6)
            else:
                ax.set_title(f"{image_id}\n{s:.2f}", fontsize=6)
                if image_id == true_id:
                    for spine in ax.spines.values():
                        spine.set_edgecolor("tab:green")
                        spine.set_linewidth(3)
    fig.suptitle("Top-5 retrieved images (averaged repetitions)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path)
    return path
