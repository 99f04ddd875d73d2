"""Atomic writes, strict JSON and run folders that concurrent runs cannot share."""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from emorec.files import check_folder_name, new_run_dir, to_json, write_json

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
