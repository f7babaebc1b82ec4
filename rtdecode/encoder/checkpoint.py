"""Encoder checkpoints: a folder with ``model.safetensors`` and ``config.json``.

``config.json`` holds everything needed to use the model on a live stream (DESIGN.md,
"Checkpoint"): the architecture, channel names and sensor positions, input and model
rates, window length and offsets, the fitted preprocessing statistics, the clamp, the
target embedding (name, dim, shape) and its statistics, subject ids and training
provenance. :func:`open_checkpoint` returns the model and that file as a typed, frozen
:class:`~rtdecode.encoder.card.CheckpointCard`, both checked once; the card's module is
the only reader of ``config.json``'s keys. Tensors are read with safetensors only: a pickle file (``.pt``, ``.bin``,
...) is refused, never unpickled. Files are written to a temporary name and renamed,
so a crash never leaves half a checkpoint under the real name.

Training state for ``--resume`` lives in ``<ckpt>/training/`` (``rtdecode.training.state``).

Threading: these functions are called from one thread (training loop, service start-up).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from rtdecode._utils.devices import resolve_device
from rtdecode._utils.files import atomic_save_tensors, atomic_write
from rtdecode._utils.jsonable import jsonable
from rtdecode.encoder.card import (
    FORMAT,
    CheckpointCard,
    check_config,
    config_for_save,
    subject_view,
)
from rtdecode.encoder.model import BrainModule, count_parameters, module_for, stack_positions
from rtdecode.encoder.presets import get_preset

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")


# --------------------------------------------------------------------------- helpers
def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file; a damaged one is a ValueError that names it."""
    from safetensors.torch import load

    data = path.read_bytes()
    try:
        return load(data)
    except Exception as exc:  # safetensors raises its own error type for bad headers
        raise ValueError(
            f"{path} is truncated or not a safetensors file ({exc}); copy the checkpoint "
            "again or re-run training to write it."
        ) from None


def _refuse_pickle(path: Path) -> None:
    raise ValueError(
        f"{path} is a pickle-based PyTorch file; rtdecode loads weights with safetensors "
        "only and never unpickles files, because unpickling can run arbitrary code. Give a "
        f"checkpoint folder with {WEIGHTS_FILE} and {CONFIG_FILE} (as written by "
        "`rtdecode train`)."
    )


# --------------------------------------------------------------------------- save
def save_checkpoint(out_dir: str | Path, model: BrainModule, meta: dict[str, Any]) -> Path:
    """Write ``model.safetensors`` and ``config.json`` into ``out_dir``.

    Parameters
    ----------
    out_dir : path
        Created if needed; existing checkpoint files are replaced.
    model : BrainModule
    meta : dict
        Contract keys (:func:`rtdecode.encoder.card.config_for_save`): at least
        ``ch_names`` (n_channels names) and ``positions`` ((n_channels, 2), NaN for
        unknown), or ``systems`` for a model of several sensor systems.
        ``architecture`` is taken from the model; missing optional keys are written as
        null. A card is saved again with ``card.to_meta()``.

    Returns
    -------
    Path
        ``out_dir``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = config_for_save(meta, model.config, count_parameters(model))
    tensors = dict(model.state_dict())
    atomic_save_tensors(out / WEIGHTS_FILE, tensors, {"format": "pt", "rtdecode": FORMAT})
    text = json.dumps(config, indent=2, allow_nan=False)
    atomic_write(out / CONFIG_FILE, text.encode("utf-8"))
    return out


# --------------------------------------------------------------------------- load
def read_config(ckpt_dir: str | Path) -> dict[str, Any]:
    """Read and check ``config.json`` of a checkpoint folder (no tensors loaded)."""
    folder = _checkpoint_folder(ckpt_dir)
    path = folder / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{folder} has no {CONFIG_FILE}; a checkpoint folder holds {WEIGHTS_FILE} and "
            f"{CONFIG_FILE} (as written by `rtdecode train`)."
        )
    try:
        config = json.loads(path.read_text("utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not valid JSON ({exc}); the checkpoint is damaged.") from None
    check_config(config, path)
    return config


def _checkpoint_folder(ckpt_dir: str | Path) -> Path:
    path = Path(ckpt_dir)
    if path.is_file():
        if path.suffix.lower() in PICKLE_SUFFIXES:
            _refuse_pickle(path)
        if path.name in (WEIGHTS_FILE, CONFIG_FILE):
            return path.parent
        raise ValueError(
            f"{path} is a file; give the checkpoint folder that holds {WEIGHTS_FILE} and "
            f"{CONFIG_FILE}."
        )
    if not path.is_dir():
        raise FileNotFoundError(f"Checkpoint folder {path} does not exist.")
    if not (path / WEIGHTS_FILE).is_file():
        pickles = sorted(p for p in path.iterdir() if p.suffix.lower() in PICKLE_SUFFIXES)
        if pickles:
            _refuse_pickle(pickles[0])
        raise FileNotFoundError(
            f"{path} has no {WEIGHTS_FILE}; a checkpoint folder holds {WEIGHTS_FILE} and "
            f"{CONFIG_FILE} (as written by `rtdecode train`)."
        )
    return path


def _model_positions(card: CheckpointCard) -> np.ndarray:
    """The positions the spatial attention is built with: (C, 2), or (L, C_max, 2)."""
    if card.architecture.n_systems == 1:
        return card.system.positions
    return stack_positions([s.positions for s in card.systems], card.architecture.n_channels)


def _check_tensors(model: nn.Module, tensors: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    bad = sorted(
        f"{k} (file {tuple(tensors[k].shape)}, config.json's architecture "
        f"{tuple(expected[k].shape)})"
        for k in set(expected) & set(tensors)
        if tuple(tensors[k].shape) != tuple(expected[k].shape)
    )
    problems = []
    if missing:
        problems.append(f"missing tensors {missing}")
    if extra:
        problems.append(f"unexpected tensors {extra}")
    if bad:
        problems.append(f"tensors whose shape disagrees with config.json: {bad}")
    if problems:
        raise ValueError(
            f"{path} does not match its {CONFIG_FILE}: " + "; ".join(problems) + ". "
            "The weights and config come from different models: use the pair written "
            "together by `rtdecode train`."
        )
    key = "spatial.positions" if "spatial.positions" in expected else "positions"
    stored = tensors[key]
    built = expected[key]
    if not torch.allclose(stored.float(), built.float(), atol=1e-5, equal_nan=True):
        raise ValueError(
            f"The sensor positions in {CONFIG_FILE} disagree with those stored in {path}; "
            "the config was edited or belongs to another model."
        )


def open_checkpoint(
    ckpt_dir: str | Path, device: str | torch.device = "cpu"
) -> tuple[BrainModule, CheckpointCard]:
    """Open an encoder checkpoint folder: the model and its card, both checked once.

    Tensors are read with safetensors only, never pickle.

    Parameters
    ----------
    ckpt_dir : path
        Folder with ``model.safetensors`` and ``config.json`` (or one of the two files).
    device : str
        ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.

    Returns
    -------
    model : BrainModule, RidgeModule or RiemannModule
        In eval mode, on ``device``.
    card : CheckpointCard
        The typed, frozen ``config.json`` (:mod:`rtdecode.encoder.card`).

    Raises
    ------
    FileNotFoundError
        No such folder, or a file is missing.
    ValueError
        A pickle file was offered; the tensors are truncated; tensors are missing,
        unexpected or misshapen (each is named); or config and tensors disagree.
    """
    folder = _checkpoint_folder(ckpt_dir)
    card = CheckpointCard.from_config(read_config(folder), folder)
    weights = folder / WEIGHTS_FILE
    tensors = read_tensors(weights)
    model = module_for(card.architecture, _model_positions(card))
    _check_tensors(model, tensors, weights)
    model.load_state_dict(tensors, strict=True)
    model.to(resolve_device(device)).eval()
    return model, card


def load_checkpoint(
    ckpt_dir: str | Path, device: str | torch.device = "cpu", subject: str | None = None
) -> tuple[BrainModule, dict]:
    """:func:`open_checkpoint` with ``config.json`` as a dict (the older API, for scripts).

    With ``subject``, the dict is the subject's view (:func:`~rtdecode.encoder.card.subject_view`:
    its sensor system's channels, positions and preprocessing, and ``subject_index``);
    an unknown subject is an error that names ``rtdecode calibrate``.
    """
    model, _ = open_checkpoint(ckpt_dir, device)
    config = read_config(ckpt_dir)
    return model, config if subject is None else subject_view(config, subject)


# --------------------------------------------------------------------------- describe
def _layout_circle(n_channels: int) -> np.ndarray:
    """Evenly spread 2D positions (a sunflower disc) for describing a bare preset."""
    i = np.arange(n_channels) + 0.5
    r = np.sqrt(i / n_channels)
    theta = np.pi * (1 + 5**0.5) * i
    return np.stack([r * np.cos(theta), r * np.sin(theta)], axis=1)


def _parameter_breakdown(model: nn.Module) -> dict[str, int]:
    return {name: count_parameters(child) for name, child in model.named_children()}


def describe_model(ckpt_dir: str | Path | None = None, preset: str | None = None) -> dict[str, Any]:
    """JSON-able description of a checkpoint or of a preset (``rtdecode info``).

    Parameters
    ----------
    ckpt_dir : path, optional
    preset : str, optional
        Exactly one of the two must be given. A preset is described at its default
        sizes (306 channels x 30 samples for ``paper``).

    Returns
    -------
    dict
        ``source``, ``architecture``, ``n_parameters``, ``parameters_by_part``,
        ``size_mb`` (float32 weights), ``input_shape``, ``output_shape``; for a
        checkpoint also its channels, rates, window, target, subjects and provenance.
    """
    if (ckpt_dir is None) == (preset is None):
        raise ValueError("Give either a checkpoint folder or a preset name, not both or neither.")
    info: dict[str, Any]
    if preset is not None:
        cfg = get_preset(preset)
        model = module_for(cfg, _layout_circle(cfg.n_channels))
        info = {"source": "preset", "preset": preset}
    else:
        model, card = open_checkpoint(ckpt_dir)
        cfg = model.config
        info = {"source": "checkpoint", "path": str(Path(ckpt_dir).resolve()), **card.describe()}
    n_params = count_parameters(model)
    n_bytes = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    info.update(
        architecture=cfg.to_dict(),
        n_parameters=n_params,
        parameters_by_part=_parameter_breakdown(model),
        size_mb=round(n_bytes / 1e6, 3),
        input_shape=[cfg.n_channels, cfg.n_times],
        output_shape={"clip": list(cfg.target_shape), "mse": list(cfg.target_shape)},
    )
    return jsonable(info)


__all__ = [
    "CONFIG_FILE",
    "WEIGHTS_FILE",
    "describe_model",
    "load_checkpoint",
    "open_checkpoint",
    "read_config",
    "read_tensors",
    "resolve_device",
    "save_checkpoint",
    "subject_view",
]
