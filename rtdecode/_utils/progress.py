"""Progress on stderr and SIGTERM handling for the long-running commands.

``rtdecode replay`` and ``rtdecode record`` show one self-updating line and stop cleanly
on SIGTERM (``docker stop``). tqdm is imported only when a line is shown.
"""

from __future__ import annotations

import contextlib
import signal
import sys
import threading
from collections.abc import Iterator

__all__ = ["ProgressLine", "stop_on_sigterm"]


class ProgressLine:
    """One self-updating progress line on stderr (tqdm), or nothing when disabled."""

    def __init__(self, desc: str, total: int | None, enabled: bool, unit: str = "sample"):
        self._bar = None
        if enabled:
            from tqdm import tqdm

            self._bar = tqdm(
                total=total,
                desc=desc,
                unit=unit,
                unit_scale=True,
                file=sys.stderr,
                mininterval=0.5,
                dynamic_ncols=True,
                # tqdm puts ", " before the postfix text.
                bar_format="{desc} [{bar:16}] {percentage:3.0f}%{postfix}"
                if total
                else "{desc}{postfix}",
            )

    def update(self, n: int, text: str) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=False)
            self._bar.update(n)

    def reset(self) -> None:
        if self._bar is not None:
            self._bar.reset()

    def write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=sys.stderr)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


@contextlib.contextmanager
def stop_on_sigterm(stop_event: threading.Event) -> Iterator[None]:
    """SIGTERM (``docker stop``) sets ``stop_event`` while inside; main thread only."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, lambda *_: stop_event.set())
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
