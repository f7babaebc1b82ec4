"""The one atomic write and the one JSON conversion."""

from __future__ import annotations

import math
import stat

import numpy as np
import pytest

from rtdecode._utils.files import PRIVATE, PUBLIC, atomic_path, atomic_write
from rtdecode._utils.jsonable import jsonable


def test_atomic_write_replaces_whole_files_with_the_asked_permissions(tmp_path):
    path = tmp_path / "a.json"
    assert atomic_write(path, "héllo") == len("héllo".encode())
    assert path.read_text(encoding="utf-8") == "héllo"
    assert stat.S_IMODE(path.stat().st_mode) == PUBLIC
    atomic_write(path, b"\x00\x01", mode=PRIVATE)
    assert path.read_bytes() == b"\x00\x01"
    assert stat.S_IMODE(path.stat().st_mode) == PRIVATE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("the writer failed")
    assert path.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.bin"]


def test_jsonable_makes_json_types_only():
    value = {1: (np.float32(0.5), np.int64(3)), "a": np.arange(3), "b": math.nan, "c": np.bool_(True)}
    assert jsonable(value) == {"1": [0.5, 3], "a": [0, 1, 2], "b": None, "c": True}
    assert jsonable({"x": [np.inf, object]})["x"][0] is None
