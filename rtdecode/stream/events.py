"""What a marker means: the image shown and the trial type, for every form labs send.

Markers arrive as JSON objects (rtdecode's own form), plain strings (``cat_03``), codes
(``42`` from a stimulus program's marker stream or an in-stream trigger channel), or
mne-lsl annotation descriptions. :func:`rtdecode.contracts.parse_marker` keeps the text
of anything that is not a JSON object (``{"raw": text}``); :class:`MarkerVocabulary`
then adds ``image_id`` and ``trial_type`` from what the service knows:

1. a JSON marker that names its ``image_id`` is kept as it is;
2. a code found in the events table (``--events-table FILE``) gets the table's image and
   trial type;
3. a text that is a gallery image id (or a path whose file stem is one) is that image;
4. anything else stays without an image (the window then has no true image).

Pure functions and immutable tables: any thread may call them.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from rtdecode._utils.tables import read_table

__all__ = ["EventsTable", "MarkerVocabulary", "code_key", "read_events_table"]

#: Accepted column names (lower case; spaces and dashes count as underscores).
CODE_COLUMNS = ("code", "value", "trigger", "trigger_code", "event_code", "event_id", "marker", "event")
IMAGE_COLUMNS = ("image_id", "image", "stimulus", "stim", "stim_file", "file_path", "image_path", "file", "filename")
TRIAL_TYPE_COLUMNS = ("trial_type", "type", "condition", "trial")


def code_key(text: Any) -> str:
    """The form codes are compared in.

    ``"42"``, ``42``, ``42.0`` and ``" 42 "`` are all ``"42"``; other texts are stripped.
    """
    if isinstance(text, bool):
        return str(text)
    if isinstance(text, int | float):
        value = float(text)
    else:
        text = str(text).strip()
        try:
            value = float(text)
        except ValueError:
            return text
    if math.isfinite(value) and value == int(value):
        return str(int(value))
    return str(text).strip()


def _image_id(text: str) -> str:
    """An image column's value as an id: a path gives its file stem."""
    text = text.strip()
    if "/" in text or "\\" in text or "." in PurePosixPath(text).suffix:
        return PurePosixPath(text.replace("\\", "/")).stem
    return text


@dataclass(frozen=True)
class EventsTable:
    """Codes mapped to (image_id, trial_type); either may be None.

    Attributes
    ----------
    entries : Mapping[str, tuple[str | None, str | None]]
        Keyed by :func:`code_key` of the code.
    path : Path | None
        The file it was read from.
    """

    entries: Mapping[str, tuple[str | None, str | None]]
    path: Path | None = None

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, code: Any) -> bool:
        return code_key(code) in self.entries

    def lookup(self, code: Any) -> tuple[str | None, str | None] | None:
        """(image_id, trial_type) of ``code``, or None when the table lacks it."""
        return self.entries.get(code_key(code))


def read_events_table(path: str | Path) -> EventsTable:
    """Read a CSV or TSV file that maps marker codes to images and trial types.

    The file has a header row with a code column (``code``, ``value``, ``trigger``,
    ``event_code``, ``event_id``, ``marker`` or ``event``) and at least one of an image
    column (``image_id``, ``image``, ``stimulus``, ``stim_file``, ``file_path``,
    ``image_path``, ``file``, ``filename``: a path gives its file stem) and a trial type
    column (``trial_type``, ``type``, ``condition``, ``trial``). Empty, ``n/a`` and
    ``N/A`` cells mean "none". The delimiter (tab, comma or semicolon) is detected.

    Raises
    ------
    FileNotFoundError, ValueError
        A missing file, no usable column, or a code listed twice with different meanings.
    """
    table = read_table(
        path, "Events table",
        "give a CSV/TSV file with a 'code' column and an 'image_id' and/or 'trial_type' column.",
    )
    p, header, cell = table.path, table.header, table.cell
    i_code = table.column(CODE_COLUMNS)
    i_image = table.column(IMAGE_COLUMNS)
    i_type = table.column(TRIAL_TYPE_COLUMNS)
    if i_code is None or (i_image is None and i_type is None):
        raise ValueError(
            f"Events table {str(p)!r} has the columns {header}; it needs a code column (one "
            f"of {', '.join(CODE_COLUMNS)}) and an image column (one of "
            f"{', '.join(IMAGE_COLUMNS)}) and/or a trial type column (one of "
            f"{', '.join(TRIAL_TYPE_COLUMNS)})."
        )

    entries: dict[str, tuple[str | None, str | None]] = {}
    for n, row in table.rows:
        code = cell(row, i_code)
        if code is None:
            continue
        image = cell(row, i_image)
        meaning = (None if image is None else _image_id(image), cell(row, i_type))
        key = code_key(code)
        if entries.get(key, meaning) != meaning:
            raise ValueError(
                f"Events table {str(p)!r} line {n}: code {code!r} is listed twice with "
                f"different meanings ({entries[key]} and {meaning}); keep one row per code."
            )
        entries[key] = meaning
    if not entries:
        raise ValueError(f"Events table {str(p)!r} lists no code; add one row per code.")
    return EventsTable(entries, p)


class MarkerVocabulary:
    """Add ``image_id`` and ``trial_type`` to a marker payload (see the module docstring).

    Parameters
    ----------
    image_ids : collection of str
        The gallery's image ids: a marker text equal to one of them is that image.
    table : EventsTable | None
        Codes -> (image_id, trial_type).
    """

    def __init__(self, image_ids: Collection[str] = (), table: EventsTable | None = None):
        self.image_ids = frozenset(map(str, image_ids))
        self.table = table

    def __call__(self, value: dict[str, Any]) -> dict[str, Any]:
        """The payload with the meaning of its code or text added (a new dict)."""
        if value.get("image_id") is not None:
            return value
        for key in ("raw", "code", "value"):
            if value.get(key) is not None:
                text = value[key]
                break
        else:
            return value
        if self.table is not None:
            meaning = self.table.lookup(text)
            if meaning is not None:
                image_id, trial_type = meaning
                out = dict(value, image_id=image_id)
                if trial_type is not None or "trial_type" not in out:
                    out["trial_type"] = trial_type
                return out
        text = str(text).strip()
        for candidate in (text, code_key(text), _image_id(text)):
            if candidate in self.image_ids:
                return dict(value, image_id=candidate)
        return value

    def means_something(self, value: Mapping[str, Any]) -> bool:
        """True when the payload names an image or a trial type."""
        return value.get("image_id") is not None or value.get("trial_type") is not None
