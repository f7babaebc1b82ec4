"""The one rescale path: ``rescale_prediction`` (live worker and offline generation)."""

from __future__ import annotations

import numpy as np

from rtdecode.decoder.normalize import EmbeddingNormalizer, rescale_prediction


def _stats(rng, dim):
    return {"mean": rng.normal(size=dim).tolist(), "std": rng.uniform(0.5, 2.0, dim).tolist()}


def test_without_a_decoder_normalizer_the_training_stats_rescale_a_shrunk_prediction():
    rng = np.random.default_rng(0)
    stats = _stats(rng, 32)
    shrunk = 0.1 * rng.normal(size=32).astype(np.float32)  # a regression's shrunk output
    out = rescale_prediction(shrunk, stats)
    z = (out - np.asarray(stats["mean"])) / np.asarray(stats["std"])
    np.testing.assert_allclose(np.sqrt(np.mean(z**2)), 1.0, rtol=1e-4)
    np.testing.assert_allclose(z / np.linalg.norm(z), shrunk / np.linalg.norm(shrunk), atol=1e-5)
    assert out.dtype == np.float32 and out.shape == (32,)


def test_the_decoder_normalizer_is_what_rescales_when_there_is_one():
    rng = np.random.default_rng(1)
    stats = _stats(rng, 16)
    decoder_norm = EmbeddingNormalizer().fit(rng.normal(3.0, 0.2, size=(50, 16)))
    pred = rng.normal(size=16).astype(np.float32)
    units = pred * np.asarray(stats["std"], np.float32) + np.asarray(stats["mean"], np.float32)
    np.testing.assert_allclose(
        rescale_prediction(pred, stats, decoder_norm), decoder_norm.transform(units), rtol=1e-5
    )
    batch = rng.normal(size=(8, 16)).astype(np.float32)  # offline: a batch of predictions
    np.testing.assert_allclose(
        rescale_prediction(batch, stats, decoder_norm),
        decoder_norm.transform(batch * np.asarray(stats["std"]) + np.asarray(stats["mean"])),
        rtol=1e-4,
    )


def test_without_stats_or_normalizer_the_prediction_passes_unchanged():
    pred = np.arange(6, dtype=np.float64)
    out = rescale_prediction(pred)
    np.testing.assert_array_equal(out, pred)
    assert out.dtype == np.float32
