"""The ``_class_name`` each decoder kind's folder carries in its config files.

The registry reads them to tell a folder's kind, and each decoder writes or checks its
own; both import them from here, so no decoder imports the registry that names it by
string (that would be an import cycle hidden in a ``"module:Class"`` string).
"""

from __future__ import annotations

__all__ = [
    "KANDINSKY22_CLASS_NAMES",
    "TINY_CLASS_NAME",
    "TURBO_CLASS_NAMES",
    "UNCLIP_CLASS_NAMES",
]

TINY_CLASS_NAME = "RtdecodeTinyDecoder"
UNCLIP_CLASS_NAMES = ("StableUnCLIPImg2ImgPipeline",)
KANDINSKY22_CLASS_NAMES = ("KandinskyV22Pipeline", "KandinskyV22Img2ImgPipeline")
#: SDXL-Turbo / SD-Turbo text-to-image pipelines, conditioned through an IP-Adapter.
TURBO_CLASS_NAMES = ("StableDiffusionXLPipeline", "StableDiffusionPipeline")
