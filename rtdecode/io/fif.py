"""The one builder of an mne.Info from an LSL stream description (FIF files).

``rtdecode record`` (``record.py``) and ``serve --record`` (``segments.py``) both write
FIF through :func:`build_info`: channel names made unique, LSL types mapped to MNE's,
positions and mne-lsl's FIFF fields kept, scaled units calibrated to SI.
"""

from __future__ import annotations

import mne
import numpy as np

from rtdecode.lsl.streams import FIFF_INT_KEYS, StreamDescription

__all__ = ["build_info"]

# Scaled units a source may declare -> factor to SI (lower case, as mne-lsl reads them).
_UNIT_SCALE = {
    "uv": 1e-6,
    "µv": 1e-6,
    "microvolt": 1e-6,
    "microvolts": 1e-6,
    "mv": 1e-3,
    "millivolt": 1e-3,
    "millivolts": 1e-3,
    "nv": 1e-9,
    "ft": 1e-15,
    "femtotesla": 1e-15,
    "pt": 1e-12,
    "picotesla": 1e-12,
    "nt": 1e-9,
    "ft/cm": 1e-13,
    "ft/m": 1e-15,
}


def _mne_type(ch_type: str, default: str) -> str:
    t = (ch_type or "").strip().lower()
    if t in {"marker", "markers", "trigger"}:
        t = "stim"
    if t == "meg":
        t = "mag"
    return t if t in mne.io.get_channel_type_constants() else default


def _unique(names: list[str]) -> list[str]:
    seen: dict[str, int] = {}
    out = []
    for n in names:
        if n in seen:
            seen[n] += 1
            n = f"{n}-{seen[n]}"
        seen.setdefault(n, 0)
        out.append(n)
    return out


def build_info(desc: StreamDescription, fiff_chs: list[dict], filters: dict) -> mne.Info:
    """The mne.Info of a stream, for the FIF files ``record`` and ``serve --record`` write.

    Parameters
    ----------
    desc : rtdecode.lsl.streams.StreamDescription
        The stream's description; generic names (``ch000`` ...) when it has none.
    fiff_chs : list of dict
        Per channel, FIFF fields the source sent (mne-lsl's), or an empty list.
    filters : dict
        ``highpass`` / ``lowpass`` in Hz the source declared, or empty.

    Returns
    -------
    mne.Info
        Channels calibrated to SI: values in scaled units (uV, fT ...) are stored as
        sent, with ``cal`` the factor to SI.
    """
    stype = desc.stype.strip().lower()
    default = {"meg": "mag", "eeg": "eeg"}.get(stype, "misc")
    if desc.has_description:
        names = _unique(list(desc.ch_names))
        types = [_mne_type(t, default) for t in desc.ch_types]
        units = [u.strip().lower() for u in desc.units]
    else:
        names = [f"ch{i:03d}" for i in range(desc.n_channels)]
        types = [default] * desc.n_channels
        units = [""] * desc.n_channels
    info = mne.create_info(names, desc.sfreq_hz, types)
    for i, ch in enumerate(info["chs"]):
        details = fiff_chs[i] if i < len(fiff_chs) else {}
        for key in FIFF_INT_KEYS:
            if key in details:
                ch[key] = details[key]
        if "loc" in details:
            ch["loc"][:] = details["loc"]
        elif desc.positions is not None and np.isfinite(desc.positions[i]).all():
            ch["loc"][:3] = desc.positions[i]
        # Values in uV/fT... are stored as sent, with the calibration to SI.
        ch["cal"] = _UNIT_SCALE.get(units[i], 1.0)
        ch["range"] = 1.0
    hp, lp = filters.get("highpass"), filters.get("lowpass")
    if hp is not None and lp is not None and 0 <= hp < lp <= desc.sfreq_hz / 2:
        with info._unlock():  # MNE locks these; the source's description is the truth
            info["highpass"], info["lowpass"] = hp, lp
    return info
