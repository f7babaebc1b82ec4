"""Read a recording from disk, with its events, whatever format MNE reads.

``read_recording(path)`` accepts FIF (also split and ``.fif.gz``), a CTF ``.ds`` folder,
EDF/BDF/GDF, BrainVision ``.vhdr``, EEGLAB ``.set``, KIT ``.con``/``.sqd``, the CSV that
muse-lsl and eeg-notebooks write (:mod:`rtdecode.data.csv_recording`), a file inside a
BIDS dataset, an ``mne_bids.BIDSPath`` or a BIDS folder holding exactly one recording.

Events come from the richest source present, in this order:

1. a BIDS ``*_events.tsv`` next to the file (THINGS-MEG ds004212 style, both published
   layouts: 3.0.0 ``onset, duration, trial_type, things_category_nr, value, sample`` and
   1.x ``onset, duration, trial_type, file_path, image_nr, ...`` whose durations in ms are
   converted to seconds),
2. the file's annotations (``BAD_*``/``EDGE_*`` segments are not events; a JSON
   description, as written by ``rtdecode record``, is parsed back into its dict),
3. the stim channel(s) (``mne.find_events``).

Every event value is a dict with at least ``trial_type``, ``value`` and ``image_id``
(``None`` where the source does not say). ``Event.sample`` counts from the first sample
of the data (``raw.get_data()[:, sample]``), whatever ``raw.first_samp`` is.

The raw object is not preloaded: the replay reads it block by block. Nothing here owns a
thread; MNE objects are used by the thread that called ``read_recording``.
"""

from __future__ import annotations

import csv
import math
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from rtdecode.contracts import parse_marker

if TYPE_CHECKING:  # pragma: no cover
    import mne

__all__ = [
    "Event",
    "Recording",
    "RecordingError",
    "SUPPORTED_FORMATS",
    "read_recording",
    "read_events_tsv",
    "events_tsv_for",
    "recording_files",
]

# Extension (lower case) -> format name, for the error message and the dispatch check.
SUPPORTED_FORMATS: dict[str, str] = {
    ".fif": "FIF",
    ".fif.gz": "FIF",
    ".ds": "CTF",
    ".edf": "EDF",
    ".bdf": "BDF",
    ".gdf": "GDF",
    ".vhdr": "BrainVision",
    ".set": "EEGLAB",
    ".con": "KIT",
    ".sqd": "KIT",
    ".csv": "muse-lsl CSV",
}

# Files people pick by mistake, and the one to pick instead.
_WRONG_PART_HINTS = {
    ".vmrk": "give the BrainVision header (.vhdr) instead",
    ".eeg": "give the BrainVision header (.vhdr) instead",
    ".meg4": "give the CTF .ds folder instead",
    ".res4": "give the CTF .ds folder instead",
    ".fdt": "give the EEGLAB .set file instead",
    ".tsv": "give the recording this events file belongs to",
    ".json": "give the recording this sidecar belongs to",
}

_EVENT_KEYS = ("trial_type", "value", "image_id")
_THINGS_1X_COLUMNS = ("file_path", "things_image_nr", "things_category_nr")
_NA = {"", "n/a", "na", "nan"}


class RecordingError(ValueError):
    """A recording could not be read; the message says which file and what to do."""


@dataclass(frozen=True)
class Event:
    """One event of a recording.

    Attributes
    ----------
    sample : int
        Index of the event's sample counted from the first sample of the data
        (0 = ``raw.get_data()[:, 0]``), independent of ``raw.first_samp``.
    onset_s : float
        ``sample / sfreq``: seconds from the start of the data.
    value : dict
        ``trial_type`` (str or None), ``value`` (the event code, or None),
        ``image_id`` (str or None) and any further columns the source had
        (``image_nr``, ``image_path``, ``duration`` ...). JSON-serialisable.
    """

    sample: int
    onset_s: float
    value: dict[str, Any]


@dataclass
class Recording:
    """A raw recording and its events.

    Attributes
    ----------
    raw : mne.io.BaseRaw
        Not preloaded; read blocks with ``raw.get_data(start=, stop=)``.
    events : list of Event
        Sorted by sample.
    path : Path
        The file (or .ds folder) that was read.
    events_source : str
        ``"events.tsv"``, ``"annotations"``, ``"stim"`` or ``"none"``.
    """

    raw: mne.io.BaseRaw
    events: list[Event]
    path: Path
    events_source: str = "none"
    notes: list[str] = field(default_factory=list)

    @property
    def sfreq_hz(self) -> float:
        """Sampling rate in Hz."""
        return float(self.raw.info["sfreq"])

    @property
    def n_times(self) -> int:
        """Number of samples."""
        return int(self.raw.n_times)

    @property
    def duration_s(self) -> float:
        """Length of the data in seconds (``n_times / sfreq``)."""
        return self.n_times / self.sfreq_hz

    @property
    def ch_names(self) -> list[str]:
        """Channel names of the raw recording."""
        return list(self.raw.ch_names)


def read_recording(path: str | Path | Any) -> Recording:
    """Read a recording and its events.

    Parameters
    ----------
    path : str | Path | mne_bids.BIDSPath
        A file MNE reads (see ``SUPPORTED_FORMATS``), a CTF ``.ds`` folder, a file in a
        BIDS dataset, a ``BIDSPath``, or a BIDS folder that holds exactly one recording.

    Returns
    -------
    Recording
        ``raw`` (not preloaded) and ``events`` (see the module docstring for where they
        come from).

    Raises
    ------
    FileNotFoundError
        The path does not exist.
    RecordingError
        (a ValueError) the extension is not a supported format, the file is empty,
        truncated or otherwise unreadable, or a BIDS folder holds several recordings.
    """
    import mne

    notes: list[str] = []
    bids_path = path if _is_bids_path(path) else None
    if bids_path is not None:
        fpath = Path(bids_path.fpath)
    else:
        fpath = Path(path).expanduser()
    if not fpath.exists():
        raise FileNotFoundError(
            f"Recording {str(fpath)!r} does not exist. Check the path (relative paths are "
            f"taken from {str(Path.cwd())!r})."
        )
    if fpath.is_dir() and _extension(fpath) != ".ds":
        fpath = _single_recording_in(fpath)
    ext = _check_extension(fpath)
    _check_not_empty(fpath, ext)
    if ext == ".csv" and not _is_recording_csv(fpath):
        raise RecordingError(
            f"{str(fpath)!r} is a CSV without a 'timestamps' column, so not a recording (an "
            "images or events table?). The CSV rtdecode reads is the one muse-lsl and "
            "eeg-notebooks write: timestamps, channels in µV, marker columns. Supported: "
            f"{_supported_list()}, or a BIDS dataset."
        )

    if bids_path is None and _bids_root_of(fpath) is not None and fpath.name.startswith("sub-"):
        bids_path = _bids_path_from_file(fpath, notes)
    try:
        if bids_path is not None:
            raw = _read_bids(bids_path, fpath, notes)
        elif ext == ".csv":
            from rtdecode.data.csv_recording import read_raw_csv

            raw = read_raw_csv(fpath)
        else:
            raw = mne.io.read_raw(fpath, preload=False, verbose="error")
    except (FileNotFoundError, RecordingError):
        raise
    except Exception as exc:  # MNE raises many types for a damaged file
        raise RecordingError(
            f"Could not read {str(fpath)!r} as {SUPPORTED_FORMATS[ext]}: "
            f"{type(exc).__name__}: {exc}. The file may be truncated or damaged, or not "
            "really in that format; re-export it or give another file."
        ) from exc
    _check_readable(raw, fpath, ext)

    events, source = _read_events(raw, fpath, notes)
    return Recording(raw=raw, events=events, path=fpath, events_source=source, notes=notes)


def data_channels(info: mne.Info) -> list[str]:
    """MEG channels (no reference sensors) of a recording; EEG when it has no MEG."""
    import mne

    picks = mne.pick_types(info, meg=True, ref_meg=False, exclude=())
    if len(picks) == 0:
        picks = mne.pick_types(info, eeg=True, exclude=())
    return [info["ch_names"][i] for i in picks]


# ---------------------------------------------------------------- path checks


def _extension(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".fif.gz"):
        return ".fif.gz"
    return path.suffix.lower()


def _supported_list() -> str:
    return ", ".join(f"{fmt} ({ext})" for ext, fmt in SUPPORTED_FORMATS.items())


def _check_extension(path: Path) -> str:
    ext = _extension(path)
    if ext in SUPPORTED_FORMATS:
        return ext
    hint = _WRONG_PART_HINTS.get(ext)
    hint = f" ({hint})" if hint else ""
    raise RecordingError(
        f"{str(path)!r} has the extension {ext or '(none)'!r}, which is not a recording "
        f"format rtdecode reads{hint}. Supported: {_supported_list()}, or a BIDS dataset."
    )


def _check_not_empty(path: Path, ext: str) -> None:
    if path.is_dir():
        if not any(path.iterdir()):
            raise RecordingError(
                f"The CTF folder {str(path)!r} is empty; give a complete recording."
            )
        return
    if path.stat().st_size == 0:
        raise RecordingError(
            f"{str(path)!r} is empty (0 bytes), probably an interrupted copy or "
            "recording; give a complete file."
        )


def _check_readable(raw: mne.io.BaseRaw, path: Path, ext: str) -> None:
    """Read the first and last sample: a truncated file fails here, not mid-replay."""
    if raw.n_times < 1:
        raise RecordingError(f"{str(path)!r} holds no samples; give a non-empty recording.")
    try:
        raw.get_data(start=0, stop=1)
        raw.get_data(start=raw.n_times - 1, stop=raw.n_times)
    except Exception as exc:
        raise RecordingError(
            f"{str(path)!r} looks truncated: its header announces {raw.n_times} samples "
            f"but the data cannot be read to the end ({type(exc).__name__}: {exc}). "
            f"Copy the {SUPPORTED_FORMATS[ext]} file again or give another one."
        ) from exc


# ---------------------------------------------------------------- BIDS


def _is_bids_path(obj: object) -> bool:
    return type(obj).__name__ == "BIDSPath" and hasattr(obj, "fpath")


def _bids_root_of(path: Path) -> Path | None:
    for parent in list(path.resolve().parents)[:6]:
        if (parent / "dataset_description.json").is_file():
            return parent
    return None


def _bids_path_from_file(fpath: Path, notes: list[str]):
    from mne_bids import get_bids_path_from_fname

    try:
        return get_bids_path_from_fname(fpath, check=False, verbose=False)
    except Exception as exc:  # a sub-* name that is not BIDS after all
        notes.append(f"not read as BIDS ({exc}); read as a plain file")
        return None


def _read_bids(bids_path, fpath: Path, notes: list[str]) -> mne.io.BaseRaw:
    """Read through mne-bids (channel types, bads); fall back to the plain reader."""
    import mne
    from mne_bids import read_raw_bids

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            raw = read_raw_bids(bids_path, verbose="error")
    except Exception as exc:
        notes.append(f"mne-bids could not read it ({type(exc).__name__}: {exc}); read directly")
        return mne.io.read_raw(fpath, preload=False, verbose="error")
    return _with_recording_channel_types(raw, fpath, notes)


def _with_recording_channel_types(raw: mne.io.BaseRaw, fpath: Path, notes: list[str]):
    """Keep the recording's own MEG channel types when channels.tsv says otherwise.

    THINGS-MEG's channels.tsv types its 272 MEG channels as ``OTHER``, which mne-bids
    turns into ``misc``: no MEG channel would be left to decode. A format that stores
    channel kinds (CTF, FIF, KIT) knows better, so when the file has MEG channels that
    channels.tsv retyped, the file is read directly and only the bad channels are taken
    from channels.tsv.
    """
    import mne

    direct = mne.io.read_raw(fpath, preload=False, verbose="error")
    file_types = dict(zip(direct.ch_names, direct.get_channel_types(), strict=True))
    bids_types = dict(zip(raw.ch_names, raw.get_channel_types(), strict=True))
    meg = {"mag", "grad", "ref_meg"}
    retyped = [c for c, t in file_types.items() if t in meg and bids_types.get(c, t) != t]
    if not retyped:
        return raw
    kinds = sorted({bids_types[c] for c in retyped})
    notes.append(
        f"channels.tsv types {len(retyped)} MEG channel(s) as {'/'.join(kinds)}; the "
        "recording's own channel types are used"
    )
    direct.info["bads"] = [b for b in raw.info["bads"] if b in direct.ch_names]
    return direct


#: Folders of a dataset that hold no raw recordings of its own.
SKIP_DIRS = frozenset({"derivatives", "sourcedata", "code", "stimuli"})
_SPLIT_RE = re.compile(r"_split-(\d+)_")
_EPOCHS_NAME_RE = re.compile(r"[-_]epo(-\d+)?\.fif$")


def recording_files(folder: Path) -> list[Path]:
    """Recordings under ``folder`` that rtdecode reads, sorted.

    Skipped: hidden entries and :data:`SKIP_DIRS`, files inside a CTF ``.ds`` folder,
    the later parts of a split FIF (``_split-02_`` and after: MNE reads them with
    ``_split-01_``), CSV files without a ``timestamps`` column (tables), and epochs files (``*-epo.fif``; see
    :func:`rtdecode.data.things.find_epochs_files`).
    """
    found = []
    for p in folder.rglob("*"):
        rel = p.relative_to(folder).parts
        if set(rel[:-1]) & SKIP_DIRS or any(part.startswith(".") for part in rel):
            continue
        ext = _extension(p)
        if ext not in SUPPORTED_FORMATS or (ext == ".ds") != p.is_dir():
            continue
        if any(parent.suffix.lower() == ".ds" for parent in p.relative_to(folder).parents):
            continue
        split = _SPLIT_RE.search(p.name)
        if split is not None and int(split.group(1)) > 1:
            continue
        if _EPOCHS_NAME_RE.search(p.name):  # epochs, not a continuous recording
            continue
        if ext == ".csv" and not _is_recording_csv(p):  # an images or events table
            continue
        found.append(p)
    return sorted(found)


def _is_recording_csv(path: Path) -> bool:
    """A CSV whose header has a ``timestamps`` column (muse-lsl), not a table."""
    with path.open(encoding="utf-8-sig", errors="replace") as f:
        header = f.readline().lower().replace('"', "").split(",")
    return bool({"timestamps", "timestamp"} & {h.strip() for h in header})


def _single_recording_in(folder: Path) -> Path:
    """The one recording in a BIDS folder, or an error listing the candidates."""
    found = recording_files(folder)
    if len(found) == 1:
        return found[0]
    if not found:
        raise RecordingError(
            f"The folder {str(folder)!r} holds no recording rtdecode reads. Supported: "
            f"{_supported_list()}."
        )
    listing = ", ".join(str(p.relative_to(folder)) for p in found[:10])
    more = f" and {len(found) - 10} more" if len(found) > 10 else ""
    raise RecordingError(
        f"The folder {str(folder)!r} holds {len(found)} recordings ({listing}{more}); "
        "give the path of the one to use."
    )


# ---------------------------------------------------------------- events


def _read_events(raw: mne.io.BaseRaw, fpath: Path, notes: list[str]) -> tuple[list[Event], str]:
    tsv = events_tsv_for(fpath)
    if tsv is not None:
        events = read_events_tsv(tsv, raw.info["sfreq"], raw.n_times, notes=notes)
        return events, "events.tsv"
    events = _events_from_annotations(raw)
    if events:
        return events, "annotations"
    events = _events_from_stim(raw, notes)
    if events:
        return events, "stim"
    return [], "none"


def events_tsv_for(fpath: Path) -> Path | None:
    """The BIDS events file next to a recording, if there is one.

    ``sub-01_task-x_run-1_meg.fif`` -> ``sub-01_task-x_run-1_events.tsv``; for other names
    ``<stem>_events.tsv`` is tried as well.
    """
    name = fpath.name
    for ext in sorted(SUPPORTED_FORMATS, key=len, reverse=True):
        if name.lower().endswith(ext):
            name = name[: -len(ext)]
            break
    candidates = [f"{name}_events.tsv"]
    stem = re.sub(r"_split-\d+", "", name)
    if "_" in stem:
        candidates.insert(0, stem.rsplit("_", 1)[0] + "_events.tsv")
    for cand in candidates:
        p = fpath.with_name(cand)
        if p.is_file():
            return p
    return None


def _cell(text: str | None) -> Any:
    """A TSV cell as None, int, float or str."""
    if text is None:
        return None
    s = text.strip()
    if s.lower() in _NA:
        return None
    try:
        return int(s)
    except ValueError:
        pass
    try:
        f = float(s)
    except ValueError:
        return s
    return f if math.isfinite(f) else None


def _image_id(value: dict[str, Any]) -> str | None:
    """The stimulus id: an explicit column, else the image file's stem, else its number."""
    if value.get("image_id") is not None:
        return str(value["image_id"])
    for key in ("image_path", "file_path", "stim_file", "image"):
        p = value.get(key)
        if isinstance(p, str) and p:
            return PurePosixPath(p.replace("\\", "/")).stem
    nr = value.get("image_nr")
    if nr is not None:
        return str(int(nr)) if isinstance(nr, float) and nr.is_integer() else str(nr)
    return None


def read_events_tsv(
    path: str | Path,
    sfreq_hz: float,
    n_times: int | None = None,
    *,
    notes: list[str] | None = None,
) -> list[Event]:
    """Read a BIDS ``events.tsv`` into events.

    The ``sample`` column is used when present (THINGS-MEG stores the photodiode-
    corrected sample there), else ``round(onset * sfreq_hz)``. Rows with neither, or
    outside ``[0, n_times)``, are skipped and counted in ``notes``.

    Parameters
    ----------
    path : str | Path
    sfreq_hz : float
        Sampling rate of the recording the file belongs to.
    n_times : int | None
        Number of samples in that recording, to drop events outside it.
    notes : list of str | None
        Receives one line describing skipped rows, if any.

    Returns
    -------
    list of Event
        Sorted by sample.
    """
    path = Path(path)
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f, delimiter="\t")
        if reader.fieldnames is None or "onset" not in reader.fieldnames:
            raise RecordingError(
                f"The events file {str(path)!r} has no 'onset' column (columns: "
                f"{reader.fieldnames}); a BIDS events.tsv needs one."
            )
        rows = list(reader)
        # THINGS-MEG 1.x wrote durations in ms (500) where BIDS wants seconds.
        duration_ms = set(_THINGS_1X_COLUMNS) <= set(reader.fieldnames)
    if duration_ms and notes is not None:
        notes.append(f"{path.name}: THINGS-MEG 1.x layout, durations converted from ms to s")
    events: list[Event] = []
    skipped = 0
    for row in rows:
        cells = {k: _cell(v) for k, v in row.items() if k is not None}
        sample = cells.pop("sample", None)
        onset = cells.pop("onset", None)
        if isinstance(sample, int | float):
            sample = int(round(sample))
        elif isinstance(onset, int | float):
            sample = int(round(onset * sfreq_hz))
        else:
            skipped += 1
            continue
        if sample < 0 or (n_times is not None and sample >= n_times):
            skipped += 1
            continue
        if duration_ms and isinstance(cells.get("duration"), int | float):
            cells["duration"] = cells["duration"] / 1000.0
        value = {k: cells.get(k) for k in _EVENT_KEYS}
        value.update({k: v for k, v in cells.items() if k not in value})
        value["image_id"] = _image_id(value)
        if value["trial_type"] is not None:
            value["trial_type"] = str(value["trial_type"])
        events.append(Event(sample=sample, onset_s=sample / sfreq_hz, value=value))
    if skipped and notes is not None:
        notes.append(f"{skipped} row(s) of {path.name} skipped (no onset, or outside the data)")
    events.sort(key=lambda e: e.sample)
    return events


_BRAINVISION_CODE = re.compile(r"^(?:Stimulus|Response)/[SR]\s*(\d+)$")


def description_to_value(description: str) -> dict[str, Any]:
    """An annotation description as an event value dict.

    A JSON object (what ``rtdecode record`` writes) is returned as is, with the standard
    keys added; ``"Stimulus/S  3"`` gives ``value`` 3; a bare integer is a ``value``.
    """
    text = description.strip()
    parsed = parse_marker(text)
    if set(parsed) != {"raw"}:
        value = {k: parsed.get(k) for k in _EVENT_KEYS}
        value.update(parsed)
        if value["image_id"] is None:
            value["image_id"] = _image_id(value)
        return value
    code: Any = None
    m = _BRAINVISION_CODE.match(text)
    if m:
        code = int(m.group(1))
    elif re.fullmatch(r"[+-]?\d+", text):
        code = int(text)
    return {"trial_type": text, "value": code, "image_id": None}


def _events_from_annotations(raw: mne.io.BaseRaw) -> list[Event]:
    ann = raw.annotations
    if len(ann) == 0:
        return []
    sfreq = float(raw.info["sfreq"])
    # With orig_time set, onsets count from meas_date; the data start at first_time.
    offset_s = raw.first_time if ann.orig_time is not None else 0.0
    events = []
    for onset, desc in zip(ann.onset, ann.description, strict=True):
        if desc.lower().startswith(("bad", "edge")):
            continue
        sample = int(round((float(onset) - offset_s) * sfreq))
        if not 0 <= sample < raw.n_times:
            continue
        events.append(
            Event(sample=sample, onset_s=sample / sfreq, value=description_to_value(desc))
        )
    events.sort(key=lambda e: e.sample)
    return events


def _events_from_stim(raw: mne.io.BaseRaw, notes: list[str]) -> list[Event]:
    import mne

    if "stim" not in raw.get_channel_types(unique=True):
        return []
    try:
        found = mne.find_events(
            raw, shortest_event=1, initial_event=True, consecutive="increasing", verbose="error"
        )
    except Exception as exc:  # no usable stim channel after all
        notes.append(f"stim channel not usable for events ({exc})")
        return []
    sfreq = float(raw.info["sfreq"])
    events = []
    for sample_abs, _, code in found:
        sample = int(sample_abs) - int(raw.first_samp)
        events.append(
            Event(
                sample=sample,
                onset_s=sample / sfreq,
                value={"trial_type": None, "value": int(code), "image_id": None},
            )
        )
    return events
