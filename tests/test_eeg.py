"""EEG as labs record it: EEGLAB, muse-lsl CSV, a live Muse stream, and EEG end to end.

The real fixtures: the EEGLAB tutorial file (mne-testing-data) and eeg-notebooks' N170
recordings shipped in rtdecode/examples/n170 (only runs 1-4 and run 5's first seconds
here, for reading and streaming; nothing is trained on run 5).
"""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import mne
import numpy as np
import pytest
from PIL import Image

from rtdecode.data.recordings import read_recording

ROOT = Path(__file__).resolve().parents[1]
EEGLAB = ROOT / "tests" / "data" / "files" / "eeglab" / "test_raw.set"
N170 = ROOT / "rtdecode" / "examples" / "n170"
RUN_1 = N170 / "recordings" / "data_2017-09-13-15.30.01.csv"
RUN_5 = N170 / "recordings" / "data_2017-09-13-15.42.33.csv"
N170_MODEL = ROOT / "models" / "n170" / "encoder"


def test_the_eeglab_tutorial_file_reads_with_its_events_and_unknown_positions():
    from rtdecode.data.datasets import _positions

    rec = read_recording(EEGLAB)
    assert rec.sfreq_hz == 128.0 and len(rec.ch_names) == 32
    assert rec.duration_s == pytest.approx(238.3, abs=0.1)
    assert set(rec.raw.get_channel_types()) == {"eeg"}
    assert len(rec.events) == 154 and rec.events_source == "annotations"
    assert {e.value["trial_type"] for e in rec.events} == {"square", "rt"}
    # "EEG 000" ... are no 10-05 names and the file has no positions: unknown, not a crash
    # (an MEG-only assumption: every sensor has a position or a layout)
    pos2, pos3, types = _positions(rec.raw.info, rec.ch_names)
    assert np.isnan(pos2).all() and np.isnan(pos3).all() and set(types) == {"eeg"}


def test_eeg_without_positions_takes_the_standard_10_05_positions_by_name():
    from rtdecode.data.datasets import _positions

    info = mne.create_info(["Cz", "Oz", "tp9", "AUX1"], 256.0, "eeg")  # no digitisation
    pos2, pos3, _ = _positions(info, info.ch_names)
    assert np.isfinite(pos3[:3]).all() and np.isnan(pos3[3]).all()
    assert pos3[0, 2] > 0.08 and pos3[1, 1] < -0.1 and pos3[2, 0] < -0.07  # vertex, back, left
    assert np.isfinite(pos2[:3]).all() and np.nanmin(pos2) == 0 and np.nanmax(pos2) == 1


def test_a_muse_csv_reads_as_eeg_in_volts_with_its_markers_as_codes():
    rec = read_recording(RUN_1)
    assert rec.ch_names == ["TP9", "AF7", "AF8", "TP10", "Right AUX"]
    assert rec.raw.get_channel_types() == ["eeg"] * 4 + ["misc"]
    assert rec.sfreq_hz == 256.0 and rec.duration_s == pytest.approx(120.0, abs=0.5)
    rows = np.loadtxt(RUN_1, delimiter=",", skiprows=1, max_rows=2000)
    np.testing.assert_allclose(rec.raw.get_data(start=0, stop=2000)[0], rows[:, 1] * 1e-6)
    codes = rows[:, -1]
    first = [e for e in rec.events if e.sample < 2000]
    assert [e.sample for e in first] == list(np.flatnonzero(codes))
    assert [e.value["value"] for e in first] == [int(c) for c in codes[codes != 0]]
    assert {e.value["value"] for e in rec.events} == {1, 2} and len(rec.events) == 197
    # Muse's electrodes sit where the 10-05 system puts them (from the name)
    montage = rec.raw.get_montage().get_positions()["ch_pos"]
    assert montage["TP9"][0] < 0 < montage["TP10"][0]


def test_replaying_a_muse_csv_publishes_its_markers_as_the_codes_they_are(tmp_path, unique_name):
    from rtdecode.io.replay import replay_file
    from rtdecode.lsl.streams import find, open_inlet, resolve

    short = tmp_path / "run1_head.csv"
    lines = RUN_1.read_text().splitlines()[: 1 + 256 * 4]  # the first 4 s
    short.write_text("\n".join(lines) + "\n")
    expected = [str(int(float(r.split(",")[-1]))) for r in lines[1:] if float(r.split(",")[-1])]
    assert len(expected) >= 3
    stop = threading.Event()
    done: dict = {}
    thread = threading.Thread(target=lambda: done.setdefault("stats", replay_file(
        short, name=unique_name, markers="string", speed=4.0, progress=False,
        stop_event=stop, wait_for_consumer_s=20.0)), daemon=True)
    thread.start()
    try:
        data = resolve(name=unique_name, timeout_s=10.0)
        m_inlet = open_inlet(find(name=f"{unique_name}-markers", timeout_s=10.0))
        m_inlet.open_stream(10.0)
        inlet = open_inlet(data)
        inlet.open_stream(10.0)
        texts: list[str] = []
        deadline = time.monotonic() + 20.0
        while len(texts) < len(expected) and time.monotonic() < deadline:
            values, _ = m_inlet.pull_chunk(timeout=1.0)
            texts += [v[0] for v in values]
            inlet.pull_chunk(timeout=0.0)
        thread.join(20.0)
    finally:
        stop.set()
        thread.join(10.0)
    assert texts == expected
    assert done["stats"].samples_sent == 256 * 4


@pytest.fixture()
def muse_source(unique_name):
    """A Muse outlet shaped like muse-lsl's, streaming run 5's first 12 s in µV."""
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "tests" / "helpers" / "muse_source.py"), "--name",
         unique_name, "--csv", str(RUN_5), "--seconds", "12", "--speed", "2"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert json.loads(proc.stdout.readline())["event"] == "ready"
        yield unique_name
    finally:
        proc.kill()
        proc.wait(10)


def test_serve_reads_a_live_muse_stream_in_microvolts_as_volts(muse_source):
    from rtdecode.config import Settings
    from rtdecode.service import Service
    from tests.helpers.lsl_source import poll

    settings = Settings(stream=muse_source, model=N170_MODEL, decoder="none",
                        gallery=N170 / "stim", retrieval_set="all", port=0, lsl_local=True,
                        allow_fixed_window=True)  # the N170 model has one window
    service = Service(settings)
    try:
        service.start()
        poll(lambda: service.health()[0] == "ready", 60.0, f"ready ({service.health()})")
        poll(lambda: service.worker.stats.as_dict()["counters"].get("frames", 0) >= 20, 60.0,
             "20 decoded frames")
        desc = service.reader.description
        assert (desc.name, desc.stype, desc.n_channels, desc.sfreq_hz) == (
            muse_source, "EEG", 5, 256.0)
        assert desc.units == ("microvolts",) * 5
        ring = service.reader.ring
        poll(lambda: ring.n_written >= ring.oldest + 512, 30.0, "512 samples in the ring")
        got = ring.read(ring.oldest, ring.oldest + 512)  # (channels, samples), in V
        rows = np.loadtxt(RUN_5, delimiter=",", skiprows=1, usecols=range(1, 6),
                          max_rows=256 * 12, dtype=np.float32)
        first = int(np.flatnonzero(np.isclose(rows[:, 0], got[0, 0] * 1e6, atol=1e-2))[0])
        np.testing.assert_allclose(got.T * 1e6, rows[first:first + 512], rtol=1e-5, atol=1e-3)
        assert np.abs(got).max() < 1e-2  # volts, not microvolts
    finally:
        service.stop()


def _write_brainvision(root: Path, data_uv: np.ndarray, sfreq: float, names, markers) -> Path:
    """A BrainVision recording as BrainVision Recorder writes it: header, markers, and
    multiplexed IEEE float32 samples in µV (Brain Products' Core Data Format 1.0)."""
    stem = "sub-01_run-1"
    (root / f"{stem}.eeg").write_bytes(data_uv.T.astype("<f4").tobytes())
    chans = "\n".join(f"Ch{i + 1}={n},,1,µV" for i, n in enumerate(names))
    (root / f"{stem}.vhdr").write_text(
        "Brain Vision Data Exchange Header File Version 1.0\n\n[Common Infos]\n"
        f"Codepage=UTF-8\nDataFile={stem}.eeg\nMarkerFile={stem}.vmrk\n"
        "DataFormat=BINARY\nDataOrientation=MULTIPLEXED\n"
        f"NumberOfChannels={len(names)}\nSamplingInterval={1e6 / sfreq:g}\n\n"
        "[Binary Infos]\nBinaryFormat=IEEE_FLOAT_32\n\n[Channel Infos]\n" + chans + "\n",
        encoding="utf-8")
    marks = "\n".join(f"Mk{k + 2}=Stimulus,S{code:>3},{sample + 1},1,0"
                      for k, (sample, code) in enumerate(markers))
    (root / f"{stem}.vmrk").write_text(
        "Brain Vision Data Exchange Marker File, Version 1.0\n\n[Common Infos]\n"
        f"Codepage=UTF-8\nDataFile={stem}.eeg\n\n[Marker Infos]\n"
        "Mk1=New Segment,,1,1,0\n" + marks + "\n", encoding="utf-8")
    return root / f"{stem}.vhdr"


def test_a_brainvision_recording_reads_in_volts_with_its_stimulus_codes(tmp_path):
    from rtdecode.data.card import read_card

    rng = np.random.default_rng(1)
    names = ["Fz", "Cz", "Pz", "O1"]
    data = rng.normal(0, 10, (4, 2000))
    markers = [(200, 1), (700, 2), (1200, 1)]
    vhdr = _write_brainvision(tmp_path, data, 500.0, names, markers)
    rec = read_recording(vhdr)
    assert rec.sfreq_hz == 500.0 and rec.ch_names == names
    np.testing.assert_allclose(rec.raw.get_data(), data * 1e-6, rtol=1e-6)
    assert [(e.sample, e.value["value"]) for e in rec.events] == markers
    (tmp_path / "pics" / "house").mkdir(parents=True)
    (tmp_path / "pics" / "face").mkdir(parents=True)
    for c in ("house", "face"):
        Image.new("RGB", (8, 8)).save(tmp_path / "pics" / c / f"{c}.png")
    (tmp_path / "card.toml").write_text(
        '[dataset]\nname = "bv"\nmodality = "eeg"\nrecordings = ["*.vhdr"]\n'
        '[events]\ncodes = { 1 = "house", 2 = "face" }\n[images]\nroot = "pics"\n')
    card = read_card(tmp_path / "card.toml")
    events = card.read(vhdr).events
    assert [e.value["image_id"] for e in events] == ["house", "face", "house"]
