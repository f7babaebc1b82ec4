"""Time-resolved sweeps: one model per window position, through submitit, resumable."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from rtdecode.cli import main
from rtdecode.training.sweeps import (
    SweepSettings,
    init_sweep,
    make_executor,
    run_sweep,
    time_resolved,
    window_positions,
    write_prepared,
)

torch.set_num_threads(1)

# 8 positions of 100 ms over -0.2 .. 0.6 s: a sweep of the tiny subject stays short.
TINY = {"window_s": 0.1, "stride_s": 0.1, "tmin_s": -0.2, "tmax_s": 0.6}
DEEP = {"preset": "test", "max_epochs": 2, "batch_size": 8}


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    from rtdecode.data.simulate import simulate_subject

    return simulate_subject(tmp_path_factory.mktemp("sweep") / "subject", seed=1, size="tiny",
                            progress=False)


@pytest.fixture(scope="module")
def swept(tiny_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("sweep") / "out"
    first = time_resolved(tiny_data, out, executor="debug", recipe=DEEP, progress=False, log=None,
                          **TINY)
    return out, first


def test_debug_executor_runs_every_position_and_reports(swept):
    out, first = swept
    report = json.loads(first.json_path.read_text())
    assert first.ran == list(range(8)) and first.skipped == [] and first.failed == {}
    assert [p["end_s"] for p in report["positions"]] == pytest.approx(
        [-0.1, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    assert [p["start_s"] for p in report["positions"]] == pytest.approx(
        [-0.2, -0.1, 0.0, 0.1, 0.2, 0.3, 0.4, 0.5])
    assert report["n_positions"] == report["n_done"] == 8
    for pos in report["positions"]:
        assert set(pos["models"]) == {"deep", "ridge"}
        assert pos["n_times"] == 12  # 100 ms at 120 Hz
        for m in pos["models"].values():
            assert 0 <= m["single"]["top1"] <= m["single"]["top5"] <= 1
            assert m["single"]["n_queries"] == report["data"]["n_test_trials"]
            assert m["single"]["n_candidates"] == report["data"]["n_test_images"]
        assert pos["models"]["deep"]["n_epochs"] <= DEEP["max_epochs"]
        assert pos["pid"] == os.getpid()  # debug runs in this process
    for m in ("deep", "ridge"):
        assert len(report["curves"][m]["single_top5"]) == 8
        assert report["peak"][m]["end_s"] in report["curves"][m]["end_s"]
    assert report["chance"]["top1"] == pytest.approx(1 / report["data"]["n_test_images"])
    assert report["settings"]["recipe"]["preset"] == "test"
    assert first.png_path.stat().st_size > 10_000


def test_rerun_resumes_and_reruns_only_a_deleted_position(swept, tiny_data):
    out, _ = swept
    files = sorted((out / "positions").glob("pos_*.json"))
    assert len(files) == 8
    stamps = {f.name: f.stat().st_mtime_ns for f in files}
    messages: list[str] = []
    again = time_resolved(tiny_data, out, executor="debug", recipe=DEEP, progress=False,
                          log=messages.append, **TINY)
    assert again.ran == [] and again.skipped == list(range(8))
    assert any("Reusing the prepared arrays" in m for m in messages)
    assert any("8 of 8 positions already done" in m for m in messages)
    (out / "positions" / "pos_003.json").unlink()
    third = run_sweep(out, executor="debug", progress=False, log=None)
    assert third.ran == [3] and len(third.skipped) == 7
    after = {f.name: f.stat().st_mtime_ns for f in sorted((out / "positions").glob("pos_*.json"))}
    assert after.keys() == stamps.keys()
    assert [n for n in after if after[n] != stamps[n]] == ["pos_003.json"]
    assert third.report["n_done"] == 8


def test_rerun_with_other_settings_is_refused(swept, tiny_data):
    out, _ = swept
    with pytest.raises(ValueError, match=r"other settings \(\['window_s'\] differ\)"):
        time_resolved(tiny_data, out, executor="debug", recipe=DEEP, progress=False, log=None,
                      **{**TINY, "window_s": 0.2})


def test_local_executor_runs_a_job_in_a_subprocess(swept, tmp_path):
    out, first = swept
    (out / "positions" / "pos_005.json").unlink()
    done = run_sweep(out, executor="local", positions=[5], progress=False, log=None, poll_s=0.2)
    assert done.ran == [5]
    result = json.loads((out / "positions" / "pos_005.json").read_text())
    assert result["pid"] != os.getpid()
    assert list((out / "jobs").glob("*/*_log.out")), "submitit wrote no job log"
    # the same arrays, the same seed: the subprocess reproduces the in-process result
    before = first.report["positions"][5]["models"]["ridge"]["single"]
    assert result["models"]["ridge"]["single"] == before


def test_slurm_executor_needs_slurm_and_carries_the_options(tmp_path, monkeypatch):
    with pytest.raises(RuntimeError, match="needs SLURM's srun and sbatch on PATH"):
        make_executor("slurm", tmp_path / "%j")
    # A login node: srun and sbatch on PATH. Nothing is submitted; the sbatch script that
    # submitit would submit is read back.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("srun", "sbatch"):
        (bin_dir / name).write_text("#!/bin/sh\nexit 1\n")
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    ex = make_executor("slurm", tmp_path / "%j", timeout_min=30, slurm_partition="gpu",
                       slurm_gpus=1, slurm_array_parallelism=4)
    script = ex._executor._make_submission_file_text("python -m job", "uid")
    for line in ("#SBATCH --partition=gpu", "#SBATCH --gpus-per-node=1", "#SBATCH --time=30",
                 "#SBATCH --job-name=rtdecode-time-resolved"):
        assert line in script
    assert ex._executor.parameters["array_parallelism"] == 4
    with pytest.raises(ValueError, match="executor='kubernetes' is unknown"):
        make_executor("kubernetes", tmp_path)


def _synthetic_sweep(out):
    """Epochs whose image signal is on only from 100 to 300 ms after onset (model rate)."""
    rng = np.random.default_rng(0)
    fs, st = 120.0, SweepSettings(window_s=0.1, stride_s=0.05, tmin_s=-0.2, tmax_s=0.6,
                                  models=("ridge",))
    n_times = int(round((st.tmax_s - st.tmin_s) * fs))
    t_newest = st.tmax_s - (n_times - 1 - np.arange(n_times)) / fs
    on = (t_newest > 0.1) & (t_newest <= 0.3)
    mixing = rng.normal(size=(8, 8))
    emb = {f"img{i}": rng.normal(size=8) for i in range(50)}

    def epochs(ids):
        y = np.stack([emb[i] for i in ids])
        return (y @ mixing.T)[:, :, None] * on + rng.normal(size=(len(ids), 8, n_times)), y

    train_ids = [f"img{i}" for i in range(30)] * 4
    test_ids = [f"img{i}" for i in range(30, 50)] * 2
    X_train, Y_train = epochs(train_ids)
    X_test, _ = epochs(test_ids)
    candidates = sorted(set(test_ids))
    init_sweep(out, st)
    write_prepared(out, st, {
        "X_train": X_train, "X_test": X_test, "Y_train": Y_train,
        "Y_candidates": np.stack([emb[i] for i in candidates]), "groups_train": train_ids,
        "ids_test": test_ids, "ids_candidates": candidates,
        "positions_2d": rng.uniform(size=(8, 2)),
    }, sfreq_model_hz=fs)
    return run_sweep(out, executor="debug", progress=False, log=None)


def test_windows_see_the_signal_exactly_where_it_is(tmp_path):
    # The tiny subject has 4 test images (top-5 chance 1.0, 12 trials): too few to show
    # a curve. Arrays with a known response window check the time alignment instead.
    report = _synthetic_sweep(tmp_path / "syn").report
    curve = report["curves"]["ridge"]
    ends = np.asarray(curve["end_s"])
    top5 = np.asarray(curve["single_top5"])
    chance = report["chance"]["top5"]
    assert chance == pytest.approx(0.25)
    inside = (ends > 0.1 + 1e-9) & (ends - 0.1 < 0.3 - 1e-9)  # windows overlapping the response
    assert inside.sum() == 5 and np.all(top5[inside] >= 0.9)
    assert np.all(top5[~inside] <= chance + 0.2)  # 40 trials: chance +- 0.07 (1 sd)
    assert abs(top5[ends <= 0.1].mean() - chance) < 0.1  # before the response: chance
    assert 0.1 < report["peak"]["ridge"]["end_s"] <= 0.4


def test_window_positions_round_to_the_model_grid():
    st = SweepSettings(window_s=0.1, stride_s=0.02, tmin_s=-0.2, tmax_s=1.0)
    pos = window_positions(st, 120.0)
    ends = np.array([p["end_s"] for p in pos])
    assert np.allclose(np.round((1.0 - ends) * 120), (1.0 - ends) * 120, atol=1e-3)  # on the grid
    assert np.all(np.diff(ends) > 0) and ends[0] == pytest.approx(-0.1, abs=1 / 120)
    assert ends[-1] == pytest.approx(1.0) and all(p["n_times"] == 12 for p in pos)
    with pytest.raises(ValueError, match="shorter than one 0.5 s window"):
        SweepSettings(window_s=0.5, tmin_s=0.0, tmax_s=0.3)
    with pytest.raises(ValueError, match="models"):
        SweepSettings(models=("svm",))


def test_cli_time_resolved(tiny_data, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["time-resolved", "--data", str(tiny_data), "--out", str(out), "--window-s", "0.1",
            "--stride-s", "0.3", "--tmin-s", "-0.2", "--tmax-s", "0.6", "--models", "ridge",
            "--executor", "debug"]
    assert main(argv + ["--every", "2"]) == 0  # 3 positions, every other one: 0 and 2
    printed = capsys.readouterr().out
    assert str(out / "time_resolved.png") in printed and str(out / "time_resolved.json") in printed
    report = json.loads((out / "time_resolved.json").read_text())
    assert list(report["curves"]) == ["ridge"] and report["n_done"] == 2
    assert [p["index"] for p in report["positions"]] == [0, 2]
    assert main(argv) == 0  # fills in the one left out
    assert "1 to run" in capsys.readouterr().out
    assert json.loads((out / "time_resolved.json").read_text())["n_done"] == 3
    assert main(["time-resolved", "--data", str(tmp_path / "missing"), "--out", str(out),
                 "--executor", "debug"]) == 2
    assert "does not exist" in capsys.readouterr().err
