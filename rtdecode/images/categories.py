"""Categories as retrieval candidates: when trials name a category, not an image.

A dataset card whose codes name categories (``1 = "house"``, ``2 = "face"``, with the
pictures in ``<root>/house/`` and ``<root>/face/``) trains the encoder towards the
category's **mean image embedding** and retrieves among categories. A
:class:`CategoryGallery` is that retrieval set: it answers what a
:class:`~rtdecode.images.Gallery` answers (``ids``, ``index``, ``embeddings``,
``image``), with one entry per category; its image is a contact sheet of the category's
pictures, so that the viewer shows the category and its images.

:func:`open_gallery` is the one place that picks a Gallery or a CategoryGallery from a
checkpoint's or a dataset's ``labels``.

Threads: like Gallery, safe to read from several threads once built.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image

from rtdecode.images.gallery import Gallery

if TYPE_CHECKING:  # pragma: no cover - typing only
    from rtdecode.images.encoders import ImageEncoder

__all__ = ["CategoryGallery", "LABEL_KINDS", "open_gallery"]

LABEL_KINDS = ("image", "category")
_SHEET_SIDE = 2  # images per side of a category's contact sheet


class CategoryGallery:
    """One retrieval candidate per category of a gallery: its mean image embedding.

    Parameters
    ----------
    images : Gallery
        The pictures, one sub-folder per category (``Gallery.categories``).

    Attributes
    ----------
    root : Path
        The image folder.
    ids : list of str
        Category names, sorted.
    pictures : Gallery
        The underlying gallery of pictures.
    """

    def __init__(self, images: Gallery) -> None:
        if len(images) == 0:
            raise ValueError(
                f"The image folder {str(images.root)!r} holds no images; put one folder of "
                "pictures per category in it."
            )
        self.pictures = images
        self.root = images.root
        self.ids = list(images.category_names)
        self._index = {c: i for i, c in enumerate(self.ids)}
        cats = np.asarray(images.categories, dtype=object)
        self._members = [np.flatnonzero(cats == c) for c in self.ids]

    @classmethod
    def from_folder(
        cls, path: str | os.PathLike, *, cache_dir: str | os.PathLike | None = None
    ) -> CategoryGallery:
        """The categories of ``Gallery.from_folder(path, cache_dir=cache_dir)``."""
        return cls(Gallery.from_folder(path, cache_dir=cache_dir))

    def __len__(self) -> int:
        return len(self.ids)

    def __contains__(self, category: object) -> bool:
        return category in self._index

    def __repr__(self) -> str:
        return f"CategoryGallery({str(self.root)!r}, categories={self.ids})"

    @property
    def categories(self) -> list[str]:
        """The category of each id: itself."""
        return list(self.ids)

    @property
    def category_names(self) -> list[str]:
        """Sorted category names (the ids)."""
        return list(self.ids)

    def members(self, category: str) -> list[str]:
        """Image ids of one category."""
        return [self.pictures.ids[i] for i in self._members[self.index(category)]]

    def index(self, category: str) -> int:
        """Row of ``category`` in :attr:`ids` and :meth:`embeddings`."""
        try:
            return self._index[category]
        except KeyError:
            raise KeyError(
                f"Category {category!r} is not in the image folder {str(self.root)!r} (it has "
                f"{self.ids}); add a folder of its pictures."
            ) from None

    def category(self, category: str) -> str:
        """The category of an id: the id itself."""
        self.index(category)
        return category

    def embeddings(
        self, encoder: ImageEncoder | str, *, batch_size: int = 32, progress: bool = True
    ) -> np.ndarray:
        """Mean image embedding per category.

        Returns
        -------
        ndarray, float32, shape (n_categories, dim) or (n_categories, n_tokens, dim)
            Row ``i`` is the mean over the images of ``ids[i]`` (the gallery's cached
            embeddings).
        """
        emb = self.pictures.embeddings(encoder, batch_size=batch_size, progress=progress)
        out = np.stack([emb[rows].mean(axis=0) for rows in self._members]).astype(np.float32)
        out.setflags(write=False)
        return out

    def image(self, category: str) -> Image.Image:
        """A contact sheet of the category's first pictures (2 x 2), as an RGB image."""
        rows = self._members[self.index(category)][: _SHEET_SIDE**2]
        pics = [self.pictures.image(self.pictures.ids[i]) for i in rows]
        side = max(max(p.size) for p in pics)
        sheet = Image.new("RGB", (side * _SHEET_SIDE, side * _SHEET_SIDE), (255, 255, 255))
        for k, pic in enumerate(pics):
            pic = pic.copy()
            pic.thumbnail((side, side))
            x, y = (k % _SHEET_SIDE) * side, (k // _SHEET_SIDE) * side
            sheet.paste(pic, (x + (side - pic.size[0]) // 2, y + (side - pic.size[1]) // 2))
        return sheet

    def images(self, ids: Sequence[str] | None = None) -> list[Image.Image]:
        """Contact sheets of several categories (default all)."""
        return [self.image(c) for c in (self.ids if ids is None else ids)]


def open_gallery(path: str | os.PathLike, labels: str | None = "image") -> Gallery | CategoryGallery:
    """The retrieval gallery of a folder: its images, or its categories.

    Parameters
    ----------
    path : path-like
        The image folder.
    labels : str or None
        ``"image"`` (or None): a :class:`Gallery`; ``"category"``: a
        :class:`CategoryGallery` over it.
    """
    labels = labels or "image"
    if labels not in LABEL_KINDS:
        raise ValueError(f"labels={labels!r} is not one of {LABEL_KINDS}.")
    gallery = Gallery.from_folder(path)
    return CategoryGallery(gallery) if labels == "category" else gallery
