"""Nothing lost: the SegmentRecorder (``rtdecode serve --record DIR``) against real LSL
sources. Sample ``i`` of channel ``c`` of tests/helpers/lsl_source.py is a pure function of
``(i, c)`` and the last channel counts samples, so every recorded value can be checked.

- ``rtdecode serve --record`` killed with SIGKILL mid-run leaves whole FIF segments that
  MNE reads, equal to the source sample for sample, with the markers as annotations on
  their exact samples, owner-only, and at most ~2 s + one segment missing at the end;
- a recorder that falls further behind than the ring counts the lost samples loudly,
  and every received sample is either in a file or counted;
- a gap in the stream ends a segment; the next one says how many samples are missing;
- a failing disk is retried and surfaced in ``error``; nothing is lost once it recovers.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

import mne
import pytest

from rtdecode.io import segments
from rtdecode.io.segments import SegmentRecorder
from rtdecode.lsl.streams import local_clock
from rtdecode.stream import MarkerReader, StreamReader
from tests.helpers.lsl_source import SourceProcess, poll
from tests.helpers.recording import check_segments
from tests.helpers.service import DEADLINE_S, build_tiny_model, model_ch_names, source_options

TOKEN = "kJ3nq8-rel-token-never-in-logs"


# ---------------------------------------------------------------------------- SIGKILL
@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory)


def test_sigkill_mid_run_leaves_whole_segments_equal_to_the_source(
    tiny_model, unique_name, tmp_path
):
    data, ckpt = tiny_model
    options = source_options(ckpt, source_id=unique_name)
    sfreq = options["sfreq"]
    n_channels = options["n_channels"] + 1
    env = dict(
        os.environ,
        RTDECODE_SOURCE_ID=unique_name,
        RTDECODE_GALLERY=str(data / "images"),
        RTDECODE_CH_NAMES=json.dumps(model_ch_names(ckpt)),
        RTDECODE_MAX_FPS="5",
    )
    argv = [sys.executable, "-m", "rtdecode.cli", "--lsl-local", "serve", "--stream"]
    argv += [unique_name, "--model", str(ckpt), "--decoder", "none", "--port", "0"]
    argv += ["--record", str(tmp_path), "--token", TOKEN]
    out_path = tmp_path / "service.log"
    with SourceProcess(unique_name, **options) as src, out_path.open("w") as out:
        service = subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)
        try:
            t0 = src.wait_event("started", 60.0)["t0"]  # the service subscribed
            poll(
                lambda: len(list(tmp_path.glob("session-*/seg-*.json"))) >= 3,
                DEADLINE_S,
                "three segments on disk",
            )
            assert service.poll() is None, out_path.read_text()
            time.sleep(0.7)  # kill at some point inside a segment, not at its start
            t_kill = local_clock()
            service.send_signal(signal.SIGKILL)
            service.wait(10)
        finally:
            if service.poll() is None:
                service.kill()
    (session,) = tmp_path.glob("session-*")
    index = check_segments(session, n_channels, sfreq)
    # Contiguous from the source's first sample, no gap, one run.
    starts = [e["first_sample"] for e in index]
    assert starts[0] == 0 and all(e["run"] == 1 and e["gap_before"] == 0 for e in index)
    assert starts[1:] == [e["first_sample"] + e["n_samples"] for e in index[:-1]]
    # The end: what the source had sent when the service died, minus what is on disk.
    n_sent = int((t_kill - t0) * sfreq)
    n_on_disk = index[-1]["first_sample"] + index[-1]["n_samples"]
    missing_s = (n_sent - n_on_disk) / sfreq
    print(f"SIGKILL after {n_sent / sfreq:.1f} s: {missing_s:.2f} s not on disk")
    # At most the last 2 s (segment_s 1.8 + marker margin 0.2), with 0.5 s for a write in
    # progress and the scheduling of a busy 2-core machine.
    assert 0 <= missing_s <= 2.0 + 0.5, f"{missing_s:.2f} s of samples missing at the end"
    # Markers (every 0.5 s, from sample 100) are annotations on their exact samples.
    marked = {}
    for entry in index:
        raw = mne.io.read_raw_fif(entry["path"], verbose="error")
        events, ids = mne.events_from_annotations(raw, verbose="error")
        names = {v: k for k, v in ids.items()}
        for sample, _, code in events:
            marked[int(sample)] = json.loads(names[code])
        assert entry["late_markers"] == []
    wanted = list(range(100, n_on_disk, 100))
    assert sorted(marked) == wanted
    assert all(m["sample"] == s for s, m in marked.items())
    assert TOKEN not in out_path.read_text()


# ---------------------------------------------------------------------------- recorder
def record(name: str, out_dir, source_options: dict, n_expected: int, **recorder_options):
    """Run a finite source to its end with a reader and a recorder; (recorder, reader)
    after both stopped."""
    with SourceProcess(name, **source_options) as src:
        reader = StreamReader(name, buffer_s=recorder_options.pop("buffer_s", 10.0)).start()
        recorder = SegmentRecorder(reader, out_dir, **recorder_options).start()
        try:
            reader.wait_ready(15.0)
            src.wait_event("done", 30.0)
            poll(lambda: reader.stats.samples >= n_expected, 10.0, f"{n_expected} samples")
        finally:
            reader.stop()
            recorder.stop()
    assert not recorder.is_alive
    return recorder, reader


def test_falling_behind_the_ring_counts_lost_samples_loudly(
    unique_name, tmp_path, monkeypatch, caplog
):
    """A disk that stalls for 2.5 s while the ring holds 1 s: the overwritten samples are
    counted, logged as an error and named in the next sidecar; nothing else is lost."""
    real_write = segments._write_segment
    calls = []

    def stalling_write(*args, **kwargs):  # a slow disk, injected into the one write call
        calls.append(1)
        if len(calls) == 2:
            time.sleep(2.5)
        return real_write(*args, **kwargs)

    monkeypatch.setattr(segments, "_write_segment", stalling_write)
    caplog.set_level(logging.ERROR, logger="rtdecode.io.segments")
    opts = dict(counter=True, n_channels=8, sfreq=1000, duration=6.0, source_id=unique_name)
    recorder, reader = record(
        unique_name, tmp_path, opts, 6000, buffer_s=1.0, segment_s=0.5, marker_margin_s=0.0
    )
    counts = recorder.stats.counters
    index = check_segments(recorder.session_dir, 9, 1000.0)
    assert counts["lost_samples"] > 0
    assert counts["samples"] + counts["lost_samples"] == reader.stats.samples == 6000
    assert sum(e["recorder_lost_before"] for e in index) == counts["lost_samples"]
    assert any("overwritten before they could be written" in r.message for r in caplog.records)


def test_a_gap_ends_a_segment_and_the_next_names_the_missing_samples(unique_name, tmp_path):
    opts = dict(counter=True, n_channels=4, sfreq=500, duration=3.0, drop_at=700, drop_n=40)
    recorder, reader = record(unique_name, tmp_path, opts, 1500 - 40)
    index = check_segments(recorder.session_dir, 5, 500.0)
    (after,) = [e for e in index if e["gap_before"]]
    assert after["first_sample"] == 700 and after["gap_before"] == 40
    assert sum(e["n_samples"] for e in index) == reader.stats.samples == 1460


def test_a_failing_disk_is_retried_surfaced_and_loses_nothing(unique_name, tmp_path):
    opts = dict(counter=True, n_channels=4, sfreq=500, markers_every_s=0.4)
    with SourceProcess(unique_name, source_id=unique_name, **opts):
        reader = StreamReader(unique_name).start()
        markers = MarkerReader(f"{unique_name}-markers", reader=reader).start()
        recorder = SegmentRecorder(reader, tmp_path, markers=markers, segment_s=0.5).start()
        try:
            poll(lambda: recorder.stats.counters["segments"] >= 2, DEADLINE_S, "segments")
            shutil.rmtree(recorder.session_dir)  # the folder vanishes (unmounted disk)
            poll(lambda: recorder.error is not None, DEADLINE_S, "the write error")
            assert "session-" in recorder.stats.error
            recorder.session_dir.mkdir(mode=0o700)
            poll(lambda: recorder.error is None, DEADLINE_S, "writes to resume")
        finally:
            reader.stop()
            markers.stop()
            recorder.stop()
    counts = recorder.stats.counters
    index = check_segments(recorder.session_dir, 5, 500.0)
    assert counts["write_errors"] >= 1 and counts["lost_samples"] == 0
    # Segments written before the folder vanished are gone with it; from the retry on,
    # every sample is on disk, contiguous up to the last one the reader received.
    assert index[-1]["first_sample"] + index[-1]["n_samples"] == reader.stats.samples
    starts = [e["first_sample"] for e in index]
    assert starts[1:] == [e["first_sample"] + e["n_samples"] for e in index[:-1]]
