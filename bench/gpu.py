"""GPU benchmark: the encoder, image-side and latency benchmarks' measures on one CUDA GPU.

    python bench/gpu.py                  # on a machine with CUDA; about 5 minutes at most
    python bench/gpu.py --dry-run-cpu    # every section at a tiny size on CPU (code paths)
    python bench/gpu.py --sections encoder unclip --compile

Sections, each in a child process with its own time limit (a hang or a crash costs that
section only; what it measured before is kept):

* ``encoder``: the brain encoder (``paper`` preset, 306 channels x 30 samples) forward
  latency at batch 1 and 64, fp32 and under ``torch.autocast`` in fp16 and bf16, with the
  cosine similarity of the autocast outputs to fp32.
* ``unclip``: a Stable unCLIP pipeline at the published size of
  stable-diffusion-2-1-unclip (``rtdecode.decoder.testing.UNCLIP_H_CONFIGS``) with
  RANDOM weights (nothing is downloaded; latency does not depend on weight values), fp16,
  wrapped in ``UnCLIPDecoder``: ms per 512 x 512 image from an image embedding at 1, 2 and
  4 steps without guidance, 4 steps with guidance 3; and the CLIP ViT-H/14 image encoder at
  batch 1 and 64. Target: <= 50 ms per image.
* ``e2e``: bench/latency.py's measurement (replay child -> in-process Service -> websocket
  client) with a tiny simulated subject and encoder trained here, the service on CUDA.

Prints a table and writes bench/results/gpu.json (``--dry-run-cpu``: gpu_dry_run_cpu.json)
and, when the ``OUT`` environment variable names a folder, ``$OUT/gpu.json``. Exit codes:
0 all sections ran, 1 a section failed or ran out of time, 2 no CUDA (or no torch).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import importlib.util
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import RESULTS_DIR, format_table, machine_info, percentiles, write_json  # noqa: E402

#: Seconds each section may take on a GPU (the whole run stays under 5 minutes).
BUDGET_S = {"encoder": 55.0, "unclip": 150.0, "e2e": 85.0}
#: Modules a section needs beyond torch and numpy (checked before it starts).
NEEDS = {
    "encoder": ("safetensors",),
    "unclip": ("diffusers", "transformers", "PIL"),
    "e2e": ("mne", "pylsl", "fastapi", "uvicorn", "websockets", "pydantic_settings", "scipy", "PIL"),
}
UNCLIP_TARGET_MS = 50.0

NO_CUDA_MESSAGE = (
    "bench/gpu.py: no CUDA device is visible to torch (torch.cuda.is_available() is False); "
    "run it on a machine with an NVIDIA GPU and torch's CUDA build, or pass --dry-run-cpu "
    "to check its code paths at a tiny size on CPU."
)


# ------------------------------------------------------------------ timing
class Clock:
    """Wall-clock timing of GPU work: synchronise before reading the time."""

    def __init__(self, device: str) -> None:
        import torch

        self.cuda = device.startswith("cuda")
        self._sync = torch.cuda.synchronize if self.cuda else (lambda: None)

    def time_calls(
        self, fn: Callable[[], Any], *, repeats: int, warmup: int, budget_s: float
    ) -> dict[str, Any]:
        """Per-call ms of ``fn`` (p50/p95/p99/mean/max), ``repeats`` calls after ``warmup``,
        stopping early (after at least 3) when ``budget_s`` is spent."""
        for _ in range(warmup):
            fn()
        self._sync()
        t_stop = time.monotonic() + budget_s
        times_ms = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            self._sync()
            times_ms.append((time.perf_counter() - t0) * 1e3)
            if len(times_ms) >= 3 and time.monotonic() > t_stop:
                break
        out = percentiles(times_ms)
        out["cut_short"] = len(times_ms) < repeats
        return out


def _autocast(device: str, dtype_name: str):
    import torch

    if dtype_name == "fp32":
        return contextlib.nullcontext()
    dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}[dtype_name]
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=dtype)


class Results:
    """A section's results, rewritten to disk after every measurement (kept if killed)."""

    def __init__(self, path: Path, section: str) -> None:
        self.path = path
        self.data: dict[str, Any] = {"section": section, "status": "running"}

    def __setitem__(self, key: str, value: Any) -> None:
        self.data[key] = value
        self.save()

    def save(self) -> None:
        write_json(self.path, self.data)


# ------------------------------------------------------------------ sections
def section_encoder(res: Results, device: str, tiny: bool) -> None:
    """Brain-encoder forward latency at batch 1 and 64 in fp32/fp16/bf16."""
    import torch

    from rtdecode.encoder import build_model, count_parameters

    preset, n_ch, n_t = ("test", 306, 30) if tiny else ("paper", 306, 30)
    batches = (1, 4) if tiny else (1, 64)
    repeats, cell_budget_s = (5, 2.0) if tiny else (200, 3.0)
    torch.manual_seed(0)
    positions = np.random.default_rng(0).uniform(-1, 1, size=(n_ch, 2))
    model = build_model(preset, n_ch, n_t, positions).to(device).eval()
    res["model"] = {"preset": preset, "n_channels": n_ch, "n_times": n_t,
                    "n_parameters": count_parameters(model)}
    clock = Clock(device)
    rows = []
    with torch.inference_mode():
        for batch in batches:
            x = torch.randn(batch, n_ch, n_t, device=device)
            subject = torch.zeros(batch, dtype=torch.long, device=device)
            reference = model(x, subject)["clip"].float()
            for dtype_name in ("fp32", "fp16", "bf16"):
                row: dict[str, Any] = {"batch": batch, "dtype": dtype_name}
                try:
                    with _autocast(device, dtype_name):
                        out = model(x, subject)["clip"].float()
                        row["latency_ms"] = clock.time_calls(
                            lambda x=x, s=subject: model(x, s), repeats=repeats,
                            warmup=3 if tiny else 20, budget_s=cell_budget_s,
                        )
                    cos = torch.nn.functional.cosine_similarity(
                        out.reshape(batch, -1), reference.reshape(batch, -1), dim=1
                    )
                    row["cosine_to_fp32_min"] = round(float(cos.min()), 5)
                    row["windows_per_s"] = round(batch * 1e3 / row["latency_ms"]["p50"], 1)
                except Exception as exc:  # e.g. an autocast dtype this device lacks
                    row["error"] = f"{type(exc).__name__}: {exc}"
                rows.append(row)
                res["rows"] = rows


def tiny_unclip_configs() -> dict[str, dict[str, Any]]:
    """UNCLIP_H_CONFIGS shrunk to toy size (same block types and schedulers) for CPU runs."""
    from rtdecode.decoder.testing import UNCLIP_H_CONFIGS

    cfg = copy.deepcopy(UNCLIP_H_CONFIGS)
    dim = 32
    cfg["unet"].update(
        sample_size=8, block_out_channels=[32, 64], layers_per_block=1, attention_head_dim=[2, 4],
        down_block_types=["CrossAttnDownBlock2D", "DownBlock2D"],
        up_block_types=["UpBlock2D", "CrossAttnUpBlock2D"],
        cross_attention_dim=dim, projection_class_embeddings_input_dim=2 * dim,
    )
    cfg["vae"].update(
        block_out_channels=[32, 64], layers_per_block=1, sample_size=32,
        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2,
    )
    small = dict(hidden_size=dim, intermediate_size=37, num_hidden_layers=1, num_attention_heads=4,
                 projection_dim=dim)
    # tiny_clip_tokenizer: 514 tokens, <|startoftext|> = 512, <|endoftext|> = 513.
    cfg["text_encoder"].update(small, vocab_size=1000, bos_token_id=512, eos_token_id=513)
    cfg["image_encoder"].update(small, image_size=32, patch_size=16)
    cfg["image_normalizer"] = {"embedding_dim": dim}
    return cfg


def section_unclip(res: Results, device: str, tiny: bool, compile: bool) -> None:
    """Stable unCLIP (published size, random weights) per-image latency and CLIP ViT-H."""
    import torch

    from rtdecode.decoder.pipelines import UnCLIPDecoder
    from rtdecode.decoder.testing import build_unclip_from_config

    dtype = torch.float32 if tiny else torch.float16
    size = 32 if tiny else 512
    repeats, budget_s = (2, 2.0) if tiny else (30, 12.0)
    t0 = time.perf_counter()
    pipe = build_unclip_from_config(tiny_unclip_configs() if tiny else None, dtype=dtype, device=device)
    dec = UnCLIPDecoder(pipe, device=device, guidance_scale=1.0, image_size=size, compile=compile)
    res["build_s"] = round(time.perf_counter() - t0, 2)
    res["pipeline"] = {
        "configs": "tiny (UNCLIP_H_CONFIGS shrunk)" if tiny else "UNCLIP_H_CONFIGS (stable-diffusion-2-1-unclip shapes)",
        "weights": "random",
        "dtype": str(dtype).removeprefix("torch."),
        "image_size": size,
        "embed_dim": dec.embed_dim,
        "scheduler": type(pipe.scheduler).__name__ + " (trailing timesteps)",
        "compile": compile,
        "n_parameters": {
            name: sum(p.numel() for p in getattr(pipe, name).parameters())
            for name in ("unet", "vae", "text_encoder", "image_encoder")
        },
    }
    emb = np.random.default_rng(0).standard_normal(dec.embed_dim).astype(np.float32)
    clock = Clock(device)
    rows = []
    cases = [(1, 1.0), (2, 1.0), (4, 1.0), (4, 3.0)]
    for steps, guidance in cases:
        row: dict[str, Any] = {"steps": steps, "guidance_scale": guidance}
        try:
            row["latency_ms"] = clock.time_calls(
                lambda s=steps, g=guidance: dec.generate(emb, seed=0, steps=s, guidance_scale=g),
                repeats=repeats, warmup=1 if tiny else 3, budget_s=budget_s,
            )
            row["images_per_s"] = round(1e3 / row["latency_ms"]["p50"], 2)
            row["target_ms"] = UNCLIP_TARGET_MS
            row["target_met"] = row["latency_ms"]["p50"] <= UNCLIP_TARGET_MS
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"
        rows.append(row)
        res["generate"] = rows
    # The image side of the gallery: CLIP ViT-H/14 embeddings (what a real gallery needs).
    vision = pipe.image_encoder
    side = vision.config.image_size
    enc_rows = []
    with torch.inference_mode():
        for batch in (1, 4) if tiny else (1, 64):
            pixels = torch.randn(batch, 3, side, side, device=device, dtype=dtype)
            lat = clock.time_calls(lambda p=pixels: vision(pixel_values=p), repeats=repeats * 3,
                                   warmup=1 if tiny else 5, budget_s=budget_s / 3)
            enc_rows.append({"batch": batch, "image_size": side, "latency_ms": lat,
                             "images_per_s": round(batch * 1e3 / lat["p50"], 1)})
            res["image_encoder"] = enc_rows
    if clock.cuda:
        res["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)


def section_e2e(res: Results, device: str, tiny: bool) -> None:
    """bench/latency.py's end-to-end measurement with a tiny subject, service on ``device``."""
    from latency import build_tiny_inputs, measure, summarise

    duration_s, warmup_s = (6.0, 2.0) if tiny else (20.0, 3.0)
    with tempfile.TemporaryDirectory(prefix="rtdecode-gpu-e2e-") as tmp:
        t0 = time.perf_counter()
        inputs = build_tiny_inputs(Path(tmp), device)
        res["build_s"] = round(time.perf_counter() - t0, 2)
        m = measure(inputs, duration_s=duration_s, warmup_s=warmup_s, device=device, progress=False)
    import torch

    config = {"duration_s": duration_s, "warmup_s": warmup_s, "hop_s": 0.05, "device": device,
              "chunk_ms": m["chunk_ms"], "sfreq_hz": m["sfreq_hz"], "torch": torch.__version__}
    report = summarise(m, config, inputs)
    report.pop("_series")
    for key in ("config", "inputs", "frames", "windows", "latency_ms", "overhead_ratio", "drift", "targets", "clock"):
        res[key] = report[key]


SECTIONS = {"encoder": section_encoder, "unclip": section_unclip, "e2e": section_e2e}


def run_section_child(args: argparse.Namespace) -> int:
    """Child process: run one section, its results saved as it goes."""
    import torch

    if args.dry_run_cpu:
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    device = "cpu" if args.dry_run_cpu else "cuda"
    res = Results(args.child_json, args.section)
    kwargs: dict[str, Any] = {"compile": args.compile} if args.section == "unclip" else {}
    try:
        SECTIONS[args.section](res, device, args.dry_run_cpu, **kwargs)
    except Exception as exc:
        res.data["status"] = "failed"
        res["error"] = f"{type(exc).__name__}: {exc}"
        raise
    res.data["status"] = "ok"
    res.save()
    return 0


# ------------------------------------------------------------------ parent
def device_info(dry_run: bool) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"torch": torch.__version__, "cuda_build": torch.version.cuda}
    if not dry_run:
        props = torch.cuda.get_device_properties(0)
        info.update(
            gpu=props.name,
            gpu_memory_gib=round(props.total_memory / 2**30, 1),
            multiprocessors=props.multi_processor_count,
            capability=f"{props.major}.{props.minor}",
        )
    return info


def run_section(name: str, args: argparse.Namespace, budget_s: float) -> dict[str, Any]:
    """Run one section in a child process group; kill the group when ``budget_s`` runs out."""
    missing = [m for m in NEEDS[name] if importlib.util.find_spec(m) is None]
    if missing:
        return {
            "section": name,
            "status": "skipped",
            "error": f"Python modules missing: {', '.join(missing)}. Install rtdecode's "
            "dependencies (or carry their wheels to this machine, see docs/latency.md) and rerun.",
        }
    out = Path(tempfile.mkstemp(prefix=f"rtdecode-gpu-{name}-", suffix=".json")[1])
    cmd = [sys.executable, str(Path(__file__).resolve()), "--section", name, "--child-json", str(out)]
    if args.dry_run_cpu:
        cmd.append("--dry-run-cpu")
    if args.compile:
        cmd.append("--compile")
    env = dict(os.environ, LSLAPICFG=str(ROOT / "rtdecode" / "lsl" / "lsl_local.cfg"), PYTHONUNBUFFERED="1")
    print(f"\n== {name} (at most {budget_s:.0f} s)", flush=True)
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdin=subprocess.DEVNULL, start_new_session=True)
    timed_out = False
    try:
        proc.wait(budget_s)
    except subprocess.TimeoutExpired:
        timed_out = True
        # The whole group: the e2e section's replay child goes too.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    result: dict[str, Any] = {"section": name}
    with contextlib.suppress(OSError, ValueError):
        result = json.loads(out.read_text())
    out.unlink(missing_ok=True)
    result["wall_s"] = round(time.monotonic() - t0, 1)
    if timed_out:
        result["status"] = "timed_out"
        result["error"] = f"The section ran past its {budget_s:.0f} s limit and was stopped; the numbers above it are kept."
    elif proc.returncode != 0:
        result["status"] = "failed"
        result.setdefault("error", f"The section's process exited with code {proc.returncode}.")
    return result


def print_summary(report: dict[str, Any]) -> None:
    rows = []
    enc = report["sections"].get("encoder", {})
    for r in enc.get("rows", []):
        lat = r.get("latency_ms", {})
        rows.append([f"encoder {enc['model']['preset']} b{r['batch']} {r['dtype']}",
                     lat.get("p50"), lat.get("p99"), r.get("windows_per_s"), r.get("error", "")[:40]])
    unc = report["sections"].get("unclip", {})
    size = unc.get("pipeline", {}).get("image_size")
    for r in unc.get("generate", []):
        lat = r.get("latency_ms", {})
        note = r.get("error", "")[:40] or (
            f"target {UNCLIP_TARGET_MS:g} ms {'met' if r.get('target_met') else 'NOT met'}")
        rows.append([f"unclip {size}px {r['steps']} steps cfg {r['guidance_scale']:g}",
                     lat.get("p50"), lat.get("p99"), r.get("images_per_s"), note])
    for r in unc.get("image_encoder", []):
        lat = r["latency_ms"]
        rows.append([f"image encoder b{r['batch']} {r['image_size']}px", lat.get("p50"),
                     lat.get("p99"), r.get("images_per_s"), ""])
    e2e = report["sections"].get("e2e", {})
    for key in ("end_to_end", "compute"):
        lat = e2e.get("latency_ms", {}).get(key)
        if lat:
            rows.append([f"service {key.replace('_', ' ')}", lat.get("p50"), lat.get("p99"),
                         e2e.get("frames", {}).get("per_s"), ""])
    print("\n" + format_table(["measure", "p50 ms", "p99 ms", "per s", "note"], rows))
    for name, sec in report["sections"].items():
        print(f"{name}: {sec.get('status')} in {sec.get('wall_s', 0)} s"
              + (f" -- {sec['error']}" if sec.get("error") else ""))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dry-run-cpu", action="store_true",
                   help="run every section at a tiny size on CPU (checks the code paths)")
    p.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the unCLIP UNet (compile time counts against the section)")
    p.add_argument("--json", type=Path, default=None,
                   help="default bench/results/gpu.json (gpu_dry_run_cpu.json with --dry-run-cpu)")
    p.add_argument("--section", choices=list(SECTIONS), default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-json", type=Path, default=None, help=argparse.SUPPRESS)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.section is not None:
        return run_section_child(args)
    try:
        import torch
    except ImportError:
        print("bench/gpu.py: torch is not installed; install torch's CUDA build.", file=sys.stderr)
        return 2
    if not args.dry_run_cpu and not torch.cuda.is_available():
        print(NO_CUDA_MESSAGE, file=sys.stderr)
        return 2
    t0 = time.monotonic()
    report: dict[str, Any] = {
        "benchmark": "gpu",
        "dry_run_cpu": args.dry_run_cpu,
        "machine": {**machine_info(), **device_info(args.dry_run_cpu)},
        "sections": {},
    }
    for name in args.sections:
        # Dry runs get generous limits: the shared CPU machine is slow, not hung.
        budget_s = BUDGET_S[name] * (4 if args.dry_run_cpu else 1)
        report["sections"][name] = run_section(name, args, budget_s)
    report["wall_s"] = round(time.monotonic() - t0, 1)
    path = args.json or RESULTS_DIR / ("gpu_dry_run_cpu.json" if args.dry_run_cpu else "gpu.json")
    write_json(path, report)
    written = [str(path)]
    if os.environ.get("OUT"):
        written.append(str(write_json(Path(os.environ["OUT"]) / path.name, report)))
    print_summary(report)
    print(f"total {report['wall_s']} s; wrote {', '.join(written)}")
    ok = all(s.get("status") == "ok" for s in report["sections"].values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
