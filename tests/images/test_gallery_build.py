"""`rtdecode gallery build`: any folder of images -> gallery.csv + embeddings-<encoder>.npz,
resumable, read back by Gallery.from_folder and by serve's retrieval loader."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from PIL import Image

from rtdecode.images import Gallery, get_image_encoder, load_rgb
from rtdecode.images.build import BUILD_DIRNAME, GALLERY_COLUMNS, build_gallery

CATEGORIES = {"apple": (200, 30, 30), "leaf": (30, 160, 40), "sky": (40, 90, 220)}


def _image(colour, seed, size=(40, 32)):
    """A colour with a seeded pattern: every file is different."""
    rng = np.random.default_rng(seed)
    arr = np.clip(np.array(colour) + rng.integers(-40, 40, (size[1], size[0], 3)), 0, 255)
    return Image.fromarray(arr.astype(np.uint8))


@pytest.fixture
def nested(tmp_path):
    """<category>/<image>: 3 categories x 3 images (one of them a JPEG)."""
    root = tmp_path / "images"
    for c, (name, colour) in enumerate(CATEGORIES.items()):
        (root / name).mkdir(parents=True)
        for i in range(3):
            suffix = ".jpg" if i == 2 else ".png"
            _image(colour, 10 * c + i).save(root / name / f"{name}_{i + 1:02d}{suffix}")
    return root


def _read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def _npz(path):
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


class Counting:
    """The handcrafted encoder, counting the images it embeds; optionally interrupted
    (as Ctrl-C would) at its ``stop_at``-th call."""

    def __init__(self, stop_at=None):
        self.inner = get_image_encoder("handcrafted")
        self.name, self.dim, self.output_shape = self.inner.name, self.inner.dim, self.inner.output_shape
        self.registry_name = "handcrafted"
        self.calls = self.images = 0
        self.stop_at = stop_at

    def encode(self, images):
        self.calls += 1
        if self.calls == self.stop_at:
            raise KeyboardInterrupt
        self.images += len(images)
        return self.inner.encode(images)


def test_category_folders(nested, tmp_path):
    out = tmp_path / "gallery"
    report = build_gallery(nested, out, image_encoder="handcrafted", progress=False)
    assert report["layout"] == "<category>/<image>"
    assert (report["n_images"], report["n_categories"], report["n_embedded"]) == (9, 3, 9)

    rows = _read_csv(out / "gallery.csv")
    assert tuple(rows[0]) == GALLERY_COLUMNS
    assert [r["id"] for r in rows] == [f"{c}_{i:02d}" for c in CATEGORIES for i in (1, 2, 3)]
    assert all(r["category"] == r["concept"] == r["id"][:-3] for r in rows)
    assert all(r["source"] == "images" and r["license"] == "unknown" for r in rows)
    assert all(r["file"].startswith("../images/") and (out / r["file"]).is_file() for r in rows)

    z = _npz(out / "embeddings-handcrafted.npz")  # allow_pickle=False
    assert z["ids"].dtype.kind == "U" and z["ids"].tolist() == [r["id"] for r in rows]
    assert z["embeddings"].dtype == np.float32 and z["embeddings"].shape == (9, 492)
    assert str(z["encoder"]) == "handcrafted-v1"
    expected = get_image_encoder("handcrafted").encode([load_rgb(out / r["file"]) for r in rows])
    np.testing.assert_allclose(z["embeddings"], expected, rtol=1e-6)
    assert not (out / BUILD_DIRNAME).exists()  # the chunks are gone once the npz is whole

    # The built folder is a gallery: images are read where they are, embeddings from the npz.
    g = Gallery.from_folder(out)
    assert g.ids == z["ids"].tolist() and g.categories == [r["category"] for r in rows]
    counting = Counting()
    np.testing.assert_array_equal(g.embeddings(counting, progress=False), z["embeddings"])
    assert counting.images == 0


def test_flat_folder_with_a_table(tmp_path):
    root = tmp_path / "flat"
    root.mkdir()
    for i in range(4):
        _image((120, 120, 120), i).save(root / f"img{i}.png")
    (root / "extra.png").write_bytes(b"not a png")  # unreadable: skipped, reported
    (root / "images.csv").write_text(
        "file,id,concept,license\n"
        "img0.png,a1,apple,CC0\nimg1.png,a2,apple,CC0\n"
        ",img2,pear,CC-BY\n"  # matched by id = file stem
        "missing.png,zz,zebra,CC0\n"
    )
    out = tmp_path / "g"
    report = build_gallery(root, out, image_encoder="handcrafted", progress=False)
    assert report["layout"] == "flat"
    assert [s["file"] for s in report["skipped"]] == ["extra.png"]
    assert report["n_table_rows_unmatched"] == 1
    rows = {r["id"]: r for r in _read_csv(out / "gallery.csv")}
    assert set(rows) == {"a1", "a2", "img2", "img3"}
    assert [rows[i]["concept"] for i in ("a1", "a2", "img2", "img3")] == ["apple", "apple", "pear", "img"]
    assert rows["img2"]["license"] == "CC-BY" and rows["img3"]["license"] == "unknown"
    assert {r["category"] for r in rows.values()} == {"uncategorized"}
    assert _npz(out / "embeddings-handcrafted.npz")["ids"].tolist() == [
        r["id"] for r in _read_csv(out / "gallery.csv")
    ]


def test_interrupted_build_resumes(nested, tmp_path):
    reference = build_gallery(nested, tmp_path / "ref", image_encoder="handcrafted", progress=False)
    ref = _npz(reference["embeddings"])

    out = tmp_path / "g"
    with pytest.raises(KeyboardInterrupt):
        build_gallery(nested, out, image_encoder=Counting(stop_at=3), chunk_size=2, progress=False)
    assert len(list((out / BUILD_DIRNAME).rglob("chunk-*.npz"))) == 2  # two finished chunks
    assert not (out / "embeddings-handcrafted.npz").exists()

    again = Counting()
    report = build_gallery(nested, out, image_encoder=again, chunk_size=2, progress=False)
    assert (report["n_reused"], report["n_embedded"], again.images) == (4, 5, 5)
    z = _npz(out / "embeddings-handcrafted.npz")
    np.testing.assert_array_equal(z["ids"], ref["ids"])
    np.testing.assert_allclose(z["embeddings"], ref["embeddings"], rtol=1e-6)

    # A rerun embeds only images whose content changed.
    _image((0, 0, 0), 99).save(nested / "sky" / "sky_01.png")
    third = Counting()
    report = build_gallery(nested, out, image_encoder=third, progress=False)
    assert (report["n_reused"], report["n_embedded"], third.images) == (8, 1, 1)


def test_bad_folders_are_clear_errors(tmp_path, capsys):
    from rtdecode.cli import main

    with pytest.raises(FileNotFoundError, match="does not exist.*<category>/<image>"):
        build_gallery(tmp_path / "nope", tmp_path / "g", image_encoder="handcrafted")
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    (tmp_path / "empty" / "sub" / "notes.txt").write_text("no images")
    with pytest.raises(ValueError, match="holds no image files"):
        build_gallery(tmp_path / "empty", tmp_path / "g", image_encoder="handcrafted")
    assert main(["gallery", "build", str(tmp_path / "empty"), "--out", str(tmp_path / "g"),
                 "--image-encoder", "handcrafted"]) == 2
    assert "holds no image files" in capsys.readouterr().err
    _image((1, 2, 3), 0).save(tmp_path / "empty" / "sub" / "one.png")
    with pytest.raises(ValueError, match="Unknown image encoder 'nope'"):
        build_gallery(tmp_path / "empty", tmp_path / "g", image_encoder="nope")


def test_cli_builds_and_serve_retrieves_from_the_folder(nested, tmp_path, capsys):
    from rtdecode.cli import main
    from rtdecode.decoding import load_retrieval
    from rtdecode.encoder.card import CheckpointCard

    out, report = tmp_path / "g", tmp_path / "report.json"
    assert main(["gallery", "build", str(nested), "--out", str(out), "--image-encoder",
                 "handcrafted", "--json", str(report), "--quiet"]) == 0
    assert "9 images, 3 concepts, 3 categories" in capsys.readouterr().out
    assert json.loads(report.read_text())["n_embedded"] == 9

    card = CheckpointCard.from_config({
        "architecture": {"n_channels": 1, "n_times": 4, "target_shape": [8]},
        "ch_names": ["a"], "positions": [[0.0, 0.0]],
        "target": {"encoder": "handcrafted", "name": "handcrafted-v1"}})
    gallery, retrieval = load_retrieval(card, retrieval_set=str(out), progress=False)
    assert len(gallery) == 9 and gallery.category("leaf_02") == "leaf"
    emb = _npz(out / "embeddings-handcrafted.npz")["embeddings"]
    top = retrieval.topk(emb[4] - emb.mean(0), k=1)  # leaf_02's own row, centred as z-scores are
    assert top[0][0] == "leaf_02"


def test_default_encoder_builds_on_real_weights(tmp_path):
    import skimage.data

    root = tmp_path / "photos"
    for name in ("chelsea", "coffee"):
        (root / name).mkdir(parents=True)
        Image.fromarray(getattr(skimage.data, name)()).save(root / name / f"{name}.png")
    report = build_gallery(root, tmp_path / "g", progress=False)
    enc = get_image_encoder("efficientnet-lite0")
    assert report["encoder"] == "efficientnet-lite0" and report["encoder_identity"] == enc.name
    z = _npz(tmp_path / "g" / "embeddings-efficientnet-lite0.npz")
    assert z["embeddings"].shape == (2, 1280) and str(z["encoder"]) == enc.name
    np.testing.assert_allclose(
        z["embeddings"], enc.encode([load_rgb(p) for p in sorted(root.rglob("*.png"))]), atol=1e-5
    )


def test_a_killed_build_process_resumes(tmp_path):
    """A real `rtdecode gallery build` process killed (SIGKILL) after its first chunk."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root = tmp_path / "many"
    for c, (name, colour) in enumerate(CATEGORIES.items()):
        (root / name).mkdir(parents=True)
        for i in range(300):
            _image(colour, 1000 * c + i, size=(24, 24)).save(root / name / f"{name}_{i:03d}.png")
    out = tmp_path / "g"
    cmd = [sys.executable, "-m", "rtdecode.cli", "gallery", "build", str(root), "--out", str(out),
           "--image-encoder", "handcrafted", "--chunk-size", "8", "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list(out.glob(".rtdecode-build/*/chunk-*.npz")):
            assert proc.poll() is None, "the build ended before its first chunk was seen"
            assert time.monotonic() < deadline, "no chunk written within 120 s"
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    assert not (out / "embeddings-handcrafted.npz").exists()
    n_done = 8 * len(list(out.glob(".rtdecode-build/*/chunk-*.npz")))
    assert 0 < n_done < 900

    report = build_gallery(root, out, image_encoder="handcrafted", chunk_size=8, progress=False)
    assert report["n_reused"] == n_done and report["n_embedded"] == 900 - n_done
    z = _npz(out / "embeddings-handcrafted.npz")
    rows = _read_csv(out / "gallery.csv")
    check = [0, 450, 899]
    expected = get_image_encoder("handcrafted").encode([load_rgb(out / rows[i]["file"]) for i in check])
    np.testing.assert_allclose(z["embeddings"][check], expected, rtol=1e-6)
