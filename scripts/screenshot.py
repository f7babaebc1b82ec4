"""Take a PNG screenshot of a running rtdecode viewer with headless Chromium.

    .venv/bin/python scripts/screenshot.py http://127.0.0.1:8765/ --out docs/viewer.png

Uses Debian's Chromium (``apt-get install chromium``) through Playwright's Python API;
nothing is downloaded. Waits until the viewer has drawn ``--wait-frames`` frames and
its charts hold a few seconds of data, so the picture shows a live stream, not an empty
page. ``launch_chromium`` is also what tests/server/test_viewer.py uses.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import time
from pathlib import Path
from typing import Any

#: Flags for a headless, offline, quiet Chromium (no GPU, no sandbox as root, no
#: background traffic to Google services: these machines have no internet).
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DEFAULT_CHROMIUM = "/usr/bin/chromium"


def find_chromium(path: str | None = None) -> str | None:
    """The Chromium executable to use: ``path``, /usr/bin/chromium, or ``chromium`` on PATH."""
    for candidate in (path, DEFAULT_CHROMIUM, shutil.which("chromium")):
        if candidate and Path(candidate).is_file():
            return str(candidate)
    return None


def launch_chromium(playwright: Any, executable_path: str | None = None) -> Any:
    """Launch headless Chromium through a started ``sync_playwright()`` object.

    Raises
    ------
    FileNotFoundError
        When no Chromium is installed.
    """
    exe = find_chromium(executable_path)
    if exe is None:
        raise FileNotFoundError(
            "Chromium was not found at /usr/bin/chromium nor on PATH; install it with "
            "`apt-get install chromium` or pass --chromium PATH."
        )
    return playwright.chromium.launch(executable_path=exe, args=CHROMIUM_ARGS, headless=True)


def wait_for_viewer(page: Any, n_frames: int, timeout_s: float) -> None:
    """Wait until the viewer (``window.rtdecodeViewer``) has drawn ``n_frames`` frames."""
    page.wait_for_function(
        "n => window.rtdecodeViewer && window.rtdecodeViewer.framesRendered >= n",
        arg=n_frames,
        timeout=timeout_s * 1000,
    )


def screenshot(
    url: str,
    out: Path | str,
    *,
    width: int = 1600,
    height: int = 1000,
    wait_frames: int = 5,
    settle_s: float = 3.0,
    timeout_s: float = 60.0,
    chromium: str | None = None,
) -> Path:
    """Open ``url``, wait for live frames, and save a PNG of the page.

    Parameters
    ----------
    url : str
        The viewer, e.g. ``http://127.0.0.1:8765/`` (add ``?token=`` if the server needs it).
    out : path
        PNG to write (parent folders are created).
    width, height : int
        Viewport in CSS pixels.
    wait_frames : int
        Frames the viewer must have drawn first; 0 takes the page as it is.
    settle_s : float
        Extra seconds for the charts to fill once frames flow.
    timeout_s : float
    chromium : str | None
        Chromium executable (default /usr/bin/chromium).

    Returns
    -------
    Path
        ``out``.
    """
    from playwright.sync_api import sync_playwright

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = launch_chromium(p, chromium)
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(url, wait_until="load", timeout=timeout_s * 1000)
            if wait_frames > 0:
                wait_for_viewer(page, wait_frames, timeout_s)
                # The charts need a few seconds of history to read as charts.
                page.wait_for_timeout(settle_s * 1000)
            page.screenshot(path=str(out), full_page=True)
        finally:
            browser.close()
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("url", help="viewer URL, e.g. http://127.0.0.1:8765/")
    ap.add_argument("--out", type=Path, default=Path("docs/viewer.png"))
    ap.add_argument("--width", type=int, default=1600)
    ap.add_argument("--height", type=int, default=1000)
    ap.add_argument("--wait-frames", type=int, default=5, help="0: do not wait for frames")
    ap.add_argument("--settle", type=float, default=3.0, help="seconds of chart history")
    ap.add_argument("--timeout", type=float, default=60.0)
    ap.add_argument("--chromium", default=None, help="Chromium executable")
    args = ap.parse_args(argv)
    t0 = time.monotonic()
    try:
        path = screenshot(
            args.url,
            args.out,
            width=args.width,
            height=args.height,
            wait_frames=args.wait_frames,
            settle_s=args.settle,
            timeout_s=args.timeout,
            chromium=args.chromium,
        )
    except FileNotFoundError as exc:
        print(f"screenshot: error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path} in {time.monotonic() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
