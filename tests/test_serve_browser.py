"""The web page in a real headless Chromium: a photo upload and the webcam (Chromium's fake camera).

Needs Debian's `chromium` (`.ci/run` installs it when missing) and the Playwright
package, which drives it through `executable_path`; Playwright's own browser
download is not used. Screenshots are saved in each test's tmp folder.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import DEFAULT_CLASSES, PHOTO_NAMES, PHOTOS, require

pytest.importorskip("uvicorn")
sync_api = pytest.importorskip("playwright.sync_api")
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium is not installed (apt-get install chromium)")

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def server():
    """The real app on Uvicorn, on a free loopback port, for the module's tests."""
    import uvicorn

    from emorec.config import ServeConfig
    from emorec.serve import create_app

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = uvicorn.Config(create_app(ServeConfig(port=port)), host="127.0.0.1", port=port, log_level="warning")
    running = uvicorn.Server(config)
    thread = threading.Thread(target=running.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not running.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert running.started, "the server did not start"
    yield f"http://127.0.0.1:{port}"
    running.should_exit = True
    thread.join(timeout=10)


def launch(playwright, *extra):
    return playwright.chromium.launch(executable_path=CHROMIUM, args=FLAGS + list(extra), headless=True)


def test_photo_upload_draws_the_faces_the_api_finds(server, tmp_path):
    import httpx

    photo = require(PHOTOS / PHOTO_NAMES[1])
    with open(photo, "rb") as handle:
        [expected] = httpx.post(f"{server}/v1/predict", files={"files": (photo.name, handle, "image/jpeg")}).json()
    with sync_api.sync_playwright() as playwright:
        browser = launch(playwright)
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.goto(server)
        page.wait_for_function("document.querySelector('#model').textContent.includes('emotions')")
        page.set_input_files("#file", str(photo))
        page.wait_for_selector("#faces li", timeout=30_000)
        labels = page.eval_on_selector_all("#faces li", "items => items.map(item => item.dataset.emotion)")
        assert labels == [face["emotion"] for face in expected["faces"]]
        assert page.get_attribute("#canvas", "data-faces") == str(len(expected["faces"]))
        bars = page.eval_on_selector_all(".bar .name", "names => names.map(n => n.textContent)")
        assert bars == DEFAULT_CLASSES
        page.screenshot(path=str(tmp_path / "photo.png"))
        browser.close()
    shot = cv2.imread(str(tmp_path / "photo.png"))
    assert shot is not None and shot.std() > 10


def make_y4m(path: Path, frames: int = 20) -> Path:
    """A 320x240 YUV4MPEG2 clip (Chromium's fake camera format) of a labelled photo."""
    face = cv2.resize(cv2.imread(str(require(PHOTOS / PHOTO_NAMES[0]))), (200, 200))
    frame = np.full((240, 320, 3), 90, np.uint8)
    frame[20:220, 60:260] = face
    yuv = cv2.cvtColor(frame, cv2.COLOR_BGR2YUV_I420)
    with open(path, "wb") as handle:
        handle.write(b"YUV4MPEG2 W320 H240 F10:1 Ip A1:1 C420jpeg\n")
        for _ in range(frames):
            handle.write(b"FRAME\n" + yuv.tobytes())
    return path


@contextlib.contextmanager
def webcam_page(server, tmp_path):
    """The page in its Webcam view, fed a generated clip of a real face through Chromium's fake camera."""
    clip = make_y4m(tmp_path / "clip.y4m")
    with sync_api.sync_playwright() as playwright:
        browser = launch(playwright, "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                         f"--use-file-for-fake-video-capture={clip}")
        context = browser.new_context(viewport={"width": 1200, "height": 800}, permissions=["camera"])
        page = context.new_page()
        page.goto(server)
        page.click("#mode-webcam")
        try:
            yield page
        finally:
            browser.close()


def test_webcam_frames_get_a_label(server, tmp_path):
    with webcam_page(server, tmp_path) as page:
        page.wait_for_selector("#faces li", timeout=30_000)
        label = page.get_attribute("#faces li", "data-emotion")
        assert label in DEFAULT_CLASSES
        assert page.text_content("#status").startswith("Webcam: 1 face")
        page.screenshot(path=str(tmp_path / "webcam.png"))


def test_webcam_faces_get_a_track_id_and_a_strip(server, tmp_path):
    with webcam_page(server, tmp_path) as page:
        # Three frames in, the one face is still person #1 and its strip holds a step per frame.
        page.wait_for_function("document.querySelectorAll('#people .person[data-track=\"1\"] rect').length >= 3",
                               timeout=60_000)
        assert page.get_attribute("#faces li", "data-track") == "1"
        assert page.text_content("#faces li span") == "Person #1"
        assert page.get_attribute("#canvas", "data-tracks") == "1"
        assert page.eval_on_selector_all("#people .person", "rows => rows.map(row => row.dataset.track)") == ["1"]
        steps = page.eval_on_selector_all("#people rect", "steps => steps.map(s => [s.dataset.emotion, s.getAttribute('fill')])")
        colours = page.evaluate("fetch('/v1/model').then(r => r.json()).then(info => info.colours)")
        assert all(emotion in DEFAULT_CLASSES and fill == colours[emotion] for emotion, fill in steps)
        width = page.eval_on_selector("#people .strip", "strip => strip.getBoundingClientRect().width")
        assert width > 100
        page.screenshot(path=str(tmp_path / "webcam-tracks.png"))
