"""One encoder over a mixed cohort: a Neuromag and a CTF subject of the simulator.

`rtdecode train` on the tiny two-subject cohort (sub-01 Neuromag 306, sub-02 CTF) with its
third session held out: the checkpoint keeps each system's channels, positions and
preprocessing; the held-out trials of each system decode above chance; each subject's
replayed stream goes through the live path (the service's worker) with that subject's
channels, and equals the offline windows; padding a subject's window to another system's
channel count changes nothing.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.helpers.cohorts import held_out_top1, held_out_windows, tiny_cohort

RECIPE = """
batch_size = 32
val_fraction = 0.0
lag_min_s = 0.1
lag_max_s = 0.8
"""


def link_sessions(src: Path, dst: Path, sessions: tuple[str, ...]) -> Path:
    """A dataset folder holding only ``sessions`` of every subject (files linked, not copied)."""
    for name in ("images", "dataset_description.json", "participants.tsv"):
        (dst / name).parent.mkdir(parents=True, exist_ok=True)
        (dst / name).symlink_to(src / name)
    for f in sorted(src.glob("sub-*/ses-*/meg/*")):
        if f.parts[-3] in sessions:
            target = dst / f.relative_to(src)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(f)
    return dst


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return tiny_cohort(tmp_path_factory.mktemp("sim"))


@pytest.fixture(scope="module")
def mixed(cohort, tmp_path_factory):
    """The demo preset trained on sessions 1-2 of both subjects, through the command line."""
    from rtdecode.cli import main

    root = tmp_path_factory.mktemp("mixed")
    data = link_sessions(cohort, root / "data", ("ses-01", "ses-02"))
    recipe = root / "recipe.toml"
    recipe.write_text(RECIPE)
    out = root / "ckpt"
    assert main(["train", "--data", str(data), "--out", str(out), "--preset", "demo",
                 "--config", str(recipe), "--max-epochs", "20", "--device", "cpu"]) == 0
    return out


def test_checkpoint_keeps_each_system(mixed):
    from rtdecode.encoder import load_checkpoint
    from rtdecode.signal import Preprocessor

    model, meta = load_checkpoint(mixed)
    cfg = model.config
    assert meta["subjects"] == ["sub-01", "sub-02"]
    assert cfg.n_systems == 2 and cfg.subject_system == (0, 1) and cfg.n_channels == 306
    neuromag, ctf = meta["systems"]
    assert len(neuromag["ch_names"]) == 306 and neuromag["ch_names"][0].startswith("MEG")
    assert 250 < len(ctf["ch_names"]) < 306 and ctf["ch_names"][0].startswith("M")
    assert not set(neuromag["ch_names"]) & set(ctf["ch_names"])
    for system in meta["systems"]:
        pre = Preprocessor.from_dict(system["preprocess"])
        assert pre.fitted and list(pre.ch_names) == system["ch_names"]
        assert len(system["positions"]) == len(system["ch_names"])
    assert neuromag["subjects"] == ["sub-01"] and ctf["subjects"] == ["sub-02"]
    # Older readers of the top-level keys see system 0 (Neuromag) unchanged.
    assert meta["ch_names"] == neuromag["ch_names"]


@pytest.mark.parametrize("subject", ["01", "02"])
def test_held_out_trials_of_each_system_decode_above_chance(cohort, mixed, subject):
    # Session 3 was never trained on; one decision per trial (the mean over its windows).
    r = held_out_top1(cohort, mixed, subject)
    assert r["n_channels"] == (306 if subject == "01" else len(_meta(mixed)["systems"][1]["ch_names"]))
    assert r["n"] >= 12 and r["n_candidates"] >= 4
    assert r["top1"] >= r["threshold"], (subject, r["top1"], r["threshold"], r["n"])


def _meta(ckpt):
    from rtdecode.encoder import read_config

    return read_config(ckpt)


def test_a_window_does_not_change_when_batched_with_another_system(cohort, mixed):
    from rtdecode.encoder import load_checkpoint
    from rtdecode.training.encoder import predict

    model, meta = load_checkpoint(mixed)
    views = [load_checkpoint(mixed, subject=s)[1] for s in ("01", "02")]
    windows = [held_out_windows(cohort, view)[1][:6] for view in views]
    alone = [predict(model, X, np.full(len(X), v["subject_index"]))["clip"]
             for X, v in zip(windows, views, strict=True)]
    batch = np.zeros((12, 306, windows[0].shape[2]), np.float32)
    batch[0::2] = windows[0]
    batch[1::2, : windows[1].shape[1]] = windows[1]
    mixed_out = predict(model, batch, np.tile([0, 1], 6))["clip"]
    np.testing.assert_allclose(mixed_out[0::2], alone[0], atol=1e-5)
    np.testing.assert_allclose(mixed_out[1::2], alone[1], atol=1e-5)


@pytest.mark.parametrize("subject", ["01", "02"])
def test_each_subject_stream_goes_through_the_live_path(cohort, mixed, subject, tmp_path):
    from rtdecode.training.online import evaluate_online

    replay = cohort / "replay" / f"sub-{subject}_task-main_replay_raw.fif"
    report = evaluate_online(mixed, replay, subject=subject, retrieval_set="all", speed=4.0,
                             progress=False)
    parity = report["parity"]
    assert parity["n_windows"] >= 100
    assert parity["max_rel_err"] < 1e-5 and parity["ranks_equal"]
    assert report["n_ranked"] > 0


def test_unknown_subject_names_calibrate_and_subjects_flag_restricts(cohort, mixed, tmp_path):
    from rtdecode.cli import main
    from rtdecode.encoder import load_checkpoint
    from rtdecode.training.encoder import default_out_dir

    with pytest.raises(ValueError, match="rtdecode calibrate"):
        load_checkpoint(mixed, subject="03")
    data = link_sessions(cohort, tmp_path / "data", ("ses-01",))
    # No --out: the checkpoint goes to the dataset's derivatives.
    assert main(["train", "--data", str(data), "--preset", "test", "--max-epochs", "1",
                 "--subjects", "02", "--device", "cpu"]) == 0
    model, meta = load_checkpoint(default_out_dir(data))
    assert default_out_dir(data) == data / "derivatives" / "rtdecode" / "encoder"
    assert meta["subjects"] == ["sub-02"] and "systems" not in meta
    assert model.config.n_systems == 1 and model.config.n_channels == len(meta["ch_names"]) < 306


def test_evaluate_scores_the_subjects_of_both_systems(cohort, mixed):
    from rtdecode.training.evaluate import evaluate

    report = evaluate(mixed, cohort, time_resolved=False, progress=False)
    # each system's subjects read with its own channels; one ridge per system
    assert len(report["retrieval"]["ridge"]["alpha"]) == 2
    n_sessions, n_test_images = 3, report["n_test_images"]
    assert report["n_test_trials"] == 2 * n_sessions * n_test_images
    assert 0 <= report["retrieval"]["model"]["gallery"]["single"]["top5"] <= 1
