"""Training state for ``--resume``: one format for the encoder and the decoder.

A run's state lives in ``<out>/training/``: ``state.safetensors`` (the modules' weights
under ``<module>.``, the optimizer's tensors under ``optim.<param>.``, extra tensors such
as RNG states under ``extra.``) and ``state.json`` (the optimizer's param groups and
scalars, the loop state). Nothing is pickled; both files are written atomically, the
JSON last.

Threading: called from the training loop's thread only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rtdecode._utils.files import atomic_save_tensors, atomic_write
from rtdecode._utils.jsonable import jsonable
from rtdecode.encoder.checkpoint import read_tensors

__all__ = ["TRAINING_DIR", "has_training_state", "load_training_state", "save_training_state"]

#: The folder of a run's resume state, inside its output folder.
TRAINING_DIR = "training"


def has_training_state(out_dir: str | Path) -> bool:
    """True when ``out_dir`` holds a resume state (``training/state.json``)."""
    return (Path(out_dir) / TRAINING_DIR / "state.json").is_file()


def _flatten_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for pid, pstate in state["state"].items():
        for name, value in pstate.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{name}"] = value
            else:
                scalars.setdefault(str(pid), {})[name] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], info: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            state.setdefault(int(pid), {})[name] = value
    for pid, values in info.get("scalars", {}).items():
        state.setdefault(int(pid), {}).update(values)
    return {"state": state, "param_groups": info["param_groups"]}


def save_training_state(
    ckpt_dir: str | Path,
    modules: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
) -> Path:
    """Save what ``--resume`` needs into ``<ckpt_dir>/training/`` (no pickle).

    Parameters
    ----------
    modules : dict name -> Module
        e.g. ``{"model": model, "loss": loss}``; their state dicts are saved.
    optimizer : torch optimizer
    state : dict
        JSON-able loop state (epoch, best score, patience, RNG states, ...).
        Tensors in ``state["tensors"]`` (a dict) are stored in the safetensors file.
    """
    folder = Path(ckpt_dir) / TRAINING_DIR
    folder.mkdir(parents=True, exist_ok=True)
    tensors: dict[str, torch.Tensor] = {}
    for prefix, module in modules.items():
        for k, v in module.state_dict().items():
            tensors[f"{prefix}.{k}"] = v
    opt_tensors, opt_info = _flatten_optimizer(optimizer.state_dict())
    tensors.update(opt_tensors)
    state = dict(state)
    for k, v in (state.pop("tensors", None) or {}).items():
        tensors[f"extra.{k}"] = v
    atomic_save_tensors(folder / "state.safetensors", tensors, {"format": "pt"})
    doc = {"optimizer": opt_info, "state": state, "modules": sorted(modules)}
    atomic_write(folder / "state.json", json.dumps(jsonable(doc), indent=1).encode())
    return folder


def load_training_state(
    ckpt_dir: str | Path,
    modules: dict[str, nn.Module],
    optimizer: torch.optim.Optimizer,
) -> dict[str, Any]:
    """Restore modules and optimizer from :func:`save_training_state`.

    Returns the loop state (with its tensors under ``"tensors"``).
    """
    folder = Path(ckpt_dir) / TRAINING_DIR
    json_path, tensor_path = folder / "state.json", folder / "state.safetensors"
    if not json_path.is_file() or not tensor_path.is_file():
        raise FileNotFoundError(
            f"Nothing to resume in {Path(ckpt_dir)}: {TRAINING_DIR}/state.json and "
            f"{TRAINING_DIR}/state.safetensors are written after each epoch; train "
            "without --resume first."
        )
    try:
        doc = json.loads(json_path.read_text("utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{json_path} is not valid JSON ({exc}).") from None
    tensors = read_tensors(tensor_path)
    for prefix, module in modules.items():
        sub = {k[len(prefix) + 1 :]: v for k, v in tensors.items() if k.startswith(prefix + ".")}
        try:
            module.load_state_dict(sub, strict=True)
        except RuntimeError as exc:
            raise ValueError(
                f"The saved training state in {folder} does not fit the {prefix} being "
                f"trained ({exc}); resume with the same preset and data, or start afresh."
            ) from None
    optimizer.load_state_dict(_unflatten_optimizer(tensors, doc["optimizer"]))
    state = dict(doc["state"])
    state["tensors"] = {k[6:]: v for k, v in tensors.items() if k.startswith("extra.")}
    return state
