"""Paths as committed results hold them, the bundled models and the per-user data folder."""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path

import pytest

from rtdecode._utils.paths import (
    bundled_models_dir,
    checkout_root,
    portable_path,
    portable_paths,
    repository_root,
    user_data_dir,
)

REPO = Path(__file__).resolve().parents[2]

#: An absolute machine path: POSIX (two components or more) or a Windows drive. The
#: server's URL routes (``/api/status``) look alike and are not paths.
_ABSOLUTE = re.compile(r"^(/(?!api/|ws/|health/|metrics/)[^/\s]+/|[A-Za-z]:[\\/])")


def _strings(value):
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, list):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, str):
        yield value


def _absolute_paths(doc) -> list[str]:
    found = []
    for text in _strings(doc):
        words = [text] + text.split() + [w.partition("=")[2] for w in text.split()]
        found += [w for w in words if _ABSOLUTE.match(w)]
    return sorted(set(found))


def test_committed_results_hold_no_absolute_path():
    files = sorted((REPO / "docs").rglob("*.json")) + sorted((REPO / "bench").rglob("*.json"))
    assert files, "no JSON results found under docs/ or bench/"
    offenders = {}
    for path in files:
        bad = _absolute_paths(json.loads(path.read_text(encoding="utf-8")))
        if bad:
            offenders[str(path.relative_to(REPO))] = bad[:3]
    assert not offenders, (
        f"Committed results hold machine paths: {offenders}; write them through "
        "rtdecode._utils.paths.portable_paths (paths relative to the repository)."
    )


def test_the_check_catches_absolute_paths():
    assert _absolute_paths({"checkpoint": "/work/x/models/demo/encoder"})
    assert _absolute_paths({"command": "bench/latency.py --model /tmp/ops/enc"})
    assert _absolute_paths({"command": "serve --model=/home/me/enc"})
    assert _absolute_paths(["C:\\Users\\me\\enc"])
    assert not _absolute_paths({"route": "/ws", "ratio": "1/s", "data": "data/sim",
                                "endpoint": "GET /api/gallery/{image_id}"})


def test_portable_path_is_relative_to_the_root(tmp_path):
    root = tmp_path / "repo"
    (root / "models" / "demo").mkdir(parents=True)
    assert portable_path(root / "models" / "demo", root) == "models/demo"
    assert portable_path(root, root) == "."
    assert portable_path("data/sim", root) == "data/sim"
    home = Path.home() / "rtdecode-portable-probe" / "x.fif"
    if not str(home).startswith(tempfile.gettempdir()):
        assert portable_path(home, root) == "~/rtdecode-portable-probe/x.fif"


def test_portable_path_names_temporary_files_without_the_machine_path(tmp_path):
    # tmp_path lies in the system's temporary folder, outside the root given here
    root = REPO
    text = portable_path(tmp_path / "run" / "ckpt", root)
    assert text.startswith("$TMPDIR/") and text.endswith("/run/ckpt")
    assert not _ABSOLUTE.match(text)


def test_portable_paths_walks_documents_and_command_lines(tmp_path):
    doc = {
        "checkpoint": str(tmp_path / "models" / "demo" / "encoder"),
        "data": tmp_path / "data" / "sim",
        "runs": [str(tmp_path / "a.json"), 3, None, 1.5],
        "command": f"bench/latency.py --model {tmp_path / 'enc'} --json out.json",
        "route": "/api/status",
        "note": "1/s and 2/s",
    }
    out = portable_paths(doc, root=tmp_path)
    assert out == {
        "checkpoint": "models/demo/encoder",
        "data": "data/sim",
        "runs": ["a.json", 3, None, 1.5],
        "command": "bench/latency.py --model enc --json out.json",
        "route": "/api/status",
        "note": "1/s and 2/s",
    }
    assert not _absolute_paths(out)


def test_repository_root_is_the_checkout_or_the_folder(tmp_path, monkeypatch):
    assert repository_root(REPO / "rtdecode" / "_utils") == REPO
    monkeypatch.chdir(tmp_path)
    assert repository_root() == tmp_path.resolve()


def test_bundled_models_are_the_checkouts_models_folder():
    models = bundled_models_dir()
    assert (models / "demo" / "encoder" / "config.json").is_file()
    assert (models / "demo" / "decoder" / "config.json").is_file()
    assert checkout_root() == REPO
    assert models.resolve() == (REPO / "models").resolve()


def test_user_data_dir_follows_the_variables(tmp_path, monkeypatch):
    monkeypatch.setenv("RTDECODE_DATA", str(tmp_path / "mine"))
    assert user_data_dir() == tmp_path / "mine"
    monkeypatch.delenv("RTDECODE_DATA")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert user_data_dir() == tmp_path / "xdg" / "rtdecode"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert user_data_dir() == Path.home() / ".local" / "share" / "rtdecode"


@pytest.mark.skipif(os.name != "posix", reason="symbolic link of the checkout")
def test_the_package_links_to_the_models_folder():
    link = REPO / "rtdecode" / "_models"
    assert link.is_symlink() and os.readlink(link) == "../models"
