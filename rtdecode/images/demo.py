"""The demo gallery: 240 images in 12 categories, built offline in a few seconds.

Six categories are natural photos that scikit-image and scikit-learn ship inside their
packages (no download), each seen through 20 random crops, flips and colour jitters:

    cat (skimage chelsea), coffee (skimage coffee), astronaut (skimage astronaut),
    rocket (skimage rocket), flower (sklearn flower.jpg), temple (sklearn china.jpg)

Six categories are rendered procedurally with PIL and numpy, with random position,
size, colour and background (plain, gradient, or a tinted crop of scikit-image's CC0
brick / grass / gravel textures):

    circles, stars, houses, faces, stripes, checkerboard

Everything is deterministic given ``seed``: each category draws from its own child of
``numpy.random.SeedSequence(seed)``. Sources and licenses are listed per image in
``gallery.csv`` and summarised in models/README.md.

Simulated datasets show the image world instead (:mod:`rtdecode.images.world`: over a
thousand object concepts and the THINGS-style zero-shot split); this small gallery stays
for quick benchmarks and tests, and its photo loaders and backgrounds serve the world too.

Threads: plain function, run by whoever asks (the CLI, tests, the demo command).
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageOps

from rtdecode._utils.files import atomic_write
from rtdecode.images.gallery import CSV_NAME, Gallery

DEMO_VERSION = 1
PER_CATEGORY = 20
GENERATED_LICENSE = "CC0-1.0"
GENERATED_SOURCE = "rendered by rtdecode.images.demo"

# category -> (loader name, source description, license)
PHOTOS: dict[str, tuple[str, str, str]] = {
    "cat": (
        "skimage:chelsea",
        "scikit-image data 'chelsea' (Chelsea the cat), photo by Stefan van der Walt",
        "CC0-1.0",
    ),
    "coffee": (
        "skimage:coffee",
        "scikit-image data 'coffee', photo by Rachel Michetti, courtesy of Pikolo Espresso Bar",
        "CC0-1.0",
    ),
    "astronaut": (
        "skimage:astronaut",
        "scikit-image data 'astronaut' (Eileen Collins), NASA Great Images",
        "public-domain",
    ),
    "rocket": (
        "skimage:rocket",
        "scikit-image data 'rocket' (DSCOVR launch on Falcon 9), SpaceX",
        "public-domain",
    ),
    "flower": (
        "sklearn:flower.jpg",
        "scikit-learn sample image flower.jpg, by vultilion on Flickr "
        "(https://www.flickr.com/photos/vultilion/6056698931/)",
        "CC-BY-2.0",
    ),
    "temple": (
        "sklearn:china.jpg",
        "scikit-learn sample image china.jpg, by danielbuechele on Flickr "
        "(https://www.flickr.com/photos/danielbuechele/6061409035/)",
        "CC-BY-2.0",
    ),
}
# Texture photos used as backgrounds of rendered scenes (all CC0 in scikit-image's docs).
TEXTURES = ("brick", "grass", "gravel")
SHAPES = ("circles", "stars", "houses", "faces", "stripes", "checkerboard")
CATEGORIES = tuple(PHOTOS) + SHAPES


def _load_photo(key: str) -> np.ndarray:
    """An RGB uint8 array from a package's bundled data (never the network)."""
    package, name = key.split(":", 1)
    if package == "skimage":
        import skimage.data

        arr = getattr(skimage.data, name)()
    else:
        # The JPEG inside scikit-learn's package, read without importing scikit-learn
        # (seconds of import time for one file).
        import importlib.util

        spec = importlib.util.find_spec("sklearn")
        if spec is None or not spec.submodule_search_locations:
            raise ModuleNotFoundError(
                f"scikit-learn is not installed, so its sample image {name!r} cannot be read; "
                "`pip install scikit-learn`."
            )
        folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "images"
        with Image.open(folder / name) as im:
            arr = np.asarray(im.convert("RGB"))
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return np.ascontiguousarray(arr[..., :3]).astype(np.uint8)


def _load_texture(name: str) -> np.ndarray:
    import skimage.data

    return np.asarray(getattr(skimage.data, name)(), dtype=np.uint8)


# ---------------------------------------------------------------------- photo variations
def _jitter(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Brightness, contrast, saturation and a small hue rotation (in RGB space)."""
    x = rgb.astype(np.float32) / 255.0
    x = x * rng.uniform(0.75, 1.25)
    mean = x.mean()
    x = (x - mean) * rng.uniform(0.75, 1.3) + mean
    gray = x @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    x = gray[..., None] + (x - gray[..., None]) * rng.uniform(0.6, 1.4)
    # Rotating colours about the grey axis shifts hue without a trip through HSV.
    theta = rng.uniform(-0.35, 0.35)
    c, s = math.cos(theta), math.sin(theta)
    k = np.full((3, 3), (1 - c) / 3, dtype=np.float32) + np.eye(3, dtype=np.float32) * c
    k += np.array([[0, -1, 1], [1, 0, -1], [-1, 1, 0]], dtype=np.float32) * (s / math.sqrt(3))
    x = x @ k.T
    return (np.clip(x, 0, 1) * 255 + 0.5).astype(np.uint8)


def _photo_variant(photo: Image.Image, i: int, size: int, rng: np.random.Generator) -> Image.Image:
    w, h = photo.size
    short = min(w, h)
    if i == 0:
        side, left, top = short, (w - short) // 2, (h - short) // 2
    else:
        side = int(short * rng.uniform(0.5, 1.0))
        left = int(rng.integers(0, w - side + 1))
        top = int(rng.integers(0, h - side + 1))
    im = photo.resize(
        (size, size), Image.Resampling.LANCZOS, box=(left, top, left + side, top + side)
    )
    if i == 0:
        return im
    if rng.random() < 0.5:
        im = ImageOps.mirror(im)
    return Image.fromarray(_jitter(np.asarray(im), rng))


# ---------------------------------------------------------------------- rendered scenes
def _colour(rng: np.random.Generator, lo: int = 0, hi: int = 256) -> tuple[int, int, int]:
    return tuple(int(v) for v in rng.integers(lo, hi, size=3))


def _contrasting(rng: np.random.Generator, ref: np.ndarray, min_dist: float = 120.0) -> np.ndarray:
    """A colour at least ``min_dist`` (RGB distance) from ``ref``, so patterns stay visible."""
    for _ in range(32):
        c = np.array(_colour(rng), dtype=np.float32)
        if np.linalg.norm(c - ref) >= min_dist:
            return c
    return 255.0 - ref


def _background(
    rng: np.random.Generator, side: int, textures: dict[str, np.ndarray]
) -> tuple[Image.Image, str]:
    """A plain, gradient or tinted-texture background; also names the texture it used."""
    kind = rng.choice(["plain", "gradient", "texture"])
    if kind == "plain":
        return Image.new("RGB", (side, side), _colour(rng)), ""
    a = np.array(_colour(rng), dtype=np.float32)
    b = np.array(_colour(rng), dtype=np.float32)
    if kind == "gradient":
        angle = rng.uniform(0, 2 * math.pi)
        yy, xx = np.mgrid[0:side, 0:side].astype(np.float32) / side - 0.5
        t = np.clip(xx * math.cos(angle) + yy * math.sin(angle) + 0.5, 0, 1)[..., None]
        return Image.fromarray((a * (1 - t) + b * t).astype(np.uint8)), ""
    name = str(rng.choice(TEXTURES))
    tex = textures[name]
    crop = int(rng.integers(side, min(tex.shape) + 1))
    r0 = int(rng.integers(0, tex.shape[0] - crop + 1))
    c0 = int(rng.integers(0, tex.shape[1] - crop + 1))
    patch = Image.fromarray(tex[r0 : r0 + crop, c0 : c0 + crop]).resize((side, side))
    t = (np.asarray(patch, dtype=np.float32) / 255.0)[..., None]
    return Image.fromarray((a * (1 - t) + b * t).astype(np.uint8)), name


def _star(
    cx: float, cy: float, r: float, n: int, inner: float, rot: float
) -> list[tuple[float, float]]:
    pts = []
    for k in range(2 * n):
        rad = r if k % 2 == 0 else r * inner
        a = rot + math.pi * k / n
        pts.append((cx + rad * math.cos(a), cy + rad * math.sin(a)))
    return pts


def _draw_circles(d: ImageDraw.ImageDraw, side: int, rng: np.random.Generator) -> None:
    for _ in range(int(rng.integers(1, 5))):
        r = side * rng.uniform(0.1, 0.3)
        cx, cy = rng.uniform(r, side - r, size=2)
        d.ellipse(
            (cx - r, cy - r, cx + r, cy + r),
            fill=_colour(rng),
            outline=_colour(rng),
            width=int(side * rng.uniform(0, 0.04)),
        )


def _draw_stars(d: ImageDraw.ImageDraw, side: int, rng: np.random.Generator) -> None:
    for _ in range(int(rng.integers(1, 4))):
        r = side * rng.uniform(0.15, 0.4)
        cx, cy = rng.uniform(r * 0.7, side - r * 0.7, size=2)
        d.polygon(
            _star(
                cx,
                cy,
                r,
                int(rng.integers(5, 8)),
                rng.uniform(0.35, 0.55),
                rng.uniform(0, 2 * math.pi),
            ),
            fill=_colour(rng, 60),
        )


def _draw_house(d: ImageDraw.ImageDraw, side: int, rng: np.random.Generator) -> None:
    w = side * rng.uniform(0.35, 0.6)
    h = w * rng.uniform(0.6, 1.0)
    roof = w * rng.uniform(0.35, 0.6)
    x0 = rng.uniform(0.05 * side, side - w - 0.05 * side)
    y0 = rng.uniform(roof + 0.05 * side, side - h - 0.03 * side)
    d.rectangle((x0, y0, x0 + w, y0 + h), fill=_colour(rng, 80))
    eave = w * 0.1
    d.polygon(
        [(x0 - eave, y0), (x0 + w + eave, y0), (x0 + w / 2, y0 - roof)], fill=_colour(rng, 0, 180)
    )
    door_w = w * 0.22
    dx = x0 + w * rng.uniform(0.15, 0.85 - 0.22)
    d.rectangle((dx, y0 + h * 0.45, dx + door_w, y0 + h), fill=_colour(rng, 0, 120))
    win = w * 0.18
    glass = _colour(rng, 150)
    for wx in (x0 + w * 0.1, x0 + w * 0.72):
        if not (dx - win < wx < dx + door_w):
            d.rectangle(
                (wx, y0 + h * 0.15, wx + win, y0 + h * 0.15 + win),
                fill=glass,
                outline=(40, 40, 40),
                width=max(1, side // 96),
            )


def _draw_face(d: ImageDraw.ImageDraw, side: int, rng: np.random.Generator) -> None:
    rx = side * rng.uniform(0.22, 0.38)
    ry = rx * rng.uniform(1.05, 1.3)
    cx = rng.uniform(rx + 2, side - rx - 2)
    cy = rng.uniform(ry + 2, side - ry - 2)
    skins = [(255, 224, 189), (234, 192, 134), (198, 134, 66), (141, 85, 36), (255, 205, 148)]
    skin = np.array(skins[int(rng.integers(len(skins)))]) + rng.integers(-20, 21, size=3)
    d.ellipse(
        (cx - rx, cy - ry, cx + rx, cy + ry), fill=tuple(int(v) for v in np.clip(skin, 0, 255))
    )
    if rng.random() < 0.7:  # hair
        d.chord((cx - rx, cy - ry, cx + rx, cy + ry * 0.2), 180, 360, fill=_colour(rng, 0, 120))
    eye_dx, eye_y = rx * 0.4, cy - ry * 0.15
    er = rx * rng.uniform(0.12, 0.18)
    iris = _colour(rng, 0, 160)
    for ex in (cx - eye_dx, cx + eye_dx):
        d.ellipse((ex - er, eye_y - er * 0.8, ex + er, eye_y + er * 0.8), fill=(250, 250, 250))
        d.ellipse((ex - er * 0.5, eye_y - er * 0.5, ex + er * 0.5, eye_y + er * 0.5), fill=iris)
    d.line((cx, cy, cx - rx * 0.08, cy + ry * 0.2), fill=(90, 50, 30), width=max(1, side // 80))
    mw, my = rx * rng.uniform(0.35, 0.6), cy + ry * 0.45
    span = (20, 160) if rng.random() < 0.7 else (200, 340)  # smile or frown
    box_y = my - ry * 0.25 if span[0] == 20 else my
    d.arc(
        (cx - mw, box_y, cx + mw, box_y + ry * 0.3),
        *span,
        fill=(150, 30, 40),
        width=max(2, side // 48),
    )


def _pattern(side: int, rng: np.random.Generator, checker: bool) -> Image.Image:
    """Rotated stripes (smooth or hard) or a rotated checkerboard, two or three colours."""
    angle = rng.uniform(0, math.pi)
    period = side * rng.uniform(0.08, 0.3)
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float32)
    u = xx * math.cos(angle) + yy * math.sin(angle)
    v = -xx * math.sin(angle) + yy * math.cos(angle)
    phase = rng.uniform(0, period)
    a = np.array(_colour(rng), np.float32)
    b = _contrasting(rng, a)
    if checker:
        t = ((np.floor((u + phase) / period) + np.floor((v + phase) / period)) % 2)[..., None]
    elif rng.random() < 0.5:
        t = (0.5 + 0.5 * np.sin(2 * math.pi * (u + phase) / period))[..., None]
    else:
        n_col = int(rng.integers(2, 4))
        band = np.floor((u + phase) / period) % n_col
        cols = np.stack([a, b, _contrasting(rng, b)])[:n_col]
        return Image.fromarray(cols[band.astype(np.int64)].astype(np.uint8))
    return Image.fromarray((a * (1 - t) + b * t).astype(np.uint8))


SceneDrawer = Callable[[ImageDraw.ImageDraw, int, np.random.Generator], None]
_DRAWERS: dict[str, SceneDrawer] = {
    "circles": _draw_circles,
    "stars": _draw_stars,
    "houses": _draw_house,
    "faces": _draw_face,
}


def _render(
    category: str, size: int, rng: np.random.Generator, textures
) -> tuple[Image.Image, str]:
    # Draw at twice the size and downsample: anti-aliased edges without per-shape work.
    side = 2 * size
    if category in ("stripes", "checkerboard"):
        im, tex = _pattern(side, rng, checker=category == "checkerboard"), ""
    else:
        im, tex = _background(rng, side, textures)
        _DRAWERS[category](ImageDraw.Draw(im), side, rng)
    return im.resize((size, size), Image.Resampling.LANCZOS), tex


# ---------------------------------------------------------------------- writing
def _png_bytes(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


def _write_if_changed(path: Path, data: bytes) -> None:
    """Leave identical files untouched so their mtimes (and the embedding cache) survive."""
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, data)


def make_demo_gallery(
    out_dir: str | os.PathLike, seed: int = 0, *, size: int = 96, progress: bool = True
) -> Gallery:
    """Build (or refresh) the demo gallery in ``out_dir``.

    Parameters
    ----------
    out_dir : path-like
        Folder to write ``<category>/<category>_<nn>.png`` and ``gallery.csv`` into.
        Files identical to what would be written are left untouched; demo images of an
        earlier build that are no longer part of it are removed.
    seed : int
        Same seed, same bytes.
    size : int
        Side of the square PNGs in pixels (96 or 128 suit the small models).
    progress : bool
        Show a progress bar.

    Returns
    -------
    Gallery
        240 images in 12 categories of 20 (ids ``cat_00`` ... ``checkerboard_19``).
    """
    from tqdm.auto import tqdm

    if size < 32:
        raise ValueError(f"size={size} is too small for recognisable scenes; use 96 or 128.")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    previous = _previous_demo_files(out)
    children = np.random.SeedSequence(seed).spawn(len(CATEGORIES))
    textures = {name: _load_texture(name) for name in TEXTURES}
    rows: list[dict[str, str]] = []
    written: set[str] = set()
    bar = tqdm(
        total=len(CATEGORIES) * PER_CATEGORY, desc="demo gallery", unit="img", disable=not progress
    )
    with bar:
        for category, child in zip(CATEGORIES, children, strict=True):
            rng = np.random.default_rng(child)
            photo = None
            if category in PHOTOS:
                photo = Image.fromarray(_load_photo(PHOTOS[category][0]))
            for i in range(PER_CATEGORY):
                image_id = f"{category}_{i:02d}"
                if photo is not None:
                    im = _photo_variant(photo, i, size, rng)
                    source, license_ = PHOTOS[category][1], PHOTOS[category][2]
                    source = source + (
                        " (centre crop)" if i == 0 else " (random crop, flip, colour jitter)"
                    )
                else:
                    im, tex = _render(category, size, rng, textures)
                    source, license_ = f"{GENERATED_SOURCE} (seed {seed})", GENERATED_LICENSE
                    if tex:
                        source += f" on a tinted crop of scikit-image data '{tex}' (CC0-1.0)"
                rel = f"{category}/{image_id}.png"
                _write_if_changed(out / rel, _png_bytes(im))
                written.add(rel)
                rows.append(
                    {
                        "id": image_id,
                        "category": category,
                        "source": source,
                        "license": license_,
                        "file": rel,
                    }
                )
                bar.update(1)

    for rel in previous - written:
        if rel.endswith(".png") and ".." not in Path(rel).parts:
            (out / rel).unlink(missing_ok=True)
    buf = io.StringIO()
    writer = csv.DictWriter(
        buf, fieldnames=["id", "category", "source", "license", "file"], lineterminator="\n"
    )
    writer.writeheader()
    writer.writerows(rows)
    _write_if_changed(out / CSV_NAME, buf.getvalue().encode())
    meta = {
        "generator": "rtdecode.images.demo",
        "version": DEMO_VERSION,
        "seed": seed,
        "size": size,
    }
    _write_if_changed(out / "demo.json", (json.dumps(meta, indent=2) + "\n").encode())
    return Gallery.from_folder(out)


def _previous_demo_files(out: Path) -> set[str]:
    """Files listed by an earlier demo build in ``out`` (only those may be deleted)."""
    if not (out / "demo.json").is_file() or not (out / CSV_NAME).is_file():
        return set()
    try:
        with (out / CSV_NAME).open(newline="") as fh:
            return {row["file"] for row in csv.DictReader(fh) if row.get("file")}
    except (OSError, KeyError, csv.Error) as exc:
        warnings.warn(f"Could not read the previous demo listing in {out}: {exc}", stacklevel=3)
        return set()
