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
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

import numpy as np
import torch
from PIL import Image

from rtdecode.decoder.normalize import EmbeddingNormalizer
from rtdecode.images.encoders import fit_image

NORMALIZER_FILE = "embedding_normalizer.json"



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
        """See :meth:`ImageDecoder.generate`, with a guidance scale.

        ``guidance_scale`` overrides the default classifier-free guidance (1 = off, one
        denoiser pass per step).
        """
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


__all__ = [
    "ImageDecoder",
    "BaseDecoder",
    "EmbeddingNormalizer",
    "NORMALIZER_FILE",
    "check_embedding",
    "default_dtype",
    "load_normalizer",
]
