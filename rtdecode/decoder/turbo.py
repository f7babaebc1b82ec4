"""SDXL-Turbo / SD-Turbo with an IP-Adapter: one-step images from CLIP ViT-H image embeddings.

:class:`TurboDecoder` wraps a distilled few-step text-to-image pipeline
(``StableDiffusionXLPipeline``, e.g. stabilityai/sdxl-turbo; or ``StableDiffusionPipeline``,
e.g. stabilityai/sd-turbo) whose UNet carries an IP-Adapter. The predicted embedding goes
in through diffusers' ``ip_adapter_image_embeds`` (the IP-Adapter's image projection turns it
into 4 extra cross-attention tokens); the text side is the empty prompt, encoded once at
load time and cached. Turbo models run 1-4 steps without classifier-free guidance
(``guidance_scale=0``), with the folder's own scheduler (Euler ancestral, trailing
timesteps). An optional tiny VAE (``AutoencoderTiny``, e.g. madebyollin/taesdxl) replaces
the full VAE decoder, which otherwise costs about as much as the one UNet step.

Local folders only (``local_files_only=True``, safetensors only)::

    DECODER_DIR/                       the pipeline, diffusers layout (model_index.json, unet/, vae/, ...)
      ip_adapter/                      IP-Adapter weights: one *.safetensors with image_proj.* and
        ip-adapter_sdxl_vit-h.safetensors   ip_adapter.* keys (h94/IP-Adapter's sdxl_models layout)
      tiny_vae/                        optional AutoencoderTiny folder (config.json + weights)
      embedding_normalizer.json        optional statistics of the embeddings (see normalize.py)

``ip_adapter=`` and ``tiny_vae=`` override the two sub-folders with any other local path.

:func:`build_turbo_from_config` builds a full-size pipeline with random weights (shapes of
sdxl-turbo, :data:`SDXL_TURBO_CONFIGS`) directly on a device, with a random IP-Adapter,
for GPU benchmarks without downloads; :func:`tiny_turbo_configs` gives toy shapes for CPU
tests.

Threads: a decoder belongs to the thread that owns the models (the DecodeWorker).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from rtdecode.decoder.base import BaseDecoder, fit_image, load_normalizer
from rtdecode.decoder.kinds import TURBO_CLASS_NAMES
from rtdecode.decoder.normalize import EmbeddingNormalizer
from rtdecode.decoder.pipelines import _dtype_kwargs, _prepare

if TYPE_CHECKING:  # pragma: no cover - typing only
    from diffusers import AutoencoderTiny, StableDiffusionPipeline, StableDiffusionXLPipeline

#: Pipeline classes (``model_index.json``'s ``_class_name``) this decoder wraps.
SDXL_CLASS_NAMES = TURBO_CLASS_NAMES[:1]
SD_CLASS_NAMES = TURBO_CLASS_NAMES[1:]
IP_ADAPTER_DIR = "ip_adapter"
TINY_VAE_DIR = "tiny_vae"
#: The IP-Adapter's image tokens (ImageProjection of the plain IP-Adapter).
IP_ADAPTER_TOKENS = 4


def is_turbo_folder(folder: str | Path) -> bool:
    """True when ``folder`` holds a pipeline this decoder loads.

    That is an SD/SDXL text-to-image pipeline in diffusers layout.
    """
    index = Path(folder) / "model_index.json"
    if not index.is_file():
        return False
    return json.loads(index.read_text()).get("_class_name") in TURBO_CLASS_NAMES


def _ip_adapter_file(path: Path) -> Path:
    """The IP-Adapter weight file at ``path`` (a file, or a folder with exactly one)."""
    if path.is_file():
        candidates = [path]
    elif path.is_dir():
        candidates = sorted(path.glob("*.safetensors"))
        if not candidates and any(path.glob("*.bin")):
            raise ValueError(
                f"The IP-Adapter folder {path} holds only pickled .bin weights, which are never "
                "loaded; convert them to .safetensors (image_proj.* and ip_adapter.* keys)."
            )
        if len(candidates) != 1:
            raise FileNotFoundError(
                f"The IP-Adapter folder {path} must hold exactly one .safetensors file, found "
                f"{len(candidates)} ({', '.join(p.name for p in candidates) or 'none'}); pass the "
                "file itself as ip_adapter=..."
            )
    else:
        raise FileNotFoundError(
            f"No IP-Adapter weights at {path}; put the IP-Adapter's .safetensors (e.g. "
            f"ip-adapter_sdxl_vit-h.safetensors) in DECODER_DIR/{IP_ADAPTER_DIR}/, or pass "
            "ip_adapter=FILE_OR_FOLDER."
        )
    weights = candidates[0]
    if weights.suffix != ".safetensors":
        raise ValueError(
            f"IP-Adapter weights {weights} are not .safetensors; pickled weights are never "
            "loaded. Convert them to safetensors."
        )
    return weights


def _tiny_vae_scale(vae: AutoencoderTiny) -> int:
    return 2 ** (len(vae.config.block_out_channels) - 1)


class TurboDecoder(BaseDecoder):
    """A Turbo pipeline with an IP-Adapter, conditioned on ``ip_adapter_image_embeds``.

    Parameters
    ----------
    pipe : StableDiffusionXLPipeline or StableDiffusionPipeline
        With an IP-Adapter already loaded into its UNet (``pipe.load_ip_adapter``).
    name : str
    device : torch.device or str
    guidance_scale : float
        Default 0: Turbo models are distilled to run without classifier-free guidance
        (one UNet pass per step). Values > 1 guide between the embedding and a zero
        embedding with the empty prompt on both sides.
    ip_adapter_scale : float
        Weight of the image tokens in every cross-attention (0 ignores the embedding).
    image_size : int, optional
        Output side in pixels; default ``unet.sample_size * vae_scale_factor`` (512 for
        sdxl-turbo).
    normalizer : EmbeddingNormalizer, optional
    tiny_vae : AutoencoderTiny, optional
        Replaces the pipeline's VAE (decode and img2img encode).
    compile : bool
        ``torch.compile`` the UNet (CUDA only).
    """

    kind = "sdxl-turbo"
    image_encoder: str | None = "clip-vision"
    #: Steps Turbo is distilled for; callers that pick steps per decoder should use it.
    default_steps = 1

    def __init__(
        self,
        pipe: StableDiffusionXLPipeline | StableDiffusionPipeline,
        *,
        name: str = "sdxl-turbo",
        device: torch.device | str = "cpu",
        guidance_scale: float = 0.0,
        ip_adapter_scale: float = 1.0,
        image_size: int | None = None,
        normalizer: EmbeddingNormalizer | None = None,
        tiny_vae: AutoencoderTiny | None = None,
        compile: bool = False,
    ) -> None:
        from diffusers import (
            StableDiffusionImg2ImgPipeline,
            StableDiffusionXLImg2ImgPipeline,
            StableDiffusionXLPipeline,
        )

        proj = getattr(pipe.unet, "encoder_hid_proj", None)
        layers = getattr(proj, "image_projection_layers", None)
        if not layers:
            raise ValueError(
                f"The {type(pipe).__name__}'s UNet has no IP-Adapter; load one first "
                "(pipe.load_ip_adapter(...), or TurboDecoder.from_folder with ip_adapter=...)."
            )
        if tiny_vae is not None:
            if _tiny_vae_scale(tiny_vae) != pipe.vae_scale_factor:
                raise ValueError(
                    f"The tiny VAE downsamples by {_tiny_vae_scale(tiny_vae)} but the pipeline's "
                    f"VAE by {pipe.vae_scale_factor}; use the tiny VAE made for this model "
                    "(taesdxl for SDXL-Turbo, taesd for SD-Turbo)."
                )
            pipe.vae = tiny_vae.to(dtype=pipe.unet.dtype)
        self.sdxl = isinstance(pipe, StableDiffusionXLPipeline)
        dev = torch.device(device)
        _prepare(pipe, dev, "unet", compile)
        self.pipe = pipe
        self.name = name
        self.embed_dim = int(layers[0].image_embeds.in_features)
        self.image_size = int(image_size or pipe.unet.config.sample_size * pipe.vae_scale_factor)
        if self.image_size % pipe.vae_scale_factor:
            raise ValueError(
                f"image_size={self.image_size} must be a multiple of {pipe.vae_scale_factor} "
                "(the VAE's scale factor)."
            )
        self.device = dev
        self.dtype = pipe.unet.dtype
        self.guidance_scale = float(guidance_scale)
        self.normalizer = normalizer
        self.set_ip_adapter_scale(ip_adapter_scale)
        with torch.inference_mode():
            out = pipe.encode_prompt(
                prompt="",
                device=dev,
                num_images_per_prompt=1,
                do_classifier_free_guidance=True,
                **({} if self.sdxl else {"negative_prompt": ""}),
            )
        keys = ("prompt_embeds", "negative_prompt_embeds")
        if self.sdxl:
            keys += ("pooled_prompt_embeds", "negative_pooled_prompt_embeds")
        self._prompt = dict(zip(keys, out, strict=True))
        # Same modules, no second copy of the weights.
        img2img_cls = (
            StableDiffusionXLImg2ImgPipeline if self.sdxl else StableDiffusionImg2ImgPipeline
        )
        self.img2img = img2img_cls(**pipe.components)
        self.img2img.set_progress_bar_config(disable=True)

    def set_ip_adapter_scale(self, scale: float) -> None:
        """Weight of the embedding's tokens in the cross-attention (0 ignores it)."""
        self.ip_adapter_scale = float(scale)
        self.pipe.set_ip_adapter_scale(self.ip_adapter_scale)

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
        emb = torch.from_numpy(vec).to(self.device, self.dtype)[None, None]  # (1, 1, D)
        cfg = scale > 1.0
        prompt = {k: v for k, v in self._prompt.items() if cfg or not k.startswith("negative")}
        common = dict(
            **prompt,
            # With guidance diffusers expects [unconditional, conditional] along the batch;
            # the unconditional image embedding is zeros, as its own encode_image gives.
            ip_adapter_image_embeds=[torch.cat([torch.zeros_like(emb), emb]) if cfg else emb],
            num_inference_steps=steps,
            guidance_scale=scale,
            generator=gen,
            output_type="pil",
        )
        if init_image is None:
            return self.pipe(height=self.image_size, width=self.image_size, **common).images[0]
        # At least one denoising step (diffusers needs steps * strength >= 1).
        image = fit_image(init_image, self.image_size)
        return self.img2img(image=image, strength=max(strength, 1.0 / steps), **common).images[0]

    @classmethod
    def from_folder(
        cls,
        folder: str | Path,
        *,
        ip_adapter: str | Path | None = None,
        tiny_vae: str | Path | bool | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        compile: bool = False,
        **options: Any,
    ) -> TurboDecoder:
        """Load a Turbo pipeline, its IP-Adapter and optionally a tiny VAE from local folders.

        Parameters
        ----------
        folder : path
            The pipeline in diffusers layout (``model_index.json`` naming
            ``StableDiffusionXLPipeline`` or ``StableDiffusionPipeline``).
        ip_adapter : path, optional
            A ``.safetensors`` file, or a folder holding exactly one; default
            ``folder/ip_adapter``.
        tiny_vae : path or bool, optional
            An ``AutoencoderTiny`` folder. Default: ``folder/tiny_vae`` when it exists;
            False keeps the full VAE even then.
        device, dtype, compile
            As for :func:`rtdecode.decoder.base.load_decoder`.
        **options
            Passed to the class (``guidance_scale``, ``ip_adapter_scale``, ``image_size``,
            ``name``, ``normalizer``).
        """
        import diffusers

        folder = Path(folder).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(
                f"The Turbo pipeline folder {folder} does not exist; pass a local copy of "
                "stabilityai/sdxl-turbo (or sd-turbo) in diffusers layout."
            )
        index = folder / "model_index.json"
        if not index.is_file():
            raise FileNotFoundError(
                f"{folder} has no model_index.json: it is not a diffusers pipeline folder. "
                "Save the pipeline with save_pretrained (or copy the model repository as is)."
            )
        cls_name = json.loads(index.read_text()).get("_class_name")
        if cls_name not in TURBO_CLASS_NAMES:
            raise ValueError(
                f"{index} describes a {cls_name!r} pipeline; the Turbo decoder loads "
                f"{' or '.join(TURBO_CLASS_NAMES)} (sdxl-turbo, sd-turbo)."
            )
        weights = _ip_adapter_file(Path(ip_adapter or folder / IP_ADAPTER_DIR).expanduser())
        tiny_path: Path | None = None
        if tiny_vae is None or tiny_vae is True:
            tiny_path = folder / TINY_VAE_DIR
            if tiny_vae is None and not tiny_path.is_dir():
                tiny_path = None
        elif tiny_vae is not False:
            tiny_path = Path(tiny_vae).expanduser()
        if tiny_path is not None and not (tiny_path / "config.json").is_file():
            raise FileNotFoundError(
                f"No tiny VAE at {tiny_path} (expected an AutoencoderTiny folder with "
                "config.json and diffusion_pytorch_model.safetensors, e.g. madebyollin/taesdxl)."
            )

        # use_safetensors: pickled weights are refused, never unpickled.
        load = dict(local_files_only=True, **_dtype_kwargs(dtype))
        pipe = getattr(diffusers, cls_name).from_pretrained(folder, use_safetensors=True, **load)
        pipe.load_ip_adapter(
            str(weights.parent),
            subfolder="",
            weight_name=weights.name,
            image_encoder_folder=None,  # embeddings come precomputed
            local_files_only=True,
        )
        tiny = None
        if tiny_path is not None:
            tiny = diffusers.AutoencoderTiny.from_pretrained(tiny_path, use_safetensors=True, **load)
        options.setdefault("name", f"{cls.kind}:{folder.name}")
        if "normalizer" not in options:
            options["normalizer"] = load_normalizer(folder) or load_normalizer(weights.parent)
        return cls(pipe, device=device, compile=compile, tiny_vae=tiny, **options)


__all__ = ["IP_ADAPTER_TOKENS", "TURBO_CLASS_NAMES", "TurboDecoder", "is_turbo_folder"]
