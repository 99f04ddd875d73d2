"""emorec.files: the atomic writer, regular-file reads, output-path checks, strict JSON and run folders."""

from __future__ import annotations

import json
import math
import os
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from emorec.files import (
    InputFileError,
    OutputPathError,
    atomic_open,
    atomic_write_bytes,
    check_folder_name,
    check_output_path,
    new_run_dir,
    read_limited,
    stat_regular,
    to_json,
    write_json,
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

SRC = Path(__file__).resolve().parents[1] / "src"


def test_json_output_never_holds_nan(tmp_path):
    payload = {"loss": [0.5, float("nan"), math.inf], "best": np.float32("nan"), "n": np.int64(3),
               "path": tmp_path, "grid": np.array([[1.0, -np.inf]])}
    text = to_json(payload)
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"loss": [0.5, None, None], "best": None, "n": 3, "path": str(tmp_path),
                                "grid": [[1.0, None]]}
    path = write_json(tmp_path / "history.json", payload)
    assert json.loads(path.read_text()) == json.loads(text)
    assert [p.name for p in tmp_path.iterdir()] == ["history.json"]  # no temporary file left


def test_new_run_dir_numbers_repeated_names(tmp_path):
    assert [new_run_dir(tmp_path / "runs", "seed").name for _ in range(3)] == ["seed", "seed-2", "seed-3"]
    assert new_run_dir(tmp_path / "runs", "seed", exist_ok=True) == tmp_path / "runs" / "seed"


@pytest.mark.parametrize("name", ["../../x", "/tmp/x", "a/b", "..", ".", ""])
def test_run_names_are_single_folder_names(tmp_path, name):
    with pytest.raises(ValueError, match="single folder name"):
        new_run_dir(tmp_path, name)
    with pytest.raises(ValueError):
        check_folder_name(name)
    assert list(tmp_path.iterdir()) == []


def test_runs_started_at_the_same_moment_get_different_folders(tmp_path):
    """Processes that ask for runs/<same name> at the same instants each get folders of their own."""
    start = time.time() + 1.0  # every process waits for this moment, then claims folders as fast as it can
    code = (f"import time, sys; sys.path.insert(0, {str(SRC)!r})\n"
            "from emorec.files import new_run_dir\n"
            f"time.sleep(max(0.0, {start} - time.time()))\n"
            f"for _ in range(60): print(new_run_dir({str(tmp_path / 'runs')!r}, 'seed'))\n")
    processes = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) for _ in range(4)]
    folders = [line for process in processes for line in process.communicate(timeout=60)[0].split()]
    assert all(process.returncode == 0 for process in processes)
    assert len(folders) == 240
    assert len(set(folders)) == 240, f"{240 - len(set(folders))} folders were handed to two runs"
