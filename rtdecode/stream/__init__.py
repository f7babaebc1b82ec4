"""Live input: LSL stream → RingBuffer → Windows (see DESIGN.md, "Data flow").

- ring.py     RingBuffer: preallocated samples by absolute index, one writer.
- reader.py   StreamReader: the thread that owns the LSL inlet and writes the ring.
- markers.py  MarkerReader: event markers with corrected LSL times.
- windows.py  Windower: continuous or event-locked windows, cut by sample index.
- supervisor.py  StreamSupervisor: opens the input, reports gaps, replaces a failed reader.

Names are imported on first use, so ``import rtdecode.stream`` does not load liblsl.
"""

from __future__ import annotations

from rtdecode._utils.lazy import lazy_exports

_EXPORTS = {
    "RingBuffer": "ring",
    "OverwrittenError": "ring",
    "NotYetWrittenError": "ring",
    "StreamReader": "reader",
    "StreamStats": "reader",
    "Gap": "reader",
    "StreamError": "reader",
    "StreamFormatError": "reader",
    "ChannelMismatchError": "reader",
    "StreamNotFoundError": "reader",
    "MarkerReader": "markers",
    "parse_marker": "markers",
    "Windower": "windows",
    "WindowerStats": "windows",
    "StreamSupervisor": "supervisor",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
