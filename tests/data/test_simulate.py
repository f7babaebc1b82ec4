"""The simulated subject: determinism, layout, events, split, ground truth, information."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import mne
import numpy as np
import pytest
from scipy.signal import butter, sosfiltfilt

from rtdecode.data.datasets import load_epochs
from rtdecode.data.simulate import (
    CATCH_CODE,
    SFREQ_REPLAY_HZ,
    SFREQ_TRAIN_HZ,
    SIZES,
    STIM_CHANNEL,
    data_fingerprint,
    simulate_subject,
    source_patterns,
)

TINY = SIZES["tiny"]


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Path:
    return simulate_subject(
        tmp_path_factory.mktemp("sim") / "a", seed=0, size="tiny", progress=False
    )


def _runs(root: Path) -> list[Path]:
    return sorted(root.glob("sub-*/ses-*/meg/*_meg.fif"))


def _rows(tsv: Path) -> list[dict[str, str]]:
    with tsv.open(newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _all_rows(root: Path) -> list[dict[str, str]]:
    return [
        r for run in _runs(root) for r in _rows(Path(str(run).replace("_meg.fif", "_events.tsv")))
    ]


def _truth(root: Path) -> dict:
    return json.loads((root / "simulation.json").read_text())


def test_same_seed_same_data_other_seed_other_data(sim, tmp_path):
    again = simulate_subject(tmp_path / "b", seed=0, size="tiny", progress=False)
    files = [p.relative_to(sim) for p in _runs(sim)] + [Path("replay_raw.fif")]
    assert len(files) == TINY.n_sessions + 1
    for rel in files:
        assert data_fingerprint(sim / rel) == data_fingerprint(again / rel), rel
        tsv = Path(str(rel).replace("_meg.fif", "_events.tsv").replace("_raw.fif", "_events.tsv"))
        assert (sim / tsv).read_bytes() == (again / tsv).read_bytes()
    a, b = _truth(sim), _truth(again)
    a.pop("elapsed_s"), b.pop("elapsed_s")
    assert a == b

    other = simulate_subject(tmp_path / "c", seed=1, size="tiny", progress=False)
    assert data_fingerprint(sim / files[0]) != data_fingerprint(other / files[0])


def test_real_neuromag_sensors_at_the_stored_rates(sim):
    raw = mne.io.read_raw_fif(_runs(sim)[0], verbose=False)
    assert raw.info["sfreq"] == SFREQ_TRAIN_HZ
    meg = mne.pick_types(raw.info, meg=True)
    assert len(meg) == 306
    assert len(mne.pick_types(raw.info, meg="mag")) == 102
    assert len(mne.pick_types(raw.info, meg="grad")) == 204
    assert raw.ch_names[0] == "MEG 0113" and STIM_CHANNEL in raw.ch_names
    assert {raw.info["chs"][i]["coil_type"] for i in meg} == {3012, 3024}
    assert mne.channels.find_layout(raw.info).kind == "Vectorview-all"
    locs = np.array([raw.info["chs"][i]["loc"][:3] for i in meg])
    assert np.all(np.linalg.norm(locs, axis=1) > 0.05)  # real positions, not zeros
    replay = mne.io.read_raw_fif(sim / "replay_raw.fif", verbose=False)
    assert replay.info["sfreq"] == SFREQ_REPLAY_HZ
    assert len(mne.pick_types(replay.info, meg=True)) == 306
    assert replay.n_times == int(TINY.replay_s * SFREQ_REPLAY_HZ)


def test_events_at_the_right_samples_with_image_ids(sim):
    gallery_ids = set(_truth(sim)["image_features"]["ids"])
    for run in [*_runs(sim), sim / "replay_raw.fif"]:
        raw = mne.io.read_raw_fif(run, preload=True, verbose=False)
        stim = raw.get_data(picks=[STIM_CHANNEL])[0]
        tsv = Path(str(run).replace("_meg.fif", "_events.tsv").replace("_raw.fif", "_events.tsv"))
        rows = _rows(tsv)
        found = mne.find_events(raw, stim_channel=STIM_CHANNEL, shortest_event=1, verbose=False)
        assert [int(s) for s in found[:, 0]] == [int(r["sample"]) for r in rows]
        for r in rows:
            n = int(r["sample"])
            assert stim[n] == float(r["value"]) and stim[n - 1] == 0
            assert float(r["onset"]) == pytest.approx(n / raw.info["sfreq"], abs=1e-6)
            assert float(r["duration"]) == 0.5
            if r["trial_type"] == "catch":
                assert int(r["value"]) == CATCH_CODE and r["image_path"] == "n/a"
                continue
            assert r["image_id"] in gallery_ids
            assert (sim / r["image_path"]).is_file()
            assert Path(r["image_path"]).parent.name == r["category"]
            assert int(r["image_nr"]) == int(r["value"])
    # the replay file also carries JSON annotations, one per event
    raw = mne.io.read_raw_fif(sim / "replay_raw.fif", verbose=False)
    rows = _rows(sim / "replay_events.tsv")
    ann = [json.loads(d) for d in raw.annotations.description]
    assert [a.get("image_id") for a in ann if a["trial_type"] != "catch"] == [
        r["image_id"] for r in rows if r["trial_type"] != "catch"
    ]
    assert np.allclose(raw.annotations.onset - raw.first_time, [float(r["onset"]) for r in rows])


def test_things_timing(sim):
    for run in _runs(sim):
        onsets = np.array(
            [float(r["onset"]) for r in _rows(Path(str(run).replace("_meg.fif", "_events.tsv")))]
        )
        soa = np.diff(onsets)
        assert soa.min() >= 1.3 - 0.005 and soa.max() <= 1.7 + 0.005
        assert abs(soa.mean() - 1.5) < 0.1


def test_zero_shot_split_and_repeated_test_images(sim):
    rows = _all_rows(sim)
    train_cats = {r["category"] for r in rows if r["trial_type"] == "exp"}
    test_cats = {r["category"] for r in rows if r["trial_type"] == "test"}
    assert train_cats and test_cats and not train_cats & test_cats
    truth = _truth(sim)["split"]
    assert sorted(train_cats) == truth["train_categories"]
    assert sorted(test_cats) == truth["test_categories"]
    test_ids = [r["image_id"] for r in rows if r["trial_type"] == "test"]
    counts = {i: test_ids.count(i) for i in set(test_ids)}
    assert len(counts) == truth["n_test_images"]
    assert set(counts.values()) == {TINY.n_sessions}  # once per session, as in THINGS-MEG
    assert sum(r["trial_type"] == "catch" for r in rows) == TINY.n_sessions * TINY.catch_per_session


def test_ground_truth_describes_sources_and_information(sim):
    truth = _truth(sim)
    assert len(truth["sources"]) == 8
    assert {s["region"].split(" ")[0] for s in truth["sources"]} <= {
        "occipital",
        "lateral",
        "ventral",
        "anterior",
    }
    for s in truth["sources"]:
        early, late = s["components"][:2]
        assert 0.1 <= early["latency_s"] <= 0.2 and 0.4 <= late["latency_s"] <= 0.6
        assert early["features"] and late["features"]
        r = np.linalg.norm(np.array(s["pos_m"]) - truth["head_model"]["r0_head_m"])
        assert r < truth["head_model"]["head_radius_m"] - 0.015
        assert abs(np.dot(s["ori"], np.array(s["pos_m"]) - truth["head_model"]["r0_head_m"])) < 1e-9
    info = truth["information"]
    assert 100 <= info["peak_information_ms"] <= 600
    assert len(info["times_ms"]) == len(info["information"])
    lat = np.array(truth["image_features"]["values"])
    assert lat.shape == (len(truth["image_features"]["ids"]), truth["image_features"]["n_latent"])
    assert np.allclose(lat.std(0), 1.0, atol=1e-3)
    assert truth["clipped_samples"] == 0
    assert -25 < truth["snr"]["single_trial_snr_db_all_sensors_0_800ms"] < 0


def test_loader_reads_the_simulation(sim):
    es = load_epochs(sim, progress=False)
    rows = _all_rows(sim)
    n_trials = sum(r["trial_type"] != "catch" for r in rows)
    assert es.X.dtype == np.float32
    assert es.X.shape == (n_trials, 306, es.n_pad + es.n_times)
    assert es.n_pad == 100 and es.n_times == 300 and es.sfreq_hz == SFREQ_TRAIN_HZ
    assert es.drop_log["catch"] == TINY.n_sessions * TINY.catch_per_session
    assert es.drop_log["nonfinite"] == 0 and es.drop_log["train_in_test_category"] == 0
    assert es.train_mask.sum() == sum(r["trial_type"] == "exp" for r in rows)
    assert es.test_mask.sum() == sum(r["trial_type"] == "test" for r in rows)
    assert es.gallery_root == (sim / "images").resolve()
    assert es.subjects == ("sub-01",)
    assert set(es.image_ids) <= set(_truth(sim)["image_features"]["ids"])
    assert es.positions_2d.shape == (306, 2) and es.positions_3d.shape == (306, 3)
    # the replay file next to the BIDS tree is not part of the dataset, but loads alone
    replay = load_epochs(sim / "replay_raw.fif", progress=False)
    assert replay.sfreq_hz == SFREQ_REPLAY_HZ and replay.test_mask.all()


def _band(es, lo=1.0, hi=30.0) -> np.ndarray:
    sos = butter(4, [lo, hi], btype="band", fs=es.sfreq_hz, output="sos")
    return sosfiltfilt(sos, es.X.astype(np.float64), axis=-1)[..., es.n_pad :]


def test_evoked_response_is_clear_in_the_average(sim):
    es = load_epochs(sim, progress=False)
    x = _band(es)
    post = (es.times_s >= 0.05) & (es.times_s < 0.65)
    base = (es.times_s >= -0.45) & (es.times_s < -0.05)
    evoked = x.mean(axis=0)
    ratio = (evoked[:, post] ** 2).mean(axis=1) / (evoked[:, base] ** 2).mean(axis=1)
    assert np.sort(ratio)[-10:].min() > 3.0  # the ten best sensors show a clear response
    single = (x[:, :, post] ** 2).mean(axis=(0, 2)) / (x[:, :, base] ** 2).mean(axis=(0, 2))
    assert np.median(single) < 1.5  # while single trials stay noisy


def test_single_trial_sources_follow_the_image_features(sim):
    """A beamformer on each simulated source recovers its image-driven amplitude."""
    es = load_epochs(sim, progress=False)
    truth = _truth(sim)
    ch_names, patterns = source_patterns(sim)
    assert list(es.ch_names) == ch_names
    x = _band(es)
    base = (es.times_s >= -0.45) & (es.times_s < -0.05)
    noise = x[:, :, base].transpose(1, 0, 2).reshape(x.shape[1], -1)
    cov = np.cov(noise)
    cov += 0.05 * np.trace(cov) / len(cov) * np.eye(len(cov))
    icov_g = np.linalg.solve(cov, patterns)
    filters = icov_g / np.einsum("cs,cs->s", patterns, icov_g)
    moments = np.einsum("cs,nct->nst", filters, x)
    latents = dict(
        zip(
            truth["image_features"]["ids"], np.array(truth["image_features"]["values"]), strict=True
        )
    )
    z = np.stack([latents[i] for i in es.image_ids])
    rng = np.random.default_rng(0)
    corr, null = [], []
    for k, src in enumerate(truth["sources"]):
        comp = src["components"][0]
        near = np.abs(es.times_s - comp["latency_s"]) <= comp["width_s"]
        amplitude = moments[:, k][:, near].mean(axis=1)
        drive = comp["modulation_nam"] * np.tanh(z[:, comp["features"]] @ np.array(comp["weights"]))
        corr.append(np.corrcoef(amplitude, drive)[0, 1])
        null.append(np.corrcoef(amplitude, rng.permutation(drive))[0, 1])
    assert np.mean(corr) > 0.5 and min(corr) > 0.3
    assert abs(np.mean(null)) < 0.2


def test_unknown_size_is_refused(tmp_path):
    with pytest.raises(ValueError, match="huge"):
        simulate_subject(tmp_path, size="huge")
