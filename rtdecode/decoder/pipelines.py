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

:func:`build_unclip_from_config` / :func:`build_kandinsky22_from_config` build full-size
pipelines with random weights from config dicts (e.g. :data:`UNCLIP_H_CONFIGS`) directly
on a device, for GPU latency benchmarks without downloading weights.

Threads: a decoder belongs to the thread that owns the models (the DecodeWorker).
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

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


def _few_step(scheduler: Any) -> Any:
    """A DDIMScheduler with trailing timesteps built from ``scheduler``'s config."""
    from diffusers import DDIMScheduler

    cfg = {k: v for k, v in dict(scheduler.config).items() if k != "variance_type"}
    cfg.update(timestep_spacing="trailing")
    return DDIMScheduler.from_config(cfg)


def _dtype_kwargs(dtype: torch.dtype) -> dict[str, torch.dtype]:
    """``from_pretrained`` takes ``dtype`` in recent diffusers, ``torch_dtype`` before."""
    from diffusers.utils import deprecation_utils

    return {"dtype" if hasattr(deprecation_utils, "_resolve_dtype") else "torch_dtype": dtype}


def _prepare(pipe: Any, device: torch.device, denoiser: str, compile: bool) -> Any:
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
        pipe: Any,
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
        pipe: Any,
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
    """unCLIP denoising that starts from ``init_image``'s latents noised to ``strength``.

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
        pipe: Any,
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


# ------------------------------------------------------ full-size, random weights
#: Shapes of stabilityai/stable-diffusion-2-1-unclip (the "-h" variant, CLIP ViT-H/14
#: image embeddings), transcribed from its published diffusers config files; weights are
#: random when built with :func:`build_unclip_from_config`. Verify against a local copy's
#: config.json files before trusting parameter counts to the last digit.
UNCLIP_H_CONFIGS: dict[str, dict[str, Any]] = {
    "unet": {
        "sample_size": 96,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": [
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "CrossAttnDownBlock2D",
            "DownBlock2D",
        ],
        "up_block_types": [
            "UpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
            "CrossAttnUpBlock2D",
        ],
        "block_out_channels": [320, 640, 1280, 1280],
        "layers_per_block": 2,
        "attention_head_dim": [5, 10, 20, 20],
        "cross_attention_dim": 1024,
        "use_linear_projection": True,
        "class_embed_type": "projection",
        "projection_class_embeddings_input_dim": 2048,
    },
    "vae": {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": ["DownEncoderBlock2D"] * 4,
        "up_block_types": ["UpDecoderBlock2D"] * 4,
        "block_out_channels": [128, 256, 512, 512],
        "layers_per_block": 2,
        "latent_channels": 4,
        "sample_size": 768,
        "scaling_factor": 0.18215,
    },
    "text_encoder": {
        "vocab_size": 49408,
        "hidden_size": 1024,
        "intermediate_size": 4096,
        "num_hidden_layers": 23,
        "num_attention_heads": 16,
        "max_position_embeddings": 77,
        "hidden_act": "gelu",
        "projection_dim": 512,
    },
    "image_encoder": {
        "hidden_size": 1280,
        "intermediate_size": 5120,
        "num_hidden_layers": 32,
        "num_attention_heads": 16,
        "image_size": 224,
        "patch_size": 14,
        "hidden_act": "gelu",
        "projection_dim": 1024,
    },
    "scheduler": {
        "_class_name": "DDIMScheduler",
        "num_train_timesteps": 1000,
        "beta_schedule": "scaled_linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "prediction_type": "v_prediction",
        "set_alpha_to_one": False,
        "steps_offset": 1,
        "clip_sample": False,
    },
    "image_noising_scheduler": {
        "_class_name": "DDPMScheduler",
        "num_train_timesteps": 1000,
        "beta_schedule": "squaredcos_cap_v2",
    },
    "image_normalizer": {"embedding_dim": 1024},
}

#: Shapes of kandinsky-community/kandinsky-2-2-decoder (CLIP ViT-bigG/14 image embeddings),
#: transcribed from its published diffusers config files (same caveat as above).
KANDINSKY22_CONFIGS: dict[str, dict[str, Any]] = {
    "unet": {
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 8,
        "addition_embed_type": "image",
        "down_block_types": [
            "ResnetDownsampleBlock2D",
            "SimpleCrossAttnDownBlock2D",
            "SimpleCrossAttnDownBlock2D",
            "SimpleCrossAttnDownBlock2D",
        ],
        "up_block_types": [
            "SimpleCrossAttnUpBlock2D",
            "SimpleCrossAttnUpBlock2D",
            "SimpleCrossAttnUpBlock2D",
            "ResnetUpsampleBlock2D",
        ],
        "mid_block_type": "UNetMidBlock2DSimpleCrossAttn",
        "block_out_channels": [384, 768, 1152, 1536],
        "layers_per_block": 3,
        "encoder_hid_dim": 1280,
        "encoder_hid_dim_type": "image_proj",
        "cross_attention_dim": 768,
        "attention_head_dim": 64,
        "resnet_time_scale_shift": "scale_shift",
        "class_embed_type": None,
    },
    "movq": {
        "in_channels": 3,
        "out_channels": 3,
        "down_block_types": [
            "DownEncoderBlock2D",
            "DownEncoderBlock2D",
            "DownEncoderBlock2D",
            "AttnDownEncoderBlock2D",
        ],
        "up_block_types": [
            "AttnUpDecoderBlock2D",
            "UpDecoderBlock2D",
            "UpDecoderBlock2D",
            "UpDecoderBlock2D",
        ],
        "block_out_channels": [128, 256, 256, 512],
        "layers_per_block": 2,
        "latent_channels": 4,
        "norm_type": "spatial",
        "num_vq_embeddings": 16384,
        "vq_embed_dim": 4,
    },
    "scheduler": {
        "_class_name": "DDPMScheduler",
        "num_train_timesteps": 1000,
        "beta_schedule": "linear",
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "clip_sample": False,
        "prediction_type": "epsilon",
    },
}


def _scheduler_from_config(cfg: dict[str, Any]) -> Any:
    import diffusers

    cfg = dict(cfg)
    cls = getattr(diffusers, cfg.pop("_class_name", "DDIMScheduler"))
    return cls.from_config(cfg)


def tiny_clip_tokenizer(max_length: int = 77) -> Any:
    """A working CLIPTokenizer with a byte-level vocabulary and no merges.

    Enough to encode prompts (the decoders only ever encode the empty prompt), so that
    pipelines can be built without downloading a tokenizer. Vocabulary size: 514.
    """
    from transformers import CLIPTokenizer

    # The byte-level alphabet of GPT-2/CLIP BPE: printable bytes stand for themselves,
    # the others are shifted past 255 so that every byte has a visible character.
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    shifted = [b for b in range(256) if b not in printable]
    chars = [chr(b) for b in printable] + [chr(256 + i) for i in range(len(shifted))]
    vocab = {c: i for i, c in enumerate(chars)}
    vocab.update({c + "</w>": len(chars) + i for i, c in enumerate(chars)})
    vocab["<|startoftext|>"] = len(vocab)
    vocab["<|endoftext|>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def build_unclip_from_config(
    configs: dict[str, dict[str, Any]] | None = None,
    dtype: torch.dtype = torch.float16,
    device: str | torch.device = "cuda",
    *,
    seed: int = 0,
) -> Any:
    """A ``StableUnCLIPImg2ImgPipeline`` with random weights built from config dicts.

    Parameters
    ----------
    configs : dict, optional
        Keys ``unet``, ``vae`` (diffusers configs), ``text_encoder`` and ``image_encoder``
        (``CLIPTextConfig`` / ``CLIPVisionConfig`` kwargs), ``scheduler`` and
        ``image_noising_scheduler`` (with ``_class_name``), ``image_normalizer``
        (``{"embedding_dim": D}``). Default :data:`UNCLIP_H_CONFIGS`. A missing
        ``image_encoder`` gets a one-layer stand-in (generation from ``image_embeds``
        never runs it); the tokenizer is :func:`tiny_clip_tokenizer`.
    dtype, device : where the weights are created (directly, without a CPU copy).

    Returns
    -------
    StableUnCLIPImg2ImgPipeline
        Wrap it with :class:`UnCLIPDecoder` to get an ImageDecoder.
    """
    from diffusers import AutoencoderKL, StableUnCLIPImg2ImgPipeline, UNet2DConditionModel
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
        StableUnCLIPImageNormalizer,
    )
    from transformers import (
        CLIPImageProcessor,
        CLIPTextConfig,
        CLIPTextModel,
        CLIPVisionConfig,
        CLIPVisionModelWithProjection,
    )

    configs = copy.deepcopy(UNCLIP_H_CONFIGS if configs is None else configs)
    embed_dim = configs.get("image_normalizer", {}).get(
        "embedding_dim", configs["unet"]["projection_class_embeddings_input_dim"] // 2
    )
    vision = configs.get(
        "image_encoder",
        {
            "hidden_size": 32,
            "intermediate_size": 37,
            "num_hidden_layers": 1,
            "num_attention_heads": 4,
            "image_size": 32,
            "patch_size": 16,
            "projection_dim": embed_dim,
        },
    )
    torch.manual_seed(seed)
    with torch.device(device):
        components = dict(
            unet=UNet2DConditionModel.from_config(configs["unet"]),
            vae=AutoencoderKL.from_config(configs["vae"]),
            text_encoder=CLIPTextModel(CLIPTextConfig(**configs["text_encoder"])),
            image_encoder=CLIPVisionModelWithProjection(CLIPVisionConfig(**vision)),
        )
        # Its .to() has its own signature (torch_device, torch_dtype).
        normalizer = StableUnCLIPImageNormalizer(embedding_dim=embed_dim)
    for module in components.values():
        module.to(dtype=dtype).eval()
    components["image_normalizer"] = normalizer.to(torch.device(device), dtype).eval()
    size = vision["image_size"]
    return StableUnCLIPImg2ImgPipeline(
        feature_extractor=CLIPImageProcessor(size=size, crop_size=size),
        tokenizer=tiny_clip_tokenizer(configs["text_encoder"].get("max_position_embeddings", 77)),
        scheduler=_scheduler_from_config(configs["scheduler"]),
        image_noising_scheduler=_scheduler_from_config(configs["image_noising_scheduler"]),
        **components,
    )


def build_kandinsky22_from_config(
    configs: dict[str, dict[str, Any]] | None = None,
    dtype: torch.dtype = torch.float16,
    device: str | torch.device = "cuda",
    *,
    seed: int = 0,
) -> Any:
    """A ``KandinskyV22Pipeline`` with random weights from ``unet``, ``movq`` and
    ``scheduler`` config dicts (default :data:`KANDINSKY22_CONFIGS`); wrap it with
    :class:`Kandinsky22Decoder`."""
    from diffusers import KandinskyV22Pipeline, UNet2DConditionModel, VQModel

    configs = copy.deepcopy(KANDINSKY22_CONFIGS if configs is None else configs)
    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(configs["unet"])
        movq = VQModel.from_config(configs["movq"])
    return KandinskyV22Pipeline(
        unet=unet.to(dtype=dtype).eval(),
        movq=movq.to(dtype=dtype).eval(),
        scheduler=_scheduler_from_config(configs["scheduler"]),
    )


def pipeline_configs(folder: str | Path) -> dict[str, dict[str, Any]]:
    """Read a local pipeline folder's component configs into the dict the builders take."""
    folder = Path(folder)
    out: dict[str, dict[str, Any]] = {}
    index = json.loads((folder / "model_index.json").read_text())
    for name, spec in index.items():
        if name.startswith("_") or not isinstance(spec, list):
            continue
        if (folder / name / "config.json").is_file():
            out[name] = json.loads((folder / name / "config.json").read_text())
        elif (folder / name / "scheduler_config.json").is_file():
            cfg = json.loads((folder / name / "scheduler_config.json").read_text())
            out[name] = {**cfg, "_class_name": spec[1]}
    return out


__all__ = [
    "UnCLIPDecoder",
    "Kandinsky22Decoder",
    "UNCLIP_H_CONFIGS",
    "KANDINSKY22_CONFIGS",
    "build_unclip_from_config",
    "build_kandinsky22_from_config",
    "pipeline_configs",
    "tiny_clip_tokenizer",
]
