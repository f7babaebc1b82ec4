"""One LSL pull loop in the package: only rtdecode/lsl/ calls pylsl's pulls, and only one
module (stream/reader.py) calls those wrappers. A recorder is a sink over a reader; it
has its own writer, never its own inlet or pull loop."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "rtdecode"
PYLSL_PULLS = {"pull_chunk", "pull_sample"}
PULL_LOOP = "rtdecode/stream/reader.py"


def _called_names(tree: ast.AST) -> set[str]:
    """Names of everything called in ``tree``: ``f(...)`` and ``x.f(...)`` give ``f``."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute):
                names.add(func.attr)
            elif isinstance(func, ast.Name):
                names.add(func.id)
    return names


def _modules() -> dict[str, ast.Module]:
    return {
        path.relative_to(PACKAGE.parent).as_posix(): ast.parse(path.read_text(), str(path))
        for path in sorted(PACKAGE.rglob("*.py"))
    }


def test_only_the_stream_reader_pulls_from_lsl():
    modules = _modules()
    in_lsl = {m: t for m, t in modules.items() if m.startswith("rtdecode/lsl/")}
    # pylsl's own pulls: only inside the lsl/ wrappers.
    direct = sorted(m for m, t in modules.items() if _called_names(t) & PYLSL_PULLS)
    assert direct and all(m in in_lsl for m in direct), (
        f"{direct} call pylsl's pull_chunk/pull_sample; only rtdecode/lsl/ may."
    )
    # The wrappers are the lsl/ functions that call them ...
    wrappers = {
        node.name
        for tree in in_lsl.values()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef) and _called_names(node) & PYLSL_PULLS
    }
    assert {"pull_into", "pull_markers"} <= wrappers
    # ... and one module outside lsl/ calls them: the reader thread's pull loop.
    pullers = sorted(
        m for m, t in modules.items() if m not in in_lsl and _called_names(t) & wrappers
    )
    assert pullers == [PULL_LOOP], (
        f"LSL pull loops in {pullers}: there must be one, in {PULL_LOOP}. Register a sink "
        "with a StreamReader / StreamTap / MarkerReader (add_sink) instead of pulling."
    )
