"""Markers as labs send them, end to end: a real LSL source in a subprocess (our synthetic
source, or mne-lsl's own PlayerLSL), the real service on 127.0.0.1 port 0, and a websocket
viewer. In every form (mne-lsl annotations as strings and one-hot, plain image-id
strings, codes through an events table, an in-stream trigger channel) the frames after
the first marker know the true image."""

from __future__ import annotations

import json

import mne
import numpy as np
import psutil
import pytest

from rtdecode.images.gallery import Gallery
from tests.helpers.lsl_source import poll
from tests.helpers.mne_player import PlayerProcess
from tests.helpers.service import (
    SFREQ_HZ,
    Live,
    Viewer,
    build_tiny_model,
    model_ch_names,
    running_service,
    wait_ready,
)

#: liblsl's multicast/discovery port (``[ports] MulticastPort``, the same in every build).
LSL_MULTICAST_PORT = 16571
LOOPBACK = {"127.0.0.1", "::1"}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    return build_tiny_model(tmp_path_factory)


@pytest.fixture(scope="module")
def image_ids(tiny_model) -> list[str]:
    """Four gallery images the markers name."""
    return Gallery.from_folder(tiny_model[0] / "images").ids[:4]


def _frames_know_the_truth(viewer: Viewer, ids: list[str], n: int = 8) -> list[dict]:
    """Wait for ``n`` frames that know their true image; every one names a marker's image
    and none lies before the first onset."""
    def known_frames():
        known = [f for f in list(viewer.frames) if f["true_id"] is not None]
        return known if len(known) >= n else None

    known = poll(known_frames, 60.0, f"{n} frames with a true image")
    assert {f["true_id"] for f in known} <= set(ids)
    assert all(f["lag_s"] is not None and f["lag_s"] >= 0 for f in known)
    return known


def _after_first_marker_all_known(frames: list[dict], hold_s: float = 1.5) -> None:
    """Frames ending within the hold after an onset know the image, none is left out."""
    first = next(i for i, f in enumerate(frames) if f["true_id"] is not None)
    later = [f for f in frames[first:] if f["lag_s"] is not None and 0 <= f["lag_s"] <= hold_s]
    assert later and all(f["true_id"] is not None for f in later)


# ---------------------------------------------------------------- mne-lsl's player
def _player_fif(path, ckpt, ids: list[str], seconds: float = 6.0) -> None:
    """A FIF in the model's layout whose annotations are plain gallery image ids."""
    names = model_ch_names(ckpt)[:-1]  # without the counter
    info = mne.create_info(names, SFREQ_HZ, "mag")
    n = int(seconds * SFREQ_HZ)
    data = np.random.default_rng(0).standard_normal((len(names), n)) * 1e-12
    onsets = np.arange(0.5, seconds - 0.5, 0.5)
    descs = [ids[k % len(ids)] for k in range(len(onsets))]
    raw = mne.io.RawArray(data, info, verbose="error")
    raw.set_annotations(mne.Annotations(onsets, [0.5] * len(onsets), descs))
    raw.save(path, overwrite=True, verbose="error")


def test_mne_lsl_player_keeps_to_the_loopback_configuration(tiny_model, image_ids, tmp_path, unique_name):
    """Under our LSLAPICFG the player's discovery sockets listen on 127.0.0.1 only (the
    default would be every interface and the multicast groups), and it talks to no one
    off the machine: the same sockets as our own pylsl outlets."""
    fif = tmp_path / "player_raw.fif"
    _player_fif(fif, tiny_model[1], image_ids, seconds=2.0)
    with PlayerProcess(fif, unique_name) as player:
        pid = player.wait_event("ready")["pid"]
        conns = psutil.Process(pid).net_connections(kind="inet")
    discovery = [c for c in conns if c.laddr and c.laddr.port == LSL_MULTICAST_PORT]
    assert discovery, f"no socket on liblsl's discovery port {LSL_MULTICAST_PORT}: {conns}"
    assert {c.laddr.ip for c in discovery} <= LOOPBACK, discovery
    assert all(not c.raddr or c.raddr.ip in LOOPBACK for c in conns), conns
    assert all(":" not in c.laddr.ip for c in conns), "IPv6 is disabled by the configuration"


@pytest.mark.parametrize("encoding", ["string", "one-hot"])
def test_mne_lsl_player_annotations_feed_serve(tiny_model, image_ids, tmp_path, unique_name, encoding):
    fif = tmp_path / "player_raw.fif"
    _player_fif(fif, tiny_model[1], image_ids)
    with PlayerProcess(fif, unique_name, encoding=encoding) as player:
        player.wait_event("ready")
        with running_service(
            tiny_model, unique_name, ch_names=None
        ) as service:
            wait_ready(service)
            viewer = Viewer(service)
            try:
                known = _frames_know_the_truth(viewer, image_ids)
            finally:
                viewer.stop()
            assert service.markers.description.name == f"{unique_name}-annotations"
            _after_first_marker_all_known(list(viewer.frames))
    assert known


# ---------------------------------------------------------------- strings, codes, triggers
def _table(path, ids: list[str], delimiter: str = "\t") -> None:
    """An events table as a lab writes one: trigger value -> stimulus file, condition."""
    rows = [["Trigger", "Stimulus", "Condition"]]
    rows += [[str(k + 1), f"stimuli/{i}.png", "exp"] for k, i in enumerate(ids)]
    path.write_text("\n".join(delimiter.join(r) for r in rows) + "\n")


@pytest.mark.parametrize(
    "form",
    ["string", "code", "trigger"],
)
def test_lab_markers_feed_serve(tiny_model, image_ids, tmp_path, unique_name, form, caplog):
    caplog.set_level("INFO")
    table = tmp_path / "events.tsv"
    _table(table, image_ids)
    source = {"marker_ids": image_ids, "markers_every_s": 0.5}
    settings = {}
    if form == "trigger":
        # STI101 between the data and the counter; found by name, explained by the table.
        source["trigger_channel"] = "STI101"
        names = model_ch_names(tiny_model[1])
        settings["ch_names"] = names[:-1] + ["STI101", names[-1]]
    else:
        source["marker_format"] = form
    if form != "string":
        settings["events_table"] = table
    with Live(tiny_model, unique_name, source=source, **settings) as live:
        known = _frames_know_the_truth(live.viewer, image_ids)
        _after_first_marker_all_known(list(live.viewer.frames))
    if form == "trigger":
        assert "trigger channel 'STI101'" in caplog.text
        # Trigger markers sit on their exact sample: the lag is a whole number of samples.
        lags = np.array([f["lag_s"] for f in known]) * SFREQ_HZ
        np.testing.assert_allclose(lags, np.round(lags), atol=1e-6)
    assert json.dumps(known)  # headers are plain JSON
