"""Diffusion decoders: one contract battery over every decoder kind, plus training,
resuming, checkpoint format and the embedding normaliser.

Every model here is tiny, random and built from in-code configs (as diffusers' own
pipeline tests do), saved with ``save_pretrained`` and loaded back through
``load_decoder``: the same code path as a real local checkpoint.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from rtdecode.decoder.base import ImageDecoder
from rtdecode.decoder.normalize import EmbeddingNormalizer
from rtdecode.decoder.registry import decoder_kind, load_decoder
from rtdecode.training.decoder import save_comparison_grid, train_decoder

torch.set_num_threads(1)

TINY_ARCH = dict(
    block_out_channels=(16, 32), norm_num_groups=8, cond_hidden=32, attention_head_dim=8
)
EMBED_DIM = 32  # of the tiny unCLIP / Kandinsky pipelines


# ------------------------------------------------------------------- fixtures
def _make_gallery(folder: Path, n: int = 6) -> Path:
    """A few distinct PNGs: coloured shapes on coloured backgrounds."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        bg = tuple(int(v) for v in rng.integers(0, 256, 3))
        fg = tuple(int(v) for v in rng.integers(0, 256, 3))
        img = Image.new("RGB", (80, 72), bg)
        draw = ImageDraw.Draw(img)
        x, y = (int(v) for v in rng.integers(5, 40, 2))
        if i % 2:
            draw.ellipse([x, y, x + 30, y + 25], fill=fg)
        else:
            draw.rectangle([x, y, x + 28, y + 20], fill=fg)
        img.save(folder / f"img_{i}.png")
    return folder


@pytest.fixture(scope="module")
def gallery_dir(tmp_path_factory) -> Path:
    return _make_gallery(tmp_path_factory.mktemp("gallery"))


@pytest.fixture(scope="module")
def tiny_dir(gallery_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("tiny") / "decoder"
    return train_decoder(
        gallery_dir,
        out,
        max_steps=2,
        device="cpu",
        batch_size=4,
        architecture=TINY_ARCH,
        progress=False,
    )


def _tiny_text_encoder():
    from transformers import CLIPTextConfig, CLIPTextModel

    from rtdecode.decoder.testing import tiny_clip_tokenizer

    tokenizer = tiny_clip_tokenizer()
    torch.manual_seed(0)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            hidden_size=EMBED_DIM,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            projection_dim=32,
            vocab_size=len(tokenizer),
        )
    ).eval()
    return tokenizer, text_encoder


def tiny_unclip_pipeline():
    """Stable unCLIP img2img components at toy size (32 x 32 images)."""
    from diffusers import (
        AutoencoderKL,
        DDIMScheduler,
        DDPMScheduler,
        StableUnCLIPImg2ImgPipeline,
        UNet2DConditionModel,
    )
    from diffusers.pipelines.stable_diffusion.stable_unclip_image_normalizer import (
        StableUnCLIPImageNormalizer,
    )
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    tokenizer, text_encoder = _tiny_text_encoder()
    torch.manual_seed(0)
    image_encoder = CLIPVisionModelWithProjection(
        CLIPVisionConfig(
            hidden_size=EMBED_DIM,
            projection_dim=EMBED_DIM,
            num_hidden_layers=2,
            num_attention_heads=4,
            image_size=32,
            intermediate_size=37,
            patch_size=8,
        )
    ).eval()
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(32, 64),
        attention_head_dim=(2, 4),
        class_embed_type="projection",
        projection_class_embeddings_input_dim=EMBED_DIM * 2,
        cross_attention_dim=EMBED_DIM,
        layers_per_block=1,
        use_linear_projection=True,
    ).eval()
    torch.manual_seed(0)
    vae = AutoencoderKL(
        block_out_channels=(32, 64),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        layers_per_block=1,
    ).eval()
    return StableUnCLIPImg2ImgPipeline(
        feature_extractor=CLIPImageProcessor(crop_size=32, size=32),
        image_encoder=image_encoder,
        image_normalizer=StableUnCLIPImageNormalizer(embedding_dim=EMBED_DIM).eval(),
        image_noising_scheduler=DDPMScheduler(beta_schedule="squaredcos_cap_v2"),
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        unet=unet,
        scheduler=DDIMScheduler(
            beta_schedule="scaled_linear",
            beta_start=0.00085,
            beta_end=0.012,
            prediction_type="v_prediction",
            set_alpha_to_one=False,
            steps_offset=1,
        ),
        vae=vae,
    )


def tiny_kandinsky_pipeline():
    """Kandinsky 2.2 decoder components at toy size (32 x 32 images)."""
    from diffusers import DDPMScheduler, KandinskyV22Pipeline, UNet2DConditionModel, VQModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=8,  # mean and variance, as the real decoder
        addition_embed_type="image",
        down_block_types=("ResnetDownsampleBlock2D", "SimpleCrossAttnDownBlock2D"),
        up_block_types=("SimpleCrossAttnUpBlock2D", "ResnetUpsampleBlock2D"),
        mid_block_type="UNetMidBlock2DSimpleCrossAttn",
        block_out_channels=(32, 64),
        layers_per_block=1,
        encoder_hid_dim=EMBED_DIM,
        encoder_hid_dim_type="image_proj",
        cross_attention_dim=32,
        attention_head_dim=4,
        resnet_time_scale_shift="scale_shift",
        class_embed_type=None,
    ).eval()
    torch.manual_seed(0)
    movq = VQModel(
        block_out_channels=[32, 64],
        down_block_types=["DownEncoderBlock2D", "AttnDownEncoderBlock2D"],
        up_block_types=["AttnUpDecoderBlock2D", "UpDecoderBlock2D"],
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=8,
        norm_type="spatial",
        num_vq_embeddings=12,
        vq_embed_dim=4,
    ).eval()
    # The published decoder ships a DDPMScheduler; the wrapper swaps in few-step DDIM.
    scheduler = DDPMScheduler(
        beta_schedule="linear", beta_start=0.00085, beta_end=0.012, clip_sample=False
    )
    return KandinskyV22Pipeline(unet=unet, scheduler=scheduler, movq=movq)


@pytest.fixture(scope="module")
def unclip_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("unclip") / "stable-unclip-tiny"
    tiny_unclip_pipeline().save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="module")
def kandinsky_dir(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kandinsky") / "kandinsky22-tiny"
    tiny_kandinsky_pipeline().save_pretrained(out, safe_serialization=True)
    return out


@pytest.fixture(scope="module", params=["tiny", "unclip", "kandinsky22"])
def decoder_case(request):
    folder = request.getfixturevalue(
        {"tiny": "tiny_dir", "unclip": "unclip_dir", "kandinsky22": "kandinsky_dir"}[request.param]
    )
    return request.param, folder, load_decoder(folder, device="cpu")


def _embedding(dim: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(dim).astype(np.float32)


def _pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)


# ----------------------------------------------------- contract, every decoder
def test_folder_kind_is_detected(decoder_case):
    kind, folder, _ = decoder_case
    assert decoder_kind(folder) == kind


def test_generate_returns_rgb_image_of_declared_size(decoder_case):
    _, _, dec = decoder_case
    assert isinstance(dec, ImageDecoder)
    img = dec.generate(_embedding(dec.embed_dim), seed=0, steps=2)
    assert isinstance(img, Image.Image)
    assert img.mode == "RGB"
    assert img.size == (dec.image_size, dec.image_size)


def test_generate_is_deterministic_by_seed(decoder_case):
    _, _, dec = decoder_case
    emb = _embedding(dec.embed_dim)
    a = _pixels(dec.generate(emb, seed=3, steps=2))
    b = _pixels(dec.generate(emb, seed=3, steps=2))
    c = _pixels(dec.generate(emb, seed=4, steps=2))
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 0


def test_wrong_embedding_dimension_names_both_dims(decoder_case):
    _, _, dec = decoder_case
    bad = dec.embed_dim + 5
    with pytest.raises(ValueError, match=rf"dimension {bad}.*expects dimension {dec.embed_dim}"):
        dec.generate(_embedding(bad), seed=0, steps=1)


def test_nonfinite_embedding_is_rejected(decoder_case):
    _, _, dec = decoder_case
    emb = _embedding(dec.embed_dim)
    emb[1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        dec.generate(emb, seed=0, steps=1)


def test_init_image_start_is_deterministic_and_follows_the_image(decoder_case):
    _, _, dec = decoder_case
    emb = _embedding(dec.embed_dim)
    white = Image.new("RGB", (50, 40), (255, 255, 255))
    black = Image.new("RGB", (50, 40), (0, 0, 0))
    a = _pixels(dec.generate(emb, seed=1, steps=4, init_image=white, strength=0.25))
    b = _pixels(dec.generate(emb, seed=1, steps=4, init_image=white, strength=0.25))
    c = _pixels(dec.generate(emb, seed=1, steps=4, init_image=black, strength=0.25))
    np.testing.assert_array_equal(a, b)
    assert a.shape == (dec.image_size, dec.image_size, 3)
    # A light start stays lighter than a dark one when only a quarter of the schedule runs.
    assert a.mean() > c.mean()


def test_guidance_scale_changes_the_image_deterministically(decoder_case):
    _, _, dec = decoder_case
    emb = _embedding(dec.embed_dim)
    plain = _pixels(dec.generate(emb, seed=2, steps=2, guidance_scale=1.0))
    guided = _pixels(dec.generate(emb, seed=2, steps=2, guidance_scale=3.0))
    np.testing.assert_array_equal(
        guided, _pixels(dec.generate(emb, seed=2, steps=2, guidance_scale=3.0))
    )
    assert np.abs(plain - guided).max() > 0


@pytest.mark.parametrize("strength", [0.0, 1.5])
def test_bad_strength_is_rejected(decoder_case, strength):
    _, _, dec = decoder_case
    with pytest.raises(ValueError, match="strength"):
        dec.generate(
            _embedding(dec.embed_dim),
            steps=2,
            init_image=Image.new("RGB", (8, 8)),
            strength=strength,
        )


def test_reduced_precision_path_runs(decoder_case):
    """bfloat16 is what CUDA gets; on the CPU it at least exercises the dtype handling."""
    kind, folder, dec = decoder_case
    half = load_decoder(folder, device="cpu", dtype=torch.bfloat16)
    assert half.dtype == torch.bfloat16
    img = half.generate(_embedding(dec.embed_dim), seed=0, steps=1)
    assert img.size == (dec.image_size, dec.image_size)
    img = half.generate(
        _embedding(dec.embed_dim),
        seed=0,
        steps=2,
        init_image=Image.new("RGB", (9, 9)),
        strength=0.5,
    )
    assert img.size == (dec.image_size, dec.image_size)


def test_unknown_folder_gives_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="neither a folder nor a bundled"):
        load_decoder(tmp_path / "missing")
    (tmp_path / "model_index.json").write_text(
        json.dumps({"_class_name": "StableDiffusionInpaintPipeline"})
    )
    with pytest.raises(ValueError, match="does not take image embeddings"):
        load_decoder(tmp_path)


# ------------------------------------------------------------ pipeline extras
def test_pipeline_folder_with_pickled_weights_is_refused(tmp_path):
    folder = tmp_path / "kandinsky-bin"
    tiny_kandinsky_pipeline().save_pretrained(folder, safe_serialization=False)
    assert list(folder.rglob("*.bin"))
    with pytest.raises((OSError, ValueError), match="safetensors"):
        load_decoder(folder)


def test_unclip_normalizer_comes_from_the_pipeline(unclip_dir):
    dec = load_decoder(unclip_dir)
    assert dec.normalizer is not None and dec.normalizer.dim == EMBED_DIM
    np.testing.assert_allclose(dec.normalizer.mean, 0.0)
    np.testing.assert_allclose(dec.normalizer.std, 1.0)


def test_build_unclip_from_config_matches_a_saved_folder(unclip_dir):
    from rtdecode.decoder.pipelines import UnCLIPDecoder
    from rtdecode.decoder.testing import build_unclip_from_config, pipeline_configs

    configs = pipeline_configs(unclip_dir)
    assert {"unet", "vae", "text_encoder", "scheduler", "image_noising_scheduler"} <= set(configs)
    pipe = build_unclip_from_config(configs, dtype=torch.float32, device="cpu")
    loaded = load_decoder(unclip_dir).pipe
    n_built = sum(p.numel() for p in pipe.unet.parameters())
    assert n_built == sum(p.numel() for p in loaded.unet.parameters())
    dec = UnCLIPDecoder(pipe, guidance_scale=1.0)
    img = dec.generate(_embedding(EMBED_DIM), seed=0, steps=2)
    assert img.size == (32, 32)


def test_build_kandinsky_from_config_generates(kandinsky_dir):
    from rtdecode.decoder.pipelines import Kandinsky22Decoder
    from rtdecode.decoder.testing import build_kandinsky22_from_config, pipeline_configs

    pipe = build_kandinsky22_from_config(
        pipeline_configs(kandinsky_dir), dtype=torch.float32, device="cpu"
    )
    dec = Kandinsky22Decoder(pipe, guidance_scale=1.0)
    assert dec.embed_dim == EMBED_DIM
    assert dec.generate(_embedding(EMBED_DIM), steps=1).size == (32, 32)


# ------------------------------------------------------------------ training
def test_training_folder_layout_and_metadata(tiny_dir):
    cfg = json.loads((tiny_dir / "config.json").read_text())
    assert cfg["_class_name"] == "RtdecodeTinyDecoder"
    assert cfg["image_encoder"]["registry_name"] == "efficientnet-lite0"
    assert cfg["image_encoder"]["dim"] == cfg["embed_dim"] == cfg["architecture"]["embed_dim"]
    assert cfg["training"]["steps"] == 2
    assert (tiny_dir / "scheduler" / "scheduler_config.json").is_file()
    norm = EmbeddingNormalizer.from_dict(
        json.loads((tiny_dir / "embedding_normalizer.json").read_text())
    )
    assert norm.dim == cfg["embed_dim"]
    state = json.loads((tiny_dir / "training" / "state.json").read_text())
    assert state["state"]["step"] == 2
    # Weights and optimizer state are safetensors; nothing is pickled.
    files = {p.suffix for p in tiny_dir.rglob("*") if p.is_file()}
    assert files <= {".json", ".safetensors"}
    dec = load_decoder(tiny_dir)
    assert dec.image_encoder == cfg["image_encoder"]["name"]
    assert dec.image_size == 64


def test_resume_continues_the_step_count_and_the_same_run(gallery_dir, tmp_path):
    from safetensors.torch import load_file

    kwargs = dict(device="cpu", batch_size=4, architecture=TINY_ARCH, progress=False, seed=1)
    straight = train_decoder(gallery_dir, tmp_path / "straight", max_steps=4, **kwargs)
    split = train_decoder(gallery_dir, tmp_path / "split", max_steps=2, **kwargs)
    with pytest.raises(FileExistsError, match="resume"):
        train_decoder(gallery_dir, split, max_steps=4, **kwargs)
    train_decoder(gallery_dir, split, max_steps=4, resume=True, **kwargs)

    assert json.loads((split / "training" / "state.json").read_text())["state"]["step"] == 4
    assert json.loads((split / "config.json").read_text())["training"]["steps"] == 4
    # Same seed, same data: the resumed run is the straight run, weight for weight.
    # The resume state (raw weights, optimizer moments, RNG) is the straight run's too.
    for name in ("model.safetensors", "training/state.safetensors"):
        a, b = load_file(straight / name), load_file(split / name)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)


def test_a_run_in_the_old_resume_layout_is_a_clear_error(gallery_dir, tmp_path):
    out = tmp_path / "old"
    (out / "training_state").mkdir(parents=True)
    (out / "training_state" / "state.json").write_text('{"step": 2, "param_groups": []}')
    for resume in (False, True):
        with pytest.raises(ValueError, match=r"earlier versions \(training_state/\).*new folder"):
            train_decoder(gallery_dir, out, max_steps=4, resume=resume, device="cpu")


def test_comparison_grid_is_written(tmp_path):
    pairs = [(Image.new("RGB", (40, 30), "red"), Image.new("RGB", (64, 64), "blue"))] * 3
    path = save_comparison_grid(
        pairs, tmp_path / "grid.png", columns=2, tile_px=32, labels=list("abc")
    )
    with Image.open(path) as img:
        assert img.width == 2 * (2 * 32 + 6) + 6


def test_bundled_demo_decoder_is_small_and_loads():
    from rtdecode.decoder.registry import BUNDLED_DECODERS

    folder = BUNDLED_DECODERS["demo"]
    if not (folder / "model.safetensors").is_file():
        pytest.skip("the demo decoder has not been trained into models/demo/decoder yet")
    size_mb = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 1e6
    assert size_mb <= 25.0
    dec = load_decoder("demo")
    assert dec.generate(_embedding(dec.embed_dim), seed=0, steps=4).size == (64, 64)


# ---------------------------------------------------------------- normaliser
def test_normalizer_maps_a_batch_onto_training_statistics():
    rng = np.random.default_rng(0)
    train = rng.normal(loc=[1.0, -2.0, 5.0], scale=[0.5, 2.0, 0.1], size=(500, 3))
    norm = EmbeddingNormalizer().fit(train)
    preds = rng.normal(loc=[0.0, 0.0, 0.0], scale=[0.01, 0.02, 0.03], size=(200, 3))  # shrunk
    out = norm.transform(preds)
    assert out.dtype == np.float32 and out.shape == preds.shape
    np.testing.assert_allclose(out.mean(axis=0), norm.mean, atol=1e-4)
    np.testing.assert_allclose(out.std(axis=0), norm.std, rtol=1e-4)


def test_normalizer_single_vector_without_and_with_source_stats():
    rng = np.random.default_rng(1)
    train = rng.normal(loc=3.0, scale=2.0, size=(400, 16))
    norm = EmbeddingNormalizer().fit(train)
    shrunk = norm.mean + 0.1 * (train[0] - norm.mean)  # a regression-style prediction
    out = norm.transform(shrunk)
    z = norm.standardize(out)
    assert np.sqrt(np.mean(z**2)) == pytest.approx(1.0, rel=1e-5)
    # Direction in standard units is kept, only the scale is undone.
    z_in = norm.standardize(shrunk)
    assert np.corrcoef(z, z_in)[0, 1] == pytest.approx(1.0, abs=1e-6)

    preds = rng.normal(loc=-1.0, scale=0.2, size=(100, 16))
    norm.fit_source(preds)
    x = preds[0]
    expected = norm.mean + norm.std * (x - norm.source_mean) / norm.source_std
    np.testing.assert_allclose(norm.transform(x), expected, rtol=1e-5)


def test_normalizer_round_trips_through_json_and_checks_dims():
    rng = np.random.default_rng(2)
    norm = EmbeddingNormalizer().fit(rng.normal(size=(10, 4))).fit_source(rng.normal(size=(10, 4)))
    again = EmbeddingNormalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    x = rng.normal(size=4)
    np.testing.assert_allclose(again.transform(x), norm.transform(x), rtol=1e-6)
    with pytest.raises(ValueError, match="dimension 5.*dimension 4"):
        norm.transform(np.zeros(5))
    with pytest.raises(RuntimeError, match="not fitted"):
        EmbeddingNormalizer().transform(x)


def test_fidelity_ranks_each_image_among_the_given_candidates(tiny_dir, gallery_dir):
    from rtdecode.images import Gallery, get_image_encoder
    from rtdecode.training.decoder import embedding_fidelity

    config = json.loads((tiny_dir / "config.json").read_text())
    encoder = get_image_encoder(config["image_encoder"]["registry_name"])
    gallery = Gallery.from_folder(gallery_dir)
    pool = list(gallery.ids[:4])
    fid = embedding_fidelity(
        load_decoder(tiny_dir), gallery, encoder, ids=pool[:2], candidates=pool, progress=False
    )
    assert fid.n_gallery == 4 and fid.n_images == 2 and set(fid.ranks) == set(pool[:2])
    assert set(fid.images) == set(pool[:2])
    assert all(1 <= r <= 4 for r in fid.ranks.values())
    assert fid.median_rank == float(np.median(list(fid.ranks.values())))
    summary = fid.as_dict()  # what bench/decoder.py writes: the numbers, no images
    assert "images" not in summary and "ranks" not in summary
    assert summary["top5"] == fid.top5 and summary["n_gallery"] == 4
    with pytest.raises(ValueError, match="not among the candidates"):
        embedding_fidelity(load_decoder(tiny_dir), gallery, encoder, ids=[gallery.ids[5]],
                           candidates=pool, progress=False)
