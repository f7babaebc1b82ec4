"""The one marker codec: every site that reads or writes marker text goes through it."""

from __future__ import annotations

import numpy as np

from rtdecode.contracts import format_marker, marker_stream_name, marker_text, parse_marker
from rtdecode.data.recordings import description_to_value


def test_json_markers_round_trip_and_plain_strings_stay_raw():
    value = {"image_id": "cat_03", "trial_type": "exp", "sample": 12, "onset": np.float64(0.5)}
    text = format_marker(value)
    assert parse_marker(text) == {"image_id": "cat_03", "trial_type": "exp", "sample": 12, "onset": 0.5}
    assert parse_marker("stim/12") == {"raw": "stim/12"}
    assert format_marker(parse_marker("stim/12")) == "stim/12"
    assert parse_marker("[1, 2]") == {"raw": "[1, 2]"}  # only a JSON object is a payload


def test_lsl_samples_become_text_and_names_pair_streams():
    assert marker_text(["{\"image_id\": \"a\"}"]) == "{\"image_id\": \"a\"}"
    assert marker_text([3.0]) == "3.0"
    assert parse_marker(marker_text(["x", "y"])) == {"raw": "[\"x\", \"y\"]"}
    assert marker_stream_name("meg") == "meg-markers"


def test_file_annotations_read_the_same_json_as_the_live_path():
    text = format_marker({"image_id": "dog_01", "trial_type": "exp"})
    offline = description_to_value(text)
    assert offline["image_id"] == parse_marker(text)["image_id"] == "dog_01"
    assert description_to_value("Stimulus/S  3")["value"] == 3
