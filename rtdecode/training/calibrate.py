"""Calibrate a trained encoder to a new subject from minutes of data.

``rtdecode calibrate CKPT_DIR --data DIR --subject S --minutes M --out NEW_CKPT``

Starts from a (multi-subject) checkpoint and learns the subject ``S`` from the first
``M`` minutes of its recordings: a new row of the subject layer, initialised to the mean
of the trained subjects' rows, at ``CALIBRATION_LR``, and the shared trunk (the spatial
attention, the merge, the convolution blocks and the temporal aggregation) at
``trunk_lr_scale`` (default :data:`CALIBRATION_TRUNK_LR_SCALE`, 0.1) times that rate. The
heads stay as trained unless ``head_lr_scale > 0``.

A fine-tuned trunk serves the new subject but changes every known subject's outputs, so
the result then holds the new subject alone (its sensor system only; the subjects left out
are listed in the provenance): serve the known subjects from the original checkpoint.
``trunk_lr_scale=0`` (and ``head_lr_scale=0``) learns only the new row: the result keeps
every known subject, decoding exactly as before (tested), at a cost in the new
subject's accuracy. On the demo cohort (sub-04, CTF, new to the demo encoder; selected
on sub-04's last-session *training* trials, never on test images) 10 minutes gave 47 %
top-5 on those trials with the trunk at 0.1, 42 % at 0.3, 40 % at 0.03 and 32 % with the
trunk frozen (docs/results/calibration.md).

The new layer is fitted with the whole model in eval mode: the BatchNorm statistics
serve every subject, and the spatial attention's sensor dropout, an augmentation of the
base training, only blurs the few minutes a new subject gives (on the tiny cohort a
calibrated CTF subject decoded its held-out session at 5.5 of 16 top-1 with it and 7.0
to 7.5 without, after 20 to 40 epochs, mean of 4 seeds; chance 1.3). Its learning rate
is ``CALIBRATION_LR``, ten times the demo recipe's: the recipe's rate moved the one layer
too little in a calibration's few hundred steps (2 of 16). Each epoch draws at most
``samples_per_epoch`` of the calibration windows, so its cost is bounded whatever the
minutes.

The subject's sensors are read as their system's: a subject whose recordings hold
every channel of one of the checkpoint's sensor systems uses that system's channels and
preprocessing; any other sensor set becomes a new system, with its own positions and a
preprocessing fitted on the calibration minutes.

"The first M minutes" follows recording time: the subject's recordings in their order
(BIDS sessions and runs sort by time), each counted in full before the next, and a
trial counts when its last training window ends within the first M minutes. Only
training trials (``trial_type`` ``exp``) are used: test images are never learned.

The result is an ordinary checkpoint folder (``model.safetensors`` + ``config.json``)
that ``serve --subject S``, ``evaluate`` and ``evaluate-online`` load; its provenance
records the source checkpoint, the recordings and the trials used.

Threading: everything runs in the calling thread.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import platform
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from rtdecode.contracts import ParameterError
from rtdecode.encoder.card import CheckpointCard, SensorSystem
from rtdecode.encoder.checkpoint import open_checkpoint, save_checkpoint
from rtdecode.encoder.losses import CombinedLoss
from rtdecode.encoder.metrics import standardize
from rtdecode.encoder.model import BrainModule, stack_positions
from rtdecode.training.encoder import (
    _preprocessor,
    _system_table,
    fit_scaler,
    image_targets,
    lagged_windows,
    load_epochs_for,
    load_recipe,
    resolve_device,
)

__all__ = ["CALIBRATION_LR", "CALIBRATION_TRUNK_LR_SCALE", "SAMPLES_PER_EPOCH", "calibrate",
           "first_minutes"]

#: Learning rate of the new subject layer (Adam) unless ``lr`` is given.
CALIBRATION_LR = 3e-3
#: The trunk's learning rate, as a fraction of the subject layer's, unless given.
CALIBRATION_TRUNK_LR_SCALE = 0.1
#: Windows drawn per epoch (all of them when there are fewer).
SAMPLES_PER_EPOCH = 2048


def first_minutes(
    recording_index: np.ndarray, onsets_s: np.ndarray, durations_s: Sequence[float],
    minutes: float, end_s: float = 0.0,
) -> np.ndarray:
    """Which trials lie in the first ``minutes`` of a subject's recordings.

    Parameters
    ----------
    recording_index : ndarray of int, shape (n,)
        Recording of each trial (rows of ``durations_s``, in time order).
    onsets_s : ndarray, shape (n,)
        Onset of each trial from the start of its recording (s).
    durations_s : sequence of float
        Length of each recording (s), in time order.
    minutes : float
    end_s : float
        How long after its onset a trial's data reach (its last window's end).

    Returns
    -------
    ndarray of bool, shape (n,)
    """
    starts = np.concatenate([[0.0], np.cumsum(np.asarray(durations_s, dtype=np.float64))[:-1]])
    t_end = starts[np.asarray(recording_index)] + np.asarray(onsets_s, dtype=np.float64) + end_s
    return t_end <= 60.0 * float(minutes)


def _system_for(card: CheckpointCard, channels: Sequence[str]) -> int | None:
    """The checkpoint's sensor system whose channels the subject's recording all has."""
    have = set(channels)
    for k, system in enumerate(card.systems):
        if set(system.ch_names) <= have:
            return k
    return None


def _grow(model: BrainModule, systems: Sequence[SensorSystem], system: int, *,
          alone: bool = False) -> BrainModule:
    """A copy of ``model`` with one more subject (of ``system``), and the new system's positions.

    ``alone``: the copy holds the new subject only, and only its sensor system (the
    known subjects' rows of the subject layer and the other systems are left out).
    """
    cfg = model.config
    arrays = [np.asarray(s.positions, dtype=np.float32) for s in systems]
    if alone:
        arrays = [arrays[system]]
    n_channels = max(len(a) for a in arrays)
    new_cfg = cfg.replace(
        n_subjects=1 if alone else cfg.n_subjects + 1, n_channels=n_channels,
        n_systems=len(arrays),
        subject_system=cfg.systems + (system,) if len(arrays) > 1 else (),
    )
    positions = arrays[0] if len(arrays) == 1 else stack_positions(arrays, n_channels)
    grown = BrainModule(new_cfg, positions)
    state = {k: v for k, v in model.state_dict().items()
             if k not in ("spatial.positions", "subject_layers.weight")}
    missing, unexpected = grown.load_state_dict(state, strict=False)
    assert not unexpected and set(missing) <= {"spatial.positions", "subject_layers.weight"}
    if model.subject_layers is not None:
        with torch.no_grad():
            old = model.subject_layers.weight
            if not alone:
                grown.subject_layers.weight[:-1] = old
            grown.subject_layers.weight[-1] = old.mean(dim=0)
    return grown


def calibrate(
    ckpt_dir: str | Path,
    data_dir: str | Path,
    subject: str,
    minutes: float,
    out_dir: str | Path,
    *,
    max_epochs: int = 30,
    lr: float | None = None,
    samples_per_epoch: int | None = SAMPLES_PER_EPOCH,
    head_lr_scale: float = 0.0,
    trunk_lr_scale: float = CALIBRATION_TRUNK_LR_SCALE,
    batch_size: int | None = None,
    device: str = "auto",
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Add a new subject to an encoder checkpoint from its first minutes of recordings.

    Parameters
    ----------
    ckpt_dir : path
        A deep encoder checkpoint (``rtdecode train``), one subject or several.
    data_dir : path
        A dataset folder holding the subject's recordings (as for ``rtdecode train``).
    subject : str
        ``"04"`` or ``"sub-04"``; not one of the checkpoint's subjects.
    minutes : float
        Use the first ``minutes`` of the subject's recordings (recording time order).
    out_dir : path
        The new checkpoint folder.
    max_epochs : int
        Epochs of calibration.
    lr : float, optional
        Learning rate of the new subject layer (default :data:`CALIBRATION_LR`).
    samples_per_epoch : int, optional
        Windows drawn per epoch (at most all of them); None: every window each epoch.
    head_lr_scale : float
        The heads learn at ``lr * head_lr_scale``; 0 (the default) keeps them as
        trained. Above 0, as for ``trunk_lr_scale``, the result holds the new subject
        alone.
    trunk_lr_scale : float
        The shared trunk (the spatial attention, the merge, the convolution blocks and the
        temporal aggregation) learns at ``lr * trunk_lr_scale`` (default
        :data:`CALIBRATION_TRUNK_LR_SCALE`); 0 keeps it as trained. Above 0 it changes
        every known subject's outputs, so the result is a checkpoint of the new subject
        alone (its sensor system only; the subjects left out are listed in
        ``provenance.calibration.subjects_left_out``).
    batch_size : int, optional
        Default: the checkpoint's recipe's.
    device : str
    seed : int
    progress : bool

    Returns
    -------
    Path
        ``out_dir``.
    """
    from tqdm.auto import tqdm

    from rtdecode.data.recordings import read_recording
    from rtdecode.data.things import find_recordings
    from rtdecode.images.categories import open_gallery

    if not minutes > 0:
        raise ParameterError("minutes", f"{{param}}={minutes} must be positive (minutes of data).")
    for option, value in (("head_lr_scale", head_lr_scale), ("trunk_lr_scale", trunk_lr_scale)):
        if not value >= 0:
            raise ParameterError(option, f"{{param}}={value} must be 0 or more.")
    if int(max_epochs) < 1:
        raise ParameterError("max_epochs", f"{{param}}={max_epochs} must be a positive integer.")
    if samples_per_epoch is not None and int(samples_per_epoch) < 2:
        raise ParameterError(
            "samples_per_epoch", f"{{param}}={samples_per_epoch} must be at least 2 (or None "
            "for every window each epoch).")
    model, card = open_checkpoint(ckpt_dir)
    if not isinstance(model, BrainModule):
        raise ValueError(
            f"{ckpt_dir} is a {model.config.kind} checkpoint; calibrate starts from a deep "
            "encoder (rtdecode train with a deep preset). Fit a ridge on the new subject "
            "instead: rtdecode train --preset ridge --subjects S."
        )
    name = f"sub-{str(subject).removeprefix('sub-')}"
    known = list(card.subjects)
    if name in known or name.removeprefix("sub-") in known:
        raise ValueError(
            f"{ckpt_dir} already knows subject {name!r}; serve it as it is, or calibrate "
            "another subject."
        )
    rc = load_recipe(card.recipe, subjects=[name], lr=CALIBRATION_LR if lr is None else lr,
                     batch_size=batch_size, seed=seed)
    paths = find_recordings(data_dir, [name])
    recordings = [read_recording(p) for p in paths]  # sorted: sessions and runs in time order
    systems = list(card.systems)
    system = _system_for(card, recordings[0].raw.ch_names)
    lags = rc.lags_s
    span = {"tmin_s": float(lags[0]) - rc.window_s, "tmax_s": float(lags[-1])}
    if system is not None:
        pre = systems[system].preprocessor()
        es = load_epochs_for(data_dir, lambda names: pre, **span, subjects=[name],
                             ch_names=systems[system].ch_names, progress=progress)
    else:
        es = load_epochs_for(data_dir, lambda names: _preprocessor(rc, names), **span,
                             subjects=[name], progress=progress)
    order = {str(p): k for k, p in enumerate(paths)}
    rec_order = np.array([order[r] for r in es.recordings])[es.recording_index]
    durations = [r.raw.n_times / r.sfreq_hz for r in recordings]
    keep = first_minutes(rec_order, es.onsets_s, durations, minutes, end_s=float(lags[-1]))
    es = es.select(keep & es.train_mask)
    if len(es) < 2:
        raise ValueError(
            f"The first {minutes} minutes of {name}'s recordings hold {len(es)} training "
            "trial(s); give more --minutes."
        )
    if system is None:
        pre = _preprocessor(rc, es.ch_names)
        fit_scaler(es, pre, rc.window_start_s, rc.window_s)
        systems.append(SensorSystem.from_table(_system_table(es, pre, [name]),
                                               f"the sensor system of {name}"))
        system = len(systems) - 1
    systems[system] = dataclasses.replace(
        systems[system], subjects=systems[system].subjects + (name,))

    X, rows = lagged_windows(es, pre, lags, rc.window_s, progress=progress)
    encoder = card.target.image_encoder()
    gallery = open_gallery(es.gallery_root, es.labels)
    Y = standardize(image_targets(gallery, encoder, es.image_ids, progress=progress)[rows],
                    card.target.stats)

    dev = resolve_device(device)
    torch.manual_seed(rc.seed)
    # Fine-tuning shared parts changes every known subject's outputs: the result is then
    # a checkpoint of the new subject alone, so that none of them is served changed.
    alone = trunk_lr_scale > 0 or head_lr_scale > 0
    grown = _grow(model.cpu(), systems, system, alone=alone).to(dev)
    if alone:
        systems = [dataclasses.replace(systems[system], subjects=(name,))]
    new_index = grown.config.n_subjects - 1
    for p in grown.parameters():
        p.requires_grad_(False)
    groups = [{"params": [grown.subject_layers.weight], "lr": rc.lr}] if grown.subject_layers else []
    if head_lr_scale > 0:
        groups.append({"params": list(grown.heads.parameters()), "lr": rc.lr * head_lr_scale})
    if trunk_lr_scale > 0:
        trunk = [p for m in (grown.spatial, grown.merge, grown.blocks, grown.aggregate)
                 for p in m.parameters()]
        groups.append({"params": trunk, "lr": rc.lr * trunk_lr_scale})
    for group in groups:
        for p in group["params"]:
            p.requires_grad_(True)
    loss_fn = CombinedLoss(rc.lam).to(dev)
    groups.append({"params": list(loss_fn.parameters()), "lr": rc.lr})
    opt = torch.optim.Adam(groups)
    batch = max(2, min(rc.batch_size, len(X)))
    per_epoch = len(X) if samples_per_epoch is None else min(len(X), int(samples_per_epoch))
    Xt, Yt = torch.from_numpy(X), torch.from_numpy(Y)
    subject_t = torch.full((batch,), new_index, dtype=torch.long, device=dev)
    rng = np.random.default_rng(rc.seed)
    history = []
    t0 = time.perf_counter()
    # eval mode: the trained BatchNorm statistics serve every subject, and no sensor dropout
    grown.eval()
    for epoch in tqdm(range(1, max_epochs + 1), desc="calibrating", unit="epoch",
                      disable=not progress):
        perm = rng.permutation(len(Xt))[:per_epoch]
        total, n = 0.0, 0
        for i in range(0, len(perm) - batch + 1, batch):
            idx = torch.from_numpy(perm[i:i + batch])
            loss, _ = loss_fn(grown(Xt[idx].to(dev), subject_t), Yt[idx].to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            n += 1
        history.append({"epoch": epoch, "train_loss": total / max(n, 1)})

    provenance = {
        **card.provenance,
        "calibration": {
            "from": str(Path(ckpt_dir).resolve()),
            "subject": name,
            "minutes": float(minutes),
            "recordings": sorted({es.recordings[r] for r in es.recording_index}),
            "n_trials": int(len(es)),
            "n_windows": int(len(X)),
            "max_epochs": int(max_epochs),
            "samples_per_epoch": per_epoch,
            "lr": rc.lr,
            "head_lr_scale": head_lr_scale,
            "trunk_lr_scale": trunk_lr_scale,
            "subjects_left_out": list(known) if alone else [],
            "history": history,
            "seconds": round(time.perf_counter() - t0, 3),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "started": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        },
    }
    grown_card = card.replace(subjects=(name,) if alone else (*known, name), systems=tuple(systems),
                              provenance=provenance)
    save_checkpoint(out_dir, grown, grown_card.to_meta())
    return Path(out_dir)

