"""LSL access. The only package in rtdecode that imports pylsl (lazily, in ``streams``).

Importing this package does not load liblsl; ``use_local_config`` must run before the
first pylsl object exists, which is why it only touches the environment.
"""

from __future__ import annotations

import os
import sys
import warnings
from pathlib import Path

LOCAL_CONFIG = Path(__file__).with_name("lsl_local.cfg")

__all__ = ["LOCAL_CONFIG", "use_local_config", "local_config_active"]


def use_local_config() -> Path:
    """Point liblsl at the loopback-only configuration shipped with rtdecode.

    Sets ``LSLAPICFG`` for this process and its children. liblsl reads its
    configuration once, when the first stream object is made, so call this first.

    Returns
    -------
    Path
        The configuration file now in force.
    """
    previous = os.environ.get("LSLAPICFG")
    os.environ["LSLAPICFG"] = str(LOCAL_CONFIG)
    if "pylsl" in sys.modules and previous != str(LOCAL_CONFIG):
        # liblsl may already have read another configuration; apply ours explicitly too.
        try:
            import pylsl

            pylsl.set_config_filename(str(LOCAL_CONFIG))
        except Exception:  # pragma: no cover - depends on liblsl build
            warnings.warn(
                "pylsl was imported before the loopback-only LSL configuration was "
                "applied; restart the process with --lsl-local or LSLAPICFG set.",
                RuntimeWarning,
                stacklevel=2,
            )
    return LOCAL_CONFIG


def local_config_active() -> bool:
    """True when ``LSLAPICFG`` points at the loopback-only configuration."""
    return os.environ.get("LSLAPICFG") == str(LOCAL_CONFIG)
