"""Build a gallery from any folder of images: ``rtdecode gallery build``.

A lab points it at its image folder (THINGS' ``object_images/``, a stimulus folder, ...)
and gets a gallery that ``serve --gallery``, ``--retrieval-set DIR``, training and
evaluation read::

    GALLERY_DIR/gallery.csv                 id, concept, category, source, license, file
    GALLERY_DIR/embeddings-<encoder>.npz    ids (unicode), embeddings (float32, (n, D)),
                                            encoder (its identity: name + weights hash),
                                            sha1 (each image file's content digest)

Layouts of ``IMAGES_DIR``:

``<category>/<image>``
    Each subfolder is a category (its name); an image's concept is its folder's name too
    (THINGS keeps one folder of exemplars per concept) unless a table says otherwise.
    Deeper folders are allowed: the category is the image's own folder.
flat
    Images at the top level; category ``uncategorized`` and the concept is the file name
    without a trailing exemplar number (``dog_01b.jpg`` -> ``dog``), unless a table says
    otherwise.

A table (``--table FILE``, default ``IMAGES_DIR/gallery.csv`` or ``images.csv`` when one
exists; CSV or TSV) may give, per image, ``file`` (path relative to ``IMAGES_DIR``) and/or
``id``, and any of ``concept``, ``category``, ``source``, ``license``. Rows match images by
``file``, else by ``id`` = the file's stem.

The images are not copied: ``file`` in the written gallery.csv is the image's path
relative to ``GALLERY_DIR`` (so the two folders can move together), and
:meth:`rtdecode.images.Gallery.from_folder` reads them from there.

Resuming: images are embedded in chunks; each finished chunk is written atomically to
``GALLERY_DIR/.rtdecode-build/<encoder>/``, keyed by the files' content digests. A rerun
(after Ctrl-C, a crash or a power cut) reuses every finished chunk and every row of an
earlier ``embeddings-<encoder>.npz`` made by the same encoder, and embeds only the rest.
"""

from __future__ import annotations

import csv
import hashlib
import io
import os
import posixpath
import re
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from rtdecode._utils.files import atomic_path, atomic_write
from rtdecode._utils.tables import read_table
from rtdecode.images.encoders import DEFAULT_IMAGE_ENCODER, ImageEncoder, get_image_encoder
from rtdecode.images.gallery import (
    CSV_NAME,
    IMAGE_SUFFIXES,
    UNCATEGORIZED,
    Gallery,
    check_readable,
    content_digest,
    image_files,
    load_rgb,
    npz_name,
    read_built_embeddings,
)

__all__ = ["GALLERY_COLUMNS", "build_gallery", "scan_images"]

#: Columns of the gallery.csv this module writes (the THINGS-like world writes the same
#: ones, plus ``split``).
GALLERY_COLUMNS = ("id", "concept", "category", "source", "license", "file")
BUILD_DIRNAME = ".rtdecode-build"
TABLE_NAMES = (CSV_NAME, "images.csv")
_EXEMPLAR = re.compile(r"[\s_\-]*\d+[a-z]?$")


def _concept_from_stem(stem: str) -> str:
    """``dog_01b`` -> ``dog``; a name that is only a number stays as it is."""
    return _EXEMPLAR.sub("", stem) or stem


def scan_images(images_dir: str | os.PathLike) -> list[Path]:
    """Image files under ``images_dir``, sorted by relative path.

    Any depth; hidden files and folders are skipped.

    Raises
    ------
    FileNotFoundError
        ``images_dir`` is not a folder.
    ValueError
        It holds no image files.
    """
    root = Path(images_dir).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(
            f"Image folder {str(root)!r} does not exist or is not a folder; give a folder of "
            "<category>/<image> subfolders, or a flat folder of images."
        )
    files = image_files(root)
    if not files:
        raise ValueError(
            f"Image folder {str(root)!r} holds no image files "
            f"({', '.join(sorted(IMAGE_SUFFIXES))}); give a folder of <category>/<image> "
            "subfolders, or a flat folder of images (with an optional CSV of ids and concepts)."
        )
    return files


def _read_rows(table: Path) -> list[dict[str, str]]:
    t = read_table(
        table, "Image table", "give --table a CSV with columns file or id, and concept, category, "
        "source, license."
    )
    cols = {
        name: t.column(accepted)
        for name, accepted in {
            "file": ("file", "filename", "path", "image", "image_file"),
            "id": ("id", "image_id"),
            "concept": ("concept", "label", "name"),
            "category": ("category",),
            "source": ("source",),
            "license": ("license", "licence"),
        }.items()
    }
    if cols["file"] is None and cols["id"] is None:
        raise ValueError(
            f"Image table {str(table)!r} has columns {t.header}; it needs a 'file' column "
            "(path relative to the image folder) or an 'id' column (the file name without "
            "its suffix)."
        )
    return [
        {k: v for k, i in cols.items() if (v := t.cell(row, i)) is not None} for _, row in t.rows
    ]


def _catalogue(
    root: Path, files: list[Path], table: Path | None
) -> tuple[list[dict[str, str]], str, int]:
    """One gallery.csv row per image (without ``file``), the layout, orphan table rows."""
    rows = _read_rows(table) if table is not None else []
    by_file = {posixpath.normpath(r["file"].replace("\\", "/")): r for r in rows if r.get("file")}
    by_id = {r["id"]: r for r in rows if r.get("id") and not r.get("file")}
    nested = any(len(p.relative_to(root).parts) > 1 for p in files)
    rels = [p.relative_to(root).as_posix() for p in files]
    ids = Gallery.default_ids(files, root)
    out, used = [], set()
    for p, rel, id_ in zip(files, rels, ids, strict=True):
        row = by_file.get(rel)
        if row is None:
            row = by_id.get(id_) or by_id.get(p.stem) or {}
        if row:
            used.add(id(row))
        folder = p.parent.name if p.parent != root else None
        concept = row.get("concept") or folder or _concept_from_stem(p.stem)
        out.append({
            "id": row.get("id") or id_,
            "concept": concept,
            "category": row.get("category") or folder or UNCATEGORIZED,
            "source": row.get("source") or root.name,
            "license": row.get("license") or "unknown",
        })
    seen: dict[str, int] = {}
    for r in out:
        seen[r["id"]] = seen.get(r["id"], 0) + 1
    dupes = sorted(k for k, n in seen.items() if n > 1)
    if dupes:
        raise ValueError(
            f"Image ids {dupes[:5]} name several images in {root}; give each image its own "
            "id in the table's 'id' column (or leave ids out to use file names)."
        )
    orphans = sum(1 for r in rows if id(r) not in used)
    return out, ("<category>/<image>" if nested else "flat"), orphans


def _save_npz(path: Path, **arrays: np.ndarray) -> None:
    """``np.savez`` written atomically (to a file object: no suffix is appended)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def build_gallery(
    images_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    image_encoder: str | ImageEncoder | None = None,
    encoder_path: str | os.PathLike | None = None,
    table: str | os.PathLike | None = None,
    chunk_size: int = 64,
    device: str = "cpu",
    progress: bool = True,
) -> dict[str, Any]:
    """Catalogue and embed a folder of images into a gallery folder (see the module doc).

    Parameters
    ----------
    images_dir : path-like
        ``<category>/<image>`` subfolders, or a flat folder of images.
    out_dir : path-like
        The gallery folder to write (created; may be ``images_dir`` itself).
    image_encoder : str or ImageEncoder, optional
        Registry name (default :data:`~rtdecode.images.DEFAULT_IMAGE_ENCODER`) or a built
        encoder.
    encoder_path : path-like, optional
        Local weights for encoders that need them (``dinov2``, ``clip-vision``).
    table : path-like, optional
        CSV/TSV of ``file``/``id`` and ``concept``, ``category``, ``source``, ``license``;
        default ``images_dir/gallery.csv`` or ``images_dir/images.csv`` if present.
    chunk_size : int
        Images embedded and saved together; an interrupted build loses at most one chunk.
    device : str
        Encoder device (``cpu``, ``cuda``, ``auto``).
    progress : bool
        Show a progress bar.

    Returns
    -------
    dict
        ``n_images``, ``n_categories``, ``n_concepts``, ``layout``, ``encoder`` (registry
        name), ``encoder_identity``, ``dim``, ``n_reused``, ``n_embedded``, ``skipped``
        (unreadable files and why), ``n_table_rows_unmatched``, ``gallery_csv``,
        ``embeddings``, ``seconds``.
    """
    t0 = time.perf_counter()
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} must be at least 1 image.")
    root = Path(images_dir).expanduser().resolve()
    out = Path(out_dir).expanduser().resolve()
    files = scan_images(root)
    if table is None:
        table = next((root / n for n in TABLE_NAMES if (root / n).is_file()), None)
    table_path = Path(table).expanduser() if table is not None else None

    skipped = []
    good = []
    for p in files:
        reason = check_readable(p)
        if reason is None:
            good.append(p)
        else:
            skipped.append({"file": p.relative_to(root).as_posix(), "reason": reason})
    if not good:
        raise ValueError(
            f"None of the {len(files)} image files in {root} can be read (e.g. "
            f"{skipped[0]['file']}: {skipped[0]['reason']}); replace them with PNG or JPEG files."
        )
    rows, layout, orphans = _catalogue(root, good, table_path)

    image_encoder = image_encoder or DEFAULT_IMAGE_ENCODER
    if isinstance(image_encoder, str):
        registry_name = image_encoder
        encoder = get_image_encoder(image_encoder, path=encoder_path, device=device)
    else:
        encoder = image_encoder
        registry_name = getattr(encoder, "registry_name", "") or re.sub(
            r"[^A-Za-z0-9._-]+", "_", str(encoder.name)
        )

    out.mkdir(parents=True, exist_ok=True)
    final = out / npz_name(registry_name)
    work = out / BUILD_DIRNAME / hashlib.sha1(encoder.name.encode()).hexdigest()[:12]
    digests = [content_digest(p) for p in good]
    done: dict[str, np.ndarray] = read_built_embeddings(final, encoder.name) if final.is_file() else {}
    if work.is_dir():
        for chunk in sorted(work.glob("chunk-*.npz")):
            done.update(read_built_embeddings(chunk, encoder.name))
    todo = [i for i, d in enumerate(digests) if d not in done]
    n_reused = len(good) - len(todo)

    if todo:
        from tqdm.auto import tqdm

        work.mkdir(parents=True, exist_ok=True)
        bar = tqdm(total=len(good), initial=n_reused, unit="img", disable=not progress,
                   desc=f"embedding {root.name} ({registry_name})")
        with bar:
            for start in range(0, len(todo), chunk_size):
                batch = todo[start : start + chunk_size]
                emb = np.asarray(encoder.encode([load_rgb(good[i]) for i in batch]), np.float32)
                if emb.shape[0] != len(batch):
                    raise RuntimeError(
                        f"Encoder {encoder.name!r} returned {emb.shape[0]} rows for "
                        f"{len(batch)} images; encode() must return one row per image."
                    )
                sha = np.array([digests[i] for i in batch])
                key = hashlib.sha1("".join(sha.tolist()).encode()).hexdigest()[:16]
                _save_npz(work / f"chunk-{key}.npz", encoder=np.array(encoder.name), sha1=sha,
                          embeddings=emb)
                done.update(zip(sha.tolist(), emb, strict=True))
                bar.update(len(batch))

    embeddings = np.ascontiguousarray(np.stack([done[d] for d in digests]), dtype=np.float32)
    ids = np.array([r["id"] for r in rows])
    _save_npz(final, ids=ids, embeddings=embeddings, encoder=np.array(encoder.name),
              sha1=np.array(digests))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(GALLERY_COLUMNS)
    for r, p in zip(rows, good, strict=True):
        rel = Path(os.path.relpath(p, out)).as_posix()
        writer.writerow([r["id"], r["concept"], r["category"], r["source"], r["license"], rel])
    atomic_write(out / CSV_NAME, buf.getvalue())
    shutil.rmtree(work, ignore_errors=True)
    with_work = work.parent
    if with_work.is_dir() and not any(with_work.iterdir()):
        with_work.rmdir()

    return {
        "images_dir": str(root),
        "gallery_dir": str(out),
        "layout": layout,
        "n_images": len(good),
        "n_categories": len({r["category"] for r in rows}),
        "n_concepts": len({r["concept"] for r in rows}),
        "encoder": registry_name,
        "encoder_identity": encoder.name,
        "dim": int(embeddings.shape[1]) if embeddings.ndim > 1 else 0,
        "n_reused": n_reused,
        "n_embedded": len(todo),
        "skipped": skipped,
        "n_table_rows_unmatched": orphans,
        "gallery_csv": str(out / CSV_NAME),
        "embeddings": str(final),
        "seconds": round(time.perf_counter() - t0, 2),
    }
