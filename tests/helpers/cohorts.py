"""The tiny two-subject simulated cohort (sub-01 Neuromag 306, sub-02 CTF), and decoding of
one subject's held-out session with a checkpoint: one decision per trial (the mean of its
windows' predictions), scored against the binomial chance level."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

WINDOW_S = 0.25
# Window ends where the tiny subjects' responses are.
LAGS = np.round(np.arange(0.2, 0.451, 0.05), 3)


def tiny_cohort(root: Path) -> Path:
    """Simulate the tiny cohort of two subjects (3 sessions each) under ``root``."""
    from rtdecode.data.simulate import simulate_cohort

    return simulate_cohort(root / "cohort", seed=0, n_subjects=2, size="tiny", progress=False)


def held_out_windows(cohort: Path, view: dict, session: str = "ses-03"):
    """The training-image trials of one session of the view's subject, at every lag of LAGS.

    Returns the EpochSet of those trials and their windows, lag-major, shape
    (len(LAGS) * n_trials, n_channels_of_the_subject, n_times).
    """
    from rtdecode.signal import Preprocessor
    from rtdecode.training.encoder import lagged_windows, load_epochs_for

    pre = Preprocessor.from_dict(view["preprocess"])
    name = view["subjects"][view["subject_index"]]
    es = load_epochs_for(cohort, lambda names: pre, tmin_s=float(LAGS[0]) - WINDOW_S,
                         tmax_s=float(LAGS[-1]), subjects=[name], ch_names=view["ch_names"],
                         progress=False).train
    es = es.select(np.array([session in es.recordings[r] for r in es.recording_index]))
    X, _ = lagged_windows(es, pre, LAGS, WINDOW_S)
    return es, X


def held_out_top1(cohort: Path, ckpt: Path, subject: str, session: str = "ses-03") -> dict:
    """Top-1 retrieval of a held-out session's trials among the images they show.

    Returns ``{"top1", "n", "n_candidates", "threshold", "per_trial"}``, where
    ``threshold`` is chance plus 3 binomial standard deviations for ``n`` trials.
    """
    from rtdecode.encoder import load_checkpoint
    from rtdecode.encoder.metrics import cosine_similarity, standardize
    from rtdecode.images import Gallery, image_encoder_for
    from rtdecode.training.encoder import predict

    model, view = load_checkpoint(ckpt, subject=subject)
    es, X = held_out_windows(cohort, view, session)
    pred = predict(model, X, np.full(len(X), view["subject_index"]))["clip"]
    per_trial = pred.reshape(len(LAGS), len(es), -1).mean(axis=0)
    gallery = Gallery.from_folder(view["target"]["gallery"])
    emb = standardize(gallery.embeddings(image_encoder_for(view["target"]), progress=False),
                      view["target_stats"])
    candidates = sorted(set(es.image_ids))
    scores = cosine_similarity(per_trial, emb[[gallery.index(i) for i in candidates]])
    true = np.array([candidates.index(i) for i in es.image_ids])
    n, chance = len(es), 1.0 / len(candidates)
    return {
        "top1": float(np.mean(scores.argmax(axis=1) == true)),
        "n": n,
        "n_candidates": len(candidates),
        "threshold": chance + 3 * math.sqrt(chance * (1 - chance) / n),
        "per_trial": per_trial,
        "n_channels": X.shape[1],
    }
