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
from typing import Any

import torch

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
    "UNCLIP_H_CONFIGS",
    "KANDINSKY22_CONFIGS",
    "build_unclip_from_config",
    "build_kandinsky22_from_config",
    "pipeline_configs",
    "tiny_clip_tokenizer",
]
