"""Atomic file writes: the one write-then-rename rule of the project.

A reader (another process, a crash-recovery scan, a browser) sees either the old file or
the whole new one, never half a file: data go to a hidden temporary sibling, are flushed
and fsynced, take their final permissions, and are renamed into place. ``fsync_dir``
makes the rename itself survive a power cut where that matters (recordings).

Threads: stateless; any thread may call these functions.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from collections.abc import Iterator
from pathlib import Path

#: Permissions of files that other users may read (checkpoints, galleries, caches).
PUBLIC = 0o644
#: Permissions of files that only their owner may read (recordings of a subject).
PRIVATE = 0o600


def temporary_sibling(path: str | os.PathLike) -> Path:
    """The hidden temporary name a file is written under before it is renamed to ``path``."""
    path = Path(path)
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def publish(tmp: str | os.PathLike, final: str | os.PathLike, *, mode: int = PUBLIC) -> int:
    """Move a finished temporary file into place: fsync, set ``mode``, rename.

    Parameters
    ----------
    tmp, final : path
        The written temporary file and its final name (same folder).
    mode : int
        Permission bits of the final file (:data:`PUBLIC` or :data:`PRIVATE`).

    Returns
    -------
    int
        Size of the file in bytes.
    """
    tmp, final = Path(tmp), Path(final)
    os.chmod(tmp, mode)
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    size = tmp.stat().st_size
    os.replace(tmp, final)
    return size


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, mode: int = PUBLIC) -> Iterator[Path]:
    """A temporary path to write ``path``'s content to; published on a clean exit.

    For writers that want a file name (``safetensors.save_file``, ``mne``'s ``save``).
    On an exception the temporary file is removed and ``path`` is left as it was.
    """
    final = Path(path)
    tmp = temporary_sibling(final)
    try:
        yield tmp
        publish(tmp, final, mode=mode)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def atomic_write(path: str | os.PathLike, data: bytes | str, *, mode: int = PUBLIC) -> int:
    """Write ``data`` (str as UTF-8) to ``path`` atomically; return the size in bytes."""
    payload = data.encode("utf-8") if isinstance(data, str) else bytes(data)
    final = Path(path)
    with atomic_path(final, mode=mode) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.write(payload)
    return len(payload)


def fsync_dir(path: str | os.PathLike) -> None:
    """Flush a folder to disk (fsync), so the renames into it survive a power cut."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_save_tensors(
    path: str | os.PathLike, tensors: dict, metadata: dict[str, str] | None = None
) -> int:
    """Save torch tensors as a safetensors file, atomically (safetensors loads on call).

    Parameters
    ----------
    path : path
        The ``.safetensors`` file to write.
    tensors : dict of str -> torch.Tensor
        Saved detached, contiguous and on the CPU.
    metadata : dict of str -> str, optional
        The file's header metadata.

    Returns
    -------
    int
        Size of the file in bytes.
    """
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, metadata=metadata)
    return atomic_write(path, data)


#: errno values that mean "no room left" (the disk, or the user's quota).
_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def is_disk_full(exc: BaseException) -> bool:
    """True when ``exc`` is an OSError for a full disk or an exceeded quota."""
    return isinstance(exc, OSError) and exc.errno in _DISK_FULL_ERRNOS


def free_bytes(path: str | os.PathLike) -> int | None:
    """Bytes an unprivileged writer may still use on the file system of ``path``.

    None when it cannot be asked (e.g. the folder is gone).
    """
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None
