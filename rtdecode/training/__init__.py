"""Offline fitting and scoring: the brain encoder's training and its evaluation.

- encoder.py   ``rtdecode train``: recipes, the training loop, resume state.
- evaluate.py  ``rtdecode evaluate``: retrieval scores, a ridge baseline, plots.
- decoder.py   ``rtdecode train-decoder``: the tiny decoder's training; embedding fidelity.
- sweeps.py    ``rtdecode time-resolved``: one model per window position, as submitit jobs.
- online.py    ``rtdecode evaluate-online``: a recording replayed through the live path.
- state.py     the one resume format (``<out>/training/``) of both trainings.

Names load on first use, so ``import rtdecode.training`` loads no torch.
"""

from __future__ import annotations

from rtdecode._utils.lazy import lazy_exports

_EXPORTS = {
    "time_resolved": "sweeps",
    "Recipe": "encoder",
    "load_recipe": "encoder",
    "train": "encoder",
    "train_arrays": "encoder",
    "TrainResult": "encoder",
    "evaluate": "evaluate",
    "evaluate_online": "online",
    "train_decoder": "decoder",
    "save_training_state": "state",
    "load_training_state": "state",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
