"""Epochs for training and evaluation: raw continuous MEG cut around every image.

:func:`load_epochs` reads a THINGS-like BIDS tree (or a folder of recordings, or one
recording), cuts ``[tmin_s, tmax_s)`` around every image onset plus ``pad_s`` of earlier
history, and returns an :class:`EpochSet`. Given epochs instead (THINGS-MEG's
``derivatives/preprocessed/preprocessed_P{1..4}-epo.fif``, split parts joined), it keeps
their own time axis and rate (:func:`load_epochs_files`). The samples are *raw*: the preprocessing
(:class:`rtdecode.signal.preprocess.Preprocessor`) is applied by the trainer and the
evaluator with the very code the live service runs, using the history for its filters.

Streaming preprocessing (``load_epochs(..., stream=...)``, for a Preprocessor whose config
has ``streaming=True``): each continuous recording, one at a time, is run through
:func:`rtdecode.signal.streaming.preprocess_recording` from its first sample, and every
epoch keeps a span of that model-rate output (filtered, not yet baselined or scaled)
instead of raw samples. :meth:`EpochSet.stream_window` then cuts the window ending at a
given sample exactly as the live service's StreamingPreprocessor would.

What is dropped is counted in ``EpochSet.drop_log``: catch trials, epochs with
non-finite samples, epochs that do not fit inside their recording, events without an
image, and training trials of a test category (zero-shot split, see
:func:`rtdecode.data.things.zero_shot_split`).

Threads: plain functions and a dataclass, used by the caller's thread.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rtdecode.data.card import is_card, read_card
from rtdecode.data.recordings import data_channels as _data_channels
from rtdecode.data.things import (
    ImagesTable,
    find_epochs_files,
    find_recordings,
    is_epochs_file,
    read_images_table,
    resolve_image_root,
    subject_of,
    trial_from_value,
    zero_shot_split,
)

if TYPE_CHECKING:  # pragma: no cover
    import mne

    from rtdecode.data.card import DatasetCard
    from rtdecode.signal import Preprocessor

__all__ = ["EpochSet", "cut_window", "load_epochs", "load_epochs_files"]

DROP_REASONS = (
    "catch",
    "no_image",
    "out_of_bounds",
    "nonfinite",
    "train_in_test_category",
)


@dataclass
class EpochSet:
    """Raw epochs with everything needed to train, evaluate and plot.

    Attributes
    ----------
    X : ndarray, float32, shape (n_epochs, n_channels, n_pad + n_times)
        Raw samples (T, T/m) from ``tmin_s - pad_s`` to ``tmax_s`` around each onset.
    n_pad : int
        Leading samples of filter history (before ``tmin_s``).
    sfreq_hz : float
        Sampling rate of ``X``.
    tmin_s : float
        Time of ``X[:, :, n_pad]`` relative to image onset.
    ch_names : tuple of str
        Channel names, one per row of ``X``.
    ch_types : tuple of str
        ``"mag"``, ``"grad"`` or ``"eeg"`` per channel.
    positions_2d : ndarray, float32, shape (n_channels, 2)
        MNE layout coordinates (``mne.channels.find_layout``; projected 3D positions when
        no layout fits), rescaled per axis to [0, 1].
    positions_3d : ndarray, float32, shape (n_channels, 3)
        Sensor positions in head coordinates (m), from the first recording.
    image_ids, image_paths, categories, trial_types : ndarray of str, shape (n_epochs,)
        Per-epoch stimulus. ``image_paths`` are relative to ``image_root``.
    subjects : tuple of str
        Subject names (``sub-01`` ...); ``subject_index`` indexes them.
    subject_index : ndarray, int64, shape (n_epochs,)
    recordings : tuple of str
        Recording paths; ``recording_index`` indexes them.
    recording_index : ndarray, int64, shape (n_epochs,)
    onsets_s : ndarray, float64, shape (n_epochs,)
        Image onset in seconds from the start of its recording.
    train_mask, test_mask : ndarray of bool, shape (n_epochs,)
        Zero-shot split: no test category appears in the training epochs.
    image_root : Path or None
        Folder the ``image_paths`` are relative to (None if the images were not found).
    gallery_root : Path or None
        Folder to open with ``rtdecode.images.Gallery.from_folder``.
    drop_log : dict of str to int
        Events not in ``X`` (or not in the training set), by reason.
    onset_samples : ndarray, int64, shape (n_epochs,) or None
        Image onset as a sample index of its recording, at the recording's own rate.
    streamed : bool
        ``X`` holds streamed model-rate spans (see the module docstring), not raw samples:
        float32, shape (n_epochs, n_model_channels, n_span), unscaled; ``n_pad`` is 0.
    stream_first : ndarray, int64, shape (n_epochs,) or None
        When streamed: the model-sample index (counted from its recording's first sample)
        of ``X[i, :, 0]``.
    recording_sfreq_hz : tuple of float
        Rate of each recording (the streamed spans are cut on its own sample grid).
    sfreq_model_hz : float or None
        When streamed: the rate of ``X`` (the model rate).
    labels : str
        ``"image"``: ``image_ids`` name images of the gallery. ``"category"`` (a dataset
        card whose codes name categories): ``image_ids`` are category names, the target of
        a trial is its category's mean image embedding and retrieval is among categories
        (:class:`rtdecode.images.categories.CategoryGallery` over ``gallery_root``).
    modality : str or None
        ``"meg"`` or ``"eeg"`` when a dataset card says so.
    """

    X: np.ndarray
    n_pad: int
    sfreq_hz: float
    tmin_s: float
    ch_names: tuple[str, ...]
    ch_types: tuple[str, ...]
    positions_2d: np.ndarray
    positions_3d: np.ndarray
    image_ids: np.ndarray
    image_paths: np.ndarray
    categories: np.ndarray
    trial_types: np.ndarray
    subjects: tuple[str, ...]
    subject_index: np.ndarray
    recordings: tuple[str, ...]
    recording_index: np.ndarray
    onsets_s: np.ndarray
    train_mask: np.ndarray
    test_mask: np.ndarray
    image_root: Path | None = None
    gallery_root: Path | None = None
    drop_log: dict[str, int] = field(default_factory=dict)
    onset_samples: np.ndarray | None = None
    streamed: bool = False
    stream_first: np.ndarray | None = None
    recording_sfreq_hz: tuple[float, ...] = ()
    sfreq_model_hz: float | None = None
    labels: str = "image"
    modality: str | None = None

    _PER_EPOCH = (
        "X",
        "image_ids",
        "image_paths",
        "categories",
        "trial_types",
        "subject_index",
        "recording_index",
        "onsets_s",
        "train_mask",
        "test_mask",
        "onset_samples",
        "stream_first",
    )

    def __len__(self) -> int:
        return int(self.X.shape[0])

    @property
    def n_times(self) -> int:
        """Samples per epoch after the history (``X.shape[-1] - n_pad``)."""
        return int(self.X.shape[-1] - self.n_pad)

    @property
    def times_s(self) -> np.ndarray:
        """Time of each sample after the history, relative to onset, shape (n_times,).

        Streamed spans: the nominal model-rate grid from ``tmin_s`` (each epoch's span is
        aligned to its recording's model grid, within one model sample of it).
        """
        rate = self.sfreq_model_hz if self.streamed else self.sfreq_hz
        return self.tmin_s + np.arange(self.n_times) / rate

    def select(self, mask: np.ndarray | Sequence[int]) -> EpochSet:
        """A new EpochSet with the epochs ``mask`` selects (bool mask or indices)."""
        idx = np.asarray(mask)
        return replace(self, **{
            k: getattr(self, k)[idx] for k in self._PER_EPOCH if getattr(self, k) is not None
        })

    @property
    def train(self) -> EpochSet:
        """The training epochs."""
        return self.select(self.train_mask)

    @property
    def test(self) -> EpochSet:
        """The (zero-shot) test epochs."""
        return self.select(self.test_mask)

    def window(self, offset_s: float, window_s: float = 0.25) -> np.ndarray:
        """Cut a sub-window of every epoch, with ``n_pad`` samples of history before it.

        See :func:`cut_window`. Returns float32, shape (n_epochs, n_channels,
        n_pad + round(window_s * sfreq_hz)).
        """
        if self.streamed:
            raise ValueError(
                "These epochs hold streamed model-rate spans, not raw samples; cut their "
                "windows with stream_window (or load them without stream= for the block path)."
            )
        return cut_window(self.X, self.sfreq_hz, self.n_pad, self.tmin_s, offset_s, window_s)

    def stream_stops(self, offset_s: float, window_s: float) -> np.ndarray:
        """Stop sample (one past the last) of the window ``[offset_s, offset_s + window_s)``.

        As the live service counts it: the window ends ``offset_s + window_s`` after the
        onset, ``onset_samples + round((offset_s + window_s) * sfreq)`` at each
        recording's rate. Shape (n_epochs,), int64.
        """
        if self.onset_samples is None:
            raise ValueError("These epochs carry no onset samples (they came from epochs files).")
        fs = np.asarray(self.recording_sfreq_hz, dtype=np.float64)[self.recording_index]
        lag = np.float64(offset_s) + np.float64(window_s)
        return self.onset_samples + np.floor(lag * fs + 0.5).astype(np.int64)

    def stream_window(self, offset_s: float, window_s: float = 0.25) -> np.ndarray:
        """The streamed (unscaled) window ``[offset_s, offset_s + window_s)`` of every epoch.

        Exactly the model samples the live StreamingPreprocessor slices for the window
        that ends at :meth:`stream_stops` (``StreamingPreprocessor.window(stop,
        round(window_s * sfreq))``), before baseline and scaling
        (``Preprocessor.finish`` does those).

        Returns
        -------
        ndarray, float64, shape (n_epochs, n_model_channels, n_times_out)
        """
        from rtdecode.signal import filters
        from rtdecode.signal.streaming import model_index

        if not self.streamed:
            raise ValueError(
                "These epochs hold raw samples; load them with stream= (a streaming "
                "Preprocessor) to cut streamed windows, or use window() for the block path."
            )
        stops = self.stream_stops(offset_s, window_s)
        fs_rec = np.asarray(self.recording_sfreq_hz, dtype=np.float64)[self.recording_index]
        rates = np.unique(fs_rec)
        n_outs = {float(fs): filters.n_samples_out(filters.round_half_up(window_s * fs), fs,
                                                   self.sfreq_model_hz) for fs in rates}
        if len(set(n_outs.values())) > 1:
            raise ValueError(
                f"A {window_s} s window gives {sorted(set(n_outs.values()))} model samples at "
                f"the recordings' rates {sorted(n_outs)}; stream recordings of one rate."
            )
        n_out = next(iter(n_outs.values()))
        k_end = np.empty(len(self), dtype=np.int64)
        for fs in rates:
            sel = fs_rec == fs
            k_end[sel] = model_index(stops[sel], float(fs) / self.sfreq_model_hz)
        first = k_end - n_out + 1 - self.stream_first
        if len(self) and (first.min() < 0 or first.max() + n_out > self.X.shape[-1]):
            raise ValueError(
                f"A {window_s} s window at offset {offset_s} s is not inside the streamed "
                f"spans (loaded for [{self.tmin_s}, {self.tmin_s + self.n_times_s:.3f}] s); "
                "load the epochs over a span that covers it."
            )
        cols = first[:, None] + np.arange(n_out)[None, :]
        out = np.take_along_axis(self.X, cols[:, None, :], axis=-1)
        return out.astype(np.float64)

    @property
    def n_times_s(self) -> float:
        """Length of the epochs after the history, in seconds."""
        rate = self.sfreq_model_hz if self.streamed else self.sfreq_hz
        return self.n_times / rate


def cut_window(
    X: np.ndarray,
    sfreq_hz: float,
    n_pad: int,
    tmin_s: float,
    offset_s: float,
    window_s: float = 0.25,
) -> np.ndarray:
    """Sub-window of epochs for time-resolved decoding.

    Parameters
    ----------
    X : ndarray, shape (n_epochs, n_channels, n_pad + n_times)
        Epochs whose sample ``n_pad`` is at ``tmin_s``.
    sfreq_hz : float
    n_pad : int
        History samples to keep before the window (the preprocessing's filter history).
    tmin_s : float
        Time of ``X[..., n_pad]`` relative to onset.
    offset_s : float
        Window start relative to onset (e.g. 0.0, 0.05, ...).
    window_s : float
        Window length (the paper's 250 ms).

    Returns
    -------
    ndarray, shape (n_epochs, n_channels, n_pad + round(window_s * sfreq_hz))
        A view into ``X``: ``n_pad`` samples of history, then the window.
    """
    start = n_pad + int(round((offset_s - tmin_s) * sfreq_hz))
    n_win = int(round(window_s * sfreq_hz))
    if start - n_pad < 0 or start + n_win > X.shape[-1]:
        t_end = tmin_s + (X.shape[-1] - n_pad) / sfreq_hz
        raise ValueError(
            f"A {window_s} s window at offset {offset_s} s needs the epochs to cover "
            f"[{offset_s - n_pad / sfreq_hz:.3f}, {offset_s + window_s:.3f}] s, but they cover "
            f"[{tmin_s - n_pad / sfreq_hz:.3f}, {t_end:.3f}] s; choose an offset in "
            f"[{tmin_s}, {t_end - window_s:.3f}] s or load longer epochs."
        )
    return X[..., start - n_pad : start + n_win]


def _positions(
    info: mne.Info, ch_names: Sequence[str]
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """2D layout positions in [0, 1], 3D head positions, channel types."""
    import mne
    from mne.channels.layout import _find_topomap_coords

    picked = mne.pick_info(info, [info["ch_names"].index(c) for c in ch_names])
    types = tuple(picked.get_channel_types())
    if not _has_positions(picked):
        # EEG saved without positions (EDF, many BrainVision/EEGLAB files): the standard
        # 10-05 positions of the channels it names; channels it does not name stay unknown
        return _positions_by_name(ch_names, types)
    pos2 = None
    try:
        layout = mne.channels.find_layout(picked)
        lay = {n.replace(" ", ""): i for i, n in enumerate(layout.names)}
        rows = [lay.get(c.replace(" ", "")) for c in ch_names]
        if all(r is not None for r in rows):
            box = layout.pos[rows]
            pos2 = box[:, :2] + box[:, 2:4] / 2.0  # box centres
    except Exception:  # no layout for this system: project the 3D positions instead
        pos2 = None
    if pos2 is None:
        pos2 = _find_topomap_coords(picked, picks=list(range(len(ch_names))), ignore_overlap=True)
    pos2 = np.asarray(pos2, dtype=np.float64)
    span = np.ptp(pos2, axis=0)
    pos2 = (pos2 - pos2.min(axis=0)) / np.where(span > 0, span, 1.0)
    loc = np.array([ch["loc"][:3] for ch in picked["chs"]], dtype=np.float64)
    if picked["dev_head_t"] is not None and types and types[0] in ("mag", "grad"):
        loc = mne.transforms.apply_trans(picked["dev_head_t"], loc)
    return pos2.astype(np.float32), loc.astype(np.float32), types


def _has_positions(info: mne.Info) -> bool:
    """Whether every channel has a position (MEG sensors always do; EEG only when digitised)."""
    loc = np.array([ch["loc"][:3] for ch in info["chs"]], dtype=np.float64)
    return bool(np.isfinite(loc).all() and (np.abs(loc).sum(axis=1) > 0).all())


def _positions_by_name(
    ch_names: Sequence[str], types: tuple[str, ...]
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Positions from the standard 10-05 montage by channel name; NaN where not in it.

    2D: the azimuthal equidistant projection from the vertex (as MNE's topomaps), rescaled
    per axis to [0, 1] over the channels found. The encoder's spatial attention treats
    NaN positions as unknown.
    """
    from rtdecode.data.csv_recording import standard_montage

    ch_pos = {k.lower(): v for k, v in standard_montage().get_positions()["ch_pos"].items()}
    xyz = np.array([ch_pos.get(c.lower(), (np.nan,) * 3) for c in ch_names], dtype=np.float64)
    r = np.linalg.norm(xyz, axis=1)
    theta = np.arccos(np.clip(xyz[:, 2] / np.where(r > 0, r, 1.0), -1.0, 1.0))
    phi = np.arctan2(xyz[:, 1], xyz[:, 0])
    pos2 = np.column_stack([theta * np.cos(phi), theta * np.sin(phi)])
    found = np.isfinite(pos2).all(axis=1)
    if found.any():
        lo, span = np.nanmin(pos2[found], axis=0), np.ptp(pos2[found], axis=0)
        pos2 = (pos2 - lo) / np.where(span > 0, span, 1.0)
    return pos2.astype(np.float32), xyz.astype(np.float32), types


def _resample(x: np.ndarray, sfreq_in_hz: float, sfreq_out_hz: float) -> np.ndarray:
    from fractions import Fraction

    from scipy.signal import resample_poly

    ratio = Fraction(sfreq_out_hz / sfreq_in_hz).limit_denominator(1000)
    return resample_poly(x, ratio.numerator, ratio.denominator, axis=-1)


def load_epochs(
    data_dir: str | Path,
    *,
    tmin_s: float = -0.5,
    tmax_s: float = 1.0,
    pad_s: float = 0.5,
    subjects: Iterable[str] | None = None,
    progress: bool = True,
    ch_names: Sequence[str] | None = None,
    image_root: str | Path | None = None,
    images_table: str | Path | ImagesTable | None = None,
    stream: Callable[[Sequence[str]], Preprocessor] | None = None,
) -> EpochSet:
    """Read every recording of a dataset and cut raw epochs around the images.

    Parameters
    ----------
    data_dir : path-like
        A THINGS-like BIDS folder (``sub-*/ses-*/meg/*_meg.<ext>`` + ``*_events.tsv``; the
        simulated subject), a folder of recordings, one recording, or a dataset card
        (``.toml``, :mod:`rtdecode.data.card`: its recordings, codes, images and split;
        the split is the card's, by recording, not zero-shot). Events come from
        ``events.tsv``, annotations or the stim channel
        (:func:`rtdecode.data.recordings.read_recording`) and must name images.
    tmin_s, tmax_s : float
        Epoch ``[tmin_s, tmax_s)`` relative to image onset.
    pad_s : float
        History kept before ``tmin_s`` for the preprocessing filters.
    subjects : iterable of str, optional
        Only these subjects (``"01"`` or ``"sub-01"``).
    progress : bool
        Show a progress bar over recordings.
    ch_names : sequence of str, optional
        Channels to use, in this order. Default: the MEG channels of the first recording
        (reference sensors excluded, channels marked bad in any recording dropped).
    image_root : path-like, optional
        Folder the events' ``image_path`` values are relative to (the THINGS image
        folder). Default: found next to the data (see
        :func:`rtdecode.data.things.resolve_image_root`).
    images_table : path-like or ImagesTable, optional
        Maps image numbers to image files, for events that give numbers only (THINGS-MEG
        3.0.0: ``sourcedata/sample_attributes_P1.csv``; see
        :func:`rtdecode.data.things.read_images_table`).
    stream : callable, optional
        ``stream(ch_names) -> Preprocessor`` (config with ``streaming=True``): run each
        recording through the streaming preprocessing from its first sample and keep,
        per epoch, the model-rate span covering ``[tmin_s, tmax_s)`` instead of raw
        samples (``EpochSet.streamed``; cut windows with ``EpochSet.stream_window``).
        ``pad_s`` then only decides which epochs fit (the filters' history is the
        recording itself). One recording's raw samples are in memory at a time.

    Returns
    -------
    EpochSet
        Recordings at different rates are resampled to the lowest one. When
        ``data_dir`` is an epochs file, a folder of them, or a dataset whose only inputs
        are ``derivatives/preprocessed/*-epo.fif``, the epochs are returned with their own
        time axis and rate (:func:`load_epochs_files`; ``tmin_s``, ``tmax_s`` and
        ``pad_s`` are not applied).

    Raises
    ------
    FileNotFoundError
        ``data_dir`` (or ``image_root``) does not exist.
    ValueError
        No recordings; a recording's events name no images; a recording lacks channels
        the others (or ``ch_names``) have; no epoch is left.
    """
    from tqdm.auto import tqdm

    from rtdecode.data.recordings import read_recording

    if not tmax_s > tmin_s or pad_s < 0:
        raise ValueError(
            f"Epochs need tmax_s > tmin_s and pad_s >= 0; got tmin_s={tmin_s}, "
            f"tmax_s={tmax_s}, pad_s={pad_s}."
        )
    images = _images_table(images_table)
    card = read_card(data_dir) if is_card(data_dir) else None
    subj_of = subject_of if card is None else card.subject_of
    epochs_files = [] if card else find_epochs_files(data_dir, subjects)
    given = Path(data_dir).expanduser()
    paths = [] if given.is_file() and is_epochs_file(given) else None
    if card is not None:
        paths = _card_paths(card, subjects)
    if paths is None:
        try:
            paths = find_recordings(data_dir, subjects)
        except ValueError:
            if not epochs_files:
                raise
            paths = []
    if not paths:  # epochs, not raw recordings
        if stream is not None:
            raise ValueError(
                f"{str(data_dir)!r} holds epochs, not continuous recordings, so its windows "
                "cannot be cut from a streamed recording; set `[preprocess] streaming = "
                "false` in the recipe (the block path) or give the raw recordings."
            )
        return load_epochs_files(
            epochs_files,
            images_table=images,
            image_root=image_root,
            ch_names=ch_names,
            data_dir=data_dir,
        )
    recs = [read_recording(p) if card is None else card.read(p) for p in paths]
    if card is not None:
        image_root = card.images_root if image_root is None else image_root
        if ch_names is None:  # the card's modality: EEG of a recording that has MEG too
            ch_names = card.check_channels(recs)
    for rec in recs:
        if not any(trial_from_value(e.value, images).image_id for e in rec.events):
            raise ValueError(
                f"The events of {str(rec.path)!r} (from {rec.events_source}) name no images: "
                "give an events.tsv next to it with image_path (or image_id, or THINGS image "
                "numbers with images_table=) per row, as in THINGS-MEG, or annotations whose "
                "descriptions are JSON with an image_id."
            )

    if ch_names is None:
        bads = {b for rec in recs for b in rec.raw.info["bads"]}
        ch_names = [c for c in _data_channels(recs[0].raw.info) if c not in bads]
        if not ch_names:
            raise ValueError(
                f"The recording {str(recs[0].path)!r} has no MEG (or EEG) channels to decode."
            )
    ch_names = list(ch_names)
    for rec in recs:
        missing = [c for c in ch_names if c not in rec.raw.ch_names]
        if missing:
            shown = ", ".join(repr(c) for c in missing[:20])
            more = f" and {len(missing) - 20} more" if len(missing) > 20 else ""
            raise ValueError(
                f"The recording {str(rec.path)!r} lacks {len(missing)} of the {len(ch_names)} "
                f"channels the dataset uses: {shown}{more}. Leave it out (--subjects, or "
                "subjects= in Python), "
                "or pass ch_names= with the channels every recording has."
            )

    sfreq = min(rec.sfreq_hz for rec in recs)
    n_pad = int(round(pad_s * sfreq))
    n_times = int(round((tmax_s - tmin_s) * sfreq))
    streamer = None if stream is None else _Streamer(stream(tuple(ch_names)), tmin_s, tmax_s)
    drop = dict.fromkeys(DROP_REASONS, 0)
    subject_names = sorted({subj_of(p) for p in paths})

    # first pass, events only: which epochs can be cut, so X is allocated once
    plans = []
    for rec in recs:
        fs = rec.sfreq_hz
        # cut at the recording's own rate, with a margin for the resampling edges
        margin = 0 if fs == sfreq or streamer else int(math.ceil(0.05 * fs))
        pad_r = int(round(pad_s * fs)) + margin
        n_r = int(round((tmax_s - tmin_s) * fs)) + margin
        keep = []
        for ev in rec.events:
            trial = trial_from_value(ev.value, images)
            if trial.trial_type == "catch":
                drop["catch"] += 1
                continue
            if trial.image_id is None:
                drop["no_image"] += 1
                continue
            start = ev.sample + int(round(tmin_s * fs)) - pad_r
            if (start < 0 or start + pad_r + n_r > rec.n_times
                    or (streamer and streamer.first(ev.sample, fs) < 0)):
                drop["out_of_bounds"] += 1
                continue
            keep.append((start, ev, trial))
        plans.append((margin, pad_r + n_r, keep))
    n_max = sum(len(keep) for _, _, keep in plans)
    if n_max == 0:
        raise ValueError(
            f"No epoch of {str(data_dir)!r} is left (dropped: {drop}); check that the events "
            "fall inside the recordings and that tmin_s/tmax_s/pad_s fit."
        )

    width = n_pad + n_times if streamer is None else streamer.width
    X = np.empty((n_max, len(ch_names), width), dtype=np.float32)
    meta: dict[str, list] = {
        k: [] for k in ("ids", "paths", "cats", "types", "subj", "rec", "onset", "sample",
                        "first")
    }
    n = 0
    bar = tqdm(total=len(recs), desc="loading epochs", unit="rec", disable=not progress)
    with bar:
        for r, (rec, (margin, n_cut, keep)) in enumerate(zip(recs, plans, strict=True)):
            bar.update()
            if not keep:
                continue
            picks = [rec.raw.ch_names.index(c) for c in ch_names]
            data = rec.raw.get_data(picks=picks)
            streamed = None if streamer is None else streamer.run(data, rec.sfreq_hz, ch_names)
            for start, ev, trial in keep:
                ep = data[:, start : start + n_cut]
                if margin:
                    ep = _resample(ep, rec.sfreq_hz, sfreq)
                    m_out = int(round(margin * sfreq / rec.sfreq_hz))
                    ep = ep[:, m_out : m_out + n_pad + n_times]
                if not np.isfinite(ep).all():
                    drop["nonfinite"] += 1
                    continue
                if streamed is None:
                    X[n] = ep
                else:
                    k0 = streamer.first(ev.sample, rec.sfreq_hz)
                    X[n] = streamed[:, k0 : k0 + streamer.width]
                    meta["first"].append(k0)
                meta["sample"].append(ev.sample)
                n += 1
                meta["ids"].append(trial.image_id)
                meta["paths"].append(trial.image_path or "")
                meta["cats"].append(trial.category or trial.image_id)
                meta["types"].append(trial.trial_type)
                meta["subj"].append(subject_names.index(subj_of(rec.path)))
                meta["rec"].append(r)
                meta["onset"].append(ev.onset_s)
            del data, streamed
    if n == 0:
        raise ValueError(
            f"No epoch of {str(data_dir)!r} is left (dropped: {drop}); every epoch held "
            "non-finite samples."
        )
    X = X[:n]  # a view: trimming the few dropped rows is not worth copying X
    es = _epoch_set(
        X, 0 if streamer else n_pad, sfreq, tmin_s, ch_names, recs[0].raw.info, meta, drop,
        subject_names, paths, image_dirs=(data_dir, image_root), card=card,
    )  # fmt: skip
    es.onset_samples = np.array(meta["sample"], dtype=np.int64)
    es.recording_sfreq_hz = tuple(float(rec.sfreq_hz) for rec in recs)
    if streamer is not None:
        es.streamed = True
        es.stream_first = np.array(meta["first"], dtype=np.int64)
        es.sfreq_model_hz = streamer.sfreq_model_hz
    return es


class _Streamer:
    """Streams one recording at a time and gives each epoch's model-rate span.

    The span of an epoch ``[tmin_s, tmax_s)`` ends at the model sample of the window
    ending at ``onset + round(tmax_s * sfreq)`` and is ``width`` samples long: one model
    sample more than the epoch lasts, so that every window inside the epoch fits whatever
    the onset's phase on the model grid.
    """

    def __init__(self, preprocessor: Preprocessor, tmin_s: float, tmax_s: float) -> None:
        if not getattr(preprocessor.config, "streaming", False):
            raise ValueError(
                "stream= needs a Preprocessor whose config has streaming=True; leave stream= "
                "out for the block path."
            )
        self.pre = preprocessor
        self.sfreq_model_hz = float(preprocessor.config.sfreq_model_hz)
        self.tmax_s = float(tmax_s)
        self.width = int(math.ceil((tmax_s - tmin_s) * self.sfreq_model_hz - 1e-9)) + 2

    def first(self, onset_sample: int, sfreq_hz: float) -> int:
        stop = onset_sample + int(math.floor(self.tmax_s * sfreq_hz + 0.5))
        from rtdecode.signal.streaming import model_index

        k_end = int(model_index(stop, sfreq_hz / self.sfreq_model_hz))
        return k_end - self.width + 1

    def run(self, data: np.ndarray, sfreq_hz: float, ch_names: Sequence[str]) -> np.ndarray:
        """Model-rate output (unscaled), shape (n_model_channels, n_model_samples)."""
        from rtdecode.signal.streaming import preprocess_recording

        return preprocess_recording(self.pre, data, sfreq_hz, ch_names).model_samples()


def _epoch_set(
    X: np.ndarray,
    n_pad: int,
    sfreq_hz: float,
    tmin_s: float,
    ch_names: Sequence[str],
    info: mne.Info,
    meta: dict[str, list],
    drop: dict[str, int],
    subject_names: Sequence[str],
    paths: Sequence[Path],
    *,
    image_dirs: tuple,
    card: DatasetCard | None = None,
) -> EpochSet:
    """Split, find the images and the sensor positions, and build the EpochSet.

    The split is zero-shot, or a dataset card's (by recording).
    """
    types = np.array(meta["types"], dtype=object)
    cats = np.array(meta["cats"], dtype=object)
    if card is None:
        train, test, n_left_out = zero_shot_split(types, cats)
    else:  # the card's split: trial types were set from it, per recording
        test = types == "test"
        train, n_left_out = ~test, 0
    drop["train_in_test_category"] = n_left_out
    if card is not None and card.labels == "category":
        root = gallery = card.images_root
    else:
        root, gallery = resolve_image_root(image_dirs[0], meta["paths"], image_dirs[1])
    pos2, pos3, ch_types = _positions(info, ch_names)
    return EpochSet(
        X=X,
        n_pad=n_pad,
        sfreq_hz=float(sfreq_hz),
        tmin_s=float(tmin_s),
        ch_names=tuple(ch_names),
        ch_types=ch_types,
        positions_2d=pos2,
        positions_3d=pos3,
        image_ids=np.array(meta["ids"], dtype=object),
        image_paths=np.array(meta["paths"], dtype=object),
        categories=cats,
        trial_types=types,
        subjects=tuple(subject_names),
        subject_index=np.array(meta["subj"], dtype=np.int64),
        recordings=tuple(str(p) for p in paths),
        recording_index=np.array(meta["rec"], dtype=np.int64),
        onsets_s=np.array(meta["onset"], dtype=np.float64),
        train_mask=train,
        test_mask=test,
        image_root=root,
        gallery_root=gallery,
        drop_log=drop,
        labels="image" if card is None else card.labels,
        modality=None if card is None else card.modality,
    )


def _card_paths(card: DatasetCard, subjects: Iterable[str] | None) -> list[Path]:
    """The card's recordings, of ``subjects`` only when given."""
    paths = list(card.recordings)
    if subjects is None:
        return paths
    wanted = {s if str(s).startswith("sub-") else f"sub-{s}" for s in subjects}
    kept = [p for p in paths if card.subject_of(p) in wanted]
    if not kept:
        raise ValueError(
            f"None of the subjects {sorted(wanted)} is in the dataset card {str(card.path)!r}; "
            f"it has {sorted(set(card.subjects.values()))}."
        )
    return kept


def _images_table(images_table: str | Path | ImagesTable | None) -> ImagesTable | None:
    if images_table is None or isinstance(images_table, ImagesTable):
        return images_table
    return read_images_table(images_table)


def _plain(v: object) -> object:
    """A metadata cell as a plain Python value (NaN -> None)."""
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def epochs_values(epochs: mne.BaseEpochs) -> list[dict]:
    """One event value dict per epoch, from the epochs' metadata or their event codes.

    THINGS-MEG's preprocessed epochs carry ``sample_attributes_P{n}.csv`` as metadata
    (``trial_type``, ``image_path``, ``things_category_nr``, ``things_image_nr`` ...);
    MNE gives it as a DataFrame, or as a list of dicts without pandas. Without metadata,
    each epoch's event name is its trial type and its code the image number.
    """
    meta = epochs.metadata
    if meta is not None:
        rows = meta.to_dict(orient="records") if hasattr(meta, "to_dict") else list(meta)
        return [{k: _plain(v) for k, v in r.items()} for r in rows]
    names = {code: name for name, code in epochs.event_id.items()}
    return [
        {"trial_type": names.get(int(code)), "value": int(code), "image_nr": int(code)}
        for code in epochs.events[:, 2]
    ]


def load_epochs_files(
    files: Sequence[str | Path],
    *,
    images_table: str | Path | ImagesTable | None = None,
    image_root: str | Path | None = None,
    ch_names: Sequence[str] | None = None,
    data_dir: str | Path | None = None,
) -> EpochSet:
    """Epochs files (``*-epo.fif``, split parts joined) as an EpochSet, on their own axis.

    The epochs keep their time axis (``tmin_s`` = the file's ``tmin``, no history:
    ``n_pad`` = 0) and rate; every file must share them. Catch trials and epochs without
    an image are dropped and counted; the split is zero-shot as for raw recordings.

    Parameters
    ----------
    files : sequence of path-like
        First parts of the epochs files (``preprocessed_P1-epo.fif``): MNE reads the
        ``-1``, ``-2`` ... parts with them.
    images_table : path-like or ImagesTable, optional
        For epochs that give image numbers only.
    image_root : path-like, optional
        The THINGS image folder (default: looked for next to ``data_dir``).
    ch_names : sequence of str, optional
        Channels, in order. Default: the MEG channels (no reference sensors) of the first
        file, less any marked bad.
    data_dir : path-like, optional
        Where to look for the images (default: the first file's folder).

    Returns
    -------
    EpochSet
        ``X`` float32, shape (n_epochs, n_channels, n_times).

    Raises
    ------
    ValueError
        No files; files at different rates or time axes; missing channels; no epoch
        left.
    """
    import mne

    if not files:
        raise ValueError("No epochs file was given; give a *-epo.fif file or its folder.")
    images = _images_table(images_table)
    paths = [Path(f).expanduser() for f in files]
    all_epochs = [mne.read_epochs(p, preload=False, verbose="error") for p in paths]
    first = all_epochs[0]
    if ch_names is None:
        ch_names = [c for c in _data_channels(first.info) if c not in first.info["bads"]]
    ch_names = list(ch_names)
    for p, ep in zip(paths, all_epochs, strict=True):
        if (
            ep.info["sfreq"] != first.info["sfreq"]
            or len(ep.times) != len(first.times)
            or (not np.isclose(ep.tmin, first.tmin))
        ):
            raise ValueError(
                f"The epochs {str(p)!r} ({ep.info['sfreq']} Hz, {ep.tmin}..{ep.tmax} s) do not "
                f"share the rate and time axis of {str(paths[0])!r} ({first.info['sfreq']} Hz, "
                f"{first.tmin}..{first.tmax} s); load them separately."
            )
        missing = [c for c in ch_names if c not in ep.ch_names]
        if missing:
            raise ValueError(
                f"The epochs {str(p)!r} lack {len(missing)} of the {len(ch_names)} channels "
                f"used: {', '.join(repr(c) for c in missing[:20])}; pass ch_names= with the "
                "channels every file has."
            )
    drop = dict.fromkeys(DROP_REASONS, 0)
    subject_names = sorted({subject_of(p) for p in paths})
    parts, meta = [], {k: [] for k in ("ids", "paths", "cats", "types", "subj", "rec", "onset")}
    for r, (p, ep) in enumerate(zip(paths, all_epochs, strict=True)):
        keep = []
        for i, value in enumerate(epochs_values(ep)):
            trial = trial_from_value(value, images)
            if trial.trial_type == "catch":
                drop["catch"] += 1
            elif trial.image_id is None:
                drop["no_image"] += 1
            else:
                keep.append((i, trial))
        if not keep:
            continue
        idx = [i for i, _ in keep]
        x = ep.get_data(picks=ch_names, item=idx).astype(np.float32, copy=False)
        finite = np.isfinite(x).all(axis=(1, 2))
        drop["nonfinite"] += int((~finite).sum())
        parts.append(x[finite])
        for (i, trial), ok in zip(keep, finite, strict=True):
            if not ok:
                continue
            meta["ids"].append(trial.image_id)
            meta["paths"].append(trial.image_path or "")
            meta["cats"].append(trial.category or trial.image_id)
            meta["types"].append(trial.trial_type)
            meta["subj"].append(subject_names.index(subject_of(p)))
            meta["rec"].append(r)
            meta["onset"].append(float(ep.events[i, 0]) / ep.info["sfreq"])
    if not meta["ids"]:
        raise ValueError(
            f"No epoch of {', '.join(str(p) for p in paths)} is left (dropped: {drop}); the "
            "epochs need metadata with image_path (or image numbers and images_table=)."
        )
    return _epoch_set(
        np.concatenate(parts), 0, first.info["sfreq"], first.tmin, ch_names, first.info, meta,
        drop, subject_names, paths, image_dirs=(data_dir or paths[0].parent, image_root),
    )  # fmt: skip
