"""The image world: real object images from installed sources, and the zero-shot split.

One session-wide build of the full world (about 40 s on 2 cores) checks the counts the
project promises; small worlds (``max_concepts``) check the rules quickly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from rtdecode.data.report import describe_gallery
from rtdecode.images.gallery import Gallery
from rtdecode.images.world import (
    NOTO_PACKAGE,
    STAMPS_PACKAGE,
    UNICODE_PACKAGE,
    build_world,
    load_world,
    summarize_world,
)

INSTALL = "run rtdecode/images/install_world_assets.sh (make install does)"


@pytest.fixture(scope="session")
def world_cache(tmp_path_factory) -> Path:
    """Rendered worlds for this session only (not the user's cache)."""
    return tmp_path_factory.mktemp("world-cache")


@pytest.fixture(scope="session")
def full_world(tmp_path_factory, world_cache):
    return build_world(tmp_path_factory.mktemp("full"), seed=0, progress=False,
                       cache_dir=world_cache)  # fmt: skip


@pytest.fixture(scope="session")
def small_world(tmp_path_factory, world_cache):
    return build_world(tmp_path_factory.mktemp("small"), seed=3, n_test_concepts=12,
                       exemplars_per_concept=3, max_concepts=60, progress=False,
                       cache_dir=world_cache)  # fmt: skip


def _pixels(world, image_id: str) -> np.ndarray:
    with Image.open(world.path(image_id)) as im:
        assert im.mode == "RGB" and im.size == (96, 96), (image_id, im.mode, im.size)
        return np.asarray(im, dtype=np.float32)


def test_full_world_counts_and_zero_shot_split(full_world):
    w = full_world
    assert not w.missing, f"Sources missing: {w.missing}; {INSTALL}."
    summary = summarize_world(w.table)
    split, images = summary["split"], summary["images"]
    assert images["n_concepts"] >= 1000
    assert split["n_test_concepts"] == 200 and split["n_test_images"] == 200
    assert split["n_shared_concepts"] == 0
    assert len(w.test_ids) == 200 and len(set(w.concepts_of("test"))) == 200
    assert not set(w.concepts_of("test")) & set(w.concepts_of("train"))
    # Training concepts have the default 4 exemplars each.
    per_concept: dict[str, int] = {}
    for r in w.table:
        if r.split == "train":
            per_concept[r.concept] = per_concept.get(r.concept, 0) + 1
    assert set(per_concept.values()) == {4}
    assert len(w.train_ids) == 4 * split["n_train_concepts"]
    # Wider categories are shared between the splits, as in THINGS-MEG.
    test_cats = {r.category for r in w.table if r.split == "test"}
    train_cats = {r.category for r in w.table if r.split == "train"}
    assert len(test_cats & train_cats) >= 0.8 * len(test_cats)


def test_full_world_sources_licences_and_gallery(full_world):
    w = full_world
    assert all(r.license and r.source for r in w.table)
    families = w.sources()
    # Drawings from two emoji fonts, and photographs (Tux Paint's, scikit-image/learn's).
    assert families.get("openmoji", 0) > 1000 and families.get("noto", 0) > 1000, families
    assert families.get("tuxpaint", 0) > 300 and families.get("photo", 0) >= 6, families
    assert set(w.licenses()) == {
        "CC-BY-SA-4.0", "OFL-1.1", "GPL-2.0-or-later", "CC0-1.0", "public-domain", "CC-BY-2.0",
    }  # fmt: skip
    assert sum(w.licenses().values()) == len(w.table)
    # Concepts found in several sources mix drawings and photographs among their exemplars.
    families_of: dict[str, set[str]] = {}
    for r in w.table:
        if r.split == "train":
            families_of.setdefault(r.concept, set()).add(r.source.split(" ")[0])
    assert sum(len(f) >= 2 for f in families_of.values()) >= 500
    assert sum({"Tux", "OpenMoji"} <= f for f in families_of.values()) >= 50
    # The folder is a gallery like any other: same ids, categories from gallery.csv.
    g = Gallery.from_folder(w.root)
    assert len(g) == len(w.table)
    assert {g.category(r.id) for r in w.table[:50]} == {r.category for r in w.table[:50]}


def test_dataset_report_reads_the_world_gallery(full_world):
    report = describe_gallery(full_world.root.parent)
    assert report["split"]["n_test_concepts"] == 200
    assert report["split"]["n_shared_concepts"] == 0
    assert report["images"]["n_images"] == len(full_world.table)
    assert report["images"]["n_concepts"] >= 1000
    assert report["images"]["licenses"] == full_world.licenses()
    assert report["images"]["n_without_license"] == 0
    json.dumps(report)


def test_images_are_rendered_objects_not_blank(small_world):
    """Every image holds an object: contrast, colour and pixels away from the background."""
    for r in small_world.table:
        px = _pixels(small_world, r.id)
        assert px.std() > 12, (r.id, r.source, px.std())
        # Pixels that differ from the image's most common colour (its background).
        flat = px.reshape(-1, 3)
        values, counts = np.unique(flat.astype(np.int32) // 8, axis=0, return_counts=True)
        background = values[counts.argmax()] * 8 + 4
        far = (np.abs(flat - background).max(axis=1) > 40).reshape(px.shape[:2])
        assert far.mean() > 0.01, (r.id, r.source, far.mean())
        # ... spread over an object's extent (55-90 % of the side), not a few specks.
        rows, cols = np.nonzero(far)
        extent = max(rows.max() - rows.min(), cols.max() - cols.min()) + 1
        assert extent >= 0.4 * px.shape[0], (r.id, r.source, extent)


def test_exemplars_of_a_concept_differ(small_world):
    by_concept: dict[str, list[str]] = {}
    for r in small_world.table:
        by_concept.setdefault(r.concept, []).append(r.id)
    n_pairs = 0
    for ids in by_concept.values():
        imgs = [_pixels(small_world, i) for i in ids]
        for a in range(len(imgs)):
            for b in range(a + 1, len(imgs)):
                assert np.abs(imgs[a] - imgs[b]).mean() > 5, (ids[a], ids[b])
                n_pairs += 1
    assert n_pairs >= 40


def test_small_world_split_and_layout(small_world):
    w = small_world
    assert len(w.concepts) == 60
    assert len(w.test_ids) == 12 and len(w.concepts_of("test")) == 12
    assert len(w.train_ids) == 3 * 48
    assert not set(w.concepts_of("test")) & set(w.concepts_of("train"))
    assert w.root.name == "images" and (w.root / "gallery.csv").is_file()
    assert all(r.path.startswith(f"{r.split}/") for r in w.table)
    assert load_world(w.root).table == w.table


def test_same_seed_same_bytes_other_seed_other_split(tmp_path, small_world):
    again = build_world(tmp_path / "again", seed=3, n_test_concepts=12, exemplars_per_concept=3,
                        max_concepts=60, progress=False, cache_dir=tmp_path / "cache")  # fmt: skip
    assert again.table == small_world.table
    for r in small_world.table:
        assert (again.root / r.path).read_bytes() == (small_world.root / r.path).read_bytes()
    assert (again.root / "gallery.csv").read_bytes() == (
        small_world.root / "gallery.csv"
    ).read_bytes()
    other = build_world(tmp_path / "other", seed=4, n_test_concepts=12, exemplars_per_concept=3,
                        max_concepts=60, progress=False, cache_dir=tmp_path / "cache")  # fmt: skip
    assert other.concepts_of("test") != small_world.concepts_of("test")


def test_worker_processes_render_the_same_bytes(tmp_path, small_world):
    w = build_world(tmp_path / "two", seed=3, n_test_concepts=12, exemplars_per_concept=3,
                    max_concepts=60, progress=False, cache_dir=tmp_path / "cache", workers=2)  # fmt: skip
    assert w.table == small_world.table
    for r in w.table:
        assert (w.root / r.path).read_bytes() == (small_world.root / r.path).read_bytes()


def test_a_second_build_links_the_cached_world(tmp_path, small_world, world_cache):
    out = tmp_path / "elsewhere"
    w = build_world(out, seed=3, n_test_concepts=12, exemplars_per_concept=3, max_concepts=60,
                    progress=False, cache_dir=world_cache)  # fmt: skip
    r = w.table[0]
    assert os.path.samefile(w.root / r.path, small_world.root / r.path)
    # A world built into the same folder with other options leaves none of the old files.
    w2 = build_world(out, seed=3, n_test_concepts=12, exemplars_per_concept=2, max_concepts=60,
                     progress=False, cache_dir=world_cache)  # fmt: skip
    listed = {r.path for r in w2.table}
    on_disk = {p.relative_to(w2.root).as_posix() for p in w2.root.rglob("*.png")}
    assert on_disk == listed


def test_large_test_set_adds_held_out_distractors(tmp_path, world_cache):
    w = build_world(tmp_path, seed=3, n_test_concepts=10, exemplars_per_concept=2,
                    max_concepts=60, large_test=True, n_distractor_concepts=15,
                    progress=False, cache_dir=world_cache)  # fmt: skip
    distractors = set(w.concepts_of("distractor"))
    assert len(w.distractor_ids) == 15 and len(distractors) == 15
    assert not distractors & set(w.concepts_of("train"))
    assert not distractors & set(w.concepts_of("test"))
    assert summarize_world(w.table)["split"]["n_shared_concepts"] == 0


def test_too_many_held_out_concepts_is_an_error_that_names_the_fix(tmp_path, world_cache):
    with pytest.raises(ValueError, match="n_test_concepts=|lower n_test_concepts"):
        build_world(tmp_path, n_test_concepts=40, max_concepts=60, progress=False,
                    cache_dir=world_cache)  # fmt: skip


def test_without_the_debian_assets_it_builds_from_pypi_and_says_what_is_missing(
    tmp_path, monkeypatch
):
    monkeypatch.setenv("RTDECODE_DATA", str(tmp_path / "empty-user-data"))
    w = build_world(tmp_path / "pypi", seed=0, n_test_concepts=10, exemplars_per_concept=2,
                    max_concepts=40, progress=False, cache_dir=tmp_path / "cache")  # fmt: skip
    families = w.sources()
    assert families.get("openmoji", 0) > 0
    # Each Debian package is either found system-wide (and used) or named as missing.
    said = " ".join(w.missing)
    used = {"noto": NOTO_PACKAGE, "tuxpaint": STAMPS_PACKAGE}
    for family, package in used.items():
        assert family in families or package in said, (family, said)
    assert UNICODE_PACKAGE in said or w.meta["sources"].get(UNICODE_PACKAGE) == "system"
    assert all(r.license and r.source for r in w.table)


def test_a_half_built_world_of_a_dead_process_is_removed(tmp_path, small_world):
    fingerprint = small_world.meta["fingerprint"]
    cache = tmp_path / "cache"
    abandoned = cache / f".{fingerprint}.partial-{2**31 - 2}"  # no such process
    (abandoned / "train").mkdir(parents=True)
    w = build_world(tmp_path / "out", seed=3, n_test_concepts=12, exemplars_per_concept=3,
                    max_concepts=60, progress=False, cache_dir=cache)  # fmt: skip
    assert w.meta["fingerprint"] == fingerprint
    assert not abandoned.exists()
    assert sorted(p.name for p in cache.iterdir()) == [fingerprint]


def test_the_installer_ships_in_the_package_and_every_default_source_is_found():
    # The demo of an installed wheel runs this installer on first use (rtdecode.demo).
    from rtdecode.images.world import ASSET_INSTALLER, missing_assets

    assert ASSET_INSTALLER.is_file() and ASSET_INSTALLER.parent.name == "images"
    assert missing_assets() == [], f"{INSTALL}."


def test_the_bundled_demo_encoder_was_trained_on_this_world(full_world):
    # The demo simulates a fresh subject from this code and serves the bundled encoder with
    # its held-out test images as the retrieval set: they must be exactly this world's
    # test images (the split tests above check that no training image shares a concept).
    import json

    from rtdecode._utils.paths import bundled_models_dir

    card = json.loads((bundled_models_dir() / "demo" / "encoder" / "config.json").read_text())
    assert set(card["test_images"]) == set(full_world.test_ids)
