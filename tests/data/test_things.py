"""THINGS-MEG layout and the epoch loader, on small datasets written here by hand."""

from __future__ import annotations

import json
from pathlib import Path

import mne
import numpy as np
import pytest
from PIL import Image

from rtdecode.data.datasets import cut_window, load_epochs
from rtdecode.data.simulate import neuromag_info
from rtdecode.data.things import category_of_path, find_recordings, zero_shot_split

SFREQ = 100.0

# (trial_type, image_path) as THINGS-MEG writes them; tuxedo is both a training and a test
# concept there, so its exp trials must leave training for the split to be zero-shot.
ROWS = [
    ("exp", "images_meg/aardvark/aardvark_01b.jpg"),
    ("exp", "images_meg/banana/banana_02s.jpg"),
    ("catch", "images_catch_meg/catch047.jpg"),
    ("test", "images_test_meg/tuxedo_16s.jpg"),
    ("exp", "images_meg/tuxedo/tuxedo_03n.jpg"),
    ("exp", "images_meg/aardvark/aardvark_05s.jpg"),
    ("test", "images_test_meg/coat_rack_13s.jpg"),
    ("exp", "images_meg/banana/banana_07n.jpg"),
    ("catch", "images_catch_meg/catch012.jpg"),
    ("test", "images_test_meg/tuxedo_16s.jpg"),
    ("exp", "images_meg/tuxedo/tuxedo_09s.jpg"),
    ("test", "images_test_meg/coat_rack_13s.jpg"),
]
FIRST_ONSET_S = 2.0
SOA_S = 1.5


def _raw(
    n_times: int, seed: int, info: mne.Info | None = None, *, sine: bool = False
) -> mne.io.RawArray:
    info = neuromag_info(SFREQ) if info is None else info
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((len(info["ch_names"]), n_times)) * 1e-12
    if sine:  # a slow sine instead of noise, to check resampling
        t = np.arange(n_times) / info["sfreq"]
        data = np.tile(1e-12 * np.sin(2 * np.pi * 3.0 * t), (len(info["ch_names"]), 1))
    return mne.io.RawArray(data, info, verbose=False)


def _write_things(
    root: Path,
    subject: str = "01",
    rows=ROWS,
    *,
    images: bool = True,
    seed: int = 0,
    sfreq_hz: float = SFREQ,
    sine: bool = False,
) -> Path:
    """One run of a THINGS-MEG-like BIDS tree; returns the FIF path."""
    meg = root / f"sub-{subject}" / "ses-01" / "meg"
    meg.mkdir(parents=True)
    stem = f"sub-{subject}_ses-01_task-main_run-01"
    n_times = int((FIRST_ONSET_S + SOA_S * len(rows) + 2.0) * sfreq_hz)
    raw = _raw(n_times, seed, neuromag_info(sfreq_hz), sine=sine)
    raw.save(meg / f"{stem}_meg.fif", verbose=False)
    lines = ["onset\tduration\ttrial_type\tvalue\tsample\timage_nr\timage_path"]
    for i, (ttype, path) in enumerate(rows):
        onset = FIRST_ONSET_S + SOA_S * i
        value = "n/a" if ttype == "catch" else str(i + 1)
        lines.append(
            f"{onset}\t0.5\t{ttype}\t{value}\t{int(round(onset * sfreq_hz))}\t{value}\t{path}"
        )
    (meg / f"{stem}_events.tsv").write_text("\n".join(lines) + "\n")
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "t", "BIDSVersion": "1.8.0"})
    )
    if images:
        for _, path in rows:
            p = root / path
            p.parent.mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (200, 10, 10)).save(p)
    return meg / f"{stem}_meg.fif"


def test_category_of_path_follows_things_conventions():
    assert category_of_path("images_meg/coat_rack/coat_rack_01b.jpg") == "coat_rack"
    assert category_of_path("images_test_meg/coat_rack_13s.jpg") == "coat_rack"
    assert category_of_path("images/circles/circles_03.png") == "circles"
    assert category_of_path("dogs/img_001.jpg") == "dogs"


def test_handwritten_things_dataset(tmp_path):
    fif = _write_things(tmp_path)
    es = load_epochs(tmp_path, tmin_s=-0.2, tmax_s=0.5, pad_s=0.3, progress=False)
    n_catch = sum(t == "catch" for t, _ in ROWS)
    assert es.drop_log["catch"] == n_catch
    assert es.X.shape == (len(ROWS) - n_catch, 306, 30 + 70)
    assert (es.n_pad, es.n_times, es.sfreq_hz, es.tmin_s) == (30, 70, SFREQ, -0.2)

    # raw samples, cut exactly: history from tmin - pad, then the epoch
    raw = mne.io.read_raw_fif(fif, preload=True, verbose=False)
    data = raw.get_data(picks="meg")
    onset = int(FIRST_ONSET_S * SFREQ)
    assert np.array_equal(es.X[0], data[:, onset - 50 : onset + 50].astype(np.float32))
    assert np.allclose(es.onsets_s[:2], [FIRST_ONSET_S, FIRST_ONSET_S + SOA_S])

    # zero-shot: tuxedo is a test concept, so its two exp trials are left out of training
    assert set(es.categories[es.test_mask]) == {"tuxedo", "coat_rack"}
    assert set(es.categories[es.train_mask]) == {"aardvark", "banana"}
    assert es.drop_log["train_in_test_category"] == 2
    assert not (es.train_mask & es.test_mask).any()
    assert list(es.image_ids[es.test_mask]) == [
        "tuxedo_16s",
        "coat_rack_13s",
        "tuxedo_16s",
        "coat_rack_13s",
    ]
    assert es.image_paths[0] == "images_meg/aardvark/aardvark_01b.jpg"
    assert es.image_root == tmp_path.resolve() and es.gallery_root == tmp_path.resolve()
    assert (es.image_root / es.image_paths[0]).is_file()

    assert es.subjects == ("sub-01",) and set(es.subject_index) == {0}
    assert es.ch_types.count("mag") == 102 and es.ch_types.count("grad") == 204
    assert es.positions_2d.shape == (306, 2)
    assert es.positions_2d.min() >= 0 and es.positions_2d.max() <= 1
    assert len(np.unique(es.positions_2d.round(4), axis=0)) == 306  # layout boxes differ
    assert es.positions_3d.shape == (306, 3)

    train = es.train
    assert len(train) == 4 and set(train.trial_types) == {"exp"}


def test_sub_windows_for_time_resolved_decoding(tmp_path):
    _write_things(tmp_path, images=False)
    es = load_epochs(tmp_path, tmin_s=-0.5, tmax_s=1.0, pad_s=0.5, progress=False)
    assert es.image_root is None  # no image folder next to the data
    w = es.window(0.1, 0.25)
    assert w.shape == (len(es), 306, es.n_pad + 25)
    start = es.n_pad + int(round((0.1 + 0.5) * SFREQ))
    assert np.array_equal(w, es.X[..., start - es.n_pad : start + 25])
    assert es.window(-0.5).shape[-1] == es.n_pad + 25
    assert es.window(0.75).shape[-1] == es.n_pad + 25
    with pytest.raises(ValueError, match="offset"):
        es.window(0.8)
    with pytest.raises(ValueError, match="offset"):
        cut_window(es.X, SFREQ, es.n_pad, -0.5, -0.6)


def test_nonfinite_and_out_of_bounds_epochs_are_dropped_and_counted(tmp_path):
    fif = _write_things(tmp_path, images=False)
    raw = mne.io.read_raw_fif(fif, preload=True, verbose=False)
    onset = int((FIRST_ONSET_S + SOA_S) * SFREQ)  # second row, an exp trial
    raw._data[5, onset + 10] = np.nan
    raw.save(fif, overwrite=True, verbose=False)
    es = load_epochs(tmp_path, tmin_s=-0.2, tmax_s=0.5, pad_s=0.3, progress=False)
    assert es.drop_log["nonfinite"] == 1
    assert "banana_02s" not in set(es.image_ids)
    assert np.isfinite(es.X).all()
    # an epoch reaching before the start of the recording cannot be cut
    es = load_epochs(tmp_path, tmin_s=-2.5, tmax_s=0.5, pad_s=0.3, progress=False)
    assert es.drop_log["out_of_bounds"] == 1


def test_subjects_are_indexed_and_selectable(tmp_path):
    _write_things(tmp_path, "01", seed=0)
    _write_things(tmp_path, "02", images=False, seed=1)
    (tmp_path / "replay_raw.fif").write_bytes(b"not part of the BIDS tree")
    assert [p.name[:6] for p in find_recordings(tmp_path)] == ["sub-01", "sub-02"]
    es = load_epochs(tmp_path, tmin_s=-0.2, tmax_s=0.5, pad_s=0.3, progress=False)
    assert es.subjects == ("sub-01", "sub-02")
    assert np.bincount(es.subject_index).tolist() == [10, 10]
    only = load_epochs(
        tmp_path, tmin_s=-0.2, tmax_s=0.5, pad_s=0.3, subjects=["02"], progress=False
    )
    assert only.subjects == ("sub-02",) and len(only) == 10
    with pytest.raises(ValueError, match="sub-03"):
        load_epochs(tmp_path, subjects=["sub-03"], progress=False)


def test_recordings_at_different_rates_are_resampled_to_the_lowest(tmp_path):
    _write_things(tmp_path, "01", images=False, sine=True, sfreq_hz=SFREQ)
    _write_things(tmp_path, "02", images=False, sine=True, sfreq_hz=4 * SFREQ)
    es = load_epochs(tmp_path, tmin_s=-0.2, tmax_s=0.5, pad_s=0.3, progress=False)
    assert es.sfreq_hz == SFREQ and es.X.shape == (20, 306, 100)
    slow, fast = es.X[es.subject_index == 0], es.X[es.subject_index == 1]
    assert np.allclose(fast, slow, atol=0.02e-12)  # the same 3 Hz sine, sampled alike


def test_generic_recording_with_json_annotations(tmp_path):
    """A plain FIF whose annotations name images: categories are held out for testing."""
    raw = _raw(int(40 * SFREQ), 0)
    cats = ["cat", "dog", "car", "cup", "hat"]
    onsets = 2.0 + 1.5 * np.arange(20)
    desc = [
        json.dumps({"image_id": f"{cats[i % 5]}_{i:02d}", "category": cats[i % 5]})
        for i in range(20)
    ]
    raw.set_annotations(mne.Annotations(onsets, 0.5, desc))
    raw.save(tmp_path / "session_raw.fif", verbose=False)
    es = load_epochs(tmp_path, tmin_s=-0.2, tmax_s=0.5, pad_s=0.3, progress=False)
    assert len(es) == 20 and set(es.trial_types) == {"exp"}
    train, test = set(es.categories[es.train_mask]), set(es.categories[es.test_mask])
    assert len(test) == 1 and len(train) == 4 and not train & test
    assert es.subjects == ("sub-unknown",)


def test_zero_shot_split_rules():
    train, test, left = zero_shot_split(["exp", "test", "exp", "exp"], ["a", "b", "b", "c"])
    assert train.tolist() == [True, False, False, True]
    assert test.tolist() == [False, True, False, False]
    assert left == 1
    with pytest.raises(ValueError, match="catch"):
        zero_shot_split(["exp", "catch"], ["a", "b"])
    # no test trials: whole categories are held out, deterministically
    cats = [c for c in "abcdefghij" for _ in range(3)]
    a = zero_shot_split(["exp"] * 30, cats)
    b = zero_shot_split(["exp"] * 30, cats)
    assert np.array_equal(a[0], b[0]) and a[1].sum() == 6
    assert not set(np.array(cats)[a[0]]) & set(np.array(cats)[a[1]])


def test_clear_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_epochs(tmp_path / "nope", progress=False)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no data here")
    with pytest.raises(ValueError, match="holds no recordings"):
        load_epochs(tmp_path / "empty", progress=False)

    # events without image ids: a stim channel only says "something happened"
    info = neuromag_info(SFREQ)
    raw = _raw(int(20 * SFREQ), 0, info)
    raw._data[-1, [300, 450, 600]] = 5
    (tmp_path / "stim").mkdir()
    raw.save(tmp_path / "stim" / "run_raw.fif", verbose=False)
    with pytest.raises(ValueError, match="name no images"):
        load_epochs(tmp_path / "stim", progress=False)

    # a recording lacking channels the others have
    ds = tmp_path / "ds"
    _write_things(ds, "01", images=False)
    fif = _write_things(ds, "02", images=False)
    raw = mne.io.read_raw_fif(fif, preload=True, verbose=False)
    raw.drop_channels(["MEG 0113", "MEG 2643"])
    raw.save(fif, overwrite=True, verbose=False)
    with pytest.raises(
        ValueError,
        match=r"sub-02.*lacks 2 of the 306 channels the dataset uses: 'MEG 0113', 'MEG 2643'",
    ):
        load_epochs(ds, progress=False)
    es = load_epochs(ds, subjects=["01"], ch_names=["MEG 0112", "MEG 0111"], progress=False)
    assert es.ch_names == ("MEG 0112", "MEG 0111") and es.X.shape[1] == 2
    with pytest.raises(ValueError, match="'MEG 9999'"):
        load_epochs(ds, ch_names=["MEG 0112", "MEG 9999"], progress=False)
    with pytest.raises(ValueError, match="tmax_s > tmin_s"):
        load_epochs(ds, tmin_s=0.5, tmax_s=0.1, progress=False)
