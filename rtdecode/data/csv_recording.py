"""The CSV recordings that muse-lsl and eeg-notebooks write, as an MNE raw object.

Layout (one row per sample, a header row)::

    timestamps,TP9,AF7,AF8,TP10,Right AUX,Marker0
    150710.682,22.949,26.855,37.109,18.066,-1.953,0
    150710.686,45.410,33.203,42.969,30.762,69.824,1

- ``timestamps``: the LSL time of each sample (s). The rate is the number of samples
  over their span, snapped to a usual EEG rate when within 1 % of it (muse-lsl's
  timestamps are rounded to the millisecond, so consecutive differences jitter).
- channel columns: values in µV (muse-lsl's unit), converted to V as MNE holds them.
  Names that are 10-05 electrodes (Muse's TP9, AF7, AF8, TP10 included) are ``eeg``
  with their standard positions; others (``Right AUX``) are ``misc``.
- marker columns (``Marker0``, ``Marker1`` ..., or any name starting with ``marker``
  or ``stim``): a non-zero value on a row is an event with that code on that sample,
  kept as an annotation whose description is the code (``"1"``), so that
  :func:`rtdecode.data.recordings.read_recording` and the replay read it as any code.

Nothing here owns a thread; the caller's thread uses the returned object.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rtdecode.signal.units import si_factor

if TYPE_CHECKING:  # pragma: no cover
    import mne

__all__ = ["MUSE_CHANNELS", "read_raw_csv", "standard_montage", "typed_eeg_channels"]

#: The channels a Muse headset streams (muse-lsl's outlet ``Muse``, type ``EEG``, 256 Hz).
MUSE_CHANNELS = ("TP9", "AF7", "AF8", "TP10", "Right AUX")
_USUAL_RATES_HZ = (100.0, 128.0, 200.0, 250.0, 256.0, 500.0, 512.0, 1000.0, 1024.0, 2048.0)
_MARKER_PREFIXES = ("marker", "stim")
#: The standard 10-05 montage (MNE >= 1.13 names it colin27_1005; older: standard_1005).
_MONTAGE_NAMES = ("colin27_1005", "standard_1005")


class CsvFormatError(ValueError):
    """A CSV file is not in the muse-lsl/eeg-notebooks layout; the message says why."""


def standard_montage() -> mne.channels.DigMontage:
    """MNE's standard 10-05 montage (343 electrode names, Muse's included)."""
    import mne

    available = set(mne.channels.get_builtin_montages())
    name = next(n for n in _MONTAGE_NAMES if n in available)
    return mne.channels.make_standard_montage(name)


def typed_eeg_channels(ch_names: list[str]) -> list[str]:
    """``"eeg"`` for the names of 10-05 electrodes (case-insensitive), else ``"misc"``."""
    known = {n.lower() for n in standard_montage().ch_names}
    return ["eeg" if c.lower() in known else "misc" for c in ch_names]


def _is_marker(name: str) -> bool:
    return name.strip().lower().startswith(_MARKER_PREFIXES)


def _nominal_rate(timestamps: np.ndarray, path: Path) -> float:
    span = float(timestamps[-1] - timestamps[0])
    if not np.isfinite(span) or span <= 0:
        raise CsvFormatError(
            f"The timestamps of {str(path)!r} do not increase (first {timestamps[0]}, last "
            f"{timestamps[-1]}); the first column must be each sample's time in seconds."
        )
    rate = (len(timestamps) - 1) / span
    near = min(_USUAL_RATES_HZ, key=lambda r: abs(r - rate))
    return near if abs(near - rate) <= 0.01 * near else round(rate, 3)


def read_raw_csv(path: str | Path, marker_columns: list[str] | None = None) -> mne.io.RawArray:
    """Read a muse-lsl / eeg-notebooks CSV recording.

    Parameters
    ----------
    path : str | Path
        A ``.csv`` file with a ``timestamps`` column, channel columns (µV) and optional
        marker columns (see the module docstring).
    marker_columns : list of str, optional
        The columns whose codes are events (default: every marker column). Named
        columns are never channels.

    Returns
    -------
    mne.io.RawArray
        Data channels in V (``eeg`` for 10-05 names with the standard montage's
        positions, ``misc`` otherwise), the markers as annotations (description = the
        code), ``meas_date`` unset; ``raw.info["description"]`` records the first
        timestamp.

    Raises
    ------
    CsvFormatError
        (a ValueError) no header, no ``timestamps`` column, no channel column, a cell
        that is not a number, fewer than two rows.
    """
    import mne

    path = Path(path)
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header:
            raise CsvFormatError(f"{str(path)!r} is empty; give a CSV with a header row.")
        header = [h.strip() for h in header]
        lower = [h.lower() for h in header]
        if "timestamps" not in lower and "timestamp" not in lower:
            raise CsvFormatError(
                f"{str(path)!r} has no 'timestamps' column (columns: {header}); rtdecode reads "
                "the CSV that muse-lsl and eeg-notebooks write: timestamps, channels in µV, "
                "marker columns."
            )
        try:
            rows = np.array([[float(v) if v.strip() else 0.0 for v in row]
                             for row in reader if row], dtype=np.float64)
        except ValueError as exc:
            raise CsvFormatError(
                f"{str(path)!r} holds a cell that is not a number ({exc}); every column but "
                "the header must be numeric."
            ) from exc
    if rows.ndim != 2 or rows.shape[0] < 2 or rows.shape[1] != len(header):
        raise CsvFormatError(
            f"{str(path)!r} has {rows.shape[0] if rows.ndim == 2 else 0} complete rows of "
            f"{len(header)} columns; give a recording of at least two samples."
        )
    t_col = lower.index("timestamps") if "timestamps" in lower else lower.index("timestamp")
    marker_cols = [i for i, h in enumerate(header) if i != t_col and _is_marker(h)]
    if marker_columns is not None:
        lacking = [c for c in marker_columns if c not in header]
        if lacking:
            raise CsvFormatError(
                f"{str(path)!r} has no column {lacking[0]!r} (columns: {header}); name one of "
                "its marker columns."
            )
        named = [header.index(c) for c in marker_columns]
        data_skip = set(marker_cols) | set(named)
        marker_cols = named
    else:
        data_skip = set(marker_cols)
    data_cols = [i for i in range(len(header)) if i != t_col and i not in data_skip]
    if not data_cols:
        raise CsvFormatError(f"{str(path)!r} has no channel columns (columns: {header}).")
    timestamps = rows[:, t_col]
    sfreq = _nominal_rate(timestamps, path)
    ch_names = [header[i] for i in data_cols]
    ch_types = typed_eeg_channels(ch_names)
    info = mne.create_info(ch_names, sfreq, ch_types)
    data = rows[:, data_cols].T * si_factor("microvolts")  # µV -> V
    raw = mne.io.RawArray(data, info, verbose="error")
    if "eeg" in ch_types:
        raw.set_montage(standard_montage(), match_case=False, on_missing="ignore",
                        verbose="error")
    raw.info["description"] = f"muse-lsl CSV {path.name}; first timestamp {timestamps[0]!r} s"
    onsets, descriptions = [], []
    for i in marker_cols:
        col = rows[:, i]
        for sample in np.flatnonzero(col != 0):
            code = col[sample]
            onsets.append(sample / sfreq)
            descriptions.append(str(int(code)) if float(code).is_integer() else str(code))
    if onsets:
        order = np.argsort(onsets, kind="stable")
        raw.set_annotations(mne.Annotations(
            np.asarray(onsets)[order], 0.0, np.asarray(descriptions)[order]))
    return raw
