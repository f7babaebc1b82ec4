"""bench/paper_difficulty.py on the tiny size: one knob changed and nothing else, the
ridge it scores is the one `rtdecode evaluate` reports for a checkpoint of the same
recipe, rows written as JSON and a PNG, an earlier run resumed, bad input named."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import paper_difficulty as pd  # noqa: E402  (bench/paper_difficulty.py)

from rtdecode.data.simulate.cohort import DIFFICULTIES  # noqa: E402


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    """One tiny simulation at modulation_nam = 20, scored; its folder is kept."""
    root = tmp_path_factory.mktemp("paper-difficulty")
    out = root / "curve.json"
    result = pd.run([20.0], size="tiny", json_out=out, png_out=root / "curve.png",
                    work=root / "work", progress=False)
    return root, out, result


def test_difficulty_with_changes_one_knob_only():
    base = DIFFICULTIES["paper"]
    changed = pd.difficulty_with(base, "modulation_nam", 31)
    assert changed.sources.modulation_nam == 31.0
    assert dataclasses.replace(changed.sources, modulation_nam=base.sources.modulation_nam) == base.sources
    jitter = pd.difficulty_with(base, "jitter_s", 0.05)
    assert jitter.jitter_s == 0.05 and jitter.sources == base.sources
    assert pd.difficulty_with(base, "n_background", 32.0).n_background == 32


def test_unknown_knob_and_stream_recipe_are_named():
    with pytest.raises(ValueError, match="Unknown knob 'loudness'.*modulation_nam"):
        pd.difficulty_with(DIFFICULTIES["paper"], "loudness", 1.0)
    with pytest.raises(ValueError, match="window_sampling"):
        pd.ridge_retrieval("/nonexistent", {"window_sampling": "stream"})


def test_registered_difficulty_is_removed_afterwards():
    diff = dataclasses.replace(DIFFICULTIES["paper"], name="paper-probe")
    with pd.registered(diff) as name:
        assert DIFFICULTIES[name] is diff
    assert "paper-probe" not in DIFFICULTIES
    with pytest.raises(ValueError, match="exists already"), pd.registered(DIFFICULTIES["paper"]):
        pass


def test_rows_json_and_png_are_written(tuned):
    root, out, result = tuned
    saved = json.loads(out.read_text())
    assert [r["value"] for r in saved["rows"]] == [20.0]
    row = saved["rows"][0]
    assert row["n_test_images"] == 4 and row["chance_top5"] == 1.0
    assert row["n_test_trials"] == 3 * 4  # tiny: 3 sessions, each shows every test image
    assert 0.0 <= row["average_top1"] <= row["average_top5"] <= 1.0
    assert saved["seed"] == pd.TUNING_SEED != 1
    assert saved["base_difficulty"]["name"] == "paper"
    assert (root / "curve.png").stat().st_size > 1000
    sim = json.loads((root / "work" / "sim" / "simulation.json").read_text())
    assert sim["difficulty"]["sources"]["modulation_nam"] == 20.0
    assert "paper-modulation_nam-20" not in DIFFICULTIES


def test_ridge_equals_evaluate_on_a_checkpoint_of_the_recipe(tuned, tmp_path):
    from rtdecode.training.encoder import train
    from rtdecode.training.evaluate import evaluate

    root, _, result = tuned
    data = root / "work" / "sim"
    ckpt = train(data, tmp_path / "ridge", preset="ridge", recipe=pd.DEFAULT_RECIPE,
                 progress=False)
    report = evaluate(ckpt, data, time_resolved=False, progress=False)
    ours = pd.ridge_retrieval(data, pd.DEFAULT_RECIPE)
    theirs = report["retrieval"]["ridge"]["test"]
    for mode in ("single", "average"):
        for metric in ("top1", "top5", "median_rank"):
            assert ours[mode][metric] == pytest.approx(theirs[mode][metric], abs=1e-9), (mode, metric)
    assert ours["alpha"] == report["retrieval"]["ridge"]["alpha"]
    assert result["rows"][0]["single_top1"] == pytest.approx(ours["single"]["top1"])


def test_resume_keeps_earlier_rows(tuned, monkeypatch):
    root, out, _ = tuned

    def no_simulation(*args, **kwargs):
        raise AssertionError("a row of the earlier run was measured again")

    monkeypatch.setattr(pd, "measure", no_simulation)
    again = pd.run([20.0], size="tiny", json_out=out, resume=True, progress=False)
    assert [r["value"] for r in again["rows"]] == [20.0]
    # the knob's own value in the base difficulty does not matter; another seed does
    paper = DIFFICULTIES["paper"]
    monkeypatch.setitem(DIFFICULTIES, "paper", pd.difficulty_with(paper, "modulation_nam", 99))
    assert len(pd.run([20.0], size="tiny", json_out=out, resume=True, progress=False)["rows"]) == 1
    with pytest.raises(ValueError, match=r"other settings \(seed\)"):
        pd.run([20.0], size="tiny", seed=12, json_out=out, resume=True, progress=False)


def test_value_at_target_from_a_rising_curve():
    rows = [{"value": v, "average_top5": p} for v, p in ((5, 0.04), (10, 0.09), (20, 0.2))]
    at = pd.value_at(rows, 0.10)
    assert 10 < at < 20
    assert pd.value_at(rows[:1]) is None
    falling = [{"value": v, "average_top5": p} for v, p in ((5, 0.2), (10, 0.1))]
    assert pd.value_at(falling) is None
