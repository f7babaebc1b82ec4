"""``rtdecode train-decoder``: the tiny decoder's training.

Also how well decoders keep the embedding they generate from (an evaluation and its
picture).

Threads: everything runs in the caller's thread.
"""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file
from torch import nn

from rtdecode._utils.devices import resolve_device
from rtdecode.contracts import ParameterError
from rtdecode.decoder.base import ImageDecoder, fit_image, pil_to_tensor
from rtdecode.decoder.normalize import EmbeddingNormalizer
from rtdecode.decoder.tiny import (
    CONFIG_FILE,
    DEFAULT_MAX_STEPS,
    MODEL_FILE,
    TinyDecoderConfig,
    TinyDecoderNet,
    save_decoder_folder,
)
from rtdecode.images.encoders import DEFAULT_IMAGE_ENCODER
from rtdecode.training.state import (
    has_training_state,
    load_training_state,
    save_training_state,
)

if TYPE_CHECKING:  # pragma: no cover - typing only
    from rtdecode.images.categories import CategoryGallery
    from rtdecode.images.encoders import ImageEncoder
    from rtdecode.images.gallery import Gallery

#: Where versions before the one resume format kept a decoder run's state.
LEGACY_STATE_DIR = "training_state"


@dataclass
class _TrainingData:
    images: torch.Tensor  # (N, 3, S, S) in [-1, 1]
    embeddings: torch.Tensor  # (N, D) of the images as they are
    flipped_embeddings: torch.Tensor  # (N, D) of the left-right mirrored images
    encoder_name: str
    registry_name: str
    gallery: dict[str, Any] = field(default_factory=dict)


def _load_training_data(gallery_dir: Path, image_encoder: str, image_size: int) -> _TrainingData:
    """Gallery images at ``image_size`` plus embeddings of each image and of its mirror.

    Mirrored images are encoded too (rather than reusing the original's embedding) so that
    flip augmentation never pairs an image with an embedding it does not have.
    """
    from rtdecode.images import Gallery, get_image_encoder

    gallery = Gallery.from_folder(gallery_dir)
    if len(gallery) < 2:
        raise ValueError(
            f"Gallery {gallery_dir} has {len(gallery)} usable images; the decoder needs at least 2."
        )
    encoder = get_image_encoder(image_encoder)
    emb = np.array(gallery.embeddings(encoder), dtype=np.float32).reshape(len(gallery), -1)
    originals = gallery.images()
    mirrored = [im.transpose(Image.Transpose.FLIP_LEFT_RIGHT) for im in originals]
    flipped = np.concatenate(
        [
            np.asarray(encoder.encode(mirrored[i : i + 64]), dtype=np.float32).reshape(
                len(mirrored[i : i + 64]), -1
            )
            for i in range(0, len(mirrored), 64)
        ]
    )
    return _TrainingData(
        images=pil_to_tensor(originals, image_size),
        embeddings=torch.from_numpy(emb),
        flipped_embeddings=torch.from_numpy(flipped),
        encoder_name=encoder.name,
        registry_name=image_encoder,
        gallery={
            "path": str(Path(gallery_dir)),
            "n_images": len(gallery),
            "n_categories": len(set(gallery.categories)),
            "fingerprint": gallery.fingerprint,
        },
    )


def _ema_update(ema: nn.Module, model: nn.Module, decay: float) -> None:
    with torch.no_grad():
        ema_p = [p for p in ema.parameters()]
        model_p = [p.detach() for p in model.parameters()]
        torch._foreach_lerp_(ema_p, model_p, 1.0 - decay)
        for eb, mb in zip(ema.buffers(), model.buffers(), strict=True):
            eb.copy_(mb)


def train_decoder(
    gallery_dir: str | Path,
    out_dir: str | Path,
    *,
    image_encoder: str | None = None,
    max_steps: int | None = None,
    device: str = "auto",
    resume: bool = False,
    seed: int = 0,
    batch_size: int = 16,
    lr: float = 1e-3,
    warmup_steps: int = 100,
    ema_decay: float = 0.995,
    p_uncond: float = 0.1,
    focus_steps: int = 4,
    focus_fraction: float = 0.5,
    save_every: int = 250,
    architecture: dict[str, Any] | None = None,
    progress: bool = True,
) -> Path:
    """Train the small decoder on a gallery and save it as a decoder folder.

    Parameters
    ----------
    gallery_dir : str or Path
        An image folder readable by ``rtdecode.images.Gallery.from_folder``.
    out_dir : str or Path
        Folder to write (see the module docstring for its layout).
    image_encoder : str, optional
        Registry name of the image encoder whose embeddings condition the decoder;
        default :data:`rtdecode.images.DEFAULT_IMAGE_ENCODER` (the ImageNet CNN).
    max_steps : int, optional
        Total optimisation steps (counted across resumes); default ``DEFAULT_MAX_STEPS``.
    device : str
        ``"auto"``, ``"cpu"`` or ``"cuda"``. On CUDA the forward pass runs in bfloat16.
    resume : bool
        Continue from ``out_dir/training`` (``rtdecode.training.state``). Without it, an ``out_dir`` that already
        holds a training state is an error (nothing is overwritten by accident).
    seed : int
        Seeds weights, batches, noise and flips; a resumed run continues the same stream.
    batch_size, lr, warmup_steps, ema_decay, p_uncond, save_every : training options
    focus_steps, focus_fraction : int, float
        This share of each batch is drawn from the timesteps of a ``focus_steps``-step
        sampler instead of uniformly.
    architecture : dict, optional
        Overrides of :class:`TinyDecoderConfig` fields (e.g. a tiny network for tests).
    progress : bool
        Show a progress bar.

    Returns
    -------
    Path
        ``out_dir``, loadable with :func:`rtdecode.decoder.base.load_decoder`.
    """
    from tqdm.auto import tqdm

    out = Path(out_dir)
    if (out / LEGACY_STATE_DIR / "state.json").is_file() and not has_training_state(out):
        raise ValueError(
            f"{out} holds a decoder training state in the layout of earlier versions "
            f"({LEGACY_STATE_DIR}/), which this version cannot resume; the decoder in it "
            "still loads. Train into a new folder (--out), or delete "
            f"{out / LEGACY_STATE_DIR} to start this folder afresh."
        )
    has_state = has_training_state(out)
    if has_state and not resume:
        raise FileExistsError(
            f"{out} already holds a decoder training state; pass resume=True (--resume) to "
            "continue it, or choose another output folder."
        )
    max_steps = DEFAULT_MAX_STEPS if max_steps is None else int(max_steps)
    if max_steps < 1:
        raise ParameterError("max_steps", f"{{param}}={max_steps} must be at least 1.")
    dev = resolve_device(device)

    saved_config = json.loads((out / CONFIG_FILE).read_text()) if has_state else None
    image_encoder = image_encoder or DEFAULT_IMAGE_ENCODER
    if saved_config is not None:
        image_encoder = saved_config["image_encoder"]["registry_name"]
    data = _load_training_data(
        Path(gallery_dir),
        image_encoder,
        int((architecture or {}).get("image_size", TinyDecoderConfig.image_size)),
    )
    n_images, embed_dim = data.embeddings.shape

    if saved_config is not None:
        config = TinyDecoderConfig.from_dict(saved_config["architecture"])
        if config.embed_dim != embed_dim:
            raise ValueError(
                f"The saved decoder in {out} takes {config.embed_dim}-dim embeddings but "
                f"encoder {image_encoder!r} now gives {embed_dim}; train into a new folder."
            )
    else:
        config = TinyDecoderConfig.from_dict({**(architecture or {}), "embed_dim": embed_dim})

    normalizer = EmbeddingNormalizer().fit(
        torch.cat([data.embeddings, data.flipped_embeddings]).numpy()
    )
    torch.manual_seed(seed)
    net = TinyDecoderNet(config)
    net.emb_mean.copy_(torch.from_numpy(normalizer.mean))
    net.emb_std.copy_(torch.from_numpy(normalizer.std))
    ema = copy.deepcopy(net).requires_grad_(False)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.0)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    step = 0
    if has_state:
        state = load_training_state(out, {"model": net}, opt)
        ema.load_state_dict(load_file(out / MODEL_FILE))
        gen.set_state(state["tensors"]["generator"])
        step = int(state["step"])

    net.to(dev).train()
    ema.to(dev).eval()
    train_sched = config.scheduler()
    alphas = train_sched.alphas_cumprod.to(dev)
    # Part of each batch sits exactly on the timesteps a focus_steps-step sampler visits:
    # the few-step path is what the decoder is used with, so it gets extra training.
    train_sched.set_timesteps(focus_steps)
    focus_t = train_sched.timesteps.clone().long()
    images = data.images.to(dev)
    emb = data.embeddings.to(dev)
    emb_flip = data.flipped_embeddings.to(dev)
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=dev.type == "cuda")

    command = " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else ""
    meta = {
        "name": f"tiny:{out.name}",
        "embed_dim": embed_dim,
        "image_size": config.image_size,
        "image_encoder": {
            "name": data.encoder_name,
            "registry_name": data.registry_name,
            "dim": embed_dim,
        },
        "default_steps": 4,
    }

    previous = dict((saved_config or {}).get("training", {}))
    t_run = time.perf_counter()

    def save(step_now: int) -> None:
        training = dict(previous)
        training.update(
            {
                "gallery": data.gallery,
                "steps": step_now,
                "batch_size": batch_size,
                "lr": lr,
                "warmup_steps": warmup_steps,
                "ema_decay": ema_decay,
                "p_uncond": p_uncond,
                "focus_steps": focus_steps,
                "focus_fraction": focus_fraction,
                "seed": seed,
                "device": str(dev),
                "torch": torch.__version__,
                "train_seconds": round(
                    previous.get("train_seconds", 0.0) + time.perf_counter() - t_run, 1
                ),
                "last_command": command,
            }
        )
        save_decoder_folder(out, ema, normalizer, {**meta, "training": training})
        save_training_state(
            out,
            {"model": net},
            opt,
            {"step": step_now, "seed": seed, "tensors": {"generator": gen.get_state()}},
        )

    last_saved = step
    loss_avg = None
    bar = tqdm(
        total=max_steps, initial=step, desc="train-decoder", unit="step", disable=not progress
    )
    try:
        while step < max_steps:
            idx = torch.randint(0, n_images, (batch_size,), generator=gen)
            flip = torch.rand(batch_size, generator=gen) < 0.5
            drop = torch.rand(batch_size, generator=gen) < p_uncond
            t = torch.randint(0, config.num_train_timesteps, (batch_size,), generator=gen)
            pick = torch.randint(0, len(focus_t), (batch_size,), generator=gen)
            focus = torch.rand(batch_size, generator=gen) < focus_fraction
            t = torch.where(focus, focus_t[pick], t)
            noise = torch.randn((batch_size, *images.shape[1:]), generator=gen)
            idx, flip, drop, t, noise = (v.to(dev) for v in (idx, flip, drop, t, noise))

            x0 = torch.where(flip[:, None, None, None], images[idx].flip(-1), images[idx])
            e = torch.where(flip[:, None], emb_flip[idx], emb[idx])
            a = alphas[t].view(-1, 1, 1, 1)
            x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
            target = a.sqrt() * noise - (1 - a).sqrt() * x0  # v
            for g in opt.param_groups:
                g["lr"] = lr * min(1.0, (step + 1) / max(1, warmup_steps))
            with autocast:
                pred = net(x_t, t, net.condition(e, drop))
            loss = F.mse_loss(pred.float(), target)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"The decoder's training loss became {loss.item()} at step {step}; lower lr "
                    f"(now {lr}) or resume from the last saved state."
                )
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
            opt.step()
            step += 1
            _ema_update(ema, net, min(ema_decay, (1 + step) / (10 + step)))

            loss_avg = loss.item() if loss_avg is None else 0.98 * loss_avg + 0.02 * loss.item()
            bar.update(1)
            bar.set_postfix(loss=f"{loss_avg:.4f}")
            if step - last_saved >= save_every or step == max_steps:
                save(step)
                last_saved = step
    except KeyboardInterrupt:
        if step > last_saved:
            save(step)
        raise
    finally:
        bar.close()
    return out


@dataclass(frozen=True)
class Fidelity:
    """What :func:`embedding_fidelity` measured.

    Attributes
    ----------
    n_images, n_gallery : int
        Images generated from, and candidates ranked among.
    steps, seed : int
        How each image was generated.
    mean_percentile, median_percentile : float
        Share of the other candidates the true image beats (1.0: ranked first).
    median_rank : float
    share_at_least_90 : float
        Share of images whose percentile is >= 0.9.
    top1, top5 : float
    ranks : dict
        ``{id: rank}`` of each image generated from.
    images : dict
        ``{id: generated PIL image}``.
    """

    n_images: int
    n_gallery: int
    steps: int
    seed: int
    mean_percentile: float
    median_percentile: float
    median_rank: float
    share_at_least_90: float
    top1: float
    top5: float
    ranks: dict[str, int] = field(repr=False)
    images: dict[str, Image.Image] = field(repr=False)

    def as_dict(self) -> dict[str, int | float]:
        """The summary numbers (neither ``ranks`` nor ``images``), for JSON."""
        return {f.name: getattr(self, f.name) for f in fields(self)
                if f.name not in ("ranks", "images")}


def embedding_fidelity(
    decoder: ImageDecoder,
    gallery: Gallery | CategoryGallery,
    encoder: ImageEncoder,
    *,
    ids: Sequence[str] | None = None,
    candidates: Sequence[str] | None = None,
    seed: int = 0,
    steps: int = 4,
    progress: bool = True,
) -> Fidelity:
    """How well generated images keep the embedding they were generated from.

    For each gallery image: generate from its true embedding, embed the generated image
    with the same encoder, and rank the true image among the candidates (default: the
    whole gallery) by cosine similarity (:class:`rtdecode.decoder.retrieval.Retrieval`).
    The percentile is the share of the other candidates that the true one beats: 1.0 =
    ranked first. With ``ids`` and ``candidates`` both the 200 test concepts' images, this
    is the rank of the true concept among the retrieval set the demo searches.

    Parameters
    ----------
    decoder : ImageDecoder
    gallery : rtdecode.images.Gallery or CategoryGallery
    encoder : rtdecode.images.ImageEncoder
        The encoder the decoder was trained with.
    ids : sequence of str, optional
        Images to generate from (default: all).
    candidates : sequence of str, optional
        Images to rank among (default: the whole gallery); must hold every id of ``ids``.

    Returns
    -------
    Fidelity
    """
    from tqdm.auto import tqdm

    from rtdecode.decoder.retrieval import Retrieval

    emb = np.asarray(gallery.embeddings(encoder, progress=progress), dtype=np.float32)
    ids = list(gallery.ids if ids is None else ids)
    pool = list(gallery.ids if candidates is None else candidates)
    outside = sorted(set(ids) - set(pool))
    if outside:
        raise ValueError(
            f"{len(outside)} images to generate from are not among the candidates, e.g. "
            f"{outside[:3]}; pass candidates that hold every id (or leave it None for the "
            "whole gallery)."
        )
    retrieval = Retrieval(emb[[gallery.index(i) for i in pool]], pool)
    n = len(pool)
    ranks: dict[str, int] = {}
    images: dict[str, Image.Image] = {}
    for image_id in tqdm(ids, desc="fidelity", unit="img", disable=not progress):
        img = decoder.generate(emb[gallery.ids.index(image_id)], seed=seed, steps=steps)
        vec = np.asarray(encoder.encode([img]), dtype=np.float32)[0]
        ranks[image_id] = int(retrieval.rank_of(vec, image_id))
        images[image_id] = img
    r = np.array(list(ranks.values()), dtype=np.float64)
    pct = (n - r) / max(1, n - 1)
    return Fidelity(
        n_images=len(ids),
        n_gallery=n,
        steps=steps,
        seed=seed,
        mean_percentile=float(pct.mean()),
        median_percentile=float(np.median(pct)),
        median_rank=float(np.median(r)),
        share_at_least_90=float((pct >= 0.9).mean()),
        top1=float((r == 1).mean()),
        top5=float((r <= 5).mean()),
        ranks=ranks,
        images=images,
    )


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
