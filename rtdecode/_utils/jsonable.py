"""The one conversion of Python and numpy values to what JSON can carry.

Threads: stateless; any thread may call it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any


def jsonable(value: object) -> Any:
    """Return ``value`` with only JSON types.

    numpy scalars and arrays become Python numbers and lists, tuples become lists, NaN and
    infinities become None (JSON has none, and browsers' ``JSON.parse`` rejects them),
    paths become strings, and anything else unknown becomes its ``str``.

    Parameters
    ----------
    value : object
        A dict, list, scalar or numpy value, nested as deep as needed (anything else
        becomes its ``str``).

    Returns
    -------
    Any
        The same structure made of dict, list, str, int, float, bool and None.
    """
    if value is None or isinstance(value, bool | str | int):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, PurePath):
        return str(value)
    tolist = getattr(value, "tolist", None)  # numpy arrays and scalars
    if callable(tolist):
        try:
            return jsonable(tolist())
        except (TypeError, ValueError):
            pass
    return str(value)
