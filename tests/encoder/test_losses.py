"""Losses on constructed inputs: perfect predictions give the minimum, shuffled give more."""

from __future__ import annotations

import math

import pytest
import torch

from rtdecode.encoder.losses import CombinedLoss, clip_loss, mse_loss

torch.set_num_threads(1)


def _targets(b: int = 16, d: int = 32, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, d, generator=torch.Generator().manual_seed(seed))


def test_clip_perfect_is_minimum_and_shuffled_is_worse():
    y = _targets()
    perfect = clip_loss(y, y, logit_scale=100.0)
    shuffled = clip_loss(y[torch.roll(torch.arange(16), 1)], y, logit_scale=100.0)
    assert perfect < 1e-3
    assert shuffled > perfect + 1.0
    # Cosine similarity: scale of the prediction does not matter.
    assert torch.allclose(clip_loss(3.0 * y, y, 100.0), perfect, atol=1e-5)


def test_clip_constant_prediction_is_at_chance():
    y = _targets(b=8)
    # Identical predictions: every image sees a uniform softmax over the 8 windows, so
    # the image->brain half is exactly log(8) and the whole loss at least half that.
    loss = clip_loss(torch.ones(8, 32), y, logit_scale=1.0)
    assert loss.item() >= 0.5 * math.log(8) - 1e-6
    assert clip_loss(y, y, logit_scale=1.0) < loss


def test_clip_is_symmetric_and_accepts_token_grids():
    y = _targets(b=6, d=12)
    p = _targets(b=6, d=12, seed=1)
    assert torch.allclose(clip_loss(p, y, 10.0), clip_loss(y, p, 10.0), atol=1e-6)
    grid_p, grid_y = p.reshape(6, 3, 4), y.reshape(6, 3, 4)
    assert torch.allclose(clip_loss(grid_p, grid_y, 10.0), clip_loss(p, y, 10.0))


def test_mse_perfect_is_zero_and_shape_checked():
    y = _targets()
    assert mse_loss(y, y) == 0
    assert mse_loss(y.flip(0), y) > 0.5
    with pytest.raises(ValueError, match="differ in shape"):
        mse_loss(y[:, :3], y)


def test_combined_loss_weights_and_learnable_temperature():
    y = _targets()
    loss_fn = CombinedLoss()
    assert loss_fn.lam == 0.75
    assert math.isclose(loss_fn.logit_scale.item(), 1 / 0.07, rel_tol=1e-5)
    outputs = {"clip": y.flip(0).requires_grad_(), "mse": y.flip(0).requires_grad_()}
    loss, parts = loss_fn(outputs, y)
    expected = 0.75 * parts["clip"] + 0.25 * parts["mse"]
    assert torch.allclose(loss, expected)
    loss.backward()
    assert loss_fn.log_logit_scale.grad is not None
    perfect, _ = loss_fn({"clip": y, "mse": y}, y)
    assert perfect < loss
    only_mse = CombinedLoss(lam=0.0)
    assert torch.allclose(only_mse({"clip": y.flip(0), "mse": y}, y)[0], torch.tensor(0.0))
    with pytest.raises(ValueError, match="lam"):
        CombinedLoss(lam=1.5)


def test_logit_scale_is_clamped_like_clip():
    loss_fn = CombinedLoss(temperature=1e-4)
    assert loss_fn.logit_scale.item() == 100.0
    fixed = CombinedLoss(learn_temperature=False)
    assert not any(p is fixed.log_logit_scale for p in fixed.parameters())
