"""Ctrl-C a running ``rtdecode replay`` / ``rtdecode record`` while both cores are busy,
and time how long it takes to end: shared by tests/io/test_stop.py and
bench/stop_latency.py.

The busy loops are real processes, each with its own end (``max_s``) so that none can
outlive a test that was killed, and they are killed when the ``busy_cores`` block ends.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

#: A loop that keeps one core busy for ``{max_s}`` seconds at most.
_BUSY_LOOP = "import time\nend = time.monotonic() + {max_s}\nwhile time.monotonic() < end: pass\n"


@contextlib.contextmanager
def busy_cores(n: int = 2, max_s: float = 120.0) -> Iterator[list[subprocess.Popen]]:
    """``n`` busy-loop processes for the duration of the block (each ends by itself
    after ``max_s`` seconds at the latest)."""
    procs = [
        subprocess.Popen([sys.executable, "-c", _BUSY_LOOP.format(max_s=float(max_s))])
        for _ in range(n)
    ]
    try:
        yield procs
    finally:
        for proc in procs:
            proc.kill()
        for proc in procs:
            proc.wait(10)


class Command:
    """``python -m rtdecode.cli --lsl-local ARGS`` in a subprocess; its stdout and stderr
    are read by threads as they come (so a full pipe never blocks it)."""

    def __init__(self, *args: str) -> None:
        self.args = args
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "rtdecode.cli", "--lsl-local", *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        self._out = {"stdout": bytearray(), "stderr": bytearray()}
        self._arrivals: list[tuple[float, int]] = []  # (monotonic time, stderr length then)
        self._readers = [
            threading.Thread(target=self._read, args=(name,), daemon=True) for name in self._out
        ]
        for reader in self._readers:
            reader.start()

    def _read(self, name: str) -> None:
        pipe = getattr(self.proc, name)
        while chunk := os.read(pipe.fileno(), 65536):
            self._out[name] += chunk
            if name == "stderr":
                self._arrivals.append((time.monotonic(), len(self._out[name])))

    @property
    def stdout(self) -> str:
        return self._out["stdout"].decode(errors="replace")

    @property
    def stderr(self) -> str:
        return self._out["stderr"].decode(errors="replace")

    def time_of(self, text: str) -> float | None:
        """When ``text`` arrived on stderr (``time.monotonic()``), None if it did not."""
        where = self._out["stderr"].find(text.encode())
        if where < 0:
            return None
        end = where + len(text.encode())
        return next(t for t, n in self._arrivals if n >= end)

    def wait_for_stderr(self, text: str, timeout_s: float) -> None:
        """Wait until ``text`` appears on stderr (AssertionError on timeout or exit)."""
        deadline = time.monotonic() + timeout_s
        while text not in self.stderr:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"rtdecode {self.args[0]} ended (code {self.proc.returncode}) before "
                    f"printing {text!r}: {self.stderr[-2000:]}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"rtdecode {self.args[0]} printed no {text!r} within {timeout_s} s: "
                    f"{self.stderr[-2000:]}"
                )
            time.sleep(0.02)

    def interrupt(self, timeout_s: float) -> float:
        """Ctrl-C (SIGINT) it; the seconds until the process ended.

        Raises AssertionError when it is still running ``timeout_s`` later (it is then
        killed).
        """
        t0 = self.t_interrupted = time.monotonic()
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(
                f"rtdecode {self.args[0]} did not stop within {timeout_s} s of Ctrl-C: "
                f"{self.stderr[-2000:]}"
            ) from None
        stop_s = time.monotonic() - t0
        for reader in self._readers:
            reader.join(5.0)
        return stop_s

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)
        for reader in self._readers:
            reader.join(5.0)


def stop_replay_and_record(recording: Path, out: Path, name: str, bound_s: float) -> dict:
    """The stop of both commands, each with a consumer still connected.

    ``rtdecode replay RECORDING --loop --counter`` runs; this process connects an inlet
    and takes some data (then keeps it connected without reading, as a viewer that froze
    would); ``rtdecode record --out OUT`` records the stream; Ctrl-C the recorder, then
    the replay. Run it inside :func:`busy_cores` for the loaded case.

    Returns
    -------
    dict
        ``record_stop_s``, ``replay_stop_s`` (Ctrl-C to process end), ``record_done_s``,
        ``replay_done_s`` (Ctrl-C to the command's summary line: file written, outlets
        closed; the rest is the interpreter's exit), the exit codes
        ``record_code`` and ``replay_code``, ``record_stdout`` and both stderr texts.
    """
    from rtdecode.lsl.streams import local_clock, open_inlet, resolve

    replay = Command("replay", str(recording), "--name", name, "--loop", "--counter")
    record = None
    try:
        replay.wait_for_stderr("-> LSL stream", 60)
        inlet = open_inlet(resolve(name=name, timeout_s=60))
        inlet.open_stream(30)
        got, deadline = 0, local_clock() + 30
        while got < 200:
            assert local_clock() < deadline, f"only {got} samples of the replay in 30 s"
            _, stamps = inlet.pull_chunk(timeout=0.1, max_samples=1024)
            got += len(stamps)
        record = Command("record", "--name", name, "--out", str(out), "--timeout", "60")
        record.wait_for_stderr(" samples,", 60)  # its progress line: it has data
        record_stop_s = record.interrupt(bound_s)
        replay_stop_s = replay.interrupt(bound_s)
        # The commands' own summary lines: printed once the outlets are closed (replay)
        # and once the file is written (record); what follows is the interpreter's exit.
        t_record_done = record.time_of(f"record {name}: wrote")
        t_replay_done = replay.time_of(f"replay {name}: sent")
        del inlet
    finally:
        replay.kill()
        if record is not None:
            record.kill()
    return {
        "record_stop_s": record_stop_s,
        "replay_stop_s": replay_stop_s,
        "record_done_s": None if t_record_done is None else t_record_done - record.t_interrupted,
        "replay_done_s": None if t_replay_done is None else t_replay_done - replay.t_interrupted,
        "record_code": record.proc.returncode,
        "replay_code": replay.proc.returncode,
        "record_stdout": record.stdout,
        "record_stderr": record.stderr,
        "replay_stderr": replay.stderr,
    }
