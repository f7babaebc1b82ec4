"""Retrieval latency: cosine top-k over a gallery on CPU (float32 BLAS matrix-vector product).

Run:  .venv/bin/python bench/retrieval.py                 (under a minute on an idle machine)
      .venv/bin/python bench/retrieval.py --quick         (10,000 x 768 only)
      .venv/bin/python bench/retrieval.py --sizes 1000 10000 100000 --threads 1 4

Times ``Retrieval.topk(vec, k=5)`` for one query (the DecodeWorker's case), a batch of 32
(offline evaluation), ``rank_of`` and the bare product ``matrix @ q`` for comparison, at
several gallery sizes and BLAS thread counts. Writes bench/results/retrieval.json and
prints a table. Latencies are per call, in ms: median, 95th percentile and minimum over
``--repeats`` calls after a warm-up; the minimum is what the memory system allows, the
median what a loaded machine gives.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from common import cpu_name, write_json  # noqa: E402  (bench/common.py)

from rtdecode.decoder.retrieval import Retrieval  # noqa: E402


def _time_ms(fn, repeats: int, warmup: int = 20) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = np.empty(repeats)
    for i in range(repeats):
        t0 = time.perf_counter()
        fn()
        times[i] = time.perf_counter() - t0
    times *= 1e3
    return {
        "median_ms": float(np.median(times)),
        "p95_ms": float(np.percentile(times, 95)),
        "min_ms": float(times.min()),
    }


def _blas_info() -> dict:
    from threadpoolctl import threadpool_info

    for pool in threadpool_info():
        if pool.get("user_api") == "blas":
            return {k: pool.get(k) for k in ("internal_api", "version", "num_threads")}
    return {}


def run(sizes: list[int], dim: int, threads: list[int], repeats: int, k: int) -> dict:
    from threadpoolctl import threadpool_limits
    from tqdm.auto import tqdm

    rng = np.random.default_rng(0)
    results = []
    cases = [(n, t) for n in sizes for t in threads]
    for n, n_threads in tqdm(cases, desc="retrieval bench", unit="case"):
        emb = rng.standard_normal((n, dim), dtype=np.float32)
        ids = [f"img_{i:06d}" for i in range(n)]
        index = Retrieval(emb, ids)
        query = rng.standard_normal(dim, dtype=np.float32)
        batch = rng.standard_normal((32, dim), dtype=np.float32)
        matrix = index._matrix  # the normalised gallery, to time the bare product
        with threadpool_limits(limits=n_threads, user_api="blas"):
            timings = {
                "matvec": _time_ms(lambda m=matrix, q=query: m @ q, repeats),
                "topk": _time_ms(lambda i=index, q=query: i.topk(q, k=k), repeats),
                "rank_of": _time_ms(
                    lambda i=index, q=query, t=ids[n // 2]: i.rank_of(q, t), repeats
                ),
                "topk_batch32": _time_ms(
                    lambda i=index, b=batch: i.topk(b, k=k), max(10, repeats // 15)
                ),
            }
        for op, t in timings.items():
            results.append({"n_images": n, "dim": dim, "blas_threads": n_threads, "op": op, **t})
    return {
        "benchmark": "retrieval",
        "k": k,
        "repeats": repeats,
        "machine": {
            "cpu": cpu_name(),
            "n_cpus": os.cpu_count(),
            "load_average_1min": os.getloadavg()[0],
            "python": platform.python_version(),
            "numpy": np.__version__,
            "blas": _blas_info(),
        },
        "results": results,
    }


def print_table(report: dict) -> None:
    print(
        f"\nretrieval, k={report['k']}, {report['machine']['cpu']} "
        f"({report['machine']['n_cpus']} CPUs, load {report['machine']['load_average_1min']:.1f})"
    )
    print(f"{'N x D':>12} {'threads':>7} {'op':>13} {'median ms':>10} {'p95 ms':>8} {'min ms':>8}")
    for r in report["results"]:
        print(
            f"{r['n_images']:>6} x {r['dim']:<4} {r['blas_threads']:>7} {r['op']:>13} "
            f"{r['median_ms']:>10.3f} {r['p95_ms']:>8.3f} {r['min_ms']:>8.3f}"
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000])
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--threads", type=int, nargs="+", default=[1, os.cpu_count() or 1])
    p.add_argument("--repeats", type=int, default=300)
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--quick", action="store_true", help="10,000 x 768 only, 200 repeats")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "retrieval.json")
    args = p.parse_args(argv)
    if args.quick:
        args.sizes, args.repeats = [10000], 200
    threads = sorted(set(args.threads))
    report = run(args.sizes, args.dim, threads, args.repeats, args.k)
    write_json(args.out, report)
    print_table(report)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
