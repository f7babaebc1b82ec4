"""Test-only decoders: full-size pipelines with random weights, built from in-code configs.

:func:`build_unclip_from_config` / :func:`build_kandinsky22_from_config` build the
published architectures (:data:`UNCLIP_H_CONFIGS`, :data:`KANDINSKY22_CONFIGS`) directly on
a device, for GPU latency benchmarks and tests without downloading weights, as
diffusers' own tests do. Nothing on the service's path imports this module.

Threads: the caller's.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from rtdecode.decoder.turbo import IP_ADAPTER_TOKENS

if TYPE_CHECKING:  # pragma: no cover - typing only
    from diffusers import UNet2DConditionModel

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
    """A ``KandinskyV22Pipeline`` with random weights.

    Built from ``unet``, ``movq`` and ``scheduler`` config dicts (default
    :data:`KANDINSKY22_CONFIGS`); wrap it with :class:`Kandinsky22Decoder`.
    """
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


# ------------------------------------------------------ full-size, random weights
#: Shapes of stabilityai/sdxl-turbo (the SDXL UNet at 512 px, CLIP ViT-L + OpenCLIP bigG
#: text encoders), of h94/IP-Adapter's ip-adapter_sdxl_vit-h (ViT-H/14 embeddings, D =
#: 1024, 4 tokens) and of madebyollin/taesdxl (the AutoencoderTiny defaults), transcribed
#: from their published configs without network access: check them against local copies
#: (``rtdecode.decoder.pipelines.pipeline_configs``) before quoting parameter counts.
SDXL_TURBO_CONFIGS: dict[str, dict[str, Any]] = {
    "unet": {
        "sample_size": 64,
        "in_channels": 4,
        "out_channels": 4,
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "block_out_channels": [320, 640, 1280],
        "layers_per_block": 2,
        "attention_head_dim": [5, 10, 20],
        "transformer_layers_per_block": [1, 2, 10],
        "cross_attention_dim": 2048,
        "use_linear_projection": True,
        "addition_embed_type": "text_time",
        "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816,
    },
    # The SD-family KL autoencoder (same blocks as SD 2.1's), SDXL's scaling factor.
    "vae": {
        **UNCLIP_H_CONFIGS["vae"],
        "sample_size": 512,
        "scaling_factor": 0.13025,
        "force_upcast": True,
    },
    "text_encoder": {
        "vocab_size": 49408,
        "hidden_size": 768,
        "intermediate_size": 3072,
        "num_hidden_layers": 12,
        "num_attention_heads": 12,
        "max_position_embeddings": 77,
        "hidden_act": "quick_gelu",
        "projection_dim": 768,
    },
    "text_encoder_2": {
        "vocab_size": 49408,
        "hidden_size": 1280,
        "intermediate_size": 5120,
        "num_hidden_layers": 32,
        "num_attention_heads": 20,
        "max_position_embeddings": 77,
        "hidden_act": "gelu",
        "projection_dim": 1280,
    },
    "scheduler": {
        "_class_name": "EulerAncestralDiscreteScheduler",
        "num_train_timesteps": 1000,
        "beta_start": 0.00085,
        "beta_end": 0.012,
        "beta_schedule": "scaled_linear",
        "prediction_type": "epsilon",
        "steps_offset": 1,
        "timestep_spacing": "trailing",
    },
    "tiny_vae": {},
    "ip_adapter": {"embed_dim": 1024},
}


def tiny_turbo_configs(embed_dim: int = 16) -> dict[str, dict[str, Any]]:
    """:data:`SDXL_TURBO_CONFIGS` at toy size (same block types, 32 x 32 images).

    For CPU tests and benchmark dry runs; ``embed_dim`` is the IP-Adapter's embedding
    dimension.
    """
    cfg = copy.deepcopy(SDXL_TURBO_CONFIGS)
    cfg["unet"].update(
        sample_size=16,
        block_out_channels=[8, 16],
        layers_per_block=1,
        attention_head_dim=[2, 4],
        transformer_layers_per_block=[1, 1],
        down_block_types=["DownBlock2D", "CrossAttnDownBlock2D"],
        up_block_types=["CrossAttnUpBlock2D", "UpBlock2D"],
        norm_num_groups=4,
        cross_attention_dim=32,  # 16 + 16: both text encoders' hidden states side by side
        addition_time_embed_dim=4,
        projection_class_embeddings_input_dim=6 * 4 + 16,  # time ids + pooled text
    )
    cfg["vae"].update(
        block_out_channels=[8, 8],
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        layers_per_block=1,
        norm_num_groups=4,
        sample_size=32,
    )
    small = dict(
        vocab_size=1000,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        projection_dim=16,
    )
    cfg["text_encoder"].update(small)
    cfg["text_encoder_2"].update(small)
    # Two blocks: downsamples by 2, as the toy VAE does.
    cfg["tiny_vae"] = dict(
        encoder_block_out_channels=[8, 8],
        decoder_block_out_channels=[8, 8],
        num_encoder_blocks=[1, 1],
        num_decoder_blocks=[1, 1],
    )
    cfg["ip_adapter"] = {"embed_dim": embed_dim}
    return cfg


def random_ip_adapter_state_dict(
    unet: UNet2DConditionModel, embed_dim: int, *, seed: int = 0, num_tokens: int = IP_ADAPTER_TOKENS
) -> dict[str, dict[str, torch.Tensor]]:
    """A random IP-Adapter for ``unet`` in the layout ``load_ip_adapter`` reads.

    ``image_proj``: ``proj`` (Linear D -> num_tokens x cross_attention_dim) and ``norm``
    (LayerNorm). ``ip_adapter``: ``{k}.to_k_ip.weight`` / ``{k}.to_v_ip.weight`` of shape
    (hidden, cross_attention_dim) for the k-th attention processor, counting every
    processor of the UNet from 0 (self-attentions included), so cross-attentions are
    1, 3, 5, ... Weights are float32 on the CPU, drawn with ``torch.Generator(seed)``.
    Save it flat (``image_proj.*``, ``ip_adapter.*``) with :func:`flatten_ip_adapter`.
    """
    gen = torch.Generator().manual_seed(int(seed))
    cross = int(unet.config.cross_attention_dim)
    blocks = list(unet.config.block_out_channels)

    def linear(n_out: int, n_in: int) -> torch.Tensor:
        return torch.randn(n_out, n_in, generator=gen) / n_in**0.5

    image_proj = {
        "proj.weight": linear(num_tokens * cross, embed_dim),
        "proj.bias": torch.zeros(num_tokens * cross),
        "norm.weight": torch.ones(cross),
        "norm.bias": torch.zeros(cross),
    }
    ip: dict[str, torch.Tensor] = {}
    for key_id, name in enumerate(unet.attn_processors):
        if name.endswith("attn1.processor"):
            continue
        if name.startswith("mid_block"):
            hidden = blocks[-1]
        elif name.startswith("up_blocks"):
            hidden = blocks[::-1][int(name.split(".")[1])]
        else:
            hidden = blocks[int(name.split(".")[1])]
        ip[f"{key_id}.to_k_ip.weight"] = linear(hidden, cross)
        ip[f"{key_id}.to_v_ip.weight"] = linear(hidden, cross)
    return {"image_proj": image_proj, "ip_adapter": ip}


def flatten_ip_adapter(state: dict[str, dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """``{"image_proj": {...}, "ip_adapter": {...}}`` as the flat keys of a .safetensors file."""
    return {f"{group}.{k}": v.contiguous() for group, sd in state.items() for k, v in sd.items()}


def build_turbo_from_config(
    configs: dict[str, dict[str, Any]] | None = None,
    dtype: torch.dtype = torch.float16,
    device: str | torch.device = "cuda",
    *,
    seed: int = 0,
    with_tiny_vae: bool = False,
    with_ip_adapter: bool = True,
) -> tuple[Any, Any | None]:
    """An SDXL-Turbo pipeline with a random IP-Adapter, all weights random, from configs.

    Parameters
    ----------
    configs : dict, optional
        Keys ``unet``, ``vae`` (diffusers configs), ``text_encoder`` / ``text_encoder_2``
        (``CLIPTextConfig`` kwargs), ``scheduler`` (with ``_class_name``), ``tiny_vae``
        (``AutoencoderTiny`` kwargs) and ``ip_adapter`` (``{"embed_dim": D}``). Default
        :data:`SDXL_TURBO_CONFIGS`. The tokenizers are
        :func:`~rtdecode.decoder.pipelines.tiny_clip_tokenizer` (only the empty prompt is
        ever encoded).
    dtype, device
        Where the weights are created (directly, without a CPU copy).
    with_tiny_vae : bool
        Also build the tiny VAE.
    with_ip_adapter : bool
        Load a random IP-Adapter (:func:`random_ip_adapter_state_dict`) into the UNet;
        False leaves the pipeline as a plain one (e.g. to ``save_pretrained`` it).

    Returns
    -------
    (StableDiffusionXLPipeline, AutoencoderTiny or None)
        Wrap them with ``TurboDecoder(pipe, tiny_vae=...)``.
    """
    from diffusers import (
        AutoencoderKL,
        AutoencoderTiny,
        StableDiffusionXLPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    configs = copy.deepcopy(SDXL_TURBO_CONFIGS if configs is None else configs)
    tokenizer = tiny_clip_tokenizer(configs["text_encoder"].get("max_position_embeddings", 77))
    special = dict(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    with torch.device(device):
        unet = UNet2DConditionModel.from_config(configs["unet"])
        vae = AutoencoderKL.from_config(configs["vae"])
        text_encoder = CLIPTextModel(CLIPTextConfig(**configs["text_encoder"], **special))
        text_encoder_2 = CLIPTextModelWithProjection(
            CLIPTextConfig(**configs["text_encoder_2"], **special)
        )
        tiny = AutoencoderTiny.from_config(configs["tiny_vae"]) if with_tiny_vae else None
    modules = [unet, vae, text_encoder, text_encoder_2] + ([tiny] if tiny is not None else [])
    for module in modules:
        module.eval()
        if dtype != torch.float32:
            module.to(dtype=dtype)
    pipe = StableDiffusionXLPipeline(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        text_encoder_2=text_encoder_2,
        tokenizer=tokenizer,
        tokenizer_2=tiny_clip_tokenizer(
            configs["text_encoder_2"].get("max_position_embeddings", 77)
        ),
        scheduler=_scheduler_from_config(configs["scheduler"]),
    )
    if with_ip_adapter:
        state = random_ip_adapter_state_dict(unet, configs["ip_adapter"]["embed_dim"], seed=seed)
        pipe.load_ip_adapter(state, subfolder="", weight_name="", image_encoder_folder=None)
    return pipe, tiny


__all__ = [
    "SDXL_TURBO_CONFIGS",
    "UNCLIP_H_CONFIGS",
    "build_turbo_from_config",
    "flatten_ip_adapter",
    "random_ip_adapter_state_dict",
    "tiny_turbo_configs",
    "KANDINSKY22_CONFIGS",
    "build_unclip_from_config",
    "build_kandinsky22_from_config",
    "pipeline_configs",
    "tiny_clip_tokenizer",
]
