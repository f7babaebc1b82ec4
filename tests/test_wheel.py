"""A wheel that runs anywhere: the package finds its models through its own resources, the
demo writes its subject to the per-user data folder outside a checkout, and the wheel and
the sdist carry the models, the viewer and the licence. (scripts/wheel_smoke.sh installs
the wheel into a new virtualenv and runs the demo from another folder; .ci/run runs it.)"""

from __future__ import annotations

import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

import rtdecode.demo as demo
from rtdecode._utils.paths import bundled_models_dir
from rtdecode.decoder.registry import BUNDLED_DECODERS, decoder_kind, resolve_decoder_path

REPO = Path(__file__).resolve().parents[1]


def test_the_bundled_decoder_is_found_through_the_package():
    folder = resolve_decoder_path("demo")
    assert folder == BUNDLED_DECODERS["demo"] == bundled_models_dir() / "demo" / "decoder"
    assert decoder_kind(folder) == "tiny"


def test_demo_folders_in_a_checkout(monkeypatch):
    monkeypatch.delenv("RTDECODE_DEMO_DATA", raising=False)
    monkeypatch.delenv("RTDECODE_DEMO_MODELS", raising=False)
    assert demo.default_data_dir() == REPO / "data" / "sim"
    assert (demo.default_models_dir() / "encoder" / "config.json").is_file()


def test_demo_folders_of_an_installed_wheel(monkeypatch, tmp_path):
    monkeypatch.delenv("RTDECODE_DEMO_DATA", raising=False)
    monkeypatch.delenv("RTDECODE_DATA", raising=False)
    monkeypatch.setattr(demo, "checkout_root", lambda: None)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert demo.default_data_dir() == tmp_path / "xdg" / "rtdecode" / "sim"
    monkeypatch.setenv("RTDECODE_DATA", str(tmp_path / "mine"))
    assert demo.default_data_dir() == tmp_path / "mine" / "sim"
    monkeypatch.setenv("RTDECODE_DEMO_DATA", str(tmp_path / "exactly"))
    monkeypatch.setenv("RTDECODE_DEMO_MODELS", str(tmp_path / "models"))
    assert demo.default_data_dir() == tmp_path / "exactly"
    assert demo.default_models_dir() == tmp_path / "models"


def test_a_missing_encoder_says_where_it_looked(tmp_path):
    with pytest.raises(FileNotFoundError, match="demo brain encoder is missing from"):
        demo.run_demo(open_browser=False, data_dir=tmp_path / "d", models_dir=tmp_path / "m")


@pytest.mark.slow
def test_wheel_and_sdist_hold_the_models_the_viewer_and_the_licence(tmp_path):
    pytest.importorskip("build")
    out = subprocess.run(
        [sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp_path), str(REPO)],
        capture_output=True, text=True, timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    log = out.stdout + out.stderr
    assert "SetuptoolsDeprecationWarning" not in log and "License classifiers" not in log, log
    (wheel,) = tmp_path.glob("rtdecode-*.whl")
    (sdist,) = tmp_path.glob("rtdecode-*.tar.gz")
    # every committed file of the bundled models and the N170 example, as the wheel names it
    tracked = subprocess.run(
        ["git", "ls-files", "models/demo", "models/n170/encoder", "rtdecode/examples/n170"],
        cwd=REPO, capture_output=True, text=True, check=True,
    ).stdout.split()
    assert tracked, "git ls-files found none of the bundled files"
    source = {f.replace("models/", "rtdecode/_models/", 1) if f.startswith("models/") else f: f
              for f in tracked}
    shipped = sorted(source)
    assert "rtdecode/_models/demo/encoder/model.safetensors" in shipped
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        meta = zf.read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
        for name in shipped:
            assert zf.getinfo(name).file_size == (REPO / source[name]).stat().st_size, name
    for name in ["rtdecode/server/static/index.html", "rtdecode/server/static/viewer.js",
                 "rtdecode/lsl/lsl_local.cfg", "rtdecode/images/install_world_assets.sh",
                 *shipped]:
        assert name in names, name
    assert "License-Expression: BSD-3-Clause" in meta
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    with tarfile.open(sdist) as tf:
        members = {m.name.split("/", 1)[1] for m in tf.getmembers() if m.isfile()}
    assert set(shipped) <= members and "LICENSE" in members
