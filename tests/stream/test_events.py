"""Events tables and the meaning of plain-string and code markers (MarkerVocabulary)."""

from __future__ import annotations

import pytest

from rtdecode.contracts import parse_marker
from rtdecode.stream.events import MarkerVocabulary, code_key, read_events_table
from rtdecode.stream.triggers import find_trigger_channel


@pytest.mark.parametrize(
    ("text", "sep"),
    [
        ("code,image_id,trial_type\n1,cat_03,exp\n2,dog_01,test\n200,n/a,catch\n", ","),
        ("Trigger\tStimulus\tCondition\n1\tstim/cat_03.png\texp\n2\tdog_01.jpg\ttest\n"
         "200\t\tcatch\n", "\t"),
        ("\ufeffvalue;file_path;type\n1.0;images_meg/cat/cat_03.jpg;exp\n2;dog_01;test\n"
         "200;N/A;catch\n", ";"),
    ],
)  # fmt: skip
def test_events_table_layouts(tmp_path, text, sep):
    path = tmp_path / ("events.tsv" if sep == "\t" else "events.csv")
    path.write_text(text, encoding="utf-8")
    table = read_events_table(path)
    assert len(table) == 3
    assert table.lookup(1) == ("cat_03", "exp")
    assert table.lookup("2.0") == ("dog_01", "test")
    assert table.lookup(" 200 ") == (None, "catch")
    assert table.lookup(3) is None


def test_events_table_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="code"):
        read_events_table(tmp_path / "missing.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text("onset,duration\n1,2\n")
    with pytest.raises(ValueError, match="code column"):
        read_events_table(bad)
    twice = tmp_path / "twice.csv"
    twice.write_text("code,image_id\n1,cat_03\n1.0,dog_01\n")
    with pytest.raises(ValueError, match="line 3.*listed twice"):
        read_events_table(twice)


def test_vocabulary_maps_every_form(tmp_path):
    path = tmp_path / "events.csv"
    path.write_text("code,image_id,trial_type\n7,cat_03,exp\ncat,dog_01,test\n")
    vocab = MarkerVocabulary({"cat_03", "dog_01", "42"}, read_events_table(path))

    def meaning(text):
        v = vocab(parse_marker(text))
        return v.get("image_id"), v.get("trial_type")

    assert meaning('{"image_id": "x", "trial_type": "exp"}') == ("x", "exp")  # JSON as today
    assert meaning("dog_01") == ("dog_01", None)  # a gallery id
    assert meaning("images/dog_01.png") == ("dog_01", None)  # a path to one
    assert meaning("7") == ("cat_03", "exp")  # a code from the table
    assert meaning("7.0") == ("cat_03", "exp")  # a numeric stream's float
    assert meaning("cat") == ("dog_01", "test")  # string codes, table first
    assert meaning("42.0") == ("42", None)  # numeric gallery ids
    assert meaning("unknown") == (None, None)
    assert vocab(parse_marker("unknown")) == {"raw": "unknown"}  # the raw text is kept
    assert meaning('{"value": 7}') == ("cat_03", "exp")  # JSON carrying only a code
    assert code_key(7.5) == "7.5" and code_key(True) == "True"


def test_trigger_channel_detection():
    assert find_trigger_channel(["MEG0111", "STI101", "STI 014"]) == "STI101"
    assert find_trigger_channel(["MLC11", "UPPT001"]) == "UPPT001"
    assert find_trigger_channel(["a", "b", "TRG"], ["mag", "mag", "stim"]) == "TRG"
    assert find_trigger_channel(["a", "b"], ["mag", "misc"]) is None
