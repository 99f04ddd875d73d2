"""Safe file access shared by the stages.

Writes are atomic, keep the umask's permissions and never replace an existing
file unless asked. Reads of user files go through `stat_regular` first, so
FIFOs, devices, folders and broken links are refused without being opened.
Outputs are checked against the inputs before any work starts, and an
existing file is replaced (with --exist-ok) only when emorec wrote it: the
images and videos emorec writes carry a mark (`mark_output`), its CSV files
their own header, and an input of the command is never an output.
"""

from __future__ import annotations

import errno
import json
import math
import os
import stat
import struct
import tempfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

from emorec.errors import EmorecError


class InputFileError(EmorecError, ValueError):
    """A user file that cannot be read as a regular file; the message names it and says why."""


class OutputPathError(EmorecError, ValueError):
    """An output path that would hurt an input or cannot be written; the message names it."""


# ----------------------------------------------------------------------------
# Reading
# ----------------------------------------------------------------------------

_NOT_REGULAR = {stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFCHR: "a character device",
                stat.S_IFBLK: "a block device", stat.S_IFSOCK: "a socket"}


def stat_regular(path: str | Path) -> os.stat_result:
    """os.stat of a regular file; InputFileError for anything else (missing, link loop, folder, FIFO, device)."""
    path = Path(path)
    try:
        info = os.stat(path)
    except OSError as error:
        raise InputFileError(f"{path}: {_stat_reason(path, error)}") from None
    if stat.S_ISDIR(info.st_mode):
        raise InputFileError(f"{path}: is a folder, not a file")
    if not stat.S_ISREG(info.st_mode):
        kind = _NOT_REGULAR.get(stat.S_IFMT(info.st_mode), "not a regular file")
        raise InputFileError(f"{path}: {kind}, not a regular file (not opened)")
    return info


def _stat_reason(path: Path, error: OSError) -> str:
    if error.errno == errno.ELOOP:
        return "symbolic link loop"
    if error.errno == errno.ENOENT and path.is_symlink():
        return f"dangling symbolic link (to {os.readlink(path)})"
    if error.errno == errno.ENOENT:
        return "no such file"
    return error.strerror or str(error)


def read_limited(path: str | Path, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most max_bytes; InputFileError otherwise (never blocks on a FIFO)."""
    path = Path(path)
    size = stat_regular(path).st_size
    if size > max_bytes:
        raise InputFileError(f"{path}: {size:,} bytes, over the {max_bytes:,}-byte limit for one file")
    try:
        # O_NONBLOCK: if the path was swapped for a FIFO since the stat, open does not wait for a writer.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as error:
        raise InputFileError(f"{path}: {error.strerror or error}") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputFileError(f"{path}: changed into something other than a regular file while being read")
        try:
            data = handle.read(max_bytes + 1)
        except OSError as error:
            raise InputFileError(f"{path}: {error.strerror or error}") from None
    if len(data) > max_bytes:
        raise InputFileError(f"{path}: grew over the {max_bytes:,}-byte limit while being read")
    return data


# ----------------------------------------------------------------------------
# Checking outputs before the work
# ----------------------------------------------------------------------------


def check_output_path(path: str | Path, inputs: Iterable[str | Path] = (), folder: bool = False) -> Path:
    """Refuse an output that is one of the inputs or lies inside an input folder, or cannot be written.

    path is a file to write (folder=False) or a folder to write into
    (folder=True). Nothing is created: the nearest existing folder is probed
    with a temporary file. Raises OutputPathError with a one-line message.
    """
    path = Path(path)
    target = resolved_output(path)
    for source in map(Path, inputs):
        resolved = _resolved_input(source)
        if target == resolved:
            raise OutputPathError(f"{path}: is one of the inputs; choose another output")
        if resolved.is_dir() and target.is_relative_to(resolved):
            raise OutputPathError(f"{path}: lies inside the input folder {source}; choose an output outside it")
    if path.exists() and path.is_dir() != folder:
        raise OutputPathError(f"{path}: is {'not a folder' if folder else 'a folder, not a file'}")
    _probe_writable(target if folder else target.parent, path)
    return path


def resolved_output(path: str | Path) -> Path:
    """path made absolute with its links followed; OutputPathError for a symbolic link loop."""
    try:
        return Path(path).resolve()
    except (RuntimeError, OSError):  # Python 3.11 raises RuntimeError for a loop, later versions OSError
        raise OutputPathError(f"{path}: symbolic link loop") from None


def _resolved_input(path: Path) -> Path:
    # An input that is a link loop cannot be read; it is reported when read, and compared here as written.
    try:
        return path.resolve()
    except (RuntimeError, OSError):
        return Path(os.path.abspath(path))


def _probe_writable(folder: Path, shown: Path) -> None:
    existing = folder
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        raise OutputPathError(f"{shown}: {existing} is a file, not a folder")
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as error:
        raise OutputPathError(f"{shown}: cannot write in {existing} ({error.strerror or error})") from None


# ----------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------


@contextmanager
def atomic_path(path: str | Path, overwrite: bool = True, suffix: str = ".tmp") -> Iterator[Path]:
    """A temporary file beside path to write to; it replaces path when the block succeeds.

    The file gets the permissions a plain open() would give (the umask's, or
    those of the file it replaces), and is removed on any failure. suffix lets
    writers that check the extension (Keras wants ".keras") use it.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path}: already exists (use --exist-ok to replace it)")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    tmp = Path(name)
    try:
        os.fchmod(fd, _mode_for(path))
        os.close(fd)
        yield tmp
        _fsync(tmp)  # the rename must not reach the disk before the data (power loss)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _mode_for(path: Path) -> int:
    try:
        return stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


@contextmanager
def atomic_open(path: str | Path, overwrite: bool = True) -> Iterator[Any]:
    """A binary file handle whose content replaces path atomically when the block succeeds."""
    with atomic_path(path, overwrite) as tmp, open(tmp, "wb") as handle:
        yield handle


def atomic_write_bytes(path: str | Path, data: bytes, overwrite: bool = True) -> Path:
    """Write data to path through a temporary file and a rename, so readers never see half a file."""
    with atomic_open(path, overwrite) as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: str | Path, text: str, overwrite: bool = True) -> Path:
    """Text version of atomic_write_bytes (UTF-8)."""
    return atomic_write_bytes(path, text.encode("utf-8"), overwrite)


def write_json(path: str | Path, payload: Any, overwrite: bool = True) -> Path:
    """Write payload as indented JSON, atomically (NaN and infinities become null)."""
    return atomic_write_text(path, to_json(payload) + "\n", overwrite)


def to_json(payload: Any, indent: int | None = 2) -> str:
    """Payload as strict JSON: NumPy values and paths converted, NaN and infinities written as null."""
    return json.dumps(_finite(payload), indent=indent, default=_jsonable, allow_nan=False)


def _finite(value: Any) -> Any:
    # json.dumps writes float("nan") as the bare word NaN, which JSON readers refuse.
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(item) for item in value]
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):
        return _finite(value.tolist())
    return value


def escape_undecodable(text: str) -> str:
    """text with the bytes of a file name that are not UTF-8 written as \\xNN escapes, as emorec prints them.

    Python reads such bytes as lone surrogates (U+DC80..U+DCFF), which no UTF-8 writer accepts.
    """
    return "".join(f"\\x{ord(c) - 0xDC00:02x}" if 0xDC80 <= ord(c) <= 0xDCFF else c for c in text)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def save_figure(figure, path: str | Path, overwrite: bool = True) -> Path:
    """Save a Matplotlib figure as PNG atomically, marked as emorec's output (`mark_output`)."""
    import io

    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return atomic_write_bytes(path, mark_output(buffer.getvalue()), overwrite)


def new_run_dir(project: str | Path, name: str, exist_ok: bool = False) -> Path:
    """Create project/name; if it exists, project/name-2, -3, ... unless exist_ok reuses it.

    Each candidate is claimed by one `mkdir`, so runs started at the same moment get different folders.
    """
    check_folder_name(name)
    project = Path(project)
    project.mkdir(parents=True, exist_ok=True)
    if exist_ok:
        (project / name).mkdir(exist_ok=True)
        return project / name
    n = 1
    while True:
        candidate = project / (name if n == 1 else f"{name}-{n}")
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1


def check_folder_name(name: str) -> str:
    """Return name if it is a single folder name (no separators, not '.' or '..'); else raise ValueError."""
    separators = {os.sep, os.altsep} - {None}
    if not name or name in (".", "..") or any(sep in name for sep in separators):
        raise ValueError(f"{name!r} is not a single folder name")
    return name


def check_targets(paths: Sequence[str | Path], exist_ok: bool, inputs: Iterable[str | Path] = ()) -> None:
    """Refuse, before any work, outputs that would hurt an input, each other or a file emorec did not write.

    An output may not be one of inputs (same resolved path, or the same file
    through a hard link), and no two outputs may be one file. An existing
    output file is replaced only with exist_ok, and only when it is one of
    emorec's own outputs (`is_own_output`). Raises OutputPathError or
    FileExistsError with a one-line message that says which rule applies.
    """
    check_distinct_outputs(paths, inputs)
    for path in paths:
        if os.path.exists(path):
            _check_replaceable(Path(path), exist_ok)


def check_distinct_outputs(paths: Sequence[str | Path], inputs: Iterable[str | Path] = ()) -> None:
    """Refuse (OutputPathError) an output that is one of inputs, or one file that two outputs would share.

    Paths are compared with their links followed, and existing files by
    (device, inode), so a link or a hard link to an input counts as the input.
    """
    resolve = _FolderCache()
    sources = _identities(inputs, resolve)
    seen: set[str] = set()
    for path in paths:
        target = resolve(path, resolved_output)
        if target in seen:
            raise OutputPathError(f"{path}: two outputs of this command would be written to this one file")
        seen.add(target)
        if target in sources or file_identity(path) in sources:
            raise OutputPathError(f"{path}: is an input of this command, and an output never replaces an input; "
                                  "choose another output")


def _check_replaceable(path: Path, exist_ok: bool) -> None:
    own = is_own_output(path)
    if own and exist_ok:
        return
    if own:
        raise FileExistsError(f"{path}: already exists; refusing to overwrite it (use --exist-ok to replace)")
    raise FileExistsError(f"{path}: already exists and is not a file emorec wrote, so it is never replaced "
                          "(--exist-ok replaces only emorec's own outputs); move it or choose another output")


def file_identity(path: str | Path) -> tuple[int, int] | None:
    """(device, inode) of the file path names, links followed; None if it cannot be reached."""
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    return info.st_dev, info.st_ino


class _FolderCache:
    """Path.resolve, as a string, for many files of few folders: each folder is resolved once.

    Strings, not Paths: pathlib's parsing costs more than the system calls for a folder of 30,000 photos.
    """

    def __init__(self):
        self.folders: dict[str, str] = {}

    def __call__(self, path: str | Path, resolve: Callable[[Path], Path]) -> str:
        folder, name = os.path.split(os.fspath(path))
        if name in ("", ".", "..") or os.path.islink(path):
            return str(resolve(Path(path)))
        if folder not in self.folders:
            self.folders[folder] = str(resolve(Path(folder or ".")))
        return os.path.join(self.folders[folder], name)


def _identities(inputs: Iterable[str | Path], resolve: _FolderCache) -> set:
    """The resolved paths and (device, inode) pairs of the inputs that exist."""
    found: set = set()
    for source in inputs:
        found.add(resolve(source, _resolved_input))
        identity = file_identity(source)
        if identity is not None:
            found.add(identity)
    return found


# ----------------------------------------------------------------------------
# emorec's own outputs
# ----------------------------------------------------------------------------

# Images and videos emorec writes carry this mark where readers ignore it (see mark_output), so that
# --exist-ok can tell them from a user's files. The CSV files are known by their first columns instead
# (those of output.write_csv and video.FrameCsv).
OUTPUT_MARK = b"emorec output"
_OWN_CSV_HEADERS = (b"source,face,x,y,w,h,", b"time_s,frame,face,x,y,w,h,")
_MP4_SUFFIXES = (".mp4", ".m4v", ".mov")
_MARK_WINDOW = 4096  # bytes read from each end of a file when looking for the mark


def mark_output(data: bytes, suffix: str = "") -> bytes:
    """data of an image emorec writes, with OUTPUT_MARK added where image readers ignore it.

    PNG: a tEXt chunk "Software" after the header chunk; JPEG: a comment
    segment after the start (and JFIF) segments; anything else (BMP): the
    mark appended after the image data.
    """
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        body = b"Software\0" + OUTPUT_MARK
        chunk = struct.pack(">I", len(body)) + b"tEXt" + body + struct.pack(">I", zlib.crc32(b"tEXt" + body))
        return data[:33] + chunk + data[33:]  # 33: signature (8) + IHDR chunk (25)
    if data.startswith(b"\xff\xd8"):
        at = 4 + int.from_bytes(data[4:6], "big") if data[2:4] == b"\xff\xe0" else 2
        return data[:at] + b"\xff\xfe" + struct.pack(">H", len(OUTPUT_MARK) + 2) + OUTPUT_MARK + data[at:]
    return data + output_trailer(suffix)


def output_trailer(suffix: str) -> bytes:
    """OUTPUT_MARK in a form that can end a file of this suffix: a `free` box for MP4/MOV, the bare mark else."""
    if suffix.lower() in _MP4_SUFFIXES:
        return struct.pack(">I", 8 + len(OUTPUT_MARK)) + b"free" + OUTPUT_MARK
    return OUTPUT_MARK


def is_own_output(path: str | Path) -> bool:
    """Whether path is a regular file that emorec wrote: it carries OUTPUT_MARK or starts with an emorec CSV header."""
    try:
        size = stat_regular(path).st_size
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except (InputFileError, OSError):
        return False
    with os.fdopen(fd, "rb") as handle:
        head = handle.read(_MARK_WINDOW)
        handle.seek(max(size - _MARK_WINDOW, 0))
        tail = handle.read(_MARK_WINDOW)
    return head.startswith(_OWN_CSV_HEADERS) or OUTPUT_MARK in head or OUTPUT_MARK in tail
