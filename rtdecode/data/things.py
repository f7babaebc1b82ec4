"""THINGS-MEG conventions: where recordings lie, what a trial is, the zero-shot split.

THINGS-MEG (OpenNeuro ds004212; Hebart et al. 2023) is a BIDS dataset::

    sub-BIGMEG1/ses-01/meg/sub-BIGMEG1_ses-01_task-main_run-01_meg.ds
    sub-BIGMEG1/ses-01/meg/sub-BIGMEG1_ses-01_task-main_run-01_events.tsv

with one row per image: ``onset, duration, trial_type, value, sample, image_nr,
image_path``. ``trial_type`` is ``exp`` (each of 22,248 training images once), ``test``
(200 test images, repeated in every session) or ``catch`` (the participant's detection
task; not for decoding). ``image_path`` is relative to the THINGS image folder, e.g.
``images_meg/aardvark/aardvark_01b.jpg``: the category (THINGS "concept") is the folder
name. rtdecode's simulated subject writes the same layout, with two extra columns
(``image_id``, ``category``) that win over what the path says.

This module finds the recordings of such a tree (or of a plain folder of recordings),
turns event values (from :func:`rtdecode.data.recordings.read_recording`) into trial
records, splits them zero-shot (no test category in training) and locates the images.
The epoch loader is :func:`rtdecode.data.datasets.load_epochs`.

Threads: plain functions, run by the caller's thread.
"""

from __future__ import annotations

import re
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

__all__ = [
    "Trial",
    "category_of_path",
    "find_recordings",
    "resolve_image_root",
    "subject_of",
    "trial_from_value",
    "zero_shot_split",
]

_SUBJECT_RE = re.compile(r"(?:^|_)sub-([A-Za-z0-9]+)")
# THINGS-MEG keeps test and catch images in flat folders, the concept only in the name.
_FLAT_IMAGE_DIRS = {"images_test_meg", "images_catch_meg"}
_EXEMPLAR_RE = re.compile(r"^(.+?)_\d+[a-z]?$")


@dataclass(frozen=True)
class Trial:
    """One image presentation, as the loader needs it.

    Attributes
    ----------
    trial_type : str
        ``exp`` (training), ``test``, ``catch``, or what the recording said (lower case);
        ``exp`` when the recording gives none.
    image_id : str | None
        Gallery id of the image (the file stem unless the events say otherwise).
    image_path : str | None
        Path as written in the events, relative to the image folder.
    category : str | None
        The ``category`` the events give, else what ``image_path`` implies
        (:func:`category_of_path`).
    """

    trial_type: str
    image_id: str | None
    image_path: str | None
    category: str | None


def trial_from_value(value: dict[str, Any]) -> Trial:
    """Read a trial from an event value dict (``Event.value`` of a Recording).

    Parameters
    ----------
    value : dict
        Keys ``trial_type``, ``image_id``, and optionally ``image_path``, ``category``.

    Returns
    -------
    Trial
    """
    ttype = value.get("trial_type")
    ttype = "exp" if ttype is None else str(ttype).strip().lower()
    image_id = value.get("image_id")
    path = value.get("image_path")
    path = str(path).replace("\\", "/") if path not in (None, "") else None
    category = value.get("category")
    if category in (None, "") and path is not None:
        category = category_of_path(path)
    return Trial(
        trial_type=ttype,
        image_id=None if image_id in (None, "") else str(image_id),
        image_path=path,
        category=None if category in (None, "") else str(category),
    )


def category_of_path(image_path: str) -> str | None:
    """The category (THINGS concept) an image path implies.

    ``images_meg/coat_rack/coat_rack_01b.jpg`` -> ``coat_rack`` (the folder). Images in a
    flat folder (THINGS-MEG's ``images_test_meg/coat_rack_13s.jpg``, or no folder) name it
    in the file: the stem without its trailing ``_<number><letter>`` -> ``coat_rack``.
    """
    p = PurePosixPath(image_path.replace("\\", "/"))
    parent = p.parent.name
    if parent and parent not in _FLAT_IMAGE_DIRS:
        return parent
    m = _EXEMPLAR_RE.match(p.stem)
    return m.group(1) if m else (p.stem or None)


def _normalise_subject(s: str) -> str:
    s = str(s)
    return s if s.startswith("sub-") else f"sub-{s}"


def subject_of(path: Path) -> str:
    """BIDS subject of a recording (``sub-01``), or ``sub-unknown`` outside BIDS."""
    m = _SUBJECT_RE.search(path.name)
    if m:
        return f"sub-{m.group(1)}"
    for part in reversed(path.parts[:-1]):
        if part.startswith("sub-"):
            return part
    return "sub-unknown"


def find_recordings(data_dir: str | Path, subjects: Iterable[str] | None = None) -> list[Path]:
    """Recordings of a THINGS-like BIDS tree, a plain folder, or a single file.

    In a BIDS tree (``sub-*`` folders) only the ``meg/*_meg.*`` files of the subject
    folders are used, so files next to them (e.g. the simulated ``replay_raw.fif`` at the
    root) are not mixed into the dataset. Otherwise every recording under the folder is.

    Parameters
    ----------
    data_dir : path-like
        Folder (or a single recording).
    subjects : iterable of str, optional
        Keep these subjects only (``"01"`` or ``"sub-01"``).

    Returns
    -------
    list of Path
        Sorted.

    Raises
    ------
    FileNotFoundError
        ``data_dir`` does not exist.
    ValueError
        It holds no recording, or none of the requested subjects.
    """
    from rtdecode.data.recordings import SUPPORTED_FORMATS, recording_files

    root = Path(data_dir).expanduser()
    if not root.exists():
        raise FileNotFoundError(
            f"Data folder {str(root)!r} does not exist; give a THINGS-like BIDS folder, a "
            "folder of recordings, or run `rtdecode simulate --out DIR` to make one."
        )
    if root.is_file() or root.suffix.lower() == ".ds":
        files = [root]
    else:
        subject_dirs = [p for p in root.glob("sub-*") if p.is_dir()]
        if subject_dirs:
            files = [
                p
                for d in subject_dirs
                for p in recording_files(d)
                if p.parent.name == "meg" and re.search(r"_meg(\.|_split)", p.name)
            ]
        else:
            files = recording_files(root)
    if not files:
        formats = ", ".join(sorted(set(SUPPORTED_FORMATS)))
        raise ValueError(
            f"Data folder {str(root)!r} holds no recordings ({formats}); expected a BIDS "
            "tree like sub-XX/ses-YY/meg/*_meg.fif with *_events.tsv, or recording files. "
            "Run `rtdecode simulate --out DIR` for an example."
        )
    if subjects is not None:
        wanted = {_normalise_subject(s) for s in subjects}
        available = sorted({subject_of(p) for p in files})
        files = [p for p in files if subject_of(p) in wanted]
        if not files:
            raise ValueError(
                f"None of the subjects {sorted(wanted)} is in {str(root)!r}; it has {available}."
            )
    return sorted(files)


def zero_shot_split(
    trial_types: Sequence[str], categories: Sequence[str], *, test_fraction: float = 0.2
) -> tuple[np.ndarray, np.ndarray, int]:
    """Train and test masks with no test category among the training trials.

    With ``test`` trials present (THINGS-MEG), the split follows ``trial_type``: test
    trials are the test set, and any ``exp`` trial of a category that also appears in the
    test set is left out of training (as in Benchetrit et al. 2024), so retrieval on the
    test set is zero-shot. Without test trials (a generic recording), a deterministic
    ``test_fraction`` of the categories (chosen by a hash of their names) is held out.

    Parameters
    ----------
    trial_types, categories : sequence of str, length n_trials
        Catch trials must already be removed.
    test_fraction : float
        Share of categories held out when no trial is of type ``test``.

    Returns
    -------
    train_mask, test_mask : ndarray of bool, shape (n_trials,)
        Disjoint; a trial in neither is one that was left out.
    n_left_out : int
        Training trials left out because their category is a test category.
    """
    ttypes = np.asarray(trial_types, dtype=object)
    cats = np.asarray(categories, dtype=object)
    if ttypes.shape != cats.shape:
        raise ValueError(
            f"zero_shot_split got {len(ttypes)} trial types and {len(cats)} categories; "
            "give one of each per trial."
        )
    if (ttypes == "catch").any():
        raise ValueError("Remove catch trials before splitting; they are not decoded.")
    test = ttypes == "test"
    if not test.any():
        names = sorted(set(cats.tolist()))
        n_test = int(round(test_fraction * len(names)))
        if len(names) > 1:
            n_test = min(max(n_test, 1), len(names) - 1)
        else:
            n_test = 0
        ranked = sorted(names, key=lambda c: zlib.crc32(str(c).encode()))
        test = np.isin(cats, ranked[:n_test])
    test_cats = set(cats[test].tolist())
    candidates = ~test
    train = candidates & ~np.isin(cats, list(test_cats))
    return train, test, int((candidates & ~train).sum())


def resolve_image_root(
    data_dir: str | Path, image_paths: Sequence[str | None], image_root: str | Path | None = None
) -> tuple[Path | None, Path | None]:
    """Find the folder the events' image paths are relative to, and the gallery folder.

    Parameters
    ----------
    data_dir : path-like
        The dataset folder (or recording) given to the loader.
    image_paths : sequence of str or None
        ``image_path`` of every trial (None where unknown).
    image_root : path-like, optional
        Where the images are (the THINGS image folder). Default: the first of
        ``data_dir``, ``data_dir/images``, ``data_dir/stimuli``, ``data_dir/sourcedata`` in
        which the image files exist.

    Returns
    -------
    image_root : Path or None
        Folder such that ``image_root / image_path`` exists; None if none was found.
    gallery_root : Path or None
        Folder to open with ``Gallery.from_folder``: ``image_root/<first part>`` when all
        image paths share their first folder (the simulation's ``images/``), else
        ``image_root``.
    """
    paths = [p for p in image_paths if p]
    if not paths:
        return None, None
    base = Path(data_dir).expanduser()
    if base.is_file() or base.suffix.lower() == ".ds":
        base = base.parent
    if image_root is not None:
        candidates = [Path(image_root).expanduser()]
    else:
        candidates = [base, base / "images", base / "stimuli", base / "sourcedata"]
    probe = sorted(set(paths))[:: max(1, len(set(paths)) // 20)][:20]
    root = next((c for c in candidates if all((c / p).is_file() for p in probe)), None)
    if root is None:
        if image_root is not None:
            raise FileNotFoundError(
                f"The image folder {str(image_root)!r} does not hold the images the events "
                f"name (e.g. {probe[0]!r}); give the folder the image_path values are "
                "relative to."
            )
        return None, None
    firsts = {PurePosixPath(p).parts[0] for p in paths if len(PurePosixPath(p).parts) > 2}
    n_deep = sum(len(PurePosixPath(p).parts) > 2 for p in paths)
    gallery = root / firsts.pop() if len(firsts) == 1 and n_deep == len(paths) else root
    return root.resolve(), gallery.resolve()
