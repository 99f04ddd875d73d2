"""Face detection and FER-style cropping on real photos and generated images."""

import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from emorec.errors import EmorecError
from emorec.faces import DETECTORS, FACE_CROP_SIDE, Face, create_detector, crop_face, is_face_crop

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
PHOTOS = DATA / "photos"
# 350x350 photos that every detector finds (see benchmarks/detectors.py).
NAMES = ["Arnaud_Lagardere_0001.jpg", "Beyonce_Knowles_0001.jpg", "Carson_Palmer_0004.jpg"]

needs_data = pytest.mark.skipif(not PHOTOS.is_dir(), reason=f"no photos at {PHOTOS}")


@pytest.fixture(scope="module", params=DETECTORS)
def detector(request):
    return create_detector(request.param)


def photo(name: str) -> np.ndarray:
    image = cv2.imread(str(PHOTOS / name))
    assert image is not None, name
    return image


def centre(box):
    x, y, w, h = box
    return x + w / 2, y + h / 2


@needs_data
@pytest.mark.parametrize("name", NAMES)
def test_finds_the_face_in_a_photo(detector, name):
    image = photo(name)
    found = detector.detect(image)
    assert len(found) == 1
    cx, cy = centre(found[0].box)
    h, w = image.shape[:2]
    assert 0.25 * w < cx < 0.75 * w and 0.2 * h < cy < 0.8 * h
    assert 0.0 <= found[0].score <= 1.0


@pytest.mark.parametrize("kind", ["black", "gray", "noise"])
def test_no_faces_in_blank_or_noise(detector, kind):
    image = {
        "black": np.zeros((240, 320, 3), np.uint8),
        "gray": np.full((240, 320, 3), 128, np.uint8),
        "noise": np.random.default_rng(0).integers(0, 256, (240, 320, 3), np.uint8),
    }[kind]
    assert detector.detect(image) == []


@needs_data
def test_several_faces_sorted_left_to_right(detector):
    tiles = [cv2.copyMakeBorder(cv2.resize(photo(n), (200, 200)), 60, 60, 40, 40,
                                cv2.BORDER_CONSTANT, value=(255, 255, 255)) for n in NAMES]
    found = detector.detect(np.hstack(tiles))
    assert len(found) == len(NAMES)
    # Each face lies in its own 280-px-wide tile, in order.
    assert [int(centre(f.box)[0] // 280) for f in found] == list(range(len(NAMES)))


@needs_data
@pytest.mark.skipif("yunet" not in DETECTORS, reason="yuface is not installed")
@pytest.mark.parametrize("name", NAMES)
def test_a_face_in_a_wide_video_frame_is_found_in_one_look(name, monkeypatch):
    """A 1280x720 frame whose face is 300 px high (as in benchmarks/inference.py's clip): one pass, the right box."""
    frame = np.full((720, 1280, 3), 110, np.uint8)
    frame[210:510, 500:800] = cv2.resize(photo(name), (300, 300))
    detector = create_detector("yunet")
    looks = []
    find = detector._find
    monkeypatch.setattr(detector, "_find", lambda prepared, frame: looks.append(prepared.shape) or find(prepared, frame))
    [face] = detector.detect(frame)
    assert len(looks) == 1 and looks[0][0] >= 288  # the first look was big enough to settle it
    cx, cy = centre(face.box)
    assert 500 < cx < 800 and 210 < cy < 510 and 150 < face.box[2] < 300


def test_yunet_gives_five_landmarks_inside_the_box():
    if "yunet" not in DETECTORS:
        pytest.skip("yuface is not installed")
    if not PHOTOS.is_dir():
        pytest.skip(f"no photos at {PHOTOS}")
    face = create_detector("yunet").detect(photo(NAMES[0]))[0]
    x, y, w, h = face.box
    assert len(face.landmarks) == 5
    assert all(x <= px <= x + w and y <= py <= y + h for px, py in face.landmarks)
    assert face.landmarks[0][0] < face.landmarks[1][0]  # eyes left to right


def test_auto_prefers_yunet_when_available():
    assert create_detector().name == ("yunet" if "yunet" in DETECTORS else "haar")


def test_unknown_detector_names_the_choices():
    with pytest.raises(EmorecError, match="unknown face detector 'nope'; choose one of: auto, haar") as error:
        create_detector("nope")
    assert isinstance(error.value, ValueError)  # what API callers catch


def test_a_face_crop_is_an_image_whose_short_side_is_under_64_px():
    assert FACE_CROP_SIDE == 64
    assert is_face_crop(np.zeros((48, 48), np.uint8))  # FER2013's crops
    assert is_face_crop(np.zeros((63, 400, 3), np.uint8))  # the short side decides
    assert not is_face_crop(np.zeros((64, 64, 3), np.uint8))
    assert not is_face_crop(np.zeros((96, 96, 3), np.uint8))


@pytest.mark.parametrize("grayscale, channels", [(True, 1), (False, 3)])
def test_crop_shape_and_dtype(grayscale, channels):
    image = np.random.default_rng(1).integers(0, 256, (120, 160, 3), np.uint8)
    crop = crop_face(image, Face((40, 30, 50, 60), 1.0), size=64, grayscale=grayscale)
    assert crop.shape == (64, 64, channels) and crop.dtype == np.uint8


@pytest.mark.parametrize("box", [(-30, -20, 80, 80), (130, 90, 60, 60), (500, 500, 40, 40), (0, 0, 1, 1)])
def test_crop_at_or_past_the_edge(box):
    image = np.full((120, 160, 3), 200, np.uint8)
    crop = crop_face(image, Face(box, 1.0))
    assert crop.shape == (48, 48, 1)


def test_crop_is_rgb_not_bgr():
    image = np.zeros((100, 100, 3), np.uint8)
    image[..., 2] = 255  # pure red in BGR
    crop = crop_face(image, Face((25, 25, 50, 50), 1.0), grayscale=False)
    assert (crop[..., 0] == 255).all() and (crop[..., 2] == 0).all()


@pytest.mark.skipif(not (DATA / "fer2013" / "val").is_dir(), reason="no FER2013 val data")
def test_crop_reproduces_fer_framing():
    """Upscaled, padded FER images cropped back should look like the originals."""
    paths = sorted((DATA / "fer2013" / "val" / "happy").iterdir())[:12]
    detector = create_detector()
    scores = []
    for path in paths:
        small = cv2.imread(str(path), cv2.IMREAD_GRAYSCALE)
        big = cv2.copyMakeBorder(cv2.resize(small, (192, 192), interpolation=cv2.INTER_CUBIC),
                                 48, 48, 48, 48, cv2.BORDER_CONSTANT)
        found = detector.detect(cv2.cvtColor(big, cv2.COLOR_GRAY2BGR))
        if len(found) == 1:
            crop = crop_face(big, found[0])[:, :, 0]
            scores.append(np.corrcoef(crop.ravel(), small.ravel())[0, 1])
    assert len(scores) >= 8
    assert np.median(scores) > 0.4


def test_auto_falls_back_to_haar_without_yuface():
    # A fresh interpreter where `import yuface` fails, as when it is not installed.
    code = ("import sys; sys.modules['yuface'] = None\n"
            "from emorec.faces import DETECTORS, create_detector\n"
            "print(DETECTORS, create_detector().name)")
    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(src), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["('haar',)", "haar"]


def _rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no /proc/self/status here")


@pytest.mark.skipif("yunet" not in DETECTORS, reason="yuface is not installed")
def test_yunet_matches_yuface_and_memory_stays_flat():
    import yuface

    from emorec.faces import _yunet

    image = np.ascontiguousarray(cv2.resize(photo(NAMES[0]), (160, 160)))
    for ours, theirs in zip(_yunet(image, 0.6), yuface.detect(image, conf=0.6)):
        np.testing.assert_array_equal(ours, theirs)
    detector = create_detector("yunet")
    detector.detect(image)
    before = _rss_mb()
    for _ in range(600):  # yuface.detect itself leaks 36 KB a call: 21 MB here
        detector.detect(image)
    assert _rss_mb() - before < 8
