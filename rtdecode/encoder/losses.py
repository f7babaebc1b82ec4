"""Training objectives of the brain encoder: CLIP (contrastive), MSE, and their mix.

Benchetrit et al. (2024) train the CLIP head with a contrastive loss (good for retrieval)
and the MSE head with a regression loss (good for generation, which needs embeddings
at the right scale), and sum them as ``lam * clip + (1 - lam) * mse``.

Under DistributedDataParallel the contrastive loss is computed over the *global* batch:
each rank gathers every rank's predictions and targets with a differentiable all-gather,
so the negatives, and therefore the gradients, are those of one process that sees the
whole batch. Threading: a loss module belongs to the training loop's thread.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from rtdecode.encoder.model import all_gather_rows

CLIP_INIT_TEMPERATURE = 0.07  # CLIP's initial temperature (logit scale log(1/0.07))
CLIP_MAX_LOGIT_SCALE = 100.0  # CLIP clamps the learned scale at 100


def _flat(x: torch.Tensor) -> torch.Tensor:
    """(B, D) or (B, N, D) -> (B, N*D): a token grid is compared as one long vector."""
    return x.reshape(x.shape[0], -1)


def clip_loss(
    pred: torch.Tensor, target: torch.Tensor, logit_scale: torch.Tensor | float
) -> torch.Tensor:
    """Symmetric InfoNCE over cosine similarities (CLIP).

    Row i of ``pred`` should match row i of ``target`` and no other row of the batch.

    Parameters
    ----------
    pred, target : Tensor, shape (B, D) or (B, N, D)
    logit_scale : Tensor or float
        Multiplies the cosine similarities (``1 / temperature``).

    Returns
    -------
    Tensor, scalar
        Mean of the brain->image and image->brain cross-entropies.
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"Predictions {tuple(pred.shape)} and targets {tuple(target.shape)} differ in shape."
        )
    p = F.normalize(_flat(pred), dim=-1)
    t = F.normalize(_flat(target), dim=-1)
    logits = logit_scale * (p @ t.T)
    labels = torch.arange(p.shape[0], device=p.device)
    return 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))


def mse_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over every element, shape-checked.

    Parameters
    ----------
    pred, target : Tensor, shape (B, D) or (B, N, D)
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"Predictions {tuple(pred.shape)} and targets {tuple(target.shape)} differ in shape."
        )
    return F.mse_loss(pred, target)


class CombinedLoss(nn.Module):
    """``lam * clip_loss(out["clip"], y) + (1 - lam) * mse_loss(out["mse"], y)``.

    Parameters
    ----------
    lam : float
        Weight of the contrastive term, in [0, 1] (0.75 as in Benchetrit et al.).
    learn_temperature : bool
        Learn the CLIP logit scale (initialised like CLIP at 1/0.07, clamped at 100).
    temperature : float
        Initial (or fixed) temperature.
    gather : bool
        Under DDP, compute the contrastive term over the global batch.
    """

    def __init__(
        self,
        lam: float = 0.75,
        *,
        learn_temperature: bool = True,
        temperature: float = CLIP_INIT_TEMPERATURE,
        gather: bool = True,
    ) -> None:
        super().__init__()
        if not 0.0 <= lam <= 1.0:
            raise ValueError(f"lam={lam} must lie in [0, 1] (the weight of the CLIP loss).")
        if temperature <= 0:
            raise ValueError(f"temperature={temperature} must be positive.")
        self.lam = float(lam)
        self.gather = gather
        init = torch.tensor(math.log(1.0 / temperature))
        if learn_temperature:
            self.log_logit_scale = nn.Parameter(init)
        else:
            self.register_buffer("log_logit_scale", init)

    @property
    def logit_scale(self) -> torch.Tensor:
        """The CLIP loss's temperature as a multiplier, clamped to ``CLIP_MAX_LOGIT_SCALE``."""
        return self.log_logit_scale.exp().clamp(max=CLIP_MAX_LOGIT_SCALE)

    def forward(
        self,
        outputs: dict[str, torch.Tensor],
        target: torch.Tensor,
        *,
        gather: bool | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of a batch.

        Parameters
        ----------
        outputs : dict
            ``{"clip": (B, ...), "mse": (B, ...)}`` from :class:`BrainModule`.
        target : Tensor, shape (B, D) or (B, N, D)
            Standardised image embeddings.
        gather : bool, optional
            Override ``self.gather`` (validation on a set every rank holds whole
            must not gather).

        Returns
        -------
        loss : Tensor, scalar
        parts : dict of detached scalars ``clip``, ``mse``, ``logit_scale``
        """
        zero = target.new_zeros(())
        clip = zero
        if self.lam > 0:
            pred, tgt = outputs["clip"], target
            if self.gather if gather is None else gather:
                pred, tgt = all_gather_rows(pred), all_gather_rows(tgt)
            clip = clip_loss(pred, tgt, self.logit_scale)
        mse = mse_loss(outputs["mse"], target) if self.lam < 1 else zero
        loss = self.lam * clip + (1.0 - self.lam) * mse
        parts = {
            "clip": clip.detach(),
            "mse": mse.detach(),
            "logit_scale": self.logit_scale.detach(),
        }
        return loss, parts


__all__ = ["CombinedLoss", "clip_loss", "mse_loss"]
