"""In-stream trigger channels (STI101, STI 014, UPPT001...) as markers at their sample.

A trigger channel carries a code while a stimulus is on and 0 (or a lower code) between.
Each rising edge (a sample whose code is above the previous sample's) becomes a
:class:`~rtdecode.contracts.Marker` whose ``sample`` is that exact sample and whose text
is the code; ``interpret`` (a :class:`~rtdecode.stream.events.MarkerVocabulary` with the
``--events-table``) says which image it shows.

Threads
-------
:class:`TriggerMarkers` has no thread of its own: whoever asks for markers (the
windower's consumer thread, under a lock also any other thread) scans the samples that
arrived in the data reader's ring since the last look. :class:`CombinedMarkers` gives the
windower the newest event of a marker stream and of a trigger channel together.
"""

from __future__ import annotations

import collections
import logging
import threading
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from rtdecode.contracts import Marker
from rtdecode.stream.ring import OverwrittenError

if TYPE_CHECKING:
    from rtdecode.stream.markers import MarkerReader
    from rtdecode.stream.reader import StreamReader

__all__ = ["TRIGGER_CHANNEL_NAMES", "CombinedMarkers", "TriggerMarkers", "find_trigger_channel"]

log = logging.getLogger(__name__)

#: Channel names taken as a trigger channel when none is named (Neuromag, MNE, CTF).
TRIGGER_CHANNEL_NAMES = ("STI101", "STI 101", "STI 014", "STI014", "UPPT001", "UPPT002")


def find_trigger_channel(ch_names: Sequence[str], ch_types: Sequence[str] = ()) -> str | None:
    """The trigger channel of a stream, or None when there is none.

    A known trigger name, else the first channel typed ``stim`` (or ``trigger``).
    """
    for name in TRIGGER_CHANNEL_NAMES:
        if name in ch_names:
            return name
    for name, kind in zip(ch_names, ch_types, strict=False):
        if str(kind).strip().lower() in {"stim", "trigger"}:
            return name
    return None


class TriggerMarkers:
    """Markers from the rising edges of a trigger channel of the data stream.

    Parameters
    ----------
    reader : StreamReader
        The data stream's reader; its ring holds the trigger channel.
    channel : str | None
        The channel's name; None finds one (:func:`find_trigger_channel`) once the reader
        is connected, and then keeps only codes that ``interpret`` gives a meaning
        (image or trial type), so that an unexplained stim channel adds nothing.
    interpret : callable(dict) -> dict, optional
        Adds the meaning of a code (payload ``{"raw": "<code>", "channel": name}``).
    history : int
        Markers kept.
    """

    kind = "triggers"

    def __init__(
        self,
        reader: StreamReader,
        channel: str | None = None,
        *,
        interpret: Callable[[dict], dict] | None = None,
        history: int = 1000,
    ) -> None:
        self.reader = reader
        self.channel = channel
        self.explicit = channel is not None
        self.interpret = interpret or (lambda value: value)
        self.error: BaseException | None = None
        self._row: int | None = None
        self._resolved = False
        self._scanned = 0  # absolute index of the next sample to look at
        self._previous = 0
        self._history: collections.deque[Marker] = collections.deque(maxlen=int(history))
        self._n_received = 0
        self.n_unexplained = 0
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ scanning
    def _resolve(self) -> bool:
        """Find the channel's row once the reader knows its channels."""
        if self._resolved:
            return self._row is not None
        reader = self.reader
        desc = reader.description
        if reader.ring is None or desc is None:
            return False
        names = list(reader.ch_names)
        self._resolved = True
        if self.channel is None:
            types = desc.ch_types if len(desc.ch_types) == len(names) else ()
            self.channel = find_trigger_channel(names, types)
            if self.channel is None:
                return False
            log.info(
                "Stream %r has the trigger channel %r: its codes that the events table or "
                "the gallery explains become markers (name it with --trigger-channel, or "
                "--trigger-channel none to ignore it).",
                desc.name,
                self.channel,
            )
        if self.channel not in names:
            self.error = ValueError(
                f"The trigger channel {self.channel!r} is not in stream {desc.name!r}; "
                f"its channels are {names[:12]}{'...' if len(names) > 12 else ''}. Name one "
                "of them with --trigger-channel, or 'none'."
            )
            log.error("%s", self.error)
            return False
        self._row = names.index(self.channel)
        self._scanned = reader.ring.oldest
        return True

    def _scan(self) -> None:
        """Turn the rising edges of newly arrived samples into markers.

        Scans the samples since the last scan; the caller holds the lock.
        """
        if not self._resolve():
            return
        ring = self.reader.ring
        stop = ring.n_written
        start = max(self._scanned, ring.oldest)
        if stop <= start:
            return
        try:
            codes = ring.read(start, stop)[self._row]
            stamps = ring.read_times(start, stop)
        except OverwrittenError:
            self._scanned = ring.oldest
            return
        codes = np.rint(np.nan_to_num(codes.astype(np.float64))).astype(np.int64)
        if self._scanned == 0 and start == 0:
            self._previous = int(codes[0])  # a code already on at sample 0 has no onset
        before = np.r_[self._previous, codes[:-1]]
        for k in np.flatnonzero((codes > before) & (codes > 0)):
            value = self.interpret({"raw": str(int(codes[k])), "channel": self.channel})
            if not self.explicit and value.get("image_id") is None and value.get("trial_type") is None:
                self.n_unexplained += 1
                continue
            self._history.append(Marker(t_lsl=float(stamps[k]), value=value, sample=start + int(k)))
            self._n_received += 1
        self._previous = int(codes[-1])
        self._scanned = stop

    # ------------------------------------------------------------------ MarkerReader API
    @property
    def n_received(self) -> int:
        """Markers decoded from the trigger channel so far."""
        return self._n_received

    def raise_if_failed(self) -> None:
        """Raise the error that stopped the reader, if any."""
        if self.error is not None:
            raise self.error

    def start(self) -> TriggerMarkers:
        """Nothing to start (no thread); returns ``self``."""
        return self

    def stop(self, timeout_s: float = 0.0) -> None:
        """Nothing to stop (no thread)."""

    def markers(self) -> list[Marker]:
        """All markers in the history, oldest first."""
        items, _, _ = self.since(0)
        return items

    def since(self, seq: int) -> tuple[list[Marker], int, int]:
        """Markers with sequence number >= ``seq``, the next seq and those missed."""
        with self._lock:
            self._scan()
            first_seq = self._n_received - len(self._history)
            start = max(seq, first_seq)
            return list(self._history)[start - first_seq :], self._n_received, start - seq

    def latest(self, t_lsl_max: float | None = None) -> Marker | None:
        """The newest marker at or before ``t_lsl_max`` (any if None)."""
        with self._lock:
            self._scan()
            for m in reversed(self._history):
                if t_lsl_max is None or m.t_lsl <= t_lsl_max:
                    return m
        return None


class CombinedMarkers:
    """A marker stream and a trigger channel as one source of the latest event.

    ``latest`` returns the newer of the two; at the same sample, the one that names an
    image. ``error`` is the marker stream's (a trigger channel never fails the windows).
    """

    def __init__(self, stream: MarkerReader, triggers: TriggerMarkers) -> None:
        self.stream, self.triggers = stream, triggers

    @property
    def error(self) -> BaseException | None:
        """The marker stream's error, if it failed."""
        return self.stream.error

    def raise_if_failed(self) -> None:
        """Raise the marker stream's error, if any."""
        self.stream.raise_if_failed()

    def latest(self, t_lsl_max: float | None = None) -> Marker | None:
        """The newest marker at or before ``t_lsl_max`` from the stream or the trigger channel.

        A marker both report (same sample or time) counts once, the copy naming an image first.
        """
        found = [m for m in (self.stream.latest(t_lsl_max), self.triggers.latest(t_lsl_max)) if m]
        if not found:
            return None
        if len(found) == 2:
            a, b = found
            same = a.sample is not None and a.sample == b.sample
            if same or abs(a.t_lsl - b.t_lsl) < 1e-9:
                return a if a.image_id is not None or b.image_id is None else b
        return max(found, key=lambda m: m.t_lsl)
