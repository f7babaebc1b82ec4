"""The viewer in a real browser: headless Chromium (Debian's) driven by Playwright,
against a real server fed by the synthetic frame producer of tests/helpers/server.py."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest

from rtdecode.config import Settings
from rtdecode.server.app import create_app, run_server_in_thread
from tests.helpers.server import FrameProducer, SyntheticSource, serving

_SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "screenshot.py"
_spec = importlib.util.spec_from_file_location("rtdecode_screenshot", _SCRIPT)
screenshot_mod = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(screenshot_mod)

sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
if screenshot_mod.find_chromium() is None:
    pytest.skip(
        "Chromium is not installed (apt-get install chromium); the viewer test needs a browser.",
        allow_module_level=True,
    )

TIMEOUT_MS = 20_000

# A fingerprint of a canvas: mean and spread of its pixels and a position-weighted sum,
# so "not blank" and "changed" are both visible from Python.
CANVAS_FINGERPRINT = """id => {
  const c = document.getElementById(id);
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let sum = 0, sq = 0, weighted = 0, n = 0;
  for (let i = 0; i < d.length; i += 4 * 7) {
    const v = d[i] + d[i + 1] + d[i + 2];
    sum += v; sq += v * v; weighted = (weighted + v * (i % 9973)) % 1000000007; n++;
  }
  const mean = sum / n;
  return {mean, std: Math.sqrt(Math.max(0, sq / n - mean * mean)), weighted, w: c.width, h: c.height};
}"""


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = screenshot_mod.launch_chromium(p)
        yield b
        b.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1400, "height": 900})
    page = context.new_page()
    page.errors = []
    page.on("pageerror", lambda exc: page.errors.append(str(exc)))
    page.on("console", lambda m: m.type == "error" and page.errors.append(m.text))
    yield page
    context.close()


def viewer(page) -> dict:
    return page.evaluate("() => ({...window.rtdecodeViewer})")


def wait_js(page, expression: str, arg=None) -> None:
    page.wait_for_function(expression, arg=arg, timeout=TIMEOUT_MS)


def wait_changed(page, canvas_id: str, before: dict) -> dict:
    deadline = time.monotonic() + TIMEOUT_MS / 1000
    while time.monotonic() < deadline:
        now = page.evaluate(CANVAS_FINGERPRINT, canvas_id)
        if now["weighted"] != before["weighted"]:
            return now
        page.wait_for_timeout(100)
    raise AssertionError(f"canvas #{canvas_id} did not change within {TIMEOUT_MS} ms")


def test_viewer_renders_frames_topk_truth_and_charts(page):
    with serving(fps=12, image_size=160) as (handle, _):
        page.goto(handle.url)
        wait_js(page, "() => window.rtdecodeViewer.framesRendered >= 3")
        assert viewer(page)["connection"] == "live"

        first = page.evaluate(CANVAS_FINGERPRINT, "frame")
        assert first["w"] > 100 and first["std"] > 10, f"decoded image looks blank: {first}"
        second = wait_changed(page, "frame", first)
        assert second["std"] > 10

        chart = page.evaluate(CANVAS_FINGERPRINT, "latency-chart")
        points = viewer(page)["latencyPoints"]
        wait_js(page, "n => window.rtdecodeViewer.latencyPoints > n + 3", points)
        wait_changed(page, "latency-chart", chart)
        legend = page.inner_text("#latency-legend")
        assert "total" in legend and "encode" in legend

        # Top-k thumbnails and the true stimulus come from /api/gallery and load.
        wait_js(
            page,
            """() => {
              const imgs = [...document.querySelectorAll('#topk img, #true-thumb img')];
              return imgs.length === 6 && imgs.every(i => i.complete && i.naturalWidth > 0);
            }""",
        )
        assert page.inner_text("#true-id") == "img_007"
        # Concept names from /api/names beside the stimulus and each retrieved image
        wait_js(page, "() => document.getElementById('true-name').textContent === 'object 7'")
        pairs = page.eval_on_selector_all(  # one read: the strip changes with every frame
            "#topk li", "els => els.map(e => [e.querySelector('.name').textContent, "
            "e.querySelector('.id').textContent])")
        assert len(pairs) == 5 and all(name == f"object {int(i[4:])}" for name, i in pairs)
        assert page.inner_text("#true-rank").startswith("#")
        assert viewer(page)["rankPoints"] > 0
        wait_js(page, "() => window.rtdecodeViewer.fps > 2")
        wait_js(page, "() => document.getElementById('health').dataset.state === 'ready'")
        assert page.inner_text("#stream-name") == "stream synthetic-meg"
        assert page.inner_text("#gaps") == "2" and page.inner_text("#skipped") == "5"

        # The session's decoding curve from the status messages: 30 lag bins, its peak
        # (top-5 75 % at +175 ms, median rank 2 of 40) and chance (12.5 %) named.
        wait_js(page, "() => window.rtdecodeViewer.curveBins === 30")
        legend = " ".join(page.inner_text("#curve-legend").split())
        assert "peak top-5 75 % at +175 ms" in legend and "chance 12.5 %" in legend, legend
        curve = page.evaluate(CANVAS_FINGERPRINT, "curve-chart")
        assert curve["w"] > 100 and curve["std"] > 5, f"curve looks blank: {curve}"
    assert page.errors == []


def test_viewer_reconnects_after_a_server_restart(page):
    source = SyntheticSource()
    app = create_app(Settings(), source, status_interval_s=0.5)
    handle = run_server_in_thread(app)
    port = handle.port

    producer = FrameProducer(app.state.broadcaster.publish, fps=10)
    producer.start()
    try:
        page.goto(handle.url)
        wait_js(page, "() => window.rtdecodeViewer.framesReceived >= 2")
        handle.stop()
        producer.stop()
        wait_js(page, "() => window.rtdecodeViewer.connection === 'reconnecting'")
        assert page.inner_text("#conn").startswith("reconnecting")

        app = create_app(Settings(), source, status_interval_s=0.5)
        handle = run_server_in_thread(app, "127.0.0.1", port)
        producer = FrameProducer(app.state.broadcaster.publish, fps=10)
        producer.start()
        received = viewer(page)["framesReceived"]
        wait_js(page, "n => window.rtdecodeViewer.framesReceived > n + 2", received)
        state = viewer(page)
        assert state["connection"] == "live" and state["reconnects"] >= 1
    finally:
        producer.stop()
        handle.stop()


def test_viewer_carries_the_token_and_says_when_it_is_missing(page):
    with serving(fps=10, token="s3cret") as (handle, _):
        page.goto(handle.url + "?token=s3cret")
        wait_js(page, "() => window.rtdecodeViewer.framesRendered >= 2")
        wait_js(page, "() => document.querySelectorAll('#topk img').length === 5")
        wait_js(
            page, "() => [...document.querySelectorAll('#topk img')].every(i => i.naturalWidth > 0)"
        )

        page.goto(handle.url)
        wait_js(page, "() => window.rtdecodeViewer.connection === 'closed'")
        assert viewer(page)["closeCode"] == 4401
        assert "token" in page.inner_text("#conn")
