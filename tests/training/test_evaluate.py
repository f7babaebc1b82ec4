"""Evaluation: retrieval metrics, ridge baseline, time-resolved curve and plots."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from rtdecode._utils.paths import portable_paths
from rtdecode.training.evaluate import evaluate, retrieval_scores, ridge_baseline

torch.set_num_threads(1)


def test_retrieval_scores_single_average_and_distractors():
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(10, 16))
    ids = [f"img{i}" for i in range(10)]
    trial_ids = [ids[i] for i in np.repeat(np.arange(10), 4)]
    pred = emb[np.repeat(np.arange(10), 4)] + rng.normal(scale=2.0, size=(40, 16))
    small = retrieval_scores(pred, trial_ids, ids, emb)
    assert small["single"]["n_queries"] == 40 and small["average"]["n_queries"] == 10
    assert small["average"]["n_repetitions_mean"] == 4.0
    assert small["average"]["top1"] >= small["single"]["top1"]
    # Distractors can only push the true image down.
    distractors = rng.normal(size=(200, 16))
    big = retrieval_scores(pred, trial_ids, ids + [f"d{i}" for i in range(200)],
                           np.concatenate([emb, distractors]))
    assert big["single"]["top5"] <= small["single"]["top5"]
    assert big["single"]["n_candidates"] == 210
    perfect = retrieval_scores(emb, ids, ids, emb)
    assert perfect["single"]["top1"] == 1.0
    with pytest.raises(ValueError, match="not in the retrieval set"):
        retrieval_scores(emb[:1], ["nope"], ids, emb)


def test_ridge_recovers_a_linear_map():
    rng = np.random.default_rng(1)
    W = rng.normal(size=(6 * 5, 8))
    X = rng.normal(size=(300, 6, 5))
    Y = X.reshape(300, -1) @ W + 0.1 * rng.normal(size=(300, 8))
    X_test = rng.normal(size=(50, 6, 5))
    pred, alpha = ridge_baseline(X, Y, X_test)
    truth = X_test.reshape(50, -1) @ W
    assert pred.shape == (50, 8) and alpha > 0
    assert np.corrcoef(pred.ravel(), truth.ravel())[0, 1] > 0.99


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from rtdecode.data.simulate import simulate_subject
    from rtdecode.training.encoder import train

    root = tmp_path_factory.mktemp("eval")
    data = simulate_subject(root / "subject", seed=1, size="tiny", progress=False)
    ckpt = train(data, root / "ckpt", preset="test", max_epochs=2, recipe={"batch_size": 8},
                 progress=False)
    return data, ckpt


def test_evaluate_reports_everything_and_draws(trained, tmp_path):
    data, ckpt = trained
    report = evaluate(ckpt, data, json_out=tmp_path / "m.json", plots_dir=tmp_path / "plots",
                      hop_s=0.25, progress=False)
    # The file holds the same report with its paths written portably ($TMPDIR/..., or
    # relative to the repository); the returned report keeps the real paths.
    written = json.loads((tmp_path / "m.json").read_text())
    assert written == json.loads(json.dumps(portable_paths(report)))
    assert written["checkpoint"].startswith("$TMPDIR/") and report["checkpoint"] == str(ckpt)
    assert report["n_test_trials"] > report["n_test_images"] > 0
    for method in ("model", "ridge"):
        for set_name in ("test", "gallery"):
            for mode in ("single", "average"):
                m = report["retrieval"][method][set_name][mode]
                assert 0 <= m["top1"] <= m["top5"] <= 1
                assert 0 < m["relative_median_rank"] <= 1
    gallery_set = report["retrieval"]["model"]["gallery"]["single"]
    assert gallery_set["n_candidates"] == report["n_gallery_images"] > report["n_test_images"]
    curve = report["time_resolved"]
    assert curve["offsets_s"] == [-0.2, 0.05, 0.3, 0.55]
    for method in ("model", "ridge"):
        assert len(curve[method]["single_top5"]) == len(curve["offsets_s"])
    assert report["summary"]["model_test_single_top5"] == report["retrieval"]["model"]["test"]["single"]["top5"]
    for name in ("time_resolved", "examples"):
        with Image.open(report["plots"][name]) as im:
            assert im.format == "PNG" and im.size[0] > 300


def test_cli_evaluate_without_curve(trained, tmp_path, capsys):
    from rtdecode.cli import main

    data, ckpt = trained
    out = tmp_path / "cli.json"
    assert main(["evaluate", str(ckpt), "--data", str(data), "--json", str(out)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["summary"] == json.loads(out.read_text())["summary"]


def test_evaluate_refuses_other_embeddings(trained, tmp_path):
    import shutil

    data, ckpt = trained
    bad = tmp_path / "bad"
    shutil.copytree(ckpt, bad)
    cfg = json.loads((bad / "config.json").read_text())
    cfg["target"]["name"] = "dinov2-something"
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="same image encoder"):
        evaluate(bad, data, time_resolved=False, progress=False)
