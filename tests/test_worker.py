"""The DecodeWorker's two lanes with real toy models (tests/helpers/worker.py): lane 1
publishes a retrieval frame every hop while a deliberately slow decoder generates, image
frames name their window, the image lane takes the newest prediction, ``lanes=1`` keeps
the single-lane behaviour, and the thread budget is applied per lane. Lane 1's steps
(encode, retrieve, score, emit) are tested one by one."""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.lsl_source import poll
from tests.helpers.worker import EMBED_DIM, SFREQ_HZ, SlowDecoder, build_worker

DEADLINE_S = 60.0
DELAY_S = 0.4  # one generation: eight hops of 50 ms


@pytest.fixture
def run_worker():
    started = []

    def start(decoder, n_images: int, **options):
        worker, source, collector = build_worker(decoder, **options)
        started.append(worker)
        worker.start()
        poll(lambda: worker.ready.is_set() or worker.error is not None, DEADLINE_S, "worker ready")
        assert worker.error is None
        poll(
            lambda: sum(f.image is not None for _, f in collector.frames()) >= n_images,
            DEADLINE_S, f"{n_images} images",
        )
        return worker, collector

    yield start
    for worker in started:
        worker.stop()


def _inside(collector, t0, t1, lane):
    return [f for t, f in collector.frames() if t0 <= t <= t1 and f.lane == lane]


def test_lane1_publishes_every_hop_while_the_slow_decoder_generates(run_worker):
    decoder = SlowDecoder(DELAY_S)
    worker, collector = run_worker(decoder, n_images=4, max_fps=100.0)
    gens = decoder.calls[1:4]  # [0] is the warm-up
    for t0, t1, _ in gens:
        # 8 hops fit in one generation; a lane 1 that waited would publish none.
        assert len(_inside(collector, t0, t1, "retrieval")) >= 3
    frames = [f for _, f in collector.frames()]
    assert all(f.image is None for f in frames if f.lane == "retrieval")
    assert all(f.image is not None for f in frames if f.lane == "image")
    seqs = [f.seq for f in frames]
    assert seqs == list(range(len(seqs)))  # one counter, published in order
    stats = worker.stats
    assert stats.lanes["n"] == 2
    assert stats.lanes["retrieval"]["latency_ms"]["total"]["n"] >= 10
    assert set(stats.lanes["image"]["latency_ms"]) == {"wait", "generate", "encode_image", "total"}
    assert stats.lanes["image"]["latency_ms"]["generate"]["p50"] >= DELAY_S * 1e3


def test_image_frames_name_their_window_and_take_the_newest_prediction(run_worker):
    decoder = SlowDecoder(DELAY_S)
    worker, collector = run_worker(decoder, n_images=4, max_fps=100.0)
    items = collector.frames()
    retrieval = {f.seq: (t, f) for t, f in items if f.lane == "retrieval"}
    images = [f for _, f in items if f.lane == "image"]
    checked = 0
    for k, image in enumerate(images[:3]):
        _, source = retrieval[image.window_seq]
        assert (image.first_sample, image.t_last, image.t_arrived, image.topk) == (
            source.first_sample, source.t_last, source.t_arrived, source.topk
        )
        assert image.seq > image.window_seq
        assert set(image.latencies_ms) >= {"preprocess", "encode", "wait", "generate", "total"}
        # Newest wins: every retrieval frame out before lane 2 was free again (the
        # previous generation's end) is no newer than the window this image used.
        free_at = decoder.calls[k][1]
        published_before = [s for s, (t, _) in retrieval.items() if t < free_at]
        assert max(published_before, default=-1) <= image.window_seq
        checked += bool(published_before)
    assert checked >= 2
    assert worker.stats.counters["images_skipped"] >= 3  # replaced in the slot, counted


def test_single_lane_switch_keeps_generation_inline(run_worker):
    decoder = SlowDecoder(DELAY_S)
    worker, collector = run_worker(decoder, n_images=3, max_fps=100.0, lanes=1)
    frames = [f for _, f in collector.frames()]
    assert {f.lane for f in frames} == {None} and all(f.window_seq is None for f in frames)
    images = [f for f in frames if f.image is not None]
    assert all(f.topk and "generate" in f.latencies_ms for f in images)
    for t0, t1, _ in decoder.calls[1:3]:
        assert _inside(collector, t0 + 0.01, t1 - 0.01, None) == []  # nothing while generating
    assert worker.stats.lanes == {"n": 1, "single": {"threads": 1}}


def test_thread_budget_is_split_between_the_lanes(run_worker):
    worker, _ = run_worker(SlowDecoder(0.0), n_images=1, torch_threads=1, thread_budget=3)
    lanes = worker.stats.lanes
    assert (lanes["retrieval"]["threads"], lanes["image"]["threads"]) == (1, 2)


def test_image_lane_errors_are_counted_and_retrieval_goes_on(run_worker):
    decoder = SlowDecoder(0.05, fail=True)
    worker, collector = run_worker(decoder, n_images=0, max_fps=100.0)
    poll(lambda: worker.stats.lanes["image"]["consecutive_errors"] >= 5, DEADLINE_S,
         "five failed generations")
    n = len(collector.frames())
    poll(lambda: len(collector.frames()) >= n + 5, DEADLINE_S, "retrieval frames go on")
    image = worker.stats.lanes["image"]
    assert "out of memory" in image["last_error"] and image["error"] is None
    assert worker.error is None and worker.stats.counters["image_errors"] >= 5


def test_the_lag_is_the_one_rule_of_contracts():
    """A window's lag since the onset: its end (one sample past its last) minus the onset."""
    from rtdecode.contracts import lag_s

    assert lag_s(last_sample=249, onset_sample=0, sfreq_hz=1000.0) == 0.25
    worker, source, _ = build_worker(None)
    window = source.next_window(timeout_s=1.0)
    onset = window.first_sample + 10
    true_id, lag = worker._truth(_marked(window))
    expected = round((window.last_sample + 1 - onset) / window.sfreq_hz, 6)
    assert true_id == "img03" and lag == lag_s(window.last_sample, onset, window.sfreq_hz) == expected


# --------------------------------------------------------------------------- lane 1's steps
def _marked(window, image_id="img03", after=10):
    """The window with a located marker ``after`` samples past its first."""
    import dataclasses

    from rtdecode.contracts import Marker

    onset = window.first_sample + after
    return dataclasses.replace(window, marker=Marker(window.t_first, {"image_id": image_id},
                                                     sample=onset))


def test_encode_window_gives_the_clip_embedding_and_the_mse_vector():
    worker, source, _ = build_worker(None)
    window = source.next_window(timeout_s=1.0)
    lat = {}
    embedding, mse_vec = worker.encode_window(window, lat)
    assert embedding.window is window and embedding.vector.shape == (EMBED_DIM,)
    assert mse_vec.shape == (EMBED_DIM,) and set(lat) == {"preprocess", "encode"}
    assert embedding.encode_ms == lat["encode"] >= 0
    again, _ = worker.encode_window(window, {})  # the same window encodes to the same vector
    np.testing.assert_allclose(again.vector, embedding.vector, rtol=1e-5, atol=1e-6)


def _one_hot_retrieval():
    """A retrieval set whose image ``imgNN`` is the unit vector of axis NN."""
    from rtdecode.decoder.retrieval import Retrieval

    return Retrieval(np.eye(EMBED_DIM, dtype=np.float32), [f"img{i:02d}" for i in range(EMBED_DIM)])


def test_retrieve_is_the_retrieval_sets_top_k():
    worker, _, _ = build_worker(None, topk=3)
    worker.retrieval = _one_hot_retrieval()
    query = np.eye(EMBED_DIM)[7] + 0.1
    top = worker.retrieve(query)
    assert len(top) == 3 and top[0][0] == "img07"
    assert top == tuple((str(i), float(s)) for i, s in worker.retrieval.topk(query, k=3))


def test_score_ranks_the_stimulus_on_screen_and_fills_the_curve():
    worker, source, _ = build_worker(None)
    worker.retrieval = _one_hot_retrieval()
    window = source.next_window(timeout_s=1.0)
    query = np.eye(EMBED_DIM)[3]
    assert worker.score(window, query) == (None, None, None)  # no marker
    true_id, rank, lag = worker.score(_marked(window), query)
    assert (true_id, rank) == ("img03", 1)
    assert lag == round((window.last_sample + 1 - window.first_sample - 10) / SFREQ_HZ, 6)
    assert worker.score(_marked(window, "unknown"), query)[:2] == ("unknown", None)
    (row,) = worker.lag_curve.as_dict()["per_lag"]  # only the ranked window
    assert row["n"] == 1 and row["top1"] == 1.0


@pytest.mark.parametrize("lanes", [1, 2])
def test_emit_publishes_the_frame_and_hands_lane_two_the_prediction(lanes):
    from rtdecode.worker import ScoredWindow

    decoder = SlowDecoder(0.0)
    worker, source, collector = build_worker(decoder, lanes=lanes, max_fps=1000.0)
    window = source.next_window(timeout_s=1.0)
    embedding, mse_vec = worker.encode_window(window, lat := {"queue": 1.0})
    lat["retrieve"] = 0.5
    scored = ScoredWindow(window, embedding, mse_vec, (("img01", 0.5),), "img01", 4, 0.3)
    assert worker.emit(scored, dict(lat)) == 0
    assert worker.emit(scored, dict(lat)) == 1
    (_, first), (_, second) = collector.frames()
    assert (first.seq, second.seq) == (0, 1) and first.first_sample == window.first_sample
    assert (first.topk, first.true_id, first.true_rank, first.lag_s) == (
        (("img01", 0.5),), "img01", 4, 0.3)
    assert first.embedding is embedding and "total" in first.latencies_ms
    counters = worker.stats.counters
    assert counters["windows"] == counters["frames"] == 2
    if lanes == 1:  # generated inline, in the frame
        assert first.lane is None and first.image is not None and counters["images"] == 2
        assert {"generate", "encode_image"} <= set(first.latencies_ms)
    else:  # the newest prediction waits in lane 2's slot; the older one was replaced
        assert first.lane == "retrieval" and first.image is None and counters["images"] == 0
        job = worker._slot.take(timeout_s=0.0)
        assert job.window_seq == 1 and job.scored is scored and worker._slot.replaced == 1


def test_smoothing_integrates_consecutive_predictions_before_retrieval():
    # serve --smooth-s: the query of each frame is the leaky integral of the windows'
    # predictions so far (decoder/smoothing.py), while the frame keeps the raw embedding.
    from rtdecode.decoder.smoothing import smooth_sequence

    worker, source, collector = build_worker(None, smooth_s=0.2, topk=20)
    windows = [source.next_window(timeout_s=1.0) for _ in range(6)]
    for window in windows:
        worker._process(window)
    frames = [f for _, f in collector.frames()]
    raw = np.stack([f.embedding.vector.reshape(-1) for f in frames])
    lasts = np.array([w.last_sample for w in windows])
    expected = smooth_sequence(raw, lasts, windows[0].sfreq_hz, 0.2)
    assert not np.allclose(expected[-1], raw[-1])  # the integral differs from the last window
    for frame, query in zip(frames, expected, strict=True):
        want = worker.retrieval.topk(query, k=20)
        assert [i for i, _ in frame.topk] == [str(i) for i, _ in want]
        np.testing.assert_allclose([s for _, s in frame.topk], [s for _, s in want], rtol=1e-5)
