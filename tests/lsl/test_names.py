"""Hostile or odd LSL names: stream names, source ids and marker texts with quotes, XML
metacharacters, non-ASCII characters, control characters and 10 kB lengths. Real LSL
outlets in a subprocess (loopback configuration); the project's resolver, StreamReader
and MarkerReader find and read them, and a name shaped like an XPath injection matches
nothing else."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import uuid

import pytest

from rtdecode.lsl.streams import _xpath_literal, find
from rtdecode.stream import MarkerReader, StreamReader
from tests.helpers.lsl_source import poll

ODD = [
    "it's",
    'say "hi"',
    """both ' and " quotes""",
    "<meg>&amp; ]]> <!-- -->",
    "x' or '1'='1",
    "ünïcødé 脳磁図 🧠",
    "tab\there",
    "line\nbreak",
    "x" * 10_000,
]
IDS = ["quote", "dquote", "both", "xml", "injection", "unicode", "tab", "newline", "10kB"]

SOURCE = textwrap.dedent(
    """
    import json, sys, time
    from rtdecode.lsl.streams import make_info, make_outlet, local_clock
    spec = json.loads(sys.stdin.read())
    outlets = []
    for name, source_id in spec["streams"]:
        info = make_info(name, "MEG", 100.0, ["MEG0001", "MEG0002"], source_id=source_id)
        outlets.append(make_outlet(info))
    markers = make_outlet(make_info(spec["marker_stream"], "Markers", 0.0, ["m"],
                                    channel_format="string"))
    print("ready", flush=True)
    t_end = time.monotonic() + spec["duration_s"]
    k = 0
    while time.monotonic() < t_end:
        for out in outlets:
            out.push_chunk([[float(k), 0.0]] * 5)
        if markers.have_consumers():
            markers.push_sample([spec["texts"][k % len(spec["texts"])]], local_clock())
        k += 1
        time.sleep(0.05)
    """
)


@pytest.fixture(scope="module")
def odd_streams():
    """One subprocess holding a data stream per odd name (source id ``<tag>-sid-i``), a
    data stream per odd source id (name ``<tag>-name-i``), and a marker stream sending
    every odd text, raw and inside JSON."""
    tag = f"rtd-names-{uuid.uuid4().hex[:8]}"
    names = [f"{tag} {v}" for v in ODD]
    source_ids = [f"{tag} {v}" for v in ODD]
    texts = [*ODD, *(json.dumps({"image_id": v, "trial_type": v}) for v in ODD)]
    spec = {
        "streams": [(n, f"{tag}-sid-{i}") for i, n in enumerate(names)]
        + [(f"{tag}-name-{i}", s) for i, s in enumerate(source_ids)],
        "marker_stream": f"{tag} markers ' \" <&>",
        "texts": texts,
        "duration_s": 120.0,
    }
    proc = subprocess.Popen(
        [sys.executable, "-c", SOURCE],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )
    proc.stdin.write(json.dumps(spec))
    proc.stdin.close()
    assert proc.stdout.readline().strip() == "ready"
    try:
        yield tag, names, source_ids, spec["marker_stream"], texts
    finally:
        proc.kill()
        proc.wait(10)


def test_xpath_literals_quote_anything():
    assert _xpath_literal("MEG") == "'MEG'"
    assert _xpath_literal("it's") == '"it\'s"'
    assert _xpath_literal("""a'b"c""") == """concat('a', "'", 'b"c')"""


@pytest.mark.parametrize("i", range(len(ODD)), ids=IDS)
def test_odd_names_and_source_ids_resolve_to_exactly_that_stream(odd_streams, i):
    tag, names, source_ids, _, _ = odd_streams
    info = find(name=names[i], timeout_s=15.0)
    assert info is not None and info.name() == names[i] and info.source_id() == f"{tag}-sid-{i}"
    info = find(source_id=source_ids[i], timeout_s=15.0)
    assert info is not None and info.source_id() == source_ids[i]
    assert info.name() == f"{tag}-name-{i}"
    info = find(name=names[i], source_id=f"{tag}-sid-{i}", stype="MEG", timeout_s=15.0)
    assert info is not None and info.name() == names[i]


def test_an_injection_shaped_name_matches_nothing_else(odd_streams):
    tag, *_ = odd_streams
    assert find(name=f"{tag}-nope' or '1'='1", timeout_s=1.5) is None
    assert find(name=f'{tag}-nope" or "1"="1', timeout_s=1.5) is None
    assert find(source_id=f"{tag}-nope' or name!='", timeout_s=1.5) is None


@pytest.mark.parametrize("i", [0, 2, 5, 8], ids=["quote", "both", "unicode", "10kB"])
def test_readers_read_streams_with_odd_names(odd_streams, i):
    _, names, _, _, _ = odd_streams
    with StreamReader(names[i], resolve_timeout_s=15.0) as reader:
        reader.wait_ready(15.0)
        assert list(reader.ch_names) == ["MEG0001", "MEG0002"]
        poll(lambda: reader.ring.n_written >= 20, 15.0, "20 samples")
        assert reader.error is None


def test_odd_marker_texts_arrive_whole(odd_streams):
    _, names, _, marker_stream, texts = odd_streams
    with StreamReader(names[0], resolve_timeout_s=15.0) as reader:
        with MarkerReader(marker_stream, reader=reader, resolve_timeout_s=15.0) as markers:
            reader.wait_ready(15.0)
            markers.wait_ready(15.0)
            poll(lambda: len(markers.markers()) >= len(texts) + 1, 30.0, "every marker text")
            got = [m.value for m in markers.markers()]
    assert markers.error is None
    for text in texts:
        decoded = json.loads(text) if text.startswith("{") else {"raw": text}
        assert decoded in got, text[:40]
