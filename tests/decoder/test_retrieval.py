"""Retrieval: cosine top-k, ranks, batches, grids and dimension errors."""

from __future__ import annotations

import numpy as np
import pytest

from rtdecode.decoder.retrieval import Retrieval


@pytest.fixture
def index():
    # Orthogonal directions with different norms: cosine must ignore the norm.
    emb = np.zeros((6, 4), dtype=np.float32)
    emb[0] = [10, 0, 0, 0]
    emb[1] = [0, 1, 0, 0]
    emb[2] = [0, 0, 3, 0]
    emb[3] = [0, 0, 0, 0.5]
    emb[4] = [1, 1, 0, 0]  # 45 degrees between 0 and 1
    emb[5] = [-1, 0, 0, 0]
    return Retrieval(emb, ["a", "b", "c", "d", "ab", "minus_a"])


def test_topk_orders_by_cosine(index):
    top = index.topk(np.array([2.0, 0.1, 0, 0]), k=3)
    assert [i for i, _ in top] == ["a", "ab", "b"]
    scores = [s for _, s in top]
    assert scores == sorted(scores, reverse=True)
    assert scores[0] == pytest.approx(2 / np.hypot(2, 0.1), abs=1e-6)
    assert index.topk(np.array([0, 0, 1.0, 0]), k=1) == [("c", pytest.approx(1.0))]


def test_topk_k_larger_than_gallery_returns_everything(index):
    top = index.topk(np.array([1.0, 0, 0, 0]), k=50)
    assert len(top) == 6
    assert top[0][0] == "a" and top[-1] == ("minus_a", pytest.approx(-1.0))


def test_batch_queries_match_single_queries(index):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((5, 4)).astype(np.float32)
    batch = index.topk(q, k=4)
    assert len(batch) == 5
    for row, res in zip(q, batch, strict=True):
        single = index.topk(row, k=4)
        assert [i for i, _ in res] == [i for i, _ in single]
        np.testing.assert_allclose([s for _, s in res], [s for _, s in single], rtol=1e-5)
    assert index.scores(q).shape == (5, 6)


def test_rank_of(index):
    q = np.array([2.0, 0.1, 0, 0])  # order: a, ab, b, c=d=0 tie, minus_a
    assert index.rank_of(q, "a") == 1
    assert index.rank_of(q, "ab") == 2
    assert index.rank_of(q, "b") == 3
    assert index.rank_of(q, "c") == 5 and index.rank_of(q, "d") == 5  # ties count against
    assert index.rank_of(q, "minus_a") == 6
    np.testing.assert_array_equal(index.ranks(np.stack([q, -q]), ["a", "minus_a"]), [1, 1])
    with pytest.raises(KeyError, match="zebra"):
        index.rank_of(q, "zebra")


def test_random_gallery_topk_agrees_with_full_sort():
    rng = np.random.default_rng(1)
    emb = rng.standard_normal((500, 32)).astype(np.float32)
    ids = [f"img_{i}" for i in range(500)]
    r = Retrieval(emb, ids)
    q = emb[123] + 0.05 * rng.standard_normal(32).astype(np.float32)
    top = r.topk(q, k=10)
    assert top[0][0] == "img_123"
    unit = emb / np.linalg.norm(emb, axis=1, keepdims=True)
    expected = np.argsort(-(unit @ (q / np.linalg.norm(q))))[:10]
    assert [i for i, _ in top] == [ids[j] for j in expected]
    assert r.rank_of(q, "img_123") == 1
    assert r.rank_of(q, ids[expected[7]]) == 8


def test_grid_embeddings_are_compared_flattened():
    rng = np.random.default_rng(2)
    grid = rng.standard_normal((20, 5, 8)).astype(np.float32)
    r = Retrieval(grid, [str(i) for i in range(20)])
    assert r.dim == 40
    assert r.topk(grid[7], k=1)[0][0] == "7"
    assert r.topk(grid[7].reshape(-1), k=1)[0][0] == "7"
    assert [res[0][0] for res in r.topk(grid[[3, 4]], k=2)] == ["3", "4"]


def test_zero_vectors_score_zero_not_nan(index):
    top = index.topk(np.zeros(4), k=6)
    assert all(s == 0.0 for _, s in top)


def test_wrong_dimension_is_a_clear_error(index):
    with pytest.raises(ValueError, match=r"shape \(5,\).*\(4,\)"):
        index.topk(np.zeros(5))
    with pytest.raises(ValueError, match="shape"):
        index.rank_of(np.zeros((2, 3)), "a")
    with pytest.raises(ValueError, match="ids"):
        Retrieval(np.zeros((3, 4)), ["a", "b"])
    with pytest.raises(ValueError, match="unique"):
        Retrieval(np.zeros((2, 4)), ["a", "a"])
    with pytest.raises(ValueError, match="k=0"):
        index.topk(np.ones(4), k=0)


def test_online_and_offline_ranks_are_one_rule_and_ties_count_against():
    """The viewer's rank (Retrieval) and ``rtdecode evaluate``'s (retrieval_ranks) agree,
    and a constant prediction, tied with every image, ranks last in both."""
    from rtdecode.encoder.metrics import retrieval_ranks

    rng = np.random.default_rng(0)
    gallery = rng.normal(size=(12, 8)).astype(np.float32)
    gallery[7] = gallery[3]  # two identical images: a tie for any query
    ids = [f"img_{i:02d}" for i in range(12)]
    index = Retrieval(gallery, ids)
    queries = rng.normal(size=(30, 8)).astype(np.float32)
    queries[:5] = gallery[3]
    true = rng.integers(0, 12, size=30)
    true[:5] = [3, 7, 3, 7, 3]
    online = index.ranks(queries, [ids[i] for i in true])
    offline = retrieval_ranks(queries, gallery, true)
    np.testing.assert_array_equal(online, offline)
    assert set(online[:5]) == {2}  # the twin scores as high: the true image is second

    flat = Retrieval(np.ones((6, 4), dtype=np.float32), [str(i) for i in range(6)])
    assert flat.rank_of(np.ones(4), "0") == 6
    assert retrieval_ranks(np.ones((1, 4)), np.ones((6, 4)), np.array([0]))[0] == 6
