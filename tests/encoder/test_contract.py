"""One contract battery over every encoder preset, plus the building blocks' invariants."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.nn import functional as F

from rtdecode.encoder import PRESETS, BrainConfig, build_model, describe_model
from rtdecode.encoder.checkpoint import load_checkpoint, save_checkpoint
from rtdecode.encoder.model import (
    BatchNorm1d,
    Conv1d,
    SpatialAttention,
    TemporalAggregation,
    normalize_positions,
)

torch.set_num_threads(1)

# Sizes per preset: the real ones for paper/demo (306 sensors, 250 ms at 120 Hz), small
# for the tiny preset. Batches stay small so the whole battery runs in seconds.
SIZES = {"paper": (306, 30, 2), "demo": (306, 30, 3), "test": (8, 12, 4), "ridge": (306, 30, 2),
         "riemann": (4, 64, 3)}


def _positions(n_channels: int, seed: int = 0) -> np.ndarray:
    pos = np.random.default_rng(seed).uniform(-0.1, 0.1, size=(n_channels, 2))
    pos[1] = np.nan  # one sensor without a known position
    return pos


def _build(preset: str, n_subjects: int = 2, seed: int = 0, **kw):
    n_ch, n_t, _ = SIZES.get(preset, (8, 12, 4))
    torch.manual_seed(seed)
    return build_model(preset, n_ch, n_t, _positions(n_ch), n_subjects=n_subjects, **kw)


def _batch(preset: str, seed: int = 1):
    n_ch, n_t, b = SIZES.get(preset, (8, 12, 4))
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, n_ch, n_t, generator=g)
    subject = torch.arange(b) % 2
    return x, subject


def _meta(model) -> dict:
    cfg = model.config
    return {
        "ch_names": [f"MEG{i:04d}" for i in range(cfg.n_channels)],
        "positions": (model.spatial.positions if cfg.kind == "brain" else model.positions).numpy(),
        "sfreq_in_hz": 1000.0,
        "sfreq_model_hz": 120.0,
        "window_s": cfg.n_times / 120.0,
        "subjects": [f"sub-{i:02d}" for i in range(cfg.n_subjects)],
        "target": {"name": "handcrafted"},
    }


def test_every_preset_is_covered():
    assert set(PRESETS) == set(SIZES), "add the new preset's sizes to SIZES"


@pytest.fixture(params=sorted(PRESETS))
def preset(request):
    return request.param


def test_output_shapes_and_gradients(preset):
    model = _build(preset)
    x, subject = _batch(preset)
    model.train()
    out = model(x, subject)
    d = PRESETS[preset].target_dim
    assert set(out) == {"clip", "mse"}
    for y in out.values():
        assert y.shape == (x.shape[0], d)
        assert torch.isfinite(y).all()
    (out["clip"].sum() + out["mse"].sum()).backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    if PRESETS[preset].kind == "brain":
        # Only the subjects present in the batch receive a gradient... and they do.
        assert grads["subject_layers.weight"][:2].abs().sum() > 0


def test_deterministic_by_seed(preset):
    x, subject = _batch(preset)
    outs = []
    for _ in range(2):
        model = _build(preset, seed=3).eval()
        with torch.no_grad():
            outs.append(model(x, subject)["clip"])
    assert torch.equal(outs[0], outs[1])
    other = _build(preset, seed=4).eval()
    with torch.no_grad():
        assert not torch.allclose(outs[0], other(x, subject)["clip"])


def test_save_load_round_trip(preset, tmp_path):
    model = _build(preset)
    # Move BatchNorm statistics and weights away from their initial values.
    model.train()
    x, subject = _batch(preset)
    model(x, subject)
    model.eval()
    save_checkpoint(tmp_path, model, _meta(model))
    loaded, meta = load_checkpoint(tmp_path)
    assert not loaded.training
    with torch.no_grad():
        a, b = model(x, subject), loaded(x, subject)
    for k in a:
        assert torch.equal(a[k], b[k])
    assert meta["architecture"] == model.config.to_dict()
    assert meta["target"] == {"name": "handcrafted", "dim": model.config.target_dim,
                              "shape": list(model.config.target_shape)}
    assert meta["positions"][1] == [None, None]  # unknown position survives JSON
    json.loads((tmp_path / "config.json").read_text())  # strict JSON, no NaN


def test_describe_preset(preset):
    info = describe_model(preset=preset)
    json.dumps(info)
    assert info["n_parameters"] == sum(info["parameters_by_part"].values())
    assert info["output_shape"]["clip"] == list(PRESETS[preset].target_shape)


def test_paper_preset_matches_the_issue():
    cfg = PRESETS["paper"]
    assert (cfg.n_blocks, cfg.target_dim, cfg.spatial_channels, cfg.hidden) == (2, 768, 270, 320)
    assert (cfg.fourier_harmonics, cfg.projection_dim, cfg.aggregation) == (32, 2048, "affine")


def test_demo_checkpoint_is_small():
    info = describe_model(preset="demo")
    assert info["size_mb"] <= 20


def test_describe_checkpoint(tmp_path):
    model = _build("test")
    save_checkpoint(tmp_path, model, _meta(model))
    info = describe_model(ckpt_dir=tmp_path)
    assert info["source"] == "checkpoint" and info["n_channels"] == 8
    assert info["n_parameters"] == sum(p.numel() for p in model.parameters())
    with pytest.raises(ValueError, match="either"):
        describe_model()


@pytest.mark.parametrize("aggregation", ["affine", "attention", "average"])
def test_aggregations_and_any_window_length(aggregation):
    for n_times in (30, 181):  # 250 ms and 1.5 s at 120 Hz
        model = build_model("test", 8, n_times, _positions(8), aggregation=aggregation).eval()
        with torch.no_grad():
            out = model(torch.randn(2, 8, n_times))
        assert out["clip"].shape == (2, 8)


def test_token_grid_target():
    model = build_model("test", 8, 12, _positions(8), target_dim=(5, 8)).eval()
    with torch.no_grad():
        out = model(torch.randn(3, 8, 12))
    assert out["clip"].shape == (3, 5, 8) and out["mse"].shape == (3, 5, 8)


def test_bad_inputs_are_named():
    model = _build("test")
    with pytest.raises(ValueError, match=r"\(batch, 8, 12\)"):
        model(torch.randn(2, 7, 12), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="subject indices"):
        model(torch.randn(2, 8, 12))
    with pytest.raises(ValueError, match="out of range"):
        model(torch.randn(2, 8, 12), torch.tensor([0, 5]))
    with pytest.raises(ValueError, match="positions has shape"):
        build_model("test", 8, 12, _positions(7))
    with pytest.raises(ValueError, match="Unknown encoder preset"):
        build_model("huge", 8, 12, _positions(8))
    with pytest.raises(ValueError, match="aggregation"):
        BrainConfig(aggregation="max")
    # One subject: no index needed.
    single = _build("test", n_subjects=1).eval()
    with torch.no_grad():
        assert torch.allclose(single(torch.ones(1, 8, 12))["clip"],
                              single(torch.ones(1, 8, 12), torch.zeros(1, dtype=torch.long))["clip"])


# ----------------------------------------------------------------- building blocks
def test_positions_normalised_and_unknown_sensors_get_no_weight():
    pos = np.array([[0.0, 0.0], [np.nan, np.nan], [2.0, 4.0], [1.0, 1.0]])
    norm = normalize_positions(pos)
    assert torch.allclose(norm[[0, 2, 3]], torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.5, 0.25]]))
    assert torch.isnan(norm[1]).all()
    att = SpatialAttention(pos, n_out=5, harmonics=4, margin=0.2, dropout_radius=0.0)
    w = att.weights()
    assert torch.allclose(w.sum(dim=1), torch.ones(5))
    assert (w[:, 1] == 0).all() and (w[:, [0, 2, 3]] > 0).all()
    with pytest.raises(ValueError, match="No sensor"):
        normalize_positions(np.full((3, 2), np.nan))


def test_spatial_dropout_removes_a_disc_in_training_only():
    pos = np.stack(np.meshgrid(np.linspace(0, 1, 10), np.linspace(0, 1, 10)), -1).reshape(-1, 2)
    att = SpatialAttention(pos, n_out=4, harmonics=4, margin=0.2, dropout_radius=0.2, seed=0)
    att.train()
    removed = [(att.weights() == 0).all(dim=0).sum().item() for _ in range(20)]
    assert max(removed) > 0 and min(removed) < 100
    # Same seed, same sequence of discs: what makes DDP ranks agree.
    twin = SpatialAttention(pos, n_out=4, harmonics=4, margin=0.2, dropout_radius=0.2, seed=0)
    twin.load_state_dict(att.state_dict())
    twin.train()
    att.generator.manual_seed(0)
    assert torch.equal(att.weights(), twin.weights())
    att.eval()
    with torch.no_grad():
        assert (att.weights() > 0).all()


def test_eval_cache_follows_weight_changes():
    model = _build("test").eval()
    x, subject = _batch("test")
    with torch.no_grad():
        before = model(x, subject)["clip"].clone()
        model.spatial.queries.add_(1.0)  # what an optimizer step does
        after = model(x, subject)["clip"]
    assert not torch.allclose(before, after)
    fresh = _build("test").eval()
    fresh.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert torch.allclose(fresh(x, subject)["clip"], after, atol=1e-6)


@pytest.mark.parametrize("kernel,dilation", [(3, 1), (3, 2), (3, 8), (5, 4), (1, 1)])
def test_fast_conv_equals_torch_conv(kernel, dilation):
    torch.manual_seed(0)
    conv = Conv1d(6, 7, kernel, padding=dilation * (kernel // 2), dilation=dilation)
    x = torch.randn(3, 6, 30)
    ref = F.conv1d(x, conv.weight, conv.bias, padding=conv.padding, dilation=conv.dilation)
    assert torch.allclose(conv(x), ref, atol=1e-5)


@pytest.mark.parametrize("mode", ["affine", "attention", "average"])
def test_aggregation_equals_project_then_aggregate(mode):
    torch.manual_seed(0)
    agg = TemporalAggregation(hidden=5, projection_dim=7, n_times=9, mode=mode)
    with torch.no_grad():
        for p in agg.parameters():
            p.normal_()
    h = torch.randn(4, 5, 9)
    projected = agg.projection(h)  # (B, P, T): the textbook order
    if mode == "affine":
        ref = agg.time(projected)[:, :, 0]
    elif mode == "attention":
        alpha = torch.softmax(agg.score(projected.transpose(1, 2))[:, :, 0], dim=-1)
        ref = (projected * alpha[:, None, :]).sum(-1)
    else:
        ref = projected.mean(-1)
    assert torch.allclose(agg(h), ref, atol=1e-4)


def test_batchnorm_running_statistics_are_debiased():
    torch.manual_seed(0)
    ours, ref = BatchNorm1d(4), torch.nn.BatchNorm1d(4)
    batches = [torch.randn(5, 4, 11) * 0.03 + 1 for _ in range(30)]
    assert torch.allclose(ours(batches[0]), ref(batches[0]))  # same normalisation
    # After one batch the running statistics are that batch's, not 90% of the init.
    assert torch.allclose(ours.running_mean, batches[0].mean(dim=(0, 2)), atol=1e-6)
    assert torch.allclose(ours.running_var, batches[0].var(dim=(0, 2)), rtol=1e-4)
    for b in batches[1:]:
        ours(b)
    # Past 1/momentum updates it is torch's exponential average again.
    assert ours._debias_done and int(ours.num_batches_tracked) == 30
    assert torch.allclose(ours.running_var, torch.full((4,), 9e-4), rtol=0.3)
    ours.eval()
    ref.load_state_dict(ours.state_dict())
    ref.eval()
    assert torch.equal(ours(batches[0]), ref(batches[0]))


def test_eval_mode_is_not_collapsed_after_a_few_training_batches():
    # Regression: with torch's BatchNorm init (var 1) and small activations, an early
    # checkpoint predicted the same vector for every window in eval mode.
    model = _build("test", n_subjects=1)
    x = 0.05 * torch.randn(16, 8, 12, generator=torch.Generator().manual_seed(0))
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(x)
        spread_train = model(x)["clip"].std(dim=0).mean()
        model.eval()
        spread_eval = model(x)["clip"].std(dim=0).mean()
    assert spread_eval > 0.5 * spread_train


def test_torch_compile_agrees_on_tiny_preset():
    if not hasattr(torch, "compile"):
        pytest.skip("torch.compile is not available in this torch build.")
    model = _build("test").eval()
    x, subject = _batch("test")
    with torch.no_grad():
        ref = model(x, subject)["clip"]
        try:
            compiled = torch.compile(model, backend="eager" if _no_cc() else "inductor")
            got = compiled(x, subject)["clip"]
        except Exception as exc:  # a missing C compiler or unsupported op on this host
            pytest.skip(f"torch.compile could not run here: {type(exc).__name__}: {exc}")
    assert torch.allclose(ref, got, atol=1e-5)


def _no_cc() -> bool:
    import shutil

    return shutil.which("cc") is None and shutil.which("gcc") is None


# ----------------------------------------------------------------- several sensor systems
def _two_systems(seed: int = 0):
    from rtdecode.encoder.model import stack_positions

    big, small = _positions(8, seed), _positions(5, seed + 1)
    torch.manual_seed(seed)
    model = build_model("test", 8, 12, stack_positions([big, small]), n_subjects=3,
                        subject_system=(0, 1, 0))
    return model.eval()


def test_padded_channels_get_no_weight_and_batching_does_not_change_outputs():
    model = _two_systems()
    assert model.config.n_systems == 2 and model.config.subject_system == (0, 1, 0)
    w = model.spatial.weights()
    assert w.shape == (2, 6, 8)
    assert torch.allclose(w.sum(dim=-1), torch.ones(2, 6))
    assert (w[1, :, 5:] == 0).all() and (w[1, :, [0, 2, 3, 4]] > 0).all()
    g = torch.Generator().manual_seed(5)
    small = torch.randn(1, 5, 12, generator=g)  # subject 1: its own 5 channels only
    big = torch.randn(2, 8, 12, generator=g)  # subjects 0 and 2, 8 channels each
    with torch.no_grad():
        alone = model(small, torch.tensor([1]))["clip"]
        batch = torch.cat([big[:1], F.pad(small, (0, 0, 0, 3)), big[1:]])
        mixed = model(batch, torch.tensor([0, 1, 2]))
        garbage = batch.clone()
        garbage[1, 5:] = 1e3  # whatever the padding holds, it gets no weight
        again = model(garbage, torch.tensor([0, 1, 2]))["clip"]
        big_alone = model(big, torch.tensor([0, 2]))["clip"]
    assert torch.allclose(mixed["clip"][1:2], alone, atol=1e-5)
    assert torch.allclose(again, mixed["clip"], atol=1e-5)
    assert torch.allclose(mixed["clip"][[0, 2]], big_alone, atol=1e-5)
    # One system's weights differ from the other's: each subject reads its own sensors.
    with torch.no_grad():
        as_other = model(F.pad(small, (0, 0, 0, 3)), torch.tensor([0]))["clip"]
    assert not torch.allclose(as_other, alone, atol=1e-3)


def test_spatial_dropout_keeps_every_system_readable():
    model = _two_systems()
    model.spatial.dropout_radius = 10.0  # a disc that covers every sensor
    model.train()
    w = model.spatial.weights()
    assert torch.isfinite(w).all() and torch.allclose(w.sum(dim=-1), torch.ones(2, 6))


def test_two_system_checkpoint_round_trip_and_subject_views(tmp_path):
    from rtdecode.encoder.checkpoint import subject_view

    model = _two_systems()
    pos = model.spatial.positions.numpy()
    systems = [
        {"ch_names": [f"MEG{i:04d}" for i in range(8)], "positions": pos[0],
         "preprocess": {"config": {"ch_names": [f"MEG{i:04d}" for i in range(8)]}}},
        {"ch_names": [f"MLC{i:02d}" for i in range(5)], "positions": pos[1, :5],
         "preprocess": {"config": {"ch_names": [f"MLC{i:02d}" for i in range(5)]}}},
    ]
    meta = {**_meta(model), "systems": systems}
    del meta["ch_names"], meta["positions"]
    save_checkpoint(tmp_path, model, meta)
    loaded, read = load_checkpoint(tmp_path)
    x = torch.randn(1, 5, 12)
    with torch.no_grad():
        assert torch.equal(model(x, torch.tensor([1]))["clip"], loaded(x, torch.tensor([1]))["clip"])
    assert read["ch_names"] == systems[0]["ch_names"]  # older readers see system 0
    _, view = load_checkpoint(tmp_path, subject="01")
    assert view["subject_index"] == 1 and view["ch_names"] == systems[1]["ch_names"]
    assert view["preprocess"] == systems[1]["preprocess"]
    assert subject_view(read, "sub-02")["ch_names"] == systems[0]["ch_names"]
    with pytest.raises(ValueError, match="rtdecode calibrate"):
        load_checkpoint(tmp_path, subject="09")
    bad = {**meta, "systems": systems[:1]}
    with pytest.raises(ValueError, match="1 sensor systems but the model reads 2"):
        save_checkpoint(tmp_path / "bad", model, bad)
