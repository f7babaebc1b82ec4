"""Where rtdecode's files are: the bundled models, the user's data folder, the checkout.

One place answers each question, so the demo, the decoder registry and every writer of
results agree whether rtdecode runs from a git checkout or from an installed wheel:

- :func:`bundled_models_dir`: the demo models shipped inside the package
  (``rtdecode/_models``, found through :mod:`importlib.resources`). In a checkout this is
  a link to ``models/``, so ``make models`` writes where the package reads.
- :func:`checkout_root`: the repository root when rtdecode is imported from a checkout
  (an editable install), else None.
- :func:`user_data_dir`: the per-user folder for data rtdecode makes itself (the demo's
  simulated subject) when there is no checkout.
- :func:`portable_path` and :func:`portable_paths`: paths as committed results hold them,
  relative to the repository root (or the current folder outside a repository).

Threads: stateless; any thread may call these functions.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Mapping
from importlib import resources
from pathlib import Path, PurePath
from typing import Any

#: The package's resource folder of bundled models (a link to ``models/`` in a checkout).
MODELS_RESOURCE = "_models"


def bundled_models_dir() -> Path:
    """The folder of the models shipped with the package (``<it>/demo/encoder``, ...).

    Returns
    -------
    Path
        ``rtdecode/_models`` of the installed package; inside a checkout it resolves to the
        repository's ``models/`` folder.
    """
    # pip always unpacks wheels, so the package's resources are plain files on disk.
    return Path(str(resources.files("rtdecode").joinpath(MODELS_RESOURCE)))


def checkout_root() -> Path | None:
    """The git checkout rtdecode is imported from, or None for an installed wheel.

    Returns
    -------
    Path or None
        The folder holding ``pyproject.toml`` and ``.git`` above the ``rtdecode`` package.
    """
    root = Path(str(resources.files("rtdecode"))).resolve().parent
    if (root / "pyproject.toml").is_file() and (root / ".git").exists():
        return root
    return None


def user_data_dir() -> Path:
    """The per-user folder for data rtdecode makes itself (e.g. the demo's subject).

    ``RTDECODE_DATA`` when set, else ``$XDG_DATA_HOME/rtdecode``, else
    ``~/.local/share/rtdecode``.

    Returns
    -------
    Path
        The folder (not created here).
    """
    if os.environ.get("RTDECODE_DATA"):
        return Path(os.environ["RTDECODE_DATA"]).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "rtdecode"


def repository_root(start: str | os.PathLike | None = None) -> Path:
    """The git repository around ``start`` (default: the current folder), else ``start``.

    Parameters
    ----------
    start : path-like, optional
        Where to look from; the current working folder when None.

    Returns
    -------
    Path
        The nearest folder at or above ``start`` holding ``.git``; ``start`` itself when
        there is none.
    """
    here = Path(start if start is not None else Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if (folder / ".git").exists():
            return folder
    return here


def portable_path(path: str | os.PathLike, root: str | os.PathLike | None = None) -> str:
    """A path as committed results hold it: relative to ``root``, never the machine's.

    Parameters
    ----------
    path : str or path-like
        Any path; a relative one is returned unchanged.
    root : path-like, optional
        The folder results are relative to; :func:`repository_root` of the current folder
        when None.

    Returns
    -------
    str
        A POSIX path relative to ``root`` for a path inside it; a path in the system's
        temporary folder as ``$TMPDIR/...`` and one in the home folder as ``~/...`` (they
        exist only on the machine that ran); any other absolute path unchanged.
    """
    p = Path(path)
    if not p.is_absolute():
        return p.as_posix()
    base = Path(root).resolve() if root is not None else repository_root()
    resolved = Path(os.path.abspath(p))
    for prefix, name in (
        (base, None),
        (Path(tempfile.gettempdir()).resolve(), "$TMPDIR"),
        (Path("/tmp"), "$TMPDIR"),
        (Path.home().resolve(), "~"),
    ):
        if resolved == prefix or prefix in resolved.parents:
            rel = resolved.relative_to(prefix).as_posix()
            if name is None:
                return rel
            return name if rel == "." else f"{name}/{rel}"
    return p.as_posix()


def _absolute_token(text: str) -> bool:
    return text.startswith("/") and text.count("/") >= 2 and " " not in text


def portable_paths(value: object, root: str | os.PathLike | None = None) -> Any:
    """``value`` with every path in it made portable (:func:`portable_path`).

    Walks dicts, lists and tuples; path objects, and strings that are absolute paths
    (whole, or as whitespace-separated words of a command line), are rewritten.

    Parameters
    ----------
    value : object
        A results document about to be written as JSON.
    root : path-like, optional
        As in :func:`portable_path`.

    Returns
    -------
    Any
        The same structure (dicts and lists copied) with portable paths.
    """
    base = Path(root).resolve() if root is not None else repository_root()
    if isinstance(value, PurePath):
        return portable_path(value, base)
    if isinstance(value, str):
        if _absolute_token(value):
            return portable_path(value, base)
        if "/" in value and " " in value:
            words = value.split(" ")
            return " ".join(portable_path(w, base) if _absolute_token(w) else w for w in words)
        return value
    if isinstance(value, Mapping):
        return {k: portable_paths(v, base) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [portable_paths(v, base) for v in value]
    return value
