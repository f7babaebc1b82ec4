"""Recordings under test: what the synthetic source sent, a check of ``--record``
segments against it, a small real file system that fills up (``small_disk``), and a
small MEG file to replay (``make_meg_file``)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import mne
import numpy as np
import pytest

from rtdecode.io.segments import read_index
from tests.helpers.lsl_source import signal as source_signal

SFREQ = 1000.0
N_MEG = 20
EVENT_SAMPLES = tuple(range(200, 3000, 500))  # one every 0.5 s: any 1 s holds two


def expected(first: int, n: int, n_channels: int) -> np.ndarray:
    """What the source sent for samples [first, first + n): float32 (n_channels, n),
    the counter in the last row."""
    x = source_signal(first, n, n_channels).astype(np.float32)
    x[:, -1] = np.arange(first, first + n)
    return x.T


def check_segments(session_dir, n_channels: int, sfreq_hz: float) -> list[dict]:
    """Every segment: readable by MNE, owner-only, equal to the source, within 2 s.
    Returns the index."""
    index = read_index(session_dir)
    assert index, f"no segment in {session_dir}"
    assert stat.S_IMODE(os.stat(session_dir).st_mode) == 0o700
    for entry in index:
        for path in (entry["path"], os.path.join(session_dir, entry["path"][:-8] + ".json")):
            assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
        raw = mne.io.read_raw_fif(entry["path"], preload=True, verbose="error")
        assert raw.first_samp == entry["first_sample"]
        assert raw.n_times == entry["n_samples"] <= round(2.0 * sfreq_hz)
        assert json.loads(raw.info["description"])["first_sample"] == entry["first_sample"]
        data = raw.get_data().astype(np.float32)
        counter = data[-1].astype(np.int64)
        np.testing.assert_array_equal(
            data, expected(int(counter[0]), raw.n_times, n_channels), err_msg=entry["file"]
        )
    return index


@contextlib.contextmanager
def small_disk(path: Path, size_mb: float):
    """A real file system of ``size_mb`` MB mounted at ``path`` (a tmpfs: the kernel
    refuses writes past its size with ENOSPC, as a full disk does), unmounted on exit.

    Mounting needs root (CI runs as root); elsewhere the test is skipped with the reason.
    """
    mount, umount = shutil.which("mount"), shutil.which("umount")
    if os.geteuid() != 0 or not (mount and umount):
        pytest.skip("a small file system cannot be mounted here: mounting a tmpfs needs root")
    path.mkdir(parents=True, exist_ok=True)
    size_kb = int(size_mb * 1024)
    done = subprocess.run(
        [mount, "-t", "tmpfs", "-o", f"size={size_kb}k,mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    if done.returncode != 0:
        pytest.skip(f"a small tmpfs cannot be mounted at {path}: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run([umount, "--lazy", str(path)], capture_output=True, timeout=30)


def fill(path: Path, leave_bytes: int) -> Path:
    """A filler file that leaves ``leave_bytes`` free on ``path``'s file system."""
    filler = path / "filler.bin"
    free = shutil.disk_usage(path).free
    with filler.open("wb") as fh:
        fh.write(b"\0" * max(0, free - leave_bytes))
    return filler


def make_meg_file(path: Path, n_times: int, event_samples=EVENT_SAMPLES, seed: int = 0) -> Path:
    """20 magnetometers with positions + a stim channel; events as JSON annotations."""
    names = [f"MEG{i:03d}" for i in range(N_MEG)] + ["STI 014"]
    info = mne.create_info(names, SFREQ, ["mag"] * N_MEG + ["stim"])
    rng = np.random.default_rng(seed)
    for ch in info["chs"][:N_MEG]:
        ch["loc"][:] = rng.uniform(-0.1, 0.1, 12)
    data = rng.standard_normal((N_MEG + 1, n_times)) * 1e-12
    data[-1] = 0
    descs = []
    for k, s in enumerate(event_samples):
        data[-1, s : s + 3] = k + 1
        descs.append(json.dumps({"image_id": f"img_{k:02d}", "trial_type": "test", "value": k + 1}))
    raw = mne.io.RawArray(data, info, verbose="error")
    raw.set_annotations(
        mne.Annotations([s / SFREQ for s in event_samples], [0.0] * len(descs), descs)
    )
    raw.save(path, overwrite=True, verbose="error")
    return path
