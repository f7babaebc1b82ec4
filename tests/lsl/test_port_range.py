"""liblsl finds outlets on loopback by asking each port of its range (``[ports]
BasePort``, ``PortRange``) on the known peer. Consumers hold ports of that range too (a
resolver's and an inlet's UDP sockets are bound there first), so a service that
reconnects again and again can fill it; an outlet that starts then falls back to a
random port that no query reaches, and stays invisible. Found by the one-hour soak: the
restarted source was never found again after the fifth outage. The loopback
configuration's range is wide enough that consumers cannot crowd an outlet out. Real
outlet in a subprocess; the ports are held by plain sockets of this process."""

from __future__ import annotations

import configparser
import socket
import uuid
from pathlib import Path

from rtdecode.lsl.streams import find
from tests.helpers.lsl_source import SourceProcess

CFG = Path(__file__).resolve().parents[2] / "rtdecode" / "lsl" / "lsl_local.cfg"


def _range() -> tuple[int, int]:
    cfg = configparser.ConfigParser(inline_comment_prefixes=(";",))
    cfg.read(CFG)
    base = cfg.getint("ports", "BasePort", fallback=16572)
    return base, cfg.getint("ports", "PortRange", fallback=32)


def test_outlets_are_found_while_consumers_hold_the_first_64_ports_of_the_range():
    base, width = _range()
    held = []
    try:
        for port in range(base, base + 64):  # twice liblsl's default range
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.bind(("0.0.0.0", port))
            except OSError:
                sock.close()  # already held by someone: it counts the same
                continue
            held.append(sock)
        name = f"rtd-ports-{uuid.uuid4().hex[:8]}"
        # Two outlets, as a source with markers has: both must be found.
        with SourceProcess(name, n_channels=4, sfreq=100.0, markers_every_s=0.5) as source:
            source.wait_event("ready")
            found = {n: find(n, timeout_s=5.0) for n in (name, f"{name}-markers")}
        missing = [n for n, info in found.items() if info is None]
        assert not missing, (
            f"{missing} not found: outlets started while ports {base}-{base + 63} were taken "
            f"(PortRange {width} in {CFG.name})"
        )
    finally:
        for sock in held:
            sock.close()
