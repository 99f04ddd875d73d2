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

import cv2
import numpy as np
import pytest

from emorec.files import (
    InputFileError,
    OutputPathError,
    atomic_open,
    atomic_write_bytes,
    check_distinct_outputs,
    check_folder_name,
    check_output_path,
    check_targets,
    escape_undecodable,
    is_own_output,
    mark_output,
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


def _loop(path: Path) -> Path:
    path.symlink_to(path.name)  # a link to itself
    return path


def test_an_output_that_is_a_link_loop_is_one_line(tmp_path):
    for folder in (False, True):
        with pytest.raises(OutputPathError, match="symbolic link loop"):
            check_output_path(_loop(tmp_path / f"loop{folder}.png"), [tmp_path / "a.jpg"], folder=folder)
    with pytest.raises(OutputPathError, match="symbolic link loop"):
        check_targets([tmp_path / "loopFalse.png"], exist_ok=True)
    # An input that is a loop is reported when read; it does not stop the output check.
    assert check_output_path(tmp_path / "out.csv", [_loop(tmp_path / "in.jpg")]) == tmp_path / "out.csv"


def _image(suffix: str) -> bytes:
    gray = (np.arange(48 * 48).reshape(48, 48) % 251).astype(np.uint8)
    return mark_output(cv2.imencode(suffix, cv2.merge([gray, gray, gray]))[1].tobytes(), suffix)


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp"])
def test_marked_images_decode_like_the_unmarked_ones(tmp_path, suffix):
    from PIL import Image

    gray = (np.arange(48 * 48).reshape(48, 48) % 251).astype(np.uint8)
    plain = cv2.imencode(suffix, cv2.merge([gray, gray, gray]))[1].tobytes()
    marked = tmp_path / f"marked{suffix}"
    marked.write_bytes(mark_output(plain, suffix))
    (tmp_path / f"plain{suffix}").write_bytes(plain)
    assert np.array_equal(cv2.imread(str(marked)), cv2.imdecode(np.frombuffer(plain, np.uint8), cv2.IMREAD_COLOR))
    with Image.open(marked) as image:
        image.load()
        assert image.size == (48, 48)
    assert is_own_output(marked) and not is_own_output(tmp_path / f"plain{suffix}")


def test_own_outputs_are_known_by_their_mark_or_their_csv_header(tmp_path):
    (tmp_path / "results.csv").write_text("source,face,x,y,w,h,happy,sad,emotion,error\n")
    (tmp_path / "frames.csv").write_text("time_s,frame,face,x,y,w,h,happy,sad,emotion\n")
    (tmp_path / "budget.csv").write_text("month,amount\n")
    os.mkfifo(tmp_path / "fifo.csv")
    assert is_own_output(tmp_path / "results.csv") and is_own_output(tmp_path / "frames.csv")
    assert not any(is_own_output(tmp_path / name) for name in ("budget.csv", "fifo.csv", "missing.csv"))
    assert not is_own_output(tmp_path)


def test_exist_ok_replaces_only_emorecs_own_outputs(tmp_path):
    own, mine = tmp_path / "own.png", tmp_path / "mine.png"
    own.write_bytes(_image(".png"))
    mine.write_bytes(cv2.imencode(".png", np.zeros((8, 8), np.uint8))[1].tobytes())
    check_targets([own, tmp_path / "new.png"], exist_ok=True)
    with pytest.raises(FileExistsError, match="use --exist-ok"):
        check_targets([own], exist_ok=False)
    for exist_ok in (False, True):
        with pytest.raises(FileExistsError, match="not a file emorec wrote, so it is never replaced") as refused:
            check_targets([mine], exist_ok=exist_ok)
        assert "use --exist-ok" not in str(refused.value)


def test_an_output_is_never_an_input_even_through_a_link(tmp_path):
    photo = tmp_path / "me.jpg"
    photo.write_bytes(_image(".jpg"))  # even an input that emorec wrote itself
    (tmp_path / "link.jpg").symlink_to(photo)
    os.link(photo, tmp_path / "hard.jpg")
    for output in (photo, tmp_path / "link.jpg", tmp_path / "hard.jpg", tmp_path / "." / "me.jpg"):
        with pytest.raises(OutputPathError, match="is an input of this command"):
            check_targets([output], exist_ok=True, inputs=[photo])
    with pytest.raises(OutputPathError, match="is an input of this command"):
        check_targets([photo], exist_ok=True, inputs=[tmp_path / "link.jpg"])
    check_targets([tmp_path / "other.jpg"], exist_ok=True, inputs=[photo])


def test_two_outputs_of_one_command_never_share_a_file(tmp_path):
    (tmp_path / "out").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "out")
    with pytest.raises(OutputPathError, match="two outputs of this command"):
        check_distinct_outputs([tmp_path / "out" / "a.csv", tmp_path / "alias" / "a.csv"])
    with pytest.raises(OutputPathError, match="two outputs of this command"):
        check_targets([tmp_path / "a.png", tmp_path / "b.png", tmp_path / "a.png"], exist_ok=True)
    check_distinct_outputs([tmp_path / "out" / "a.csv", tmp_path / "out" / "a.mp4"])


def test_undecodable_name_bytes_are_escaped_as_printed():
    name = os.fsdecode(b"caf\xe9-\xff.jpg")
    assert escape_undecodable(name) == "caf\\xe9-\\xff.jpg"
    assert escape_undecodable("café.jpg") == "café.jpg"


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
