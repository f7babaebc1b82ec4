"""RingBuffer: absolute indices, wrap-around, overwrite detection, one writer."""

import threading

import numpy as np
import pytest

from rtdecode.stream.ring import NotYetWrittenError, OverwrittenError, RingBuffer


def block(first: int, n: int, n_channels: int = 3) -> np.ndarray:
    """(n_channels, n) block whose value is 100 * channel + absolute index."""
    idx = np.arange(first, first + n)
    return (100 * np.arange(n_channels)[:, None] + idx[None, :]).astype(np.float32)


def fill(ring: RingBuffer, n_total: int, chunk: int) -> None:
    first = 0
    while first < n_total:
        n = min(chunk, n_total - first)
        ring.write(block(first, n, ring.n_channels), np.arange(first, first + n) / 100.0, first)
        first += n


def test_read_by_absolute_index_across_the_wrap():
    ring = RingBuffer(3, 50)
    fill(ring, 137, chunk=7)
    assert ring.n_written == 137 and ring.oldest == 87 and len(ring) == 50
    # 87..137 spans the wrap (137 % 50 = 37)
    out = ring.read(90, 137)
    np.testing.assert_array_equal(out, block(90, 47))
    np.testing.assert_allclose(ring.read_times(95, 105), np.arange(95, 105) / 100.0)
    assert ring.sample_at("t_arrived", 136) == 133  # written with the chunk starting at 133


def test_reads_outside_the_held_range_raise_clear_errors():
    ring = RingBuffer(2, 20)
    fill(ring, 45, chunk=5)
    with pytest.raises(OverwrittenError, match="overwritten.*buffer_s"):
        ring.read(10, 30)
    with pytest.raises(NotYetWrittenError, match="only 45 have arrived"):
        ring.read(40, 46)


def test_preallocated_arrays_are_reused_not_grown():
    ring = RingBuffer(4, 64)
    arrays = [ring.data, ring.t_lsl, ring.t_arrived, ring.n_nonfinite, ring.n_lost_before]
    ids = [id(a) for a in arrays]
    fill(ring, 10_000, chunk=13)
    assert [
        id(a) for a in (ring.data, ring.t_lsl, ring.t_arrived, ring.n_nonfinite, ring.n_lost_before)
    ] == ids
    assert ring.data.shape == (4, 64)


def test_transposed_pull_buffer_and_oversized_block():
    ring = RingBuffer(3, 10)
    samples_by_rows = block(0, 25).T.copy()  # (n, n_channels), as liblsl writes
    ring.write(samples_by_rows.T, np.arange(25.0), 0.0)
    assert ring.n_written == 25 and ring.oldest == 15
    np.testing.assert_array_equal(ring.read(15, 25), block(15, 10))


def test_per_sample_bookkeeping():
    ring = RingBuffer(1, 8)
    ring.write(
        np.zeros((1, 4)),
        np.arange(4.0),
        1.0,
        n_nonfinite=np.array([0, 2, 0, 0]),
        n_lost_before=np.array([0, 0, 5, 0]),
    )
    assert ring.read_meta("n_nonfinite", 0, 4).tolist() == [0, 2, 0, 0]
    assert ring.read_meta("n_lost_before", 0, 4).tolist() == [0, 0, 5, 0]
    with pytest.raises(ValueError, match="Unknown per-sample array"):
        ring.read_meta("bogus", 0, 1)


def test_index_of_time():
    ring = RingBuffer(1, 10)
    ring.write(np.zeros((1, 30)), 100 + np.arange(30) * 0.01, 0.0)  # holds 20..29
    assert ring.index_of_time(100.25) == 25
    assert ring.index_of_time(100.2549, tolerance_s=0.005) == 25
    assert ring.index_of_time(100.256, tolerance_s=0.005) == 26
    assert ring.index_of_time(101.0) is None  # not arrived yet
    with pytest.raises(OverwrittenError, match="older than the oldest"):
        ring.index_of_time(100.05)


def test_concurrent_reads_are_exact_or_raise():
    """Readers racing one writer near the oldest edge get exact data or an error."""
    ring = RingBuffer(3, 64)
    done = threading.Event()

    def writer():
        fill(ring, 40_000, chunk=5)
        done.set()

    t = threading.Thread(target=writer)
    t.start()
    n_ok = n_overwritten = 0
    while not done.is_set():
        stop = ring.n_written
        start = max(0, stop - 64)  # the whole ring: any write during the copy laps it
        if stop - start < 2:
            continue
        try:
            out = ring.read(start, stop)
        except OverwrittenError:
            n_overwritten += 1
            continue
        np.testing.assert_array_equal(out, block(start, stop - start))
        n_ok += 1
    t.join()
    print(f"{n_ok} exact reads, {n_overwritten} overwritten during the copy")
    assert n_ok > 0


def test_wait_for_wakes_on_write_and_close():
    ring = RingBuffer(1, 100)
    results = []

    def consumer():
        results.append(ring.wait_for(10, timeout_s=10))
        results.append(ring.wait_for(1000, timeout_s=10))

    t = threading.Thread(target=consumer)
    t.start()
    ring.write(np.zeros((1, 12)), np.arange(12.0), 0.0)
    ring.close()
    t.join(10)
    assert not t.is_alive()
    assert results == [True, False]
    assert ring.wait_for(1000, timeout_s=0.01) is False


def test_index_of_time_tolerance_in_samples_follows_the_held_spacing():
    """A replay at 4x stamps samples 4x closer than the nominal rate: half a sample of
    tolerance must be half of that spacing, or markers land two samples early."""
    ring = RingBuffer(1, 100)
    ring.write(np.zeros((1, 40)), 10.0 + np.arange(40) / 4800.0, 0.0)
    t25 = 10.0 + 25 / 4800.0
    assert ring.index_of_time(t25, tolerance_s=0.5 / 1200) < 25  # nominal: early
    assert ring.index_of_time(t25, tolerance_samples=0.5) == 25
    assert ring.index_of_time(t25 - 0.4 / 4800, tolerance_samples=0.5) == 25
