"""The image codec: a PIL image to the bytes a frame carries (JPEG, WebP or PNG).

The worker encodes every generated image here, and the service the gallery thumbnails
it serves. Threads: stateless; any thread may call it.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image

#: The formats a frame's image may have, and PIL's name of each.
IMAGE_FORMATS = {"jpeg": "JPEG", "webp": "WEBP", "png": "PNG"}

__all__ = ["IMAGE_FORMATS", "encode_image"]


def encode_image(img: Image.Image, fmt: str = "jpeg", quality: int = 85) -> bytes:
    """Encode a PIL image to bytes in ``fmt``.

    Parameters
    ----------
    img : PIL.Image.Image
        Any mode; it is converted to RGB.
    fmt : str
        ``"jpeg"``, ``"webp"`` or ``"png"`` (its media type is ``image/<fmt>``).
    quality : int
        JPEG and WebP quality.

    Returns
    -------
    bytes
    """
    pil_fmt = IMAGE_FORMATS.get(fmt)
    if pil_fmt is None:
        raise ValueError(f"Image format {fmt!r} is unknown; use one of {sorted(IMAGE_FORMATS)}.")
    buf = io.BytesIO()
    kwargs = {"quality": quality} if pil_fmt in {"JPEG", "WEBP"} else {}
    img.convert("RGB").save(buf, format=pil_fmt, **kwargs)
    return buf.getvalue()
