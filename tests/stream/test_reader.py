"""StreamReader against real LSL outlets (tests/helpers/lsl_source.py in a subprocess, loopback)."""

import json
import time

import numpy as np
import pytest

from rtdecode.lsl.streams import COUNTER_CHANNEL
from rtdecode.stream import (
    ChannelMismatchError,
    StreamFormatError,
    StreamNotFoundError,
    StreamReader,
)
from tests.helpers.lsl_source import SourceProcess, poll


def counter_of(reader: StreamReader, start: int, stop: int) -> np.ndarray:
    row = reader.ch_names.index(COUNTER_CHANNEL)
    return reader.ring.read(start, stop)[row].astype(np.int64)


def test_counter_proves_no_sample_lost_or_repeated_306ch_1200hz(unique_name):
    """10 s of a 306-channel 1200 Hz stream: every sample arrives once, in order."""
    with SourceProcess(unique_name, source_id=unique_name, counter=True, duration=10.0) as src:
        with StreamReader(unique_name, buffer_s=15.0) as reader:
            desc = reader.wait_ready(15.0)
            assert desc.n_channels == 307 and reader.sfreq_hz == 1200.0
            src.wait_event("done", timeout_s=40.0)
            poll(lambda: reader.stats.samples >= 12_000, 10.0, "all 12000 samples")
            stats = reader.stats
            counter = counter_of(reader, 0, reader.ring.n_written)
    assert reader.error is None
    assert stats.samples == 12_000 and reader.ring.n_written == 12_000
    np.testing.assert_array_equal(counter, np.arange(12_000))
    assert stats.gaps == stats.lost_samples == stats.repeated_samples == 0
    assert stats.backwards_timestamps == stats.nonfinite_values == stats.overflow == 0
    # Timestamps are the source's, on the local clock: 1/1200 s apart (give or take the
    # tens of microseconds by which each clock-correction update moves them).
    ts = reader.ring.read_times(0, 12_000)
    np.testing.assert_allclose(np.diff(ts), 1 / 1200, atol=1e-4)
    assert stats.cpu_s > 0


def test_reconnects_after_the_source_is_killed_and_reports_the_gap(unique_name):
    sid = f"{unique_name}-sid"
    opts = dict(source_id=sid, counter=True, n_channels=8)
    src = SourceProcess(unique_name, **opts)
    with StreamReader(unique_name, buffer_s=20.0) as reader:
        reader.wait_ready(15.0)
        poll(lambda: reader.stats.samples > 600, 10.0, "0.5 s of data")
        src.kill()
        poll(lambda: not reader.connected, 10.0, "the reader to notice the loss")
        n_before = reader.stats.samples
        t_lost = time.monotonic()
        with SourceProcess(unique_name, **opts) as src2:
            src2.wait_event("started", 20.0)
            down_s = time.monotonic() - t_lost
            poll(
                lambda: reader.stats.reconnects == 1 and reader.stats.samples > n_before + 120,
                15.0,
                "the reconnection",
            )
            stats = reader.stats
            gap = stats.last_gap
            assert reader.error is None and reader.is_alive and stats.connected
            assert gap.reconnect and gap.sample == n_before
            # The gap spans the time the source was down, in seconds and samples.
            assert 0.5 * down_s < gap.duration_s < down_s + 5.0
            assert gap.n_lost == pytest.approx(gap.duration_s * 1200, abs=2)
            assert stats.lost_samples == gap.n_lost and stats.gaps == 1
            # The restarted counter is not mistaken for repeated samples.
            assert stats.repeated_samples == 0
            # Samples after the reconnection are contiguous again.
            n = reader.ring.n_written
            np.testing.assert_array_equal(np.diff(counter_of(reader, n_before, n)), 1)

        # The source comes back with a different channel count: a clear error state.
        with SourceProcess(unique_name, source_id=sid, counter=True, n_channels=4):
            poll(lambda: reader.error is not None, 20.0, "the channel-count error")
        assert isinstance(reader.error, ChannelMismatchError)
        assert "came back with 5 channels but had 9" in str(reader.error)
        poll(lambda: not reader.is_alive, 5.0, "the reader thread to end")
        with pytest.raises(ChannelMismatchError):
            reader.wait_ready(1.0)


def read_whole_source(name: str, n_expected: int, **source_options) -> StreamReader:
    """Run a finite source to its end with a reader attached; the stopped reader."""
    with SourceProcess(name, **source_options) as src:
        with StreamReader(name) as reader:
            reader.wait_ready(15.0)
            src.wait_event("done", 20.0)
            poll(lambda: reader.stats.samples >= n_expected, 10.0, f"{n_expected} samples")
    assert reader.error is None
    return reader


def test_nonfinite_and_lost_samples_are_counted_from_the_counter(unique_name):
    reader = read_whole_source(
        unique_name,
        1800 - 30,
        counter=True,
        n_channels=8,
        duration=1.5,
        nan_at=[300, 301],
        inf_at=[900],
        drop_at=1200,
        drop_n=30,
    )
    stats = reader.stats
    assert stats.nonfinite_values == 3 and stats.nonfinite_samples == 3
    assert stats.gaps == 1 and stats.lost_samples == 30
    (gap,) = reader.gaps()
    assert gap.detected_by == "counter" and gap.sample == 1200 and not gap.reconnect
    assert gap.duration_s == pytest.approx(30 / 1200, abs=1e-6)
    assert reader.ring.read_meta("n_nonfinite", 299, 302).tolist() == [0, 1, 1]
    report = json.loads(json.dumps(reader.stats.as_dict()))  # JSON-able, for /api/status
    assert report["lost_samples"] == 30 and report["last_gap"]["n_lost"] == 30


def test_backwards_timestamps_are_counted_and_gaps_found_from_time(unique_name):
    """Without a counter, gaps come from timestamp jumps; a clock step back is counted
    once and is not mistaken for a gap when time catches up."""
    reader = read_whole_source(
        unique_name,
        1800 - 24,
        n_channels=4,
        duration=1.5,
        backwards_at=600,
        backwards_s=0.05,
        drop_at=1200,
        drop_n=24,
    )
    stats = reader.stats
    assert stats.backwards_timestamps == 1
    assert stats.gaps == 1 and stats.lost_samples == 24
    assert reader.gaps()[0].detected_by == "timestamps"


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"irregular": True}, "irregular sampling rate"),
        ({"format": "string"}, "carries 'string' values"),
    ],
    ids=["irregular", "string"],
)
def test_unusable_streams_end_the_thread_with_a_clear_error(unique_name, options, match):
    with SourceProcess(unique_name, n_channels=4, **options):
        reader = StreamReader(unique_name).start()
        with pytest.raises(StreamFormatError, match=match):
            reader.wait_ready(15.0)
        poll(lambda: not reader.is_alive, 5.0, "the reader thread to end")
        assert isinstance(reader.error, StreamFormatError)
        assert reader.ring is None


def test_stream_without_description_needs_and_uses_given_ch_names(unique_name):
    names = [f"EEG{i:03d}" for i in range(4)]
    with SourceProcess(unique_name, n_channels=4, no_desc=True):
        without = StreamReader(unique_name).start()
        with pytest.raises(StreamFormatError, match="no channel description.*ch_names"):
            without.wait_ready(15.0)
        with StreamReader(unique_name, ch_names=names) as reader:
            desc = reader.wait_ready(15.0)
            assert not desc.has_description
            assert reader.ch_names == tuple(names)
            poll(lambda: reader.stats.samples > 100, 10.0, "data")
        with StreamReader(unique_name, ch_names=names[:3]) as wrong:
            with pytest.raises(ChannelMismatchError, match="3 ch_names were given"):
                wrong.wait_ready(15.0)


def test_resolve_failure_lists_the_streams_seen(unique_name):
    with SourceProcess(unique_name, n_channels=2) as src:
        src.wait_event("ready", 20.0)
        reader = StreamReader(f"{unique_name}-absent", resolve_timeout_s=1.0).start()
        with pytest.raises(StreamNotFoundError) as err:
            reader.wait_ready(15.0)
    message = str(err.value)
    assert f"{unique_name}-absent" in message and repr(unique_name) in message
