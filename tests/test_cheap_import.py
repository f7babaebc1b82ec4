"""The cheap-import promise: the live input, the server and file I/O load no torch and no
diffusers (checked in a fresh interpreter, where nothing else has loaded them)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "diffusers", "transformers", "pylsl")


@pytest.mark.parametrize(
    "module",
    ["rtdecode", "rtdecode.stream", "rtdecode.server.app", "rtdecode.io", "rtdecode.contracts",
     "rtdecode.decoder", "rtdecode.decoder.registry", "rtdecode.config"],
)
def test_import_loads_no_heavy_backend(module):
    code = (
        f"import json, sys; import {module}; "
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    loaded = json.loads(out.stdout.strip().splitlines()[-1])
    assert loaded == [], f"import {module} loaded {loaded}"
