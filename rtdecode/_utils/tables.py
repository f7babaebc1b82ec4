"""Small CSV/TSV tables as labs write them: the one reader for every lookup table.

Used by the images table (``rtdecode.data.things.read_images_table``: image numbers to
files) and the events table (``rtdecode.stream.events.read_events_table``: marker codes
to images). Both accept what spreadsheets and BIDS tools write: a UTF-8 file (with or
without a byte-order mark) with a header row, tab-, semicolon- or comma-separated, blank
lines anywhere, ``n/a`` / ``N/A`` / empty cells for "none", column names in any case.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

__all__ = ["Table", "read_table"]

#: Cells that mean "no value" (compared lower-case, stripped).
MISSING = frozenset({"", "n/a", "na", "nan", "none"})


def _norm(name: str) -> str:
    return name.strip().lower().replace(" ", "_").replace("-", "_")


class Table:
    """A header and its rows (lists of stripped strings), read by :func:`read_table`.

    Attributes
    ----------
    path : Path
    header : list of str
        The column names as written (stripped).
    rows : list of (int, list of str)
        The file's line number (1 = the header) and the row's cells.
    """

    def __init__(self, path: Path, header: list[str], rows: list[tuple[int, list[str]]]) -> None:
        self.path = path
        self.header = header
        self.rows = rows

    def column(self, accepted: Sequence[str]) -> int | None:
        """Index of the first of ``accepted`` names present (any case, ``-``/space = ``_``)."""
        norm = [_norm(h) for h in self.header]
        for name in accepted:
            if name in norm:
                return norm.index(name)
        return None

    @staticmethod
    def cell(row: list[str], index: int | None) -> str | None:
        """The row's value in column ``index``; None when absent or a missing-value mark."""
        if index is None or index >= len(row):
            return None
        value = row[index].strip()
        return None if value.lower() in MISSING else value


def read_table(path: str | Path, what: str, example: str) -> Table:
    """Read a CSV/TSV table with a header row.

    Parameters
    ----------
    path : path-like
    what : str
        What the table is, for messages ("Events table").
    example : str
        What to give instead, ending the message about a missing file.

    Raises
    ------
    FileNotFoundError
        The file does not exist.
    ValueError
        The file has no header row.
    """
    p = Path(path).expanduser()
    if not p.is_file():
        raise FileNotFoundError(f"{what} {str(p)!r} does not exist; {example}")
    text = p.read_text(encoding="utf-8-sig")
    first = next((line for line in text.splitlines() if line.strip()), None)
    if first is None:
        raise ValueError(f"{what} {str(p)!r} is empty; it needs a header row and one row per entry.")
    delimiter = "\t" if "\t" in first else (";" if first.count(";") > first.count(",") else ",")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    rows = [
        (reader.line_num, [c.strip() for c in cells])
        for cells in reader
        if any(c.strip() for c in cells)
    ]
    return Table(p, rows[0][1], rows[1:])
