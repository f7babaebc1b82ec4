"""XDF: files written by rtdecode's own writer read back by pyxdf, sample for sample."""

from __future__ import annotations

import json

import numpy as np
import pytest
import pyxdf

from rtdecode.io.xdf import BOUNDARY_UUID, XdfStream, XdfWriter, read_xdf, write_xdf

SFREQ = 1200.0
T0 = 51234.567891  # LSL clock: seconds since the machine booted


def _meg(n: int = 30_000, seed: int = 0) -> XdfStream:
    """4 MEG channels + a sample counter (float32, exact up to 2**24), 25 s at 1200 Hz."""
    rng = np.random.default_rng(seed)
    data = (rng.standard_normal((n, 5)) * 1e-12).astype(np.float32)
    data[:, -1] = np.arange(n, dtype=np.float32)
    ts = T0 + np.arange(n) / SFREQ + rng.normal(0, 2e-5, n)  # jittered, as acquisition is
    return XdfStream(
        name="MEG", type="MEG", channel_format="float32", nominal_srate_hz=SFREQ,
        ch_names=["MLC11-1609", "MLC12-1609", "MRO11-1609", "MZO01-1609", "counter"],
        data=data, timestamps=ts, source_id="ctf-275",
        ch_units=["T"] * 4 + ["count"], ch_types=["MEG"] * 4 + ["MISC"],
    )  # fmt: skip


def _markers() -> XdfStream:
    texts = [
        json.dumps({"image_id": "aardvark_01b", "trial_type": "exp"}),
        "cat_03",
        "42",
        "größer · ≠ ascii",
        "x" * 300,  # longer than 255 bytes: a 4-byte length
    ]
    return XdfStream(
        name="MEG-markers", type="Markers", channel_format="string", nominal_srate_hz=0.0,
        ch_names=["marker"], data=[[t] for t in texts],
        timestamps=T0 + np.array([0.5, 2.25, 7.0001, 13.3, 24.9]),
    )  # fmt: skip


def _by_name(streams):
    return {s["info"]["name"][0]: s for s in streams}


def test_round_trip_through_pyxdf_sample_for_sample(tmp_path):
    meg, mrk = _meg(), _markers()
    ints = XdfStream(
        name="triggers", type="Stim", channel_format="int16", nominal_srate_hz=SFREQ,
        ch_names=["UPPT001"], data=np.where(np.arange(6000) % 1800 == 0, 64, 0)[:, None],
        timestamps=T0 + np.arange(6000) / SFREQ,
    )  # fmt: skip
    doubles = XdfStream(
        name="eye", type="Gaze", channel_format="double64", nominal_srate_hz=0.0,
        ch_names=["x", "y"], data=np.array([[0.1, -2.5e-9], [1e300, np.pi]]),
        timestamps=T0 + np.array([1.0, 1.5]),
    )  # fmt: skip
    path = write_xdf(tmp_path / "rec.xdf", [meg, mrk, ints, doubles])

    streams, header = pyxdf.load_xdf(str(path), dejitter_timestamps=False)
    assert header["info"]["version"] == ["1.0"]
    got = _by_name(streams)
    assert set(got) == {"MEG", "MEG-markers", "triggers", "eye"}
    m = got["MEG"]
    assert m["time_series"].dtype == np.float32
    assert np.array_equal(m["time_series"], meg.data)
    assert np.array_equal(m["time_stamps"], meg.timestamps)  # exact, bit for bit
    assert np.array_equal(np.diff(m["time_series"][:, -1]), np.ones(len(meg.data) - 1))
    labels = [c["label"][0] for c in m["info"]["desc"][0]["channels"][0]["channel"]]
    assert labels == meg.ch_names
    assert float(m["info"]["nominal_srate"][0]) == SFREQ
    assert m["footer"]["info"]["sample_count"] == [str(len(meg.data))]

    k = got["MEG-markers"]
    assert k["time_series"] == mrk.data  # strings exact, UTF-8 included
    assert np.array_equal(k["time_stamps"], mrk.timestamps)
    assert float(k["info"]["nominal_srate"][0]) == 0.0
    assert np.array_equal(got["triggers"]["time_series"], ints.data.astype(np.int16))
    assert np.array_equal(got["eye"]["time_series"], doubles.data)

    # our reader gives the same, as XdfStream objects
    mine = {s.name: s for s in read_xdf(path)}
    assert np.array_equal(mine["MEG"].data, meg.data)
    assert np.array_equal(mine["MEG"].timestamps, meg.timestamps)
    assert mine["MEG"].ch_names == meg.ch_names and mine["MEG"].ch_units == meg.ch_units
    assert mine["MEG-markers"].is_irregular and mine["MEG-markers"].is_strings
    assert mine["MEG-markers"].data == mrk.data
    assert not mine["MEG"].is_irregular and mine["MEG"].source_id == "ctf-275"

    # 25 s of data: boundary chunks were written, and pyxdf read through them
    assert path.read_bytes().count(BOUNDARY_UUID) >= 2


def test_markers_land_between_the_data_samples_they_belong_to(tmp_path):
    meg, mrk = _meg(), _markers()
    path = write_xdf(tmp_path / "rec.xdf", [meg, mrk], chunk_samples=120)
    got = {s.name: s for s in read_xdf(path)}
    for t in got["MEG-markers"].timestamps:
        # the data sample nearest each marker is where a replay puts it
        i = int(np.argmin(np.abs(got["MEG"].timestamps - t)))
        assert abs(got["MEG"].timestamps[i] - t) < 1 / SFREQ
        assert got["MEG"].data[i, -1] == i  # the counter says which sample it is


def test_writer_chunk_by_chunk_with_clock_offsets(tmp_path):
    path = tmp_path / "live.xdf"
    with XdfWriter(path) as w:
        sid = w.add_stream("EEG", "EEG", ["Cz", "Pz"], 250.0, "double64")
        mid = w.add_stream("codes", "Markers", ["code", "label"], 0.0, "string")
        for k in range(5):  # as a recorder receives them: chunk after chunk
            ts = 100.0 + (np.arange(50) + 50 * k) / 250.0
            w.write_samples(sid, ts, np.c_[ts, -ts])
            w.write_samples(mid, [ts[10]], [[str(k), f"trial {k}"]])
            w.write_clock_offset(sid, ts[-1], 0.25)
            w.write_clock_offset(mid, ts[-1], 0.25)
        w.write_samples(mid, [], [])  # nothing to write: no chunk
    streams = _by_name(pyxdf.load_xdf(str(path), dejitter_timestamps=False)[0])
    eeg = streams["EEG"]
    assert eeg["time_series"].shape == (250, 2)
    # pyxdf applies the recorded clock offset to the timestamps
    assert np.allclose(eeg["time_stamps"], 100.25 + np.arange(250) / 250.0, atol=1e-9)
    assert np.array_equal(eeg["time_series"][:, 0], 100.0 + np.arange(250) / 250.0)
    assert streams["codes"]["time_series"] == [[str(k), f"trial {k}"] for k in range(5)]


def test_bad_input(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_xdf(tmp_path / "nope.xdf")
    fake = tmp_path / "fake.xdf"
    fake.write_bytes(b"FIF:not an xdf")
    with pytest.raises(ValueError, match="not an XDF file"):
        read_xdf(fake)
    with XdfWriter(tmp_path / "w.xdf") as w:
        with pytest.raises(ValueError, match="not an XDF format"):
            w.add_stream("x", "EEG", ["a"], 100.0, "float16")
        sid = w.add_stream("x", "EEG", ["a", "b"], 100.0)
        with pytest.raises(ValueError, match=r"shape \(2, 2\)"):
            w.write_samples(sid, [0.0, 0.01], np.zeros((2, 3)))
        with pytest.raises(ValueError, match="was not added"):
            w.write_samples(7, [0.0], [[1.0]])
    with pytest.raises(ValueError, match="closed"):
        w.write_samples(sid, [0.0], [[1.0, 2.0]])
