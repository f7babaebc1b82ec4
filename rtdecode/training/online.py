"""Online evaluation: ``rtdecode evaluate-online CKPT_DIR --recording FILE``.

A recording is replayed through the live path — an LSL outlet on loopback, the
StreamReader and MarkerReader, the Windower, the DecodeWorker — and every decoded window
is scored as the service scores it: the rank of the stimulus on screen within the
retrieval set, binned by the window's lag since that stimulus' onset
(:class:`~rtdecode.encoder.metrics.LagCurve`). Windows are cut by sample index, so a
replay faster than real time (``speed``) decodes the same windows, only sooner.

The same windows are then cut from the file itself, preprocessed and encoded offline in
one batch, and ranked by the same retrieval index: ``parity`` reports the largest
relative difference between the online and offline embeddings and whether every rank is
the same. The replay adds a sample-counter channel, which maps each online window onto
the file's samples exactly.

Threads: the replay runs in a thread of its own (``Player.start``), the reader, marker
reader and worker in theirs (as in the service); this function collects the frames and returns when the
recording has been decoded to its end.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rtdecode._utils.paths import portable_paths
from rtdecode.contracts import Frame, ParameterError, lag_s
from rtdecode.decoder.smoothing import smooth_sequence
from rtdecode.encoder.metrics import LagCurve

if TYPE_CHECKING:
    from rtdecode.data.recordings import Recording
    from rtdecode.decoding import Decoding
    from rtdecode.worker import WorkerOptions

__all__ = ["evaluate_online"]

def evaluate_online(
    ckpt_dir: str | Path,
    recording: str | Path,
    *,
    data: str | Path | None = None,
    subject: str | None = None,
    retrieval_set: str = "test",
    gallery: str | Path | None = None,
    speed: float = 4.0,
    hop_s: float = 0.05,
    json_out: str | Path | None = None,
    plots_dir: str | Path | None = None,
    device: str = "cpu",
    resolve_timeout_s: float = 30.0,
    progress: bool = True,
    smooth_s: float = 0.0,
) -> dict[str, Any]:
    """Replay ``recording`` through the live path and score every window it decodes.

    Parameters
    ----------
    ckpt_dir : path
        Encoder checkpoint folder (trained with the streaming recipe).
    recording : path
        A recording with stimulus events (``rtdecode replay`` reads it), e.g. a
        simulated subject's held-out session.
    data : path, optional
        A dataset card (``.toml``): the recording's event codes become the trials it
        names (labels, categories), as ``rtdecode train --data CARD`` read them.
    subject : str, optional
        The subject to decode as (required when the checkpoint has several).
    retrieval_set : str
        ``"test"``, ``"all"`` or a folder of images (as ``serve --retrieval-set``).
    gallery : path, optional
        Gallery folder (default: the checkpoint's).
    speed : float
        Replay pace relative to real time (windows are cut by sample index, so the
        speed changes which windows are late, not their content).
    hop_s : float
        Step between windows (the service's default, 50 ms).
    json_out : path, optional
        Write the report there as JSON.
    plots_dir : path, optional
        Write ``online_curve.png`` there.
    device : str
        Device of the encoder.
    resolve_timeout_s : float
        How long to wait for the replay's streams.
    progress : bool
        Show progress.
    smooth_s : float
        Time constant of the integration of consecutive windows' predictions
        (``serve --smooth-s``; 0: off). Offline, the same integrator runs over the
        offline predictions of the same windows in the same order, so the ranks compare.

    Returns
    -------
    dict
        ``per_lag`` (``[{lag_s, n, top1, top5, median_rank}]``, online), ``chance_top5``,
        ``n_candidates``, ``offline_per_lag`` (the same windows scored against the
        file's events), ``parity`` (``{n_windows, max_rel_err, ranks_equal, lags_equal,
        n_late_marker_windows, late_marker_windows, per_lag_on_time,
        offline_per_lag_on_time}``: ranks of the same stimulus on the online and offline
        embeddings; the windows whose marker had not arrived when they were cut, each as
        ``{first_sample, lag_online_s, lag_offline_s}``; both curves without those
        windows, which are equal when the live path is right), ``best``
        (the lag bin with the highest top-5), counts and settings.
    """
    from rtdecode.data.card import read_card
    from rtdecode.data.recordings import read_recording
    from rtdecode.decoding import open_decoding
    from rtdecode.lsl.streams import COUNTER_CHANNEL, COUNTER_MODULUS
    from rtdecode.training.encoder import predict
    from rtdecode.worker import WorkerOptions

    if not speed > 0:
        raise ParameterError("speed", f"{{param}}={speed} must be positive (1 = real time).")
    # Any checkpoint is scored, a fixed-window one too: the curve shows where it decodes.
    decoding = open_decoding(ckpt_dir, subject=subject, device=device, gallery=gallery,
                             retrieval_set=retrieval_set, allow_fixed_window=True, hop_s=hop_s,
                             progress=progress)
    model, pre, retrieval = decoding.model, decoding.preprocessor, decoding.retrieval
    window_s, subj = decoding.window_s, decoding.subject
    # a dataset card gives the recording's codes their labels (a CSV's Marker0 1 -> "house")
    card_path = data  # (``data`` names the file's samples below)
    rec = read_recording(recording) if card_path is None else read_card(card_path).read(recording)
    sfreq_hz = float(rec.raw.info["sfreq"])
    n_file = int(rec.raw.n_times)
    if n_file >= COUNTER_MODULUS:
        raise ValueError(
            f"{recording} has {n_file} samples; online evaluation maps windows through a "
            f"counter that wraps at {COUNTER_MODULUS}. Crop the recording."
        )

    # Scored as the service scores: windows ending up to the worker's stimulus hold after
    # an onset, in its lag bins.
    options = WorkerOptions(topk=5, smooth_s=smooth_s)
    frames, live_curve = _decode_live(
        rec, decoding, hop_s, speed, n_file / sfreq_hz, resolve_timeout_s, progress, options,
    )
    if not frames:
        raise RuntimeError(
            f"No window of {recording} was decoded online; check that the file has at "
            f"least {window_s} s of data in the model's channels."
        )

    # ------------------------------------------------------------ the same windows, offline
    data = rec.raw.get_data().astype(np.float32)  # LSL carried float32: the same values
    file_ch = list(rec.raw.ch_names)
    onsets = np.array([e.sample for e in rec.events], dtype=np.int64)
    ids = [e.value.get("image_id") for e in rec.events]
    X_off, file_firsts, kept = [], [], []
    # Streaming checkpoints: the file's streamed output, from the sample the live state
    # started at (the first decoded window's first sample), sliced as lane 1 slices it.
    streamed = None
    if pre.config.streaming:
        from rtdecode.signal.streaming import preprocess_recording

        w0 = frames[0].embedding.window
        start = int(w0.data[list(w0.ch_names).index(COUNTER_CHANNEL)][0])
        streamed = preprocess_recording(pre, data[:, start:], sfreq_hz, file_ch)
    for f in frames:
        w = f.embedding.window
        counter = w.data[list(w.ch_names).index(COUNTER_CHANNEL)]
        first = int(counter[0])
        if int(counter[-1]) - first != w.data.shape[1] - 1:
            continue  # a gap inside the window: nothing offline to compare with
        kept.append(f)
        file_firsts.append(first)
        if streamed is None:
            X_off.append(pre.transform(data[:, first:first + w.data.shape[1]], sfreq_hz,
                                       file_ch, w.n_pad))
        else:
            X_off.append(streamed.window(first + w.data.shape[1] - start, w.n_times))
    X_off = np.stack(X_off)
    off = predict(model, X_off, np.full(len(X_off), subj, np.int64))["clip"]
    on = np.stack([f.embedding.vector for f in kept]).reshape(off.shape)
    rel_err = float(np.max(np.abs(on - off)) / max(float(np.max(np.abs(off))), 1e-12))
    # The queries: each window's prediction, or its leaky integral as lane 1 computes it.
    queries = smooth_sequence(
        off.reshape(len(off), -1), np.array([f.embedding.window.last_sample for f in kept]),
        kept[0].embedding.window.sfreq_hz, smooth_s,
    )

    online, offline = live_curve.empty_like(), live_curve.empty_like()
    # The same two curves without the late windows: they must be equal.
    online_on_time, offline_on_time = live_curve.empty_like(), live_curve.empty_like()
    # Parity: the online rank of each window's stimulus equals the offline rank of the
    # same stimulus on the offline embedding. Separately, the stimulus the live path knew
    # is compared with the file's events: a marker that arrives after the data of a window
    # that starts at its onset leaves that window with the previous stimulus (late; each
    # one is listed by its first sample in the file and its two lags).
    n_ranked, ranks_equal, late = 0, True, []
    for f, first, vec in zip(kept, file_firsts, queries, strict=True):
        last = first + f.embedding.window.data.shape[1] - 1
        k = int(np.searchsorted(onsets, last, side="right")) - 1
        lag_off = None if k < 0 else lag_s(last, int(onsets[k]), sfreq_hz)
        true_off = None if k < 0 or lag_off > options.stimulus_hold_s else ids[k]
        is_late = (f.lag_s is None) != (lag_off is None) or (
            lag_off is not None and abs(f.lag_s - lag_off) >= 0.5 / sfreq_hz
        )
        if is_late:
            late.append({"first_sample": first, "lag_online_s": f.lag_s,
                         "lag_offline_s": lag_off})
        if f.true_rank is not None:
            n_ranked += 1
            ranks_equal &= f.true_rank == int(retrieval.rank_of(vec, f.true_id))
            online.add(f.lag_s, f.true_rank)
            if not is_late:
                online_on_time.add(f.lag_s, f.true_rank)
        if true_off is not None and true_off in retrieval:
            rank_off = int(retrieval.rank_of(vec, true_off))
            offline.add(lag_off, rank_off)
            if not is_late:
                offline_on_time.add(lag_off, rank_off)

    curve = online.as_dict()
    # the best bin by top-5, or by top-1 among 5 candidates or fewer (e.g. categories)
    k = "top1" if curve["n_candidates"] <= 5 else "top5"
    best = max(well_filled(curve["per_lag"]), key=lambda r: (r[k], -r["lag_s"]), default=None)
    report: dict[str, Any] = {
        "checkpoint": str(Path(ckpt_dir).resolve()),
        "recording": str(Path(recording).resolve()),
        "data": None if card_path is None else str(Path(card_path).resolve()),
        "subject": decoding.card.subject_name(subj),
        "retrieval_set": retrieval_set,
        "speed": speed,
        "window_s": window_s,
        "hop_s": hop_s,
        "smooth_s": smooth_s,
        "per_lag": curve["per_lag"],
        "chance_top1": curve["chance_top1"],
        "chance_top5": curve["chance_top5"],
        "n_candidates": curve["n_candidates"],
        "bin_s": curve["bin_s"],
        "offline_per_lag": offline.as_dict()["per_lag"],
        "best": best,
        "n_frames": len(frames),
        "n_ranked": n_ranked,
        "parity": {
            "n_windows": len(kept),
            "max_rel_err": rel_err,
            "ranks_equal": bool(ranks_equal),
            "lags_equal": not late,
            "n_late_marker_windows": len(late),
            "late_marker_windows": late,
            "per_lag_on_time": online_on_time.as_dict()["per_lag"],
            "offline_per_lag_on_time": offline_on_time.as_dict()["per_lag"],
        },
    }
    if plots_dir is not None:
        path = Path(plots_dir) / "online_curve.png"
        report["plots"] = {"online_curve": str(plot_lag_curves(report, path))}
    if json_out is not None:
        out = Path(json_out)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(portable_paths(report), indent=2))
    return report


def _decode_live(recording: Recording, decoding: Decoding, hop_s: float, speed: float,
                 duration_s: float, resolve_timeout_s: float, progress: bool,
                 options: WorkerOptions) -> tuple[list[Frame], LagCurve]:
    """Replay the file on loopback LSL and decode every window of it, in order.

    The input is opened by the service's own ``StreamSupervisor`` (reader, marker reader
    with its fallbacks, trigger channels, windower); returns the frames and the worker's
    session curve (for its settings).
    """
    from tqdm.auto import tqdm

    from rtdecode.io.replay import Player
    from rtdecode.stream import StreamSupervisor

    name = f"rtdecode-eval-{uuid.uuid4().hex[:8]}"
    frames: list[Frame] = []
    # Waits for the reader below before sending, so that no sample is missed.
    replay = Player(recording, name=name, source_id=name, speed=speed, counter=True,
                    wait_for_consumer_s=resolve_timeout_s).start()
    # The ring holds the whole recording: windows are taken in order, none is skipped.
    window_s, pad_s = decoding.window_s, decoding.preprocessor.config.pad_s
    supervisor = StreamSupervisor(
        name, window_s=window_s, hop_s=hop_s, pad_s=pad_s, source_id=name,
        buffer_s=max(30.0, duration_s + 5.0), resolve_timeout_s=resolve_timeout_s,
        latest_wins=False,
    ).open()
    worker = decoding.worker(supervisor.windower, frames.append, options)
    worker.start()
    n_expected = max(1, int((duration_s - window_s - pad_s) / hop_s))
    bar = tqdm(total=n_expected, desc="online windows", unit="window", disable=not progress)
    try:
        idle_since = None
        while True:
            if replay.error is not None:
                try:
                    replay.stop()  # re-raises the replay's error (once)
                except Exception as exc:
                    raise RuntimeError(f"The replay of {recording} failed: {exc}") from exc
            if worker.error is not None:
                raise RuntimeError(f"The decode worker failed: {worker.error}")
            n = len(frames)
            bar.update(n - bar.n)
            if not replay.running:
                # finished sending: done once the worker has had nothing new for 2 s
                if idle_since is None or n != idle_since[1]:
                    idle_since = (time.monotonic(), n)
                elif time.monotonic() - idle_since[0] > 2.0:
                    break
            time.sleep(0.1)
    finally:
        bar.close()
        worker.stop()
        supervisor.close()
        replay.stop()
    return list(frames), worker.lag_curve


def well_filled(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Lag bins with at least a quarter of the fullest bin's windows.

    Past the next onset only the odd window whose marker came late lands in a bin, and
    one window is no estimate: such bins are neither the best bin nor plotted.
    """
    n_full = max((r["n"] for r in rows), default=0)
    return [r for r in rows if 4 * r["n"] >= n_full]


def plot_lag_curves(report: dict[str, Any], path: str | Path) -> Path:
    """Top-5 accuracy per lag bin, online and offline, with chance (PNG).

    Top-1 with 5 candidates or fewer (categories), where top-5 is always 1.
    """
    from matplotlib.figure import Figure

    k = 1 if report["n_candidates"] <= 5 else 5

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig = Figure(figsize=(7.5, 4.2), dpi=110)
    ax = fig.add_subplot()
    for key, label, style in (("per_lag", "online (live path)", "-o"),
                              ("offline_per_lag", "offline (same windows)", "--")):
        rows = well_filled(report.get(key) or [])
        if rows:
            ax.plot([r["lag_s"] * 1e3 for r in rows], [100 * r[f"top{k}"] for r in rows],
                    style, ms=3, label=label)
    ax.axhline(100 * report.get(f"chance_top{k}", report["chance_top5"]), color="gray",
               ls=":", label="chance")
    ax.axvspan(0, 500, color="0.9", zorder=0, label="image on screen")
    ax.set_xlabel("window end after image onset (ms)")
    ax.set_ylabel(f"top-{k} accuracy among {report['n_candidates']} candidates (%)")
    ax.set_title(f"Online decoding, {report['window_s'] * 1e3:.0f} ms windows every "
                 f"{report['hop_s'] * 1e3:.0f} ms")
    ax.legend(loc="upper right", fontsize=8)
    ax.set_ylim(0, 100)
    fig.tight_layout()
    fig.savefig(path)
    return path
