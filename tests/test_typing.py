"""Parameters typed ``Any`` stay where a type truly cannot be named.

Counted with ``ast`` over every function of rtdecode/: each parameter (``*args`` and
``**kwargs`` included) whose annotation is ``Any``. The package had 113 when issue 22
asked for fewer; naming the types of the training run, the server, the decoders, the
signal and data layers, the image encoders, the helpers and the checkpoint card left
42, and naming those of the worker and its lanes, the decoding seam, the image codec,
the evaluations, the sweeps, the stream readers, the recorder, the players and the LSL
helpers (pylsl and mne under ``TYPE_CHECKING`` in rtdecode/lsl, a small Protocol for an
outlet elsewhere) left 17. The ceiling below is that number: a new ``Any`` parameter
fails here, with the list of all of them, unless a type is named for another one first.

What remains, by group, and why:

* ``**kwargs: Any`` forwarded to a constructor or a loader whose options each have the
  type of their own field (``Settings.load``, ``BrainConfig.replace``,
  ``CheckpointCard.replace``, ``load_recipe``, ``load_decoder`` and the decoders'
  ``from_folder``, ``replay_file``, ``time_resolved``, ``write_prepared``): one
  annotation cannot name a different type per key.
* Values read from files or sent by labs, checked at run time before use (the checkpoint
  card's ``positions_array``, ``_float``, ``check_config``, ``from_config``; the event
  codes of ``stream.events``: ``code_key``, ``EventsTable.__contains__`` and ``lookup``,
  which take a code as a marker payload or a table cell holds it): ``Any`` marks the
  unchecked side.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "rtdecode"

#: The most ``Any`` parameters the package may hold (see the module docstring).
MAX_ANY_PARAMETERS = 17


def any_parameters(root: Path = PACKAGE) -> list[str]:
    """``path:line function(parameter)`` for every parameter annotated ``Any``."""
    found: list[str] = []
    for path in sorted(root.rglob("*.py")):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            a = node.args
            params = [*a.posonlyargs, *a.args, *a.kwonlyargs]
            params += [p for p in (a.vararg, a.kwarg) if p is not None]
            for param in params:
                if param.annotation is not None and ast.unparse(param.annotation) in (
                    "Any", "typing.Any"
                ):
                    where = path.relative_to(root.parent)
                    found.append(f"{where}:{node.lineno} {node.name}({param.arg})")
    return found


def test_any_parameters_stay_below_the_ceiling():
    found = any_parameters()
    assert len(found) <= MAX_ANY_PARAMETERS, (
        f"{len(found)} parameters are typed Any, more than the {MAX_ANY_PARAMETERS} allowed; "
        "name their types (numpy.typing, torch, a Protocol, a union), or name another's "
        "first. All of them:\n" + "\n".join(found)
    )


def test_the_counter_sees_every_kind_of_parameter(tmp_path):
    (tmp_path / "m.py").write_text(
        "from typing import Any\n"
        "import typing\n"
        "def f(a: Any, /, b: int, *args: Any, c: typing.Any, **kw: Any) -> Any: ...\n"
        "class C:\n"
        "    async def g(self, x: Any | None, y: list[Any]) -> None: ...\n"
    )
    found = any_parameters(tmp_path)
    assert [f.split(" ")[1] for f in found] == ["f(a)", "f(c)", "f(args)", "f(kw)"]
