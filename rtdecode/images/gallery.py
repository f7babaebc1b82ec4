"""Image galleries: a folder of images, their categories, and cached embeddings.

A gallery is a folder of image files (any depth) with an optional ``gallery.csv``
(columns ``id, category, source, license``, often ``concept``; optionally ``file``, a path
relative to the folder, which may lead outside it: ``rtdecode gallery build`` lists images
where they are instead of copying them). Without a CSV, an image's category is the name of
its subfolder.

Embeddings are cached on disk as safetensors, one file per encoder (keyed by
``encoder.name``, which carries the identity of the encoder's weights). Each cached row
remembers the file it came from (relative path, size, modification time in ns) and the
SHA-1 of its bytes: a row is reused when the file is unchanged, or when an image with the
same content is found (a renamed, copied or touched file), and read from a built gallery's
``embeddings-<encoder>.npz`` when that was made by the same encoder. Only images with new
content are encoded; removed images drop out of the cache.

Threads: a Gallery is built once and then read-only, except for its in-memory embedding
cache, which :meth:`Gallery.embeddings` fills under a lock; any thread may call
:meth:`Gallery.image` (the DecodeWorker does, for img2img init images and thumbnails).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import posixpath
import re
import threading
import warnings
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps

from rtdecode._utils.files import atomic_path, atomic_write

if TYPE_CHECKING:
    from rtdecode.images.encoders import ImageEncoder

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"})
CSV_NAME = "gallery.csv"
CACHE_DIRNAME = ".rtdecode-cache"
CACHE_FORMAT = "rtdecode-gallery-embeddings/1"
UNCATEGORIZED = "uncategorized"
CHECKED_NAME = "readable.json"


class GalleryWarning(UserWarning):
    """An image was skipped or the gallery.csv disagrees with the folder."""


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Read an image file as a fully loaded RGB PIL image.

    EXIF orientation is applied (camera photos), and transparent pixels are composited
    onto white rather than turning black.
    """
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        if im.mode in ("RGBA", "LA") or (im.mode == "P" and "transparency" in im.info):
            rgba = im.convert("RGBA")
            out = Image.new("RGB", rgba.size, (255, 255, 255))
            out.paste(rgba, mask=rgba.getchannel("A"))
            return out
        return im.convert("RGB")


def check_readable(path: Path) -> str | None:
    """Return None when ``path`` decodes as an image, else the reason it does not.

    JPEGs are decoded in draft mode (1/8 scale in the DCT domain), which still reads the
    whole file, so truncation is caught at a fraction of the cost of a full decode.
    """
    try:
        with Image.open(path) as im:
            im.draft("RGB", (64, 64))
            im.load()
    except Exception as exc:  # PIL raises many types for bad files
        return f"{type(exc).__name__}: {exc}"
    return None


def _rel(root: Path, path: Path) -> str:
    """``path`` relative to ``root`` in POSIX form (``../`` for files outside it)."""
    return Path(os.path.relpath(path, root)).as_posix()


def _file_key(root: Path, path: Path) -> str:
    st = path.stat()
    return f"{_rel(root, path)}|{st.st_size}|{st.st_mtime_ns}"


def content_digest(path: str | os.PathLike) -> str:
    """Hex SHA-1 of a file's bytes: an image's identity whatever its name or timestamps."""
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def npz_name(encoder: str) -> str:
    """File name of a built gallery's embeddings by the encoder registered as ``encoder``."""
    return f"embeddings-{encoder}.npz"


def read_built_embeddings(path: str | os.PathLike, encoder_name: str) -> dict[str, np.ndarray]:
    """Content digest -> embedding, from an npz of ``rtdecode gallery build``.

    Empty when the file was made by another encoder (``encoder`` differs from
    ``encoder_name``, e.g. other weights) or cannot be read.
    """
    try:
        with np.load(path, allow_pickle=False) as z:
            if str(z["encoder"]) != encoder_name:
                return {}
            return dict(zip(z["sha1"].tolist(), z["embeddings"], strict=True))
    except (OSError, KeyError, ValueError):
        return {}


def image_files(root: Path) -> list[Path]:
    """Image files under ``root`` at any depth, sorted by relative path (no hidden ones)."""
    return sorted(
        (
            p
            for p in root.rglob("*")
            if p.suffix.lower() in IMAGE_SUFFIXES
            and p.is_file()
            and not any(part.startswith(".") for part in p.relative_to(root).parts)
        ),
        key=lambda p: p.relative_to(root).as_posix(),
    )


def _read_checked(cache_dir: Path) -> set[str]:
    """File keys that decoded at an earlier scan: a rescan of a large gallery only stats."""
    try:
        return set(json.loads((cache_dir / CHECKED_NAME).read_text()))
    except (OSError, ValueError, TypeError):
        return set()


def _write_checked(cache_dir: Path, keys: list[str]) -> None:
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        atomic_write(cache_dir / CHECKED_NAME, json.dumps(keys))
    except OSError:
        pass  # only an optimisation: the next scan decodes every file again


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_")[:60] or "encoder"


def _read_csv(csv_path: Path) -> list[dict[str, str]]:
    with csv_path.open(newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = [f.strip() for f in (reader.fieldnames or [])]
        if "id" not in fields and "file" not in fields:
            raise ValueError(
                f"{csv_path} has columns {fields}; it needs an 'id' column (and optionally "
                "'file', 'category', 'source', 'license')."
            )
        return [
            {k.strip(): (v or "").strip() for k, v in row.items() if k is not None}
            for row in reader
        ]


class Gallery:
    """A folder of images with ids, categories and cached embeddings.

    Build one with :meth:`from_folder` (or :func:`rtdecode.images.make_demo_gallery`).

    Attributes
    ----------
    root : Path
        The gallery folder.
    ids : list of str
        Image ids, in a stable order (sorted by relative path). An id is the file's stem,
        or the relative path without suffix where two files share a stem, or the CSV's
        ``id`` when the CSV has a ``file`` column.
    categories : list of str
        Category per id (same order).
    paths : list of Path
        Absolute image path per id.
    info : list of dict
        The CSV row per id (``source``, ``license``, ...); empty dicts without a CSV.
    skipped : list of (Path, str)
        Files with an image suffix that could not be decoded, and why.
    cache_dir : Path
        Where embedding files are written.
    """

    def __init__(
        self,
        root: Path,
        ids: list[str],
        paths: list[Path],
        categories: list[str],
        info: list[dict[str, str]] | None = None,
        skipped: list[tuple[Path, str]] | None = None,
        cache_dir: Path | None = None,
    ) -> None:
        if not (len(ids) == len(paths) == len(categories)):
            raise ValueError(
                f"Gallery got {len(ids)} ids, {len(paths)} paths and {len(categories)} "
                "categories; give one of each per image."
            )
        if len(set(ids)) != len(ids):
            dupes = sorted(i for i, n in Counter(ids).items() if n > 1)[:5]
            raise ValueError(
                f"Gallery ids must be unique but {dupes} name several images; give each "
                "image its own id (file stem, or the 'id' column of gallery.csv)."
            )
        self.root = Path(root)
        self.ids = list(ids)
        self.paths = [Path(p) for p in paths]
        self.categories = list(categories)
        self.info = list(info) if info is not None else [{} for _ in ids]
        self.skipped = list(skipped or [])
        self.cache_dir = Path(cache_dir) if cache_dir is not None else self.root / CACHE_DIRNAME
        self._index = {id_: i for i, id_ in enumerate(self.ids)}
        self._keys: list[str] | None = None
        self._memory: dict[str, tuple[tuple[str, ...], np.ndarray]] = {}
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ building
    @classmethod
    def from_folder(
        cls, path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None
    ) -> Gallery:
        """Scan a folder of images into a Gallery.

        Parameters
        ----------
        path : path-like
            Folder with image files (``.png .jpg .jpeg .bmp .gif .tif .tiff .webp``) at any
            depth; hidden files and folders are ignored. An optional ``gallery.csv`` gives
            ``id, category, source, license`` (and optionally ``file``) per image.
        cache_dir : path-like, optional
            Where to keep embedding files; default ``<path>/.rtdecode-cache``.

        Returns
        -------
        Gallery
            Unreadable image files are skipped with a :class:`GalleryWarning` each and
            counted in ``n_skipped``.
        """
        root = Path(path).expanduser().resolve()
        if not root.is_dir():
            raise FileNotFoundError(
                f"Gallery folder {root} does not exist; give a folder of images "
                "(or build the demo gallery with rtdecode.images.make_demo_gallery)."
            )
        rows: list[dict[str, str]] = []
        csv_path = root / CSV_NAME
        if csv_path.is_file():
            rows = _read_csv(csv_path)
        files = image_files(root)
        # A built gallery (rtdecode gallery build) lists images kept in another folder.
        found = set(files)
        for row in rows:
            p = Path(os.path.normpath(root / row["file"])) if row.get("file") else None
            if p is not None and p not in found and p.suffix.lower() in IMAGE_SUFFIXES and p.is_file():
                files.append(p)
                found.add(p)
        files.sort(key=lambda p: _rel(root, p))
        cache = Path(cache_dir) if cache_dir is not None else root / CACHE_DIRNAME
        keys = {p: _file_key(root, p) for p in files}
        checked = _read_checked(cache)
        good: list[Path] = []
        skipped: list[tuple[Path, str]] = []
        for p in files:
            reason = None if keys[p] in checked else check_readable(p)
            if reason is None:
                good.append(p)
            else:
                skipped.append((p, reason))
                warnings.warn(
                    f"Skipping gallery image {p}: it cannot be read ({reason}). "
                    "Replace or remove the file.",
                    GalleryWarning,
                    stacklevel=2,
                )

        ids, info = cls._assign_ids(root, good, rows, csv_path)
        categories = []
        for p, row in zip(good, info, strict=True):
            folder = p.parent.name if p.parent != root else UNCATEGORIZED
            categories.append(row.get("category") or folder)
        if not good:
            warnings.warn(
                f"Gallery folder {root} holds no readable images.", GalleryWarning, stacklevel=2
            )
        good_keys = [keys[p] for p in good]
        if set(good_keys) != checked:
            _write_checked(cache, good_keys)
        gallery = cls(root, ids, good, categories, info, skipped, cache)
        gallery._keys = good_keys
        return gallery

    @staticmethod
    def default_ids(files: Sequence[Path], root: Path) -> list[str]:
        """Ids of image files without a table.

        The file's stem, or its path relative to ``root`` without suffix where two files
        share a stem.
        """
        rels = [_rel(root, p.with_suffix("")) for p in files]
        stem_count = Counter(p.stem for p in files)
        return [p.stem if stem_count[p.stem] == 1 else r for p, r in zip(files, rels, strict=True)]

    @staticmethod
    def _assign_ids(
        root: Path, files: list[Path], rows: list[dict[str, str]], csv_path: Path
    ) -> tuple[list[str], list[dict[str, str]]]:
        rels = [_rel(root, p.with_suffix("")) for p in files]
        ids = Gallery.default_ids(files, root)
        if not rows:
            return ids, [{} for _ in files]

        by_file = {
            posixpath.normpath(row["file"].replace("\\", "/")): row for row in rows if row.get("file")
        }
        by_id = {row["id"]: row for row in rows if row.get("id")}
        info: list[dict[str, str]] = []
        matched: set[int] = set()
        for i, p in enumerate(files):
            row = by_file.get(_rel(root, p))
            if row is not None and row.get("id"):
                ids[i] = row["id"]
            if row is None:
                row = by_id.get(ids[i]) or by_id.get(rels[i])
            info.append(dict(row) if row else {})
            if row is not None:
                matched.add(id(row))
        n_orphans = sum(1 for row in rows if id(row) not in matched)
        if n_orphans:
            warnings.warn(
                f"{n_orphans} row(s) of {csv_path} name no readable image in {root}; "
                "they are ignored.",
                GalleryWarning,
                stacklevel=3,
            )
        return ids, info

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, image_id: object) -> bool:
        return image_id in self._index

    def __repr__(self) -> str:
        return (
            f"Gallery({str(self.root)!r}, n_images={len(self)}, "
            f"n_categories={len(self.category_names)}, n_skipped={self.n_skipped})"
        )

    @property
    def n_skipped(self) -> int:
        """Number of image files that could not be read and were left out."""
        return len(self.skipped)

    @property
    def category_names(self) -> list[str]:
        """Sorted distinct categories."""
        return sorted(set(self.categories))

    def index(self, image_id: str) -> int:
        """Row of ``image_id`` in :attr:`ids` and in :meth:`embeddings`."""
        try:
            return self._index[image_id]
        except KeyError:
            raise KeyError(
                f"Image id {image_id!r} is not in the gallery at {self.root} "
                f"({len(self)} images, e.g. {self.ids[:3]})."
            ) from None

    def category(self, image_id: str) -> str:
        """The category of image ``image_id``."""
        return self.categories[self.index(image_id)]

    def image(self, image_id: str) -> Image.Image:
        """The image ``image_id`` as an RGB PIL image (read from disk each call)."""
        return load_rgb(self.paths[self.index(image_id)])

    def images(self, ids: Sequence[str] | None = None) -> list[Image.Image]:
        """Several images as RGB PIL images, default all of them."""
        return [self.image(i) for i in (self.ids if ids is None else ids)]

    # ------------------------------------------------------------------ embeddings
    @property
    def file_keys(self) -> list[str]:
        """``relative path|size|mtime_ns`` per image: what makes a cached row valid."""
        if self._keys is None:
            self._keys = [_file_key(self.root, p) for p in self.paths]
        return self._keys

    @property
    def fingerprint(self) -> str:
        """Hash of every image's relative path, size and modification time."""
        h = hashlib.sha1()
        for k in self.file_keys:
            h.update(k.encode())
            h.update(b"\n")
        return h.hexdigest()

    def cache_path(self, encoder_name: str) -> Path:
        """Embedding file of the encoder called ``encoder_name``."""
        digest = hashlib.sha1(encoder_name.encode()).hexdigest()[:10]
        return self.cache_dir / f"{_slug(encoder_name)}-{digest}.safetensors"

    def embeddings(
        self,
        encoder: ImageEncoder | str,
        *,
        batch_size: int = 32,
        progress: bool = True,
    ) -> np.ndarray:
        """Embeddings of every image, encoded once and cached on disk.

        Parameters
        ----------
        encoder : ImageEncoder or str
            An encoder from :func:`rtdecode.images.get_image_encoder`, or a registry name
            that needs no weights (e.g. ``"handcrafted"``).
        batch_size : int
            Images per ``encoder.encode`` call.
        progress : bool
            Show a progress bar while encoding.

        Returns
        -------
        ndarray, float32, shape (n_images, dim) or (n_images, n_tokens, dim)
            Row ``i`` belongs to ``ids[i]``.
        """
        if isinstance(encoder, str):
            from rtdecode.images.encoders import get_image_encoder

            encoder = get_image_encoder(encoder)
        name = str(encoder.name)
        keys = tuple(self.file_keys)
        with self._lock:
            hit = self._memory.get(name)
            if hit is not None and hit[0] == keys:
                return hit[1]
            cached = self._read_cache(name)
            rows: dict[str, np.ndarray] = {}
            digest_of: dict[str, str] = {}  # file key -> content digest
            if cached is not None:
                old_keys, old, old_digests = cached
                rows = {k: old[i] for i, k in enumerate(old_keys)}
                digest_of = dict(zip(old_keys, old_digests or [], strict=False))
            todo = [i for i, k in enumerate(keys) if k not in rows]
            if todo:
                # A renamed, copied or touched image keeps its embedding: match rows by
                # content, in this cache and in a built gallery's npz.
                by_content: dict[str, np.ndarray] = {}
                for npz in sorted(self.root.glob(npz_name("*"))):
                    by_content.update(read_built_embeddings(npz, name))
                if cached is not None:
                    by_content.update({digest_of[k]: rows[k] for k in old_keys if k in digest_of})
                for i in todo:
                    digest_of[keys[i]] = d = content_digest(self.paths[i])
                    if d in by_content:
                        rows[keys[i]] = by_content[d]
                todo = [i for i in todo if keys[i] not in rows]
            if todo:
                new = self._encode(encoder, todo, batch_size=batch_size, progress=progress)
                for j, i in enumerate(todo):
                    rows[keys[i]] = new[j]
            if len(self) == 0:
                shape = tuple(getattr(encoder, "output_shape", (int(encoder.dim),)))
                out = np.zeros((0, *shape), dtype=np.float32)
            else:
                out = np.ascontiguousarray(np.stack([rows[k] for k in keys]), dtype=np.float32)
            if cached is None or list(cached[0]) != list(keys) or cached[2] is None:
                digests = [digest_of.get(k) or content_digest(p) for k, p in zip(keys, self.paths, strict=True)]
                self._write_cache(name, keys, out, digests)
            out.setflags(write=False)
            self._memory[name] = (keys, out)
            return out

    def _encode(
        self, encoder: ImageEncoder, todo: list[int], *, batch_size: int, progress: bool
    ) -> np.ndarray:
        from tqdm.auto import tqdm

        chunks = []
        bar = tqdm(
            total=len(todo),
            desc=f"encoding gallery ({encoder.name})",
            unit="img",
            disable=not progress or len(todo) < 2 * batch_size,
        )
        with bar:
            for start in range(0, len(todo), batch_size):
                batch = todo[start : start + batch_size]
                arr = np.asarray(encoder.encode([load_rgb(self.paths[i]) for i in batch]))
                if arr.shape[0] != len(batch):
                    raise RuntimeError(
                        f"Encoder {encoder.name!r} returned {arr.shape[0]} rows for "
                        f"{len(batch)} images; encode() must return one row per image."
                    )
                chunks.append(arr.astype(np.float32, copy=False))
                bar.update(len(batch))
        return np.concatenate(chunks)

    def _read_cache(self, name: str) -> tuple[list[str], np.ndarray, list[str] | None] | None:
        from safetensors import safe_open

        path = self.cache_path(name)
        if not path.is_file():
            return None
        try:
            with safe_open(str(path), framework="numpy") as fh:
                meta = fh.metadata() or {}
                if meta.get("format") != CACHE_FORMAT or meta.get("encoder") != name:
                    return None
                keys = json.loads(meta["keys"])
                digests = json.loads(meta["sha1"]) if "sha1" in meta else None
                arr = fh.get_tensor("embeddings")
        except Exception as exc:  # a damaged cache is rebuilt, never fatal
            warnings.warn(
                f"Ignoring unreadable embedding cache {path} ({exc}); re-encoding.",
                GalleryWarning,
                stacklevel=3,
            )
            return None
        if arr.shape[0] != len(keys) or (digests is not None and len(digests) != len(keys)):
            return None
        return keys, arr, digests

    def _write_cache(
        self, name: str, keys: tuple[str, ...], emb: np.ndarray, digests: list[str]
    ) -> None:
        from safetensors.numpy import save_file

        path = self.cache_path(name)
        meta: dict[str, Any] = {
            "format": CACHE_FORMAT,
            "encoder": name,
            "fingerprint": self.fingerprint,
            "ids": json.dumps(self.ids),
            "keys": json.dumps(list(keys)),
            "sha1": json.dumps(digests),
        }
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with atomic_path(path) as tmp:
                save_file({"embeddings": np.ascontiguousarray(emb)}, str(tmp), metadata=meta)
        except OSError as exc:
            warnings.warn(
                f"Cannot write the embedding cache {path} ({exc}); embeddings stay in memory "
                "only. Pass cache_dir= to Gallery.from_folder to put the cache elsewhere.",
                GalleryWarning,
                stacklevel=3,
            )
