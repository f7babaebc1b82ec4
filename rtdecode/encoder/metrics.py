"""Retrieval metrics (numpy only: cheap to import, no torch).

A prediction retrieves its image among a *retrieval set* of candidate embeddings by
cosine similarity. The rank of the true image (1 = best) gives top-k accuracy and the
relative median rank of Benchetrit et al. (2024): ``median(rank) / n_candidates``
(chance ~0.5, perfect ``1 / n_candidates``).

Ties count against the prediction: the rank is one plus the number of *other*
candidates scoring at least as high as the true one, so a constant prediction gets the
worst rank, never the best.

Used by ``rtdecode evaluate``, by training's validation and by the retrieval index.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from rtdecode.decoder.retrieval import ranks_from_scores

EPS = 1e-8


def _as_2d(x: np.ndarray) -> np.ndarray:
    """(B, D) or (B, N, D) -> (B, N*D) float64 (token grids compare as one vector)."""
    x = np.asarray(x)
    return x.reshape(x.shape[0], -1).astype(np.float64, copy=False)


def standardize(embeddings: np.ndarray, target_stats: dict[str, Any] | None) -> np.ndarray:
    """z-score embeddings with a checkpoint's ``target_stats`` ({mean, std}).

    The encoder is trained against standardised image embeddings, so the retrieval set
    must be standardised the same way before its cosine similarity with the CLIP head.

    Parameters
    ----------
    embeddings : array, shape (N, D) or (N, T, D)
    target_stats : dict or None
        ``{"mean": (D,) or (T, D), "std": same}``; None returns a float32 copy.

    Returns
    -------
    ndarray, float32, same shape
    """
    e = np.asarray(embeddings, dtype=np.float32)
    if not target_stats:
        return e.copy()
    mean = np.asarray(target_stats["mean"], dtype=np.float32)
    std = np.asarray(target_stats["std"], dtype=np.float32)
    if mean.shape != e.shape[1:] or std.shape != e.shape[1:]:
        raise ValueError(
            f"target_stats have shape {mean.shape} but the embeddings are {e.shape[1:]} per "
            "image; use the image encoder the checkpoint was trained with."
        )
    return ((e - mean) / np.maximum(std, EPS)).astype(np.float32)


def destandardize(z: np.ndarray, target_stats: dict[str, Any] | None) -> np.ndarray:
    """Inverse of :func:`standardize`: map predictions back to embedding units."""
    z = np.asarray(z, dtype=np.float32)
    if not target_stats:
        return z.copy()
    mean = np.asarray(target_stats["mean"], dtype=np.float32)
    std = np.asarray(target_stats["std"], dtype=np.float32)
    return (z * std + mean).astype(np.float32)


def fit_target_stats(y: np.ndarray) -> dict[str, list]:
    """Per-dimension mean and std of training embeddings y (N, ...), JSON-able."""
    y = np.asarray(y, dtype=np.float64)
    std = y.std(axis=0)
    std = np.where(std > EPS, std, 1.0)  # constant dimensions: leave them unscaled
    return {"mean": y.mean(axis=0).tolist(), "std": std.tolist()}


def cosine_similarity(queries: np.ndarray, candidates: np.ndarray) -> np.ndarray:
    """Cosine similarity of every query with every candidate.

    Parameters
    ----------
    queries : array, shape (B, D) or (B, N, D)
    candidates : array, shape (M, D) or (M, N, D)

    Returns
    -------
    ndarray, float64, shape (B, M)
    """
    q = _as_2d(queries)
    c = _as_2d(candidates)
    if q.shape[1] != c.shape[1]:
        raise ValueError(
            f"Queries have {q.shape[1]} dims but candidates have {c.shape[1]}; they must "
            "live in the same embedding space."
        )
    q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), EPS)
    c = c / np.maximum(np.linalg.norm(c, axis=1, keepdims=True), EPS)
    return q @ c.T


def retrieval_ranks(pred: np.ndarray, candidates: np.ndarray, true_index: np.ndarray) -> np.ndarray:
    """Ranks of the true candidates by cosine similarity (see :func:`ranks_from_scores`).

    Parameters
    ----------
    pred : array, shape (B, D)
    candidates : array, shape (M, D)
    true_index : array of int, shape (B,)
    """
    return ranks_from_scores(cosine_similarity(pred, candidates), true_index)


def topk_accuracy(ranks: np.ndarray, k: int) -> float:
    """Fraction of ranks <= k."""
    ranks = np.asarray(ranks)
    return float(np.mean(ranks <= k)) if ranks.size else float("nan")


def relative_median_rank(ranks: np.ndarray, n_candidates: int) -> float:
    """median(rank) / n_candidates (Benchetrit et al., 2024)."""
    ranks = np.asarray(ranks)
    return float(np.median(ranks) / n_candidates) if ranks.size else float("nan")


def average_by_group(
    values: np.ndarray, groups: Sequence[Any]
) -> tuple[np.ndarray, list[Any], np.ndarray]:
    """Average rows that share a group label (repeated presentations of one image).

    Parameters
    ----------
    values : array, shape (B, ...)
    groups : sequence of hashable, length B

    Returns
    -------
    means : ndarray, shape (G, ...), in order of first appearance
    labels : list, length G
    counts : ndarray of int, shape (G,)
    """
    values = np.asarray(values)
    groups = list(groups)
    if len(groups) != values.shape[0]:
        raise ValueError(f"{len(groups)} group labels for {values.shape[0]} rows.")
    labels: list[Any] = []
    index: dict[Any, int] = {}
    member = np.empty(len(groups), dtype=np.int64)
    for i, g in enumerate(groups):
        if g not in index:
            index[g] = len(labels)
            labels.append(g)
        member[i] = index[g]
    sums = np.zeros((len(labels),) + values.shape[1:], dtype=np.float64)
    np.add.at(sums, member, values)
    counts = np.bincount(member, minlength=len(labels))
    means = sums / counts.reshape((-1,) + (1,) * (values.ndim - 1))
    return means.astype(values.dtype if values.dtype.kind == "f" else np.float64), labels, counts


def retrieval_metrics(
    pred: np.ndarray,
    candidates: np.ndarray,
    true_index: np.ndarray,
    ks: Sequence[int] = (1, 5),
) -> dict[str, float]:
    """Top-k accuracies, median rank and relative median rank, with chance levels.

    Parameters
    ----------
    pred : array, shape (B, D)
    candidates : array, shape (M, D)
    true_index : array of int, shape (B,)
    ks : the k of each top-k accuracy

    Returns
    -------
    dict
        ``top1``, ``top5`` (one per k), ``chance_top1``..., ``median_rank``,
        ``relative_median_rank``, ``n_queries``, ``n_candidates``; with two candidates
        (two categories) also ``auc`` (:func:`two_class_auc`, chance 0.5).
    """
    ranks = retrieval_ranks(pred, candidates, true_index)
    m = int(np.asarray(candidates).shape[0])
    out: dict[str, float] = {}
    for k in ks:
        out[f"top{k}"] = topk_accuracy(ranks, k)
        out[f"chance_top{k}"] = min(k, m) / m
    out["median_rank"] = float(np.median(ranks)) if ranks.size else float("nan")
    out["relative_median_rank"] = relative_median_rank(ranks, m)
    out["n_queries"] = int(ranks.size)
    out["n_candidates"] = m
    if m == 2:
        out["auc"] = two_class_auc(pred, candidates, true_index)
    return out


def two_class_auc(pred: np.ndarray, candidates: np.ndarray, true_index: np.ndarray) -> float:
    """ROC AUC of retrieval between two candidates (two categories).

    The score of a prediction is its cosine similarity with candidate 1 minus that with
    candidate 0; the AUC is the probability that a trial of candidate 1 scores higher
    than a trial of candidate 0 (ties count one half). Chance is 0.5.

    Parameters
    ----------
    pred : array, shape (B, D)
    candidates : array, shape (2, D)
    true_index : array of int (0 or 1), shape (B,)

    Returns
    -------
    float
        NaN when the trials are all of one candidate.
    """
    from scipy.stats import rankdata

    sims = cosine_similarity(pred, candidates)
    score = sims[:, 1] - sims[:, 0]
    pos = np.asarray(true_index) == 1
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    r = rankdata(score)
    return float((r[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


__all__ = [
    "average_by_group",
    "cosine_similarity",
    "destandardize",
    "fit_target_stats",
    "ranks_from_scores",
    "relative_median_rank",
    "retrieval_metrics",
    "retrieval_ranks",
    "standardize",
    "topk_accuracy",
    "two_class_auc",
]


class LagCurve:
    """Time-resolved retrieval, accumulated window by window: the live decoding curve.

    Each decoded window with a known stimulus adds the rank of the true image to the bin
    of its lag (window end minus the latest stimulus onset). The service keeps one per
    session (``/api/status``'s ``online_eval``), and ``rtdecode evaluate-online`` builds
    the same curve from the frames of a replay and from the offline path, so both are
    computed by this one piece of code.

    Parameters
    ----------
    n_candidates : int
        Size of the retrieval set (chance top-5 is ``min(5, n) / n``).
    bin_s : float
        Width of a lag bin (50 ms: the default hop).
    max_lag_s : float
        Lags at or beyond this are not counted (the next trial has begun by then).
    history : int
        Ranks kept per bin for the median (the newest win); counts and top-k hits are
        exact over the whole session.

    Threads: ``add`` and ``as_dict`` may be called from different threads; a lock keeps
    each call atomic.
    """

    def __init__(self, n_candidates: int, bin_s: float = 0.05, max_lag_s: float = 2.0,
                 history: int = 4096) -> None:
        import threading

        if n_candidates < 1:
            raise ValueError(f"n_candidates={n_candidates} must be at least 1.")
        if not bin_s > 0 or not max_lag_s > 0:
            raise ValueError(f"bin_s={bin_s} and max_lag_s={max_lag_s} must be positive.")
        self.n_candidates = int(n_candidates)
        self.bin_s = float(bin_s)
        self.max_lag_s = float(max_lag_s)
        n_bins = int(np.ceil(self.max_lag_s / self.bin_s - 1e-9))
        self._n = np.zeros(n_bins, np.int64)
        self._top1 = np.zeros(n_bins, np.int64)
        self._top5 = np.zeros(n_bins, np.int64)
        self._ranks = [np.zeros(history, np.int32) for _ in range(n_bins)]
        self._history = int(history)
        self._lock = threading.Lock()

    def empty_like(self) -> LagCurve:
        """A new, empty curve with this one's retrieval-set size, bins and range."""
        return LagCurve(self.n_candidates, bin_s=self.bin_s, max_lag_s=self.max_lag_s,
                        history=self._history)

    def bin_of(self, lag_s: float) -> int | None:
        """Index of the bin holding ``lag_s`` (None outside ``[0, max_lag_s)``)."""
        if lag_s is None or not np.isfinite(lag_s) or lag_s < 0 or lag_s >= self.max_lag_s:
            return None
        return min(int(np.floor(lag_s / self.bin_s + 1e-9)), len(self._n) - 1)

    def add(self, lag_s: float | None, rank: int | None) -> None:
        """Count one window: its lag (s) and the rank of its true image (1 = best)."""
        if rank is None or lag_s is None:
            return
        b = self.bin_of(float(lag_s))
        if b is None:
            return
        with self._lock:
            self._ranks[b][self._n[b] % self._history] = int(rank)
            self._n[b] += 1
            self._top1[b] += int(rank <= 1)
            self._top5[b] += int(rank <= 5)

    def add_many(self, lags_s: Sequence[float], ranks: Sequence[int]) -> None:
        """``add`` for each (lag, rank) pair."""
        for lag, rank in zip(lags_s, ranks, strict=True):
            self.add(lag, rank)

    @property
    def chance_top1(self) -> float:
        """Top-1 accuracy of a random ranking."""
        return 1.0 / self.n_candidates

    @property
    def chance_top5(self) -> float:
        """Top-5 accuracy of a random ranking."""
        return min(5, self.n_candidates) / self.n_candidates

    def as_dict(self) -> dict[str, Any]:
        """``{"per_lag": [{lag_s, n, top1, top5, median_rank}], "chance_top5", ...}``.

        ``lag_s`` is the bin's centre; bins without windows are left out. ``top1`` and
        ``top5`` are fractions of the bin's windows.
        """
        rows = []
        with self._lock:
            for b in np.flatnonzero(self._n):
                n = int(self._n[b])
                ranks = self._ranks[b][: min(n, self._history)]
                rows.append({
                    "lag_s": round((b + 0.5) * self.bin_s, 6),
                    "n": n,
                    "top1": float(self._top1[b] / n),
                    "top5": float(self._top5[b] / n),
                    "median_rank": float(np.median(ranks)),
                })
        return {"per_lag": rows, "chance_top1": self.chance_top1,
                "chance_top5": self.chance_top5, "n_candidates": self.n_candidates,
                "bin_s": self.bin_s}
