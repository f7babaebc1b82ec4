"""Riemannian ERP encoder: Xdawn covariances, tangent space, a linear map to the embedding.

The pyriemann pipeline ``XdawnCovariances`` + ``TangentSpace`` (Barachant & Congedo
2014), the field's strongest tutorial decoder of single-trial ERPs, as a servable
encoder of the embedding-and-retrieval design. Each window is a whole epoch (the live
service cuts a window of the trained length every hop), so no streaming covariance is
needed. For a window ``x`` (n_channels, n_times):

1. ``z = F x``: the fitted Xdawn spatial filters (n_classes * n_filters, n_channels);
2. ``S = [P; z]``: the filtered class prototypes (evoked responses) stacked on top;
3. ``C = cov(S)``: sample covariance (centred, divided by n_times), optionally with
   Oracle Approximating Shrinkage and/or a fixed shrinkage towards ``trace/m * I``;
4. ``t = upper(logm(M^{-1/2} C M^{-1/2}))``: the tangent vector at the fitted
   Riemannian mean ``M`` (off-diagonal entries weighted by sqrt(2));
5. ``y = W t + b``: a ridge map onto the standardised image embedding. For category
   targets the embeddings are the category means, so retrieval among categories is
   the ridge decision. ``b`` carries a fixed part orthogonal to every training target,
   which changes no ranking but keeps the cosine score of two categories a smooth,
   monotonic function of the decision (so it ranks trials for ROC AUC).

Steps 1-4 run in float64 with autocast off; fitting (:func:`fit_riemann`) uses pyriemann.

Threading: a module is called from one thread (the worker's inference lane).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from rtdecode.encoder.presets import BrainConfig

__all__ = ["RiemannModule", "fit_riemann", "tangent_vectors_reference"]


def _check_positions(positions: np.ndarray | torch.Tensor, n_channels: int) -> np.ndarray:
    pos = np.asarray(positions, dtype=np.float32)
    if pos.shape != (n_channels, 2):
        raise ValueError(
            f"positions has shape {pos.shape} but the model has {n_channels} channels; give "
            f"one (x, y) row per channel, shape ({n_channels}, 2)."
        )
    return pos


class RiemannModule(nn.Module):
    """Xdawn covariances -> tangent space -> linear map, as a batch encoder.

    Parameters
    ----------
    config : BrainConfig
        ``kind="riemann"``; ``n_channels``, ``n_times``, ``target_shape`` and the
        ``riemann_*`` fields apply.
    positions : array, shape (config.n_channels, 2)
        Kept with the weights (the checkpoint contract); the model does not use them.

    Notes
    -----
    Buffers (float64): ``filters`` (K*F, C), ``prototypes`` (K*F, T) and
    ``mean_isqrt`` (m, m) with m = 2*K*F; parameters: ``linear`` (m(m+1)/2 -> D).
    Subjects are accepted and ignored (one map for all).
    """

    def __init__(self, config: BrainConfig, positions: np.ndarray | torch.Tensor) -> None:
        super().__init__()
        self.config = config
        n_src = config.riemann_classes * min(config.riemann_filters, config.n_channels)
        self.n_matrix = 2 * n_src
        self.register_buffer("positions", torch.from_numpy(
            _check_positions(positions, config.n_channels).copy()))
        self.register_buffer("filters", torch.zeros(n_src, config.n_channels, dtype=torch.float64))
        self.register_buffer("prototypes", torch.zeros(n_src, config.n_times, dtype=torch.float64))
        self.register_buffer("mean_isqrt", torch.eye(self.n_matrix, dtype=torch.float64))
        rows, cols = torch.triu_indices(self.n_matrix, self.n_matrix)
        self.register_buffer("_rows", rows, persistent=False)
        self.register_buffer("_cols", cols, persistent=False)
        weight = torch.where(rows == cols, 1.0, 2.0**0.5).to(torch.float64)
        self.register_buffer("_coeffs", weight, persistent=False)
        self.linear = nn.Linear(len(rows), int(np.prod(config.target_shape)))

    def covariances(self, x: torch.Tensor) -> torch.Tensor:
        """Xdawn covariances of windows x (B, C, T): float64 (B, m, m)."""
        c = self.config
        c.check_window_shape(tuple(x.shape))
        z = self.filters @ x.to(torch.float64)
        s = torch.cat([self.prototypes.expand(len(x), -1, -1), z], dim=1)
        s = s - s.mean(dim=2, keepdim=True)
        cov = s @ s.transpose(1, 2) / c.n_times
        m = cov.shape[-1]
        eye = torch.eye(m, dtype=cov.dtype, device=cov.device)
        mu = torch.diagonal(cov, dim1=1, dim2=2).mean(dim=1)[:, None, None]
        if c.riemann_estimator == "oas":  # sklearn.covariance.oas, per window
            alpha = (cov**2).mean(dim=(1, 2), keepdim=True)
            den = (c.n_times + 1) * (alpha - mu**2 / m)
            shrink = torch.where(den == 0, torch.ones_like(den),
                                 torch.clamp((alpha + mu**2) / den, max=1.0))
            cov = (1 - shrink) * cov + shrink * mu * eye
        if c.riemann_shrinkage:
            a = c.riemann_shrinkage
            cov = (1 - a) * cov + a * mu * eye
        return cov

    def tangent(self, x: torch.Tensor) -> torch.Tensor:
        """Tangent vectors of windows x (B, C, T) at the fitted mean: float64 (B, m(m+1)/2)."""
        with torch.autocast(x.device.type, enabled=False):
            cov = self.covariances(x)
            white = self.mean_isqrt @ cov @ self.mean_isqrt
            white = (white + white.transpose(1, 2)) / 2
            w, v = torch.linalg.eigh(white)
            # a flat window (a disconnected headset) has zero eigenvalues: stay finite
            log = v @ torch.diag_embed(torch.log(w.clamp_min(1e-12))) @ v.transpose(1, 2)
            return log[:, self._rows, self._cols] * self._coeffs

    def forward(
        self, x: torch.Tensor, subject: torch.Tensor | None = None
    ) -> dict[str, torch.Tensor]:
        """Predict from x (B, n_channels, n_times): {"clip", "mse"}, each (B, D) or (B, N, D)."""
        t = self.tangent(x).to(self.linear.weight.dtype)
        y = self.linear(t).reshape(x.shape[0], *self.config.target_shape)
        return {"clip": y, "mse": y}

    @torch.no_grad()
    def set_fitted(self, filters: np.ndarray, prototypes: np.ndarray, mean: np.ndarray,
                   weight: np.ndarray, bias: np.ndarray) -> None:
        """Load a fit (:func:`fit_riemann`).

        Parameters
        ----------
        filters : array, shape (K*F, C)
        prototypes : array, shape (K*F, T)
        mean : array, shape (m, m)
            The Riemannian mean of the training covariances (SPD).
        weight : array, shape (D, m(m+1)/2)
        bias : array, shape (D,)
        """
        w, v = np.linalg.eigh(np.asarray(mean, np.float64))
        isqrt = (v / np.sqrt(w)) @ v.T
        for name, value in (("filters", filters), ("prototypes", prototypes),
                            ("mean_isqrt", isqrt)):
            buf = getattr(self, name)
            value = torch.as_tensor(np.asarray(value, np.float64))
            if tuple(value.shape) != tuple(buf.shape):
                raise ValueError(
                    f"The fitted {name} has shape {tuple(value.shape)} but the model's "
                    f"architecture needs {tuple(buf.shape)}; build the model from the fit's sizes."
                )
            buf.copy_(value)
        self.linear.weight.copy_(torch.as_tensor(np.asarray(weight, np.float32)))
        self.linear.bias.copy_(torch.as_tensor(np.asarray(bias, np.float32)))


def tangent_vectors_reference(X: np.ndarray, labels: Sequence, n_filters: int,
                              estimator: str, shrinkage: float = 0.0):
    """Fit pyriemann's XdawnCovariances + TangentSpace on X: (xdawn, ts, vectors).

    Parameters
    ----------
    X : array, shape (n, C, T)
    labels : sequence, length n
    n_filters : int
    estimator : ``"scm"`` or ``"oas"``
    shrinkage : float
        Fixed shrinkage after the estimator (pyriemann's ``Shrinkage``).

    Returns
    -------
    xdawn : pyriemann.estimation.XdawnCovariances
    ts : pyriemann.tangentspace.TangentSpace
    vectors : ndarray, float64, shape (n, m(m+1)/2)
    """
    from pyriemann.estimation import Shrinkage, XdawnCovariances
    from pyriemann.tangentspace import TangentSpace

    X = np.asarray(X, np.float64)
    xdawn = XdawnCovariances(nfilter=n_filters, estimator=estimator, xdawn_estimator="scm")
    covs = xdawn.fit(X, np.asarray(labels)).transform(X)
    if shrinkage:
        covs = Shrinkage(shrinkage=shrinkage).fit_transform(covs)
    ts = TangentSpace(metric="riemann").fit(covs)
    return xdawn, ts, ts.transform(covs)


def fit_riemann(
    X: np.ndarray, Y: np.ndarray, labels: Sequence, positions: np.ndarray, config: BrainConfig,
    alphas: Sequence[float], seed: int = 0,
) -> tuple[RiemannModule, float]:
    """Fit Xdawn, the Riemannian mean and the ridge map; return the module.

    Parameters
    ----------
    X : array, shape (n, C, T)
        Preprocessed training windows (one per trial).
    Y : array, shape (n, D) or (n, N, D)
        Standardised target embeddings (the category mean for category labels).
    labels : sequence, length n
        The class of each window (category or image id): Xdawn's classes.
    positions : array, shape (C, 2)
    config : BrainConfig
        ``kind="riemann"``; its sizes are replaced by the data's.
    alphas : sequence of float
        Ridge penalties (chosen by efficient leave-one-out, ``RidgeCV``). The tangent
        vectors are not standardised first: whitening by the mean already puts them on
        one scale, as pyriemann's pipelines feed them to a classifier.
    seed : int
        Seed of the fixed bias part orthogonal to the targets.

    Returns
    -------
    model : RiemannModule
        In eval mode.
    alpha : float
        The chosen ridge penalty.
    """
    from sklearn.linear_model import RidgeCV

    X = np.asarray(X, np.float64)
    Y = np.asarray(Y, np.float32)
    labels = np.asarray([str(v) for v in labels])
    classes = np.unique(labels)
    if not 2 <= len(classes) <= 16:
        raise ValueError(
            f"The riemann encoder stacks one Xdawn prototype per class and needs 2 to 16 "
            f"classes, but the training windows have {len(classes)}; train it on category "
            "labels (a card with `labels = \"category\"`) or use the ridge or deep presets."
        )
    config = config.replace(n_channels=X.shape[1], n_times=X.shape[2],
                            riemann_classes=len(classes), target_shape=Y.shape[1:])
    xdawn, ts, vectors = tangent_vectors_reference(
        X, labels, config.riemann_filters, config.riemann_estimator, config.riemann_shrinkage)
    ridge = RidgeCV(alphas=list(alphas)).fit(vectors, Y.reshape(len(Y), -1))
    weight, bias = np.atleast_2d(ridge.coef_), np.atleast_1d(ridge.intercept_)
    alpha = float(ridge.alpha_)
    # A fixed bias part orthogonal to every target: the cosine ranks of the candidates are
    # unchanged, and two categories' score becomes a smooth function of the decision.
    flat = Y.reshape(len(Y), -1).astype(np.float64)
    basis, _ = np.linalg.qr(np.unique(flat, axis=0).T)
    if basis.shape[1] < flat.shape[1]:
        anchor = np.random.default_rng(seed).standard_normal(flat.shape[1])
        anchor -= basis @ (basis.T @ anchor)
        spread = np.sqrt(np.mean(np.sum((vectors @ weight.T) ** 2, axis=1)))
        bias = bias + anchor / np.linalg.norm(anchor) * max(spread, 1e-6)
    model = RiemannModule(config, positions)
    model.set_fitted(xdawn.Xd_.filters_, xdawn.P_, ts.reference_, weight, bias)
    return model.eval(), alpha
