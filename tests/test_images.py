"""The image reader: every mode and format to 8-bit BGR, and one line naming the file for what cannot be read."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import face_like, write_image
from PIL import Image

from emorec.images import ImageReadError, read_image


def _jpeg_bytes(seed: int = 0, size: int = 48) -> bytes:
    ok, buffer = cv2.imencode(".jpg", face_like(seed, size))
    assert ok
    return buffer.tobytes()


def test_read_grayscale_gives_three_equal_channels(tmp_path):
    gray = face_like(1)
    image = read_image(write_image(tmp_path / "g.png", gray))
    assert image.shape == (48, 48, 3) and image.dtype == np.uint8
    for channel in range(3):
        np.testing.assert_array_equal(image[..., channel], gray)


def test_read_rgba_drops_alpha(tmp_path):
    bgra = face_like(2, channels=4)
    image = read_image(write_image(tmp_path / "a.png", bgra))
    assert image.shape == (48, 48, 3)
    np.testing.assert_array_equal(image, bgra[..., :3])


def test_read_16_bit_png_scales_to_8_bit(tmp_path):
    values = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)  # 0, 1, 127.5, 255 in 8 bits
    image = read_image(write_image(tmp_path / "deep.png", values))
    assert image.dtype == np.uint8
    np.testing.assert_array_equal(image[0, :, 0], np.round(values[0] / 257).astype(np.uint8))
    assert image[0, 3, 0] == 255 and image[0, 0, 0] == 0


def test_read_16_bit_colour_png(tmp_path):
    bgr16 = face_like(3, channels=3).astype(np.uint16) * 257
    image = read_image(write_image(tmp_path / "deep.png", bgr16))
    np.testing.assert_array_equal(image, (bgr16 // 257).astype(np.uint8))


def test_read_applies_exif_orientation(tmp_path):
    # Stored 40 wide x 20 tall with a white left quarter; Orientation=6 means
    # "rotate 90 degrees clockwise to display", so the white part ends up on top.
    stored = np.zeros((20, 40, 3), np.uint8)
    stored[:, :10] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rotated.jpg"
    Image.fromarray(stored).save(path, exif=exif.tobytes(), quality=95)
    image = read_image(path)
    assert image.shape == (40, 20, 3)
    assert image[:8].mean() > 240
    assert image[12:].mean() < 15


def test_read_cmyk_jpeg_gives_bgr(tmp_path):
    path = tmp_path / "cmyk.jpg"
    # Pure cyan (R=0, G=255, B=255) stored as CMYK.
    Image.new("RGB", (16, 12), (0, 255, 255)).convert("CMYK").save(path, quality=95)
    assert Image.open(path).mode == "CMYK"
    image = read_image(path)
    assert image.shape == (12, 16, 3)
    blue, green, red = (image[..., i].mean() for i in range(3))
    assert blue > 240 and green > 240 and red < 15


def test_read_refuses_images_over_max_pixels(tmp_path):
    path = write_image(tmp_path / "big.png", face_like(0, size=100))
    assert read_image(path, max_pixels=10_000).shape == (100, 100, 3)
    with pytest.raises(ImageReadError, match="exceeds"):
        read_image(path, max_pixels=9_999)


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("empty.jpg", b"", "empty file"),
        ("junk.jpg", b"\x00\x01junk" * 50, "not a decodable"),
        ("junk.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "not a decodable"),
    ],
)
def test_read_bad_bytes_raises_naming_the_file(tmp_path, name, data, message):
    path = tmp_path / name
    path.write_bytes(data)
    with pytest.raises(ImageReadError, match=message) as caught:
        read_image(path)
    assert str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_read_truncated_jpeg(tmp_path):
    data = _jpeg_bytes(0, size=96)
    full = tmp_path / "full.jpg"
    full.write_bytes(data)
    assert read_image(full).shape == (96, 96, 3)
    for cut in (len(data) // 2, len(data) - 2):
        half = tmp_path / f"cut{cut}.jpg"
        half.write_bytes(data[:cut])
        with pytest.raises(ImageReadError, match=str(half.name)):
            read_image(half)


def test_read_missing_file_and_folder(tmp_path):
    with pytest.raises(ImageReadError, match="no such file"):
        read_image(tmp_path / "gone.png")
    with pytest.raises(ImageReadError, match="folder"):
        read_image(tmp_path)


# ----------------------------------------------------------------------------
# The reader's fences
# ----------------------------------------------------------------------------


def test_read_refuses_from_the_header_before_decoding(tmp_path):
    from hostile import png_bytes

    path = tmp_path / "bomb.png"
    path.write_bytes(png_bytes(100_000, 100_000))  # 69 bytes declaring 10^10 pixels
    with pytest.raises(ImageReadError, match="10,000,000,000 pixels") as caught:
        read_image(path)
    assert not caught.value.corrupt  # over the limit is not corrupt: never deleted


def test_read_reduces_an_oversized_jpeg_only_when_asked(tmp_path):
    path = write_image(tmp_path / "photo.jpg", face_like(0, size=400))
    with pytest.raises(ImageReadError, match="exceeds the 40,000-pixel limit"):
        read_image(path, max_pixels=40_000)
    assert read_image(path, max_pixels=40_000, reduce=True).shape == (200, 200, 3)  # 1/2: 40,000 pixels
    assert read_image(path, max_pixels=3_000, reduce=True).shape == (50, 50, 3)  # 1/8
    with pytest.raises(ImageReadError, match="exceeds"):
        read_image(path, max_pixels=2_000, reduce=True)  # 1/8 is still too large
    png = write_image(tmp_path / "photo.png", face_like(0, size=400))
    with pytest.raises(ImageReadError, match="exceeds"):
        read_image(png, max_pixels=40_000, reduce=True)  # only JPEG decoders can skip pixels


@pytest.mark.parametrize("tail", [b"\0" * 4096, b"\x00\x00\x00\x18ftypmp42" + b"\xff\xd8\x11" * 500],
                         ids=["padding", "motion-photo clip"])
def test_bytes_after_the_jpeg_end_marker_are_not_truncation(tmp_path, tail):
    data = _jpeg_bytes(4, size=96)
    path = tmp_path / "photo.jpg"
    path.write_bytes(data + tail)
    np.testing.assert_array_equal(read_image(path), cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR))


def test_a_tiny_jpeg_declaring_a_huge_frame_is_refused(tmp_path):
    from hostile import jpeg_with_size

    path = tmp_path / "bomb.jpg"
    path.write_bytes(jpeg_with_size(7000, 7000, _jpeg_bytes(0)))  # 49 Mpx, within the limit, in 2 KB
    with pytest.raises(ImageReadError, match="holds only"):
        read_image(path)


def test_images_of_formats_emorec_does_not_read_are_refused_but_not_corrupt(tmp_path):
    ppm = tmp_path / "photo.jpg"
    Image.fromarray(face_like(0, channels=3)).save(ppm, format="PPM")
    heic = tmp_path / "phone.jpg"
    heic.write_bytes(b"\0\0\0\x18ftypheic" + b"\0" * 100)
    for path, name in ((ppm, "PPM"), (heic, "HEIF")):
        with pytest.raises(ImageReadError, match=name) as caught:
            read_image(path)
        assert not caught.value.corrupt


def test_read_refuses_what_is_not_a_regular_file_without_opening_it(tmp_path):
    fifo = tmp_path / "fifo.jpg"
    os.mkfifo(fifo)  # opening it for reading would wait for a writer forever
    (tmp_path / "loop.jpg").symlink_to(tmp_path / "loop.jpg")
    (tmp_path / "gone.jpg").symlink_to(tmp_path / "nothing-here.jpg")
    for name, reason in (("fifo.jpg", "FIFO"), ("loop.jpg", "link loop"), ("gone.jpg", "dangling")):
        with pytest.raises(ImageReadError, match=reason):
            read_image(tmp_path / name)


def test_opencv_refuses_what_the_header_check_would_even_if_bypassed(tmp_path):
    """OPENCV_IO_MAX_IMAGE_PIXELS, set by `import emorec` before OpenCV loads, is the second fence."""
    import subprocess
    import sys

    from hostile import decompressing_png

    path = tmp_path / "big.png"
    path.write_bytes(decompressing_png(8001, 8000))  # 64,008,000 pixels: just over images.MAX_PIXELS
    code = ("import sys, emorec, cv2, numpy as np\n"
            "from emorec.images import MAX_PIXELS\n"
            "try:\n"
            "    cv2.imdecode(np.fromfile(sys.argv[1], np.uint8), cv2.IMREAD_UNCHANGED)\n"
            "except cv2.error as error:\n"
            "    print('refused' if 'CV_IO_MAX_IMAGE_PIXELS' in str(error) else error, MAX_PIXELS)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    env.pop("OPENCV_IO_MAX_IMAGE_PIXELS", None)
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env, timeout=60)
    assert done.stdout.split() == ["refused", "64000000"], done.stderr
    assert done.stderr == ""  # OpenCV's own log lines are silenced


# ----------------------------------------------------------------------------
# The byte budget: decoded size from the header, and lean 16-bit conversion
# ----------------------------------------------------------------------------


def test_read_budgets_the_decoded_bytes_from_the_header(tmp_path):
    from hostile import decompressing_png

    deep, shallow = tmp_path / "deep.png", tmp_path / "shallow.png"
    deep.write_bytes(decompressing_png(200, 100, depth=16, colour_type=2))  # 120,000 bytes decoded
    shallow.write_bytes(decompressing_png(200, 100, depth=8, colour_type=2))  # 60,000 bytes, as many pixels
    assert read_image(shallow, max_bytes=100_000).shape == (100, 200, 3)
    with pytest.raises(ImageReadError, match=r"200x100 pixels x 3 channel\(s\) x 2 byte\(s\) decode to "
                                             r"120,000 bytes, over the 100,000 bytes limit") as caught:
        read_image(deep, max_bytes=100_000)
    assert not caught.value.corrupt  # over the budget is not corrupt: never deleted
    assert read_image(deep, max_bytes=120_000).shape == (100, 200, 3)


def test_a_16_bit_8000x8000_png_is_refused_before_any_pixel_is_decoded(tmp_path):
    from hostile import png_bytes

    path = tmp_path / "deep.png"
    path.write_bytes(png_bytes(8000, 8000, depth=16, colour_type=2))  # 64 Mpx, within the pixel limit
    with pytest.raises(ImageReadError, match="decode to 366 MiB, over the 256 MiB limit") as caught:
        read_image(path)
    assert not caught.value.corrupt  # judged from the header: the missing pixel data is never looked at


def test_a_16_bit_png_within_the_budget_is_read_without_large_copies(tmp_path):
    """Peak RSS of a fresh process reading a 16-bit RGB 3000x3000 PNG (54 MB decoded) grows by less than 3x that."""
    import subprocess
    import sys

    from hostile import decompressing_png

    path = tmp_path / "deep.png"
    path.write_bytes(decompressing_png(3000, 3000, depth=16, colour_type=2))
    decoded = 3000 * 3000 * 3 * 2
    code = ("import resource, sys\n"
            "from emorec.images import read_image\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "image = read_image(sys.argv[1])\n"
            "after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "print(image.shape, image.dtype, (after - before) * 1024)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")}
    done = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, env=env, timeout=120)
    shape, dtype, grown = done.stdout.rsplit(" ", 2)
    assert (shape, dtype) == ("(3000, 3000, 3)", "uint8"), done.stderr
    assert int(grown) < 3 * decoded  # the 16-bit array and its 8-bit copy; float64 copies took 9x


def test_a_jpeg_cut_short_and_closed_with_an_end_marker_is_truncated(tmp_path):
    from hostile import cut_jpeg_with_end_marker

    path = tmp_path / "cut.jpg"
    path.write_bytes(cut_jpeg_with_end_marker())
    with pytest.raises(ImageReadError, match="truncated JPEG") as caught:
        read_image(path)
    assert caught.value.corrupt
    assert str(path) in str(caught.value) and "\n" not in str(caught.value)


def test_a_jpeg_with_damaged_coded_data_but_all_of_it_still_reads(tmp_path):
    from hostile import _scrambled_jpeg

    path = tmp_path / "scrambled.jpg"
    path.write_bytes(_scrambled_jpeg())  # libjpeg warns of extraneous bytes, not of missing ones
    assert read_image(path).shape == (96, 96, 3)


@pytest.mark.parametrize("name, pixels", [
    ("gray16.tif", np.full((40, 50), 40000, np.uint16)),
    ("colour16.tif", np.full((40, 50, 3), 40000, np.uint16)),
    ("float.tif", np.full((40, 50), 0.5, np.float32)),
    ("gray16.png", np.full((40, 50), 40000, np.uint16)),
], ids=["16-bit gray TIFF", "16-bit colour TIFF", "float TIFF", "16-bit gray PNG"])
def test_the_budget_counts_each_format_as_it_decodes(tmp_path, name, pixels):
    path = tmp_path / name
    Image.fromarray(pixels).save(path) if pixels.dtype == np.float32 else write_image(path, pixels)
    decoded = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_UNCHANGED).nbytes
    assert read_image(path, max_bytes=decoded).shape == (40, 50, 3)
    with pytest.raises(ImageReadError, match="limit for one decoded image"):
        read_image(path, max_bytes=decoded - 1)
