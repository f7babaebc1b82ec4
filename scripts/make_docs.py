"""Write every table of figures in the documents from the JSON it reports.

    .venv/bin/python scripts/make_docs.py           # rewrite the tables (``make docs``)
    .venv/bin/python scripts/make_docs.py --check   # exit 1 and name each document that differs

A table lives between two marker comments in a document::

    <!-- table:latency begin -->
    ... (written by this script) ...
    <!-- table:latency end -->

and the prose around it stays hand-written. Each table has one renderer here, which reads
its JSON (``bench/results/*.json``, ``docs/results/*.json``) and nothing else. A target
is judged by the JSON's own check (``{"target", "measured", "met"}``) where the benchmark
wrote one; where it did not, the check is made here from the benchmark's declared target
(``TARGETS``), on the statistic the target names (the median when it names none). A
table whose JSON is missing, or lacks what the table shows, renders one line saying it
was not measured and how to measure it, so that a rerun that drops a result never breaks
the documents. ``tests/test_docs.py`` fails when a committed document differs from what
:func:`render_document` writes.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

#: The documents whose tables this script writes (paths relative to the repository).
DOCUMENTS = ("docs/benchmarks.md", "docs/results/README.md", "docs/reliability.md",
             "docs/latency.md", "docs/results/calibration.md")

MARKERS = re.compile(
    r"(?P<begin><!-- table:(?P<name>[\w.-]+) begin -->\n)(?P<body>.*?)"
    r"(?P<end><!-- table:(?P=name) end -->)",
    re.S,
)

#: Targets the benchmarks declare but whose JSON holds no check: (statistic, op, value).
TARGETS = {
    # The performance issue's ingest targets: acquisition CPU at most half of mne-lsl's,
    # a window available within 2 ms of the pull that completes it (p99).
    "ingest_cpu_ratio": ("acquisition CPU, ours / mne-lsl", "<=", 0.5),
    "ingest_latency_p99_ms": ("p99", "<=", 2.0),
    "preprocess_p50_ms": ("p50, 306 channels, 1200 Hz", "<=", 1.5),
    "encoder_p50_ms": ("p50, batch 1", "<=", 5.0),
    "retrieval_ms": ("median, 10,000 x 768, k = 5", "<=", 1.0),
    "decoder_p50_ms": ("p50, 4 steps", "<=", 60.0),
    "fidelity_share": ("share of images above 90 % of the gallery", ">=", 0.9),
    # "Frame age <= 2 s for every client": every frame, so the oldest one (bench/slow_client.py
    # exits 1 when its client that reads nothing ahead gets a frame older than 2 s).
    "slow_viewer_age_s": ("max", "<=", 2.0),
}


class NotMeasured(Exception):
    """A table's JSON is missing or lacks a value the table shows."""


# --------------------------------------------------------------------------- helpers
def load(rel: str) -> dict[str, Any]:
    """The JSON at ``rel`` (relative to the repository); NotMeasured when absent."""
    path = ROOT / rel
    if not path.is_file():
        raise NotMeasured(f"`{rel}` does not exist")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise NotMeasured(f"`{rel}` is not valid JSON ({exc})") from exc


def get(d: Any, *keys: Any, src: str = "the JSON") -> Any:
    """``d[k0][k1]...``; NotMeasured naming the missing key path when one is absent."""
    for i, k in enumerate(keys):
        try:
            d = d[k]
        except (KeyError, IndexError, TypeError):
            path = "/".join(str(x) for x in keys[: i + 1])
            raise NotMeasured(f"{src} has no `{path}`") from None
    return d


def check(measured: float, op: str, target: float) -> dict[str, Any]:
    """A target check in the benchmarks' own format, made here."""
    met = measured <= target if op == "<=" else measured >= target
    return {"target": target, "measured": measured, "met": bool(met), "op": op}


def verdict(chk: dict[str, Any]) -> str:
    """``met`` or ``**not met**`` from a check's own ``met``."""
    return "met" if chk["met"] else "**not met**"


def target_text(chk: dict[str, Any], unit: str = "") -> str:
    """``<= 25 ms: met`` from a check (its ``target`` may be a number or ``">= 19.0"``)."""
    t = chk["target"]
    if isinstance(t, str):
        text = t
    else:
        text = f"{chk.get('op', '<=')} {num(t)}{unit}"
    return f"{text}: {verdict(chk)}"


def num(v: float, nd: int | None = None) -> str:
    """A number as people write it: 3 significant figures, thousands separated."""
    if v is None:
        return "–"
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, int) or (nd == 0):
        return f"{round(v):,}"
    if nd is not None:
        return f"{v:,.{nd}f}"
    a = abs(v)
    if a >= 100:
        return f"{v:,.0f}"
    if a >= 10:
        return f"{v:.1f}"
    if a >= 1:
        return f"{v:.2f}"
    return f"{v:.3g}"


def pct(v: float, nd: int = 1) -> str:
    """A fraction as a percentage."""
    return f"{100 * v:.{nd}f} %"


def table(header: list[str], rows: list[list[Any]]) -> str:
    """A Markdown table."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def span(values: list[float], fmt: Callable[[float], str] = num) -> str:
    """``min-max`` of some values (one value when they are all equal)."""
    lo, hi = min(values), max(values)
    return fmt(lo) if fmt(lo) == fmt(hi) else f"{fmt(lo)}-{fmt(hi)}"


def not_measured(reason: str, how: str) -> str:
    """The line a table becomes when its JSON is missing."""
    return f"*Not measured: {reason}. Measure it with `{how}`.*"


# --------------------------------------------------------------------------- renderers
RENDERERS: dict[str, tuple[Callable[[], str], str]] = {}


def renders(name: str, how: str) -> Callable[[Callable[[], str]], Callable[[], str]]:
    """Register the renderer of table ``name``; ``how`` is the command that measures it."""

    def register(fn: Callable[[], str]) -> Callable[[], str]:
        RENDERERS[name] = (fn, how)
        return fn

    return register


@renders("ingest", ".venv/bin/python bench/ingest.py")
def _ingest() -> str:
    src = "bench/results/ingest.json"
    d = load(src)
    ours, theirs = get(d, "rtdecode", src=src), get(d, "mne_lsl", src=src)
    acq = get(ours, "cpu_per_stream_s", "acquisition", src=src)
    acq_theirs = get(theirs, "cpu_per_stream_s", "acquisition", src=src)
    ratio = check(acq / acq_theirs, "<=", TARGETS["ingest_cpu_ratio"][2])
    lat = get(ours, "latency_ms", src=src)
    p99 = check(get(lat, "p99", src=src), "<=", TARGETS["ingest_latency_p99_ms"][2])
    cfg = get(d, "config", src=src)
    return "\n".join([
        f"{cfg['n_channels']} channels (the counter included), {num(cfg['sfreq_hz'], 0)} Hz, "
        f"{num(cfg['duration_s'], 0)} s per reader, 1-minute load {cfg['loadavg_before'][0]} "
        f"before and {cfg['loadavg_after'][0]} after (`{src}`):",
        "",
        table(["metric", "ours", "mne-lsl StreamLSL", "target"], [
            ["acquisition-side CPU s per stream s", num(acq, 3), num(acq_theirs, 3),
             f"ours <= 0.5x theirs: {verdict(ratio)} ({ratio['measured']:.2f}x)"],
            ["whole process CPU s per stream s",
             num(get(ours, "cpu_per_stream_s", "process", src=src), 3),
             num(get(theirs, "cpu_per_stream_s", "process", src=src), 3), ""],
            ["lost samples", num(get(ours, "lost_samples", src=src)), "–", ""],
            ["sample pull -> Window available, p50 / p99",
             f"{num(lat['p50'])} / {num(lat['p99'])} ms", "–", f"p99 <= 2 ms: {verdict(p99)}"],
        ]),
    ])


@renders("preprocess", ".venv/bin/python bench/preprocess.py --repeats 100")
def _preprocess() -> str:
    src = "bench/results/preprocess.json"
    d = load(src)
    rows, throughput = [], []
    target = None
    for r in get(d, "streaming", src=src):
        rows.append([f"{r['sfreq_hz']:g} Hz", f"{num(r['stream_median_ms'], 2)} / "
                     f"{num(r['stream_p95_ms'], 2)} ms", f"{num(r['stream_cpu_median_ms'], 2)} ms",
                     f"{num(r['block_median_ms'], 2)} / {num(r['block_cpu_median_ms'], 2)} ms",
                     f"{r['block_over_stream_median']:.1f}"])
        if r["sfreq_hz"] == 1200.0:
            target = check(r["stream_median_ms"], "<=", TARGETS["preprocess_p50_ms"][2])
    epochs = {e["sfreq_hz"]: e["epochs_per_cpu_s"] for e in get(d, "epochs", src=src)}
    for r in get(d, "recording", src=src):
        throughput.append([f"{r['sfreq_hz']:g} Hz", num(r["recording_s_per_cpu_s"], 0),
                           num(epochs.get(r["sfreq_hz"]), 0)])
    if target is None:
        raise NotMeasured(f"`{src}` has no 1200 Hz streaming row")
    return "\n".join([
        f"{d.get('n_channels', '?')} channels, one thread, 1-minute load "
        f"{d.get('load_average_1min', float('nan')):.2f} (`{src}`). Per window (one per 50 ms "
        "hop), streaming against the block path on the same windows:",
        "",
        table(["input rate", "streaming median / p95", "streaming CPU", "block median / CPU",
               "block / streaming"], rows),
        "",
        f"Target p50 <= 1.5 ms per window (306 channels, 1200 Hz), streaming path: "
        f"{verdict(target)} ({num(target['measured'], 2)} ms).",
        "",
        "Offline, over whole recordings:",
        "",
        table(["input rate", "streaming: recording s per CPU s",
               "block path: epochs per CPU s"], throughput),
    ])


@renders("encoder", ".venv/bin/python bench/encoder.py")
def _encoder() -> str:
    src = "bench/results/encoder.json"
    d = load(src)
    by = get(d, "by_threads", src=src)
    threads = sorted(by, key=int)
    cols = [f"{t} thread{'s' if int(t) > 1 else ''}" for t in threads]
    checks = {t: check(get(by, t, "forward_batch1", "p50_ms", src=src), "<=",
                       TARGETS["encoder_p50_ms"][2]) for t in threads}
    rows = [
        ["batch 1 forward p50 / p99"] + [
            f"{num(by[t]['forward_batch1']['p50_ms'])} / {num(by[t]['forward_batch1']['p99_ms'])} ms"
            for t in threads],
        ["batch 64 forward p50"] + [f"{num(get(by, t, 'forward_batch64', 'p50_ms', src=src))} ms"
                                    for t in threads],
        [f"training, batch {by[threads[0]]['train']['batch']}"] + [
            f"{num(get(by, t, 'train', 'samples_per_s', src=src))} samples/s" for t in threads],
        ["target: batch 1 p50 <= 5 ms"] + [verdict(checks[t]) for t in threads],
    ]
    host = d.get("host", {})
    return "\n".join([
        f"Preset `{d.get('preset')}` ({num(d.get('n_parameters', 0))} parameters), "
        f"{get(d, 'input', 'n_channels', src=src)} channels x {d['input']['n_times']} samples; "
        f"1-minute load {host.get('loadavg_1min_before')} before, "
        f"{host.get('loadavg_1min_after')} after (`{src}`).",
        "",
        table([""] + cols, rows),
    ])


@renders("retrieval", ".venv/bin/python bench/retrieval.py")
def _retrieval() -> str:
    src = "bench/results/retrieval.json"
    d = load(src)
    rows = []
    for r in get(d, "results", src=src):
        if r["n_images"] == 10000 and r["op"] == "topk":
            chk = check(r["median_ms"], "<=", TARGETS["retrieval_ms"][2])
            rows.append([r["blas_threads"], f"{num(r['min_ms'])} ms",
                         f"{num(r['median_ms'])} ms", f"{num(r['p95_ms'])} ms",
                         f"<= 1 ms at the median: {verdict(chk)}"])
    if not rows:
        raise NotMeasured(f"`{src}` has no 10,000-image top-k row")
    load_1 = get(d, "machine", "load_average_1min", src=src)
    return "\n".join([
        f"10,000 x 768 gallery, k = 5, one query, {d.get('repeats')} repeats; 1-minute load "
        f"{load_1:.1f} (`{src}`):",
        "",
        table(["BLAS threads", "min", "median", "p95", "target"], rows),
    ])


@renders("decoder", ".venv/bin/python bench/decoder.py")
def _decoder() -> str:
    src = "bench/results/decoder.json"
    d = load(src)
    lat = {r["threads"]: r for r in get(d, "latency", src=src)}
    if 1 not in lat or 2 not in lat:
        raise NotMeasured(f"`{src}` lacks the 1- or 2-thread latency")
    rows = []
    for key, label in (("generate_g1", "generate"),
                       ("generate_img2img_0.6_g1", "generate, img2img strength 0.6"),
                       ("retrieval_topk5", f"retrieval, {d.get('n_gallery')} images")):
        two, one = get(lat[2], key, src=src), get(lat[1], key, src=src)
        rows.append([label, f"{num(two['p50_ms'])} / {num(two['p99_ms'])} ms",
                     f"{num(one['p50_ms'])} ms"])
    checks = {t: check(lat[t]["generate_g1"]["p50_ms"], "<=", TARGETS["decoder_p50_ms"][2])
              for t in (2, 1)}
    rows.append([f"target: generate p50 <= 60 ms at {d.get('steps')} steps", verdict(checks[2]),
                 verdict(checks[1])])
    fid = []
    for f in get(d, "fidelity", src=src):
        chk = check(f["share_at_least_90"], ">=", TARGETS["fidelity_share"][2])
        fid.append([f"{f['guidance_scale']:g}", f"{f['median_percentile']:.3f}",
                    pct(f["share_at_least_90"]), f"{pct(f['top5'])}",
                    f">= 90 %: {verdict(chk)}"])
    return "\n".join([
        f"{d.get('image_size')} x {d.get('image_size')}, {d.get('steps')} steps, "
        f"{d.get('dtype')} (`{src}`):",
        "",
        table(["", "2 threads p50 / p99", "1 thread p50"], rows),
        "",
        "Fidelity: each gallery image's true embedding -> generated image, re-embedded, "
        "ranked against the gallery (percentile of the true image):",
        "",
        table(["guidance scale", "median percentile", "true image above 90 % of the gallery",
               "top-5", "target (share above 90 %)"], fid),
    ])


E2E_RUNS = (
    ("bench/results/latency.json", "demo decoder, 4 steps"),
    ("bench/results/latency_steps1.json", "demo decoder, 1 step"),
    ("bench/results/latency_retrieval_only.json", "retrieval only"),
)


@renders("e2e", ".venv/bin/python bench/latency.py")
def _e2e() -> str:
    rows, missing = [], []
    for src, label in E2E_RUNS:
        try:
            d = load(src)
            e = get(d, "latency_ms", "end_to_end", src=src)
            t = get(d, "targets", src=src)
            w = get(d, "windows", src=src)
            rows.append([
                f"{label}, {num(get(d, 'config', 'duration_s', src=src), 0)} s",
                f"{num(e['p50'])} / {num(e['p95'])} / {num(e['p99'])} ms",
                num(get(d, "overhead_ratio", "median_per_frame", src=src), 2),
                num(get(d, "frames", "per_s", src=src)),
                f"{w['skipped']} of {w['windows'] + w['skipped']}",
                verdict(t["p50_ms"]), verdict(t["p99_ms"]), verdict(t["overhead_ratio"]),
            ])
        except NotMeasured as exc:
            missing.append(str(exc))
            rows.append([label, f"not measured: {exc}", "", "", "", "", "", ""])
    if len(missing) == len(E2E_RUNS):
        raise NotMeasured("; ".join(missing))
    return table(["run (`bench/results/`)", "p50 / p95 / p99", "overhead ratio", "frames/s",
                  "windows skipped", "p50 <= 30 ms", "p99 <= 80 ms", "ratio <= 1.5"], rows)


@renders("e2e-detail", ".venv/bin/python bench/latency.py")
def _e2e_detail() -> str:
    rows, stages = [], ""
    for src, label in E2E_RUNS:
        d = load(src)
        lat, fr, w = get(d, "latency_ms", src=src), get(d, "frames", src=src), d["windows"]
        e, c, ratio = lat["end_to_end"], lat["compute"], d["overhead_ratio"]
        n_win = w["windows"] + w["skipped"]
        images = f" ({num(fr['images_per_s'])})" if fr.get("with_image") else ""
        rows.append([f"{label}, {num(d['config']['duration_s'], 0)} s",
                     f"{num(e['p50'])} / {num(e['p95'])} / {num(e['p99'])}",
                     f"{num(c['p50'])} / {num(c['p99'])}", f"{num(fr['per_s'])}{images}",
                     f"{w['skipped']} of {n_win} ({pct(w['skipped'] / n_win)})",
                     num(ratio["median_per_frame"], 2)])
        for key, what, ratio_key in (("with_image", "frames with an image", "with_image"),
                                     ("without_image", "retrieval-only frames", "without_image")):
            part = lat.get(f"end_to_end_{key}")
            if fr.get("with_image") and part and part.get("n"):
                rows.append([f"&nbsp;&nbsp;{what} ({part['n']})",
                             f"{num(part['p50'])} / {num(part['p95'])} / {num(part['p99'])}",
                             "", "", "", num(ratio[f"median_per_frame_{ratio_key}"], 2)])
        if not stages:
            st = lat["stages"]
            stages = (f"Stages of the {label} run (ms, p50 / p95 / p99): " + ", ".join(
                f"{k} {num(v['p50'])} / {num(v['p95'])} / {num(v['p99'])}"
                for k, v in st.items()) + f"; transport (push to pull) "
                f"{num(lat['path']['transport']['p50'])} / "
                f"{num(lat['path']['transport']['p99'])} at p50 / p99, delivery (worker to "
                f"client) {num(lat['path']['delivery']['p50'])} / "
                f"{num(lat['path']['delivery']['p99'])}.")
    return "\n".join([
        table(["run", "end to end p50 / p95 / p99 (ms)", "compute p50 / p99",
               "frames/s (images/s)", "windows skipped", "overhead ratio (median per frame)"],
              rows),
        "",
        stages,
    ])


LANE_ROWS = (
    ("retrieval_e2e_p50_ms", "retrieval frames e2e p50", " ms"),
    ("retrieval_e2e_p99_ms", "retrieval frames e2e p99", " ms"),
    ("retrieval_frames_per_s", "retrieval frames/s", ""),
    ("images_per_s", "images/s", ""),
    ("image_age_p50_ms", "image age at the client p50", " ms"),
)


def _lanes(src: str) -> str:
    d = load(src)
    runs = get(d, "comparison", "runs", src=src)
    ratio = get(d, "comparison", "two_lane_over_single_lane", src=src)
    two = get(d, "runs", "two_lane", src=src)
    one = get(d, "runs", "single_lane", src=src)
    lane_checks = get(two, "lanes", "targets", src=src)
    rows = []
    for key, label, unit in LANE_ROWS:
        chk = get(lane_checks, key, src=src)
        unit_t = unit if not isinstance(chk["target"], str) else ""
        rows.append([label, f"{num(runs['single_lane'][key])}{unit}",
                     f"**{num(runs['two_lane'][key])}{unit}**", f"{ratio[key]:.2f}",
                     target_text(chk, unit_t)])
    whole = []
    for key, label, unit in (("p50_ms", "every frame e2e p50", " ms"),
                             ("p99_ms", "every frame e2e p99", " ms"),
                             ("overhead_ratio", "overhead ratio (median per frame)", "")):
        c1, c2 = get(one, "targets", key, src=src), get(two, "targets", key, src=src)
        whole.append([label, f"{num(c1['measured'])}{unit}", f"{num(c2['measured'])}{unit}",
                      f"<= {num(c2['target'])}{unit}: single lane {verdict(c1)}, "
                      f"two lanes {verdict(c2)}"])
    stages = get(two, "lanes", "worker_lanes", src=src)
    r = get(stages, "retrieval", "latency_ms", src=src)
    g = get(stages, "image", "latency_ms", "generate", src=src)
    w = get(two, "windows", src=src)
    la = [get(x, "load_average", "before", src=src)[0] for x in (one, two)]
    return "\n".join([
        f"1-minute load {la[0]} at the start of the single-lane run and {la[1]} at the start "
        "of the two-lane run.",
        "",
        table(["per lane", "single lane", "two lanes", "two / single", "target (two lanes)"],
              rows),
        "",
        "Every frame (retrieval and image frames together), against the one-lane targets:",
        "",
        table(["", "single lane", "two lanes", "target"], whole),
        "",
        "Two-lane stages, p50 / p99: "
        + ", ".join(f"{k} {num(r[k]['p50'])} / {num(r[k]['p99'])} ms"
                    for k in ("preprocess", "encode", "retrieve") if k in r)
        + f"; generate {num(g['p50'])} / {num(g['p99'])} ms. {w['windows']} windows decoded, "
        f"{w['skipped']} skipped.",
    ])


# One renderer, three runs: (table, JSON, the command that wrote it).
for _name, _src, _how in (
    ("lanes-loaded", "bench/results/latency_lanes.json",
     ".venv/bin/python bench/latency.py --lanes both --json bench/results/latency_lanes.json"),
    ("lanes-demo2", "bench/results/latency_lanes_demo2.json",
     ".venv/bin/python bench/latency.py --data data/sim --lanes both --json "
     "bench/results/latency_lanes_demo2.json"),
    ("lanes-streaming", "bench/results/latency_lanes_streaming.json",
     ".venv/bin/python bench/latency.py --data data/sim --lanes both --json "
     "bench/results/latency_lanes_streaming.json"),
):
    RENDERERS[_name] = (partial(_lanes, _src), _how)


def _soak_data() -> tuple[str, dict[str, Any]]:
    src = "bench/results/soak.json"
    return src, load(src)


@renders("soak-summary", ".venv/bin/python bench/soak.py --duration 3600")
def _soak_summary() -> str:
    src, d = _soak_data()
    rss = get(d, "rss", src=src)
    th, fd = get(d, "threads", src=src), get(d, "fds", src=src)
    reader = get(d, "reader", src=src)
    gaps = get(d, "gaps", src=src)
    outages = get(d, "outages", src=src)
    per_min = get(d, "latency_per_minute", src=src)
    ret = [m["e2e_retrieval_ms"] for m in per_min if m.get("e2e_retrieval_ms", {}).get("n")]
    viewers = get(d, "viewers", src=src)
    fast = [v for v in viewers.values() if not v["slow"]]
    slow = [v for v in viewers.values() if v["slow"]]
    lost_out = get(d, "samples_lost_outside_outages", src=src)
    rows = [
        ["service RSS growth after warm-up",
         f"{num(rss['baseline_mb'], 1)} -> {num(rss['end_mb'], 1)} MB, "
         f"**{rss['growth_after_warmup_pct']:+.2f} %**",
         f"< {num(rss['target_pct'])} %: {verdict(rss)}"],
        ["threads / fds, after warm-up -> end (max)",
         f"{th['after_warmup']} -> {th['end']} ({th['max']}) / {fd['after_warmup']} -> "
         f"{fd['end']} ({fd['max']})", ""],
        [f"samples lost outside the {len(outages)} outages",
         f"**{num(lost_out)}** ({num(reader['samples'])} read; {gaps['gaps_total']} gaps "
         f"holding {num(gaps['samples_lost_total'])} samples)",
         f"0: {verdict(check(lost_out, '<=', 0))}"],
        ["outages: down / reader's gap / restart -> first frame",
         f"{span([o['down_s'] for o in outages])} s / "
         f"{span([o['reader_gap_s'] for o in outages])} s / "
         f"{span([o['restart_to_first_frame_s'] for o in outages])} s",
         f"each reported: {verdict(check(len(gaps['outages_without_a_gap']), '<=', 0))}"],
        ["retrieval e2e per minute (fast viewers), p50 / p99",
         f"{span([m['p50'] for m in ret])} ms / {span([m['p99'] for m in ret])} ms; slope "
         f"of the p50 {d.get('latency_drift_ms_per_min'):+.3f} ms/min", ""],
    ]
    for v in fast[:1]:
        a = v["frame_age_ms"]
        rows.append([f"fast viewers ({len(fast)}, ack): frames, missed, reconnects, age p50 / p99",
                     f"{num(v['frames'])} each, {v['missed_seq']}, {v['reconnects']}, "
                     f"{num(a['p50'])} / {num(a['p99'])} ms", ""])
    for v in slow:
        a = v["frame_age_ms"]
        chk = check(a["max"] / 1e3, "<=", TARGETS["slow_viewer_age_s"][2])
        rows.append([
            "slow viewer (1 message/s, never acks): frames, age p50 / p99 / max",
            f"{num(v['frames'])}, {a['p50'] / 1e3:.2f} / {a['p99'] / 1e3:.2f} / "
            f"{a['max'] / 1e3:.2f} s; {num(v['frames_older_than_2s'])} of "
            f"{num(a['n'])} frames over 2 s", f"every frame <= 2 s: {verdict(chk)}"])
    cfg = get(d, "config", src=src)
    m = get(d, "machine", src=src)
    return "\n".join([
        f"{num(cfg['duration_s'] / 60, 0)} minutes after a {num(cfg['warmup_s'], 0)} s warm-up, "
        f"{cfg['restarts']} outages, {cfg['lanes']} lanes; 1-minute load "
        f"{m.get('load_average_1min_start')} -> {m.get('load_average_1min')} (`{src}`):",
        "",
        table(["metric", "measured", "target"], rows),
    ])


@renders("soak-minutes", ".venv/bin/python bench/soak.py --duration 3600")
def _soak_minutes() -> str:
    src, d = _soak_data()
    per_min = get(d, "latency_per_minute", src=src)
    slow = [v for v in get(d, "viewers", src=src).values() if v["slow"]]
    slow_min = {m["minute"]: m for m in slow[0]["frame_age_per_minute"]} if slow else {}
    n = len(per_min)
    pick = sorted({1, *range(6, n + 1, 6), n})
    rows = []
    for m in per_min:
        if m["minute"] not in pick:
            continue
        r, im = m["e2e_retrieval_ms"], m["e2e_image_ms"]
        s = slow_min.get(m["minute"])
        rows.append([m["minute"], f"{num(r['p50'])} / {num(r['p99'])}", num(im["p50"], 0),
                     num(m["images_per_s"]), num(m["rss_mb"], 1),
                     "–" if s is None else f"{s['p50_ms'] / 1e3:.2f} / {s['max_ms'] / 1e3:.2f}"])
    return table(["minute", "retrieval e2e p50 / p99 (ms)", "image e2e p50 (ms)", "images/s",
                  "service RSS (MB)", "slow viewer age p50 / max (s)"], rows)


@renders("soak-outages", ".venv/bin/python bench/soak.py --duration 3600")
def _soak_outages() -> str:
    src, d = _soak_data()
    warm = get(d, "config", "warmup_s", src=src)
    rows = [[o["k"], int((o["at_s"] - warm) // 60) + 1, f"{o['down_s']:.2f}",
             f"{o['reader_gap_s']:.2f}", o["reader_lost_samples"],
             f"{o['restart_to_first_sample_s']:.2f}", f"{o['restart_to_first_frame_s']:.2f}"]
            for o in get(d, "outages", src=src)]
    return table(["outage", "in minute", "down (s)", "reader's gap (s)", "samples lost",
                  "restart -> first sample (s)", "restart -> first frame (s)"], rows)


@renders("slow-client", ".venv/bin/python bench/slow_client.py")
def _slow_client() -> str:
    src = "bench/results/slow_client.json"
    d = load(src)
    rows = []
    for key, c in get(d, "slow", src=src).items():
        a = c["age_s"]
        chk = check(a["max"], "<=", TARGETS["slow_viewer_age_s"][2])
        end = "connected to the end" if c.get("connected") else "closed by the server (stalled)"
        rows.append([f"`{key}`", c["frames"], f"{a['p50']:.3f}", f"{a['max']:.3f}",
                     c["over_2s"], end, verdict(chk)])
    fast = get(d, "fast", src=src)
    rows.append(["fast client beside them", fast["frames"], f"{fast['age_s']['p50']:.3f}",
                 f"{fast['age_s']['max']:.3f}", 0 if fast["age_s"]["max"] <= 2 else "?",
                 "", ""])
    load_1 = get(d, "machine", "load_average_1min", src=src)
    return "\n".join([
        f"{num(get(d, 'duration_s', src=src), 0)} s, {num(d['fps'], 0)} frames/s of "
        f"{num(d['image_bytes'])} bytes, the slow clients read one message every "
        f"{d['read_every_s']:g} s through a 4 KiB receive buffer and never ack; 1-minute load "
        f"{load_1} (`{src}`):",
        "",
        table(["slow client (websockets `max_queue`)", "frames", "age p50 (s)", "age max (s)",
               "frames over 2 s", "", "every frame <= 2 s"], rows),
    ])


@renders("fuzz", ".venv/bin/python bench/fuzz_api.py")
def _fuzz() -> str:
    src = "bench/results/fuzz_api.json"
    d = load(src)
    rows = []
    for r in get(d, "runs", src=src):
        status = r.get("status", {})
        n5xx = sum(v for k, v in status.items() if k.startswith("5"))
        rows.append(["with a token" if r["with_token"] else "without a token",
                     num(r["requests"]), n5xx, r.get("client_errors"),
                     ", ".join(f"{v:,} x {k}" for k, v in sorted(status.items())),
                     f"0 5xx: {verdict(check(n5xx, '<=', 0))}"])
    return table(["server", "requests", "5xx", "requests not sent", "answers", "target"], rows)


@renders("drift", ".venv/bin/python bench/drift.py")
def _drift() -> str:
    src = "bench/results/drift.json"
    d = load(src)
    rows = []
    for s in get(d, "streams", src=src):
        c, r = s["checks"], s["reader"]
        pull, age = s["pull_ms_p50_first_last"], s["age_ms_p50_first_last"]
        rows.append([
            f"{s['drift']:+.2%}", num(s["windows"]),
            f"{c['off_grid']} / {c['counter_lost']} / {c['counter_repeated']} / "
            f"{c['not_monotonic']}",
            f"{r['backwards_timestamps']} / {r['timestamp_jumps']}",
            f"{s['stamped_drift']:+.4%}",
            f"{num(pull[0], 2)} -> {num(pull[1], 2)} ({s['pull_ms_p50_slope_per_min']:+.3f}/min)",
            f"{num(age[0], 2)} -> {num(age[1], 2)} ({s['age_ms_p50_slope_per_min']:+.3f}/min)",
            "none" if s["error"] is None else s["error"],
        ])
    m0, m1 = get(d, "machine_start", src=src), get(d, "machine_end", src=src)
    return "\n".join([
        f"{num(get(d, 'duration_s', src=src) / 60, 0)} minutes at 1x, {d['n_channels']} "
        f"channels (counter included) at {num(d['sfreq_hz'], 0)} Hz, {num(d['window_s'] * 1e3, 0)}"
        f" ms windows every {num(d['hop_s'] * 1e3, 0)} ms, every window taken; 1-minute load "
        f"{m0.get('load_average_1min')} at the start, {m1.get('load_average_1min')} at the end "
        f"(`{src}`):",
        "",
        table(["source clock drift", "windows", "off grid / lost / repeated / not monotonic",
               "reader: backwards timestamps / jumps", "drift the timestamps carry",
               "pull -> window p50, first -> last minute (ms)",
               "sample age p50, first -> last minute (ms)", "error"], rows),
    ])


def _retrieval_rows(rep: dict[str, Any], src: str) -> list[list[Any]]:
    rows = []
    for method, label in (("model", "deep"), ("ridge", "ridge")):
        for where in ("test", "gallery"):
            for kind in ("single", "average"):
                m = get(rep, "retrieval", method, where, kind, src=src)
                rows.append([label, f"{m['n_candidates']} ({where})", kind, m["n_queries"],
                             pct(m["top1"]), pct(m["top5"]), f"{m['relative_median_rank']:.3f}",
                             pct(m["chance_top5"])])
    return rows


RETRIEVAL_HEADER = ["model", "candidates", "trials", "queries", "top-1", "top-5",
                    "relative median rank", "chance top-5"]


def _evaluation(src: str) -> str:
    """Caption and retrieval table of an ``rtdecode evaluate`` JSON."""
    d = load(src)
    start, width = get(d, "window_start_s", src=src), get(d, "window_s", src=src)
    return "\n".join([
        f"Window {num(start * 1e3, 0)}-{num((start + width) * 1e3, 0)} ms after onset, "
        f"{d['n_train_trials']} training trials, {d['n_test_trials']} test trials of "
        f"{d['n_test_images']} images; candidates: the test images, or the whole gallery of "
        f"{d['n_gallery_images']}; `average`: the repetitions of each image averaged "
        f"(`{src}`):",
        "",
        table(RETRIEVAL_HEADER, _retrieval_rows(d, src)),
    ])


for _name, _src, _how in (
    ("headline", "docs/results/demo_encoder_eval.json",
     "rtdecode evaluate models/demo/encoder --data data/sim --json "
     "docs/results/demo_encoder_eval.json"),
    ("paper", "docs/results/paper_difficulty_eval.json",
     "rtdecode evaluate runs/paper-difficulty --data data/sim-paper --json "
     "docs/results/paper_difficulty_eval.json"),
):
    RENDERERS[_name] = (partial(_evaluation, _src), _how)


def _sd_above(top5: float, chance: float, n: int) -> float:
    """How many binomial standard deviations ``top5`` lies above ``chance`` (n queries)."""
    return (top5 - chance) / (chance * (1 - chance) / n) ** 0.5


@renders("paper-comparison", "rtdecode evaluate runs/paper-difficulty --data data/sim-paper "
         "--json docs/results/paper_difficulty_eval.json")
def _paper_comparison() -> str:
    """Deep against ridge in each candidate set, worded by which is ahead there."""
    src = "docs/results/paper_difficulty_eval.json"
    d = load(src)
    lines = []
    for where, what in (("test", "the test images"), ("gallery", "the whole gallery")):
        deep = get(d, "retrieval", "model", where, "single", src=src)
        ridge = get(d, "retrieval", "ridge", where, "single", src=src)
        n, chance = deep["n_queries"], deep["chance_top5"]
        ahead = "deep" if deep["top5"] > ridge["top5"] else (
            "ridge" if ridge["top5"] > deep["top5"] else "neither")
        rank_ahead = "deep" if deep["relative_median_rank"] < ridge["relative_median_rank"] \
            else "ridge"
        lines.append(
            f"* Among {what} ({deep['n_candidates']} candidates, {n} single trials, chance "
            f"top-5 {pct(chance)}): top-5 deep {pct(deep['top5'])} "
            f"({_sd_above(deep['top5'], chance, n):+.1f} binomial SDs from chance), ridge "
            f"{pct(ridge['top5'])} ({_sd_above(ridge['top5'], chance, n):+.1f} SDs); "
            f"**{ahead} ahead** on top-5. Relative median rank deep "
            f"{deep['relative_median_rank']:.3f}, ridge {ridge['relative_median_rank']:.3f} "
            f"(chance 0.5): **{rank_ahead} ahead**.")
    return "\n".join(lines)


@renders("online", "rtdecode evaluate-online models/demo/encoder --recording "
         "data/sim/replay_raw.fif --subject 01 --retrieval-set test --speed 2 --json "
         "docs/results/online_eval.json --plots docs/results")
def _online() -> str:
    src = "docs/results/online_eval.json"
    d = load(src)
    off = {r["lag_s"]: r for r in d.get("offline_per_lag", [])}
    n_cand = get(d, "n_candidates", src=src)
    rows = [[num(r["lag_s"] * 1e3, 0), r["n"], pct(r["top5"]), num(r["median_rank"]),
             pct(off[r["lag_s"]]["top5"]) if r["lag_s"] in off else "–"]
            for r in get(d, "per_lag", src=src)]
    p = get(d, "parity", src=src)
    return "\n".join([
        f"{d['n_frames']} windows, {d['n_ranked']} of them ranked, {n_cand} candidates "
        f"(chance top-5 {pct(d['chance_top5'])}), {num(d['bin_s'] * 1e3, 0)} ms lag bins, "
        f"replay at {d['speed']:g}x (`{src}`). Parity with the offline path on the same "
        f"windows: largest relative difference {p['max_rel_err']:.2g}, ranks equal: "
        f"{p['ranks_equal']}, {p['n_late_marker_windows']} of {p['n_windows']} windows late.",
        "",
        table(["window end after onset (ms)", "windows", "top-5 (online)",
               f"median rank (of {n_cand})", "top-5 offline, same windows"], rows),
    ])


@renders("sweep", "rtdecode time-resolved --data /tmp/sim_sweep --out /tmp/sweep_docs "
         "--executor local --every 2")
def _sweep() -> str:
    src = "docs/results/time_resolved_sweep.json"
    d = load(src)
    peak, chance = get(d, "peak", src=src), get(d, "chance", src=src)
    rows = []
    for key, label in (("ridge", "ridge"), ("deep", "deep")):
        p = get(peak, key, src=src)
        rows.append([label, f"{num(p['end_s'] * 1e3, 0)} ms", pct(p["single_top5"]),
                     pct(p["single_top1"]), f"{p['single_relative_median_rank']:.3f}"])
    rows.append(["chance", "", pct(chance["top5"]), pct(chance["top1"]),
                 f"{chance['relative_median_rank']:.3f}"])
    data = get(d, "data", src=src)
    return "\n".join([
        f"{d['n_done']} of {d['n_positions']} window positions run; {data['n_train_trials']} "
        f"training trials, {data['n_test_trials']} test trials of {data['n_test_images']} "
        f"images (`{src}`):",
        "",
        table(["", "peak (window end)", "top-5 at the peak (single trial)", "top-1",
               "relative median rank"], rows),
    ])


@renders("smoothing", ".venv/bin/python bench/smoothing.py")
def _smoothing() -> str:
    src = "docs/results/smoothing.json"
    d = load(src)
    rows = []
    for r in get(d, "runs", src=src):
        best, per_lag = r["best"], r["per_lag"]
        mid = [x["top5"] for x in per_lag if 0.2 <= x["lag_s"] <= 1.0]
        rows.append([
            "off" if not r["smooth_s"] else f"{r['smooth_s']:g} s",
            num(best["lag_s"] * 1e3, 0), pct(best["top5"]), num(best["median_rank"]),
            sum(x["top5"] >= 0.5 for x in per_lag), pct(sum(mid) / len(mid)),
            r["parity"]["ranks_equal"],
        ])
    first = get(d, "runs", src=src)[0]
    return "\n".join([
        f"sub-{d['subject']}'s held-out recording replayed at {d['speed']:g}x, the same windows "
        f"in every run, retrieval among {first['n_candidates']} images (chance top-5 "
        f"{pct(first['chance_top5'])}), 50 ms lag bins (`{src}`):",
        "",
        table(["integration (`--smooth-s`)", "best bin (ms)", "top-5 there", "median rank there",
               "bins at >= 50 % top-5", "mean top-5, windows ending 200-1000 ms",
               "online = offline ranks"], rows),
    ])


@renders("calibration", "PYTHONPATH=. LSLAPICFG=rtdecode/lsl/lsl_local.cfg nice -n 10 "
         ".venv/bin/python bench/calibration_curve.py --scratch-samples-per-epoch 2048 "
         "--json docs/results/calibration.json")
def _calibration() -> str:
    src = "docs/results/calibration.json"
    d = load(src)
    rows, first = [], get(d, "rows", 0, src=src)

    def cells(m: dict[str, Any] | None) -> list[str]:
        if m is None:
            return ["–", "–", "–"]
        return [f"{pct(m['top5'])} ({num(m['lag_s'] * 1e3, 0)} ms)", pct(m["top1"]),
                num(m["median_rank"])]

    frozen = any("calibration_frozen" in r for r in get(d, "rows", src=src))
    for r in get(d, "rows", src=src):
        rows.append([
            r["label"] if r["label"] != "all" else f"all ({num(r['minutes'])})",
            r["n_training_trials"], *cells(r["calibration"]),
            *([f"{pct(r['calibration_frozen']['top5'])} "
               f"({num(r['calibration_frozen']['lag_s'] * 1e3, 0)} ms)"
               if "calibration_frozen" in r else "–"] if frozen else []),
            *cells(r["scratch"]),
            pct(r["ridge"]["top5"]) if "ridge" in r else "–",
            num(r["calibration"]["seconds"], 0), num(r["scratch"]["seconds"], 0),
        ])
    lines = [
        f"{d['subject']}, new to the base checkpoint (trained on {', '.join(d['base_subjects'])}); "
        f"{first['n_test_trials']} test trials of {first['n_test_images']} test images, single "
        f"trials, chance top-5 {pct(first['chance_top5'])}; each model at its best window "
        f"position (window end after onset in brackets) (`{src}`):",
        "",
        table(["minutes", "training trials", "calibration: top-5", "top-1", "median rank",
               *(["trunk frozen: top-5"] if frozen else []),
               "scratch: top-5", "top-1", "median rank", "ridge: top-5", "calibration (s)",
               "scratch (s)"], rows),
    ]
    ratio = d.get("ratios") or {}
    if ratio:
        lines += ["", f"Calibration at {ratio['minutes']:g} minutes reaches "
                  f"{ratio['calibration_over_calibration_all']:.2f} of the calibration on all the "
                  f"subject's data (target >= {d['target_ratio']:g}: {verdict(ratio['target'])}) "
                  f"and {ratio['calibration_over_scratch_all']:.2f} of the model trained from "
                  "scratch on all of it"
                  + (f"; with the trunk frozen, {ratio['frozen_over_frozen_all']:.2f} of its own "
                     "calibration on all." if "frozen_over_frozen_all" in ratio else ".")]
    return "\n".join(lines)


@renders("calibration-trunk", "PYTHONPATH=. LSLAPICFG=rtdecode/lsl/lsl_local.cfg nice -n 10 "
         ".venv/bin/python bench/calibration_trunk.py --json docs/results/calibration_trunk.json")
def _calibration_trunk() -> str:
    src = "docs/results/calibration_trunk.json"
    d = load(src)
    first = get(d, "rows", 0, src=src)
    rows = [[num(r["trunk_lr_scale"]) + (" (selected)" if r["trunk_lr_scale"] == d.get("best")
                                         else ""),
             pct(r["top5"]), pct(r["top1"]), num(r["median_rank"]), num(r["lag_s"] * 1e3, 0),
             num(r["calibration_seconds"], 0)] for r in get(d, "rows", src=src)]
    return "\n".join([
        f"{d['subject']} calibrated from its first {d['minutes']:g} minutes; scored on its last "
        f"recording's {first['n_trials']} training trials relabelled as test trials (retrieval "
        f"among their {first['n_images']} images, chance top-5 {pct(first['chance_top5'])}; "
        f"no test image is scored), single trials, best window position (`{src}`):",
        "",
        table(["trunk_lr_scale", "top-5", "top-1", "median rank", "window end (ms)",
               "calibration (s)"], rows),
    ])


@renders("deep-vs-ridge", "rtdecode evaluate models/demo/encoder --data data/sim --json "
         "docs/results/demo_encoder_eval.json; the same for the three-subject retraining "
         "(docs/results/README.md)")
def _deep_vs_ridge() -> str:
    runs = (("demo encoder (sub-01, sub-03)", "docs/results/demo_encoder_eval.json"),
            ("retrained on sub-01, sub-02, sub-03", "docs/results/ablation_three_subjects_eval.json"))
    curves = [(label, src, get(load(src), "time_resolved", src=src)) for label, src in runs]
    ends = [round(o + curves[0][2]["window_s"], 6) for o in curves[0][2]["offsets_s"]]
    rows, behind = [], {label: 0 for label, _, _ in curves}
    for k, end in enumerate(ends):
        if not 0.1 - 1e-9 <= end <= 0.8 + 1e-9:
            continue  # the range: windows ending 100-800 ms after onset
        cells = []
        for label, _, c in curves:
            deep, ridge = c["model"]["single_top5"][k], c["ridge"]["single_top5"][k]
            behind[label] += deep < ridge
            cells += [pct(deep), pct(ridge), ("**" if deep < ridge else "") + num(
                100 * (deep - ridge), 1) + ("**" if deep < ridge else "")]
        rows.append([num(end * 1e3, 0), *cells])
    header = ["window end (ms)"]
    for label, _, _ in curves:
        header += [f"{label}: deep", "ridge", "deep - ridge (points)"]
    n = len(rows)
    return "\n".join([
        "Single-trial top-5 among the 200 test images, time-resolved (250 ms windows every "
        "50 ms; the ridge refitted at each position, the deep model one set of weights); "
        "bold: deep behind (" + "; ".join(f"`{src}`" for _, src in runs) + "):",
        "",
        table(header, rows),
        "",
        "Deep >= ridge at every position ending 100-800 ms: " + "; ".join(
            f"{label}: {n - behind[label]} of {n} positions"
            + (" (met)" if not behind[label] else " (**not met**)") for label, _, _ in curves)
        + ".",
    ])


# --------------------------------------------------------------------------- documents
def render_table(name: str) -> str:
    """The body of table ``name`` (ends with a newline)."""
    if name not in RENDERERS:
        raise KeyError(f"No renderer for the table {name!r}; the known tables are "
                       f"{sorted(RENDERERS)}.")
    fn, how = RENDERERS[name]
    try:
        body = fn()
    except NotMeasured as exc:
        body = not_measured(str(exc), how)
    except KeyError as exc:  # a JSON written by a newer or older benchmark
        body = not_measured(f"its JSON has no {exc}", how)
    return body.rstrip("\n") + "\n"


def render_document(text: str) -> str:
    """``text`` with every marked table rewritten from its JSON."""
    return MARKERS.sub(
        lambda m: m.group("begin") + render_table(m.group("name")) + m.group("end"), text)


def tables_in(text: str) -> list[str]:
    """The names of the marked tables in ``text``, in order."""
    return [m.group("name") for m in MARKERS.finditer(text)]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true",
                   help="write nothing; exit 1 if a document differs from its JSON")
    args = p.parse_args(argv)
    differ = []
    for rel in DOCUMENTS:
        path = ROOT / rel
        text = path.read_text(encoding="utf-8")
        new = render_document(text)
        if new != text:
            differ.append(rel)
            if not args.check:
                path.write_text(new, encoding="utf-8")
    if args.check and differ:
        print(f"These documents differ from their JSON: {', '.join(differ)}. Run `make docs`.",
              file=sys.stderr)
        return 1
    print(("rewrote " + ", ".join(differ)) if differ else "documents up to date")
    return 0


if __name__ == "__main__":
    sys.exit(main())
