"""Retrieval head: cosine nearest neighbours of a predicted embedding in a gallery.

The gallery matrix is L2-normalised once at construction; a query then costs one
float32 matrix-vector product and an ``argpartition`` (see bench/retrieval.py and
docs/images.md for timings). Token-grid embeddings ``(N, n_tokens, dim)`` are compared
flattened, i.e. cosine over the whole grid.

Threads: read-only after construction; any thread may query (the DecodeWorker does).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def ranks_from_scores(scores: np.ndarray, true_index: np.ndarray) -> np.ndarray:
    """Rank (1 = best) of each row's true candidate; ties count against it.

    The one rank rule of rtdecode: offline evaluation and the live viewer both call it.
    The rank is the number of candidates that score at least as high as the true one
    (itself included), so a constant prediction ranks last, never first.

    Parameters
    ----------
    scores : array, shape (B, M)
    true_index : array of int, shape (B,)
        Column of the true candidate for each row.

    Returns
    -------
    ndarray of int, shape (B,)
    """
    scores = np.asarray(scores)
    true_index = np.asarray(true_index, dtype=np.int64)
    if true_index.shape != (scores.shape[0],):
        raise ValueError(
            f"true_index has shape {true_index.shape}; expected ({scores.shape[0]},)."
        )
    if np.any(true_index < 0) or np.any(true_index >= scores.shape[1]):
        raise ValueError(f"true_index must lie in 0..{scores.shape[1] - 1}.")
    true = scores[np.arange(scores.shape[0]), true_index]
    at_least = (scores >= true[:, None]).sum(axis=1)  # includes the true one itself
    return at_least.astype(np.int64)


class Retrieval:
    """Cosine top-k search over gallery embeddings.

    Parameters
    ----------
    embeddings : array-like, shape (N, D) or (N, n_tokens, dim)
        Gallery embeddings, one row per image (as returned by ``Gallery.embeddings``).
    ids : sequence of str, length N
        Gallery id per row.

    Attributes
    ----------
    dim : int
        Length a flattened query must have (``D``, or ``n_tokens * dim``).
    ids : list of str
    """

    def __init__(self, embeddings: np.ndarray, ids: Sequence[str]) -> None:
        emb = np.asarray(embeddings, dtype=np.float32)
        if emb.ndim < 2:
            raise ValueError(
                f"Gallery embeddings have shape {emb.shape}; give one row per image, "
                "shape (N, D) or (N, n_tokens, dim)."
            )
        ids = [str(i) for i in ids]
        if len(ids) != emb.shape[0]:
            raise ValueError(
                f"Got {emb.shape[0]} gallery embeddings but {len(ids)} ids; give one id per row."
            )
        if len(set(ids)) != len(ids):
            raise ValueError("Gallery ids must be unique; two rows share an id.")
        self.ids = ids
        self.item_shape = tuple(emb.shape[1:])
        self.dim = int(np.prod(self.item_shape))
        flat = emb.reshape(emb.shape[0], self.dim)
        norms = np.linalg.norm(flat, axis=1, keepdims=True)
        # A zero row scores 0 against everything instead of NaN.
        self._matrix = np.ascontiguousarray(flat / np.where(norms > 0, norms, 1.0))
        self._row = {id_: i for i, id_ in enumerate(ids)}

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, image_id: object) -> bool:
        return str(image_id) in self._row

    def _queries(self, vec: np.ndarray) -> tuple[np.ndarray, bool]:
        """Flatten ``vec`` to (B, dim) float32 unit rows; also say if it was a single query."""
        q = np.asarray(vec, dtype=np.float32)
        if q.shape == self.item_shape or q.shape == (self.dim,):
            single, q = True, q.reshape(1, self.dim)
        elif q.ndim >= 2 and (q.shape[1:] == self.item_shape or q.shape[1:] == (self.dim,)):
            single, q = False, q.reshape(q.shape[0], self.dim)
        else:
            raise ValueError(
                f"Query has shape {q.shape} but the gallery embeddings have shape "
                f"{self.item_shape} per image; give a vector of that shape (or a batch "
                f"(B, {', '.join(map(str, self.item_shape))})) from the same image encoder."
            )
        norms = np.linalg.norm(q, axis=1, keepdims=True)
        return q / np.where(norms > 0, norms, 1.0), single

    def scores(self, vec: np.ndarray) -> np.ndarray:
        """Cosine similarity of each query with every gallery image.

        Parameters
        ----------
        vec : ndarray, shape (D,) or (B, D) (or grid shapes, see class doc)

        Returns
        -------
        ndarray, float32, shape (N,) for one query or (B, N) for a batch
        """
        q, single = self._queries(vec)
        s = q @ self._matrix.T
        return s[0] if single else s

    def topk(
        self, vec: np.ndarray, k: int = 5
    ) -> list[tuple[str, float]] | list[list[tuple[str, float]]]:
        """Gallery images nearest to the query, best first.

        Parameters
        ----------
        vec : ndarray, shape (D,) or (B, D)
        k : int
            Results per query (at most N).

        Returns
        -------
        list of (id, cosine score) for one query, or one such list per row of a batch.
        """
        if k < 1:
            raise ValueError(f"k={k} must be at least 1.")
        q, single = self._queries(vec)
        s = q @ self._matrix.T  # (B, N)
        n = s.shape[1]
        k = min(int(k), n)
        if k < n:
            # Partition on the scores themselves: negating would copy an (B, N) array.
            part = np.argpartition(s, n - k, axis=1)[:, n - k :]
        else:
            part = np.broadcast_to(np.arange(n), (s.shape[0], n))
        top = np.take_along_axis(s, part, axis=1)
        order = np.argsort(-top, axis=1, kind="stable")
        idx = np.take_along_axis(part, order, axis=1)
        val = np.take_along_axis(top, order, axis=1)
        out = [
            [(self.ids[j], float(v)) for j, v in zip(row_i, row_v, strict=True)]
            for row_i, row_v in zip(idx, val, strict=True)
        ]
        return out[0] if single else out

    def rank_of(self, vec: np.ndarray, true_id: str) -> int:
        """Rank of ``true_id`` for the query ``vec`` (1 = best).

        Ties count against the true image (:func:`ranks_from_scores`).
        """
        return int(self.ranks(np.asarray(vec)[None], [true_id])[0])

    def ranks(self, vecs: np.ndarray, true_ids: Sequence[str]) -> np.ndarray:
        """Rank (1 = best) of ``true_ids[b]`` for each query ``vecs[b]``.

        Parameters
        ----------
        vecs : ndarray, shape (B, D)
        true_ids : sequence of str, length B

        Returns
        -------
        ndarray, int64, shape (B,)
        """
        q, single = self._queries(vecs)
        if single or q.shape[0] != len(true_ids):
            raise ValueError(
                f"Got {q.shape[0]} queries and {len(true_ids)} true ids; give one id per query."
            )
        rows = np.empty(len(true_ids), dtype=np.int64)
        for b, tid in enumerate(true_ids):
            try:
                rows[b] = self._row[str(tid)]
            except KeyError:
                raise KeyError(
                    f"True id {tid!r} is not among the {len(self.ids)} gallery ids; "
                    "check the marker's image id against the gallery."
                ) from None
        return ranks_from_scores(q @ self._matrix.T, rows)
