"""Diffusion decoders: an image embedding in, a generated image out.

Three kinds of decoder sit behind one :class:`ImageDecoder` protocol, each loaded from a
local folder by :func:`load_decoder` (``local_files_only=True``, nothing is downloaded):

- ``tiny``: the project's own small pixel-space decoder (:mod:`rtdecode.decoder.tiny`),
  trained by :func:`train_decoder` on a gallery; a folder with ``config.json`` whose
  ``_class_name`` is ``RtdecodeTinyDecoder``.
- ``unclip``: a Stable unCLIP image-variation pipeline (``StableUnCLIPImg2ImgPipeline``,
  e.g. stable-diffusion-2-1-unclip, CLIP ViT-H image embeddings), see
  :mod:`rtdecode.decoder.pipelines`.
- ``kandinsky22``: the Kandinsky 2.2 decoder (``KandinskyV22Pipeline``, CLIP ViT-bigG image
  embeddings).

The embeddings a decoder takes are in the space of the image encoder it was trained with
(``decoder.image_encoder``). Predicted embeddings should first be rescaled onto that
space's training distribution with ``decoder.normalizer`` (an
:class:`~rtdecode.decoder.normalize.EmbeddingNormalizer`, or None when the folder carries
no statistics); ``generate`` itself never rescales.

Threads: a decoder is not thread-safe (its scheduler keeps per-call state). It is loaded
once and then used only by the thread that owns the models (the DecodeWorker).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image, ImageOps

from rtdecode._utils.devices import resolve_device
from rtdecode.decoder.normalize import EmbeddingNormalizer

TINY_CLASS_NAME = "RtdecodeTinyDecoder"
UNCLIP_CLASS_NAMES = ("StableUnCLIPImg2ImgPipeline",)
KANDINSKY22_CLASS_NAMES = ("KandinskyV22Pipeline", "KandinskyV22Img2ImgPipeline")
NORMALIZER_FILE = "embedding_normalizer.json"

#: Names that ``load_decoder`` resolves to folders shipped with the project.
BUNDLED_DECODERS = {
    "demo": Path(__file__).resolve().parents[2] / "models" / "demo" / "decoder",
}


@runtime_checkable
class ImageDecoder(Protocol):
    """What every decoder offers.

    Attributes
    ----------
    name : str
        Short identifier, shown in the viewer and in benchmark results.
    embed_dim : int
        Dimension D of the embeddings ``generate`` takes.
    image_size : int
        Side in pixels of the (square) images it returns.
    image_encoder : str | None
        Name of the image encoder whose embedding space the decoder expects, when known.
    normalizer : EmbeddingNormalizer | None
        Statistics of the decoder's training embeddings, to rescale predictions with.
    """

    name: str
    embed_dim: int
    image_size: int
    image_encoder: str | None
    normalizer: EmbeddingNormalizer | None

    def generate(
        self,
        embedding: np.ndarray,
        *,
        seed: int = 0,
        steps: int = 4,
        init_image: Image.Image | None = None,
        strength: float = 0.6,
    ) -> Image.Image:
        """Generate one image.

        Parameters
        ----------
        embedding : ndarray, float32, shape (D,)
            An embedding in the decoder's space (already rescaled, see module docs).
        seed : int
            Seed of the starting noise; the same inputs and seed give the same image.
        steps : int
            Denoising steps of a full generation (an img2img start runs fewer).
        init_image : PIL.Image, optional
            Start from this image (e.g. the top retrieved one) instead of pure noise.
        strength : float in (0, 1]
            How much of the schedule an ``init_image`` is noised to: 1 ignores the image,
            small values keep it almost unchanged.

        Returns
        -------
        PIL.Image, RGB, ``image_size`` x ``image_size``
        """
        ...


# --------------------------------------------------------------------- helpers
def default_dtype(device: torch.device) -> torch.dtype:
    """float32 on CPU; bfloat16 on GPUs that support it, float16 on older ones."""
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def make_generator(seed: int) -> torch.Generator:
    """A CPU generator: noise drawn on the CPU, then moved, is the same on every device."""
    return torch.Generator(device="cpu").manual_seed(int(seed))


def check_embedding(
    embedding: np.ndarray | Sequence[float] | torch.Tensor,
    expected_dim: int,
    decoder_name: str,
    image_encoder: str | None = None,
) -> np.ndarray:
    """Validate one embedding and return it as float32 of shape (D,).

    Accepts shape (D,) or (1, D). Raises ValueError naming both dimensions when D differs
    from ``expected_dim``, and when values are not finite.
    """
    if isinstance(embedding, torch.Tensor):
        embedding = embedding.detach().float().cpu().numpy()
    vec = np.array(embedding, dtype=np.float32)  # a private copy: torch may alias it
    if vec.ndim == 2 and vec.shape[0] == 1:
        vec = vec[0]
    space = f" (embeddings of image encoder {image_encoder!r})" if image_encoder else ""
    if vec.ndim != 1:
        raise ValueError(
            f"Decoder {decoder_name!r} takes one embedding of shape ({expected_dim},){space}, "
            f"got an array of shape {vec.shape}; pass a single flat vector."
        )
    if vec.shape[0] != expected_dim:
        raise ValueError(
            f"The embedding has dimension {vec.shape[0]} but decoder {decoder_name!r} expects "
            f"dimension {expected_dim}{space}; use a brain model trained on the same image "
            "encoder as the decoder, or a decoder trained on the brain model's target."
        )
    if not np.all(np.isfinite(vec)):
        raise ValueError(
            f"The embedding given to decoder {decoder_name!r} has {int((~np.isfinite(vec)).sum())} "
            "non-finite values; check the encoder's input window."
        )
    return vec


def img2img_timesteps(timesteps: torch.Tensor, strength: float) -> torch.Tensor:
    """The tail of a schedule that an init image noised to ``strength`` starts from.

    Same convention as diffusers' img2img pipelines, except that at least one step is run:
    with ``n`` steps, ``max(1, int(n * strength))`` of them are kept.
    """
    n = len(timesteps)
    n_keep = min(n, max(1, int(n * strength)))
    return timesteps[n - n_keep :]


def fit_image(img: Image.Image, size: int) -> Image.Image:
    """Centre-crop to a square and resize to ``size`` x ``size`` (RGB)."""
    img = img.convert("RGB")
    if img.size == (size, size):
        return img
    return ImageOps.fit(img, (size, size), method=Image.Resampling.BICUBIC)


def pil_to_tensor(images: Sequence[Image.Image], size: int) -> torch.Tensor:
    """Images to a float32 tensor of shape (N, 3, size, size) in [-1, 1]."""
    arr = np.stack([np.asarray(fit_image(im, size), dtype=np.float32) for im in images])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous() / 127.5 - 1.0


def tensor_to_pil(x: torch.Tensor) -> list[Image.Image]:
    """A tensor of shape (N, 3, H, W) in [-1, 1] to RGB images."""
    arr = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    arr = arr.permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(a, mode="RGB") for a in arr]


class BaseDecoder:
    """Shared front of the decoders: validation, seeding and guidance defaults.

    Subclasses set the :class:`ImageDecoder` attributes plus ``guidance_scale`` and
    implement :meth:`_sample`; :meth:`generate` is the same for all of them.
    """

    name: str
    embed_dim: int
    image_size: int
    image_encoder: str | None = None
    normalizer: EmbeddingNormalizer | None = None
    guidance_scale: float = 1.0
    device: torch.device
    dtype: torch.dtype

    def generate(
        self,
        embedding: np.ndarray,
        *,
        seed: int = 0,
        steps: int = 4,
        init_image: Image.Image | None = None,
        strength: float = 0.6,
        guidance_scale: float | None = None,
    ) -> Image.Image:
        """See :meth:`ImageDecoder.generate`; ``guidance_scale`` overrides the default
        classifier-free guidance (1 = off, one denoiser pass per step)."""
        vec = check_embedding(embedding, self.embed_dim, self.name, self.image_encoder)
        if int(steps) < 1:
            raise ValueError(f"steps={steps} must be at least 1.")
        strength = float(strength)
        if init_image is not None and not 0.0 < strength <= 1.0:
            raise ValueError(
                f"strength={strength} is outside (0, 1]; use e.g. 0.6 (1 ignores the init image)."
            )
        scale = self.guidance_scale if guidance_scale is None else float(guidance_scale)
        with torch.inference_mode():
            return self._sample(
                vec,
                make_generator(seed),
                steps=int(steps),
                init_image=init_image,
                strength=strength,
                scale=scale,
            )

    def _sample(
        self,
        vec: np.ndarray,
        gen: torch.Generator,
        *,
        steps: int,
        init_image: Image.Image | None,
        strength: float,
        scale: float,
    ) -> Image.Image:
        raise NotImplementedError

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, embed_dim={self.embed_dim}, "
            f"image_size={self.image_size}, device={self.device}, dtype={self.dtype})"
        )


def load_normalizer(folder: Path) -> EmbeddingNormalizer | None:
    """The folder's ``embedding_normalizer.json``, or None."""
    path = Path(folder) / NORMALIZER_FILE
    if not path.is_file():
        return None
    return EmbeddingNormalizer.from_dict(json.loads(path.read_text()))


# ------------------------------------------------------------------ detection
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
    """``"tiny"``, ``"unclip"`` or ``"kandinsky22"``, from the folder's config files."""
    folder = Path(folder)
    index = folder / "model_index.json"
    if index.is_file():
        cls = json.loads(index.read_text()).get("_class_name")
        if cls in UNCLIP_CLASS_NAMES:
            return "unclip"
        if cls in KANDINSKY22_CLASS_NAMES:
            return "kandinsky22"
        raise ValueError(
            f"{index} describes a {cls!r} pipeline, which does not take image embeddings; "
            f"supported: {', '.join(UNCLIP_CLASS_NAMES + KANDINSKY22_CLASS_NAMES)}."
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
        A folder written by :func:`train_decoder`, a Stable unCLIP img2img folder or a
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
    ImageDecoder
    """
    folder = resolve_decoder_path(name_or_path)
    kind = decoder_kind(folder)
    dev = resolve_device(device)
    dtype = dtype or default_dtype(dev)
    if kind == "tiny":
        from rtdecode.decoder.tiny import TinyDecoder

        return TinyDecoder.from_folder(folder, device=dev, dtype=dtype, compile=compile, **options)
    from rtdecode.decoder.pipelines import Kandinsky22Decoder, UnCLIPDecoder

    cls = UnCLIPDecoder if kind == "unclip" else Kandinsky22Decoder
    return cls.from_folder(folder, device=dev, dtype=dtype, compile=compile, **options)


def embedding_fidelity(
    decoder: ImageDecoder,
    gallery: Any,
    encoder: Any,
    *,
    ids: Sequence[str] | None = None,
    seed: int = 0,
    steps: int = 4,
    progress: bool = True,
) -> dict[str, Any]:
    """How well generated images keep the embedding they were generated from.

    For each gallery image: generate from its true embedding, embed the generated image
    with the same encoder, and rank the true image among the whole gallery by cosine
    similarity (:class:`rtdecode.decoder.retrieval.Retrieval`). The percentile is the share
    of the other gallery images that the true one beats: 1.0 = ranked first.

    Parameters
    ----------
    decoder : ImageDecoder
    gallery : rtdecode.images.Gallery
    encoder : rtdecode.images.ImageEncoder
        The encoder the decoder was trained with.
    ids : sequence of str, optional
        Images to generate from (default: all); ranks are always over the whole gallery.

    Returns
    -------
    dict
        ``n_images``, ``n_gallery``, ``mean_percentile``, ``median_percentile``,
        ``share_at_least_90`` (share of images whose percentile is >= 0.9), ``top1``,
        ``top5``, ``ranks`` {id: rank}, ``images`` {id: generated PIL image}.
    """
    from tqdm.auto import tqdm

    from rtdecode.decoder.retrieval import Retrieval

    emb = np.asarray(gallery.embeddings(encoder, progress=progress), dtype=np.float32)
    retrieval = Retrieval(emb, gallery.ids)
    ids = list(gallery.ids if ids is None else ids)
    n = len(gallery.ids)
    ranks: dict[str, int] = {}
    images: dict[str, Image.Image] = {}
    for image_id in tqdm(ids, desc="fidelity", unit="img", disable=not progress):
        img = decoder.generate(emb[gallery.ids.index(image_id)], seed=seed, steps=steps)
        vec = np.asarray(encoder.encode([img]), dtype=np.float32)[0]
        ranks[image_id] = int(retrieval.rank_of(vec, image_id))
        images[image_id] = img
    r = np.array(list(ranks.values()), dtype=np.float64)
    pct = (n - r) / max(1, n - 1)
    return {
        "n_images": len(ids),
        "n_gallery": n,
        "steps": steps,
        "seed": seed,
        "mean_percentile": float(pct.mean()),
        "median_percentile": float(np.median(pct)),
        "share_at_least_90": float((pct >= 0.9).mean()),
        "top1": float((r == 1).mean()),
        "top5": float((r <= 5).mean()),
        "ranks": ranks,
        "images": images,
    }


def save_comparison_grid(
    pairs: Sequence[tuple[Image.Image, Image.Image]],
    path: str | Path,
    *,
    columns: int = 4,
    tile_px: int = 96,
    labels: Sequence[str] | None = None,
) -> Path:
    """Save a PNG grid of (true | generated) pairs, ``columns`` pairs per row."""
    from PIL import ImageDraw

    rows = math.ceil(len(pairs) / columns)
    label_px = 14 if labels else 0
    gap = 6
    cell_w = 2 * tile_px + gap
    grid = Image.new(
        "RGB", (columns * cell_w + gap, rows * (tile_px + label_px + gap) + gap), "white"
    )
    draw = ImageDraw.Draw(grid)
    for k, (true_img, gen_img) in enumerate(pairs):
        r, c = divmod(k, columns)
        x, y = gap + c * cell_w, gap + r * (tile_px + label_px + gap)
        grid.paste(fit_image(true_img, tile_px), (x, y))
        grid.paste(
            gen_img.convert("RGB").resize((tile_px, tile_px), Image.Resampling.NEAREST),
            (x + tile_px, y),
        )
        if labels:
            draw.text((x + 2, y + tile_px + 1), str(labels[k])[:30], fill="black")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    grid.save(path)
    return path


def __getattr__(name: str) -> Any:
    # train_decoder lives with the network it trains; it loads (with diffusers) on first use.
    if name == "train_decoder":
        from rtdecode.decoder.tiny import train_decoder

        return train_decoder
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ImageDecoder",
    "BaseDecoder",
    "EmbeddingNormalizer",
    "embedding_fidelity",
    "save_comparison_grid",
    "load_decoder",
    "train_decoder",  # noqa: F822 (resolved lazily by __getattr__)
    "decoder_kind",
    "check_embedding",
    "BUNDLED_DECODERS",
]
