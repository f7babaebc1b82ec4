"""The import direction of DESIGN.md's layers, and no import cycle, checked by parsing
every module of rtdecode/ (imports inside functions count: a lazy import is still an
edge of the design, and so does a ``"rtdecode.module:attr"`` string, which a registry
imports by name)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "rtdecode"

#: Each top-level room of rtdecode/ and its layer: a module may import from its own layer
#: and the layers below it (smaller numbers), never from a layer above.
LAYERS = {
    "rtdecode": 0,
    "_utils": 0,
    "contracts": 0,
    "config": 0,
    "lsl": 1,
    "signal": 1,
    "images": 1,
    "stream": 2,
    "data": 2,
    "io": 3,
    "encoder": 4,
    "decoder": 4,
    "worker": 5,
    "decoding": 5,
    "lanes": 5,
    "training": 5,
    "server": 6,
    "service": 7,
    "demo": 7,
    "cli": 8,
}
#: The server sees only these rooms besides itself (it never imports torch or a stage).
SERVER_SEES = {"rtdecode", "contracts", "_utils", "server"}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


#: A ``"module:attr"`` reference (uvicorn's registry style) to a module of the package.
_REFERENCE = re.compile(r"(rtdecode(?:\.\w+)*):\w+(?:\.\w+)*")


def reference_of(text: str, known: set[str]) -> str | None:
    """The module a ``"rtdecode.pkg.mod:attr"`` string names (the longest known prefix:
    ``"rtdecode.pkg:Class"`` names ``rtdecode.pkg``), or None for any other string."""
    match = _REFERENCE.fullmatch(text.strip())
    if match is None:
        return None
    module = match.group(1)
    while module not in known and "." in module:
        module = module.rsplit(".", 1)[0]
    return module


def imports_of(path: Path, known: set[str]) -> set[str]:
    """The rtdecode modules that ``path`` imports (``from pkg import sub`` names ``pkg.sub``
    when that is a module, else ``pkg``) or names in a ``"module:attr"`` string."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if (target := reference_of(node.value, known)) is not None:
                found.add(target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "rtdecode")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                raise AssertionError(f"{path}: use absolute imports (from rtdecode...).")
            if node.module is None or node.module.split(".")[0] != "rtdecode":
                continue
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in known else node.module)
    return found


def room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def graph() -> dict[str, set[str]]:
    mods = modules()
    known = set(mods)
    return {m: imports_of(p, known) - {m} for m, p in mods.items()}


def test_every_room_has_a_layer():
    assert {room(m) for m in modules()} <= set(LAYERS), (
        "A new top-level module or package needs a layer in tests/test_layers.py and DESIGN.md."
    )


def test_no_module_imports_from_a_layer_above_it():
    upward = []
    for mod, deps in graph().items():
        for dep in deps:
            if LAYERS[room(dep)] > LAYERS[room(mod)]:
                upward.append(f"{mod} (layer {LAYERS[room(mod)]}) imports {dep} "
                              f"(layer {LAYERS[room(dep)]})")
    assert not upward, "Upward imports:\n" + "\n".join(sorted(upward))


def test_the_server_sees_only_contracts_and_utils():
    bad = [
        f"{mod} imports {dep}"
        for mod, deps in graph().items()
        if room(mod) == "server"
        for dep in deps
        if room(dep) not in SERVER_SEES
    ]
    assert not bad, "\n".join(sorted(bad))


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the stack, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycle():
    cycle = find_cycle(graph())
    assert cycle is None, "Import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize(
    "edges, has_cycle",
    [
        ({"a": {"b"}, "b": {"c"}, "c": set()}, False),
        ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True),
        ({"a": {"a2"}, "a2": set(), "b": {"a", "b2"}, "b2": {"b"}}, True),
    ],
)
def test_the_cycle_finder_finds_cycles(edges, has_cycle):
    assert (find_cycle(edges) is not None) == has_cycle


def test_module_attr_strings_are_edges(tmp_path):
    known = set(modules())
    source = tmp_path / "registry.py"
    source.write_text(
        '"""Docs may say rtdecode.cli:main in a sentence."""\n'
        'PLAYERS = {".x": "rtdecode.io.replay:Player", "y": "rtdecode.decoder:load_decoder"}\n'
        'OTHER = "uvicorn.protocols:Thing"\n'
    )
    assert imports_of(source, known) == {"rtdecode.io.replay", "rtdecode.decoder"}
    # The decoder registry's strings are edges of the real graph.
    assert "rtdecode.decoder.tiny" in graph()["rtdecode.decoder.registry"]
