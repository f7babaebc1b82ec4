"""Time-resolved decoding: one model per window position (Benchetrit et al. 2024, Fig. 3).

``rtdecode time-resolved --data DIR --out DIR`` slides a short window (the paper's 100 ms,
every 25 ms) across the epoch (default -0.2 .. 1.0 s around image onset). At each position
it fits a deep model (the BrainModule, through :func:`~rtdecode.training.encoder.
train_arrays`) and the ridge baseline (:func:`~rtdecode.training.evaluate.ridge_baseline`)
on the training trials, and scores zero-shot retrieval among the test images
(:func:`~rtdecode.training.evaluate.retrieval_scores`: top-1, top-5, median and relative
median rank, chance levels; single trials and averaged repetitions).

How the work is split:

1. **Prepare once** (:func:`init_sweep` writes ``OUT/settings.json``; :func:`prepare`,
   in the calling process): load the epochs over the
   whole range, fit the Preprocessor's statistics on the training trials' epochs, run it
   over every epoch (causal filters over the history and the epoch before each window, as
   in a continuous stream), look the image embeddings up. The arrays go to
   ``OUT/prepared.npz`` (plain arrays, no pickle) and their description to
   ``OUT/prepared.json``. :func:`write_prepared` takes arrays of your own instead.
2. **One job per position** (:func:`run_position`): a job gets only ``(OUT, index)``,
   loads the prepared arrays, slices its window at the model rate, fits and scores, and
   writes ``OUT/positions/pos_NNN.json`` atomically. Jobs go through submitit:
   ``local`` (processes on this machine, ``max_parallel`` at a time), ``slurm``
   (``submitit.AutoExecutor``, one job array; partition, GPUs and time limit passable) or
   ``debug`` (in this process, one after the other: for tests and debuggers; submitit's
   own DebugExecutor opens pdb on an exception, which a test cannot answer).
3. **Resumable** (:func:`run_sweep`): a position whose JSON exists is skipped (and the
   run says how many); a rerun with other settings in the same folder is refused.
   ``every=K`` runs every K-th position first; a later run fills in the rest.
4. **Report** (:func:`collect`): ``OUT/time_resolved.json`` (settings, per-position
   results, peaks) and ``OUT/time_resolved.png`` (top-5 against the time of the window
   END, relative to image onset: the lag the live service reports for a window; chance
   line; the image-on interval shaded).

Windows are slices of the preprocessed epoch on the model-rate grid. The grid is aligned
to the epoch's end (as the Preprocessor aligns it to a window's newest sample), so every
position's end is rounded to that grid; the JSON gives each position's actual
``start_s``/``end_s``/``centre_s``. A slice equals per-window preprocessing (what ``train``
does) up to the filters' start-up transient, which here sees more history.

Threading: everything runs in the calling thread; jobs are processes (``local``,
``slurm``) or calls in this thread (``debug``).
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import platform
import shutil
import socket
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rtdecode._utils.files import atomic_write
from rtdecode._utils.jsonable import jsonable
from rtdecode._utils.paths import portable_paths
from rtdecode.encoder.metrics import fit_target_stats, standardize
from rtdecode.training.encoder import (
    Recipe,
    _preprocessor,
    fit_scaler,
    image_targets,
    load_epochs_for,
    load_recipe,
    predict,
    preprocess_windows,
    train_arrays,
)
from rtdecode.training.evaluate import retrieval_scores, ridge_baseline

if TYPE_CHECKING:
    import submitit

__all__ = [
    "EXECUTORS",
    "MODELS",
    "SweepOutputs",
    "SweepSettings",
    "collect",
    "init_sweep",
    "make_executor",
    "prepare",
    "run_position",
    "run_sweep",
    "time_resolved",
    "window_positions",
    "write_prepared",
]

EXECUTORS = ("local", "slurm", "debug")
MODELS = ("deep", "ridge")
#: The deep model's recipe when none is given: small enough to fit one CPU core per job.
SWEEP_RECIPE: dict[str, Any] = {"preset": "demo", "max_epochs": 10}
SETTINGS_FILE = "settings.json"
PREPARED_FILE = "prepared.npz"
PREPARED_META = "prepared.json"
POSITIONS_DIR = "positions"
REPORT_JSON = "time_resolved.json"
REPORT_PNG = "time_resolved.png"
JOBS_DIR = "jobs"


# --------------------------------------------------------------------------- settings
@dataclass(frozen=True)
class SweepSettings:
    """What a sweep computes; a rerun in the same folder must use the same settings.

    Attributes
    ----------
    window_s : float
        Window length (the paper's 100 ms).
    stride_s : float
        Step between window positions (the paper's 25 ms).
    tmin_s, tmax_s : float
        Epoch range relative to image onset; every window lies inside it.
    models : tuple of str
        ``"deep"`` and/or ``"ridge"``.
    recipe : dict
        The deep model's training recipe (:class:`~rtdecode.training.encoder.Recipe`);
        its ``window_s`` / ``window_start_s`` are ignored (the sweep sets the windows).
    image_on_s : (float, float)
        Interval the image is on screen (shaded in the plot; THINGS-MEG: 0 .. 0.5 s).
    data : str
        Dataset folder (resolved).
    images_table : str or None
        THINGS images table, passed to ``load_epochs``.
    """

    window_s: float = 0.1
    stride_s: float = 0.025
    tmin_s: float = -0.2
    tmax_s: float = 1.0
    models: tuple[str, ...] = MODELS
    recipe: dict[str, Any] = field(default_factory=lambda: load_recipe(SWEEP_RECIPE).to_dict())
    image_on_s: tuple[float, float] = (0.0, 0.5)
    data: str = ""
    images_table: str | None = None

    def __post_init__(self) -> None:
        for name in ("window_s", "stride_s"):
            value = getattr(self, name)
            if not (np.isfinite(value) and value > 0):
                raise ValueError(f"{name}={value} must be a positive number of seconds.")
        if not self.tmax_s - self.tmin_s >= self.window_s:
            raise ValueError(
                f"The epoch range [{self.tmin_s}, {self.tmax_s}] s is shorter than one "
                f"{self.window_s} s window; widen tmin_s/tmax_s or shorten window_s."
            )
        models = tuple(self.models)
        unknown = sorted(set(models) - set(MODELS))
        if unknown or not models:
            raise ValueError(f"models={list(models)} must name some of {list(MODELS)}.")
        object.__setattr__(self, "models", models)
        object.__setattr__(self, "image_on_s", tuple(float(v) for v in self.image_on_s))

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict (tuples as lists)."""
        d = dataclasses.asdict(self)
        d["models"] = list(self.models)
        d["image_on_s"] = list(self.image_on_s)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SweepSettings:
        """Settings from a dict that ``to_dict`` wrote."""
        return cls(**{**d, "models": tuple(d["models"]), "image_on_s": tuple(d["image_on_s"])})


def window_positions(settings: SweepSettings, sfreq_model_hz: float) -> list[dict[str, Any]]:
    """Window positions on the model-rate grid aligned to the epoch's end.

    Nominal starts are ``tmin_s + k * stride_s`` while the window fits before ``tmax_s``;
    each window's end is rounded to the grid (``tmax_s - m / sfreq_model_hz``).

    Returns
    -------
    list of dict
        Per position: ``index``, ``start_s``, ``end_s``, ``centre_s`` (actual times
        relative to onset), ``back`` (model samples between the window's end and the
        epoch's end) and ``n_times`` (model samples in the window).
    """
    s = settings
    n_win = max(1, int(round(s.window_s * sfreq_model_hz)))
    n_epoch = int(round((s.tmax_s - s.tmin_s) * sfreq_model_hz))
    out: list[dict[str, Any]] = []
    seen: set[int] = set()
    k = 0
    while True:
        end_nominal = s.tmin_s + k * s.stride_s + s.window_s
        if end_nominal > s.tmax_s + 1e-9:
            break
        back = max(0, int(round((s.tmax_s - end_nominal) * sfreq_model_hz)))
        k += 1
        if back in seen or back + n_win > n_epoch:
            continue  # a stride below one model sample repeats a window; skip repeats
        seen.add(back)
        end = s.tmax_s - back / sfreq_model_hz
        start = end - n_win / sfreq_model_hz
        out.append({
            "index": len(out),
            "start_s": round(start, 6) + 0.0,
            "end_s": round(end, 6) + 0.0,
            "centre_s": round((start + end) / 2, 6) + 0.0,
            "back": back,
            "n_times": n_win,
        })
    if not out:
        raise ValueError(
            f"No {s.window_s} s window fits in [{s.tmin_s}, {s.tmax_s}] s at "
            f"{sfreq_model_hz:g} Hz; widen the range."
        )
    return out


def _sweep_recipe(recipe: str | Path | dict | Recipe | None, max_epochs: int | None) -> dict:
    """The deep model's recipe; ``max_epochs`` wins.

    ``recipe`` as given (a file or dict is a full Recipe, the paper's defaults where it is
    silent), else :data:`SWEEP_RECIPE`.
    """
    rc = load_recipe(SWEEP_RECIPE if recipe is None else recipe, max_epochs=max_epochs)
    return rc.to_dict()


# --------------------------------------------------------------------------- files
def _write_json(path: Path, doc: object) -> None:
    atomic_write(path, json.dumps(jsonable(doc), indent=1) + "\n")


def _position_path(out: Path, index: int) -> Path:
    return out / POSITIONS_DIR / f"pos_{index:03d}.json"


def _read_done(out: Path, positions: Sequence[dict[str, Any]]) -> dict[int, dict[str, Any]]:
    """Results already on disk, by position index (an unreadable file counts as not done)."""
    done = {}
    for pos in positions:
        path = _position_path(out, pos["index"])
        if not path.is_file():
            continue
        try:
            doc = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if doc.get("end_s") == pos["end_s"] and doc.get("start_s") == pos["start_s"]:
            done[pos["index"]] = doc
    return done


# --------------------------------------------------------------------------- preparation
def prepare(settings: SweepSettings, out_dir: str | Path, *, progress: bool = True) -> dict[str, Any]:
    """Load, preprocess and look up the targets once; write ``prepared.npz`` + ``.json``.

    Parameters
    ----------
    settings : SweepSettings
        ``data``, the epoch range and the recipe's ``[preprocess]`` and image encoder.
    out_dir : path
        The sweep folder.
    progress : bool

    Returns
    -------
    dict
        The description written to ``prepared.json`` (sizes, rates, subjects, channels,
        the positions).

    Raises
    ------
    ValueError
        No training or test trials; no images; a per-window baseline in the recipe (the
        epochs are preprocessed whole, so a window baseline cannot be applied).
    """
    from rtdecode.data.datasets import load_epochs
    from rtdecode.images import image_encoder_for
    from rtdecode.images.categories import open_gallery

    s = settings
    rc = load_recipe(s.recipe)
    if rc.preprocess.get("baseline_s") is not None:
        raise ValueError(
            "The sweep preprocesses whole epochs and slices windows from them, so a "
            "per-window baseline (preprocess.baseline_s) cannot apply; remove it from the recipe."
        )
    kwargs: dict[str, Any] = {}
    if s.images_table is not None:
        import inspect

        if "images_table" not in inspect.signature(load_epochs).parameters:
            raise ValueError(
                "This version of rtdecode.data.datasets.load_epochs reads no images table; "
                "leave --images-table out or update rtdecode."
            )
        kwargs["images_table"] = s.images_table
    es = load_epochs_for(s.data, lambda names: _preprocessor(rc, names), tmin_s=s.tmin_s,
                         tmax_s=s.tmax_s, subjects=rc.subjects, progress=progress, **kwargs)
    train, test = es.train, es.test
    if len(train) < 2:
        raise ValueError(f"{s.data} has {len(train)} training trials (trial_type 'exp'); the sweep needs at least 2.")
    if len(test) == 0:
        raise ValueError(f"{s.data} has no test trials (trial_type 'test'); nothing to score.")
    if es.gallery_root is None:
        raise ValueError(f"The images of {s.data} were not found; the targets need the gallery.")
    tr, te = es.train_mask, es.test_mask
    test_ids = [str(i) for i in es.image_ids[te]]
    candidate_ids = list(dict.fromkeys(test_ids))
    encoder = image_encoder_for(rc.image_spec)
    gallery = open_gallery(es.gallery_root, es.labels)  # images, or categories (a card)
    Y_train = image_targets(gallery, encoder, es.image_ids[tr], progress=progress)
    Y_candidates = image_targets(gallery, encoder, candidate_ids, progress=False)
    pre = _preprocessor(rc, es.ch_names)
    # Whole epochs, each the window [tmin_s, tmax_s) (streaming: cut from the recording's
    # streamed output as the live service would cut a window ending at tmax_s).
    span = (s.tmin_s, s.tmax_s - s.tmin_s)
    fit_scaler(train, pre, *span)
    X_train = preprocess_windows(train, pre, *span)
    X_test = preprocess_windows(test, pre, *span)
    del train, test
    arrays = {
        "X_train": X_train,
        "X_test": X_test,
        "Y_train": Y_train,
        "Y_candidates": Y_candidates,
        "subject_train": es.subject_index[tr],
        "subject_test": es.subject_index[te],
        "groups_train": np.array([str(i) for i in es.image_ids[tr]]),
        "ids_test": np.array(test_ids),
        "ids_candidates": np.array(candidate_ids),
        "positions_2d": es.positions_2d,
    }
    return write_prepared(
        out_dir, settings, arrays, sfreq_model_hz=float(pre.config.sfreq_model_hz),
        subjects=list(es.subjects), data=settings.data, sfreq_in_hz=es.sfreq_hz, target=encoder.name,
        preprocess=pre.to_dict(), drop_log=dict(es.drop_log),
    )


PREPARED_ARRAYS = ("X_train", "X_test", "Y_train", "Y_candidates", "groups_train", "ids_test",
                   "ids_candidates", "positions_2d")


def write_prepared(out_dir: str | Path, settings: SweepSettings, arrays: dict[str, np.ndarray], *,
                   sfreq_model_hz: float, subjects: Sequence[str] = ("sub-01",),
                   **meta: Any) -> dict[str, Any]:
    """Write the arrays every job loads (``prepared.npz``) and their description.

    :func:`prepare` calls it on a dataset; call it directly to sweep arrays of your own.

    Parameters
    ----------
    out_dir : path
        The sweep folder (see :func:`init_sweep`).
    settings : SweepSettings
        Gives the epoch range: the LAST column of ``X_*`` is the epoch's newest sample,
        and the epoch ends at ``settings.tmax_s``.
    arrays : dict of ndarray
        ``X_train`` (n, C, T) and ``X_test`` (m, C, T): preprocessed epochs at
        ``sfreq_model_hz``; ``Y_train`` (n, D): image embeddings (not standardised);
        ``Y_candidates`` (k, D): embeddings of the retrieval set, whose ids are
        ``ids_candidates`` (k,); ``ids_test`` (m,): each test trial's image;
        ``groups_train`` (n,): each training trial's image (the validation split keeps
        images whole); ``positions_2d`` (C, 2); optional ``subject_train`` (n,) and
        ``subject_test`` (m,) (default 0).
    sfreq_model_hz : float
    subjects : sequence of str
        Subject names (``subject_*`` index them).
    **meta
        Stored in ``prepared.json`` (e.g. ``data``, ``target``, ``preprocess``).

    Returns
    -------
    dict
        The description written to ``prepared.json``, with ``positions``.
    """
    missing = [k for k in PREPARED_ARRAYS if k not in arrays]
    if missing:
        raise ValueError(f"write_prepared needs the arrays {missing} as well.")
    a = dict(arrays)
    n, m = len(a["X_train"]), len(a["X_test"])
    a.setdefault("subject_train", np.zeros(n, np.int64))
    a.setdefault("subject_test", np.zeros(m, np.int64))
    for key in ("X_train", "X_test", "Y_train", "Y_candidates", "positions_2d"):
        a[key] = np.ascontiguousarray(a[key], dtype=np.float32)
    for key in ("subject_train", "subject_test"):
        a[key] = np.asarray(a[key], dtype=np.int64)
    for key in ("groups_train", "ids_test", "ids_candidates"):
        a[key] = np.array([str(v) for v in a[key]])
    if a["X_train"].ndim != 3 or a["X_train"].shape[1:] != a["X_test"].shape[1:]:
        raise ValueError(
            f"X_train {a['X_train'].shape} and X_test {a['X_test'].shape} must be epochs "
            "(n, channels, times) of the same channels and length."
        )
    sizes = {"Y_train": n, "groups_train": n, "subject_train": n, "ids_test": m, "subject_test": m,
             "ids_candidates": len(a["Y_candidates"])}
    wrong = {k: len(a[k]) for k, v in sizes.items() if len(a[k]) != v}
    if wrong:
        raise ValueError(f"Arrays {wrong} have a length that does not match their X/Y ({sizes}).")
    positions = window_positions(settings, sfreq_model_hz)
    n_times = int(a["X_train"].shape[-1])
    longest = max(p["back"] + p["n_times"] for p in positions)
    if longest > n_times:
        raise ValueError(
            f"The epochs have {n_times} samples at {sfreq_model_hz:g} Hz but the windows "
            f"reach {longest} samples back from tmax_s={settings.tmax_s}; give epochs covering "
            f"[{settings.tmin_s}, {settings.tmax_s}] s."
        )
    buf = io.BytesIO()
    np.savez(buf, **a)
    out = Path(out_dir)
    atomic_write(out / PREPARED_FILE, buf.getvalue())
    doc = {
        **meta,
        "sfreq_model_hz": float(sfreq_model_hz),
        "n_times_epoch": n_times,
        "n_channels": int(a["X_train"].shape[1]),
        "n_train_trials": n,
        "n_test_trials": m,
        "n_test_images": int(len(a["ids_candidates"])),
        "subjects": list(subjects),
        "positions": positions,
    }
    _write_json(out / PREPARED_META, doc)
    return doc


# --------------------------------------------------------------------------- one job
def run_position(out_dir: str | Path, index: int, threads: int = 1, device: str = "auto") -> dict[str, Any]:
    """Fit and score every model at one window position; the job a sweep submits.

    Parameters
    ----------
    out_dir : path
        The sweep folder (``settings.json``, ``prepared.npz``, ``prepared.json``).
    index : int
        Position index (see :func:`window_positions`).
    threads : int
        torch's intra-op threads in this job.
    device : str
        For the deep model (``"auto"``: CUDA when present).

    Returns
    -------
    dict
        What ``positions/pos_NNN.json`` holds: the position's times, per model the
        retrieval scores among the test images (``single`` and ``average``) and fit
        details, the seconds taken, host and process id.
    """
    import torch

    t0 = time.perf_counter()
    out = Path(out_dir)
    settings = SweepSettings.from_dict(json.loads((out / SETTINGS_FILE).read_text())["settings"])
    meta = json.loads((out / PREPARED_META).read_text())
    pos = meta["positions"][index]
    torch.set_num_threads(max(1, int(threads)))
    with np.load(out / PREPARED_FILE, allow_pickle=False) as f:
        a = {k: f[k] for k in f.files}
    stop = meta["n_times_epoch"] - pos["back"]
    window = slice(stop - pos["n_times"], stop)
    X_train = np.ascontiguousarray(a["X_train"][..., window])
    X_test = np.ascontiguousarray(a["X_test"][..., window])
    ids_test = [str(i) for i in a["ids_test"]]
    ids_candidates = [str(i) for i in a["ids_candidates"]]
    result: dict[str, Any] = {k: pos[k] for k in ("index", "start_s", "end_s", "centre_s", "n_times")}
    result["models"] = {}
    if "ridge" in settings.models:
        stats = fit_target_stats(a["Y_train"])
        pred, alpha = ridge_baseline(X_train, standardize(a["Y_train"], stats), X_test)
        scores = retrieval_scores(pred, ids_test, ids_candidates, standardize(a["Y_candidates"], stats))
        result["models"]["ridge"] = {**scores, "alpha": alpha}
    if "deep" in settings.models:
        fit = train_arrays(
            X_train, a["Y_train"], positions=a["positions_2d"], subject_index=a["subject_train"],
            n_subjects=len(meta["subjects"]), groups=a["groups_train"].tolist(),
            recipe=settings.recipe, device=device, progress=False,
        )
        pred = predict(fit.model, X_test, a["subject_test"])["clip"]
        scores = retrieval_scores(
            pred, ids_test, ids_candidates, standardize(a["Y_candidates"], fit.target_stats)
        )
        result["models"]["deep"] = {
            **scores, "best_epoch": fit.best_epoch, "n_epochs": len(fit.history),
            "n_train": fit.n_train, "n_val": fit.n_val,
        }
    result["seconds"] = round(time.perf_counter() - t0, 3)
    result["host"] = socket.gethostname()
    result["pid"] = os.getpid()
    (out / POSITIONS_DIR).mkdir(exist_ok=True)
    _write_json(_position_path(out, index), result)
    return result


# --------------------------------------------------------------------------- executors
def make_executor(kind: str, folder: str | Path, *, timeout_min: int = 120, cpus_per_task: int = 1,
                  slurm_partition: str | None = None, slurm_gpus: int | None = None,
                  slurm_array_parallelism: int | None = None, slurm_mem_gb: float | None = None,
                  slurm_extra: dict[str, Any] | None = None) -> submitit.Executor | None:
    """A submitit executor for the sweep's jobs (None for ``debug``).

    Parameters
    ----------
    kind : {"local", "slurm", "debug"}
    folder : path
        Where submitit writes job files and logs (``%j`` is the job id).
    timeout_min : int
        Time limit per job.
    cpus_per_task : int
        SLURM CPUs per job.
    slurm_partition, slurm_gpus, slurm_array_parallelism, slurm_mem_gb : optional
        SLURM options (``--partition``, GPUs per node, jobs of the array running at
        once, memory).
    slurm_extra : dict, optional
        Further ``slurm_*`` parameters of ``submitit.AutoExecutor.update_parameters``.
    """
    import submitit

    if kind not in EXECUTORS:
        raise ValueError(f"executor={kind!r} is unknown; use one of {list(EXECUTORS)}.")
    if kind == "debug":
        return None
    if kind == "local":
        ex = submitit.LocalExecutor(folder=str(folder))
        ex.update_parameters(timeout_min=int(timeout_min))
        return ex
    if shutil.which("srun") is None or shutil.which("sbatch") is None:
        raise RuntimeError(
            "executor='slurm' needs SLURM's srun and sbatch on PATH, and they are not here; "
            "run from the cluster's login node, or use the 'local' executor on this machine."
        )
    ex = submitit.AutoExecutor(folder=str(folder), cluster="slurm")
    params: dict[str, Any] = {
        "timeout_min": int(timeout_min), "cpus_per_task": int(cpus_per_task),
        "name": "rtdecode-time-resolved",
        "slurm_partition": slurm_partition,
        "gpus_per_node": slurm_gpus,
        "slurm_array_parallelism": slurm_array_parallelism,
        "mem_gb": slurm_mem_gb,
    }
    params.update(slurm_extra or {})
    ex.update_parameters(**{k: v for k, v in params.items() if v is not None})
    return ex


def _run_jobs(executor: submitit.Executor | None, kind: str, out: Path, todo: Sequence[int], *, threads: int,
              device: str, max_parallel: int, poll_s: float,
              on_done: Callable[[int, dict[str, Any]], None]) -> dict[int, str]:
    """Run the positions ``todo``; call ``on_done`` as each finishes. Returns failures."""
    failures: dict[int, str] = {}
    if kind == "debug":
        for i in todo:
            try:
                on_done(i, run_position(out, i, threads, device))
            except Exception as exc:  # reported with the others once all have run
                failures[i] = f"{type(exc).__name__}: {exc}"
        return failures
    queue = list(todo)
    running: dict[submitit.Job, int] = {}
    if kind == "slurm":  # one job array; the cluster schedules it
        with executor.batch():
            jobs = [executor.submit(run_position, str(out), i, threads, device) for i in queue]
        running = dict(zip(jobs, queue, strict=True))
        queue = []
    try:
        while queue or running:
            while queue and len(running) < max(1, max_parallel):
                i = queue.pop(0)
                running[executor.submit(run_position, str(out), i, threads, device)] = i
            finished = [job for job in running if job.done()]
            for job in finished:
                i = running.pop(job)
                try:
                    on_done(i, job.result())
                except Exception as exc:
                    last = str(exc).strip().splitlines()[-1:] or [type(exc).__name__]
                    failures[i] = f"{last[0]} (log: {job.paths.stderr})"
            if not finished:
                time.sleep(poll_s)
    except BaseException:
        for job in running:
            job.cancel(check=False)
        raise
    return failures


# --------------------------------------------------------------------------- driver
@dataclass
class SweepOutputs:
    """What :func:`time_resolved` returns.

    Attributes
    ----------
    json_path, png_path : Path
    report : dict
        The content of ``json_path``.
    ran : list of int
        Positions run by this call.
    skipped : list of int
        Positions already done (resumed).
    failed : dict of int to str
        Positions whose job failed, with the reason (and log path).
    """

    json_path: Path
    png_path: Path
    report: dict[str, Any]
    ran: list[int]
    skipped: list[int]
    failed: dict[int, str]


def init_sweep(out_dir: str | Path, settings: SweepSettings) -> Path:
    """Create the sweep folder with ``settings.json``, or check a resumed one's settings.

    Raises
    ------
    ValueError
        The folder holds a sweep with other settings (the differing keys are named).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / SETTINGS_FILE
    now = json.loads(json.dumps(settings.to_dict()))
    if path.is_file():
        old = json.loads(path.read_text()).get("settings", {})
        diff = sorted(k for k in set(old) | set(now) if old.get(k) != now.get(k))
        if diff:
            raise ValueError(
                f"{out} holds a sweep with other settings ({diff} differ); resume it with the "
                "same settings or choose another --out."
            )
    else:
        _write_json(path, {"format": "rtdecode-time-resolved", "format_version": 1, "settings": now})
    return out


def time_resolved(
    data_dir: str | Path,
    out_dir: str | Path,
    *,
    window_s: float = 0.1,
    stride_s: float = 0.025,
    tmin_s: float = -0.2,
    tmax_s: float = 1.0,
    models: Iterable[str] = MODELS,
    recipe: str | Path | dict | Recipe | None = None,
    max_epochs: int | None = None,
    images_table: str | Path | None = None,
    image_on_s: tuple[float, float] = (0.0, 0.5),
    progress: bool = True,
    log: Callable[[str], None] | None = print,
    **run_options: Any,
) -> SweepOutputs:
    """Run (or resume) a time-resolved sweep of a dataset; write its JSON and PNG.

    Parameters
    ----------
    data_dir : path
        A THINGS-like dataset (``rtdecode simulate`` writes one).
    out_dir : path
        The sweep folder: ``settings.json``, ``prepared.npz``/``.json``, one JSON per
        position in ``positions/``, job logs in ``jobs/``, ``time_resolved.json`` and
        ``time_resolved.png``.
    window_s, stride_s, tmin_s, tmax_s : float
        Window length, step and epoch range (s, relative to image onset).
    models : iterable of {"deep", "ridge"}
    recipe : TOML path, dict or Recipe, optional
        The deep model's recipe (default :data:`SWEEP_RECIPE`: the ``demo`` preset, 10
        epochs); a given recipe is used whole, the paper's defaults where it is silent.
    max_epochs : int, optional
        Overrides the recipe's.
    images_table : path, optional
        THINGS images table for ``load_epochs``.
    image_on_s : (float, float)
        The stimulus interval shaded in the plot.
    progress : bool
    log : callable, optional
        Receives one-line messages (reused arrays, resumed positions, failures).
    **run_options
        :func:`run_sweep`'s options: ``executor``, ``positions``, ``every``, ``device``,
        ``threads``, ``max_parallel``, ``timeout_min``, ``slurm``, ``poll_s``.

    Returns
    -------
    SweepOutputs
    """
    if not Path(data_dir).exists():
        raise FileNotFoundError(f"The dataset folder {data_dir} does not exist.")
    settings = SweepSettings(
        window_s=float(window_s), stride_s=float(stride_s), tmin_s=float(tmin_s),
        tmax_s=float(tmax_s), models=tuple(models), recipe=_sweep_recipe(recipe, max_epochs),
        image_on_s=tuple(image_on_s), data=str(Path(data_dir).resolve()),
        images_table=None if images_table is None else str(Path(images_table).resolve()),
    )
    executor = run_options.get("executor", "local")
    if executor not in EXECUTORS:  # before the (slow) preparation
        raise ValueError(f"executor={executor!r} is unknown; use one of {list(EXECUTORS)}.")
    out = init_sweep(out_dir, settings)
    say = log or (lambda _msg: None)
    if (out / PREPARED_FILE).is_file() and (out / PREPARED_META).is_file():
        say(f"Reusing the prepared arrays in {out / PREPARED_FILE}.")
    else:
        prepare(settings, out, progress=progress)
    return run_sweep(out, progress=progress, log=log, **run_options)


def run_sweep(
    out_dir: str | Path,
    *,
    executor: str = "local",
    positions: Sequence[int] | None = None,
    every: int = 1,
    device: str = "auto",
    threads: int = 1,
    max_parallel: int = 1,
    timeout_min: int = 120,
    slurm: dict[str, Any] | None = None,
    poll_s: float | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> SweepOutputs:
    """Run the positions of a prepared sweep folder not yet done; write the report.

    Parameters
    ----------
    out_dir : path
        A folder :func:`init_sweep` and :func:`prepare` (or :func:`write_prepared`) filled.
    executor : {"local", "slurm", "debug"}
        ``local``: submitit processes on this machine, ``max_parallel`` at a time;
        ``slurm``: one SLURM job array through ``submitit.AutoExecutor``; ``debug``:
        in this process, one position after the other.
    positions : sequence of int, optional
        Run only these position indices (e.g. every other one on a busy machine); the
        report holds every position done so far.
    every : int
        Run every ``every``-th of those positions (a later run with ``every=1`` fills in
        the rest: the positions done are skipped).
    device : str
        For the deep model inside each job (``"auto"``: CUDA when present).
    threads : int
        torch threads per job (and SLURM CPUs per task unless ``slurm`` says).
    max_parallel : int
        Local jobs running at once.
    timeout_min : int
        Time limit per job (local and SLURM).
    slurm : dict, optional
        SLURM options: ``partition``, ``gpus`` (per node), ``array_parallelism``,
        ``mem_gb``, ``cpus_per_task``, ``extra`` (more ``slurm_*`` parameters of
        ``submitit.AutoExecutor.update_parameters``).
    poll_s : float, optional
        How often running jobs are checked (default 0.5 s locally, 30 s on SLURM).
    progress : bool
        A progress bar over positions, updated as each job completes.
    log : callable, optional
        Receives one-line messages.

    Returns
    -------
    SweepOutputs

    Raises
    ------
    ValueError
        Unknown executor, positions or SLURM options.
    RuntimeError
        Some jobs failed (raised after the others have finished and the report of the
        positions done is written).
    """
    from tqdm.auto import tqdm

    if executor not in EXECUTORS:
        raise ValueError(f"executor={executor!r} is unknown; use one of {list(EXECUTORS)}.")
    say = log or (lambda _msg: None)
    out = Path(out_dir)
    meta = json.loads((out / PREPARED_META).read_text())
    all_pos = meta["positions"]
    wanted = list(range(len(all_pos))) if positions is None else sorted({int(i) for i in positions})
    bad = [i for i in wanted if not 0 <= i < len(all_pos)]
    if bad:
        raise ValueError(f"positions {bad} do not exist; this sweep has positions 0..{len(all_pos) - 1}.")
    if int(every) < 1:
        raise ValueError(f"every={every} must be a positive integer (1 runs every position).")
    wanted = wanted[:: int(every)]
    slurm = dict(slurm or {})
    known = {"partition", "gpus", "array_parallelism", "mem_gb", "cpus_per_task", "extra"}
    if set(slurm) - known:
        raise ValueError(f"Unknown SLURM option(s) {sorted(set(slurm) - known)}; known: {sorted(known)}.")
    done = _read_done(out, all_pos)
    skipped = [i for i in wanted if i in done]
    todo = [i for i in wanted if i not in done]
    if skipped:
        say(f"Resuming: {len(skipped)} of {len(wanted)} positions already done in "
            f"{out / POSITIONS_DIR}, skipped; {len(todo)} to run.")
    ex = None
    if todo:
        ex = make_executor(
            executor, out / JOBS_DIR / "%j", timeout_min=timeout_min,
            cpus_per_task=int(slurm.get("cpus_per_task", threads)),
            slurm_partition=slurm.get("partition"), slurm_gpus=slurm.get("gpus"),
            slurm_array_parallelism=slurm.get("array_parallelism"),
            slurm_mem_gb=slurm.get("mem_gb"), slurm_extra=slurm.get("extra"),
        )
    bar = tqdm(total=len(wanted), initial=len(skipped), unit="position", desc="time-resolved",
               disable=not progress)
    ran: list[int] = []

    def on_done(i: int, res: dict[str, Any]) -> None:
        ran.append(i)
        tops = {f"{name}_top5": f"{m['single']['top5']:.2f}" for name, m in res["models"].items()}
        bar.set_postfix({"end_ms": f"{1e3 * res['end_s']:.0f}", **tops})
        bar.update(1)

    try:
        failed = _run_jobs(
            ex, executor, out, todo, threads=threads, device=device, max_parallel=max_parallel,
            poll_s=poll_s if poll_s is not None else (30.0 if executor == "slurm" else 0.5),
            on_done=on_done,
        )
    finally:
        bar.close()
    json_path, png_path, report = collect(out)
    for i, why in sorted(failed.items()):
        say(f"Position {i} failed: {why}")
    if failed:
        raise RuntimeError(
            f"{len(failed)} of {len(todo)} positions failed ({sorted(failed)}); the report in "
            f"{json_path} holds the others. Fix the cause and rerun the same command: only "
            "the missing positions run."
        )
    return SweepOutputs(json_path, png_path, report, sorted(ran), skipped, failed)

# --------------------------------------------------------------------------- report
def collect(out_dir: str | Path) -> tuple[Path, Path, dict[str, Any]]:
    """Gather the per-position results into ``time_resolved.json`` and the curve PNG.

    Returns
    -------
    (json_path, png_path, report)
        ``report`` has ``settings``, ``data`` (counts, rates), ``x_axis``,
        ``positions`` (those done, in time order), ``curves`` (per model and metric, one
        value per done position), ``chance`` and ``peak`` per model.
    """
    out = Path(out_dir)
    settings = json.loads((out / SETTINGS_FILE).read_text())["settings"]
    meta = json.loads((out / PREPARED_META).read_text())
    done = _read_done(out, meta["positions"])
    results = [done[i] for i in sorted(done)]
    models = [m for m in settings["models"] if any(m in r["models"] for r in results)]
    curves: dict[str, Any] = {}
    chance: dict[str, float] = {}
    peak: dict[str, Any] = {}
    for m in models:
        rows = [r for r in results if m in r["models"]]
        curves[m] = {"end_s": [r["end_s"] for r in rows]}
        for mode in ("single", "average"):
            for key in ("top1", "top5", "median_rank", "relative_median_rank"):
                curves[m][f"{mode}_{key}"] = [r["models"][m][mode][key] for r in rows]
        first = rows[0]["models"][m]["single"]
        chance = {"top1": first["chance_top1"], "top5": first["chance_top5"],
                  "relative_median_rank": 0.5, "n_candidates": first["n_candidates"]}
        # the best top-5; ties (e.g. top-5 among <= 5 images) go to the best median rank
        top5, rmr = curves[m]["single_top5"], curves[m]["single_relative_median_rank"]
        best = max(range(len(rows)), key=lambda j: (top5[j], -rmr[j]))
        peak[m] = {"end_s": rows[best]["end_s"], "centre_s": rows[best]["centre_s"],
                   "single_top5": curves[m]["single_top5"][best],
                   "single_top1": curves[m]["single_top1"][best],
                   "single_relative_median_rank": curves[m]["single_relative_median_rank"][best]}
    report = {
        "format": "rtdecode-time-resolved",
        "format_version": 1,
        "settings": settings,
        "data": {k: meta.get(k) for k in ("data", "sfreq_in_hz", "sfreq_model_hz", "n_channels",
                                      "n_train_trials", "n_test_trials", "n_test_images",
                                      "subjects", "target", "drop_log")},
        "x_axis": "end_s: the window's end relative to image onset (the lag the live service reports)",
        "n_positions": len(meta["positions"]),
        "n_done": len(results),
        "chance": chance,
        "peak": peak,
        "curves": curves,
        "positions": results,
        "machine": {"python": platform.python_version(), "host": socket.gethostname()},
    }
    json_path = out / REPORT_JSON
    _write_json(json_path, portable_paths(report))  # committed: no machine paths
    png_path = _plot(report, out / REPORT_PNG)
    return json_path, png_path, report


def _plot(report: dict[str, Any], path: Path) -> Path:
    from matplotlib.figure import Figure

    s = report["settings"]
    fig = Figure(figsize=(7.5, 4.2), dpi=110)
    ax = fig.add_subplot()
    on = s["image_on_s"]
    ax.axvspan(1e3 * on[0], 1e3 * on[1], color="0.85", alpha=0.6, lw=0, label="image on")
    ax.axvline(0, color="black", lw=0.8)
    colors = {"deep": "tab:blue", "ridge": "tab:orange"}
    names = {"deep": f"deep ({s['recipe']['preset']} preset)", "ridge": "ridge"}
    for m, c in report["curves"].items():
        t_ms = 1e3 * np.asarray(c["end_s"])
        ax.plot(t_ms, 100 * np.asarray(c["single_top5"]), color=colors[m], lw=1.6, marker=".",
                label=f"{names[m]}, single trial")
        ax.plot(t_ms, 100 * np.asarray(c["average_top5"]), color=colors[m], lw=1.0, ls="--",
                label=f"{names[m]}, averaged repetitions")
    if report["chance"]:
        ax.axhline(100 * report["chance"]["top5"], color="grey", lw=1, ls=":", label="chance")
    ax.set_xlabel("window end relative to image onset (ms)")
    n_img = report["data"]["n_test_images"]
    ax.set_ylabel(f"top-5 accuracy among {n_img} test images (%)")
    title = (f"Time-resolved retrieval: one model per {1e3 * s['window_s']:.0f} ms window, "
             f"every {1e3 * s['stride_s']:.0f} ms")
    if report["n_done"] < report["n_positions"]:
        title += f" ({report['n_done']} of {report['n_positions']} positions run)"
    ax.set_title(title, fontsize=10)
    highest = max((max(c["single_top5"] + c["average_top5"]) for c in report["curves"].values()),
                  default=1.0)
    ax.set_ylim(0, min(100, 10 * np.ceil(12.5 * highest)))  # 25 % headroom, in tens
    ax.legend(fontsize=7, loc="upper right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    return path
