"""Two categories: retrieval top-1 with its chance level, and ROC AUC."""

from __future__ import annotations

import numpy as np
import pytest

from rtdecode.encoder.metrics import LagCurve, retrieval_metrics, two_class_auc


def test_two_categories_report_auc_and_chance_top1():
    rng = np.random.default_rng(0)
    cands = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    truth = rng.integers(0, 2, 400)
    # predictions lean towards their true candidate, with noise
    pred = cands[truth] * 0.6 + rng.normal(0, 1, (400, 3))
    m = retrieval_metrics(pred, cands, truth)
    assert m["chance_top1"] == 0.5 and m["n_candidates"] == 2
    assert 0.6 < m["auc"] <= 1.0 and 0.55 < m["top1"] <= 1.0
    # the AUC is that of the score difference: sklearn agrees
    from sklearn.metrics import roc_auc_score

    sims = pred @ cands.T / np.linalg.norm(pred, axis=1, keepdims=True)
    assert m["auc"] == pytest.approx(roc_auc_score(truth, sims[:, 1] - sims[:, 0]))
    # predictions that ignore the data are at chance; swapped labels are below it
    assert two_class_auc(rng.normal(0, 1, (400, 3)), cands, truth) == pytest.approx(0.5, abs=0.1)
    assert two_class_auc(pred, cands, 1 - truth) == pytest.approx(1 - m["auc"])
    assert np.isnan(two_class_auc(pred[:5], cands, np.zeros(5, int)))


def test_more_than_two_candidates_have_no_auc_and_the_lag_curve_names_chance_top1():
    cands = np.eye(4)
    m = retrieval_metrics(cands, cands, np.arange(4))
    assert "auc" not in m and m["chance_top1"] == 0.25 and m["top1"] == 1.0
    curve = LagCurve(2, bin_s=0.1, max_lag_s=1.0)
    curve.add(0.15, 1)
    curve.add(0.17, 2)
    d = curve.as_dict()
    assert d["chance_top1"] == 0.5 and d["per_lag"][0]["top1"] == 0.5
