"""Windower (and MarkerReader) against real LSL outlets on loopback."""

import time

import numpy as np
import pytest

from rtdecode.lsl.streams import COUNTER_CHANNEL, local_clock
from rtdecode.stream import (
    MarkerReader,
    StreamFormatError,
    StreamNotFoundError,
    StreamReader,
    Windower,
    parse_marker,
)
from tests.helpers.lsl_source import SourceProcess, poll

SFREQ = 1200


def counter_rows(window) -> np.ndarray:
    return window.data[window.ch_names.index(COUNTER_CHANNEL)].astype(np.int64)


def collect(windower: Windower, src: SourceProcess, n_samples: int, on_window=None) -> list:
    """Every window until the source's last complete one (or 20 s)."""
    windows = []
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        w = windower.next_window(timeout_s=0.5)
        if w is not None:
            windows.append(w)
            if on_window is not None:
                on_window(w)
            last_end = n_samples // windower.n_hop * windower.n_hop  # known once running
            if windower.mode == "continuous" and w.last_sample + 1 >= last_end:
                break
        elif any(e["event"] == "done" for e in src.events) and windower.mode == "event":
            break
    return windows


def run_with_markers(name: str, window_options: dict, on_window=None, **source_options):
    """2.5 s of a counter source with a marker every 0.5 s from 0.3 s, read by a
    StreamReader, a MarkerReader and a Windower; (windows, windower, marker history)."""
    with SourceProcess(
        name,
        counter=True,
        duration=2.5,
        markers_every_s=0.5,
        markers_first_s=0.3,
        **source_options,
    ) as src:
        with (
            StreamReader(name) as reader,
            MarkerReader(f"{name}-markers", reader=reader) as markers,
        ):
            reader.wait_ready(15.0)
            markers.wait_ready(15.0)
            win = Windower(reader, markers=markers, **window_options)
            windows = collect(win, src, int(2.5 * SFREQ), on_window)
            history = markers.markers()
    assert reader.error is None and markers.error is None
    return windows, win, history


def test_continuous_windows_every_hop_with_padding_flags_and_markers(unique_name):
    returned_at = []
    windows, win, history = run_with_markers(
        unique_name,
        dict(window_s=0.25, hop_s=0.05, pad_s=0.05),
        lambda w: returned_at.append(local_clock()),
        n_channels=16,
        nan_at=[1500],
    )
    assert win.n_pad == 60 and win.n_times == 300 and win.n_hop == 60
    assert len(windows) >= 30
    n_latest = 0
    for w in windows:
        assert w.data.shape == (17, 360) and w.data.dtype == np.float32
        assert w.n_pad == 60 and w.n_times == 300 and w.sfreq_hz == SFREQ
        assert (w.last_sample + 1) % 60 == 0  # ends on the hop grid
        np.testing.assert_array_equal(counter_rows(w), np.arange(w.first_sample, w.last_sample + 1))
        assert w.t_last - w.t_first == pytest.approx(359 / SFREQ, abs=2e-4)
        assert w.t_arrived <= local_clock()
        # NaN at sample 1500 flags (and is zeroed in) every window holding it.
        holds_nan = w.first_sample <= 1500 <= w.last_sample
        assert w.flagged == holds_nan and w.n_nonfinite == int(holds_nan)
        assert np.isfinite(w.data).all()
        # The latest marker at or before the window's end (one every 600 samples from
        # 360). Markers travel on their own connection, so one may still be in flight
        # when its window is cut: then the window carries the one before.
        if w.marker is not None:
            assert w.marker.sample == w.marker.value["sample"] <= w.last_sample
            assert w.last_sample - w.marker.sample < 1200
            assert w.marker.image_id == f"img_{(w.marker.sample - 360) // 600:03d}"
            n_latest += w.marker.sample == 360 + (w.last_sample - 360) // 600 * 600
        else:
            assert w.last_sample < 360 + 600
    assert n_latest >= len(windows) // 2
    steps = np.diff([w.first_sample for w in windows])
    # Hop by hop; a multiple of it where this (shared, busy) machine made us lag.
    assert np.all(steps % 60 == 0) and np.all(steps > 0)
    assert np.mean(steps == 60) > 0.8
    # Every grid window from the first (ending at 360) on is returned or counted skipped.
    assert win.stats.skipped + len(windows) == (windows[-1].last_sample + 1 - 360) // 60 + 1
    # Real time: one window per 50 ms of stream.
    assert np.median(np.diff(returned_at)) == pytest.approx(0.05, abs=0.02)


def test_slow_consumer_gets_the_latest_window_and_skips_are_counted(unique_name):
    with SourceProcess(unique_name, n_channels=8, counter=True, duration=1.5) as src:
        with StreamReader(unique_name) as reader:
            reader.wait_ready(15.0)
            win = Windower(reader, window_s=0.25, hop_s=0.05)
            # A consumer that needs 120 ms per window, more than two hops.
            windows = collect(win, src, int(1.5 * SFREQ), lambda w: time.sleep(0.12))
    ends = np.array([w.last_sample + 1 for w in windows])
    assert np.all(ends % 60 == 0) and np.all(np.diff(ends) > 0)
    # Mostly two or more hops apart (a source delayed by this busy machine may not be).
    assert np.median(np.diff(ends)) >= 120
    # Every grid window from the first (ending at 300) to the last is returned or counted.
    assert win.stats.skipped + len(windows) == (ends[-1] - 300) // 60 + 1
    assert win.stats.skipped >= len(windows) // 2
    assert win.stats.as_dict()["skipped"] == win.stats.skipped
    assert win.stats.overflow == 0


def test_windows_the_ring_overwrote_before_they_were_taken_are_counted(unique_name):
    """In-order mode (latest_wins=False) with a 0.5 s ring and a consumer that stalls
    for 0.8 s once: the windows lost meanwhile are counted as overflow."""
    with SourceProcess(unique_name, n_channels=4, counter=True, duration=2.0) as src:
        with StreamReader(unique_name, buffer_s=0.5) as reader:
            reader.wait_ready(15.0)
            win = Windower(reader, window_s=0.25, hop_s=0.05, latest_wins=False)
            stalled = []

            def stall_once(w):
                if not stalled:
                    stalled.append(w)
                    time.sleep(0.8)

            windows = collect(win, src, 2 * SFREQ, stall_once)
    ends = [w.last_sample + 1 for w in windows]
    assert win.stats.overflow > 0 and win.stats.skipped == 0
    # Returned or lost, every grid window from the first to the last is accounted for.
    assert win.stats.overflow + len(windows) == (ends[-1] - 300) // 60 + 1
    assert all(e % 60 == 0 for e in ends)


def test_parse_marker_keeps_non_json_as_raw():
    assert parse_marker('{"image_id": "cat_03", "trial_type": "exp"}') == {
        "image_id": "cat_03",
        "trial_type": "exp",
    }
    assert parse_marker("stim/12") == {"raw": "stim/12"}
    assert parse_marker("[1, 2]") == {"raw": "[1, 2]"}


def run_windows(name: str, speed: float) -> tuple[list, Windower]:
    with SourceProcess(name, n_channels=8, counter=True, duration=1.0, speed=speed) as src:
        with StreamReader(name) as reader:
            reader.wait_ready(15.0)
            win = Windower(reader, window_s=0.25, hop_s=0.05, pad_s=0.05, latest_wins=False)
            windows = collect(win, src, SFREQ)
    assert reader.error is None
    return windows, win


def test_same_windows_at_1x_and_10x_speed(unique_name):
    slow, win_slow = run_windows(f"{unique_name}-1x", 1.0)
    fast, win_fast = run_windows(f"{unique_name}-10x", 10.0)
    assert win_slow.stats.overflow == win_fast.stats.overflow == 0
    assert win_slow.stats.skipped == win_fast.stats.skipped == 0
    assert [w.first_sample for w in slow] == [w.first_sample for w in fast]
    assert [w.first_sample for w in slow] == list(range(0, SFREQ - 360 + 1, 60))
    for a, b in zip(slow, fast, strict=True):
        np.testing.assert_array_equal(a.data, b.data)
    # Same samples, a tenth of the time between them.
    span_slow = slow[-1].t_last - slow[0].t_last
    span_fast = fast[-1].t_last - fast[0].t_last
    assert span_fast == pytest.approx(span_slow / 10, rel=0.05)


def test_event_locked_windows_at_marker_plus_offset(unique_name):
    windows, win, history = run_with_markers(
        unique_name,
        dict(window_s=0.4, pad_s=0.05, mode="event", offset_s=-0.1, latest_wins=False),
        n_channels=8,
    )
    marker_samples = [360, 960, 1560, 2160]  # 2760's window would end after the stream
    assert [m.value["sample"] for m in history] == [*marker_samples, 2760]
    assert [m.sample for m in history] == [*marker_samples, 2760]  # mapped onto the data
    assert [w.marker.value["sample"] for w in windows] == marker_samples
    for w, s in zip(windows, marker_samples, strict=True):
        assert w.marker.sample == s
        assert w.first_sample == s - 120 - 60  # offset -0.1 s, then 0.05 s of padding
        assert w.data.shape == (9, 60 + 480) and w.n_pad == 60
        np.testing.assert_array_equal(counter_rows(w), np.arange(w.first_sample, w.last_sample + 1))
        assert w.t_first + (120 + 60) / SFREQ == pytest.approx(w.marker.t_lsl, abs=2e-4)
    assert win.stats.markers_missed == 0


def test_a_missing_marker_stream_does_not_stop_continuous_windows(unique_name):
    with SourceProcess(unique_name, n_channels=4, duration=1.0) as src:
        with (
            StreamReader(unique_name) as reader,
            MarkerReader(f"{unique_name}-none", reader=reader, resolve_timeout_s=0.5) as absent,
            MarkerReader(f"{unique_name}-later", resolve_timeout_s=None) as patient,
        ):
            reader.wait_ready(15.0)
            windows = collect(Windower(reader, markers=absent), src, SFREQ)
            poll(lambda: absent.error, 10.0, "the marker reader to give up")
            assert isinstance(absent.error, StreamNotFoundError)
            # resolve_timeout_s=None: still waiting for its stream, no error.
            assert patient.is_alive and patient.error is None
        assert not patient.is_alive  # stop() ends the wait
    assert len(windows) >= 5 and all(w.marker is None for w in windows)


def test_next_window_reraises_the_reader_error(unique_name):
    with SourceProcess(unique_name, n_channels=4, irregular=True):
        reader = StreamReader(unique_name).start()
        win = Windower(reader)
        with pytest.raises(StreamFormatError, match="irregular"):
            win.next_window(timeout_s=15.0)
        with pytest.raises(StreamFormatError):
            list(win)


def test_event_mode_needs_markers_and_bad_sizes_are_refused():
    with pytest.raises(ValueError, match="needs a MarkerReader"):
        Windower(object(), mode="event")
    with pytest.raises(ValueError, match="mode='sliding' is not known"):
        Windower(object(), mode="sliding")
    with pytest.raises(ValueError, match="must be positive"):
        Windower(object(), hop_s=0)
