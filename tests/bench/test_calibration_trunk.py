"""bench/calibration_trunk.py on the tiny cohort: each trunk fraction is calibrated from
the first minutes and scored on the validation view (training images of the subject's
last recording, never a test image); the best fraction is reported, the JSON written,
minutes that reach the validation recording refused."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import calibration_trunk as ct  # noqa: E402  (bench/calibration_trunk.py)

from tests.helpers.cohorts import tiny_cohort  # noqa: E402

RECIPE = {"preset": "test", "batch_size": 32, "val_fraction": 0.0, "lag_min_s": 0.1,
          "lag_max_s": 0.5, "max_epochs": 2}


@pytest.fixture(scope="module")
def selection(tmp_path_factory):
    from rtdecode.training.encoder import train

    root = tmp_path_factory.mktemp("trunk")
    cohort = tiny_cohort(root / "sim")
    base = train(cohort, root / "base", recipe=RECIPE, subjects=["01"], device="cpu",
                 progress=False)
    out = root / "calibration_trunk.json"
    result = ct.run(base, cohort, "02", minutes=0.5, scales=[0.0, 0.1], work=root / "work",
                    json_out=out, device="cpu", progress=False)
    return cohort, base, out, result


def test_each_fraction_is_scored_on_training_images_of_the_last_recording(selection):
    cohort, _, out, result = selection
    rows = result["rows"]
    assert [r["trunk_lr_scale"] for r in rows] == [0.0, 0.1]
    n_val = result["n_validation_trials"]
    for r in rows:
        assert r["n_trials"] == n_val and r["n_images"] <= n_val
        assert 0.0 <= r["top1"] <= r["top5"] <= 1.0 and 1.0 <= r["median_rank"] <= r["n_images"]
    test_images = {r["image_id"] for t in cohort.glob("sub-02/ses-*/meg/*_events.tsv")
                   for r in _table(t) if r["trial_type"] == "test"}
    scored = {r["image_id"] for t in (out.parent / "work" / "view-validation").glob(
        "sub-*/ses-*/meg/*_events.tsv") for r in _table(t) if r["trial_type"] == "test"}
    assert test_images and len(scored) == r["n_images"] and not test_images & scored
    best = max(r["top5"] for r in rows)
    assert result["best"] == min(r["trunk_lr_scale"] for r in rows if r["top5"] == best)
    saved = json.loads(out.read_text())
    assert [r["top5"] for r in saved["rows"]] == [r["top5"] for r in rows]
    assert saved["best"] == result["best"] and saved["minutes"] == 0.5
    assert saved["rows"][0]["checkpoint"].startswith("$TMPDIR/")


def _table(tsv: Path) -> list[dict[str, str]]:
    import csv

    with tsv.open(newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def test_minutes_reaching_the_validation_recording_are_refused(selection):
    cohort, base, _, _ = selection
    with pytest.raises(ValueError, match="last recording"):
        ct.run(base, cohort, "02", minutes=60.0, scales=[0.0], progress=False)
