"""Galleries: scanning folders, CSV metadata, the on-disk embedding cache, the demo gallery."""

from __future__ import annotations

import csv
import os
import time
import warnings

import numpy as np
import pytest
from PIL import Image

from rtdecode.images import Gallery, GalleryWarning, make_demo_gallery
from rtdecode.images.gallery import UNCATEGORIZED


class CountingEncoder:
    """A real (tiny) encoder that records how many images it was asked to encode."""

    name = "counting-mean-rgb"
    dim = 3
    output_shape = (3,)

    def __init__(self) -> None:
        self.n_calls = 0
        self.n_images = 0

    def encode(self, images):
        self.n_calls += 1
        self.n_images += len(images)
        return np.stack([np.asarray(im, dtype=np.float32).mean(axis=(0, 1)) for im in images])


def _save(path, colour, size=(24, 20)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


def _touch_later(path):
    """Give ``path`` a modification time strictly after its current one (coarse clocks)."""
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "gallery"
    _save(root / "dogs" / "dog_01.png", (200, 10, 10))
    _save(root / "dogs" / "dog_02.jpg", (190, 20, 10))
    _save(root / "cars" / "car_01.png", (10, 10, 200))
    _save(root / "top.png", (10, 200, 10))
    return root


def test_folder_without_csv_takes_categories_from_subfolders(folder):
    g = Gallery.from_folder(folder)
    assert len(g) == 4
    assert g.ids == ["car_01", "dog_01", "dog_02", "top"]
    assert g.categories == ["cars", "dogs", "dogs", UNCATEGORIZED]
    assert g.category_names == sorted(["cars", "dogs", UNCATEGORIZED])
    assert g.n_skipped == 0
    im = g.image("dog_02")
    assert im.mode == "RGB" and im.size == (24, 20)
    assert g.paths[g.index("car_01")] == folder / "cars" / "car_01.png"
    with pytest.raises(KeyError, match="nope"):
        g.image("nope")


def test_csv_gives_categories_and_licenses(folder):
    with (folder / "gallery.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "category", "source", "license"])
        w.writerow(["dog_01", "animal", "photo A", "CC0-1.0"])
        w.writerow(["dog_02", "animal", "photo B", "CC-BY-2.0"])
        w.writerow(["car_01", "vehicle", "photo C", "CC0-1.0"])
    g = Gallery.from_folder(folder)
    assert dict(zip(g.ids, g.categories, strict=True)) == {
        "car_01": "vehicle",
        "dog_01": "animal",
        "dog_02": "animal",
        "top": UNCATEGORIZED,  # not in the CSV: falls back to the folder
    }
    assert g.info[g.index("dog_02")]["license"] == "CC-BY-2.0"


def test_csv_file_column_assigns_ids(folder):
    with (folder / "gallery.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["file", "id", "category"])
        w.writerow(["cars/car_01.png", "stim-0007", "vehicle"])
        w.writerow(["missing.png", "stim-0008", "vehicle"])
    with pytest.warns(GalleryWarning, match="1 row"):
        g = Gallery.from_folder(folder)
    assert "stim-0007" in g and "car_01" not in g
    assert g.category("stim-0007") == "vehicle"


def test_duplicate_stems_get_path_ids(tmp_path):
    _save(tmp_path / "a" / "x.png", (1, 2, 3))
    _save(tmp_path / "b" / "x.png", (4, 5, 6))
    _save(tmp_path / "b" / "y.png", (4, 5, 6))
    g = Gallery.from_folder(tmp_path)
    assert g.ids == ["a/x", "b/x", "y"]


def test_corrupt_file_is_skipped_with_a_warning_and_counted(folder):
    (folder / "dogs" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really a png")
    good = folder / "cars" / "car_01.png"
    (folder / "cars" / "truncated.png").write_bytes(good.read_bytes()[:40])
    (folder / "notes.txt").write_text("not an image: ignored, not counted")
    with pytest.warns(GalleryWarning) as record:
        g = Gallery.from_folder(folder)
    messages = " ".join(str(r.message) for r in record)
    assert "broken.png" in messages and "truncated.png" in messages
    assert g.n_skipped == 2
    assert len(g) == 4 and "broken" not in g
    assert {p.name for p, _ in g.skipped} == {"broken.png", "truncated.png"}


def test_rescan_decodes_only_new_or_changed_files(folder, monkeypatch):
    from rtdecode.images import gallery as gallery_module

    decoded = []
    real_check = gallery_module.check_readable

    def counting_check(path):
        decoded.append(path.name)
        return real_check(path)

    monkeypatch.setattr(gallery_module, "check_readable", counting_check)
    Gallery.from_folder(folder)
    assert len(decoded) == 4
    decoded.clear()
    Gallery.from_folder(folder)
    assert decoded == []
    _save(folder / "dogs" / "dog_01.png", (0, 0, 0))
    _touch_later(folder / "dogs" / "dog_01.png")
    (folder / "cars" / "car_01.png").write_bytes(b"now broken")
    with pytest.warns(GalleryWarning, match="car_01.png"):
        g = Gallery.from_folder(folder)
    assert sorted(decoded) == ["car_01.png", "dog_01.png"]
    assert g.n_skipped == 1


def test_duplicate_ids_are_a_clear_error(folder):
    (folder / "gallery.csv").write_text("file,id\ncars/car_01.png,dog_01\n")
    with pytest.raises(ValueError, match="dog_01"):
        Gallery.from_folder(folder)


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Gallery.from_folder(tmp_path / "nowhere")


def test_embeddings_are_cached_reused_and_invalidated(folder):
    enc = CountingEncoder()
    g = Gallery.from_folder(folder)
    emb = g.embeddings(enc, progress=False)
    assert emb.shape == (4, 3) and emb.dtype == np.float32
    assert enc.n_images == 4
    np.testing.assert_allclose(emb[g.index("car_01")], [10, 10, 200])
    cache = g.cache_path(enc.name)
    assert cache.is_file()

    # Same object: served from memory. A fresh scan: served from disk, nothing re-encoded.
    assert g.embeddings(enc, progress=False) is emb
    g2 = Gallery.from_folder(folder)
    np.testing.assert_array_equal(g2.embeddings(enc, progress=False), emb)
    assert enc.n_images == 4

    # One changed image: only that one is re-encoded.
    _save(folder / "cars" / "car_01.png", (10, 100, 100))
    _touch_later(folder / "cars" / "car_01.png")
    g3 = Gallery.from_folder(folder)
    assert g3.fingerprint != g2.fingerprint
    emb3 = g3.embeddings(enc, progress=False)
    assert enc.n_images == 5
    np.testing.assert_allclose(emb3[g3.index("car_01")], [10, 100, 100])
    np.testing.assert_array_equal(emb3[g3.index("dog_01")], emb[g.index("dog_01")])

    # One added image: only the new one is encoded; rows follow the new id order.
    _save(folder / "cars" / "bus_01.png", (50, 50, 50))
    g4 = Gallery.from_folder(folder)
    emb4 = g4.embeddings(enc, progress=False)
    assert enc.n_images == 6
    assert emb4.shape == (5, 3)
    np.testing.assert_allclose(emb4[g4.index("bus_01")], [50, 50, 50])

    # A removed image drops out; nothing is encoded.
    (folder / "top.png").unlink()
    g5 = Gallery.from_folder(folder)
    assert g5.embeddings(enc, progress=False).shape == (4, 3)
    assert enc.n_images == 6


def test_cache_rows_follow_image_content(folder, tmp_path):
    import shutil

    enc = CountingEncoder()
    emb = Gallery.from_folder(folder).embeddings(enc, progress=False)
    # Touched (same bytes, new time) and renamed images keep their rows: matched by content.
    _touch_later(folder / "dogs" / "dog_01.png")
    (folder / "cars" / "car_01.png").rename(folder / "cars" / "car_99.png")
    g = Gallery.from_folder(folder)
    np.testing.assert_array_equal(g.embeddings(enc, progress=False)[g.index("car_99")],
                                  emb[0])
    assert enc.n_images == 4
    # A copy of the whole folder (new paths, new times) encodes nothing either.
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    for p in copy.rglob("*.png"):
        _touch_later(p)
    assert Gallery.from_folder(copy).embeddings(enc, progress=False).shape == (4, 3)
    assert enc.n_images == 4


def test_cache_is_keyed_by_encoder_name(folder):
    a, b = CountingEncoder(), CountingEncoder()
    b.name = "counting-mean-rgb-other"
    g = Gallery.from_folder(folder)
    g.embeddings(a, progress=False)
    g.embeddings(b, progress=False)
    assert a.n_images == 4 and b.n_images == 4
    assert g.cache_path(a.name) != g.cache_path(b.name)


def test_damaged_cache_is_rebuilt(folder):
    enc = CountingEncoder()
    g = Gallery.from_folder(folder)
    g.embeddings(enc, progress=False)
    g.cache_path(enc.name).write_bytes(b"junk")
    with pytest.warns(GalleryWarning, match="unreadable embedding cache"):
        emb = Gallery.from_folder(folder).embeddings(enc, progress=False)
    assert enc.n_images == 8 and emb.shape == (4, 3)


def test_unwritable_cache_dir_falls_back_to_memory(folder, tmp_path):
    blocker = tmp_path / "file-not-dir"
    blocker.write_text("x")
    enc = CountingEncoder()
    g = Gallery.from_folder(folder, cache_dir=blocker / "cache")
    with pytest.warns(GalleryWarning, match="Cannot write"):
        emb = g.embeddings(enc, progress=False)
    assert emb.shape == (4, 3)


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """The seed-0 demo gallery and how long building it took."""
    t0 = time.perf_counter()
    g = make_demo_gallery(tmp_path_factory.mktemp("demo"), seed=0, progress=False)
    return g, time.perf_counter() - t0


def test_demo_gallery_size_categories_and_licenses(demo):
    g, elapsed_s = demo
    assert elapsed_s < 20
    assert len(g) >= 200
    assert len(g.category_names) >= 10
    counts = {c: g.categories.count(c) for c in g.category_names}
    assert min(counts.values()) >= 10, counts  # enough per category for zero-shot splits
    assert g.n_skipped == 0
    im = g.image(g.ids[0])
    assert im.mode == "RGB" and im.size in ((96, 96), (128, 128))
    for row in g.info:
        assert row["source"] and row["license"]


def test_demo_gallery_is_deterministic_by_seed(demo, tmp_path):
    g, _ = demo
    # A rebuild only rewrites files whose bytes differ: same seed, nothing is touched
    # (so the embedding cache survives too).
    mtimes = [p.stat().st_mtime_ns for p in g.paths]
    again = make_demo_gallery(g.root, seed=0, progress=False)
    assert again.ids == g.ids
    assert [p.stat().st_mtime_ns for p in again.paths] == mtimes

    different = make_demo_gallery(tmp_path / "seed1", seed=1, progress=False)
    assert different.ids == g.ids
    n_same = sum(
        p.read_bytes() == q.read_bytes() for p, q in zip(g.paths, different.paths, strict=True)
    )
    assert n_same < len(g) // 4


def test_demo_gallery_images_differ_within_categories(demo):
    g, _ = demo
    for cat in g.category_names:
        ids = [i for i, c in zip(g.ids, g.categories, strict=True) if c == cat][:4]
        arrays = [np.asarray(g.image(i), dtype=np.int16) for i in ids]
        for a, b in zip(arrays, arrays[1:], strict=False):
            assert np.abs(a - b).mean() > 1.0, cat


def test_empty_folder_gives_empty_embeddings(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GalleryWarning)
        g = Gallery.from_folder(tmp_path)
    assert len(g) == 0
    assert g.embeddings(CountingEncoder(), progress=False).shape == (0, 3)
