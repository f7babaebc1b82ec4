"""``record`` as a sink over the stream layer's readers (real LSL sources in subprocesses):
gaps are counted in the file, a source that goes and comes back is followed without
losing what either side sent, and an XDF keeps an irregular string stream as sent."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import mne
import numpy as np
import pyxdf

from rtdecode.io.record import record_stream
from rtdecode.lsl.streams import COUNTER_CHANNEL
from tests.helpers.lsl_source import SourceProcess, poll
from tests.helpers.lsl_source import signal as source_signal


def test_record_counts_the_gaps_the_reader_finds(tmp_path, unique_name):
    out = tmp_path / "gaps_raw.fif"
    with SourceProcess(unique_name, n_channels=2, sfreq=250, chunk=5, counter=True,
                       duration=1.0, drop_at=100, drop_n=7, linger_s=3) as source:  # fmt: skip
        source.wait_event("ready")
        record_stream(unique_name, out, timeout_s=1.0, progress=False)
    raw = mne.io.read_raw_fif(out, verbose="error")
    gaps = json.loads(raw.info["description"])["gaps"]
    assert (gaps["n"], gaps["lost_samples"], gaps["reconnects"]) == (1, 7, 0)
    (gap,) = gaps["first"]
    # ``sample`` is the file's index of the first sample after the gap.
    assert gap["sample"] == 100 and gap["n_lost"] == 7 and gap["detected_by"] == "counter"
    assert raw.get_data(picks=[COUNTER_CHANNEL])[0, 100] == 107


def _spooled(folder: Path) -> int:
    """Bytes spooled so far by a recording into ``folder`` (0 before its spool exists)."""
    return sum(p.stat().st_size for p in folder.glob(".*.tmp/data.spool"))


def test_record_follows_a_source_that_goes_and_comes_back(tmp_path, unique_name):
    """The source is killed and restarted (same source_id, its counter from 10000) within
    ``timeout_s``: the file holds both sides, each without a hole, and says where the
    reconnection gap is."""
    out = tmp_path / "back_raw.fif"
    opts = dict(source_id=f"{unique_name}-sid", n_channels=2, sfreq=250, chunk=5, counter=True)
    stop, result = threading.Event(), {}

    def record():
        try:
            result["path"] = record_stream(unique_name, out, timeout_s=20.0, progress=False,
                                           stop_event=stop, block_s=0.1)  # fmt: skip
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            result["error"] = exc

    recorder = threading.Thread(target=record, daemon=True)
    first = SourceProcess(unique_name, **opts)
    try:
        first.wait_event("ready")
        recorder.start()
        poll(lambda: _spooled(tmp_path) > 0, 20.0, "the first samples on disk")
        first.kill()
        with SourceProcess(unique_name, counter_start=10_000, **opts) as second:
            second.wait_event("started", 30.0)
            n_before = _spooled(tmp_path)
            # 100 more samples (3 float32 channels) from the second source on disk.
            poll(lambda: _spooled(tmp_path) > n_before + 100 * 3 * 4, 20.0, "samples after it")
            stop.set()
            recorder.join(30.0)
    finally:
        first.kill()
        stop.set()
    assert "error" not in result, result.get("error")
    raw = mne.io.read_raw_fif(result["path"], verbose="error")
    counter = raw.get_data(picks=[COUNTER_CHANNEL])[0].astype(np.int64)
    k = int(np.flatnonzero(counter >= 10_000)[0])
    np.testing.assert_array_equal(counter[:k], np.arange(k))  # the first source, whole
    np.testing.assert_array_equal(counter[k:], 10_000 + np.arange(len(counter) - k))
    gaps = json.loads(raw.info["description"])["gaps"]
    assert gaps["reconnects"] == 1 and gaps["n"] == 1
    assert gaps["first"][0]["sample"] == k and gaps["first"][0]["reconnect"]


def test_record_xdf_keeps_an_irregular_string_stream_as_sent(tmp_path, unique_name):
    out = tmp_path / "strings.xdf"
    with SourceProcess(unique_name, n_channels=2, sfreq=200, chunk=4, duration=0.5,
                       format="string", irregular=True, linger_s=3) as source:  # fmt: skip
        source.wait_event("ready")
        record_stream(unique_name, out, timeout_s=1.0, progress=False)
        t0 = source.wait_event("started")["t0"]
    streams, _ = pyxdf.load_xdf(str(out), dejitter_timestamps=False)
    (data,) = [s for s in streams if s["info"]["name"][0] == unique_name]
    assert data["info"]["channel_format"][0] == "string"
    assert float(data["info"]["nominal_srate"][0]) == 0.0
    expected = [[repr(float(v)) for v in row] for row in source_signal(0, 100, 2)]
    assert data["time_series"] == expected
    # The source's own times (pyxdf adds the recorded clock offsets: ~0 on one machine).
    np.testing.assert_allclose(data["time_stamps"], t0 + np.arange(100) / 200, atol=1e-3)
