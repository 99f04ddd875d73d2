"""A corpus of hostile input files, generated on the fly, and a measured CLI runner.

Each family writes one file (or link, FIFO, folder) with an image name and
says what every command should make of it: `valid` (read like any image),
`refused` (one line naming the file; never deleted) or `corrupt` (one line
naming the file; `check --delete` may remove it). Used by tests/test_hostile.py
and benchmarks/hostile.py.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
BOMB_SIDE = 100_000  # 10^10 pixels declared: far over any limit


@dataclass(frozen=True)
class Family:
    """One kind of hostile input: how to make it and what it should be judged."""

    name: str
    make: Callable[[Path], Path]  # writes the input into the given folder and returns its path
    verdict: str  # "valid", "refused" or "corrupt"
    needs_other_user: bool = False  # only unreadable when run without root's override


# ----------------------------------------------------------------------------
# Small valid images of every format
# ----------------------------------------------------------------------------


def face(seed: int = 0, size: int = 48) -> np.ndarray:
    """A gray 8-bit test picture with some structure (so JPEGs have real entropy data)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    return ((xx * 3 + yy * 2) % 256 // 2 + rng.integers(0, 128, (size, size))).astype(np.uint8)


def encoded(suffix: str, image: np.ndarray | None = None) -> bytes:
    """A small valid image in the format of suffix (.jpg, .png, .gif, .bmp, .tif, .webp)."""
    image = face() if image is None else image
    if suffix == ".gif":
        import io

        from PIL import Image

        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format="GIF")
        return buffer.getvalue()
    ok, data = cv2.imencode(suffix, image)
    assert ok, suffix
    return data.tobytes()


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


# ----------------------------------------------------------------------------
# Bomb headers: tiny files declaring huge images
# ----------------------------------------------------------------------------


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def png_bytes(width: int, height: int, rows: Callable[[], bytes] | None = None, depth: int = 8,
              colour_type: int = 0) -> bytes:
    """A PNG of width x height (gray 8-bit by default); rows() gives the filtered scanlines (default: a tiny stream)."""
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    idat = zlib.compress(rows() if rows else b"\0" * 64, 9)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", idat) + _png_chunk(b"IEND", b"")


_PNG_CHANNELS = {0: 1, 2: 3, 6: 4}  # PNG colour types: gray, RGB, RGBA


def decompressing_png(width: int, height: int, depth: int = 8, colour_type: int = 0) -> bytes:
    """A complete, valid all-black PNG: a few hundred KB that inflate to width x height x channels x depth/8 bytes."""
    compressor = zlib.compressobj(9)
    row = b"\0" * (width * _PNG_CHANNELS[colour_type] * depth // 8 + 1)
    chunks = [compressor.compress(row) for _ in range(height)] + [compressor.flush()]
    ihdr = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", b"".join(chunks)) + _png_chunk(b"IEND", b"")


def jpeg_with_size(width: int, height: int, data: bytes | None = None) -> bytes:
    """A real JPEG whose frame header is patched to declare width x height."""
    data = bytearray(data or encoded(".jpg"))
    pos = 2
    while data[pos] == 0xFF and not 0xC0 <= data[pos + 1] <= 0xC2:
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    data[pos + 5 : pos + 9] = struct.pack(">HH", height, width)
    return bytes(data)


def gif_bomb() -> bytes:
    """A 40-byte GIF whose screen and frame are 65535 x 65535."""
    screen = b"GIF89a" + struct.pack("<HHBBB", 65535, 65535, 0, 0, 0)
    frame = b"\x2c" + struct.pack("<HHHHB", 0, 0, 65535, 65535, 0)
    return screen + frame + b"\x02\x02\x4c\x01\x00\x3b"


def bmp_bomb() -> bytes:
    """A BMP header declaring 100000 x 100000 24-bit pixels, with none of them present."""
    info = struct.pack("<IiiHHIIiiII", 40, BOMB_SIDE, BOMB_SIDE, 1, 24, 0, 0, 2835, 2835, 0, 0)
    return b"BM" + struct.pack("<IHHI", 14 + len(info) + 16, 0, 0, 14 + len(info)) + info + b"\0" * 16


def tiff_bomb() -> bytes:
    """A little-endian TIFF whose one strip claims 100000 x 100000 gray pixels."""
    entries = [(256, 4, BOMB_SIDE), (257, 4, BOMB_SIDE), (258, 3, 8), (259, 3, 1), (262, 3, 1),
               (273, 4, 8), (278, 4, BOMB_SIDE), (279, 4, 16)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", tag, kind, 1, value) for tag, kind, value in entries)
    return b"II*\0" + struct.pack("<I", 24) + b"\0" * 16 + ifd + b"\0\0\0\0"


def webp_bomb() -> bytes:
    """A lossless WebP header declaring 16384 x 16384 pixels (the format's maximum) and no image data."""
    bits = (16383) | (16383 << 14)
    vp8l = b"\x2f" + struct.pack("<I", bits) + b"\0" * 8
    chunk = b"VP8L" + struct.pack("<I", len(vp8l)) + vp8l
    return b"RIFF" + struct.pack("<I", 4 + len(chunk)) + b"WEBP" + chunk


# ----------------------------------------------------------------------------
# Families
# ----------------------------------------------------------------------------

FORMATS = (".jpg", ".png", ".gif", ".bmp", ".tif", ".webp")


def _bytes(name: str, make: Callable[[], bytes]) -> Callable[[Path], Path]:
    return lambda folder: _write(folder / name, make())


def _fifo(folder: Path) -> Path:
    os.mkfifo(folder / "fifo.jpg")
    return folder / "fifo.jpg"


def _device(folder: Path) -> Path:
    path = folder / "zero.jpg"
    if os.geteuid() == 0:
        os.mknod(path, stat.S_IFCHR | 0o644, os.makedev(1, 5))  # the same device as /dev/zero
    else:
        path.symlink_to("/dev/zero")
    return path


def _loop(folder: Path) -> Path:
    (folder / "loop-a.jpg").symlink_to("loop-b.jpg")
    (folder / "loop-b.jpg").symlink_to("loop-a.jpg")
    return folder / "loop-a.jpg"


def _dangling(folder: Path) -> Path:
    (folder / "dangling.jpg").symlink_to(folder / "gone.jpg")
    return folder / "dangling.jpg"


def _folder_named_jpg(folder: Path) -> Path:
    (folder / "album.jpg").mkdir()
    (folder / "album.jpg" / "readme.txt").write_text("a folder, not a photo\n")
    return folder / "album.jpg"


def _unreadable(folder: Path) -> Path:
    path = _write(folder / "locked.jpg", encoded(".jpg"))
    path.chmod(0)
    return path


def _unreadable_folder(folder: Path) -> Path:
    inner = folder / "locked-folder"
    inner.mkdir()
    _write(inner / "inside.jpg", encoded(".jpg"))
    inner.chmod(0)
    return inner


def _sparse(folder: Path) -> Path:
    path = folder / "sparse.jpg"
    with open(path, "wb") as handle:
        handle.write(encoded(".jpg")[:20])
        handle.truncate(4 * 2**30)
    return path


def _motion_photo() -> bytes:
    # A phone's motion photo: the still JPEG, then the MP4 clip appended after the end marker.
    clip = struct.pack(">I", 24) + b"ftypmp42" + b"\0" * 12 + np.random.default_rng(1).bytes(4000)
    return encoded(".jpg") + clip


def _name_with_escapes(folder: Path) -> Path:
    return _write(folder / "\x1b[2J\x1b[31mred\x07.jpg", b"not an image")


def _name_not_utf8(folder: Path) -> Path:
    raw = os.fsencode(folder) + b"/caf\xe9-\xff.jpg"
    with open(raw, "wb") as handle:
        handle.write(b"not an image")
    return Path(os.fsdecode(raw))


def families() -> list[Family]:
    """Every hostile family, in a stable order."""
    found = [
        Family("bomb header PNG", _bytes("bomb.png", lambda: png_bytes(BOMB_SIDE, BOMB_SIDE)), "refused"),
        Family("bomb header JPEG", _bytes("bomb.jpg", lambda: jpeg_with_size(65500, 65500)), "refused"),
        Family("bomb header GIF", _bytes("bomb.gif", gif_bomb), "refused"),
        Family("bomb header BMP", _bytes("bomb.bmp", bmp_bomb), "refused"),
        Family("bomb header TIFF", _bytes("bomb.tif", tiff_bomb), "refused"),
        Family("bomb header WebP", _bytes("bomb.webp", webp_bomb), "refused"),
        Family("decompressing PNG 12000x12000", _bytes("huge.png", lambda: decompressing_png(12000, 12000)), "refused"),
        Family("decompressing PNG 6000x6000 (accepted)", _bytes("large.png", lambda: decompressing_png(6000, 6000)), "valid"),
        Family("sparse 4 GiB .jpg", _sparse, "refused"),
        Family("FIFO named .jpg", _fifo, "refused"),
        Family("device named .jpg", _device, "refused"),
        Family("symlink loop", _loop, "refused"),
        Family("dangling symlink", _dangling, "refused"),
        Family("folder named .jpg", _folder_named_jpg, "refused"),
        Family("unreadable file", _unreadable, "refused", needs_other_user=True),
        Family("unreadable folder", _unreadable_folder, "refused", needs_other_user=True),
        Family("motion photo JPEG", _bytes("motion.jpg", _motion_photo), "valid"),
        Family("padded JPEG", _bytes("padded.jpg", lambda: encoded(".jpg") + b"\0" * 4096 + b"\xff\xd8junk"), "valid"),
        Family("WebP named .jpg", _bytes("webp-inside.jpg", lambda: encoded(".webp")), "valid"),
        Family("JPEG corrupt entropy data", _bytes("scrambled.jpg", _scrambled_jpeg), "valid"),
        Family("escape sequences in name", _name_with_escapes, "corrupt"),
        Family("non-UTF-8 name", _name_not_utf8, "corrupt"),
    ]
    for suffix in FORMATS:
        kind = suffix[1:].upper()
        found.append(Family(f"0-byte {kind}", _bytes(f"empty{suffix}", lambda: b""), "corrupt"))
        found.append(Family(f"truncated {kind}", _bytes(f"cut{suffix}", _truncated(suffix)), "corrupt"))
        found.append(Family(f"valid {kind}", _bytes(f"ok{suffix}", lambda s=suffix: encoded(s)), "valid"))
    found += [
        Family("Radiance HDR named .jpg", _bytes("sunset.jpg", lambda: _float_image(".hdr")), "refused"),
        Family("PFM named .gif", _bytes("depth.gif", lambda: _float_image(".pfm")), "refused"),
        Family("self-looping symlink", _self_loop, "refused"),
        Family("JPEG cut at 90% with an end marker", _bytes("cut-closed.jpg", cut_jpeg_with_end_marker), "corrupt"),
        Family("16-bit RGB PNG 8000x8000 (366 MiB decoded)",
               _bytes("deep-rgb.png", lambda: decompressing_png(8000, 8000, depth=16, colour_type=2)), "refused"),
        Family("16-bit gray PNG 8000x8000 (accepted)",
               _bytes("deep-gray.png", lambda: decompressing_png(8000, 8000, depth=16)), "valid"),
    ]
    return found


def _float_image(suffix: str) -> bytes:
    """A valid floating-point image that OpenCV decodes and emorec's reader does not (.hdr, .pfm)."""
    ok, data = cv2.imencode(suffix, face().astype(np.float32)[..., None].repeat(3, axis=2) / 255)
    assert ok, suffix
    return data.tobytes()


def _self_loop(folder: Path) -> Path:
    (folder / "self.jpg").symlink_to("self.jpg")
    return folder / "self.jpg"


def cut_jpeg_with_end_marker() -> bytes:
    """A JPEG cut at 90% of its bytes and closed with an end-of-image marker, as a copy cut short and repaired."""
    data = encoded(".jpg", face(3, 96))
    return data[: len(data) * 9 // 10] + b"\xff\xd9"


def _truncated(suffix: str) -> Callable[[], bytes]:
    def make() -> bytes:
        data = encoded(suffix, face(3, 96))
        return data[: len(data) // 2]

    return make


def _scrambled_jpeg() -> bytes:
    data = bytearray(encoded(".jpg", face(5, 96)))
    start = data.index(b"\xff\xda") + 20
    for pos in range(start, len(data) - 2, 7):
        if 0xFF not in (data[pos], data[pos - 1], data[pos] ^ 0x5A):
            data[pos] ^= 0x5A
    return bytes(data)


def family_by_name(name: str) -> Family:
    """The family with this name."""
    return next(family for family in families() if family.name == name)


# ----------------------------------------------------------------------------
# Running the CLI with time and peak memory measured
# ----------------------------------------------------------------------------


@dataclass
class Run:
    """What one CLI call did."""

    returncode: int
    stdout: str
    stderr: str
    seconds: float
    peak_mib: float


def as_other_user() -> list[str] | None:
    """A command prefix that drops root's permission override (setpriv to nobody), [] if not root, None if impossible."""
    if os.geteuid() != 0:
        return []
    if not Path("/usr/bin/setpriv").exists():
        return None
    return ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]


def run_cli(args: list[str], timeout: float = 120, prefix: list[str] | None = None, cwd: Path | None = None) -> Run:
    """Run `python -m emorec ARGS` from this checkout, measured (see `measured`)."""
    return measured([*(prefix or []), sys.executable, "-m", "emorec", *args], cwd or Path.cwd(), timeout)


# Peak RSS survives exec on Linux, so a child forked from a large test process
# would report the parent's size: the command is forked from this small Python instead.
_TRAMPOLINE = """
import json, os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as report:
    json.dump([os.waitstatus_to_exitcode(status), usage.ru_maxrss], report)
"""


def measured(argv: list[str], cwd: Path, timeout: float = 300) -> Run:
    """Run argv with this checkout's emorec, measuring its wall time and its own peak RSS; killed after timeout."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "src"), "TF_CPP_MIN_LOG_LEVEL": "3", "MPLBACKEND": "Agg",
           "PYTHONIOENCODING": "utf-8:strict", "LC_ALL": "C.UTF-8", "HOME": str(cwd)}
    out_path, err_path, report = (cwd / f".run-{os.getpid()}-{name}" for name in ("out", "err", "json"))
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        start = time.perf_counter()
        process = subprocess.Popen([sys.executable, "-c", _TRAMPOLINE, str(report), *argv], stdout=out, stderr=err,
                                   stdin=subprocess.DEVNULL, env=env, cwd=cwd, start_new_session=True)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
        seconds = time.perf_counter() - start
    returncode, peak_kib = json.loads(report.read_text()) if report.exists() else (-9, 0)
    stdout, stderr = (p.read_bytes().decode("utf-8", "replace") for p in (out_path, err_path))
    for path in (out_path, err_path, report):
        path.unlink(missing_ok=True)
    return Run(returncode, stdout, stderr, seconds, peak_kib / 1024)


# ----------------------------------------------------------------------------
# Trees for the commands that read class folders
# ----------------------------------------------------------------------------


def open_workdir(prefix: str = "emorec-hostile-") -> Path:
    """A fresh folder that another user (nobody) can read and write, outside root-only temp folders."""
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix=prefix))
    folder.chmod(0o777)
    return folder


def build_tree(root: Path, chosen: list[Family], valid_per_class: int = 2) -> dict[str, Path]:
    """Class folders happy/ and sad/ with valid faces, each family's input in sad/; {family name: its path}."""
    for index, name in enumerate(("happy", "sad")):
        (root / name).mkdir(parents=True)
        for i in range(valid_per_class):
            (root / name / f"face{i}.jpg").write_bytes(encoded(".jpg", face(10 * index + i)))
    made = {}
    for number, family in enumerate(chosen):
        folder = root / "sad" / f"f{number:02d}"  # one sub-folder each: names like empty.jpg repeat
        folder.mkdir()
        made[family.name] = family.make(folder)
    return made


def link_outside_class(root: Path, outside: Path) -> Path:
    """A class folder that is a symbolic link to a folder outside root, holding a corrupt image."""
    outside.mkdir(parents=True)
    (outside / "face.jpg").write_bytes(encoded(".jpg", face(7)))
    (outside / "broken.jpg").write_bytes(b"not an image")
    (root / "linked").symlink_to(outside, target_is_directory=True)
    return outside / "broken.jpg"


def privileges_droppable(cwd: Path) -> str | None:
    """None when commands can run as another user here, else why not."""
    prefix = as_other_user()
    if prefix is None:
        return "running as root without setpriv"
    if not prefix:
        return None
    done = run_cli(["--version"], timeout=60, prefix=prefix, cwd=cwd)
    return None if done.returncode == 0 else f"nobody cannot run emorec from this checkout: {done.stderr.strip()[-200:]}"
