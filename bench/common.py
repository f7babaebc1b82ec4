"""Small helpers shared by the benchmarks: the machine's description, percentiles, JSON
output and plain-text tables.

Only the standard library and numpy at import time, so that every benchmark (and a bare
GPU machine) can import it; ``write_json`` uses rtdecode's one JSON conversion and its
portable paths (results are committed, so they hold no machine path). A benchmark run as ``python bench/NAME.py`` finds it because Python puts
the script's folder first on ``sys.path``.
"""

from __future__ import annotations

import json
import math
import os
import platform
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def cpu_name() -> str:
    """The processor's model name (``/proc/cpuinfo``), or what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_info() -> dict[str, Any]:
    """CPU, core count, Python and the 1-minute load average (the machine may be shared)."""
    return {
        "cpu": cpu_name(),
        "n_cpus": os.cpu_count(),
        "machine": platform.machine(),
        "python": platform.python_version(),
        "load_average_1min": round(os.getloadavg()[0], 2),
    }


def percentiles(
    values: Iterable[float], qs: Sequence[float] = (50, 95, 99), ndigits: int = 3
) -> dict[str, float | int]:
    """``{"n", "p50", "p95", "p99", "mean", "max"}`` of ``values`` (same unit as given).

    An empty input gives ``{"n": 0}`` so that a section that produced nothing still
    serialises.
    """
    a = np.asarray(list(values), dtype=float)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return {"n": 0}
    out: dict[str, float | int] = {"n": int(a.size)}
    for q, v in zip(qs, np.percentile(a, list(qs)), strict=True):
        out[f"p{q:g}"] = round(float(v), ndigits)
    out["mean"] = round(float(a.mean()), ndigits)
    out["max"] = round(float(a.max()), ndigits)
    return out


def write_json(path: str | Path, obj: dict[str, Any]) -> Path:
    """Write ``obj`` as indented JSON (folders created, numpy types converted, paths
    relative to the repository: results are committed and read on other machines)."""
    from rtdecode._utils.jsonable import jsonable
    from rtdecode._utils.paths import portable_paths

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    obj = jsonable(portable_paths(obj, root=RESULTS_DIR.parents[1]))
    text = json.dumps(obj, indent=2, allow_nan=False)
    path.write_text(text + "\n")
    return path


def save_figure(fig: Any, path: str | Path, **savefig: Any) -> Path:
    """Lay out a matplotlib figure, write it to ``path`` (folders created) and close it."""
    import matplotlib.pyplot as plt

    path = Path(path)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, **savefig)
    plt.close(fig)
    return path


def format_table(header: Sequence[str], rows: Iterable[Sequence[Any]], floatfmt: str = ".2f") -> str:
    """A plain-text table: first column left-aligned, the others right-aligned.

    Floats use ``floatfmt``; None prints as ``-``.
    """

    def cell(v: Any) -> str:
        if v is None:
            return "-"
        if isinstance(v, float):
            return format(v, floatfmt) if math.isfinite(v) else "nan"
        return str(v)

    body = [[cell(v) for v in row] for row in rows]
    cols = [list(header)] + body
    widths = [max(len(r[i]) for r in cols) for i in range(len(header))]
    lines = []
    for r in cols:
        parts = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:], strict=True)]
        lines.append("  ".join(parts).rstrip())
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def first_subject(ckpt: str | Path) -> str | None:
    """The checkpoint's first subject when it has several (the replayed session's), else None."""
    import json

    subjects = json.loads((Path(ckpt) / "config.json").read_text()).get("subjects") or []
    return subjects[0] if len(subjects) > 1 else None
