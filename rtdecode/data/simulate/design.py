"""The paradigm of THINGS-MEG: which image is shown when, and the events that say so.

Images are on for 500 ms, followed by 1000 +/- 200 ms of fixation (onsets 1.3-1.7 s
apart, uniform). Training (``exp``) images come from some categories; the test images
(``test``) from held-out categories are shown once per session; ``catch`` trials (no
image from the gallery) are mixed in and dropped by the loader.

Threads: everything runs in the calling thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rtdecode.data.simulate.sources import IMAGE_DURATION_S

if TYPE_CHECKING:  # pragma: no cover - typing only
    from rtdecode.images.gallery import Gallery

SOA_S = 1.5
SOA_JITTER_S = 0.2  # 500 ms image + 1000 +/- 200 ms fixation
LEAD_S = 3.0  # rest before the first and after the last image of a run
CATCH_CODE = 9999  # stim value of catch trials (THINGS-MEG leaves their value n/a)
EVENT_COLUMNS = (
    "onset",
    "duration",
    "trial_type",
    "value",
    "sample",
    "image_nr",
    "image_path",
    "image_id",
    "category",
)


@dataclass
class Trial:
    """One presentation: its trial type and the gallery row it shows."""

    trial_type: str  # "exp" | "test" | "catch"
    image: int  # gallery row, -1 for catch


@dataclass
class Split:
    """Which images train and which test (the same for every subject, as in THINGS-MEG)."""

    train_images: list[int]
    test_images: list[int]
    train_categories: list[str]
    test_categories: list[str]


@dataclass
class Design:
    """The train/test split and the trials of each session, in order."""

    split: Split
    sessions: list[list[Trial]] = field(default_factory=list)


def make_split(
    gallery: Gallery,
    rng: np.random.Generator,
    *,
    test_fraction: float,
    max_categories: int | None,
    max_images_per_category: int | None,
) -> Split:
    """Hold out ``test_fraction`` of the categories (zero-shot); optionally subsample."""
    cats = sorted(set(gallery.categories))
    if len(cats) < 2:
        raise ValueError(
            f"The gallery at {gallery.root} has {len(cats)} category; the simulation needs at "
            "least 2 so that test categories can be held out of training."
        )
    if max_categories is not None:
        cats = sorted(rng.permutation(cats)[:max_categories].tolist())
    n_test = min(len(cats) - 1, max(1, int(round(test_fraction * len(cats)))))
    test_cats = sorted(rng.permutation(cats)[:n_test].tolist())
    train_cats = [c for c in cats if c not in test_cats]
    by_cat: dict[str, list[int]] = {c: [] for c in cats}
    for i, c in enumerate(gallery.categories):
        if c in by_cat:
            by_cat[c].append(i)
    if max_images_per_category is not None:
        by_cat = {
            c: sorted(rng.permutation(v)[:max_images_per_category].tolist())
            for c, v in by_cat.items()
        }
    return Split(
        [i for c in train_cats for i in by_cat[c]],
        [i for c in test_cats for i in by_cat[c]],
        train_cats,
        test_cats,
    )


def make_sessions(
    split: Split,
    rng: np.random.Generator,
    *,
    n_sessions: int,
    train_reps: int,
    max_train_trials: int,
    catch_per_session: int,
) -> Design:
    """Spread the training presentations over sessions; each session shows every test image."""
    reps = max(1, min(train_reps, max_train_trials // max(1, len(split.train_images))))
    presentations = rng.permutation(np.repeat(split.train_images, reps))
    design = Design(split)
    for chunk in np.array_split(presentations, n_sessions):
        trials = [Trial("exp", int(i)) for i in chunk]
        trials += [Trial("test", int(i)) for i in split.test_images]
        trials += [Trial("catch", -1) for _ in range(catch_per_session)]
        design.sessions.append([trials[j] for j in rng.permutation(len(trials))])
    return design


def replay_trials(split: Split, n_trials: int, rng: np.random.Generator) -> list[Trial]:
    """A held-out session of test images in a seeded order (one catch trial when long)."""
    order = np.resize(rng.permutation(split.test_images), n_trials).tolist()
    trials = [Trial("test", int(i)) for i in order]
    if n_trials >= 8:  # an occasional catch trial, as in a real session
        trials[n_trials // 2] = Trial("catch", -1)
    return trials


def onsets(n_trials: int, sfreq_hz: float, rng: np.random.Generator) -> tuple[np.ndarray, int]:
    """Onset samples of ``n_trials`` images and the run length in samples."""
    soa = rng.uniform(SOA_S - SOA_JITTER_S, SOA_S + SOA_JITTER_S, n_trials)
    t = LEAD_S + np.concatenate([[0.0], np.cumsum(soa[:-1])])
    samples = np.round(t * sfreq_hz).astype(int)
    n_times = (
        int(samples[-1] + round((LEAD_S + 1.0) * sfreq_hz))
        if n_trials
        else int(2 * LEAD_S * sfreq_hz)
    )
    return samples, n_times


def event_rows(
    trials: Sequence[Trial], onset_samples: np.ndarray, sfreq_hz: float, gallery: Gallery,
    data_root: Path,
) -> list[dict[str, Any]]:
    """THINGS-MEG's ``events.tsv`` rows (plus ``image_id`` and ``category``) of a run."""
    rows = []
    for tr, n0 in zip(trials, onset_samples, strict=True):
        row: dict[str, Any] = {
            "onset": round(float(n0 / sfreq_hz), 6),
            "duration": IMAGE_DURATION_S,
            "trial_type": tr.trial_type,
            "value": CATCH_CODE,
            "sample": int(n0),
            "image_nr": "n/a",
            "image_path": "n/a",
            "image_id": "n/a",
            "category": "n/a",
        }
        if tr.image >= 0:
            row.update(
                value=tr.image + 1,
                image_nr=tr.image + 1,
                image_path=Path(gallery.paths[tr.image])
                .resolve()
                .relative_to(data_root.resolve())
                .as_posix(),
                image_id=gallery.ids[tr.image],
                category=gallery.categories[tr.image],
            )
        rows.append(row)
    return rows


def marker_value(row: dict[str, Any]) -> dict[str, Any]:
    """The marker payload of an event row (what the replayed marker stream carries)."""
    if row["trial_type"] == "catch":
        return {"trial_type": "catch", "value": row["value"]}
    return {
        "image_id": row["image_id"],
        "trial_type": row["trial_type"],
        "category": row["category"],
        "image_nr": row["image_nr"],
    }
