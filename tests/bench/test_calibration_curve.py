"""bench/calibration_curve.py on the tiny cohort: a dataset view keeps exactly the first
minutes' training trials (calibrate's rule) and every test trial, each amount of data
gives a calibrated and a scratch model scored by `evaluate` on all the subject's test
trials, the JSON and PNG are written, an earlier run resumes, bad input is named."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import calibration_curve as cc  # noqa: E402  (bench/calibration_curve.py)

from tests.helpers.cohorts import tiny_cohort  # noqa: E402

#: A small, fast recipe (the ``test`` preset) for the base and the scratch models.
RECIPE = {"preset": "test", "batch_size": 32, "val_fraction": 0.25, "lag_min_s": 0.1,
          "lag_max_s": 0.5, "max_epochs": 2, "patience": 2}


def _rows(tsv: Path) -> list[dict[str, str]]:
    with tsv.open(newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    return tiny_cohort(tmp_path_factory.mktemp("sim"))


@pytest.fixture(scope="module")
def curve(cohort, tmp_path_factory):
    from rtdecode.training.encoder import train

    root = tmp_path_factory.mktemp("curve")
    base = train(cohort, root / "base", recipe=RECIPE, subjects=["01"], device="cpu",
                 progress=False)
    out = root / "calibration.json"
    result = cc.run(base, cohort, "02", minutes=[0.5, 1.0, None], recipe=RECIPE,
                    recipe_overrides={"samples_per_epoch": 64},
                    calibration_options={"max_epochs": 1}, target_minutes=1.0,
                    work=root / "work", json_out=out, png_out=root / "calibration.png",
                    device="cpu", progress=False)
    return root, base, out, result


def test_minutes_view_keeps_the_first_training_trials_and_every_test_trial(cohort, tmp_path):
    import numpy as np

    from rtdecode.training.calibrate import first_minutes

    paths, durations = cc.subject_recordings(cohort, "02")
    assert len(paths) == 3 and all(d > 0 for d in durations)
    view, n = cc.minutes_view(cohort, "02", tmp_path / "view", 0.9, end_s=0.5)
    tables = sorted(view.glob("sub-02/ses-*/meg/*_events.tsv"))
    assert [t.parent.parent.name for t in tables] == ["ses-01", "ses-02", "ses-03"]
    assert not (view / "sub-01").exists() and (view / "images").is_symlink()
    kept = [_rows(t) for t in tables]
    orig = [_rows(t) for t in sorted(cohort.glob("sub-02/ses-*/meg/*_events.tsv"))]
    for k, o in zip(kept, orig, strict=True):  # test and catch rows: all of them, unchanged
        assert [r for r in k if r["trial_type"] != "exp"] == [r for r in o if r["trial_type"] != "exp"]
    train = [(i, float(r["onset"])) for i, rows in enumerate(orig) for r in rows
             if r["trial_type"] == "exp"]
    expect = first_minutes(np.array([i for i, _ in train]), np.array([t for _, t in train]),
                           durations, 0.9, end_s=0.5)
    assert n == int(expect.sum()) == sum(r["trial_type"] == "exp" for rows in kept for r in rows)
    assert 0 < n < len(train)
    # the training rows kept are the earliest ones, in recording order
    assert [r for rows in kept for r in rows if r["trial_type"] == "exp"] == \
        [r for rows in orig for r in rows if r["trial_type"] == "exp"][:n]
    assert cc.minutes_view(cohort, "02", tmp_path / "none", 0.0, end_s=0.5)[1] == 0
    assert cc.minutes_view(cohort, "02", tmp_path / "all", None, end_s=0.5)[1] == len(train)


def test_validation_view_holds_the_last_recordings_training_trials_as_tests(cohort, tmp_path):
    view, n = cc.validation_view(cohort, "02", tmp_path / "val")
    tables = sorted(view.glob("sub-*/ses-*/meg/*_events.tsv"))
    assert [t.parent.parent.name for t in tables] == ["ses-03"]  # the last recording only
    orig = _rows(next(cohort.glob("sub-02/ses-03/meg/*_events.tsv")))
    kept = _rows(tables[0])
    assert n == sum(r["trial_type"] == "exp" for r in orig) > 0
    tests = [r for r in kept if r["trial_type"] == "test"]
    # no test image: the "test" rows are the training rows, relabelled, in order
    assert [{**r, "trial_type": "exp"} for r in tests] == [r for r in orig if r["trial_type"] == "exp"]
    assert [r for r in kept if r["trial_type"] not in ("test",)] == \
        [r for r in orig if r["trial_type"] not in ("exp", "test")]


def test_rows_follow_the_minutes_and_score_both_models(curve):
    _, _, _, result = curve
    rows = result["rows"]
    assert [r["label"] for r in rows] == ["0.5", "1", "all"]
    minutes = [r["minutes"] for r in rows]
    assert minutes == sorted(minutes) and len(set(minutes)) == 3
    assert minutes[-1] == pytest.approx(result["subject_minutes_total"], abs=1e-3)
    trials = [r["n_training_trials"] for r in rows]
    assert trials == sorted(trials) and trials[0] < trials[-1] == 3 * 16
    from rtdecode.training.encoder import load_recipe

    n_lags = len(load_recipe(RECIPE).lags_s)
    for r in rows:
        assert r["n_test_trials"] == 3 * 4 and r["n_test_images"] == 4  # all of sub-02's
        # calibrate's own count of the first minutes equals the view's
        assert r["calibration"]["n_trials"] == r["n_training_trials"]
        assert r["calibration"]["n_windows"] == r["n_training_trials"] * n_lags
        assert 1 <= r["scratch"]["best_epoch"] <= r["scratch"]["epochs_run"] <= RECIPE["max_epochs"]
        assert r["scratch"]["n_train_windows"] + r["scratch"]["n_val_windows"] == \
            r["n_training_trials"] * n_lags
        for method in ("calibration", "calibration_frozen", "scratch", "ridge"):
            m = r[method]
            assert 0.0 <= m["top1"] <= m["top5"] <= 1.0
            assert m["top5"] == max(m["curve"]["top5"])
            assert m["lag_s"] in m["curve"]["lag_s"]
            assert cc.CURVE_RANGE_S[0] + 0.25 - 1e-9 <= m["lag_s"] <= cc.CURVE_RANGE_S[1] + 1e-9
            assert 1.0 <= m["median_rank"] <= 4.0
    from rtdecode.encoder.checkpoint import open_checkpoint

    # the default calibration fine-tunes the trunk: the new subject alone; frozen: both
    assert open_checkpoint(rows[0]["calibration"]["checkpoint"])[1].subjects == ("sub-02",)
    assert open_checkpoint(rows[0]["calibration_frozen"]["checkpoint"])[1].subjects == \
        ("sub-01", "sub-02")
    ratio = result["ratios"]
    assert ratio["frozen_over_frozen_all"] == pytest.approx(
        rows[1]["calibration_frozen"]["top5"] / rows[2]["calibration_frozen"]["top5"])
    assert ratio["minutes"] == 1.0
    assert ratio["calibration_over_calibration_all"] == pytest.approx(
        rows[1]["calibration"]["top5"] / rows[2]["calibration"]["top5"])
    assert ratio["target"]["met"] == (ratio["calibration_over_calibration_all"] >= cc.TARGET_RATIO)


def test_json_and_png_are_written_with_portable_paths(curve):
    root, _, out, result = curve
    saved = json.loads(out.read_text())
    assert [r["label"] for r in saved["rows"]] == [r["label"] for r in result["rows"]]
    assert saved["recipe_overrides"] == {"samples_per_epoch": 64}
    assert saved["calibration_options"] == {"max_epochs": 1}
    assert saved["subject"] == "sub-02" and saved["base_subjects"] == ["sub-01"]
    assert saved["rows"][0]["calibration"]["checkpoint"].startswith("$TMPDIR/")
    assert (root / "calibration.png").stat().st_size > 1000


def test_resume_keeps_earlier_rows(cohort, curve, monkeypatch):
    root, base, out, _ = curve

    def no_measure(*args, **kwargs):
        raise AssertionError("a row of the earlier run was measured again")

    monkeypatch.setattr(cc, "measure", no_measure)
    again = cc.run(base, cohort, "02", minutes=[0.5, None], recipe=RECIPE,
                   recipe_overrides={"samples_per_epoch": 64},
                   calibration_options={"max_epochs": 1}, target_minutes=1.0,
                   work=root / "work", json_out=out, resume=True, device="cpu", progress=False)
    assert [r["label"] for r in again["rows"]] == ["0.5", "1", "all"]


def test_bad_input_is_named(cohort, curve):
    _, base, _, _ = curve
    with pytest.raises(ValueError, match="trained on sub-01"):
        cc.run(base, cohort, "01", minutes=[1.0], recipe=RECIPE, progress=False)
    with pytest.raises(ValueError, match="not a number"):
        cc.parse_minutes(["two"])
    with pytest.raises(ValueError, match="positive"):
        cc.parse_minutes(["-1"])
    with pytest.raises(ValueError, match="twice"):
        cc.parse_minutes(["2", "2.0"])
    assert cc.parse_minutes(["all", "10", "2"]) == [2.0, 10.0, None]
