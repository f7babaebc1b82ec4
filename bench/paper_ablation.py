"""Deep against ridge on the calibrated ``paper`` difficulty: the recipe and cheap changes.

Each variant is the recipe ``models/recipes/paper-difficulty.toml`` with a few keys
changed (``VARIANTS``). For each, it trains the deep encoder (``rtdecode train``'s
library call) on the simulation, evaluates it with ``rtdecode evaluate``'s library call
(the headline window only, no time-resolved curve) and reports the deep model's top-5
among the test images, single trials and repetitions averaged, against the ridge that
the evaluation fits on the same window, as a ratio (the paper: 7x with VGG-19).

    PYTHONPATH=. LSLAPICFG=rtdecode/lsl/lsl_local.cfg nice -n 10 .venv/bin/python \\
        bench/paper_ablation.py --data data/sim-paper --runs runs/paper-ablation \\
        --variants recipe small shifts --json bench/results/paper_difficulty_ablation.json

A variant whose checkpoint folder already holds a finished run of the same recipe is
evaluated without training again (``train_s``, the whole training call, is then null;
``epochs_s`` sums the epochs' own times from the run's state). Writes JSON (one row per variant, written as each
finishes) and prints a short table.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from common import format_table, machine_info, write_json  # bench/common.py, beside this script

REPO = Path(__file__).resolve().parents[1]
DEFAULT_RECIPE = REPO / "models" / "recipes" / "paper-difficulty.toml"

#: name -> (recipe keys changed, why)
VARIANTS: dict[str, tuple[dict[str, Any], str]] = {
    "recipe": ({}, "the recipe as written"),
    "small": (
        {"model": {"spatial_channels": 32, "hidden": 32, "projection_dim": 128},
         "weight_decay": 1e-3},
        "a model with 5x fewer parameters (0.38 M against 1.87 M) and weight decay: 768 "
        "training trials, and the ridge needs its strongest penalty",
    ),
    "shifts": (
        {"window_sampling": "stream", "lag_min_s": 0.65, "lag_max_s": 0.85, "lag_step_s": 0.05,
         "samples_per_epoch": 1536},
        "time-shift augmentation: 750 ms windows ending 650-850 ms after onset (5 per "
        "trial, the evaluation's window among them), against the latency jitter; 1536 "
        "of them drawn each epoch (2 per training trial), to keep to the time budget",
    ),
}


def _recipe(base: str | Path, changes: dict[str, Any]) -> Any:
    from rtdecode.training.encoder import load_recipe

    rc = load_recipe(base)
    values = rc.to_dict()
    for key, value in changes.items():
        values[key] = {**values[key], **value} if isinstance(value, dict) else value
    return load_recipe(values)


def _trained(ckpt: Path, recipe: Any) -> bool:
    """Whether ``ckpt`` holds a finished run of ``recipe`` (its provenance's recipe)."""
    config = ckpt / "config.json"
    if not config.is_file():
        return False
    saved = json.loads(config.read_text()).get("provenance", {}).get("recipe")
    return saved == json.loads(json.dumps(recipe.to_dict()))


def run_variant(name: str, data: Path, runs: Path, base: str | Path = DEFAULT_RECIPE,
                *, progress: bool = True) -> dict[str, Any]:
    """Train (unless done) and evaluate one variant; its row."""
    from rtdecode.training.encoder import train
    from rtdecode.training.evaluate import evaluate

    if name not in VARIANTS:
        raise ValueError(f"Unknown variant {name!r}; use one of {sorted(VARIANTS)}.")
    changes, why = VARIANTS[name]
    recipe = _recipe(base, changes)
    ckpt = runs / name
    train_s = None
    if not _trained(ckpt, recipe):
        t0 = time.perf_counter()
        train(data, ckpt, recipe=recipe, progress=progress)
        train_s = round(time.perf_counter() - t0, 1)
    report = evaluate(ckpt, data, time_resolved=False, progress=progress)
    provenance = json.loads((ckpt / "config.json").read_text()).get("provenance", {})
    state = ckpt / "training" / "state.json"
    history = json.loads(state.read_text())["state"]["history"] if state.is_file() else []
    test = report["retrieval"]
    row: dict[str, Any] = {"variant": name, "changes": changes, "why": why,
                           "checkpoint": str(ckpt), "train_s": train_s,
                           "epochs_s": round(sum(h.get("seconds", 0.0) for h in history), 1),
                           "best_epoch": provenance.get("best_epoch"), "epochs": len(history)}
    for mode in ("single", "average"):
        deep, ridge = test["model"]["test"][mode], test["ridge"]["test"][mode]
        row[mode] = {"deep_top5": deep["top5"], "ridge_top5": ridge["top5"],
                     "deep_top1": deep["top1"], "ridge_top1": ridge["top1"],
                     "deep_relative_median_rank": deep["relative_median_rank"],
                     "ridge_relative_median_rank": ridge["relative_median_rank"],
                     "ratio_top5": deep["top5"] / ridge["top5"] if ridge["top5"] else None,
                     "n_queries": deep["n_queries"], "chance_top5": deep["chance_top5"]}
    return row


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    import shlex
    import sys

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="the simulation (rtdecode simulate --difficulty paper)")
    ap.add_argument("--runs", required=True, help="folder of the variants' checkpoints")
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=sorted(VARIANTS))
    ap.add_argument("--recipe", default=str(DEFAULT_RECIPE.relative_to(REPO)))
    ap.add_argument("--json", default="bench/results/paper_difficulty_ablation.json")
    args = ap.parse_args(argv)
    command = " ".join(["bench/paper_ablation.py",
                        *map(shlex.quote, sys.argv[1:] if argv is None else argv)])
    result: dict[str, Any] = {"command": command, "data": args.data, "recipe": args.recipe,
                              "machine": machine_info(), "rows": []}
    for name in args.variants:
        result["rows"].append(run_variant(name, Path(args.data), Path(args.runs), args.recipe))
        write_json(args.json, result)
    rows = [[r["variant"], 100 * r["average"]["deep_top5"], 100 * r["average"]["ridge_top5"],
             r["average"]["ratio_top5"], 100 * r["single"]["deep_top5"],
             100 * r["single"]["ridge_top5"], r["best_epoch"]] for r in result["rows"]]
    print(format_table(["variant", "deep avg top-5 %", "ridge avg top-5 %", "ratio",
                        "deep single %", "ridge single %", "best epoch"], rows, floatfmt=".2f"))
    return result


if __name__ == "__main__":
    main()
