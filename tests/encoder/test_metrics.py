"""Retrieval metrics on constructed inputs with known answers."""

from __future__ import annotations

import numpy as np
import pytest

from rtdecode.encoder.metrics import (
    average_by_group,
    cosine_similarity,
    destandardize,
    fit_target_stats,
    ranks_from_scores,
    relative_median_rank,
    retrieval_metrics,
    retrieval_ranks,
    standardize,
    topk_accuracy,
)


def test_ranks_known_answer():
    scores = np.array([
        [0.9, 0.1, 0.5],   # true 0 -> rank 1
        [0.9, 0.1, 0.5],   # true 2 -> rank 2
        [0.9, 0.1, 0.5],   # true 1 -> rank 3
        [0.2, 0.2, 0.2],   # ties count against: rank 3
    ])
    ranks = ranks_from_scores(scores, [0, 2, 1, 0])
    assert ranks.tolist() == [1, 2, 3, 3]
    assert topk_accuracy(ranks, 1) == 0.25
    assert topk_accuracy(ranks, 2) == 0.5
    assert relative_median_rank(ranks, 3) == pytest.approx(2.5 / 3)
    with pytest.raises(ValueError, match="0..2"):
        ranks_from_scores(scores, [0, 1, 2, 3])


def test_cosine_and_retrieval_perfect_and_reversed():
    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(50, 16))
    ranks = retrieval_ranks(gallery * 5.0, gallery, np.arange(50))  # scale-invariant
    assert (ranks == 1).all()
    assert (retrieval_ranks(-gallery, gallery, np.arange(50)) > 1).all()
    sim = cosine_similarity(gallery[:2], gallery[:3])
    assert sim.shape == (2, 3) and sim[0, 0] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same embedding space"):
        cosine_similarity(gallery[:, :3], gallery)


def test_retrieval_metrics_perfect_and_chance():
    rng = np.random.default_rng(1)
    gallery = rng.normal(size=(100, 32))
    m = retrieval_metrics(gallery, gallery, np.arange(100))
    assert m["top1"] == 1.0 and m["top5"] == 1.0
    assert m["relative_median_rank"] == pytest.approx(0.01)
    assert m["chance_top5"] == 0.05 and m["n_candidates"] == 100
    noise = rng.normal(size=(2000, 32))
    m = retrieval_metrics(noise, gallery, rng.integers(0, 100, 2000))
    assert abs(m["top5"] - 0.05) < 0.02
    assert abs(m["relative_median_rank"] - 0.5) < 0.05


def test_average_by_group_known_answer():
    values = np.array([[1.0, 0.0], [3.0, 2.0], [10.0, 10.0], [5.0, 4.0]])
    means, labels, counts = average_by_group(values, ["a", "a", "b", "a"])
    assert labels == ["a", "b"]
    assert counts.tolist() == [3, 1]
    assert np.allclose(means, [[3.0, 2.0], [10.0, 10.0]])
    grid = np.arange(12.0).reshape(3, 2, 2)
    means, _, _ = average_by_group(grid, [0, 0, 1])
    assert means.shape == (2, 2, 2) and np.allclose(means[0], grid[:2].mean(0))


def test_averaging_repetitions_improves_noisy_retrieval():
    rng = np.random.default_rng(2)
    gallery = rng.normal(size=(40, 24))
    ids = np.repeat(np.arange(40), 12)
    trials = gallery[ids] + rng.normal(scale=3.0, size=(ids.size, 24))
    single = retrieval_metrics(trials, gallery, ids)
    means, labels, _ = average_by_group(trials, ids)
    averaged = retrieval_metrics(means, gallery, np.asarray(labels))
    assert averaged["top1"] > single["top1"] + 0.2


def test_standardize_round_trip():
    rng = np.random.default_rng(3)
    y = rng.normal(loc=5.0, scale=[1.0, 2.0, 0.0], size=(200, 3))
    stats = fit_target_stats(y)
    assert stats["std"][2] == 1.0  # constant dimension left unscaled
    z = standardize(y, stats)
    assert np.allclose(z[:, :2].mean(0), 0, atol=1e-5) and np.allclose(z[:, :2].std(0), 1, atol=1e-4)
    assert np.allclose(destandardize(z, stats), y, atol=1e-4)
    with pytest.raises(ValueError, match="target_stats"):
        standardize(y[:, :2], stats)


def test_lag_curve_bins_ranks_by_lag_and_reports_chance():
    from rtdecode.encoder.metrics import LagCurve

    curve = LagCurve(n_candidates=40, bin_s=0.05, max_lag_s=1.5)
    curve.add_many([0.01, 0.04, 0.26, 0.27, 0.29], [40, 20, 1, 3, 9])
    curve.add(None, 1)  # no onset known: not counted
    curve.add(0.3, None)  # no rank: not counted
    curve.add(1.6, 1)  # past the curve
    curve.add(-0.01, 1)  # before the onset it is locked to
    d = curve.as_dict()
    assert d["chance_top5"] == pytest.approx(5 / 40) and d["n_candidates"] == 40
    rows = {r["lag_s"]: r for r in d["per_lag"]}
    assert sorted(rows) == [0.025, 0.275]
    assert rows[0.025] == {"lag_s": 0.025, "n": 2, "top1": 0.0, "top5": 0.0, "median_rank": 30.0}
    assert rows[0.275]["n"] == 3 and rows[0.275]["top1"] == pytest.approx(1 / 3)
    assert rows[0.275]["top5"] == pytest.approx(2 / 3) and rows[0.275]["median_rank"] == 3.0


def test_lag_curve_median_follows_the_newest_ranks_and_counts_stay_exact():
    from rtdecode.encoder.metrics import LagCurve

    curve = LagCurve(n_candidates=10, history=4)
    for r in [10, 10, 10, 10, 1, 1, 1, 1, 1]:
        curve.add(0.1, r)
    row = curve.as_dict()["per_lag"][0]
    assert row["n"] == 9 and row["median_rank"] == 1.0 and row["top1"] == pytest.approx(5 / 9)
    with pytest.raises(ValueError, match="n_candidates=0"):
        LagCurve(0)
