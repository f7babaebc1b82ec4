"""Writing the simulated recordings: FIF runs, BIDS sidecars, events and JSON.

Threads: everything runs in the calling thread.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rtdecode.contracts import format_marker
from rtdecode.data.simulate.design import EVENT_COLUMNS, marker_value
from rtdecode.data.simulate.sensors import LINE_FREQ_HZ, SPECS

if TYPE_CHECKING:  # pragma: no cover - typing only
    import mne

TRIGGER_S = 0.05  # width of a stim-channel pulse
TASK = "main"


def write_json(path: Path, obj: object) -> None:
    """Write ``obj`` to ``path`` as indented JSON."""
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def write_tsv(path: Path, rows: Sequence[dict[str, Any]]) -> None:
    """Write event rows to ``path`` as a BIDS events TSV (columns ``EVENT_COLUMNS``)."""
    lines = ["\t".join(EVENT_COLUMNS)]
    lines += ["\t".join(str(r[c]) for c in EVENT_COLUMNS) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def write_raw(
    path: Path,
    info: mne.Info,
    data: np.ndarray,
    rows: Sequence[dict[str, Any]],
    *,
    meas_date: _dt.datetime,
    annotate: bool,
) -> int:
    """Quantise to 16 bit, add triggers (and JSON annotations), write FIF.

    ``info``'s last channel is the trigger channel. Returns the number of clipped samples.
    """
    import mne

    n_meg = data.shape[0]
    cal = np.array([ch["cal"] for ch in info["chs"][:n_meg]])
    steps = np.round(data / cal[:, None])
    n_clipped = int((np.abs(steps) > 32767).sum())
    steps = np.clip(steps, -32767, 32767)
    # raw.save(fmt="short") truncates toward zero after dividing by the calibration; a
    # quarter step away from zero makes that truncation land on the rounded integer.
    full = np.zeros((len(info["ch_names"]), data.shape[1]))
    full[:n_meg] = (steps + 0.25 * np.sign(steps)) * cal[:, None]
    width = max(1, int(round(TRIGGER_S * info["sfreq"])))
    stim = full[-1]
    for r in rows:
        stim[r["sample"] : r["sample"] + width] = r["value"]
    raw = mne.io.RawArray(full, info, verbose=False)
    raw.set_meas_date(meas_date)
    if annotate:
        desc = [format_marker(marker_value(r)) for r in rows]
        raw.set_annotations(
            mne.Annotations(
                [r["onset"] for r in rows], [r["duration"] for r in rows], desc, orig_time=meas_date
            )
        )
    raw.save(path, fmt="short", overwrite=True, verbose=False)
    return n_clipped


def meg_sidecar(system: str, n_meg: int, sfreq_hz: float, n_times: int) -> dict[str, Any]:
    """The BIDS ``_meg.json`` of a run."""
    return {
        "TaskName": TASK,
        "Manufacturer": SPECS[system].manufacturer,
        "ManufacturersModelName": SPECS[system].model,
        "SamplingFrequency": sfreq_hz,
        "PowerLineFrequency": LINE_FREQ_HZ,
        "DewarPosition": "upright",
        "SoftwareFilters": "n/a",
        "DigitizedLandmarks": False,
        "DigitizedHeadPoints": False,
        "MEGChannelCount": n_meg,
        "MEGREFChannelCount": 0,
        "RecordingDuration": n_times / sfreq_hz,
        "RecordingType": "continuous",
    }


def write_dataset_sidecars(out: Path, title: str, subjects: Sequence[str]) -> None:
    """``dataset_description.json`` and ``participants.tsv``."""
    write_json(
        out / "dataset_description.json",
        {
            "Name": title,
            "BIDSVersion": "1.8.0",
            "DatasetType": "raw",
            "GeneratedBy": [
                {"Name": "rtdecode simulate", "Description": "simulated MEG, not brain data"}
            ],
        },
    )
    lines = ["participant_id", *(f"sub-{s}" for s in subjects)]
    (out / "participants.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def data_fingerprint(path: str | Path) -> str:
    """SHA-1 of a FIF recording's samples (not its file bytes, which hold write times)."""
    import mne

    raw = mne.io.read_raw_fif(path, preload=True, verbose=False)
    return hashlib.sha1(np.ascontiguousarray(raw.get_data()).tobytes()).hexdigest()
