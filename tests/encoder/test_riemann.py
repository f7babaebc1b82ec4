"""The riemann encoder: pyriemann's tangent vectors, held-out decoding, checkpoints, serving."""

from __future__ import annotations

import numpy as np
import pytest
import torch

N_CH, N_T, D = 6, 64, 16
CATEGORIES = np.array(["house", "face"])


def _erp_dataset(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Two classes of windows (n, N_CH, N_T): each adds its own evoked response to noise.

    The responses share their time course and differ in their spatial pattern, at an
    amplitude (0.35 of the noise) that no single trial shows by eye.
    """
    rng = np.random.default_rng(seed)
    t = np.arange(N_T) / N_T
    wave = np.exp(-((t - 0.4) / 0.08) ** 2) * np.sin(2 * np.pi * 3 * t)
    patterns = np.random.default_rng(99).standard_normal((2, N_CH))
    labels = rng.integers(0, 2, n)
    mixing = np.eye(N_CH) + 0.3 * np.random.default_rng(98).standard_normal((N_CH, N_CH))
    X = np.einsum("ij,njt->nit", mixing, rng.standard_normal((n, N_CH, N_T)))
    X += 0.35 * patterns[labels][:, :, None] * wave[None, None, :] * 3
    return X.astype(np.float32), labels


@pytest.fixture(scope="module")
def data():
    X, y = _erp_dataset(240, seed=1)
    Xt, yt = _erp_dataset(240, seed=2)
    emb = np.random.default_rng(3).standard_normal((2, D)).astype(np.float32)
    return X, y, Xt, yt, emb


@pytest.fixture(scope="module")
def checkpoint(data, tmp_path_factory):
    from rtdecode.training.encoder import fit_riemann_checkpoint

    X, y, _, _, emb = data
    out = tmp_path_factory.mktemp("riemann")
    meta = {"ch_names": [f"E{i}" for i in range(N_CH)], "positions": np.zeros((N_CH, 2)),
            "sfreq_model_hz": 64.0, "window_s": 1.0, "target": {"name": "test"}}
    model = fit_riemann_checkpoint(X, emb[y], CATEGORIES[y], np.zeros((N_CH, 2)),
                                   recipe={"preset": "riemann", "window_sampling": "fixed"},
                                   out_dir=out, meta=meta)
    return model, out


@pytest.mark.parametrize(("estimator", "shrinkage"), [("oas", 0.0), ("scm", 0.1)])
def test_tangent_vectors_equal_pyriemanns(data, estimator, shrinkage):
    from pyriemann.estimation import Shrinkage, XdawnCovariances
    from pyriemann.tangentspace import TangentSpace

    from rtdecode.encoder.presets import get_preset
    from rtdecode.encoder.riemann import fit_riemann

    X, y, Xt, _, emb = data
    config = get_preset("riemann").replace(riemann_filters=3, riemann_estimator=estimator,
                                           riemann_shrinkage=shrinkage)
    model, _ = fit_riemann(X, emb[y], CATEGORIES[y], np.zeros((N_CH, 2)), config, [1.0])
    # pyriemann on its own, fitted on the same windows, transforms the held-out ones
    xdawn = XdawnCovariances(nfilter=3, estimator=estimator).fit(X.astype(np.float64), CATEGORIES[y])
    shrink = Shrinkage(shrinkage=shrinkage) if shrinkage else None
    train_covs = xdawn.transform(X.astype(np.float64))
    test_covs = xdawn.transform(Xt.astype(np.float64))
    if shrink is not None:
        train_covs, test_covs = shrink.fit_transform(train_covs), shrink.transform(test_covs)
    expected = TangentSpace(metric="riemann").fit(train_covs).transform(test_covs)
    with torch.no_grad():
        got = model.tangent(torch.from_numpy(Xt)).numpy()
    assert got.shape == expected.shape == (len(Xt), 12 * 13 // 2)
    assert np.abs(got - expected).max() <= 1e-5 * np.abs(expected).max()


def test_decodes_held_out_trials_above_chance(data, checkpoint):
    from rtdecode.encoder.checkpoint import read_config
    from rtdecode.encoder.metrics import retrieval_metrics, standardize

    _, _, Xt, yt, emb = data
    model, out = checkpoint
    cands = standardize(emb, read_config(out)["target_stats"])
    with torch.no_grad():
        pred = model(torch.from_numpy(Xt))["clip"].numpy()
    m = retrieval_metrics(pred, cands, yt, ks=(1,))
    n = len(yt)
    assert m["top1"] > 0.5 + 3 * np.sqrt(0.25 / n), m
    assert m["auc"] > 0.5 + 3 * np.sqrt((n + 1) / (3 * (n / 2) ** 2) / 4), m
    # the fixed bias part keeps the two-category score continuous: few ties among trials
    score = pred @ (cands[1] - cands[0])
    assert len(np.unique(np.round(score, 6))) > n // 2


def test_checkpoint_round_trip_and_the_live_path(data, checkpoint):
    from rtdecode.encoder import load_checkpoint
    from rtdecode.encoder.riemann import RiemannModule
    from rtdecode.encoder.runner import EncoderRunner

    _, _, Xt, _, _ = data
    model, out = checkpoint
    assert not any(p.suffix in (".pt", ".pkl") for p in out.iterdir())
    loaded, meta = load_checkpoint(out)
    assert isinstance(loaded, RiemannModule) and meta["architecture"]["kind"] == "riemann"
    assert meta["provenance"]["classes"] == ["face", "house"]
    with torch.no_grad():
        a, b = model(torch.from_numpy(Xt))["clip"], loaded(torch.from_numpy(Xt))["clip"]
    assert torch.equal(a, b)
    # the worker's path: one (channels, samples) window at a time through the runner
    runner = EncoderRunner(loaded, "cpu", N_CH, N_T)
    clip, mse = runner(Xt[5])
    np.testing.assert_allclose(clip, a[5].numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(clip, mse)
    flat = runner(np.zeros((N_CH, N_T), np.float32))[0]  # a flat window stays finite
    assert np.isfinite(flat).all()


def test_too_many_classes_is_one_clear_error(data):
    from rtdecode.encoder.presets import get_preset
    from rtdecode.encoder.riemann import fit_riemann

    X, _, _, _, _ = data
    ids = np.array([f"img{i}" for i in range(len(X))])
    with pytest.raises(ValueError, match="category labels"):
        fit_riemann(X, np.zeros((len(X), D), np.float32), ids, np.zeros((N_CH, 2)),
                    get_preset("riemann"), [1.0])


def test_streamed_windows_are_refused_with_the_fix(data):
    from rtdecode.training.encoder import fit_riemann_checkpoint

    X, y, _, _, emb = data
    with pytest.raises(ValueError, match='window_sampling = "fixed"'):
        fit_riemann_checkpoint(X, emb[y], CATEGORIES[y], np.zeros((N_CH, 2)),
                               recipe={"preset": "riemann"})
