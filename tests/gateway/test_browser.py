"""The viewer page in a real headless Chromium: WebRTC video decoded and moving, a chart record per chunk, prompt
changes reaching the server, the server's errors shown, and a closed tab ending the server session."""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import av
import pytest

from tests.gateway.gateway_support import GatewayThread, chromium, http_get, wait_until
from tokentrim_server.server.background import BackgroundServer

SIZE = 64  # small enough for fast chunks, large enough for the video encoder and the screenshot

# Draws the playing video into a canvas and returns what a viewer sees: size, playback time and a pixel checksum.
SAMPLE_VIDEO = """
const video = document.getElementById('video');
if (!video.videoWidth) return null;
const canvas = document.createElement('canvas');
canvas.width = video.videoWidth; canvas.height = video.videoHeight;
const g = canvas.getContext('2d');
g.drawImage(video, 0, 0);
const data = g.getImageData(0, 0, canvas.width, canvas.height).data;
let checksum = 0, total = 0;
for (let i = 0; i < data.length; i += 4) {
  checksum = (checksum * 31 + data[i] + 7 * data[i + 1] + 13 * data[i + 2]) % 1000000007;
  total += data[i] + data[i + 1] + data[i + 2];
}
return {width: video.videoWidth, height: video.videoHeight, time: video.currentTime, checksum: checksum,
        mean: total / (data.length / 4 * 3), decoded: video.getVideoPlaybackQuality().totalVideoFrames};
"""


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    with chromium() as driver:
        yield driver


def viewer_state(driver: Any, expression: str) -> Any:
    return driver.execute_script(f"return window.tokentrimViewer && {expression};")


def open_page(driver: Any, url: str) -> None:
    driver.get(url)
    wait_until(lambda: viewer_state(driver, "viewer.channel && viewer.channel.readyState === 'open'"),
               "the page's data channel to open", timeout=30)


def fill(driver: Any, **fields: Any) -> None:
    for name, value in fields.items():
        driver.execute_script("document.getElementById(arguments[0]).value = arguments[1];", name, str(value))


def click(driver: Any, element_id: str) -> None:
    driver.find_element("id", element_id).click()


def points(driver: Any) -> list[dict[str, Any]]:
    return viewer_state(driver, "window.tokentrimViewer.chart.points") or []


def server_sessions(server: BackgroundServer) -> int:
    return server.server.service.admission.sessions


def test_page_streams_video_and_charts_every_chunk(browser: Any, gateway: GatewayThread, server: BackgroundServer,
                                                   tmp_path: Path) -> None:
    sent_before = gateway.metric("tokentrim_gateway_frames_sent_total")
    open_page(browser, gateway.url)
    # The form comes from GetServerInfo: every pipeline and installed policy, with the policy's own parameters.
    pipelines = browser.execute_script("return [...document.getElementById('pipeline').options].map(o => o.value)")
    assert set(pipelines) == {"self_forcing", "rolling_forcing", "longlive"}
    browser.execute_script("const s = document.getElementById('policy'); s.value = 'tokentrim'; s.onchange();")
    params = browser.execute_script(
        "return [...document.querySelectorAll('#policy-params [data-name]')].map(e => e.dataset.name)")
    assert "prune_ratio" in params

    fill(browser, prompt="a red ball", chunks=10, seed=3, width=SIZE, height=SIZE)
    click(browser, "start")
    wait_until(lambda: len(points(browser)) >= 2, "the first chunk reports")
    fill(browser, prompt="a blue square")
    click(browser, "change-prompt")

    samples: list[dict[str, Any]] = []
    while not viewer_state(browser, "window.tokentrimViewer.ended"):
        sample = browser.execute_script(SAMPLE_VIDEO)
        if sample:
            samples.append(sample)
        if len(points(browser)) == 8 and "GATEWAY_SCREENSHOT" in os.environ:  # for docs/gateway/viewer.png
            browser.save_screenshot(os.environ["GATEWAY_SCREENSHOT"])
        time.sleep(0.25)
        assert len(samples) < 200, "the session did not end"
    ended = viewer_state(browser, "window.tokentrimViewer.ended")
    assert ended["reason"] == "completed" and ended["chunks"] == 10

    # A chart record per chunk, in order, with the server's cache report; the prompt change reached the server.
    chart = points(browser)
    assert [point["index"] for point in chart] == list(range(10))
    assert all(point["report"]["policy"] == "tokentrim" for point in chart)
    versions = [point["prompt_version"] for point in chart]
    assert versions[0] == 0 and versions[-1] == 1 and versions == sorted(versions)
    assert sum(point["frame_count"] for point in chart) == ended["frames"]

    # Frames were decoded at the session's size, playback advanced and the picture changed.
    assert {(sample["width"], sample["height"]) for sample in samples} == {(SIZE, SIZE)}
    assert samples[-1]["time"] - samples[0]["time"] > 2.0
    assert samples[-1]["decoded"] > 40
    assert len({sample["checksum"] for sample in samples}) > 3
    assert gateway.metric("tokentrim_gateway_frames_sent_total") - sent_before > 40

    # The chart canvas was drawn on.
    painted = browser.execute_script(
        "const c = document.getElementById('chart'); const d = c.getContext('2d').getImageData(0, 0, c.width, c.height)"
        ".data; let n = 0; for (let i = 3; i < d.length; i += 4) if (d[i]) n++; return n;")
    assert painted > 1000

    # The download is the session as an mp4 with every frame.
    viewer_id = viewer_state(browser, "window.tokentrimViewer.id")
    status, body = http_get(f"{gateway.url}api/viewers/{viewer_id}/recording.mp4")
    assert status == 200
    with av.open(io.BytesIO(body)) as container:
        stream = container.streams.video[0]
        assert (stream.width, stream.height) == (SIZE, SIZE)
        assert sum(1 for _ in container.decode(stream)) == ended["frames"]
    assert not viewer_state(browser, "document.getElementById('download').disabled")


def test_bad_input_shows_the_servers_error(browser: Any, gateway: GatewayThread) -> None:
    open_page(browser, gateway.url)
    browser.execute_script("const s = document.getElementById('policy'); s.value = 'tokentrim'; s.onchange();"
                           "document.querySelector('#policy-params [data-name=prune_ratio]').value = '5';")
    fill(browser, width=SIZE, height=SIZE, chunks=2)
    click(browser, "start")
    error = wait_until(lambda: viewer_state(browser, "document.getElementById('error').hidden === false && "
                                                     "document.getElementById('error').textContent"), "the error")
    assert error.startswith("INVALID_ARGUMENT: cache_policy.params:") and "prune_ratio" in error
    # A malformed message gets the gateway's own error naming the field, and the page keeps working.
    browser.execute_script("window.tokentrimViewer.channel.send(JSON.stringify({type: 'start', chunks: 'many'}))")
    wait_until(lambda: "chunks: must be a non-negative integer" in viewer_state(browser, "viewer.errors.join('|')"),
               "the gateway's error")
    browser.execute_script("window.tokentrimViewer.channel.send('not json')")
    wait_until(lambda: "message: not JSON" in viewer_state(browser, "viewer.errors.join('|')"), "the JSON error")
    browser.execute_script("document.querySelector('#policy-params [data-name=prune_ratio]').value = '0.1';")
    click(browser, "start")
    ended = wait_until(lambda: viewer_state(browser, "window.tokentrimViewer.ended"), "the session to end")
    assert ended["reason"] == "completed" and ended["chunks"] == 2


def test_closing_the_tab_ends_the_server_session(browser: Any, gateway: GatewayThread,
                                                 server: BackgroundServer) -> None:
    first = browser.current_window_handle
    browser.switch_to.new_window("tab")
    open_page(browser, gateway.url)
    fill(browser, width=SIZE, height=SIZE, chunks=0)  # unbounded: only the viewer leaving ends it
    click(browser, "start")
    started = wait_until(lambda: viewer_state(browser, "window.tokentrimViewer.started"), "the session to start")
    opened = time.monotonic()
    wait_until(lambda: len(points(browser)) >= 3, "chunks of the unbounded session")
    assert server_sessions(server) == 1
    # Flow control: the tiny model runs several times faster than real time, yet the gateway takes chunks only as
    # its buffer plays out (about two chunks, plus the one in flight for the credit it returned).
    time.sleep(3)
    played = (time.monotonic() - opened) * started["frames_per_second"]
    assert len(points(browser)) * 12 - 3 <= played + 3 * 12
    viewers = len(gateway.gateway.viewers)
    browser.close()
    browser.switch_to.window(first)
    wait_until(lambda: server_sessions(server) == 0, "the server to end the session", timeout=10)
    wait_until(lambda: len(gateway.gateway.viewers) == viewers - 1, "the gateway to drop the viewer", timeout=10)
    assert gateway.metric("tokentrim_gateway_sessions_ended_total", reason="cancelled") >= 1
