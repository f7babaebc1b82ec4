"""The paradigm of THINGS-MEG: which image is shown when, and the events that say so.

Images are on for 500 ms, followed by 1000 +/- 200 ms of fixation (onsets 1.3-1.7 s
apart, uniform). Training (``exp``) images show the training concepts; the test images
(``test``), one per held-out concept, are shown once per session; ``catch`` trials (no
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
    from rtdecode.data.simulate.stimuli import Stimuli

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
    "supercategory",
)


@dataclass
class Trial:
    """One presentation: its trial type and the gallery row it shows."""

    trial_type: str  # "exp" | "test" | "catch"
    image: int  # gallery row, -1 for catch


@dataclass
class Split:
    """Which images train and which test (the same for every subject, as in THINGS-MEG).

    Test images show concepts that no training image shows (zero-shot).
    """

    train_images: list[int]
    test_images: list[int]
    train_concepts: list[str]
    test_concepts: list[str]


@dataclass
class Design:
    """The train/test split and the trials of each session, in order."""

    split: Split
    sessions: list[list[Trial]] = field(default_factory=list)


def make_sessions(
    split: Split,
    rng: np.random.Generator,
    *,
    n_sessions: int,
    train_reps: int,
    catch_per_session: int,
) -> Design:
    """Spread the training presentations over sessions; each session shows every test image.

    Each training image is shown ``train_reps`` times in all (THINGS-MEG: once), each
    test image once per session (THINGS-MEG: 12 sessions, so 12 times).
    """
    presentations = rng.permutation(np.repeat(split.train_images, max(1, train_reps)))
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
    trials: Sequence[Trial], onset_samples: np.ndarray, sfreq_hz: float, stimuli: Stimuli,
    data_root: Path,
) -> list[dict[str, Any]]:
    """THINGS-MEG's ``events.tsv`` rows (plus ``image_id`` and ``category``) of a run.

    ``category`` is the image's concept, as THINGS-MEG's image folders name it (the
    zero-shot split is by concept); ``supercategory`` is the concept's wider category.
    """
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
            "supercategory": "n/a",
        }
        if tr.image >= 0:
            row.update(
                value=tr.image + 1,
                image_nr=tr.image + 1,
                image_path=stimuli.paths[tr.image].relative_to(data_root.resolve()).as_posix(),
                image_id=stimuli.ids[tr.image],
                category=stimuli.concepts[tr.image],
                supercategory=stimuli.categories[tr.image],
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
