"""mne-lsl's own player (``mne_lsl.player.PlayerLSL``) on a FIF file, run as a subprocess.

    python tests/helpers/mne_player.py FILE --name NAME [--encoding string|one-hot]
        [--chunk-size 10]

It streams FILE as ``NAME`` with its annotations on ``NAME-annotations`` (mne-lsl's
encoding), looping, prints ``{"event": "ready", "pid": ...}`` once its outlets exist, and
runs until killed. The caller must set ``LSLAPICFG`` (children inherit it); the script
refuses to start without it.

Tests start it with :class:`PlayerProcess` (a SourceProcess running this script).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.helpers.lsl_source import SourceProcess  # noqa: E402


class PlayerProcess(SourceProcess):
    """This script in a subprocess (``PlayerProcess(fif, name, encoding="string")``)."""

    def __init__(self, fif: Path, name: str, encoding: str = "string", chunk_size: int = 10):
        self.name = name
        self.argv = [sys.executable, str(Path(__file__).resolve()), str(fif), "--name", name,
                     "--encoding", encoding, "--chunk-size", str(chunk_size)]  # fmt: skip
        self.events: list[dict] = []
        self._cond = threading.Condition()
        self.proc = subprocess.Popen(self.argv, stdout=subprocess.PIPE, text=True)
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("fif")
    p.add_argument("--name", required=True)
    p.add_argument("--encoding", default="string", choices=["string", "one-hot"])
    p.add_argument("--chunk-size", type=int, default=10)
    args = p.parse_args(argv)
    if not os.environ.get("LSLAPICFG"):
        sys.exit("mne_player.py: set LSLAPICFG (the loopback-only configuration) first.")
    from mne_lsl.player import PlayerLSL

    player = PlayerLSL(
        args.fif,
        chunk_size=args.chunk_size,
        name=args.name,
        source_id=args.name,
        annotations=True,
        annotations_encoding=args.encoding,
    )
    player.start()
    print(json.dumps({"event": "ready", "pid": os.getpid()}), flush=True)
    while True:
        time.sleep(1.0)


if __name__ == "__main__":
    sys.exit(main())
