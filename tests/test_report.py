"""HTML reports: what the pages hold, how they are written, and how they look in a real headless Chromium."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import DEFAULT_CLASSES, PHOTO_NAMES, PHOTOS, require

from emorec.cli import main
from emorec.results import Track
from emorec.report import (MAX_STEPS, TIMELINE_WIDTH, emotion_colours, photos_report, timeline_steps, timeline_svg,
                           video_report, write_report)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class Analysis:
    tracks: list[Track]
    class_names: list[str]
    fps: float
    duration: float


def make_track(track_id: int, times: np.ndarray, favourite: str, seed: int = 0) -> Track:
    """A track whose probabilities lean to one emotion, with a real photo as its thumbnail."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 0.5, (len(times), len(DEFAULT_CLASSES)))
    logits[:, DEFAULT_CLASSES.index(favourite)] += 3
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    thumbnail = cv2.imread(str(require(PHOTOS / PHOTO_NAMES[track_id % len(PHOTO_NAMES)])))
    return Track(track_id, list(DEFAULT_CLASSES), times, probs, thumbnail)


@pytest.fixture
def analysis() -> Analysis:
    """Two people in a 12 s clip at 10 fps: #1 all along but out of view from 4 s to 6 s, #2 from 5 s."""
    times = np.arange(0, 12, 0.1)
    first = make_track(1, times[(times < 4) | (times >= 6)], "happy")
    second = make_track(2, times[times >= 5], "surprise", seed=1)
    return Analysis([first, second], list(DEFAULT_CLASSES), fps=10.0, duration=12.0)


def render(analysis: Analysis, source: str, model: str = "") -> str:
    return video_report(source, analysis.tracks, analysis.class_names, analysis.fps, analysis.duration, model)


def area_extents(svg: str) -> list[tuple[float, float]]:
    """(left, right) x of every area path in an SVG timeline."""
    extents = []
    for outline in re.findall(r'class="area"[^>]* d="M([^"]+)Z"', svg):
        xs = [float(point.split(",")[0]) for point in outline.split()]
        extents.append((min(xs), max(xs)))
    return extents


# ----------------------------------------------------------------------------
# The pieces
# ----------------------------------------------------------------------------


def test_timeline_leaves_the_time_out_of_view_empty(analysis):
    svg = timeline_svg(analysis.tracks[0].times, analysis.tracks[0].probabilities, analysis.class_names,
                       emotion_colours(analysis.class_names), analysis.duration)
    extents = area_extents(svg)
    assert len(extents) == 2 * len(DEFAULT_CLASSES)  # one area per emotion per stretch in view
    seconds = TIMELINE_WIDTH / analysis.duration
    gap = (4.0 * seconds, 6.0 * seconds)
    assert all(right <= gap[0] + 1 or left >= gap[1] - 1 for left, right in extents)
    assert min(left for left, _ in extents) == pytest.approx(0, abs=0.1)
    assert max(right for _, right in extents) == pytest.approx(TIMELINE_WIDTH, abs=0.5)


def test_timeline_stacks_probabilities_to_the_full_height():
    times = np.arange(0, 3, 0.5)
    probs = np.tile([0.25, 0.75], (len(times), 1))
    [(starts, ends, stacked)] = timeline_steps(times, probs, 3.0)
    assert np.allclose(stacked.sum(axis=1), 1) and np.allclose(ends[:-1], starts[1:])
    svg = timeline_svg(times, probs, ["happy", "sad"], emotion_colours(["happy", "sad"]), 3.0)
    heights = re.findall(r'data-emotion="sad"[^>]* d="M[\d.]+,([\d.]+)', svg)
    assert float(heights[0]) == pytest.approx(0.0, abs=0.1)  # the top area reaches the top of the chart


def test_a_long_track_is_averaged_to_a_bounded_number_of_steps():
    times = np.arange(0, 3600, 1 / 30)  # an hour at 30 fps
    probs = np.random.default_rng(0).dirichlet(np.ones(3), len(times))
    [(starts, _, averaged)] = timeline_steps(times, probs, 3600.0)
    assert len(starts) <= MAX_STEPS and np.allclose(averaged.mean(axis=0), probs.mean(axis=0), atol=1e-3)


def test_every_emotion_gets_its_own_colour_also_unknown_ones():
    names = list(DEFAULT_CLASSES) + ["bored", "confused"]
    colours = emotion_colours(names)
    assert len(set(colours.values())) == len(names)
    assert emotion_colours(["happy"])["happy"] == colours["happy"]  # the same colour on every page


def test_video_report_names_the_video_and_holds_one_section_per_track(analysis):
    page = render(analysis, "clips/two <people>.mp4", model="emorec-ferplus.onnx")
    assert "<title>Emotions in two &lt;people&gt;.mp4</title>" in page
    assert "0:12 long" in page and "10 fps" in page and "emorec-ferplus.onnx" in page
    assert page.count('class="track"') == 2 and page.count('<svg class="timeline"') == 2
    assert page.count("<tr>") == 3  # header and one row per track
    assert not re.search(r"(src|href)=\"(https?:)?//", page)  # nothing fetched from elsewhere


def test_write_report_replaces_only_its_own_pages_and_only_when_asked(tmp_path):
    from emorec.report import page

    mine, ours = tmp_path / "mine.html", tmp_path / "clip.html"
    mine.write_text("keep me")
    for exist_ok in (False, True):
        with pytest.raises(FileExistsError, match="mine.html"):
            write_report(mine, page("new", []), exist_ok=exist_ok)
    assert mine.read_text() == "keep me"
    write_report(ours, page("first", []))
    with pytest.raises(FileExistsError, match="clip.html"):
        write_report(ours, page("second", []))
    write_report(ours, page("second", []), exist_ok=True)
    assert "<title>second</title>" in ours.read_text() and not list(tmp_path.glob(".clip.html*"))


def test_photos_report_groups_the_faces_by_emotion():
    from emorec.results import FaceResult, ImageResult

    first, second = (str(require(PHOTOS / name)) for name in PHOTO_NAMES[:2])
    happy = dict.fromkeys(DEFAULT_CLASSES, 0.0) | {"happy": 1.0}
    sad = dict.fromkeys(DEFAULT_CLASSES, 0.0) | {"sad": 1.0}
    results = [ImageResult(first, [FaceResult((10, 10, 100, 100), happy), FaceResult((120, 10, 80, 80), sad)]),
               ImageResult(second, [FaceResult(None, happy)]), ImageResult("gone.jpg", error="gone.jpg: no such file")]
    page = photos_report(results, DEFAULT_CLASSES, "photos")
    grids = dict(re.findall(r'<section class="grid" data-emotion="(\w+)".*?</h2>(.*?)</section>', page))
    assert sorted(grids) == ["happy", "sad"]
    assert grids["happy"].count("<img") == 2 and grids["sad"].count("<img") == 1
    assert "3 photos · 3 faces · 1 unreadable" in page


# ----------------------------------------------------------------------------
# emorec predict --report
# ----------------------------------------------------------------------------


def test_predict_report_on_photos_writes_one_page_and_refuses_to_replace_it(tmp_path, capsys):
    photos = [str(require(PHOTOS / name)) for name in PHOTO_NAMES]
    out = tmp_path / "report"
    assert main(["predict", *photos, "--report", str(out), "--json"]) == 0
    results = json.loads(capsys.readouterr().out)
    page = (out / "photos.html").read_text()
    faces = sum(len(result["faces"]) for result in results)
    assert page.count('<img class="face"') == faces
    for emotion in {face["emotion"] for result in results for face in result["faces"]}:
        assert f'data-emotion="{emotion}"' in page
    assert main(["predict", *photos, "--report", str(out)]) == 1
    assert "photos.html: already exists" in capsys.readouterr().err
    assert (out / "photos.html").read_text() == page


def test_predict_report_inside_an_input_folder_is_refused(tmp_path, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(require(PHOTOS / PHOTO_NAMES[0]), folder)
    assert main(["predict", str(folder), "--report", str(folder / "report")]) != 0
    assert "inside the input folder" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == [PHOTO_NAMES[0]]


# ----------------------------------------------------------------------------
# In a browser
# ----------------------------------------------------------------------------


def open_in_chromium(path: Path, screenshot: Path) -> dict:
    """Open a report in headless Chromium; what rendered, console errors and requests beyond the page itself."""
    sync_api = pytest.importorskip("playwright.sync_api")
    if CHROMIUM is None:
        pytest.skip("Chromium is not installed (apt-get install chromium)")
    url = path.resolve().as_uri()
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, headless=True,
                                             args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        page = browser.new_page(viewport={"width": 1366, "height": 800})
        errors, requests = [], []
        page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.on("request", lambda request: requests.append(request.url) if request.url != url else None)
        page.goto(url)
        page.wait_for_load_state("load")
        seen = page.evaluate("""() => ({
            timelines: [...document.querySelectorAll('section.track')].map(s => s.querySelectorAll('svg.timeline').length),
            svgs: [...document.querySelectorAll('svg')].map(s => { const r = s.getBoundingClientRect(); return [r.width, r.height]; }),
            areas: [...document.querySelectorAll('svg.timeline path.area')].filter(p => p.getBBox().width > 0).length,
            images: [...document.images].map(i => [i.complete, i.naturalWidth]),
            title: document.title,
        })""")
        page.screenshot(path=str(screenshot), full_page=True)
        browser.close()
    return {**seen, "errors": errors, "requests": requests}


def test_video_report_renders_in_chromium_without_network(analysis, tmp_path):
    path = write_report(tmp_path / "clip.html", render(analysis, "clip.mp4", "emorec-ferplus.onnx"))
    seen = open_in_chromium(path, tmp_path / "clip.png")
    assert seen["timelines"] == [1, 1]
    assert seen["svgs"] and all(width > 0 and height > 0 for width, height in seen["svgs"])
    assert seen["areas"] == 3 * len(DEFAULT_CLASSES)  # person 1 in two stretches, person 2 in one
    assert len(seen["images"]) == 2 and all(done and width > 0 for done, width in seen["images"])
    assert seen["errors"] == [] and seen["requests"] == []
    assert seen["title"] == "Emotions in clip.mp4"
    shot = cv2.imread(str(tmp_path / "clip.png"))
    assert shot is not None and shot.std() > 10


def test_photos_report_renders_in_chromium(tmp_path):
    photos = [str(require(PHOTOS / name)) for name in PHOTO_NAMES]
    assert main(["predict", *photos, "--report", str(tmp_path / "report")]) == 0
    seen = open_in_chromium(tmp_path / "report" / "photos.html", tmp_path / "photos.png")
    assert len(seen["images"]) >= len(photos) and all(done and width > 0 for done, width in seen["images"])
    assert all(width > 0 and height > 0 for width, height in seen["svgs"])
    assert seen["errors"] == [] and seen["requests"] == []


def test_predict_report_on_a_video_shows_each_person_in_chromium(tmp_path, monkeypatch, capsys):
    from videos import write_scene

    monkeypatch.chdir(tmp_path)  # the per-frame CSV goes to the current folder
    clip = tmp_path / "crossing.mp4"
    write_scene("crossing", clip, fps=8)  # two people walking past each other, 3 s
    assert main(["predict", str(clip), "--report", str(tmp_path / "report"), "--json"]) == 0
    [result] = json.loads(capsys.readouterr().out)
    tracks = result["video"]["tracks"]
    page = (tmp_path / "report" / "crossing.html").read_text()
    sections = re.findall(r'<section class="track" id="track-(\d+)".*?mostly <b[^>]*>(\w+)</b>', page)
    assert sections == [(str(track["id"]), track["dominant"]) for track in tracks] and len(tracks) == 2
    seen = open_in_chromium(tmp_path / "report" / "crossing.html", tmp_path / "crossing.png")
    assert seen["timelines"] == [1, 1] and seen["areas"] >= 2 * len(DEFAULT_CLASSES)
    assert all(done and width > 0 for done, width in seen["images"]) and len(seen["images"]) == 2
    assert seen["errors"] == [] and seen["requests"] == []
