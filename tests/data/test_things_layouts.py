"""THINGS-MEG (OpenNeuro ds004212) as published: both events.tsv layouts, the images
table, CTF channel types, the derivatives' split epochs, and the dataset report.

The rows below are real ds004212 rows (1.x layout of sub-BIGMEG1 ses-01 run-09: image
numbers, categories, paths); the 3.0.0 rows carry the same images in the 3.0.0 columns.
Onsets are re-timed so that a short recording holds them.

MNE cannot write CTF ``.ds`` folders, so the CTF path is tested with FIF files that carry
what MNE reads from a CTF recording: CTF channel names (``MLC11-1609``), axial
gradiometers of coil type ``FIFFV_COIL_CTF_GRAD``, reference sensors of kind
``FIFFV_REF_MEG_CH``, misc ``UADC*`` channels and the ``UPPT001`` trigger channel. The
channel-type decision under test is the same for both formats (the file's own kinds win
over channels.tsv).
"""

from __future__ import annotations

import json
from pathlib import Path

import mne
import numpy as np
import pytest
from mne.io.constants import FIFF

from rtdecode.data.datasets import load_epochs
from rtdecode.data.recordings import read_events_tsv, read_recording
from rtdecode.data.report import describe_dataset, format_report
from rtdecode.data.things import (
    find_epochs_files,
    image_number,
    read_images_table,
    trial_from_value,
)

SFREQ = 1200.0
# (trial_type, file_path, image_nr, category_nr, exemplar_nr, test_image_nr,
#  things_category_nr, things_image_nr, things_exemplar_nr, RT): ds004212 1.x rows
ROWS = [
    ("exp", "images_meg/stick/stick_10s.jpg", 18634, 1553, 10, None, 1553, 21943, 10, None),
    ("exp", "images_meg/tostada/tostada_10s.jpg", 20266, 1689, 10, None, 1689, 23836, 10, None),
    ("test", "images_test_meg/horse_17s.jpg", 22499, 799, 13, 51, 799, 11437, 17, None),
    ("exp", "images_meg/tent/tent_10n.jpg", 19726, 1644, 10, None, 1644, 23216, 10, None),
    ("catch", "images_catch_meg/catch118.jpg", 22366, 1855, 118, None, None, None, None, 0.5137),
    ("test", "images_test_meg/tent_14n.jpg", 22539, 1644, 13, 91, 1644, 23220, 14, None),
    ("exp", "images_meg/gravestone/gravestone_10s.jpg", 8530, 711, 10, None, 711, 10204, 10, None),
    ("test", "images_test_meg/boa_13s.jpg", 22463, 151, 13, 15, 151, 2312, 13, None),
    ("exp", "images_meg/earring/earring_10s.jpg", 6490, 541, 10, None, 541, 7857, 10, 0.7446),
    ("catch", "images_catch_meg/catch065.jpg", 22313, 1855, 65, None, None, None, None, 0.5464),
    ("exp", "images_meg/bench/bench_10s.jpg", 1450, 121, 10, None, 121, 1852, 10, None),
    ("test", "images_test_meg/turtle_16n.jpg", 22644, 1737, 13, 196, 1737, 24489, 16, None),
]
N_TYPES = {"exp": 6, "test": 4, "catch": 2}
FIRST_ONSET_S, SOA_S = 1.0, 1.5

# 272 axial gradiometers (CTF-275 less three, as in ds004212), 28 references, 10 misc.
_CTF_275 = [n.split("-")[0] for n in mne.channels.read_layout("CTF-275").names]
MEG_NAMES = [f"{n}-1609" for n in _CTF_275 if n not in ("MRF43", "MRO13")][:272]
REF_NAMES = [
    f"{n}-1609"
    for n in "BG1 BG2 BG3 BP1 BP2 BP3 BR1 BR2 BR3 G11 G12 G13 G22 G23 P11 P12 P13 P22 P23 "
    "Q11 Q12 Q13 Q22 Q23 R11 R12 R13 R22".split()
]
MISC_NAMES = [f"UADC{i:03d}-2104" for i in (1, 2, 3, 4, 9, 10, 13, 14, 15, 16)]


def _na(x, na: str = "n/a") -> str:
    return na if x is None else str(x)


def ctf_like_info(n_meg: int = 272, sfreq_hz: float = SFREQ) -> mne.Info:
    """What MNE reads from a ds004212 ``.ds``: CTF names, coil types and channel kinds."""
    meg = MEG_NAMES[:n_meg]
    names = meg + REF_NAMES + MISC_NAMES + ["UPPT001"]
    types = ["mag"] * len(meg) + ["ref_meg"] * len(REF_NAMES) + ["misc"] * 10 + ["stim"]
    info = mne.create_info(names, sfreq_hz, types)
    lay = mne.channels.read_layout("CTF-275")
    xy = {n.split("-")[0]: p[:2] for n, p in zip(lay.names, lay.pos, strict=True)}
    centre = np.mean(list(xy.values()), axis=0)
    with info._unlock():
        for i, ch in enumerate(info["chs"]):
            if ch["kind"] == FIFF.FIFFV_MEG_CH:
                ch["coil_type"] = FIFF.FIFFV_COIL_CTF_GRAD
                x, y = (xy[ch["ch_name"].split("-")[0]] - centre) * 0.25
                z = np.sqrt(max(0.0144 - x * x - y * y, 1e-4))
                ch["loc"][:3] = (x, y, z)
                ch["loc"][9:12] = np.array([x, y, z]) / np.linalg.norm([x, y, z])
            elif ch["kind"] == FIFF.FIFFV_REF_MEG_CH:
                ch["coil_type"] = FIFF.FIFFV_COIL_CTF_REF_MAG
                ch["loc"][:3] = (0.0, 0.01 * i % 0.05, 0.2)
    return info


def _write_raw(path: Path, info: mne.Info, n_times: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    data = rng.standard_normal((len(info["ch_names"]), n_times)) * 1e-13
    data[-1] = 0.0
    mne.io.RawArray(data, info, verbose="error").save(path, verbose="error")


def write_things_run(root: Path, layout: str, *, n_meg: int = 20, subject: str = "BIGMEG1"):
    """One ds004212 run in the given events layout ("3.0.0" or "1.x"); returns the FIF."""
    meg = root / f"sub-{subject}" / "ses-01" / "meg"
    meg.mkdir(parents=True)
    stem = f"sub-{subject}_ses-01_task-main_run-01"
    n_times = int((FIRST_ONSET_S + SOA_S * len(ROWS) + 1.5) * SFREQ)
    fif = meg / f"{stem}_meg.fif"
    _write_raw(fif, ctf_like_info(n_meg), n_times)
    if layout == "3.0.0":
        lines = ["onset\tduration\ttrial_type\tthings_category_nr\tvalue\tsample"]
        for i, r in enumerate(ROWS):
            sample = int(round((FIRST_ONSET_S + SOA_S * i) * SFREQ)) + 17  # photodiode lag
            cat = "N/A" if r[6] is None else f"{float(r[6])}"
            val = "N/A" if r[7] is None else f"{float(r[7])}"
            lines.append(f"{sample / SFREQ!r}\t0.5\t{r[0]}\t{cat}\t{val}\t{sample}")
    else:
        lines = [
            "onset\tduration\ttrial_type\tfile_path\timage_nr\tcategory_nr\texemplar_nr\t"
            "test_image_nr\tthings_category_nr\tthings_image_nr\tthings_exemplar_nr\tRT"
        ]
        for i, r in enumerate(ROWS):
            f4 = [None if v is None else f"{float(v):.4f}" for v in (r[5], r[6], r[7], r[8])]
            lines.append(
                f"{FIRST_ONSET_S + SOA_S * i:.4f}\t500\t{r[0]}\t{r[1]}\t{r[2]}\t{r[3]}\t{r[4]}\t"
                + "\t".join(_na(v) for v in f4)
                + f"\t{_na(None if r[9] is None else f'{r[9]:.4f}')}"
            )
    (meg / f"{stem}_events.tsv").write_text("\n".join(lines) + "\n")
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "THINGS-MEG", "BIDSVersion": "1.6.0"})
    )
    return fif


def write_sample_attributes(path: Path) -> Path:
    """sourcedata/sample_attributes_P1.csv: one row per trial, comma-separated.

    Columns 0 (trial_type), 1 (image_nr), 2 (category_nr) and 8 (image_path), and the
    named things_* / session_nr / run_nr / image_on / image_off columns, are those that
    published code reads from the real file; the order of the others is not confirmed.
    Missing values are empty cells, as pandas writes NaN.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    cols = [
        "trial_type", "image_nr", "category_nr", "exemplar_nr", "test_image_nr",
        "things_category_nr", "things_image_nr", "things_exemplar_nr", "image_path",
        "session_nr", "run_nr", "trial_nr", "image_on", "image_off", "responded", "RT",
        "correct", "subject_nr",
    ]  # fmt: skip
    lines = [",".join(cols)]
    for i, r in enumerate(ROWS):
        on = 1.0 + SOA_S * i
        cells = [r[0], r[2], r[3], r[4], r[5], r[6], r[7], r[8], r[1], 1, 1, i + 1,
                 f"{on:.4f}", f"{on + 0.5:.4f}", int(r[9] is not None), r[9], "", 1]  # fmt: skip
        lines.append(",".join("" if c is None else str(c) for c in cells))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_events_layout_3_0_0_numbers_only(tmp_path):
    write_things_run(tmp_path, "3.0.0")
    rec = read_recording(tmp_path)
    assert rec.events_source == "events.tsv" and len(rec.events) == len(ROWS)
    trials = [trial_from_value(e.value) for e in rec.events]
    assert {t: sum(x.trial_type == t for x in trials) for t in N_TYPES} == N_TYPES
    # no path: the THINGS image number is the id, things_category_nr the category
    assert [t.image_id for t in trials[:3]] == ["21943", "23836", "11437"]
    assert [t.category for t in trials[:3]] == ["1553", "1689", "799"]
    assert all(t.image_path is None for t in trials)
    catch = [t for t in trials if t.trial_type == "catch"]
    assert all(t.image_id is None and t.category is None for t in catch)  # N/A
    assert rec.events[0].sample == int(round(FIRST_ONSET_S * SFREQ)) + 17
    assert rec.events[0].value["duration"] == 0.5


def test_events_layout_1x_file_path_and_ms_durations(tmp_path):
    write_things_run(tmp_path, "1.x")
    rec = read_recording(tmp_path)
    assert [e.sample for e in rec.events][:2] == [1200, 3000]  # onset * sfreq: no sample column
    assert all(e.value["duration"] == 0.5 for e in rec.events)  # 500 ms
    assert any("ms to s" in n for n in rec.notes)
    trials = [trial_from_value(e.value) for e in rec.events]
    assert {t: sum(x.trial_type == t for x in trials) for t in N_TYPES} == N_TYPES
    assert trials[0].image_path == "images_meg/stick/stick_10s.jpg"
    assert trials[0].image_id == "stick_10s" and trials[0].category == "1553"
    assert trials[2].image_id == "horse_17s" and trials[2].category == "799"
    assert trials[4].image_id == "catch118" and trials[4].trial_type == "catch"
    assert image_number(rec.events[0].value) == 21943


def test_images_table_maps_3_0_0_numbers_to_files(tmp_path):
    write_things_run(tmp_path, "3.0.0")
    table = read_images_table(
        write_sample_attributes(tmp_path / "sourcedata" / "sample_attributes_P1.csv")
    )
    assert (table.number_column, table.path_column) == ("things_image_nr", "image_path")
    assert len(table) == 10 and table.path_of(23220) == "images_test_meg/tent_14n.jpg"
    rec = read_recording(tmp_path)
    trials = [trial_from_value(e.value, table) for e in rec.events]
    expected = [(r[0], None if r[0] == "catch" else Path(r[1]).stem) for r in ROWS]
    assert [(t.trial_type, t.image_id) for t in trials] == expected
    assert trials[3].image_path == "images_meg/tent/tent_10n.jpg" and trials[3].category == "1644"

    # a TSV with other column names works as well; a table without them is refused
    tsv = tmp_path / "images.tsv"
    tsv.write_text("image_nr\tfilename\n21943\tstick/stick_10s.jpg\n")
    assert read_images_table(tsv).paths == {21943: "stick/stick_10s.jpg"}
    bad = tmp_path / "bad.csv"
    bad.write_text("a,b\n1,2\n")
    with pytest.raises(ValueError, match="image-number column"):
        read_images_table(bad)
    clash = tmp_path / "clash.csv"
    clash.write_text("things_image_nr,image_path\n5,a/a_1.jpg\n5,b/b_1.jpg\n")
    with pytest.raises(ValueError, match="two paths"):
        read_images_table(clash)


def test_zero_shot_split_of_3_0_0_with_images_table_has_no_test_category_in_training(tmp_path):
    write_things_run(tmp_path, "3.0.0")
    table = write_sample_attributes(tmp_path / "sourcedata" / "sample_attributes_P1.csv")
    es = load_epochs(
        tmp_path, tmin_s=-0.1, tmax_s=0.5, pad_s=0.2, images_table=table, progress=False
    )
    assert es.drop_log["catch"] == 2 and len(es) == 10
    train_cats = set(es.categories[es.train_mask])
    test_cats = set(es.categories[es.test_mask])
    assert test_cats == {"799", "1644", "151", "1737"}
    assert not train_cats & test_cats
    assert es.drop_log["train_in_test_category"] == 1  # tent_10n: tent is a test concept
    assert set(es.image_ids[es.train_mask]) == {
        "stick_10s", "tostada_10s", "gravestone_10s", "earring_10s", "bench_10s"
    }  # fmt: skip
    assert es.image_paths[es.test_mask][0] == "images_test_meg/horse_17s.jpg"
    # reference and misc channels are not data channels
    assert es.X.shape[1] == 20 and es.ch_types == ("mag",) * 20


def test_ctf_channel_types_come_from_the_recording_not_channels_tsv(tmp_path):
    """channels.tsv types the MEG channels as OTHER (as ds004212's does)."""
    fif = write_things_run(tmp_path, "3.0.0", n_meg=272)
    tsv = fif.with_name(fif.name.replace("_meg.fif", "_channels.tsv"))
    rows = ["name\ttype\tunits\tstatus"]
    for name in MEG_NAMES:
        rows.append(f"{name}\tOTHER\tT\t{'bad' if name == 'MRO11-1609' else 'good'}")
    rows += [f"{n}\tMEGREFMAG\tT\tgood" for n in REF_NAMES]
    rows += [f"{n}\tMISC\tV\tgood" for n in MISC_NAMES] + ["UPPT001\tTRIG\tn/a\tgood"]
    tsv.write_text("\n".join(rows) + "\n")
    rec = read_recording(fif)
    types = rec.raw.get_channel_types()
    assert types.count("mag") == 272 and types.count("ref_meg") == 28
    assert types.count("misc") == 10 and types.count("stim") == 1
    assert rec.raw.info["bads"] == ["MRO11-1609"]  # bads still come from channels.tsv
    assert any("OTHER" in n or "misc" in n for n in rec.notes)
    assert rec.raw.info["chs"][0]["coil_type"] == FIFF.FIFFV_COIL_CTF_GRAD

    es = load_epochs(tmp_path, tmin_s=-0.1, tmax_s=0.3, pad_s=0.0, progress=False)
    assert len(es.ch_names) == 271 and "MRO11-1609" not in es.ch_names
    assert not set(es.ch_names) & set(REF_NAMES + MISC_NAMES + ["UPPT001"])
    assert es.positions_2d.shape == (271, 2)
    assert len(np.unique(es.positions_2d.round(4), axis=0)) == 271


def _write_derivative_epochs(folder: Path, participant: int, sample_attributes: Path) -> Path:
    """preprocessed_P{n}-epo.fif as the authors wrote it: 200 Hz, -0.1..1.3 s, picks='mag'
    (271 channels), event codes = things_image_nr (catch 999999), sample_attributes as
    metadata; saved in parts with split_size."""
    import pandas as pd

    meta = pd.read_csv(sample_attributes)
    info = ctf_like_info(272, sfreq_hz=200.0)
    info = mne.pick_info(info, mne.pick_types(info, meg="mag", ref_meg=False, exclude=()))
    info = mne.pick_info(info, [i for i, c in enumerate(info["ch_names"]) if c != "MRO11-1609"])
    n_times = 281
    codes = meta["things_image_nr"].fillna(999999).astype(int).to_numpy()
    events = np.c_[np.arange(len(meta)) * 300 + 240, np.zeros(len(meta), int), codes]
    data = np.random.default_rng(participant).standard_normal((len(meta), 271, n_times))
    epochs = mne.EpochsArray(
        data * 1e-13, info, events, tmin=-0.1,
        event_id={str(c): int(c) for c in np.unique(codes)}, metadata=meta, verbose="error",
    )  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"preprocessed_P{participant}-epo.fif"
    epochs.save(path, split_size=1_700_000, verbose="error")
    return path


def test_derivative_epochs_split_parts_are_joined_on_their_own_time_axis(tmp_path):
    table = write_sample_attributes(tmp_path / "sourcedata" / "sample_attributes_P1.csv")
    deriv = tmp_path / "derivatives" / "preprocessed"
    first = _write_derivative_epochs(deriv, 1, table)
    parts = sorted(p.name for p in deriv.iterdir())
    assert len(parts) >= 3 and parts[0] == "preprocessed_P1-epo-1.fif"
    assert parts[-1] == "preprocessed_P1-epo.fif"
    assert find_epochs_files(tmp_path) == [first]
    for source in (tmp_path, deriv, first):
        es = load_epochs(source, progress=False)
        assert es.sfreq_hz == 200.0 and es.tmin_s == pytest.approx(-0.1)
        assert es.n_pad == 0 and es.X.shape == (10, 271, 281)
        assert es.subjects == ("sub-BIGMEG1",) and es.drop_log["catch"] == 2
        assert set(es.categories[es.test_mask]) == {"799", "1644", "151", "1737"}
        assert not set(es.categories[es.train_mask]) & set(es.categories[es.test_mask])
    whole = mne.read_epochs(first, verbose="error").get_data(picks="mag")
    keep = [i for i, r in enumerate(ROWS) if r[0] != "catch"]
    assert np.array_equal(es.X, whole[keep].astype(np.float32))


def test_dataset_report_names_what_is_missing(tmp_path):
    write_things_run(tmp_path, "3.0.0")
    report = describe_dataset(tmp_path)
    assert report["n_recordings"] == 1 and report["trials_per_type"] == N_TYPES
    assert report["trials_with_image_file"] == 0 and report["trials_with_category"] == 10
    assert report["n_categories"] == 9
    assert report["zero_shot"] == {"train": 5, "test": 4, "left_out": 1}
    assert any("--images-table" in m for m in report["missing"])

    table = write_sample_attributes(tmp_path / "sourcedata" / "sample_attributes_P1.csv")
    # the table is found under sourcedata/ and proposed by its path
    assert any(str(table) in m for m in describe_dataset(tmp_path)["missing"])
    report = describe_dataset(tmp_path, images_table=table)
    assert report["trials_with_image_file"] == 10
    assert not any("--images-table" in m for m in report["missing"])
    assert any("image folder" in m for m in report["missing"])  # the jpgs are not here
    text = format_report(report)
    assert "exp 6" in text and "test 4" in text and "catch 2" in text


def test_dataset_command(tmp_path, capsys):
    from rtdecode.cli import main

    write_things_run(tmp_path, "1.x")
    out = tmp_path / "report.json"
    assert main(["dataset", str(tmp_path), "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "recordings: 1" in printed
    saved = json.loads(out.read_text())
    assert saved["trials_per_type"] == N_TYPES and saved["trials_with_image_file"] == 10
    assert main(["dataset", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_read_events_tsv_3_0_0_row_from_the_issue(tmp_path):
    tsv = tmp_path / "x_events.tsv"
    tsv.write_text(
        "onset\tduration\ttrial_type\tthings_category_nr\tvalue\tsample\n"
        "2.8541666666666665\t0.5\texp\t1760.0\t24812.0\t3425\n"
        "20.661666666666665\t0.5\tcatch\tN/A\tN/A\t24794\n"
    )
    exp, catch = read_events_tsv(tsv, SFREQ, 30_000)
    assert exp.sample == 3425 and exp.value["value"] == 24812.0
    t = trial_from_value(exp.value)
    assert (t.trial_type, t.image_id, t.category) == ("exp", "24812", "1760")
    assert catch.value["value"] is None and trial_from_value(catch.value).image_id is None
