"""Brain-encoder benchmark: inference latency and training throughput on CPU.

Measures the ``paper`` preset (or ``--preset``) on a 306-channel, 250 ms window
(30 samples at 120 Hz), with synthetic data of the simulated subject's shape:

* batch-1 forward latency (p50/p99, ms) under ``torch.inference_mode`` for each
  intra-op thread count in ``--threads`` (1 and 2 by default; the target is p50 <= 5 ms
  on 2 cores). On a busy machine 2 threads can be far slower than 1: each op's parallel
  region waits for a thread that another process has descheduled;
* batch-64 forward latency;
* training throughput (samples/s) of full steps (forward, CombinedLoss, backward,
  Adam) at ``--train-batch``, for each thread count.

The 1-minute load average before and after is recorded with the numbers: the machine
may be shared. Writes bench/results/encoder.json and prints a table.

    .venv/bin/python bench/encoder.py [--preset paper] [--threads 1,2] [--repeats 300]
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from common import write_json  # noqa: E402  (bench/common.py, beside this script)

from rtdecode.encoder import CombinedLoss, build_model, count_parameters

RESULTS = Path(__file__).resolve().parent / "results" / "encoder.json"


def _layout(n_channels: int) -> np.ndarray:
    i = np.arange(n_channels) + 0.5
    r, theta = np.sqrt(i / n_channels), np.pi * (1 + 5**0.5) * i
    return np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)


def _percentiles_ms(samples_s: list[float]) -> dict[str, float]:
    arr = np.asarray(samples_s) * 1e3
    p50, p90, p99 = np.percentile(arr, [50, 90, 99])
    return {"p50_ms": round(float(p50), 3), "p90_ms": round(float(p90), 3),
            "p99_ms": round(float(p99), 3), "mean_ms": round(float(arr.mean()), 3),
            "n": int(arr.size)}


def forward_latency(model, x, subject, repeats: int, warmup: int = 20) -> dict[str, float]:
    """Per-call wall time of ``model(x, subject)`` in inference mode."""
    samples = []
    with torch.inference_mode():
        for _ in range(warmup):
            model(x, subject)
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(x, subject)
            samples.append(time.perf_counter() - t0)
    return _percentiles_ms(samples)


def train_throughput(model, n_channels, n_times, target_dim, batch, steps, warmup=3) -> dict:
    """Samples per second of full optimisation steps on random data."""
    loss_fn = CombinedLoss()
    opt = torch.optim.Adam(list(model.parameters()) + list(loss_fn.parameters()), lr=3e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, n_channels, n_times, generator=g)
    y = torch.randn(batch, target_dim, generator=g)
    subject = torch.zeros(batch, dtype=torch.long)
    model.train()
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        loss, _ = loss_fn(model(x, subject), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    return {"batch": batch, "steps": steps, "median_step_s": round(step_s, 4),
            "samples_per_s": round(batch / step_s, 1)}


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--preset", default="paper")
    p.add_argument("--channels", type=int, default=306)
    p.add_argument("--times", type=int, default=30, help="samples per window (30 = 250 ms at 120 Hz)")
    p.add_argument("--threads", default="1,2", help="comma-separated intra-op thread counts")
    p.add_argument("--repeats", type=int, default=300)
    p.add_argument("--train-batch", type=int, default=128)
    p.add_argument("--train-steps", type=int, default=10)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    threads = [int(t) for t in str(args.threads).split(",")]
    torch.manual_seed(0)
    load_before = os.getloadavg()[0]
    model = build_model(args.preset, args.channels, args.times, _layout(args.channels))
    model.eval()
    subject = torch.zeros(1, dtype=torch.long)
    x1 = torch.randn(1, args.channels, args.times)
    x64 = torch.randn(64, args.channels, args.times)
    results = {
        "preset": args.preset,
        "n_parameters": count_parameters(model),
        "input": {"n_channels": args.channels, "n_times": args.times, "window_s": args.times / 120.0},
        "by_threads": {},
    }
    for n in threads:
        torch.set_num_threads(n)
        b64 = forward_latency(model, x64, subject.expand(64), max(20, args.repeats // 10))
        b64["windows_per_s"] = round(64e3 / b64["p50_ms"], 1)
        results["by_threads"][str(n)] = {
            "forward_batch1": forward_latency(model, x1, subject, args.repeats),
            "forward_batch64": b64,
        }
    for n in threads:  # training last: it changes the weights
        torch.set_num_threads(n)
        results["by_threads"][str(n)]["train"] = train_throughput(
            model, args.channels, args.times, model.config.target_dim, args.train_batch,
            args.train_steps,
        )
    results["host"] = {
        "cpu_count": os.cpu_count(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "loadavg_1min_before": round(load_before, 2),
        "loadavg_1min_after": round(os.getloadavg()[0], 2),
    }
    write_json(args.out, results)

    print(f"encoder {args.preset}: {results['n_parameters']:,} parameters, "
          f"{args.channels} ch x {args.times} samples")
    print(f"{'measure':<34}{'p50':>10}{'p99':>10}")
    for n, r in results["by_threads"].items():
        for key, label in (("forward_batch1", "batch 1"), ("forward_batch64", "batch 64")):
            row = f"forward {label}, {n} thread(s) (ms)"
            print(f"{row:<34}{r[key]['p50_ms']:>10.2f}{r[key]['p99_ms']:>10.2f}")
    for n, r in results["by_threads"].items():
        row = f"train batch {args.train_batch}, {n} thread(s) (samples/s)"
        print(f"{row:<44}{r['train']['samples_per_s']:>10.1f}")
    print(f"load average (1 min): {results['host']['loadavg_1min_before']} before, "
          f"{results['host']['loadavg_1min_after']} after; wrote {args.out}")
    return results


if __name__ == "__main__":
    main()
