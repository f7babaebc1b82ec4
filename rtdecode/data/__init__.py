"""Offline data: recordings on disk (``recordings``), datasets and the simulated subject.

Kept import-light on purpose: names load on first use, so ``import rtdecode.data`` does
not load MNE (``rtdecode.data.read_recording`` does).
"""

from __future__ import annotations

from rtdecode._utils.lazy import lazy_exports

_EXPORTS = {
    "Recording": "recordings",
    "Event": "recordings",
    "RecordingError": "recordings",
    "read_recording": "recordings",
    "EpochSet": "datasets",
    "load_epochs": "datasets",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
