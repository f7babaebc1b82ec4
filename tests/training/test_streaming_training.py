"""Training and evaluation with streaming preprocessing: the windows the trainer cuts from
each recording's streamed output are the windows the live StreamingPreprocessor gives
when fed the same recording window by window, and a tiny streaming run decodes."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtdecode.contracts import Window
from rtdecode.data.recordings import read_recording
from rtdecode.signal import PreprocessConfig, Preprocessor
from rtdecode.signal.streaming import StreamingPreprocessor
from rtdecode.training.encoder import (
    fit_scaler,
    lagged_windows,
    load_epochs_for,
    load_recipe,
    preprocess_windows,
    train,
)
from rtdecode.training.evaluate import evaluate

torch.set_num_threads(1)

WINDOW_S = 0.25
HOP_S = 0.05


@pytest.fixture(scope="module")
def tiny_subject(tmp_path_factory):
    from rtdecode.data.simulate import simulate_subject

    return simulate_subject(tmp_path_factory.mktemp("sim") / "subject", seed=2, size="tiny",
                            progress=False)


def _live_windows(pre: Preprocessor, path: str, hop: int, n_pad: int, n_times: int
                  ) -> dict[int, np.ndarray]:
    """Feed a recording to a live StreamingPreprocessor window by window from sample 0.

    Returns the preprocessed window for each stop sample (exclusive) of the hop grid.
    """
    rec = read_recording(path)
    x = rec.raw.get_data().astype(np.float32)  # LSL carries float32
    names = tuple(rec.raw.ch_names)
    live = StreamingPreprocessor(pre)
    out = {}
    for stop in range(n_pad + n_times, x.shape[1] + 1, hop):
        first = stop - n_pad - n_times
        w = Window(data=x[:, first:stop], sfreq_hz=rec.sfreq_hz, ch_names=names,
                   first_sample=first, t_first=0.0, t_last=0.0, t_arrived=0.0, n_pad=n_pad)
        out[stop] = live.transform_window(w)
    assert live.restarts == 0
    return out


def test_training_windows_equal_the_live_windows_at_a_50ms_hop(tiny_subject):
    rc = load_recipe({"window_sampling": "stream"})
    lags = rc.lags_s
    made = {}

    def pre_for(names):  # what train() builds: the recipe's (streaming) preprocessing
        return made.setdefault(tuple(names), Preprocessor(
            PreprocessConfig(ch_names=tuple(names), streaming=True)))

    es = load_epochs_for(tiny_subject, pre_for, tmin_s=float(lags[0]) - WINDOW_S,
                         tmax_s=float(lags[-1]), progress=False)
    assert es.streamed and es.n_pad == 0
    pre = pre_for(es.ch_names)
    fit_scaler(es.train, pre, rc.window_start_s, WINDOW_S)
    assert pre.fitted
    X, epoch_index = lagged_windows(es, pre, lags, WINDOW_S)
    n = len(es)
    assert X.shape[0] == len(lags) * n

    compared = 0
    for r, path in enumerate(es.recordings):
        fs = es.recording_sfreq_hz[r]
        hop = int(round(HOP_S * fs))
        n_times = int(round(WINDOW_S * fs))
        live = _live_windows(pre, path, hop, pre.pad_samples(fs), n_times)
        for i in np.flatnonzero(es.recording_index == r):
            for k, lag in enumerate(lags):
                stop = int(es.onset_samples[i]) + int(np.floor(lag * fs + 0.5))
                if stop not in live:
                    continue  # not on the live hop grid (onsets fall anywhere)
                got = X[k * n + i]
                want = live[stop]
                np.testing.assert_allclose(got, want, rtol=1e-5,
                                           atol=1e-5 * float(np.abs(want).max()))
                compared += 1
    assert compared >= 20, compared
    # The scaler statistic is the one of the reference windows' unscaled values.
    ref = preprocess_windows(es.train, pre, rc.window_start_s, WINDOW_S, scaled=False)
    np.testing.assert_allclose(pre.center, np.median(ref.astype(np.float64), axis=(0, 2)),
                               rtol=1e-6, atol=1e-20)


def test_block_preprocessing_refuses_streamed_epochs_and_back(tiny_subject):
    block = load_epochs_for(
        tiny_subject, lambda names: Preprocessor(PreprocessConfig(ch_names=tuple(names))),
        tmin_s=0.0, tmax_s=0.5, progress=False)
    assert not block.streamed and block.n_pad > 0
    streaming = Preprocessor(PreprocessConfig(ch_names=block.ch_names, streaming=True))
    with pytest.raises(ValueError, match="load_epochs_for"):
        preprocess_windows(block, streaming, 0.0, WINDOW_S)
    with pytest.raises(ValueError, match="stream_window"):
        load_epochs_for(tiny_subject, lambda names: streaming, tmin_s=0.0, tmax_s=0.5,
                        progress=False).window(0.0, WINDOW_S)


def test_tiny_streaming_training_decodes_above_chance(tiny_subject, tmp_path):
    from rtdecode.encoder import load_checkpoint
    from rtdecode.encoder.metrics import standardize
    from rtdecode.images import Gallery, image_encoder_for
    from rtdecode.training.encoder import predict
    from rtdecode.training.evaluate import retrieval_scores

    # No validation split: the tiny subject's few images all train, and the checkpoint
    # holds the last epoch's weights (not an early epoch picked on 2 held-out images).
    # The reference (and evaluated) window 450-700 ms holds the tiny subject's late
    # responses.
    ckpt = train(tiny_subject, tmp_path / "ckpt", preset="test", max_epochs=10,
                 recipe={"batch_size": 8, "window_sampling": "stream", "val_fraction": 0.0,
                         "window_start_s": 0.45},
                 progress=False)
    model, meta = load_checkpoint(ckpt)
    assert meta["preprocess"]["config"]["streaming"] is True  # the default for new runs
    pre = Preprocessor.from_dict(meta["preprocess"])
    # Zero-shot, among every gallery image (240; the tiny subject holds out 4 test
    # images, too few for top-5): the ridge baseline fitted on the streamed windows.
    report = evaluate(ckpt, tiny_subject, time_resolved=False, progress=False)
    ridge = report["retrieval"]["ridge"]["gallery"]["single"]
    assert ridge["top5"] > 3 * ridge["chance_top5"], ridge
    # The deep model on its training images (3 categories are too few for it to
    # generalise zero-shot, on either path): windows cut again from the checkpoint's
    # streaming preprocessing give back what it learned.
    es = load_epochs_for(tiny_subject, lambda names: pre, tmin_s=0.4, tmax_s=0.8,
                         ch_names=meta["ch_names"], progress=False).train
    X = preprocess_windows(es, pre, 0.45, WINDOW_S)  # ends 700 ms after onset
    gallery = Gallery.from_folder(es.gallery_root)
    encoder = image_encoder_for(meta["target"])
    emb = standardize(gallery.embeddings(encoder, progress=False), meta.get("target_stats"))
    pred = predict(model, X, np.zeros(len(X), np.int64))["clip"]
    deep = retrieval_scores(pred, [str(i) for i in es.image_ids], list(gallery.ids), emb)
    assert deep["single"]["top5"] > 3 * deep["single"]["chance_top5"], deep["single"]


def test_block_path_stays_available(tiny_subject, tmp_path):
    from rtdecode.encoder import load_checkpoint

    ckpt = train(tiny_subject, tmp_path / "block", preset="test", max_epochs=1,
                 recipe={"batch_size": 8, "window_sampling": "fixed",
                         "preprocess": {"streaming": False}}, progress=False)
    _, meta = load_checkpoint(ckpt)
    assert meta["preprocess"]["config"]["streaming"] is False
    report = evaluate(ckpt, tiny_subject, time_resolved=False, progress=False)
    assert report["n_test_trials"] > 0 and "ridge" in report["retrieval"]
    with pytest.raises(ValueError, match="streaming = false"):  # resumed on its own path
        train(tiny_subject, ckpt, preset="test", max_epochs=2, resume=True,
              recipe={"batch_size": 8, "window_sampling": "fixed"}, progress=False)
