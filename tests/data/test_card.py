"""Dataset cards: a lab's experiment in one TOML file, and one clear error per mistake."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rtdecode.data.card import CardError, read_card
from rtdecode.data.datasets import load_epochs
from rtdecode.data.report import describe_dataset

N170 = Path(__file__).resolve().parents[2] / "rtdecode" / "examples" / "n170"
RUN_5, RUN_6 = "data_2017-09-13-15.42.33.csv", "data_2017-09-13-15.45.08.csv"
MUSE_HEADER = ["timestamps", "TP9", "AF7", "AF8", "TP10", "Right AUX", "Marker0"]


def write_muse_csv(path: Path, codes: list[int], *, channels=MUSE_HEADER[1:-1], seed=0,
                   sfreq=256.0, every_s=1.0) -> Path:
    """A recording in the layout muse-lsl writes: timestamps, channels in µV, Marker0."""
    rng = np.random.default_rng(seed)
    n = int((len(codes) + 2) * every_s * sfreq)
    t = 1000.0 + np.arange(n) / sfreq
    data = rng.normal(0, 10, (n, len(channels)))
    marker = np.zeros(n)
    for k, code in enumerate(codes):
        marker[int((k + 1) * every_s * sfreq)] = code
    rows = np.column_stack([np.round(t, 3), data, marker])
    header = ",".join(["timestamps", *channels, "Marker0"])
    np.savetxt(path, rows, delimiter=",", header=header, comments="", fmt="%.3f")
    return path


def make_lab(root: Path, *, runs=3, codes=(1, 2), categories=("house", "face"),
             extra_channel_in_last=False) -> Path:
    """A folder like a lab's: runs, a stim folder of categories, and a card."""
    root.mkdir(parents=True, exist_ok=True)
    for r in range(runs):
        chans = MUSE_HEADER[1:-1]
        if extra_channel_in_last and r == runs - 1:
            chans = ["TP9", "AF7", "AF8", "Fpz", "Right AUX"]
        write_muse_csv(root / f"run{r + 1}.csv", [codes[k % len(codes)] for k in range(12)],
                       channels=chans, seed=r)
    write_pictures(root / "stim", categories)
    return root


def write_pictures(folder: Path, categories, per_category: int = 2) -> None:
    """``<folder>/<category>/<category>_<i>.png``: a picture folder per category."""
    for c in categories:
        (folder / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_category):
            Image.new("RGB", (16, 16), (40 * i, 90, 200)).save(folder / c / f"{c}_{i}.png")


CARD = """
[dataset]
name = "lab"
modality = "eeg"
recordings = ["run*.csv"]
subject = "07"
[events]
source = "column:Marker0"
codes = { 1 = "house", 2 = "face" }
[images]
root = "stim"
[channels]
bad = ["Right AUX"]
[split]
test = ["run3.csv"]
"""


def write_card(root: Path, text: str = CARD) -> Path:
    path = root / "card.toml"
    path.write_text(text)
    return path


def test_a_card_reads_a_lab_folder_with_categories(tmp_path):
    card_path = write_card(make_lab(tmp_path / "lab"))
    card = read_card(card_path)
    assert card.labels == "category" and sorted(card.categories) == ["face", "house"]
    assert [p.name for p in card.test] == ["run3.csv"]
    assert [p.name for p in card.train] == ["run1.csv", "run2.csv"]
    es = load_epochs(card_path, tmin_s=-0.1, tmax_s=0.5, pad_s=0.2, progress=False)
    assert es.ch_names == ("TP9", "AF7", "AF8", "TP10")  # Right AUX is bad
    assert set(es.ch_types) == {"eeg"} and es.modality == "eeg" and es.labels == "category"
    assert es.subjects == ("sub-07",)
    assert set(es.image_ids) == {"house", "face"}
    # the split is the card's, by recording: run 3 is the test set, nothing left out
    rec_names = np.array([Path(es.recordings[i]).name for i in es.recording_index])
    assert set(rec_names[es.test_mask]) == {"run3.csv"}
    assert set(rec_names[es.train_mask]) == {"run1.csv", "run2.csv"}
    assert es.drop_log["train_in_test_category"] == 0 and len(es) == 36
    assert es.gallery_root == (tmp_path / "lab" / "stim").resolve()
    # µV in the file, V in the epochs
    assert 1e-6 < float(np.std(es.X)) < 1e-4


def test_dataset_report_of_a_card_lists_each_recording(tmp_path):
    card_path = write_card(make_lab(tmp_path / "lab"))
    report = describe_dataset(card_path)
    assert report["card"]["name"] == "lab"
    assert [Path(r["path"]).name for r in report["recordings"]] == ["run1.csv", "run2.csv",
                                                                     "run3.csv"]
    assert [r["split"] for r in report["recordings"]] == ["train", "train", "test"]
    assert all(r["n_trials"] == 12 for r in report["recordings"])
    assert report["recordings"][0]["trials_per_label"] == {"face": 6, "house": 6}
    assert report["missing"] == []
    json.dumps(report)


@pytest.mark.parametrize(
    ("change", "key", "fix"),
    [
        (lambda t: t.replace('recordings = ["run*.csv"]\n', ""), "[dataset] recordings",
         "add it"),
        (lambda t: t.replace('codes = { 1 = "house", 2 = "face" }',
                             'codes = { 1 = "house", 2 = "" }'), "code '2'", "give it a"),
        (lambda t: t.replace('codes = { 1 = "house", 2 = "face" }', 'codes = { 1 = "house" }'),
         "event code(s) '2'", "[events] ignore"),
        (lambda t: t.replace('2 = "face"', '2 = "car"').replace(
            "[images]\n", "[images]\nlabels = \"category\"\n"), "category 'car'",
         "put the pictures"),
        (lambda t: t + 'train = ["run2.csv", "run3.csv"]\n', "[split] test and [split] train",
         "remove it from train"),
    ],
    ids=["missing-key", "code-without-label", "unmapped-code", "category-without-images",
         "test-file-in-training"],
)
def test_each_bad_card_gets_one_clear_error_and_train_writes_nothing(tmp_path, change, key, fix):
    from rtdecode.training.encoder import train

    lab = make_lab(tmp_path / "lab")
    card_path = write_card(lab, change(CARD))
    with pytest.raises(CardError) as err:
        load_epochs(card_path, tmin_s=-0.1, tmax_s=0.5, pad_s=0.2, progress=False)
    message = str(err.value)
    assert str(card_path) in message and key in message and fix in message, message
    out = tmp_path / "ckpt"
    with pytest.raises(CardError):
        train(card_path, out, preset="test", max_epochs=1, progress=False)
    assert not out.exists()  # nothing half-written


def test_runs_with_different_channels_are_an_error_naming_the_fix(tmp_path):
    lab = make_lab(tmp_path / "lab", extra_channel_in_last=True)
    card_path = write_card(lab)
    with pytest.raises(CardError, match=r"different channels.*\['Fpz'\].*\['TP10'\].*\[channels\] bad"):
        load_epochs(card_path, tmin_s=-0.1, tmax_s=0.5, pad_s=0.2, progress=False)
    report = describe_dataset(card_path)
    assert any("different channels" in m for m in report["missing"])


def test_the_n170_card_splits_runs_5_and_6_off_as_test(tmp_path):
    card = read_card(N170 / "card.toml")
    assert card.modality == "eeg" and card.labels == "category"
    assert sorted(p.name for p in card.test) == [RUN_5, RUN_6]
    assert len(card.train) == 4 and not set(card.train) & set(card.test)
    assert {c: len(v) for c, v in card.categories.items()} == {"face": 48, "house": 48}
    # a copy elsewhere reads the same (paths are relative to the card)
    copy = tmp_path / "n170"
    shutil.copytree(N170, copy)
    assert [p.name for p in read_card(copy / "card.toml").recordings] == [
        p.name for p in card.recordings]


def test_a_card_reads_the_eeglab_tutorial_file_by_its_text_codes(tmp_path):
    import os

    eeglab = Path(__file__).resolve().parent / "files" / "eeglab" / "test_raw.set"
    write_pictures(tmp_path / "pics", ["square"])
    card_path = write_card(tmp_path, f"""
[dataset]
name = "eeglab-tutorial"
modality = "eeg"
recordings = ["{os.path.relpath(eeglab, tmp_path)}"]
[events]
source = "annotations"
codes = {{ square = "square" }}
ignore = ["rt"]
[images]
root = "pics"
""")
    report = describe_dataset(card_path)
    (entry,) = report["recordings"]
    assert entry["sfreq_hz"] == 128.0 and entry["n_data_channels"] == 32
    assert entry["trials_per_label"] == {"square": 80} and entry["split"] == "train"
    assert any("no [split] test" in m for m in report["missing"])  # named, with the fix
    es = load_epochs(card_path, tmin_s=-0.1, tmax_s=0.5, pad_s=0.2, progress=False)
    assert len(es) == 80 and es.labels == "category" and not es.test_mask.any()


def test_rtdecode_dataset_takes_a_card_and_writes_its_json(tmp_path, capsys):
    from rtdecode.cli import main

    card_path = write_card(make_lab(tmp_path / "lab"))
    out = tmp_path / "report.json"
    assert main(["dataset", str(card_path), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "(card)" in printed and "run3.csv (test" in printed and "missing: nothing" in printed
    report = json.loads(out.read_text())
    assert report["kind"] == "card" and report["card"]["labels"] == "category"


@pytest.mark.parametrize("modality", ["eeg", "meg"])
def test_the_card_modality_picks_eeg_or_meg_of_a_recording_with_both(tmp_path, modality):
    import mne

    rng = np.random.default_rng(0)
    names = ["MEG0111", "MEG0121", "EEG001", "EEG002", "STI101"]
    info = mne.create_info(names, 200.0, ["mag", "mag", "eeg", "eeg", "stim"])
    data = rng.normal(0, 1e-12, (5, 4000))
    data[4] = 0
    for k, s in enumerate(range(200, 3800, 300)):
        data[4, s:s + 3] = 1 + k % 2
    mne.io.RawArray(data, info, verbose="error").save(tmp_path / "run1_raw.fif", verbose="error")
    write_pictures(tmp_path / "pics", ["a", "b"])
    card_path = write_card(tmp_path, f"""
[dataset]
name = "both"
modality = "{modality}"
recordings = ["run1_raw.fif"]
[events]
source = "STI101"
codes = {{ 1 = "a", 2 = "b" }}
[images]
root = "pics"
""")
    es = load_epochs(card_path, tmin_s=-0.1, tmax_s=0.3, pad_s=0.1, progress=False)
    assert set(es.ch_types) == ({"eeg"} if modality == "eeg" else {"mag"})
    assert len(es) == 12 and set(es.image_ids) == {"a", "b"}
