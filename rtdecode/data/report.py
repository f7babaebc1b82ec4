"""What a dataset holds, before anything is trained: ``rtdecode dataset DIR``.

:func:`describe_dataset` reads the recordings' headers and events (no samples), or the
epochs files' metadata, and reports recordings, trials per type, trials with an image
and a category, the number of categories and the zero-shot split sizes, with one
sentence per thing that is missing and what to give. It applies the very rules the
loader applies (:func:`rtdecode.data.things.trial_from_value`,
:func:`rtdecode.data.things.zero_shot_split`), so its numbers are the loader's.

Threads: plain functions, run by the caller's thread.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from rtdecode.data.card import CardError, is_card, read_card
from rtdecode.data.things import (
    ImagesTable,
    find_epochs_files,
    find_recordings,
    image_number,
    is_epochs_file,
    read_images_table,
    resolve_image_root,
    zero_shot_split,
)

__all__ = ["describe_card", "describe_dataset", "describe_gallery", "format_report"]

_IMAGE_DIRS = ("", "images", "stimuli", "sourcedata")


def _suggest_table(root: Path) -> Path | None:
    """THINGS-MEG's own images table, if the dataset has it."""
    for base in (root, *list(root.parents)[:2]):
        found = sorted((base / "sourcedata").glob("sample_attributes_P*.csv"))
        if found:
            return found[0]
    return None


def _recordings_part(root: Path, subjects, images: ImagesTable | None):
    from rtdecode.data.datasets import _data_channels
    from rtdecode.data.recordings import read_recording
    from rtdecode.data.things import trial_from_value

    entries, trials, numbers = [], [], []
    for path in find_recordings(root, subjects):
        rec = read_recording(path)
        n_data = len(_data_channels(rec.raw.info))
        entries.append(
            {
                "path": str(path),
                "sfreq_hz": rec.sfreq_hz,
                "duration_s": round(rec.duration_s, 3),
                "n_data_channels": n_data,
                "channel_types": dict(Counter(rec.raw.get_channel_types())),
                "events_source": rec.events_source,
                "n_events": len(rec.events),
                "notes": list(rec.notes),
            }
        )
        for ev in rec.events:
            trials.append(trial_from_value(ev.value, images))
            numbers.append(image_number(ev.value))
    return entries, trials, numbers


def _epochs_part(files: list[Path], images: ImagesTable | None):
    import mne

    from rtdecode.data.datasets import _data_channels, epochs_values
    from rtdecode.data.things import trial_from_value

    entries, trials, numbers = [], [], []
    for path in files:
        ep = mne.read_epochs(path, preload=False, verbose="error")
        values = epochs_values(ep)
        entries.append(
            {
                "path": str(path),
                "sfreq_hz": float(ep.info["sfreq"]),
                "tmin_s": float(ep.tmin),
                "tmax_s": float(ep.tmax),
                "n_data_channels": len(_data_channels(ep.info)),
                "channel_types": dict(Counter(ep.get_channel_types())),
                "events_source": "metadata" if ep.metadata is not None else "event codes",
                "n_events": len(ep),
                "notes": [],
            }
        )
        trials += [trial_from_value(v, images) for v in values]
        numbers += [image_number(v) for v in values]
    return entries, trials, numbers


def describe_dataset(
    data_dir: str | Path,
    *,
    images_table: str | Path | None = None,
    subjects=None,
) -> dict[str, Any]:
    """Report what a dataset (raw recordings or epochs files) gives the loader.

    Parameters
    ----------
    data_dir : path-like
        What :func:`rtdecode.data.datasets.load_epochs` would be given: a THINGS-like
        BIDS folder, a folder of recordings, one recording, an epochs file or a folder of
        them (THINGS-MEG's ``derivatives/preprocessed``).
    images_table : path-like, optional
        Image numbers -> files (THINGS-MEG's ``sourcedata/sample_attributes_P1.csv``).
    subjects : iterable of str, optional

    Returns
    -------
    dict
        JSON-serialisable: ``data_dir``, ``kind`` (``recordings`` or ``epochs``),
        ``recordings`` (one dict each), ``n_recordings``, ``trials_per_type``,
        ``trials_with_image`` (an image id), ``trials_with_image_file`` (a path),
        ``trials_with_category``, ``n_categories``, ``zero_shot`` (``train``, ``test``,
        ``left_out``), ``images_table``, ``image_root``, ``other_inputs`` and ``missing``
        (sentences: what is missing and what to give). Catch trials count in
        ``trials_per_type`` only.

    Raises
    ------
    FileNotFoundError
        ``data_dir`` or ``images_table`` does not exist.
    ValueError
        ``data_dir`` holds no recording and no epochs file.
    """
    root = Path(data_dir).expanduser()
    if not root.exists():
        raise FileNotFoundError(
            f"Data folder {str(root)!r} does not exist; give a THINGS-MEG (ds004212) folder, "
            "a folder of recordings, or an epochs file."
        )
    if is_card(root):
        return describe_card(root, subjects=subjects)
    images = read_images_table(images_table) if images_table is not None else None
    epochs_files = find_epochs_files(root, subjects)
    other: list[str] = []
    if root.is_file() and is_epochs_file(root):
        kind, (entries, trials, numbers) = "epochs", _epochs_part(epochs_files, images)
    else:
        try:
            kind, (entries, trials, numbers) = (
                "recordings",
                _recordings_part(root, subjects, images),
            )
        except ValueError:
            if not epochs_files:
                raise
            kind, (entries, trials, numbers) = "epochs", _epochs_part(epochs_files, images)
        else:
            other = [str(p) for p in epochs_files]

    decoded = [(t, n) for t, n in zip(trials, numbers, strict=True) if t.trial_type != "catch"]
    with_id = [t for t, _ in decoded if t.image_id is not None]
    types = [t.trial_type for t in with_id]
    cats = [t.category or t.image_id for t in with_id]
    train, test, left_out = zero_shot_split(types, cats) if with_id else ([], [], 0)
    image_root, _ = resolve_image_root(root, [t.image_path for t in with_id])
    n_number_only = sum(t.image_path is None and n is not None for t, n in decoded)
    report: dict[str, Any] = {
        "data_dir": str(root),
        "kind": kind,
        "recordings": entries,
        "n_recordings": len(entries),
        "trials_per_type": dict(Counter(t.trial_type for t in trials)),
        "trials_with_image": len(with_id),
        "trials_with_image_file": sum(t.image_path is not None for t, _ in decoded),
        "trials_with_category": sum(t.category is not None for t, _ in decoded),
        "n_categories": len(set(cats)),
        "zero_shot": {
            "train": int(np.sum(train)),
            "test": int(np.sum(test)),
            "left_out": int(left_out),
        },
        "images_table": str(images.path) if images is not None else None,
        "image_root": str(image_root) if image_root is not None else None,
        "other_inputs": other,
    }
    report.update(describe_gallery(root))
    report["missing"] = _missing(report, root, decoded, n_number_only, images, entries)
    return report


def describe_gallery(root: str | Path) -> dict[str, Any]:
    """The image world's split and images, from the dataset's ``gallery.csv``.

    Parameters
    ----------
    root : path-like
        The dataset folder; its ``gallery.csv`` is looked for in the folder itself and in
        ``images/``, ``stimuli/`` and ``sourcedata/`` (``rtdecode simulate`` writes
        ``images/gallery.csv``).

    Returns
    -------
    dict
        Empty when there is no ``gallery.csv``; else ``gallery`` (its path) with
        ``split`` (``n_train_concepts``, ``n_test_concepts``, ``n_shared_concepts``, ...)
        and ``images`` (``n_images``, ``n_concepts``, ``licenses``, ...) as
        :func:`rtdecode.images.world.summarize_world` counts them.
    """
    from rtdecode.images.gallery import CSV_NAME
    from rtdecode.images.world import read_world_table, summarize_world

    base = Path(root) if Path(root).is_dir() else Path(root).parent
    for sub in _IMAGE_DIRS:
        csv_path = base / sub / CSV_NAME if sub else base / CSV_NAME
        if csv_path.is_file():
            return {"gallery": str(csv_path), **summarize_world(read_world_table(csv_path))}
    return {}


def describe_card(card_path: str | Path, *, subjects=None) -> dict[str, Any]:
    """Report a dataset card: per recording, what was found and what is wrong.

    The card itself is checked first (:func:`rtdecode.data.card.read_card`: a card that
    cannot be read raises its CardError). Then every recording is read with the card
    applied; what fails there (a code with no label, a channel the card names that a run
    lacks, runs with different channels) is a sentence in ``missing`` with the fix,
    and the other recordings are still reported.

    Returns
    -------
    dict
        The keys of :func:`describe_dataset` (``kind`` = ``"card"``; ``zero_shot`` holds
        the card's split sizes) plus ``card`` (the card as resolved) and, per recording,
        ``split``, ``n_trials``, ``trials_per_label`` and ``error``.
    """
    card = read_card(card_path)
    wanted = None if subjects is None else {
        s if str(s).startswith("sub-") else f"sub-{s}" for s in subjects}
    entries, missing, recs, labels = [], [], [], []
    for path in card.recordings:
        if wanted is not None and card.subject_of(path) not in wanted:
            continue
        entry: dict[str, Any] = {"path": card._rel(path), "subject": card.subject_of(path),
                                 "split": "test" if path in card.test else "train"}
        try:
            rec = card.read(path)
        except (CardError, ValueError, OSError) as exc:
            entry["error"] = str(exc)
            missing.append(str(exc))
            entries.append(entry)
            continue
        recs.append(rec)
        chans = card.data_channels(rec.raw.info)
        trial_labels = [str(e.value.get("image_id")) for e in rec.events]
        labels += [(entry["split"], lab) for lab in trial_labels]
        entry.update(
            sfreq_hz=rec.sfreq_hz, duration_s=round(rec.duration_s, 3),
            channels=[c for c in chans if c not in rec.raw.info["bads"]],
            n_data_channels=len([c for c in chans if c not in rec.raw.info["bads"]]),
            bad_channels=list(rec.raw.info["bads"]),
            channel_types=dict(Counter(rec.raw.get_channel_types())),
            events_source=rec.events_source, n_events=len(rec.events),
            n_trials=len(rec.events), trials_per_label=dict(sorted(Counter(trial_labels).items())),
            notes=list(rec.notes), error=None,
        )
        if not rec.events:
            missing.append(
                f"{entry['path']} has no event with a code of [events] codes; check "
                "[events] source (it found none there) and the codes."
            )
        entries.append(entry)
    try:
        card.check_channels(recs)
    except CardError as exc:
        missing.append(str(exc))
    if not card.test:
        missing.append(
            "The card has no [split] test: nothing would be held out. Name the test "
            "recordings there (e.g. test = [\"run-06.fif\"]); they are never trained on."
        )
    n_test = sum(s == "test" for s, _ in labels)
    report: dict[str, Any] = {
        "data_dir": str(card.path), "kind": "card", "card": card.to_dict(),
        "recordings": entries, "n_recordings": len(entries),
        "trials_per_type": dict(Counter("test" if s == "test" else "exp" for s, _ in labels)),
        "trials_with_image": len(labels), "trials_with_image_file": 0,
        "trials_with_category": len(labels) if card.labels == "category" else 0,
        "n_categories": len({lab for _, lab in labels}),
        "zero_shot": {"train": len(labels) - n_test, "test": n_test, "left_out": 0},
        "images_table": None,
        "image_root": None if card.images_root is None else str(card.images_root),
        "other_inputs": [], "missing": missing,
    }
    for e in entries:
        e.setdefault("sfreq_hz", None)
    return report


def _missing(report, root: Path, decoded, n_number_only: int, images, entries) -> list[str]:
    missing = []
    if not decoded:
        missing.append(
            "No trial to decode: the events name no image (all are catch trials or none "
            "were found). Give an events.tsv per recording (THINGS-MEG layout), or "
            "annotations whose descriptions are JSON with an image_id."
        )
    elif report["trials_with_image"] < len(decoded):
        missing.append(
            f"{len(decoded) - report['trials_with_image']} of {len(decoded)} trials name no "
            "image (no image_path, image_id or image number); they are dropped."
        )
    if n_number_only:
        if images is None:
            table = _suggest_table(root)
            give = (
                f"--images-table {table}"
                if table is not None
                else "--images-table sourcedata/sample_attributes_P1.csv (from ds004212)"
            )
            missing.append(
                f"{n_number_only} trials give THINGS image numbers but no image file; give "
                f"{give} to map numbers to files."
            )
        else:
            missing.append(
                f"{n_number_only} trials give image numbers that {str(images.path)!r} does "
                f"not list (column {images.number_column!r}); give a table that lists them."
            )
    if report["trials_with_image_file"] and report["image_root"] is None:
        tried = ", ".join(str(root / d) if d else str(root) for d in _IMAGE_DIRS)
        missing.append(
            "The image files are not in an image folder next to the data (tried "
            f"{tried}); put the THINGS image folders (images_meg/, images_test_meg/) in one "
            "of these, or pass image_root= to the loader."
        )
    if decoded and report["zero_shot"]["test"] == 0:
        missing.append("No test trial and no category to hold out: the split has no test set.")
    for e in entries:
        if e["n_data_channels"] == 0:
            missing.append(
                f"{e['path']} has no MEG (or EEG) channel to decode (channel types "
                f"{e['channel_types']}); give a recording whose file types its channels."
            )
    return missing


def format_report(report: dict[str, Any]) -> str:
    """The report as a few lines of text (what ``rtdecode dataset`` prints)."""
    lines = [f"{report['data_dir']} ({report['kind']})", f"recordings: {report['n_recordings']}"]
    for e in report["recordings"]:
        if e.get("error"):
            lines.append(f"  {e['path']} ({e['split']}): NOT READ, see missing")
            continue
        split = f" ({e['split']}, {e['trials_per_label']})" if "split" in e else ""
        lines.append(
            f"  {e['path']}{split}: {e['sfreq_hz']:g} Hz, {e['n_data_channels']} data "
            f"channels, {e['n_events']} events from {e['events_source']}"
        )
    per_type = ", ".join(f"{k} {v}" for k, v in sorted(report["trials_per_type"].items()))
    zs = report["zero_shot"]
    lines += [
        f"trials per type: {per_type or 'none'}",
        f"trials with an image: {report['trials_with_image']} "
        f"(with an image file: {report['trials_with_image_file']}), "
        f"with a category: {report['trials_with_category']}",
        f"categories: {report['n_categories']}",
        (f"split (the card's, by recording): train {zs['train']}, test {zs['test']}"
         if report["kind"] == "card" else
         f"zero-shot split: train {zs['train']}, test {zs['test']}, "
         f"left out (test category) {zs['left_out']}"),
        f"images table: {report['images_table'] or 'none'}; "
        f"image folder: {report['image_root'] or 'not found'}",
    ]
    if report.get("gallery"):
        sp, im = report["split"], report["images"]
        licenses = ", ".join(f"{k or 'none'} {v}" for k, v in im["licenses"].items())
        lines += [
            f"gallery: {report['gallery']}: {im['n_images']} images of {im['n_concepts']} "
            f"concepts; licences: {licenses}",
            f"image split: {sp['n_train_concepts']} train concepts, {sp['n_test_concepts']} "
            f"test concepts, {sp['n_shared_concepts']} shared",
        ]
    if report["other_inputs"]:
        lines.append(
            f"also present: {len(report['other_inputs'])} epochs file(s) "
            f"({report['other_inputs'][0]} ...); give their folder to use them"
        )
    lines += (
        ["missing:"] + [f"  - {m}" for m in report["missing"]]
        if report["missing"]
        else ["missing: nothing"]
    )
    return "\n".join(lines)
