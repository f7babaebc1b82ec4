"""What the simulated subjects see: a THINGS-like stimulus set, the image world.

The image world (:func:`rtdecode.images.world.build_world`) holds concepts with several
exemplars each and the zero-shot split of THINGS-MEG: test concepts with one image each,
the other concepts for training, no concept in both. The simulation builds it into its
own ``images/`` folder (hard links to the per-user cache, so only the first build
renders), sized by the simulation size, and reads it back as :class:`Stimuli`: the
images in gallery order, their concepts and the split.

Threads: everything runs in the calling thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Stimuli:
    """The images a simulation shows, in gallery order, and its zero-shot split.

    Attributes
    ----------
    root : Path
        The images folder (``<simulation>/images``), holding ``gallery.csv``.
    ids, concepts, categories : tuple of str, length n_images
        Image id, its concept (what THINGS calls the object: ``"aardvark"``) and its wider
        category (an emoji subgroup such as ``"animal-mammal"``, a stamp folder).
    paths : tuple of Path, length n_images
        Absolute file of each image.
    train, test : tuple of int
        Rows of the training and test images. No training image shows a test concept.
    licenses : dict of str to int
        Licence -> number of images.
    """

    root: Path
    ids: tuple[str, ...]
    concepts: tuple[str, ...]
    categories: tuple[str, ...]
    paths: tuple[Path, ...]
    train: tuple[int, ...]
    test: tuple[int, ...]
    licenses: dict[str, int]

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def train_concepts(self) -> list[str]:
        """Sorted concepts of the training images."""
        return sorted({self.concepts[i] for i in self.train})

    @property
    def test_concepts(self) -> list[str]:
        """Sorted concepts of the test images."""
        return sorted({self.concepts[i] for i in self.test})


def world_stimuli(
    out_dir: Path,
    *,
    seed: int,
    n_test_concepts: int,
    exemplars_per_concept: int,
    max_concepts: int | None,
) -> Stimuli:
    """Build the image world into ``out_dir/images`` and read it as :class:`Stimuli`.

    Parameters
    ----------
    out_dir : Path
        The simulation's folder.
    seed : int
        The world's seed (its test concepts and augmentations).
    n_test_concepts : int
        Test concepts, one image each (THINGS-MEG: 200).
    exemplars_per_concept : int
        Images of each training concept (THINGS-MEG: 12).
    max_concepts : int or None
        Keep only this many concepts (the small sizes); None keeps the world's all.

    Returns
    -------
    Stimuli
        Training images first (grouped by concept), then the test images.
    """
    from rtdecode.images.world import build_world

    world = build_world(
        out_dir,
        seed=seed,
        n_test_concepts=n_test_concepts,
        exemplars_per_concept=exemplars_per_concept,
        max_concepts=max_concepts,
        progress=False,
    )
    rows: list[Any] = [r for split in ("train", "test") for r in world.table if r.split == split]
    shared = {r.concept for r in rows if r.split == "train"} & {
        r.concept for r in rows if r.split == "test"
    }
    if shared:
        raise ValueError(
            f"The image world at {world.root} has concepts in both splits "
            f"({sorted(shared)[:5]}); the test concepts must be zero-shot. Delete it and "
            "simulate again to rebuild it."
        )
    root = Path(world.root)
    n_train = sum(r.split == "train" for r in rows)
    return Stimuli(
        root=root,
        ids=tuple(r.id for r in rows),
        concepts=tuple(r.concept for r in rows),
        categories=tuple(r.category for r in rows),
        paths=tuple((root / r.path).resolve() for r in rows),
        train=tuple(range(n_train)),
        test=tuple(range(n_train, len(rows))),
        licenses=world.licenses(),
    )
