"""Files <-> LSL.

Replay a recording as a live stream, record a stream to a file, and write a stream to
rolling segments while the service runs.

- replay.py    ``rtdecode replay``: a recording's samples and events as LSL outlets.
- xdf_replay.py  XdfReplay: the Player's source for an XDF file (every stream as recorded).
- playback.py  What both replay sources share: pacing, stats, options, consumer wait.
- record.py    ``rtdecode record``: one LSL stream and its markers to a FIF file.
- capture.py   Capture: what both record formats read, through the stream readers' sinks.
- segments.py  SegmentRecorder: ``serve --record``'s rolling FIF segments.
- xdf.py       XDF files (LabRecorder's format): read through pyxdf, and our own writer.
"""

from __future__ import annotations

from rtdecode._utils.lazy import lazy_exports

_EXPORTS = {
    "Player": "replay",
    "ReplayStats": "replay",
    "replay_file": "replay",
    "record_stream": "record",
    "SegmentRecorder": "segments",
    "build_info": "fif",
}

__all__ = sorted(_EXPORTS)


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS, globals())
