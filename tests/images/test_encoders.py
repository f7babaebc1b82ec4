"""Image encoders: one contract battery over every registered encoder, plus per-encoder
checks. transformers encoders are tiny random models saved to a temporary folder from
in-code configs and loaded back through get_image_encoder, as a user's folder would be."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from rtdecode.images import Gallery, get_image_encoder, list_image_encoders
from rtdecode.images.encoders import HandcraftedEncoder

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
torch.set_num_threads(1)

HIDDEN, PROJ, IMAGE_PX, PATCH_PX = 32, 16, 32, 8
N_TOKENS = 1 + (IMAGE_PX // PATCH_PX) ** 2  # CLS + 4 x 4 patches


def _images(n=3, seed=0):
    rng = np.random.default_rng(seed)
    ims = [
        Image.fromarray(rng.integers(0, 256, (40 + 7 * i, 50, 3), dtype=np.uint8)) for i in range(n)
    ]
    ims.append(Image.new("L", (30, 30), 128))  # grey, other mode, other size
    return ims


def _tiny_model(name, folder, processor_folder=None):
    """Save a tiny random ``name`` model and its image processor, as a user's folder."""
    import transformers as tf

    classes = {
        "dinov2": (tf.Dinov2Config, tf.Dinov2Model, tf.BitImageProcessor, {}),
        "clip-vision": (
            tf.CLIPVisionConfig,
            tf.CLIPVisionModelWithProjection,
            tf.CLIPImageProcessor,
            {"projection_dim": PROJ},
        ),
    }
    config_cls, model_cls, processor_cls, extra = classes[name]
    torch.manual_seed(0)
    config = config_cls(
        hidden_size=HIDDEN,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        image_size=IMAGE_PX,
        patch_size=PATCH_PX,
        **extra,
    )
    model_cls(config).save_pretrained(folder)
    processor = processor_cls(
        size={"shortest_edge": IMAGE_PX},
        crop_size={"height": IMAGE_PX, "width": IMAGE_PX},
        do_center_crop=True,
    )
    processor.save_pretrained(processor_folder or folder)
    return folder


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("models")
    return {
        "dinov2": _tiny_model("dinov2", root / "dinov2-tiny"),
        "clip-vision": _tiny_model("clip-vision", root / "clip-tiny"),
    }


# name, readout -> documented shape of one image's embedding
EXPECTED_SHAPES = {
    ("handcrafted", "cls"): (492,),
    ("efficientnet-lite0", "cls"): (1280,),
    ("dinov2", "cls"): (HIDDEN,),
    ("dinov2", "mean"): (HIDDEN,),
    ("dinov2", "grid"): (N_TOKENS, HIDDEN),
    ("clip-vision", "cls"): (PROJ,),
    ("clip-vision", "mean"): (PROJ,),
    ("clip-vision", "grid"): (N_TOKENS, HIDDEN),
}


def test_every_registered_encoder_is_covered():
    assert {name for name, _ in EXPECTED_SHAPES} == set(list_image_encoders())


@pytest.mark.parametrize(("name", "readout"), sorted(EXPECTED_SHAPES))
def test_encoder_contract(name, readout, model_dirs):
    enc = get_image_encoder(name, path=model_dirs.get(name), readout=readout)
    expected = EXPECTED_SHAPES[(name, readout)]
    assert enc.output_shape == expected
    assert enc.dim == expected[-1]
    assert readout in enc.name or name in ("handcrafted", "efficientnet-lite0")
    ims = _images()
    out = enc.encode(ims)
    assert out.dtype == np.float32 and out.shape == (len(ims), *expected)
    assert np.isfinite(out).all()
    # Deterministic, and batch-independent: one image alone gives the same row.
    np.testing.assert_allclose(enc.encode(ims), out, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(enc.encode(ims[1:2])[0], out[1], rtol=1e-4, atol=1e-5)
    # Different images, different embeddings.
    assert not np.allclose(out[0], out[1])
    assert enc.encode([]).shape == (0, *expected)


def test_names_identify_weights_and_readout(model_dirs, tmp_path):
    names = {
        get_image_encoder("dinov2", model_dirs["dinov2"], r).name for r in ("cls", "mean", "grid")
    }
    assert len(names) == 3
    assert all("dinov2-tiny" in n for n in names)
    other = _tiny_model(
        "clip-vision", tmp_path / "clip-tiny"
    )  # same folder name, same config: same weights size
    a = get_image_encoder("clip-vision", model_dirs["clip-vision"]).name
    b = get_image_encoder("clip-vision", other).name
    assert a == b  # a copy of the same model shares the gallery cache
    assert a != get_image_encoder("clip-vision", other, readout="mean").name


def _reference_outputs(name, folder, ims):
    """The model's own outputs, computed directly with transformers."""
    from transformers import AutoImageProcessor, AutoModel, CLIPVisionModelWithProjection

    cls = CLIPVisionModelWithProjection if name == "clip-vision" else AutoModel
    model = cls.from_pretrained(str(folder), local_files_only=True).eval()
    proc = AutoImageProcessor.from_pretrained(str(folder), local_files_only=True)
    with torch.inference_mode():
        out = model(**proc(images=[im.convert("RGB") for im in ims], return_tensors="pt"))
    if name == "clip-vision":
        patches = out.last_hidden_state[:, 1:].mean(dim=1)
        mean = model.visual_projection(model.vision_model.post_layernorm(patches))
        return {"cls": out.image_embeds, "mean": mean, "grid": out.last_hidden_state}
    h = out.last_hidden_state
    return {"cls": h[:, 0], "mean": h[:, 1:].mean(dim=1), "grid": h}


@pytest.mark.parametrize("name", ["dinov2", "clip-vision"])
def test_readouts_match_the_model(name, model_dirs):
    ims = _images(2)
    ref = _reference_outputs(name, model_dirs[name], ims)
    for readout, expected in ref.items():
        got = get_image_encoder(name, model_dirs[name], readout).encode(ims)
        np.testing.assert_allclose(got, expected.detach().numpy(), rtol=1e-5, atol=1e-5)


def test_clip_from_a_stable_unclip_pipeline_layout(tmp_path):
    root = tmp_path / "stable-unclip"
    _tiny_model("clip-vision", root / "image_encoder", root / "feature_extractor")
    enc = get_image_encoder("clip-vision", root)
    assert enc.output_shape == (PROJ,)
    assert enc.encode(_images(1)).shape == (2, PROJ)


@pytest.mark.parametrize("name", ["dinov2", "clip-vision"])
def test_missing_weights_is_a_clear_error(name, tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot be downloaded.*local folder"):
        get_image_encoder(name)
    with pytest.raises(FileNotFoundError, match=str(tmp_path / "absent")):
        get_image_encoder(name, path=tmp_path / "absent")


def test_folder_without_image_processor_is_a_clear_error(tmp_path):
    folder = _tiny_model("dinov2", tmp_path / "no-processor")
    (folder / "preprocessor_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        get_image_encoder("dinov2", folder)


def test_clip_encoder_rejects_a_dinov2_folder(model_dirs):
    with pytest.raises(ValueError, match="not CLIP"):
        get_image_encoder("clip-vision", model_dirs["dinov2"])


def test_unknown_name_and_readout():
    with pytest.raises(ValueError, match="handcrafted"):
        get_image_encoder("resnet")
    with pytest.raises(ValueError, match="readout"):
        get_image_encoder("handcrafted", readout="pooled")
    with pytest.raises(ValueError, match="readout='cls'"):
        get_image_encoder("handcrafted", readout="grid")


def test_handcrafted_parts_and_invariances():
    enc = HandcraftedEncoder()
    assert enc.name == "handcrafted-v1" and enc.dim == 492 == sum(enc._dims)
    ims = _images()
    out = enc.encode(ims)
    np.testing.assert_allclose(np.linalg.norm(out[:3], axis=1), 1.0, rtol=1e-5)
    # A flat grey image has no gradients: its HOG part is zero, not NaN.
    hog = out[3, enc._dims[0] : enc._dims[0] + enc._dims[1]]
    assert np.isfinite(out[3]).all() and not hog.any()
    # Same content at another size (after the centre crop): nearly the same features.
    big = ims[0].resize((100, 80))
    a, b = enc.encode([ims[0], big])
    assert float(a @ b) > 0.9
    # A red and a blue square differ only in the colour part.
    red, blue = enc.encode(
        [Image.new("RGB", (64, 64), (255, 0, 0)), Image.new("RGB", (64, 64), (0, 0, 255))]
    )
    n_col = enc._dims[0]
    assert not np.allclose(red[:n_col], blue[:n_col])
    np.testing.assert_allclose(red[n_col:], blue[n_col:], atol=1e-6)


def test_gallery_caches_grid_embeddings(model_dirs, tmp_path):
    for i, ims in enumerate(_images(3)):
        ims.convert("RGB").save(tmp_path / f"img_{i}.png")
    g = Gallery.from_folder(tmp_path)
    enc = get_image_encoder("dinov2", model_dirs["dinov2"], "grid")
    emb = g.embeddings(enc, progress=False)
    assert emb.shape == (4, N_TOKENS, HIDDEN)
    again = Gallery.from_folder(tmp_path).embeddings(enc, progress=False)
    np.testing.assert_array_equal(again, emb)
