"""A card written by hand for a BIDS EEG folder: train, evaluate, and online = offline.

The folder is written by mne-bids (EDF recordings, events.tsv with codes, the BIDS
sidecars), as a lab's BIDS export is; its EEG holds a category-specific evoked response
over occipito-temporal channels in noise. The card maps the codes to two categories of
pictures, and names the last run as test data.
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

CHANNELS = ["Fz", "Cz", "Pz", "Oz", "P7", "P8", "O1", "O2"]
SFREQ = 200.0
N_TRIALS = 80  # per run
CARD = """
[dataset]
name = "faces-houses-bids"
modality = "eeg"
recordings = ["bids/sub-01/eeg/*_eeg.edf"]
subject = "01"
[events]
codes = { 1 = "house", 2 = "face" }
[images]
root = "pictures"
[epochs]
tmin_s = -0.1
tmax_s = 0.6
[channels]
line_freq_hz = 50
[split]
test = ["*_run-3_eeg.edf"]
"""


def _run(rng, n_trials: int):
    """EEG in V (channels, samples), onsets (samples), codes."""
    n = int((n_trials + 2) * SFREQ)
    x = rng.normal(0, 4e-6, (len(CHANNELS), n))
    codes = rng.permutation(np.repeat([1, 2], n_trials // 2))
    onsets = (np.arange(n_trials) + 1) * int(SFREQ) + rng.integers(0, 20, n_trials)
    t = np.arange(int(0.5 * SFREQ)) / SFREQ
    wave = np.exp(-0.5 * ((t - 0.17) / 0.03) ** 2)  # an N170-like bump
    sign = {1: 1.0, 2: -1.0}
    gain = np.array([0, 0.2, 0.4, 0.6, 1.0, 1.0, 0.8, 0.8])[:, None]
    for s, c in zip(onsets, codes, strict=True):
        x[:, s:s + wave.size] += 3e-6 * sign[int(c)] * gain * wave
    return x, onsets, codes


@pytest.fixture(scope="module")
def bids_card(tmp_path_factory):
    import mne
    from mne_bids import BIDSPath, write_raw_bids

    root = tmp_path_factory.mktemp("lab")
    rng = np.random.default_rng(7)
    for run in (1, 2, 3):
        x, onsets, codes = _run(rng, N_TRIALS)
        raw = mne.io.RawArray(x, mne.create_info(CHANNELS, SFREQ, "eeg"), verbose="error")
        raw.info["line_freq"] = 50.0
        raw.set_annotations(mne.Annotations(onsets / SFREQ, 0.1, [str(c) for c in codes]))
        events, event_id = mne.events_from_annotations(raw, verbose="error")
        path = BIDSPath(subject="01", task="faces", run=run, datatype="eeg", root=root / "bids")
        write_raw_bids(raw, path, events=events, event_id=event_id, format="EDF",
                       allow_preload=True, overwrite=True, verbose="error")
    for c, color in (("house", (200, 120, 40)), ("face", (240, 200, 180))):
        (root / "pictures" / c).mkdir(parents=True)
        for i in range(3):
            img = Image.new("RGB", (32, 32), tuple(v - 30 * i for v in color))
            img.save(root / "pictures" / c / f"{c}_{i}.png")
    card = root / "card.toml"
    card.write_text(CARD)
    return card


def test_a_bids_eeg_card_trains_evaluates_and_decodes_above_chance(bids_card, tmp_path):
    from rtdecode.data.report import describe_dataset
    from rtdecode.training.encoder import train
    from rtdecode.training.evaluate import evaluate

    report = describe_dataset(bids_card)
    assert report["missing"] == [] and report["n_recordings"] == 3
    assert [r["split"] for r in report["recordings"]] == ["train", "train", "test"]
    assert all(r["events_source"].startswith("card") for r in report["recordings"])

    recipe = {"window_s": 0.3, "window_start_s": 0.05, "window_sampling": "fixed",
              "val_fraction": 0.0, "preprocess": {"highpass_hz": 1.0, "lowpass_hz": 30.0}}
    ckpt = train(bids_card, tmp_path / "ridge", preset="ridge", recipe=recipe, progress=False)
    result = evaluate(ckpt, bids_card, time_resolved=False, progress=False)
    single = result["retrieval"]["model"]["test"]["single"]
    n = single["n_queries"]
    assert n == result["n_test_trials"] >= N_TRIALS - 2 and single["n_candidates"] == 2
    assert result["chance_top1"] == 0.5 and result["labels"] == "category"
    # held-out run: top-1 three binomial SDs above chance, and an AUC well above 0.5
    assert single["top1"] > 0.5 + 3 * np.sqrt(0.25 / n), single
    assert single["auc"] > 0.75, single

    # the paper's deep model runs on the same EEG (spatial attention on 10-05 positions)
    deep = train(bids_card, tmp_path / "deep", preset="test", max_epochs=1,
                 recipe={**recipe, "batch_size": 16}, progress=False)
    out = evaluate(deep, bids_card, time_resolved=False, progress=False)
    assert "auc" in out["retrieval"]["model"]["test"]["single"]


def test_online_equals_offline_on_an_eeg_run_read_through_its_card(bids_card, tmp_path):
    from rtdecode.training.encoder import train
    from rtdecode.training.online import evaluate_online

    recipe = {"window_s": 0.25, "lag_min_s": 0.1, "lag_max_s": 0.5, "val_fraction": 0.0,
              "preprocess": {"highpass_hz": 1.0, "lowpass_hz": 30.0}}
    ckpt = train(bids_card, tmp_path / "stream", preset="ridge", recipe=recipe, progress=False)
    run3 = next((bids_card.parent / "bids" / "sub-01" / "eeg").glob("*_run-3_eeg.edf"))
    report = evaluate_online(ckpt, run3, data=bids_card, retrieval_set="all", speed=8.0,
                             progress=False)
    parity = report["parity"]
    assert parity["max_rel_err"] < 1e-5 and parity["ranks_equal"], parity
    assert report["n_candidates"] == 2 and report["chance_top1"] == 0.5
    assert report["n_ranked"] > 0.8 * report["n_frames"]  # the codes were understood live
    assert report["best"]["top1"] > 0.5


def test_a_bids_eeg_folder_is_found_as_a_dataset_not_only_meg(bids_card):
    from rtdecode.data.report import describe_dataset
    from rtdecode.data.things import find_recordings

    # an MEG-only assumption: a BIDS tree's recordings were meg/*_meg.* only
    found = find_recordings(bids_card.parent / "bids")
    assert [p.name for p in found] == [f"sub-01_task-faces_run-{r}_eeg.edf" for r in (1, 2, 3)]
    report = describe_dataset(bids_card.parent / "bids")  # without the card: codes only
    assert report["n_recordings"] == 3 and report["trials_with_image"] == 0
    assert any("name no image" in m for m in report["missing"])


def test_time_resolved_takes_a_card_and_finds_the_evoked_response(bids_card, tmp_path):
    import json

    from rtdecode.training.sweeps import time_resolved

    out = time_resolved(bids_card, tmp_path / "sweep", window_s=0.1, stride_s=0.1,
                        tmin_s=-0.1, tmax_s=0.5, models=("ridge",), executor="debug",
                        recipe={"preprocess": {"highpass_hz": 1.0, "lowpass_hz": 30.0}},
                        progress=False, log=None)
    report = json.loads(out.json_path.read_text())
    assert report["chance"]["top1"] == 0.5
    by_end = {round(p["end_s"], 2): p["models"]["ridge"]["single"] for p in report["positions"]}
    assert all("auc" in m and m["n_candidates"] == 2 for m in by_end.values())
    # the category-specific bump is at 170 ms: the window ending at 0.2 s decodes it,
    # the one before onset does not
    assert by_end[0.2]["auc"] > 0.75 and abs(by_end[0.0]["auc"] - 0.5) < 0.15
