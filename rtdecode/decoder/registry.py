"""The decoder registry: a decoder kind's name -> the ``"module:Class"`` that loads it.

Optional backends are chosen by name and imported only when used (uvicorn's way), so
``import rtdecode.decoder.registry`` loads no diffusers. A decoder folder says which kind
it is through its config files (:func:`decoder_kind`); :func:`load_decoder` imports that
kind's class and calls its ``from_folder``.

Threads: stateless; the thread that owns the models calls :func:`load_decoder` once.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rtdecode._utils.paths import bundled_models_dir
from rtdecode.decoder.kinds import (
    KANDINSKY22_CLASS_NAMES,
    TINY_CLASS_NAME,
    TURBO_CLASS_NAMES,
    UNCLIP_CLASS_NAMES,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

    from rtdecode.decoder.base import ImageDecoder

#: Decoder kinds and the class that loads each (``Class.from_folder(folder, ...)``).
DECODERS: dict[str, str] = {
    "tiny": "rtdecode.decoder.tiny:TinyDecoder",
    "unclip": "rtdecode.decoder.pipelines:UnCLIPDecoder",
    "kandinsky22": "rtdecode.decoder.pipelines:Kandinsky22Decoder",
    "sdxl-turbo": "rtdecode.decoder.turbo:TurboDecoder",
}


#: Names that :func:`load_decoder` resolves to folders shipped inside the package
#: (``rtdecode/_models``: the wheel's package data, ``models/`` in a checkout).
BUNDLED_DECODERS = {
    "demo": bundled_models_dir() / "demo" / "decoder",
}


def import_from_string(spec: str) -> Any:
    """The object a ``"package.module:Attribute"`` string names.

    Parameters
    ----------
    spec : str
        Module path and attribute, separated by one colon.

    Returns
    -------
    Any
        The attribute, imported on this call.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{spec!r} is not of the form 'package.module:Attribute'.")
    module = importlib.import_module(module_name)
    try:
        return getattr(module, attr)
    except AttributeError:
        raise ValueError(f"Module {module_name!r} has no attribute {attr!r} ({spec!r}).") from None


def resolve_decoder_path(name_or_path: str | Path) -> Path:
    """A bundled decoder's name (``"demo"``) or a folder path, as an existing folder."""
    key = str(name_or_path)
    path = BUNDLED_DECODERS.get(key, Path(key).expanduser())
    if not path.is_dir():
        known = ", ".join(sorted(BUNDLED_DECODERS))
        raise FileNotFoundError(
            f"Decoder {key!r} is neither a folder nor a bundled decoder name ({known}); pass the "
            "folder of a decoder trained with `rtdecode train-decoder`, or a local Stable "
            "unCLIP / Kandinsky 2.2 decoder folder."
        )
    return path


def decoder_kind(folder: str | Path) -> str:
    """The registry name of a decoder folder (a key of :data:`DECODERS`), from its configs."""
    folder = Path(folder)
    index = folder / "model_index.json"
    if index.is_file():
        cls = json.loads(index.read_text()).get("_class_name")
        if cls in UNCLIP_CLASS_NAMES:
            return "unclip"
        if cls in KANDINSKY22_CLASS_NAMES:
            return "kandinsky22"
        if cls in TURBO_CLASS_NAMES:
            return "sdxl-turbo"
        supported = UNCLIP_CLASS_NAMES + KANDINSKY22_CLASS_NAMES + TURBO_CLASS_NAMES
        raise ValueError(
            f"{index} describes a {cls!r} pipeline, which does not take image embeddings; "
            f"supported: {', '.join(supported)}."
        )
    config = folder / "config.json"
    if config.is_file() and json.loads(config.read_text()).get("_class_name") == TINY_CLASS_NAME:
        return "tiny"
    raise ValueError(
        f"{folder} is not a decoder folder: it has neither a model_index.json (diffusers "
        f"pipeline) nor a config.json with _class_name {TINY_CLASS_NAME!r}."
    )


def load_decoder(
    name_or_path: str | Path,
    device: str | torch.device = "cpu",
    *,
    dtype: torch.dtype | None = None,
    compile: bool = False,
    **options: Any,
) -> ImageDecoder:
    """Load a decoder from a local folder (or a bundled name such as ``"demo"``).

    Parameters
    ----------
    name_or_path : str or Path
        A folder written by ``rtdecode train-decoder``, a Stable unCLIP img2img folder or a
        Kandinsky 2.2 decoder folder (diffusers layout), or a bundled name.
    device : str or torch.device
        ``"cpu"``, ``"cuda"``, ``"cuda:1"`` or ``"auto"``.
    dtype : torch.dtype, optional
        Defaults to float32 on CPU and bfloat16 (float16 on older GPUs) on CUDA.
    compile : bool
        ``torch.compile`` the denoiser (CUDA only; pays off after a warm-up call).
    **options
        Passed to the decoder class, e.g. ``guidance_scale`` or ``image_size``.

    Returns
    -------
    rtdecode.decoder.base.ImageDecoder
    """
    from rtdecode._utils.devices import resolve_device
    from rtdecode.decoder.base import default_dtype

    folder = resolve_decoder_path(name_or_path)
    cls = import_from_string(DECODERS[decoder_kind(folder)])
    dev = resolve_device(device)
    dtype = dtype or default_dtype(dev)
    return cls.from_folder(folder, device=dev, dtype=dtype, compile=compile, **options)
