"""Sinks: every chunk a reader pulls, as sent, handed over on the reader thread.

Real outlets in this process (loopback LSL); each test pushes known values with known
timestamps and checks what the sinks got against what was sent, and against the ring.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from rtdecode.lsl.streams import COUNTER_CHANNEL, local_clock, make_info, make_outlet
from rtdecode.stream import MarkerReader, StreamReader
from rtdecode.stream.reader import Chunk, StreamTap
from tests.helpers.lsl_source import poll


class Collect:
    """A sink that keeps a copy of every chunk (as a recorder must)."""

    def __init__(self) -> None:
        self.chunks: list[Chunk] = []
        self.threads: set[str] = set()
        self.lock = threading.Lock()

    def __call__(self, chunk: Chunk) -> None:
        values = chunk.values
        values = values.copy() if isinstance(values, np.ndarray) else list(values)
        with self.lock:
            self.threads.add(threading.current_thread().name)
            self.chunks.append(
                Chunk(values, chunk.t_source.copy(), chunk.clock_offset_s, chunk.t_clock_offset,
                      chunk.t_arrived, chunk.first_sample, chunk.gaps)  # fmt: skip
            )

    @property
    def n(self) -> int:
        with self.lock:
            return sum(c.n for c in self.chunks)

    def values(self) -> np.ndarray:
        return np.concatenate([c.values for c in self.chunks])

    def t_source(self) -> np.ndarray:
        return np.concatenate([c.t_source for c in self.chunks])


def _outlet(name: str, fmt: str, sfreq: float, ch_names, units=None):
    info = make_info(name, "EEG", sfreq, ch_names, units=units, channel_format=fmt,
                     source_id=f"{name}-src")  # fmt: skip
    return make_outlet(info)


def test_a_reader_sink_gets_the_raw_float64_values_and_source_times_before_rescaling(
    unique_name,
):
    """A double64 stream in microvolts: the ring holds float32 volts, the sink the float64
    microvolts exactly as pushed, with the source's timestamps; the offset joins them."""
    sfreq, n = 250.0, 500
    outlet = _outlet(unique_name, "double64", sfreq, ["Fz", "Cz", COUNTER_CHANNEL],
                     units=["microvolts", "microvolts", ""])  # fmt: skip
    rng = np.random.default_rng(3)
    sent = rng.standard_normal((n, 3)) * 37.123456789012345  # not exact in float32
    sent[:, 2] = np.arange(n)
    keep = np.ones(n, dtype=bool)
    keep[300:310] = False  # 10 samples never sent: one gap, by the counter
    t0 = local_clock() + 1000.0  # stamps far from the clock now: kept as they are
    stamps = t0 + np.arange(n) / sfreq
    sink = Collect()
    with StreamReader(unique_name, buffer_s=10.0, sinks=[sink]) as reader:
        reader.wait_ready(15.0)
        for a in range(0, n, 25):
            k = keep[a : a + 25]
            outlet.push_chunk(sent[a : a + 25][k], stamps[a : a + 25][k].tolist())
        poll(lambda: sink.n >= n - 10, 15.0, "every sample sent")
        ring_data = reader.ring.read(0, n - 10)
        ring_t = reader.ring.read_times(0, n - 10)
    assert reader.error is None
    assert sink.threads == {f"rtdecode-reader-{unique_name}"}  # on the reader thread
    got = sink.values()
    assert got.dtype == np.float64
    np.testing.assert_array_equal(got, sent[keep])  # bit for bit, not rescaled
    np.testing.assert_array_equal(sink.t_source(), stamps[keep])  # as the source stamped
    # The ring has the same samples in SI units, float32, on the local clock.
    volts = sent[keep][:, :2] * np.float32(1e-6)  # the reader's float32 factor to SI
    np.testing.assert_array_equal(ring_data[:2], volts.T.astype(np.float32))
    t_lsl = np.concatenate([c.t_source + c.clock_offset_s for c in sink.chunks])
    np.testing.assert_array_equal(ring_t, t_lsl)
    assert all(abs(c.clock_offset_s) < 0.01 for c in sink.chunks)  # one machine, one clock
    # Sample indices run on without a hole; the gap comes with the chunk after it.
    firsts = [c.first_sample for c in sink.chunks]
    assert firsts == list(np.cumsum([0] + [c.n for c in sink.chunks[:-1]]))
    (gap,) = [g for c in sink.chunks for g in c.gaps]
    assert (gap.sample, gap.n_lost, gap.detected_by) == (300, 10, "counter")
    assert reader.gaps() == [gap]


def test_a_reader_sink_gets_int16_values_in_their_own_dtype(unique_name):
    outlet = _outlet(unique_name, "int16", 100.0, ["a", "b"])
    sent = np.array([[-32768, 32767], [1, -1], [12345, 0]] * 20, dtype=np.int16)
    sink = Collect()
    with StreamReader(unique_name, buffer_s=5.0, sinks=[sink]) as reader:
        reader.wait_ready(15.0)
        outlet.push_chunk(sent, (local_clock() + np.arange(len(sent)) / 100.0).tolist())
        poll(lambda: sink.n >= len(sent), 15.0, "the samples")
        ring = reader.ring.read(0, len(sent))
    got = sink.values()
    assert got.dtype == np.int16
    np.testing.assert_array_equal(got, sent)
    np.testing.assert_array_equal(ring, sent.T.astype(np.float32))


def test_a_tap_reads_an_irregular_string_stream_as_sent(unique_name):
    """Neither a StreamReader (no rate, no numbers) nor a MarkerReader's bounded history:
    a StreamTap hands every string sample and its source timestamp to its sinks."""
    outlet = _outlet(unique_name, "string", 0.0, ["label", "note"])
    sent = [[f"trial {i}", '{"image_id": "x"}' if i % 2 else "é ü"] for i in range(1500)]
    stamps = local_clock() + 50.0 + np.sort(np.random.default_rng(0).uniform(0, 3, len(sent)))
    sink = Collect()
    with StreamTap(unique_name, sinks=[sink]) as tap:
        tap.wait_ready(15.0)
        for a in range(0, len(sent), 100):
            outlet.push_chunk(sent[a : a + 100], stamps[a : a + 100].tolist())
        poll(lambda: sink.n >= len(sent), 15.0, "every string sample")
        assert tap.stats.samples == len(sent)
    assert [row for c in sink.chunks for row in c.values] == sent
    np.testing.assert_array_equal(sink.t_source(), stamps)


def test_a_marker_reader_sink_sees_every_marker_past_its_history(unique_name):
    outlet = _outlet(unique_name, "string", 0.0, ["marker"])
    sink = Collect()
    markers = MarkerReader(unique_name, history=5)
    markers.add_sink(sink)
    with markers:
        markers.wait_ready(15.0)
        with pytest.raises(RuntimeError, match="before start"):
            markers.add_sink(Collect())
        for i in range(40):
            outlet.push_sample([f'{{"image_id": "img_{i}"}}'], local_clock())
        poll(lambda: sink.n >= 40 and markers.n_received >= 40, 15.0, "40 markers")
    assert [m.image_id for m in markers.markers()] == [f"img_{i}" for i in range(35, 40)]
    assert [row[0] for c in sink.chunks for row in c.values][-1] == '{"image_id": "img_39"}'
    assert sink.n == 40 and markers.n_dropped == 35


def test_stop_with_drain_takes_what_the_inlet_still_holds(unique_name):
    """A sink that is slow on the first chunk: the rest waits in the inlet when stop() is
    asked; with ``drain_s`` the reader still takes all of it before it ends."""
    outlet = _outlet(unique_name, "float32", 200.0, ["a"])
    entered, release = threading.Event(), threading.Event()
    sink = Collect()

    def slow(chunk: Chunk) -> None:
        entered.set()
        release.wait(10.0)
        sink(chunk)

    reader = StreamReader(unique_name, buffer_s=5.0, sinks=[slow], max_chunk=20).start()
    try:
        reader.wait_ready(15.0)
        outlet.push_chunk(np.arange(400, dtype=np.float32)[:, None], 0.0)
        assert entered.wait(10.0), "no first chunk"  # the sink holds the reader thread
        reader.stop(0, drain_s=5.0)
        release.set()
        reader.stop(10.0)
    finally:
        release.set()
        reader.stop(10.0)
    assert not reader.is_alive and reader.error is None
    np.testing.assert_array_equal(sink.values()[:, 0], np.arange(400))
