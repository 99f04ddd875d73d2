"""Data preparation: scan class folders, validate images, set bad files aside, load.

A dataset is a folder with one sub-folder per class (`happy/`, `sad/`, ...).
`scan_dataset` checks every file twice: its extension must be an image type
that Keras' loader reads, and the file must actually decode. Nothing is moved
or deleted unless the caller asks (`quarantine` / `delete_files`).
"""

from __future__ import annotations

import lzma
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable

import cv2
import numpy as np

from emorec.preprocess import to_bgr8, to_model_input

# The formats keras.utils.image_dataset_from_directory decodes.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif")
MAX_PIXELS = 64_000_000  # larger images are refused, not decoded (decompression bombs)
VIEW_PREFIX = "emorec-clean-"  # folder names of clean_view's temporary trees


class ImageReadError(ValueError):
    """An image file could not be read; the message names the file and the reason."""


class DatasetError(ValueError):
    """A dataset folder is missing, empty or not laid out as class folders."""


@dataclass
class InvalidFile:
    """A file that failed validation and why."""

    path: Path
    reason: str


@dataclass
class ScanReport:
    """What `scan_dataset` found: valid files per class and invalid files."""

    root: Path
    files: dict[str, list[Path]] = field(default_factory=dict)
    invalid: list[InvalidFile] = field(default_factory=list)

    @property
    def class_names(self) -> list[str]:
        """Class names in the order Keras assigns labels (alphabetical)."""
        return sorted(self.files)

    @property
    def counts(self) -> dict[str, int]:
        """Valid images per class."""
        return {name: len(self.files[name]) for name in self.class_names}

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


def read_image(path: str | Path, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Read an image file as an 8-bit BGR array, whatever its mode.

    Handles grayscale, RGBA (alpha dropped), 16-bit (scaled to 8 bits), CMYK
    JPEGs and EXIF orientation (OpenCV applies it). Raises ImageReadError with
    a one-line message naming the file when it is missing, empty, not an
    image, truncated or larger than max_pixels.
    """
    path = Path(path)
    buffer = np.frombuffer(_read_bytes(path), np.uint8)
    if buffer[:2].tobytes() == b"\xff\xd8":
        # JPEG: IMREAD_COLOR applies the EXIF orientation and converts CMYK.
        image = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
        if image is not None and not _has_jpeg_end(buffer):
            raise ImageReadError(f"{path}: truncated JPEG (no end-of-image marker)")
    else:
        image = cv2.imdecode(buffer, cv2.IMREAD_UNCHANGED | cv2.IMREAD_ANYDEPTH)
    if image is None:
        raise ImageReadError(f"{path}: not a decodable image (corrupt, truncated or another format)")
    height, width = image.shape[:2]
    if height * width > max_pixels:
        raise ImageReadError(f"{path}: {width}x{height} pixels exceeds the {max_pixels:,}-pixel limit")
    return to_bgr8(image)


def _has_jpeg_end(buffer: np.ndarray) -> bool:
    # OpenCV decodes a truncated JPEG into a half-grey picture without failing;
    # TensorFlow's decoder then refuses it mid-training. The end marker tells.
    return buffer[-4096:].tobytes().rstrip(b"\0\r\n ").endswith(b"\xff\xd9")


def _read_bytes(path: Path) -> bytes:
    if not path.exists():
        raise ImageReadError(f"{path}: no such file")
    if path.is_dir():
        raise ImageReadError(f"{path}: is a folder, not an image")
    data = path.read_bytes()
    if not data:
        raise ImageReadError(f"{path}: empty file (0 bytes)")
    return data


def validate_image(path: str | Path) -> str | None:
    """Return why `path` is not a usable training image, or None if it is."""
    path = Path(path)
    if path.suffix.lower() not in IMAGE_EXTENSIONS:
        return f"extension {path.suffix or '(none)'!r} is not one of {', '.join(IMAGE_EXTENSIONS)}"
    try:
        read_image(path)
    except ImageReadError as error:
        return str(error).removeprefix(f"{path}: ")
    return None


def _jpeg_components(data: bytes) -> int | None:
    """Colour components in a JPEG's frame header (1 gray, 3 YCbCr, 4 CMYK), None if not a JPEG."""
    if data[:2] != b"\xff\xd8":
        return None
    pos = 2
    while pos + 9 < len(data) and data[pos] == 0xFF:
        marker = data[pos + 1]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            return data[pos + 9]
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return None


def scan_dataset(root: str | Path, progress: bool = True) -> ScanReport:
    """Walk the class folders under `root` and validate every file.

    Raises DatasetError when root is missing or holds no class folders.
    Hidden files (".DS_Store", ...) are ignored.
    """
    root = Path(root)
    class_dirs = _class_dirs(root)
    report = ScanReport(root=root, files={d.name: [] for d in class_dirs})
    candidates = [(d.name, p) for d in class_dirs for p in sorted(d.rglob("*")) if _is_visible_file(p, d)]
    for class_name, path in _progress(candidates, "checking", progress):
        reason = validate_image(path)
        if reason is None:
            report.files[class_name].append(path)
        else:
            report.invalid.append(InvalidFile(path, reason))
    return report


def _class_dirs(root: Path) -> list[Path]:
    if not root.exists():
        raise DatasetError(f"{root}: no such folder")
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder (expected one sub-folder per class)")
    dirs = sorted(d for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if not dirs:
        raise DatasetError(f"{root}: no class folders (expected e.g. {root}/happy/, {root}/sad/)")
    return dirs


def _is_visible_file(path: Path, top: Path) -> bool:
    parts = path.relative_to(top).parts
    return path.is_file() and not any(part.startswith(".") for part in parts)


def _progress(items: list, desc: str, enabled: bool) -> Iterable:
    if not enabled:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="file", leave=False)


def quarantine(report: ScanReport, destination: str | Path) -> list[Path]:
    """Move the invalid files of `report` under `destination`, keeping relative paths.

    Never overwrites: a clash gets a numbered name. Returns the new paths.
    """
    destination = Path(destination)
    moved = []
    for item in report.invalid:
        target = _free_path(destination / item.path.relative_to(report.root))
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(item.path, target)
        moved.append(target)
    return moved


def _free_path(path: Path) -> Path:
    candidate, n = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}.{n}{path.suffix}")
        n += 1
    return candidate


def delete_files(report: ScanReport) -> list[Path]:
    """Delete the invalid files of `report` (only when the user asked). Returns them."""
    for item in report.invalid:
        item.path.unlink()
    return [item.path for item in report.invalid]


def clean_view(report: ScanReport, parent: str | Path | None = None) -> Path:
    """A temporary class-folder tree of symbolic links to the valid files only.

    Keras' loader reads a whole folder and fails on the first bad file; this
    lets it see only the files that passed validation, without touching the
    user's folder. JPEGs that TensorFlow's decoder would read differently
    from emorec's `read_image` (CMYK, which it refuses, and EXIF-rotated,
    which it leaves unrotated) are written into the view as converted PNGs.
    The view is made inside `parent` (default: the system's temporary
    folder); the caller removes the returned folder when done.
    """
    view = Path(tempfile.mkdtemp(prefix=VIEW_PREFIX, dir=parent))
    for class_name, paths in report.files.items():
        class_dir = view / class_name
        class_dir.mkdir()
        for index, path in enumerate(paths):
            if _needs_conversion(path):
                cv2.imwrite(str(class_dir / f"{index:06d}.png"), read_image(path))
            else:
                os.symlink(path.resolve(), class_dir / f"{index:06d}{path.suffix.lower()}")
    return view


def _needs_conversion(path: Path) -> bool:
    """True for a CMYK or EXIF-rotated JPEG (TensorFlow would fail on or misread it)."""
    data = path.read_bytes()
    components = _jpeg_components(data)
    if components is None:
        return False
    if components == 4:
        return True
    if b"Exif" not in data[:65536]:
        return False
    buffer = np.frombuffer(data, np.uint8)
    as_stored = cv2.imdecode(buffer, cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION)
    return not np.array_equal(as_stored, cv2.imdecode(buffer, cv2.IMREAD_COLOR))


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
    images, labels = [], []
    pairs = [(label, path) for label, name in enumerate(report.class_names) for path in report.files[name]]
    for label, path in _progress(pairs, "loading", progress):
        images.append(to_model_input(read_image(path), image_size, channels))
        labels.append(label)
    shape = (0, image_size, image_size, channels)
    stacked = np.stack(images) if images else np.zeros(shape, np.uint8)
    return ArrayData(stacked, np.array(labels, np.int32), report.class_names)


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


def save_pack(path: str | Path, splits: dict[str, ArrayData]) -> Path:
    """Write splits ({"train": ..., "val": ...}) to one .npz file, xz-compressed if it ends in .xz.

    Refuses (DatasetError) splits that are empty or differ in class names.
    """
    path = Path(path)
    check_splits(splits)
    arrays = {"class_names": np.array(next(iter(splits.values())).class_names)}
    for split, data in splits.items():
        arrays[f"{split}_images"] = data.images
        arrays[f"{split}_labels"] = data.labels
    tmp = path.with_name(path.name + ".part")
    with (lzma.open(tmp, "wb", preset=6) if path.suffix == ".xz" else open(tmp, "wb")) as handle:
        np.savez(handle, **arrays)
    tmp.replace(path)
    return path


def load_pack(path: str | Path) -> dict[str, ArrayData]:
    """Read a pack written by `save_pack`: {split name: ArrayData}."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{path}: no such pack file")
    with (lzma.open(path, "rb") if path.suffix == ".xz" else open(path, "rb")) as handle:
        stored = dict(np.load(handle, allow_pickle=False))
    names = [str(n) for n in stored.pop("class_names")]
    splits = sorted({key.rsplit("_", 1)[0] for key in stored})
    return {s: ArrayData(stored[f"{s}_images"], stored[f"{s}_labels"], names) for s in splits}


def is_pack(path: str | Path) -> bool:
    """True when `path` names a .npz pack rather than a class-folder tree."""
    return str(path).endswith((".npz", ".npz.xz"))
