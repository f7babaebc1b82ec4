"""GPU benchmark: what `rtdecode serve` runs, on one CUDA GPU, in one run under 8 minutes.

    python bench/gpu.py                      # on a machine with CUDA (at most TOTAL_BUDGET_S)
    python bench/gpu.py --tiny --device cpu  # every section at toy size on CPU (code paths)
    python bench/gpu.py --sections encoder turbo --compile

Sections, each in a child process with its own time limit (a hang or a crash costs that
section only; what it measured before is kept):

* ``encoder``: the brain encoder (``paper`` preset, 306 channels x 30 samples), one window
  host array -> host vectors at batch 1 through ``rtdecode.encoder.runner.EncoderRunner``,
  what the worker's lane 1 runs: fp32, bf16 and fp16 autocast, eager and replaying a CUDA
  graph, with a pinned window buffer and ONE pinned device-to-host copy of both heads
  (serve's default on CUDA: bf16 where the GPU has it, with the graph). Target <= 1 ms.
  Batch 64 forward throughput. Cosine of each row's output to the fp32 row.
* ``turbo``: SDXL-Turbo + IP-Adapter (``rtdecode.decoder.turbo.SDXL_TURBO_CONFIGS``, RANDOM
  weights: latency does not depend on weight values), serve's dtype rule (bf16 on GPUs
  that have it), 512 px, guidance 0, no compile: 1 step with the tiny VAE (target >= 15
  images/s), 2 steps, serve's default ``diffusion_steps``, and 1 step with the full VAE.
* ``unclip``: Stable unCLIP at stable-diffusion-2-1-unclip's size (random weights) exactly
  as serve loads it (``UnCLIPDecoder`` defaults: 768 px, guidance 3; Settings' steps;
  serve's dtype; no compile), then 512 px without guidance at 1 and 4 steps; and the CLIP
  ViT-H/14 image encoder at batch 1 and 64.
* ``e2e``: bench/latency.py's measurement (replay child -> in-process Service -> websocket
  client) with a tiny simulated subject and encoder trained here, the service on CUDA.

``--compile`` adds ``torch.compile`` to the Turbo and unCLIP UNets (serve does not compile).

Prints a table and writes bench/results/gpu.json (on CPU: gpu_dry_run_cpu.json) and, when
the ``OUT`` environment variable names a folder, ``$OUT/gpu.json``. Without CUDA it says so,
writes ``{"status": "skipped: no CUDA"}`` and exits 0. Exit codes: 0 all sections ran (or
no CUDA), 1 a section failed or ran out of time.
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
BUDGET_S = {"encoder": 60.0, "turbo": 150.0, "unclip": 130.0, "e2e": 85.0}
#: The whole GPU run (process starts included) stays under 8 minutes.
TOTAL_BUDGET_S = 460.0
#: CPU runs get generous limits: the shared CPU machine is slow, not hung.
CPU_BUDGET_FACTOR = 4
#: Modules a section needs beyond torch and numpy (checked before it starts).
NEEDS = {
    "encoder": ("safetensors",),
    "turbo": ("diffusers", "transformers", "PIL", "safetensors"),
    "unclip": ("diffusers", "transformers", "PIL"),
    "e2e": ("mne", "pylsl", "fastapi", "uvicorn", "websockets", "pydantic_settings", "scipy", "PIL"),
}
UNCLIP_TARGET_MS = 50.0
TURBO_TARGET_MS = 1e3 / 15  # >= 15 images/s
ENCODER_TARGET_MS = 1.0

NO_CUDA_MESSAGE = (
    "bench/gpu.py: no CUDA device is visible to torch (torch.cuda.is_available() is False); "
    "nothing was measured (exit code 0). Run it on a machine with an NVIDIA GPU and torch's "
    "CUDA build, or pass --tiny --device cpu to check its code paths at a tiny size on CPU."
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
def _encoder_window_fn(model, device: str, n_ch: int, n_t: int, dtype_name: str, graph: bool):
    """One window as serve runs it: rtdecode.encoder.runner.EncoderRunner, the worker's
    lane-1 path (host array in, both heads' vectors out on the host; on CUDA a pinned
    window buffer, autocast, a CUDA graph when ``graph``, ONE pinned device-to-host copy).

    Returns ``(fn, outputs, describe)``: ``fn()`` runs one window, ``outputs()`` its last
    result as one vector, ``describe`` what ran.
    """
    from rtdecode.encoder.runner import EncoderRunner

    window = np.random.default_rng(1).standard_normal((n_ch, n_t)).astype(np.float32)
    runner = EncoderRunner(model, device, n_ch, n_t, precision=dtype_name,
                           cuda_graph=graph if device.startswith("cuda") else (graph or None))
    last: dict[str, np.ndarray] = {}

    def one_window() -> None:
        last["v"] = np.concatenate(runner(window))

    return one_window, lambda: last["v"], runner.describe()


def section_encoder(res: Results, device: str, tiny: bool) -> None:
    """Brain encoder: one window host-to-host at batch 1 through serve's EncoderRunner at
    each precision, eager and as a CUDA graph; batch 64 forward throughput."""
    import torch

    from rtdecode.encoder import build_model, count_parameters
    from rtdecode.encoder.runner import autocast

    preset, n_ch, n_t = ("test", 306, 30) if tiny else ("paper", 306, 30)
    repeats, cell_budget_s = (5, 2.0) if tiny else (300, 3.0)
    torch.manual_seed(0)
    positions = np.random.default_rng(0).uniform(-1, 1, size=(n_ch, 2))
    model = build_model(preset, n_ch, n_t, positions).to(device).eval()
    res["model"] = {"preset": preset, "n_channels": n_ch, "n_times": n_t,
                    "n_parameters": count_parameters(model)}
    res["target_ms"] = ENCODER_TARGET_MS
    clock = Clock(device)
    rows = []
    # serve's default on CUDA: --encoder-precision auto (bf16 where the GPU has it) with a
    # CUDA graph; fp32 without a graph is the path before the runner.
    cases = [("fp32", False, "fp32 eager"), ("fp32", True, "")] + [
        (d, g, "serve default" if (d, g) == ("bf16", True) else "")
        for g in (False, True) for d in ("bf16", "fp16")
    ]
    with torch.inference_mode():
        reference = None
        for dtype_name, graph, note in cases:
            row: dict[str, Any] = {"batch": 1, "dtype": dtype_name, "cuda_graph": graph,
                                   "scope": "host window -> host vectors", "note": note}
            try:
                fn, outputs, row["runner"] = _encoder_window_fn(
                    model, device, n_ch, n_t, dtype_name, graph)
                row["latency_ms"] = clock.time_calls(fn, repeats=repeats, warmup=3 if tiny else 20,
                                                     budget_s=cell_budget_s)
                vec = outputs()
                if reference is None:
                    reference = vec
                cos = float(vec @ reference / (np.linalg.norm(vec) * np.linalg.norm(reference) + 1e-12))
                row["cosine_to_fp32"] = round(cos, 5)
                row["windows_per_s"] = round(1e3 / row["latency_ms"]["p50"], 1)
                row["target_met"] = row["latency_ms"]["p50"] <= ENCODER_TARGET_MS
            except Exception as exc:  # e.g. no CUDA graphs on CPU, an unsupported dtype
                row["error"] = f"{type(exc).__name__}: {exc}"
            rows.append(row)
            res["rows"] = rows
        # Throughput at batch 64 (offline evaluation), forward only.
        batch = 4 if tiny else 64
        x = torch.randn(batch, n_ch, n_t, device=device)
        subject = torch.zeros(batch, dtype=torch.long, device=device)
        for dtype_name in ("fp32", "bf16"):
            row = {"batch": batch, "dtype": dtype_name, "cuda_graph": False, "scope": "forward"}
            try:
                with autocast(device, dtype_name):
                    row["latency_ms"] = clock.time_calls(
                        lambda: model(x, subject), repeats=repeats, warmup=3 if tiny else 10,
                        budget_s=cell_budget_s)
                row["windows_per_s"] = round(batch * 1e3 / row["latency_ms"]["p50"], 1)
            except Exception as exc:
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


def serve_defaults() -> dict[str, Any]:
    """What ``rtdecode serve`` runs a decoder with: Settings' steps and seed,
    ``load_decoder``'s dtype rule and no ``torch.compile`` (service.py calls
    ``load_decoder(name, device=device)``), and each decoder class's own defaults."""
    from rtdecode.config import Settings

    fields = Settings.model_fields
    return {"steps": fields["diffusion_steps"].default, "seed": fields["seed"].default,
            "compile": False, "max_fps": fields["max_fps"].default}


def _record_decoder(res: Results, dec: Any, serve: dict[str, Any], *,
                    n_parameters: dict[str, Any], **pipeline: Any) -> None:
    """The section's ``serve`` settings and ``pipeline`` description (random weights)."""
    dtype = str(dec.dtype).removeprefix("torch.")
    res["serve"] = {**serve, "dtype": dtype, "image_size": dec.image_size,
                    "guidance_scale": dec.guidance_scale}
    res["pipeline"] = {**pipeline, "weights": "random", "dtype": dtype, "embed_dim": dec.embed_dim,
                       "n_parameters": {name: sum(p.numel() for p in module.parameters())
                                        for name, module in n_parameters.items()}}


def _time_generate(res: Results, key: str, dec: Any, cases: list[dict[str, Any]], *,
                   tiny: bool, target_ms: float, device: str) -> None:
    """Rows of ms per image for ``dec.generate`` over ``cases`` (kwargs + a label)."""
    emb = np.random.default_rng(0).standard_normal(dec.embed_dim).astype(np.float32)
    clock = Clock(device)
    repeats, budget_s = (2, 2.0) if tiny else (40, 10.0)
    rows = res.data.get(key, [])
    for case in cases:
        kwargs = {k: v for k, v in case.items() if k not in ("label", "decoder")}
        row: dict[str, Any] = {"label": case["label"], "image_size": dec.image_size,
                               "guidance_scale": kwargs.get("guidance_scale", dec.guidance_scale),
                               "steps": kwargs["steps"], **case.get("decoder", {})}
        try:
            row["latency_ms"] = clock.time_calls(
                lambda kw=kwargs: dec.generate(emb, seed=0, **kw),
                repeats=repeats, warmup=2 if tiny else 3, budget_s=budget_s,
            )
            row["images_per_s"] = round(1e3 / row["latency_ms"]["p50"], 2)
            row["target_ms"] = target_ms
            row["target_met"] = row["latency_ms"]["p50"] <= target_ms
        except Exception as exc:
            row["error"] = f"{type(exc).__name__}: {exc}"
        rows.append(row)
        res[key] = rows


def section_unclip(res: Results, device: str, tiny: bool, compile: bool) -> None:
    """Stable unCLIP (published size, random weights) as serve runs it, faster settings
    for comparison, and the CLIP ViT-H/14 image encoder."""
    import torch

    from rtdecode.decoder.base import default_dtype
    from rtdecode.decoder.pipelines import UnCLIPDecoder
    from rtdecode.decoder.testing import build_unclip_from_config

    serve = serve_defaults()
    dtype = default_dtype(torch.device(device))
    t0 = time.perf_counter()
    pipe = build_unclip_from_config(tiny_unclip_configs() if tiny else None, dtype=dtype, device=device)
    dec = UnCLIPDecoder(pipe, device=device)  # serve's settings: the class defaults
    res["build_s"] = round(time.perf_counter() - t0, 2)
    _record_decoder(
        res, dec, serve,
        configs="tiny (UNCLIP_H_CONFIGS shrunk)" if tiny else "UNCLIP_H_CONFIGS (stable-diffusion-2-1-unclip shapes)",
        scheduler=type(pipe.scheduler).__name__ + " (trailing timesteps)",
        n_parameters={name: getattr(pipe, name)
                      for name in ("unet", "vae", "text_encoder", "image_encoder")},
    )
    _time_generate(res, "generate", dec, [{"label": "serve", "steps": serve["steps"]}],
                   tiny=tiny, target_ms=UNCLIP_TARGET_MS, device=device)
    small = 32 if tiny else 512
    fast = UnCLIPDecoder(pipe, device=device, guidance_scale=1.0, image_size=small, compile=compile)
    _time_generate(res, "generate", fast, [
        {"label": f"{small}px no guidance", "steps": s, "decoder": {"compile": compile}} for s in (1, 4)
    ], tiny=tiny, target_ms=UNCLIP_TARGET_MS, device=device)
    # The image side of the gallery: CLIP ViT-H/14 embeddings (what a real gallery needs).
    clock = Clock(device)
    vision = pipe.image_encoder
    side = vision.config.image_size
    enc_rows = []
    with torch.inference_mode():
        for batch in (1, 4) if tiny else (1, 64):
            pixels = torch.randn(batch, 3, side, side, device=device, dtype=dtype)
            lat = clock.time_calls(lambda p=pixels: vision(pixel_values=p), repeats=6 if tiny else 60,
                                   warmup=1 if tiny else 5, budget_s=4.0)
            enc_rows.append({"batch": batch, "image_size": side, "latency_ms": lat,
                             "images_per_s": round(batch * 1e3 / lat["p50"], 1)})
            res["image_encoder"] = enc_rows
    if clock.cuda:
        res["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)


def section_turbo(res: Results, device: str, tiny: bool, compile: bool) -> None:
    """SDXL-Turbo + IP-Adapter (sdxl-turbo shapes, random weights), 512 px: 1 step with
    the tiny VAE (the target), 2 steps, serve's default steps, and the full VAE."""
    import torch

    from rtdecode.decoder.base import default_dtype
    from rtdecode.decoder.testing import build_turbo_from_config, tiny_turbo_configs
    from rtdecode.decoder.turbo import TurboDecoder

    serve = serve_defaults()
    dtype = default_dtype(torch.device(device))
    t0 = time.perf_counter()
    pipe, taesd = build_turbo_from_config(
        tiny_turbo_configs() if tiny else None, dtype=dtype, device=device, with_tiny_vae=True
    )
    full_vae = pipe.vae
    res["build_s"] = round(time.perf_counter() - t0, 2)
    dec = TurboDecoder(pipe, device=device, tiny_vae=taesd, compile=compile)
    _record_decoder(
        res, dec, serve,
        configs="tiny_turbo_configs()" if tiny else "SDXL_TURBO_CONFIGS (sdxl-turbo + ip-adapter_sdxl_vit-h + taesdxl shapes)",
        scheduler=type(pipe.scheduler).__name__,
        compile=compile,
        n_parameters={"unet_with_ip_adapter": pipe.unet, "vae": full_vae, "tiny_vae": taesd,
                      "text_encoder": pipe.text_encoder, "text_encoder_2": pipe.text_encoder_2},
    )
    tiny_vae = {"vae": "tiny", "compile": compile}
    cases = [{"label": "target: 1 step, tiny VAE", "steps": 1, "decoder": tiny_vae},
             {"label": "2 steps, tiny VAE", "steps": 2, "decoder": tiny_vae}]
    if serve["steps"] not in (1, 2):
        cases.append({"label": "serve's default steps, tiny VAE", "steps": serve["steps"],
                      "decoder": tiny_vae})
    _time_generate(res, "generate", dec, cases, tiny=tiny, target_ms=TURBO_TARGET_MS, device=device)
    dec.pipe.vae = full_vae  # the same decoder with the full VAE decoder
    _time_generate(res, "generate", dec, [
        {"label": "1 step, full VAE", "steps": 1, "decoder": {"vae": "full", "compile": compile}}
    ], tiny=tiny, target_ms=TURBO_TARGET_MS, device=device)
    if device.startswith("cuda"):
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


SECTIONS = {"encoder": section_encoder, "turbo": section_turbo, "unclip": section_unclip, "e2e": section_e2e}


def run_section_child(args: argparse.Namespace) -> int:
    """Child process: run one section, its results saved as it goes."""
    import torch

    if args.device == "cpu":
        torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    res = Results(args.child_json, args.section)
    kwargs: dict[str, Any] = {"compile": args.compile} if args.section in ("unclip", "turbo") else {}
    try:
        SECTIONS[args.section](res, args.device, args.tiny, **kwargs)
    except Exception as exc:
        res.data["status"] = "failed"
        res["error"] = f"{type(exc).__name__}: {exc}"
        raise
    res.data["status"] = "ok"
    res.save()
    return 0


# ------------------------------------------------------------------ parent
def device_info(device: str) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"torch": torch.__version__, "cuda_build": torch.version.cuda}
    if device.startswith("cuda"):
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
    cmd += ["--device", args.device] + (["--tiny"] if args.tiny else [])
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
        name = (f"encoder {enc['model']['preset']} b{r['batch']} {r['dtype']}"
                + (" graph" if r.get("cuda_graph") else "") + f" ({r.get('scope')})")
        note = r.get("error", "")[:40] or r.get("note", "")
        if "target_met" in r:
            note = (note + f" target {ENCODER_TARGET_MS:g} ms {'met' if r['target_met'] else 'NOT met'}").strip()
        rows.append([name, lat.get("p50"), lat.get("p99"), r.get("windows_per_s"), note])
    for key in ("turbo", "unclip"):
        sec = report["sections"].get(key, {})
        for r in sec.get("generate", []):
            lat = r.get("latency_ms", {})
            note = r.get("error", "")[:40] or (
                f"target {r.get('target_ms', 0):.0f} ms {'met' if r.get('target_met') else 'NOT met'}")
            rows.append([f"{key} {r['image_size']}px {r['steps']} steps cfg {r['guidance_scale']:g}: {r['label']}",
                         lat.get("p50"), lat.get("p99"), r.get("images_per_s"), note])
    for r in report["sections"].get("unclip", {}).get("image_encoder", []):
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


def _write_report(report: dict[str, Any], path: Path) -> list[str]:
    """Write the report to ``path`` and, when ``$OUT`` names a folder, there too."""
    written = [str(write_json(path, report))]
    if os.environ.get("OUT"):
        written.append(str(write_json(Path(os.environ["OUT"]) / path.name, report)))
    return written


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tiny", action="store_true",
                   help="toy model sizes (checks the code paths, measures nothing useful)")
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--dry-run-cpu", action="store_true", help="same as --tiny --device cpu")
    p.add_argument("--sections", nargs="+", choices=list(SECTIONS), default=list(SECTIONS))
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the unCLIP and Turbo UNets (serve does not; compile time "
                   "counts against the section)")
    p.add_argument("--json", type=Path, default=None,
                   help="default bench/results/gpu.json (gpu_dry_run_cpu.json with --tiny --device cpu)")
    p.add_argument("--section", choices=list(SECTIONS), default=None, help=argparse.SUPPRESS)
    p.add_argument("--child-json", type=Path, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.dry_run_cpu:
        args.tiny, args.device = True, "cpu"
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.section is not None:
        return run_section_child(args)
    path = args.json or RESULTS_DIR / ("gpu_dry_run_cpu.json" if args.device == "cpu" else "gpu.json")
    report: dict[str, Any] = {"benchmark": "gpu", "tiny": args.tiny, "device": args.device,
                              "machine": machine_info(), "sections": {}}
    try:
        import torch
    except ImportError:
        torch = None
    if args.device == "cuda" and (torch is None or not torch.cuda.is_available()):
        # Not an error: this machine simply has nothing to measure.
        print(NO_CUDA_MESSAGE, file=sys.stderr)
        report["status"] = "skipped: no CUDA"
        report["reason"] = NO_CUDA_MESSAGE
        _write_report(report, path)
        return 0
    t0 = time.monotonic()
    report["machine"].update(device_info(args.device))
    for name in args.sections:
        budget_s = BUDGET_S[name] * (1 if args.device == "cuda" else CPU_BUDGET_FACTOR)
        if args.device == "cuda":
            # The whole run stays under TOTAL_BUDGET_S: later sections get what is left.
            budget_s = min(budget_s, TOTAL_BUDGET_S - (time.monotonic() - t0))
            if budget_s < 20:
                report["sections"][name] = {"section": name, "status": "skipped",
                                            "error": f"under 20 s left of the run's {TOTAL_BUDGET_S:.0f} s."}
                continue
        report["sections"][name] = run_section(name, args, budget_s)
    report["wall_s"] = round(time.monotonic() - t0, 1)
    report["status"] = "ok" if all(s.get("status") == "ok" for s in report["sections"].values()) else "incomplete"
    written = _write_report(report, path)
    print_summary(report)
    print(f"total {report['wall_s']} s; wrote {', '.join(written)}")
    return 0 if report["status"] == "ok" else 1


if __name__ == "__main__":
    sys.exit(main())
