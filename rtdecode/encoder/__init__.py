"""Brain encoder: BrainModule, presets, losses, checkpoints, metrics, batch-1 runner.

Names are loaded on first use, so ``rtdecode.encoder.metrics`` and ``.presets`` (numpy
only) can be imported without paying for torch; everything else imports torch.
"""

from __future__ import annotations

from rtdecode._utils.lazy import lazy_exports

_EXPORTS = {
    "BrainConfig": "presets",
    "PRESETS": "presets",
    "get_preset": "presets",
    "BrainModule": "model",
    "build_model": "model",
    "count_parameters": "model",
    "clip_loss": "losses",
    "mse_loss": "losses",
    "CombinedLoss": "losses",
    "save_checkpoint": "checkpoint",
    "load_checkpoint": "checkpoint",
    "open_checkpoint": "checkpoint",
    "CheckpointCard": "card",
    "read_config": "checkpoint",
    "describe_model": "checkpoint",
    "standardize": "metrics",
    "destandardize": "metrics",
    "retrieval_metrics": "metrics",
    "EncoderRunner": "runner",
    "RiemannModule": "riemann",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
