"""Train the brain encoder: ``rtdecode train --data DIR --out CKPT_DIR``.

Two entry points:

* :func:`train` reads a dataset folder (THINGS-like BIDS tree, e.g. the simulated
  subject), cuts the training window around every training image, fits the
  :class:`~rtdecode.signal.Preprocessor` statistics on it and runs it (the very code the
  live service runs), looks up the image embeddings in the gallery, trains, and writes a
  checkpoint folder.
* :func:`train_arrays` trains on arrays that are already preprocessed: windows ``X``
  and image embeddings ``Y``. :func:`train` wraps it; tests call it directly.

Optimisation follows Benchetrit et al. (2024): Adam (lr 3e-4), batches of 128,
``0.75 * CLIP + 0.25 * MSE`` against standardised embeddings, early stopping with
patience on a validation split drawn from the training data (whole images go to one
side, so repeated presentations never straddle the split). After every epoch the last
state goes to ``<out>/training/`` (safetensors + JSON, no pickle) for ``--resume``; the
best model so far is the checkpoint in ``<out>``.

Multi-GPU / multi-node: launch with ``torchrun``. When ``WORLD_SIZE > 1`` the process
group is initialised (NCCL on CUDA, gloo on CPU), each rank reads its share of every
global batch through a DistributedSampler, BatchNorm statistics and the contrastive
loss span the global batch, and only rank 0 writes files. ``batch_size`` is the global
batch, so a run on N processes follows the same trajectory as one process.

Threading: everything runs in the calling thread (DataLoader workers, when asked for,
are processes of torch's own).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import inspect
import math
import os
import platform
import time
import tomllib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from rtdecode.contracts import ParameterError
from rtdecode.encoder.checkpoint import CONFIG_FILE, WEIGHTS_FILE, resolve_device, save_checkpoint
from rtdecode.encoder.losses import CombinedLoss, clip_loss, mse_loss
from rtdecode.encoder.metrics import fit_target_stats, retrieval_metrics, standardize
from rtdecode.encoder.model import BrainModule, RidgeModule, build_model, fit_ridge, stack_positions
from rtdecode.encoder.presets import get_preset
from rtdecode.images.encoders import DEFAULT_IMAGE_ENCODER
from rtdecode.training.state import TRAINING_DIR, load_training_state, save_training_state

if TYPE_CHECKING:  # pragma: no cover - typing only
    from tqdm.auto import tqdm

    from rtdecode.data.datasets import EpochSet
    from rtdecode.data.things import ImagesTable
    from rtdecode.images.categories import CategoryGallery
    from rtdecode.images.encoders import ImageEncoder
    from rtdecode.images.gallery import Gallery
    from rtdecode.signal import Preprocessor

__all__ = [
    "Recipe",
    "TrainResult",
    "TrainSplit",
    "TrainingRun",
    "ValidationScores",
    "default_out_dir",
    "fit_ridge_checkpoint",
    "fit_riemann_checkpoint",
    "sensor_systems",
    "image_targets",
    "lagged_windows",
    "load_recipe",
    "predict",
    "fit_scaler",
    "load_epochs_for",
    "preprocess_windows",
    "train",
    "train_arrays",
]

MONITORS = {"val_loss": "min", "val_top5": "max"}
WINDOW_SAMPLINGS = ("stream", "fixed")


# --------------------------------------------------------------------------- recipe
@dataclass
class Recipe:
    """Everything a training run is configured with (``--config RECIPE.toml``).

    A TOML recipe sets any of these keys at top level (or under ``[train]``); the
    ``[model]`` table overrides architecture fields of the preset (e.g.
    ``aggregation = "attention"``) and the ``[preprocess]`` table overrides
    :class:`~rtdecode.signal.PreprocessConfig` fields (its defaults apply otherwise;
    ``false`` switches a filter, the baseline or the clamp off). Command-line flags win
    over the file.
    """

    preset: str = "paper"
    model: dict[str, Any] = field(default_factory=dict)
    # image targets
    image_encoder: str = DEFAULT_IMAGE_ENCODER
    image_encoder_path: str | None = None
    image_readout: str = "cls"
    # windows and preprocessing (the live service reuses all of these via the checkpoint)
    window_s: float = 0.25
    window_start_s: float = 0.1
    # "stream": windows of window_s whose END lies at every lag_step_s from lag_min_s to
    # lag_max_s after onset, as `serve` cuts them; "fixed": one window at window_start_s.
    window_sampling: str = "stream"
    lag_min_s: float = -0.2
    lag_max_s: float = 1.0
    lag_step_s: float = 0.05
    samples_per_epoch: int | None = None
    preprocess: dict[str, Any] = field(default_factory=dict)
    subjects: list[str] | None = None
    # optimisation
    lr: float = 3e-4
    weight_decay: float = 0.0
    batch_size: int = 128
    max_epochs: int = 100
    patience: int = 10
    monitor: str = "val_loss"
    val_fraction: float = 0.2
    lam: float = 0.75
    seed: int = 0
    num_workers: int = 0

    def __post_init__(self) -> None:
        from rtdecode.signal import PreprocessConfig

        known = {f.name for f in dataclasses.fields(PreprocessConfig)} - {"ch_names"}
        unknown = sorted(set(self.preprocess) - known)
        if unknown:
            raise ValueError(
                f"Unknown [preprocess] option(s) {unknown}; known options are {sorted(known)}."
            )
        # TOML has no null: false switches an optional step off (streaming is a switch).
        self.preprocess = {k: (None if v is False and k != "streaming" else v)
                           for k, v in self.preprocess.items()}
        if self.monitor not in MONITORS:
            raise ValueError(f"monitor={self.monitor!r} is unknown; use one of {sorted(MONITORS)}.")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ParameterError(
                "val_fraction", f"{{param}}={self.val_fraction} must lie in [0, 1)."
            )
        for name in ("batch_size", "max_epochs", "patience"):
            if int(getattr(self, name)) < 1:
                raise ParameterError(
                    name, f"{{param}}={getattr(self, name)} must be a positive integer."
                )
        if self.lr <= 0:
            raise ParameterError("lr", f"{{param}}={self.lr} must be positive.")
        if self.window_sampling not in WINDOW_SAMPLINGS:
            raise ValueError(
                f"window_sampling={self.window_sampling!r} is unknown; use one of "
                f"{WINDOW_SAMPLINGS}."
            )
        if self.window_sampling == "stream":
            if not (self.lag_step_s > 0 and self.lag_max_s >= self.lag_min_s):
                raise ValueError(
                    f"Streaming windows need lag_step_s > 0 and lag_max_s >= lag_min_s; got "
                    f"lag_min_s={self.lag_min_s}, lag_max_s={self.lag_max_s}, "
                    f"lag_step_s={self.lag_step_s}."
                )
        if self.samples_per_epoch is not None and int(self.samples_per_epoch) < 2:
            raise ValueError(
                f"samples_per_epoch={self.samples_per_epoch} must be at least 2 (or unset "
                "for every window each epoch)."
            )

    @property
    def lags_s(self) -> np.ndarray:
        """Window-end lags (s after onset) trained on: one per window position."""
        if self.window_sampling == "fixed":
            return np.array([self.window_start_s + self.window_s])
        n = int(np.floor((self.lag_max_s - self.lag_min_s) / self.lag_step_s + 1e-6)) + 1
        return np.round(self.lag_min_s + self.lag_step_s * np.arange(n), 6) + 0.0

    @property
    def image_spec(self) -> dict[str, Any]:
        """The image encoder of the targets, as ``images.image_encoder_for`` takes it."""
        return {"encoder": self.image_encoder, "encoder_path": self.image_encoder_path,
                "readout": self.image_readout}

    def window_meta(self) -> dict[str, Any]:
        """How training windows were cut, as stored in the checkpoint's ``offsets``."""
        out: dict[str, Any] = {"window_start_s": self.window_start_s,
                               "sampling": self.window_sampling}
        if self.window_sampling == "stream":
            out.update(lag_min_s=self.lag_min_s, lag_max_s=self.lag_max_s,
                       lag_step_s=self.lag_step_s)
        return out

    def to_dict(self) -> dict[str, Any]:
        """The recipe as a plain dict (for JSON/TOML)."""
        return dataclasses.asdict(self)


def load_recipe(recipe: str | Path | dict | Recipe | None = None, **overrides: Any) -> Recipe:
    """A Recipe from a TOML file, a dict or a Recipe, with ``overrides`` (None ignored).

    Unknown keys are an error that lists the known ones.
    """
    if isinstance(recipe, Recipe):
        values = recipe.to_dict()
    elif isinstance(recipe, dict):
        values = dict(recipe)
    elif recipe is None:
        values = {}
    else:
        path = Path(recipe)
        if not path.is_file():
            raise FileNotFoundError(f"Recipe {path} does not exist; give the path of a TOML file.")
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"Recipe {path} is not valid TOML: {exc}") from None
        values = {k: v for k, v in data.items() if k != "train"}
        values.update(data.get("train", {}))
    values.update({k: v for k, v in overrides.items() if v is not None})
    known = {f.name for f in dataclasses.fields(Recipe)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"Unknown recipe option(s) {unknown}; known options are {sorted(known)}.")
    return Recipe(**values)


# --------------------------------------------------------------------------- distributed
@dataclass(frozen=True)
class _Distributed:
    """Where this process trains: its rank among ``world`` processes, and its device.

    ``created``: this process initialised the process group, so it tears it down.
    """

    world: int
    rank: int
    device: torch.device
    created: bool

    @property
    def main(self) -> bool:
        """Rank 0: the process that writes files and shows the progress bar."""
        return self.rank == 0


def _setup_distributed(device: str | torch.device) -> _Distributed:
    """Initialise the process group when torchrun says there are several processes."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    dev = resolve_device(device)
    if world <= 1:
        return _Distributed(1, 0, dev, False)
    import torch.distributed as dist

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local_rank)
        torch.cuda.set_device(dev)
    created = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if dev.type == "cuda" else "gloo")
        created = True
    return _Distributed(dist.get_world_size(), dist.get_rank(), dev, created)


def _broadcast_flag(flag: bool, dist_info: _Distributed) -> bool:
    """Rank 0's decision, on every rank (early stopping must stop everyone together)."""
    if dist_info.world == 1:
        return flag
    import torch.distributed as dist

    t = torch.tensor([1.0 if flag else 0.0], device=dist_info.device)
    dist.broadcast(t, src=0)
    return bool(t.item())


# --------------------------------------------------------------------------- helpers
class _TrainStep(nn.Module):
    """Model + loss in one module, so DDP averages the temperature's gradient too."""

    def __init__(self, model: BrainModule, loss: CombinedLoss) -> None:
        super().__init__()
        self.model = model
        self.loss = loss

    def forward(self, x, subject, y):
        return self.loss(self.model(x, subject), y)


def predict(
    model: BrainModule,
    X: np.ndarray,
    subject_index: np.ndarray | None = None,
    *,
    batch_size: int = 256,
    device: str | torch.device | None = None,
) -> dict[str, np.ndarray]:
    """Run the model over preprocessed windows, in eval mode, without gradients.

    Parameters
    ----------
    X : ndarray, float32, shape (n, C, T)
    subject_index : ndarray of int, shape (n,), optional
    batch_size : int
    device : torch device, optional (default: the model's)

    Returns
    -------
    dict
        ``"clip"`` and ``"mse"``: float32 arrays of shape (n, D) or (n, N, D).
    """
    dev = next(model.parameters()).device if device is None else torch.device(device)
    was_training = model.training
    model.eval()
    outs: dict[str, list[np.ndarray]] = {"clip": [], "mse": []}
    try:
        with torch.no_grad():
            for i in range(0, len(X), batch_size):
                xb = torch.from_numpy(np.ascontiguousarray(X[i : i + batch_size])).to(dev)
                sb = None
                if subject_index is not None:
                    sb = torch.from_numpy(np.asarray(subject_index[i : i + batch_size], dtype=np.int64))
                    sb = sb.to(dev)
                out = model(xb, sb)
                for k in outs:
                    outs[k].append(out[k].float().cpu().numpy())
    finally:
        model.train(was_training)
    d = model.config.target_shape
    return {k: np.concatenate(v) if v else np.zeros((0, *d), np.float32) for k, v in outs.items()}


class _Rows:
    """Some rows of a window array, by index (``shape`` and ``len`` as if copied)."""

    def __init__(self, X: np.ndarray, rows: np.ndarray) -> None:
        self.X = X
        self.rows = rows
        self.shape = (len(rows), *X.shape[1:])

    def __len__(self) -> int:
        return len(self.rows)


class _RowsDataset(torch.utils.data.Dataset):
    """(window, subject, target) per training row; windows read from X by index."""

    def __init__(self, split: TrainSplit) -> None:
        if not isinstance(split.windows, _Rows):
            raise TypeError("The training split's windows must be rows of the window array.")
        self.X = torch.from_numpy(split.windows.X)
        self.rows = split.windows.rows
        self.S = torch.from_numpy(split.subjects)
        self.Y = torch.from_numpy(split.targets)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int):
        return self.X[int(self.rows[i])], self.S[i], self.Y[i]


def _split_groups(groups: Sequence[Any], val_fraction: float, seed: int) -> np.ndarray:
    """Boolean validation mask: a seeded random ``val_fraction`` of the groups."""
    labels = np.asarray([str(g) for g in groups])
    uniq = np.unique(labels)
    n_val = int(round(val_fraction * len(uniq)))
    if val_fraction > 0 and len(uniq) >= 4:
        n_val = min(max(n_val, 2), len(uniq) - 2)
    else:
        n_val = 0
    chosen = np.random.default_rng(seed).permutation(uniq)[:n_val]
    return np.isin(labels, chosen)


def _finite_rows(*arrays: np.ndarray) -> np.ndarray:
    ok = np.ones(len(arrays[0]), dtype=bool)
    for a in arrays:
        ok &= np.isfinite(a.reshape(len(a), -1)).all(axis=1)
    return ok


@dataclass(frozen=True)
class TrainSplit:
    """One side of the training/validation split, row for row.

    Attributes
    ----------
    windows : _Rows or ndarray, float32, shape (n, C, T)
        Preprocessed windows. The training side is rows of the full window array (an
        index, not a copy: the window array is the biggest one of a run).
    targets : ndarray, float32, shape (n, D) or (n, N, D)
        Image embeddings, standardised with the training side's statistics.
    subjects : ndarray, int64, shape (n,)
        Subject-layer row of each window.
    groups : ndarray of str, shape (n,), or None
        Image id of each window: validation scores retrieval among these images (the
        training side leaves them out).
    """

    windows: _Rows | np.ndarray
    targets: np.ndarray
    subjects: np.ndarray
    groups: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.windows)


@dataclass(frozen=True)
class ValidationScores:
    """One epoch's validation: the loss and single-trial retrieval among its images.

    ``as_dict()`` gives the epoch record's ``val_*`` keys (history, progress bar,
    ``monitor``).
    """

    val_loss: float
    val_top1: float
    val_top5: float
    val_chance_top5: float
    val_n_images: int

    def as_dict(self) -> dict[str, float | int]:
        """The scores under their history keys, in this order."""
        return dataclasses.asdict(self)


def _validate(
    model: BrainModule, loss_fn: CombinedLoss, val: TrainSplit, batch_size: int
) -> ValidationScores:
    """Validation loss and single-trial retrieval among the validation images.

    The loss uses the same batches every epoch.
    """
    X, Y = val.windows, val.targets
    out = predict(model, X, val.subjects, batch_size=batch_size)
    lam = loss_fn.lam
    scale = float(loss_fn.logit_scale.detach())
    losses, weights = [], []
    for i in range(0, len(X), batch_size):
        sl = slice(i, i + batch_size)
        if sl.stop - i < 2 and i > 0:
            continue
        clip = clip_loss(torch.from_numpy(out["clip"][sl]), torch.from_numpy(Y[sl]), scale)
        mse = mse_loss(torch.from_numpy(out["mse"][sl]), torch.from_numpy(Y[sl]))
        losses.append(float(lam * clip + (1 - lam) * mse))
        weights.append(len(X[sl]))
    uniq, inverse = np.unique(val.groups, return_inverse=True)
    first = np.array([np.flatnonzero(inverse == k)[0] for k in range(len(uniq))])
    metrics = retrieval_metrics(out["clip"], Y[first], inverse)
    return ValidationScores(
        val_loss=float(np.average(losses, weights=weights)),
        val_top1=metrics["top1"],
        val_top5=metrics["top5"],
        val_chance_top5=metrics["chance_top5"],
        val_n_images=int(len(uniq)),
    )


def _better(score: float, best: float | None, mode: str) -> bool:
    if best is None or not math.isfinite(best):
        return math.isfinite(score)
    return score < best if mode == "min" else score > best


# --------------------------------------------------------------------------- training
@dataclass
class TrainResult:
    """What :func:`train_arrays` returns.

    Attributes
    ----------
    model : BrainModule
        With the best weights (lowest validation loss, or per ``monitor``), eval mode.
    history : list of dict
        One entry per epoch: losses, validation metrics, seconds.
    best_epoch : int
    target_stats : dict
        ``{"mean", "std"}`` of the training embeddings (lists).
    n_train, n_val : int
        Windows used for training and for validation.
    n_dropped_nonfinite : int
        Windows dropped because ``X`` or ``Y`` held NaN/Inf.
    stopped_early : bool
    ckpt_dir : Path or None
    """

    model: BrainModule
    history: list[dict[str, Any]]
    best_epoch: int
    target_stats: dict[str, Any]
    n_train: int
    n_val: int
    n_dropped_nonfinite: int
    stopped_early: bool
    ckpt_dir: Path | None = None


@dataclass(frozen=True)
class TrainingRun:
    """One run of the training loop, resolved and checked once by :func:`train_arrays`.

    Attributes
    ----------
    recipe : Recipe
        Model, optimisation and early-stopping settings.
    dist : _Distributed
        This process's rank among the processes of the run, and its device.
    train, val : TrainSplit
        The windows the optimiser sees, and those that score each epoch (whole images
        on one side; ``val`` may be empty).
    positions : ndarray, shape (C, 2) or (n_systems, C, 2)
        Sensor positions of the spatial attention.
    n_subjects : int
        Rows of the subject layer.
    subject_system : tuple of int, or None
        With several sensor systems: the system of each subject.
    target_stats : dict
        ``{"mean", "std"}`` of the training embeddings (lists), stored in the checkpoint.
    n_dropped_nonfinite : int
        Windows left out because they held NaN/Inf.
    out_dir : Path or None
        Checkpoint folder (best model) and ``training/`` (last state); None writes nothing.
    meta : dict or None
        Checkpoint metadata given by the caller.
    resume : bool
        Continue the run saved in ``out_dir``.
    progress : bool
        Show a progress bar (rank 0 only).
    """

    recipe: Recipe
    dist: _Distributed
    train: TrainSplit
    val: TrainSplit
    positions: np.ndarray
    n_subjects: int
    subject_system: tuple[int, ...] | None
    target_stats: dict[str, Any]
    n_dropped_nonfinite: int
    out_dir: Path | None
    meta: dict[str, Any] | None
    resume: bool
    progress: bool

    @property
    def device(self) -> torch.device:
        """The device this process trains on."""
        return self.dist.device

    @property
    def writes(self) -> bool:
        """True on the process that writes the checkpoint and the resume state."""
        return self.out_dir is not None and self.dist.main


def train_arrays(
    X: np.ndarray,
    Y: np.ndarray,
    *,
    positions: np.ndarray,
    subject_index: np.ndarray | None = None,
    n_subjects: int | None = None,
    subject_system: Sequence[int] | None = None,
    groups: Sequence[Any] | None = None,
    recipe: Recipe | dict | str | Path | None = None,
    out_dir: str | Path | None = None,
    meta: dict[str, Any] | None = None,
    device: str | torch.device = "auto",
    resume: bool = False,
    progress: bool = True,
) -> TrainResult:
    """Train a BrainModule on preprocessed windows and their image embeddings.

    Parameters
    ----------
    X : ndarray, float32, shape (n, C, T)
        Preprocessed windows (model channels, model rate). Several sensor systems: each
        window's own channels first, zero-padded to the largest system's C.
    Y : ndarray, float32, shape (n, D) or (n, N, D)
        Image embedding of each window's stimulus (not standardised: this function
        standardises with the statistics of the training part and stores them).
    positions : ndarray, shape (C, 2), or (n_systems, C, 2)
        2D sensor positions (NaN = unknown); several systems NaN-padded
        (:func:`rtdecode.encoder.model.stack_positions`).
    subject_index : ndarray of int, shape (n,), optional
        Subject of each window (default: all 0).
    n_subjects : int, optional
        Subject-layer rows (default: ``max(subject_index) + 1``).
    subject_system : sequence of int, optional
        With several systems: the system of each subject (``n_subjects`` entries).
    groups : sequence, length n, optional
        Image id of each window: the validation split keeps groups whole. Default: one
        group per window.
    recipe : Recipe, dict, TOML path or None
    out_dir : path, optional
        Where to write the checkpoint (best model) and ``training/`` (last state).
        Only rank 0 writes.
    meta : dict, optional
        Checkpoint metadata (ch_names, preprocess, ...); ``target_stats`` and
        ``provenance`` are filled in here.
    device : str
        ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:N"``.
    resume : bool
        Continue from ``out_dir/training/`` (same recipe and data).
    progress : bool
        Show a progress bar (rank 0).

    Returns
    -------
    TrainResult
    """
    rc = load_recipe(recipe)
    X = np.asarray(X, dtype=np.float32)
    Y = np.asarray(Y, dtype=np.float32)
    if X.ndim != 3 or len(Y) != len(X):
        raise ValueError(
            f"X must be (n, channels, times) and Y (n, ...) with the same n; got X {X.shape} "
            f"and Y {Y.shape}."
        )
    n_all = len(X)
    S = np.zeros(n_all, np.int64) if subject_index is None else np.asarray(subject_index, np.int64)
    G = np.arange(n_all).astype(str) if groups is None else np.asarray([str(g) for g in groups])
    if len(S) != n_all or len(G) != n_all:
        raise ValueError(
            f"subject_index ({len(S)}) and groups ({len(G)}) need one entry per window ({n_all})."
        )
    n_subj = int(n_subjects) if n_subjects is not None else int(S.max(initial=0)) + 1
    ok = _finite_rows(X, Y)
    n_dropped = int((~ok).sum())
    if n_dropped:  # X is the biggest array of a run: copied only when rows must go
        X, Y, S, G = X[ok], Y[ok], S[ok], G[ok]
    val_mask = _split_groups(G, rc.val_fraction, rc.seed)
    Yt = Y[~val_mask]
    if len(Yt) < 2:
        raise ValueError(
            f"Only {len(Yt)} finite training windows are left (of {n_all}; {n_dropped} had "
            "NaN/Inf); training needs at least 2."
        )
    target_stats = fit_target_stats(Yt)
    # The training windows stay rows of X (an index, not a copy); validation is copied.
    train_split = TrainSplit(_Rows(X, np.flatnonzero(~val_mask)), standardize(Yt, target_stats),
                             S[~val_mask])
    val_split = TrainSplit(X[val_mask], standardize(Y[val_mask], target_stats), S[val_mask],
                           G[val_mask])

    dist_info = _setup_distributed(device)
    try:
        run = TrainingRun(
            recipe=rc, dist=dist_info, train=train_split, val=val_split,
            positions=np.asarray(positions), n_subjects=n_subj,
            subject_system=None if subject_system is None else tuple(subject_system),
            target_stats=target_stats, n_dropped_nonfinite=n_dropped,
            out_dir=None if out_dir is None else Path(out_dir), meta=meta, resume=resume,
            progress=progress,
        )
        result = _fit(run)
        if dist_info.created:
            import torch.distributed as dist

            # Rank 0 may still be writing the checkpoint: tear the group down together
            # (a rank that left first was once aborted by gloo, SIGABRT, on a busy machine).
            dist.barrier()
        return result
    finally:
        if dist_info.created:
            import torch.distributed as dist

            dist.destroy_process_group()


@dataclass
class _LoopState:
    """Where the epoch loop stands: the early-stopping state ``--resume`` continues from.

    Attributes
    ----------
    epoch : int
        The last finished epoch (0 before the first).
    history : list of dict
        One record per finished epoch.
    best_score, best_epoch : float or None, int
        The monitored score of the best epoch so far, and that epoch.
    bad_epochs : int
        Epochs since the best one (patience).
    best_state : dict of tensors, or None
        The best epoch's weights (on the CPU); not part of the saved state.
    """

    epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    best_score: float | None = None
    best_epoch: int = 0
    bad_epochs: int = 0
    best_state: dict[str, torch.Tensor] | None = None

    def saved(self, recipe: Recipe, spatial_rng: torch.Tensor) -> dict[str, Any]:
        """The state as ``save_training_state`` stores it."""
        return {"epoch": self.epoch, "best_score": self.best_score,
                "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
                "history": self.history, "recipe": recipe.to_dict(),
                "tensors": {"spatial_rng": spatial_rng}}


@dataclass(frozen=True)
class _Batches:
    """How this process reads the training windows: its share of every global batch."""

    global_batch: int
    sampler: torch.utils.data.DistributedSampler
    loader: torch.utils.data.DataLoader
    max_batches: int

    @classmethod
    def of(cls, run: TrainingRun) -> _Batches:
        """The global batch, split evenly over ranks; a small data set shrinks it."""
        from torch.utils.data import DataLoader, DistributedSampler

        rc, world = run.recipe, run.dist.world
        n_train = len(run.train)
        global_batch = min(rc.batch_size, (n_train // world) * world)
        per_rank = global_batch // world
        if per_rank < 1 or global_batch < 2:
            raise ValueError(
                f"{n_train} training windows cannot fill a batch of 2 on {world} processes; "
                "give more data or fewer processes."
            )
        dataset = _RowsDataset(run.train)
        sampler = DistributedSampler(dataset, num_replicas=world, rank=run.dist.rank,
                                     shuffle=True, seed=rc.seed, drop_last=True)
        loader = DataLoader(
            dataset, batch_size=per_rank, sampler=sampler, drop_last=True,
            num_workers=rc.num_workers, pin_memory=run.device.type == "cuda",
        )
        max_batches = len(loader)
        if rc.samples_per_epoch is not None:
            max_batches = max(1, min(max_batches, int(rc.samples_per_epoch) // global_batch))
        return cls(global_batch, sampler, loader, max_batches)


def _parallel(step: _TrainStep, run: TrainingRun) -> nn.Module:
    """The module the loop calls: ``step`` itself, or wrapped in DDP on several processes."""
    if run.dist.world == 1:
        return step
    from torch.nn.parallel import DistributedDataParallel as DDP

    dev = run.device
    # Buffers need no broadcast before each forward: BatchNorm statistics are
    # reduced over all ranks, so they stay identical everywhere.
    no_sync = (
        {"forward_sync_buffers": False}
        if "forward_sync_buffers" in inspect.signature(DDP).parameters
        else {"broadcast_buffers": False}
    )
    return DDP(
        step,
        device_ids=[dev.index] if dev.type == "cuda" else None,
        find_unused_parameters=run.recipe.lam in (0.0, 1.0),
        **no_sync,
    )


def _resumed(run: TrainingRun, model: BrainModule, loss_fn: CombinedLoss,
             opt: torch.optim.Optimizer) -> _LoopState:
    """Load the saved run of ``run.out_dir`` into the modules and the optimiser."""
    out = run.out_dir
    if out is None:
        raise ValueError("resume=True needs out_dir, the folder of the run to continue.")
    state = load_training_state(out, {"model": model, "loss": loss_fn}, opt)
    saved = {k: v for k, v in state.get("recipe", {}).items() if k != "max_epochs"}
    now = {k: v for k, v in run.recipe.to_dict().items() if k != "max_epochs"}
    diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if diff:
        raise ValueError(
            f"The run in {out} used a different recipe ({diff} differ); resume with the "
            "same recipe (only max_epochs may change), or start a new run."
        )
    if "spatial_rng" in state["tensors"]:
        model.spatial.generator.set_state(state["tensors"]["spatial_rng"])
    loop = _LoopState(
        epoch=int(state["epoch"]), history=list(state["history"]),
        best_score=state.get("best_score"), best_epoch=int(state.get("best_epoch", 0)),
        bad_epochs=int(state.get("bad_epochs", 0)),
    )
    if (out / WEIGHTS_FILE).is_file():
        from safetensors.torch import load_file

        loop.best_state = load_file(out / WEIGHTS_FILE)
    return loop


def _train_epoch(runner: nn.Module, opt: torch.optim.Optimizer, batches: _Batches,
                 dev: torch.device, bar: tqdm) -> dict[str, float]:
    """One pass over this process's batches: the mean loss and its parts per batch.

    Returns
    -------
    dict
        ``train_loss``, ``train_clip``, ``train_mse`` (the epoch record's keys).
    """
    sums = {"loss": 0.0, "clip": 0.0, "mse": 0.0}
    n_batches = 0
    for xb, sb, yb in batches.loader:
        if n_batches >= batches.max_batches:
            break  # samples_per_epoch: the sampler's order differs every epoch
        xb, sb, yb = xb.to(dev, non_blocking=True), sb.to(dev), yb.to(dev)
        loss, parts = runner(xb, sb, yb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        n_batches += 1
        sums["loss"] += float(loss.detach())
        sums["clip"] += float(parts["clip"])
        sums["mse"] += float(parts["mse"])
        bar.set_postfix(loss=f"{sums['loss'] / n_batches:.3f}", refresh=False)
    return {f"train_{k}": v / max(n_batches, 1) for k, v in sums.items()}


def _fit(run: TrainingRun) -> TrainResult:
    """The epoch loop: train, validate, keep the best weights, stop on patience."""
    from tqdm.auto import tqdm

    rc, dev, dist_info = run.recipe, run.device, run.dist
    n_channels, n_times = run.train.windows.shape[1:]
    torch.manual_seed(rc.seed)
    systems = {} if run.subject_system is None else {"subject_system": run.subject_system}
    model = build_model(
        rc.preset, n_channels, n_times, run.positions, n_subjects=run.n_subjects,
        target_dim=run.train.targets.shape[1:], seed=rc.seed, **systems, **rc.model,
    ).to(dev)
    loss_fn = CombinedLoss(rc.lam).to(dev)
    step = _TrainStep(model, loss_fn)
    opt = torch.optim.Adam(step.parameters(), lr=rc.lr, weight_decay=rc.weight_decay)
    runner = _parallel(step, run)
    batches = _Batches.of(run)
    mode = MONITORS[rc.monitor]
    has_val = len(np.unique(run.val.groups)) >= 2
    loop = _resumed(run, model, loss_fn, opt) if run.resume else _LoopState()
    out = run.out_dir
    provenance = {
        "recipe": rc.to_dict(),
        "n_train": int(len(run.train)),
        "n_val": int(len(run.val)),
        "n_dropped_nonfinite": run.n_dropped_nonfinite,
        "world_size": dist_info.world,
        "device": str(dev),
        **_software(),
    }

    def write_checkpoint(epoch: int) -> None:
        save_checkpoint(out, model, _checkpoint_meta(
            run.meta, n_channels, run.positions, run.target_stats,
            {**provenance, "best_epoch": epoch, "history": loop.history}))

    bar = tqdm(
        total=rc.max_epochs, initial=min(loop.epoch, rc.max_epochs), unit="epoch",
        desc="training", disable=not (run.progress and dist_info.main),
    )
    stopped_early = False
    try:
        for epoch in range(loop.epoch + 1, rc.max_epochs + 1):
            t0 = time.perf_counter()
            batches.sampler.set_epoch(epoch)
            step.train()
            record: dict[str, Any] = {"epoch": epoch}
            record.update(_train_epoch(runner, opt, batches, dev, bar))
            record["logit_scale"] = float(loss_fn.logit_scale.detach())
            if has_val:
                record.update(_validate(model, loss_fn, run.val, batches.global_batch).as_dict())
                score = record[rc.monitor]
            else:
                score = -record["train_loss"] if mode == "max" else record["train_loss"]
            record["seconds"] = round(time.perf_counter() - t0, 3)
            loop.history.append(record)
            loop.epoch = epoch
            if _better(score, loop.best_score, mode):
                loop.best_score, loop.best_epoch, loop.bad_epochs = score, epoch, 0
                loop.best_state = {k: v.detach().cpu().clone()
                                   for k, v in model.state_dict().items()}
                if run.writes:
                    write_checkpoint(epoch)
            else:
                loop.bad_epochs += 1
            stop = _broadcast_flag(loop.bad_epochs >= rc.patience, dist_info)
            if run.writes:
                save_training_state(out, {"model": model, "loss": loss_fn}, opt,
                                    loop.saved(rc, model.spatial.generator.get_state()))
            bar.update(1)
            post = {"loss": f"{record['train_loss']:.3f}"}
            if has_val:
                post.update(val_loss=f"{record['val_loss']:.3f}", val_top5=f"{record['val_top5']:.2f}")
            bar.set_postfix(post)
            if stop:
                stopped_early = True
                break
    finally:
        bar.close()
    if loop.best_state is not None:
        model.load_state_dict(loop.best_state)
    model.eval()
    if run.writes and not (out / WEIGHTS_FILE).is_file():
        write_checkpoint(loop.best_epoch)
    return TrainResult(
        model=model,
        history=loop.history,
        best_epoch=loop.best_epoch,
        target_stats=run.target_stats,
        n_train=int(len(run.train)),
        n_val=int(len(run.val)),
        n_dropped_nonfinite=run.n_dropped_nonfinite,
        stopped_early=stopped_early,
        ckpt_dir=out,
    )


# --------------------------------------------------------------------------- data
def preprocess_windows(epochs: EpochSet, preprocessor: Preprocessor, window_start_s: float,
                       window_s: float,
                       *, scaled: bool = True) -> np.ndarray:
    """Cut a window from every epoch of an EpochSet and preprocess it, as the live service does.

    Block path (raw epochs): cuts ``[window_start_s, + window_s)`` with filter history and
    runs ``Preprocessor.transform_epochs``. Streaming path (epochs loaded with
    ``stream=``, see :func:`load_epochs_for`): slices the window that ends at sample
    ``onset + round((window_start_s + window_s) * sfreq)`` from the recording's streamed
    output (``EpochSet.stream_window``), as the live StreamingPreprocessor slices the
    window ending at that sample, then ``Preprocessor.finish``.

    Parameters
    ----------
    scaled : bool
        False: leave the robust scaling and clamp out (the input of the scaler's fit).

    Returns
    -------
    ndarray, float32, shape (n_epochs, n_model_channels, n_times_out)
    """
    streaming = bool(getattr(preprocessor.config, "streaming", False))
    if streaming != bool(getattr(epochs, "streamed", False)):
        raise ValueError(
            f"The preprocessing is {'streaming' if streaming else 'block'} but the epochs "
            f"hold {'streamed spans' if epochs.streamed else 'raw samples'}; load them with "
            "load_epochs_for(..., preprocessor) so that both agree."
        )
    if streaming:
        return preprocessor.finish(epochs.stream_window(window_start_s, window_s), scaled=scaled)
    raw = epochs.window(window_start_s, window_s)
    return preprocessor.transform_epochs(raw, epochs.sfreq_hz, epochs.ch_names, epochs.n_pad,
                                         scaled=scaled)


def fit_scaler(epochs: EpochSet, preprocessor: Preprocessor, window_start_s: float,
               window_s: float) -> None:
    """Fit the robust scaler on the window ``[window_start_s, + window_s)`` of every epoch.

    Either path: the statistic (``Preprocessor.fit_unscaled``) sees the preprocessed,
    unscaled reference windows, cut as :func:`preprocess_windows` cuts them.
    """
    preprocessor.fit_unscaled(
        preprocess_windows(epochs, preprocessor, window_start_s, window_s, scaled=False))


def load_epochs_for(
    data_dir: str | Path,
    preprocessor_for: Callable[[Sequence[str]], Preprocessor],
    *,
    tmin_s: float,
    tmax_s: float,
    subjects: Iterable[str] | None = None,
    progress: bool = True,
    ch_names: Sequence[str] | None = None,
    image_root: str | Path | None = None,
    images_table: str | Path | ImagesTable | None = None,
) -> EpochSet:
    """``load_epochs`` for a preprocessing: streamed spans or raw epochs with history.

    Parameters
    ----------
    data_dir : path
    preprocessor_for : callable
        ``preprocessor_for(ch_names) -> Preprocessor``; its config decides the path
        (``streaming``) and the filter history (``pad_s``).
    tmin_s, tmax_s : float
        Span around each onset the windows must lie in.
    subjects, progress, ch_names, image_root, images_table
        As ``rtdecode.data.datasets.load_epochs`` takes them.

    Returns
    -------
    EpochSet
    """
    from rtdecode.data.datasets import load_epochs

    config = preprocessor_for(("placeholder",)).config
    stream = preprocessor_for if config.streaming else None
    return load_epochs(data_dir, tmin_s=tmin_s, tmax_s=tmax_s, pad_s=config.pad_s,
                       subjects=subjects, progress=progress, ch_names=ch_names,
                       image_root=image_root, images_table=images_table, stream=stream)


def lagged_windows(
    epochs: EpochSet, preprocessor: Preprocessor, lags_s: Sequence[float], window_s: float,
    progress: bool = False,
) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessed windows of every epoch at every window-end lag, as `serve` cuts them.

    Parameters
    ----------
    epochs : EpochSet
        Epochs covering ``[min(lags_s) - window_s, max(lags_s)]`` (from
        :func:`load_epochs_for`: streamed spans, or raw samples plus filter history).
    preprocessor : Preprocessor
        Fitted.
    lags_s : sequence of float
        Window ends relative to onset (s); a window covers ``[lag - window_s, lag)``.
    window_s : float
    progress : bool

    Returns
    -------
    X : ndarray, float32, shape (n_lags * n_epochs, n_model_channels, n_times_out)
        Lag-major: rows ``k * n_epochs ... (k + 1) * n_epochs - 1`` are lag ``k``.
    epoch_index : ndarray, int64, shape (n_lags * n_epochs,)
        The epoch each row comes from (index targets, subjects and groups with it).
    """
    from tqdm.auto import tqdm

    lags = [float(v) for v in lags_s]
    n = len(epochs)
    first = preprocess_windows(epochs, preprocessor, lags[0] - window_s, window_s)
    X = np.empty((len(lags) * n, *first.shape[1:]), dtype=np.float32)
    X[:n] = first
    for k, lag in enumerate(tqdm(lags[1:], desc="windows", unit="lag",
                                 disable=not progress or len(lags) < 2), start=1):
        X[k * n:(k + 1) * n] = preprocess_windows(epochs, preprocessor, lag - window_s, window_s)
    return X, np.tile(np.arange(n, dtype=np.int64), len(lags))


def image_targets(gallery: Gallery | CategoryGallery, encoder: ImageEncoder, image_ids: Sequence[str],
                  progress: bool = True) -> np.ndarray:
    """Embedding of each image id (rows of ``gallery.embeddings(encoder)``).

    Raises
    ------
    ValueError
        Names the ids the gallery lacks.
    """
    emb = gallery.embeddings(encoder, progress=progress)
    missing = sorted({str(i) for i in image_ids if str(i) not in gallery})
    if missing:
        raise ValueError(
            f"The gallery {gallery.root} lacks {len(missing)} image(s) the data shows, e.g. "
            f"{missing[:5]}; point the data at the gallery its events were made with."
        )
    return np.ascontiguousarray(emb[[gallery.index(str(i)) for i in image_ids]])


def _preprocessor(rc: Recipe, ch_names: Sequence[str]) -> Preprocessor:
    """The recipe's Preprocessor.

    New training runs stream (``[preprocess] streaming = false`` keeps the block path);
    PreprocessConfig's own default stays the block path, so a checkpoint whose config
    lacks the key still loads as it was trained.
    """
    from rtdecode.signal import PreprocessConfig, Preprocessor

    options = {"streaming": True, **rc.preprocess}
    return Preprocessor(PreprocessConfig(ch_names=tuple(ch_names), **options))


def default_out_dir(data_dir: str | Path) -> Path:
    """Where ``rtdecode train`` writes without ``--out``: the dataset's BIDS derivatives."""
    data = Path(data_dir).expanduser()
    if data.is_file():
        return data.parent / f"{data.stem}-encoder"
    return data / "derivatives" / "rtdecode" / "encoder"


def train(
    data_dir: str | Path,
    out_dir: str | Path | None = None,
    *,
    preset: str | None = None,
    recipe: str | Path | dict | Recipe | None = None,
    max_epochs: int | None = None,
    device: str = "auto",
    resume: bool = False,
    seed: int | None = None,
    subjects: Sequence[str] | None = None,
    progress: bool = True,
) -> Path:
    """Train an encoder on a dataset folder and write its checkpoint.

    Every subject of the dataset trains one model, whatever its sensor system: each
    system's channels get their own preprocessing (fitted on that system's training
    windows) and their own sensor positions in the spatial attention, and the
    checkpoint keeps both per system (``systems``; see docs/encoder.md).

    Parameters
    ----------
    data_dir : path
        A THINGS-like dataset (``rtdecode simulate`` writes one).
    out_dir : path, optional
        Checkpoint folder to write (``model.safetensors``, ``config.json``,
        ``training/``); default :func:`default_out_dir`.
    preset : str, optional
        Architecture preset (default: the recipe's, ``paper``); ``ridge`` fits the
        linear baseline as a servable checkpoint (:func:`fit_ridge_checkpoint`),
        ``riemann`` the Xdawn-covariance tangent-space model
        (:func:`fit_riemann_checkpoint`).
    recipe : TOML path, dict or Recipe, optional
    max_epochs, seed : optional overrides of the recipe
    device : str
        ``"auto"`` uses CUDA when present.
    resume : bool
        Continue the run in ``out_dir``.
    subjects : sequence of str, optional
        Train on these subjects only (``"01"`` or ``"sub-01"``; overrides the recipe's).
    progress : bool

    Returns
    -------
    Path
        ``out_dir``.
    """
    from rtdecode.images import image_encoder_for
    from rtdecode.images.categories import open_gallery

    rc = load_recipe(recipe, preset=preset, max_epochs=max_epochs, seed=seed,
                     subjects=None if subjects is None else [str(v) for v in subjects])
    out = default_out_dir(data_dir) if out_dir is None else Path(out_dir)
    if out.exists() and (out / TRAINING_DIR).exists() and not resume:
        raise ValueError(
            f"{out} already holds a training run; pass --resume to continue it or choose "
            "another --out."
        )
    if resume and (out / CONFIG_FILE).is_file():
        # A run continues on the preprocessing it started with (a run begun before
        # streaming became the default has no streaming key: the block path).
        from rtdecode.encoder.card import CheckpointCard
        from rtdecode.encoder.checkpoint import read_config

        card = CheckpointCard.from_config(read_config(out), out)
        started = card.system.preprocessor().config.streaming
        now = _preprocessor(rc, ("placeholder",)).config.streaming
        if started != now:
            raise ValueError(
                f"The run in {out} was started with streaming={started} "
                f"preprocessing; resume it with `[preprocess] streaming = "
                f"{str(not now).lower()}` in the recipe."
            )
    # The channels come from the data, so the real Preprocessor is built by the loader
    # (streaming: it runs over each recording) and again after loading. One on a
    # placeholder channel checks the [preprocess] options before the (slow) load.
    lags = rc.lags_s
    parts = []
    for group in sensor_systems(data_dir, rc.subjects):
        es = load_epochs_for(
            data_dir, lambda names: _preprocessor(rc, names), tmin_s=float(lags[0]) - rc.window_s,
            tmax_s=float(lags[-1]), subjects=group, progress=progress,
        )
        if len(es.train) == 0:
            raise ValueError(
                f"{data_dir} has no training epochs (trial_type 'exp') of {', '.join(es.subjects)}; "
                "nothing to train on."
            )
        if es.gallery_root is None:
            raise ValueError(
                f"The images of {data_dir} were not found, so there are no targets; put the "
                "image folder next to the data."
            )
        preprocessor = _preprocessor(rc, es.ch_names)
        # The robust scaler is fitted on the reference window; every lag is then scaled
        # alike, as the live service scales every window it cuts.
        fit_scaler(es.train, preprocessor, rc.window_start_s, rc.window_s)
        parts.append((es, preprocessor))
    subjects = sorted({name for es, _ in parts for name in es.subjects})
    if len(parts) > 1 and get_preset(rc.preset).kind in ("ridge", "riemann"):
        raise ValueError(
            f"The {rc.preset} preset reads one sensor system, but {data_dir} holds "
            f"{len(parts)} ({'; '.join(', '.join(es.subjects) for es, _ in parts)}); pick the "
            "subjects of one with --subjects."
        )
    encoder = image_encoder_for(rc.image_spec)
    # trials that name a category train towards its mean image embedding
    gallery = open_gallery(parts[0][0].gallery_root, parts[0][0].labels)
    n_rows = sum(len(es.train) for es, _ in parts) * len(lags)
    c_max = max(len(es.ch_names) for es, _ in parts)
    X = None
    Y, S, G, first = [], [], [], 0
    for es, preprocessor in parts:
        es_train = es.train
        Xk, rows = lagged_windows(es_train, preprocessor, lags, rc.window_s, progress=progress)
        if X is None:  # one array for every system, the smaller ones zero-padded
            X = np.zeros((n_rows, c_max, Xk.shape[2]), np.float32)
        X[first:first + len(Xk), :Xk.shape[1]] = Xk
        first += len(Xk)
        del Xk
        Y.append(image_targets(gallery, encoder, es_train.image_ids, progress=progress)[rows])
        names = np.array([subjects.index(name) for name in es.subjects], np.int64)
        S.append(names[es_train.subject_index[rows]])
        G.append(np.asarray(es_train.image_ids)[rows])
    tables = [_system_table(es, preprocessor, subjects) for es, preprocessor in parts]
    subject_system = [next(k for k, t in enumerate(tables) if name in t["subjects"])
                      for name in subjects]
    drop_log: dict[str, int] = {}
    for es, _ in parts:
        for key, value in es.drop_log.items():
            drop_log[key] = drop_log.get(key, 0) + int(value)
    meta = {
        **{key: value for key, value in tables[0].items() if key != "subjects"},
        "sfreq_model_hz": parts[0][1].config.sfreq_model_hz,
        "window_s": rc.window_s,
        "offsets": rc.window_meta(),
        "clamp": parts[0][1].config.clamp,
        "target": {"name": encoder.name, **rc.image_spec, "gallery": str(parts[0][0].gallery_root),
                   "labels": parts[0][0].labels},
        "subjects": subjects,
        # the held-out (zero-shot) images: `serve --retrieval-set test` retrieves among them
        "test_images": sorted({str(i) for es, _ in parts for i in es.test.image_ids}),
        "provenance": {
            "data_dir": str(Path(data_dir).resolve()),
            "recordings": [str(r) for es, _ in parts for r in es.recordings],
            "gallery": str(parts[0][0].gallery_root),
            "drop_log": drop_log,
        },
    }
    Y, S, G = np.concatenate(Y), np.concatenate(S), np.concatenate(G)
    if len(parts) > 1:
        meta["systems"] = tables
    if get_preset(rc.preset).kind == "ridge":
        fit_ridge_checkpoint(X, Y, tables[0]["positions"], recipe=rc, out_dir=out, meta=meta)
        return out
    if get_preset(rc.preset).kind == "riemann":
        fit_riemann_checkpoint(X, Y, G, tables[0]["positions"], recipe=rc, out_dir=out,
                               meta=meta)
        return out
    positions = (tables[0]["positions"] if len(parts) == 1
                 else stack_positions([t["positions"] for t in tables]))
    train_arrays(
        X, Y, positions=positions, subject_index=S, n_subjects=len(subjects),
        subject_system=subject_system if len(parts) > 1 else None, groups=G,
        recipe=rc, out_dir=out, meta=meta, device=device, resume=resume, progress=progress,
    )
    return out


def _system_table(es: EpochSet, preprocessor: Preprocessor, subjects: Sequence[str]
                  ) -> dict[str, Any]:
    """What a checkpoint keeps of one sensor system: channels, positions, preprocessing."""
    return {
        "ch_names": list(es.ch_names),
        "positions": np.asarray(es.positions_2d),
        "positions_3d": np.asarray(es.positions_3d),
        "ch_types": list(es.ch_types),
        "sfreq_in_hz": es.sfreq_hz,
        "preprocess": preprocessor.to_dict(),
        "subjects": [name for name in subjects if name in es.subjects],
    }


def sensor_systems(data_dir: str | Path, subjects: Sequence[str] | None = None
                   ) -> list[Sequence[str] | None]:
    """The dataset's subjects grouped by sensor system (the channels of their recordings).

    Parameters
    ----------
    data_dir : path
    subjects : sequence of str, optional
        Only these (``"01"`` or ``"sub-01"``).

    Returns
    -------
    list
        One entry per system, in the order of its first subject: a list of subject
        names to pass to ``load_epochs(subjects=...)``. A dataset whose subjects cannot
        be listed (epochs files, one recording) is one group, ``[subjects]``.
    """
    from rtdecode.data.recordings import read_recording
    from rtdecode.data.things import find_recordings, subject_of

    try:
        paths = find_recordings(data_dir, subjects)
    except ValueError:  # epochs files, not raw recordings: the loader's own rules
        return [subjects]
    first: dict[str, Path] = {}
    for path in paths:
        first.setdefault(subject_of(path), path)
    if len(first) < 2:
        return [subjects]
    groups: dict[tuple[str, ...], list[str]] = {}
    for name, path in sorted(first.items()):
        groups.setdefault(tuple(read_recording(path).raw.ch_names), []).append(name)
    if len(groups) == 1:
        return [subjects]
    return list(groups.values())


def fit_ridge_checkpoint(
    X: np.ndarray, Y: np.ndarray, positions: np.ndarray, *, recipe: Recipe | dict | None = None,
    out_dir: str | Path | None = None, meta: dict[str, Any] | None = None,
) -> RidgeModule:
    """Fit the ridge preset's linear map on preprocessed windows and write its checkpoint.

    Parameters
    ----------
    X : ndarray, float32, shape (n, C, T)
        Preprocessed windows (every lag the recipe samples).
    Y : ndarray, float32, shape (n, D) or (n, N, D)
        Image embeddings (standardised here with the training statistics, as for the
        deep model).
    positions : ndarray, shape (C, 2)
    recipe : Recipe or dict, optional
        Its ``model`` table may set ``alphas`` (default: the evaluation's ridge alphas).
    out_dir : path, optional
        Checkpoint folder to write.
    meta : dict, optional
        Checkpoint metadata (as :func:`train_arrays` takes it).

    Returns
    -------
    RidgeModule
        In eval mode.
    """
    fit = _ClosedFormFit.of(recipe, X, Y)
    weight, bias, alpha = fit_ridge(fit.X, fit.targets, fit.alphas)
    model = build_model(fit.recipe.preset, fit.X.shape[1], fit.X.shape[2], positions,
                        target_dim=fit.Y.shape[1:], **fit.options)
    model.set_weights(weight, bias)
    model.eval()
    if out_dir is not None:
        fit.save(out_dir, model, meta, positions, ridge_alpha=alpha)
    return model


@dataclass(frozen=True)
class _ClosedFormFit:
    """What a closed-form fit (ridge, riemann) starts from, checked once.

    Attributes
    ----------
    recipe : Recipe
    options : dict
        The recipe's ``[model]`` table less ``alphas``.
    alphas : sequence of float
        The ridge penalties to choose from (the recipe's ``alphas``, or the evaluation's).
    X : ndarray, float32, shape (n_ok, C, T)
        The finite windows.
    Y : ndarray, float32, shape (n_ok, ...)
        Their image embeddings (not standardised).
    finite : ndarray of bool, shape (n,)
        Which of the given rows were finite.
    target_stats : dict
        ``{"mean", "std"}`` of ``Y``.
    """

    recipe: Recipe
    options: dict[str, Any]
    alphas: Sequence[float]
    X: np.ndarray
    Y: np.ndarray
    finite: np.ndarray
    target_stats: dict[str, Any]

    @classmethod
    def of(cls, recipe: Recipe | dict | None, X: np.ndarray, Y: np.ndarray) -> _ClosedFormFit:
        """The recipe resolved, the non-finite rows left out, the target statistics fitted."""
        from rtdecode.encoder.presets import RIDGE_ALPHAS

        rc = load_recipe(recipe)
        options = dict(rc.model)
        alphas = options.pop("alphas", RIDGE_ALPHAS)
        X = np.asarray(X, np.float32)
        Y = np.asarray(Y, np.float32)
        ok = _finite_rows(X, Y)
        return cls(rc, options, alphas, X[ok], Y[ok], ok, fit_target_stats(Y[ok]))

    @property
    def targets(self) -> np.ndarray:
        """``Y`` standardised with ``target_stats``, as the models are fitted against."""
        return standardize(self.Y, self.target_stats)

    def save(self, out_dir: str | Path, model: nn.Module, meta: dict[str, Any] | None,
             positions: np.ndarray, *, ridge_alpha: float,
             classes: list[str] | None = None) -> None:
        """Write the fitted model's checkpoint, with what the fit chose in its provenance."""
        fitted: dict[str, Any] = {"ridge_alpha": ridge_alpha}
        if classes is not None:
            fitted["classes"] = classes
        provenance = {"recipe": self.recipe.to_dict(), "n_train": int(len(self.X)),
                      "n_dropped_nonfinite": int((~self.finite).sum()), **fitted, **_software()}
        save_checkpoint(out_dir, model, _checkpoint_meta(
            meta, model.config.n_channels, positions, self.target_stats, provenance))


def _software() -> dict[str, str]:
    """The provenance every trained checkpoint records: versions and the start time."""
    return {"torch": torch.__version__, "python": platform.python_version(),
            "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")}


def _checkpoint_meta(meta: dict[str, Any] | None, n_channels: int, positions: np.ndarray,
                     target_stats: dict[str, Any], provenance: dict[str, Any]) -> dict[str, Any]:
    """The caller's checkpoint metadata, completed with what every trained model stores.

    Channel names and positions the caller left out get defaults; ``provenance`` is laid
    over the caller's own provenance.
    """
    full = dict(meta or {})
    full.setdefault("ch_names", [f"ch{i:03d}" for i in range(n_channels)])
    full.setdefault("positions", np.asarray(positions))
    full["target_stats"] = target_stats
    full["provenance"] = {**(full.get("provenance") or {}), **provenance}
    return full


def fit_riemann_checkpoint(
    X: np.ndarray, Y: np.ndarray, labels: Sequence[Any], positions: np.ndarray, *,
    recipe: Recipe | dict | None = None, out_dir: str | Path | None = None,
    meta: dict[str, Any] | None = None,
) -> nn.Module:
    """Fit the riemann preset (Xdawn covariances, tangent space, ridge) and write its checkpoint.

    Parameters
    ----------
    X : ndarray, float32, shape (n, C, T)
        Preprocessed windows, one per trial (``window_sampling = "fixed"``: each window
        is a whole epoch).
    Y : ndarray, float32, shape (n, D) or (n, N, D)
        Image (or category mean) embeddings, standardised here as for the other presets.
    labels : sequence, length n
        Each window's image id or category: the Xdawn classes.
    positions : ndarray, shape (C, 2)
    recipe : Recipe or dict, optional
        Its ``model`` table sets ``riemann_filters``, ``riemann_estimator``,
        ``riemann_shrinkage`` and ``alphas`` (default: the evaluation's ridge alphas).
    out_dir, meta : optional
        As :func:`fit_ridge_checkpoint`.

    Returns
    -------
    RiemannModule
        In eval mode.
    """
    from rtdecode.encoder.riemann import fit_riemann

    fit = _ClosedFormFit.of(recipe, X, Y)
    rc = fit.recipe
    if rc.window_sampling != "fixed":
        raise ValueError(
            f"The riemann preset fits one window per trial, the epoch, but the recipe has "
            f"window_sampling={rc.window_sampling!r}; set window_sampling = \"fixed\" with the "
            "epoch as window_start_s and window_s (e.g. 0.0 and 0.5)."
        )
    labels = np.asarray(labels)[fit.finite]
    model, alpha = fit_riemann(fit.X, fit.targets, labels, positions,
                               get_preset(rc.preset).replace(**fit.options), fit.alphas,
                               seed=rc.seed)
    if out_dir is not None:
        fit.save(out_dir, model, meta, positions, ridge_alpha=alpha,
                 classes=sorted({str(v) for v in labels}))
    return model
