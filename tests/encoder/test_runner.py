"""EncoderRunner (rtdecode.encoder.runner): one window through the encoder, host to host,
as the worker's lane 1 runs it. On CPU here; the CUDA path (pinned buffers, CUDA graph,
one device-to-host copy) runs in bench/gpu.py on a GPU."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rtdecode.encoder import build_model
from rtdecode.encoder.runner import EncoderRunner

N_CH, N_T = 12, 30


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    positions = np.random.default_rng(0).uniform(-1, 1, size=(N_CH, 2))
    return build_model("test", N_CH, N_T, positions, n_subjects=2).eval()


def _direct(model, x, subject):
    with torch.inference_mode():
        out = model(torch.from_numpy(x)[None], torch.tensor([subject]))
    return out["clip"][0].numpy().ravel(), out["mse"][0].numpy().ravel()


def test_fp32_runner_equals_the_model_called_directly_for_each_subject(model):
    rng = np.random.default_rng(1)
    for subject in (0, 1):
        runner = EncoderRunner(model, "cpu", N_CH, N_T, subject=subject)
        assert runner.describe() == {"device": "cpu", "precision": "fp32", "cuda_graph": False,
                                     "pinned_copies": False}
        for _ in range(3):
            x = rng.standard_normal((N_CH, N_T)).astype(np.float32)
            clip, mse = runner(x)
            want_clip, want_mse = _direct(model, x, subject)
            np.testing.assert_allclose(clip, want_clip, rtol=1e-5, atol=1e-6)
            np.testing.assert_allclose(mse, want_mse, rtol=1e-5, atol=1e-6)
            assert clip.shape == (runner.clip_dim,) and mse.shape == (runner.mse_dim,)


def test_results_are_copies_not_the_reused_buffer(model):
    runner = EncoderRunner(model, "cpu", N_CH, N_T)
    rng = np.random.default_rng(2)
    first, _ = runner(rng.standard_normal((N_CH, N_T)).astype(np.float32))
    kept = first.copy()
    runner(rng.standard_normal((N_CH, N_T)).astype(np.float32))
    np.testing.assert_array_equal(first, kept)


def test_bf16_autocast_stays_close_to_fp32(model):
    x = np.random.default_rng(3).standard_normal((N_CH, N_T)).astype(np.float32)
    ref = np.concatenate(EncoderRunner(model, "cpu", N_CH, N_T)(x))
    low = np.concatenate(EncoderRunner(model, "cpu", N_CH, N_T, precision="bf16")(x))
    assert not np.array_equal(ref, low)  # it really ran in bf16
    cos = float(ref @ low / (np.linalg.norm(ref) * np.linalg.norm(low)))
    assert cos > 0.99, cos


def test_bad_arguments_say_what_to_do(model):
    with pytest.raises(ValueError, match="precision='fp64' is not one of auto, fp32, bf16, fp16"):
        EncoderRunner(model, "cpu", N_CH, N_T, precision="fp64")
    with pytest.raises(ValueError, match="cuda_graph=True needs a CUDA device.*leave it None"):
        EncoderRunner(model, "cpu", N_CH, N_T, cuda_graph=True)
    runner = EncoderRunner(model, "cpu", N_CH, N_T)
    with pytest.raises(ValueError, match=r"shape \(12, 29\); this encoder takes \(12, 30\)"):
        runner(np.zeros((N_CH, N_T - 1), dtype=np.float32))
