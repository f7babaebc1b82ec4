"""`rtdecode calibrate`: a new subject added to a trained encoder from its first minutes.

The tiny two-subject cohort: an encoder trained on sub-01 (Neuromag) only is calibrated to
sub-02 (CTF, a sensor system it has never read) from the first two sessions' minutes.
With the trunk frozen (``--trunk-lr-scale 0``) the calibrated subject decodes its
held-out third session above chance, the subject the encoder already knew decodes
exactly as before, and the checkpoint loads in the service's load path and runs live.
With the trunk fine-tuned too (the default), the checkpoint holds the new subject alone,
and it decodes too.
"""

from __future__ import annotations

import numpy as np
import pytest

from tests.helpers.cohorts import held_out_top1, tiny_cohort


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return tiny_cohort(tmp_path_factory.mktemp("sim"))


@pytest.fixture(scope="module")
def base(cohort, tmp_path_factory):
    from rtdecode.training.encoder import train

    return train(cohort, tmp_path_factory.mktemp("base") / "ckpt", preset="demo", subjects=["01"],
                 max_epochs=20, device="cpu", progress=False,
                 recipe={"batch_size": 32, "val_fraction": 0.0, "lag_min_s": 0.1, "lag_max_s": 0.8})


@pytest.fixture(scope="module")
def calibrated(cohort, base, tmp_path_factory):
    from rtdecode.cli import main
    from rtdecode.data.recordings import read_recording

    first_two = sorted(cohort.glob("sub-02/ses-0[12]/meg/*_meg.fif"))
    minutes = sum(read_recording(p).raw.n_times / read_recording(p).sfreq_hz
                  for p in first_two) / 60.0
    out = tmp_path_factory.mktemp("calibrated") / "ckpt"
    assert main(["calibrate", str(base), "--data", str(cohort), "--subject", "02",
                 "--minutes", f"{minutes:.4f}", "--out", str(out), "--device", "cpu",
                 "--lr", "3e-3", "--trunk-lr-scale", "0"]) == 0
    return out, minutes


@pytest.fixture(scope="module")
def fine_tuned(cohort, base, calibrated, tmp_path_factory):
    from rtdecode.training.calibrate import calibrate

    out = tmp_path_factory.mktemp("fine_tuned") / "ckpt"
    return calibrate(base, cohort, "02", calibrated[1], out, device="cpu", progress=False)


def test_first_minutes_follow_recording_time():
    from rtdecode.training.calibrate import first_minutes

    keep = first_minutes(np.array([0, 0, 1, 1]), np.array([10.0, 55.0, 5.0, 70.0]),
                         [60.0, 120.0], minutes=1.5, end_s=1.0)
    # recording 1 starts at 60 s: its trials end at 66 s and 131 s
    assert keep.tolist() == [True, True, True, False]


def test_bad_calibration_options_are_named(tmp_path):
    from rtdecode.contracts import ParameterError
    from rtdecode.training.calibrate import calibrate

    for option, value in (("minutes", 0.0), ("max_epochs", 0), ("samples_per_epoch", 1),
                          ("head_lr_scale", -1.0)):
        kwargs = {"minutes": 1.0, option: value}
        with pytest.raises(ParameterError, match=option):
            calibrate(tmp_path / "ckpt", tmp_path, "02", out_dir=tmp_path / "out", **kwargs)


def test_calibration_uses_only_the_first_minutes(cohort, calibrated):
    from rtdecode.encoder import load_checkpoint

    out, minutes = calibrated
    model, meta = load_checkpoint(out)
    info = meta["provenance"]["calibration"]
    assert info["subject"] == "sub-02" and info["minutes"] == pytest.approx(minutes, abs=1e-3)
    assert [p.split("/")[-3] for p in info["recordings"]] == ["ses-01", "ses-02"]
    assert all("sub-02" in p for p in info["recordings"])
    assert info["n_trials"] > 10
    assert info["samples_per_epoch"] == min(info["n_windows"], 2048)
    assert len(info["history"]) == info["max_epochs"]
    assert meta["subjects"] == ["sub-01", "sub-02"]
    assert model.config.n_systems == 2 and model.config.subject_system == (0, 1)
    assert len(meta["systems"][1]["ch_names"]) < 306
    from rtdecode.training.calibrate import calibrate

    with pytest.raises(ValueError, match="already knows subject"):
        calibrate(out, cohort, "02", 1.0, out.parent / "again", progress=False)


def test_calibrated_subject_decodes_its_held_out_session(cohort, calibrated):
    # Session 3 is after the calibration minutes; one decision per trial.
    r = held_out_top1(cohort, calibrated[0], "02")
    assert r["n"] >= 12 and r["n_candidates"] >= 4
    assert r["top1"] >= r["threshold"], (r["top1"], r["threshold"], r["n"])


def test_evaluate_scores_only_the_subjects_asked_for(cohort, calibrated, capsys):
    from rtdecode.training.evaluate import evaluate

    out, _ = calibrated
    both = evaluate(out, cohort, time_resolved=False, progress=False)
    new = evaluate(out, cohort, subjects=["02"], curve_range_s=(0.1, 0.5), progress=False)
    assert both["n_test_trials"] == 2 * 3 * 4 and new["n_test_trials"] == 3 * 4  # sub-02's
    assert new["n_train_trials"] == 3 * 16
    curve = new["time_resolved"]
    ranks = curve["model"]["single_median_rank"]
    assert len(ranks) == len(curve["offsets_s"]) == len(curve["model"]["single_top5"])
    assert all(1.0 <= r <= new["n_test_images"] for r in ranks)
    with pytest.raises(ValueError, match="calibrate"):
        evaluate(out, cohort, subjects=["05"], time_resolved=False, progress=False)
    from rtdecode.cli import main

    # the flag reaches the library, whose error the command line prints
    assert main(["evaluate", str(out), "--data", str(cohort), "--subjects", "05"]) == 2
    assert "calibrate" in capsys.readouterr().err


def test_a_fine_tuned_trunk_gives_a_checkpoint_of_the_new_subject_alone(cohort, fine_tuned):
    from rtdecode.encoder.checkpoint import open_checkpoint
    from rtdecode.training.calibrate import CALIBRATION_TRUNK_LR_SCALE

    model, card = open_checkpoint(fine_tuned)
    assert card.subjects == ("sub-02",) and model.config.n_subjects == 1
    assert len(card.systems) == 1 and card.systems[0].subjects == ("sub-02",)
    assert model.config.n_systems == 1 and len(card.systems[0].ch_names) < 306  # CTF's own
    info = card.provenance["calibration"]
    assert info["trunk_lr_scale"] == CALIBRATION_TRUNK_LR_SCALE > 0  # the default
    assert info["subjects_left_out"] == ["sub-01"]
    r = held_out_top1(cohort, fine_tuned, "02")
    assert r["top1"] >= r["threshold"], (r["top1"], r["threshold"], r["n"])
    with pytest.raises(ValueError, match="left out of this checkpoint.*trunk-lr-scale 0"):
        held_out_top1(cohort, fine_tuned, "01")  # sub-01 would be served changed


def test_known_subject_is_unchanged(cohort, base, calibrated):
    before = held_out_top1(cohort, base, "01")["per_trial"]
    after = held_out_top1(cohort, calibrated[0], "01")["per_trial"]
    np.testing.assert_allclose(after, before, atol=1e-5)


def test_calibrated_checkpoint_loads_in_the_service_and_runs_live(cohort, calibrated):
    from rtdecode.config import Settings
    from rtdecode.service import Service
    from rtdecode.training.online import evaluate_online

    out, _ = calibrated
    service = Service(Settings(model=out, subject="02", decoder="none", gallery=cohort / "images"))
    decoding = service._open_decoding()
    card = decoding.card
    assert list(decoding.preprocessor.ch_names) == list(card.systems[1].ch_names)
    assert decoding.system is card.systems[1] and card.subjects[decoding.subject] == "sub-02"
    assert decoding.image_decoder is None and len(decoding.retrieval.ids) > 0
    report = evaluate_online(out, cohort / "replay" / "sub-02_task-main_replay_raw.fif",
                             subject="02", retrieval_set="all", speed=4.0, progress=False)
    assert report["parity"]["max_rel_err"] < 1e-5 and report["parity"]["ranks_equal"]
