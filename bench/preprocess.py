"""Benchmark of rtdecode.signal: latency of one online window, throughput of offline
epochs, and the filter chain's gain and group delay.

Run:  .venv/bin/python bench/preprocess.py [--repeats 200]
Writes bench/results/preprocess.json and prints short tables. Single-threaded on purpose
(the DecodeWorker preprocesses on one core while torch has the others).
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from common import write_json  # noqa: E402  (bench/common.py, beside this script)

from rtdecode.contracts import Window  # noqa: E402
from rtdecode.signal import PreprocessConfig, Preprocessor  # noqa: E402
from rtdecode.signal.streaming import StreamingPreprocessor, preprocess_recording  # noqa: E402

N_CHANNELS = 306
RATES_HZ = (1200.0, 1000.0, 600.614)
FREQS_HZ = (0.1, 0.5, 1.0, 5.0, 10.0, 20.0, 30.0, 40.0, 50.0, 59.0)


def time_calls(fn, repeats: int) -> tuple[np.ndarray, np.ndarray]:
    """Wall and thread-CPU time of ``repeats`` calls after two warm-up calls, in ms.

    On a shared machine the wall time includes waiting for a core; the CPU time of the
    calling thread does not, so both are reported.
    """
    fn()
    fn()
    wall, cpu = np.empty(repeats), np.empty(repeats)
    for i in range(repeats):
        c0, t0 = time.thread_time(), time.perf_counter()
        fn()
        wall[i] = (time.perf_counter() - t0) * 1e3
        cpu[i] = (time.thread_time() - c0) * 1e3
    return wall, cpu


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=200)
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "preprocess.json")
    args = ap.parse_args()

    ch_names = tuple(f"MEG{i:04d}" for i in range(N_CHANNELS))
    # Stream order differs from the model's and carries extra channels, as a real one does.
    stream_names = ch_names[::-1] + ("STI101", "EOG061")
    rng = np.random.default_rng(0)
    pre = Preprocessor(PreprocessConfig(ch_names=ch_names))
    results: dict = {"machine": platform.processor() or platform.machine(),
                     "n_channels": N_CHANNELS, "config": pre.config.to_dict(),
                     "window": [], "epochs": [], "response": []}
    results["config"].pop("ch_names")

    results["load_average_1min"] = os.getloadavg()[0]
    results["cpu_count"] = os.cpu_count()
    print(f"online window: {N_CHANNELS} channels, 0.25 s + {pre.config.pad_s} s history "
          f"(load average {results['load_average_1min']:.1f} on {os.cpu_count()} cores)")
    print(f"{'rate Hz':>9} {'in samples':>10} {'median ms':>10} {'p95 ms':>8} {'min ms':>8} "
          f"{'CPU ms':>8}")
    for fs in RATES_HZ:
        n_pad = pre.pad_samples(fs)
        n_in = n_pad + pre.window_samples(0.25, fs)
        x = (rng.standard_normal((len(stream_names), n_in)) * 1e-12).astype(np.float32)
        ms, cpu_ms = time_calls(
            lambda x=x, fs=fs, n_pad=n_pad: pre.transform(x, fs, stream_names, n_pad),
            args.repeats)
        row = {"sfreq_hz": fs, "n_in": n_in, "median_ms": float(np.median(ms)),
               "p95_ms": float(np.percentile(ms, 95)), "min_ms": float(ms.min()),
               "cpu_median_ms": float(np.median(cpu_ms))}
        results["window"].append(row)
        print(f"{fs:>9g} {n_in:>10d} {row['median_ms']:>10.2f} {row['p95_ms']:>8.2f} "
              f"{row['min_ms']:>8.2f} {row['cpu_median_ms']:>8.2f}")

    # Streaming (PreprocessConfig.streaming=True) against the block path on the SAME
    # sequence of windows (50 ms hop, as lane 1 takes them): per window, streaming pushes
    # the hop's new samples through the filters and slices; block refilters the history.
    results["streaming"] = []
    stream_pre = Preprocessor(PreprocessConfig(ch_names=ch_names, streaming=True))
    print(f"\nstreaming vs block, one window per 50 ms hop ({args.repeats} windows)")
    print(f"{'rate Hz':>9} {'stream median ms':>16} {'p95':>6} {'CPU':>6} "
          f"{'block median ms':>15} {'CPU':>6} {'block/stream':>12}")
    for fs in RATES_HZ:
        n_pad = pre.pad_samples(fs)
        n_win = n_pad + pre.window_samples(0.25, fs)
        n_hop = int(round(0.05 * fs))
        n_all = n_win + n_hop * (args.repeats + 2)
        x = (rng.standard_normal((len(stream_names), n_all)) * 1e-12).astype(np.float32)
        windows = [
            Window(data=x[:, e - n_win:e], sfreq_hz=fs, ch_names=stream_names,
                   first_sample=e - n_win, t_first=0.0, t_last=0.0, t_arrived=0.0, n_pad=n_pad)
            for e in range(n_win, n_all + 1, n_hop)
        ]
        sp = StreamingPreprocessor(stream_pre)
        timings = {}
        for name, fn in (("stream", sp.transform_window), ("block", pre.transform_window)):
            it = iter(windows)
            timings[name] = time_calls(lambda fn=fn, it=it: fn(next(it)), args.repeats)
        (sw, sc), (bw, bc) = timings["stream"], timings["block"]
        row = {"sfreq_hz": fs, "hop_samples": n_hop, "stream_median_ms": float(np.median(sw)),
               "stream_p95_ms": float(np.percentile(sw, 95)),
               "stream_cpu_median_ms": float(np.median(sc)),
               "block_median_ms": float(np.median(bw)), "block_cpu_median_ms": float(np.median(bc)),
               "block_over_stream_median": float(np.median(bw) / np.median(sw)),
               "restarts": sp.restarts}
        results["streaming"].append(row)
        print(f"{fs:>9g} {row['stream_median_ms']:>16.3f} {row['stream_p95_ms']:>6.2f} "
              f"{row['stream_cpu_median_ms']:>6.3f} {row['block_median_ms']:>15.2f} "
              f"{row['block_cpu_median_ms']:>6.2f} {row['block_over_stream_median']:>12.1f}")

    n_epochs = 64
    print(f"\noffline epochs: {n_epochs} x {N_CHANNELS} channels, 181/120 s + history")
    print(f"{'rate Hz':>9} {'epochs per CPU s':>16}")
    for fs in RATES_HZ:
        n_pad = pre.pad_samples(fs)
        n_in = n_pad + pre.window_samples(181 / 120, fs)
        x = (rng.standard_normal((n_epochs, len(stream_names), n_in)) * 1e-12).astype(np.float32)
        _, cpu_ms = time_calls(lambda x=x, fs=fs, n_pad=n_pad: pre.transform_epochs(
            x, fs, stream_names, n_pad), 3)
        row = {"sfreq_hz": fs, "n_epochs": n_epochs,
               "epochs_per_cpu_s": n_epochs / (np.median(cpu_ms) / 1e3)}
        results["epochs"].append(row)
        print(f"{fs:>9g} {row['epochs_per_cpu_s']:>16.0f}")

    # Offline streaming: what training and evaluation now run over each recording.
    results["recording"] = []
    rec_s = 30.0
    print(f"\noffline streaming: preprocess_recording over {rec_s:g} s of {N_CHANNELS} channels")
    print(f"{'rate Hz':>9} {'recording s per CPU s':>21}")
    for fs in RATES_HZ:
        x = (rng.standard_normal((len(stream_names), int(rec_s * fs))) * 1e-12).astype(np.float32)
        _, cpu_ms = time_calls(lambda x=x, fs=fs: preprocess_recording(
            stream_pre, x, fs, stream_names), 3)
        row = {"sfreq_hz": fs, "recording_s": rec_s,
               "recording_s_per_cpu_s": rec_s / (np.median(cpu_ms) / 1e3)}
        results["recording"].append(row)
        print(f"{fs:>9g} {row['recording_s_per_cpu_s']:>21.0f}")

    print("\nfilter chain (default config): gain dB / group delay ms")
    print(f"{'f Hz':>6} " + " ".join(f"{fs:>16g}" for fs in RATES_HZ))
    per_rate = {fs: pre.frequency_response(fs, FREQS_HZ) for fs in RATES_HZ}
    for i, f in enumerate(FREQS_HZ):
        cells = []
        for fs in RATES_HZ:
            gain, delay_s = per_rate[fs]
            cells.append(f"{20 * np.log10(gain[i]):>7.2f} / {delay_s[i] * 1e3:>6.1f}")
        print(f"{f:>6g} " + " ".join(cells))
        results["response"].append({
            "freq_hz": f,
            **{f"{fs:g}": {"gain_db": float(20 * np.log10(per_rate[fs][0][i])),
                           "group_delay_ms": float(per_rate[fs][1][i] * 1e3)} for fs in RATES_HZ},
        })

    write_json(args.out, results)
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()
