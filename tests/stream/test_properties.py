"""Property-based tests (Hypothesis) of the stream's index arithmetic: the ring buffer
under wrap-around and overwrite, the windower's sample grid at any chunking, and marker
parsing. Real RingBuffer and Windower; the Windower reads a ring this test fills (the
StreamReader's part), so any chunking can be tried without LSL timing in the way."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rtdecode.stream.markers import parse_marker
from rtdecode.stream.ring import NotYetWrittenError, OverwrittenError, RingBuffer
from rtdecode.stream.windows import Windower

PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SFREQ_HZ = 100.0


def source(n_channels: int, n_samples: int) -> tuple[np.ndarray, np.ndarray]:
    """Samples whose value names them (channel c of sample k = k + c / 8), and times."""
    k = np.arange(n_samples, dtype=np.float64)
    data = (k[None, :] + np.arange(n_channels)[:, None] / 8.0).astype(np.float32)
    return data, 1000.0 + k / SFREQ_HZ


def feed(ring: RingBuffer, data: np.ndarray, times: np.ndarray, chunks: list[int]):
    """Write ``data`` in chunks of the given sizes (the rest in one last chunk)."""
    pos = 0
    for n in [*chunks, data.shape[1]]:
        n = min(n, data.shape[1] - pos)
        first = ring.write(data[:, pos : pos + n], times[pos : pos + n], t_arrived=float(pos))
        assert first == pos
        pos += n
        yield pos


# ------------------------------------------------------------------------------ ring
@PROPS
@given(
    capacity=st.integers(2, 40),
    n_channels=st.integers(1, 3),
    chunks=st.lists(st.integers(0, 90), max_size=12),
    ranges=st.lists(st.tuples(st.integers(0, 400), st.integers(0, 60)), max_size=8),
)
def test_ring_reads_back_exactly_what_it_holds_and_refuses_the_rest(
    capacity, n_channels, chunks, ranges
):
    n_total = sum(chunks) + 5
    data, times = source(n_channels, n_total)
    ring = RingBuffer(n_channels, capacity)
    for n_written in feed(ring, data, times, chunks):
        assert ring.n_written == n_written
        assert ring.oldest == max(0, n_written - capacity)
        assert len(ring) == min(n_written, capacity)
        # Everything held reads back as written, across the wrap.
        held = ring.read(ring.oldest, n_written)
        np.testing.assert_array_equal(held, data[:, ring.oldest : n_written])
        np.testing.assert_array_equal(
            ring.read_times(ring.oldest, n_written), times[ring.oldest : n_written]
        )
        for start, length in ranges:
            stop = start + length
            if stop > n_written:
                with pytest.raises(NotYetWrittenError):
                    ring.read(start, stop)
            elif start < ring.oldest:
                with pytest.raises(OverwrittenError):
                    ring.read(start, stop)
            else:
                np.testing.assert_array_equal(ring.read(start, stop), data[:, start:stop])
                if length:
                    assert ring.sample_at("t_lsl", start) == times[start]


@PROPS
@given(
    capacity=st.integers(2, 30),
    chunks=st.lists(st.integers(1, 50), min_size=1, max_size=8),
    offset_samples=st.floats(-5, 200),
)
def test_ring_index_of_time_finds_the_first_sample_at_or_after(capacity, chunks, offset_samples):
    data, times = source(1, sum(chunks))
    ring = RingBuffer(1, capacity)
    for _ in feed(ring, data, times, chunks):
        pass
    t = times[0] + offset_samples / SFREQ_HZ
    try:
        k = ring.index_of_time(t)
    except OverwrittenError:
        assert ring.oldest > 0 and t < times[ring.oldest]
        return
    later = np.flatnonzero(times[ring.oldest :] >= t)
    assert k == (None if later.size == 0 else ring.oldest + int(later[0]))


# ----------------------------------------------------------------------- windower
class RingFed:
    """What the Windower reads of a StreamReader: a ready ring, a rate, names, no error."""

    def __init__(self, ring: RingBuffer, n_channels: int):
        self.ring = ring
        self.sfreq_hz = SFREQ_HZ
        self.ch_names = tuple(f"MEG{i:03d}" for i in range(n_channels))
        self.error = None

    def wait_ready(self, timeout_s: float) -> None:
        pass

    def raise_if_failed(self) -> None:
        pass


def all_windows(window_s, hop_s, pad_s, chunks, n_samples, capacity):
    data, times = source(2, n_samples)
    ring = RingBuffer(2, capacity)
    win = Windower(RingFed(ring, 2), window_s=window_s, hop_s=hop_s, pad_s=pad_s, latest_wins=False)
    out = []
    for _ in feed(ring, data, times, chunks):
        while (w := win.next_window(timeout_s=0)) is not None:
            out.append(w)
    ring.close()
    while (w := win.next_window(timeout_s=0)) is not None:
        out.append(w)
    return out, win, data, times


@PROPS
@given(
    n_window=st.integers(1, 30),
    n_hop=st.integers(1, 15),
    n_pad=st.integers(0, 10),
    n_samples=st.integers(0, 300),
    chunks=st.lists(st.integers(0, 70), max_size=20),
)
def test_windows_are_the_same_at_any_chunking(n_window, n_hop, n_pad, n_samples, chunks):
    geometry = dict(window_s=n_window / SFREQ_HZ, hop_s=n_hop / SFREQ_HZ, pad_s=n_pad / SFREQ_HZ)
    capacity = n_samples + 1 if n_samples > n_window + n_pad else n_window + n_pad + 1
    whole, win, data, times = all_windows(
        **geometry, chunks=[], n_samples=n_samples, capacity=capacity
    )
    chunked, _, _, _ = all_windows(
        **geometry, chunks=chunks, n_samples=n_samples, capacity=capacity
    )
    # The grid: ends are the multiples of the hop that leave room for the whole window.
    n_total = n_pad + n_window
    ends = [e for e in range(0, n_samples + 1, n_hop) if e >= n_total]
    assert [w.first_sample + w.data.shape[1] for w in whole] == ends
    assert win.stats.skipped == 0 and win.stats.overflow == 0
    assert len(chunked) == len(whole)
    for a, b in zip(whole, chunked, strict=True):
        assert a.first_sample == b.first_sample and a.n_pad == n_pad
        np.testing.assert_array_equal(a.data, b.data)
        np.testing.assert_array_equal(a.data, data[:, a.first_sample : a.first_sample + n_total])
        assert a.t_first == b.t_first == times[a.first_sample]
        assert a.t_last == b.t_last == times[a.first_sample + n_total - 1]


@PROPS
@given(
    n_window=st.integers(1, 20),
    n_hop=st.integers(1, 10),
    chunks=st.lists(st.integers(1, 120), min_size=1, max_size=10),
)
def test_windows_lost_to_overwrite_are_counted_never_torn(n_window, n_hop, chunks):
    """A small ring fed big chunks: every window returned is exact, and returned +
    overflow covers every grid end."""
    capacity = n_window + 3
    n_samples = sum(chunks)
    got, win, data, _ = all_windows(
        n_window / SFREQ_HZ, n_hop / SFREQ_HZ, 0.0, chunks, n_samples, capacity
    )
    for w in got:
        np.testing.assert_array_equal(w.data, data[:, w.first_sample : w.first_sample + n_window])
        assert (w.first_sample + n_window) % n_hop == 0
    n_grid = len([e for e in range(0, n_samples + 1, n_hop) if e >= n_window])
    assert win.stats.windows + win.stats.overflow == n_grid


# ------------------------------------------------------------------------ markers
json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)


@PROPS
@given(payload=st.dictionaries(st.text(), json_values, max_size=6))
def test_json_object_markers_parse_to_their_object(payload):
    assert parse_marker(json.dumps(payload)) == payload
    assert parse_marker(json.dumps(payload, ensure_ascii=False, indent=2)) == payload


@PROPS
@given(text=st.text(max_size=300) | json_values.map(json.dumps))
def test_any_other_marker_text_is_kept_raw_and_parsing_never_raises(text):
    value = parse_marker(text)
    assert isinstance(value, dict)
    try:
        decoded = json.loads(text)
    except ValueError:
        decoded = None
    if isinstance(decoded, dict):
        assert value == decoded
    else:
        assert value == {"raw": text}
