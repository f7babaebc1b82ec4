"""Brain encoder: BrainModule, presets, losses, checkpoints and retrieval metrics.

Names are loaded on first use, so ``rtdecode.encoder.metrics`` and ``.presets`` (numpy
only) can be imported without paying for torch; everything else imports torch.
"""

from __future__ import annotations

import importlib
from typing import Any

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
    "read_config": "checkpoint",
    "describe_model": "checkpoint",
    "standardize": "metrics",
    "destandardize": "metrics",
    "retrieval_metrics": "metrics",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'rtdecode.encoder' has no attribute {name!r}")
    value = getattr(importlib.import_module(f"rtdecode.encoder.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))
