"""bench/paper_ablation.py: each variant is the recipe with its own keys changed (a
``[model]`` table merged, not replaced), a finished run of the same recipe is not trained
again, and an unknown variant is named."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import paper_ablation as pa  # noqa: E402  (bench/paper_ablation.py)


def test_variants_change_only_their_keys():
    base = pa._recipe(pa.DEFAULT_RECIPE, {})
    for name, (changes, _) in pa.VARIANTS.items():
        got, want = pa._recipe(pa.DEFAULT_RECIPE, changes).to_dict(), base.to_dict()
        for key, value in changes.items():
            want[key] = {**want[key], **value} if isinstance(value, dict) else value
        assert got == want, name
    small = pa._recipe(pa.DEFAULT_RECIPE, {"model": {"hidden": 32}})
    assert small.model == {**base.model, "hidden": 32}
    shifts = pa._recipe(pa.DEFAULT_RECIPE, pa.VARIANTS["shifts"][0])
    assert base.window_start_s in [round(lag - shifts.window_s, 6) for lag in shifts.lags_s]


def test_a_finished_run_of_the_same_recipe_is_recognised(tmp_path):
    rc = pa._recipe(pa.DEFAULT_RECIPE, {})
    assert not pa._trained(tmp_path, rc)
    (tmp_path / "config.json").write_text(json.dumps({"provenance": {"recipe": rc.to_dict()}}))
    assert pa._trained(tmp_path, rc)
    assert not pa._trained(tmp_path, pa._recipe(pa.DEFAULT_RECIPE, pa.VARIANTS["small"][0]))


def test_unknown_variant_is_named(tmp_path):
    with pytest.raises(ValueError, match="Unknown variant 'huge'.*recipe"):
        pa.run_variant("huge", tmp_path, tmp_path)
