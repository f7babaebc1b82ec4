"""Progress on stderr and stop signals for the long-running commands.

``rtdecode replay`` and ``rtdecode record`` show one self-updating line and stop cleanly
on Ctrl-C (SIGINT) and SIGTERM (``docker stop``). tqdm is imported only when a line is
shown.
"""

from __future__ import annotations

import contextlib
import gc
import signal
import sys
import threading
from collections.abc import Iterator

__all__ = ["ProgressLine", "StopSignals", "prepare_exit", "stop_on_signals"]


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


class StopSignals:
    """Which stop signal arrived while :func:`stop_on_signals` was in force.

    Attributes
    ----------
    received : str | None
        ``"SIGINT"`` or ``"SIGTERM"`` (the first one), None when none came.
    """

    def __init__(self, stop_event: threading.Event) -> None:
        self.stop_event = stop_event
        self.received: str | None = None

    def _handle(self, signum: int, frame: object) -> None:
        if signum == signal.SIGINT and self.received == "SIGINT":
            # A second Ctrl-C: the way out of a clean-up that does not end.
            raise KeyboardInterrupt
        if self.received is None:
            self.received = signal.Signals(signum).name
        self.stop_event.set()


@contextlib.contextmanager
def stop_on_signals(stop_event: threading.Event) -> Iterator[StopSignals]:
    """Ctrl-C (SIGINT) and SIGTERM set ``stop_event`` while inside; main thread only.

    The loop that checks ``stop_event`` then ends at its next check and cleans up in
    order (outlets closed, files written). A ``KeyboardInterrupt`` raised at whatever
    line runs instead could land inside a liblsl call, a file write or the clean-up
    itself. A second Ctrl-C raises ``KeyboardInterrupt``. Outside the main thread
    nothing is installed and ``received`` stays None.

    Yields
    ------
    StopSignals
        Its ``received`` names the signal that stopped the loop, if one did.
    """
    signals = StopSignals(stop_event)
    if threading.current_thread() is not threading.main_thread():
        yield signals
        return
    previous = {sig: signal.signal(sig, signals._handle) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield signals
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def prepare_exit() -> None:
    """Make the interpreter's exit quick, once a command is done and its process ends.

    ``rtdecode replay`` and ``rtdecode record`` call it after their clean-up, so that a
    Ctrl-C ends the process soon also on a busy machine.

    Python's exit runs the garbage collector over every object still alive (MNE, SciPy
    and liblsl bring a large heap): about 0.1 s of CPU, which a loaded machine stretches
    to seconds. Frozen objects are skipped by the collector (``gc.freeze``); they are
    still released when the process ends. Never call it in a process that goes on.
    """
    gc.freeze()
