"""The project's own small embedding-conditioned image decoder (64 x 64 RGB, pixel space).

Architecture (:class:`TinyDecoderNet`): the 64 x 64 image is folded into a 32 x 32 grid of
2 x 2 patches (``pixel_unshuffle``: 12 channels), denoised by a diffusers ``UNet2DModel``
(32/64/128 channels, no cross-attention, self-attention only in the 8 x 8 middle block) and
unfolded again. Folding halves the side the convolutions run at (4x fewer operations) while
the first level still has more channels (32) than the folded input (12 + 4), so no pixel
information is squeezed out -- with 4 x 4 patches into 32 channels it was, and the network
could not tell noise from detail. The embedding is standardised with the training
statistics and passed through a small MLP that conditions the UNet twice:

- globally, added to the timestep embedding (``class_embed_type="identity"``), which the
  ResNet blocks apply as a per-channel scale and shift;
- spatially, as 4 feature maps at grid resolution concatenated to the UNet input, so that
  layout information in the embedding (e.g. HOG cells) has a place to go.

Training predicts v (v-prediction) under a cosine noise schedule, half of each batch on the
timesteps a 4-step sampler visits; sampling uses diffusers' DDIMScheduler with "trailing"
timesteps so that 4 steps start from pure noise. A learned
"null" embedding, seen 10 % of the time during training, allows classifier-free guidance
(off by default: it doubles the cost of a step).

A decoder folder holds ``config.json`` (``_class_name`` ``RtdecodeTinyDecoder``),
``model.safetensors`` (EMA weights), ``scheduler/scheduler_config.json``,
``embedding_normalizer.json`` and, while training, ``training/`` (the resume state of
``rtdecode.training.state``: raw weights, optimizer and RNG state; never pickle).

Threads: :class:`TinyDecoder` belongs to the thread that owns the models;
``rtdecode.training.decoder.train_decoder`` trains it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler, UNet2DModel
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from rtdecode._utils.files import atomic_save_tensors, atomic_write
from rtdecode.decoder.base import (
    NORMALIZER_FILE,
    BaseDecoder,
    img2img_timesteps,
    load_normalizer,
    pil_to_tensor,
    tensor_to_pil,
)
from rtdecode.decoder.kinds import TINY_CLASS_NAME
from rtdecode.decoder.normalize import EmbeddingNormalizer

FORMAT_VERSION = 1
MODEL_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
SCHEDULER_DIR = "scheduler"
DEFAULT_MAX_STEPS = 1800


@dataclass
class TinyDecoderConfig:
    """Hyper-parameters of :class:`TinyDecoderNet` and of its noise schedule."""

    embed_dim: int
    image_size: int = 64
    patch: int = 2
    block_out_channels: tuple[int, ...] = (32, 64, 128)
    layers_per_block: int = 1
    norm_num_groups: int = 16
    attention_head_dim: int = 32
    mid_attention: bool = True
    cond_hidden: int = 256
    cond_map_channels: int = 4
    num_train_timesteps: int = 1000
    beta_schedule: str = "squaredcos_cap_v2"
    prediction_type: str = "v_prediction"
    guidance_scale: float = 1.0
    guidance_min_timestep: int = 500

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TinyDecoderConfig:
        """Build a config from a dict; unknown keys are an error that lists the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(
                f"Unknown tiny decoder architecture keys {unknown}; known keys: {sorted(known)}."
            )
        d = dict(d)
        if "block_out_channels" in d:
            d["block_out_channels"] = tuple(d["block_out_channels"])
        return cls(**d)

    @property
    def grid(self) -> int:
        """Patches per image side (``image_size // patch``)."""
        return self.image_size // self.patch

    def scheduler(self) -> DDIMScheduler:
        """The sampling scheduler: DDIM, trailing timesteps, x0 clipped to the pixel range."""
        return DDIMScheduler(
            num_train_timesteps=self.num_train_timesteps,
            beta_schedule=self.beta_schedule,
            prediction_type=self.prediction_type,
            timestep_spacing="trailing",
            clip_sample=True,
            clip_sample_range=1.0,
            set_alpha_to_one=True,
        )


class TinyDecoderNet(nn.Module):
    """Denoiser ``v = net(x_t, t, condition(embedding))``.

    Shapes: images ``(B, 3, S, S)`` in [-1, 1] with ``S = config.image_size``;
    embeddings ``(B, D)`` in the image encoder's raw units.
    """

    def __init__(self, config: TinyDecoderConfig) -> None:
        super().__init__()
        c = config
        if c.image_size % c.patch or c.grid % 2 ** (len(c.block_out_channels) - 1):
            raise ValueError(
                f"image_size={c.image_size} must be divisible by patch={c.patch}, and the "
                f"{c.grid} x {c.grid} grid by 2 ** {len(c.block_out_channels) - 1} (UNet levels)."
            )
        self.config = c
        time_embed_dim = c.block_out_channels[0] * 4
        self.register_buffer("emb_mean", torch.zeros(c.embed_dim))
        self.register_buffer("emb_std", torch.ones(c.embed_dim))
        # Learned stand-in for "no embedding" (classifier-free guidance), in standard units.
        self.null_embedding = nn.Parameter(torch.zeros(c.embed_dim))
        self.cond_mlp = nn.Sequential(
            nn.Linear(c.embed_dim, c.cond_hidden),
            nn.SiLU(),
            nn.Linear(c.cond_hidden, c.cond_hidden),
            nn.SiLU(),
        )
        self.to_global = nn.Linear(c.cond_hidden, time_embed_dim)
        self.to_map = nn.Linear(c.cond_hidden, c.cond_map_channels * c.grid * c.grid)
        n_levels = len(c.block_out_channels)
        self.unet = UNet2DModel(
            sample_size=c.grid,
            in_channels=3 * c.patch**2 + c.cond_map_channels,
            out_channels=3 * c.patch**2,
            block_out_channels=tuple(c.block_out_channels),
            down_block_types=("DownBlock2D",) * n_levels,
            up_block_types=("UpBlock2D",) * n_levels,
            layers_per_block=c.layers_per_block,
            norm_num_groups=c.norm_num_groups,
            attention_head_dim=c.attention_head_dim,
            add_attention=c.mid_attention,
            class_embed_type="identity",
            resnet_time_scale_shift="scale_shift",
        )

    def condition(
        self, embeddings: torch.Tensor, drop: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Conditioning tensors for :meth:`forward`.

        Parameters
        ----------
        embeddings : Tensor, shape (B, D)
        drop : BoolTensor, shape (B,), optional
            Rows to replace by the null embedding (unconditional).

        Returns
        -------
        (global (B, 4 * C0), maps (B, cond_map_channels, S / patch, S / patch))
        """
        z = (embeddings - self.emb_mean) / self.emb_std
        if drop is not None:
            z = torch.where(drop[:, None], self.null_embedding.to(z.dtype), z)
        h = self.cond_mlp(z)
        g = self.config.grid
        return self.to_global(h), self.to_map(h).view(-1, self.config.cond_map_channels, g, g)

    def null_condition(self, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The conditioning of the null embedding, for ``batch`` unconditional samples."""
        z = self.null_embedding[None].expand(batch, -1)
        return self.condition(z * self.emb_std + self.emb_mean)

    def forward(
        self, x_t: torch.Tensor, t: torch.Tensor, cond: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        """Model output (v) of shape (B, 3, S, S) for noisy images ``x_t`` at timesteps ``t``."""
        glob, maps = cond
        u = F.pixel_unshuffle(x_t, self.config.patch)
        u = torch.cat([u, maps.to(u.dtype)], dim=1).contiguous(memory_format=torch.channels_last)
        out = self.unet(u, t, class_labels=glob, return_dict=False)[0]
        return F.pixel_shuffle(out, self.config.patch)


# ----------------------------------------------------------------- inference
class TinyDecoder(BaseDecoder):
    """:class:`~rtdecode.decoder.base.ImageDecoder` over a trained :class:`TinyDecoderNet`.

    Build with :meth:`from_folder` (or :func:`rtdecode.decoder.registry.load_decoder`).
    """

    def __init__(
        self,
        net: TinyDecoderNet,
        scheduler: DDIMScheduler,
        *,
        name: str = "tiny",
        image_encoder: str | None = None,
        normalizer: EmbeddingNormalizer | None = None,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        guidance_scale: float | None = None,
        guidance_min_timestep: int | None = None,
        compile: bool = False,
    ) -> None:
        self.device = torch.device(device)
        self.dtype = dtype
        self.net = net.eval().requires_grad_(False)
        self.net.to(device=self.device, dtype=dtype, memory_format=torch.channels_last)
        if compile and self.device.type == "cuda":
            self.net.unet = torch.compile(self.net.unet, fullgraph=False)
        self.scheduler = scheduler
        self.name = name
        self.embed_dim = net.config.embed_dim
        self.image_size = net.config.image_size
        self.image_encoder = image_encoder
        self.normalizer = normalizer
        self.guidance_scale = float(
            net.config.guidance_scale if guidance_scale is None else guidance_scale
        )
        # Guidance only where the noise level is high (t >= this), where it shapes content;
        # the low-noise steps then cost one pass instead of two.
        self.guidance_min_timestep = int(
            net.config.guidance_min_timestep
            if guidance_min_timestep is None
            else guidance_min_timestep
        )

    @classmethod
    def from_folder(
        cls,
        folder: str | Path,
        *,
        device: torch.device | str = "cpu",
        dtype: torch.dtype = torch.float32,
        compile: bool = False,
        guidance_scale: float | None = None,
        guidance_min_timestep: int | None = None,
    ) -> TinyDecoder:
        """Load a trained tiny decoder from its folder (config, weights and scheduler)."""
        folder = Path(folder)
        cfg = json.loads((folder / CONFIG_FILE).read_text())
        net = TinyDecoderNet(TinyDecoderConfig.from_dict(cfg["architecture"]))
        net.load_state_dict(load_file(folder / MODEL_FILE))
        scheduler = DDIMScheduler.from_pretrained(folder, subfolder=SCHEDULER_DIR)
        return cls(
            net,
            scheduler,
            name=cfg.get("name", f"tiny:{folder.name}"),
            image_encoder=cfg.get("image_encoder", {}).get("name"),
            normalizer=load_normalizer(folder),
            device=device,
            dtype=dtype,
            guidance_scale=guidance_scale,
            guidance_min_timestep=guidance_min_timestep,
            compile=compile,
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
        size = self.image_size
        noise = torch.randn((1, 3, size, size), generator=gen).to(self.device, self.dtype)
        self.scheduler.set_timesteps(steps, device=self.device)
        timesteps = self.scheduler.timesteps
        if init_image is not None:
            timesteps = img2img_timesteps(timesteps, strength)
            x0 = pil_to_tensor([init_image], size).to(self.device, self.dtype)
            x = self.scheduler.add_noise(x0, noise, timesteps[:1])
        else:
            x = noise
        cond = self.net.condition(torch.from_numpy(vec)[None].to(self.device, self.dtype))
        if scale != 1.0:
            null = self.net.null_condition(1)
            pair = (torch.cat([null[0], cond[0]]), torch.cat([null[1], cond[1]]))
        for t in timesteps:
            tt = t.reshape(1).to(self.device)
            if scale != 1.0 and int(t) >= self.guidance_min_timestep:
                out_u, out_c = self.net(torch.cat([x, x]), tt.expand(2), pair).chunk(2)
                out = out_u + scale * (out_c - out_u)
            else:
                out = self.net(x, tt, cond)
            x = self.scheduler.step(out.float(), t, x.float(), eta=0.0).prev_sample
            x = x.to(self.dtype)
        return tensor_to_pil(x)[0]


# ------------------------------------------------------------ checkpoint I/O
def save_decoder_folder(
    out_dir: Path,
    net: TinyDecoderNet,
    normalizer: EmbeddingNormalizer,
    meta: dict[str, Any],
) -> None:
    """Write the inference part of a decoder folder (config, weights, scheduler, stats)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_save_tensors(out_dir / MODEL_FILE, net.state_dict())
    net.config.scheduler().save_pretrained(out_dir / SCHEDULER_DIR)
    atomic_write(out_dir / NORMALIZER_FILE, json.dumps(normalizer.to_dict()))
    config = {
        "_class_name": TINY_CLASS_NAME,
        "format_version": FORMAT_VERSION,
        "architecture": asdict(net.config),
        **meta,
    }
    atomic_write(out_dir / CONFIG_FILE, json.dumps(config, indent=2))


# ------------------------------------------------------------------ training
def parameter_count(folder_or_config: str | Path | TinyDecoderConfig) -> int:
    """Number of parameters of a decoder folder's (or a config's) network."""
    if isinstance(folder_or_config, TinyDecoderConfig):
        config = folder_or_config
    else:
        cfg = json.loads((Path(folder_or_config) / CONFIG_FILE).read_text())
        config = TinyDecoderConfig.from_dict(cfg["architecture"])
    return sum(p.numel() for p in TinyDecoderNet(config).parameters())


__all__ = [
    "TinyDecoder",
    "TinyDecoderConfig",
    "TinyDecoderNet",
    "parameter_count",
    "DEFAULT_MAX_STEPS",
]
