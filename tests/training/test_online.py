"""``rtdecode evaluate-online``: a recording replayed through the live path (loopback LSL,
reader, windower, worker) gives the same embeddings and ranks as the offline path on the
same windows, and a per-lag curve."""

from __future__ import annotations

import json

import pytest

from rtdecode.training.online import evaluate_online
from tests.helpers.service import build_tiny_model


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory)


def test_online_equals_offline_on_the_same_windows(tiny_model, tmp_path):
    data, ckpt = tiny_model
    report = evaluate_online(
        ckpt, data / "replay_raw.fif", retrieval_set="all", speed=4.0,
        json_out=tmp_path / "online.json", plots_dir=tmp_path, progress=False,
    )
    parity = report["parity"]
    # 8 s of data, a window every 50 ms once 0.75 s of history and window are in
    assert parity["n_windows"] >= 100
    assert parity["max_rel_err"] < 1e-5
    assert parity["ranks_equal"]
    # A marker that reaches the service after the data of a window starting at its onset
    # leaves that window with the previous stimulus: rare, and counted.
    assert parity["n_late_marker_windows"] <= 0.05 * parity["n_windows"]
    assert report["n_ranked"] > 0
    rows = report["per_lag"]
    assert sum(r["n"] for r in rows) == report["n_ranked"]
    # The online and offline curves differ only by the late windows: without them they
    # are equal (always checked), and with none late the whole curves are.
    late = parity["late_marker_windows"]
    assert len(late) == parity["n_late_marker_windows"]
    assert parity["lags_equal"] == (not late)
    assert all(w["lag_online_s"] != w["lag_offline_s"] for w in late)
    on_time = parity["per_lag_on_time"]
    assert on_time == parity["offline_per_lag_on_time"]
    assert sum(r["n"] for r in on_time) >= report["n_ranked"] - len(late)
    assert sum(r["n"] for r in report["offline_per_lag"]) - sum(r["n"] for r in on_time) <= len(late)
    if not late:
        assert report["offline_per_lag"] == rows == on_time
    assert all(0 <= r["lag_s"] < 1.55 and 1 <= r["median_rank"] <= report["n_candidates"]
               for r in rows)
    assert report["chance_top5"] == pytest.approx(min(5, report["n_candidates"]) / report["n_candidates"])
    on_disk = json.loads((tmp_path / "online.json").read_text())
    assert on_disk["parity"] == parity and set(on_disk) >= {"per_lag", "chance_top5", "n_candidates"}
    assert (tmp_path / "online_curve.png").stat().st_size > 1000


def test_evaluate_online_cli(tiny_model, tmp_path, capsys):
    from rtdecode.cli import main

    data, ckpt = tiny_model
    assert main(["--lsl-local", "evaluate-online", str(ckpt), "--recording",
                 str(data / "replay_raw.fif"), "--retrieval-set", "all", "--speed", "8",
                 "--json", str(tmp_path / "r.json")]) == 0
    out = capsys.readouterr().out
    assert "online = offline on" in out and "ranks equal: True" in out
    with pytest.raises(ValueError, match="speed=0"):
        evaluate_online(ckpt, data / "replay_raw.fif", speed=0)


def test_online_equals_offline_with_smoothing(tiny_model, tmp_path):
    # evaluate-online --smooth-s: the offline side integrates the offline predictions of
    # the same windows in the same order, so every rank still compares.
    data, ckpt = tiny_model
    report = evaluate_online(ckpt, data / "replay_raw.fif", retrieval_set="all", speed=4.0,
                             progress=False, smooth_s=0.2)
    parity = report["parity"]
    assert report["smooth_s"] == 0.2 and parity["n_windows"] >= 100
    assert parity["max_rel_err"] < 1e-5 and parity["ranks_equal"]
    assert parity["per_lag_on_time"] == parity["offline_per_lag_on_time"]
