"""Rescale predicted embeddings onto the distribution a decoder was trained on.

A brain encoder trained with a regression loss predicts embeddings that are shrunk towards
the mean and sit on a different scale per dimension than real image embeddings. Before
they reach a generative decoder, brain-diffuser (Ozcelik & VanRullen, 2023) and Benchetrit
et al. (2024) z-score the predictions and then apply the per-dimension mean and standard
deviation of the decoder's training embeddings. :class:`EmbeddingNormalizer` does exactly
that, and also covers the real-time case where only one prediction exists at a time.

Pure numpy: no torch, no thread of its own; an instance is read-only after ``fit`` and may
be shared between threads.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_FORMAT = "rtdecode.embedding_normalizer/1"


def _as_2d(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim == 1:
        x = x[None]
    if x.ndim != 2:
        raise ValueError(
            f"{name} must have shape (D,) or (N, D), got shape {x.shape}; flatten token grids "
            "to one vector per image first."
        )
    return x


class EmbeddingNormalizer:
    """Map embeddings onto the per-dimension statistics of a decoder's training set.

    Parameters
    ----------
    mean, std : ndarray, shape (D,), optional
        Statistics of the training embeddings (set by :meth:`fit` otherwise).
    source_mean, source_std : ndarray, shape (D,), optional
        Statistics of the *predicted* embeddings, e.g. of a brain encoder's predictions on
        its validation set (set by :meth:`fit_source` otherwise).
    eps : float
        Floor for standard deviations, so constant dimensions do not divide by zero.

    Notes
    -----
    :meth:`transform` z-scores each prediction and applies the training statistics:
    ``out = mean + std * z``. How ``z`` is obtained depends on what is known:

    1. with source statistics, per dimension: ``z = (x - source_mean) / source_std``;
    2. with a batch of at least two predictions and no source statistics, per dimension
       over the batch (brain-diffuser's recipe, for offline evaluation);
    3. with a single prediction and nothing else (real time, uncalibrated), the prediction
       is first expressed in training units, ``z = (x - mean) / std``, then rescaled so
       that its root mean square over dimensions is 1 -- the value a z-scored training
       embedding has on average. This undoes the global shrinkage of a regression
       prediction without inventing per-dimension statistics from one vector.
    """

    def __init__(
        self,
        mean: np.ndarray | None = None,
        std: np.ndarray | None = None,
        *,
        source_mean: np.ndarray | None = None,
        source_std: np.ndarray | None = None,
        eps: float = 1e-6,
    ) -> None:
        self.eps = float(eps)
        self.mean = None if mean is None else np.asarray(mean, dtype=np.float32).reshape(-1)
        self.std = None if std is None else np.asarray(std, dtype=np.float32).reshape(-1)
        self.source_mean = (
            None if source_mean is None else np.asarray(source_mean, dtype=np.float32).reshape(-1)
        )
        self.source_std = (
            None if source_std is None else np.asarray(source_std, dtype=np.float32).reshape(-1)
        )
        self._check_dims()

    # ------------------------------------------------------------------ fitting
    @property
    def dim(self) -> int | None:
        """Embedding dimension D, or None before :meth:`fit`."""
        return None if self.mean is None else int(self.mean.shape[0])

    @property
    def is_fitted(self) -> bool:
        """True once ``fit`` (or loading) has set the mean and std."""
        return self.mean is not None and self.std is not None

    def fit(self, embeddings: np.ndarray) -> EmbeddingNormalizer:
        """Record the per-dimension mean and std of training embeddings.

        Parameters
        ----------
        embeddings : ndarray, shape (N, D), N >= 2
        """
        self.mean, self.std = self._stats(embeddings, "fit")
        self._check_dims()
        return self

    def fit_source(self, predictions: np.ndarray) -> EmbeddingNormalizer:
        """Record the per-dimension statistics of predicted embeddings.

        Parameters
        ----------
        predictions : ndarray, shape (N, D), N >= 2
            Predictions of the model whose outputs will be fed to :meth:`transform`,
            on data it was not trained on.
        """
        self.source_mean, self.source_std = self._stats(predictions, "fit_source")
        self._check_dims()
        return self

    def _stats(self, x: np.ndarray, method: str) -> tuple[np.ndarray, np.ndarray]:
        x = _as_2d(x, "embeddings")
        if x.shape[0] < 2:
            raise ValueError(
                f"{method} needs at least 2 embeddings to estimate a spread, got {x.shape[0]}."
            )
        return x.mean(axis=0).astype(np.float32), np.maximum(x.std(axis=0), self.eps).astype(
            np.float32
        )

    def _check_dims(self) -> None:
        dims = {
            name: v.shape[0]
            for name, v in (
                ("mean", self.mean),
                ("std", self.std),
                ("source_mean", self.source_mean),
                ("source_std", self.source_std),
            )
            if v is not None
        }
        if len(set(dims.values())) > 1:
            raise ValueError(f"Normaliser statistics disagree on the dimension: {dims}.")

    # ---------------------------------------------------------------- transform
    def transform(self, predictions: np.ndarray) -> np.ndarray:
        """Rescale predictions onto the training distribution (see the class notes).

        Parameters
        ----------
        predictions : ndarray, shape (D,) or (B, D)

        Returns
        -------
        ndarray, float32, same shape as ``predictions``
        """
        if not self.is_fitted:
            raise RuntimeError(
                "This EmbeddingNormalizer is not fitted; call fit(train_embeddings)."
            )
        shape = np.shape(predictions)
        x = _as_2d(predictions, "predictions")
        if x.shape[1] != self.dim:
            raise ValueError(
                f"The predictions have dimension {x.shape[1]} but the normaliser was fitted on "
                f"dimension {self.dim}; use the normaliser of the decoder the predictions feed."
            )
        mean = self.mean.astype(np.float64)
        std = self.std.astype(np.float64)
        if self.source_mean is not None and self.source_std is not None:
            z = (x - self.source_mean) / self.source_std
        elif x.shape[0] >= 2:
            z = (x - x.mean(axis=0)) / np.maximum(x.std(axis=0), self.eps)
        else:
            z = (x - mean) / std
            rms = np.sqrt(np.mean(z**2, axis=1, keepdims=True))
            z = z / np.maximum(rms, self.eps)
        return (mean + std * z).astype(np.float32).reshape(shape)

    def standardize(self, embeddings: np.ndarray) -> np.ndarray:
        """Express embeddings in training units, ``(x - mean) / std``; same shape, float32."""
        if not self.is_fitted:
            raise RuntimeError(
                "This EmbeddingNormalizer is not fitted; call fit(train_embeddings)."
            )
        x = np.asarray(embeddings, dtype=np.float32)
        return ((x - self.mean) / self.std).astype(np.float32)

    # ------------------------------------------------------------ serialisation
    def to_dict(self) -> dict[str, Any]:
        """JSON-able statistics (lists of floats); :meth:`from_dict` restores them."""

        def lst(v: np.ndarray | None) -> list[float] | None:
            return None if v is None else [float(a) for a in v]

        return {
            "format": _FORMAT,
            "dim": self.dim,
            "eps": self.eps,
            "mean": lst(self.mean),
            "std": lst(self.std),
            "source_mean": lst(self.source_mean),
            "source_std": lst(self.source_std),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EmbeddingNormalizer:
        """Rebuild a normaliser from :meth:`to_dict` output (or ``{"mean", "std"}``)."""
        fmt = d.get("format", _FORMAT)
        if fmt != _FORMAT:
            raise ValueError(f"Unknown embedding normaliser format {fmt!r}; expected {_FORMAT!r}.")
        return cls(
            d.get("mean"),
            d.get("std"),
            source_mean=d.get("source_mean"),
            source_std=d.get("source_std"),
            eps=d.get("eps", 1e-6),
        )

    def __repr__(self) -> str:
        src = "calibrated" if self.source_mean is not None else "uncalibrated"
        return f"EmbeddingNormalizer(dim={self.dim}, {src})"


__all__ = ["EmbeddingNormalizer"]


def rescale_prediction(
    prediction: np.ndarray,
    target_stats: dict[str, Any] | None = None,
    normalizer: EmbeddingNormalizer | None = None,
) -> np.ndarray:
    """The one rescale of a brain encoder's prediction before it reaches a decoder.

    The live worker and offline generation both call this function. The MSE head
    predicts embeddings z-scored with the checkpoint's ``target_stats``; the prediction is
    first brought back to embedding units, then :meth:`EmbeddingNormalizer.transform`
    maps it onto the decoder's training distribution: with the decoder's own
    ``normalizer`` when it has one, else with the statistics of the encoder's training
    embeddings (``target_stats``).

    Parameters
    ----------
    prediction : ndarray, shape (D,) or (B, D) (token grids are flattened)
        The MSE head's output, in ``target_stats`` units.
    target_stats : dict, optional
        ``{"mean": ..., "std": ...}`` of the checkpoint (``config.json``).
    normalizer : EmbeddingNormalizer, optional
        The decoder's (``decoder.normalizer``).

    Returns
    -------
    ndarray, float32, same shape as ``prediction``
    """
    x = np.asarray(prediction, dtype=np.float32)
    shape = x.shape
    single = x.ndim == 1 or (target_stats is not None and x.shape == np.shape(target_stats["mean"]))
    x = x.reshape(1 if single else shape[0], -1)
    if target_stats:
        mean = np.asarray(target_stats["mean"], dtype=np.float32).reshape(-1)
        std = np.asarray(target_stats["std"], dtype=np.float32).reshape(-1)
        x = x * std + mean
        if normalizer is None or not normalizer.is_fitted:
            normalizer = EmbeddingNormalizer(mean, std)
    if normalizer is None or not normalizer.is_fitted:
        return x.reshape(shape)
    return normalizer.transform(x[0] if single else x).reshape(shape)
