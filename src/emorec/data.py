"""Data preparation: scan class folders, validate images, set bad files aside, load.

A dataset is a folder with one sub-folder per class (`happy/`, `sad/`, ...).
`scan_dataset` checks every file with `read_image`, the one reader that every
command uses: a file must be a regular file of an image type, its header must
declare a size within the limit, and it must decode. Files of other types
(notes, README files) are listed as documents and left alone. Nothing is
moved or deleted unless the caller asks (`quarantine` / `delete_files`), and
then only corrupt image files inside the data folder.
"""

from __future__ import annotations

import io
import lzma
import os
import re
import shutil
import tempfile
import threading
import warnings
import zipfile
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np

from emorec.files import InputFileError, atomic_open, check_output_path, read_limited, stat_regular
from emorec.preprocess import to_bgr8, to_model_input

# Every extension read as an image, in folders and file lists alike. Training reads
# them through a clean view of PNGs (`clean_view`), so TensorFlow's own list does not matter.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jfif", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
MAX_PIXELS = 64_000_000  # larger images are refused from their header, never decoded (decompression bombs)
MAX_FILE_BYTES = 256 * 2**20  # a larger file is refused without being read
MAX_PACK_BYTES = 8 * 2**30  # the arrays a pack may declare (its splits read at once); FER2013 at 48x48 is 83 MB
MAX_CLASSES = 1000  # in a pack or a label file: more is a broken file, not a dataset
_PACK_MEMBER = re.compile(r"^(\w+)_(images|labels)\.npy$")
_MAX_PACK_MEMBERS = 64
_MAX_NAME = 256  # characters of a class name in a pack
# Formats as Pillow names them in a header, and the name emorec gives them (MPO: a multi-picture JPEG).
_FORMATS = {"JPEG": "JPEG", "MPO": "JPEG", "PNG": "PNG", "GIF": "GIF", "BMP": "BMP", "DIB": "BMP",
            "TIFF": "TIFF", "WEBP": "WebP"}
_REDUCED_JPEG = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4,
                 8: cv2.IMREAD_REDUCED_COLOR_8}
VIEW_PREFIX = "emorec-clean-"  # folder names of clean_view's temporary trees


class ImageReadError(ValueError):
    """An image file could not be read; the message names the file and the reason.

    corrupt is True only when the file is an image file whose content fails
    to decode (empty, truncated, garbage): the only files `--delete` removes.
    """

    def __init__(self, message: str, corrupt: bool = False):
        super().__init__(message)
        self.corrupt = corrupt


class DatasetError(ValueError):
    """A dataset folder is missing, empty or not laid out as class folders."""


@dataclass
class InvalidFile:
    """A file that failed validation and why (corrupt: its content fails to decode)."""

    path: Path
    reason: str
    corrupt: bool = False


@dataclass
class ScanReport:
    """What `scan_dataset` found: valid files per class, invalid files and documents (not images)."""

    root: Path
    files: dict[str, list[Path]] = field(default_factory=dict)
    invalid: list[InvalidFile] = field(default_factory=list)
    documents: list[Path] = field(default_factory=list)

    @property
    def class_names(self) -> list[str]:
        """Class names in the order Keras assigns labels (alphabetical)."""
        return sorted(self.files)

    @property
    def counts(self) -> dict[str, int]:
        """Valid images per class."""
        return {name: len(self.files[name]) for name in self.class_names}

    @property
    def valid_paths(self) -> list[Path]:
        """Every valid image file, class by class."""
        return [path for name in self.class_names for path in self.files[name]]

    @property
    def total(self) -> int:
        """Number of valid images."""
        return sum(self.counts.values())

    @property
    def empty_classes(self) -> list[str]:
        """Class folders without a single valid image."""
        return [name for name, count in self.counts.items() if count == 0]

    def table(self) -> str:
        """A printable table of images per class."""
        width = max([len("class")] + [len(n) for n in self.class_names])
        lines = [f"{'class':<{width}}  images"]
        lines += [f"{name:<{width}}  {count:>6}" for name, count in self.counts.items()]
        lines.append(f"{'total':<{width}}  {self.total:>6}")
        return "\n".join(lines)


# ----------------------------------------------------------------------------
# The one image reader
# ----------------------------------------------------------------------------


def read_image(path: str | Path, max_pixels: int = MAX_PIXELS, reduce: bool = False) -> np.ndarray:
    """Read an image file as an 8-bit BGR array, whatever its mode.

    Handles grayscale, RGBA (alpha dropped), 16-bit (scaled to 8 bits), CMYK
    JPEGs and EXIF orientation (OpenCV applies it). The file is checked with
    `stat` before it is opened (regular files of at most MAX_FILE_BYTES) and
    its size is read from the header before it is decoded. An image over
    max_pixels is refused, or with reduce=True (prediction) a JPEG is decoded
    at 1/2, 1/4 or 1/8 of its size to fit. Raises ImageReadError with a
    one-line message naming the file for anything that cannot be read.
    """
    path = Path(path)
    try:
        data = read_limited(path, MAX_FILE_BYTES)
    except InputFileError as error:
        raise ImageReadError(str(error)) from None
    kind, width, height = _header(path, data)
    scale = _scale(path, kind, width, height, max_pixels, reduce)
    if kind == "JPEG":
        _check_jpeg(path, data, width, height)
    return to_bgr8(_decode(path, data, kind, scale))


def _header(path: Path, data: bytes) -> tuple[str, int, int]:
    """(format, width, height) from the header alone; Pillow reads no pixels here."""
    from PIL import Image

    if not data:
        raise ImageReadError(f"{path}: empty file (0 bytes)", corrupt=True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # bomb and corrupt-EXIF warnings: the checks below decide
            with Image.open(io.BytesIO(data)) as image:
                name, (width, height) = image.format, image.size
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
    return _FORMATS[name], width, height


def _other_format(data: bytes) -> str | None:
    """Image containers Pillow does not read, so that they are never taken for corrupt files."""
    if data[4:8] == b"ftyp":
        return "an HEIF/AVIF/MP4"
    if data[:2] == b"\xff\x0a" or data[:12] == b"\0\0\0\x0cJXL \r\n\x87\n":
        return "a JPEG XL"
    return None


def _readable_formats() -> str:
    return ", ".join(dict.fromkeys(_FORMATS.values()))


def _scale(path: Path, kind: str, width: int, height: int, max_pixels: int, reduce: bool) -> int:
    """1, or the JPEG reduction (2, 4, 8) that brings an over-size photo within max_pixels."""
    pixels = width * height
    if pixels <= max_pixels:
        return 1
    if reduce and kind == "JPEG":
        for scale in (2, 4, 8):
            if pixels <= max_pixels * scale * scale:
                return scale
    raise ImageReadError(f"{path}: {width}x{height} pixels exceeds the {max_pixels:,}-pixel limit")


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
        with _quiet_stderr() if kind == "JPEG" else nullcontext():
            image = cv2.imdecode(buffer, flags)
    except cv2.error as error:
        raise ImageReadError(f"{path}: OpenCV cannot decode this {kind} ({_one_line(error)})") from None
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
def _quiet_stderr() -> Iterator[None]:
    """Hide what C libraries write straight to file descriptor 2 (libjpeg's "Corrupt JPEG data" lines)."""
    with _STDERR_LOCK:
        try:
            saved = os.dup(2)
        except OSError:  # no stderr at all: nothing to hide
            yield
            return
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(devnull, 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)


def validate_image(path: str | Path) -> str | None:
    """Return why `path` is not a usable training image, or None if it is."""
    problem = _inspect(Path(path))
    return None if problem is None else problem.reason


def _inspect(path: Path, on_image: Callable[[Path, np.ndarray], None] | None = None) -> InvalidFile | None:
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return InvalidFile(path, f"extension {path.suffix or '(none)'!r} is not one of {', '.join(IMAGE_EXTENSIONS)}")
    try:
        image = read_image(path)
    except ImageReadError as error:
        return InvalidFile(path, str(error).removeprefix(f"{path}: "), error.corrupt)
    if on_image is not None:
        on_image(path, image)
    return None


def scan_dataset(root: str | Path, progress: bool = True,
                 on_image: Callable[[Path, np.ndarray], None] | None = None) -> ScanReport:
    """Walk the class folders under `root` and validate every image file.

    Files without an image extension are listed as documents. Folders that
    cannot be listed are invalid entries. Hidden files and folders
    (".DS_Store", ...) are ignored, and sub-folders that are symbolic links
    are not entered. on_image(path, bgr) is called with every valid image as
    it is decoded, so callers that need the pixels read each file once.
    Raises DatasetError when root is missing or holds no class folders.
    """
    root = Path(root)
    class_dirs = _class_dirs(root)
    report = ScanReport(root=root, files={d.name: [] for d in class_dirs})
    candidates = []
    for class_dir in class_dirs:
        for path in _walk_files(class_dir, report):
            if path.suffix.lower() in IMAGE_EXTENSIONS:
                candidates.append((class_dir.name, path))
            else:
                report.documents.append(path)
    for class_name, path in _progress(candidates, "checking", progress):
        problem = _inspect(path, on_image)
        if problem is None:
            report.files[class_name].append(path)
        else:
            report.invalid.append(problem)
    return report


def _class_dirs(root: Path) -> list[Path]:
    if not root.exists():
        raise DatasetError(f"{root}: no such folder")
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder (expected one sub-folder per class)")
    try:
        dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    except OSError as error:
        raise DatasetError(f"{root}: cannot list the folder ({error.strerror or error})") from None
    if not dirs:
        raise DatasetError(f"{root}: no class folders (expected e.g. {root}/happy/, {root}/sad/)")
    return dirs


def _walk_files(top: Path, report: ScanReport) -> list[Path]:
    """Every visible non-folder entry below top (links, FIFOs and devices included, to be refused by name)."""
    found = []

    def unlisted(error: OSError) -> None:
        report.invalid.append(InvalidFile(Path(error.filename), f"cannot list this folder ({error.strerror or error})"))

    for folder, dirs, names in os.walk(top, onerror=unlisted):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [Path(folder, name) for name in names if not name.startswith(".")]
    return sorted(found)


def _progress(items: list, desc: str, enabled: bool) -> Iterable:
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="file", leave=False)


# ----------------------------------------------------------------------------
# Setting bad files aside
# ----------------------------------------------------------------------------


@dataclass
class Cleanup:
    """What `delete_files` or `quarantine` did: done (deleted files or new places), left alone, failed."""

    done: list[Path] = field(default_factory=list)
    left: list[InvalidFile] = field(default_factory=list)
    failed: list[InvalidFile] = field(default_factory=list)


def quarantine(report: ScanReport, destination: str | Path, extra: Sequence[InvalidFile] = ()) -> Cleanup:
    """Move the corrupt image files of `report` under `destination`, keeping relative paths.

    extra: valid files of the data folder that the caller also sets aside
    (with the reason), e.g. later copies of duplicate images.
    Only files that `_removable` allows are moved; destination must lie outside
    the data folder (inside it would become a new class). Never overwrites: a
    clash gets a numbered name. A file that cannot be moved is reported in
    `failed` and the others are still moved.
    """
    destination = check_output_path(destination, [report.root], folder=True)
    cleanup, moving = _removable(report, extra)
    for item in moving:
        target = _free_path(destination / item.path.relative_to(report.root))
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(item.path, target)
        except OSError as error:
            cleanup.failed.append(InvalidFile(item.path, error.strerror or str(error)))
        else:
            cleanup.done.append(target)
    return cleanup


def _free_path(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}.{n}{path.suffix}")
        n += 1
    return candidate


def delete_files(report: ScanReport, extra: Sequence[InvalidFile] = ()) -> Cleanup:
    """Delete the corrupt image files of `report`, and `extra` as in `quarantine`, that `_removable` allows."""
    cleanup, deleting = _removable(report, extra)
    for item in deleting:
        try:
            item.path.unlink()
        except OSError as error:
            cleanup.failed.append(InvalidFile(item.path, error.strerror or str(error)))
        else:
            cleanup.done.append(item.path)
    return cleanup


def _removable(report: ScanReport, extra: Sequence[InvalidFile] = ()) -> tuple[Cleanup, list[InvalidFile]]:
    """Split the invalid files (and extra) into those a delete or move may touch and a Cleanup listing the rest.

    Only regular files whose content fails to decode (or that the caller
    named in extra), reached without passing a symbolic link, inside the
    resolved data folder. Valid images of other formats, images over the size
    limit, unreadable files, links, FIFOs and devices are left alone, as are
    documents (never in `invalid`).
    """
    root = report.root.resolve()
    cleanup, allowed = Cleanup(), []
    for item in [*report.invalid, *(InvalidFile(e.path, e.reason, corrupt=True) for e in extra)]:
        why = _why_left_alone(item, report.root, root)
        if why is None:
            allowed.append(item)
        else:
            cleanup.left.append(InvalidFile(item.path, why))
    return cleanup, allowed


def _why_left_alone(item: InvalidFile, root: Path, resolved_root: Path) -> str | None:
    if not item.corrupt:
        return item.reason
    expected = resolved_root / item.path.parent.relative_to(root)
    if item.path.parent.resolve() != expected:
        return "reached through a symbolic link to a folder outside the data folder"
    if item.path.is_symlink():
        return "a symbolic link, not the file itself"
    return None


# ----------------------------------------------------------------------------
# What training reads
# ----------------------------------------------------------------------------


def clean_view(report: ScanReport, *, image_size: int, channels: int, parent: str | Path | None = None,
               progress: bool = True) -> Path:
    """A temporary class-folder tree holding every valid image as the PNG the model will see.

    Each file is written as `to_model_input(read_image(path), image_size,
    channels)`, losslessly, so Keras' image_dataset_from_directory reads
    exactly what `check` accepted and what prediction feeds the model: no
    decoding, resizing or colour conversion of its own. The user's folder is
    not touched. The view is made inside `parent` (default: the system's
    temporary folder); the caller removes the returned folder when done.
    """
    view = Path(tempfile.mkdtemp(prefix=VIEW_PREFIX, dir=parent))
    try:
        pairs = [(name, index, path) for name in report.class_names for index, path in enumerate(report.files[name])]
        for name in report.class_names:
            (view / name).mkdir()
        for name, index, path in _progress(pairs, "preparing", progress):
            image = to_model_input(read_image(path), image_size, channels)
            _, png = cv2.imencode(".png", image[..., ::-1] if channels == 3 else image)  # PNG stores BGR order
            (view / name / f"{index:06d}.png").write_bytes(png.tobytes())
    except BaseException:
        shutil.rmtree(view, ignore_errors=True)
        raise
    return view


def warn_invalid(report: ScanReport) -> None:
    """Warn once per invalid file that it will be skipped."""
    for item in report.invalid:
        warnings.warn(f"skipping {item.path}: {item.reason}", stacklevel=2)


@dataclass
class ArrayData:
    """Images as one uint8 array (N, H, W, C), integer labels and class names."""

    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def load_arrays(report: ScanReport, image_size: int, channels: int, progress: bool = True) -> ArrayData:
    """Decode the valid files of `report` into memory, resized to image_size."""
    pairs = [(label, path) for label, name in enumerate(report.class_names) for path in report.files[name]]
    images = load_images([path for _, path in pairs], image_size, channels, progress)
    return ArrayData(images, np.array([label for label, _ in pairs], np.int32), report.class_names)


def load_images(paths: list[Path], image_size: int, channels: int, progress: bool = True) -> np.ndarray:
    """Decode files (already checked by scan_dataset) into one uint8 array, as the model takes them."""
    images = [to_model_input(read_image(path), image_size, channels) for path in _progress(paths, "loading", progress)]
    return np.stack(images) if images else np.zeros((0, image_size, image_size, channels), np.uint8)


def fit_arrays(images: np.ndarray, size: int, channels: int) -> np.ndarray:
    """Resize (N, H, W, C) uint8 images to (N, size, size, channels), converting gray <-> RGB as needed."""
    if images.shape[1:] == (size, size, channels):
        return images
    converted = []
    for image in images:
        image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA).reshape(size, size, -1)
        if image.shape[-1] != channels:
            image = np.repeat(image, 3, axis=-1) if channels == 3 else image.mean(axis=-1, keepdims=True)
        converted.append(image.astype(np.uint8))
    return np.stack(converted) if converted else np.zeros((0, size, size, channels), np.uint8)


def check_splits(splits: dict[str, ArrayData | ScanReport], sources: dict[str, str | Path] | None = None) -> None:
    """Raise DatasetError unless every split is non-empty and all splits have the same class names.

    Labels are indices into the class names, so splits with different classes would silently
    mean different things by the same label. `sources` ({split: folder}) names the culprit.
    """
    sources = sources or {}
    first = next(iter(splits))
    for split, data in splits.items():
        where = sources.get(split, f"the {split!r} split")
        if (data.total if isinstance(data, ScanReport) else len(data)) == 0:
            raise DatasetError(f"{where}: no valid images")
        if data.class_names != splits[first].class_names:
            raise DatasetError(f"{where}: classes {data.class_names} differ from {splits[first].class_names} "
                               f"({sources.get(first, first)})")


def save_pack(path: str | Path, splits: dict[str, ArrayData], overwrite: bool = False) -> Path:
    """Write splits ({"train": ..., "val": ...}) to one .npz file (atomically), xz-compressed if it ends in .xz.

    Refuses (DatasetError) splits that are empty or differ in class names.
    """
    path = Path(path)
    check_splits(splits)
    arrays = {"class_names": np.array(next(iter(splits.values())).class_names)}
    for split, data in splits.items():
        arrays[f"{split}_images"] = data.images
        arrays[f"{split}_labels"] = data.labels
    with atomic_open(path, overwrite) as handle:
        with lzma.open(handle, "wb", preset=6) if path.suffix == ".xz" else nullcontext(handle) as stream:
            np.savez(stream, **arrays)
    return path


def load_pack(path: str | Path, splits: Sequence[str] | None = None,
              max_bytes: int = MAX_PACK_BYTES) -> dict[str, ArrayData]:
    """Read a pack written by `save_pack`: {split name: ArrayData}, only the named splits it has (None: all).

    Every member is checked from its .npy header before any array is read (names, dtypes, shapes, and
    that the splits read fit in max_bytes), then labels against the class names; an .xz pack is
    decompressed at most max_bytes far. Raises DatasetError naming the file and the problem.
    """
    path = Path(path)
    with _pack_errors(path), _open_pack(path, max_bytes) as handle, zipfile.ZipFile(handle) as archive:
        layout = _pack_layout(archive)
        wanted = [split for split in layout if splits is None or split in splits]
        _check_pack_bytes(layout, wanted, max_bytes)
        handle.seek(0)
        stored = np.load(handle, allow_pickle=False)
        names = _pack_class_names(stored["class_names"])
        return {split: _pack_split(stored, split, names) for split in wanted}


def pack_splits(path: str | Path) -> list[str]:
    """The split names of a pack, read from its member names (the arrays are not read)."""
    path = Path(path)
    with _pack_errors(path), _open_pack(path, MAX_PACK_BYTES) as handle, zipfile.ZipFile(handle) as archive:
        return list(_pack_layout(archive))


@contextmanager
def _pack_errors(path: Path) -> Iterator[None]:
    """Any failure to read the pack at path as one DatasetError naming it; FIFOs and devices are not opened."""
    try:
        stat_regular(path)
        yield
    except InputFileError as error:
        raise DatasetError(str(error).replace("no such file", "no such pack file")) from None
    except PackError as error:
        raise DatasetError(f"{path}: {error}") from None
    except (zipfile.BadZipFile, lzma.LZMAError, EOFError, OSError, ValueError) as error:
        raise DatasetError(f"{path}: not a pack made by `emorec pack` ({_one_line(error)[:200]})") from None


class PackError(ValueError):
    """A pack member that is not what `emorec pack` writes (the caller names the file)."""


@contextmanager
def _open_pack(path: Path, max_bytes: int) -> Iterator:
    """A seekable binary handle on the pack's zip archive; an .xz pack is refused when it decompresses past
    max_bytes (plus room for headers), counted while streaming, before anything is kept."""
    if path.suffix != ".xz":
        with open(path, "rb") as handle:
            yield handle
        return
    limit, total = max_bytes + 2**20, 0
    with lzma.open(path, "rb") as stream:
        while chunk := stream.read(2**20):
            total += len(chunk)
            if total > limit:
                raise PackError(f"decompresses to more than {limit:,} bytes, over the limit for a pack")
        stream.seek(0)
        yield stream


def _pack_layout(archive: zipfile.ZipFile) -> dict[str, dict[str, tuple]]:
    """{split: {"images": (shape, dtype), "labels": (shape, dtype)}} plus the class_names header, checked."""
    if len(archive.namelist()) > _MAX_PACK_MEMBERS:
        raise PackError(f"{len(archive.namelist()):,} members; a pack has class_names and two per split")
    headers = {name: _npy_header(archive, name) for name in archive.namelist()}
    if "class_names.npy" not in headers:
        raise PackError("no class_names member")
    shape, dtype = headers.pop("class_names.npy")
    if dtype.kind != "U" or len(shape) != 1 or not 2 <= shape[0] <= MAX_CLASSES or dtype.itemsize > 4 * _MAX_NAME:
        raise PackError(f"class_names must be 2 to {MAX_CLASSES} names of at most {_MAX_NAME} characters, "
                        f"not {dtype} of shape {shape}")
    layout: dict[str, dict[str, tuple]] = {}
    for name, header in headers.items():
        match = _PACK_MEMBER.match(name)
        if not match:
            raise PackError(f"unexpected member {name!r} (a pack holds class_names and SPLIT_images, SPLIT_labels)")
        layout.setdefault(match[1], {})[match[2]] = header
    for split, members in layout.items():
        _check_split_headers(split, members)
    if not layout:
        raise PackError("no split (train_images, val_images, ...)")
    return dict(sorted(layout.items()))


def _npy_header(archive: zipfile.ZipFile, name: str) -> tuple[tuple[int, ...], np.dtype]:
    with archive.open(name) as member:
        version = np.lib.format.read_magic(member)
        if version not in ((1, 0), (2, 0)):
            raise PackError(f"{name}: .npy format version {version} is not one `emorec pack` writes")
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(member)
    return tuple(shape), dtype


def _check_split_headers(split: str, members: dict[str, tuple]) -> None:
    if set(members) != {"images", "labels"}:
        raise PackError(f"split {split!r} needs both {split}_images and {split}_labels")
    (shape, dtype), (label_shape, label_dtype) = members["images"], members["labels"]
    sides_ok = len(shape) == 4 and 1 <= shape[1] <= 4096 and 1 <= shape[2] <= 4096
    if dtype != np.uint8 or not sides_ok or shape[3] not in (1, 3):
        raise PackError(f"{split}_images must be uint8 images (N, H, W, 1 or 3), not {dtype} of shape {shape}")
    if label_dtype.kind not in "iu" or len(label_shape) != 1 or label_shape[0] != shape[0]:
        raise PackError(f"{split}_labels must be {shape[0]} whole-number labels, "
                        f"not {label_dtype} of shape {label_shape}")


def _check_pack_bytes(layout: dict[str, dict[str, tuple]], splits: list[str], max_bytes: int) -> None:
    declared = sum(int(np.prod(shape, dtype=object)) * dtype.itemsize
                   for split in splits for shape, dtype in layout[split].values())
    if declared > max_bytes:
        raise PackError(f"its headers declare {declared:,} bytes of arrays, over the {max_bytes:,}-byte limit")


def _pack_class_names(stored: np.ndarray) -> list[str]:
    names = [str(name) for name in stored]
    if any(not name.strip() for name in names) or len(set(names)) != len(names):
        raise PackError(f"class_names must be distinct, non-empty names, not {names[:10]}")
    return names


def _pack_split(stored, split: str, names: list[str]) -> ArrayData:
    labels = stored[f"{split}_labels"]
    if len(labels) and (labels.min() < 0 or labels.max() >= len(names)):
        bad = labels[(labels < 0) | (labels >= len(names))][0]
        raise PackError(f"{split}_labels holds {bad}, not a class index 0..{len(names) - 1}")
    return ArrayData(stored[f"{split}_images"], labels.astype(np.int32), names)


def is_pack(path: str | Path) -> bool:
    """True when `path` names a .npz pack rather than a class-folder tree."""
    return str(path).endswith((".npz", ".npz.xz"))
