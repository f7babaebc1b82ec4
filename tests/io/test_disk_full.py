"""A full disk while recording, on a real small file system: a tmpfs of a few MB mounted
in the test (``tests/helpers/recording.py: small_disk``; it needs root, as CI has, and the
test is skipped with the reason where mounting is impossible). The kernel refuses writes
past its size with ENOSPC, exactly as a full disk does; nothing is injected.

- ``serve --record``: the real service on a real LSL source (tests/helpers/lsl_source.py).
  /health says "disk full" and names the folder, decoding and the viewer's frames go on,
  segments written before stay intact and equal to the source, the samples the ring
  overwrote meanwhile are the only ones lost and are reported (/api/status, the log, the
  next sidecar), and recording resumes once space is freed;
- ``rtdecode record`` (the real command): a clear error naming the folder, the file and
  what it holds, and that file is a valid FIF equal to the source.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import httpx
import mne
import numpy as np
import pytest

from tests.helpers.lsl_source import SourceProcess, poll
from tests.helpers.recording import check_segments, expected, fill, small_disk
from tests.helpers.service import DEADLINE_S, Live, build_tiny_model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory)


def test_serve_record_on_a_full_disk_says_so_goes_on_and_resumes_when_space_returns(
    tiny_model, unique_name, tmp_path, caplog
):
    caplog.set_level(logging.WARNING, logger="rtdecode.io.segments")
    with small_disk(tmp_path / "disk", size_mb=8) as disk:
        # Room for two segments (307 channels x 360 samples in float32: ~0.47 MB each).
        filler = fill(disk, leave_bytes=1_200_000)
        # A 3 s ring: a disk full for longer than that loses samples (the case to report).
        with Live(tiny_model, unique_name, record=disk, buffer_s=3.0) as live:
            service, viewer = live.service, live.viewer
            recorder = service.recorder
            url = service.url
            poll(lambda: recorder.disk_full, DEADLINE_S, "the disk to fill up")
            before = {e["file"]: e for e in check_segments(recorder.session_dir, 307, 200.0)}
            sums = {f: _digest(e["path"]) for f, e in before.items()}
            assert len(before) >= 1

            health = poll(lambda: _degraded(url), DEADLINE_S, "/health to say disk full")
            (reason,) = [r for r in health["reasons"] if "disk full" in r]
            assert str(recorder.session_dir) in reason, reason

            # Decoding and streaming go on while the disk stays full, until the ring has
            # overwritten samples the recorder could not write.
            frames = len(viewer.frames)
            poll(lambda: recorder.stats.counters["lost_samples"] > 0, DEADLINE_S, "a loss")
            poll(lambda: len(viewer.frames) > frames + 10, DEADLINE_S, "frames while full")
            rec = httpx.get(f"{url}api/status", timeout=10).json()["source"]["recorder"]
            assert rec["disk_full"] and "disk full" in rec["problem"], rec
            assert rec["counters"]["lost_samples"] > 0 and rec["lost_s"] > 0
            assert "rtdecode_recorder_lost_samples" in httpx.get(f"{url}metrics").text
            assert service.worker.stats.error is None

            filler.unlink()  # space returns
            poll(lambda: not recorder.disk_full, DEADLINE_S, "writes to resume")
            n_after = len(before) + 2
            poll(
                lambda: recorder.stats.counters["segments"] >= n_after,
                DEADLINE_S,
                "new segments after space returned",
            )
            poll(lambda: httpx.get(f"{url}health", timeout=10).status_code == 200, 10.0, "ready")
        final = service.status()

        index = check_segments(recorder.session_dir, 307, 200.0)
        for name, entry in before.items():  # untouched by the failed writes
            assert _digest(entry["path"]) == sums[name]
        assert not [p for p in os.listdir(recorder.session_dir) if p.startswith(".")]

    counts = final["recorder"]["counters"]
    lost = counts["lost_samples"]
    # Only what could not be written is lost: every received sample is in a file or
    # counted, and the loss sits exactly where the sidecars say.
    assert sum(e["n_samples"] for e in index) + lost == final["reader"]["samples"]
    assert sum(e["recorder_lost_before"] for e in index) == lost > 0
    for prev, nxt in zip(index, index[1:], strict=False):
        assert (
            nxt["first_sample"]
            == prev["first_sample"] + prev["n_samples"] + (nxt["recorder_lost_before"])
        )
    assert final["recorder"]["lost_s"] == pytest.approx(lost / 200.0, abs=1e-3)
    assert final["recorder"]["error"] is None and final["recorder"]["problem"] is None
    messages = [r.getMessage() for r in caplog.records]
    assert any("disk full" in m and str(recorder.session_dir) in m for m in messages)
    resumed = [m for m in messages if "resumed" in m]
    assert resumed and f"{lost} samples ({lost / 200.0:.2f} s)" in resumed[0], resumed
    print(
        f"disk full: {len(before)} segments kept, {lost} samples ({lost / 200.0:.2f} s) lost, "
        f"{len(index)} segments in all"
    )


def _degraded(url: str) -> dict | None:
    response = httpx.get(f"{url}health", timeout=10)
    body = response.json()
    if response.status_code == 503 and body["state"] == "degraded":
        return body if any("disk full" in r for r in body["reasons"]) else None
    return None


def _digest(path) -> bytes:
    import hashlib

    with open(path, "rb") as fh:
        return hashlib.sha256(fh.read()).digest()


def test_record_on_a_full_disk_keeps_a_valid_file_and_says_what_it_holds(unique_name, tmp_path):
    n_ch = 65  # 64 channels + the counter, 1000 Hz: 0.26 MB per second of float32
    with small_disk(tmp_path / "disk", size_mb=3) as disk:
        out = disk / "rec_raw.fif"
        opts = dict(counter=True, n_channels=n_ch - 1, sfreq=1000, duration=30.0)
        with SourceProcess(unique_name, source_id=unique_name, markers_every_s=0.5, **opts):
            argv = [sys.executable, "-m", "rtdecode.cli", "--lsl-local", "record"]
            argv += ["--name", unique_name, "--out", str(out), "--duration", "30", "--quiet"]
            done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        error = done.stderr.strip().splitlines()[-1]
        assert done.returncode == 2, done.stderr
        assert f"The disk of {disk} is full" in error and str(out) in error, error
        n_kept = int(error.split("Kept: the first ")[1].split(" samples")[0])
        assert 0 < n_kept < 30_000
        assert f"Samples from {n_kept} on were not recorded" in error
        # The file of what was kept is complete: MNE reads it, equal to the source.
        raw = mne.io.read_raw_fif(out, preload=True, verbose="error")
        assert raw.n_times == n_kept
        np.testing.assert_array_equal(raw.get_data().astype(np.float32), expected(0, n_kept, n_ch))
        n_markers = int(error.split(" samples (")[2].split(" and ")[1].split(" markers")[0])
        assert len(raw.annotations) == n_markers == len(range(500, n_kept, 500))
        assert os.listdir(disk) == [out.name]  # no spool or temporary file left behind
    print(f"record on a full disk: {error}")
