"""Pretrained diffusion pipelines that take image embeddings, behind the ImageDecoder protocol.

- :class:`UnCLIPDecoder`: ``StableUnCLIPImg2ImgPipeline`` (e.g. stable-diffusion-2-1-unclip,
  conditioned on CLIP ViT-H/14 image embeddings, D = 1024). The embedding goes in as
  ``image_embeds``; the empty prompt is encoded once at load time.
- :class:`Kandinsky22Decoder`: ``KandinskyV22Pipeline`` (the Kandinsky 2.2 decoder,
  CLIP ViT-bigG/14 image embeddings, D = 1280), with ``image_embeds`` and
  ``negative_image_embeds``.

Both load with ``local_files_only=True``. For few-step sampling the folder's scheduler is
replaced by a DDIMScheduler built from its config with "trailing" timesteps (so that 4 steps
start from pure noise); pass ``few_step_scheduler=False`` to keep the folder's own.

An ``init_image`` start (img2img) noises the image's latents to the timestep that
``strength`` selects and denoises from there: Kandinsky through diffusers'
``KandinskyV22Img2ImgPipeline`` (same components), unCLIP through :func:`_unclip_img2img`,
a short loop over the same components (diffusers' unCLIP img2img pipeline encodes its
``image`` argument into the embedding instead).

Full-size pipelines with random weights (for benchmarks and tests, no download) are
built by :mod:`rtdecode.decoder.testing`.

Threads: a decoder belongs to the thread that owns the models (the DecodeWorker).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from PIL import Image

from rtdecode.decoder.base import (
    BaseDecoder,
    check_embedding,
    fit_image,
    img2img_timesteps,
    load_normalizer,
    tensor_to_pil,
)
from rtdecode.decoder.normalize import EmbeddingNormalizer

if TYPE_CHECKING:  # pragma: no cover - typing only
    from diffusers import (
        DDIMScheduler,
        DiffusionPipeline,
        KandinskyV22Pipeline,
        SchedulerMixin,
        StableUnCLIPImg2ImgPipeline,
    )


def _few_step(scheduler: SchedulerMixin) -> DDIMScheduler:
    """A DDIMScheduler with trailing timesteps built from ``scheduler``'s config."""
    from diffusers import DDIMScheduler

    cfg = {k: v for k, v in dict(scheduler.config).items() if k != "variance_type"}
    cfg.update(timestep_spacing="trailing")
    return DDIMScheduler.from_config(cfg)


def _dtype_kwargs(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """``from_pretrained`` takes ``dtype`` in recent diffusers, ``torch_dtype`` before."""
    from diffusers.utils import deprecation_utils

    return {"dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype": dtype}


def _prepare(
    pipe: DiffusionPipeline, device: torch.device, denoiser: str, compile: bool
) -> DiffusionPipeline:
    """Move a pipeline, silence its progress bar, and tune its denoiser for CUDA."""
    pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    if device.type == "cuda":
        net = getattr(pipe, denoiser)
        net.to(memory_format=torch.channels_last)
        if compile:
            setattr(pipe, denoiser, torch.compile(net, fullgraph=False))
    return pipe


class _PipelineDecoder(BaseDecoder):
    """Shared parts of the pipeline decoders: attributes and loading from a folder."""

    kind = "pipeline"
    pipeline_class = ""
    image_encoder: str | None = "clip-vision"

    def __init__(
        self,
        pipe: DiffusionPipeline,
        *,
        name: str,
        embed_dim: int,
        image_size: int,
        device: torch.device | str,
        guidance_scale: float,
        normalizer: EmbeddingNormalizer | None,
        few_step_scheduler: bool,
        compile: bool,
    ) -> None:
        if few_step_scheduler:
            pipe.scheduler = _few_step(pipe.scheduler)
        _prepare(pipe, torch.device(device), "unet", compile)
        self.pipe = pipe
        self.name = name
        self.embed_dim = int(embed_dim)
        self.image_size = int(image_size)
        self.device = torch.device(device)
        self.dtype = pipe.unet.dtype
        self.guidance_scale = float(guidance_scale)
        self.normalizer = normalizer

    def _embedding(self, vec: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(vec)[None].to(self.device, self.dtype)

    @classmethod
    def from_folder(
        cls,
        folder: str | Path,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        compile: bool = False,
        **options: Any,
    ) -> _PipelineDecoder:
        """Load the folder's pipeline (``local_files_only=True``) and wrap it.

        ``options`` go to the class (e.g. ``guidance_scale``, ``image_size``). An
        ``embedding_normalizer.json`` in the folder, when present, is the normaliser.
        """
        import diffusers

        folder = Path(folder)
        # use_safetensors: a folder with pickle-based .bin weights only is refused, never
        # unpickled (DESIGN: "never pickle").
        pipe = getattr(diffusers, cls.pipeline_class).from_pretrained(
            folder, local_files_only=True, use_safetensors=True, **_dtype_kwargs(dtype)
        )
        options.setdefault("name", f"{cls.kind}:{folder.name}")
        options.setdefault("normalizer", load_normalizer(folder))
        return cls(pipe, device=device, compile=compile, **options)


# ------------------------------------------------------------------ unCLIP
class UnCLIPDecoder(_PipelineDecoder):
    """Stable unCLIP (``StableUnCLIPImg2ImgPipeline``) conditioned on ``image_embeds``.

    Parameters
    ----------
    pipe : StableUnCLIPImg2ImgPipeline
    guidance_scale : float
        Classifier-free guidance over the (empty) prompt; 1 turns it off and halves the
        cost of a step.
    noise_level : int
        unCLIP's noise augmentation of the image embedding (0 = use it as is).
    image_size : int, optional
        Output side in pixels; default ``unet.sample_size * vae_scale_factor``.
    """

    kind = "unclip"
    pipeline_class = "StableUnCLIPImg2ImgPipeline"

    def __init__(
        self,
        pipe: StableUnCLIPImg2ImgPipeline,
        *,
        name: str = "unclip",
        device: torch.device | str = "cpu",
        guidance_scale: float = 3.0,
        noise_level: int = 0,
        image_size: int | None = None,
        normalizer: EmbeddingNormalizer | None = None,
        few_step_scheduler: bool = True,
        compile: bool = False,
    ) -> None:
        if normalizer is None:
            # unCLIP ships the statistics of its CLIP image embeddings: the training
            # distribution predictions should be rescaled onto.
            norm = pipe.image_normalizer
            normalizer = EmbeddingNormalizer(
                norm.mean.detach().float().cpu().numpy().reshape(-1),
                norm.std.detach().float().cpu().numpy().reshape(-1),
            )
        super().__init__(
            pipe,
            name=name,
            embed_dim=pipe.image_normalizer.config.embedding_dim,
            image_size=image_size or pipe.unet.config.sample_size * pipe.vae_scale_factor,
            device=device,
            guidance_scale=guidance_scale,
            normalizer=normalizer,
            few_step_scheduler=few_step_scheduler,
            compile=compile,
        )
        self.noise_level = int(noise_level)
        with torch.inference_mode():
            self._prompt_embeds, self._negative_prompt_embeds = pipe.encode_prompt(
                prompt="",
                device=self.device,
                num_images_per_prompt=1,
                do_classifier_free_guidance=True,
                negative_prompt="",
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
        emb = self._embedding(vec)
        if init_image is not None:
            return _unclip_img2img(
                self, emb, init_image, strength, steps=steps, scale=scale, gen=gen
            )
        out = self.pipe(
            image_embeds=emb,
            prompt_embeds=self._prompt_embeds,
            negative_prompt_embeds=self._negative_prompt_embeds,
            num_inference_steps=steps,
            guidance_scale=scale,
            noise_level=self.noise_level,
            generator=gen,
            height=self.image_size,
            width=self.image_size,
            output_type="pil",
        )
        return out.images[0]


def _unclip_img2img(
    dec: UnCLIPDecoder,
    emb: torch.Tensor,
    init_image: Image.Image,
    strength: float,
    *,
    steps: int,
    scale: float,
    gen: torch.Generator,
) -> Image.Image:
    """Denoise with unCLIP, starting from ``init_image``'s latents noised to ``strength``.

    Mirrors the pipeline's own loop (same prompt embeddings, embedding noise augmentation,
    guidance and scheduler); only the start differs.
    """
    pipe, device = dec.pipe, dec.device
    cfg = scale > 1.0
    prompt = dec._prompt_embeds
    class_labels = pipe.noise_image_embeddings(emb, dec.noise_level, generator=gen)
    if cfg:
        prompt = torch.cat([dec._negative_prompt_embeds, prompt])
        class_labels = torch.cat([torch.zeros_like(class_labels), class_labels])

    pipe.scheduler.set_timesteps(steps, device=device)
    timesteps = img2img_timesteps(pipe.scheduler.timesteps, strength)
    pixels = pipe.image_processor.preprocess(fit_image(init_image, dec.image_size))
    pixels = pixels.to(device, pipe.vae.dtype)
    latents = pipe.vae.encode(pixels).latent_dist.mode() * pipe.vae.config.scaling_factor
    noise = torch.randn(latents.shape, generator=gen, dtype=torch.float32)
    latents = pipe.scheduler.add_noise(latents, noise.to(device, latents.dtype), timesteps[:1])
    for t in timesteps:
        model_in = torch.cat([latents] * 2) if cfg else latents
        model_in = pipe.scheduler.scale_model_input(model_in, t)
        pred = pipe.unet(
            model_in, t, encoder_hidden_states=prompt, class_labels=class_labels, return_dict=False
        )[0]
        if cfg:
            uncond, cond = pred.chunk(2)
            pred = uncond + scale * (cond - uncond)
        latents = pipe.scheduler.step(pred, t, latents, return_dict=False)[0]
    image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor, return_dict=False)[0]
    return tensor_to_pil(image)[0]


# --------------------------------------------------------------- Kandinsky
class Kandinsky22Decoder(_PipelineDecoder):
    """Kandinsky 2.2 decoder (``KandinskyV22Pipeline``) conditioned on ``image_embeds``.

    Parameters
    ----------
    pipe : KandinskyV22Pipeline
    guidance_scale : float
        Guidance between ``image_embeds`` and ``negative_embedding``; 1 turns it off.
    negative_embedding : ndarray, shape (D,), optional
        The unconditional image embedding (Kandinsky's prior gives the embedding of an
        empty image); default zeros.
    image_size : int, optional
        Output side in pixels; default ``unet.sample_size * movq_scale_factor``.
    """

    kind = "kandinsky22"
    pipeline_class = "KandinskyV22Pipeline"

    def __init__(
        self,
        pipe: KandinskyV22Pipeline,
        *,
        name: str = "kandinsky22",
        device: torch.device | str = "cpu",
        guidance_scale: float = 4.0,
        negative_embedding: np.ndarray | None = None,
        image_size: int | None = None,
        normalizer: EmbeddingNormalizer | None = None,
        few_step_scheduler: bool = True,
        compile: bool = False,
    ) -> None:
        from diffusers import KandinskyV22Img2ImgPipeline

        embed_dim = pipe.unet.config.encoder_hid_dim
        size = image_size or pipe.unet.config.sample_size * pipe.movq_scale_factor
        if size % pipe.movq_scale_factor**2:
            raise ValueError(
                f"Kandinsky image_size={size} must be a multiple of {pipe.movq_scale_factor**2} "
                "(the MoVQ scale factor squared)."
            )
        super().__init__(
            pipe,
            name=name,
            embed_dim=embed_dim,
            image_size=size,
            device=device,
            guidance_scale=guidance_scale,
            normalizer=normalizer,
            few_step_scheduler=few_step_scheduler,
            compile=compile,
        )
        neg = np.zeros(embed_dim, np.float32) if negative_embedding is None else negative_embedding
        self.negative_embedding = self._embedding(
            check_embedding(neg, embed_dim, name, self.image_encoder)
        )
        # Same module objects: no second copy of the weights.
        self.img2img = KandinskyV22Img2ImgPipeline(**pipe.components)
        self.img2img.set_progress_bar_config(disable=True)

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
        common = dict(
            image_embeds=self._embedding(vec),
            negative_image_embeds=self.negative_embedding,
            height=self.image_size,
            width=self.image_size,
            num_inference_steps=steps,
            guidance_scale=scale,
            generator=gen,
            output_type="pil",
        )
        if init_image is None:
            return self.pipe(**common).images[0]
        # At least one denoising step, as for the other decoders (diffusers would run none).
        image = fit_image(init_image, self.image_size)
        return self.img2img(image=image, strength=max(strength, 1.0 / steps), **common).images[0]


__all__ = [
    "UnCLIPDecoder",
    "Kandinsky22Decoder",
]
