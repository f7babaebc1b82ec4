"""Units as streams and files declare them, and the factor to SI (V, T, T/m).

Models are trained on SI values (MNE holds V and T). A stream that declares another
unit per channel (muse-lsl: ``"microvolts"``; many EEG amplifiers: ``"uV"``) is scaled to
SI as it is read, so the same model decodes it. Unknown or empty units are left as they
are (factor 1): an LSL stream without a unit is taken to be in SI, as rtdecode's own
replay sends it.

Plain functions; no state, no thread.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["si_factor", "si_factors"]

_PREFIXES = {"": 1.0, "n": 1e-9, "u": 1e-6, "µ": 1e-6, "μ": 1e-6, "m": 1e-3,
             "nano": 1e-9, "micro": 1e-6, "milli": 1e-3, "f": 1e-15, "femto": 1e-15,
             "p": 1e-12, "pico": 1e-12}
_BASES = ("volts", "volt", "v", "tesla", "t")


def si_factor(unit: str | None) -> float:
    """The factor that turns a value in ``unit`` into SI.

    ``"microvolts"``, ``"uV"``, ``"µV"`` -> 1e-6; ``"mV"`` -> 1e-3; ``"fT"`` -> 1e-15;
    ``"V"``, ``"T"``, ``"T/m"``, ``""``, None and anything unknown -> 1.0.
    """
    text = (unit or "").strip()
    low = text.lower()
    for base in _BASES:
        if low.endswith(base):
            prefix = text[: len(text) - len(base)]
            key = prefix if prefix in ("µ", "μ") else prefix.lower()
            return _PREFIXES.get(key, 1.0)
    return 1.0


def si_factors(units: Sequence[str | None]) -> np.ndarray | None:
    """Per-channel factors to SI, shape (n_channels,) float32; None when all are 1."""
    f = np.array([si_factor(u) for u in units], dtype=np.float32)
    return None if f.size == 0 or bool((f == 1.0).all()) else f
