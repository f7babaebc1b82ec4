"""Decoder benchmark: per-image latency of the demo decoder on CPU, retrieval latency on the
same gallery, and (with --fidelity) how well generated images keep their embedding.

Run:  .venv/bin/python bench/decoder.py                      (latency only, ~1 minute)
      .venv/bin/python bench/decoder.py --fidelity           (+ embedding fidelity over the
                                                               whole demo gallery and the
                                                               docs/diffusion_grid.png grid)
      .venv/bin/python bench/decoder.py --decoder DIR --gallery DIR --threads 1 2
      .venv/bin/python bench/decoder.py --gallery data/sim/images --fidelity --fidelity-set test
                                                             (the demo's: the 200 test concepts)

Latency: ``decoder.generate(embedding, seed, steps)`` for one 64 x 64 image, p50 / p99 /
min over ``--repeats`` calls after a warm-up, each call with another gallery embedding and
seed; also the img2img start (``strength=0.6``: 2 of the 4 steps run). Retrieval:
``Retrieval.topk(vec, k=5)`` on the gallery's embeddings. Fidelity: for each gallery image,
generate from its true embedding, embed the result with the same image encoder and rank the
true image among the whole gallery, or with ``--fidelity-set test`` generate from each test
image of the gallery (``split`` = ``test`` in its gallery.csv: the image world's 200 test
concepts) and rank it among those test images, the set the demo retrieves from (cosine,
``Retrieval.rank_of``); reported as the rank, the share of the candidates the true image
beats (percentile) and the share of images for which that is at least 90 %. Writes
bench/results/decoder.json (or ``--json``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import machine_info, write_json  # noqa: E402  (bench/common.py, beside this script)

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _percentiles_ms(times_s: list[float]) -> dict[str, float]:
    t = np.asarray(times_s) * 1e3
    return {
        "p50_ms": round(float(np.percentile(t, 50)), 2),
        "p99_ms": round(float(np.percentile(t, 99)), 2),
        "min_ms": round(float(t.min()), 2),
        "n": int(t.size),
    }


def _timed(fn, inputs: list, warmup: int = 3) -> dict[str, float]:
    for x in inputs[:warmup]:
        fn(x)
    times = []
    for x in inputs:
        t0 = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t0)
    return _percentiles_ms(times)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--decoder", default="demo", help="decoder folder or bundled name")
    p.add_argument("--gallery", type=Path, default=None, help="default: a fresh demo gallery")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--repeats", type=int, default=60)
    p.add_argument("--threads", type=int, nargs="+", default=[2])
    p.add_argument("--fidelity", action="store_true", help="also measure embedding fidelity")
    p.add_argument(
        "--fidelity-set",
        choices=["all", "test"],
        default="all",
        help="generate from and rank among every gallery image, or the test split's only",
    )
    p.add_argument(
        "--guidance",
        type=float,
        nargs="+",
        default=None,
        help="guidance scales to measure (default: the decoder's own); the first one makes the grid",
    )
    p.add_argument("--grid", type=Path, default=ROOT / "docs" / "diffusion_grid.png")
    p.add_argument("--json", type=Path, default=ROOT / "bench" / "results" / "decoder.json")
    args = p.parse_args(argv)

    import torch

    from rtdecode.decoder.registry import load_decoder, resolve_decoder_path
    from rtdecode.images import Gallery, get_image_encoder, make_demo_gallery
    from rtdecode.training.decoder import embedding_fidelity, save_comparison_grid

    tmp = None
    if args.gallery is None:
        tmp = tempfile.TemporaryDirectory(prefix="rtdecode-bench-gallery-")
        gallery = make_demo_gallery(Path(tmp.name) / "gallery", seed=0)
        gallery_desc = "demo gallery (make_demo_gallery, seed 0)"
    else:
        gallery = Gallery.from_folder(args.gallery)
        gallery_desc = str(args.gallery)

    decoder = load_decoder(args.decoder, device="cpu")
    folder = resolve_decoder_path(args.decoder)
    config = (
        json.loads((folder / "config.json").read_text())
        if (folder / "config.json").is_file()
        else {}
    )
    encoder_name = config.get("image_encoder", {}).get("registry_name", "handcrafted")
    encoder = get_image_encoder(encoder_name)
    emb = np.asarray(gallery.embeddings(encoder, progress=False), dtype=np.float32)
    n = min(args.repeats, len(emb))
    rng = np.random.default_rng(0)
    rows = rng.choice(len(emb), size=n, replace=False)
    init_image = gallery.image(gallery.ids[0])

    results: dict = {
        "benchmark": "decoder",
        "decoder": decoder.name,
        "decoder_folder": str(folder.relative_to(ROOT) if folder.is_relative_to(ROOT) else folder),
        "image_size": decoder.image_size,
        "embed_dim": decoder.embed_dim,
        "image_encoder": encoder.name,
        "gallery": gallery_desc,
        "n_gallery": len(gallery),
        "steps": args.steps,
        "device": "cpu",
        "dtype": "float32",
        "torch": torch.__version__,
        "machine": machine_info(),
        "load_average_before": list(os.getloadavg()),
        "latency": [],
    }
    checkpoint_mb = sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) / 1e6
    results["checkpoint_mb"] = round(checkpoint_mb, 2)

    scales = args.guidance or [decoder.guidance_scale]
    results["guidance_scales"] = scales
    results["guidance_min_timestep"] = getattr(decoder, "guidance_min_timestep", None)
    for threads in args.threads:
        torch.set_num_threads(threads)
        row = {"threads": threads}
        for g in scales:
            row[f"generate_g{g:g}"] = _timed(
                lambda i, g=g: decoder.generate(
                    emb[i], seed=int(i), steps=args.steps, guidance_scale=g
                ),
                list(rows),
            )
        row[f"generate_img2img_0.6_g{scales[0]:g}"] = _timed(
            lambda i: decoder.generate(
                emb[i],
                seed=int(i),
                steps=args.steps,
                init_image=init_image,
                strength=0.6,
                guidance_scale=scales[0],
            ),
            list(rows),
        )
        try:
            from rtdecode.decoder.retrieval import Retrieval
        except ImportError:
            Retrieval = None
        if Retrieval is not None:
            retrieval = Retrieval(emb, gallery.ids)
            queries = [
                emb[i] + 0.01 * rng.standard_normal(emb.shape[1]).astype(np.float32) for i in rows
            ]
            row["retrieval_topk5"] = _timed(lambda q, r=retrieval: r.topk(q, k=5), queries * 5)
        results["latency"].append(row)

    if args.fidelity:
        torch.set_num_threads(max(args.threads))
        results["fidelity"] = []
        fid_ids = None
        if args.fidelity_set == "test":
            from rtdecode.images.world import read_world_table

            fid_ids = [r.id for r in read_world_table(gallery.root / "gallery.csv")
                       if r.split == "test"]
            if not fid_ids:
                raise SystemExit(f"{gallery.root}/gallery.csv has no test rows (split = test).")
        results["fidelity_set"] = args.fidelity_set
        default_scale = decoder.guidance_scale
        for k, g in enumerate(scales):
            decoder.guidance_scale = g
            t0 = time.perf_counter()
            fidelity = embedding_fidelity(
                decoder, gallery, encoder, ids=fid_ids, candidates=fid_ids, steps=args.steps,
                progress=True,
            )
            images, ranks = fidelity.images, fidelity.ranks
            fid = fidelity.as_dict()
            fid["guidance_scale"] = g
            fid["seconds"] = round(time.perf_counter() - t0, 1)
            fid["worst"] = sorted(ranks.items(), key=lambda kv: -kv[1])[:5]
            if k == 0:
                # The grid: the first two images of every category (of at most 12), or
                # 24 images spread over a larger set.
                picks: list[str] = []
                pool = fid_ids if fid_ids is not None else list(gallery.ids)
                if fid_ids is None and len(set(gallery.categories)) <= 12:
                    for cat in sorted(set(gallery.categories)):
                        picks += [
                            i for i, c in zip(gallery.ids, gallery.categories, strict=True)
                            if c == cat
                        ][:2]
                else:
                    picks = [pool[j] for j in np.linspace(0, len(pool) - 1, 24).astype(int)]
                save_comparison_grid(
                    [(gallery.image(i), images[i]) for i in picks],
                    args.grid,
                    columns=4,
                    labels=[f"{i}  rank {ranks[i]}" for i in picks],
                )
                grid = args.grid
                fid["grid"] = str(grid.relative_to(ROOT) if grid.is_relative_to(ROOT) else grid)
            results["fidelity"].append(fid)
        decoder.guidance_scale = default_scale

    results["load_average_after"] = list(os.getloadavg())
    write_json(args.json, results)
    if tmp is not None:
        tmp.cleanup()

    print(
        f"decoder {results['decoder']}  ({results['image_size']}x{results['image_size']}, "
        f"{args.steps} steps, checkpoint {results['checkpoint_mb']} MB, CPU float32)"
    )
    print(f"{'threads':>7}  {'stage':<28} {'p50 ms':>8} {'p99 ms':>8} {'min ms':>8}")
    for row in results["latency"]:
        for stage, s in row.items():
            if stage != "threads":
                print(
                    f"{row['threads']:>7}  {stage:<28} {s['p50_ms']:>8.2f} {s['p99_ms']:>8.2f} "
                    f"{s['min_ms']:>8.2f}"
                )
    for f in results.get("fidelity", []):
        print(
            f"fidelity (guidance {f['guidance_scale']:g}) over {f['n_images']} images among "
            f"{f['n_gallery']}: median rank {f['median_rank']:g}, mean "
            f"percentile {f['mean_percentile']:.3f}, median {f['median_percentile']:.3f}, "
            f">= 90 % for {f['share_at_least_90']:.1%} of images, top-1 {f['top1']:.1%}, "
            f"top-5 {f['top5']:.1%}"
        )
    print(
        f"load average before/after: {results['load_average_before'][0]:.2f} / "
        f"{results['load_average_after'][0]:.2f}; wrote {args.json}"
    )
    return results


if __name__ == "__main__":
    main()
