"""Checkpoint format: safetensors + config.json, and clear refusals for bad ones."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from rtdecode.encoder import build_model
from rtdecode.encoder.checkpoint import load_checkpoint, read_config, save_checkpoint
from rtdecode.training.state import load_training_state, save_training_state

torch.set_num_threads(1)


@pytest.fixture
def ckpt(tmp_path):
    torch.manual_seed(0)
    pos = np.random.default_rng(0).normal(size=(8, 2))
    model = build_model("test", 8, 12, pos, n_subjects=2, target_dim=8)
    meta = {
        "ch_names": [f"MEG{i}" for i in range(8)],
        "positions": pos,
        "positions_3d": np.random.default_rng(1).normal(size=(8, 3)),
        "sfreq_in_hz": 1000.0,
        "sfreq_model_hz": 120.0,
        "window_s": 0.1,
        "offsets": {"window_start_s": 0.05},
        "preprocess": {"center": [0.0] * 8},
        "clamp": 20.0,
        "target": {"name": "handcrafted"},
        "subjects": ["sub-01", "sub-02"],
        "provenance": {"data": "/tmp/x"},
        "target_stats": {"mean": [0.0] * 8, "std": [1.0] * 8},
    }
    folder = tmp_path / "ckpt"
    save_checkpoint(folder, model, meta)
    return folder, model


def _edit_config(folder, **changes):
    cfg = json.loads((folder / "config.json").read_text())
    for key, value in changes.items():
        if callable(value):
            value(cfg)
        else:
            cfg[key] = value
    (folder / "config.json").write_text(json.dumps(cfg))


def test_files_and_contract_keys(ckpt):
    folder, model = ckpt
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]
    cfg = read_config(folder)
    for key in ("architecture", "ch_names", "positions", "positions_3d", "sfreq_in_hz",
                "sfreq_model_hz", "window_s", "offsets", "preprocess", "clamp", "target",
                "subjects", "provenance", "target_stats"):
        assert key in cfg, key
    assert cfg["target"]["dim"] == 8 and cfg["format_version"] == 1
    loaded, meta = load_checkpoint(folder / "model.safetensors")  # the file path works too
    assert meta["subjects"] == ["sub-01", "sub-02"]


def test_missing_and_extra_tensors_are_named(ckpt):
    folder, _ = ckpt
    tensors = load_file(folder / "model.safetensors")
    del tensors["heads.clip.linear.weight"]
    tensors["surprise.weight"] = torch.zeros(2)
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(ValueError) as err:
        load_checkpoint(folder)
    msg = str(err.value)
    assert "missing tensors ['heads.clip.linear.weight']" in msg
    assert "unexpected tensors ['surprise.weight']" in msg


def test_misshapen_tensor_is_named(ckpt):
    folder, _ = ckpt
    tensors = load_file(folder / "model.safetensors")
    tensors["merge.weight"] = torch.zeros(3, 3, 1)
    save_file(tensors, folder / "model.safetensors")
    with pytest.raises(ValueError, match=r"merge\.weight \(file \(3, 3, 1\)"):
        load_checkpoint(folder)


def test_config_disagreeing_with_tensors(ckpt):
    folder, _ = ckpt
    _edit_config(folder, architecture=lambda c: c["architecture"].update(hidden=16))
    with pytest.raises(ValueError, match="does not match its config.json"):
        load_checkpoint(folder)


def test_edited_positions_are_detected(ckpt):
    folder, _ = ckpt
    _edit_config(folder, positions=np.random.default_rng(5).normal(size=(8, 2)).tolist())
    with pytest.raises(ValueError, match="positions .* disagree"):
        load_checkpoint(folder)


@pytest.mark.parametrize(
    "change,match",
    [
        ({"ch_names": ["a", "b"]}, "2 channel names"),
        ({"subjects": ["s1"]}, "1 subjects"),
        ({"target": {"name": "x", "dim": 5}}, "dim 5"),
        ({"target_stats": {"mean": [0.0], "std": [1.0]}}, "target_stats"),
        ({"architecture": {"hidden": 8, "colour": "red"}}, "Unknown architecture option"),
    ],
)
def test_inconsistent_config(ckpt, change, match):
    folder, _ = ckpt
    if "architecture" in change:
        change = {"architecture": lambda c: c["architecture"].update(colour="red")}
    _edit_config(folder, **change)
    with pytest.raises(ValueError, match=match):
        load_checkpoint(folder)


def test_truncated_safetensors(ckpt):
    folder, _ = ckpt
    data = (folder / "model.safetensors").read_bytes()
    (folder / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="truncated or not a safetensors file"):
        load_checkpoint(folder)


def test_pickle_is_refused_with_a_sentence(ckpt, tmp_path):
    folder, model = ckpt
    pt = tmp_path / "model.pt"
    torch.save(model.state_dict(), pt)
    with pytest.raises(ValueError, match="never unpickles"):
        load_checkpoint(pt)
    only_pickle = tmp_path / "legacy"
    only_pickle.mkdir()
    torch.save(model.state_dict(), only_pickle / "pytorch_model.bin")
    with pytest.raises(ValueError, match="pickle-based"):
        load_checkpoint(only_pickle)


def test_missing_files(tmp_path, ckpt):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_checkpoint(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_checkpoint(empty)
    folder, _ = ckpt
    (folder / "config.json").unlink()
    with pytest.raises(FileNotFoundError, match="no config.json"):
        load_checkpoint(folder)


def test_bad_json(ckpt):
    folder, _ = ckpt
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_checkpoint(folder)


def test_save_requires_channel_names(tmp_path):
    model = build_model("test", 8, 12, np.zeros((8, 2)) + np.arange(8)[:, None])
    with pytest.raises(ValueError, match="ch_names"):
        save_checkpoint(tmp_path, model, {"positions": np.zeros((8, 2))})
    with pytest.raises(ValueError, match="3 channels"):
        save_checkpoint(tmp_path, model, {"ch_names": ["a", "b", "c"], "positions": np.zeros((8, 2))})


def test_training_state_round_trip(ckpt):
    folder, model = ckpt
    loss = torch.nn.Linear(2, 1)
    opt = torch.optim.Adam(list(model.parameters()) + list(loss.parameters()), lr=1e-3)
    out = model(torch.randn(4, 8, 12), torch.tensor([0, 1, 0, 1]))
    (out["clip"].sum() + loss(torch.ones(1, 2)).sum()).backward()
    opt.step()
    rng = model.spatial.generator.get_state()
    save_training_state(folder, {"model": model, "loss": loss}, opt,
                        {"epoch": 3, "best": 0.5, "tensors": {"spatial_rng": rng}})
    assert not list(folder.glob("training/*.pt"))
    torch.manual_seed(9)
    model2 = build_model("test", 8, 12, np.asarray(read_config(folder)["positions"]),
                         n_subjects=2, target_dim=8)
    loss2 = torch.nn.Linear(2, 1)
    opt2 = torch.optim.Adam(list(model2.parameters()) + list(loss2.parameters()), lr=1e-3)
    state = load_training_state(folder, {"model": model2, "loss": loss2}, opt2)
    assert state["epoch"] == 3 and torch.equal(state["tensors"]["spatial_rng"], rng)
    for a, b in zip(model.state_dict().values(), model2.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    s1, s2 = opt.state_dict(), opt2.state_dict()
    for pid in s1["state"]:
        for k in s1["state"][pid]:
            assert torch.equal(torch.as_tensor(s1["state"][pid][k]), torch.as_tensor(s2["state"][pid][k]))
    assert s1["param_groups"][0]["lr"] == s2["param_groups"][0]["lr"]
