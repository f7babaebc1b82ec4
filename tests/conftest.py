"""Test configuration. The loopback-only LSL configuration is applied FIRST, before any
module that could load liblsl is imported, so no test sends multicast off the machine."""

import os
from pathlib import Path

os.environ["LSLAPICFG"] = str(
    Path(__file__).resolve().parents[1] / "rtdecode" / "lsl" / "lsl_local.cfg"
)
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("MNE_DONTWRITE_HOME", "true")

import uuid  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture
def unique_name(request) -> str:
    """A stream name unique to this test (and this run)."""
    base = request.node.name.replace("[", "_").replace("]", "")[:40]
    return f"rtd-{base}-{uuid.uuid4().hex[:8]}"
