"""``rtdecode demo``: the simulated subject, decoded live.

The subject is replayed on a loopback-only LSL stream and decoded by the service with the
bundled models; one command, Ctrl-C to stop.

Where things are (``rtdecode._utils.paths``): the models are package resources
(``rtdecode/_models/demo``, which is ``models/demo`` in a checkout), so an installed wheel
finds them as a checkout does. The simulated subject is written once, into ``data/sim`` of
the checkout rtdecode runs from, or, for an installed wheel, into the per-user data folder
(``$RTDECODE_DATA/sim``, else ``~/.local/share/rtdecode/sim``). ``RTDECODE_DEMO_DATA`` and
``RTDECODE_DEMO_MODELS`` name other folders.

Threading: the replay runs in a thread of its own (``rtdecode.io.replay.Player``); the
service's threads are described in ``rtdecode.service``; this module's main thread only
prints a status line and waits for Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import threading
import time
import webbrowser
from pathlib import Path

from rtdecode._utils.paths import bundled_models_dir, checkout_root, user_data_dir
from rtdecode.lsl import use_local_config

#: The simulated subject whose held-out session the demo replays (replay_raw.fif).
DEMO_SUBJECT = "01"


def default_data_dir() -> Path:
    """Folder of the demo's simulated data.

    ``RTDECODE_DEMO_DATA`` when set; else ``data/sim`` of the checkout rtdecode runs from
    (where ``make models`` simulates); else ``sim`` in the per-user data folder.
    """
    if os.environ.get("RTDECODE_DEMO_DATA"):
        return Path(os.environ["RTDECODE_DEMO_DATA"]).expanduser()
    root = checkout_root()
    return root / "data" / "sim" if root is not None else user_data_dir() / "sim"


def default_models_dir() -> Path:
    """Folder of the demo's models: the package's (``RTDECODE_DEMO_MODELS`` overrides it)."""
    if os.environ.get("RTDECODE_DEMO_MODELS"):
        return Path(os.environ["RTDECODE_DEMO_MODELS"]).expanduser()
    return bundled_models_dir() / "demo"


def ensure_simulated_subject(data_dir: Path) -> Path:
    """Write the simulated subject into ``data_dir`` unless it is already there.

    A simulation of an earlier format (another image world than the bundled models were
    trained on) is replaced.
    """
    import json

    from rtdecode.data.simulate.cohort import FORMAT

    replay = data_dir / "replay_raw.fif"
    truth = data_dir / "simulation.json"
    try:
        current = json.loads(truth.read_text(encoding="utf-8")).get("format") == FORMAT
    except (OSError, ValueError):
        current = False
    if not replay.is_file() or not current:
        from rtdecode.data.simulate import simulate_subject
        from rtdecode.images.world import ASSET_INSTALLER, install_assets, missing_assets

        if missing_assets():
            # The bundled models were trained on the full world: its Debian sources are
            # part of the demo's set-up (make install does this in a checkout).
            print("Installing the image world's Debian sources into the per-user cache ...",
                  flush=True)
            still = install_assets()
            if still:
                raise RuntimeError(
                    f"The image world lacks the Debian package(s) {', '.join(still)}, which "
                    "the demo's models were trained with. Install them system-wide "
                    f"(apt-get install {' '.join(still)}) or run `bash {ASSET_INSTALLER}` "
                    "where apt-get can download, then run the demo again."
                )
        what = "Simulating" if not truth.is_file() else "Re-simulating (new image world)"
        print(f"{what} the demo subject into {data_dir} (a few minutes, once) ...", flush=True)
        simulate_subject(data_dir, seed=0, size="full")
    return replay


def _status_line(service) -> str:
    st = service.worker.stats.as_dict() if service.worker else {}
    c = st.get("counters", {})
    lat = st.get("latency_ms", {}).get("total", {})
    win = service.windower.stats.as_dict() if service.windower else {}
    return (
        f"frames {c.get('frames', 0):6d}  images {c.get('images', 0):5d}  "
        f"latency p50 {lat.get('p50', float('nan')):6.1f} ms  p99 {lat.get('p99', float('nan')):6.1f} ms  "
        f"windows skipped {win.get('skipped', 0)}"
    )


#: ``rtdecode demo --example n170``: eeg-notebooks' N170 subject 1 (rtdecode/examples/n170),
#: run 5 (test data, never trained on) replayed live, decoded by models/n170/encoder.
N170_TEST_RUN = "data_2017-09-13-15.42.33.csv"


def example_n170() -> tuple[Path, Path, Path]:
    """The N170 example's card, the run the demo replays, and its encoder folder."""
    from importlib import resources

    root = Path(str(resources.files("rtdecode").joinpath("examples", "n170")))
    return root / "card.toml", root / "recordings" / N170_TEST_RUN, bundled_models_dir() / "n170" / "encoder"


def _n170_settings_and_replay(name: str, port: int):
    """Settings and the replay of run 5 for ``--example n170``: categories, no decoder."""
    from rtdecode.config import Settings
    from rtdecode.data.card import read_card

    card_path, run, encoder_dir = example_n170()
    if not (encoder_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"The N170 encoder is missing from {encoder_dir}; in a checkout, train it with "
            "`rtdecode train --data rtdecode/examples/n170/card.toml --out "
            "models/n170/encoder --config models/n170/recipe.toml`."
        )
    card = read_card(card_path)
    # the card turns Marker0's codes (1, 2) into the categories the viewer shows
    recording = card.read(run)
    settings = Settings.load(
        None, stream=name, source_id=name, model=encoder_dir, decoder="none",
        gallery=card.images_root, retrieval_set="all", port=port, lsl_local=True,
        # chosen on one window (100-400 ms after onset), scored live at every lag
        allow_fixed_window=True,
    )
    return settings, recording


def run_demo(
    port: int = 8765,
    open_browser: bool = True,
    duration_s: float | None = None,
    data_dir: Path | None = None,
    models_dir: Path | None = None,
    example: str | None = None,
) -> int:
    """Run the demo until Ctrl-C (or ``duration_s``). Returns the exit code.

    ``example="n170"`` replays the real EEG example instead of the simulated subject.
    """
    use_local_config()
    from rtdecode.config import Settings
    from rtdecode.io.replay import Player

    if example is not None:
        if example != "n170":
            raise ValueError(f"example={example!r} is not known; the examples are: n170.")
        name = f"rtdecode-n170-{os.getpid()}"
        settings, recording = _n170_settings_and_replay(name, port)
        replay = Player(recording, name=name, source_id=name, loop=True).start()
        return _serve_until_stopped(settings, replay, open_browser, duration_s)

    data_dir = Path(data_dir or default_data_dir())
    models_dir = Path(models_dir or default_models_dir())
    encoder_dir = models_dir / "encoder"
    decoder_dir = models_dir / "decoder"
    if not (encoder_dir / "config.json").is_file():
        raise FileNotFoundError(
            f"The demo brain encoder is missing from {encoder_dir}; in a checkout, run "
            "`make models` to train it with the project's own commands; an installed "
            "rtdecode ships it (reinstall the wheel), or set RTDECODE_DEMO_MODELS to its folder."
        )
    replay_path = ensure_simulated_subject(data_dir)
    name = f"rtdecode-demo-{os.getpid()}"
    # In a loop on the loopback-only LSL configuration applied above.
    replay = Player(replay_path, name=name, source_id=name, loop=True).start()
    settings = Settings.load(
        None,
        stream=name,
        source_id=name,
        model=encoder_dir,
        decoder=str(decoder_dir) if (decoder_dir / "config.json").is_file() else "none",
        gallery=data_dir / "images",
        # the replayed session is sub-01's held-out one; retrieve among the zero-shot
        # test images, the paper's "small test set" (distractors: --retrieval-set all)
        subject=DEMO_SUBJECT,
        retrieval_set="test",
        port=port,
        lsl_local=True,
    )
    return _serve_until_stopped(settings, replay, open_browser, duration_s)


def _serve_until_stopped(settings, replay, open_browser: bool, duration_s: float | None) -> int:
    from rtdecode.service import Service

    service = Service(settings)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in (signal.SIGINT, signal.SIGTERM)}
    t_start = time.monotonic()
    try:
        service.start()
        deadline = time.monotonic() + 120
        while service.health()[0] != "ready" and not stop.is_set():
            if not replay.running:
                raise RuntimeError(f"The replay ended early: {replay.stop()}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"The service did not become ready: {service.health()[1]}")
            stop.wait(0.2)
        print(f"\nrtdecode demo: open {service.url} in a browser (Ctrl-C to stop)\n", flush=True)
        if open_browser:
            webbrowser.open(service.url)
        while not stop.wait(2.0):
            if not replay.running:
                raise RuntimeError(f"The replay ended: {replay.stop()}")
            print("  " + _status_line(service), flush=True)
            if duration_s is not None and time.monotonic() - t_start >= duration_s:
                break
    finally:
        service.stop()
        replay.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
