"""XDF in and out over real LSL on loopback: a file written by our XdfWriter is replayed
(``replay_file`` on ``.xdf``) and recorded back to XDF (``record_stream`` to ``.xdf``);
pyxdf reads both. A counter channel proves sample for sample; markers stay on their
samples; an irregular numeric stream goes through too."""

from __future__ import annotations

import json
import threading

import numpy as np
import pytest
import pyxdf

from rtdecode.io.record import record_stream
from rtdecode.io.replay import replay_file
from rtdecode.io.xdf import XdfStream, write_xdf

SFREQ = 250.0
N = 1000  # 4 s
T0 = 7300.25  # the recording machine's LSL clock
MARKER_SAMPLES = (100, 351, 352, 777, 999)


def _file(path, name: str):
    rng = np.random.default_rng(1)
    data = (rng.standard_normal((N, 4)) * 1e-12).astype(np.float32)
    data[:, 0] = np.arange(N)  # counter, exact in float32
    ts = T0 + np.arange(N) / SFREQ + rng.normal(0, 1e-5, N)  # acquisition jitter
    meg = XdfStream(name, "MEG", "float32", SFREQ, ["counter", "MLC11", "MLC12", "MRO11"],
                    data, ts, source_id=f"{name}-src", ch_units=["", "T", "T", "T"],
                    ch_types=["misc", "mag", "mag", "mag"])  # fmt: skip
    texts = [json.dumps({"image_id": f"img_{k}", "trial_type": "exp"}) for k in MARKER_SAMPLES]
    markers = XdfStream(f"{name}-markers", "Markers", "string", 0.0, ["marker"],
                        [[t] for t in texts], ts[list(MARKER_SAMPLES)])  # fmt: skip
    write_xdf(path, [meg, markers])
    return meg, markers


def _streams(path) -> dict:
    streams, _ = pyxdf.load_xdf(str(path), dejitter_timestamps=False)
    return {s["info"]["name"][0]: s for s in streams}


@pytest.mark.parametrize("speed", [4.0])
def test_xdf_replays_and_records_back_sample_for_sample(tmp_path, unique_name, speed):
    src, out = tmp_path / "lab.xdf", tmp_path / "back.xdf"
    meg, markers = _file(src, unique_name)
    result: dict = {}

    def record():
        try:
            result["path"] = record_stream(unique_name, out, duration_s=N / SFREQ, progress=False)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            result["error"] = exc

    recorder = threading.Thread(target=record, daemon=True)
    recorder.start()
    stats = replay_file(src, speed=speed, progress=False, wait_for_consumer_s=20.0)
    recorder.join(30.0)
    assert "error" not in result, result.get("error")
    assert stats.samples_sent == N and stats.markers_sent == len(MARKER_SAMPLES)

    original, back = _streams(src), _streams(out)
    data = back[unique_name]
    assert data["info"]["nominal_srate"][0] == "250.0"
    labels = [c["label"][0] for c in data["info"]["desc"][0]["channels"][0]["channel"]]
    assert labels == meg.ch_names
    # Sample for sample: every value, the counter without a hole or a repeat.
    np.testing.assert_array_equal(data["time_series"], original[unique_name]["time_series"])
    # Timing kept, scaled by the speed: the spacing of the original timestamps.
    np.testing.assert_allclose(
        np.diff(data["time_stamps"]), np.diff(meg.timestamps) / speed, atol=2e-6
    )
    # Markers: the same texts, each on the sample it was recorded on (by the counter).
    mrk = back[f"{unique_name}-markers"]
    assert [row[0] for row in mrk["time_series"]] == [row[0] for row in markers.data]
    nearest = [int(np.argmin(np.abs(data["time_stamps"] - t))) for t in mrk["time_stamps"]]
    assert [int(data["time_series"][k, 0]) for k in nearest] == list(MARKER_SAMPLES)
    off = (mrk["time_stamps"] - data["time_stamps"][nearest]) * SFREQ * speed
    assert np.abs(off).max() < 0.1  # in samples (each inlet estimates its own clock offset)


def test_xdf_replay_irregular_numeric_stream_and_no_markers(tmp_path, unique_name):
    """An irregular numeric stream keeps its values and times; ``markers="none"`` leaves
    the marker stream out."""
    from rtdecode.lsl.streams import find, open_inlet, resolve

    src = tmp_path / "lab.xdf"
    meg, _ = _file(src, unique_name)
    gaze = XdfStream(f"{unique_name}-gaze", "Gaze", "double64", 0.0, ["x", "y"],
                     np.array([[0.1, -2.5], [1e300, np.pi], [3.0, 4.0]]),
                     meg.timestamps[[10, 500, 990]])  # fmt: skip
    streams = _streams(src)
    write_xdf(src, [meg, gaze] + [
        XdfStream(f"{unique_name}-markers", "Markers", "string", 0.0, ["marker"],
                  streams[f"{unique_name}-markers"]["time_series"],
                  streams[f"{unique_name}-markers"]["time_stamps"])])  # fmt: skip
    stop = threading.Event()
    done: dict = {}
    player = threading.Thread(
        target=lambda: done.setdefault("stats", replay_file(
            src, markers="none", progress=False, stop_event=stop, speed=2.0,
            wait_for_consumer_s=20.0)),
        daemon=True,
    )  # fmt: skip
    player.start()
    try:
        inlet = open_inlet(resolve(name=f"{unique_name}-gaze", timeout_s=10.0))
        inlet.open_stream(10.0)
        data_inlet = open_inlet(resolve(name=unique_name, timeout_s=10.0))
        data_inlet.open_stream(10.0)  # the replay waits for this consumer
        got, stamps = [], []
        while len(got) < 3:
            values, ts = inlet.pull_chunk(timeout=5.0)
            assert ts, "no gaze sample within 5 s"
            got += values
            stamps += ts
        np.testing.assert_array_equal(np.array(got), gaze.data)
        spacing = np.diff(stamps)
        np.testing.assert_allclose(spacing, np.diff(gaze.timestamps) / 2.0, atol=1e-3)
        assert find(name=f"{unique_name}-markers", timeout_s=0.5) is None
    finally:
        stop.set()
        player.join(10.0)
    assert done["stats"].markers_sent == 3
