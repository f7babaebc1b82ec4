"""Image galleries and image encoders.

Names load on first use (PEP 562), so ``import rtdecode.images`` imports neither torch,
transformers nor scikit-image.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "Gallery": "rtdecode.images.gallery",
    "GalleryWarning": "rtdecode.images.gallery",
    "load_rgb": "rtdecode.images.gallery",
    "make_demo_gallery": "rtdecode.images.demo",
    "ImageEncoder": "rtdecode.images.encoders",
    "get_image_encoder": "rtdecode.images.encoders",
    "list_image_encoders": "rtdecode.images.encoders",
    "register_image_encoder": "rtdecode.images.encoders",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    try:
        module = _EXPORTS[name]
    except KeyError:
        raise AttributeError(f"module 'rtdecode.images' has no attribute {name!r}") from None
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
