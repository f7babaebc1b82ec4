"""The one CSV/TSV reader behind the images and events tables (rtdecode._utils.tables)."""

from __future__ import annotations

import pytest

from rtdecode._utils.tables import read_table


@pytest.mark.parametrize("sep", ["\t", ";", ","])
def test_delimiter_bom_blank_lines_missing_cells_and_line_numbers(tmp_path, sep):
    path = tmp_path / "t.csv"
    lines = [f"Code{sep}Image-ID{sep}trial type", "", f"1{sep}dog_01b{sep}exp",
             f"2{sep}n/a{sep}N/A", "   ", f"3{sep}{sep}catch"]
    path.write_text("\ufeff" + "\n".join(lines) + "\n", encoding="utf-8")
    table = read_table(path, "Test table", "give one.")
    assert table.header == ["Code", "Image-ID", "trial type"]
    assert table.column(("code",)) == 0 and table.column(("image_id",)) == 1
    assert table.column(("trial_type",)) == 2 and table.column(("missing",)) is None
    assert [n for n, _ in table.rows] == [3, 4, 6]
    cells = [[table.cell(row, i) for i in range(3)] for _, row in table.rows]
    assert cells == [["1", "dog_01b", "exp"], ["2", None, None], ["3", None, "catch"]]
    assert table.cell(table.rows[0][1], 7) is None  # a short row


def test_quoted_cell_with_newline_keeps_line_numbers(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text('code,image\n1,"a\nb"\n2,c\n', encoding="utf-8")
    table = read_table(path, "Test table", "give one.")
    assert [(n, row) for n, row in table.rows] == [(3, ["1", "a\nb"]), (4, ["2", "c"])]


def test_missing_and_empty_files_say_what_to_give(tmp_path):
    with pytest.raises(FileNotFoundError, match="Test table .*nope.csv.* does not exist; give one"):
        read_table(tmp_path / "nope.csv", "Test table", "give one.")
    empty = tmp_path / "empty.csv"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(ValueError, match="is empty; it needs a header row"):
        read_table(empty, "Test table", "give one.")
