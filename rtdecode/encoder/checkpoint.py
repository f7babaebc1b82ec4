"""Encoder checkpoints: a folder with ``model.safetensors`` and ``config.json``.

``config.json`` holds everything needed to use the model on a live stream (DESIGN.md,
"Checkpoint"): the architecture, channel names and sensor positions, input and model
rates, window length and offsets, the fitted preprocessing statistics, the clamp, the
target embedding (name, dim, shape) and its statistics, subject ids and training
provenance. Tensors are read with safetensors only: a pickle file (``.pt``, ``.bin``,
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
from rtdecode.encoder.model import BrainModule, count_parameters, module_for, stack_positions
from rtdecode.encoder.presets import BrainConfig, get_preset

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
FORMAT = "rtdecode.encoder"
FORMAT_VERSION = 1
PICKLE_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt", ".pkl", ".pickle")

META_KEYS = (
    "architecture",
    "ch_names",
    "positions",
    "positions_3d",
    "sfreq_in_hz",
    "sfreq_model_hz",
    "window_s",
    "offsets",
    "preprocess",
    "clamp",
    "target",
    "subjects",
    "provenance",
    "target_stats",
)
# What differs between sensor systems: a multi-system checkpoint keeps one table of these
# per system under "systems" (the top-level keys are system 0's, for older readers).
SYSTEM_KEYS = ("ch_names", "positions", "positions_3d", "ch_types", "sfreq_in_hz", "preprocess")


# --------------------------------------------------------------------------- helpers
def _positions_array(value: Any, n_channels: int, width: int, what: str) -> np.ndarray:
    """JSON positions (None = unknown) -> float array (n_channels, width), NaN for None."""
    rows = [[np.nan if v is None else v for v in row] for row in value]
    arr = np.asarray(rows, dtype=np.float64)
    if arr.shape != (n_channels, width):
        raise ValueError(
            f"{what} has shape {arr.shape} but the model has {n_channels} channels; "
            f"expected ({n_channels}, {width})."
        )
    return arr


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
        Contract keys (see module docstring): at least ``ch_names`` (n_channels names)
        and ``positions`` ((n_channels, 2), NaN for unknown). ``architecture`` is taken
        from the model; missing optional keys are written as null. A model of several
        sensor systems needs ``systems`` instead: one table per system with its
        ``ch_names``, ``positions`` and (for serving) ``preprocess``; the top-level keys
        are then written as system 0's.

    Returns
    -------
    Path
        ``out_dir``.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.config
    meta = dict(meta)
    systems = meta.get("systems")
    if cfg.n_systems > 1 or systems is not None:
        systems = [dict(sys) for sys in systems or []]
        if len(systems) != cfg.n_systems:
            raise ValueError(
                f"meta['systems'] holds {len(systems)} sensor systems but the model reads "
                f"{cfg.n_systems}; give one table (ch_names, positions, preprocess) per system."
            )
        for k, sys in enumerate(systems):
            names = [str(c) for c in sys.get("ch_names") or []]
            if not 0 < len(names) <= cfg.n_channels:
                raise ValueError(
                    f"meta['systems'][{k}] names {len(names)} channels; the model takes 1 to "
                    f"{cfg.n_channels}."
                )
            _positions_array(jsonable(sys.get("positions")), len(names), 2,
                             f"meta['systems'][{k}]['positions']")
            sys["ch_names"] = names
        meta.update({key: systems[0].get(key) for key in SYSTEM_KEYS if key in systems[0]})
        meta["systems"] = systems
    for key in ("ch_names", "positions"):
        if meta.get(key) is None:
            raise ValueError(f"meta[{key!r}] is required to save a checkpoint; add it.")
    ch_names = [str(c) for c in meta["ch_names"]]
    if cfg.n_systems == 1 and len(ch_names) != cfg.n_channels:
        raise ValueError(
            f"meta['ch_names'] names {len(ch_names)} channels but the model has "
            f"{cfg.n_channels}; give one name per model input channel."
        )
    _positions_array(jsonable(meta["positions"]), len(ch_names), 2, "meta['positions']")
    target = dict(meta.get("target") or {})
    target.setdefault("name", None)
    target["dim"] = cfg.target_dim
    target["shape"] = list(cfg.target_shape)
    config = {key: meta.get(key) for key in META_KEYS}
    config.update(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        architecture=cfg.to_dict(),
        ch_names=ch_names,
        target=target,
        n_parameters=count_parameters(model),
    )
    extra = {k: v for k, v in meta.items() if k not in config}
    config.update(extra)
    tensors = dict(model.state_dict())
    atomic_save_tensors(out / WEIGHTS_FILE, tensors, {"format": "pt", "rtdecode": FORMAT})
    text = json.dumps(jsonable(config), indent=2, allow_nan=False)
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
    if not isinstance(config, dict) or not isinstance(config.get("architecture"), dict):
        raise ValueError(
            f"{path} has no 'architecture' table; it is not an rtdecode encoder checkpoint."
        )
    version = config.get("format_version", FORMAT_VERSION)
    if int(version) > FORMAT_VERSION:
        raise ValueError(
            f"{path} has format_version {version}, newer than this rtdecode reads "
            f"({FORMAT_VERSION}); upgrade rtdecode."
        )
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


def config_from_meta(meta: dict[str, Any]) -> tuple[BrainConfig, np.ndarray]:
    """Architecture and 2D positions of a checkpoint's config, checked for agreement."""
    cfg = BrainConfig.from_dict(meta["architecture"])
    systems = meta.get("systems")
    if cfg.n_systems > 1 or systems is not None:
        if not isinstance(systems, list) or len(systems) != cfg.n_systems:
            n = len(systems) if isinstance(systems, list) else None
            raise ValueError(
                f"config.json lists {n} sensor systems but its architecture reads "
                f"{cfg.n_systems}; the checkpoint is inconsistent."
            )
        arrays = []
        for k, sys in enumerate(systems):
            names = sys.get("ch_names") or []
            if not 0 < len(names) <= cfg.n_channels or sys.get("positions") is None:
                raise ValueError(
                    f"config.json's systems[{k}] has {len(names)} channel names (or no "
                    f"positions) but the architecture takes 1 to {cfg.n_channels}; the "
                    "checkpoint is inconsistent."
                )
            arrays.append(_positions_array(sys["positions"], len(names), 2,
                                           f"config.json systems[{k}] 'positions'"))
        positions = arrays[0] if cfg.n_systems == 1 else stack_positions(arrays, cfg.n_channels)
    else:
        ch_names = meta.get("ch_names")
        if ch_names is None or len(ch_names) != cfg.n_channels:
            n = None if ch_names is None else len(ch_names)
            raise ValueError(
                f"config.json lists {n} channel names but its architecture has "
                f"{cfg.n_channels} input channels; the checkpoint is inconsistent."
            )
        if meta.get("positions") is None:
            raise ValueError("config.json has no 'positions'; the spatial attention needs them.")
        positions = _positions_array(meta["positions"], cfg.n_channels, 2, "config.json 'positions'")
    subjects = meta.get("subjects")
    if subjects is not None and len(subjects) != cfg.n_subjects:
        raise ValueError(
            f"config.json lists {len(subjects)} subjects but the architecture has "
            f"{cfg.n_subjects} subject layers; the checkpoint is inconsistent."
        )
    target = meta.get("target") or {}
    if target.get("dim") is not None and int(target["dim"]) != cfg.target_dim:
        raise ValueError(
            f"config.json says the target has dim {target['dim']} but the architecture "
            f"predicts {cfg.target_dim}; the checkpoint is inconsistent."
        )
    stats = meta.get("target_stats")
    if stats:
        for key in ("mean", "std"):
            shape = np.shape(stats.get(key))
            if shape != cfg.target_shape:
                raise ValueError(
                    f"config.json's target_stats[{key!r}] has shape {shape} but the model "
                    f"predicts {cfg.target_shape}; the checkpoint is inconsistent."
                )
    return cfg, positions


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


def load_checkpoint(
    ckpt_dir: str | Path, device: str | torch.device = "cpu", subject: str | None = None
) -> tuple[BrainModule, dict]:
    """Load an encoder checkpoint folder (safetensors only, never pickle).

    Parameters
    ----------
    ckpt_dir : path
        Folder with ``model.safetensors`` and ``config.json``.
    device : str
        ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
    subject : str, optional
        The subject whose stream will be decoded (``"01"`` or ``"sub-01"``): ``meta``'s
        channels, positions and preprocessing are then that subject's sensor system's
        (:func:`subject_view`). Unknown subjects are an error that names
        ``rtdecode calibrate``.

    Returns
    -------
    model : BrainModule or RidgeModule
        In eval mode, on ``device``.
    meta : dict
        The parsed ``config.json`` (the subject's view when ``subject`` is given).

    Raises
    ------
    FileNotFoundError
        No such folder, or a file is missing.
    ValueError
        A pickle file was offered; the tensors are truncated; tensors are missing,
        unexpected or misshapen (each is named); or config and tensors disagree.
    """
    folder = _checkpoint_folder(ckpt_dir)
    meta = read_config(folder)
    cfg, positions = config_from_meta(meta)
    weights = folder / WEIGHTS_FILE
    tensors = read_tensors(weights)
    model = module_for(cfg, positions)
    _check_tensors(model, tensors, weights)
    model.load_state_dict(tensors, strict=True)
    model.to(resolve_device(device)).eval()
    if subject is not None:
        meta = subject_view(meta, subject)
    return model, meta


def subject_position(meta: dict[str, Any], subject: str) -> int:
    """Index of ``subject`` (``"01"`` or ``"sub-01"``) among the checkpoint's subjects.

    Raises
    ------
    ValueError
        The checkpoint does not know the subject; the message names ``rtdecode calibrate``.
    """
    known = [str(v) for v in meta.get("subjects") or []]
    wanted = str(subject).removeprefix("sub-")
    for i, name in enumerate(known):
        if name.removeprefix("sub-") == wanted:
            return i
    raise ValueError(
        f"Subject {subject!r} is not one of the encoder's subjects ({', '.join(known) or 'none'}). "
        "Decode one of those, or calibrate the encoder to this subject first: `rtdecode "
        "calibrate CKPT_DIR --data DIR --subject S --minutes M --out NEW_CKPT`."
    )


def systems_of(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """Each sensor system's channels, positions and preprocessing (one for older checkpoints)."""
    if meta.get("systems"):
        return [dict(sys) for sys in meta["systems"]]
    return [{key: meta.get(key) for key in SYSTEM_KEYS}]


def subject_view(meta: dict[str, Any], subject: str) -> dict[str, Any]:
    """The checkpoint's config as one subject sees it.

    Parameters
    ----------
    meta : dict
        A checkpoint's ``config.json``.
    subject : str
        ``"01"`` or ``"sub-01"``.

    Returns
    -------
    dict
        A copy of ``meta`` whose ``ch_names``, ``positions``, ``positions_3d``,
        ``ch_types``, ``sfreq_in_hz`` and ``preprocess`` are those of the subject's
        sensor system, plus ``subject_index`` (its row of the subject layer).
    """
    index = subject_position(meta, subject)
    cfg = BrainConfig.from_dict(meta["architecture"])
    system = systems_of(meta)[cfg.systems[index] if index < len(cfg.systems) else 0]
    out = dict(meta)
    out.update({key: system.get(key, meta.get(key)) for key in SYSTEM_KEYS})
    out["subject_index"] = index
    return out


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
        model, meta = load_checkpoint(ckpt_dir)
        cfg = model.config
        info = {
            "source": "checkpoint",
            "path": str(Path(ckpt_dir).resolve()),
            "n_channels": len(meta["ch_names"]),
            "sfreq_in_hz": meta.get("sfreq_in_hz"),
            "sfreq_model_hz": meta.get("sfreq_model_hz"),
            "window_s": meta.get("window_s"),
            "offsets": meta.get("offsets"),
            "clamp": meta.get("clamp"),
            "target": meta.get("target"),
            "subjects": meta.get("subjects"),
            "provenance": meta.get("provenance"),
        }
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


# --------------------------------------------------------------------------- training state
__all__ = [
    "SYSTEM_KEYS",
    "describe_model",
    "subject_position",
    "subject_view",
    "systems_of",
    "read_tensors",
    "load_checkpoint",
    "read_config",
    "resolve_device",
    "save_checkpoint",
]
