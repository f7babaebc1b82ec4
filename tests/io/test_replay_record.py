"""rtdecode replay / record over real LSL on loopback.

Replays run in a thread (``Player``) or as the real command in a subprocess
(``python -m rtdecode.cli --lsl-local replay ...``); every test uses its own stream name.
The counter channel proves that no sample was lost, repeated or altered.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import mne
import numpy as np
import pytest

from rtdecode.contracts import ParameterError
from rtdecode.data.recordings import read_recording
from rtdecode.io.record import record_stream
from rtdecode.io.replay import Pacer, Player, replay_file
from rtdecode.lsl.streams import (
    COUNTER_CHANNEL,
    COUNTER_MODULUS,
    StreamNotFoundError,
    counter_values,
    inlet_description,
    local_clock,
    open_inlet,
    resolve,
    unwrap_counter,
)
from tests.helpers.recording import EVENT_SAMPLES, N_MEG, SFREQ, make_meg_file


@pytest.fixture(scope="module")
def meg_file(tmp_path_factory) -> Path:
    """3 s at 1000 Hz."""
    return make_meg_file(tmp_path_factory.mktemp("replay") / "meg3s_raw.fif", 3000)


@pytest.fixture(scope="module")
def file_data(meg_file) -> np.ndarray:
    """What a replay of ``meg_file`` must send: float32 (n_channels, n_times)."""
    return read_recording(meg_file).raw.get_data().astype(np.float32)


def _finish(player: Player, timeout_s: float = 30.0):
    """Wait for a started replay to end by itself; its stats (or its error, raised)."""
    assert player.wait(timeout_s), f"replay still running after {timeout_s} s"
    return player.stop()


def _connect(name: str, *, markers: bool = True):
    """Marker inlet first (subscribed), then the data inlet: a replay waiting for its
    consumer then starts only when both will receive everything."""
    m_inlet = None
    if markers:
        m_inlet = open_inlet(resolve(name=f"{name}-markers", timeout_s=20))
        m_inlet.open_stream(10)
        # A clock-synced inlet's first pull with data waits (~0.6 s) for a clock offset:
        # get it before the data start, so that arrival times measure the replay.
        m_inlet.time_correction(10)
    inlet = open_inlet(resolve(name=name, timeout_s=20))
    inlet.time_correction(10)
    inlet.open_stream(10)
    return inlet, m_inlet


def _pull(inlet, n_samples: int, timeout_s: float = 30.0, m_inlet=None):
    """Pull until ``n_samples`` arrived. Returns data (n, n_ch), timestamps, arrival times
    (local clock per sample, the time its chunk was pulled) and markers [(t, dict)]."""
    chunks, stamps, arrivals, markers = [], [], [], []
    deadline = local_clock() + timeout_s
    got = 0
    while got < n_samples:
        assert local_clock() < deadline, f"only {got} of {n_samples} samples in {timeout_s} s"
        x, t = inlet.pull_chunk(timeout=0.1, max_samples=4096, min_samples=1, as_numpy=True)
        now = local_clock()
        if len(t):
            chunks.append(np.array(x))
            stamps.append(np.array(t))
            arrivals.append(np.full(len(t), now))
            got += len(t)
        if m_inlet is not None:
            texts, m_t = m_inlet.pull_chunk(timeout=0.0)
            markers += [(ts, json.loads(s[0])) for s, ts in zip(texts, m_t, strict=True)]
    if m_inlet is not None:  # markers go out with their chunk; take the stragglers
        end = local_clock() + 0.3
        while local_clock() < end:
            texts, m_t = m_inlet.pull_chunk(timeout=0.05)
            markers += [(ts, json.loads(s[0])) for s, ts in zip(texts, m_t, strict=True)]
    return (
        np.concatenate(chunks)[:n_samples],
        np.concatenate(stamps)[:n_samples],
        np.concatenate(arrivals)[:n_samples],
        markers,
    )


def _replay_and_pull(path, name: str, n_samples: int, *, markers: bool = True, **kwargs):
    """Replay ``path`` in a thread (waiting for us) and pull ``n_samples`` of it.

    Returns data, timestamps, arrival times, markers (see ``_pull``) and ReplayStats.
    """
    with Player(path, name=name, wait_for_consumer_s=20, **kwargs) as rt:
        inlet, m_inlet = _connect(name, markers=markers)
        pulled = _pull(inlet, n_samples, m_inlet=m_inlet)
        return (*pulled, _finish(rt))


def _cli(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "rtdecode.cli", "--lsl-local", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _interrupt(proc: subprocess.Popen, timeout_s: float = 20.0) -> tuple[int, str]:
    """Ctrl-C the command; returns (exit code, stderr)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"command did not stop on Ctrl-C: {err[-2000:]}") from None
    return proc.returncode, err


# ---------------------------------------------------------------- pure parts


def test_counter_is_exact_in_float32_and_unwraps():
    first = COUNTER_MODULUS - 3
    values = counter_values(first, 6)
    assert values.dtype == np.float32
    assert values.tolist() == [2**24 - 3, 2**24 - 2, 2**24 - 1, 0, 1, 2]
    absolute = unwrap_counter(values, reference=first - 100)
    np.testing.assert_array_equal(absolute, first + np.arange(6))
    # A reader that saw index first - 1 continues from there, across the wrap.
    np.testing.assert_array_equal(
        unwrap_counter(values[3:], reference=first + 2), first + 3 + np.arange(3)
    )
    np.testing.assert_array_equal(unwrap_counter(counter_values(10, 5)), 10 + np.arange(5))


def test_record_counter_check_across_blocks_and_the_wrap(tmp_path):
    from rtdecode.io.record import _counter_check

    counter = counter_values(COUNTER_MODULUS - 5, 12)
    counter = np.delete(counter, [3, 4, 9])  # 3 lost, one of them at the wrap
    counter = np.insert(counter, 6, counter[5])  # 1 repeated
    spool = np.zeros((len(counter), 3), dtype=np.float32)
    spool[:, 1] = counter
    spool.tofile(tmp_path / "data.spool")
    check = _counter_check(tmp_path / "data.spool", np.float32, len(counter), 3, 1, max_values=9)
    assert check == {
        "first": 2**24 - 5,
        "last": 2**24 + 6,
        "lost": 3,
        "repeated": 1,
        "modulus": COUNTER_MODULUS,
    }


def test_pacer_never_accumulates_lag():
    """10 minutes of 10 ms chunks with a wait that oversleeps 0-2 ms every time and 0.3 ms
    of work per chunk: every push stays within one oversleep of its due time."""
    rng = np.random.default_rng(0)

    class Clock:
        t = 1000.0

        def __call__(self):
            return self.t

        def wait(self, delay_s):
            self.t += delay_s + rng.uniform(0, 2e-3)
            return False

    clock = Clock()
    pacer = Pacer(1200.0, 1.0, t0=clock.t, clock=clock, wait=clock.wait)
    n_chunk = 12
    lags = np.empty(60_000)
    for k in range(len(lags)):
        lags[k], stopped = pacer.wait_until(pacer.t_of((k + 1) * n_chunk - 1))
        assert not stopped
        clock.t += 3e-4  # the push itself
    assert lags.min() >= 0
    assert lags.max() < 2.4e-3  # a sleep-per-chunk loop would be ~60 s late by now
    assert clock.t - 1000.0 == pytest.approx(600.0, abs=3e-3)
    np.testing.assert_allclose(
        pacer.timestamps(1200 * 600, 3), 1000.0 + 600.0 + np.arange(3) / 1200.0, rtol=0, atol=1e-9
    )


# ---------------------------------------------------------------- replay


def test_cli_replay_publishes_description_data_and_stops_on_ctrl_c(
    meg_file, file_data, unique_name
):
    proc = _cli(
        "replay",
        str(meg_file),
        "--name",
        unique_name,
        "--counter",
        "--loop",
        "--quiet",
        "--chunk-ms",
        "20",
        "--source-id",
        f"{unique_name}-src",
    )
    try:
        inlet, _ = _connect(unique_name, markers=False)
        desc = inlet_description(inlet, 10)
        data, stamps, _, _ = _pull(inlet, 300)
    finally:
        code, err = _interrupt(proc)
    assert code == 130 and "Traceback" not in err, err

    raw = read_recording(meg_file).raw
    assert desc.stype == "MEG" and desc.sfreq_hz == SFREQ and desc.source_id == f"{unique_name}-src"
    assert desc.channel_format == "float32"
    assert desc.ch_names == (*raw.ch_names, COUNTER_CHANNEL)
    assert desc.ch_types == ("mag",) * N_MEG + ("stim", "misc")
    assert desc.units[:N_MEG] == ("T",) * N_MEG and desc.counter_index == N_MEG + 1
    expected_pos = np.array([ch["loc"][:3] for ch in raw.info["chs"][:N_MEG]])
    np.testing.assert_array_equal(desc.positions[:N_MEG], expected_pos)
    assert np.isnan(desc.positions[-1]).all()

    sample = unwrap_counter(data[:, -1])
    np.testing.assert_array_equal(np.diff(sample), 1)
    np.testing.assert_array_equal(data[:, :-1], file_data[:, sample % file_data.shape[1]].T)
    # Timestamps are t0 + sample / sfreq: no drift between any two samples.
    np.testing.assert_allclose(np.diff(stamps), np.diff(sample) / SFREQ, rtol=0, atol=1e-9)


def test_replay_keeps_real_time_pace_without_drift(meg_file, unique_name):
    data, stamps, arrived, markers, stats = _replay_and_pull(
        meg_file, unique_name, 2000, counter=True, max_duration_s=2.0
    )
    sample = data[:, -1].astype(np.int64)
    np.testing.assert_array_equal(sample, np.arange(2000))
    t0 = stats.t0_lsl
    # Each timestamp is exactly t0 + i / sfreq (the inlet's clock correction is ~0 on
    # one machine): nothing accumulates between the first and the last sample.
    np.testing.assert_allclose(stamps - t0, sample / SFREQ, rtol=0, atol=1e-4)
    np.testing.assert_allclose(np.diff(stamps), 1 / SFREQ, rtol=0, atol=1e-9)
    # Samples arrive when they are due: at real-time pace, and not later at the end.
    lag = arrived - stamps
    assert lag.min() > -1e-3  # never sent ahead of its time
    assert 1.9 < arrived[-1] - arrived[0] < 2.3
    assert np.median(lag) < 0.05
    assert np.median(lag[-500:]) < np.median(lag[:500]) + 0.02
    assert 1.99 < stats.wall_s < 2.2
    assert stats.samples_sent == 2000 and stats.stopped  # stopped by max_duration_s
    # Markers carry the timestamp of their sample.
    assert [m["sample"] for _, m in markers] == [200, 700, 1200, 1700]
    for t, m in markers:
        assert t == pytest.approx(stamps[m["sample"]], abs=1e-4)
        assert m["image_id"] == f"img_{EVENT_SAMPLES.index(m['sample']):02d}"
        assert m["trial_type"] == "test" and m["file_sample"] == m["sample"]


def test_replay_speed_10_is_ten_times_faster(meg_file, unique_name):
    data, stamps, arrived, _, stats = _replay_and_pull(
        meg_file, unique_name, 3000, markers=False, speed=10.0, counter=True
    )
    np.testing.assert_array_equal(data[:, -1], np.arange(3000))
    np.testing.assert_allclose(np.diff(stamps), 1 / (10 * SFREQ), rtol=0, atol=1e-9)
    assert (arrived - stamps).min() > -1e-3  # never sent ahead of its (10x) time
    assert 0.299 < stats.wall_s < 1.0, stats.wall_s  # 3 s of recording in ~0.3 s
    assert stats.passes_completed == 1 and not stats.stopped


def test_loop_continues_counter_timestamps_and_markers(tmp_path, unique_name):
    path = make_meg_file(tmp_path / "short_raw.fif", 500, event_samples=(100, 300))
    expected = read_recording(path).raw.get_data().astype(np.float32)
    data, stamps, _, markers, stats = _replay_and_pull(
        path, unique_name, 1300, loop=True, speed=5.0, counter=True, max_duration_s=1.3
    )
    sample = data[:, -1].astype(np.int64)
    np.testing.assert_array_equal(sample, np.arange(1300))
    np.testing.assert_array_equal(data[:, :-1], expected[:, sample % 500].T)
    np.testing.assert_allclose(np.diff(stamps), 1 / (5 * SFREQ), rtol=0, atol=1e-9)
    assert [m["sample"] for _, m in markers] == [100, 300, 600, 800, 1100]
    assert [m["file_sample"] for _, m in markers] == [100, 300, 100, 300, 100]
    for t, m in markers:
        assert t == pytest.approx(stamps[m["sample"]], abs=1e-4)
    assert stats.passes_completed == 2 and stats.samples_sent == 1300


def test_mne_lsl_reads_our_replay(meg_file, file_data, unique_name):
    from mne_lsl.stream import StreamLSL

    raw = read_recording(meg_file).raw
    with Player(
        meg_file, name=unique_name, counter=True, max_duration_s=1.5, wait_for_consumer_s=20
    ) as rt:
        stream = StreamLSL(bufsize=4.0, name=unique_name).connect(timeout=10)
        try:
            _finish(rt)
            deadline = local_clock() + 10
            while True:  # mne-lsl pulls in its own thread
                data, stamps = stream.get_data()
                if (stamps > 0).sum() >= 1500 or local_clock() > deadline:
                    break
                threading.Event().wait(0.05)
            assert stream.ch_names == [*raw.ch_names, COUNTER_CHANNEL]
            assert stream.get_channel_types() == ["mag"] * N_MEG + ["stim", "misc"]
            for ours, theirs in zip(raw.info["chs"][:N_MEG], stream.info["chs"], strict=False):
                assert theirs["coil_type"] == ours["coil_type"]
                np.testing.assert_array_equal(theirs["loc"], ours["loc"])
        finally:
            stream.disconnect()
    got = data[:, stamps > 0]
    assert got.shape[1] == 1500
    sample = got[-1].astype(np.int64)
    np.testing.assert_array_equal(sample, np.arange(1500))
    np.testing.assert_array_equal(got[:-1].astype(np.float32), file_data[:, sample])


def test_a_player_starts_and_stops_a_looping_replay(meg_file, unique_name):
    player = Player(meg_file, name=unique_name, loop=True, speed=4.0)
    with player:
        assert player.running
        inlet, _ = _connect(unique_name, markers=False)
        data, *_ = _pull(inlet, 500)
    assert not player.running and player.stats.stopped
    assert player.stats.samples_sent >= data.shape[0] >= 500
    with pytest.raises(RuntimeError, match="already started"):
        player.start()


def test_replay_rejects_bad_arguments(meg_file, tmp_path):
    with pytest.raises(ParameterError, match="^speed must be a positive number") as bad:
        replay_file(meg_file, speed=0)
    assert bad.value.parameter == "speed"
    with pytest.raises(ParameterError, match="^chunk_ms must be a positive number of ms"):
        replay_file(meg_file, chunk_ms=-1)
    with pytest.raises(FileNotFoundError):
        replay_file(tmp_path / "missing_raw.fif")


# ---------------------------------------------------------------- record


def test_record_of_a_full_replay_gives_back_the_file(meg_file, file_data, tmp_path, unique_name):
    out = tmp_path / "rec_raw.fif"
    with Player(
        meg_file, name=unique_name, counter=True, speed=3.0, wait_for_consumer_s=20
    ) as rt:
        path = record_stream(unique_name, out, timeout_s=1.5, progress=False)
        stats = _finish(rt)
    assert path == out and stats.samples_sent == 3000
    assert os.stat(out).st_mode & 0o777 == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rec_raw.fif"]  # no temp left

    rec = read_recording(out)
    orig = read_recording(meg_file)
    assert rec.ch_names == [*orig.ch_names, COUNTER_CHANNEL]
    assert rec.raw.get_channel_types() == [*orig.raw.get_channel_types(), "misc"]
    for ours, back in zip(orig.raw.info["chs"], rec.raw.info["chs"], strict=False):
        assert (back["kind"], back["coil_type"], back["unit"]) == (
            ours["kind"],
            ours["coil_type"],
            ours["unit"],
        )
        np.testing.assert_array_equal(back["loc"], ours["loc"])
    got = rec.raw.get_data()
    np.testing.assert_array_equal(got[-1], np.arange(3000))
    np.testing.assert_array_equal(got[:-1], file_data.astype(np.float64))  # bit for bit

    # Every event is back on its sample, with its payload.
    assert [e.sample for e in rec.events] == [e.sample for e in orig.events]
    for back, ours in zip(rec.events, orig.events, strict=True):
        assert back.value["sample"] == back.sample
        assert {k: back.value[k] for k in ours.value} == ours.value
    summary = json.loads(rec.raw.info["description"])
    assert summary["counter"]["lost"] == 0 and summary["counter"]["repeated"] == 0
    assert summary["n_samples"] == 3000 and summary["n_markers"] == len(EVENT_SAMPLES)
    assert summary["stream"]["name"] == unique_name


def test_cli_record_joins_a_running_replay(meg_file, file_data, tmp_path, unique_name):
    """Replay and record as commands; the recorder starts mid-stream, so the overlapping
    part is compared sample for sample through the counter."""
    out = tmp_path / "joined_raw.fif"
    replay = _cli("replay", str(meg_file), "--name", unique_name, "--counter", "--loop", "--quiet")
    try:
        rec_proc = _cli(
            "record",
            "--name",
            unique_name,
            "--out",
            str(out),
            "--duration",
            "1.2",
            "--timeout",
            "20",
            "--quiet",
        )
        rec_out, rec_err = rec_proc.communicate(timeout=60)
    finally:
        code, err = _interrupt(replay)
    assert rec_proc.returncode == 0, rec_err
    assert rec_out.strip() == str(out)
    assert code == 130, err

    rec = read_recording(out)
    got = rec.raw.get_data()
    assert got.shape[1] == 1200
    sample = unwrap_counter(got[-1])
    np.testing.assert_array_equal(np.diff(sample), 1)  # nothing lost from the first sample
    n_file = file_data.shape[1]
    np.testing.assert_array_equal(got[:-1], file_data[:, sample % n_file].astype(np.float64))
    assert len(rec.events) >= 2  # one event every 0.5 s
    for ev in rec.events:
        assert sample[ev.sample] == ev.value["sample"]
        assert ev.value["file_sample"] == ev.value["sample"] % n_file
        assert ev.value["file_sample"] in EVENT_SAMPLES


def test_record_counts_lost_samples_and_keeps_double_precision(tmp_path, unique_name):
    from tests.helpers.lsl_source import SourceProcess
    from tests.helpers.lsl_source import signal as source_signal

    out = tmp_path / "drop_raw.fif"
    with SourceProcess(
        unique_name,
        n_channels=4,
        sfreq=500,
        chunk=10,
        counter=True,
        duration=1.0,
        drop_at=200,
        drop_n=10,
        format="double64",
        linger_s=3,
    ) as source:
        source.wait_event("ready")
        path = record_stream(unique_name, out, timeout_s=1.0, progress=False)
    raw = mne.io.read_raw_fif(path, verbose="error")
    summary = json.loads(raw.info["description"])
    assert summary["counter"]["lost"] == 10 and summary["stream"]["channel_format"] == "double64"
    got = raw.get_data()
    sample = got[-1].astype(np.int64)
    assert len(sample) == 490 and sample[0] == 0
    np.testing.assert_array_equal(got[:-1], source_signal(0, 500, 5)[sample, :-1].T)


def test_record_stream_without_description_gets_generic_names(tmp_path, unique_name):
    from tests.helpers.lsl_source import SourceProcess

    out = tmp_path / "nodesc_raw.fif"
    with SourceProcess(
        unique_name, n_channels=3, sfreq=250, duration=0.5, no_desc=True, linger_s=3
    ) as source:
        source.wait_event("ready")
        record_stream(unique_name, out, timeout_s=1.0, progress=False)
    raw = mne.io.read_raw_fif(out, verbose="error")
    assert raw.ch_names == ["ch000", "ch001", "ch002"]
    assert raw.get_channel_types() == ["mag"] * 3  # the stream's type is MEG
    assert raw.n_times == 125 and raw.info["sfreq"] == 250


def test_record_refuses_bad_outputs_and_missing_streams(tmp_path, unique_name):
    with pytest.raises(ValueError, match="must be a FIF file"):
        record_stream(unique_name, tmp_path / "x.csv")
    existing = tmp_path / "there_raw.fif"
    existing.write_bytes(b"keep me")
    with pytest.raises(ValueError, match="exists already"):
        record_stream(unique_name, existing)
    assert existing.read_bytes() == b"keep me"
    with pytest.raises(StreamNotFoundError, match=unique_name):
        record_stream(unique_name, tmp_path / "none_raw.fif", timeout_s=0.3)
