"""Data preparation: scan class folders, validate images, set bad files aside, load.

A dataset is a folder with one sub-folder per class (`happy/`, `sad/`, ...).
`scan_dataset` checks every file with an image extension with
`images.read_image`, the one reader that every command uses; files of other
types (notes, README files) are listed as documents and left alone. Nothing is
moved or deleted unless the caller asks (`quarantine` / `delete_files`), and
then only corrupt image files inside the data folder.
"""

from __future__ import annotations

import lzma
import os
import re
import shutil
import tempfile
import warnings
import zipfile
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import cv2
import numpy as np

from emorec.errors import EmorecError
from emorec.files import InputFileError, atomic_open, check_output_path, file_identity, stat_regular
from emorec.images import IMAGE_EXTENSIONS, ImageReadError, read_image
from emorec.preprocess import to_model_input

MAX_PACK_BYTES = 8 * 2**30  # the arrays a pack may declare (its splits read at once); FER2013 at 48x48 is 83 MB
MAX_CLASSES = 1000  # in a pack or a label file: more is a broken file, not a dataset
_PACK_MEMBER = re.compile(r"^(\w+)_(images|labels)\.npy$")
_MAX_PACK_MEMBERS = 64
_MAX_NAME = 256  # characters of a class name in a pack
VIEW_PREFIX = "emorec-clean-"  # folder names of clean_view's temporary trees


class DatasetError(EmorecError, ValueError):
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
# Validating
# ----------------------------------------------------------------------------


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
    from emorec.progress import bar

    return bar(items, desc=desc, unit="file")


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
    resolved data folder, and not the target of a link among them. Valid
    images of other formats, images over the size limit, unreadable files,
    links, FIFOs and devices are left alone, as are documents (never in
    `invalid`).
    """
    root = report.root.resolve()
    cleanup, allowed = Cleanup(), []
    items = [*report.invalid, *(InvalidFile(e.path, e.reason, corrupt=True) for e in extra)]
    linked = {file_identity(item.path) for item in items if item.path.is_symlink()} - {None}
    for item in items:
        why = _why_left_alone(item, report.root, root)
        if why is None and file_identity(item.path) in linked:
            why = "the target of a symbolic link in the data folder"
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
        raise DatasetError(f"{path}: not a pack made by `emorec pack` ({' '.join(str(error).split())[:200]})") from None


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
