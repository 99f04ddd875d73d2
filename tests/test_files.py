"""The atomic writer, the regular-file reader and the output-path checks of emorec.files."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from emorec.files import (
    InputFileError,
    OutputPathError,
    atomic_open,
    atomic_write_bytes,
    check_output_path,
    read_limited,
    stat_regular,
)


@pytest.fixture
def umask():
    """Set a umask for one test and put the old one back."""
    saved = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(saved)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_keeps_the_umask_permissions(tmp_path, umask, mask, expected):
    umask(mask)
    path = atomic_write_bytes(tmp_path / "out.json", b"{}")
    assert _mode(path) == expected and path.read_bytes() == b"{}"


def test_atomic_write_keeps_the_mode_of_the_file_it_replaces(tmp_path, umask):
    path = tmp_path / "shared.csv"
    path.write_bytes(b"old")
    path.chmod(0o640)
    atomic_write_bytes(path, b"new")
    assert _mode(path) == 0o640 and path.read_bytes() == b"new"


def test_a_failed_write_leaves_neither_half_a_file_nor_a_temporary_one(tmp_path):
    path = tmp_path / "result.npz"
    path.write_bytes(b"previous")
    with pytest.raises(RuntimeError):
        with atomic_open(path) as handle:
            handle.write(b"half")
            raise RuntimeError("disk full")
    assert path.read_bytes() == b"previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.npz"]


def test_atomic_write_refuses_to_replace_unless_asked(tmp_path):
    path = tmp_path / "a.txt"
    path.write_bytes(b"keep")
    with pytest.raises(FileExistsError, match="already exists"):
        atomic_write_bytes(path, b"new", overwrite=False)
    assert path.read_bytes() == b"keep" and len(list(tmp_path.iterdir())) == 1


def test_read_limited_refuses_special_files_without_blocking(tmp_path):
    fifo = tmp_path / "pipe.jpg"
    os.mkfifo(fifo)
    errors = []

    def read() -> None:
        try:
            read_limited(fifo, 100)
        except InputFileError as error:
            errors.append(str(error))

    reader = threading.Thread(target=read, daemon=True)  # opening a FIFO would wait for a writer forever
    reader.start()
    reader.join(timeout=5)
    assert not reader.is_alive() and len(errors) == 1 and "FIFO" in errors[0]
    with pytest.raises(InputFileError, match="character device"):
        stat_regular("/dev/null")
    with pytest.raises(InputFileError, match="is a folder"):
        stat_regular(tmp_path)


def test_read_limited_refuses_a_large_file_without_reading_it(tmp_path):
    sparse = tmp_path / "sparse.jpg"
    with open(sparse, "wb") as handle:
        handle.truncate(2**40)  # 1 TiB of holes
    with pytest.raises(InputFileError, match="1,099,511,627,776 bytes, over the 1,000-byte limit"):
        read_limited(sparse, 1000)
    small = tmp_path / "small.jpg"
    small.write_bytes(b"x" * 1000)
    assert read_limited(small, 1000) == b"x" * 1000


def test_output_that_is_an_input_or_inside_an_input_folder_is_refused(tmp_path):
    photos = tmp_path / "photos"
    photos.mkdir()
    (photos / "a.jpg").write_bytes(b"x")
    with pytest.raises(OutputPathError, match="is one of the inputs"):
        check_output_path(photos / "a.jpg", [photos / "a.jpg"])
    with pytest.raises(OutputPathError, match="lies inside the input folder"):
        check_output_path(photos / "annotated", [photos], folder=True)
    with pytest.raises(OutputPathError, match="is one of the inputs"):
        check_output_path(tmp_path / "photos" / ".." / "photos", [photos], folder=True)
    assert check_output_path(tmp_path / "out" / "new" / "results.csv", [photos]) == tmp_path / "out" / "new" / "results.csv"
    assert not (tmp_path / "out").exists()  # checked, not created


def test_output_under_a_file_or_of_the_wrong_kind_is_refused(tmp_path):
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(OutputPathError, match="is a file, not a folder"):
        check_output_path(tmp_path / "notes.txt" / "report.csv")
    with pytest.raises(OutputPathError, match="is not a folder"):
        check_output_path(tmp_path / "notes.txt", folder=True)
    with pytest.raises(OutputPathError, match="a folder, not a file"):
        check_output_path(tmp_path, [])


def test_output_in_a_folder_that_cannot_be_written_is_refused():
    with pytest.raises(OutputPathError, match="cannot write in /proc"):
        check_output_path("/proc/emorec-results.csv")
