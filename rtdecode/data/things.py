"""THINGS-MEG conventions: where recordings lie, what a trial is, the zero-shot split.

THINGS-MEG (OpenNeuro ds004212; Hebart et al. 2023) is a BIDS dataset::

    sub-BIGMEG1/ses-01/meg/sub-BIGMEG1_ses-01_task-main_run-01_meg.ds
    sub-BIGMEG1/ses-01/meg/sub-BIGMEG1_ses-01_task-main_run-01_events.tsv

with one row per image. ``trial_type`` is ``exp`` (each of 22,248 training images once),
``test`` (200 test images, repeated in every session) or ``catch`` (the participant's
detection task; not for decoding). Two published layouts of ``events.tsv`` exist:

- 3.0.0: ``onset, duration, trial_type, things_category_nr, value, sample``; duration in
  seconds, ``value`` is the THINGS image number, ``N/A`` on catch rows. No image path: the
  image comes from an images table (``sourcedata/sample_attributes_P{1..4}.csv``, see
  :func:`read_images_table`), the category from ``things_category_nr``.
- 1.x: ``onset, duration, trial_type, file_path, image_nr, category_nr, exemplar_nr,
  test_image_nr, things_category_nr, things_image_nr, things_exemplar_nr, RT``; duration in
  ms, ``n/a`` for missing values, ``file_path`` such as ``images_meg/stick/stick_10s.jpg``.

Image paths are relative to the THINGS image folder, e.g.
``images_meg/aardvark/aardvark_01b.jpg``. The category (THINGS "concept") is the
``category`` column if there is one, else ``things_category_nr`` (as a number: the
zero-shot split needs no names), else what the path says (the folder). rtdecode's
simulated subject writes ``image_path`` with two extra columns (``image_id``,
``category``). The authors' preprocessed epochs
(``derivatives/preprocessed/preprocessed_P{1..4}-epo.fif``, split in parts) are a second
kind of input (:func:`find_epochs_files`).

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
    "ImagesTable",
    "Trial",
    "category_of_path",
    "find_epochs_files",
    "find_recordings",
    "image_number",
    "is_epochs_file",
    "read_images_table",
    "resolve_image_root",
    "subject_of",
    "trial_from_value",
    "zero_shot_split",
]

_SUBJECT_RE = re.compile(r"(?:^|_)sub-([A-Za-z0-9]+)")
# THINGS-MEG keeps test and catch images in flat folders, the concept only in the name.
_FLAT_IMAGE_DIRS = {"images_test_meg", "images_catch_meg"}
_EXEMPLAR_RE = re.compile(r"^(.+?)_\d+[a-z]?$")
# Event columns holding an image path, in order of preference (1.x writes file_path).
_PATH_KEYS = ("image_path", "file_path")
# An images table's image-number and path columns, in order of preference.
_TABLE_NUMBER_COLUMNS = ("things_image_nr", "image_nr", "image_number", "image_id", "value")
_TABLE_PATH_COLUMNS = ("image_path", "file_path", "path", "filename", "file", "stim_file")
# The derivatives' epochs: preprocessed_P1-epo.fif, continued in preprocessed_P1-epo-1.fif ...
_EPOCHS_RE = re.compile(r"-epo\.fif$|_epo\.fif$")
_PARTICIPANT_RE = re.compile(r"(?:^|_)P(\d+)[-_]epo")


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


def _as_int(x: object) -> int | None:
    """An image or category number from a cell (``24812``, ``24812.0``, ``"24812"``)."""
    if x is None or isinstance(x, bool):
        return None
    try:
        f = float(x)
    except (TypeError, ValueError):
        return None
    return int(f) if f.is_integer() else None


def image_number(value: dict[str, Any]) -> int | None:
    """The THINGS image number an event names, if any.

    ``things_image_nr`` (1.x layout), else ``value`` in the 3.0.0 layout (recognised by its
    ``things_category_nr`` column and no ``things_image_nr``), else ``image_nr``. None on
    catch rows (``N/A``).
    """
    if value.get("things_image_nr") is not None:
        return _as_int(value["things_image_nr"])
    if "things_category_nr" in value and "things_image_nr" not in value:
        return _as_int(value.get("value"))
    return _as_int(value.get("image_nr"))


def trial_from_value(value: dict[str, Any], images: ImagesTable | None = None) -> Trial:
    """Read a trial from an event value dict (``Event.value`` of a Recording).

    Parameters
    ----------
    value : dict
        Keys ``trial_type``, ``image_id``, and optionally ``image_path`` (or ``file_path``),
        ``category``, ``things_category_nr``, ``things_image_nr``, ``value``, ``image_nr``.
    images : ImagesTable, optional
        Maps image numbers to paths, for events that name no path (THINGS-MEG 3.0.0).

    Returns
    -------
    Trial
        ``image_id`` is the events' ``image_id``, else the stem of the image path, else the
        THINGS image number (so trials of one image share an id even before the images
        are found). ``category`` is the events' ``category``, else ``things_category_nr``,
        else what the path implies.
    """
    ttype = value.get("trial_type")
    ttype = "exp" if ttype is None else str(ttype).strip().lower()
    path = next((value[k] for k in _PATH_KEYS if value.get(k) not in (None, "")), None)
    path = str(path).replace("\\", "/") if path is not None else None
    number = image_number(value)
    image_id = value.get("image_id")
    if path is None and images is not None and number is not None:
        path = images.path_of(number)
        if path is not None:  # the table's file names the image, not the events' number
            image_id = PurePosixPath(path).stem
    if image_id in (None, "") and path is not None:
        image_id = PurePosixPath(path).stem
    if image_id in (None, "") and number is not None and ttype != "catch":
        image_id = str(number)
    category = value.get("category")
    if category in (None, ""):
        nr = _as_int(value.get("things_category_nr"))
        category = str(nr) if nr is not None else None
    if category in (None, "") and path is not None:
        category = category_of_path(path)
    return Trial(
        trial_type=ttype,
        image_id=None if image_id in (None, "") else str(image_id),
        image_path=path,
        category=None if category in (None, "") else str(category),
    )


@dataclass(frozen=True)
class ImagesTable:
    """Image numbers mapped to image files (THINGS-MEG's ``sample_attributes_P1.csv``).

    Attributes
    ----------
    path : Path
        The table that was read.
    number_column, path_column : str
        The columns used.
    paths : dict of int to str
        Image number -> path relative to the THINGS image folder.
    """

    path: Path
    number_column: str
    path_column: str
    paths: dict[int, str]

    def path_of(self, number: int) -> str | None:
        """The image path of an image number, None if the table does not list it."""
        return self.paths.get(int(number))

    def __len__(self) -> int:
        return len(self.paths)


def read_images_table(path: str | Path) -> ImagesTable:
    """Read a CSV/TSV table that maps image numbers to image files.

    THINGS-MEG ships one per participant (``sourcedata/sample_attributes_P{1..4}.csv``, one
    row per trial with ``things_image_nr`` and ``image_path``; they list the same images).
    Any CSV or TSV with an image-number column (``things_image_nr``, ``image_nr``,
    ``image_number``, ``image_id`` or ``value``) and a path column (``image_path``,
    ``file_path``, ``path``, ``filename``, ``file`` or ``stim_file``) works. Rows without a
    number or a path (catch rows) are skipped; repeated rows must agree.

    Parameters
    ----------
    path : path-like

    Returns
    -------
    ImagesTable

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        No number or path column, or one number with two different paths.
    """
    from rtdecode._utils.tables import read_table

    table = read_table(
        path, "Images table", "give a CSV/TSV such as THINGS-MEG's sourcedata/sample_attributes_P1.csv."
    )
    p, columns = table.path, table.header
    i_number = table.column(_TABLE_NUMBER_COLUMNS)
    i_path = table.column(_TABLE_PATH_COLUMNS)
    if i_number is None or i_path is None:
        raise ValueError(
            f"The images table {str(p)!r} needs an image-number column (one of "
            f"{', '.join(_TABLE_NUMBER_COLUMNS)}) and a path column (one of "
            f"{', '.join(_TABLE_PATH_COLUMNS)}); it has {columns}."
        )
    number_col, path_col = columns[i_number], columns[i_path]
    paths: dict[int, str] = {}
    for _, row in table.rows:
        number = _as_int(table.cell(row, i_number))
        img = (table.cell(row, i_path) or "").replace("\\", "/")
        if number is None or not img:
            continue
        if paths.setdefault(number, img) != img:
            raise ValueError(
                f"The images table {str(p)!r} gives image {number} two paths "
                f"({paths[number]!r} and {img!r}) in column {path_col!r}; one number must "
                "name one image."
            )
    if not paths:
        raise ValueError(
            f"The images table {str(p)!r} has no row with both {number_col!r} and {path_col!r}."
        )
    return ImagesTable(path=p, number_column=number_col, path_column=path_col, paths=paths)


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
    """BIDS subject of a recording (``sub-01``), or ``sub-unknown`` outside BIDS.

    THINGS-MEG's derivative epochs ``preprocessed_P1-epo.fif`` are ``sub-BIGMEG1``.
    """
    m = _SUBJECT_RE.search(path.name)
    if m:
        return f"sub-{m.group(1)}"
    m = _PARTICIPANT_RE.search(path.name)
    if m:  # THINGS-MEG's preprocessed_P1-epo.fif is participant sub-BIGMEG1
        return f"sub-BIGMEG{m.group(1)}"
    for part in reversed(path.parts[:-1]):
        if part.startswith("sub-"):
            return part
    return "sub-unknown"


def find_recordings(data_dir: str | Path, subjects: Iterable[str] | None = None) -> list[Path]:
    """Recordings of a THINGS-like BIDS tree, a plain folder, or a single file.

    In a BIDS tree (``sub-*`` folders) only the ``meg/*_meg.*`` and ``eeg/*_eeg.*`` files of
    the subject folders are used, so files next to them (e.g. the simulated ``replay_raw.fif`` at the
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
                # MEG or EEG data of the subject (a BIDS EEG export: eeg/*_eeg.edf)
                if p.parent.name in ("meg", "eeg")
                and re.search(rf"_{p.parent.name}(\.|_split)", p.name)
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


def is_epochs_file(path: Path) -> bool:
    """An MNE epochs file (``*-epo.fif``), not a continuation part (``*-epo-1.fif``)."""
    return path.is_file() and bool(_EPOCHS_RE.search(path.name))


def find_epochs_files(data_dir: str | Path, subjects: Iterable[str] | None = None) -> list[Path]:
    """Epochs files of a dataset: the input itself, or THINGS-MEG's derivatives.

    ``data_dir`` may be an epochs file (``preprocessed_P1-epo.fif``), a folder of them
    (``derivatives/preprocessed``), or a dataset root whose
    ``derivatives/preprocessed`` holds them. Continuation parts of a split file
    (``preprocessed_P1-epo-1.fif`` ...) are not listed: MNE joins them when reading the
    first part.

    Returns
    -------
    list of Path
        Sorted; empty when there are none.
    """
    root = Path(data_dir).expanduser()
    if root.is_file():
        files = [root] if is_epochs_file(root) else []
    else:
        folders = [root, root / "derivatives" / "preprocessed"]
        files = [p for d in folders if d.is_dir() for p in sorted(d.iterdir()) if is_epochs_file(p)]
    if subjects is not None:
        wanted = {_normalise_subject(s) for s in subjects}
        files = [p for p in files if subject_of(p) in wanted]
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
