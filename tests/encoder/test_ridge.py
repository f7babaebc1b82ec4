"""The ridge preset: the linear baseline as a servable checkpoint.

`rtdecode train --preset ridge` on the tiny simulated subject writes a checkpoint whose
predictions equal a ridge regression computed here independently (numpy, closed form in
the dual, on the same standardised windows), and that `evaluate` and the live path
(`evaluate-online`, the service's worker) run unchanged.
"""

from __future__ import annotations

import numpy as np
import pytest


@pytest.fixture(scope="module")
def subject(tmp_path_factory):
    from rtdecode.data.simulate import simulate_subject

    return simulate_subject(tmp_path_factory.mktemp("sim") / "subject", seed=3, size="tiny",
                            progress=False)


@pytest.fixture(scope="module")
def ridge(subject, tmp_path_factory):
    from rtdecode.cli import main

    out = tmp_path_factory.mktemp("ridge") / "ckpt"
    assert main(["train", "--data", str(subject), "--out", str(out), "--preset", "ridge",
                 "--device", "cpu"]) == 0
    return out


def _numpy_ridge(X: np.ndarray, Y: np.ndarray, alpha: float, X_new: np.ndarray) -> np.ndarray:
    """Ridge on z-scored features, solved in the dual: W = Z^T (Z Z^T + alpha I)^-1 (Y - mean)."""
    A = X.reshape(len(X), -1).astype(np.float64)
    mu, sd = A.mean(axis=0), A.std(axis=0)
    sd[sd == 0] = 1.0
    Z = (A - mu) / sd
    y_mean = Y.mean(axis=0)
    dual = np.linalg.solve(Z @ Z.T + alpha * np.eye(len(Z)), Y - y_mean)
    Z_new = (X_new.reshape(len(X_new), -1).astype(np.float64) - mu) / sd
    return Z_new @ (Z.T @ dual) + y_mean


def test_ridge_checkpoint_equals_an_independent_ridge(subject, ridge):
    from rtdecode.encoder import load_checkpoint
    from rtdecode.encoder.metrics import standardize
    from rtdecode.encoder.model import RidgeModule
    from rtdecode.images import Gallery, image_encoder_for
    from rtdecode.signal import Preprocessor
    from rtdecode.training.encoder import (
        image_targets,
        lagged_windows,
        load_epochs_for,
        load_recipe,
        predict,
    )

    model, meta = load_checkpoint(ridge)
    assert isinstance(model, RidgeModule) and model.config.kind == "ridge"
    assert meta["architecture"]["kind"] == "ridge"
    for key in ("ch_names", "positions", "preprocess", "target_stats", "window_s", "offsets",
                "subjects", "test_images"):
        assert meta[key], key  # the same card fields as a deep checkpoint
    rc = load_recipe(meta["provenance"]["recipe"])
    lags, window_s = rc.lags_s, rc.window_s
    pre = Preprocessor.from_dict(meta["preprocess"])
    es = load_epochs_for(subject, lambda names: pre, tmin_s=float(lags[0]) - window_s,
                         tmax_s=float(lags[-1]), ch_names=meta["ch_names"], progress=False)
    X, rows = lagged_windows(es.train, pre, lags, window_s)
    gallery = Gallery.from_folder(meta["target"]["gallery"])
    encoder = image_encoder_for(meta["target"])
    Y = standardize(image_targets(gallery, encoder, es.train.image_ids, progress=False)[rows],
                    meta["target_stats"])
    X_new, _ = lagged_windows(es.test, pre, lags[::4], window_s)
    expected = _numpy_ridge(X, Y, meta["provenance"]["ridge_alpha"], X_new)
    got = predict(model, X_new)
    assert np.array_equal(got["clip"], got["mse"])
    scale = np.abs(expected).max()
    np.testing.assert_allclose(got["clip"], expected, atol=1e-4 * scale)
    # Not a constant map: predictions vary across windows like the reference's do.
    assert got["clip"].std(axis=0).mean() > 0.1 * expected.std(axis=0).mean() > 0


def test_evaluate_and_the_live_path_run_the_ridge_checkpoint(subject, ridge, tmp_path):
    from rtdecode.training.evaluate import evaluate
    from rtdecode.training.online import evaluate_online

    report = evaluate(ridge, subject, time_resolved=False, progress=False)
    model = report["retrieval"]["model"]["gallery"]["single"]
    assert report["n_test_trials"] > 0 and 0 <= model["top5"] <= 1
    online = evaluate_online(ridge, subject / "replay_raw.fif", retrieval_set="all", speed=4.0,
                             progress=False)
    parity = online["parity"]
    assert parity["n_windows"] >= 100
    assert parity["max_rel_err"] < 1e-5 and parity["ranks_equal"]


def test_ridge_refuses_two_sensor_systems():
    from rtdecode.encoder import BrainConfig
    from rtdecode.encoder.model import RidgeModule

    cfg = BrainConfig(kind="ridge", n_channels=4, n_times=3, n_subjects=2, n_systems=2,
                      subject_system=(0, 1), target_shape=(2,))
    with pytest.raises(ValueError, match="one sensor system"):
        RidgeModule(cfg, np.zeros((2, 4, 2)))
