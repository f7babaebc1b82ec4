"""The SDXL-Turbo + IP-Adapter decoder on tiny random models.

The pipeline is built from in-code configs (``tiny_turbo_configs``), saved with
``save_pretrained`` next to an IP-Adapter ``.safetensors`` in h94/IP-Adapter's key layout
and a tiny VAE folder, and loaded back with ``TurboDecoder.from_folder``: the code path a
real local sdxl-turbo copy takes. Every image comes from diffusers' own pipeline call.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from rtdecode.decoder.base import ImageDecoder
from rtdecode.decoder.testing import (
    build_turbo_from_config,
    flatten_ip_adapter,
    random_ip_adapter_state_dict,
    tiny_turbo_configs,
)
from rtdecode.decoder.turbo import TurboDecoder, is_turbo_folder

torch.set_num_threads(1)

EMBED_DIM = 16
IMAGE_PX = 32


def _emb(seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(EMBED_DIM).astype(np.float32)


def _px(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)


@pytest.fixture(scope="module")
def turbo_dir(tmp_path_factory) -> Path:
    """A local folder in the documented layout: pipeline, ip_adapter/, tiny_vae/."""
    folder = tmp_path_factory.mktemp("turbo") / "sdxl-turbo"
    pipe, tiny = build_turbo_from_config(
        tiny_turbo_configs(EMBED_DIM),
        dtype=torch.float32,
        device="cpu",
        with_tiny_vae=True,
        with_ip_adapter=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)
    tiny.save_pretrained(folder / "tiny_vae", safe_serialization=True)
    state = random_ip_adapter_state_dict(pipe.unet, EMBED_DIM, seed=1)
    (folder / "ip_adapter").mkdir()
    save_file(
        flatten_ip_adapter(state), folder / "ip_adapter" / "ip-adapter_test_vit-h.safetensors"
    )
    return folder


@pytest.fixture(scope="module")
def decoder(turbo_dir) -> TurboDecoder:
    return TurboDecoder.from_folder(turbo_dir, device="cpu")


def test_loads_from_folder_with_the_protocol(turbo_dir, decoder):
    from diffusers import AutoencoderTiny

    assert is_turbo_folder(turbo_dir)
    assert isinstance(decoder, ImageDecoder)
    assert decoder.embed_dim == EMBED_DIM
    assert decoder.image_size == IMAGE_PX  # unet.sample_size 16 x VAE factor 2
    assert decoder.guidance_scale == 0.0 and decoder.default_steps == 1
    assert isinstance(decoder.pipe.vae, AutoencoderTiny)  # tiny_vae/ is picked up
    assert decoder.name == "sdxl-turbo:sdxl-turbo"
    # The empty prompt is encoded once: (1, 77, 16 + 16) tokens and a pooled vector.
    assert decoder._prompt["prompt_embeds"].shape == (1, 77, 32)
    assert decoder._prompt["pooled_prompt_embeds"].shape == (1, 16)
    img = decoder.generate(_emb(0), seed=0, steps=1)
    assert img.mode == "RGB" and img.size == (IMAGE_PX, IMAGE_PX)
    assert _px(img).std() > 1.0  # not a blank image


def test_seed_determinism(decoder):
    a = decoder.generate(_emb(0), seed=3, steps=1)
    b = decoder.generate(_emb(0), seed=3, steps=1)
    c = decoder.generate(_emb(0), seed=4, steps=1)
    assert np.array_equal(_px(a), _px(b))
    assert np.abs(_px(a) - _px(c)).mean() > 1.0
    # Two steps (Euler ancestral draws noise at each step) are reproducible too.
    assert np.array_equal(
        _px(decoder.generate(_emb(0), seed=3, steps=2)),
        _px(decoder.generate(_emb(0), seed=3, steps=2)),
    )


def test_the_embedding_conditions_the_image(decoder):
    a, b = _emb(0), _emb(1)
    img_a = _px(decoder.generate(a, seed=0, steps=1))
    img_b = _px(decoder.generate(b, seed=0, steps=1))
    assert np.abs(img_a - img_b).mean() > 1.0
    # Nudging the embedding moves the image less than replacing it.
    img_near = _px(decoder.generate(a + 0.05 * b, seed=0, steps=1))
    assert 0 < np.abs(img_a - img_near).mean() < np.abs(img_a - img_b).mean()
    try:
        decoder.set_ip_adapter_scale(0.0)
        off_a = _px(decoder.generate(a, seed=0, steps=1))
        off_b = _px(decoder.generate(b, seed=0, steps=1))
    finally:
        decoder.set_ip_adapter_scale(1.0)
    assert np.array_equal(off_a, off_b)  # with scale 0 the embedding is ignored
    assert np.abs(off_a - img_a).mean() > 1.0
    assert np.array_equal(_px(decoder.generate(a, seed=0, steps=1)), img_a)  # scale restored


def test_folder_round_trip_equals_in_memory(turbo_dir, decoder):
    """The saved IP-Adapter file maps onto the same processors as the in-memory state."""
    import diffusers

    pipe = diffusers.StableDiffusionXLPipeline.from_pretrained(turbo_dir, local_files_only=True)
    state = random_ip_adapter_state_dict(pipe.unet, EMBED_DIM, seed=1)
    pipe.load_ip_adapter(state, subfolder="", weight_name="", image_encoder_folder=None)
    tiny = diffusers.AutoencoderTiny.from_pretrained(turbo_dir / "tiny_vae", local_files_only=True)
    in_memory = TurboDecoder(pipe, tiny_vae=tiny)
    for seed in (0, 1):
        assert np.array_equal(
            _px(in_memory.generate(_emb(seed), seed=seed, steps=1)),
            _px(decoder.generate(_emb(seed), seed=seed, steps=1)),
        )


def test_full_vae_and_explicit_paths(turbo_dir, tmp_path):
    from diffusers import AutoencoderKL

    ip_file = tmp_path / "elsewhere.safetensors"
    shutil.copy(next((turbo_dir / "ip_adapter").glob("*.safetensors")), ip_file)
    full = TurboDecoder.from_folder(turbo_dir, ip_adapter=ip_file, tiny_vae=False)
    assert isinstance(full.pipe.vae, AutoencoderKL)
    img = full.generate(_emb(0), seed=0, steps=1)
    assert img.size == (IMAGE_PX, IMAGE_PX)


def test_img2img_and_guidance(decoder):
    init = Image.new("RGB", (50, 40), (250, 20, 20))
    a = decoder.generate(_emb(0), seed=0, steps=2, init_image=init, strength=0.5)
    b = decoder.generate(_emb(0), seed=0, steps=2, init_image=init, strength=0.5)
    assert a.size == (IMAGE_PX, IMAGE_PX) and np.array_equal(_px(a), _px(b))
    # A weak strength keeps more of the init image than a full-strength start.
    full = decoder.generate(_emb(0), seed=0, steps=2, init_image=init, strength=1.0)
    red = lambda im: _px(im)[..., 0].mean() - _px(im)[..., 1:].mean()  # noqa: E731
    assert red(a) > red(full)
    guided = decoder.generate(_emb(0), seed=0, steps=1, guidance_scale=3.0)
    plain = decoder.generate(_emb(0), seed=0, steps=1)
    assert np.abs(_px(guided) - _px(plain)).mean() > 0.5


def test_bfloat16(turbo_dir):
    dec = TurboDecoder.from_folder(turbo_dir, dtype=torch.bfloat16)
    assert dec.dtype == torch.bfloat16 and dec.pipe.vae.dtype == torch.bfloat16
    img = dec.generate(_emb(0), seed=0, steps=1)
    assert img.size == (IMAGE_PX, IMAGE_PX)


def test_bad_embeddings(decoder):
    with pytest.raises(ValueError, match=r"dimension 1024 but decoder .* expects dimension 16"):
        decoder.generate(np.zeros(1024, np.float32))
    bad = _emb(0)
    bad[3] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        decoder.generate(bad)
    with pytest.raises(ValueError, match="steps=0"):
        decoder.generate(_emb(0), steps=0)


def test_missing_and_wrong_folders(turbo_dir, tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        TurboDecoder.from_folder(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no model_index.json"):
        TurboDecoder.from_folder(tmp_path)

    # A pipeline folder without IP-Adapter weights names where they should go.
    bare = tmp_path / "bare"
    shutil.copytree(turbo_dir, bare, ignore=shutil.ignore_patterns("ip_adapter"))
    with pytest.raises(FileNotFoundError, match=r"No IP-Adapter weights .*ip_adapter"):
        TurboDecoder.from_folder(bare)
    (bare / "ip_adapter").mkdir()
    (bare / "ip_adapter" / "ip-adapter_sdxl.bin").write_bytes(b"pickle")
    with pytest.raises(ValueError, match="pickled"):
        TurboDecoder.from_folder(bare)
    with pytest.raises(FileNotFoundError, match="No tiny VAE"):
        TurboDecoder.from_folder(turbo_dir, tiny_vae=tmp_path / "no_taesd")

    other = tmp_path / "other"
    other.mkdir()
    (other / "model_index.json").write_text(json.dumps({"_class_name": "KandinskyV22Pipeline"}))
    with pytest.raises(ValueError, match="KandinskyV22Pipeline"):
        TurboDecoder.from_folder(other)
    assert not is_turbo_folder(other)


def test_refuses_a_pipeline_without_ip_adapter():
    pipe, _ = build_turbo_from_config(
        tiny_turbo_configs(EMBED_DIM), dtype=torch.float32, device="cpu", with_ip_adapter=False
    )
    with pytest.raises(ValueError, match="no IP-Adapter"):
        TurboDecoder(pipe)


def test_sd_turbo_layout(tmp_path):
    """SD-Turbo (StableDiffusionPipeline, one text encoder) through the same class."""
    from diffusers import StableDiffusionPipeline

    sdxl, _ = build_turbo_from_config(
        tiny_turbo_configs(EMBED_DIM), dtype=torch.float32, device="cpu", with_ip_adapter=False
    )
    from diffusers import UNet2DConditionModel

    cfg = tiny_turbo_configs(EMBED_DIM)["unet"]
    for key in (
        "addition_embed_type",
        "addition_time_embed_dim",
        "projection_class_embeddings_input_dim",
    ):
        cfg.pop(key)
    cfg["cross_attention_dim"] = 16  # one text encoder's hidden size
    torch.manual_seed(0)
    pipe = StableDiffusionPipeline(
        unet=UNet2DConditionModel.from_config(cfg).eval(),
        vae=sdxl.vae,
        text_encoder=sdxl.text_encoder,
        tokenizer=sdxl.tokenizer,
        scheduler=sdxl.scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    folder = tmp_path / "sd-turbo"
    pipe.save_pretrained(folder, safe_serialization=True)
    (folder / "ip_adapter").mkdir()
    state = random_ip_adapter_state_dict(pipe.unet, EMBED_DIM, seed=2)
    save_file(flatten_ip_adapter(state), folder / "ip_adapter" / "ip.safetensors")
    dec = TurboDecoder.from_folder(folder)
    assert not dec.sdxl and dec.image_size == IMAGE_PX
    a = _px(dec.generate(_emb(0), seed=0, steps=1))
    assert np.array_equal(a, _px(dec.generate(_emb(0), seed=0, steps=1)))
    assert np.abs(a - _px(dec.generate(_emb(1), seed=0, steps=1))).mean() > 1.0
