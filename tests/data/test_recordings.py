"""read_recording: formats, event sources (stim, annotations, BIDS events.tsv), errors."""

from __future__ import annotations

import datetime as dt
import importlib.util
import json

import mne
import numpy as np
import pytest

from rtdecode.data.recordings import (
    Event,
    RecordingError,
    description_to_value,
    read_events_tsv,
    read_recording,
    recording_files,
)

SFREQ = 1000.0
N_MEG = 20
N_TIMES = 3000
STIM_SAMPLES = (400, 1200, 2500)
STIM_CODES = (3, 5, 3)


def _raw(first_samp: int = 0, *, stim: bool = True, seed: int = 0) -> mne.io.RawArray:
    """20 magnetometers (+ a stim channel), 1000 Hz, 3 s."""
    names = [f"MEG{i:03d}" for i in range(N_MEG)] + (["STI 014"] if stim else [])
    types = ["mag"] * N_MEG + (["stim"] if stim else [])
    info = mne.create_info(names, SFREQ, types)
    data = np.random.default_rng(seed).standard_normal((len(names), N_TIMES)) * 1e-12
    if stim:
        data[-1] = 0
        for s, code in zip(STIM_SAMPLES, STIM_CODES, strict=True):
            data[-1, s : s + 5] = code
    return mne.io.RawArray(data, info, first_samp=first_samp, verbose="error")


def _save(raw, path):
    raw.save(path, overwrite=True, verbose="error")
    return path


def test_fif_stim_channel_events_count_from_first_sample(tmp_path):
    raw = _raw(first_samp=700)
    path = _save(raw, tmp_path / "stim_raw.fif")
    rec = read_recording(path)
    assert rec.events_source == "stim"
    assert [e.sample for e in rec.events] == list(STIM_SAMPLES)
    assert [e.value["value"] for e in rec.events] == list(STIM_CODES)
    assert all(set(e.value) >= {"trial_type", "value", "image_id"} for e in rec.events)
    assert rec.events[1].onset_s == pytest.approx(1.2)
    assert rec.n_times == N_TIMES and rec.sfreq_hz == SFREQ and rec.duration_s == 3.0
    # The event sample indexes the data as read, whatever first_samp is.
    stim = rec.raw.get_data(picks=["STI 014"])[0]
    assert stim[rec.events[0].sample] == STIM_CODES[0]
    assert stim[rec.events[0].sample - 1] == 0


def test_fif_annotations_win_over_stim_and_parse_json(tmp_path):
    raw = _raw(first_samp=500)
    raw.set_meas_date(dt.datetime(2024, 1, 2, tzinfo=dt.UTC))
    payload = {"image_id": "aardvark_01b", "trial_type": "exp", "value": 7, "image_nr": 12}
    descs = [json.dumps(payload), "Stimulus/S  3", "BAD_blink", "face"]
    # With meas_date set, annotation onsets count from meas_date: data start at first_time.
    onsets = raw.first_time + np.array([0.25, 1.0, 1.5, 2.0])
    raw.set_annotations(
        mne.Annotations(onsets, [0, 0, 0.2, 0], descs, orig_time=raw.info["meas_date"])
    )
    rec = read_recording(_save(raw, tmp_path / "ann_raw.fif"))
    assert rec.events_source == "annotations"
    assert [e.sample for e in rec.events] == [250, 1000, 2000]  # BAD_* is not an event
    assert rec.events[0].value == payload | {"image_id": "aardvark_01b"}
    assert rec.events[1].value == {"trial_type": "Stimulus/S  3", "value": 3, "image_id": None}
    assert rec.events[2].value["trial_type"] == "face"


def test_description_to_value():
    assert description_to_value("12") == {"trial_type": "12", "value": 12, "image_id": None}
    v = description_to_value('{"image_path": "images/cat/cat_02s.jpg", "trial_type": "test"}')
    assert v["image_id"] == "cat_02s" and v["value"] is None and v["trial_type"] == "test"
    assert description_to_value("{not json")["trial_type"] == "{not json"


def test_edf_or_brainvision_with_annotations(tmp_path):
    if importlib.util.find_spec("edfio") is not None:
        path = tmp_path / "rec.edf"
    elif importlib.util.find_spec("pybv") is not None:
        path = tmp_path / "rec.vhdr"
    else:
        pytest.skip("neither edfio (EDF export) nor pybv (BrainVision export) is installed")
    info = mne.create_info([f"EEG{i:02d}" for i in range(8)], 250.0, "eeg")
    data = np.random.default_rng(1).standard_normal((8, 1000)) * 20e-6
    raw = mne.io.RawArray(data, info, verbose="error")
    raw.set_annotations(mne.Annotations([1.0, 2.5], [0.0, 0.0], ["face", "house"]))
    mne.export.export_raw(path, raw, verbose="error")
    rec = read_recording(path)
    assert rec.ch_names == raw.ch_names
    assert rec.raw.get_channel_types(unique=True) == ["eeg"]
    assert rec.n_times >= 1000  # EDF pads to whole data records
    assert [(e.sample, e.value["trial_type"]) for e in rec.events] == [
        (250, "face"),
        (625, "house"),
    ]
    # 16-bit storage: equal within the quantisation step of the exported range.
    got = rec.raw.get_data(stop=1000)
    step = (data.max() - data.min()) / 2**15
    np.testing.assert_allclose(got, data, atol=2 * step)


def _bids(tmp_path, run="01"):
    from mne_bids import BIDSPath, write_raw_bids

    raw = _raw()
    raw.set_meas_date(dt.datetime(2024, 1, 2, tzinfo=dt.UTC))
    fif = _save(raw, tmp_path / f"src{run}_raw.fif")
    raw = mne.io.read_raw_fif(fif, verbose="error")
    events = mne.find_events(raw, shortest_event=1, verbose="error")
    bp = BIDSPath(
        subject="01", session="01", task="main", run=run, datatype="meg", root=tmp_path / "bids"
    )
    write_raw_bids(
        raw, bp, events=events, event_id={"exp": 3, "test": 5}, overwrite=True, verbose=False
    )
    # THINGS-MEG ds004212 columns: the sample column holds the (photodiode-corrected)
    # onset, image_path names the picture, value is n/a for catch trials.
    tsv = bp.copy().update(suffix="events", extension=".tsv").fpath
    tsv.write_text(
        "onset\tduration\ttrial_type\tvalue\tsample\timage_nr\timage_path\n"
        "0.4\t0.5\texp\t3\t403\t12\timages_meg/aardvark/aardvark_01b.jpg\n"
        "1.2\t0.5\ttest\t5\t1200\t1855\timages_test_meg/cat/cat_13s.jpg\n"
        "2.5\t0.5\tcatch\tn/a\tn/a\tn/a\tn/a\n"
        "9.0\t0.5\texp\t3\t9000\t3\timages_meg/ant/ant_01b.jpg\n",
        encoding="utf-8",
    )
    return bp


def test_bids_events_tsv_things_meg_style(tmp_path):
    bp = _bids(tmp_path)
    for path in (bp.fpath, bp, tmp_path / "bids"):
        rec = read_recording(path)
        assert rec.events_source == "events.tsv"
        assert rec.path == bp.fpath
        assert [e.sample for e in rec.events] == [403, 1200, 2500]
        first, second, catch = (e.value for e in rec.events)
        assert first["image_id"] == "aardvark_01b" and first["trial_type"] == "exp"
        assert first["value"] == 3 and first["image_nr"] == 12
        assert second["image_id"] == "cat_13s" and second["trial_type"] == "test"
        assert catch == {
            "trial_type": "catch",
            "value": None,
            "image_id": None,
            "duration": 0.5,
            "image_nr": None,
            "image_path": None,
        }
    assert any("skipped" in note for note in rec.notes)  # the row past the end
    assert rec.raw.get_channel_types(unique=True) == ["mag", "stim"]


def test_bids_folder_with_several_recordings_lists_them(tmp_path):
    _bids(tmp_path, "01")
    _bids(tmp_path, "02")
    with pytest.raises(RecordingError, match=r"holds 2 recordings .*run-01.*run-02"):
        read_recording(tmp_path / "bids")


def test_read_events_tsv_uses_onset_without_sample(tmp_path):
    tsv = tmp_path / "x_events.tsv"
    tsv.write_text("onset\tduration\ttrial_type\timage_id\n0.1234\t0\texp\tdog_01\n")
    (ev,) = read_events_tsv(tsv, 1200.0, 10_000)
    assert ev == Event(
        sample=148,
        onset_s=148 / 1200.0,
        value={"trial_type": "exp", "value": None, "image_id": "dog_01", "duration": 0},
    )
    bad = tmp_path / "bad_events.tsv"
    bad.write_text("time\tcode\n1\t2\n")
    with pytest.raises(RecordingError, match="no 'onset' column"):
        read_events_tsv(bad, 1000.0)


def test_events_tsv_next_to_a_plain_file(tmp_path):
    path = _save(_raw(stim=False), tmp_path / "replay_raw.fif")
    (tmp_path / "replay_events.tsv").write_text(
        "onset\tduration\ttrial_type\tvalue\tsample\timage_id\n1.0\t0.5\ttest\t4\t1000\tcat_13s\n"
    )
    rec = read_recording(path)
    assert rec.events_source == "events.tsv"
    assert [(e.sample, e.value["image_id"]) for e in rec.events] == [(1000, "cat_13s")]


def test_no_events(tmp_path):
    rec = read_recording(_save(_raw(stim=False), tmp_path / "plain_raw.fif"))
    assert rec.events == [] and rec.events_source == "none"


# ---------------------------------------------------------------- errors


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_recording(tmp_path / "nope_raw.fif")


def test_empty_file(tmp_path):
    path = tmp_path / "empty_raw.fif"
    path.touch()
    with pytest.raises(RecordingError, match=r"empty \(0 bytes\)"):
        read_recording(path)


def test_truncated_file(tmp_path):
    path = _save(_raw(), tmp_path / "full_raw.fif")
    cut = tmp_path / "cut_raw.fif"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(RecordingError, match="truncated"):
        read_recording(cut)


def test_garbage_file(tmp_path):
    path = tmp_path / "junk_raw.fif"
    path.write_bytes(b"not a fif file" * 50)
    with pytest.raises(RecordingError, match="Could not read .* as FIF"):
        read_recording(path)


@pytest.mark.parametrize(
    ("name", "hint"),
    [("notes.txt", "Supported: FIF"), ("rec.vmrk", r"\.vhdr"), ("rec.csv", "timestamps")],
)
def test_wrong_extension_names_supported_formats(tmp_path, name, hint):
    path = tmp_path / name
    path.write_text("x")
    with pytest.raises(RecordingError, match=hint) as err:
        read_recording(path)
    for fmt in ("FIF", "CTF", "EDF", "BDF", "BrainVision", "BIDS"):
        assert fmt in str(err.value)


def test_recording_files_lists_first_split_parts_and_skips_what_is_not_a_recording(tmp_path):
    meg = tmp_path / "sub-01" / "ses-01" / "meg"
    names = [
        "sub-01_task-a_split-01_meg.fif",
        "sub-01_task-a_split-02_meg.fif",
        "sub-01_task-b_split-1_meg.fif",
        *[f"sub-01_task-c_split-{i:02d}_meg.fif" for i in range(1, 12)],
        "sub-01_task-d_meg.fif.gz",
        "sub-01_task-e_meg.edf",
        "sub-01_task-a_events.tsv",
        "notes.txt",
    ]
    for name in names:
        (meg / name).parent.mkdir(parents=True, exist_ok=True)
        (meg / name).touch()
    ctf = meg / "sub-01_task-f_meg.ds"
    ctf.mkdir()
    (ctf / "sub-01_task-f_meg.meg4").touch()
    (ctf / "inner.fif").touch()  # inside the CTF folder: part of it
    for skipped in ("derivatives/x/raw.fif", ".hidden/raw.fif", "sub-01/.cache_raw.fif"):
        (tmp_path / skipped).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / skipped).touch()

    found = [p.relative_to(meg).as_posix() for p in recording_files(tmp_path)]
    assert found == [
        "sub-01_task-a_split-01_meg.fif",
        "sub-01_task-b_split-1_meg.fif",
        "sub-01_task-c_split-01_meg.fif",
        "sub-01_task-d_meg.fif.gz",
        "sub-01_task-e_meg.edf",
        "sub-01_task-f_meg.ds",
    ]
    # A folder inside the dataset holding one recording: read_recording picks it.
    assert recording_files(ctf.parent.parent) == recording_files(tmp_path)
