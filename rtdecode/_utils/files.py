"""Files: whether a write failed because the disk is full, and how much room is left."""

from __future__ import annotations

import errno
import shutil
from pathlib import Path

__all__ = ["is_disk_full", "free_bytes"]

#: errno values that mean "no room left" (the disk, or the user's quota).
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(exc: BaseException) -> bool:
    """True when ``exc`` is an OSError for a full disk or an exceeded quota."""
    return isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS


def free_bytes(path: str | Path) -> int | None:
    """Bytes an unprivileged writer may still use on the file system of ``path``
    (None when it cannot be asked, e.g. the folder is gone)."""
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None
