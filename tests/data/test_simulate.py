"""The simulated cohort: determinism, both sensor systems, events, the zero-shot split of
the image world, the network-driven hierarchy, ground truth, onset and offset responses,
decodable image information, demo easier than paper."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import mne
import numpy as np
import pytest
from mne.io.constants import FIFF
from scipy.signal import butter, sosfilt

from rtdecode.data.datasets import load_epochs
from rtdecode.data.simulate import (
    CATCH_CODE,
    SFREQ_REPLAY_HZ,
    SFREQ_TRAIN_HZ,
    SIZES,
    STIM_CHANNELS,
    data_fingerprint,
    simulate_cohort,
    simulate_subject,
    source_patterns,
)
from rtdecode.data.simulate.sources import (
    LAYERS,
    REGIONS,
    Component,
    Source,
    amplitudes,
    hierarchy_latents,
)

TINY = SIZES["tiny"]


@pytest.fixture(scope="module")
def sim(tmp_path_factory) -> Path:
    """Two subjects: sub-01 on the Neuromag system, sub-02 on the CTF-275-style one."""
    return simulate_cohort(
        tmp_path_factory.mktemp("sim") / "a", seed=0, n_subjects=2, size="tiny", progress=False
    )


@pytest.fixture(scope="module")
def paper(tmp_path_factory) -> Path:
    """The hard difficulty, with another seed (so that it also serves the seed test)."""
    return simulate_cohort(
        tmp_path_factory.mktemp("sim") / "p", seed=1, n_subjects=1, size="tiny",
        difficulty="paper", progress=False,
    )


def _runs(root: Path, subject: str = "*") -> list[Path]:
    return sorted(root.glob(f"sub-{subject}/ses-*/meg/*_meg.fif"))


def _events(run: Path) -> Path:
    return Path(str(run).replace("_meg.fif", "_events.tsv").replace("_raw.fif", "_events.tsv"))


def _rows(tsv: Path) -> list[dict[str, str]]:
    with tsv.open(newline="") as f:
        return list(csv.DictReader(f, delimiter="\t"))


def _all_rows(root: Path, subject: str = "*") -> list[dict[str, str]]:
    return [r for run in _runs(root, subject) for r in _rows(_events(run))]


def _truth(root: Path) -> dict:
    return json.loads((root / "simulation.json").read_text())


def _subject(truth: dict, label: str) -> dict:
    return next(s for s in truth["subjects"] if s["subject"] == f"sub-{label}")


def test_same_seed_same_data_other_seed_other_data(sim, paper, tmp_path):
    # subject 1 does not depend on how many subjects are simulated
    again = simulate_subject(tmp_path / "b", seed=0, size="tiny", progress=False)
    files = [p.relative_to(again) for p in _runs(again)] + [Path("replay_raw.fif")]
    assert len(files) == TINY.n_sessions + 1
    for rel in files:
        assert data_fingerprint(sim / rel) == data_fingerprint(again / rel), rel
        assert (sim / _events(rel)).read_bytes() == (again / _events(rel)).read_bytes()
    assert _subject(_truth(sim), "01") == _subject(_truth(again), "01")
    # the image features and the split follow from the seed alone (not the difficulty)
    a, b = _truth(sim), _truth(paper)
    assert a["image_features"]["values"] != b["image_features"]["values"]
    assert data_fingerprint(sim / files[0]) != data_fingerprint(paper / files[0])


def test_two_real_sensor_systems(sim):
    neuromag = mne.io.read_raw_fif(_runs(sim, "01")[0], verbose=False)
    assert neuromag.info["sfreq"] == SFREQ_TRAIN_HZ
    meg = mne.pick_types(neuromag.info, meg=True)
    assert len(meg) == 306 and len(mne.pick_types(neuromag.info, meg="grad")) == 204
    assert {neuromag.info["chs"][i]["coil_type"] for i in meg} == {
        FIFF.FIFFV_COIL_VV_PLANAR_T1, FIFF.FIFFV_COIL_VV_MAG_T3
    }
    assert mne.channels.find_layout(neuromag.info).kind == "Vectorview-all"
    assert STIM_CHANNELS["neuromag306"] in neuromag.ch_names

    ctf = mne.io.read_raw_fif(_runs(sim, "02")[0], verbose=False)
    meg = mne.pick_types(ctf.info, meg=True, ref_meg=False)
    assert len(meg) == 272 and ctf.ch_names[0] == "MLC11" and "MRO52" in ctf.ch_names
    assert {ctf.info["chs"][i]["coil_type"] for i in meg} == {FIFF.FIFFV_COIL_CTF_GRAD}
    assert set(ctf.get_channel_types(picks=meg)) == {"mag"}  # MNE's type for CTF gradiometers
    assert mne.channels.find_layout(ctf.info).kind == "CTF-275"
    assert STIM_CHANNELS["ctf275"] in ctf.ch_names
    # every sensor sits outside the head, 1-6 cm from the scalp, along its outward axis
    truth = _truth(sim)
    head = mne.transforms.Transform("meg", "head", np.array(_subject(truth, "02")["dev_head_t"]))
    loc = np.array([ctf.info["chs"][i]["loc"] for i in meg])
    r0, radius = np.array(truth["head_model"]["r0_head_m"]), truth["head_model"]["head_radius_m"]
    dist = np.linalg.norm(mne.transforms.apply_trans(head, loc[:, :3]) - r0, axis=1) - radius
    assert dist.min() > 0.01 and dist.max() < 0.06
    assert np.all(np.einsum("ij,ij->i", loc[:, 9:12], loc[:, :3]) > 0)
    # each subject sits in its own place
    assert _subject(truth, "01")["placement"] != _subject(truth, "02")["placement"]


def test_events_at_the_right_samples_with_image_ids(sim):
    concept_of = {r["id"]: r["concept"] for r in _gallery_rows(sim)}
    file_of = {r["id"]: f"images/{r['file']}" for r in _gallery_rows(sim)}
    replays = sorted((sim / "replay").glob("*_raw.fif"))
    assert [p.name for p in replays] == [
        "sub-01_task-main_replay_raw.fif", "sub-02_task-main_replay_raw.fif"
    ]
    for run in [*_runs(sim), *replays]:
        raw = mne.io.read_raw_fif(run, preload=True, verbose=False)
        stim_name = raw.ch_names[-1]
        assert stim_name in STIM_CHANNELS.values()
        stim = raw.get_data(picks=[stim_name])[0]
        rows = _rows(_events(run))
        found = mne.find_events(raw, stim_channel=stim_name, shortest_event=1, verbose=False)
        assert [int(s) for s in found[:, 0]] == [int(r["sample"]) for r in rows]
        for r in rows:
            n = int(r["sample"])
            assert stim[n] == float(r["value"]) and stim[n - 1] == 0
            assert float(r["onset"]) == pytest.approx(n / raw.info["sfreq"], abs=1e-6)
            assert float(r["duration"]) == 0.5
            if r["trial_type"] == "catch":
                assert int(r["value"]) == CATCH_CODE and r["image_path"] == "n/a"
                continue
            assert (sim / r["image_path"]).is_file() and r["image_path"] == file_of[r["image_id"]]
            assert r["category"] == concept_of[r["image_id"]]  # the concept, as in THINGS-MEG
            assert int(r["image_nr"]) == int(r["value"])
    # replay files: 1200 Hz, JSON annotations, test images only; the top one is sub-01's
    for replay in replays:
        raw = mne.io.read_raw_fif(replay, verbose=False)
        assert raw.info["sfreq"] == SFREQ_REPLAY_HZ
        assert raw.n_times == int(TINY.replay_s * SFREQ_REPLAY_HZ)
        rows = _rows(_events(replay))
        ann = [json.loads(d) for d in raw.annotations.description]
        assert [a.get("image_id") for a in ann if a["trial_type"] != "catch"] == [
            r["image_id"] for r in rows if r["trial_type"] != "catch"
        ]
        assert {r["trial_type"] for r in rows} <= {"test", "catch"}
        assert np.allclose(raw.annotations.onset - raw.first_time, [float(r["onset"]) for r in rows])
    assert data_fingerprint(sim / "replay_raw.fif") == data_fingerprint(replays[0])


def test_things_paradigm_timing_and_counts(sim):
    for run in _runs(sim):
        onsets = np.array([float(r["onset"]) for r in _rows(_events(run))])
        soa = np.diff(onsets)  # 500 ms image + 1000 +/- 200 ms fixation
        assert soa.min() >= 1.3 - 0.005 and soa.max() <= 1.7 + 0.005
        assert abs(soa.mean() - 1.5) < 0.1
    truth = _truth(sim)["split"]
    for subject in ("01", "02"):
        rows = _all_rows(sim, subject)
        train_concepts = {r["category"] for r in rows if r["trial_type"] == "exp"}
        test_concepts = {r["category"] for r in rows if r["trial_type"] == "test"}
        assert sorted(train_concepts) == truth["train_concepts"]
        assert sorted(test_concepts) == truth["test_concepts"]  # the same for every subject
        assert not train_concepts & test_concepts and truth["n_shared_concepts"] == 0
        test_ids = [r["image_id"] for r in rows if r["trial_type"] == "test"]
        counts = {i: test_ids.count(i) for i in set(test_ids)}
        # one image per test concept, once per session, as in THINGS-MEG
        assert len(counts) == truth["n_test_images"] == truth["n_test_concepts"]
        assert set(counts.values()) == {TINY.n_sessions}
        train_ids = [r["image_id"] for r in rows if r["trial_type"] == "exp"]
        assert len(set(train_ids)) == truth["n_train_images"]
        assert truth["n_train_images"] == TINY.exemplars * truth["n_train_concepts"]
        assert len(train_ids) == TINY.train_reps * truth["n_train_images"]
        n_catch = sum(r["trial_type"] == "catch" for r in rows)
        assert n_catch == TINY.n_sessions * TINY.catch_per_session


def _gallery_rows(root: Path) -> list[dict[str, str]]:
    with (root / "images" / "gallery.csv").open(newline="") as fh:
        return list(csv.DictReader(fh))


def test_images_folder_holds_the_shown_images_with_their_licences(sim):
    table = _gallery_rows(sim)
    truth = _truth(sim)
    assert [r["id"] for r in table] == truth["image_features"]["ids"]
    shown = {r["image_id"] for r in _all_rows(sim) if r["trial_type"] != "catch"}
    assert shown == set(truth["image_features"]["ids"])
    for r in table:
        assert (sim / "images" / r["file"]).is_file() and r["license"] and r["source"]
        assert r["split"] == ("test" if r["concept"] in truth["split"]["test_concepts"] else "train")
    licenses = truth["images"]["licenses"]
    assert sum(licenses.values()) == len(table) == truth["images"]["n_images"]


def test_image_latents_come_from_the_training_images_only():
    rng = np.random.default_rng(0)
    layers = {name: rng.normal(size=(30, d)) for name, d in zip(LAYERS, (8, 16, 24), strict=True)}
    train = list(range(24))
    lat, columns, explained = hierarchy_latents(
        layers, train, {"early": 3, "middle": 4, "late": 5}, np.random.default_rng(1)
    )
    assert lat.shape == (30, 12) and [len(columns[n]) for n in LAYERS] == [3, 4, 5]
    assert np.allclose(lat[train].std(0), 1.0) and np.allclose(lat[train].mean(0), 0.0)
    assert all(0 < explained[n] < 1 for n in LAYERS)
    # other test images change nothing for the training images (nor for each other)
    moved = {n: x.copy() for n, x in layers.items()}
    for x in moved.values():
        x[24:] = rng.normal(size=x[24:].shape) * 5
    again, _, _ = hierarchy_latents(
        moved, train, {"early": 3, "middle": 4, "late": 5}, np.random.default_rng(1)
    )
    assert np.array_equal(again[:24], lat[:24]) and not np.allclose(again[24:], lat[24:])
    # each layer's latents span that layer's leading principal axes
    z = (layers["late"] - layers["late"][train].mean(0)) / layers["late"][train].std(0)
    _, _, vt = np.linalg.svd(z[train], full_matrices=False)
    scores = z[train] @ vt[:5].T
    coef, *_ = np.linalg.lstsq(scores, lat[train][:, columns["late"]], rcond=None)
    assert np.allclose(scores @ coef, lat[train][:, columns["late"]], atol=1e-8)


def test_ground_truth_features_and_sources(sim):
    truth = _truth(sim)
    feats = truth["image_features"]
    lat = np.array(feats["values"])
    assert lat.shape == (len(feats["ids"]), feats["n_latent"]) and feats["n_latent"] >= 32
    train = [feats["ids"].index(i) for i in feats["ids"] if i not in _test_ids(sim)]
    assert np.allclose(lat[train].std(0), 1.0, atol=1e-3)
    assert feats["encoder"].startswith("efficientnet-lite0")
    assert truth["target"]["dim"] == 1280
    # the hierarchy: early visual regions read the early layer, temporal ones the late one
    layer_of = {name: info["layer"] for name, info in truth["hierarchy"].items()}
    assert layer_of == {"V1": "early", "V4": "early", "LO": "middle", "IPS": "middle",
                        "VT": "late", "AT": "late"}
    assert {r.name: r.layer for r in REGIONS} == layer_of
    columns = {n: set(feats["layers"][n]["columns"]) for n in LAYERS}
    assert sorted(c for n in LAYERS for c in columns[n]) == list(range(feats["n_latent"]))
    ceiling = truth["latent_retrieval_ceiling"]
    assert ceiling["n_candidates"] == truth["split"]["n_test_images"]
    for subject in truth["subjects"]:
        assert len(subject["sources"]) >= 32
        head = truth["head_model"]
        for s in subject["sources"]:
            rel = np.array(s["pos_m"]) - head["r0_head_m"]
            assert np.linalg.norm(rel) < head["head_radius_m"] - 0.015
            assert abs(np.dot(s["ori"], rel)) < 1e-9  # tangential
            onset, offset = s["components"]
            assert 0.07 <= onset["latency_s"] <= 0.3 and 0.62 <= offset["latency_s"] <= 0.75
            layer = layer_of[s["name"].split("-")[0]]
            assert set(onset["features"]) <= columns[layer]
            assert set(offset["gate_features"]) <= columns["late"]
    assert truth["clipped_samples"] == 0
    a, b = truth["subjects"]
    assert [s["pos_m"] for s in a["sources"]] != [s["pos_m"] for s in b["sources"]]


def _test_ids(root: Path) -> set[str]:
    return {r["image_id"] for r in _all_rows(root) if r["trial_type"] == "test"}


def test_onset_and_offset_responses_in_the_truth(sim):
    for subject in _truth(sim)["subjects"]:
        info = subject["information"]
        t = np.array(info["times_ms"])
        curve, evoked = np.array(info["information"]), np.array(info["evoked_power"])
        assert 100 <= info["onset_peak_ms"] <= 250
        assert 650 <= info["offset_peak_ms"] <= 720  # 150-220 ms after the image goes
        assert info["offset_to_onset_peak_ratio"] > 0.2
        assert curve[t < 40].max() < 0.02 and evoked[t < 40].max() < 0.02  # nothing before
        trough = curve[(t > 380) & (t < 560)].min()
        assert trough < 0.5 * curve[t > 600].max()  # two separate peaks


def test_loader_reads_each_subject(sim):
    n_channels = {"01": 306, "02": 272}
    for subject, n_ch in n_channels.items():
        es = load_epochs(sim, subjects=[subject], progress=False)
        rows = _all_rows(sim, subject)
        n_trials = sum(r["trial_type"] != "catch" for r in rows)
        assert es.X.shape == (n_trials, n_ch, es.n_pad + es.n_times)
        assert es.sfreq_hz == SFREQ_TRAIN_HZ and es.subjects == (f"sub-{subject}",)
        assert es.drop_log["catch"] == TINY.n_sessions * TINY.catch_per_session
        assert es.drop_log["nonfinite"] == 0 and es.drop_log["train_in_test_category"] == 0
        assert es.test_mask.sum() == sum(r["trial_type"] == "test" for r in rows)
        assert es.positions_2d.shape == (n_ch, 2)
        assert list(es.ch_names) == source_patterns(sim, subject)[0]
    replay = load_epochs(sim / "replay" / "sub-02_task-main_replay_raw.fif", progress=False)
    assert replay.sfreq_hz == SFREQ_REPLAY_HZ and replay.test_mask.all()


def _band(es, lo=1.0, hi=30.0) -> np.ndarray:
    """Causal band-pass over the padded epochs (no post-onset response leaks backwards)."""
    sos = butter(4, [lo, hi], btype="band", fs=es.sfreq_hz, output="sos")
    return sosfilt(sos, es.X.astype(np.float64), axis=-1)[..., es.n_pad :]


def _power_ratio(x, times_s, lo_s, hi_s):
    """Per-sensor power in [lo_s, hi_s) over the pre-onset baseline, shape (n_channels,)."""
    base = (times_s >= -0.45) & (times_s < -0.05)
    post = (times_s >= lo_s) & (times_s < hi_s)
    return (x[..., post] ** 2).mean(-1) / (x[..., base] ** 2).mean(-1)


def test_evoked_onset_and_offset_are_clear_in_the_average(sim, paper):
    es = load_epochs(sim, subjects=["02"], progress=False)
    evoked = _band(es).mean(axis=0)
    assert np.sort(_power_ratio(evoked, es.times_s, 0.05, 0.35))[-10:].min() > 3.0  # onset
    assert np.sort(_power_ratio(evoked, es.times_s, 0.6, 0.8))[-10:].min() > 2.0  # offset
    # in the paper difficulty, single trials are noise-dominated; the average is not
    es = load_epochs(paper, subjects=["01"], progress=False)
    x = _band(es)
    single = np.median(_power_ratio(x, es.times_s, 0.05, 0.35).mean(axis=0))
    assert single < 1.5
    assert np.sort(_power_ratio(x.mean(axis=0), es.times_s, 0.05, 0.35))[-10:].min() > 2.0


def _identification_accuracy(es, lo_s: float, hi_s: float) -> float:
    """Leave-one-trial-out nearest-centroid identification of the training images."""
    x = _band(es)
    sel = (es.times_s >= lo_s) & (es.times_s < hi_s)
    train = np.flatnonzero(es.train_mask)
    feats = x[train][:, :, sel][:, :, ::4].reshape(len(train), -1)
    feats /= feats.std(axis=0, keepdims=True)
    ids = np.asarray(es.image_ids)[train]
    labels = sorted(set(ids))
    onehot = (ids[:, None] == np.array(labels)[None]).astype(float)
    sums, counts = onehot.T @ feats, onehot.sum(0)
    hits = 0
    for k in range(len(train)):
        own = labels.index(ids[k])
        centroids = sums / counts[:, None]
        centroids[own] = (sums[own] - feats[k]) / (counts[own] - 1)
        hits += int(np.argmin(((centroids - feats[k]) ** 2).sum(1)) == own)
    return hits / len(train)


def test_images_are_identifiable_after_onset_not_before(sim):
    chance = 1.0 / _truth(sim)["split"]["n_train_images"]
    for subject in ("01", "02"):
        es = load_epochs(sim, subjects=[subject], progress=False)
        assert _identification_accuracy(es, 0.05, 0.3) > chance + 0.25, subject
        assert _identification_accuracy(es, -0.45, -0.2) < chance + 0.15, subject


def test_single_trial_sources_follow_the_image_features(sim):
    """A beamformer on each simulated source recovers its image-driven onset amplitude."""
    es = load_epochs(sim, subjects=["01"], progress=False)
    truth = _subject(_truth(sim), "01")
    _, patterns = source_patterns(sim, "01")
    x = _band(es)
    base = (es.times_s >= -0.45) & (es.times_s < -0.05)
    cov = np.cov(x[:, :, base].transpose(1, 0, 2).reshape(x.shape[1], -1))
    cov += 0.05 * np.trace(cov) / len(cov) * np.eye(len(cov))
    icov_g = np.linalg.solve(cov, patterns)
    moments = np.einsum("cs,nct->nst", icov_g / np.einsum("cs,cs->s", patterns, icov_g), x)
    values = _truth(sim)["image_features"]
    lat = dict(zip(values["ids"], np.array(values["values"]), strict=True))
    z = np.stack([lat[i] for i in es.image_ids])
    rng = np.random.default_rng(0)
    corr, null = [], []
    for k, src in enumerate(truth["sources"]):
        comp = src["components"][0]
        near = np.abs(es.times_s - comp["latency_s"]) <= comp["width_s"]
        amplitude = moments[:, k][:, near].mean(axis=1)
        source = Source(**{**src, "components": (Component(**comp),)})
        drive = amplitudes([source], z)[:, 0]
        corr.append(np.corrcoef(amplitude, drive)[0, 1])
        null.append(np.corrcoef(amplitude, rng.permutation(drive))[0, 1])
    assert np.mean(corr) > 0.3 and np.mean(corr) > np.mean(null) + 0.25
    assert abs(np.mean(null)) < 0.1


def test_demo_is_easier_than_paper(sim, paper):
    demo = _subject(_truth(sim), "01")["snr"]
    hard = _subject(_truth(paper), "01")["snr"]
    assert demo["image_snr_db_0_800ms"] > hard["image_snr_db_0_800ms"] + 6
    assert demo["linear_share"] > 0.85 > hard["linear_share"] + 0.1  # paper: nonlinear readout
    chance = 1.0 / _truth(sim)["split"]["n_train_images"]
    es = load_epochs(paper, subjects=["01"], progress=False)
    assert _identification_accuracy(es, 0.05, 0.3) < _identification_accuracy(
        load_epochs(sim, subjects=["01"], progress=False), 0.05, 0.3
    )
    assert _truth(paper)["difficulty"]["name"] == "paper" and chance > 0


def test_bad_arguments_are_refused(tmp_path):
    with pytest.raises(ValueError, match="huge"):
        simulate_subject(tmp_path, size="huge")
    with pytest.raises(ValueError, match="impossible"):
        simulate_cohort(tmp_path, difficulty="impossible")
    with pytest.raises(ValueError, match="n_subjects"):
        simulate_cohort(tmp_path, n_subjects=0)
