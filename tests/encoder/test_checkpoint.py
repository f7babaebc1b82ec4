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


# --------------------------------------------------------------------------- the card
def test_open_checkpoint_gives_the_model_and_a_typed_frozen_card(ckpt):
    import dataclasses

    from rtdecode.encoder.card import CheckpointCard
    from rtdecode.encoder.checkpoint import open_checkpoint

    folder, model = ckpt
    loaded, card = open_checkpoint(folder)
    assert isinstance(card, CheckpointCard) and card.folder == folder
    assert card.architecture == model.config
    assert card.ch_names == tuple(f"MEG{i}" for i in range(8)) and len(card.systems) == 1
    assert card.system.positions.shape == (8, 2) and card.system.positions_3d.shape == (8, 3)
    assert card.system.sfreq_in_hz == 1000.0 and card.sfreq_model_hz == 120.0
    assert card.clamp == 20.0 and card.subjects == ("sub-01", "sub-02")
    # an offsets table with only window_start_s: one fixed window (checkpoints before streaming)
    assert (card.window.length_s, card.window.start_s, card.window.sampling) == (0.1, 0.05, "fixed")
    assert card.target.name == "handcrafted" and card.target.dim == 8
    assert card.target.encoder == "handcrafted" and card.target.readout == "cls"  # defaults
    np.testing.assert_array_equal(card.target.stats["std"], np.ones(8))
    assert card.provenance == {"data": "/tmp/x"} and card.test_images == ()
    with pytest.raises(dataclasses.FrozenInstanceError):
        card.subjects = ()
    for a, b in zip(model.state_dict().values(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_the_card_names_its_subjects_and_their_systems(ckpt):
    from rtdecode.contracts import ParameterError
    from rtdecode.encoder.checkpoint import open_checkpoint

    _, card = open_checkpoint(ckpt[0])
    assert card.subject_position("02") == 1 == card.subject_index("sub-02")
    assert card.subject_name(1) == "sub-02" and card.system_of(1) is card.system
    with pytest.raises(ParameterError, match="trained on 2 subjects") as bad:
        card.subject_index(None)
    assert bad.value.parameter == "subject"
    with pytest.raises(ValueError, match="rtdecode calibrate"):
        card.subject_index("09")


def test_a_card_saved_again_reads_the_same(ckpt, tmp_path):
    from rtdecode.encoder.card import CheckpointCard
    from rtdecode.encoder.checkpoint import open_checkpoint

    folder, model = ckpt
    _, card = open_checkpoint(folder)
    again = save_checkpoint(tmp_path / "again", model, card.replace(test_images=("x",)).to_meta())
    _, card2 = open_checkpoint(again)
    assert card2.to_config() == {**card.to_config(), "test_images": ["x"]}
    assert CheckpointCard.from_config(card2.to_config()).to_config() == card2.to_config()


def test_old_configs_get_the_documented_defaults(ckpt):
    from rtdecode.encoder.card import CheckpointCard

    config = read_config(ckpt[0])
    for key in ("offsets", "target_stats", "provenance", "clamp", "sfreq_model_hz"):
        del config[key]
    config["target"] = {"name": "handcrafted-v1"}
    card = CheckpointCard.from_config(config)
    assert (card.window.start_s, card.window.sampling) == (0.0, "stream")
    assert card.target.stats is None and card.target.encoder == "handcrafted"
    assert card.target.labels is None and card.target.gallery is None
    assert card.provenance == {} and card.clamp is None and card.sfreq_model_hz is None
    assert card.recipe == {} and card.gallery_dir is None


@pytest.mark.parametrize("folder", ["models/demo/encoder", "models/n170/encoder"])
def test_the_bundled_checkpoints_open(folder):
    from pathlib import Path

    from rtdecode.encoder.checkpoint import open_checkpoint

    path = Path(__file__).resolve().parents[2] / folder
    model, card = open_checkpoint(path)
    assert card.folder == path and card.architecture == model.config
    assert len(card.ch_names) == model.config.n_channels
    assert card.system.preprocessor().config.ch_names == card.ch_names
    assert card.window.sampling == ("stream" if "demo" in folder else "fixed")
    assert card.test_images and card.target.name and card.recipe
    assert card.gallery_dir.is_absolute()  # relative to the checkpoint folder
