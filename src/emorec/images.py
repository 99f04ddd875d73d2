"""The one image reader: `read_image` turns any image file into an 8-bit BGR array, or one line saying why not.

Every command reads images through it (training data, prediction, the
service, explanations, duplicate search): a file must be a regular file of
at most MAX_FILE_BYTES, its header must declare a size within the limit, and
it must decode. It needs only Pillow (headers), OpenCV and NumPy.
"""

from __future__ import annotations

import io
import os
import re
import threading
import warnings
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from emorec.errors import EmorecError
from emorec.files import InputFileError, read_limited
from emorec.preprocess import to_bgr8, to_uint8

# Every extension read as an image, in folders and file lists alike. Training reads
# them through a clean view of PNGs (`clean_view`), so TensorFlow's own list does not matter.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
MAX_PIXELS = 64_000_000  # larger images are refused from their header, never decoded (decompression bombs)
MAX_FILE_BYTES = 256 * 2**20  # a larger file is refused without being read
# Decoded size (width x height x channels x bytes per sample, from the header) over which an
# image is refused. It covers every 8-bit image within MAX_PIXELS (64 Mpx RGBA: 244 MiB);
# OpenCV hands its decoded array over as a copy, so reading peaks near twice the decoded
# size (measured: a 16-bit gray 8000x8000 PNG, 122 MiB decoded, takes `check` to 300 MiB;
# a 16-bit RGB one, 366 MiB decoded, took it to 3.3 GB before this limit).
MAX_DECODED_BYTES = 256 * 2**20
# Formats as Pillow names them in a header, and the name emorec gives them (MPO: a multi-picture JPEG).
_FORMATS = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "GIF": "GIF", "BMP": "BMP", "DIB": "BMP",
            "TIFF": "TIFF", "WEBP": "WebP"}
_REDUCED_JPEG = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                 8: cv2.IMREAD_REDUCED_COLOR_8}


@dataclass(frozen=True)
class _Header:
    """What an image file's header says: its format, size and the layout OpenCV decodes it to."""

    kind: str
    width: int
    height: int
    channels: int  # of the decoded array (at most: palettes and gray + alpha count as 4)
    sample_bytes: int  # 1 for 8-bit images, 2 for 16-bit PNG/TIFF, 4 or 8 for float TIFF


class ImageReadError(EmorecError, ValueError):
    """An image file could not be read; the message names the file and the reason.

    corrupt is True only when the file is an image file whose content fails
    to decode (empty, truncated, garbage): the only files `--delete` removes.
    """

    def __init__(self, message: str, corrupt: bool = False):
        super().__init__(message)
        self.corrupt = corrupt


def read_image(path: str | Path, max_pixels: int = MAX_PIXELS, reduce: bool = False, *,
               max_bytes: int = MAX_DECODED_BYTES) -> np.ndarray:
    """Read an image file as an 8-bit BGR array, whatever its mode.

    Handles grayscale, RGBA (alpha dropped), 16-bit (scaled to 8 bits), CMYK
    JPEGs and EXIF orientation (OpenCV applies it). The file is checked with
    `stat` before it is opened (regular files of at most MAX_FILE_BYTES) and
    its size and sample layout are read from the header before it is decoded.
    An image over max_pixels is refused (with reduce=True, for prediction, a
    JPEG is decoded at 1/2, 1/4 or 1/8 of its size to fit instead), and so is
    one whose decoded array (width x height x channels x bytes per sample)
    would take more than max_bytes. Raises ImageReadError with a one-line
    message naming the file for anything that cannot be read.
    """
    path = Path(path)
    try:
        data = read_limited(path, MAX_FILE_BYTES)
    except InputFileError as error:
        raise ImageReadError(str(error)) from None
    header = _header(path, data)
    scale = _scale(path, header, max_pixels, reduce)
    _check_budget(path, header, scale, max_bytes)
    if header.kind == "JPEG":
        _check_jpeg(path, data, header.width, header.height)
    image = _decode(path, data, header.kind, scale)
    del data  # the file's bytes are not needed for the conversions
    image = to_uint8(image)  # a 16-bit or float array is freed before the BGR copy is made
    return to_bgr8(image)


def _header(path: Path, data: bytes) -> _Header:
    """Format, size and decoded layout from the header alone; Pillow reads no pixels here."""
    from PIL import Image

    if not data:
        raise ImageReadError(f"{path}: empty file (0 bytes)", corrupt=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # bomb and corrupt-EXIF warnings: the checks below decide
            with Image.open(io.BytesIO(data)) as image:
                name, (width, height) = image.format, image.size
                layout = _tiff_layout(image) if name == "TIFF" else None
    except Image.DecompressionBombError as error:
        declared = re.search(r"\((\d+) pixels\)", str(error))
        pixels = f"{int(declared[1]):,}" if declared else "too many"
        raise ImageReadError(f"{path}: header declares {pixels} pixels, over the {MAX_PIXELS:,}-pixel limit") from None
    except Exception:  # noqa: BLE001 - Pillow's parsers raise many types on hostile bytes; all mean "unreadable"
        other = _other_format(data)
        if other:
            raise ImageReadError(f"{path}: {other} file, not one of {_readable_formats()}") from None
        raise ImageReadError(f"{path}: not a decodable image (corrupt, truncated or another format)", corrupt=True) from None
    if name not in _FORMATS:
        raise ImageReadError(f"{path}: a {name} image, not one of {_readable_formats()}")
    kind = _FORMATS[name]
    if kind == "PNG":
        layout = _png_layout(data)
    return _Header(kind, width, height, *(layout or (3 if kind == "JPEG" else 4, 1)))


_PNG_CHANNELS = {0: 1, 2: 3}  # gray, RGB; palettes (3), gray + alpha (4) and RGBA (6) may decode to 4


def _png_layout(data: bytes) -> tuple[int, int]:
    """(channels, bytes per sample) from the IHDR chunk, which the PNG format puts first."""
    depth, colour_type = data[24], data[25]
    return _PNG_CHANNELS.get(colour_type, 4), 2 if depth == 16 else 1


def _tiff_layout(image) -> tuple[int, int]:
    """(channels, bytes per sample) from a TIFF's tags: its samples per pixel and their bits."""
    tags = image.tag_v2
    samples = int(tags.get(277, 1))
    bits = tags.get(258, (8,))
    bits = max(bits) if isinstance(bits, tuple) else int(bits)
    gray = samples == 1 and tags.get(262, 1) in (0, 1)  # photometric: white or black is zero
    return (1 if gray else max(samples, 3)), max(1, -(-bits // 8))


def _other_format(data: bytes) -> str | None:
    """Image containers Pillow does not read, so that they are never taken for corrupt files.

    OpenCV decodes some of them (Radiance HDR, PFM), but emorec's reader
    does not: every command refuses them alike, and `check --delete` leaves them.
    """
    if data[4:8] == b"ftyp":
        return "an HEIF/AVIF/MP4"
    if data[:2] == b"\xff\x0a" or data[:12] == b"\0\0\0\x0cJXL \r\n\x87\n":
        return "a JPEG XL"
    if data.startswith((b"#?RADIANCE", b"#?RGBE")):
        return "a Radiance HDR"
    if data[:2] in (b"PF", b"Pf") and data[2:3].isspace():
        return "a PFM (floating-point)"
    if data[:4] == b"v/1\x01":
        return "an OpenEXR"
    return None


def _readable_formats() -> str:
    return ", ".join(dict.fromkeys(_FORMATS.values()))


def _scale(path: Path, header: _Header, max_pixels: int, reduce: bool) -> int:
    """1, or the JPEG reduction (2, 4, 8) that brings an over-size photo within max_pixels."""
    pixels = header.width * header.height
    if pixels <= max_pixels:
        return 1
    if reduce and header.kind == "JPEG":
        for scale in (2, 4, 8):
            if pixels <= max_pixels * scale * scale:
                return scale
    raise ImageReadError(f"{path}: {header.width}x{header.height} pixels exceeds the {max_pixels:,}-pixel limit")


def _check_budget(path: Path, header: _Header, scale: int, max_bytes: int) -> None:
    """Refuse an image whose decoded array (at 1/scale) would take more than max_bytes."""
    width, height = -(-header.width // scale), -(-header.height // scale)
    decoded = width * height * header.channels * header.sample_bytes
    if decoded > max_bytes:
        raise ImageReadError(f"{path}: {width}x{height} pixels x {header.channels} channel(s) x "
                             f"{header.sample_bytes} byte(s) decode to {_amount(decoded)}, over the "
                             f"{_amount(max_bytes)} limit for one decoded image")


def _amount(size: int) -> str:
    return f"{size / 2**20:,.0f} MiB" if size >= 2**20 else f"{size:,} bytes"


def _check_jpeg(path: Path, data: bytes, width: int, height: int) -> None:
    frame, end = _jpeg_layout(data)
    # OpenCV decodes a truncated JPEG into a half-grey picture without failing.
    # The end marker is looked for after the last scan, so bytes appended after it
    # (motion photos, padding) do not count.
    if end is None:
        raise ImageReadError(f"{path}: truncated JPEG (its data stops before the end-of-image marker)", corrupt=True)
    # Huffman-coded data needs at least one bit per 8x8 block: a tiny file declaring
    # a huge frame is a decompression bomb, not a photo.
    if frame in _HUFFMAN_FRAMES and end * 8 < ((width + 7) // 8) * ((height + 7) // 8):
        raise ImageReadError(f"{path}: JPEG header declares {width}x{height} pixels, but the file holds only "
                             f"{len(data):,} bytes", corrupt=True)


_HUFFMAN_FRAMES = (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7)


def _jpeg_layout(data: bytes) -> tuple[int | None, int | None]:
    """(frame marker, offset just after the end-of-image marker that ends the last scan or None)."""
    pos, frame, size = 2, None, len(data)
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= size:
            return frame, None
        marker = data[pos + 1]
        if marker == 0xD9:
            return frame, pos + 2
        if marker in (0x00, 0x01, 0xFF) or 0xD0 <= marker <= 0xD8:
            pos += 1 if marker == 0xFF else 2
            continue
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            frame = marker
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == 0xDA:
            pos = _entropy_end(data, pos)


def _entropy_end(data: bytes, pos: int) -> int:
    """Offset of the first marker after entropy-coded data (0xFF00 stuffing and restart markers skipped)."""
    while True:
        pos = data.find(b"\xff", pos)
        if pos < 0 or pos + 1 >= len(data):
            return len(data)
        following = data[pos + 1]
        if following == 0x00 or 0xD0 <= following <= 0xD7:
            pos += 2
        elif following == 0xFF:
            pos += 1
        else:
            return pos


def _decode(path: Path, data: bytes, kind: str, scale: int) -> np.ndarray:
    buffer = np.frombuffer(data, np.uint8)
    # JPEG: IMREAD_COLOR applies the EXIF orientation and converts CMYK.
    flags = _REDUCED_JPEG[scale] if kind == "JPEG" else cv2.IMREAD_UNCHANGED
    try:
        # Only JPEG decoding is serialised to catch libjpeg's lines: other formats decode in parallel.
        with _decoder_messages() if kind == "JPEG" else nullcontext([]) as messages:
            image = cv2.imdecode(buffer, flags)
    except cv2.error as error:
        raise ImageReadError(f"{path}: OpenCV cannot decode this {kind} ({_one_line(error)})") from None
    # libjpeg's warning when the coded data runs out before the image is complete: the rows it
    # had no data for come out flat grey, even when an end marker follows the cut.
    if any("premature end of data segment" in message for message in messages):
        raise ImageReadError(f"{path}: truncated JPEG (its coded data stops before the last rows)", corrupt=True)
    if image is None or image.size == 0:
        if _pillow_decodes(data):
            raise ImageReadError(f"{path}: a {kind} variant that OpenCV cannot decode")
        raise ImageReadError(f"{path}: not a decodable image (corrupt, truncated or another format)", corrupt=True)
    return image


def _pillow_decodes(data: bytes) -> bool:
    """Whether Pillow decodes what OpenCV did not: then the file is an unsupported variant, not corrupt."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as image:
                image.load()
    except Exception:  # noqa: BLE001 - any failure means the data is damaged
        return False
    return True


def _one_line(error: BaseException) -> str:
    return " ".join(str(error).split())


_STDERR_LOCK = threading.Lock()


@contextmanager
def _decoder_messages() -> Iterator[list[str]]:
    """Take what C libraries write straight to file descriptor 2 (libjpeg's "Corrupt JPEG data" lines) off the terminal.

    They go to a pipe whose write end never blocks (a full pipe drops the
    rest); once the block is over, the list holds them, lower-cased.
    """
    messages: list[str] = []
    with _STDERR_LOCK:
        try:
            saved = os.dup(2)
        except OSError:  # no stderr at all: nothing to hide
            yield messages
            return
        read_end, write_end = os.pipe()
        os.set_blocking(read_end, False)
        os.set_blocking(write_end, False)
        try:
            os.dup2(write_end, 2)
            yield messages
        finally:
            os.dup2(saved, 2)
            for fd in (saved, write_end):
                os.close(fd)
            messages.append(_drain(read_end))


def _drain(read_end: int) -> str:
    """What is waiting in a non-blocking pipe (up to 64 KiB), lower-cased; the pipe is closed."""
    try:
        return os.read(read_end, 65536).decode("utf-8", "replace").lower()
    except BlockingIOError:  # nothing was written
        return ""
    finally:
        os.close(read_end)
